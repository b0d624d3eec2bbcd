"""One user's mail in the Maildir store: the folder tree, subscriptions and special use.

L{Account} lists, creates, deletes and renames the folders under
C{<root>/<domain>/<local>/Maildir}, hands out L{pymaild.store.folder.Folder} objects,
keeps the subscriptions and the special-use attributes, and allots UIDVALIDITY values
(see L{pymaild.store.maildir} for the layout and the rules for deleting a parent).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from typing import Any

from pymaild.errors import (
    FolderExists,
    InvalidFolderName,
    NoSuchFolder,
    StoreError,
)
from pymaild.files import DotLock, fsyncDir, writeFileAtomic
from pymaild.store import metadata as _metadata
from pymaild.store import names as _names
from pymaild.store import subscriptions as _subs
from pymaild.store.folder import Folder
from pymaild.store.foldersync import KEYWORDS_NAME
from pymaild.store.listing import _fileSig, _syncWindow
from pymaild.store.owners import StoreOwner
from pymaild.store.uidlist import UIDLIST_NAME, UidList
from pymaild.store.writing import _DELETED_PREFIX, _OPEN_NEW, _makeMaildir, _storeError, uniqueName

UIDVALIDITY_NAME = "dovecot-uidvalidity"
SPECIAL_MARKER_NAME = "pymaild-special-folders"
SPECIAL_USE_NAME = "pymaild-special-use"
"""Special-use attributes given by CREATE (RFC 6154): C{<attribute> TAB <name>} lines."""
SPECIAL_FOLDERS: tuple[tuple[str, str], ...] = (
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


class FolderHasChildren(StoreError):
    """The folder is a non-selectable parent of other folders and cannot be deleted."""


class Account:
    """One user's mail: the folder tree under C{<root>/<domain>/<local>/Maildir}."""

    def __init__(self, store: StoreOwner, address: str, root: str) -> None:
        """A handle on the Maildir at C{root} of canonical C{address}."""
        self.store = store
        self.address = address
        self.root = root
        self._lock = self.store.caches.accountLock(root)

    def __repr__(self) -> str:
        """Debug representation."""
        return f"<Account {self.address!r} at {self.root!r}>"

    # -- UIDVALIDITY --

    def _nextUidValidity(self) -> int:
        """A new UIDVALIDITY: the time, but always above any this account used before.

        Kept as Dovecot does: C{dovecot-uidvalidity} holds the last value in hex, and an
        empty C{dovecot-uidvalidity.<hex>} file is renamed forward to claim the next one,
        so concurrent processes never hand out the same value.
        """
        main = os.path.join(self.root, UIDVALIDITY_NAME)

        def marker(v: int) -> str:
            """The marker file of value C{v}."""
            return f"{main}.{v:08x}"

        # Not the account lock: scans call this holding a folder lock, while folder-tree
        # changes take the account lock and then folder locks.
        with self.store.caches.accountLock(self.root + "\0uidvalidity"):
            for _ in range(50):
                cur: int | None = None
                try:
                    with open(main, "rb") as f:
                        cur = int(f.read(8).decode("ascii"), 16)
                except (OSError, ValueError):
                    cur = None
                if cur is None or not os.path.exists(marker(cur)):
                    found = []
                    prefix = UIDVALIDITY_NAME + "."
                    for n in os.listdir(self.root):
                        if n.startswith(prefix):
                            try:
                                found.append(int(n[len(prefix):], 16))
                            except ValueError:
                                pass
                    cur = max(found) if found else None
                now = int(time.time())
                if cur is None:
                    value = now
                    try:
                        os.close(os.open(marker(value), _OPEN_NEW, 0o444))
                    except FileExistsError:
                        continue
                else:
                    value = max(now, cur + 1)
                    try:
                        os.rename(marker(cur), marker(value))
                    except FileNotFoundError:
                        continue
                writeFileAtomic(main, f"{value:08x}".encode("ascii"), 0o600)
                return value
        raise StoreError(f"could not allocate a UIDVALIDITY in {self.root}")

    def _createUidlist(self, path: str) -> None:
        """Write a fresh uidlist (new UIDVALIDITY) in the folder at C{path} if it has none."""
        upath = os.path.join(path, UIDLIST_NAME)
        if os.path.exists(upath):
            return
        with DotLock(upath):
            if not os.path.exists(upath):
                writeFileAtomic(upath, UidList(self._nextUidValidity()).serialise())

    # -- folders --

    def _path(self, name: str) -> str:
        """The directory of a normalised folder name."""
        if name == _names.INBOX:
            return self.root
        return os.path.join(self.root, _names.toDirName(name))

    def _exists(self, name: str) -> bool:
        """True when the folder is selectable on disk (its C{cur/} exists).

        @raise StoreError: the answer is unknown (EACCES, EIO...), which must not pass
            for "no such folder".
        """
        try:
            return stat.S_ISDIR(os.stat(os.path.join(self._path(name), "cur")).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise _storeError(e, f"looking up folder {name!r}") from e

    def deliveryFolder(self, name: str) -> str:
        """The folder a delivery into C{name} goes to: C{name} (normalised) when this
        account has it, else INBOX (blocking)."""
        if name == _names.INBOX:
            return name
        try:
            name = _names.normalise(name)
        except InvalidFolderName:
            return _names.INBOX
        return name if name != _names.INBOX and self._exists(name) else _names.INBOX

    def folder(self, name: str) -> Folder:
        """The folder C{name} (INBOX in any case).

        @raise NoSuchFolder: no such selectable folder.
        @raise InvalidFolderName: the name is not acceptable.
        """
        canon = _names.normalise(name)
        if not self._exists(canon):
            raise NoSuchFolder(f"no folder {name!r}")
        return Folder(self, canon, self._path(canon))

    def _folderDirs(self) -> dict[str, bool]:
        """Every folder directory: name -> selectable (has C{cur/})."""
        out: dict[str, bool] = {}
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return out
        for entry in entries:
            if not entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            name = _names.fromDirName(entry.name)
            if name is None:
                continue
            out[name] = os.path.isdir(os.path.join(entry.path, "cur"))
        return out

    def _allNames(self) -> dict[str, bool]:
        """Listed names -> selectable: real folders plus implied parents of children."""
        dirs = self._folderDirs()
        out = {n: True for n, sel in dirs.items() if sel}
        for n in list(out):
            for p in _names.parents(n):
                if p != _names.INBOX and p not in out:
                    out[p] = False
        out[_names.INBOX] = True
        return out

    def listFolders(self) -> list[str]:
        """All folder names: C{"INBOX"} first, then the others sorted.

        Includes implied parents of existing folders (see L{isSelectable}).
        """
        names = self._allNames()
        del names[_names.INBOX]
        return [_names.INBOX, *sorted(names)]

    def isSelectable(self, name: str) -> bool:
        """False for implied parents that exist only through their children (\\Noselect).

        @raise NoSuchFolder: the name is neither a folder nor an implied parent.
        """
        canon = _names.normalise(name)
        sel = self._allNames().get(canon)
        if sel is None:
            raise NoSuchFolder(f"no folder {name!r}")
        return sel

    def hasChildren(self, name: str) -> bool:
        """True when some listed folder lies below C{name}."""
        canon = _names.normalise(name)
        prefix = canon + _names.DELIMITER
        return any(n.startswith(prefix) for n in self._allNames())

    def createFolder(self, name: str) -> None:
        """Create a folder (with a new UIDVALIDITY).

        @raise FolderExists: it exists (INBOX always does).
        @raise InvalidFolderName: the name is not acceptable.
        """
        canon = _names.normalise(name)
        if canon == _names.INBOX:
            raise FolderExists("INBOX always exists")
        path = self._path(canon)
        try:
            with self._lock:
                if self._exists(canon):
                    raise FolderExists(f"folder {canon!r} exists")
                _makeMaildir(path, marker=True)
                self._createUidlist(path)
                fsyncDir(path)
                fsyncDir(self.root)
        except OSError as e:
            raise _storeError(e, f"creating folder {canon!r}") from e

    def deleteFolder(self, name: str) -> None:
        """Delete a folder and its messages (see the module docstring for children).

        @raise NoSuchFolder: no such folder.
        @raise FolderHasChildren: it is only an implied parent of other folders.
        @raise InvalidFolderName: the name is INBOX or not acceptable.
        """
        canon = _names.normalise(name)
        if canon == _names.INBOX:
            raise InvalidFolderName("INBOX cannot be deleted")
        path = self._path(canon)
        try:
            with self._lock:
                if not os.path.isdir(path):
                    if self.hasChildren(canon):
                        raise FolderHasChildren(
                            f"{canon!r} has children and no messages of its own")
                    raise NoSuchFolder(f"no folder {canon!r}")
                trash = os.path.join(self.root, "tmp",
                                     _DELETED_PREFIX + uniqueName(self.store.hostTag))
                c = self.store.caches.folder(path)
                with c.lock:
                    os.rename(path, trash)
                    c.reset()
                fsyncDir(self.root)
                shutil.rmtree(trash, ignore_errors=True)
                self._moveSpecialUse(canon, None)
                _metadata.moveFolder(self.root, canon, None)
        except OSError as e:
            raise _storeError(e, f"deleting folder {canon!r}") from e

    def renameFolder(self, old: str, new: str) -> None:
        """Rename a folder and its children; renaming INBOX moves its messages.

        Subscriptions of the renamed names follow them.

        @raise NoSuchFolder: C{old} is neither a folder nor a parent of folders.
        @raise FolderExists: C{new} (or a renamed child's new name) exists.
        @raise InvalidFolderName: a name is not acceptable, or C{new} is below C{old}.
        """
        src = _names.normalise(old)
        dst = _names.normalise(new)
        if dst == _names.INBOX:
            raise FolderExists("INBOX always exists")
        if dst.startswith(src + _names.DELIMITER):
            raise InvalidFolderName("cannot rename a folder into its own child")
        try:
            with self._lock:
                if src == _names.INBOX:
                    self._renameInbox(dst)
                    return
                self._renameTree(src, dst)
        except OSError as e:
            raise _storeError(e, f"renaming folder {src!r} to {dst!r}") from e

    def _renameTree(self, src: str, dst: str) -> None:
        """Rename folder C{src} and every folder below it to C{dst}..."""
        dirs = self._folderDirs()
        prefix = src + _names.DELIMITER
        moves = [n for n in dirs if n == src or n.startswith(prefix)]
        if not moves:
            raise NoSuchFolder(f"no folder {src!r}")
        if src == dst:
            raise FolderExists(f"folder {dst!r} exists")
        plan: list[tuple[str, str, str, str]] = []
        for n in sorted(moves):
            target = _names.normalise(dst + n[len(src):])
            tpath = self._path(target)
            if os.path.lexists(tpath):
                raise FolderExists(f"folder {target!r} exists")
            plan.append((n, target, self._path(n), tpath))
        done: list[tuple[str, str]] = []
        try:
            for _, _, spath, tpath in plan:
                c = self.store.caches.folder(spath)
                with c.lock:
                    os.rename(spath, tpath)
                    c.reset()
                done.append((spath, tpath))
        except BaseException:
            for spath, tpath in reversed(done):
                try:
                    os.rename(tpath, spath)
                except OSError:
                    pass
            raise
        fsyncDir(self.root)
        renamed = {n: t for n, t, _, _ in plan}
        self._renameSubscriptions(src, dst, renamed)
        self._moveSpecialUse(src, dst)
        _metadata.moveFolder(self.root, src, dst)

    def _renameInbox(self, dst: str) -> None:
        """Move INBOX's messages into the new folder C{dst}; INBOX stays, empty."""
        if self._exists(dst) or os.path.lexists(self._path(dst)):
            raise FolderExists(f"folder {dst!r} exists")
        tpath = self._path(dst)
        _makeMaildir(tpath, marker=True)
        self._createUidlist(tpath)
        kw = os.path.join(self.root, KEYWORDS_NAME)
        if os.path.exists(kw):
            with open(kw, "rb") as f:
                writeFileAtomic(os.path.join(tpath, KEYWORDS_NAME), f.read())
        inbox = Folder(self, _names.INBOX, self.root)
        with inbox._c.lock:
            for sub in ("new", "cur"):
                sdir = os.path.join(self.root, sub)
                for fn in os.listdir(sdir):
                    if fn.startswith("."):
                        continue
                    try:
                        os.rename(os.path.join(sdir, fn), os.path.join(tpath, sub, fn))
                    except FileNotFoundError:
                        pass
            for sub in ("new", "cur"):
                fsyncDir(os.path.join(tpath, sub))
                fsyncDir(os.path.join(self.root, sub))
        fsyncDir(self.root)

    # -- subscriptions --

    def listSignature(self) -> tuple[tuple[Any, ...], bool]:
        """What changes with the folder list or the subscriptions, for a watcher that
        polls: (the Maildir root's inode and mtime, the C{subscriptions} file's
        signature), and whether it can be trusted (False within L{_syncWindow} of the
        root's mtime, where a change in the same clock tick would not move it)."""
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            return (None, _fileSig(self._subsPath())), False
        sig = (st.st_ino, st.st_mtime_ns)
        trusted = st.st_mtime_ns + _syncWindow(st.st_mtime_ns) <= time.time_ns()
        return (sig, _fileSig(self._subsPath())), trusted

    def _subsPath(self) -> str:
        """Path of the C{subscriptions} file."""
        return os.path.join(self.root, _subs.SUBSCRIPTIONS_NAME)

    def subscriptions(self) -> list[str]:
        """The subscribed folder names, in file order."""
        try:
            with open(self._subsPath(), "rb") as f:
                return _subs.parse(f.read())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise _storeError(e, "reading subscriptions") from e

    def _updateSubscriptions(self, change: Callable[[list[str]], list[str]]) -> None:
        """Rewrite the subscriptions under C{subscriptions.lock} if C{change} alters them."""
        with self._lock:
            lock = DotLock(self._subsPath(), staleAfter=30.0, timeout=120.0, writePid=False)
            try:
                lock.acquire()
                try:
                    current = self.subscriptions()
                    updated = change(list(current))
                    if updated != current:
                        lock.replace(_subs.serialise(updated))
                finally:
                    lock.release()
            except OSError as e:
                raise _storeError(e, "writing subscriptions") from e

    def subscribe(self, name: str) -> None:
        """Add C{name} to the subscriptions (the folder need not exist)."""
        canon = _names.normalise(name)
        self._updateSubscriptions(lambda cur: cur if canon in cur else [*cur, canon])

    def unsubscribe(self, name: str) -> None:
        """Remove C{name} from the subscriptions (no error if it was not subscribed)."""
        canon = _names.normalise(name)
        self._updateSubscriptions(lambda cur: [n for n in cur if n != canon])

    def _renameSubscriptions(self, src: str, dst: str, renamed: dict[str, str]) -> None:
        """Make subscriptions of renamed folders follow them."""
        prefix = src + _names.DELIMITER

        def change(cur: list[str]) -> list[str]:
            out = []
            for n in cur:
                if n == src or n.startswith(prefix):
                    n = renamed.get(n, dst + n[len(src):])
                if n not in out:
                    out.append(n)
            return out
        self._updateSubscriptions(change)

    # -- special folders --

    def ensureSpecialFolders(self) -> None:
        """Create and subscribe Sent, Drafts, Trash, Junk and Archive, once per account.

        Folders that exist are left alone; a marker file records that it was done, so a
        user who deletes one does not get it back.
        """
        marker = os.path.join(self.root, SPECIAL_MARKER_NAME)
        with self._lock:
            if os.path.exists(marker):
                return
            existing = {n.lower() for n in self._allNames()}
            for name, _use in SPECIAL_FOLDERS:
                if name.lower() in existing:
                    continue
                try:
                    self.createFolder(name)
                except FolderExists:
                    continue
                self.subscribe(name)
            try:
                os.close(os.open(marker, _OPEN_NEW, 0o600))
            except FileExistsError:
                pass
            except OSError as e:
                raise _storeError(e, "marking special folders") from e

    def specialUse(self) -> dict[str, str]:
        """SPECIAL-USE attributes (RFC 6154) of the existing special folders: the fixed
        names, and the folders CREATE gave one (L{setSpecialUse}), those winning."""
        names = self._allNames()
        out = {n: use for n, use in SPECIAL_FOLDERS if names.get(n)}
        out.update((n, use) for n, use in self.assignedSpecialUse().items() if names.get(n))
        return out

    def _specialUsePath(self) -> str:
        return os.path.join(self.root, SPECIAL_USE_NAME)

    def assignedSpecialUse(self) -> dict[str, str]:
        """The special uses CREATE gave: folder name -> attribute (existing or not)."""
        try:
            with open(self._specialUsePath(), "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise _storeError(e, "reading special uses") from e
        out: dict[str, str] = {}
        for line in data.splitlines():
            use, sep, name = line.partition("\t")
            if sep and use.startswith("\\") and name:
                out[name] = use
        return out

    def _updateSpecialUse(self, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
        """Rewrite the special-use file (under its dotlock) if C{change} alters it."""
        with self._lock:
            lock = DotLock(self._specialUsePath(), staleAfter=30.0, timeout=120.0,
                           writePid=False)
            try:
                lock.acquire()
                try:
                    current = self.assignedSpecialUse()
                    updated = change(dict(current))
                    if updated != current:
                        lock.replace("".join(f"{use}\t{name}\n" for name, use
                                             in sorted(updated.items())).encode("utf-8"))
                finally:
                    lock.release()
            except OSError as e:
                raise _storeError(e, "writing special uses") from e

    def setSpecialUse(self, name: str, use: str | None) -> None:
        """Give folder C{name} the special-use attribute C{use} (None: take it away)."""
        canon = _names.normalise(name)

        def change(cur: dict[str, str]) -> dict[str, str]:
            cur.pop(canon, None)
            if use is not None:
                cur[canon] = use
            return cur

        self._updateSpecialUse(change)

    def _moveSpecialUse(self, src: str, dst: str | None) -> None:
        """Special uses follow a renamed tree (C{dst}) or go with a deleted folder."""
        prefix = src + _names.DELIMITER
        if not any(n == src or n.startswith(prefix) for n in self.assignedSpecialUse()):
            return

        def change(cur: dict[str, str]) -> dict[str, str]:
            out: dict[str, str] = {}
            for n, use in cur.items():
                if n == src or (dst is not None and n.startswith(prefix)):
                    if dst is not None:
                        out[_names.normalise(dst + n[len(src):])] = use
                else:
                    out[n] = use
            return out

        self._updateSpecialUse(change)
