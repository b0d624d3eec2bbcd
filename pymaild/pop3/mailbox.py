"""POP3 mailboxes: a per-session snapshot of a user's INBOX over the Maildir++ store.

``POP3Avatars(store, diskRunner, config)`` is the realm factory for ``pop3.IMailbox``:
called with an avatar id (a canonical address) it returns a fresh ``POP3Mailbox`` and its
logout callable. Nothing touches the disk until the protocol calls ``POP3Mailbox.open``,
which takes the process-wide POP3 session lock for the address (RFC 3206 ``[IN-USE]``)
and scans the INBOX in the disk Runner (``claimRecent=False``, so IMAP still sees the
messages as recent). The snapshot fixes message numbers, sizes and UIDLs for the session.

UIDLs are what Dovecot's default ``pop3_uidl_format = %08Xu%08Xv`` gives: the IMAP UID,
then the UIDVALIDITY, each as 8 hex digits -- lower-case, as Dovecot prints them (its
``X`` modifier; checked against Dovecot 2.3.19 on the same Maildir, see
``bench/pop3_bench.py``). So they survive new/ → cur/ moves and flag changes made over
IMAP, and a client switching between Dovecot and pymaild downloads nothing twice.

``DELE`` only marks; deletions are committed by ``commit`` in the UPDATE state (QUIT).
With ``pop3.delete = "flag"`` a commit sets ``\\Deleted`` instead of expunging, and
messages carrying ``\\Deleted`` are left out of every POP3 snapshot, so IMAP clients keep
them until they expunge.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from twisted.cred.checkers import ANONYMOUS
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.mail import pop3
from twisted.python.failure import Failure
from zope.interface import implementer

from pymaild.address import canonical
from pymaild.errors import AddressError, MessageVanished, PymaildError
from pymaild.threads import runnerFor

if TYPE_CHECKING:
    from pymaild.config import Config
    from pymaild.store import Folder, FolderState, MaildirStore, MessageInfo
    from pymaild.threads import Runner

DELETED = "\\Deleted"
UIDL_FORMAT = "%08x%08x"
DELETE_MODES = ("expunge", "flag")


class MailboxInUse(PymaildError):
    """Another POP3 session of this process holds the mailbox (RFC 3206 ``[IN-USE]``)."""


class MailboxClosed(PymaildError):
    """The mailbox was used before ``open`` succeeded or after the session ended."""


class SessionRegistry:
    """The set of mailboxes held by a POP3 session, shared by the whole process.

    Thread-safe; keys are whatever identifies a mailbox (the store root and the address).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[Hashable] = set()

    def acquire(self, key: Hashable) -> bool:
        """Take C{key}; return False when a session already holds it."""
        with self._lock:
            if key in self._held:
                return False
            self._held.add(key)
            return True

    def release(self, key: Hashable) -> None:
        """Give C{key} back (a no-op when it is not held)."""
        with self._lock:
            self._held.discard(key)

    def isHeld(self, key: Hashable) -> bool:
        """Whether a session holds C{key} now."""
        with self._lock:
            return key in self._held


SESSIONS = SessionRegistry()
"""The process-wide registry of mailboxes in a POP3 session."""


def formatUIDL(uid: int, uidvalidity: int) -> bytes:
    """The POP3 unique-id of a message, as Dovecot's C{%08Xu%08Xv} prints it."""
    return (UIDL_FORMAT % (uid, uidvalidity)).encode("ascii")


@dataclass(frozen=True)
class SnapshotEntry:
    """One message as this POP3 session numbers it."""

    info: MessageInfo
    uidl: bytes

    @property
    def size(self) -> int:
        """Octets RETR sends before dot-stuffing (CRLF line ends)."""
        return self.info.size


def readFull(fp: BinaryIO, n: int) -> bytes:
    """Read up to C{n} bytes, short only at end of file (blocking)."""
    parts: list[bytes] = []
    want = n
    while want > 0:
        data = fp.read(want)
        if not data:
            break
        parts.append(data)
        want -= len(data)
    return b"".join(parts)


