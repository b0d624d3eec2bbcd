"""The IMAP4rev1 and IMAP4rev2 server protocol and its factory.

L{IMAPServer} subclasses Twisted's C{IMAP4Server} (keeping its interfaces, response
helpers and timeout handling) but replaces the input side and every command, because
the base class mis-handles what real clients do (see research/twisted-traps.md §1):

- Input framing is our own: a command is assembled from its line(s) and literals before
  it runs, lines are capped at L{MAX_LINE} (BAD, and the session stays in sync),
  literal sizes are checked before the C{+} (C{NO [TOOBIG]} for APPEND, BAD otherwise),
  LITERAL+ is understood, large APPEND literals are spooled to disk through the runner.
- Commands run one at a time: pipelined input waits until the running command's tagged
  response is out, even when a handler returns a Deferred (Twisted bug #9282).
- Bytes pipelined behind STARTTLS are discarded; capabilities are re-evaluated after TLS.
- Cleartext LOGIN / AUTHENTICATE PLAIN only where C{pymaild.auth.policy.cleartextAllowed}
  says so (otherwise LOGINDISABLED); every login goes through the AuthGate penalty.
- FETCH: exact partial ranges, \\Seen on non-PEEK, cached ENVELOPE/BODYSTRUCTURE; the
  responses are rendered in batches (L{pymaild.imap.fetch.FetchPlan}: from the cache in
  the reactor, else one disk-runner call per batch) and written in large chunks; big
  bodies stream from the file through the disk runner with transport back-pressure.
- A message sequence number beyond EXISTS in FETCH, STORE, COPY or MOVE is C{BAD
  Invalid messageset} (as Dovecot answers), not silently clipped; UID sets are clipped.
- Changes from other sessions/processes are reported as EXISTS/EXPUNGE/FETCH FLAGS only
  where RFC 3501 §7.4.1 allows (never EXPUNGE during FETCH, STORE or SEARCH).
- Extensions: IDLE (ends on DONE only), NAMESPACE, UIDPLUS, MOVE, UNSELECT, ENABLE, ID,
  LITERAL+, SASL-IR, CHILDREN, SPECIAL-USE; STATUS=SIZE and APPENDLIMIT (L{status}),
  LIST-EXTENDED and LIST-STATUS (L{listext}), ESEARCH and SEARCHRES (L{esearch}),
  WITHIN (L{pymaild.imap.search}), COMPRESS=DEFLATE (L{pymaild.imap.compress}),
  MULTIAPPEND, SORT and SORT=DISPLAY (L{sort}), THREAD=REFERENCES and
  THREAD=ORDEREDSUBJECT (L{thread}), SAVEDATE, OBJECTID (L{objectid}),
  PREVIEW (L{preview}), CREATE-SPECIAL-USE, CONDSTORE and QRESYNC (L{condstore}, numbers
  from L{pymaild.store.modseq}), CATENATE and URL-PARTIAL (L{catenate}), URLAUTH and
  URLAUTH=BINARY (L{urlauth}), LOGIN-REFERRALS
  (a login on a cluster node that does not own the mailbox: C{NO [REFERRAL url]}),
  I18NLEVEL=1 (SEARCH and SORT with i;unicode-casemap, L{collation}), CONTEXT=SEARCH
  and CONTEXT=SORT (PARTIAL, searches and sorts kept up to date: L{context}), NOTIFY
  (L{notifyset}).
- IMAP4rev2 (RFC 9051) beside IMAP4rev1: after ENABLE IMAP4rev2 the session has no
  \\Recent (nor claims it from rev1 sessions), SELECT sends the mailbox's LIST and no
  RECENT or UNSEEN, a SELECT over a selected mailbox says OK [CLOSED], SEARCH answers
  ESEARCH, mailbox names are UTF-8, LSUB and CHECK are unknown commands and the RECENT
  status item is BAD (RFC 9051 appendix E: removed); everything else rev2 folds in
  (ESEARCH, SEARCHRES, LIST-EXTENDED, LIST-STATUS, STATUS SIZE and DELETED, UNSELECT,
  UIDPLUS, MOVE, ENABLE, IDLE, NAMESPACE, SASL-IR, LITERAL-, BINARY, SPECIAL-USE) is there
  for both.
"""

from __future__ import annotations

import binascii
import bisect
import datetime
import errno
import math
import os
import re
import tempfile
import time
import types
import weakref
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer, interfaces
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure
from zope.interface import implementer

from pymaild.address import canonical
from pymaild.auth.policy import cleartextAllowed, isSecure
from pymaild.auth.quota import QuotaExceeded
from pymaild.errors import (
    DatabaseUnavailable,
    FolderExists,
    InvalidFolderName,
    MessageVanished,
    NoSuchFolder,
    StoreError,
    StoreFull,
)
from pymaild.imap import (
    binary,
    catenate,
    collation,
    condstore,
    context,
    esearch,
    listext,
    metadata,
    notifyset,
    objectid,
    quota,
    sort,
    status,
    thread,
    urlauth,
)
from pymaild.imap.account import MailboxElsewhere
from pymaild.imap.compress import CompressedDataError, DeflateTransport, Inflater
from pymaild.imap.fetch import (
    RENDER_LIMIT,
    FetchItem,
    FetchPlan,
    Rendered,
    parseFetchAttributes,
)
from pymaild.imap.mailbox import (
    MailboxView,
    canonicalFlag,
    changedFlags,
    flagListBytes,
    heldScans,
)
from pymaild.imap.search import parseSearch, runSearch
from pymaild.imap.syntax import (
    BadCommand,
    Literal,
    NoCommand,
    Reader,
    SavedSet,
    SequenceSet,
    boundedInt,
    compressUids,
    decodeMailbox,
    decodeUTF8Name,
    encodeMailbox,
    serialiseString,
)
from pymaild.limits import FailureLog
from pymaild.sendbody import sendRanges
from pymaild.store.writing import uniqueName
from pymaild.wire import setNoDelay

log = Logger()

MAX_LINE = 65536
"""Longest command line accepted (without literals)."""
MAX_STRING_LITERAL = 65536
"""Largest literal accepted outside APPEND once logged in."""
MAX_UNAUTH_LITERAL = 8192
"""Largest literal accepted before login."""
MAX_COMMAND = 1048576
"""Largest total of in-memory literals in one command."""
MAX_HELD = 1048576
"""Pipelined input held while a command runs before reading from the socket pauses."""
SPOOL_THRESHOLD = 262144
"""APPEND literals larger than this go to a spool file instead of memory."""
MAX_MULTIAPPEND = 1000
"""Most messages in one APPEND (MULTIAPPEND, RFC 3502)."""
FETCH_BATCH = 256
"""Messages per step of a FETCH that sets \\Seen: the flag is stored for a step's
messages before their responses are rendered."""
IDLE_POLL = 30.0
"""While IDLE, rescan the folder this often (covers processes inotify does not see)."""
IDLE_KEEPALIVE = 120
"""Default seconds between two C{* OK Still here} lines during IDLE (Dovecot's
C{imap_idle_notify_interval}); C{imap.idle_keepalive} in the configuration."""


