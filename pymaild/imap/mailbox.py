"""Per-session views of a folder: sequence numbers, flags and change tracking.

A L{MailboxView} is what SELECT/EXAMINE returns. Each IMAP session gets its own, so one
session's EXPUNGE never renumbers another's messages behind its back: another session's
changes (or another process's, or a delivery) only mark the view dirty, and the session
applies them with L{MailboxView.sync} and L{MailboxView.collectUpdates} where RFC 3501
lets it tell the client. Messages expunged on disk but not yet reported stay in the view
as "ghosts" and are skipped by FETCH and STORE.

All disk work goes through the account's runner. The view also provides Twisted's
C{IMailbox}, C{ISearchableMailbox}, C{IMessageCopier} and C{ICloseableMailbox}
interfaces, and L{Message} the C{IMessage}/C{IMessageFile} ones, for code that speaks
Twisted's interfaces.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import email.utils
import functools
import io
import itertools
import operator
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence, Set
from typing import TYPE_CHECKING, Any, BinaryIO

from twisted.internet import defer
from twisted.mail import imap4
from twisted.python.failure import Failure
from zope.interface import implementer

from pymaild.errors import MessageVanished
from pymaild.imap.bodystructure import ParsedMessage
from pymaild.imap.mimeheader import MAX_HEADER_BLOCK
from pymaild.imap.mimeparse import parseMessage
from pymaild.imap.summary import Summary, readHeaderBlock, summariseHeader, summaryOf
from pymaild.imap.summarycache import StructureCache
from pymaild.imap.syntax import SequenceSet

if TYPE_CHECKING:
    from pymaild.imap.account import IMAPAccount

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}
_EMPTY: frozenset[int] = frozenset()


class Snapshot:
    """A folder's message list as one scan saw it, shared read-only by every view that
    shows exactly that state (copy-on-write: a view copies before it diverges).

    Thousands of sessions idling on the same folder then hold one uid list and one
    uid → MessageInfo map instead of one each.
    """

    __slots__ = ("messages", "uids", "infos", "version", "__weakref__")

    def __init__(self, messages: Sequence[Any], version: int = 0) -> None:
        self.messages = messages
        self.version = version
        self.uids: list[int] = [m.uid for m in messages]
        self.infos: dict[int, Any] = {m.uid: m for m in messages}

    @classmethod
    def patched(cls, old: Snapshot, messages: Sequence[Any], which: Sequence[int],
                version: int = 0) -> Snapshot:
        """The snapshot of C{messages}, which differ from C{old}'s only at the indexes
        C{which}, each with the same UID: the uid list is shared (snapshots are
        read-only), the map copied and patched, not rebuilt over every message."""
        snap = cls.__new__(cls)
        snap.messages = messages
        snap.version = version
        snap.uids = old.uids
        infos = snap.infos = dict(old.infos)
        for i in which:
            m = messages[i]
            infos[m.uid] = m
        return snap


_snapshots: weakref.WeakValueDictionary[str, Snapshot] = weakref.WeakValueDictionary()
_keptSnapshots: collections.OrderedDict[str, Snapshot] = collections.OrderedDict()
"""The latest snapshot of each of the last L{KEPT_SNAPSHOTS} folders used, by folder path,
kept alive when no view holds it: a client that logs out and back in (or opens its next
connection) finds its folder's snapshot still there instead of one rebuilt over every
message. Only the latest of a folder can be reused, so a new one replaces it, and one
that a session's own change (STORE, EXPUNGE) has made out of date is let go."""
KEPT_SNAPSHOTS = 8


def sharedSnapshot(path: str, messages: Sequence[Any], version: int = 0) -> Snapshot:
    """The snapshot of folder C{path} for a scan's C{messages}: the last one made for that
    folder when the scan returned the very same MessageInfo objects (known without a
    look at them when the scan's C{version} is the snapshot's), else a new one.

    Reactor thread only.
    """
    snap = _snapshots.get(path)
    new: Snapshot | None = None
    if snap is not None and version and snap.version == version:
        _keep(path, snap)
        return snap
    if snap is not None:
        old = snap.messages
        if len(old) == len(messages):
            which = list(itertools.compress(range(len(messages)),
                                            map(operator.is_not, old, messages)))
            if not which:
                snap.version = version
                _keep(path, snap)
                return snap
            # A few flag changes in a big folder: patch a copy of the last one.
            if len(which) * 8 <= len(messages) and all(
                    old[i].uid == messages[i].uid for i in which):
                new = Snapshot.patched(snap, messages, which, version)
    snap = new if new is not None else Snapshot(messages, version)
    _snapshots[path] = snap
    _keep(path, snap)
    return snap


def _keep(path: str, snap: Snapshot) -> None:
    """Keep C{snap} alive as folder C{path}'s latest snapshot (see L{_keptSnapshots})."""
    _keptSnapshots[path] = snap
    _keptSnapshots.move_to_end(path)
    while len(_keptSnapshots) > KEPT_SNAPSHOTS:
        _keptSnapshots.popitem(last=False)


