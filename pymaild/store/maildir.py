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
by the folder's path (a weak registry plus a small LRU, so every L{Folder} object for one
path shares one lock and one cache). Processes (Dovecot, another pymaild) are kept apart by
the C{dovecot-uidlist.lock} dotlock whenever a uidlist or keywords file changes; message
files themselves only ever appear and change by C{link}/C{rename}, so readers never see a
partial message.

Durability: L{MaildirStore.deliver} and L{Folder.append} write C{tmp/<unique>} with
C{O_EXCL|O_CLOEXEC|O_NOFOLLOW} (mode 0600), fsync it, hard-link it into C{new/} (or
C{cur/} when appending with flags), fsync the directory and only then return; on any error
the links made are removed again, so a crash or failure leaves no message or the whole one.
Deliveries into one C{new/} at the same time share directory fsyncs (group commit, see
L{syncDirCoalesced}): each still returns only after an fsync that began after its link.

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

import bisect
import collections
import errno
import functools
import io
import itertools
import operator
import os
import re
import shutil
import socket
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

try:
    from _collections import _tuplegetter  # type: ignore[import-not-found]  # C accessor
except ImportError:  # pragma: no cover - other Pythons
    def _tuplegetter(index: int, doc: str) -> Any:
        """A read-only property returning item C{index} of a tuple."""
        return property(operator.itemgetter(index), doc=doc)

from pymaild.address import canonical, splitAddress
from pymaild.errors import (
    FolderExists,
    InvalidFolderName,
    MessageVanished,
    NoSuchFolder,
    StoreError,
    StoreFull,
)
from pymaild.files import DotLock, fsyncDir, processGone, writeAll, writeFileAtomic
from pymaild.store import metadata as _metadata
from pymaild.store import names as _names
from pymaild.store import recent as _recent
from pymaild.store import subscriptions as _subs
from pymaild.store.changelog import ChangeLog, Position
from pymaild.store.flags import (
    SYSTEM_LETTERS,
    Keywords,
    buildName,
    infoLetters,
    normaliseFlags,
    splitName,
)
from pymaild.store.modseq import ModseqLog
from pymaild.store.uidlist import UIDLIST_NAME, UidList, UidRecord, isDiskFull

__all__ = [
    "MaildirStore", "Account", "Folder", "FolderState", "MessageInfo", "FolderHasChildren",
    "uniqueName", "escapeHostname", "toCRLF", "cleanTmpDir", "SPECIAL_FOLDERS", "clearCaches",
]

KEYWORDS_NAME = "dovecot-keywords"
MAILDIRFOLDER_NAME = "maildirfolder"
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
SYNC_WINDOW = 2.0
"""Seconds after a directory's mtime during which its listing is not trusted, where the
file system keeps whole seconds only (FAT's two-second steps included)."""
FINE_SYNC_WINDOW = 0.1
"""The same where the mtime has sub-second precision: Linux stamps it from the coarse
clock (one jiffy, 1 to 10 ms), so two changes in one tick may leave it unmoved; ten
ticks later a change would have moved it."""
OWN_CHANGES_MAX = 2.0
"""Longest a listing patched by this process's own changes goes unchecked against the
directory (see L{Folder._ownChange}); at least L{SYNC_WINDOW}."""
COMPACT_MIN = 16
TMP_MAX_AGE = 36 * 3600.0
_CHUNK = 64 * 1024
_DIRMODE = 0o700
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_LINK_FALLBACK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.ENOSYS)

_W_RE = re.compile(r",W=(\d+)")
_S_RE = re.compile(r",S=(\d+)")
_NAME_TIME_RE = re.compile(r"(\d+)\.(?:M(\d+))?")
_PID_RE = re.compile(r"P(\d+)")
_PATCH_MAX = 2000
_DELETED_PREFIX = "deleted."
_T = TypeVar("_T")


class FolderHasChildren(StoreError):
    """The folder is a non-selectable parent of other folders and cannot be deleted."""