def idleSchedule(keepalive: int) -> tuple[int, int]:
    """The IDLE poll period and the polls between two keepalives for C{keepalive}
    seconds (0: no keepalive): polls come at most L{IDLE_POLL} seconds apart and
    often enough to send a keepalive on time."""
    poll = max(1, int(IDLE_POLL))
    if keepalive <= 0:
        return poll, 0
    period = min(poll, keepalive)
    return period, max(1, -(-keepalive // period))

_DONE = object()
_IDLING = object()
"""Returned by IDLE: the command stays running, without a Deferred, until DONE."""
_NO_CHALLENGERS: Any = types.MappingProxyType({})
"""The base class's SASL challenger table; AUTHENTICATE is implemented here instead."""
_TAG_RE = re.compile(rb"[^(){ %*\"\\\]+\x00-\x1f\x7f]+")
_LITERAL_RE = re.compile(rb"(?P<eight>~?)\{(?P<n>[0-9]+)(?P<plus>\+?)\}$")
_LITERAL_LIKE = re.compile(rb"\{[^{}]*\}$")
_STORE_RE = re.compile(rb"^([+-]?)FLAGS(\.SILENT)?$", re.I)
_DATE_TIME_RE = re.compile(
    rb"^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$"
)
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]

IMAP4REV2 = b"IMAP4REV2"
"""The ENABLE name of IMAP4rev2 (upper case, as ENABLE compares)."""
REV2_REMOVED = frozenset({b"LSUB", b"CHECK"})
"""IMAP4rev1 commands RFC 9051 removed (appendix E): unknown once IMAP4rev2 is on."""
NO_EXPUNGE_DURING = {b"FETCH", b"STORE", b"SEARCH", b"SORT", b"THREAD"}
_NO_CONTEXT_REFRESH = {b"SEARCH", b"SORT", b"THREAD", b"CANCELUPDATE", b"CAPABILITY",
                       b"LIST", b"LSUB", b"NAMESPACE", b"ID", b"GETQUOTAROOT", b"GETQUOTA",
                       b"GETMETADATA"}
"""Commands after which the updating searches are not run again: they change no
message (the mailbox's changes reach the searches after the next other command)."""


def parseDateTime(raw: bytes) -> float:
    """An APPEND date-time (C{"17-Jul-1996 02:44:25 -0700"}) as a POSIX time.

    @raise BadCommand: malformed.
    """
    m = _DATE_TIME_RE.match(raw)
    if not m:
        raise BadCommand("bad date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        month = _MONTHS.index(mon.decode().lower()) + 1
        offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
        if sign == b"-":
            offset = -offset
        dt = datetime.datetime(
            int(year), month, int(day), int(hh), int(mm), int(ss),
            tzinfo=datetime.timezone(offset),
        )
    except ValueError:
        raise BadCommand("bad date-time") from None
    return dt.timestamp()


@implementer(interfaces.IPushProducer)
class _Pusher:
    """A push producer registered while a message body streams, for back-pressure."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiter: defer.Deferred[None] | None = None

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The transport drained."""
        self.paused = False
        w, self._waiter = self._waiter, None
        if w is not None:
            w.callback(None)

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.stopped = True
        self.resumeProducing()

    def wait(self) -> defer.Deferred[None]:
        """Fires when production may go on."""
        if not self.paused:
            return defer.succeed(None)
        self._waiter = defer.Deferred()
        return self._waiter


class _LiteralSink:
    """Receives one literal: into memory, or for big APPEND literals into a spool file
    written through the disk runner.

    The spool file is named in the account's C{tmp/} the way deliveries name theirs
    (C{<secs>.M<usec>P<pid>Q<n>.<host>}), so when the server is killed mid-APPEND the
    next start sees a file of a process that is gone and removes it (catalogue row F1),
    instead of leaving it for the 36 hours after which any C{tmp/} file goes.
    """

    def __init__(self, literal: Literal, runner: Any, spoolDir: str | None,
                 hostTag: str | None = None) -> None:
        self.literal = literal
        self.remaining = literal.size
        self.runner = runner
        self.spoolDir = spoolDir
        self.hostTag = hostTag
        self.spool = literal.size > SPOOL_THRESHOLD and runner is not None
        self.buffer = bytearray()
        self.failed = False

    def feed(self, data: bytes) -> None:
        """Take bytes of the literal (dropped once spooling failed)."""
        self.remaining -= len(data)
        if not self.failed:
            self.buffer += data

    def needsFlush(self) -> bool:
        """Whether buffered bytes should be written to the spool now."""
        return self.spool and not self.failed and (
            len(self.buffer) >= SPOOL_THRESHOLD or self.remaining == 0)

    def fail(self, error: BaseException) -> defer.Deferred[None]:
        """Spooling failed: drop the rest of the literal and remove the spool file.

        The literal keeps the error; the command then fails with it (APPEND answers
        C{NO [OVERQUOTA]} on a full disk) instead of the session being dropped.
        """
        self.failed = True
        self.buffer = bytearray()
        self.literal.error = error
        return self.runner.run(self.literal.discard)

    def flush(self) -> defer.Deferred[None]:
        """Write the buffered bytes to the spool file (in the runner)."""
        data = bytes(self.buffer)
        self.buffer = bytearray()
        lit = self.literal
        spoolDir = self.spoolDir
        hostTag = self.hostTag

        def work() -> None:
            if lit.file is None:
                if spoolDir is not None and hostTag:
                    path = os.path.join(spoolDir, uniqueName(hostTag))
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                else:
                    fd, path = tempfile.mkstemp(prefix="append.", dir=spoolDir)
                lit.path = path
                lit.file = os.fdopen(fd, "w+b")
            lit.file.write(data)
            if self.remaining == 0:
                lit.file.flush()
                lit.file.seek(0)

        return self.runner.run(work)

    def finish(self) -> Literal:
        """The completed literal."""
        if not self.spool:
            self.literal.data = bytes(self.buffer)
        return self.literal


class _IdlePoller:
    """One timer for all the IDLE sessions of a clock, instead of one per session.

    A session due for its periodic rescan sits in the bucket of the whole second it is
    due at; the timer fires at the earliest bucket. Sessions on the same folder are
    given the same phase (the folder path's hash modulo the period) so that their polls
    happen in the same second and share one folder scan (L{pymaild.imap.mailbox.sharedScan}):
    10,000 idle sessions cost neither 10,000 timers nor 10,000 scans per period.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = weakref.ref(clock)  # the clock's pending call refers to us
        self.buckets: dict[int, set[IMAPServer]] = {}
        self._timer: Any = None
        self._timerDue: int | None = None
        self._firing = False

    @staticmethod
    def nextDue(now: float, phase: int, period: int) -> int:
        """The first whole second after C{now} (within one period) congruent to C{phase}."""
        base = math.floor(now)
        return base + 1 + (phase - base - 1) % period

    def add(self, session: IMAPServer, due: int) -> None:
        """Poll C{session} (its L{IMAPServer._idleTick}) at second C{due}."""
        self.buckets.setdefault(due, set()).add(session)
        if not self._firing and (self._timerDue is None or due < self._timerDue):
            self._arm(due)

    def remove(self, session: IMAPServer, due: int) -> None:
        """Forget a pending poll; the timer goes when no session is left."""
        bucket = self.buckets.get(due)
        if bucket is not None:
            bucket.discard(session)
            if not bucket:
                del self.buckets[due]
        if not self.buckets and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = self._timerDue = None

    def _arm(self, due: int) -> None:
        clock = self._clock()
        if clock is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timerDue = due
        self._timer = clock.callLater(max(0.0, due - clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = self._timerDue = None
        clock = self._clock()
        if clock is None:
            return
        now = clock.seconds()
        self._firing = True  # sessions re-add themselves: arm once, below
        try:
            with heldScans():  # the sessions of one folder share one scan
                for due in sorted(d for d in self.buckets if d <= now + 0.001):
                    for session in self.buckets.pop(due, ()):
                        try:
                            session._idleTick()
                        except Exception:  # noqa: BLE001 - one session must not stop others
                            log.failure("IDLE poll failed")
        finally:
            self._firing = False
        if self.buckets:
            self._arm(min(self.buckets))


_pollers: weakref.WeakKeyDictionary[Any, _IdlePoller] = weakref.WeakKeyDictionary()


def _idlePoller(clock: Any) -> _IdlePoller:
    """The IDLE poller of C{clock}."""
    poller = _pollers.get(clock)
    if poller is None:
        poller = _pollers[clock] = _IdlePoller(clock)
    return poller


#: Capabilities offered once logged in, besides the base list (COMPRESS and the ones
#: of the account's features: QUOTA, METADATA).
LOGGED_IN_CAPABILITIES = (b"BINARY", b"UTF8=ACCEPT", b"THREAD=REFS", b"PREVIEW=FUZZY",
                          b"SNIPPET=FUZZY", collation.CAPABILITY)


class IMAPServer(imap4.IMAP4Server):
    """pymaild's IMAP4rev1 server (one per connection).

    Its own state lives in slots: with 10,000 idle connections per process every byte
    of per-connection state counts (see bench/imap_idle_load.py).
    """

    __slots__ = (
        "userIPLimits", "_userIPKey", "config", "gate", "implicitTLS", "clock",
        "spoolRunner", "maxLiteral", "cleartextPolicy", "_inbuf", "_parts", "_cmdBytes",
        "_sink", "_sinkBusy", "_busy", "_pumping", "_lineWaiter", "_discarding",
        "_readPaused", "_lost", "_idleTag", "_idleTimer", "_idlePolls", "_idleSyncing",
        "_idleAgain", "_pendingLiterals", "_cmdName", "_cmdUid", "_pendingLogin",
        "_searchResult", "_inflater", "_lineTrack", "_mode", "_contexts", "_notifier",
    )

    IDENT = b"pymaild IMAP4rev1 ready"
    _enabled: frozenset[bytes] = frozenset()
    """ENABLEd extensions (UTF8=ACCEPT); an instance gets its own set once one is."""

    def __init__(
        self,
        config: Any,
        gate: Any,
        tlsContext: Any = None,
        implicitTLS: bool = False,
        clock: Any = None,
        spoolRunner: Any = None,
        userIPLimits: Any = None,
    ) -> None:
        imap4.IMAP4Server.__init__(self, chal=_NO_CHALLENGERS, contextFactory=tlsContext)
        self.userIPLimits = userIPLimits
        self._userIPKey: tuple[str, str] | None = None
        self.config = config
        self.gate = gate
        self.implicitTLS = implicitTLS
        self.clock = clock
        self.spoolRunner = spoolRunner
        self.maxLiteral = getattr(getattr(config, "imap", None), "max_literal", 52428800)
        self.cleartextPolicy = getattr(getattr(config, "auth", None), "cleartext", "tls-only")
        self._inbuf = bytearray()
        self._parts: list[Any] | None = None
        self._cmdBytes = 0
        self._sink: _LiteralSink | None = None
        self._sinkBusy = False
        self._busy = False
        self._pumping = False
        self._lineWaiter: defer.Deferred[bytes] | None = None
        self._discarding: bytes | None = None
        self._readPaused = False
        self._lost = False
        self._idleTag: bytes | None = None
        self._idleTimer: int | None = None  # the second of the next IDLE poll
        self._idlePolls = 0
        self._idleSyncing = False
        self._idleAgain = False
        self._pendingLiterals: list[Literal] | tuple[()] = ()
        self._cmdName = b""
        self._cmdUid = False
        self._cmdStarted = 0.0
        self._pendingLogin: defer.Deferred[Any] | None = None
        self._searchResult: tuple[int, ...] = ()  # SEARCHRES's $, as UIDs
        self._inflater: Inflater | None = None  # COMPRESS=DEFLATE once active
        self._lineTrack: Any = None
        self._mode = condstore.SessionMode()  # CONDSTORE/QRESYNC switched on
        self._contexts: context.Contexts | None = None  # CONTEXT=SEARCH's updates
        self._notifier: notifyset.Notifier | None = None  # NOTIFY (RFC 5465)
        self.mbox: MailboxView | None = None

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        """Schedule a call on the factory's clock (the global reactor by default)."""
        if self.clock is not None:
            return self.clock.callLater(delay, f, *args, **kw)
        from twisted.internet import reactor

        return reactor.callLater(delay, f, *args, **kw)  # type: ignore[attr-defined]

    # -- connection ----------------------------------------------------------------
    def connectionMade(self) -> None:
        """Greet with the capability list."""
        setNoDelay(self.transport)
        self.tags = {}
        self.canStartTLS = interfaces.ITLSTransport(self.transport, None) is not None
        self.setTimeout(self.timeOut)
        self.sendLine(
            b"* OK [CAPABILITY " + b" ".join(self.listCapabilities()) + b"] " + self.IDENT
        )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Release the mailbox view, the avatar and any spooled literal."""
        self._lost = True
        self.setTimeout(None)
        self._stopIdleTimer()
        pending, self._pendingLogin = self._pendingLogin, None
        if pending is not None:
            pending.cancel()
        if self.mbox is not None:
            self.mbox.close()
            self.mbox = None
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        self._discardLiterals()
        if self._userIPKey is not None:
            self.userIPLimits.release(*self._userIPKey)
            self._userIPKey = None
        if self._onLogout:
            logout, self._onLogout = self._onLogout, None
            try:
                logout()
            except Exception:  # noqa: BLE001
                log.failure("IMAP logout failed")
        w, self._lineWaiter = self._lineWaiter, None
        if w is not None:
            w.errback(Failure(ConnectionError("connection lost")))
        if self._idleTag is not None:
            self._idleEnded(Failure(ConnectionError("connection lost")))

    def sessionIdle(self) -> bool:
        """Whether no command is running or arriving (IDLE counts as idle): the server
        may close the session when stopping."""
        if self._idleTag is not None and not self._inbuf:
            return True
        return (not self._busy and self._sink is None and self._lineWaiter is None
                and not self._inbuf and not self._parts)

    def goodbye(self) -> None:
        """The server is stopping: say BYE and close."""
        if self._lost or self.state == "logout":
            return
        self.sendLine(b"* BYE [UNAVAILABLE] Server shutting down")
        self.state = "logout"
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        """Idle too long: say BYE and close."""
        self.sendLine(b"* BYE Autologout; idle for too long")
        self.state = "logout"
        self.transport.loseConnection()

    def _discardLiterals(self) -> None:
        lits, self._pendingLiterals = self._pendingLiterals, ()
        for lit in lits:
            if lit.file is not None or lit.path is not None:
                runner = self._runner()
                if runner is not None:
                    runner.run(lit.discard).addErrback(lambda f: None)
                else:
                    lit.discard()

    def _runner(self) -> Any:
        if self.account is not None:
            return self.account.runner
        return self.spoolRunner

    def isTLS(self) -> bool:
        """Whether the connection is encrypted."""
        return self.implicitTLS or self.startedTLS or isSecure(self.transport)

    def cleartextOK(self) -> bool:
        """Whether a cleartext password may be sent on this connection now."""
        if self.implicitTLS or self.startedTLS:
            return True
        return cleartextAllowed(self.cleartextPolicy, self.transport)

    # -- capabilities --------------------------------------------------------------
    def listCapabilities(self) -> list[bytes]:
        """The capabilities for the current state of the connection."""
        caps = [b"IMAP4rev1", b"IMAP4rev2", b"SASL-IR", b"LOGIN-REFERRALS", b"LITERAL+",
                b"ID", b"ENABLE", b"IDLE",
                b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"CHILDREN", b"SPECIAL-USE",
                b"STATUS=SIZE", b"APPENDLIMIT=%d" % self.maxLiteral, b"LIST-EXTENDED",
                b"LIST-STATUS", b"ESEARCH", b"SEARCHRES", b"WITHIN", b"MULTIAPPEND",
                b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES",
                b"SAVEDATE", b"OBJECTID", b"PREVIEW", b"CREATE-SPECIAL-USE", b"CONDSTORE",
                b"QRESYNC", context.CAPABILITY, context.SORT_CAPABILITY, notifyset.CAPABILITY]
        if self.state != "unauth":
            caps.append(b"COMPRESS=DEFLATE")
            caps.extend(LOGGED_IN_CAPABILITIES)
            if getattr(self.account, "quotas", None) is not None:
                caps.extend(quota.CAPABILITIES)
            caps.extend(metadata.CAPABILITIES)
            caps.extend(catenate.CAPABILITIES)
            caps.extend(urlauth.CAPABILITIES)
        if self.state == "unauth":
            if self.ctx is not None and self.canStartTLS and not self.isTLS():
                caps.append(b"STARTTLS")
            if self.cleartextOK():
                caps.append(b"AUTH=PLAIN")
            else:
                caps.append(b"LOGINDISABLED")
        return caps

    def capabilities(self) -> dict[bytes, Any]:
        """The capabilities as the base class's dict form."""
        out: dict[bytes, Any] = {}
        for c in self.listCapabilities()[1:]:
            name, sep, value = c.partition(b"=")
            if sep:
                values = out.get(name)
                if values is None:
                    out[name] = [value]  # (also after a bare SORT before SORT=DISPLAY)
                else:
                    values.append(value)
            else:
                out[name] = None
        return out

    # -- input framing -------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        """Buffer input and process what can be processed now."""
        if self._lost or self.state == "logout":
            return
        self.resetTimeout()
        if self._inflater is not None:
            self._inflater.feed(data)
        else:
            self._inbuf += data
        self._pump()

    def rawDataReceived(self, data: bytes) -> None:
        """Not used: framing is done in L{dataReceived}."""
        self.dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        """Not used: framing is done in L{dataReceived}."""
        self.dataReceived(line + b"\r\n")

    def _pump(self) -> None:
        """Run what the buffered input allows; with COMPRESS, inflate more input while
        the buffer has room (at most L{MAX_HELD} octets held), else stop reading."""
        if self._pumping:
            return
        self._pumpBuffered()
        inflater = self._inflater
        if inflater is None:
            return
        while inflater.pending() and not self._lost and self.state != "logout":
            if len(self._inbuf) > MAX_HELD:
                if not self._readPaused:
                    self._readPaused = True
                    self.transport.pauseProducing()
                return
            try:
                chunk = inflater.more()
            except CompressedDataError as e:
                self._badCompressedData(e)
                return
            if self._lineTrack is not None:
                self._lineTrack(chunk)
            self._inbuf += chunk
            self._pumpBuffered()
        if self._readPaused and not self._busy and not self._lost:
            self._readPaused = False
            self.transport.resumeProducing()

    def _badCompressedData(self, error: Exception) -> None:
        """The client's compressed stream is garbage: BYE (compressed) and close."""
        log.info("closing IMAP connection: bad compressed data: {error}", error=error)
        self._inflater = Inflater()  # drop what is pending
        self._inbuf.clear()
        self.sendLine(b"* BYE Invalid compressed data")
        self.state = "logout"
        self.transport.loseConnection()

    def _pumpBuffered(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._lost and self.state != "logout":
                if self._sinkBusy:
                    break
                if self._sink is not None:
                    if not self._feedLiteral():
                        break
                    continue
                if self._lineWaiter is not None:
                    line = self._takeLine()
                    if line is None:
                        break
                    w, self._lineWaiter = self._lineWaiter, None
                    if w is None:
                        # An over-long line failed the waiter inside _takeLine; this
                        # line is the next command's: put it back.
                        self._inbuf[:0] = line + b"\n"
                        continue
                    w.callback(line)
                    continue
                if self._idleTag is not None:
                    line = self._takeLine()
                    if line is None:
                        break
                    if self._idleTag is None:
                        # An over-long line ended IDLE inside _takeLine: put it back.
                        self._inbuf[:0] = line + b"\n"
                        continue
                    self._idleEnded(line)
                    continue
                if self._busy:
                    if len(self._inbuf) > MAX_HELD and not self._readPaused:
                        self._readPaused = True
                        self.transport.pauseProducing()
                    break
                line = self._takeLine()
                if line is None:
                    break
                self._handleLine(line)
        finally:
            self._pumping = False

    def _takeLine(self) -> bytes | None:
        """The next complete line (without CRLF), handling over-long lines."""
        while True:
            i = self._inbuf.find(b"\n")
            if self._discarding is not None:
                if i < 0:
                    self._inbuf.clear()
                    return None
                del self._inbuf[: i + 1]
                head, self._discarding = self._discarding, None
                self._lineTooLong(head)
                continue
            if i < 0:
                if len(self._inbuf) > MAX_LINE:
                    self._discarding = bytes(self._inbuf[:128])
                    self._inbuf.clear()
                return None
            if i > MAX_LINE:
                head = bytes(self._inbuf[:128])
                del self._inbuf[: i + 1]
                self._lineTooLong(head)
                continue
            line = bytes(self._inbuf[:i])
            del self._inbuf[: i + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            return line

    def _lineTooLong(self, head: bytes) -> None:
        tag = self._parts[0] if self._parts else head
        self._abortAssembly()
        w, self._lineWaiter = self._lineWaiter, None
        m = _TAG_RE.match(tag if isinstance(tag, bytes) else b"")
        if w is not None:
            w.errback(Failure(BadCommand("line too long")))
            return
        if self._idleTag is not None:
            self._idleEnded(Failure(BadCommand("line too long")))
            return
        if m and len(m.group()) < 64 and tag[m.end() : m.end() + 1] == b" ":
            self.sendLine(m.group() + b" BAD Line too long")
        else:
            self.sendLine(b"* BAD Line too long")

    def _abortAssembly(self) -> None:
        self._parts = None
        self._cmdBytes = 0
        self._discardLiterals()

    def _commandName(self, first: bytes) -> bytes:
        words = first.split(b" ", 3)
        if len(words) < 2:
            return b""
        name = words[1].upper()
        if name == b"UID" and len(words) > 2:
            return words[2].upper()
        return name

    def _handleLine(self, line: bytes) -> None:
        if self._parts is None:
            if not line.strip():
                return
            self._parts = []
            self._cmdBytes = 0
        m = _LITERAL_RE.search(line)
        if m is None:
            if _LITERAL_LIKE.search(line) and self._looksLikeLiteral(line):
                tag = self._tagOf(self._parts[0] if self._parts else line)
                self._abortAssembly()
                self.sendLine(tag + b" BAD Invalid literal size")
                return
            self._parts.append(line)
            parts, self._parts = self._parts, None
            self._dispatch(parts)
            return
        self._parts.append(line[: m.start()])
        size = boundedInt(m.group("n"))
        nonSync = bool(m.group("plus"))
        first = self._parts[0]
        tag = self._tagOf(first)
        isAppend = self._commandName(first) == b"APPEND" and self.state in ("auth", "select")
        if self.state == "unauth":
            limit = MAX_UNAUTH_LITERAL
        elif isAppend:
            limit = self.maxLiteral
        else:
            limit = MAX_STRING_LITERAL
        if not isAppend:
            self._cmdBytes += size
        tooMany = isAppend and len(self._pendingLiterals) >= MAX_MULTIAPPEND
        # literal8 (RFC 3516): APPEND messages and SETMETADATA values (RFC 5464) only.
        misplaced8 = bool(m.group("eight")) and not (
            isAppend or self._commandName(first) == b"SETMETADATA")
        if size > limit or self._cmdBytes > MAX_COMMAND or tooMany or misplaced8:
            self._abortAssembly()
            if misplaced8:
                self.sendLine(tag + b" BAD literal8 is allowed only in APPEND and"
                              b" SETMETADATA")
            elif tooMany:
                self.sendLine(tag + b" BAD More than %d messages in one APPEND"
                              % MAX_MULTIAPPEND)
            elif isAppend:
                self.sendLine(tag + b" NO [TOOBIG] Message too large (limit %d octets)" % limit)
            else:
                self.sendLine(tag + b" BAD Literal too large")
            if nonSync:
                # The client sends the bytes anyway and we cannot tell where they end.
                self.sendLine(b"* BYE Cannot resynchronise after an oversized literal")
                self.state = "logout"
                self.transport.loseConnection()
            return
        runner = self._runner() if isAppend else None
        spoolDir = hostTag = None
        if runner is not None and self.account is not None:
            acct = getattr(self.account, "_account", None)
            root = getattr(acct, "root", None)
            if root:
                spoolDir = os.path.join(root, "tmp")
                hostTag = getattr(getattr(acct, "store", None), "hostTag", None)
        lit = Literal(size)
        lit.binary = bool(m.group("eight"))
        if not self._pendingLiterals:
            self._pendingLiterals = []
        self._pendingLiterals.append(lit)  # type: ignore[union-attr]
        self._sink = _LiteralSink(lit, runner, spoolDir, hostTag)
        if isAppend and not self._sink.spool and runner is not None:
            # The messages of a MULTIAPPEND held in memory stay within MAX_COMMAND; past
            # it they go to spool files as large ones do.
            self._cmdBytes += size
            if self._cmdBytes > MAX_COMMAND:
                self._cmdBytes -= size
                self._sink.spool = True
        if not nonSync:
            self.sendLine(b"+ Ready for literal data")

    @staticmethod
    def _looksLikeLiteral(line: bytes) -> bool:
        return bool(re.search(rb"\{[-+]?[0-9a-zA-Z]*\+?\}$", line))

    @staticmethod
    def _tagOf(first: bytes) -> bytes:
        m = _TAG_RE.match(first)
        if m and first[m.end() : m.end() + 1] in (b" ", b""):
            return m.group()
        return b"*"

    def _feedLiteral(self) -> bool:
        """Move buffered input into the current literal; False when more input is needed."""
        sink = self._sink
        assert sink is not None
        if sink.remaining and not self._inbuf:
            return False
        take = min(sink.remaining, len(self._inbuf))
        if take:
            sink.feed(bytes(self._inbuf[:take]))
            del self._inbuf[:take]
        if sink.needsFlush():
            self._sinkBusy = True
            d = sink.flush()

            def flushed(_: Any) -> None:
                self._sinkBusy = False
                if self._lost:
                    # Dropped while the write ran: the spool file it created goes too.
                    self._releaseLiterals([sink.literal])
                    return
                if sink.remaining == 0:
                    self._literalDone()
                self._pump()

            def failed(f: Failure) -> Any:
                log.error("spooling an APPEND literal failed: {error}", error=f.value)
                return sink.fail(f.value)

            d.addErrback(failed)
            d.addErrback(lambda f: log.failure("removing a spooled literal failed", f))
            d.addCallback(flushed)
            return not self._sinkBusy  # a runner that finished at once: go on now
        if sink.remaining == 0:
            self._literalDone()
            return True
        return False

    def _literalDone(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None and self._parts is not None:
            self._parts.append(sink.finish())

    # -- dispatch ------------------------------------------------------------------
    COMMANDS: dict[bytes, tuple[str, tuple[str, ...]]] = {
        b"CAPABILITY": ("cmd_CAPABILITY", ("unauth", "auth", "select")),
        b"NOOP": ("cmd_NOOP", ("unauth", "auth", "select")),
        b"LOGOUT": ("cmd_LOGOUT", ("unauth", "auth", "select")),
        b"ID": ("cmd_ID", ("unauth", "auth", "select")),
        b"STARTTLS": ("cmd_STARTTLS", ("unauth",)),
        b"LOGIN": ("cmd_LOGIN", ("unauth",)),
        b"AUTHENTICATE": ("cmd_AUTHENTICATE", ("unauth",)),
        b"ENABLE": ("cmd_ENABLE", ("auth",)),
        b"NAMESPACE": ("cmd_NAMESPACE", ("auth", "select")),
        b"SELECT": ("cmd_SELECT", ("auth", "select")),
        b"EXAMINE": ("cmd_EXAMINE", ("auth", "select")),
        b"CREATE": ("cmd_CREATE", ("auth", "select")),
        b"DELETE": ("cmd_DELETE", ("auth", "select")),
        b"RENAME": ("cmd_RENAME", ("auth", "select")),
        b"SUBSCRIBE": ("cmd_SUBSCRIBE", ("auth", "select")),
        b"UNSUBSCRIBE": ("cmd_UNSUBSCRIBE", ("auth", "select")),
        b"LIST": ("cmd_LIST", ("auth", "select")),
        b"LSUB": ("cmd_LSUB", ("auth", "select")),
        b"STATUS": ("cmd_STATUS", ("auth", "select")),
        b"APPEND": ("cmd_APPEND", ("auth", "select")),
        b"IDLE": ("cmd_IDLE", ("auth", "select")),
        b"COMPRESS": ("cmd_COMPRESS", ("auth", "select")),
        b"GETQUOTAROOT": ("cmd_GETQUOTAROOT", ("auth", "select")),
        b"GETQUOTA": ("cmd_GETQUOTA", ("auth", "select")),
        b"SETQUOTA": ("cmd_SETQUOTA", ("auth", "select")),
        b"GETMETADATA": ("cmd_GETMETADATA", ("auth", "select")),
        b"SETMETADATA": ("cmd_SETMETADATA", ("auth", "select")),
        b"CHECK": ("cmd_CHECK", ("select",)),
        b"CLOSE": ("cmd_CLOSE", ("select",)),
        b"UNSELECT": ("cmd_UNSELECT", ("select",)),
        b"EXPUNGE": ("cmd_EXPUNGE", ("select",)),
        b"SEARCH": ("cmd_SEARCH", ("select",)),
        b"SORT": ("cmd_SORT", ("select",)),
        b"THREAD": ("cmd_THREAD", ("select",)),
        b"FETCH": ("cmd_FETCH", ("select",)),
        b"STORE": ("cmd_STORE", ("select",)),
        b"COPY": ("cmd_COPY", ("select",)),
        b"MOVE": ("cmd_MOVE", ("select",)),
        b"CANCELUPDATE": ("cmd_CANCELUPDATE", ("select",)),
        b"NOTIFY": ("cmd_NOTIFY", ("auth", "select")),
        b"GENURLAUTH": ("cmd_GENURLAUTH", ("auth", "select")),
        b"URLFETCH": ("cmd_URLFETCH", ("auth", "select")),
        b"RESETKEY": ("cmd_RESETKEY", ("auth", "select")),
    }
    UID_COMMANDS = {b"FETCH", b"STORE", b"SEARCH", b"COPY", b"MOVE", b"EXPUNGE", b"SORT",
                    b"THREAD"}

    def _dispatch(self, parts: list[Any]) -> None:
        literals = [p for p in parts if isinstance(p, Literal)]
        self._cmdBytes = 0
        r = Reader(parts)
        first = parts[0] if isinstance(parts[0], bytes) else b""
        m = _TAG_RE.match(first)
        if not m or first[m.end() : m.end() + 1] != b" ":
            self._releaseLiterals(literals)
            self.sendLine(b"* BAD Missing or invalid tag")
            return
        tag = m.group()
        r.pos = m.end()
        try:
            r.sp()
            name = r.atom().upper()
        except BadCommand:
            self._releaseLiterals(literals)
            self.sendLine(tag + b" BAD Missing command")
            return
        uid = False
        if name == b"UID":
            try:
                r.sp()
                name = r.atom().upper()
            except BadCommand:
                name = b""
            if name not in self.UID_COMMANDS:
                self._releaseLiterals(literals)
                self.sendLine(tag + b" BAD Unknown UID command")
                return
            uid = True
        entry = self.COMMANDS.get(name)
        if entry is None or (name in REV2_REMOVED and IMAP4REV2 in self._enabled):
            self._releaseLiterals(literals)
            self.sendLine(tag + b" BAD Unknown command")
            return
        method, states = entry
        if self.state not in states:
            self._releaseLiterals(literals)
            if self.state == "unauth":
                self.sendLine(tag + b" BAD Log in first")
            else:
                self.sendLine(tag + b" BAD Command not valid in this state")
            return
        r.uidMode = uid
        r.utf8Accept = b"UTF8=ACCEPT" in self._enabled
        r.utf8 = r.utf8Accept or IMAP4REV2 in self._enabled  # RFC 9051 5.1: UTF-8 names
        if self.state == "select":
            r.saved = self._savedResult
        self._busy = True
        self._cmdName = name
        self._cmdUid = uid
        self._cmdStarted = time.monotonic()
        d = defer.maybeDeferred(getattr(self, method), tag, r, uid)
        d.addCallbacks(self._commandSucceeded, self._commandFailed,
                       callbackArgs=(tag, name, uid), errbackArgs=(tag, name, uid))
        d.addBoth(lambda result: (self._releaseLiterals(literals), result)[1])
        d.addErrback(self._finishFailed)

    def _releaseLiterals(self, literals: list[Literal]) -> None:
        for lit in literals:
            if lit in self._pendingLiterals:
                self._pendingLiterals.remove(lit)  # type: ignore[union-attr]
            if lit.file is not None or lit.path is not None:
                runner = self._runner()
                if runner is not None:
                    runner.run(lit.discard).addErrback(lambda f: None)
                else:
                    lit.discard()

    def _commandSucceeded(self, result: Any, tag: bytes, name: bytes, uid: bool) -> Any:
        if result is _DONE:
            self._commandDone()
            return None
        if result is _IDLING:
            return None  # still running: L{_idleEnded} finishes it
        if isinstance(result, tuple):
            status, text = result
        else:
            status, text = b"OK", result or (name + b" completed")
        return self._finish(tag, name, uid, status, text)

    def _commandFailed(self, failure: Failure, tag: bytes, name: bytes, uid: bool) -> Any:
        if self._lost:
            self._commandDone()
            return None
        status, text = self._errorResponse(failure, name)
        return self._finish(tag, name, uid, status, text)

    def _errorResponse(self, failure: Failure, name: bytes) -> tuple[bytes, bytes]:
        e = failure.value
        if isinstance(e, BadCommand):
            return b"BAD", b"Error in IMAP command " + name + b": " + str(e).encode()
        if isinstance(e, NoCommand):
            return b"NO", str(e).encode("utf-8")
        if isinstance(e, (UnauthorizedLogin, UnhandledCredentials)):
            return b"NO", b"[AUTHENTICATIONFAILED] Authentication failed"
        if isinstance(e, NoSuchFolder):
            return b"NO", b"[NONEXISTENT] Mailbox does not exist"
        if isinstance(e, FolderExists):
            return b"NO", b"[ALREADYEXISTS] Mailbox already exists"
        if isinstance(e, InvalidFolderName):
            return b"NO", b"[CANNOT] Invalid mailbox name: " + _oneLine(str(e))
        if isinstance(e, QuotaExceeded):
            return b"NO", b"[OVERQUOTA] Quota exceeded (mailbox for user is full)"
        if isinstance(e, StoreFull):
            return b"NO", b"[OVERQUOTA] Not enough disk space"
        if isinstance(e, MessageVanished):
            return b"NO", b"[EXPUNGEISSUED] Some messages were expunged"
        if isinstance(e, StoreError) and isinstance(e.__cause__, OSError):
            # A system error (EACCES, EROFS, EIO...): its text names server paths, so it
            # goes to the log only; the client may retry later.
            log.error("IMAP command {name} failed: {error}",
                      name=name.decode("ascii", "replace"), error=e)
            return b"NO", b"[UNAVAILABLE] Temporary server failure, try again later"
        if isinstance(e, StoreError):
            return b"NO", b"[CANNOT] " + _oneLine(str(e))
        if isinstance(e, DatabaseUnavailable):
            log.error("IMAP command {name} failed: {error}",
                      name=name.decode("ascii", "replace"), error=e)
            return b"NO", b"[UNAVAILABLE] Temporary server failure, try again later"
        what = f"IMAP command {name.decode('ascii', 'replace')}"
        failures = getattr(self.factory, "failures", None)
        if failures is not None:
            failures.report(failure, what)
        else:
            log.failure("{what} failed", failure, what=what)
        return b"NO", b"[SERVERBUG] Internal error occurred. Refer to server log."

    def _finish(self, tag: bytes, name: bytes, uid: bool, status: bytes, text: bytes) -> Any:
        view = self.mbox
        if self._lost:
            self._commandDone()
            return None
        if view is not None and self.state == "select" and status != b"BAD":
            allow = uid or name not in NO_EXPUNGE_DURING
            last = view.uids[-1] if view.uids else 0
            d = self._reportUpdates(allow)
            if self._notifier is not None:
                d.addCallback(lambda _: self._newMessageFetch(view, last)
                              if self._wantsNewFetch(view, last) else None)
            if name not in _NO_CONTEXT_REFRESH:
                d.addCallback(lambda _: self._refreshContexts())
        else:
            d = defer.succeed(None)

        def send(_: Any) -> None:
            if not self._lost:
                notifier = self._notifier
                if notifier is not None and notifier.lines:
                    held, notifier.lines = notifier.lines, []
                    self.transport.write(b"".join(held))
                self.sendLine(tag + b" " + status + b" " + text)
            metrics = getattr(self.factory, "metrics", None)
            if metrics is not None:
                command = ("UID " if uid else "") + name.decode("ascii", "replace")
                metrics.imapCommand(command, time.monotonic() - self._cmdStarted)
            self._commandDone()

        def failed(f: Failure) -> None:
            log.failure("reporting mailbox updates failed", f)
            send(None)

        return d.addCallbacks(send, failed)

    def _finishFailed(self, failure: Failure) -> None:
        log.failure("IMAP command completion failed", failure)
        self._commandDone()

    def _commandDone(self) -> None:
        self._busy = False
        if self._readPaused and not self._lost:
            self._readPaused = False
            self.transport.resumeProducing()
        self.resetTimeout()
        if not self._pumping:
            self._pump()

    def _reportUpdates(self, allowExpunge: bool) -> defer.Deferred[None]:
        """Rescan the selected folder if it changed and send the untagged updates."""
        view = self.mbox
        if view is None:
            return defer.succeed(None)
        d = view.sync() if view.dirty else defer.succeed(None)

        def report(_: Any) -> None:
            if view is not self.mbox or self._lost:
                return
            lines = view.collectUpdates(allowExpunge)
            if lines:
                self.transport.write(b"".join(line + b"\r\n" for line in lines))

        def failed(f: Failure) -> None:
            if f.check(NoSuchFolder):
                self.sendLine(b"* BYE Selected mailbox was deleted")
                self.state = "logout"
                self.transport.loseConnection()
                return
            log.failure("rescanning a folder failed", f)

        return d.addCallbacks(report, failed)

    def _refreshContexts(self) -> defer.Deferred[None]:
        """Run the updating searches again (CONTEXT=SEARCH) and send what changed."""
        contexts, view = self._contexts, self.mbox
        if contexts is None or not contexts.updates or view is None:
            return defer.succeed(None)

        def send(lines: list[bytes]) -> None:
            if lines and view is self.mbox and not self._lost:
                self.transport.write(b"".join(lines))

        def failed(f: Failure) -> None:
            log.failure("updating a search context failed", f)

        return contexts.refresh(view).addCallbacks(send, failed)

    def expunging(self, pairs: list[tuple[int, int]]) -> list[bytes]:
        """The lines (CRLF-ended) to send before the messages (seq, uid) are reported
        expunged: updating searches lose them first (L{context.Contexts.expunging})."""
        if self._contexts is None or not self._contexts.updates:
            return []
        return self._contexts.expunging(pairs)

    def mailboxChanged(self, view: MailboxView) -> None:
        """Called by the view when its folder changed; during IDLE report at once, and
        with NOTIFY's selected events whenever no command runs."""
        if self._idleTag is not None and view is self.mbox:
            self._idleSync()
        elif self._notifier is not None and view is self.mbox and not self._busy:
            wanted = self._notifier.spec.selectedEvents()
            if wanted is not None and wanted[0]:
                self._pushSelected(allowExpunge=not wanted[1])

    def _pushSelected(self, allowExpunge: bool) -> None:
        """NOTIFY: report the selected mailbox's changes while no command runs; if a
        command starts meanwhile, its end reports them instead."""
        view = self.mbox
        if view is None:
            return
        d = view.sync() if view.dirty else defer.succeed(None)

        def report(_: Any) -> Any:
            if view is not self.mbox or self._lost or self._busy:
                return None
            last = view.uids[-1] if view.uids else 0
            lines = view.collectUpdates(allowExpunge)
            if lines:
                self.transport.write(b"".join(line + b"\r\n" for line in lines))
            if self._wantsNewFetch(view, last):
                self._busy = True  # the FETCH is a command of ours: input waits

                def released(_: Any) -> None:
                    if not self._lost:
                        self._commandDone()

                return self._newMessageFetch(view, last).addBoth(released)
            return self._refreshContexts()

        def failed(f: Failure) -> None:
            if not f.check(NoSuchFolder):
                log.failure("NOTIFY: rescanning the selected folder failed", f)

        d.addCallback(report).addErrback(failed)

    def _wantsNewFetch(self, view: MailboxView, last: int) -> bool:
        """Whether NOTIFY asks for a FETCH of the messages after UID C{last}."""
        notifier = self._notifier
        return (notifier is not None and bool(notifier.spec.selectedFetch())
                and view is self.mbox and bool(view.uids) and view.uids[-1] > last)

    def _newMessageFetch(self, view: MailboxView, last: int) -> defer.Deferred[Any]:
        """NOTIFY's MessageNew (fetch-att): FETCH the messages after UID C{last}."""
        assert self._notifier is not None
        r = Reader([b" %d:* %s" % (last + 1, self._notifier.spec.selectedFetch())])
        r.utf8 = r.utf8Accept = b"UTF8=ACCEPT" in self._enabled
        d = defer.maybeDeferred(self.cmd_FETCH, b"*", r, True)

        def failed(f: Failure) -> None:
            log.failure("NOTIFY: fetching new messages failed", f)

        return d.addErrback(failed)

    def sendNotifications(self, lines: list[bytes]) -> None:
        """NOTIFY's untagged lines (CRLF-ended): now when no command runs (or during
        IDLE), else just before the running command's tagged response."""
        notifier = self._notifier
        if self._lost or notifier is None:
            return
        if not self._busy or self._idleTag is not None:
            self.transport.write(b"".join(lines))
        else:
            notifier.lines.extend(lines)

    def utf8Names(self) -> bool:
        """Whether mailbox names go out in UTF-8 (ENABLE UTF8=ACCEPT)."""
        return b"UTF8=ACCEPT" in self._enabled

    @defer.inlineCallbacks
    def cmd_NOTIFY(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """NOTIFY NONE / NOTIFY SET [STATUS] (filter events) ... (RFC 5465,
        L{notifyset})."""
        spec = notifyset.parseNotify(r)
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        if spec is None:
            return b"NOTIFY completed"
        notifier = notifyset.Notifier(self, spec)
        try:
            lines = yield notifier.start()
        except BaseException:
            notifier.stop()
            raise
        if self._lost:
            notifier.stop()
            return _DONE
        self._notifier = notifier
        if lines:
            self.transport.write(b"".join(lines))
        return b"NOTIFY completed"

    def _idleSync(self) -> None:
        if self._idleSyncing:
            self._idleAgain = True
            return
        self._idleSyncing = True

        def done(_: Any) -> None:
            self._idleSyncing = False
            if self._idleAgain and self._idleTag is not None:
                self._idleAgain = False
                self._idleSync()

        if self.mbox is not None:
            self.mbox.dirty = True
        d = self._reportUpdates(True)
        d.addCallback(lambda _: self._refreshContexts())
        d.addBoth(done)

    # Twisted IMailboxListener: our views call mailboxChanged instead.
    def newMessages(self, exists: Any, recent: Any) -> None:
        """IMailboxListener: rescan at the next allowed point."""
        if self.mbox is not None:
            self.mbox.markDirty()

    def flagsChanged(self, newFlags: Any) -> None:
        """IMailboxListener: rescan at the next allowed point."""
        if self.mbox is not None:
            self.mbox.markDirty()

    def modeChanged(self, writeable: bool) -> None:
        """IMailboxListener: not used (modes do not change)."""

    # -- any state -----------------------------------------------------------------
    def cmd_CAPABILITY(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """CAPABILITY."""
        r.end()
        self.sendLine(b"* CAPABILITY " + b" ".join(self.listCapabilities()))
        return b"Capability completed"

    def cmd_NOOP(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """NOOP: also rescans the selected folder (and, with NOTIFY, looks for
        folder-list changes by other processes)."""
        r.end()
        if self.mbox is not None:
            self.mbox.dirty = True
        if self._notifier is not None:
            self._notifier.poll()
        return b"NOOP completed"

    def cmd_CHECK(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """CHECK: everything is already on disk; rescans the folder."""
        r.end()
        if self.mbox is not None:
            self.mbox.dirty = True
        return b"Check completed"

    def cmd_LOGOUT(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """LOGOUT."""
        r.end()
        self.sendLine(b"* BYE Logging out")
        self.sendLine(tag + b" OK Logout completed")
        self.state = "logout"
        self.transport.loseConnection()
        return _DONE

    def cmd_ID(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """ID (RFC 2971): answer with our name, whatever the client sent.

        The client's fields are only informational, and a BAD here makes some clients
        give up on the server (issue 16), so a malformed, deeply nested or over-long
        field list is answered the same way as a good one; the whole command, literals
        included, was already read, so the session stays in sync.
        """
        r.skipRestForError()
        self.sendLine(b'* ID ("name" "pymaild" "vendor" "pymaild")')
        return b"ID completed"

    # -- not authenticated ---------------------------------------------------------
    def cmd_STARTTLS(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """STARTTLS: discard anything pipelined behind it."""
        r.end()
        if self.isTLS():
            raise BadCommand("TLS is already active")
        if self.ctx is None or not self.canStartTLS:
            raise NoCommand("TLS not available")
        self.sendLine(tag + b" OK Begin TLS negotiation now")
        self._inbuf.clear()
        self._abortAssembly()
        self.transport.startTLS(self.ctx)
        self.startedTLS = True
        self._inbuf.clear()
        return _DONE

    def _peerHost(self) -> str:
        try:
            return getattr(self.transport.getPeer(), "host", "") or ""
        except Exception:  # noqa: BLE001
            return ""

    @defer.inlineCallbacks
    def _login(self, credentials: Any) -> Any:
        # Kept so that a client leaving before the answer cancels it (the gate counts
        # an abandoned attempt as a failure).
        self._pendingLogin = self.gate.login(self._peerHost(), credentials, imap4.IAccount)
        try:
            result = yield self._pendingLogin
        finally:
            self._pendingLogin = None
        iface, avatar, logout = result
        if self.userIPLimits is not None:
            key = (avatar.address, self._peerHost())
            counted = self.userIPLimits.acquire(*key)
            if isinstance(counted, defer.Deferred):  # counted by the master process
                counted = yield counted
                if counted and self._lost:
                    self.userIPLimits.release(*key)
                    counted = False
            if not counted:
                logout()
                raise NoCommand("[LIMIT] Too many sessions for this user from this address")
            self._userIPKey = key
        self.account = avatar
        self._onLogout = logout
        try:
            yield avatar.login()
        except MailboxElsewhere as e:
            self.account = None
            self._onLogout = None
            logout()
            log.info("imap: login {user} from {host} referred to {url}",
                     user=avatar.address, host=self._peerHost(), url=e.url)
            # RFC 2221 section 4.1: the client may log in there.
            raise NoCommand(f"[REFERRAL {e.url}] This mailbox is on another server") from None
        except Exception:
            self.account = None
            self._onLogout = None
            logout()
            raise
        self.state = "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        log.info("imap: login {user} from {host}", user=avatar.address, host=self._peerHost())
        return b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in"

    def cmd_LOGIN(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """LOGIN user password (only where cleartext passwords are allowed)."""
        r.sp()
        user = r.astring()
        r.sp()
        password = r.astring()
        r.end()
        if not self.cleartextOK():
            raise NoCommand("[PRIVACYREQUIRED] Plaintext authentication disallowed on "
                            "non-secure connections")
        return self._login(UsernamePassword(user, password))

    @defer.inlineCallbacks
    def cmd_AUTHENTICATE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """AUTHENTICATE PLAIN, with or without an initial response (SASL-IR)."""
        r.sp()
        mech = r.atom().upper()
        initial = None
        if r.maybeSp():
            initial = r.word()
        r.end()
        if mech != b"PLAIN":
            raise NoCommand("Unsupported authentication mechanism")
        if not self.cleartextOK():
            raise NoCommand("[PRIVACYREQUIRED] Plaintext authentication disallowed on "
                            "non-secure connections")
        if initial is None:
            self.sendLine(b"+ ")
            self._lineWaiter = defer.Deferred()
            self._pump()
            initial = yield self._lineWaiter
        if initial.strip() == b"*":
            raise BadCommand("Authentication cancelled")
        if initial == b"=":
            decoded = b""
        else:
            try:
                decoded = binascii.a2b_base64(initial.strip(), strict_mode=True)
            except (binascii.Error, ValueError):
                raise BadCommand("Invalid base64 data") from None
        fields = decoded.split(b"\0")
        if len(fields) != 3:
            raise BadCommand("Invalid PLAIN response")
        authz, authc, password = fields
        if authz and authz != authc:
            raise NoCommand("[AUTHORIZATIONFAILED] Proxy authentication is not supported")
        result = yield self._login(UsernamePassword(authc, password))
        return result

    # -- authenticated -------------------------------------------------------------
    def cmd_ENABLE(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """ENABLE: CONDSTORE and QRESYNC (which implies CONDSTORE), UTF8=ACCEPT
        (RFC 6855) and IMAP4rev2 (RFC 9051) can be enabled; other names are ignored."""
        r.sp()
        names = [r.atom().upper()]
        while r.maybeSp():
            names.append(r.atom().upper())
        r.end()
        enabled = []
        for name in dict.fromkeys(names):
            if name == b"CONDSTORE" and not self._mode.condstore:
                self._enableCondstore()
                enabled.append(name)
            elif name == b"QRESYNC" and not self._mode.qresync:
                self._mode.qresync = True
                self._enableCondstore()
                enabled.append(name)
        if b"UTF8=ACCEPT" in names and b"UTF8=ACCEPT" not in self._enabled:
            self._enabled = self._enabled | {b"UTF8=ACCEPT"}
            enabled.append(b"UTF8=ACCEPT")
        if IMAP4REV2 in names and IMAP4REV2 not in self._enabled:
            # RFC 9051 (Appendix E): no \Recent, no UNSEEN code, LIST in the SELECT
            # answer, ESEARCH for SEARCH, OK [CLOSED], UTF-8 mailbox names.
            self._enabled = self._enabled | {IMAP4REV2}
            enabled.append(b"IMAP4rev2")
        self.sendLine(b"* ENABLED" + b"".join(b" " + n for n in enabled))
        return b"Enabled"

    def cmd_COMPRESS(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """COMPRESS DEFLATE (RFC 4978): from after this command's CRLF, both directions
        are DEFLATE streams (L{pymaild.imap.compress}); input already buffered behind
        the command is the start of the client's compressed stream."""
        r.sp()
        mechanism = r.atom().upper()
        r.end()
        if self._inflater is not None:
            raise NoCommand("[COMPRESSIONACTIVE] DEFLATE is active already")
        if mechanism != b"DEFLATE":
            raise BadCommand("unknown compression mechanism")
        self.sendLine(tag + b" OK DEFLATE active")
        rest = bytes(self._inbuf)
        self._inbuf.clear()
        decodeLines = getattr(self.transport, "decodeLines", None)
        if decodeLines is not None:
            self._lineTrack = decodeLines()  # the trickle guard watches inflated lines
        self._inflater = Inflater()
        self._inflater.feed(rest)
        self.transport = DeflateTransport(self.transport)
        return _DONE

    def cmd_NAMESPACE(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """NAMESPACE: one personal namespace, empty prefix, C{/}."""
        r.end()
        self.sendLine(b'* NAMESPACE (("" "/")) NIL NIL')
        return b"Namespace completed"

    def _enableCondstore(self) -> None:
        """Switch CONDSTORE on (RFC 7162 3.1: by the first CONDSTORE enabling command)."""
        self._mode.condstore = True
        if self.mbox is not None:
            self.mbox.modseqMode = 2 if self._mode.qresync else 1
            # RFC 7162 3.1: enabled with a mailbox selected, tell its HIGHESTMODSEQ.
            self.sendLine(b"* OK [HIGHESTMODSEQ %d] Highest"
                          % max(self.mbox.folder.modseqs.highest, 1))

    def _closeMailbox(self) -> None:
        self._searchResult = ()
        self._contexts = None  # updates end with the mailbox (RFC 5267 4.2)
        if self.mbox is not None:
            self.mbox.close()
            self.mbox = None
        if self.state == "select":
            self.state = "auth"

    @defer.inlineCallbacks
    def _select(self, tag: bytes, r: Reader, rw: bool) -> Any:
        r.sp()
        name = decodeMailbox(r.astring(), r.utf8)
        params = condstore.SelectParams()
        if r.maybeSp():
            params = condstore.parseSelectParams(r)
            if params.qresync is not None and not self._mode.qresync:
                raise BadCommand("QRESYNC is not enabled")
        r.end()
        rev2 = IMAP4REV2 in self._enabled
        if self.mbox is not None and (self._mode.qresync or rev2):
            # RFC 7162 3.2.11; RFC 9051 6.3.2
            self.sendLine(b"* OK [CLOSED] Previous mailbox closed")
        self._closeMailbox()
        if params.condstore:
            self._mode.condstore = True
        try:
            if IMAP4REV2 in self._enabled:
                view = yield self.account.select(name, rw, claimRecent=False)
            else:
                view = yield self.account.select(name, rw)
        except NoSuchFolder:
            raise NoCommand("[NONEXISTENT] Mailbox does not exist") from None
        if self._lost:
            view.close()
            return _DONE
        view.listener = self
        view.modseqMode = (2 if self._mode.qresync else 1) if self._mode.condstore else 0
        if rev2:
            view.noRecent, view.recent = True, frozenset()
            listLine = yield self._selectedListLine(view.folderName, r.utf8)
            if self._lost:
                view.close()
                return _DONE
        self.mbox = view
        self.state = "select"
        lines = [
            b"* FLAGS (" + " ".join(view.messageFlags()).encode("utf-8") + b")",
            b"* OK [PERMANENTFLAGS (" + (
                " ".join(view.permanentFlags()).encode("utf-8") if rw else b""
            ) + b")] " + (b"Flags permitted" if rw else b"Read-only mailbox"),
            b"* %d EXISTS" % view.count(),
        ]
        if rev2:
            lines.append(listLine)  # RFC 9051 6.3.2: a LIST response, no RECENT/UNSEEN
        else:
            lines.append(b"* %d RECENT" % len(view.recent))
            unseen = view.firstUnseen()
            if unseen is not None:
                lines.append(b"* OK [UNSEEN %d] First unseen" % unseen)
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid" % view.uidvalidity)
        lines.append(b"* OK [UIDNEXT %d] Predicted next UID" % view.uidnext)
        if view.guid:
            lines.append(b"* OK [MAILBOXID (" + objectid.mailboxId(view.guid) + b")] Ok")
        lines += condstore.selectLines(view, params, self._mode.qresync)
        self.transport.write(b"".join(line + b"\r\n" for line in lines))
        return (b"[READ-WRITE] Select completed" if rw else b"[READ-ONLY] Examine completed")

    @defer.inlineCallbacks
    def _selectedListLine(self, name: str, utf8: bool) -> Any:
        """The C{* LIST} line of mailbox C{name} with its attributes, as LIST answers
        (IMAP4rev2's SELECT includes it)."""
        table, special, subs = yield self.account.listing()
        req = listext.ListRequest(patterns=[name], rev2=True)
        for entry in listext.listEntries(req, table, special, subs):
            if entry.name == name:
                return entry.line(utf8)
        return b'* LIST () "/" ' + encodeMailbox(name, utf8)

    def cmd_SELECT(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SELECT mailbox."""
        return self._select(tag, r, True)

    def cmd_EXAMINE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """EXAMINE mailbox (read-only)."""
        return self._select(tag, r, False)

    def _mailboxArg(self, r: Reader) -> str:
        r.sp()
        return decodeMailbox(r.astring(), r.utf8)

    @defer.inlineCallbacks
    def cmd_CREATE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """CREATE mailbox [(USE (attribute))] (CREATE-SPECIAL-USE, RFC 6154)."""
        name = self._mailboxArg(r)
        use = None
        if r.maybeSp():
            use = specialUseParameter(r)
        r.end()
        if name.rstrip("/") == "INBOX":
            raise NoCommand("[ALREADYEXISTS] Mailbox already exists")
        yield self.account.create(name, use)
        try:
            state = yield self.account.status(name.rstrip("/"))
        except NoSuchFolder:
            return b"Create completed"  # deleted at once by someone else
        return b"[MAILBOXID (" + objectid.mailboxId(state.guid) + b")] Create completed"

    @defer.inlineCallbacks
    def cmd_DELETE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """DELETE mailbox."""
        name = self._mailboxArg(r)
        r.end()
        if name == "INBOX":
            raise NoCommand("[CANNOT] INBOX cannot be deleted")
        if self.mbox is not None and self.mbox.folderName == name:
            raise NoCommand("[CANNOT] Cannot delete the selected mailbox")
        yield self.account.delete(name)
        return b"Delete completed"

    @defer.inlineCallbacks
    def cmd_RENAME(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """RENAME old new."""
        old = self._mailboxArg(r)
        new = self._mailboxArg(r)
        r.end()
        if new == "INBOX":
            raise NoCommand("[ALREADYEXISTS] Cannot rename to INBOX")
        yield self.account.rename(old, new)
        return b"Rename completed"

    @defer.inlineCallbacks
    def cmd_SUBSCRIBE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SUBSCRIBE mailbox."""
        name = self._mailboxArg(r)
        r.end()
        yield self.account.subscribe(name)
        return b"Subscribe completed"

    @defer.inlineCallbacks
    def cmd_UNSUBSCRIBE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """UNSUBSCRIBE mailbox."""
        name = self._mailboxArg(r)
        r.end()
        yield self.account.unsubscribe(name)
        return b"Unsubscribe completed"

    @defer.inlineCallbacks
    def cmd_LIST(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """LIST, with LIST-EXTENDED, LIST-STATUS and SPECIAL-USE (L{listext})."""
        req = listext.parseList(r, lambda raw: _decodePattern(raw, r.utf8))
        req.rev2 = IMAP4REV2 in self._enabled
        self._checkRev2Status(req.statusItems)
        if req.patterns == [""] and not req.selection:
            self.sendLine(b'* LIST (\\Noselect) "/" ""')
            return b"List completed"
        table, special, subs = yield self.account.listing()
        entries = listext.listEntries(req, table, special, subs)
        for entry in entries:
            if self._lost:
                return _DONE
            self.sendLine(entry.line(r.utf8))
            if req.statusItems and entry.selectable:
                try:
                    state = yield self.account.status(entry.name)
                except NoSuchFolder:
                    continue  # deleted meanwhile: no STATUS for it (RFC 5819)
                self.sendLine(status.statusLine(entry.name, state, req.statusItems,
                                                self.maxLiteral, r.utf8))
        return b"List completed"

    @defer.inlineCallbacks
    def cmd_LSUB(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """LSUB reference pattern."""
        r.sp()
        ref = _decodePattern(r.astring(), r.utf8)
        r.sp()
        pattern = _decodePattern(r.listMailbox(), r.utf8)
        r.end()
        if pattern == "":
            self.sendLine(b'* LSUB (\\Noselect) "/" ""')
            return b"Lsub completed"
        entries = yield self.account.listSubscribed(ref, pattern)
        out = [
            b"* LSUB (" + " ".join(info.getFlags()).encode() + b') "/" '
            + encodeMailbox(name, r.utf8)
            for name, info in entries
        ]
        if out:
            self.transport.write(b"".join(line + b"\r\n" for line in out))
        return b"Lsub completed"

    @defer.inlineCallbacks
    def cmd_STATUS(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """STATUS mailbox (items), with SIZE (RFC 8438) and APPENDLIMIT (RFC 7889)."""
        name = self._mailboxArg(r)
        r.sp()
        items = status.parseItems(r)
        r.end()
        self._checkRev2Status(items)
        state = yield self.account.status(name)
        self.sendLine(status.statusLine(name, state, items, self.maxLiteral, r.utf8))
        return b"Status completed"

    def _checkRev2Status(self, items: Any) -> None:
        """RFC 9051 has no RECENT status item: BAD once IMAP4rev2 is on."""
        if items and b"RECENT" in items and IMAP4REV2 in self._enabled:
            raise BadCommand("unknown STATUS item RECENT (not in IMAP4rev2)")

    def _quotaCommand(self, r: Reader, name: bytes) -> Any:
        """The QUOTA commands (L{pymaild.imap.quota}); unknown without quotas."""
        if getattr(self.account, "quotas", None) is None:
            raise BadCommand("Unknown command")
        return quota.command(self, r, name)

    def cmd_GETQUOTAROOT(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """GETQUOTAROOT mailbox (RFC 9208)."""
        return self._quotaCommand(r, b"GETQUOTAROOT")

    def cmd_GETQUOTA(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """GETQUOTA root (RFC 9208)."""
        return self._quotaCommand(r, b"GETQUOTA")

    def cmd_SETQUOTA(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SETQUOTA root (limits): parsed, then refused (RFC 9208)."""
        return self._quotaCommand(r, b"SETQUOTA")

    def cmd_GETMETADATA(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """GETMETADATA [(options)] mailbox entries (RFC 5464)."""
        return metadata.command(self, r, b"GETMETADATA")

    def cmd_SETMETADATA(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SETMETADATA mailbox (entry value ...) (RFC 5464)."""
        return metadata.command(self, r, b"SETMETADATA")

    @defer.inlineCallbacks
    def cmd_APPEND(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """APPEND mailbox [(flags)] [date-time] literal, with MULTIAPPEND (RFC 3502):
        more C{[(flags)] [date-time] literal} may follow, and all are stored or none.
        A message may be C{CATENATE (TEXT literal / URL url ...)} (RFC 4469,
        L{catenate})."""
        name = self._mailboxArg(r)
        messages: list[tuple[Any, tuple[str, ...], float | None]] = []
        literals: list[Literal] = []
        made: dict[int, list[Any]] = {}  # message index -> its CATENATE parts
        binaryMessages: list[int] = []  # indexes of messages sent as literal8
        while True:
            r.sp()
            flags: list[str] = []
            date = None
            if r.peek() == 0x28:
                flags = r.flagList()
                r.sp()
            if r.peek() == 0x22:
                date = parseDateTime(r.quoted())
                r.sp()
            if r.lookingAt(b"UTF8 "):
                # RFC 6855 section 4: UTF8 (literal8), a message with UTF-8 headers.
                if not r.utf8Accept:
                    raise BadCommand("UTF8 needs ENABLE UTF8=ACCEPT")
                r.expect(b"UTF8")
                r.sp()
                r.openParen()
                lit = r.literal()
                r.closeParen()
            elif r.lookingAt(b"CATENATE "):
                r.expect(b"CATENATE")
                parts = catenate.parseParts(r, self.account.address,
                                            getattr(self.config, "hostname", "") or "",
                                            lambda raw: self._authorisedURL(raw, r.utf8))
                made[len(messages)] = parts
                literals += [p for p in parts if isinstance(p, Literal)]
                lit = None
            else:
                lit = r.literal()
            try:
                stored = tuple(f for f in (canonicalFlag(x) for x in flags) if f is not None)
            except ValueError as e:
                raise BadCommand(str(e)) from None
            if lit is None:
                messages.append((None, stored, date))
            else:
                messages.append((lit.data if lit.file is None else lit.file, stored, date))
                literals.append(lit)
                if lit.binary:
                    binaryMessages.append(len(messages) - 1)
            if r.atEnd():
                break
        for lit in literals:
            if lit.size == 0 and not made:
                raise NoCommand("Cannot save a zero byte message")
            if lit.error is not None:
                e = lit.error
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreFull(f"spooling the message: {e.strerror}") from e
                raise StoreError(f"spooling the message: {e}") from e
        binaries = [lit for lit in literals if lit.binary]
        if binaries:
            def check() -> dict[int, bytes] | None:
                # A literal8 message whose parts hold bare line ends is stored with
                # those parts base64-encoded (BINARY[] gives the same octets back);
                # other literal8 data must be storable as it is.
                out = {}
                for i in binaryMessages:
                    data = messages[i][0]
                    if not binary.storable(data):
                        raw = data if isinstance(data, bytes) else data.read()
                        form = binary.storableForm(raw)
                        if form is None:
                            return None
                        out[i] = form
                inMessages = {id(messages[i][0]) for i in binaryMessages}
                for lit in binaries:
                    data = lit.data if lit.file is None else lit.file
                    if id(data) not in inMessages and not binary.storable(data):
                        return None
                return out

            forms = yield self._runner().run(check)
            if forms is None:
                raise NoCommand("[UNKNOWN-CTE] Binary content with bare line feeds cannot"
                                " be stored; send it base64-encoded")
            for i, form in forms.items():
                messages[i] = (form, *messages[i][1:])
        files: list[Any] = []
        try:
            for i, parts in made.items():
                # The message made of the parts, in the account's runner; NoSuchFolder
                # for a missing folder before any URL is read.
                f = yield self.account._run(catenate.assemble, name, parts,
                                            self.maxLiteral, self._spoolDir(),
                                            self._fetchAuthorised)
                files.append(f)
                messages[i] = (f, *messages[i][1:])
            validity, uids = yield self.account.append(name, messages)
        except NoSuchFolder:
            raise NoCommand("[TRYCREATE] Mailbox does not exist") from None
        finally:
            if files:
                yield self._runner().run(lambda: [f.close() for f in files])
        return b"[APPENDUID %d %s] Append completed" % (validity, compressUids(uids))

    def _spoolDir(self) -> str | None:
        """The account's C{tmp/} directory, where large literals are spooled."""
        root = getattr(getattr(self.account, "_account", None), "root", None)
        return os.path.join(root, "tmp") if root else None

    def cmd_IDLE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """IDLE: push changes until the client sends DONE.

        The command stays running (the session is busy) but holds no Deferred or
        callback chain while it idles: L{_pump} hands the next line to L{_idleEnded}.
        """
        r.end()
        self.sendLine(b"+ idling")
        self._idleTag = tag
        self._idlePolls = 0
        self._startIdleTimer()
        if self.mbox is not None:
            self._idleSync()
        return _IDLING

    def _idleEnded(self, line: bytes | Failure) -> None:
        """End IDLE: DONE answers OK, another line BAD, a failure its error response."""
        tag = self._idleTag
        assert tag is not None
        self._stopIdleTimer()
        self._idleTag = None
        if isinstance(line, Failure):
            d: defer.Deferred[Any] = defer.fail(line)
        elif line.strip().upper() == b"DONE":
            d = defer.succeed(b"IDLE terminated")
        else:
            d = defer.succeed((b"BAD", b"Expected DONE"))
        args = (tag, b"IDLE", False)
        d.addCallbacks(self._commandSucceeded, self._commandFailed,
                       callbackArgs=args, errbackArgs=args)
        d.addErrback(self._finishFailed)

    def _clockObject(self) -> Any:
        if self.clock is not None:
            return self.clock
        from twisted.internet import reactor

        return reactor

    def _startIdleTimer(self) -> None:
        """Schedule the next IDLE rescan, at most L{IDLE_POLL} seconds from now, in the
        same second as the other sessions idling on the same folder."""
        self._stopIdleTimer()
        clock = self._clockObject()
        period, _ = idleSchedule(self._keepalive())
        if self.mbox is not None:
            phase = hash(self.mbox.folder.path) % period
        else:
            phase = (id(self) >> 4) % period
        due = _IdlePoller.nextDue(clock.seconds(), phase, period)
        _idlePoller(clock).add(self, due)
        self._idleTimer = due

    def _keepalive(self) -> int:
        """Seconds between IDLE keepalives (C{imap.idle_keepalive}; 0 is off)."""
        return int(getattr(getattr(self.config, "imap", None), "idle_keepalive",
                           IDLE_KEEPALIVE))

    def _stopIdleTimer(self) -> None:
        if self._idleTimer is not None:
            _idlePoller(self._clockObject()).remove(self, self._idleTimer)
        self._idleTimer = None

    def _idleTick(self) -> None:
        self._idleTimer = None
        if self._idleTag is None or self._lost:
            return
        self._idlePolls += 1
        _, every = idleSchedule(self._keepalive())
        if every and self._idlePolls % every == 0:
            self.sendLine(b"* OK Still here")
        if self.mbox is not None:
            self._idleSync()
        if self._notifier is not None:
            self._notifier.poll()
        self._startIdleTimer()

    # -- selected ------------------------------------------------------------------
    @defer.inlineCallbacks
    def cmd_CLOSE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """CLOSE: expunge silently (read-write) and leave the selected state."""
        r.end()
        view = self.mbox
        if view is not None and view.readWrite:
            try:
                yield view.expungeDeleted()
            finally:
                self._closeMailbox()
            if self._mode.qresync:  # RFC 7162 3.2.10, as for EXPUNGE
                return b"[HIGHESTMODSEQ %d] Close completed" % max(
                    view.folder.modseqs.highest, 1)
        else:
            self._closeMailbox()
        return b"Close completed"

    def cmd_UNSELECT(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """UNSELECT: leave the selected state without expunging."""
        r.end()
        self._closeMailbox()
        return b"Unselect completed"

    @defer.inlineCallbacks
    def cmd_EXPUNGE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """EXPUNGE, or UID EXPUNGE set (UIDPLUS)."""
        uidSet = None
        if uid:
            r.sp()
            uidSet = r.seqset()
        r.end()
        view = self._view()
        if not view.readWrite:
            raise NoCommand("[READ-ONLY] Mailbox is read-only")
        before = list(view.uids)
        seqs = yield view.expungeDeleted(uidSet)
        if seqs:
            self._sendExpunges(before, seqs)
        if self._mode.qresync:  # RFC 7162 3.2.10: the HIGHESTMODSEQ after the expunge
            return b"[HIGHESTMODSEQ %d] Expunge completed" % max(view.folder.modseqs.highest, 1)
        return b"Expunge completed"

    def _sendExpunges(self, before: list[int], seqs: list[int]) -> None:
        """Report expunged messages: C{* n EXPUNGE} each, or one C{* VANISHED} of their
        UIDs once QRESYNC is on (C{before}: the view's UIDs before the removal)."""
        self.transport.write(b"".join(self.expunging([(s, before[s - 1]) for s in seqs])))
        if self._mode.qresync:
            lines = condstore.vanishedLines(condstore.uidsOfExpunges(before, seqs), False)
            self.transport.write(b"".join(line + b"\r\n" for line in lines))
        else:
            self.transport.write(b"".join(b"* %d EXPUNGE\r\n" % s for s in seqs))

    def _view(self) -> MailboxView:
        if self.mbox is None:
            raise BadCommand("no mailbox selected")
        return self.mbox

    def _savedResult(self, asUids: bool) -> SavedSet:
        """C{$} (SEARCHRES): the saved UIDs, or the sequence numbers of those still in
        the selected mailbox."""
        saved = self._searchResult
        if asUids or self.mbox is None:
            return SavedSet.of(saved)
        uids = self.mbox.uids
        seqs = []
        for u in saved:
            i = bisect.bisect_left(uids, u)
            if i < len(uids) and uids[i] == u:
                seqs.append(i + 1)
        return SavedSet.of(seqs)

    @defer.inlineCallbacks
    def cmd_SEARCH(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SEARCH / UID SEARCH with literals, CHARSET, every RFC 3501 key, WITHIN's
        OLDER/YOUNGER, ESEARCH's RETURN options and SEARCHRES's SAVE and C{$}."""
        r.sp()
        options = esearch.parseReturn(r)
        if options is None and IMAP4REV2 in self._enabled:
            options = esearch.ReturnOptions({b"ALL"})  # RFC 9051 6.4.4: ESEARCH answers
        saving = options is not None and b"SAVE" in options
        self._checkUpdateTag(tag, options is not None and b"UPDATE" in options)
        try:
            _charset, query = parseSearch(r)
            view = self._view()
            seqs = yield runSearch(view, query)
        except Exception:
            if saving:
                self._searchResult = ()  # a failed SAVE leaves $ empty (RFC 5182 2.1)
            raise
        if view is not self.mbox:
            return b"Search completed"
        uids = [view.uids[s - 1] for s in seqs]
        ids = uids if uid else seqs
        modseqTail = b""
        if condstore.queryUsesModseq(query):
            if not self._mode.condstore:
                self._enableCondstore()
            returned = condstore.returnedUids(options, uids)
            if returned:
                modseqOf = view.folder.modseqs.modseq
                modseqTail = b" (MODSEQ %d)" % max(modseqOf(u) for u in returned)
        if options is None:
            self.sendLine(b"* SEARCH" + b"".join(b" %d" % i for i in ids) + modseqTail)
            return b"Search completed"
        if saving:
            self._searchResult = esearch.toSave(options, uids)
        line = esearch.response(tag, uid, options, ids)
        if line is not None:
            if modseqTail:
                line += b" MODSEQ " + modseqTail[9:-1]  # RFC 7162 3.1.5, after the rest
            self.sendLine(line)
        if b"UPDATE" in options:
            if self._contexts is None:
                self._contexts = context.Contexts()
            if not self._contexts.add(tag, uid, query, uids):
                self.sendLine(b'* NO [NOUPDATE "' + tag + b'"] Too many updating searches')
        return b"Search completed"

    @defer.inlineCallbacks
    def cmd_SORT(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SORT / UID SORT (RFC 5256, with SORT=DISPLAY's keys): the search runs as for
        SEARCH, the sort is made in the mailbox's runner (L{sort.sortedRows});
        RETURN (UPDATE) keeps the sort up to date (CONTEXT=SORT, L{context})."""
        options, criteria, query = sort.parseSort(r)
        view = self._view()
        updating = options is not None and b"UPDATE" in options
        self._checkUpdateTag(tag, updating)
        seqs = yield runSearch(view, query)
        if view is not self.mbox:
            return b"Sort completed"
        uids, infos = view.uids, view.infos
        messages = [(s, uids[s - 1], infos[uids[s - 1]]) for s in seqs]
        rows = yield view.runner.run(sort.sortedRows, criteria, view.folder, view.cache,
                                     messages)
        if view is not self.mbox:
            return b"Sort completed"
        ids = [row[2] if uid else row[1] for row in rows]
        if options is None:
            self.sendLine(b"* SORT" + b"".join(b" %d" % i for i in ids))
            return b"Sort completed"
        self.sendLine(esearch.response(tag, uid, options, ids))  # ESORT
        if updating:  # CONTEXT=SORT (RFC 5267 4.3)
            if self._contexts is None:
                self._contexts = context.Contexts()
            if not self._contexts.addSort(tag, uid, query, criteria, rows):
                self.sendLine(b'* NO [NOUPDATE "' + tag + b'"] Too many updating searches')
        return b"Sort completed"

    def _checkUpdateTag(self, tag: bytes, updating: bool) -> None:
        """RFC 5267 4.3: an UPDATE under the tag of a kept search or sort is BAD."""
        if updating and self._contexts is not None and self._contexts.inUse(tag):
            raise BadCommand("Tag reuse")

    def _urlServer(self) -> tuple[str, tuple[str, ...]]:
        """The host name and mail domains a URL of this server names."""
        return (getattr(self.config, "hostname", "") or "",
                tuple(getattr(self.config, "domains", ()) or ()))

    def _authorisedURL(self, raw: bytes, utf8: bool) -> urlauth.AuthURL:
        """A CATENATE URL with URLAUTH (RFC 4467 section 5): parsed, with its token.

        @raise catenate.BadURL: malformed, another server's, or without a token."""
        hostname, domains = self._urlServer()
        try:
            url = urlauth.parse(raw, hostname, domains, utf8)
        except urlauth.URLError as e:
            raise catenate.BadURL(raw, str(e)) from None
        if url.mechanism is None:
            raise catenate.BadURL(raw, "URLAUTH URL without a token")
        return url

    def _fetchAuthorised(self, url: urlauth.AuthURL) -> bytes:
        """What a URLAUTH URL of a CATENATE names for this user (blocking: runs inside
        L{catenate.assemble}).

        @raise catenate.BadURL: not authorised, or it names nothing."""
        result = urlauth.fetch(self.account.store, url, None, self.account.address)
        if result is None:
            raise catenate.BadURL(url.raw, "URLAUTH URL not valid here")
        data: bytes = result[0][1]
        return data

    @defer.inlineCallbacks
    def cmd_GENURLAUTH(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """GENURLAUTH url mechanism ... (URLAUTH, RFC 4467 6.1): tokens for URLs of the
        user's own mailboxes (L{urlauth})."""
        hostname, domains = self._urlServer()
        urls = []
        for raw, mech in urlauth.parseGenurlauth(r):
            urlauth.checkMechanism(mech)
            try:
                url = urlauth.parse(raw, hostname, domains, r.utf8)
            except urlauth.URLError as e:
                raise catenate.BadURL(raw, str(e)) from None
            if url.mechanism is not None:
                raise catenate.BadURL(raw, "URL has a URLAUTH verifier already")
            if url.owner != canonical(self.account.address):
                raise catenate.BadURL(raw, "URL names another user's mailbox")
            urls.append(url)
        made = yield self.account._run(urlauth.generate, urls)
        self.sendLine(b"* GENURLAUTH " + b" ".join(serialiseString(u) for u in made))
        return b"Genurlauth completed"

    @defer.inlineCallbacks
    def cmd_URLFETCH(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """URLFETCH url / (url params) ... (RFC 4467 6.3, RFC 5524): what authorised
        URLs name, NIL for any other (L{urlauth.fetch})."""
        hostname, domains = self._urlServer()
        requests = []
        for raw, params in urlauth.parseUrlfetch(r):
            try:
                url: urlauth.AuthURL | None = urlauth.parse(raw, hostname, domains, r.utf8)
            except urlauth.URLError:
                url = None
            requests.append((raw, params, url))
        lines = yield self.account.runner.run(urlauth.fetchAll, self.account.store,
                                              requests, self.account.address)
        if not self._lost:
            self.transport.write(b"".join(lines))
        return b"Urlfetch completed"

    @defer.inlineCallbacks
    def cmd_RESETKEY(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """RESETKEY [mailbox [mechanism ...]] (RFC 4467 6.2): forget access keys."""
        name = None
        if not r.atEnd():
            name = self._mailboxArg(r)
            while not r.atEnd():
                r.sp()
                urlauth.checkMechanism(r.atom())
        r.end()
        yield self.account._run(urlauth.resetKeys, name)
        return b"Resetkey completed"

    def cmd_CANCELUPDATE(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """CANCELUPDATE "tag" *(SP "tag") (RFC 5267 4.3.5): end updating searches."""
        tags = []
        while not r.atEnd():
            r.sp()
            tags.append(r.quoted())
        if not tags:
            raise BadCommand("CANCELUPDATE needs a tag")
        unknown = self._contexts.cancel(tags) if self._contexts is not None else tags
        if unknown:
            raise NoCommand("Unknown search query update tag")
        return b"Updates cancelled"

    @defer.inlineCallbacks
    def cmd_THREAD(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """THREAD / UID THREAD (RFC 5256: ORDEREDSUBJECT, REFERENCES), threaded in the
        mailbox's runner (L{thread.threadMessages})."""
        algorithm, query = thread.parseThread(r)
        view = self._view()
        seqs = yield runSearch(view, query)
        if view is not self.mbox:
            return b"Thread completed"
        uids, infos = view.uids, view.infos
        messages = [(s, uids[s - 1], infos[uids[s - 1]]) for s in seqs]
        data = yield view.runner.run(thread.threadMessages, algorithm, view.folder,
                                     view.cache, messages, uid)
        if view is not self.mbox:
            return b"Thread completed"
        self.sendLine(b"* THREAD " + data if data else b"* THREAD")
        return b"Thread completed"

    @staticmethod
    def _checkSeqNumbers(view: MailboxView, seqset: SequenceSet, uid: bool) -> None:
        """Refuse a message sequence set naming a number beyond EXISTS (FETCH, STORE,
        COPY, MOVE; RFC 3501 section 9), as Dovecot does; UID sets are clipped instead.

        @raise BadCommand: C{Invalid messageset} (so also C{n:*} with n past the end,
            and any set at all in an empty mailbox).
        """
        if not uid and not isinstance(seqset, SavedSet) and view.seqNumbersOutOfRange(seqset):
            raise BadCommand("Invalid messageset")

    @defer.inlineCallbacks
    def cmd_STORE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """STORE set [(UNCHANGEDSINCE n)] [+-]FLAGS[.SILENT] (flags), with CONDSTORE's
        C{[MODIFIED]} for the messages changed since n (RFC 7162 3.1.3)."""
        r.sp()
        seqset = r.seqset()
        r.sp()
        unchangedSince = condstore.parseStoreModifier(r)
        item = r.word()
        m = _STORE_RE.match(item)
        if not m:
            raise BadCommand("expected FLAGS, +FLAGS or -FLAGS")
        r.sp()
        flags = r.flagsArgument()
        r.end()
        try:
            for f in flags:
                canonicalFlag(f)
        except ValueError as e:
            raise BadCommand(str(e)) from None
        mode = {b"+": 1, b"-": -1, b"": 0}[m.group(1)]
        silent = bool(m.group(2))
        view = self._view()
        self._checkSeqNumbers(view, seqset, uid)
        if not view.readWrite:
            raise NoCommand("[READ-ONLY] Mailbox is read-only")
        modified: list[int] = []
        if unchangedSince is not None:
            if not self._mode.condstore:
                self._enableCondstore()
            view.dirty = True
            yield self._reportUpdates(False)
            if view is not self.mbox:
                return b"Store completed"
        pairs = view.resolve(seqset, uid)
        if unchangedSince is not None:
            tooNew = set(view.folder.modseqs.changedSince([u for _, u in pairs],
                                                          unchangedSince))
            modified = [s if not uid else u for s, u in pairs if u in tooNew]
            pairs = [p for p in pairs if p[1] not in tooNew]
        before = {u: view.infos[u].flags for _, u in pairs if u in view.infos}
        touched = yield view.storeFlags(pairs, mode, flags)
        if view is self.mbox:
            # Keywords the client has not been told of, before a FETCH uses them: the
            # STORE's own, and another session's that the new flag sets carry.
            out = view.announceFlagsOf((u for _, u in touched), flags if mode >= 0 else ())
            if not silent and len(touched) < len(pairs):
                # Expunged by another session, not yet reported here: answered with the
                # flags the STORE would have given, as Dovecot does (RFC 2180 4.2.1),
                # so the client's view of the message stays whole until its EXPUNGE.
                out += self._ghostFlags(view, pairs, touched, before, mode, flags, uid)
            modseqOf = view.folder.modseqs.modseq if self._mode.condstore else None
            for seq, u in touched:
                changed = before.get(u) is not view.infos[u].flags
                if silent and not (modseqOf is not None and unchangedSince is not None
                                   and changed):
                    continue
                parts = []
                if uid:
                    parts.append(b"UID %d" % u)
                if not silent:
                    parts.append(b"FLAGS " + view.flagsBytes(u))
                if modseqOf is not None:
                    parts.append(b"MODSEQ (%d)" % modseqOf(u))
                out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
            if out:
                self.transport.write(b"".join(out))
        if modified:
            return b"[MODIFIED " + compressUids(sorted(modified)) + b"] Conditional store failed"
        return b"Store completed"

    @staticmethod
    def _ghostFlags(view: MailboxView, pairs: list[tuple[int, int]],
                    touched: list[tuple[int, int]], before: dict[int, frozenset[str]],
                    mode: int, flags: list[str], uid: bool) -> list[bytes]:
        """The C{* n FETCH (FLAGS ...)} lines of a STORE's messages that another session
        expunged meanwhile: their flags as the STORE would have left them."""
        wanted = frozenset(f for f in (canonicalFlag(x) for x in flags) if f is not None)
        done = {u for _, u in touched}
        out = []
        for seq, u in pairs:
            old = before.get(u)
            if u in done or old is None:
                continue
            new = changedFlags(old, mode, wanted)
            prefix = b"UID %d " % u if uid else b""
            out.append(b"* %d FETCH (%sFLAGS %s)\r\n" % (
                seq, prefix, flagListBytes(new, u in view.recent)))
        return out

    @defer.inlineCallbacks
    def _copy(self, r: Reader, uid: bool, move: bool) -> Any:
        r.sp()
        seqset = r.seqset()
        name = self._mailboxArg(r)
        r.end()
        view = self._view()
        self._checkSeqNumbers(view, seqset, uid)
        if move and not view.readWrite:
            raise NoCommand("[READ-ONLY] Mailbox is read-only")
        pairs = view.resolve(seqset, uid)
        uids = [u for _, u in pairs if u not in view.ghosts]
        if len(uids) < len(pairs) and not uid:
            # Part of the set is gone: copy none of it (RFC 9051 6.4.7), as Dovecot.
            raise NoCommand("[EXPUNGEISSUED] Some of the requested messages no longer exist")
        try:
            validity, mapping = yield self.account.copyTo(view, uids, name, move=move)
        except NoSuchFolder:
            raise NoCommand("[TRYCREATE] Mailbox does not exist") from None
        except MessageVanished:
            raise NoCommand("[EXPUNGEISSUED] Some messages were expunged") from None
        code = b""
        if mapping:
            code = b"[COPYUID %d %s %s] " % (
                validity, compressUids(s for s, _ in mapping), compressUids(d for _, d in mapping)
            )
        if not move:
            return code + b"Copy completed"
        if code:
            self.sendLine(b"* OK " + code + b"Moved")
        moved = [s for s, _ in mapping]
        infos = [view.infos[u] for u in moved if u in view.infos]
        folder = view.folder
        if infos:
            yield view.runner.run(folder.expunge, [i.key for i in infos])
            view.notifyOthers()
        before = list(view.uids)
        seqs = view.forget(moved)
        if seqs and view is self.mbox:
            self._sendExpunges(before, seqs)
        return b"Move completed"

    def cmd_COPY(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """COPY / UID COPY with COPYUID."""
        return self._copy(r, uid, move=False)

    def cmd_MOVE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """MOVE / UID MOVE (RFC 6851)."""
        return self._copy(r, uid, move=True)

    # -- FETCH ---------------------------------------------------------------------
    @defer.inlineCallbacks
    def cmd_FETCH(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """FETCH / UID FETCH."""
        r.sp()
        seqset = r.seqset()
        r.sp()
        attributes, modText = condstore.splitModifiers(r.rest())
        items = parseFetchAttributes(attributes)
        mods = condstore.parseFetchModifiers(modText) if modText is not None else None
        r.end()
        if mods is not None and mods.vanished and not (uid and self._mode.qresync):
            raise BadCommand("VANISHED needs UID FETCH and QRESYNC enabled")
        view = self._view()
        self._checkSeqNumbers(view, seqset, uid)
        if uid and not any(i.kind == "uid" for i in items):
            items.insert(0, FetchItem("uid", label=b"UID"))
        wantsModseq = mods is not None or any(i.kind == "modseq" for i in items)
        if wantsModseq:
            if not self._mode.condstore:
                self._enableCondstore()
            if not any(i.kind == "modseq" for i in items):
                items.append(FetchItem("modseq", label=b"MODSEQ"))
        if wantsModseq:
            # Flag changes not yet reported first (a rescan: another program may have
            # changed messages), so each MODSEQ sent goes with the flags it stands for.
            view.dirty = True
            yield self._reportUpdates(False)
            if view is not self.mbox:
                return b"Fetch completed"
        changed = (view.folder.modseqs.changedAfter(mods.changedSince)
                   if mods is not None else None)
        if changed is not None:
            pairs = condstore.changedPairs(view, seqset, uid, changed)
        else:
            pairs = view.resolve(seqset, uid)
        if mods is not None:
            if mods.vanished:
                lines = condstore.fetchVanished(view, seqset, mods.changedSince)
                self.transport.write(b"".join(line + b"\r\n" for line in lines))
        setSeen = view.readWrite and any(i.kind == "section" and not i.peek for i in items)
        simple = all(i.kind in ("uid", "flags", "size", "modseq") for i in items)
        missing = False
        self.setTimeout(None)
        # BINARY[] without PEEK sets \Seen as BODY[] does (RFC 3516 section 4.2).
        setSeen = setSeen or (view.readWrite and any(i.kind == "binary" and not i.peek
                                                     for i in items))
        try:
            if simple:
                missing = self._fetchSimple(view, pairs, items)
            else:
                missing = yield self._fetchBatches(view, pairs, items, setSeen)
                if missing is None:
                    return _DONE
        finally:
            self.setTimeout(self.POSTAUTH_TIMEOUT)
        if missing and not uid:
            # As Dovecot: what could be sent was, the rest left out, and OK (RFC 2180
            # 4.1.3); the EXPUNGE follows at the next command that may report it.
            return b"[EXPUNGEISSUED] Some messages were already expunged"
        return b"Fetch completed"

    def _fetchSimple(self, view: MailboxView, pairs: list[tuple[int, int]],
                     items: list[FetchItem]) -> bool:
        """UID, FLAGS and RFC822.SIZE only: everything is in the view, no disk work.

        A message another session expunged (not yet reported here) is answered from the
        view too, as Dovecot answers from its index, except when MODSEQ is asked for (the
        mod-sequence log has forgotten it): then it is left out, and the result is
        whether some message was.
        """
        out: list[bytes] = []
        ghosts, infos, recent = view.ghosts, view.infos, view.recent
        kinds = [it.kind for it in items]
        # One %-template per response: "* %d FETCH (UID %d FLAGS %s)\r\n".
        template = b"* %d FETCH (" + b" ".join(
            {"uid": b"UID %d", "flags": b"FLAGS %s", "size": b"RFC822.SIZE %d",
             "modseq": b"MODSEQ (%d)"}[k]
            for k in kinds) + b")\r\n"
        modseqOf = view.folder.modseqs.modseq if "modseq" in kinds else None
        uidFlags = kinds == ["uid", "flags"]
        skipped = False
        for seq, u in pairs:
            if u in ghosts and modseqOf is not None:
                skipped = True
                continue
            info = infos[u]
            if uidFlags:
                out.append(template % (seq, u, flagListBytes(info.flags, u in recent)))
                continue
            values: list[Any] = [seq]
            for kind in kinds:
                if kind == "uid":
                    values.append(u)
                elif kind == "flags":
                    values.append(flagListBytes(info.flags, u in recent))
                elif kind == "modseq":
                    assert modseqOf is not None
                    values.append(modseqOf(u))
                else:
                    values.append(info.size)
            out.append(template % tuple(values))
            if len(out) >= 4096:
                self.transport.write(b"".join(out))
                out = []
        if out:
            self.transport.write(b"".join(out))
        return skipped

    @defer.inlineCallbacks
    def _fetchBatches(self, view: MailboxView, pairs: list[tuple[int, int]],
                      items: list[FetchItem], setSeen: bool) -> Any:
        """Send the FETCH responses of C{pairs}, FETCH_BATCH messages at a time.

        Per batch: one STORE of \\Seen for the messages that lack it (non-PEEK sections),
        then the responses are rendered from the structure cache in the reactor thread
        when everything is cached, else in one disk-runner call, and written in large
        chunks (bodies over INLINE_SECTION streamed) under transport back-pressure.

        Fires with whether some message was missing (expunged), or None when the
        connection or the selected mailbox went away.
        """
        plan = FetchPlan(items)
        hasFlags = any(i.kind == "flags" for i in items)
        folder, cache, runner = view.folder, view.cache, view.runner
        pusher = _Pusher()
        self.transport.registerProducer(pusher, True)
        missing = False
        try:
            # Without \Seen to store first, the whole set is one step, so reading ahead
            # (below) overlaps every run of responses with the sending of the previous.
            step = FETCH_BATCH if setSeen else max(1, len(pairs))
            for start in range(0, len(pairs), step):
                if self._lost or view is not self.mbox:
                    return None
                batch = [p for p in pairs[start : start + step]
                         if p[1] not in view.ghosts]
                if len(batch) < min(step, len(pairs) - start):
                    missing = True
                seen: set[int] = set()
                if setSeen:
                    unseen = [p for p in batch if "\\Seen" not in view.infos[p[1]].flags]
                    if unseen:
                        touched = yield view.storeFlags(unseen, 1, ["\\Seen"])
                        if self._lost or view is not self.mbox:
                            return None
                        seen = {u for _, u in touched}
                        # The new flag sets may carry another session's new keyword.
                        announce = view.announceFlagsOf(seen)
                        if announce:
                            self.transport.write(b"".join(announce))
                        if len(seen) < len(unseen):
                            missing = True
                            gone = {u for _, u in unseen} - seen
                            batch = [p for p in batch if p[1] not in gone]
                work = [(seq, u, view.infos[u],
                         view.flagsBytes(u) if hasFlags or u in seen else None)
                        for seq, u in batch]
                ahead: defer.Deferred[Rendered] | None = None
                pos = 0
                while pos < len(work):
                    if ahead is not None:
                        done, ahead = (yield ahead), None
                        fromDisk = True
                    else:
                        run = work[pos : pos + RENDER_LIMIT]
                        done = plan.render(folder, cache, run, True)
                        fromDisk = done.consumed == 0
                        if fromDisk:
                            done = yield runner.run(plan.render, folder, cache, run, False)
                    pos += done.consumed
                    if done.vanished:
                        missing = True
                        view.dirty = True
                        for u in done.vanished:
                            view.addGhost(u)
                    if pos < len(work) and fromDisk:
                        # Read the next run while this one is sent: disk and socket overlap.
                        ahead = runner.run(plan.render, folder, cache,
                                           work[pos : pos + RENDER_LIMIT], False)
                    ok = yield self._sendSegments(runner, done, pusher)
                    if ok and view is not self.mbox:
                        ok = False  # the mailbox was closed or another one selected
                    if not ok:
                        if ahead is not None:
                            ahead.addCallbacks(lambda r: _closeRendered(runner, r),
                                               lambda _: None)
                        return None
        finally:
            if not self._lost:
                self.transport.unregisterProducer()
        return missing

    @defer.inlineCallbacks
    def _sendSegments(self, runner: Any, done: Rendered, pusher: _Pusher) -> Any:
        """Write rendered responses (streaming file ranges); False when the connection
        went away. Closes the files of the stream ranges."""
        try:
            for seg in done.segments:
                if self._lost or pusher.stopped:
                    return False
                if isinstance(seg, bytes):
                    if seg:
                        self.transport.write(seg)
                else:
                    f, a, b = seg
                    ok = yield self._stream(runner, f, a, b, pusher)
                    if not ok:
                        return False
                yield pusher.wait()
        finally:
            for f in done.files:
                runner.run(f.close).addErrback(lambda _: None)
        return not self._lost

    @defer.inlineCallbacks
    def _stream(self, runner: Any, f: Any, start: int, end: int, pusher: _Pusher) -> Any:
        """Send bytes C{start..end} of C{f} (a literal's content, its length already
        written) through L{pymaild.sendbody}: sendfile on a plain TCP connection, reads
        of 256 KB in the runner through TLS or COMPRESS. The sender is the transport's
        producer meanwhile; the command's pusher is registered again afterwards."""
        yield pusher.wait()
        if self._lost or pusher.stopped:
            return False
        self.transport.unregisterProducer()
        try:
            ok = yield sendRanges(self.transport, f, [(start, end)], runner, prefetch=True)
        finally:
            if not self._lost:
                self.transport.registerProducer(pusher, True)
        return bool(ok) and not self._lost


def _closeRendered(runner: Any, done: Rendered) -> None:
    """Close the files of rendered responses that will not be sent."""
    for f in done.files:
        runner.run(f.close).addErrback(lambda _: None)


SPECIAL_USES = ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")
"""The special uses CREATE can give (\\All and \\Flagged name virtual mailboxes, which
the store does not have)."""


def specialUseParameter(r: Reader) -> str | None:
    """CREATE's C{(USE (attributes))} parameter: the one attribute, or None for none.

    @raise BadCommand: malformed, or another parameter.
    @raise NoCommand: C{[USEATTR]}: an attribute the store cannot give, or several.
    """
    r.openParen()
    r.expect(b"USE")
    r.sp()
    r.openParen()
    uses: list[str] = []
    while r.peek() != 0x29:
        if uses:
            r.sp()
        if r.peek() != 0x5C:
            raise BadCommand("expected a special-use attribute")
        uses.append(r.flag())
    r.closeParen()
    r.closeParen()
    if not uses:
        return None
    known = {u.lower(): u for u in SPECIAL_USES}
    if len(uses) > 1:
        raise NoCommand("[USEATTR] A mailbox can have only one special use here")
    use = known.get(uses[0].lower())
    if use is None:
        raise NoCommand("[USEATTR] Special use not supported: " + _oneLine(uses[0]).decode())
    return use


def _decodePattern(raw: bytes, utf8: bool = False) -> str:
    if utf8:
        return decodeUTF8Name(raw)
    import twisted.mail.imap4  # noqa: F401  (registers the imap4-utf-7 codec)

    try:
        return raw.decode("imap4-utf-7")
    except (UnicodeDecodeError, ValueError):
        # Not modified UTF-7: no mailbox name can match it (Dovecot answers OK with no
        # match; imaptest's atoms). A NUL, which no name holds, makes sure none does.
        return "\x00" + raw.decode("latin-1")


def _oneLine(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")[:300]


class IMAPFactory(ServerFactory):
    """Builds an L{IMAPServer} per connection.

    Optional: C{spoolRunner} (a runner for literal spooling before login; the account's
    runner is used after it), C{userIPLimits} (a L{pymaild.limits.UserIPLimits}: a
    login beyond the per user/IP cap gets C{NO [LIMIT]}) and C{metrics} (a
    L{pymaild.metrics.Metrics} given every command's time to its tagged answer).
    """

    protocol = IMAPServer

    def __init__(
        self,
        config: Any,
        gate: Any,
        tlsContext: Any = None,
        implicitTLS: bool = False,
        clock: Any = None,
        spoolRunner: Any = None,
        userIPLimits: Any = None,
        metrics: Any = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.userIPLimits = userIPLimits
        self.gate = gate
        self.tlsContext = tlsContext
        self.implicitTLS = implicitTLS
        self.clock = clock
        self.spoolRunner = spoolRunner
        self.failures = FailureLog(clock, log)

    def buildProtocol(self, addr: Any) -> IMAPServer:
        """A new protocol for one connection."""
        p = IMAPServer(
            self.config, self.gate, self.tlsContext, self.implicitTLS, self.clock,
            self.spoolRunner, self.userIPLimits,
        )
        p.factory = self
        return p
