"""The Dovecot-compatible Maildir++ store: accounts, folders, delivery, flags and UIDs.

Layout (Dovecot's default C{maildir:} layout, C{separator = /}):

    <root>/<domain>/<local>/Maildir/              INBOX (cur new tmp), control files
        dovecot-uidlist dovecot-keywords          INBOX's UIDs and keyword letters
        subscriptions dovecot-uidvalidity[.hex]   per-account files
        .Sent/ .Lists.Twisted/                    folders "Sent", "Lists/Twisted"
            cur new tmp maildirfolder dovecot-uidlist dovecot-keywords

Everything here is synchronous, blocking, pure Python over C{os} (no Twisted): protocol
code calls it through a C{pymaild.threads.Runner}.

Concurrency: threads of one process serialise per folder on a C{threading.RLock} looked up
by the folder's path in the store's L{FolderCaches} (a weak registry plus a small LRU, so
every L{Folder} object of one store for one path shares one lock and one cache; two
stores over one root share only the disk and keep apart as two processes do). Processes
(Dovecot, another pymaild) are kept apart by the C{dovecot-uidlist.lock} dotlock whenever
a uidlist or keywords file changes; message files themselves only ever appear and change
by C{link}/C{rename}, so readers never see a partial message.

Durability: L{MaildirStore.deliver} and L{Folder.append} write C{tmp/<unique>} with
C{O_EXCL|O_CLOEXEC|O_NOFOLLOW} (mode 0600), fsync it, hard-link it into C{new/} (or
C{cur/} when appending with flags), fsync the directory and only then return; on any error
the links made are removed again, so a crash or failure leaves no message or the whole one.
Deliveries into one C{new/} at the same time share directory fsyncs (group commit, the
store's L{DirSyncs}): each still returns only after an fsync that began after its link.

Caching: L{Folder.scan} keeps, per folder, the parsed uidlist, the listings of C{new/} and
C{cur/}, the keyword table and the L{MessageInfo} objects; it re-reads a directory only when
its mtime changed or is within L{FINE_SYNC_WINDOW} (L{SYNC_WINDOW} on a file system
with whole-second times) of the last look (a change in the same clock tick would not
move the mtime), and re-reads the uidlist only when its inode,
size or mtime changed. Changes to C{cur/} made by pymaild itself do not force a reading:
this process patches its listing (L{Folder._ownChange}), the other pymaild processes
apply the records of the folder's journal (L{pymaild.store.changelog}), and only a
change no journal tells of (Dovecot's, an MDA's) or the one check after the sync window
(L{Folder.settle}) reads the directory; a reading that finds the names the listing
stands for (an order-free digest) rebuilds nothing. After a small change (a delivery)
the cached message list is patched rather than rebuilt; a flag change made here
replaces its entry in place, so the next scan returns the very MessageInfo that
L{Folder.setFlags} returned. Memory: each
message's name is one string shared by the uidlist record, the listing and the
MessageInfo (the listings map keys to the tail of the file name, MessageInfo holds a shared
(head, tail) pair), and a re-read uidlist reuses the records that did not change.
No message file is stat()ed by a scan: sizes come from the C{,W=} field of the name, else
a C{W} extension of the uidlist record, else the file is read once (its CRLF size is what
matters) and the result cached and recorded in the uidlist.

UIDs: new files get UIDs in name (delivery time) order under the uidlist lock, appended in
place to C{dovecot-uidlist}. Records of vanished files are dropped lazily, when a scan finds
that more than a quarter of the records (and at least L{COMPACT_MIN}) are dead; a record is
only dropped when the file is missing from two listings, the second taken under the lock.

Recent: C{scan(claimRecent=True)} renames the files of C{new/} into C{cur/} (adding
C{:2,}) and reports their UIDs in L{FolderState.recent}, with those of the messages
APPENDed or COPYed straight into C{cur/} by any process since the last claiming scan
(their marks are in a shared file, L{pymaild.store.recent}); C{scan()} moves nothing
and reports the UIDs of the files still in C{new/} and of the marks not yet claimed.

Deleting a folder that has children: Maildir++ has no way to keep a non-selectable parent,
so L{Account.deleteFolder} removes the folder's directory entirely (messages, C{cur new
tmp}, C{maildirfolder}, control files) and keeps nothing on disk. The children stay; their
name implies the parent, which L{Account.listFolders} still reports and
L{Account.isSelectable} reports as not selectable (IMAP C{\\Noselect}). Deleting such an
implied parent again fails with L{FolderHasChildren}; creating it makes it a real folder.
The directory is first renamed into the account's C{tmp/} so that it disappears atomically,
then removed (L{MaildirStore.cleanTmp} finishes the job after a crash).

Delivery to a folder a recipient does not have falls back to that recipient's INBOX, like
Dovecot's LDA without C{lda_mailbox_autocreate}.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from pymaild.address import canonical, splitAddress
from pymaild.errors import (
    StoreError,
)
from pymaild.store import names as _names
from pymaild.store.account import Account
from pymaild.store.folder import Folder
from pymaild.store.listing import FolderCaches
from pymaild.store.uidlist import UIDLIST_NAME
from pymaild.store.writing import (
    _LINK_FALLBACK,
    TMP_MAX_AGE,
    DirSyncs,
    _linkOrRename,
    _makeMaildir,
    _storeError,
    _unlinkQuietly,
    _writeTmp,
    cleanTmpDir,
    escapeHostname,
)

# -- MaildirStore -----------------------------------------------------------------------


class _KnownMaildirMissing(Exception):
    """A Maildir that L{MaildirStore.deliver} trusted without a check has gone away."""


class MaildirStore:
    """All accounts under C{root}: C{<root>/<domain>/<local>/Maildir}."""

    #: How many checked account Maildirs L{deliver} remembers.
    KNOWN_MAILDIRS_MAX = 65536

    def __init__(self, root: str, hostname: str | None = None) -> None:
        """A store rooted at C{root}; C{hostname} goes into new file names."""
        self.root = os.path.abspath(root)
        self.hostname = hostname or socket.gethostname()
        self.hostTag = escapeHostname(self.hostname)
        # What the store's sessions share in memory: the folder caches and locks, and
        # the directory fsyncs deliveries coalesce on (two stores share only the disk).
        self.caches = FolderCaches()
        self.dirSyncs = DirSyncs()
        # Maildirs account() has checked (or created): deliveries of in-memory data skip
        # the two stat() calls for them and recheck only when a directory turns out to
        # be missing.
        self._knownMaildirs: set[str] = set()
        self._roots: dict[str, tuple[str, str]] = {}

    def clearCaches(self) -> None:
        """Forget every cached folder state, as a restarted process would: the store's
        sessions go on with what is on disk only (for tests)."""
        self.caches.clear()

    def _accountRoot(self, address: str) -> tuple[str, str]:
        """(canonical address, Maildir path) for an address (remembered: a pure function).

        @raise AddressError: the address is malformed.
        """
        hit = self._roots.get(address)
        if hit is not None:
            return hit
        canon = canonical(address)
        local, domain = splitAddress(canon)
        result = canon, os.path.join(self.root, domain, local, "Maildir")
        if len(self._roots) >= self.KNOWN_MAILDIRS_MAX:
            self._roots.clear()
        self._roots[address] = result
        return result

    def account(self, address: str) -> Account:
        """The account of C{address}, creating its Maildir (and INBOX uidlist) if missing.

        @raise AddressError: the address is malformed.
        """
        canon, root = self._accountRoot(address)
        acct = Account(self, canon, root)
        if not os.path.isdir(os.path.join(root, "cur")) or not os.path.exists(
                os.path.join(root, UIDLIST_NAME)):
            try:
                with acct._lock:
                    _makeMaildir(root, marker=False)
                    acct._createUidlist(root)
            except OSError as e:
                raise _storeError(e, f"creating the Maildir of {canon}") from e
        return acct

    def deliver(self, addresses: list[str], data: bytes | BinaryIO,
                folder: str = _names.INBOX, flags: Iterable[str] = ()) -> list[str]:
        """Deliver one message to several accounts, durably and all-or-nothing.

        With C{flags} (IMAP flags and keywords, as a Sieve script sets them), each copy
        is appended with them instead (L{Folder.appendKeyed}: a C{cur/} name with
        C{:2,} and the flag letters, keywords through C{dovecot-keywords}).

        The message is written once to a C{tmp/}, fsynced, hard-linked into each
        recipient's C{new/} (of C{folder}, or INBOX when the recipient has no such
        folder), and each C{new/} is fsynced. On any failure the links made are removed.

        Each C{new/} is fsynced through L{dirSyncs}, so deliveries into one
        directory at the same moment share fsyncs (group commit).

        @return: the stored key for each address, in order.
        @raise StoreFull: the disk or a quota is full.
        @raise StoreError: another failure; nothing was delivered.
        """
        flags = list(flags)
        if flags:
            return self._deliverFlagged(addresses, data, folder, flags)
        if isinstance(data, (bytes, bytearray, memoryview)):
            # In-memory data can be written again, so known Maildirs are trusted
            # unchecked; if one vanished, everything is checked (and recreated) and the
            # delivery runs once more.
            try:
                return self._deliver(addresses, data, folder, trustKnown=True)
            except _KnownMaildirMissing:
                pass
        return self._deliver(addresses, data, folder, trustKnown=False)

    def _deliverFlagged(self, addresses: list[str], data: bytes | BinaryIO, folder: str,
                        flags: list[str]) -> list[str]:
        """L{deliver} with flags: one append per account, all or nothing."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = data.read()
        done: list[tuple[Folder, str]] = []
        try:
            for address in addresses:
                acct = self.account(address)
                box = acct.folder(acct.deliveryFolder(folder))
                _, key = box.appendKeyed(bytes(data), flags)
                done.append((box, key))
        except BaseException:
            for box, key in done:
                try:
                    box.expunge([key])
                except StoreError:
                    pass
            raise
        return [key for _, key in done]

    def _deliver(self, addresses: list[str], data: bytes | bytearray | memoryview | BinaryIO,
                 folder: str, trustKnown: bool) -> list[str]:
        """L{deliver}; with C{trustKnown}, Maildirs checked before are not checked again.

        @raise _KnownMaildirMissing: C{trustKnown} and a directory was missing; nothing
            was delivered and the Maildirs involved are forgotten.
        """
        targets: dict[str, str] = {}
        order: list[str] = []
        trusted: list[str] = []
        known = self._knownMaildirs
        for address in addresses:
            canon, root = self._accountRoot(address)
            if trustKnown and root in known:
                acct = Account(self, canon, root)
                trusted.append(root)
            else:
                acct = self.account(address)
                if len(known) >= self.KNOWN_MAILDIRS_MAX:
                    known.clear()
                known.add(root)
            order.append(acct.address)
            if acct.address in targets:
                continue
            path = acct.root
            if folder != _names.INBOX:
                name = acct.deliveryFolder(folder)
                if name != _names.INBOX:
                    path = acct._path(name)
            targets[acct.address] = path
        if not targets:
            return []
        try:
            return self._store(targets, order, data)
        except StoreError as e:
            missing = isinstance(e.__cause__, FileNotFoundError)
            if not (trusted and missing):
                raise
            for root in trusted:
                known.discard(root)
            raise _KnownMaildirMissing() from e

    def _store(self, targets: dict[str, str], order: list[str],
               data: bytes | bytearray | memoryview | BinaryIO) -> list[str]:
        """Write C{data} once, link it into each target folder's C{new/}, sync, clean up.

        @raise StoreFull: the disk or a quota is full.
        @raise StoreError: another failure (the cause is the OSError); nothing was left.
        """
        dirs = list(targets.values())
        try:
            key, tmpPath = _writeTmp(os.path.join(dirs[0], "tmp"), data, self.hostTag)
        except OSError as e:
            raise _storeError(e, "writing the message") from e
        linked: list[str] = []
        try:
            for d in dirs:
                dst = os.path.join(d, "new", key)
                try:
                    os.link(tmpPath, dst)
                except OSError as e:
                    if e.errno not in _LINK_FALLBACK:
                        raise
                    with open(tmpPath, "rb") as f:
                        _, other = _writeTmp(os.path.join(d, "tmp"), f, self.hostTag)
                    try:
                        _linkOrRename(other, dst)
                    finally:
                        _unlinkQuietly(other)
                linked.append(dst)
            for d in dirs:
                self.dirSyncs.sync(os.path.join(d, "new"))
        except OSError as e:
            for dst in linked:
                _unlinkQuietly(dst)
            _unlinkQuietly(tmpPath)
            raise _storeError(e, "delivering the message") from e
        except BaseException:
            for dst in linked:
                _unlinkQuietly(dst)
            _unlinkQuietly(tmpPath)
            raise
        _unlinkQuietly(tmpPath)
        return [key for _ in order]

    def _maildirs(self) -> Iterator[str]:
        """Every account Maildir under the root."""
        try:
            domains = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for d in domains:
            if not d.is_dir(follow_symlinks=False):
                continue
            for u in os.scandir(d.path):
                md = os.path.join(u.path, "Maildir")
                if u.is_dir(follow_symlinks=False) and os.path.isdir(md):
                    yield md

    def cleanTmp(self, maxAge: float | None = TMP_MAX_AGE, atStart: bool = False) -> int:
        """Remove leftovers from every C{tmp/} of every account; return how many.

        See L{cleanTmpDir}: entries older than C{maxAge} (0 removes all, which is only
        safe when no other process writes to the tree), and entries this host's pymaild
        processes wrote but no longer own (at start, also those named with our own pid).
        """
        removed = 0
        for md in self._maildirs():
            tmps = [os.path.join(md, "tmp")]
            try:
                for entry in os.scandir(md):
                    if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                        tmps.append(os.path.join(entry.path, "tmp"))
            except FileNotFoundError:
                continue
            for t in tmps:
                removed += cleanTmpDir(t, maxAge, atStart, self.hostTag)
        return removed