Place = tuple[str, "str | None"]
"""Where a message file is, relative to its folder, as a (head, tail) pair shared by every
message with the same subdirectory and info part: the file name is C{head + key + tail}
(C{("cur/", ":2,S")}); C{(filename, None)} for a name that does not follow that form."""


def _compactSize(key: str, size: int) -> int | None:
    """How a L{MessageInfo} holds C{size}: None when the key's C{,W=} field says it (the
    usual case; no int object per message), else the number."""
    return None if size == _vsizeFromName(key) else size


def _placeOf(key: str, filename: str) -> Place:
    """The L{Place} of C{filename} for a message called C{key}."""
    if filename[3:4] == "/" and filename.startswith(key, 4):
        return filename[:4], filename[4 + len(key):]
    return filename, None


class MessageInfo(tuple):  # type: ignore[type-arg]
    """One message as a scan saw it (immutable).

    @ivar uid: its IMAP UID.
    @ivar key: its unique base name (the file name without C{:2,...}); stable across flag
        changes, the handle for L{Folder.setFlags}, L{Folder.expunge}, L{Folder.copy}.
    @ivar filename: its path relative to the folder directory when scanned
        (C{"cur/<key>:2,S"} or C{"new/<key>"}); it may since have been renamed.
    @ivar flags: IMAP flag names, keywords included (never C{\\Recent}).
    @ivar size: the size in octets with CRLF line ends (what L{Folder.open} returns).

    A tuple like a C{NamedTuple} of those five fields, except that it holds the file name
    as a shared L{Place} and builds the string when asked, and the size as None when the
    key's C{,W=} field gives it: a 100,000-message folder then keeps one copy of each
    message's name (its key), not two, and no size objects. Equal fields still make
    equal (and equally hashed) infos however they were made.
    """

    __slots__ = ()
    _fields = ("uid", "key", "filename", "flags", "size")

    def __new__(cls, uid: int, key: str, filename: str, flags: frozenset[str],
                size: int) -> MessageInfo:
        """A MessageInfo of these fields."""
        return tuple.__new__(cls, (uid, key, _placeOf(key, filename), flags,
                                   _compactSize(key, size)))

    @classmethod
    def fromPlace(cls, uid: int, key: str, place: Place, flags: frozenset[str],
                  size: int | None) -> MessageInfo:
        """A MessageInfo from a L{Place} and a size as L{_compactSize} gives it (the
        store's scans: no parsing of a file name)."""
        return tuple.__new__(cls, (uid, key, place, flags, size))

    def __getnewargs__(self) -> tuple[int, str, str, frozenset[str], int]:
        """The constructor's arguments (pickle and copy)."""
        return self.uid, self.key, self.filename, self.flags, self.size

    def __repr__(self) -> str:
        """C{MessageInfo(uid=..., key=..., filename=..., flags=..., size=...)}."""
        return (f"MessageInfo(uid={self.uid!r}, key={self.key!r}, "
                f"filename={self.filename!r}, flags={self.flags!r}, size={self.size!r})")

    uid: int = _tuplegetter(0, "The IMAP UID.")
    key: str = _tuplegetter(1, "The unique base name.")
    place: Place = _tuplegetter(
        2, "The file name as a shared (head, tail) L{Place}.")
    flags: frozenset[str] = _tuplegetter(3, "The IMAP flag names.")

    @property
    def size(self) -> int:
        """The size in octets with CRLF line ends."""
        size = self[4]
        return _vsizeFromName(self[1]) if size is None else size  # type: ignore[return-value]

    @property
    def filename(self) -> str:
        """The path relative to the folder directory when scanned."""
        head, tail = self[2]
        return head if tail is None else head + self[1] + tail  # type: ignore[no-any-return]