def retireSnapshot(path: str, snap: Snapshot | None) -> None:
    """Stop keeping C{snap} alive: a session changed the messages of folder C{path}, so
    no later scan can return the same state (the views that show it still hold it)."""
    if snap is not None and _keptSnapshots.get(path) is snap:
        del _keptSnapshots[path]


class _ScanBatch:
    """One folder scan shared by every view that asked for one before it started.

    When a folder changes, each session with it open rescans it. With hundreds of
    sessions on one folder (a user's INBOX on many devices, or the bench's 10,000 IDLE
    sessions) the requests that arrive while the scan waits for a thread all get the
    result of that one scan. A view that joins gets a state at least as new as the one
    its own scan would have seen; C{\\Recent} claimed by the scan goes to the view that
    started it (a read-write one), the others see those messages as not recent, as if
    they had scanned right after it.
    """

    __slots__ = ("lock", "started", "claim", "waiters")

    def __init__(self, claim: bool) -> None:
        self.lock = threading.Lock()
        self.started = False
        self.claim = claim
        self.waiters: list[defer.Deferred[Any]] = []

    def join(self, claim: bool) -> defer.Deferred[Any] | None:
        """A Deferred for this batch's result, or None when it already started (or
        cannot serve a view that must claim \\Recent)."""
        if claim and not self.claim:
            return None
        with self.lock:
            if self.started:
                return None
            d: defer.Deferred[Any] = defer.Deferred()
            self.waiters.append(d)
            return d


_batches: dict[str, _ScanBatch] = {}
_held: list[tuple[Any, Any, defer.Deferred[Any]]] | None = None


@contextlib.contextmanager
def heldScans() -> Iterator[None]:
    """Queue the scans requested inside the block and start them when it ends.

    Used around loops that notify many views at once (a change notification, an IDLE
    poll round): every view of a folder then joins the one scan of that folder instead
    of racing a scan that a worker thread already started. Reactor thread only.
    """
    global _held
    if _held is not None:
        yield
        return
    _held = []
    try:
        yield
    finally:
        held, _held = _held, None
        for runner, work, d in held:
            try:
                started = runner.run(work)
            except Exception:  # noqa: BLE001 - the runner refused: fail this scan only
                d.errback(Failure())
            else:
                started.chainDeferred(d)


def sharedScan(runner: Any, folder: Any, claimRecent: bool) -> defer.Deferred[Any]:
    """C{folder.scan(claimRecent)} through C{runner}, shared with the other views of the
    folder that ask before the scan starts (see L{_ScanBatch}). Reactor thread only."""
    path = folder.path
    batch = _batches.get(path)
    if batch is not None:
        joined = batch.join(claimRecent)
        if joined is not None:
            return joined
    batch = _ScanBatch(claimRecent)
    _batches[path] = batch

    def work() -> Any:
        with batch.lock:
            batch.started = True
        return folder.scan(claimRecent=batch.claim)

    def finished(result: Any) -> Any:
        if _batches.get(path) is batch:
            del _batches[path]
        waiters, batch.waiters = batch.waiters, []
        if waiters:
            if isinstance(result, Failure):
                for w in waiters:
                    w.errback(result)
            else:
                shared = result
                if batch.claim and result.recent:
                    shared = dataclasses.replace(result, recent=_EMPTY)
                for w in waiters:
                    w.callback(shared)
        return result

    if _held is not None:
        d: defer.Deferred[Any] = defer.Deferred()
        _held.append((runner, work, d))
        return d.addBoth(finished)
    return runner.run(work).addBoth(finished)


def _uidKey(info: Any) -> int:
    """The UID of a MessageInfo (a bisect key)."""
    return info.uid


def canonicalFlag(flag: str) -> str | None:
    """The canonical spelling of a storable flag, or None for \\Recent.

    @raise ValueError: an unknown system flag (C{\\Foo}).
    """
    if flag.startswith("\\"):
        low = flag.lower()
        if low == "\\recent":
            return None
        if low not in _SYSTEM_LOWER:
            raise ValueError(f"unknown system flag {flag}")
        return _SYSTEM_LOWER[low]
    return flag


def loadParsed(cache: StructureCache, folder: Any, info: Any) -> ParsedMessage:
    """The parsed structure of a message, from the cache or by reading it (blocking)."""
    key = (folder.path, info.key)
    parsed = cache.get(key)
    if parsed is None:
        known = cache.summary(key)
        parsed = parseMessage(folder.read(info), known.envelope if known else None)
        cache.put(key, parsed)
        if known is None or known.bodystructure is None:
            cache.record(folder, info, summaryOf(parsed))
    return parsed


def readHeader(folder: Any, info: Any) -> bytes:
    """A message's root header block (with the blank line; the whole content when it
    has none), read from the file's first bytes (blocking).

    @raise MessageVanished: the message is gone.
    """
    return readHeaderBlock(functools.partial(folder.readPrefix, info))