def readOrClose(fp: BinaryIO, n: int) -> bytes:
    """Read the next C{n} bytes; at end of file (short read) close C{fp} (blocking)."""
    try:
        data = readFull(fp, n)
    except BaseException:
        fp.close()
        raise
    if len(data) < n:
        fp.close()
    return data


def _openAndRead(folder: Folder, info: MessageInfo, n: int) -> tuple[BinaryIO | None, bytes]:
    """Open a message and read its first chunk in one trip to the disk pool (blocking).

    Returns C{(None, data)} when the whole message fit in the chunk (the file is then
    already closed), else C{(file, data)}. A file the store converted (LF line ends)
    is in memory already: it comes whole, whatever its size, instead of a chunk per
    trip to the pool.
    """
    fp = folder.open(info)
    if isinstance(fp, io.BytesIO):
        data = fp.getvalue()
        fp.close()
        return None, data
    data = readOrClose(fp, n)
    if len(data) < n:
        return None, data
    return fp, data


@implementer(pop3.IMailbox)
class POP3Mailbox:
    """One POP3 session's view of a user's INBOX.

    Message indexes in the C{pop3.IMailbox} methods are 0-based; an index outside the
    snapshot (negative included) raises C{ValueError}. The richer methods the pymaild
    protocol uses (C{open}, C{stat}, C{openMessage}, C{commit}) return Deferreds that
    fire in the reactor thread; all disk work runs in the Runner.
    """

    loginDelay = 0
    messageExpiration = None

    def __init__(
        self,
        store: MaildirStore,
        runner: Runner,
        address: str,
        deleteMode: str = "expunge",
        registry: SessionRegistry | None = None,
    ) -> None:
        if deleteMode not in DELETE_MODES:
            raise ValueError(f"pop3.delete must be one of {DELETE_MODES}, not {deleteMode!r}")
        self.store = store
        self.runner = runner
        self.address = address
        self.deleteMode = deleteMode
        self.registry = SESSIONS if registry is None else registry
        self.lockKey: Hashable = (str(getattr(store, "root", id(store))), address)
        self.folder: Folder | None = None
        self.uidvalidity = 0
        self.entries: list[SnapshotEntry] = []
        self.deleted: set[int] = set()
        self._holdsLock = False
        self._closed = False

    # -- session life ---------------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        """Take the session lock, then scan the INBOX and fix the snapshot.

        Fails with L{MailboxInUse} when another POP3 session holds the mailbox, or with
        the store's error when the scan fails (the lock is then released).
        """
        if self._closed:
            return defer.fail(MailboxClosed("session already ended"))
        if not self._holdsLock:
            if not self.registry.acquire(self.lockKey):
                return defer.fail(MailboxInUse(self.address))
            self._holdsLock = True
        d = self.runner.run(self._scan)

        def scanned(result: tuple[Folder, FolderState]) -> None:
            folder, state = result
            self.folder = folder
            self._setSnapshot(state)

        def failed(f: Failure) -> Failure:
            self.close()
            return f

        return d.addCallbacks(scanned, failed)

    def _scan(self) -> tuple[Folder, FolderState]:
        """Open the account's INBOX and scan it without claiming \\Recent (blocking)."""
        folder = self.store.account(self.address).folder("INBOX")
        return folder, folder.scan(claimRecent=False)

    def _setSnapshot(self, state: FolderState) -> None:
        """Number the visible messages of C{state} for this session."""
        self.uidvalidity = state.uidvalidity
        hideFlagged = self.deleteMode == "flag"
        self.entries = [
            SnapshotEntry(info, formatUIDL(info.uid, state.uidvalidity))
            for info in state.messages
            if not (hideFlagged and DELETED in info.flags)
        ]
        self.deleted = set()

    def close(self) -> None:
        """End the session: release the lock (the realm's logout callable)."""
        self._closed = True
        if self._holdsLock:
            self._holdsLock = False
            self.registry.release(self.lockKey)

    @property
    def isOpen(self) -> bool:
        """Whether the snapshot is loaded and the session still holds the mailbox."""
        return self.folder is not None and self._holdsLock and not self._closed

    # -- snapshot queries --------------------------------------------------------------

    def count(self) -> int:
        """How many message numbers the session has (marked-deleted ones included)."""
        return len(self.entries)

    def isDeleted(self, index: int) -> bool:
        """Whether message C{index} (0-based) is marked for deletion."""
        return index in self.deleted

    def entry(self, index: int) -> SnapshotEntry:
        """The snapshot entry of message C{index} (0-based).

        @raise ValueError: the index is outside the snapshot.
        """
        if not isinstance(index, int) or index < 0 or index >= len(self.entries):
            raise ValueError(f"no message with index {index!r}")
        return self.entries[index]

    def stat(self) -> tuple[int, int]:
        """The number and total size of the messages not marked for deletion."""
        n = total = 0
        for i, e in enumerate(self.entries):
            if i not in self.deleted:
                n += 1
                total += e.size
        return n, total

    def visible(self) -> list[tuple[int, SnapshotEntry]]:
        """C{(number, entry)} for each message not marked for deletion, 1-based numbers."""
        return [(i + 1, e) for i, e in enumerate(self.entries) if i not in self.deleted]

    # -- pop3.IMailbox -------------------------------------------------------------------

    def listMessages(self, i: int | None = None) -> Any:
        """Sizes of all messages (0 for marked ones), or of message C{i} (0-based)."""
        if i is None:
            return [0 if n in self.deleted else e.size for n, e in enumerate(self.entries)]
        e = self.entry(i)
        return 0 if i in self.deleted else e.size

    def getUidl(self, i: int) -> bytes:
        """The unique-id of message C{i} (0-based).

        @raise ValueError: no such message, or it is marked for deletion.
        """
        e = self.entry(i)
        if i in self.deleted:
            raise ValueError(f"message index {i} is deleted")
        return e.uidl

    def getMessage(self, i: int) -> defer.Deferred[BinaryIO]:
        """A Deferred binary file of message C{i} (0-based), opened in the Runner."""
        e = self.entry(i)
        if i in self.deleted:
            raise ValueError(f"message index {i} is deleted")
        return self.runner.run(self._folder().open, e.info)

    def deleteMessage(self, i: int) -> None:
        """Mark message C{i} (0-based) for deletion at QUIT.

        @raise ValueError: no such message, or it is already marked.
        """
        self.entry(i)
        if i in self.deleted:
            raise ValueError(f"message index {i} is already deleted")
        self.deleted.add(i)

    def undeleteMessages(self) -> None:
        """Unmark every message (RSET)."""
        self.deleted.clear()

    def sync(self) -> defer.Deferred[list[int]]:
        """Commit the deletions (the UPDATE state); same as L{commit}."""
        return self.commit()

    # -- streaming and commit ---------------------------------------------------------

    def _folder(self) -> Folder:
        """The INBOX, once L{open} succeeded."""
        if self.folder is None or self._closed:
            raise MailboxClosed("mailbox is not open")
        return self.folder

    def openMessage(self, i: int, chunkSize: int) -> defer.Deferred[tuple[BinaryIO | None, bytes]]:
        """Open message C{i} (0-based) and read its first C{chunkSize} bytes in the Runner.

        Fires with C{(file or None, firstChunk)}; None means the message is complete.
        Fails with C{MessageVanished} when the message was expunged by someone else.
        """
        try:
            e = self.entry(i)
            folder = self._folder()
        except PymaildError as err:
            return defer.fail(err)
        except ValueError as err:
            return defer.fail(err)
        return self.runner.run(_openAndRead, folder, e.info, chunkSize)

    def openPlainNow(self, i: int) -> BinaryIO | None:
        """Message C{i}'s file, opened at once in the calling thread, when its name
        promises CRLF content (nothing read yet); None otherwise.

        @raise ValueError: no such message.
        @raise MailboxClosed: the mailbox is not open.
        """
        return self._folder().openPlain(self.entry(i).info)

    def readSmallNow(self, i: int, limit: int) -> bytes | None:
        """Message C{i}'s whole content (CRLF) read at once in the calling thread when
        its file holds fewer than C{limit} octets (a file with LF line ends converted);
        None otherwise.

        @raise ValueError: no such message.
        @raise MailboxClosed: the mailbox is not open.
        """
        return self._folder().readSmall(self.entry(i).info, limit)

    def readChunk(self, fp: BinaryIO, chunkSize: int) -> defer.Deferred[bytes]:
        """Read the next chunk in the Runner; a short chunk means the file is closed."""
        return self.runner.run(readOrClose, fp, chunkSize)

    def closeMessage(self, fp: BinaryIO) -> defer.Deferred[None]:
        """Close a message file opened by L{openMessage} in the Runner."""
        return self.runner.run(fp.close)

    def commit(self) -> defer.Deferred[list[int]]:
        """Apply the marked deletions in the Runner; fires with the UIDs affected.

        In C{expunge} mode the files are removed; in C{flag} mode each message gets
        C{\\Deleted} (keeping its other flags as they are on disk now). Messages that
        vanished meanwhile are skipped. Nothing to do means no disk work.
        """
        if not self.deleted:
            return defer.succeed([])
        try:
            folder = self._folder()
        except PymaildError as err:
            return defer.fail(err)
        keys = [self.entries[i].info.key for i in sorted(self.deleted)]
        work: Callable[[Folder, list[str]], list[int]]
        work = _expunge if self.deleteMode == "expunge" else _flagDeleted
        d = self.runner.run(work, folder, keys)

        def done(uids: list[int]) -> list[int]:
            self.deleted.clear()
            return uids

        return d.addCallback(done)


