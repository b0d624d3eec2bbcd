"""The IMAP4rev1 and IMAP4rev2 server protocol and its factory.

L{IMAPServer} is the connection and its state; the command families are mixins in their
own modules: L{pymaild.imap.framing} (input framing and literals),
L{pymaild.imap.dispatch} (the command table, the tagged answer), L{pymaild.imap.session}
(capabilities, login, ENABLE, COMPRESS), L{pymaild.imap.mailboxes} (mailbox management
and APPEND), L{pymaild.imap.selected} (the selected state but FETCH),
L{pymaild.imap.fetchcmd} (FETCH) and L{pymaild.imap.idle} (IDLE, NOTIFY, unsolicited
updates).

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

import types
from typing import Any

from twisted.internet import defer, interfaces
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure

from pymaild.auth.policy import cleartextAllowed, isSecure
from pymaild.imap import condstore, context, notifyset
from pymaild.imap.compress import Inflater
from pymaild.imap.dispatch import DispatchMixin
from pymaild.imap.fetchcmd import FetchMixin
from pymaild.imap.framing import FramingMixin, _LiteralSink
from pymaild.imap.idle import IdleMixin, IdlePoller
from pymaild.imap.mailbox import MailboxView
from pymaild.imap.mailboxes import MailboxesMixin
from pymaild.imap.selected import SelectedMixin
from pymaild.imap.session import SessionMixin
from pymaild.imap.syntax import Literal
from pymaild.limits import FailureLog
from pymaild.wire import setNoDelay

log = Logger()

_NO_CHALLENGERS: Any = types.MappingProxyType({})


class IMAPServer(SessionMixin, MailboxesMixin, SelectedMixin, FetchMixin, IdleMixin,
                 DispatchMixin, FramingMixin, imap4.IMAP4Server):
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
        "idlePoller",
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
        idlePoller: IdlePoller | None = None,
    ) -> None:
        imap4.IMAP4Server.__init__(self, chal=_NO_CHALLENGERS, contextFactory=tlsContext)
        self.userIPLimits = userIPLimits
        self._userIPKey: tuple[str, str] | None = None
        self.config = config
        self.gate = gate
        self.implicitTLS = implicitTLS
        self.clock = clock
        self.spoolRunner = spoolRunner
        # The factory's timer for its IDLE sessions (a session built alone has its own).
        self.idlePoller = idlePoller if idlePoller is not None else IdlePoller(clock)
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

class IMAPFactory(ServerFactory):
    """Builds an L{IMAPServer} per connection.

    Optional: C{spoolRunner} (a runner for literal spooling before login; the account's
    runner is used after it), C{userIPLimits} (a L{pymaild.limits.UserIPLimits}: a
    login beyond the per user/IP cap gets C{NO [LIMIT]}) and C{metrics} (a
    L{pymaild.metrics.Metrics} given every command's time to its tagged answer).
    Its sessions share one L{IdlePoller} (C{idlePoller}: built here over C{clock}, or
    given, to share one between listeners).
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
        idlePoller: IdlePoller | None = None,
    ) -> None:
        self.config = config
        self.idlePoller = idlePoller if idlePoller is not None else IdlePoller(clock)
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
            self.spoolRunner, self.userIPLimits, self.idlePoller,
        )
        p.factory = self
        return p