def loadSummary(cache: StructureCache, folder: Any, info: Any, full: bool = False,
                tryFile: bool = True, known: Summary | None = None) -> Summary:
    """The summary of a message (ENVELOPE, header; with C{full} also BODY and
    BODYSTRUCTURE): from memory, the folder's cache file, or by reading the message
    (blocking). A summary computed here is queued for the cache file (L{StructureCache.
    flush} writes it).

    Without C{full} only the header block is read; C{tryFile=False} skips the cache
    file (the caller just loaded the summaries of a batch from it); C{known} is an
    incomplete summary of the message the caller has (its ENVELOPE is reused).

    @raise MessageVanished: the message is gone.
    """
    key = (folder.path, info.key)
    summary = cache.summary(key) or known
    if tryFile and (summary is None or (full and summary.bodystructure is None)):
        partial = cache.load(folder, (info,), full)
        summary = cache.summary(key) or partial.get(info.key) or summary
    if summary is not None and (not full or summary.bodystructure is not None):
        return summary
    if full:
        parsed = cache.get(key)
        if parsed is None:
            # Only the summary is kept: a FETCH of BODYSTRUCTURE over a whole folder
            # would otherwise push every useful part tree out of the parse cache.
            parsed = parseMessage(folder.read(info),
                                  summary.envelope if summary is not None else None)
        complete = cache.putSummary(key, summaryOf(parsed))
        cache.record(folder, info, complete)
        return complete
    summary = cache.putSummary(key, summariseHeader(readHeader(folder, info)))
    cache.record(folder, info, summary)
    return summary


def loadHeaderBlock(cache: StructureCache, folder: Any, info: Any) -> bytes:
    """A message's root header block (with the blank line) as far as parsing considers
    it (L{pymaild.imap.mimeheader.consideredBlock}: at most L{MAX_HEADER_BLOCK} bytes), from
    the cache or the file (blocking).

    A header too large for the summary is read again, but only its considered part, in
    one read of the size the summary knows: SEARCH over a folder of such messages then
    reads and scans a megabyte per message, not the whole of a many-megabyte header.

    @raise MessageVanished: the message is gone.
    """
    summary = loadSummary(cache, folder, info)
    if summary.header is not None:
        return summary.header  # at most HEADER_CACHE_MAX bytes, under MAX_HEADER_BLOCK
    return folder.readPrefix(info, min(summary.bodyStart, MAX_HEADER_BLOCK))


_flagListMemo: dict[tuple[frozenset[str], bool], bytes] = {}
_FLAG_MEMO_MAX = 4096


def changedFlags(old: frozenset[str], mode: int, wanted: frozenset[str]) -> frozenset[str]:
    """The flags a STORE leaves: C{wanted} added (mode 1), removed (-1) or in place of
    C{old} (0)."""
    if mode > 0:
        return old | wanted
    if mode < 0:
        return old - wanted
    return wanted


def flagListBytes(flags: frozenset[str], recent: bool) -> bytes:
    """A flag set serialised for FETCH, C{(\\Seen $Label)}, with C{\\Recent} if asked.

    Memoised: a mailbox has few distinct flag sets.
    """
    key = (flags, recent)
    out = _flagListMemo.get(key)
    if out is None:
        names = sorted(flags)
        if recent:
            names.append("\\Recent")
        out = b"(" + " ".join(names).encode("utf-8") + b")"
        if len(_flagListMemo) >= _FLAG_MEMO_MAX:
            _flagListMemo.clear()
        _flagListMemo[key] = out
    return out


def readRange(folder: Any, info: Any, start: int, end: int) -> bytes:
    """Bytes C{start..end} of a stored message (blocking)."""
    with folder.open(info) as f:
        f.seek(start)
        return f.read(max(0, end - start))


def formatInternalDate(ts: float) -> bytes:
    """An IMAP date-time (C{"17-Jul-1996 02:44:25 -0700"}) for a POSIX time, local zone."""
    lt = time.localtime(ts)
    off = lt.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
              "Dec")
    return (
        f"{lt.tm_mday:2d}-{months[lt.tm_mon - 1]}-{lt.tm_year:04d} "
        f"{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d} "
        f"{sign}{off // 3600:02d}{off % 3600 // 60:02d}"
    ).encode("ascii")