def _expunge(folder: Folder, keys: list[str]) -> list[int]:
    """Remove the messages with these keys (blocking)."""
    return list(folder.expunge(keys))


def _flagDeleted(folder: Folder, keys: list[str]) -> list[int]:
    """Add \\Deleted to each message with these keys, keeping its current flags (blocking)."""
    state = folder.scan(claimRecent=False)
    current = {info.key: info for info in state.messages}
    uids: list[int] = []
    for key in keys:
        info = current.get(key)
        if info is None:
            continue
        if DELETED in info.flags:
            uids.append(info.uid)
            continue
        try:
            updated = folder.setFlags(key, set(info.flags) | {DELETED})
        except MessageVanished:
            continue
        uids.append(updated.uid)
    return uids


class POP3Avatars:
    """Realm factory for C{pop3.IMailbox}: C{avatarId -> (POP3Mailbox, logout)}.

    Refuses the anonymous avatar (SMTP's unauthenticated logins share the portal) and
    ids that are not addresses. Creating the avatar touches no disk.
    """

    def __init__(
        self,
        store: MaildirStore,
        diskRunner: Runner,
        config: Config,
        registry: SessionRegistry | None = None,
    ) -> None:
        self.store = store
        self.runner = diskRunner
        self.config = config
        self.registry = SESSIONS if registry is None else registry

    def __call__(self, avatarId: Any) -> tuple[POP3Mailbox, Callable[[], None]]:
        """Build the mailbox of C{avatarId}.

        @raise UnauthorizedLogin: for the anonymous avatar or an unusable id.
        """
        if avatarId is ANONYMOUS or not avatarId:
            raise UnauthorizedLogin("POP3 needs an authenticated user")
        if isinstance(avatarId, bytes):
            try:
                avatarId = avatarId.decode("utf-8")
            except UnicodeDecodeError:
                raise UnauthorizedLogin("avatar id is not UTF-8") from None
        if not isinstance(avatarId, str):
            raise UnauthorizedLogin("avatar id is not an address")
        try:
            address = canonical(avatarId)
        except AddressError:
            raise UnauthorizedLogin("avatar id is not an address") from None
        mailbox = POP3Mailbox(
            self.store,
            runnerFor(self.runner, address),
            address,
            deleteMode=self.config.pop3.delete,
            registry=self.registry,
        )
        return mailbox, mailbox.close
