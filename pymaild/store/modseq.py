"""Per-message mod-sequences of a folder (CONDSTORE/QRESYNC, RFC 7162), kept on disk.

Where the numbers come from: pymaild keeps a message's flags only in its Maildir file
name (Dovecot's layout), and learns of every change, its own or another process's
(Dovecot, a second pymaild, a delivery, an expunge), from L{Folder.scan}, which compares
the listings with what it saw before. A change of a message is therefore a change of the
flag set a scan reports for its UID, and an expunge is a UID a scan no longer reports.
L{ModseqLog.sync} is given each scan's message list, compares every message's flag set
(as a 64-bit digest) with the one last recorded for its UID and gives every message that
changed, and every UID that vanished, the next mod-sequence (one number per batch of
changes seen together: RFC 7162 lets messages changed together share one).

The record of what was seen is the file L{MODSEQ_NAME} beside C{dovecot-uidlist} in the
folder directory (a plain file without a leading dot, which Maildir++ code and Dovecot
ignore), shared by every process on the tree::

    header  magic "PYMDMSEQ" | version u32 | uidvalidity u32 | base u64 | crc32 u32
    record  crc32 u32 | uid u32 | modseq u64 | digest u64    (digest 0: UID expunged)

Records are only appended, under the file's C{flock(LOCK_EX)}; a later record for a UID
replaces an earlier one. Before comparing, a process reads what the others appended
since its last look, so two processes that see the same change agree on it and record it
once. HIGHESTMODSEQ is the largest modseq recorded, so an expunge (its tombstone record)
moves it forward too, and the tombstones answer QRESYNC's C{VANISHED (EARLIER)}.

Restarts and loss: the numbers survive restarts because they are on disk. The file is not
fsynced; should it be lost or its tail torn by a crash, the numbers must still never go
back below any a client was shown. So a new file starts at C{base}, the current time in
microseconds (far above any count of changes made before), and a process that truncates
a torn tail continues from at least the current time too. Every message present when a
file is started gets modseq C{base}; a client whose mod-sequence is below C{base} is
told every UID it knows of that is gone (L{ModseqLog.vanished}), since the tombstones
from before the file cannot be known.

Compaction: when superseded records outnumber live ones (and the file is over
L{COMPACT_MIN} records), the live records and tombstones are written to
C{pymaild.modseq.new} and renamed over the file; a process whose open file is no longer
the one the path names reopens and re-reads it. A file for another UIDVALIDITY is
started afresh. A tree where the file cannot be written (read-only) keeps the numbers in
memory only. Every call blocks on disk I/O: run it in a thread, never in the reactor.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import hashlib
import itertools
import operator
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["ModseqLog", "MODSEQ_NAME", "MAX_MODSEQ"]

MODSEQ_NAME = "pymaild.modseq"
"""The file's name in a folder directory."""

MAX_MODSEQ = (1 << 63) - 1
"""The largest mod-sequence RFC 7162 allows (mod-sequence-valzer is below 2^63)."""

COMPACT_MIN = 4096
"""The file is compacted only when it holds more records than this."""

_VERSION = 1
_HEADER = struct.Struct("<8sIIQI")
_HEADER_MAGIC = b"PYMDMSEQ"
_REC = struct.Struct("<IIQQ")
_REC_SIZE = _REC.size
_OPEN = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def _nowBase() -> int:
    """The current time in microseconds: the floor of a fresh or repaired file."""
    return int(time.time() * 1_000_000)


def _packHeader(uidvalidity: int, base: int) -> bytes:
    body = _HEADER_MAGIC + struct.pack("<IIQ", _VERSION, uidvalidity, base)
    return body + struct.pack("<I", zlib.crc32(body))


def _packRecord(uid: int, modseq: int, digest: int) -> bytes:
    body = struct.pack("<IQQ", uid, modseq, digest)
    return struct.pack("<I", zlib.crc32(body)) + body


def flagsDigest(flags: Iterable[str]) -> int:
    """A non-zero 64-bit digest of a flag set (order does not matter)."""
    raw = "\n".join(sorted(flags)).encode("utf-8")
    d = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
    return d or 1