@dataclass(frozen=True)
class FolderState:
    """The result of L{Folder.scan}: the folder's UIDVALIDITY, next UID and messages.

    @ivar messages: sorted by UID.
    @ivar recent: UIDs claimed by this scan (C{claimRecent=True}) or still in C{new/}.
    @ivar keywords: the keywords defined for the folder, in letter order.
    """

    uidvalidity: int
    uidnext: int
    messages: list[MessageInfo]
    recent: frozenset[int]
    keywords: tuple[str, ...]
    guid: str = ""
    """The folder's GUID (the uidlist's C{G}): kept by RENAME, new for a new folder."""
    highestModseq: int = 0
    """HIGHESTMODSEQ (RFC 7162) after this scan (L{pymaild.store.modseq})."""
    version: int = 0
    """Equal for two scans of this process whose message lists are the same objects
    (unique across folders; 0: unknown), so that the caller need not compare them."""


# -- helpers ---------------------------------------------------------------------------


def escapeHostname(host: str) -> str:
    """Escape a host name for Maildir file names as Dovecot does (C{/} and C{:})."""
    return host.replace("/", "\\057").replace(":", "\\072")


# Starts at a random value: a restarted process may get the same pid (containers) and,
# after the clock stepped back, the same time, so a counter from 1 would repeat names.
_uniqueCounter = itertools.count(int.from_bytes(os.urandom(4), "big") + 1)


def uniqueName(host: str) -> str:
    """A new unique base name C{<secs>.M<usec>P<pid>Q<n>.<host>} (host already escaped).

    Unique without relying on the clock: C{Q<n>} counts per process from a random start.
    """
    now = time.time()
    secs = int(now)
    usec = int((now - secs) * 1_000_000)
    return f"{secs}.M{usec}P{os.getpid()}Q{next(_uniqueCounter)}.{host}"


