"""Reading Maildir directories and the per-folder cache that keeps what was read.

The listing helpers read C{new/} and C{cur/} into maps of key to info tail whose strings
are shared with the uidlist, take directory and file signatures, and judge when a
listing can be trusted (L{_syncWindow}). L{_FolderCache} is the state of one folder
directory shared by every L{pymaild.store.folder.Folder} object for it: its lock, its
uidlist, listings, keywords and message list (see L{pymaild.store.maildir}, "Caching").
"""

from __future__ import annotations

import collections
import functools
import itertools
import operator
import os
import re
import threading
import weakref
from collections.abc import Iterable

from pymaild.store.changelog import ChangeLog, Position
from pymaild.store.flags import (
    Keywords,
)
from pymaild.store.info import _W_RE, MessageInfo, Place
from pymaild.store.modseq import ModseqLog
from pymaild.store.uidlist import UidList, UidRecord
from pymaild.store.writing import _CHUNK, toCRLF

SYNC_WINDOW = 2.0
"""Seconds after a directory's mtime during which its listing is not trusted, where the
file system keeps whole seconds only (FAT's two-second steps included)."""
FINE_SYNC_WINDOW = 0.1
"""The same where the mtime has sub-second precision: Linux stamps it from the coarse
clock (one jiffy, 1 to 10 ms), so two changes in one tick may leave it unmoved; ten
ticks later a change would have moved it."""
_S_RE = re.compile(r",S=(\d+)")
_NAME_TIME_RE = re.compile(r"(\d+)\.(?:M(\d+))?")
_PATCH_MAX = 2000


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


# -- per-folder caches and their registry -------------------------------------------------


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


class FolderCaches:
    """The per-folder caches and locks of one L{pymaild.store.maildir.MaildirStore}.

    Folder caches are looked up by the folder's path in a weak registry, so that every
    Folder object for one path shares one cache and one lock, plus a small LRU that
    keeps the most recently used ones alive between sessions; account locks serialise
    each account's folder-tree changes. The store owns one: two stores over the same
    root share the disk and nothing in memory, and keep apart as two processes do (the
    uidlist dotlock, the journal's C{flock}, the journal replay).
    """

    RECENT = 256
    """How many folder caches are kept alive though no Folder object holds them."""

    def __init__(self) -> None:
        """No folder seen yet."""
        self._lock = threading.Lock()
        self._caches: weakref.WeakValueDictionary[str, _FolderCache] = (
            weakref.WeakValueDictionary())
        self._recent: collections.OrderedDict[str, _FolderCache] = collections.OrderedDict()
        self._accountLocks: dict[str, threading.RLock] = {}

    def folder(self, path: str) -> _FolderCache:
        """The shared cache (and lock) of the folder directory C{path}."""
        with self._lock:
            c = self._caches.get(path)
            if c is None:
                c = _FolderCache(path)
                self._caches[path] = c
            self._recent[path] = c
            self._recent.move_to_end(path)
            while len(self._recent) > self.RECENT:
                self._recent.popitem(last=False)
            return c

    def clear(self) -> None:
        """Forget every cached folder state (as a restarted process would); for tests
        whose sessions must go on with what is on disk only."""
        with self._lock:
            self._recent.clear()
            for c in list(self._caches.values()):
                with c.lock:
                    c.reset()

    def accountLock(self, root: str) -> threading.RLock:
        """The lock serialising folder-tree changes of the account at C{root}."""
        with self._lock:
            lock = self._accountLocks.get(root)
            if lock is None:
                lock = self._accountLocks[root] = threading.RLock()
            return lock
