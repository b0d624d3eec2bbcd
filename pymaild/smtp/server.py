"""The ESMTP server: inbound mail (MX role, port 25) and submission (587, 465).

L{SMTPServer} subclasses Twisted's C{ESMTP} and replaces what the audit
(``research/twisted-traps.md`` section 3) found wanting:

- Framing is its own: only CRLF ends a line and only CRLF.CRLF ends DATA. Bare CR or
  LF inside DATA fails the message (C{550 5.6.0}) without leaving DATA mode; an
  over-long line inside DATA is swallowed and the message fails (C{500 5.5.2}) at the
  final dot, so a long line can never put the session back into command mode
  (smuggling). Over-long command lines get C{500 5.5.2} and the session stays in step.
- PIPELINING is real: while a reply waits on a Deferred (a directory lookup, AUTH, the
  fsync of a message) later commands wait in the buffer, so replies come in order. The
  replies to the commands of one read go out in one write.
- Replies are sent at once: on a plain TCP connection with nothing queued, a reply goes
  straight to the socket (L{pymaild.smtp.fastreply}) instead of waiting for the reactor's next pass;
  TLS, queued output and short writes fall back to C{transport.write}.
- Every 2xx/4xx/5xx reply carries an RFC 3463 enhanced status code (RFC 2034 exempts
  the greeting and the HELO/EHLO replies, and 3xx replies have none).
- EHLO offers PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8, STARTTLS (until
  TLS is on) and AUTH PLAIN LOGIN (only where L{cleartextAllowed}). No CHUNKING, DSN or
  CRAM-MD5.
- STARTTLS goes through L{TLSGuardMixin}: plaintext pipelined behind it is dropped and
  the session returns to its just-greeted state (EHLO, AUTH and MAIL forgotten).
- XCLIENT (Postfix's, as nginx's mail proxy sends it) only from C{cluster.trusted_proxies}:
  the session restarts as from the named client (and user, with C{LOGIN}).
- AUTH logs in through L{pymaild.auth.penalty.AuthGate} (per-IP penalty); malformed
  AUTH gets C{501 5.5.2}; AUTH payloads and passwords are never logged.
- Error flood tarpit (Postfix's C{smtpd_soft_error_limit}, C{smtpd_error_sleep_time} and
  C{smtpd_hard_error_limit}): an error is a 4xx/5xx reply to a command (not C{421}, and
  not C{452 4.5.3} for recipients past the limit, which the client is to send again).
  After C{softErrorLimit} (10) errors each further error reply is held back
  C{errorSleepTime} (1 s, on the factory's clock; never a sleep), and the commands
  pipelined behind it wait; at C{maxErrors} (20) errors the last error reply is
  followed by C{421 4.7.0} and the connection closes.
  Idle clients get C{421 4.4.2}: 30 s before HELO/EHLO, 5 minutes per command after.

The protocol is assembled from parts, each in its own module: the framing and the
wait for pending replies (L{pymaild.smtp.framing}), the reply writer with enhanced codes
and the tarpit (L{pymaild.smtp.replies}, over L{pymaild.smtp.fastreply}), AUTH and
XCLIENT (L{pymaild.smtp.login}), and MAIL, RCPT and DATA over the session's
L{pymaild.smtp.transaction.Transaction} (L{pymaild.smtp.spool}). This module holds the
connection's life, command dispatch, HELO/EHLO and the small commands, STARTTLS, and the
factory.

The roles differ only in policy: on C{"submission"} MAIL needs AUTH (C{530 5.7.0}); on
C{"mx"} anonymous clients may send to local recipients and authenticated ones may relay.
Mail policy (recipients, senders, delivery) lives in L{pymaild.smtp.delivery}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime, ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from pymaild.address import domainToASCII
from pymaild.auth.policy import cleartextAllowed
from pymaild.limits import parseNetworks
from pymaild.smtp.delivery import SessionInfo
from pymaild.smtp.fastreply import plainTCP, sendNow
from pymaild.smtp.framing import (
    AUTH,
    COMMAND,
    MAX_AUTH_LINE,
    MAX_COMMAND_LINE,
    TOO_LONG,
    FramingMixin,
)
from pymaild.smtp.login import LoginMixin
from pymaild.smtp.replies import DelayedCall, RepliesMixin, enhance
from pymaild.smtp.spool import TransactionMixin
from pymaild.smtp.transaction import Transaction
from pymaild.wire import TLSGuardMixin

log = Logger()


class _ESMTPCore(FramingMixin, RepliesMixin, LoginMixin, TransactionMixin, smtp.ESMTP):
    """The protocol logic; L{SMTPServer} puts L{TLSGuardMixin} in front of it."""

    role = "mx"
    greetingText = b"ESMTP pymaild"
    implicitTLS = False
    maxErrors = 20
    softErrorLimit = 10
    errorSleepTime = 1.0
    greetingTimeout = 30.0
    commandTimeout = 300.0
    maxMessageSize = 26214400
    maxRecipients = 100
    cleartextPolicy = "tls-or-loopback"
    hostname = "localhost"
    #: Replies may go straight to the socket (L{pymaild.smtp.fastreply}).
    fastReplies = True
    gate: Any = None
    trustedProxies: tuple[Any, ...] = ()
    _tlsDiscarding = False

    if TYPE_CHECKING:
        def startTLSGuarded(self, contextFactory: Any) -> None:
            """L{pymaild.wire.TLSGuardMixin.startTLSGuarded} (L{SMTPServer} has it)."""

    def __init__(self, chal: Any = None, contextFactory: Any = None) -> None:
        smtp.ESMTP.__init__(self, {}, contextFactory)
        self.mode = COMMAND
        self._buffer = b""
        self._pos = 0
        self._skipping = False
        self._blocked = False
        self._processing = False
        self._inDataReceived = False
        self._pausedByUs = False
        self._closing = False
        self._errors = 0
        self._pending: defer.Deferred[Any] | None = None
        self._held: list[bytes] | None = None
        self._tarpitCall: DelayedCall | None = None
        self._startedTLS = False
        self._esmtp = False
        self._heloName: bytes | None = None
        #: The mail transaction, from an accepted MAIL to the end of DATA (or RSET).
        self.txn: Transaction | None = None
        self._authMech: bytes | None = None
        self._authUser: bytes | None = None
        self.authenticatedAs: str | None = None
        self._proxyPeer = ""
        self.session = SessionInfo()
        self._tcp: Any = None
        self._replies: list[bytes] | None = None

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Greet the client and start the short pre-HELO timer."""
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        self.session = SessionInfo(
            role=self.role,
            hostname=self.hostname,
            peerHost=host if isinstance(host, str) else "unix",
        )
        self._helo = (None, self.session.peerHost.encode())
        self._proxyPeer = self.session.peerHost
        self._tcp = plainTCP(self.transport) if self.fastReplies else None
        self.canStartTLS = (
            self.ctx is not None
            and not self.implicitTLS
            and ITLSTransport.providedBy(self.transport)
        )
        self._send(220, [self.hostname.encode() + b" " + self.greetingText], enhanced=False)
        self.setTimeout(self.greetingTimeout)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Discard an unfinished message, cancel pending work and the tarpit, log out."""
        self._closing = True
        call, self._tarpitCall = self._tarpitCall, None
        self._held = None
        if call is not None and call.active():
            call.cancel()
        self._dropTransaction()
        if self._pending is not None and self.mode == AUTH:
            self._pending.cancel()
        self._logout()
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        """Too long without a command: say so and close.

        While our own reply is pending (a slow disk, the AUTH penalty) the client is
        not idle: the timer just starts again.
        """
        if self._blocked:
            self.setTimeout(self._timeoutPeriod())
            return
        self._dropTransaction()
        self.mode = COMMAND
        self._send(421, [b"4.4.2 " + self.hostname.encode("utf-8") + b" Error: timeout exceeded"])
        self._close()

    def sessionIdle(self) -> bool:
        """Whether the session is between transactions with nothing pending (the
        server may close it when stopping)."""
        return (self.mode == COMMAND and self.txn is None and not self._blocked
                and not self._closing)

    def goodbye(self) -> None:
        """The server is stopping: say so and close (an unfinished transaction is
        dropped, so the client sends it again later)."""
        if self._closing:
            return
        self._dropTransaction()
        self.mode = COMMAND
        self._send(421, [b"4.3.2 " + self.hostname.encode("utf-8")
                         + b" Server shutting down, try again later"])
        self._close()

    def _close(self) -> None:
        """Close the connection once the replies are written (held ones too: then
        L{_tarpitDone} closes it)."""
        self._closing = True
        self._flushReplies()
        if self._held is None:
            self.transport.loseConnection()

    def _timeoutPeriod(self) -> float:
        """The idle timeout for the current state."""
        return self.commandTimeout if self._heloName is not None else self.greetingTimeout

    # -- dispatch -----------------------------------------------------------------------

    def _commandLine(self, line: Any) -> None:
        """Parse and run one command line."""
        if line is TOO_LONG:
            self.reply(500, "5.5.2 Error: line too long")
            return
        line = line.strip(b" \t")
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        limit = MAX_AUTH_LINE if verb == b"AUTH" else MAX_COMMAND_LINE
        if len(line) > limit:
            self.reply(500, "5.5.2 Error: line too long")
            return
        if not verb:
            self.sendSyntaxError()
            return
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            self.reply(500, "5.5.2 Error: bare CR, LF or NUL in command")
            return
        handler = self._COMMANDS.get(verb)
        if handler is None:
            self.reply(500, "5.5.2 Error: command not recognized")
            return
        handler(self, arg.strip(b" \t"))

    # -- session commands ---------------------------------------------------------------

    def smtp_HELO(self, arg: bytes) -> None:
        """HELO: old-style greeting, no extensions."""
        self._greet(arg, esmtp=False)

    def smtp_EHLO(self, arg: bytes) -> None:
        """EHLO: greeting plus the list of extensions."""
        self._greet(arg, esmtp=True)

    def _greet(self, arg: bytes, esmtp: bool) -> None:
        """Shared HELO/EHLO handling: reset the transaction and answer."""
        if not arg:
            verb = "EHLO" if esmtp else "HELO"
            self.reply(501, f"5.5.4 Syntax: {verb} hostname")
            return
        self._dropTransaction()
        self._heloName = arg
        self._esmtp = esmtp
        self._helo = (arg, self.session.peerHost.encode())
        self.session.helo = arg.decode("utf-8", "replace")
        self.session.esmtp = esmtp
        self.setTimeout(self.commandTimeout)
        lines = [self.hostname.encode("utf-8")]
        if esmtp:
            lines += self.extensionLines()
        self._send(250, lines, enhanced=False)

    def tlsActive(self) -> bool:
        """Whether the connection is encrypted (implicit TLS or after STARTTLS)."""
        return self.implicitTLS or self._startedTLS or ISSLTransport.providedBy(self.transport)

    def authAllowed(self) -> bool:
        """Whether AUTH PLAIN/LOGIN may be used on this connection now."""
        if self.gate is None:
            return False
        return cleartextAllowed(self.cleartextPolicy, self.transport)

    def extensionLines(self) -> list[bytes]:
        """The EHLO keywords offered right now."""
        ext = [
            b"PIPELINING",
            b"SIZE %d" % self.maxMessageSize,
            b"8BITMIME",
            b"ENHANCEDSTATUSCODES",
            b"SMTPUTF8",
        ]
        if self.canStartTLS and not self.tlsActive():
            ext.append(b"STARTTLS")
        if self.authAllowed():
            ext.append(b"AUTH PLAIN LOGIN")
        if self._fromProxy():
            ext.append(b"XCLIENT ADDR LOGIN NAME HELO PROTO")
        return ext

    def extensions(self) -> dict[bytes, Any]:
        """Twisted's view of the extensions (keyword → parameters)."""
        result: dict[bytes, Any] = {}
        for line in self.extensionLines():
            key, _, params = line.partition(b" ")
            result[key] = params.split() if params else None
        return result

    def smtp_NOOP(self, arg: bytes) -> None:
        """NOOP."""
        self.reply(250, "2.0.0 Ok")

    def smtp_RSET(self, arg: bytes) -> None:
        """RSET: forget the transaction (not the login)."""
        if arg:
            self.reply(501, "5.5.4 Syntax: RSET")
            return
        self._dropTransaction()
        self.reply(250, "2.0.0 Reset state")

    def smtp_QUIT(self, arg: bytes) -> None:
        """QUIT."""
        self.reply(221, "2.0.0 Bye")
        self._close()

    def smtp_VRFY(self, arg: bytes) -> None:
        """VRFY reveals nothing (RFC 5321 section 3.5.3)."""
        if not arg:
            self.reply(501, "5.5.4 Syntax: VRFY address")
            return
        self.reply(252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_EXPN(self, arg: bytes) -> None:
        """EXPN is not offered."""
        self.reply(502, "5.5.1 EXPN not supported")

    def smtp_HELP(self, arg: bytes) -> None:
        """HELP."""
        self.reply(214, "2.0.0 See RFC 5321 (pymaild)")

    def smtp_BDAT(self, arg: bytes) -> None:
        """BDAT: CHUNKING is not offered."""
        self.reply(502, "5.5.1 CHUNKING not supported")

    # -- STARTTLS -----------------------------------------------------------------------

    def smtp_STARTTLS(self, arg: bytes) -> None:
        """Start TLS; the session goes back to the just-greeted state."""
        if arg:
            self.reply(501, "5.5.4 Syntax: STARTTLS")
            return
        if self.tlsActive():
            self.reply(503, "5.5.1 TLS already active")
            return
        if not self.canStartTLS:
            self.reply(454, "4.7.0 TLS not available")
            return
        self.reply(220, "2.0.0 Ready to start TLS")
        self._resetSession()
        self._startedTLS = True
        self._flushReplies()
        self.startTLSGuarded(self.ctx)
        self.setTimeout(self.greetingTimeout)

    def _resetSession(self) -> None:
        """Forget HELO, AUTH and the transaction (after STARTTLS)."""
        self._dropTransaction()
        self._logout()
        self._heloName = None
        self._esmtp = False
        self.authenticated = False
        self.authenticatedAs = None
        self.session.user = None
        self.session.helo = ""
        self.session.esmtp = False
        self._helo = (None, self.session.peerHost.encode())

    def _tlsDescription(self) -> str | None:
        """C{"<version> with cipher <name>"} for the Received header, if known."""
        if not self.tlsActive():
            return None
        try:
            conn = self.transport.getHandle()
            version = conn.get_protocol_version_name()
            cipher = conn.get_cipher_name()
        except Exception:
            return "TLS"
        if not version or not cipher:
            return "TLS"
        return f"{version} with cipher {cipher}"

    _COMMANDS: dict[bytes, Callable[[Any, bytes], None]] = {}


_ESMTPCore._COMMANDS = {
    name[5:].encode(): getattr(_ESMTPCore, name)
    for name in dir(_ESMTPCore)
    if name.startswith("smtp_")
}


class SMTPServer(TLSGuardMixin, _ESMTPCore):
    """pymaild's ESMTP server protocol (MX or submission, see L{SMTPFactory}).

    L{TLSGuardMixin} comes first so that its C{dataReceived}/C{lineReceived} wrap the
    core's and drop plaintext pipelined behind STARTTLS.
    """

    def startTLSGuarded(self, contextFactory: Any) -> None:
        """Start TLS through the guard, then drop the core's buffered plaintext."""
        super().startTLSGuarded(contextFactory)
        self._afterStartTLS()


class SMTPFactory(smtp.SMTPFactory):
    """Builds L{SMTPServer} protocols for one listener.

    @param config: the server's L{pymaild.config.Config}.
    @param gate: the L{pymaild.auth.penalty.AuthGate} AUTH logs in through.
    @param portal: the portal used for anonymous (unauthenticated) sessions.
    @param tlsContext: the TLS context factory for STARTTLS (None: no STARTTLS).
    @param role: C{"mx"} (port 25) or C{"submission"} (587/465).
    @param implicitTLS: the listener is wrapped in TLS (port 465): no STARTTLS, and
        the connection counts as encrypted.
    @param clock: the reactor clock for timeouts and the error tarpit.
    @param greetingTimeout: seconds a client may take before HELO/EHLO.
    @param commandTimeout: seconds a client may take per command after HELO/EHLO.
    @param maxErrors: the hard error limit: at this many errors C{421 4.7.0} and close
        (Postfix C{smtpd_hard_error_limit}, 20).
    @param softErrorLimit: after this many errors each further error reply is delayed
        (Postfix C{smtpd_soft_error_limit}, 10).
    @param errorSleepTime: that delay in seconds; 0 turns the tarpit off (Postfix
        C{smtpd_error_sleep_time}, 1 s).
    """

    protocol = SMTPServer
    #: Whether sessions may write replies straight to the socket
    #: (L{pymaild.smtp.fastreply}; the bench turns it off to measure what it pays).
    fastReplies = True
    roles: tuple[str, ...] = ("mx", "submission")

    def __init__(
        self,
        config: Any,
        gate: Any,
        portal: Any,
        tlsContext: Any = None,
        role: str = "mx",
        implicitTLS: bool = False,
        clock: IReactorTime | None = None,
        *,
        greetingTimeout: float = 30.0,
        commandTimeout: float = 300.0,
        maxErrors: int = 20,
        softErrorLimit: int = 10,
        errorSleepTime: float = 1.0,
    ) -> None:
        if role not in self.roles:
            raise ValueError(f"unknown SMTP role {role!r} (expected one of {self.roles})")
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        super().__init__(portal)
        self.config = config
        self.gate = gate
        self.tlsContext = tlsContext
        self.role = role
        self.implicitTLS = implicitTLS
        self.clock = clock
        self.greetingTimeout = greetingTimeout
        self.commandTimeout = commandTimeout
        self.maxErrors = maxErrors
        self.softErrorLimit = softErrorLimit
        self.errorSleepTime = errorSleepTime
        self.hostname = config.hostname
        cluster = getattr(config, "cluster", None)
        self.trustedProxies = parseNetworks(getattr(cluster, "trusted_proxies", ()))
        self.domain = domainToASCII(config.hostname).encode("ascii") if config.hostname \
            else b"localhost"

    def buildProtocol(self, addr: Any) -> SMTPServer:
        """A protocol configured for this listener."""
        p = self.protocol(None, None if self.implicitTLS else self.tlsContext)
        p.factory = self
        p.portal = self.portal
        p.gate = self.gate
        p.host = self.domain
        p.hostname = self.hostname
        p.role = self.role
        p.implicitTLS = self.implicitTLS
        p.maxErrors = self.maxErrors
        p.softErrorLimit = self.softErrorLimit
        p.errorSleepTime = self.errorSleepTime
        p.greetingTimeout = self.greetingTimeout
        p.commandTimeout = self.commandTimeout
        p.maxMessageSize = self.config.smtp.max_message_size
        p.maxRecipients = self.config.smtp.max_recipients
        p.cleartextPolicy = self.config.auth.cleartext
        p.fastReplies = self.fastReplies
        p.trustedProxies = self.trustedProxies
        p.callLater = self.clock.callLater  # type: ignore[method-assign,assignment]
        return p


__all__ = ["SMTPFactory", "SMTPServer", "enhance", "plainTCP", "sendNow"]
