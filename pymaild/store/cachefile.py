"""A per-folder on-disk record cache: message UID -> opaque bytes (like Dovecot's index cache).

The IMAP layer keeps per-message summaries (ENVELOPE, BODYSTRUCTURE, the header block...)
here so that a large folder needs neither the memory nor, after a restart, the work of
parsing every message again. The file, L{CACHE_NAME} beside C{dovecot-uidlist} in the
folder directory, is a pure cache (DESIGN.md): it is rebuildable from the Maildir alone, is
never the only copy of anything, and is never fsynced. Any problem with it (disk full, a
read-only tree, a deleted folder, a corrupt or foreign file) makes it store nothing or
answer "not cached"; it never raises L{OSError} to its caller and never returns a wrong
value.

File format (little endian)::

    header  magic "PYMDCACH" | version u32 | flags u32 (0) | uidvalidity u32 | crc32 u32
    record  magic "PMR\\x1e" | crc32 u32 | uid u32 | length u32 | payload (length bytes)
    record  ...

A record's crc covers its uid, length and payload. Records are only ever appended (with
C{O_APPEND}, under C{flock(LOCK_EX)}); a later record for the same UID replaces an earlier
one, which becomes dead space. L{CacheFile.compact} writes the live records to a new file
and renames it over the old one; processes holding the old file keep reading it (its
records are still right for their UIDs) and switch to the new one when they next append or
miss.

Multi-process rules: every append takes the file's C{flock}, checks that the path still
names the file it holds (else reopens), indexes what others appended since its last look,
truncates a torn tail (a crash mid-append: a record running past the end or failing its
crc at the very end) and appends. Readers never take the C{flock}: one that meets an
incomplete tail stops indexing there. A lookup of an unknown UID checks (one C{stat})
whether the file grew or was replaced and re-indexes. Every read checks the record's
magic, UID, length and crc again, so a record damaged on disk is a miss, never a value.

The in-memory index is a dense C{array('Q')} over a window of UIDs (8 bytes a UID) with a
C{dict} for UIDs far outside it; each entry packs the record's offset and length, so a
batch read (L{CacheFile.getMany}) computes its covering span without touching the disk.

Files: C{pymaild.cache} is created on first use (a lookup too); C{pymaild.cache.new}
exists only while a compaction or a fresh start writes the replacement. The IMAP layer
keeps a second cache of the same format, L{HEADERS_NAME} (and its C{.new}), holding
only header blocks, which SEARCH reads in bulk (L{CacheFile.readSpans}). Both are plain
files without a leading dot, which the Maildir++ code (and Dovecot) ignore. An open that
fails (no folder, no permission, disk full) is not retried for L{_RETRY_OPEN} seconds.
Every call blocks on disk I/O: run it in a thread, never in the reactor thread.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import struct
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

from pymaild.files import writeAll

__all__ = ["CacheFile", "CacheStats", "Span", "CACHE_NAME", "HEADERS_NAME", "MAX_VALUE"]

CACHE_NAME = "pymaild.cache"
"""The cache file's name in a folder directory (beside C{dovecot-uidlist})."""

HEADERS_NAME = "pymaild.headers"
"""The name of a second cache file in a folder directory, holding only the messages'
header blocks (read by SEARCH without the rest of their summaries); same format."""

MAX_VALUE = 1 << 20
"""Default largest value stored; larger ones are refused (L{CacheFile.put} returns False)."""

COMPACT_MIN_BYTES = 1 << 20
"""L{CacheFile.compact} does nothing while the garbage is at most this many bytes."""

_VERSION = 1
_HEADER = struct.Struct("<8sIIII")
_HEADER_MAGIC = b"PYMDCACH"
HEADER_SIZE = _HEADER.size
_REC = struct.Struct("<4sIII")
_REC_MAGIC = b"PMR\x1e"
REC_HEADER_SIZE = _REC.size
_MAX_UID = 0xFFFFFFFF

# Index entries pack (offset << _LEN_BITS) | record length; 0 means "no record".
_LEN_BITS = 21
_LEN_MASK = (1 << _LEN_BITS) - 1
_MAX_OFFSET = 1 << 64
_MAX_VALUE_LIMIT = _LEN_MASK - REC_HEADER_SIZE

_SCAN_CHUNK = 1 << 20          # sequential indexing reads this much at a time
_MAX_GAP = 16 << 10            # getMany: read across gaps up to this size ...
_MAX_SPAN = 8 << 20            # ... while one read stays below this size
_DENSE_SLACK = 4096            # dense window may hold this many empty slots beyond 2 x count
_SPARSE_MIN = 256              # sparse entries tolerated before the index is rebuilt
_RETRY_OPEN = 30.0             # seconds before an open that failed is tried again
_OPEN_RW = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
_OPEN_RO = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_READONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def _packHeader(uidValidity: int) -> bytes:
    """The file header for C{uidValidity}."""
    body = _HEADER_MAGIC + struct.pack("<III", _VERSION, 0, uidValidity)
    return body + struct.pack("<I", zlib.crc32(body))