class ModseqLog:
    """The mod-sequences of one folder directory, shared by the process's L{Folder}s.

    Lookups (L{modseq}, L{highest}) read plain dicts and may be made from any thread;
    L{sync} and L{vanished} take the log's lock.

    @ivar highest: HIGHESTMODSEQ (0 until the first L{sync}).
    @ivar base: the mod-sequence of the file's start (see the module docstring).
    """

    def __init__(self, path: str) -> None:
        """The log of the folder directory C{path} (nothing is read yet)."""
        self.path = os.path.join(path, MODSEQ_NAME)
        self.lock = threading.Lock()
        self.uidvalidity: int | None = None
        self.base = 0
        self.highest = 0
        self.live: dict[int, tuple[int, int]] = {}  # uid -> (modseq, digest)
        self.gone: dict[int, int] = {}  # uid -> modseq of its expunge
        self._records = 0
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._last: list[Any] | None = None
        self._lastSize = -1
        self._digests: dict[frozenset[str], int] = {}
        self._memoryOnly = False
        self._resets = 0
        self._lastVersion = 0
        # (modseq, uid) of the live records in modseq order, for L{changedAfter};
        # appended to as changes come in, rebuilt when out of order (None).
        self._order: list[tuple[int, int]] | None = []

    # -- lookups ----------------------------------------------------------------
    def modseq(self, uid: int) -> int:
        """The mod-sequence of message C{uid}: for one expunged since, that of its
        expunge (a session not yet told of the EXPUNGE still answers for the message,
        and a number below one it was shown before would move it backwards); the base
        when it is not known yet."""
        e = self.live.get(uid)
        if e is not None:
            return e[0]
        return self.gone.get(uid) or max(self.base, 1)

    def changedSince(self, uids: Iterable[int], modseq: int) -> list[int]:
        """Those of C{uids} whose mod-sequence is above C{modseq} (L{modseq}'s numbers,
        an expunge's included)."""
        live, gone = self.live, self.gone
        base = max(self.base, 1)
        out = []
        for u in uids:
            e = live.get(u)
            if (e[0] if e is not None else gone.get(u) or base) > modseq:
                out.append(u)
        return out

    def changedAfter(self, modseq: int) -> set[int] | None:
        """The UIDs whose mod-sequence is above C{modseq}, or None for "every message"
        (C{modseq} below the file's base). Costs the number of changes since, not the
        size of the folder."""
        with self.lock:
            if modseq < max(self.base, 1):
                return None
            order = self._order
            if order is None:
                order = self._order = sorted((m, u) for u, (m, _) in self.live.items())
            i = bisect.bisect_right(order, (modseq, 1 << 32))
            live = self.live
            return {u for m, u in order[i:] if u in live and live[u][0] == m}

    def _noteOrder(self, modseq: int, uid: int) -> None:
        order = self._order
        if order is None:
            return
        if order and order[-1][0] > modseq:
            self._order = None
        else:
            order.append((modseq, uid))
            if len(order) > 2 * len(self.live) + 1024:
                self._order = None  # mostly superseded entries: rebuild when asked

    def vanished(self, modseq: int, candidates: Iterable[int], present: set[int] | Any
                 ) -> list[int]:
        """The UIDs of C{candidates} expunged after C{modseq} (sorted).

        Below the file's base every candidate not C{present} counts as expunged (the
        log cannot know when it went). C{candidates} may be a range.
        """
        with self.lock:
            if modseq < self.base:
                return sorted(u for u in candidates if u not in present)
            gone = self.gone
            return sorted(u for u in candidates if gone.get(u, 0) > modseq)

    def vanishedIn(self, modseq: int, lo: int, hi: int) -> list[int]:
        """The tombstoned UIDs in C{lo:hi} expunged after C{modseq} (sorted)."""
        with self.lock:
            return sorted(u for u, m in self.gone.items() if lo <= u <= hi and m > modseq)

    # -- the file ----------------------------------------------------------------
    def _digest(self, flags: frozenset[str]) -> int:
        d = self._digests.get(flags)
        if d is None:
            if len(self._digests) > 4096:
                self._digests.clear()
            d = self._digests[flags] = flagsDigest(flags)
        return d

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._ino = None, None

    def _resetMemory(self, uidvalidity: int, base: int) -> None:
        self.uidvalidity, self.base = uidvalidity, base
        self.highest = max(self.highest, base)
        self.live, self.gone = {}, {}
        self._records = 0
        self._last = None
        self._resets += 1
        self._order = []

    def _openLocked(self) -> int | None:
        """Open the file named by the path and take its flock (None: read-only tree)."""
        if self._memoryOnly:
            return None
        for _ in range(16):
            if self._fd is None:
                try:
                    fd = os.open(self.path, _OPEN, 0o600)
                except OSError as e:
                    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                        self._memoryOnly = True
                        return None
                    if e.errno == errno.ENOENT:  # the folder went away
                        return None
                    raise
                opened = os.fstat(fd)
                self._fd, self._ino = fd, (opened.st_dev, opened.st_ino)
                self._offset = 0
                self.uidvalidity = None  # re-read everything from the header
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            st: os.stat_result | None
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == self._ino:
                return self._fd
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._close()  # compacted (replaced) or removed by another process
        raise OSError(errno.EAGAIN, "modseq file keeps being replaced", self.path)

    def _readNew(self, fd: int, uidvalidity: int) -> None:
        """Index what was appended since the last look; start afresh on a foreign,
        corrupt or other-UIDVALIDITY header; truncate a torn tail."""
        size = os.fstat(fd).st_size
        if self.uidvalidity != uidvalidity or self._offset == 0:
            head = os.pread(fd, _HEADER.size, 0)
            good = False
            if len(head) == _HEADER.size:
                magic, version, uv, base, crc = _HEADER.unpack(head)
                good = (magic == _HEADER_MAGIC and version == _VERSION
                        and crc == zlib.crc32(head[:-4]) and uv == uidvalidity)
            if not good:
                base = max(_nowBase(), self.highest + 1)
                os.ftruncate(fd, 0)
                os.pwrite(fd, _packHeader(uidvalidity, base), 0)
                self._resetMemory(uidvalidity, base)
                self._offset = _HEADER.size
                self._lastSize = _HEADER.size
                return
            self._resetMemory(uidvalidity, base)
            self._offset = _HEADER.size
        if size <= self._offset:
            self._lastSize = size
            return
        data = os.pread(fd, size - self._offset, self._offset)
        live, gone = self.live, self.gone
        highest = self.highest
        pos, n = 0, len(data)
        torn = False
        while pos + _REC_SIZE <= n:
            crc, uid, modseq, digest = _REC.unpack_from(data, pos)
            if crc != zlib.crc32(data[pos + 4 : pos + _REC_SIZE]):
                torn = True
                break
            if digest:
                live[uid] = (modseq, digest)
                gone.pop(uid, None)
                self._noteOrder(modseq, uid)
            else:
                live.pop(uid, None)
                gone[uid] = modseq
            if modseq > highest:
                highest = modseq
            self._records += 1
            pos += _REC_SIZE
        if pos < n:
            torn = True
        self._offset += pos
        if torn:  # a crash mid-append, or damage: drop the rest, move past it in time
            os.ftruncate(fd, self._offset)
            highest = max(highest, _nowBase())
        self.highest = highest
        self._lastSize = self._offset
        self._last = None

    def sync(self, uidvalidity: int, messages: Sequence[Any], version: int = 0) -> int:
        """Record the changes in C{messages} (a scan's list of MessageInfo, by UID) and
        return HIGHESTMODSEQ. C{version} (L{FolderState.version}; 0: unknown) equal
        to the last one's says the list is the last one, without comparing it.

        Cheap when nothing changed: the same MessageInfo objects as last time and a
        file of the same size mean no change anyone recorded. When the list holds the
        same UIDs as last time, only the entries that are other objects are compared
        (a few flag changes in a big folder cost the changes, not the folder).
        """
        with self.lock:
            last = self._last
            if (version and version == self._lastVersion and last is not None
                    and self.uidvalidity == uidvalidity
                    and (self._memoryOnly or self._fileSize() == self._lastSize)):
                return self.highest
            changed: list[Any] | None = None
            if (last is not None and self.uidvalidity == uidvalidity
                    and len(last) == len(messages)):
                which = list(itertools.compress(range(len(messages)),
                                                map(operator.is_not, last, messages)))
                if not which and (self._memoryOnly or self._fileSize() == self._lastSize):
                    return self.highest
                if all(messages[i].uid == last[i].uid for i in which):
                    changed = [messages[i] for i in which]
            fd = self._openLocked()
            try:
                resets = self._resets
                if fd is not None:
                    self._readNew(fd, uidvalidity)
                elif self.uidvalidity != uidvalidity:
                    self._resetMemory(uidvalidity, max(_nowBase(), self.highest + 1))
                if self._resets != resets:
                    changed = None  # records started afresh: compare every message
                self._record(fd, messages if changed is None else changed,
                             changed is not None)
            finally:
                if self._fd is not None:  # (a compaction may have replaced the file)
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._last = list(messages)
            self._lastVersion = version
            return self.highest

    def _fileSize(self) -> int:
        try:
            st = os.stat(self.path)
        except OSError:
            return -2
        if (st.st_dev, st.st_ino) != self._ino:
            return -3
        return st.st_size

    def _record(self, fd: int | None, messages: Sequence[Any], some: bool = False) -> None:
        """Compare C{messages} with the records; append the changes (one new modseq).
        With C{some}, C{messages} are only some of the folder's (none vanished)."""
        live = self.live
        fresh = not live and not self.gone
        changes: list[tuple[int, int]] = []
        seen: set[int] = set()
        digest = self._digest
        for m in messages:
            uid = m.uid
            seen.add(uid)
            d = digest(m.flags)
            e = live.get(uid)
            if e is None or e[1] != d:
                changes.append((uid, d))
        if not some and (len(seen) != len(live) or changes):
            changes.extend((u, 0) for u in live if u not in seen)
        if not changes:
            return
        modseq = self.base if fresh else self.highest + 1
        modseq = max(modseq, 1)
        if modseq > MAX_MODSEQ:  # pragma: no cover - 292,000 years of microseconds
            raise OverflowError("mod-sequence space exhausted")
        out = bytearray()
        for uid, d in changes:
            if d:
                live[uid] = (modseq, d)
                self.gone.pop(uid, None)
                self._noteOrder(modseq, uid)
            else:
                live.pop(uid, None)
                self.gone[uid] = modseq
            out += _packRecord(uid, modseq, d)
        self.highest = max(self.highest, modseq)
        self._records += len(changes)
        if fd is None:
            return
        if self._records > COMPACT_MIN and self._records > 2 * (len(live) + len(self.gone)):
            self._compact()
            return
        try:
            os.pwrite(fd, bytes(out), self._offset)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                os.ftruncate(fd, self._offset)  # keep the file whole; memory has it
                return
            raise
        self._offset += len(out)
        self._lastSize = self._offset

    def _compact(self) -> None:
        """Write the live records and tombstones to a new file and rename it over."""
        assert self.uidvalidity is not None
        tmp = self.path + ".new"
        out = bytearray(_packHeader(self.uidvalidity, self.base))
        for uid, (modseq, d) in sorted(self.live.items()):
            out += _packRecord(uid, modseq, d)
        for uid, modseq in sorted(self.gone.items()):
            out += _packRecord(uid, modseq, 0)
        # The highest modseq must survive even when its message has no record left.
        if self.highest > max([m for m, _ in self.live.values()] + list(self.gone.values())
                              + [self.base]):
            out += _packRecord(0, self.highest, 0)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, bytes(out))
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        old = self._fd
        self._fd = None
        if old is not None:
            fcntl.flock(old, fcntl.LOCK_UN)
            os.close(old)
        fd = os.open(self.path, _OPEN, 0o600)
        st = os.fstat(fd)
        # The caller unlocks this new descriptor (it never held its lock: harmless).
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        self._offset = len(out)
        self._lastSize = self._offset
        self._records = len(out) // _REC_SIZE
        self.gone.pop(0, None)