@implementer(
    imap4.IMailbox, imap4.ISearchableMailbox, imap4.IMessageCopier, imap4.ICloseableMailbox
)
class MailboxView:
    """One session's view of a selected folder.

    C{uids} and C{infos} are read-only for callers: while the view matches a shared
    L{Snapshot} they are the snapshot's, and the view copies them before changing them.
    C{recent} is a frozenset and C{ghosts} a set or the empty frozenset (change it with
    L{addGhost}), so a view without recent or vanished messages allocates neither.
    """

    __slots__ = (
        "account", "folder", "folderName", "user", "readWrite", "uidvalidity", "uidnext",
        "guid",
        "keywords", "uids", "infos", "recent", "ghosts", "dirty", "listener", "_pending",
        "_pendingSeq", "_syncSeq", "generation", "_twistedListeners", "closed", "_snap",
        "modseqMode", "noRecent", "__weakref__",
    )

    def __init__(
        self, account: IMAPAccount, folder: Any, name: str, readWrite: bool, state: Any
    ) -> None:
        self.account = account
        self.folder = folder
        self.folderName = name
        self.user = account.address
        self.readWrite = readWrite
        self.uidvalidity = state.uidvalidity
        self.uidnext = state.uidnext
        self.guid: str = getattr(state, "guid", "")
        self.keywords: tuple[str, ...] = tuple(state.keywords)
        snap = sharedSnapshot(folder.path, state.messages, state.version)
        self._snap: Snapshot | None = snap
        self.uids: list[int] = snap.uids
        self.infos: dict[int, Any] = snap.infos
        self.recent: frozenset[int] = frozenset(state.recent) if state.recent else _EMPTY
        self.ghosts: Set[int] = _EMPTY
        self.dirty = False
        self.listener: Any = None
        self._pending: Any = None
        self._pendingSeq = 0
        self._syncSeq = 0
        self.generation = 0
        self._twistedListeners: tuple[Any, ...] = ()
        self.closed = False
        self.noRecent = False
        """Whether the session has no \\Recent (IMAP4rev2): no RECENT response, the
        flag never shown."""
        self.modseqMode = 0
        """0, or 1 once the session enabled CONDSTORE (unsolicited FETCH responses carry
        MODSEQ), 2 with QRESYNC too (expunges are reported as VANISHED)."""

    def _own(self, changedOnDisk: bool = False) -> None:
        """Copy C{uids} and C{infos} from the shared snapshot before changing them.

        With C{changedOnDisk} (this session changed those messages in the folder) the
        snapshot is out of date and no longer kept alive for later sessions.
        """
        snap = self._snap
        if snap is None:
            return
        self._snap = None
        if changedOnDisk:
            retireSnapshot(self.folder.path, snap)
        self.uids = list(self.uids)
        self.infos = dict(self.infos)

    def addGhost(self, uid: int) -> None:
        """Note that message C{uid} vanished (reported as EXPUNGE when allowed)."""
        if isinstance(self.ghosts, set):
            self.ghosts.add(uid)
        else:
            self.ghosts = {*self.ghosts, uid}

    # -- bookkeeping ---------------------------------------------------------------
    @property
    def runner(self) -> Any:
        """The disk runner."""
        return self.account.runner

    @property
    def cache(self) -> StructureCache:
        """The structure cache shared by the process."""
        return self.account.cache

    def markDirty(self) -> None:
        """The folder changed on disk; rescan at the next allowed point."""
        if self.closed:
            return
        self.dirty = True
        if self.listener is not None:
            self.listener.mailboxChanged(self)

    def notifyOthers(self) -> None:
        """Tell the other sessions with this folder open that it changed (and have the
        folder checked against its directory once the changes have settled)."""
        self.account.registry.changed(self.user, self.folderName, origin=self)
        self.account.registry.checkLater(self.folder, self.runner)

    def count(self) -> int:
        """The number of messages the client currently knows (EXISTS)."""
        return len(self.uids)

    def seqOf(self, uid: int) -> int:
        """The sequence number of a uid in this view (1-based)."""
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        raise KeyError(uid)

    def flagsOf(self, uid: int) -> list[str]:
        """The flags of a message as the client sees them (with \\Recent)."""
        flags = sorted(self.infos[uid].flags)
        if uid in self.recent:
            flags.append("\\Recent")
        return flags

    def flagsBytes(self, uid: int) -> bytes:
        """The flag list of a message, serialised: C{(\\Seen $Label)}."""
        return flagListBytes(self.infos[uid].flags, uid in self.recent)

    def flagsLine(self, seq: int, uid: int) -> bytes:
        """The unsolicited C{* seq FETCH (UID u FLAGS (...))} of a changed message, with
        its MODSEQ once CONDSTORE is on (RFC 7162 3.2)."""
        if self.modseqMode:
            return b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))" % (
                seq, uid, self.flagsBytes(uid), self.folder.modseqs.modseq(uid))
        return b"* %d FETCH (UID %d FLAGS %s)" % (seq, uid, self.flagsBytes(uid))

    def permanentFlags(self) -> list[str]:
        """The flags the client may store permanently (with \\* for new keywords)."""
        return [*SYSTEM_FLAGS, *self.keywords, "\\*"]

    def announceFlagsOf(self, uids: Iterable[int], flags: Iterable[str] = ()) -> list[bytes]:
        """L{announceKeywords} for C{flags} and every keyword the current flag sets of
        C{uids} carry (another session's new keyword among them), before a response
        shows those flags."""
        result = list(flags)
        for fs in {self.infos[u].flags for u in uids}:
            result += sorted(fs)
        return self.announceKeywords(result)

    def announceKeywords(self, flags: Iterable[str]) -> list[bytes]:
        """The C{* FLAGS} and PERMANENTFLAGS lines (CRLF-ended) to send before a
        response uses keywords of C{flags} the client was not told of yet (RFC 3501
        7.2.6), none if it knows them all; the view's keywords then include them."""
        known = set(self.keywords)
        new = [k for k in dict.fromkeys(canonicalFlag(f) for f in flags)
               if k is not None and not k.startswith("\\") and k not in known]
        if not new:
            return []
        self.keywords = (*self.keywords, *new)
        return [b"* FLAGS (" + " ".join(self.messageFlags()).encode("utf-8") + b")\r\n",
                b"* OK [PERMANENTFLAGS (" + " ".join(self.permanentFlags()).encode("utf-8")
                + b")] Flags permitted\r\n"]

    def messageFlags(self) -> list[str]:
        """The FLAGS response list: system flags plus the folder's keywords."""
        return [*SYSTEM_FLAGS, *self.keywords]

    def firstUnseen(self) -> int | None:
        """The sequence number of the first message without \\Seen."""
        for i, uid in enumerate(self.uids):
            if "\\Seen" not in self.infos[uid].flags:
                return i + 1
        return None

    def unseenCount(self) -> int:
        """How many messages lack \\Seen."""
        return sum(1 for u in self.uids if "\\Seen" not in self.infos[u].flags)

    def resolve(self, messages: SequenceSet, uid: bool) -> list[tuple[int, int]]:
        """The (seq, uid) pairs a set names, in ascending order, never expanding ranges.

        Ghosts are included (callers skip them); sequence numbers past the end are
        clipped, and a UID range C{n:*} always includes the last message.
        """
        uids = self.uids
        n = len(uids)
        if n == 0:
            return []
        # The merged ranges are disjoint and ascending, and so are the index ranges they
        # give: the pairs come out in order without collecting the indexes first.
        out: list[tuple[int, int]] = []
        if uid:
            for lo, hi in messages.merged(uids[-1]):
                a = bisect.bisect_left(uids, lo)
                b = bisect.bisect_right(uids, hi)
                if a < b:
                    out.extend(zip(range(a + 1, b + 1), uids[a:b], strict=True))
        else:
            for lo, hi in messages.merged(n):
                lo, hi = max(1, lo), min(n, hi)
                if lo <= hi:
                    out.extend(zip(range(lo, hi + 1), uids[lo - 1:hi], strict=True))
        return out

    def seqNumbersOutOfRange(self, messages: SequenceSet) -> bool:
        """Whether a message sequence set names a number beyond the message count (EXISTS,
        ghosts included), which RFC 3501 section 9 makes invalid.

        C{*} is the last message, so C{n:*} is out of range only when n is; in an empty
        mailbox every set is, C{*} too (Dovecot: "when there are no messages, all
        messagesets are invalid"). Every explicit number is checked: Dovecot checks only
        the highest range, so it lets C{3,*} on two messages through as C{2}.
        """
        n = len(self.uids)
        if n == 0:
            return True
        for a, b in messages.ranges:
            for x in (a, b):
                if x is not None and x > n:
                    return True
        return False

    # -- synchronisation -----------------------------------------------------------
    def sync(self) -> defer.Deferred[None]:
        """Rescan the folder (via the runner) and keep the result for L{collectUpdates}.

        A scan that finishes after a newer one, or after this session changed the
        folder itself, is dropped (and the view stays dirty) so stale state is never
        applied.
        """
        self.dirty = False
        self._syncSeq += 1
        seq, gen = self._syncSeq, self.generation
        d = sharedScan(self.runner, self.folder, self.readWrite and not self.noRecent)

        def got(state: Any) -> None:
            self.account.registry.checkLater(self.folder, self.runner)
            if gen != self.generation:
                self.dirty = True
            elif seq > self._pendingSeq:
                self._pending = state
                self._pendingSeq = seq

        return d.addCallback(got)

    def collectUpdates(self, allowExpunge: bool) -> list[bytes]:
        """Apply the last scan to the view and return the untagged lines to send.

        Without C{allowExpunge} (during FETCH, STORE, SEARCH) vanished messages stay as
        ghosts and are reported later.
        """
        lines: list[bytes] = []
        state, self._pending = self._pending, None
        snap = None
        if state is not None:
            snap = sharedSnapshot(self.folder.path, state.messages, state.version)
            lines += self._applyState(state, snap)
        if allowExpunge and self.ghosts:
            self._own()
            removed = []
            first = len(lines)
            pairs = []
            for uid in sorted(self.ghosts, reverse=True):
                try:
                    seq = self.seqOf(uid)
                except KeyError:
                    continue
                del self.uids[seq - 1]
                self.infos.pop(uid, None)
                removed.append(uid)
                pairs.append((seq, uid))
                if self.modseqMode < 2:
                    lines.append(b"* %d EXPUNGE" % seq)
            expunging = getattr(self.listener, "expunging", None)
            if expunging is not None and pairs:
                # Lines the session sends before the expunges (CONTEXT=SEARCH's
                # REMOVEFROM), while the sequence numbers still name the messages.
                lines[first:first] = [x.rstrip(b"\r\n") for x in expunging(pairs)]
            if self.modseqMode >= 2 and removed:
                from pymaild.imap.condstore import vanishedLines

                lines += vanishedLines(removed, earlier=False)
            if self.recent:
                self.recent = self.recent.difference(removed)
            self.ghosts = _EMPTY
            self._share(snap)
        return lines

    def _share(self, snap: Snapshot | None) -> None:
        """Go back to a shared snapshot (C{snap}, else the folder's latest) when this
        view equals it again."""
        if self._snap is not None:
            return
        if snap is None:
            snap = _snapshots.get(self.folder.path)
        if snap is None or snap.uids != self.uids:
            return
        infos = self.infos
        if all(infos[u] is i for u, i in snap.infos.items()):
            self.uids, self.infos, self._snap = snap.uids, snap.infos, snap

    def _applyState(self, state: Any, snap: Snapshot) -> list[bytes]:
        """Apply a scan (whose shared snapshot is C{snap}); return the untagged lines."""
        lines: list[bytes] = []
        current = snap.infos
        if tuple(state.keywords) != self.keywords:
            self.keywords = tuple(state.keywords)
            lines.append(b"* FLAGS (" + " ".join(self.messageFlags()).encode("utf-8") + b")")
            lines.append(
                b"* OK [PERMANENTFLAGS (" + " ".join(self.permanentFlags()).encode("utf-8")
                + b")] Flags permitted"
            )
        n = len(self.uids)
        if self._snap is snap:
            added = 0  # the very same messages: nothing to compare
        elif snap.uids[:n] == self.uids:
            # Every message of the view is still there, in order, and the rest are new:
            # the view becomes the snapshot (shared) instead of a patched copy.
            oldSnap, oldInfos, ghosts = self._snap, self.infos, self.ghosts
            self.uids, self.infos, self._snap = snap.uids, snap.infos, snap
            # Quick check (in C) that no message of the view changed at all.
            same = oldSnap is not None and all(
                map(operator.is_, oldSnap.messages, snap.messages))
            for i in range(0 if same else n):
                uid = self.uids[i]
                info, old = current[uid], oldInfos[uid]
                if info is not old and info.flags != old.flags and uid not in ghosts:
                    lines.append(self.flagsLine(i + 1, uid))
            added = len(self.uids) - n
        else:
            self._own()
            for i, uid in enumerate(self.uids):
                info = current.get(uid)
                if info is None:
                    self.addGhost(uid)
                    continue
                old = self.infos[uid]
                self.infos[uid] = info
                if info.flags != old.flags and uid not in self.ghosts:
                    lines.append(self.flagsLine(i + 1, uid))
            last = self.uids[-1] if self.uids else 0
            new = [m for m in state.messages if m.uid > last]
            for m in new:
                self.uids.append(m.uid)
                self.infos[m.uid] = m
            added = len(new)
        if state.recent and not self.noRecent:
            self.recent = self.recent | state.recent
        self.uidnext = max(self.uidnext, state.uidnext)
        if added:
            lines.append(b"* %d EXISTS" % len(self.uids))
            if not self.noRecent:
                lines.append(b"* %d RECENT" % len(self.recent))
        return lines

    def forget(self, uids: Iterable[int]) -> list[int]:
        """Remove expunged messages from the view; returns their sequence numbers as
        reported one by one (each valid after the previous removals)."""
        seqs = []
        self.generation += 1
        removed = []
        for uid in sorted(set(uids), reverse=True):
            try:
                seq = self.seqOf(uid)
            except KeyError:
                continue
            self._own(changedOnDisk=True)
            del self.uids[seq - 1]
            self.infos.pop(uid, None)
            removed.append(uid)
            seqs.append(seq)
        if self.recent and not self.recent.isdisjoint(removed):
            self.recent = self.recent.difference(removed)
        if self.ghosts and not self.ghosts.isdisjoint(removed):
            self.ghosts = set(self.ghosts.difference(removed)) or _EMPTY
        return seqs

    # -- operations ----------------------------------------------------------------
    def storeFlags(
        self, pairs: list[tuple[int, int]], mode: int, flags: list[str]
    ) -> defer.Deferred[list[tuple[int, int]]]:
        """Add (mode 1), remove (-1) or replace (0) flags; returns the touched (seq, uid).

        Messages that vanished are marked as ghosts and left out.
        """
        wanted = frozenset(f for f in (canonicalFlag(x) for x in flags) if f is not None)
        if any(not f.startswith("\\") and f not in self.keywords for f in wanted):
            self.dirty = True  # a new keyword: the next sync announces FLAGS
        ghosts = self.ghosts
        live = [p for p in pairs if p[1] not in ghosts]
        jobs = list(map(self.infos.__getitem__, [p[1] for p in live]))
        # A folder has few distinct flag sets: compute each new set once and share it
        # (a STORE over 100,000 messages would otherwise build 100,000 equal sets).
        targets: dict[frozenset[str], frozenset[str]] = {}

        def target(old: frozenset[str]) -> frozenset[str]:
            new = targets.get(old)
            if new is None:
                new = targets[old] = changedFlags(old, mode, wanted)
            return new

        folder = self.folder

        def work() -> list[Any]:
            out: list[Any] = []
            current = jobs
            if mode != 0 and jobs:
                # Add to or remove from the flags the message has now, not the ones this
                # view last saw: another session's change must not be undone.
                msgs = folder.scan().messages
                current = []
                for info in jobs:
                    i = bisect.bisect_left(msgs, info.uid, key=_uidKey)
                    now = msgs[i] if i < len(msgs) and msgs[i].uid == info.uid else info
                    current.append(now if now.key == info.key else info)
            for info in current:
                new = target(info.flags)
                if new == info.flags:
                    out.append(info)
                    continue
                try:
                    out.append(folder.setFlags(info.key, new))
                except MessageVanished:
                    out.append(None)
            if any(o is not i for o, i in zip(out, current, strict=True)):
                folder.syncModseqs()  # the changed messages get their MODSEQ now
            return out

        def done(results: list[Any]) -> list[tuple[int, int]]:
            self.generation += 1
            touched = []
            changed = False
            for pair, info in zip(live, results, strict=True):
                uid = pair[1]
                if info is None:
                    self.addGhost(uid)
                    self.dirty = True
                    continue
                if uid in self.infos:
                    if self.infos[uid].flags != info.flags:
                        changed = True
                    if self.infos[uid] is not info:
                        self._own(changedOnDisk=True)
                        self.infos[uid] = info
                touched.append(pair)
            if changed:
                self.notifyOthers()
            return touched

        return self.runner.run(work).addCallback(done)

    def expungeDeleted(self, uidFilter: SequenceSet | None = None) -> defer.Deferred[list[int]]:
        """Remove messages flagged \\Deleted (optionally only those in a UID set).

        Returns the sequence numbers to report as EXPUNGE, in reporting order;
        ghosts are reported too.
        """
        star = self.uids[-1] if self.uids else 0
        victims = [
            self.infos[u] for u in self.uids
            if u not in self.ghosts and "\\Deleted" in self.infos[u].flags
            and (uidFilter is None or uidFilter.contains(u, star))
        ]
        folder = self.folder

        cache = self.cache

        def work() -> list[int]:
            if not victims:
                return []
            removed = list(folder.expunge([i.key for i in victims]))
            # Drop the expunged messages' summaries from the cache file once they are
            # most of it (a no-op otherwise).
            cache.compact(folder, {m.uid for m in folder.scan().messages})
            return removed

        def done(_removed: list[int]) -> list[int]:
            gone = {i.uid for i in victims} | self.ghosts
            seqs = self.forget(gone)
            if victims:
                self.notifyOthers()
            return seqs

        return self.runner.run(work).addCallback(done)

    def close(self) -> defer.Deferred[None]:
        """Stop listening for changes (ICloseableMailbox)."""
        if not self.closed:
            self.closed = True
            self.listener = None
            self.account.releaseView(self)
        return defer.succeed(None)

    # -- Twisted IMailbox ----------------------------------------------------------
    def getFlags(self) -> list[str]:
        """The message flags of this mailbox (IMailbox)."""
        return self.messageFlags()

    def getHierarchicalDelimiter(self) -> str:
        """The hierarchy delimiter (IMailboxInfo)."""
        return "/"

    def getUIDValidity(self) -> int:
        """UIDVALIDITY (IMailbox)."""
        return self.uidvalidity

    def getUIDNext(self) -> int:
        """UIDNEXT (IMailbox)."""
        return self.uidnext

    def getUID(self, message: int) -> int:
        """The UID of sequence number C{message} (IMailbox)."""
        return self.uids[message - 1]

    def getMessageCount(self) -> int:
        """EXISTS (IMailbox)."""
        return len(self.uids)

    def getRecentCount(self) -> int:
        """RECENT (IMailbox)."""
        return len(self.recent)

    def getUnseenCount(self) -> int:
        """Messages without \\Seen (IMailbox)."""
        return self.unseenCount()

    def isWriteable(self) -> bool:
        """Whether the view was opened read-write (IMailbox)."""
        return self.readWrite

    def destroy(self) -> None:
        """Not used: folders are deleted through the account (IMailbox)."""
        raise imap4.MailboxException("use DELETE on the account")

    def requestStatus(self, names: Iterable[str]) -> dict[str, int]:
        """STATUS items from the view's state (IMailbox)."""
        return imap4.statusRequestHelper(self, names)

    def addListener(self, listener: Any) -> None:
        """Register a Twisted IMailboxListener (IMailbox)."""
        self._twistedListeners = (*self._twistedListeners, listener)

    def removeListener(self, listener: Any) -> None:
        """Unregister a Twisted IMailboxListener (IMailbox)."""
        if listener in self._twistedListeners:
            rest = list(self._twistedListeners)
            rest.remove(listener)
            self._twistedListeners = tuple(rest)

    def addMessage(self, message: BinaryIO, flags: Iterable[str] = (), date: Any = None) -> Any:
        """Append a message to this folder (IMailbox); fires with its UID."""
        ts = None
        if date:
            parsed = email.utils.parsedate_tz(date if isinstance(date, str) else date.decode())
            if parsed is not None:
                ts = email.utils.mktime_tz(parsed)
        d = self.runner.run(self.folder.append, message, tuple(flags), ts)
        d.addCallback(lambda uid: (self.markDirty(), self.notifyOthers(), uid)[2])
        return d

    def expunge(self) -> Any:
        """Expunge \\Deleted messages (IMailbox); fires with the sequence numbers."""
        return self.expungeDeleted()

    def _imapSet(self, messages: Any, uid: bool) -> SequenceSet:
        if isinstance(messages, SequenceSet):
            return messages
        return SequenceSet.parse(str(messages).encode("ascii"))

    def fetch(self, messages: Any, uid: bool) -> Any:
        """(seq, L{Message}) pairs for a message set (IMailbox); loads them via the runner."""
        pairs = [p for p in self.resolve(self._imapSet(messages, uid), uid)
                 if p[1] not in self.ghosts]
        folder, cache = self.folder, self.cache

        def work() -> list[tuple[int, Message]]:
            out = []
            for seq, u in pairs:
                info = self.infos[u]
                try:
                    parsed = loadParsed(cache, folder, info)
                    with folder.open(info) as f:
                        data = f.read()
                    date = folder.internalDate(info)
                except MessageVanished:
                    continue
                out.append((seq, Message(info, self.flagsOf(u), parsed, data, date,
                                         folder=folder)))
            return out

        return self.runner.run(work)

    def store(self, messages: Any, flags: Iterable[str], mode: int, uid: bool) -> Any:
        """Change flags (IMailbox); fires with {seq: flags}."""
        pairs = self.resolve(self._imapSet(messages, uid), uid)
        d = self.storeFlags(pairs, mode, list(flags))
        return d.addCallback(lambda touched: {s: self.flagsOf(u) for s, u in touched})

    def search(self, query: Any, uid: bool) -> Any:
        """Search (ISearchableMailbox); C{query} is a L{pymaild.imap.search} key or the
        raw search text; fires with sequence numbers."""
        from pymaild.imap import search as searchModule

        if isinstance(query, (bytes, str)):
            text = query.encode("utf-8") if isinstance(query, str) else query
            from pymaild.imap.syntax import Reader

            query = searchModule.parseSearch(Reader([text]))[1]
        return searchModule.runSearch(self, query)

    def copy(self, message: Any) -> Any:
        """Copy one L{Message} into this folder (IMessageCopier); fires with the new UID."""
        src = getattr(message, "info", None)
        srcFolder = getattr(message, "folder", None)
        if srcFolder is None or src is None:
            return self.addMessage(message.open(), message.getFlags())

        def work() -> int:
            pairs = srcFolder.copy([src.key], self.folder)
            return pairs[0][1]

        return self.runner.run(work)


