"""The scanning layer of a L{pymaild.store.folder.Folder}: the message list and its state.

L{FolderScan} builds the sorted L{MessageInfo} list from the cached uidlist and
listings (patching it after small changes rather than rebuilding it), claims C{new/}
for C{\\Recent}, compacts the uidlist, keeps the sizes, and answers
L{FolderScan.scan} and the modification sequences (L{pymaild.store.modseq}).
"""

from __future__ import annotations

import bisect
import itertools
import os

from pymaild.files import writeFileAtomic
from pymaild.store import recent as _recent
from pymaild.store.flags import (
    buildName,
    infoLetters,
    splitName,
)
from pymaild.store.foldersync import FolderSync
from pymaild.store.info import FolderState, MessageInfo, _compactSize, _vsizeFromName
from pymaild.store.listing import _fileSig, _versions
from pymaild.store.modseq import ModseqLog
from pymaild.store.uidlist import UidList, UidRecord
from pymaild.store.writing import _storeError

COMPACT_MIN = 16


class FolderScan(FolderSync):
    """A folder's message list: scans, UIDs, sizes, C{\\Recent} and modseqs
    (a layer of L{pymaild.store.folder.Folder})."""


    def _sizeOf(self, key: str, rec: UidRecord | None) -> int:
        """The CRLF size of a message: name C{W=}, uidlist C{W}, else read the file."""
        vs = _vsizeFromName(key)
        if vs is not None:
            return vs
        recW = rec.extValue("W") if rec is not None and rec.ext else None
        if recW is not None and recW.isdigit():
            return int(recW)
        vs = self._computeVsize(key)
        return 0 if vs is None else vs

    def _maybeCompact(self) -> None:
        """Drop records of vanished files from the uidlist when enough are dead."""
        c = self._c
        ul = c.uidlist
        if ul is None or c.messages is None:
            return
        dead = len(ul.records) - len(c.messages)
        if dead < COMPACT_MIN or dead * 4 < len(ul.records):
            return
        with self._uidlistLock():
            if _fileSig(self._uidlistPath) != c.uidlistSig:
                self._refreshUidlist(force=True)
            ul = c.uidlist
            if ul is None:
                return
            present: set[str] = set()
            for sub in ("new", "cur"):
                present.update(fn.partition(":")[0]
                               for fn in os.listdir(os.path.join(self.path, sub)))
                present.update(c.lists[sub])
            gone = {r.key for r in ul.records if r.key not in present}
            if not gone:
                return
            ul.drop(gone)
            try:
                writeFileAtomic(self._uidlistPath, ul.serialise())
            except BaseException:
                self._forgetUidlist()
                raise
            ul.needsRewrite = False
            c.uidlistSig = _fileSig(self._uidlistPath)

    # -- building the state --

    def _flagsOf(self, tail: str) -> frozenset[str]:
        """The IMAP flags of a file name's tail (C{":2,S"}; cached per tail)."""
        c = self._c
        flags = c.flagCache.get(tail)
        if flags is None:
            info = tail[1:]
            flags = c.keywords.flagsOf(infoLetters(info) if info else "")
            c.flagCache[tail] = flags
        return flags

    def _infoFor(self, rec: UidRecord, old: MessageInfo | None) -> MessageInfo | None:
        """The MessageInfo of the message of record C{rec} as listed now (C{old}, its
        entry in the message list, when that is still right), or None if not listed."""
        c = self._c
        k = rec.key
        tail = c.lists["cur"].get(k)
        if tail is not None:
            place = c.place("cur", tail)
        else:
            tail = c.lists["new"].get(k)
            if tail is None:
                return None
            place = c.place("new", tail)
        if old is not None and old[2] == place:
            return old
        size = old[4] if old is not None else _compactSize(k, self._sizeOf(k, rec))
        return MessageInfo.fromPlace(rec.uid, k, place, self._flagsOf(tail), size)

    def _messages(self) -> list[MessageInfo]:
        """The current messages: rebuilt after big changes, patched after small ones.

        A rebuild reuses the entries of the previous list (C{stale}) that did not change,
        so sessions holding them share them with the new list.
        """
        c = self._c
        ul = c.uidlist
        if ul is None:
            c.messages, c.stale = [], None
            c.version = next(_versions)
            c.dirty.clear()
            return c.messages
        if c.messages is not None and c.dirty:
            self._patch(ul)
            c.version = next(_versions)
        if c.messages is not None:
            return c.messages
        c.dirty.clear()
        old = c.stale or ()
        c.stale = None
        nOld = len(old)
        j = 0
        out: list[MessageInfo] = []
        cur, new = c.lists["cur"], c.lists["new"]
        curPlaces, newPlaces = c.places["cur"], c.places["new"]
        placeOf = c.place
        flagCache = c.flagCache
        flagsOf = self._flagsOf
        sizeOf = self._sizeOf
        newInfo = tuple.__new__  # MessageInfo without a Python-level __new__
        for rec in ul.records:
            k = rec[1]
            tail = cur.get(k)
            if tail is None:
                tail = new.get(k)
                if tail is None:
                    continue
                place = newPlaces.get(tail) or placeOf("new", tail)
            else:
                place = curPlaces.get(tail) or placeOf("cur", tail)
            uid = rec[0]
            # Both lists are sorted by UID: walk the old one alongside.
            while j < nOld and old[j][0] < uid:
                j += 1
            if j < nOld:
                info = old[j]
                if info[0] == uid and info[2] == place and info[1] == k:
                    out.append(info)
                    j += 1
                    continue
            flags = flagCache.get(tail)
            if flags is None:
                flags = flagsOf(tail)
            # The usual name ends in ",W=<size>": then the info needs no size of its own.
            i = k.rfind(",W=")
            size: int | None = None
            if i < 0 or not k[i + 3:].isdigit():
                size = _compactSize(k, sizeOf(k, rec))
            out.append(newInfo(MessageInfo, (uid, k, place, flags, size)))
        c.messages = out
        c.version = next(_versions)
        return out

    def _patch(self, ul: UidList) -> None:
        """Apply the dirty keys to the cached message list (few changes, big folder).

        Each dirty key's entry is found by its record's UID; a key without a record, or
        an entry under that UID for another key, makes the list be rebuilt instead.
        """
        c = self._c
        msgs = c.messages
        assert msgs is not None
        byKey = ul.byKey
        n = len(msgs)
        replaced: list[tuple[int, MessageInfo]] = []
        dropUids: set[int] = set()
        added: list[MessageInfo] = []
        for k in c.dirty:
            rec = byKey.get(k)
            if rec is None:
                c.invalidate()
                return
            uid = rec.uid
            i = bisect.bisect_left(msgs, uid, key=_uidOf)
            old = msgs[i] if i < n and msgs[i][0] == uid else None
            if old is not None and old[1] != rec.key:
                c.invalidate()
                return
            info = self._infoFor(rec, old)
            if info is old:
                continue
            if old is None:
                added.append(info)  # type: ignore[arg-type]
            elif info is None:
                dropUids.add(uid)
            else:
                replaced.append((i, info))
        c.dirty.clear()
        for i, info in replaced:
            msgs[i] = info
        if dropUids:
            msgs[:] = [m for m in msgs if m[0] not in dropUids]
        added.sort(key=_uidOf)
        for info in added:
            if not msgs or info[0] > msgs[-1][0]:
                msgs.append(info)
            else:
                bisect.insort(msgs, info, key=_uidOf)

    def _claimNew(self) -> tuple[list[str], bool]:
        """Move every file of C{new/} into C{cur/}; return (moved keys, some vanished)."""
        c = self._c
        newDir = os.path.join(self.path, "new")
        curDir = os.path.join(self.path, "cur")
        new, cur = c.lists["new"], c.lists["cur"]
        moved: list[str] = []
        lost = False
        with self._ownChange("cur") as change:
            for key, tail in list(new.items()):
                fn = key + tail
                _, info = splitName(fn)
                target = buildName(key, infoLetters(info))
                try:
                    os.rename(os.path.join(newDir, fn), os.path.join(curDir, target))
                except FileNotFoundError:
                    lost = True
                    continue
                del new[key]
                cur[key] = c.tail(target[len(key):])
                moved.append(key)
                c.touch(key)
            change.done((), (key + cur[key] for key in moved))
        return moved, lost

    def scan(self, claimRecent: bool = False) -> FolderState:
        """Synchronise with the disk and return the folder's state.

        New files get UIDs (recorded in C{dovecot-uidlist}); with C{claimRecent} the files
        of C{new/} move to C{cur/} and their UIDs are reported as recent.

        @raise NoSuchFolder: the folder was deleted.
        @raise StoreFull: the uidlist could not be written for lack of space.
        """
        c = self._c
        try:
            with c.lock:
                self._refresh()
                self._syncUids()
                recentKeys: list[str] = []
                if claimRecent:
                    if c.lists["new"]:
                        moved, lost = self._claimNew()
                        if lost:
                            self._refresh(force=True)
                            self._syncUids()
                        recentKeys = moved
                    # Messages stored straight into cur/, by any process (and
                    # not expunged since).
                    recentKeys += (k for k in _recent.takeMarks(self.path)
                                   if k in c.lists["cur"])
                else:
                    # The files of new/ and the marks, left for the claiming scan.
                    recentKeys = list(c.lists["new"])
                    recentKeys += (k for k in _recent.peekMarks(self.path)
                                   if k in c.lists["cur"])
                msgs = self._messages()
                self._maybeCompact()
                ul = c.uidlist
                assert ul is not None
                byKey = ul.byKey
                recent = frozenset(byKey[k].uid for k in recentKeys if k in byKey)
                highest = c.modseq.sync(ul.uidvalidity, msgs, c.version)
                return FolderState(ul.uidvalidity, ul.nextuid, list(msgs), recent,
                                   c.keywords.names(), ul.guid, highest, c.version)
        except OSError as e:
            raise _storeError(e, f"scanning folder {self.name!r}") from e

    @property
    def modseqs(self) -> ModseqLog:
        """The folder's mod-sequences (shared by every Folder of this directory)."""
        return self._c.modseq

    def syncModseqs(self) -> int:
        """Give the changes made since the last scan (this process's STORE) their
        mod-sequence now; returns HIGHESTMODSEQ.

        @raise NoSuchFolder: the folder was deleted.
        """
        c = self._c
        try:
            with c.lock:
                self._refresh()
                self._syncUids()
                msgs = self._messages()
                ul = c.uidlist
                assert ul is not None
                return c.modseq.sync(ul.uidvalidity, msgs, c.version)
        except OSError as e:
            raise _storeError(e, f"scanning folder {self.name!r}") from e

    def _syncUids(self) -> None:
        """Assign UIDs to listed files that have none (looking only at what changed)."""
        c = self._c
        ul = c.uidlist
        lists = c.lists
        if ul is None:
            missing = list(itertools.chain(lists["cur"], lists["new"]))
        elif c.messages is None:
            byKey = ul.byKey
            missing = [k for k in itertools.chain(lists["cur"], lists["new"])
                       if k not in byKey]
        elif c.dirty:
            byKey = ul.byKey
            cur, new = lists["cur"], lists["new"]
            missing = [k for k in c.dirty if (k in cur or k in new) and k not in byKey]
        else:
            return
        if missing or ul is None:
            self._ensureUids(missing)


def _uidOf(info: MessageInfo) -> int:
    """Sort key: the UID."""
    return info.uid