def toCRLF(data: bytes) -> bytes:
    """C{data} with every line ending (LF or CRLF) written as CRLF; bare CRs are kept.

    Data without a CR (a file another MTA delivered with LF line ends) takes one
    C{bytes.replace}; data that already has only CRLF line ends (every message the SMTP
    server stores) is returned as it is, found by two C-speed counts; a mix takes two
    replaces. Both are 6 to 16 times faster than the regex substitution they replace
    (41 MB of LF messages: 0.38 s by regex, 0.024 s by one replace).
    """
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _crlfChunks(data: bytes | bytearray | memoryview | BinaryIO) -> Iterator[bytes]:
    """Yield C{data} (bytes or a binary file) in chunks with CRLF line ends."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield toCRLF(bytes(data))
        return
    carry = b""
    while True:
        chunk = data.read(_CHUNK)
        if not chunk:
            break
        chunk = carry + bytes(chunk)
        if chunk.endswith(b"\r"):
            carry, chunk = b"\r", chunk[:-1]
        else:
            carry = b""
        yield toCRLF(chunk)
    if carry:
        yield carry


def _storeError(e: OSError, what: str) -> StoreError:
    """Translate an OSError into StoreFull (disk/quota full) or StoreError."""
    if isDiskFull(e):
        return StoreFull(f"{what}: {e.strerror or e}")
    return StoreError(f"{what}: {e}")


def _unlinkQuietly(path: str) -> None:
    """Remove a file, ignoring errors (cleanup paths)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _writeTmp(tmpDir: str, data: bytes | bytearray | memoryview | BinaryIO, host: str,
              mtime: float | None = None) -> tuple[str, str]:
    """Write a message durably into C{tmpDir}; return (its key with sizes, tmp path).

    The file is created with C{O_EXCL|O_CLOEXEC|O_NOFOLLOW}, mode 0600, written with CRLF
    line ends, given C{mtime} if set, and fsynced. On error the file is removed.

    @raise OSError: as raised (the caller translates it).
    """
    base = uniqueName(host)
    path = os.path.join(tmpDir, base)
    fd = os.open(path, _OPEN_NEW, 0o600)
    try:
        size = 0
        try:
            for chunk in _crlfChunks(data):
                writeAll(fd, chunk)
                size += len(chunk)
            if mtime is not None:
                os.utime(fd if os.utime in os.supports_fd else path, (mtime, mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlinkQuietly(path)
        raise
    return f"{base},S={size},W={size}", path


def _syncWindow(mtimeNs: int) -> int:
    """The nanoseconds after C{mtimeNs} during which a listing is not trusted: a whole
    second (no finer precision seen) means a coarse file system (L{SYNC_WINDOW}), else
    L{FINE_SYNC_WINDOW}. An mtime that falls on a whole second by chance costs one
    re-listing more, never a missed change."""
    if mtimeNs % 1_000_000_000 == 0:
        return int(SYNC_WINDOW * 1e9)
    return int(FINE_SYNC_WINDOW * 1e9)


def _dirSig(path: str) -> tuple[int, int]:
    """(inode, mtime_ns) of a directory."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def _fileSig(path: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file, or None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _nameSortKey(key: str) -> tuple[int, int, str]:
    """Sort key putting base names in delivery-time order (seconds, microseconds)."""
    m = _NAME_TIME_RE.match(key)
    if m is None:
        return (2**63, 0, key)
    return (int(m.group(1)), int(m.group(2) or 0), key)


def _vsizeFromName(key: str) -> int | None:
    """The CRLF size from the name's C{,W=} field, or None.

    Without C{W=} the size is unknown: an C{S=} alone is the raw size, which differs from
    the CRLF size for LF-only files.
    """
    i = key.rfind(",W=")
    if i < 0:
        return None
    tail = key[i + 3:]
    if tail.isdigit():
        return int(tail)
    m = _W_RE.search(key)
    return int(m.group(1)) if m else None


def _dirNames(path: str) -> list[str]:
    """The names in a C{cur/} or C{new/} directory, subdirectories left out.

    A directory whose link count is 2 has none, so the usual case costs one stat and
    no per-entry type checks (filesystems that do not count links, btrfs, take the
    slower path).
    """
    if os.stat(path).st_nlink == 2:
        return os.listdir(path)
    return [e.name for e in os.scandir(path) if not e.is_dir()]


def _namesDigest(names: Iterable[str]) -> int:
    """An order-free digest of a set of file names (the XOR of their hashes, so one
    name can be taken out or put in without the others): equal digests mean equal
    sets but for a 64-bit hash collision. In memory only (str hashes are salted per
    process)."""
    return functools.reduce(operator.xor, map(hash, names), 0)


def _listMaildir(path: str, known: dict[str, UidRecord] | None = None,
                 tails: dict[str, str] | None = None,
                 names: list[str] | None = None) -> dict[str, str]:
    """The message files of a C{cur/} or C{new/} directory: key -> tail, the rest of the
    file name after the key (C{":2,S"}, or C{""} for a name without info).

    Dot files and names with CR or LF are skipped, as Dovecot does, and so are
    subdirectories (a foreign program's, say), which would otherwise fail every scan.
    C{names} is the directory's L{_dirNames} when the caller read them already.

    Memory: a key that has a record in C{known} (the uidlist's records by key) is that
    record's very string, and equal tails are one string (through C{tails}, which
    collects them), so a big folder holds each message's name once.
    """
    fnames = _dirNames(path) if names is None else names
    if tails is None:
        tails = {}
    listing: dict[str, str] = {}
    recOf = (known or {}).get
    tailOf = tails.setdefault
    for fn in fnames:
        key, sep, info = fn.partition(":")
        rec = recOf(key)
        if rec is not None:
            key = rec.key
        if sep:
            tail = sep + info
            listing[key] = tailOf(tail, tail)
        else:
            listing[key] = ""
    joined = "\0".join(fnames)
    if joined.startswith(".") or "\0." in joined or "\n" in joined or "\r" in joined:
        for fn in fnames:
            if fn.startswith(".") or "\n" in fn or "\r" in fn:
                listing.pop(fn.partition(":")[0], None)
    return listing


def _isCRLFClean(key: str) -> bool:
    """True when the name promises CRLF content: C{S=} and C{W=} present and equal."""
    w = _W_RE.search(key)
    s = _S_RE.search(key)
    return bool(w and s and w.group(1) == s.group(1))


def _crlfSizeOfFile(path: str) -> int:
    """The size of a file's content once line ends are CRLF (reads the file)."""
    total = 0
    with open(path, "rb") as f:
        carry = b""
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            chunk = carry + chunk
            if chunk.endswith(b"\r"):
                carry, chunk = b"\r", chunk[:-1]
            else:
                carry = b""
            total += len(toCRLF(chunk))
        total += len(carry)
    return total


# -- per-folder cache and lock registry -------------------------------------------------


_versions = itertools.count(1)
"""The versions of cached message lists (L{_FolderCache.version})."""


class _FolderCache:
    """Process-wide state of one folder directory, shared by its Folder objects.

    C{lists} maps each message key of C{new/} and C{cur/} to its tail (see
    L{_listMaildir}); C{messages} is the list of L{MessageInfo} the last scan built
    (None when it must be rebuilt, the previous one then kept in C{stale} so that the
    rebuild reuses its unchanged entries); C{places} and C{tails} share the L{Place}
    pairs and tail strings among the messages.
    """

    def __init__(self, path: str) -> None:
        """Empty cache for the folder at C{path}."""
        self.path = path
        self.lock = threading.RLock()
        self.uidlist: UidList | None = None
        self.uidlistSig: tuple[int, int, int] | None = None
        self.lists: dict[str, dict[str, str]] = {"new": {}, "cur": {}}
        self.dirSig: dict[str, tuple[int, int] | None] = {"new": None, "cur": None}
        self.dirTrusted: dict[str, bool] = {"new": False, "cur": False}
        # Until when (ns) a listing patched after this process's own change is used
        # without re-reading the directory (see L{Folder._ownChange}); 0: not patched.
        self.ownUntil: dict[str, int] = {"new": 0, "cur": 0}
        self.ownSince: dict[str, int] = {"new": 0, "cur": 0}
        # The L{_namesDigest} of the names the listing stands for.
        self.digest: dict[str, int] = {"new": 0, "cur": 0}
        # A check of cur/ (L{Folder.settle}) is reading the directory right now.
        self.checking = False
        self.keywords = Keywords()
        self.kwSig: tuple[int, int, int] | None | bool = False
        self.vsizes: dict[str, int] = {}
        self.flagCache: dict[str, frozenset[str]] = {}
        self.tails: dict[str, str] = {}
        self.places: dict[str, dict[str, Place]] = {"new": {}, "cur": {}}
        self.messages: list[MessageInfo] | None = None
        # Changes whenever the list above is built or changed (never repeats).
        self.version = next(_versions)
        self.stale: list[MessageInfo] | None = None
        # Keys whose MessageInfo may have changed since self.messages was built.
        self.dirty: set[str] = set()
        self.modseq = ModseqLog(path)
        # The journal of cur/ changes by pymaild processes, and how far this listing
        # of cur/ has taken it into account (L{Folder._replay}).
        self.changes = ChangeLog(path)
        self.changesPos: Position | None = None

    def reset(self) -> None:
        """Forget everything read from disk (the directory was moved or deleted)."""
        self.uidlist, self.uidlistSig, self.messages, self.stale = None, None, None, None
        self.lists = {"new": {}, "cur": {}}
        self.dirSig = {"new": None, "cur": None}
        self.dirTrusted = {"new": False, "cur": False}
        self.ownUntil = {"new": 0, "cur": 0}
        self.ownSince = {"new": 0, "cur": 0}
        self.digest = {"new": 0, "cur": 0}
        self.keywords, self.kwSig = Keywords(), False
        self.vsizes, self.flagCache, self.tails = {}, {}, {}
        self.places = {"new": {}, "cur": {}}
        self.dirty = set()
        self.changesPos = None

    def invalidate(self) -> None:
        """The message list must be rebuilt (keeping the old one for reuse)."""
        if self.messages is not None:
            self.stale = self.messages
            self.messages = None
        self.dirty.clear()

    def touch(self, key: str) -> None:
        """Note that C{key}'s message (listing entry or UID record) changed."""
        if self.messages is not None:
            self.dirty.add(key)
            if len(self.dirty) > _PATCH_MAX:
                self.invalidate()

    def place(self, sub: str, tail: str) -> Place:
        """The shared L{Place} of a file of C{sub} (C{"new"}/C{"cur"}) with C{tail}."""
        places = self.places[sub]
        p = places.get(tail)
        if p is None:
            p = places[tail] = (sub + "/", tail)
        return p

    def tail(self, tail: str) -> str:
        """The shared string equal to C{tail}."""
        return self.tails.setdefault(tail, tail) if tail else ""


_registryLock = threading.Lock()
_caches: weakref.WeakValueDictionary[str, _FolderCache] = weakref.WeakValueDictionary()
_recentCaches: collections.OrderedDict[str, _FolderCache] = collections.OrderedDict()
_RECENT_CACHES = 256
_accountLocks: dict[str, threading.RLock] = {}


def _folderCache(path: str) -> _FolderCache:
    """The shared cache (and lock) of the folder directory C{path}."""
    with _registryLock:
        c = _caches.get(path)
        if c is None:
            c = _FolderCache(path)
            _caches[path] = c
        _recentCaches[path] = c
        _recentCaches.move_to_end(path)
        while len(_recentCaches) > _RECENT_CACHES:
            _recentCaches.popitem(last=False)
        return c


def clearCaches() -> None:
    """Forget every cached folder state (as a restarted process would); for tests."""
    with _registryLock:
        _recentCaches.clear()
        for c in list(_caches.values()):
            with c.lock:
                c.reset()


class _DirSync:
    """Group commit for one directory: concurrent fsyncs of it are coalesced.

    A caller needs an fsync that I{started} after its own change to the directory (a
    link). If none is running it runs one; if one is running (it may have started before
    the change) it waits for that one to end and then for the next, which one of the
    waiters runs for all of them. So N deliveries into one C{new/} at the same time cost
    about two fsyncs instead of N, and nobody returns before a covering fsync succeeded.
    """

    __slots__ = ("cond", "running", "started", "done")

    def __init__(self) -> None:
        """No fsync run yet."""
        self.cond = threading.Condition(threading.Lock())
        self.running = False
        self.started = 0
        self.done = 0

    def sync(self, path: str) -> None:
        """Return once an fsync of C{path} that started after this call has succeeded.

        @raise OSError: the fsync this thread ran failed (waiters then run their own).
        """
        with self.cond:
            need = self.started + 1
            while self.done < need:
                if self.running:
                    self.cond.wait()
                    continue
                self.running = True
                self.started += 1
                mine = self.started
                ok = False
                self.cond.release()
                try:
                    fsyncDir(path)
                    ok = True
                finally:
                    self.cond.acquire()
                    self.running = False
                    if ok:
                        self.done = mine
                    self.cond.notify_all()


_dirSyncs: dict[str, _DirSync] = {}
_DIR_SYNCS_MAX = 4096


def syncDirCoalesced(path: str) -> None:
    """fsync directory C{path}, sharing the fsync with threads doing the same (see L{_DirSync}).

    @raise OSError: as L{fsyncDir}.
    """
    ds = _dirSyncs.get(path)
    if ds is None:
        with _registryLock:
            ds = _dirSyncs.get(path)
            if ds is None:
                if len(_dirSyncs) >= _DIR_SYNCS_MAX:
                    # Dropping entries only costs coalescing: a thread still holding an
                    # old one syncs on its own, which is always correct.
                    _dirSyncs.clear()
                ds = _dirSyncs[path] = _DirSync()
    ds.sync(path)


def _accountLock(root: str) -> threading.RLock:
    """The in-process lock serialising folder-tree changes of one account."""
    with _registryLock:
        lock = _accountLocks.get(root)
        if lock is None:
            lock = _accountLocks[root] = threading.RLock()
        return lock


def _makeMaildir(path: str, marker: bool) -> None:
    """Create C{path} with C{cur new tmp} (and the C{maildirfolder} marker if asked)."""
    os.makedirs(path, mode=_DIRMODE, exist_ok=True)
    for sub in ("tmp", "new", "cur"):
        try:
            os.mkdir(os.path.join(path, sub), _DIRMODE)
        except FileExistsError:
            pass
    if marker:
        mpath = os.path.join(path, MAILDIRFOLDER_NAME)
        if not os.path.exists(mpath):
            try:
                os.close(os.open(mpath, _OPEN_NEW, 0o600))
            except FileExistsError:
                pass


def cleanTmpDir(tmpDir: str, maxAge: float | None = TMP_MAX_AGE, atStart: bool = False,
                host: str | None = None, now: float | None = None) -> int:
    """Remove leftovers from a Maildir C{tmp/} directory; return how many were removed.

    Removed: entries older than C{maxAge} seconds (every entry if C{maxAge} is 0); entries
    named by pymaild on this host (C{host}, escaped) whose writer process is gone, or
    (C{atStart}) is this very process -- a previous incarnation that had our pid; and
    C{deleted.*} directories left by an interrupted L{Account.deleteFolder}.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(tmpDir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        remove = maxAge is not None and now - st.st_mtime >= maxAge
        if not remove and entry.name.startswith(_DELETED_PREFIX):
            remove = entry.is_dir(follow_symlinks=False)
        if not remove and host is not None:
            remove = _writerGone(entry.name, host, atStart)
        if not remove:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _writerGone(name: str, host: str, atStart: bool) -> bool:
    """True when C{name} was written on this host by a process that no longer runs."""
    parts = name.split(".", 2)
    if len(parts) < 3 or parts[2] != host:
        return False
    m = _PID_RE.search(parts[1])
    if m is None:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return atStart
    return processGone(pid)


# -- Folder ------------------------------------------------------------------------------


class Folder:
    """One Maildir folder: scan it, read messages, change flags, expunge, append, copy."""

    def __init__(self, account: Account, name: str, path: str) -> None:
        """A handle on the folder C{name} of C{account}, stored at C{path}."""
        self.account = account
        self.name = name
        self.path = path
        self._c = _folderCache(path)
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

    # -- single messages --

    def _locate(self, key: str) -> tuple[str, str] | None:
        """(subdir, file name) of C{key} from the cached listing, or None."""
        lists = self._c.lists
        tail = lists["cur"].get(key)
        if tail is not None:
            return "cur", key + tail
        tail = lists["new"].get(key)
        if tail is not None:
            return "new", key + tail
        return None

    def _withFile(self, info: MessageInfo, op: Callable[[str], _T]) -> _T:
        """Run C{op(path)} on the message's file, finding it again if it was renamed."""
        try:
            return op(os.path.join(self.path, info.filename))
        except FileNotFoundError:
            pass
        c = self._c
        with c.lock:
            for force in (False, True):
                try:
                    self._refresh(force=force)
                except NoSuchFolder:
                    break
                loc = self._locate(info.key)
                if loc is None:
                    continue
                try:
                    return op(os.path.join(self.path, loc[0], loc[1]))
                except FileNotFoundError:
                    continue
        raise MessageVanished(f"message {info.key} vanished from {self.name!r}")

    def internalDate(self, info: MessageInfo) -> float:
        """The message's IMAP INTERNALDATE: its file's mtime.

        @raise MessageVanished: the file is gone.
        """
        return self._withFile(info, lambda p: os.stat(p).st_mtime)

    def messageGuid(self, info: MessageInfo) -> str:
        """The message's GUID as Dovecot's Maildir has it: its uidlist record's C{G}
        field (which a copy carries over from its source), else its base name
        (blocking when the uidlist has to be read again)."""
        c = self._c
        ul = c.uidlist
        if ul is None:
            with c.lock:
                self._refreshUidlist(force=True)
                ul = c.uidlist
        rec = ul.byKey.get(info.key) if ul is not None else None
        guid = rec.extValue("G") if rec is not None else None
        return guid or info.key.split(",", 1)[0]

    def saveDate(self, info: MessageInfo) -> float:
        """When the message was saved to this folder (SAVEDATE, RFC 8514): the seconds
        its unique name starts with (written when delivered, appended or copied here,
        kept by flag changes), else the internal date.

        @raise MessageVanished: the name says nothing and the file is gone.
        """
        head = info.key.split(".", 1)[0]
        if head.isdigit() and len(head) <= 12:
            return float(head)
        return self.internalDate(info)

    def open(self, info: MessageInfo) -> BinaryIO:
        """The message content with CRLF line ends (LF-only foreign files converted).

        @raise MessageVanished: the file is gone.
        """
        def opener(path: str) -> BinaryIO:
            f = open(path, "rb")
            if _isCRLFClean(info.key):
                return f
            with f:
                data = f.read()
            return io.BytesIO(toCRLF(data))
        return self._withFile(info, opener)

    def read(self, info: MessageInfo) -> bytes:
        """The whole message content with CRLF line ends (one C{read} of the file's size).

        @raise MessageVanished: the file is gone.
        """
        if not _isCRLFClean(info.key):
            with self.open(info) as f:
                return f.read()

        def reader(path: str) -> bytes:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                data = os.read(fd, size + 1)  # one more: a file that grew is read whole
                if len(data) <= size:
                    return data
                chunks = [data]
                while True:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)
            finally:
                os.close(fd)
        return self._withFile(info, reader)

    def readPrefix(self, info: MessageInfo, size: int) -> bytes:
        """At most the first C{size} bytes of the content with CRLF line ends (one
        C{pread}, no buffered file object: the cheap way to a message's header).

        @raise MessageVanished: the file is gone.
        """
        if not _isCRLFClean(info.key):
            with self.open(info) as f:
                return f.read(size)

        def reader(path: str) -> bytes:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.pread(fd, size, 0)
            finally:
                os.close(fd)
        return self._withFile(info, reader)

    def openPlain(self, info: MessageInfo) -> BinaryIO | None:
        """The message file at its scanned path when it needs no conversion (its name
        promises CRLF content), else None; then use L{open}.

        One C{open()} and nothing else -- no listing, no lock -- so cheap enough for
        callers that must not block (also None when the file was renamed or removed).
        """
        if not _isCRLFClean(info.key):
            return None
        try:
            return open(os.path.join(self.path, info.filename), "rb")
        except FileNotFoundError:
            return None

    def readSmall(self, info: MessageInfo, limit: int) -> bytes | None:
        """The whole content with CRLF line ends when the file at its scanned path holds
        fewer than C{limit} octets: one C{open()}, one C{read()} and, for a file with LF
        line ends, one conversion -- no listing, no lock, so cheap enough for callers
        that must not block. None for a larger file, or one renamed or removed: then
        use L{open}."""
        try:
            fd = os.open(os.path.join(self.path, info.filename), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            data = os.read(fd, limit)
        finally:
            os.close(fd)
        if len(data) >= limit:
            return None
        return data if _isCRLFClean(info.key) else toCRLF(data)

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


class _OwnChange:
    """One change of a folder directory by this process (see L{Folder._ownChange})."""

    def __init__(self, folder: Folder, sub: str) -> None:
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


def _uidOf(info: MessageInfo) -> int:
    """Sort key: the UID."""
    return info.uid


def _linkOrRename(src: str, dst: str) -> None:
    """Hard-link C{src} to C{dst} (never replacing), renaming where links are unsupported."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "file exists", dst) from e
        os.rename(src, dst)


# -- Account -----------------------------------------------------------------------------


class Account:
    """One user's mail: the folder tree under C{<root>/<domain>/<local>/Maildir}."""

    def __init__(self, store: MaildirStore, address: str, root: str) -> None:
        """A handle on the Maildir at C{root} of canonical C{address}."""
        self.store = store
        self.address = address
        self.root = root
        self._lock = _accountLock(root)

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
        with _accountLock(self.root + "\0uidvalidity"):
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
                c = _folderCache(path)
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
                c = _folderCache(spath)
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
        # Maildirs account() has checked (or created): deliveries of in-memory data skip
        # the two stat() calls for them and recheck only when a directory turns out to
        # be missing.
        self._knownMaildirs: set[str] = set()
        self._roots: dict[str, tuple[str, str]] = {}

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

        Each C{new/} is fsynced through L{syncDirCoalesced}, so deliveries into one
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
                syncDirCoalesced(os.path.join(d, "new"))
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