@implementer(imap4.IMessage, imap4.IMessageFile)
class Message:
    """A loaded message for Twisted's IMessage interfaces (headers as str)."""

    def __init__(
        self, info: Any, flags: list[str], parsed: ParsedMessage, data: bytes, date: float,
        part: Any = None, folder: Any = None,
    ) -> None:
        self.folder = folder
        self.info = info
        self.flags = flags
        self.parsed = parsed
        self.data = data
        self.date = date
        self.part = part if part is not None else parsed.root

    def getUID(self) -> int:
        """The message's UID."""
        return self.info.uid

    def getFlags(self) -> list[str]:
        """The message's flags."""
        return list(self.flags)

    def getInternalDate(self) -> str:
        """INTERNALDATE as an RFC 2822 date string."""
        return email.utils.formatdate(self.date, localtime=True)

    def open(self) -> BinaryIO:
        """The whole message (IMessageFile): the stored file itself when the folder is
        known (blocking; call it from the disk runner), else the loaded bytes."""
        if self.folder is not None:
            try:
                return self.folder.open(self.info)
            except MessageVanished:
                pass
        return io.BytesIO(self.data)

    def getHeaders(self, negate: bool, *names: str) -> dict[str, str]:
        """Header fields as str (IMessagePart); all when C{names} is empty and negate."""
        wanted = {n.lower() for n in names}
        out: dict[str, str] = {}
        for name, value in self.part.headers:
            n = name.decode("latin-1")
            if not names or ((n.lower() in wanted) != negate):
                out.setdefault(n.lower(), value.strip().decode("utf-8", "replace"))
        return out

    def getBodyFile(self) -> BinaryIO:
        """The body of this entity."""
        return io.BytesIO(self.data[self.part.bodyStart : self.part.end])

    def getSize(self) -> int:
        """The size in octets of this entity."""
        if self.part is self.parsed.root:
            return len(self.data)
        return self.part.end - self.part.start

    def isMultipart(self) -> bool:
        """Whether this entity is multipart."""
        return self.part.isMultipart

    def getSubPart(self, part: int) -> Message:
        """Child C{part} (0-based); IndexError past the end."""
        if not self.part.isMultipart:
            raise TypeError("not a multipart entity")
        child = self.part.children[part]
        return Message(self.info, self.flags, self.parsed, self.data, self.date, child,
                       self.folder)

