"""The cache of parsed messages and their summaries, in memory and in each folder's files.

L{StructureCache}, keyed by (folder path, message key), keeps a few hundred complete
parses, a byte-bounded set of L{pymaild.imap.summary.Summary}s (ENVELOPE, BODY,
BODYSTRUCTURE, the header block) in memory, and every summary in the folder's
C{pymaild.cache} file. Message content never changes under a key, so entries never go
stale. There is no module-wide instance: the IMAP avatars
(L{pymaild.imap.account.IMAPAvatars}) the composition root builds own one, which every
session they open shares.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pymaild.imap.bodystructure import ParsedMessage
from pymaild.imap.summary import (
    HEADER_CACHE_MAX,
    Summary,
    headerRecordOk,
    packHeaderRecord,
    packSummary,
    summaryOf,
    unpackHeader,
    unpackHeaderRecord,
    unpackSummary,
)
from pymaild.store.cachefile import CACHE_NAME, HEADERS_NAME, CacheFile, Span

_T = TypeVar("_T")

class StructureCache:
    """A thread-safe cache keyed by (folder path, message key), in three tiers.

    Complete L{ParsedMessage}s (part trees, for numbered sections and body searches) are
    kept in an LRU of at most C{maxEntries}; L{Summary}s (ENVELOPE, BODY, BODYSTRUCTURE,
    the header block) in an LRU bounded by C{maxSummaryBytes}, and, with C{files}, in
    each folder's C{pymaild.cache} file (L{pymaild.store.cachefile}), so a large
    mailbox's summaries cost disk, not memory, and survive a restart. Message content
    never changes under a key: entries never go stale.

    The file tier is used through L{load} (summaries of many messages from their
    folder's file into memory, one read), L{record} (queue a computed summary for the
    file) and L{flush} (write what is queued) -- all blocking, for the disk runner.
    The header blocks are also kept alone, once each, in the folder's header file
    (L{HEADERS_NAME}; L{recordHeader}), which SEARCH reads in bulk (L{headerSpans}).
    """

    def __init__(self, maxEntries: int = 500, maxSummaryBytes: int = 8 << 20,
                 files: bool = True, maxFiles: int = 64) -> None:
        """Keep up to C{maxEntries} complete parses, C{maxSummaryBytes} of summaries in
        memory (about 6,000 messages' complete summaries) and, with C{files}, up to
        C{maxFiles} folder cache files open."""
        self.maxEntries = maxEntries
        self.maxSummaryBytes = maxSummaryBytes
        self.files = files
        self.maxFiles = maxFiles
        self._entries: OrderedDict[tuple[str, str], ParsedMessage] = OrderedDict()
        self._summaries: OrderedDict[tuple[str, str], Summary] = OrderedDict()
        self._summaryBytes = 0
        self._lock = threading.Lock()
        self._fileLock = threading.Lock()
        self._open: OrderedDict[str, CacheFile] = OrderedDict()
        self._queued: dict[str, tuple[Any, list[tuple[int, bytes]]]] = {}
        # The header files (HEADERS_NAME) and the blocks queued for them.
        self._openHeaders: OrderedDict[str, CacheFile] = OrderedDict()
        self._queuedHeaders: dict[str, tuple[Any, list[tuple[int, str, bytes]]]] = {}
        self.hits = 0
        self.misses = 0

    # -- the file tier (blocking) --

    def _fileOf(self, folder: Any, headers: bool = False) -> CacheFile | None:
        """The cache file of C{folder} (with C{headers}, its header file, L{HEADERS_NAME})
        opened on first use, or None without one."""
        if not self.files:
            return None
        validity = folder.knownUidValidity()
        if validity is None:
            return None
        opened = self._openHeaders if headers else self._open
        with self._fileLock:
            cf = opened.get(folder.path)
            if cf is not None and cf.uidValidity != validity:
                opened.pop(folder.path)
                cf.close()
                cf = None
            if cf is None:
                name = HEADERS_NAME if headers else CACHE_NAME
                cf = CacheFile(os.path.join(folder.path, name), validity)
                opened[folder.path] = cf
                while len(opened) > self.maxFiles:
                    _, old = opened.popitem(last=False)
                    old.close()
            else:
                opened.move_to_end(folder.path)
            return cf

    def load(self, folder: Any, infos: Sequence[Any], full: bool = False
             ) -> dict[str, Summary]:
        """Bring the summaries of C{infos} (MessageInfos of C{folder}) that are not in
        memory (with C{full}: not complete there) in from the folder's cache file.

        With C{full}, the file's incomplete summaries (no BODYSTRUCTURE yet) are not
        kept in memory, where the complete ones computed next would replace them: they
        are returned, by message key, for their ENVELOPE."""
        path = folder.path
        summaries = self._summaries
        want = []
        for info in infos:
            s = summaries.get((path, info.key))
            if s is None or (full and s.bodystructure is None):
                want.append(info)
        if not want:
            return {}
        found = self._fromFile(folder, want, unpackSummary)
        partial: dict[str, Summary] = {}
        with self._lock:
            for key, s in found.items():
                if full and s.bodystructure is None:
                    partial[key] = s
                    continue
                old = summaries.get((path, key))
                if old is None or (old.bodystructure is None and s.bodystructure is not None):
                    self._putSummary((path, key), s)
        return partial

    def headersFromFile(self, folder: Any, infos: Sequence[Any]) -> dict[str, bytes]:
        """The root header blocks of C{infos} found in the folder's files, by message
        key, read in one go and not kept in memory (for a pass over a whole folder,
        which would only churn the memory tier): from the header file, else from the
        summaries of the cache file (those are then queued for the header file)."""
        out = self._fromFile(folder, infos, unpackHeaderRecord, headers=True)
        if len(out) < len(infos):
            rest = [i for i in infos if i.key not in out]
            found = self._fromFile(folder, rest, unpackHeader)
            for info in rest:
                block = found.get(info.key)
                if block is not None:
                    self.recordHeader(folder, info, block)
            out.update(found)
        return out

    def headerSpans(self, folder: Any, uids: Sequence[int],
                    keyOf: Callable[[int], str]) -> tuple[list[Span], list[int]] | None:
        """The header records (L{packHeaderRecord}) of the messages C{uids} (ascending,
        distinct) in the folder's header file, read in bulk and checked (crc, and that
        each is the record of the message C{keyOf(uid)} names), as the spans of
        L{CacheFile.readSpans}, and the UIDs without one; None when the folder has no
        header file."""
        cf = self._fileOf(folder, headers=True)
        if cf is None:
            return None

        def accept(uid: int, data: bytes, start: int, end: int) -> bool:
            return headerRecordOk(data, start, end,
                                  keyOf(uid).encode("utf-8", "surrogateescape"))

        return cf.readSpans(uids, accept)

    def recordHeader(self, folder: Any, info: Any, block: bytes) -> None:
        """Queue the root header C{block} of message C{info} for the folder's header file
        (written by L{flush}, unless the file has it already)."""
        if not self.files or len(block) > HEADER_CACHE_MAX:
            return
        with self._fileLock:
            full = self._queueHeaderLocked(folder, info, block) >= 1024
        if full:
            self.flush()

    def _queueHeaderLocked(self, folder: Any, info: Any, block: bytes) -> int:
        """Queue a header block for the folder's header file (the caller holds the file
        lock); the number now queued for that folder."""
        entry = self._queuedHeaders.get(folder.path)
        if entry is None:
            entry = self._queuedHeaders[folder.path] = (folder, [])
        entry[1].append((info.uid, info.key, block))
        return len(entry[1])

    def _fromFile(self, folder: Any, infos: Sequence[Any],
                  unpack: Callable[[bytes, str], _T | None], headers: bool = False
                  ) -> dict[str, _T]:
        """C{unpack(record, key)} of the records of C{infos} in the folder's cache file
        (with C{headers}, its header file) (one read), by message key; records that are
        absent or refused are left out."""
        cf = self._fileOf(folder, headers)
        if cf is None:
            return {}
        found = cf.getMany([i.uid for i in infos])
        out: dict[str, _T] = {}
        for info in infos:
            data = found.get(info.uid)
            if data is not None:
                value = unpack(data, info.key)
                if value is not None:
                    out[info.key] = value
        return out

    def record(self, folder: Any, info: Any, summary: Summary) -> None:
        """Queue C{summary} of message C{info} for the folder's cache file (written by
        L{flush}, or when many are queued)."""
        if not self.files:
            return
        with self._fileLock:
            entry = self._queued.get(folder.path)
            if entry is None:
                entry = self._queued[folder.path] = (folder, [])
            entry[1].append((info.uid, packSummary(info.key, summary)))
            full = len(entry[1]) >= 256
            if summary.header is not None:
                self._queueHeaderLocked(folder, info, summary.header)
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the queued summaries to their folders' cache files."""
        with self._fileLock:
            queued, self._queued = self._queued, {}
            queuedHeaders, self._queuedHeaders = self._queuedHeaders, {}
        for folder, items in queued.values():
            cf = self._fileOf(folder)
            if cf is not None:
                cf.putMany(items)
        for folder, blocks in queuedHeaders.values():
            cf = self._fileOf(folder, headers=True)
            if cf is not None:
                # A header never changes: only the messages the file lacks are written.
                todo = set(cf.missing([uid for uid, _, _ in blocks]))
                if todo:
                    wanted = {uid: (key, block) for uid, key, block in blocks if uid in todo}
                    cf.putMany([(uid, packHeaderRecord(key, block))
                                for uid, (key, block) in wanted.items()], trusted=True)

    def compact(self, folder: Any, live: set[int]) -> None:
        """Let the folder's cache file drop the records of messages not in C{live} (UIDs)
        when they are most of it."""
        cf = self._fileOf(folder)
        if cf is not None:
            cf.compact(live)
        cf = self._fileOf(folder, headers=True)
        if cf is not None:
            cf.compact(live)

    def close(self) -> None:
        """Write what is queued and close the open cache files."""
        self.flush()
        with self._fileLock:
            files, self._open = list(self._open.values()), OrderedDict()
            files += self._openHeaders.values()
            self._openHeaders = OrderedDict()
        for cf in files:
            cf.close()

    # -- the memory tiers --

    def get(self, key: tuple[str, str]) -> ParsedMessage | None:
        """The cached complete structure, or None."""
        with self._lock:
            p = self._entries.get(key)
            if p is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return p

    def put(self, key: tuple[str, str], parsed: ParsedMessage) -> None:
        """Remember C{parsed} (and its summary), evicting the least recently used."""
        summary = summaryOf(parsed)
        with self._lock:
            self._entries[key] = parsed
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxEntries:
                self._entries.popitem(last=False)
            self._putSummary(key, summary)

    def summary(self, key: tuple[str, str]) -> Summary | None:
        """The cached summary, or None."""
        with self._lock:
            s = self._summaries.get(key)
            if s is not None:
                self._summaries.move_to_end(key)
            return s

    def peekSummary(self, key: tuple[str, str]) -> Summary | None:
        """The cached summary, or None, without marking it used (no lock: one dict
        lookup, for scans over a whole folder)."""
        return self._summaries.get(key)

    def putSummary(self, key: tuple[str, str], summary: Summary) -> Summary:
        """Remember a summary (a complete one already cached is kept); returns the one
        now cached."""
        with self._lock:
            old = self._summaries.get(key)
            if old is not None and old.bodystructure is not None:
                self._summaries.move_to_end(key)
                return old
            self._putSummary(key, summary)
            return summary

    def putComplete(self, folder: Any, items: Sequence[tuple[Any, Summary]]) -> None:
        """Remember the complete summaries of many messages of C{folder} ((MessageInfo,
        summary) pairs, just computed) in memory and queue them for the folder's cache
        file: what L{putSummary} and L{record} do for each, with one memory lock for
        all."""
        path = folder.path
        with self._lock:
            for info, summary in items:
                self._putSummary((path, info.key), summary)
        for info, summary in items:
            self.record(folder, info, summary)

    def _putSummary(self, key: tuple[str, str], summary: Summary) -> None:
        """Store C{summary} and evict down to the budget (caller holds the lock)."""
        old = self._summaries.pop(key, None)
        if old is not None:
            self._summaryBytes -= old.cost()
        self._summaries[key] = summary
        self._summaryBytes += summary.cost()
        while self._summaryBytes > self.maxSummaryBytes and len(self._summaries) > 1:
            _, evicted = self._summaries.popitem(last=False)
            self._summaryBytes -= evicted.cost()

    def __len__(self) -> int:
        """The number of complete structures cached."""
        return len(self._entries)