def _packRecord(uid: int, value: bytes) -> bytes:
    """One record: header (magic, crc, uid, length) then the payload."""
    tail = struct.pack("<II", uid, len(value))
    crc = zlib.crc32(value, zlib.crc32(tail))
    return _REC_MAGIC + struct.pack("<I", crc) + tail + value


def _checkRecord(buf: bytes | memoryview, pos: int, uid: int, reclen: int) -> bytes | None:
    """The payload of the record at C{buf[pos:pos+reclen]} if it is intact and is C{uid}'s."""
    if len(buf) < pos + reclen:
        return None
    magic, crc, ruid, length = _REC.unpack_from(buf, pos)
    if magic != _REC_MAGIC or ruid != uid or length + REC_HEADER_SIZE != reclen:
        return None
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    if zlib.crc32(mv[pos + 8:pos + reclen]) != crc:
        return None
    return bytes(mv[pos + REC_HEADER_SIZE:pos + reclen])


@dataclass(frozen=True, slots=True)
class Span:
    """Records read together by L{CacheFile.readSpans}: a stretch of the file and where
    the checked records in it are.

    @ivar data: the bytes of the file read (they may hold other records too: replaced
        ones, or UIDs not asked for, between those listed).
    @ivar uids: the UIDs of the records listed, in file order.
    @ivar starts: where each one's payload starts in C{data}, ascending.
    @ivar ends: where each one's payload ends in C{data}.
    """

    data: bytes
    uids: list[int]
    starts: list[int]
    ends: list[int]


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a L{CacheFile}'s counters and sizes.

    @ivar records: UIDs indexed (records reachable by L{CacheFile.get}).
    @ivar fileBytes: bytes of the file indexed so far (header included).
    @ivar deadBytes: bytes of replaced or damaged records known in the file.
    @ivar indexBytes: approximate memory used by the index.
    @ivar hits, misses: lookups that did / did not return a value.
    @ivar corrupt: records found damaged (at indexing or read time).
    @ivar refused: values not stored because they were too large.
    @ivar writeErrors: appends that failed (disk full, read-only, folder gone...).
    @ivar compactions: times the file was rewritten by L{CacheFile.compact}.
    @ivar writable: False when the file could only be opened read-only (or not at all).
    """

    records: int
    fileBytes: int
    deadBytes: int
    indexBytes: int
    hits: int
    misses: int
    corrupt: int
    refused: int
    writeErrors: int
    compactions: int
    writable: bool


class _UidIndex:
    """UID -> packed (offset, length): a dense array over a UID window plus a sparse dict.

    UIDs usually arrive in ascending order and are dense, so the window simply grows at
    its top; a UID that would make the window too sparse (more than twice the entries plus
    L{_DENSE_SLACK} slots) goes to the dict, and when the dict grows large the window is
    re-chosen over all entries (and not again before the dict has doubled, so rebuilds
    cost O(log n) sorts in all).
    """

    __slots__ = ("base", "dense", "sparse", "count", "limit")

    def __init__(self) -> None:
        """An empty index."""
        self.base = 1
        self.dense = array("Q")
        self.sparse: dict[int, int] = {}
        self.count = 0
        self.limit = _SPARSE_MIN

    def get(self, uid: int) -> int:
        """The packed entry of C{uid}, 0 when absent."""
        i = uid - self.base
        if 0 <= i < len(self.dense):
            return self.dense[i]
        return self.sparse.get(uid, 0) if self.sparse else 0

    def getAll(self, uids: Sequence[int]) -> list[int]:
        """The packed entries of C{uids}, 0 for those absent: L{get} of each, in C when
        they all fall in the dense window."""
        dense = self.dense
        if uids and min(uids) >= self.base and max(uids) - self.base < len(dense):
            return list(map(dense.__getitem__, map((-self.base).__add__, uids)))
        get = self.get
        return [get(u) for u in uids]

    def set(self, uid: int, packed: int) -> int:
        """Record C{uid} at C{packed}; return the entry it replaced (0 if none)."""
        dense = self.dense
        n = len(dense)
        i = uid - self.base
        if 0 <= i < n:
            old = dense[i]
            dense[i] = packed
            if not old:
                self.count += 1
            return old
        old = self.sparse.get(uid, 0) if self.sparse else 0
        if old:
            self.sparse[uid] = packed
            return old
        if n == 0 and not self.sparse:
            self.base = uid
            dense.append(packed)
        elif i >= n and i < 2 * (self.count + 1) + _DENSE_SLACK:
            if i > n:
                dense.frombytes(bytes(8 * (i - n)))
                if self.sparse:
                    # Keep every UID in exactly one place: the window now covers these.
                    lo, hi = self.base + n, self.base + i
                    for u in [u for u in self.sparse if lo <= u < hi]:
                        dense[u - self.base] = self.sparse.pop(u)
            dense.append(packed)
        else:
            self.sparse[uid] = packed
            self.count += 1
            if len(self.sparse) > self.limit and len(self.sparse) > self.count // 8:
                self._rebuild()
            return 0
        self.count += 1
        return 0

    def pop(self, uid: int) -> int:
        """Forget C{uid}; return its entry (0 if it had none)."""
        i = uid - self.base
        if 0 <= i < len(self.dense):
            old = self.dense[i]
            self.dense[i] = 0
        else:
            old = self.sparse.pop(uid, 0)
        if old:
            self.count -= 1
        return old

    def items(self) -> Iterator[tuple[int, int]]:
        """Every (uid, packed) pair, dense window first."""
        base = self.base
        for i, p in enumerate(self.dense):
            if p:
                yield base + i, p
        yield from self.sparse.items()

    def bytesNotIn(self, live: Collection[int]) -> int:
        """Total record length of the UIDs not in C{live} (a set or range, ideally)."""
        total = 0
        base, dense = self.base, self.dense
        if isinstance(live, range) and live.step == 1:
            lo = min(len(dense), max(0, live.start - base))
            hi = min(len(dense), max(lo, live.stop - base))
            for part in (dense[:lo], dense[hi:]):
                total += sum(p & _LEN_MASK for p in part)
        else:
            for i, p in enumerate(dense):
                if p and base + i not in live:
                    total += p & _LEN_MASK
        for u, p in self.sparse.items():
            if u not in live:
                total += p & _LEN_MASK
        return total

    def memory(self) -> int:
        """Approximate bytes used (array buffer, dict and its int objects)."""
        size = sys.getsizeof(self.dense)
        if self.sparse:
            size += sys.getsizeof(self.sparse) + 64 * len(self.sparse)
        return size

    def _rebuild(self) -> None:
        """Choose the dense window anew: the run of UIDs holding most entries densely."""
        pairs = sorted(self.items())
        uids = [u for u, _ in pairs]
        best, bestI, bestJ = 0, 0, -1
        i = 0
        for j, u in enumerate(uids):
            while u - uids[i] + 1 > 2 * (j - i + 1) + _DENSE_SLACK:
                i += 1
            if j - i + 1 > best:
                best, bestI, bestJ = j - i + 1, i, j
        self.sparse = {}
        self.dense = array("Q")
        if bestJ < 0:
            self.base = 1
            return
        self.base = uids[bestI]
        self.dense.frombytes(bytes(8 * (uids[bestJ] - self.base + 1)))
        for k, (u, p) in enumerate(pairs):
            if bestI <= k <= bestJ:
                self.dense[u - self.base] = p
            else:
                self.sparse[u] = p
        self.limit = max(_SPARSE_MIN, 2 * len(self.sparse))


class _Handle:
    """One open descriptor of the cache file, shared by readers until retired."""

    __slots__ = ("fd", "dev", "ino", "writable", "users", "retired")

    def __init__(self, fd: int, st: os.stat_result, writable: bool) -> None:
        """Wrap C{fd}, whose C{fstat} is C{st}."""
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.writable = writable
        self.users = 0
        self.retired = False

    def sameFile(self, st: os.stat_result) -> bool:
        """True when C{st} describes the file this handle has open."""
        return st.st_ino == self.ino and st.st_dev == self.dev


class CacheFile:
    """The record cache of one folder: UID -> bytes, stored in the file C{path}.

    Thread-safe (one C{threading.Lock} guards the index and the append state; reads of
    the file happen outside it) and safe between processes sharing the file (see the
    module docstring). The file is opened lazily, on first use. An instance is bound to
    one UIDVALIDITY: when the folder's changes, close it and make a new one.

    Nothing here raises L{OSError}: a cache that cannot read answers None, one that cannot
    write stores nothing (L{put} returns False). C{ValueError} is raised only for a UID
    outside 1..2**32-1 passed to L{put}/L{putMany}, a programming error.
    """

    def __init__(self, path: str, uidValidity: int, maxValue: int = MAX_VALUE) -> None:
        """A cache at C{path} (normally C{<folder dir>/pymaild.cache}) for C{uidValidity}.

        Nothing is opened yet. When first opened, a file whose header records another
        UIDVALIDITY, another format version or no valid header at all is replaced by an
        empty one (by rename, so other processes still reading it are not disturbed).
        Values longer than C{maxValue} bytes are refused.
        """
        if not 0 < uidValidity <= _MAX_UID:
            raise ValueError(f"uidValidity out of range: {uidValidity!r}")
        if not 0 <= maxValue <= _MAX_VALUE_LIMIT:
            raise ValueError(f"maxValue out of range: {maxValue!r}")
        self.path = path
        self.uidValidity = uidValidity
        self.maxValue = maxValue
        self._tmpPath = path + ".new"
        self._lock = threading.Lock()
        self._h: _Handle | None = None
        self._index = _UidIndex()
        self._end = HEADER_SIZE
        self._dead = 0
        # Byte ranges (start, end), sorted and disjoint, of the current file holding only
        # trusted records: appended by this instance with trusted=True, or read by
        # readSpans and found intact and accepted. readSpans checks nothing there again.
        self._trusted: list[tuple[int, int]] = []
        self._closed = False
        self._failedAt: float | None = None
        self._hits = 0
        self._misses = 0
        self._corrupt = 0
        self._refused = 0
        self._writeErrors = 0
        self._compactions = 0

    def __repr__(self) -> str:
        """Debug representation."""
        return f"<CacheFile {self.path!r} V{self.uidValidity} {self._index.count} records>"

    def __enter__(self) -> CacheFile:
        """Use as a context manager: L{close} on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()

    # -- public API --

    def get(self, uid: int) -> bytes | None:
        """The value last stored for C{uid}, or None (never stored, damaged, unreadable).

        An unknown UID costs one C{stat} of the path, to pick up what other processes
        appended (or a compacted file that replaced this one).
        """
        if not 0 < uid <= _MAX_UID:
            return None
        with self._lock:
            if not self._openLocked():
                self._misses += 1
                return None
            packed = self._index.get(uid)
            if not packed:
                self._refreshLocked()
                packed = self._index.get(uid)
            h = self._h
            if not packed or h is None:
                self._misses += 1
                return None
            h.users += 1
        value: bytes | None = None
        try:
            reclen = packed & _LEN_MASK
            value = _checkRecord(os.pread(h.fd, reclen, packed >> _LEN_BITS), 0, uid, reclen)
        except OSError:
            value = None
        finally:
            with self._lock:
                self._releaseLocked(h)
                if value is None:
                    self._misses += 1
                    self._damagedLocked(h, uid, packed)
                else:
                    self._hits += 1
        return value

    def getMany(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The cached values of those of C{uids} that have one: C{{uid: value}}.

        Records are read in file order: neighbours (gaps of at most 16 KiB, spans of at
        most 8 MiB) with one C{pread} of their covering span, others one C{pread} each.
        If some UIDs are unknown, one C{stat} checks for records other processes added.
        """
        wanted = sorted({u for u in uids if 0 < u <= _MAX_UID})
        out: dict[int, bytes] = {}
        if not wanted:
            return out
        with self._lock:
            if not self._openLocked():
                self._misses += len(wanted)
                return out
            found = [(self._index.get(u), u) for u in wanted]
            if not all(p for p, _ in found):
                self._refreshLocked()
                # (the file may have been replaced: look everything up again)
                found = [(self._index.get(u), u) for u in wanted]
            entries = sorted((p, u) for p, u in found if p)
            h = self._h
            if not entries or h is None:
                self._misses += len(wanted)
                return out
            h.users += 1
        bad: list[tuple[int, int]] = []
        try:
            for group in _groups(entries):
                start = group[0][0] >> _LEN_BITS
                last = group[-1][0]
                span = (last >> _LEN_BITS) + (last & _LEN_MASK) - start
                try:
                    buf = os.pread(h.fd, span, start)
                except OSError:
                    bad.extend(group)
                    continue
                mv = memoryview(buf)
                for p, u in group:
                    v = _checkRecord(mv, (p >> _LEN_BITS) - start, u, p & _LEN_MASK)
                    if v is None:
                        bad.append((p, u))
                    else:
                        out[u] = v
        finally:
            with self._lock:
                self._releaseLocked(h)
                self._hits += len(out)
                self._misses += len(wanted) - len(out)
                for p, u in bad:
                    self._damagedLocked(h, u, p)
        return out

    def readSpans(self, uids: Sequence[int],
                  accept: Callable[[int, bytes, int, int], bool] | None = None
                  ) -> tuple[list[Span], list[int]]:
        """The records of C{uids} (ascending, without duplicates) read in place, for
        callers that search many values in bulk: (spans, the UIDs without a record).

        Records are read in file order, neighbours together as in L{getMany}, and each
        is checked as L{get} checks it (magic, UID, length, crc), then, when C{accept} is
        given, by C{accept(uid, data, start, end)} (its payload is C{data[start:end]}).
        A record failing a check is left out of its span and its UID counted as without
        a record (a damaged one is dropped from the index). If some UIDs are unknown,
        one C{stat} checks for records other processes added.

        Records that passed these checks once, and those appended by this instance
        with C{putMany(..., trusted=True)}, are not checked again (the file's bytes do
        not change under a record; a replaced or compacted file starts untrusted). So
        C{accept} must be the same rule at every call on one file, one that a record
        passing it once always passes (as "the record names the message that has this
        UID", which never changes while the UIDVALIDITY does not).
        """
        missing: list[int] = []
        spans: list[Span] = []
        if not uids:
            return spans, missing
        if uids[0] <= 0 or uids[-1] > _MAX_UID:
            uids = [u for u in uids if 0 < u <= _MAX_UID]
        with self._lock:
            if not self._openLocked():
                self._misses += len(uids)
                return spans, list(uids)
            entries = self._index.getAll(uids)
            if 0 in entries:
                self._refreshLocked()
                entries = self._index.getAll(uids)
            h = self._h
            if h is None:
                self._misses += len(uids)
                return spans, list(uids)
            h.users += 1
            ranges = self._trusted
        bad: list[tuple[int, int]] = []
        verified: list[tuple[int, int]] = []
        found = 0
        q = 0  # the first trusted range that may hold the next record
        try:
            if 0 in entries:
                missing = [u for u, p in zip(uids, entries, strict=True) if not p]
                pairs = [(p, u) for u, p in zip(uids, entries, strict=True) if p]
                entries = [p for p, _ in pairs]
                uids = [u for _, u in pairs]
                del pairs
            if any(map(int.__gt__, entries, entries[1:])):  # not in file order
                order = sorted(range(len(entries)), key=entries.__getitem__)
                entries = [entries[i] for i in order]
                uids = [uids[i] for i in order]
            offsets = list(map(_LEN_BITS.__rrshift__, entries))  # p >> _LEN_BITS, in C
            n = len(entries)
            unpack, crc32 = _REC.unpack_from, zlib.crc32
            i = 0
            recEnds = list(map(int.__add__, offsets, map(_LEN_MASK.__and__, entries)))
            # Without a gap too wide to read across (the usual case), spans are cut by
            # size alone, found by bisection.
            narrow = n < 2 or max(map(int.__sub__, offsets[1:], recEnds)) <= _MAX_GAP
            while i < n:
                start = offsets[i]
                if narrow:
                    j = max(i + 1, bisect.bisect_right(recEnds, start + _MAX_SPAN, i))
                    end = recEnds[j - 1]
                else:
                    end = recEnds[i]
                    j = i + 1
                    while j < n:
                        if offsets[j] - end > _MAX_GAP or recEnds[j] - start > _MAX_SPAN:
                            break
                        end = recEnds[j]
                        j += 1
                try:
                    data = os.pread(h.fd, end - start, start)
                except OSError:
                    data = b""
                size = len(data)
                t = bisect.bisect_right(ranges, (start, _MAX_OFFSET)) - 1
                if size == end - start and t >= 0 and ranges[t][1] >= end:
                    # Every record here was checked before: no need to look again.
                    found += j - i
                    starts = list(map((REC_HEADER_SIZE - start).__add__, offsets[i:j]))
                    ends = list(map(int.__add__, starts, map(
                        (-REC_HEADER_SIZE).__add__, map(_LEN_MASK.__and__, entries[i:j]))))
                    spans.append(Span(data, list(uids[i:j]), starts, ends))
                    i = j
                    continue
                view = memoryview(data)
                spanUids = []
                starts = []
                ends = []
                for k in range(i, j):
                    pos = offsets[k] - start
                    reclen = entries[k] & _LEN_MASK
                    uid = uids[k]
                    recEnd = offsets[k] + reclen
                    while q < len(ranges) and ranges[q][1] < recEnd:
                        q += 1
                    if (q < len(ranges) and ranges[q][0] <= offsets[k]
                            and pos + reclen <= size):
                        spanUids.append(uid)  # checked before
                        starts.append(pos + REC_HEADER_SIZE)
                        ends.append(pos + reclen)
                        continue
                    if pos + reclen <= size:
                        magic, crc, ruid, length = unpack(data, pos)
                        if (magic == _REC_MAGIC and ruid == uid
                                and length + REC_HEADER_SIZE == reclen
                                and crc32(view[pos + 8:pos + reclen]) == crc):
                            begin = pos + REC_HEADER_SIZE
                            if accept is None or accept(uid, data, begin, pos + reclen):
                                spanUids.append(uid)
                                starts.append(begin)
                                ends.append(pos + reclen)
                                verified.append((offsets[k], recEnd))
                            else:
                                missing.append(uid)
                            continue
                    bad.append((entries[k], uid))
                    missing.append(uid)
                view.release()
                if spanUids:
                    found += len(spanUids)
                    spans.append(Span(data, spanUids, starts, ends))
                i = j
        finally:
            with self._lock:
                self._releaseLocked(h)
                self._hits += found
                self._misses += len(missing)
                for p, u in bad:
                    self._damagedLocked(h, u, p)
                if verified and h is self._h:
                    self._trusted = _mergeRanges(self._trusted, verified)
        missing.sort()
        return spans, missing

    def missing(self, uids: Iterable[int]) -> list[int]:
        """Those of C{uids} this instance knows no record of (from its index alone: no
        disk access once the file is open), in the order given."""
        with self._lock:
            if not self._openLocked():
                return list(uids)
            get = self._index.get
            return [u for u in uids if not 0 < u <= _MAX_UID or not get(u)]

    def put(self, uid: int, value: bytes) -> bool:
        """Store C{value} for C{uid}, replacing any earlier one; True when stored.

        False (nothing stored) when the value is larger than C{maxValue}, or the file
        cannot be written (disk full, read-only, folder gone...).

        @raise ValueError: C{uid} is not in 1..2**32-1.
        """
        return self.putMany(((uid, value),)) == 1

    def putMany(self, items: Iterable[tuple[int, bytes]], trusted: bool = False) -> int:
        """Store many (uid, value) pairs with one locked append; return how many were stored.

        The same rules as L{put} apply to each pair (too large: skipped); if the append
        fails, none is stored and 0 is returned. A UID given twice keeps its last value.
        With C{trusted}, the caller vouches that its C{accept} (L{readSpans}) takes every
        value for its UID: L{readSpans} then checks none of these records again.

        @raise ValueError: a UID is not in 1..2**32-1 (nothing is stored).
        """
        records: list[tuple[int, int]] = []
        parts: list[bytes] = []
        for uid, value in items:
            if not 0 < uid <= _MAX_UID:
                raise ValueError(f"uid out of range: {uid!r}")
            if len(value) > self.maxValue:
                with self._lock:
                    self._refused += 1
                continue
            rec = _packRecord(uid, bytes(value))
            parts.append(rec)
            records.append((uid, len(rec)))
        if not records:
            return 0
        blob = b"".join(parts)
        del parts
        with self._lock:
            if not self._openLocked() or not self._appendLocked(blob, records, trusted):
                self._writeErrors += 1
                return 0
        return len(records)

    def refresh(self) -> None:
        """Index what other processes appended (or pick up their compacted file) now.

        Lookups do this by themselves for unknown UIDs; call it to see another process's
        replacement of a UID this instance already knows.
        """
        with self._lock:
            if self._openLocked():
                self._refreshLocked()

    def compact(self, live: Collection[int], force: bool = False) -> bool:
        """Drop the records of UIDs not in C{live} when the garbage is large; True if done.

        Garbage is the replaced and damaged records plus those of UIDs not in C{live}; the
        file is rewritten (live records only, into a new file renamed over this one) when
        it exceeds half the file and L{COMPACT_MIN_BYTES}, or whenever C{force} is true.
        Otherwise this is a cheap no-op (one pass over the index, no disk writes). C{live}
        should be a set or range (anything else is turned into a set).
        """
        liveSet: Collection[int] = live if isinstance(
            live, (set, frozenset, range, dict)) else set(live)
        with self._lock:
            if not self._openLocked():
                return False
            h = self._h
            assert h is not None
            if not h.writable:
                return False
            self._refreshLocked()
            if not force:
                used = self._end - HEADER_SIZE
                if used <= COMPACT_MIN_BYTES:
                    return False
                garbage = self._dead + self._index.bytesNotIn(liveSet)
                if garbage <= COMPACT_MIN_BYTES or garbage * 2 <= used:
                    return False
            try:
                return self._compactLocked(liveSet)
            except OSError:
                self._writeErrors += 1
                return False

    def close(self) -> None:
        """Close the file and forget the index; later calls miss and store nothing."""
        with self._lock:
            self._closed = True
            self._dropHandleLocked()

    @property
    def size(self) -> int:
        """Bytes of the file indexed so far (0 when it is not open)."""
        with self._lock:
            return self._end if self._h is not None else 0

    @property
    def records(self) -> int:
        """Number of UIDs with a record."""
        with self._lock:
            return self._index.count

    def __len__(self) -> int:
        """Number of UIDs with a record."""
        return self.records

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters (see L{CacheStats})."""
        with self._lock:
            return CacheStats(
                records=self._index.count,
                fileBytes=self._end if self._h is not None else 0,
                deadBytes=self._dead,
                indexBytes=self._index.memory(),
                hits=self._hits,
                misses=self._misses,
                corrupt=self._corrupt,
                refused=self._refused,
                writeErrors=self._writeErrors,
                compactions=self._compactions,
                writable=self._h is not None and self._h.writable,
            )

    # -- opening (caller holds self._lock) --

    def _openLocked(self) -> bool:
        """Make sure a usable file is open and indexed; False when there is none."""
        if self._h is not None:
            return True
        if self._closed:
            return False
        if self._failedAt is not None and time.monotonic() - self._failedAt < _RETRY_OPEN:
            return False
        for _ in range(5):
            try:
                done = self._openOnce()
            except OSError:
                done = False
            if done is not None:
                if not done:
                    self._failedAt = time.monotonic()
                    self._dropHandleLocked()
                else:
                    self._failedAt = None
                return done
        self._failedAt = time.monotonic()
        return False

    def _openOnce(self) -> bool | None:
        """Open the path and adopt it; None when it was replaced meanwhile (try again)."""
        writable = True
        try:
            fd = os.open(self.path, _OPEN_RW, 0o600)
        except OSError as e:
            if e.errno not in _READONLY_ERRNOS:
                raise
            fd = os.open(self.path, _OPEN_RO)
            writable = False
        try:
            st = os.fstat(fd)
            if self._headerOk(fd):
                h = _Handle(fd, st, writable)
                fd = -1
                self._installLocked(h)
                self._scanLocked(haveFlock=False)
                return True
            if not writable:
                return False
            # Closing fd releases this lock on every path that does not install fd.
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _Handle(fd, st, writable).sameFile(os.stat(self.path)):
                return None
            if self._headerOk(fd) or os.fstat(fd).st_size == 0:
                if not self._headerOk(fd):
                    writeAll(fd, _packHeader(self.uidValidity))
                h = _Handle(fd, st, writable)
                fd = -1
                self._installLocked(h)
                try:
                    self._scanLocked(haveFlock=True)
                finally:
                    fcntl.flock(h.fd, fcntl.LOCK_UN)
                return True
            # Another validity or version, or garbage: start afresh beside it and
            # rename over, so that readers of the old file are not disturbed.
            new, index, end = self._writeFresh(None, [])
            self._installLocked(new)
            self._index, self._end = index, end
            return True
        finally:
            if fd >= 0:
                os.close(fd)

    def _headerOk(self, fd: int) -> bool:
        """True when C{fd}'s file starts with our header (magic, version, validity, crc)."""
        return os.pread(fd, HEADER_SIZE, 0) == _packHeader(self.uidValidity)

    def _installLocked(self, h: _Handle) -> None:
        """Make C{h} the current file, with an empty index."""
        self._dropHandleLocked()
        self._h = h
        self._index = _UidIndex()
        self._end = HEADER_SIZE
        self._dead = 0
        self._trusted = []

    def _dropHandleLocked(self) -> None:
        """Retire the current file (closed once its readers are done) and the index."""
        h = self._h
        self._h = None
        self._index = _UidIndex()
        self._end = HEADER_SIZE
        self._dead = 0
        self._trusted = []
        if h is not None:
            h.retired = True
            if h.users == 0:
                os.close(h.fd)

    def _releaseLocked(self, h: _Handle) -> None:
        """A reader is done with C{h}: close it if it was retired meanwhile."""
        h.users -= 1
        if h.retired and h.users == 0:
            os.close(h.fd)

    def _damagedLocked(self, h: _Handle, uid: int, packed: int) -> None:
        """The record C{packed} of C{uid} failed its checks: drop it from the index."""
        self._corrupt += 1
        if h is self._h and self._index.get(uid) == packed:
            self._index.pop(uid)
            self._dead += packed & _LEN_MASK

    # -- keeping up with the file (caller holds self._lock) --

    def _refreshLocked(self) -> None:
        """Re-index if the file grew, or reopen it if another process replaced it."""
        h = self._h
        if h is None:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            return  # file or folder gone: keep reading what we have (still right)
        if not h.sameFile(st):
            self._dropHandleLocked()
            self._failedAt = None
            self._openLocked()
        elif st.st_size != self._end:
            try:
                self._scanLocked(haveFlock=False)
            except OSError:
                pass

    def _scanLocked(self, haveFlock: bool) -> None:
        """Index the records from C{self._end} to the end of the file.

        Records are checked for framing (magic, plausible length, non-zero UID); their
        crc is checked here only for the record that ends the file, the one a crash
        mid-append may have torn (every read checks the crc again, so a damaged record
        elsewhere is a miss when read). Without the C{flock}, an incomplete or damaged
        tail is left alone (a writer may be in the middle of it) and indexing stops
        there; with it, such a tail was torn by a crash and is truncated away, as is
        anything after broken framing.
        """
        h = self._h
        assert h is not None
        fd = h.fd
        size = os.fstat(fd).st_size
        if size < self._end:
            # Someone truncated records we had indexed: start again from scratch.
            self._index = _UidIndex()
            self._end = HEADER_SIZE
            self._dead = 0
            self._trusted = []
        index = self._index
        dense, sparse = index.dense, index.sparse
        nextUid = index.base + len(dense) if dense else -1
        added = 0
        pos = self._end
        stopAt: int | None = None
        unpack = _REC.unpack_from
        need = _SCAN_CHUNK
        while pos < size and stopAt is None:
            want = min(need, size - pos)
            buf = os.pread(fd, want, pos)
            n = len(buf)
            p = 0
            need = _SCAN_CHUNK
            atEof = pos + n == size
            while True:
                if p + REC_HEADER_SIZE > n:
                    if atEof and p < n:
                        stopAt = pos + p  # a partial record header at the very end
                    break
                magic, crc, uid, length = unpack(buf, p)
                end = p + REC_HEADER_SIZE + length
                if magic != _REC_MAGIC or length > _MAX_VALUE_LIMIT or uid == 0:
                    stopAt = pos + p
                    break
                if end >= n:
                    if end > n:
                        if pos + end > size:
                            stopAt = pos + p  # runs past the end: incomplete
                        else:
                            need = max(_SCAN_CHUNK, end - p)
                        break
                    if atEof and zlib.crc32(memoryview(buf)[p + 8:end]) != crc:
                        stopAt = pos + p  # damaged last record: torn, or being written
                        break
                if uid == nextUid and not sparse:  # the usual case: ascending, dense
                    dense.append(((pos + p) << _LEN_BITS) | (end - p))
                    nextUid += 1
                    added += 1
                else:
                    index.count += added
                    added = 0
                    old = index.set(uid, ((pos + p) << _LEN_BITS) | (end - p))
                    if old:
                        self._dead += old & _LEN_MASK
                    dense, sparse = index.dense, index.sparse
                    nextUid = index.base + len(dense) if dense else -1
                p = end
            pos += p
            self._end = pos
            index.count += added
            added = 0
            if p == 0 and stopAt is None and n < want:
                break  # the file shrank under us (unlocked): stop, look again later
        if stopAt is not None:
            self._end = stopAt
            if haveFlock and h.writable:
                os.ftruncate(fd, stopAt)

    # -- writing (caller holds self._lock) --

    def _lockCurrentLocked(self) -> _Handle | None:
        """Take the C{flock} of the file the path names now (reopening if it changed),
        index what others appended and truncate a torn tail; None if not writable."""
        for _ in range(5):
            if not self._openLocked():
                return None
            h = self._h
            assert h is not None
            if not h.writable:
                return None
            fcntl.flock(h.fd, fcntl.LOCK_EX)
            try:
                current = h.sameFile(os.stat(self.path))
            except FileNotFoundError:
                current = False
            except OSError:
                fcntl.flock(h.fd, fcntl.LOCK_UN)
                raise
            if current:
                try:
                    self._scanLocked(haveFlock=True)
                except OSError:
                    fcntl.flock(h.fd, fcntl.LOCK_UN)
                    raise
                return h
            fcntl.flock(h.fd, fcntl.LOCK_UN)
            self._dropHandleLocked()
            self._failedAt = None
        return None

    def _appendLocked(self, blob: bytes, records: list[tuple[int, int]],
                      trusted: bool = False) -> bool:
        """Append C{blob} (the records C{records}: (uid, length) in order) and index it;
        with C{trusted}, note its records as trusted (see L{readSpans})."""
        try:
            h = self._lockCurrentLocked()
        except OSError:
            return False
        if h is None:
            return False
        try:
            start = self._end
            try:
                if os.fstat(h.fd).st_size != start:
                    return False  # not where our index thinks the end is: do not guess
                writeAll(h.fd, blob)
            except OSError:
                try:
                    os.ftruncate(h.fd, start)
                except OSError:
                    pass  # the next writer truncates the torn tail
                return False
            pos = start
            index = self._index
            for uid, reclen in records:
                old = index.set(uid, (pos << _LEN_BITS) | reclen)
                if old:
                    self._dead += old & _LEN_MASK
                pos += reclen
            self._end = pos
            if trusted:
                self._trusted = _mergeRanges(self._trusted, [(start, pos)])
            return True
        finally:
            fcntl.flock(h.fd, fcntl.LOCK_UN)

    def _writeFresh(self, src: _Handle | None,
                    live: list[tuple[int, int]]) -> tuple[_Handle, _UidIndex, int]:
        """Write a new file holding the records C{live} ((packed, uid) sorted by offset,
        read from C{src}) and rename it over the path.

        The caller holds the current file's C{flock}. Returns a handle on the new file
        (open for appending), its index and its size.
        """
        fd = os.open(self._tmpPath, _OPEN_RW | os.O_TRUNC, 0o600)
        try:
            out = [_packHeader(self.uidValidity)]
            outLen = HEADER_SIZE
            pending = 0
            index = _UidIndex()
            for group in _groups(live, maxSpan=_SCAN_CHUNK):
                assert src is not None
                start = group[0][0] >> _LEN_BITS
                last = group[-1][0]
                buf = os.pread(src.fd, (last >> _LEN_BITS) + (last & _LEN_MASK) - start,
                               start)
                for p, u in group:
                    pos, reclen = (p >> _LEN_BITS) - start, p & _LEN_MASK
                    if _checkRecord(buf, pos, u, reclen) is None:
                        self._corrupt += 1
                        continue
                    out.append(buf[pos:pos + reclen])
                    index.set(u, (outLen << _LEN_BITS) | reclen)
                    outLen += reclen
                    pending += reclen
                if pending >= _SCAN_CHUNK:
                    writeAll(fd, b"".join(out))
                    out, pending = [], 0
            writeAll(fd, b"".join(out))
            h = _Handle(fd, os.fstat(fd), True)
            os.rename(self._tmpPath, self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(self._tmpPath)
            except OSError:
                pass
            raise
        return h, index, outLen

    def _compactLocked(self, live: Collection[int]) -> bool:
        """Rewrite the file with the records of C{live} only (caller holds self._lock)."""
        h = self._lockCurrentLocked()
        if h is None:
            return False
        try:
            keep = sorted((p, u) for u, p in self._index.items() if u in live)
            new, index, end = self._writeFresh(h, keep)
        finally:
            fcntl.flock(h.fd, fcntl.LOCK_UN)
        self._installLocked(new)
        self._index, self._end = index, end
        self._compactions += 1
        return True


def _mergeRanges(ranges: list[tuple[int, int]],
                 more: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of two lists of byte ranges (start, end) as a new sorted list of
    disjoint ranges, touching ones joined (C{ranges} sorted and disjoint already)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges + more):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _groups(entries: list[tuple[int, int]],
            maxSpan: int = _MAX_SPAN) -> Iterator[list[tuple[int, int]]]:
    """Split (packed, uid) entries sorted by offset into runs read with one C{pread} each:
    consecutive records at most L{_MAX_GAP} apart, spanning at most C{maxSpan} bytes."""
    group: list[tuple[int, int]] = []
    gStart = gEnd = 0
    for e in entries:
        off = e[0] >> _LEN_BITS
        end = off + (e[0] & _LEN_MASK)
        if group and off - gEnd <= _MAX_GAP and end - gStart <= maxSpan:
            group.append(e)
            gEnd = max(gEnd, end)
            continue
        if group:
            yield group
        group, gStart, gEnd = [e], off, end
    if group:
        yield group
