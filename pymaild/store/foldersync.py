"""The lowest layer of a L{pymaild.store.folder.Folder}: keeping its cached view in step
with the disk.

L{FolderSync} re-reads the uidlist, the listings of C{new/} and C{cur/} and the keywords
when they changed, replays the journal other pymaild processes wrote
(L{pymaild.store.changelog}), patches the listing after this process's own changes
(L{_OwnChange}) and checks it against the directory once the sync window has passed
(L{FolderSync.settle}); it assigns UIDs under the uidlist lock (L{FolderSync._ensureUids}).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from pymaild.errors import (
    NoSuchFolder,
    StoreError,
)
from pymaild.files import DotLock, writeAll, writeFileAtomic
from pymaild.store.changelog import Position
from pymaild.store.flags import (
    Keywords,
)
from pymaild.store.info import _vsizeFromName
from pymaild.store.listing import (
    _crlfSizeOfFile,
    _dirNames,
    _dirSig,
    _fileSig,
    _listMaildir,
    _namesDigest,
    _nameSortKey,
    _syncWindow,
)
from pymaild.store.owners import AccountOwner
from pymaild.store.uidlist import UIDLIST_NAME, UidList, UidRecord

KEYWORDS_NAME = "dovecot-keywords"
OWN_CHANGES_MAX = 2.0
"""Longest a listing patched by this process's own changes goes unchecked against the
directory (see L{Folder._ownChange}); at least L{SYNC_WINDOW}."""


class FolderSync:
    """A folder's cached view of the disk, kept in step with it
    (the lowest layer of L{pymaild.store.folder.Folder})."""

    def __init__(self, account: AccountOwner, name: str, path: str) -> None:
        """A handle on the folder C{name} of C{account}, stored at C{path}."""
        self.account = account
        self.name = name
        self.path = path
        self._c = account.store.caches.folder(path)
        self._uidlistPath = os.path.join(path, UIDLIST_NAME)
        self._kwPath = os.path.join(path, KEYWORDS_NAME)

    def __repr__(self) -> str:
        """Debug representation."""
        return f"<Folder {self.name!r} of {self.account.address!r}>"

    def knownUidValidity(self) -> int | None:
        """The UIDVALIDITY the last scan in this process saw, or None (no disk work)."""
        ul = self._c.uidlist
        return ul.uidvalidity if ul is not None else None

    # -- reading disk state (caller holds the folder lock) --

    def _refresh(self, force: bool = False) -> None:
        """Bring the cached uidlist, listings and keywords up to date with the disk.

        The uidlist is read first so that the listings can share its key strings.
        """
        c = self._c
        self._refreshUidlist()
        now = time.time_ns()
        for sub in ("new", "cur"):
            d = os.path.join(self.path, sub)
            try:
                sig = _dirSig(d)
            except FileNotFoundError:
                raise NoSuchFolder(f"folder {self.name!r} does not exist") from None
            if (sub == "cur" and not force
                    and (sig != c.dirSig[sub]
                         or not (c.dirTrusted[sub] or c.ownUntil[sub] > now))
                    and self._replay(sig, c.changes.read(c.changesPos))):
                continue  # the journal says what changed (or that a check found none)
            if (force or sig != c.dirSig[sub]
                    or not (c.dirTrusted[sub] or c.ownUntil[sub] > now
                            or (c.checking and sub == "cur" and c.ownUntil[sub]))):
                try:
                    names = _dirNames(d)
                except FileNotFoundError:
                    raise NoSuchFolder(f"folder {self.name!r} does not exist") from None
                digest = _namesDigest(names)
                if sub == "cur":
                    c.changesPos = c.changes.position()  # (read after the names)
                if digest == c.digest[sub]:
                    # The very names the cached listing holds (the re-reading of a
                    # listing taken, or patched, within the sync window, say).
                    c.dirSig[sub] = sig
                    c.dirTrusted[sub] = sig[1] + _syncWindow(sig[1]) <= now
                    c.ownUntil[sub] = c.ownSince[sub] = 0
                    continue
                listing = _listMaildir(
                    d, c.uidlist.byKey if c.uidlist is not None else None, c.tails, names)
                old = c.lists[sub]
                if c.messages is not None:
                    for k in {k for k, _ in listing.items() ^ old.items()}:
                        c.touch(k)
                c.lists[sub] = listing
                c.digest[sub] = digest
                c.dirSig[sub] = sig
                c.dirTrusted[sub] = sig[1] + _syncWindow(sig[1]) <= now
                c.ownUntil[sub] = c.ownSince[sub] = 0
        self._refreshKeywords()

    def checkDue(self) -> float | None:
        """Seconds until the listing patched by this process's own changes is due to
        be checked against the directory (see L{_ownChange}; 0: due now), or None
        when no check is pending. No disk work: the reactor thread may ask."""
        until = max(self._c.ownUntil.values())
        if not until:
            return None
        return max(0.0, (until - time.time_ns()) / 1e9)

    def settle(self) -> float | None:
        """Make the check L{checkDue} announces if it is due, so that no client's
        command waits for it (reads the directory: run it in a thread); returns
        L{checkDue} afterwards. A folder gone meanwhile has nothing to check."""
        c = self._c
        d = os.path.join(self.path, "cur")
        try:
            with c.lock:
                if self.checkDue() != 0.0:
                    return self.checkDue()
                sig, digest, version = c.dirSig["cur"], c.digest["cur"], c.version
                if sig is None or _dirSig(d) != sig:
                    return self._settled()
                c.checking = True  # scans meanwhile leave the reading to us
            try:
                # The reading itself outside the folder's lock, so that a client's
                # command does not wait for it: it counts only if nothing changed.
                start = time.time_ns()
                same = _namesDigest(_dirNames(d)) == digest
            finally:
                with c.lock:
                    c.checking = False
            with c.lock:
                if (same and c.dirSig["cur"] == sig and c.digest["cur"] == digest
                        and c.version == version and _dirSig(d) == sig
                        and self.checkDue() == 0.0):
                    c.dirTrusted["cur"] = sig[1] + _syncWindow(sig[1]) <= start
                    c.ownUntil["cur"] = c.ownSince["cur"] = 0
                    if c.dirTrusted["cur"]:
                        with self._ownChange("cur") as change:
                            change.checked()  # tell the other processes
                    return self.checkDue()
                return self._settled()
        except (OSError, StoreError):
            return None

    def _settled(self) -> float | None:
        """The check of L{settle} the usual way, under the folder's lock (held)."""
        c = self._c
        if self.checkDue() == 0.0:
            self._refresh()
            if c.dirTrusted["cur"]:
                with self._ownChange("cur") as change:
                    change.checked()  # tell the other processes
        return self.checkDue()

    def _ownChange(self, sub: str) -> _OwnChange:
        """Use as C{with self._ownChange(sub) as change:} around this process's renames
        or unlinks of files of C{sub} (and the patching of C{lists[sub]} to match);
        once they are made call C{change.done(gone, came)} with the file names that
        left the directory and those that came in.

        When the cached listing was current before the change (the directory's
        signature still the one it was read at), the patched listing is as good as a
        new reading: the directory's new signature is recorded, so the next scan does
        not re-read 100,000 names because this very process renamed one. What such a
        listing cannot know is a change another program made between the two looks,
        or later within the same clock tick (the mtime would not move again): so, as
        Dovecot's C{dirty_cur_time} does, the directory is read once more the first
        time it is scanned after L{_syncWindow} has passed since the change, and a
        change that moves the mtime again is read at once. Changes in a steady stream
        put that reading off at most L{OWN_CHANGES_MAX} seconds. A listing that was
        stale already keeps its old signature and is re-read at the next scan.

        Changes to C{cur/} are made holding the lock of its journal
        (L{pymaild.store.changelog}) and recorded there, with the signatures before
        and after, for the other pymaild processes (L{_replay}); before the change
        this process catches up with what they recorded.
        """
        return _OwnChange(self, sub)

    def _settleLater(self, sig: tuple[int, int], sub: str) -> None:
        """The listing of C{sub} is patched up to signature C{sig}: trust it until the
        check L{_ownChange} describes."""
        c = self._c
        c.dirSig[sub] = sig
        c.dirTrusted[sub] = False
        first = c.ownSince[sub] or sig[1]
        c.ownSince[sub] = first
        c.ownUntil[sub] = min(sig[1] + _syncWindow(sig[1]),
                              first + int(OWN_CHANGES_MAX * 1e9))

    def _replay(self, sig: tuple[int, int],
                found: tuple[list[Any], Position] | None) -> bool:
        """Bring the listing of C{cur/} from its signature to C{sig} with the journal's
        records C{found} (L{ChangeLog.read}); False, changing nothing, when they do
        not make an unbroken chain from the one to the other."""
        c = self._c
        if found is None or c.dirSig["cur"] is None:
            return False
        records, pos = found
        chain = c.dirSig["cur"]
        for rec in records:
            if rec.pre != chain:
                return False
            chain = rec.post
        if chain != sig or not records:
            return False
        cur = c.lists["cur"]
        byKey: dict[str, UidRecord] = c.uidlist.byKey if c.uidlist is not None else {}
        digest = c.digest["cur"]
        for rec in records:
            for name in rec.gone:
                key = name.partition(":")[0]
                if cur.pop(key, None) is not None:
                    c.touch(key)
                digest ^= hash(name)
            for name in rec.came:
                key, sep, info = name.partition(":")
                known = byKey.get(key)
                if known is not None:
                    key = known.key
                cur[key] = c.tail(sep + info) if sep else ""
                c.touch(key)
                digest ^= hash(name)
        c.digest["cur"] = digest
        c.changesPos = pos
        last = records[-1]
        if last.verified and last.post == sig:
            # Another process read the directory at this very signature and found
            # these names, past the sync window: as good as our own reading.
            c.dirSig["cur"], c.dirTrusted["cur"] = sig, True
            c.ownUntil["cur"] = c.ownSince["cur"] = 0
        else:
            self._settleLater(sig, "cur")
        return True

    def _refreshUidlist(self, force: bool = False) -> None:
        """Re-read C{dovecot-uidlist} if it changed (or is missing from the cache)."""
        c = self._c
        sig = _fileSig(self._uidlistPath)
        if not force and sig == c.uidlistSig and (sig is None or c.uidlist is not None):
            return
        if sig is None:
            if c.uidlist is not None:
                c.uidlist = None
                c.invalidate()
            c.uidlistSig = None
            return
        try:
            with open(self._uidlistPath, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            c.uidlist, c.uidlistSig = None, None
            c.invalidate()
            return
        old = c.uidlist
        try:
            # Records equal to the old ones are the old ones: no second copy of the keys.
            ul = UidList.parse(data, previous=old)
        except ValueError:
            ul = None
        if (c.messages is not None and ul is not None and old is not None
                and ul.uidvalidity == old.uidvalidity
                and len(ul.records) >= len(old.records)
                and (not old.records or (ul.records[len(old.records) - 1].uid,
                                         ul.records[len(old.records) - 1].key)
                     == (old.records[-1].uid, old.records[-1].key))):
            # Only lines appended (the usual case): patch, do not rebuild.
            for rec in ul.records[len(old.records):]:
                c.touch(rec.key)
        else:
            c.invalidate()
        c.uidlist = ul
        complete = data.endswith(b"\n") and len(data) == st.st_size
        c.uidlistSig = (st.st_ino, st.st_size, st.st_mtime_ns) if complete else None

    def _refreshKeywords(self, force: bool = False) -> None:
        """Re-read C{dovecot-keywords} if it changed."""
        c = self._c
        sig = _fileSig(self._kwPath)
        if not force and sig == c.kwSig:
            return
        data = b""
        if sig is not None:
            try:
                with open(self._kwPath, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                sig = None
        kw = Keywords.parse(data)
        if kw.slots != c.keywords.slots:
            c.keywords = kw
            c.flagCache.clear()
            c.invalidate()
            c.stale = None  # its flags may have other names now: nothing to reuse
        c.kwSig = sig

    # -- UID assignment and uidlist writing (caller holds the folder lock) --

    def _uidlistLock(self) -> DotLock:
        """The C{dovecot-uidlist.lock} dotlock of this folder."""
        return DotLock(self._uidlistPath, staleAfter=120.0)

    def _ensureUids(self, keys: Iterable[str],
                    extra: dict[str, list[str]] | None = None) -> None:
        """Give every key without a record a UID (in name order) and write the uidlist;
        C{extra} gives more extension fields of a key's new record (a copy's C{G})."""
        c = self._c
        ul = c.uidlist
        missing = [k for k in keys if ul is None or k not in ul.byKey]
        if ul is not None and not missing:
            return
        with self._uidlistLock():
            if _fileSig(self._uidlistPath) != c.uidlistSig or c.uidlist is None:
                self._refreshUidlist(force=True)
            ul = c.uidlist
            created = ul is None
            if ul is None:
                ul = UidList(self.account._nextUidValidity())
            todo = sorted({k for k in missing if k not in ul.byKey}, key=_nameSortKey)
            if not todo and not created:
                return
            lines = []
            for k in todo:
                ext: list[str] = list(extra.get(k, ())) if extra else []
                if _vsizeFromName(k) is None:
                    vs = self._computeVsize(k)
                    if vs is not None:
                        ext.append(f"W{vs}")
                lines.append(ul.add(k, ext).format() + "\n")
                c.touch(k)
            try:
                if created or ul.needsRewrite or c.uidlistSig is None:
                    writeFileAtomic(self._uidlistPath, ul.serialise())
                    ul.needsRewrite = False
                else:
                    fd = os.open(self._uidlistPath, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                    try:
                        writeAll(fd, "".join(lines).encode("utf-8", "surrogateescape"))
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            except BaseException:
                self._forgetUidlist()
                raise
            if created:
                c.invalidate()
            c.uidlist = ul
            c.uidlistSig = _fileSig(self._uidlistPath)

    def _forgetUidlist(self) -> None:
        """Drop the in-memory uidlist after a failed write (it may hold unsaved UIDs)."""
        c = self._c
        c.uidlist, c.uidlistSig = None, None
        c.invalidate()

    def _computeVsize(self, key: str) -> int | None:
        """The CRLF size of C{key}'s file (read once, then cached), or None if gone."""
        c = self._c
        vs = c.vsizes.get(key)
        if vs is not None:
            return vs
        for sub in ("cur", "new"):
            tail = c.lists[sub].get(key)
            if tail is None:
                continue
            try:
                vs = _crlfSizeOfFile(os.path.join(self.path, sub, key + tail))
            except FileNotFoundError:
                continue
            c.vsizes[key] = vs
            return vs
        return None


class _OwnChange:
    """One change of a folder directory by this process (see L{Folder._ownChange})."""

    def __init__(self, folder: FolderSync, sub: str) -> None:
        """Lock the journal (for C{cur/}), catch up with it and note the signature."""
        self.folder, self.sub = folder, sub
        c = folder._c
        self.dir = os.path.join(folder.path, sub)
        self.writer = c.changes.lock() if sub == "cur" else None
        try:
            try:
                self.pre: tuple[int, int] | None = _dirSig(self.dir)
            except FileNotFoundError:
                self.pre = None
            if (self.writer is not None and self.pre is not None
                    and self.pre != c.dirSig[sub]):
                folder._replay(self.pre, self.writer.records(c.changesPos))
        except BaseException:
            self.close()
            raise
        self.current = self.pre is not None and self.pre == c.dirSig[sub]

    def __enter__(self) -> _OwnChange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the journal's lock."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def checked(self) -> None:
        """Record that this process's trusted listing of the directory (just read)
        is current, for the others' chains (nothing is changed)."""
        c = self.folder._c
        if (self.writer is not None and self.current and self.pre is not None
                and c.dirTrusted[self.sub]):
            if self.writer.append(self.pre, self.pre, (), (), verified=True):
                c.changesPos = self.writer.position()

    def done(self, gone: Iterable[str], came: Iterable[str]) -> None:
        """The change is made: C{gone} names left the directory, C{came} came in."""
        c = self.folder._c
        gone, came = list(gone), list(came)
        try:
            post = _dirSig(self.dir)
        except FileNotFoundError:
            c.dirSig[self.sub] = None
            return
        if self.writer is not None and self.pre is not None:
            recorded = self.writer.append(self.pre, post, gone, came)
            if self.current and recorded:
                c.changesPos = self.writer.position()
        self.pre = post  # (a second change in the same block goes on from here)
        if not self.current:
            return
        c.digest[self.sub] ^= _namesDigest(gone) ^ _namesDigest(came)
        self.folder._settleLater(post, self.sub)
