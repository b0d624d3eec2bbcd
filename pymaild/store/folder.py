"""One Maildir folder, the top of its layers: flag changes, expunge, append and copy.

L{Folder} is L{pymaild.store.folderread.FolderReader} (reading) over
L{pymaild.store.folderscan.FolderScan} (the message list) over
L{pymaild.store.foldersync.FolderSync} (the cache kept in step with the disk), and adds
the changes: flags and keywords by rename, expunge by unlink, append and copy by
C{tmp/} write and link (see L{pymaild.store.maildir}, "Durability").
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable
from typing import BinaryIO

from pymaild.errors import (
    MessageVanished,
    NoSuchFolder,
)
from pymaild.files import DotLock, fsyncDir
from pymaild.store import recent as _recent
from pymaild.store.flags import (
    SYSTEM_LETTERS,
    Keywords,
    buildName,
    infoLetters,
    normaliseFlags,
    splitName,
)
from pymaild.store.folderread import FolderReader
from pymaild.store.folderscan import _uidOf
from pymaild.store.info import MessageInfo, _compactSize
from pymaild.store.listing import _versions
from pymaild.store.uidlist import UidRecord
from pymaild.store.writing import (
    _LINK_FALLBACK,
    _linkOrRename,
    _storeError,
    _unlinkQuietly,
    _writeTmp,
    uniqueName,
)


class Folder(FolderReader):
    """One Maildir folder: scan it, read messages, change flags, expunge, append, copy."""

    def _keywordLetters(self, keywords: Iterable[str]) -> set[str]:
        """Letters for keyword names, allocating new ones in C{dovecot-keywords}.

        Caller holds the folder lock.

        @raise TooManyKeywords: no free letter is left.
        """
        c = self._c
        keywords = list(keywords)
        if not keywords:
            return set()
        self._refreshKeywords()
        letters: set[str] = set()
        missing: list[str] = []
        for kw in keywords:
            letter = c.keywords.letterOf(kw)
            if letter is None:
                missing.append(kw)
            else:
                letters.add(letter)
        if not missing:
            return letters
        with self._uidlistLock():
            self._refreshKeywords(force=True)
            table = Keywords(c.keywords.slots)
            changed = False
            for kw in missing:
                letter = table.letterOf(kw)
                if letter is None:
                    letter = table.allocate(kw)
                    changed = True
                letters.add(letter)
            if changed:
                # We hold the uidlist lock, so a leftover keywords lock is stale (Dovecot).
                _unlinkQuietly(self._kwPath + ".lock")
                kwLock = DotLock(self._kwPath, staleAfter=120.0, timeout=5.0, writePid=False)
                kwLock.acquire()
                kwLock.replace(table.serialise())
                self._refreshKeywords(force=True)
        return letters

    def setFlags(self, key: str, flags: Iterable[str]) -> MessageInfo:
        """Replace the flags of message C{key} (keywords included) by renaming its file.

        Letters that are not IMAP flags (such as C{P}) and keyword letters with no name in
        C{dovecot-keywords} are kept. A message in C{new/} moves to C{cur/}.

        @raise MessageVanished: the message is gone.
        @raise InvalidFlag: a flag is not a system flag or a keyword atom.
        @raise TooManyKeywords: a new keyword does not fit in the 26 letters.
        """
        sysLetters, keywords = normaliseFlags(flags)
        c = self._c
        try:
            with c.lock:
                kwLetters = self._keywordLetters(keywords)
                for attempt in range(2):
                    with self._ownChange("cur") as change:
                        loc = self._locate(key)
                        if loc is None:
                            if attempt == 0:
                                self._refresh(force=True)
                                continue
                            break
                        sub, fn = loc
                        _, info = splitName(fn)
                        keep = {
                            ch for ch in infoLetters(info)
                            if ch not in SYSTEM_LETTERS
                            and not ("a" <= ch <= "z" and c.keywords.nameOf(ch) is not None)
                        }
                        target = buildName(key, sysLetters | kwLetters | keep)
                        tail = c.tail(target[len(key):])
                        renamed = sub != "cur" or target != fn
                        if renamed:
                            try:
                                os.rename(os.path.join(self.path, sub, fn),
                                          os.path.join(self.path, "cur", target))
                            except FileNotFoundError:
                                if attempt == 0:
                                    self._refresh(force=True)
                                    continue
                                break
                            change.done([fn] if sub == "cur" else [], [target])
                            if sub == "cur":
                                c.lists["cur"][key] = tail  # the entry (and its key) stays
                            else:
                                del c.lists["new"][key]
                                known = c.uidlist.byKey.get(key) if c.uidlist else None
                                c.lists["cur"][known.key if known else key] = tail
                        if c.uidlist is None or key not in c.uidlist.byKey:
                            self._ensureUids([key])
                        assert c.uidlist is not None
                        return self._flagsChanged(c.uidlist.byKey[key], tail, renamed)
        except OSError as e:
            raise _storeError(e, f"setting flags in {self.name!r}") from e
        raise MessageVanished(f"message {key} vanished from {self.name!r}")

    def _flagsChanged(self, rec: UidRecord, tail: str, renamed: bool) -> MessageInfo:
        """The MessageInfo of the message of C{rec}, now C{cur/<key><tail>}.

        Its entry in the cached message list is replaced in place, so the next scan
        returns this very object (sessions holding it share it with that scan); without
        such an entry the key is marked changed (when the file was C{renamed}).
        """
        c = self._c
        k = rec.key
        place = c.place("cur", tail)
        msgs = c.messages
        if msgs is not None and k not in c.dirty:
            i = bisect.bisect_left(msgs, rec.uid, key=_uidOf)
            if i < len(msgs) and msgs[i][0] == rec.uid and msgs[i][1] == k:
                old = msgs[i]
                if old[2] == place:
                    return old
                info = MessageInfo.fromPlace(rec.uid, k, place, self._flagsOf(tail), old[4])
                msgs[i] = info
                c.version = next(_versions)
                return info
        if renamed:
            c.touch(k)
        return MessageInfo.fromPlace(rec.uid, k, place, self._flagsOf(tail),
                                     _compactSize(k, self._sizeOf(k, rec)))

    def expunge(self, keys: Iterable[str]) -> list[int]:
        """Remove the files of C{keys}; return the UIDs removed (sorted).

        Keys already gone are skipped; the uidlist forgets them lazily.
        """
        c = self._c
        try:
            with c.lock:
                removed: list[str] = []
                unlinked: list[str] = []  # names gone from cur/
                retry: list[str] = []
                dirs: set[str] = set()

                def remove(key: str, again: list[str], stale: bool) -> None:
                    loc = self._locate(key)
                    if loc is not None:
                        sub, fn = loc
                        try:
                            os.unlink(os.path.join(self.path, sub, fn))
                        except FileNotFoundError:
                            # Renamed (new flags) by another process since we listed.
                            again.append(key)
                        else:
                            c.lists[sub].pop(key, None)
                            c.touch(key)
                            if sub == "cur":
                                unlinked.append(fn)
                            removed.append(key)
                            dirs.add(sub)
                    elif stale:
                        again.append(key)

                with self._ownChange("cur") as change:
                    for key in dict.fromkeys(keys):
                        remove(key, retry, True)
                    # Another process may rename a file again between our listing and
                    # the unlink; list afresh and try again a few times.
                    for _ in range(8):
                        if not retry:
                            break
                        self._refresh(force=True)
                        change.current = False  # (the listing is a new reading now)
                        pending, retry = retry, []
                        for key in pending:
                            remove(key, retry, False)
                    change.done(unlinked, ())
                for sub in dirs:
                    fsyncDir(os.path.join(self.path, sub))
                byKey = c.uidlist.byKey if c.uidlist is not None else {}
                return sorted(byKey[k].uid for k in removed if k in byKey)
        except OSError as e:
            raise _storeError(e, f"expunging in {self.name!r}") from e

    def append(self, data: bytes | BinaryIO, flags: Iterable[str] = (),
               internaldate: float | None = None) -> int:
        """Store a message durably in this folder and return its UID.

        The message goes to C{new/} without flags, to C{cur/} with them; C{internaldate}
        (a POSIX time) becomes the file's mtime.

        @raise StoreFull: the disk or quota is full (nothing is left behind).
        """
        return self.appendKeyed(data, flags, internaldate)[0]

    def appendKeyed(self, data: bytes | BinaryIO, flags: Iterable[str] = (),
                    internaldate: float | None = None) -> tuple[int, str]:
        """L{append}, returning the message's UID and its key (for L{expunge}).

        @raise StoreFull: the disk or quota is full (nothing is left behind).
        """
        return self._appendMany([(data, flags, internaldate)])[0]

    def appendMany(self, messages: list[tuple[bytes | BinaryIO, Iterable[str], float | None]]
                   ) -> list[int]:
        """Store several messages (data, flags, internal date) all or none (MULTIAPPEND,
        RFC 3502); return their UIDs in order.

        Every message is written and fsynced into C{tmp/} first, where no reader sees
        it; only then are they linked into C{new/} or C{cur/} and given UIDs. A failure
        on the way (a full disk while writing, most likely) removes every file made.

        @raise StoreFull: the disk or quota is full (nothing is left behind).
        """
        return [uid for uid, _key in self._appendMany(messages)]

    def _appendMany(self, messages: list[tuple[bytes | BinaryIO, Iterable[str], float | None]]
                    ) -> list[tuple[int, str]]:
        """L{appendMany}, returning each message's UID and key."""
        c = self._c
        staged: list[tuple[str, str, str]] = []  # key, tmp path, final path
        linked: list[str] = []
        try:
            try:
                for data, flags, internaldate in messages:
                    sysLetters, keywords = normaliseFlags(flags)
                    if keywords:
                        with c.lock:
                            letters = sysLetters | self._keywordLetters(keywords)
                    else:
                        letters = frozenset(sysLetters)
                    key, tmpPath = _writeTmp(os.path.join(self.path, "tmp"), data,
                                             self.account.store.hostTag, internaldate)
                    if letters:
                        sub, fn = "cur", buildName(key, letters)
                    else:
                        sub, fn = "new", key
                    staged.append((key, tmpPath, os.path.join(self.path, sub, fn)))
                for _key, tmpPath, dest in staged:
                    _linkOrRename(tmpPath, dest)
                    linked.append(dest)
                for sub in sorted({os.path.basename(os.path.dirname(d)) for d in linked}):
                    fsyncDir(os.path.join(self.path, sub))
                with c.lock:
                    self._ensureUids([key for key, _, _ in staged])
                    _recent.addMarks(self.path, (
                        key for key, _, dest in staged
                        if os.path.basename(os.path.dirname(dest)) == "cur"))
                    assert c.uidlist is not None
                    return [(c.uidlist.byKey[key].uid, key) for key, _, _ in staged]
            except BaseException:
                for dest in linked:
                    _unlinkQuietly(dest)
                raise
            finally:
                for _key, tmpPath, _dest in staged:
                    _unlinkQuietly(tmpPath)
        except FileNotFoundError as e:
            if not os.path.isdir(os.path.join(self.path, "cur")):
                raise NoSuchFolder(f"folder {self.name!r} does not exist") from e
            raise _storeError(e, f"appending to {self.name!r}") from e
        except OSError as e:
            raise _storeError(e, f"appending to {self.name!r}") from e

    def copy(self, keys: Iterable[str], dest: Folder) -> list[tuple[int, int]]:
        """Copy messages (with their flags) to C{dest} by hard links; return UID pairs.

        Messages that vanished meanwhile are skipped. Keywords are mapped to C{dest}'s
        letters. Falls back to copying the bytes where links are impossible.

        @raise TooManyKeywords: C{dest} has no letter left for a keyword.
        @raise StoreFull: out of space (the copies made are removed again).
        """
        c = self._c
        plan: list[tuple[int, str, str, str, frozenset[str], str]] = []
        guids: dict[str, str] = {}  # a copy keeps its source's message GUID
        try:
            with c.lock:
                self._refresh()
                self._syncUids()
                assert c.uidlist is not None
                for key in dict.fromkeys(keys):
                    loc = self._locate(key)
                    rec = c.uidlist.byKey.get(key)
                    if loc is None or rec is None:
                        continue
                    sub, fn = loc
                    _, info = splitName(fn)
                    letters = infoLetters(info)
                    sysL = {ch for ch in letters if ch in SYSTEM_LETTERS}
                    other = {ch for ch in letters if not ("a" <= ch <= "z")} - sysL
                    kws = frozenset(n for ch in letters if "a" <= ch <= "z"
                                    for n in [c.keywords.nameOf(ch)] if n is not None)
                    letterStr = "".join(sorted(sysL | other))
                    plan.append((rec.uid, key, sub, fn, kws, letterStr))
                    guids[key] = rec.extValue("G") or key.split(",", 1)[0]
            dc = dest._c
            created: list[tuple[int, str, str]] = []
            copiedFrom: list[tuple[str, str]] = []
            try:
                for uid, key, sub, fn, kws, letterStr in plan:
                    with dc.lock:
                        kwl = dest._keywordLetters(kws) if kws else set()
                    newKey = self._copyKey(key)
                    allLetters = set(letterStr) | kwl
                    if sub == "new" and not allLetters:
                        dsub, dfn = "new", newKey
                    else:
                        dsub, dfn = "cur", buildName(newKey, allLetters)
                    dpath = os.path.join(dest.path, dsub, dfn)
                    if self._copyFile(key, sub, fn, dpath, dest):
                        created.append((uid, newKey, dpath))
                        copiedFrom.append((key, newKey))
                for dsub in ("cur", "new"):
                    fsyncDir(os.path.join(dest.path, dsub))
                with dc.lock:
                    dest._ensureUids([k for _, k, _ in created],
                                     {k: [f"G{guids[src]}"] for src, k in copiedFrom})
                    _recent.addMarks(dest.path, (
                        k for _, k, dpath in created
                        if os.path.basename(os.path.dirname(dpath)) == "cur"))
                    assert dc.uidlist is not None
                    return [(uid, dc.uidlist.byKey[k].uid) for uid, k, _ in created]
            except BaseException:
                for _, _, dpath in created:
                    _unlinkQuietly(dpath)
                raise
        except OSError as e:
            raise _storeError(e, f"copying from {self.name!r} to {dest.name!r}") from e

    def _copyKey(self, key: str) -> str:
        """A new unique key for a copy of C{key}, keeping its C{,S=}/C{,W=} fields."""
        fields = [f for f in key.split(",")[1:] if f.startswith(("S=", "W="))]
        base = uniqueName(self.account.store.hostTag)
        if not any(f.startswith("W=") for f in fields):
            vs = self._c.vsizes.get(key)
            if vs is None:
                rec = self._c.uidlist.byKey.get(key) if self._c.uidlist else None
                w = rec.extValue("W") if rec else None
                vs = int(w) if w and w.isdigit() else None
            if vs is not None:
                fields.append(f"W={vs}")
        return ",".join([base, *fields])

    def _copyFile(self, key: str, sub: str, fn: str, dpath: str, dest: Folder) -> bool:
        """Link (or copy) the source file to C{dpath}; False when the source vanished."""
        src = os.path.join(self.path, sub, fn)
        for _attempt in range(2):
            try:
                os.link(src, dpath)
                return True
            except FileNotFoundError:
                if not os.path.isdir(os.path.dirname(dpath)):
                    raise
                with self._c.lock:
                    self._refresh(force=True)
                    loc = self._locate(key)
                if loc is None:
                    return False
                src = os.path.join(self.path, loc[0], loc[1])
            except OSError as e:
                if e.errno not in _LINK_FALLBACK:
                    raise
                try:
                    with open(src, "rb") as f:
                        mtime = os.fstat(f.fileno()).st_mtime
                        _, tmpPath = _writeTmp(os.path.join(dest.path, "tmp"), f,
                                               self.account.store.hostTag, mtime)
                except FileNotFoundError:
                    return False
                try:
                    _linkOrRename(tmpPath, dpath)
                finally:
                    _unlinkQuietly(tmpPath)
                return True
        return False
