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
  straight to the socket (L{sendNow}) instead of waiting for the reactor's next pass;
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

The roles differ only in policy: on C{"submission"} MAIL needs AUTH (C{530 5.7.0}); on
C{"mx"} anonymous clients may send to local recipients and authenticated ones may relay.
Mail policy (recipients, senders, delivery) lives in L{pymaild.smtp.delivery}.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, protocol, tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from pymaild.address import (
    Path,
    PathRefused,
    PathSyntaxError,
    canonical,
    domainToASCII,
    parseParameters,
    parsePath,
)
from pymaild.auth.policy import cleartextAllowed
from pymaild.errors import AddressError, StoreFull
from pymaild.limits import inNetworks, parseIP, parseNetworks
from pymaild.smtp.delivery import SessionInfo, SMTPReply
from pymaild.smtp.transaction import Recipient, Transaction
from pymaild.wire import TLSGuardMixin

log = Logger()

COMMAND = "COMMAND"
DATA = "DATA"
AUTH = "AUTH"

#: The longest command line accepted (RFC 5321 says 512; extensions need more).
MAX_COMMAND_LINE = 4096
#: The longest AUTH command or response line (RFC 4954 section 4: 12288 octets).
MAX_AUTH_LINE = 12288
#: The longest line inside DATA; longer lines fail the message.
MAX_DATA_LINE = 16384
#: Buffered input beyond which the transport is paused while a reply is pending.
MAX_BUFFERED = 1 << 20

_ENHANCED = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3}( |$)")

#: The enhanced status code for replies that did not choose one.
DEFAULT_ENHANCED = {
    211: b"2.0.0", 214: b"2.0.0", 220: b"2.0.0", 221: b"2.0.0", 235: b"2.7.0",
    250: b"2.0.0", 251: b"2.1.5", 252: b"2.5.2",
    421: b"4.3.0", 450: b"4.2.0", 451: b"4.3.0", 452: b"4.3.1", 454: b"4.7.0",
    500: b"5.5.2", 501: b"5.5.4", 502: b"5.5.1", 503: b"5.5.1", 504: b"5.5.4",
    530: b"5.7.0", 534: b"5.7.9", 535: b"5.7.8", 538: b"5.7.11", 550: b"5.0.0",
    551: b"5.1.6", 552: b"5.3.4", 553: b"5.1.3", 554: b"5.0.0", 555: b"5.5.4",
}

_LOGIN_USER = base64.b64encode(b"Username:")
_LOGIN_PASS = base64.b64encode(b"Password:")


class _TooLong:
    """The marker the framing hands on in place of an over-long line."""

    def __repr__(self) -> str:
        return "<line too long>"


TOO_LONG: Any = _TooLong()


def enhance(code: int, text: bytes) -> bytes:
    """C{text} with an enhanced status code in front unless it has one (2xx/4xx/5xx)."""
    if code // 100 not in (2, 4, 5) or _ENHANCED.match(text):
        return text
    default = DEFAULT_ENHANCED.get(code, b"%d.0.0" % (code // 100))
    return default + (b" " + text if text else b"")


#: The Twisted TCP transport attributes L{sendNow} relies on.
_TCP_ATTRS = ("TLS", "connected", "disconnecting", "_writeDisconnected", "_tempDataBuffer",
              "dataBuffer", "offset", "socket")


def plainTCP(transport: Any) -> Any:
    """The Twisted TCP connection under C{transport} when replies may bypass its queue.

    Relaying wrappers (L{ProtocolWrapper}s that keep its C{write}, like the connection
    limits' one) are looked through. Anything else (a TLS wrapper, a test transport, a
    Twisted without the attributes L{sendNow} reads) gives None: then every reply goes
    through C{transport.write}.
    """
    for _ in range(8):
        if isinstance(transport, tcp.Connection):
            if all(hasattr(transport, name) for name in _TCP_ATTRS):
                return transport
            return None
        if not (isinstance(transport, ProtocolWrapper)
                and type(transport).write is ProtocolWrapper.write):
            return None
        transport = transport.transport
    return None


def sendNow(conn: Any, data: bytes) -> bytes:
    """Send C{data} on TCP connection C{conn} right away if nothing is queued before it.

    Twisted's C{write} queues and sends on the reactor's next pass (after two epoll
    changes and whatever else is ready). A client waiting for a reply is better served
    at once, as asyncio does. Only on an open connection without TLS whose queue is
    empty (so the order of bytes is kept); a short or failed send leaves the rest to
    C{transport.write}, and Twisted then meets and reports any error itself.

    @return: what is left to write with C{transport.write} (C{b""}: everything went).
    """
    if (conn.TLS or not conn.connected or conn.disconnecting or conn._writeDisconnected
            or conn._tempDataBuffer or conn.offset != len(conn.dataBuffer)):
        return data
    try:
        sent = conn.socket.send(data)
    except OSError:
        return data
    return data[sent:]


_PATHS: dict[tuple[str, bool], tuple[Path, str]] = {}
#: How many parsed MAIL/RCPT arguments are remembered, and the longest one remembered.
_PATHS_MAX = 4096
_PATHS_LONGEST = 512


def _parsePath(text: str, reverse: bool) -> tuple[Path, str]:
    """L{parsePath} for MAIL (C{reverse}: the null path allowed) or RCPT (bare postmaster).

    Results are remembered (L{Path} is immutable; errors are not remembered): most mail
    goes to the same few local recipients.

    @raise PathSyntaxError: not a path (reply 501).
    @raise PathRefused: routing syntax (reply 553).
    """
    key = (text, reverse)
    hit = _PATHS.get(key)
    if hit is not None:
        return hit
    result = parsePath(text, null=reverse, postmaster=not reverse)
    if len(text) <= _PATHS_LONGEST:
        if len(_PATHS) >= _PATHS_MAX:
            _PATHS.clear()
        _PATHS[key] = result
    return result


def _xtextDecode(value: bytes) -> str | None:
    """Decode RFC 3461 xtext (C{+XX} hex escapes); C{None} when it is malformed."""
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c == 0x2B:  # "+"
            pair = value[i + 1:i + 3]
            if len(pair) != 2 or not all(chr(b) in "0123456789ABCDEFabcdef" for b in pair):
                return None
            out.append(int(pair, 16))
            i += 3
            continue
        if c < 0x21 or c > 0x7E or c == 0x3D:
            return None
        out.append(c)
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _b64decode(data: bytes) -> bytes:
    """Strict base64 (C{=} alone is the empty string, RFC 4954).

    @raise ValueError: not base64.
    """
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None


class _ESMTPCore(smtp.ESMTP):
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
    gate: Any = None
    trustedProxies: tuple[Any, ...] = ()
    _tlsDiscarding = False

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
        self._tarpitCall: IDelayedCall | None = None
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
        self._tcp = plainTCP(self.transport)
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

    # -- framing ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Buffer C{data} and process the complete lines (unless a reply is pending)."""
        self._inDataReceived = True
        try:
            if self._pos:
                self._buffer = self._buffer[self._pos :]
                self._pos = 0
            self._buffer = self._buffer + data if self._buffer else data
            if not self._blocked:
                self.resetTimeout()
            self._process()
        finally:
            self._inDataReceived = False

    def _nextLine(self) -> Any:
        """The next complete line (without CRLF), L{TOO_LONG}, or None if there is none."""
        buf = self._buffer
        while True:
            end = buf.find(b"\r\n", self._pos)
            if self._skipping:
                if end < 0:
                    # Drop the rest of the long line, but keep a CR that may start CRLF.
                    self._buffer = b"\r" if buf.endswith(b"\r") else b""
                    self._pos = 0
                    return None
                self._skipping = False
                self._pos = end + 2
                return TOO_LONG
            if end < 0:
                if len(buf) - self._pos > MAX_DATA_LINE + 1:
                    self._skipping = True
                    continue
                return None
            line = buf[self._pos : end]
            self._pos = end + 2
            if len(line) > MAX_DATA_LINE:
                return TOO_LONG
            return line

    def _process(self) -> None:
        """Hand buffered lines to L{lineReceived} one by one, in order."""
        if self._processing:
            return
        self._processing = True
        self._replies = []
        try:
            while not self._blocked and not self._closing and not self._tlsDiscarding:
                if getattr(self.transport, "disconnecting", False):
                    break
                if self.mode == DATA and not self._skipping and self._dataBulk():
                    continue
                line = self._nextLine()
                if line is None:
                    break
                self.lineReceived(line)
            if self._pos and self._pos >= len(self._buffer):
                self._buffer = b""
                self._pos = 0
            if self._blocked and len(self._buffer) - self._pos > MAX_BUFFERED:
                self._pause()
        finally:
            self._processing = False
            self._flushReplies()
            self._replies = None

    def _dataBulk(self) -> bool:
        """Take the complete DATA lines up to the next line starting with a dot, at once.

        Lines starting with C{.} (the end marker, stuffed lines) and partial lines are
        left to the line path; everything else is checked and stored as one chunk,
        which keeps big messages from costing a Python call per line.

        @return: whether a chunk was consumed.
        """
        buf, pos = self._buffer, self._pos
        if buf.startswith(b".", pos):
            return False
        dot = buf.find(b"\r\n.", pos)
        if dot >= 0:
            stop = dot + 2
        else:
            last = buf.rfind(b"\r\n", pos)
            if last < 0:
                return False
            stop = last + 2
        chunk = buf[pos:stop]
        self._pos = stop
        try:
            self._dataChunk(chunk)
        except Exception:
            self._internalError(Failure())
        return True

    def _pause(self) -> None:
        """Stop reading from the client until the pending reply is out."""
        if not self._pausedByUs:
            self._pausedByUs = True
            try:
                self.transport.pauseProducing()
            except Exception:
                log.failure("pauseProducing failed")

    def _wait(self, d: defer.Deferred[Any]) -> None:
        """Hold later commands back until C{d} (which sends its own reply) has fired."""
        self._blocked = True
        self._pending = d
        d.addCallbacks(self._unblock, self._failedThenUnblock)

    def _failedThenUnblock(self, reason: Failure) -> None:
        """The pending work failed unexpectedly: answer for it, then carry on."""
        try:
            self._internalError(reason)
        except Exception:
            log.failure("answering an internal error failed")
        self._unblock(None)

    def _unblock(self, result: Any) -> None:
        """The pending reply is out: carry on with buffered commands (unless the tarpit
        holds replies back: then L{_tarpitDone} carries on)."""
        self._pending = None
        if self._held is not None:
            return
        self._blocked = False
        if self._closing:
            return
        self.resetTimeout()
        if self._pausedByUs:
            self._pausedByUs = False
            try:
                self.transport.resumeProducing()
            except Exception:
                log.failure("resumeProducing failed")
        self._process()
        if self._tlsDiscarding and not self._inDataReceived:
            self._tlsDiscarding = False

    def _internalError(self, reason: Failure) -> None:
        """A bug or unexpected failure: log it, answer 451, keep the session usable.

        Inside DATA the message fails instead (answered at the final dot): leaving
        DATA mode early would run the rest of the message as commands.
        """
        if reason.check(defer.CancelledError) or self._closing:
            return
        log.failure("internal error in SMTP session with {peer}", reason,
                    peer=self.session.peerHost)
        if self.mode == DATA:
            self._failData(451, "4.3.0 Internal error, try again later")
            return
        if self.mode == AUTH:
            self.mode = COMMAND
        self._send(451, [b"4.3.0 Internal error, try again later"])

    def _afterStartTLS(self) -> None:
        """TLS was started: everything buffered behind the command is dropped unseen."""
        self._buffer = b""
        self._pos = 0
        self._skipping = False
        if not self._inDataReceived:
            # Processed from the backlog, not inside a read: nothing else to drop.
            self._tlsDiscarding = False

    # -- replies ------------------------------------------------------------------------

    def _send(self, code: int, lines: list[bytes], enhanced: bool = True,
              error: bool | None = None) -> None:
        """Write a (multi-line) reply; count errors, tarpit past the soft limit, and hang
        up at the hard limit.

        @param error: whether the reply counts as an error (default: 4xx/5xx but 421).
        """
        if enhanced:
            lines = [enhance(code, line) for line in lines]
        if len(lines) == 1:
            data = b"%03d %s\r\n" % (code, lines[0])
        else:
            last = len(lines) - 1
            data = b"".join(b"%03d%s%s\r\n" % (code, b" " if i == last else b"-", line)
                            for i, line in enumerate(lines))
        if error is None:
            error = code >= 400 and code != 421
        if error and not self._closing:
            self._errors += 1
            if self._errors > self.softErrorLimit and self.errorSleepTime > 0:
                self._tarpit()
        self._emit(data)
        if error and not self._closing:
            if self._errors >= self.maxErrors:
                self._dropTransaction()
                self.mode = COMMAND
                self._emit(
                    b"421 4.7.0 " + self.hostname.encode("utf-8") + b" Error: too many errors\r\n"
                )
                log.info("too many errors from {peer}: disconnecting", peer=self.session.peerHost)
                self._close()

    def _tarpit(self) -> None:
        """Hold this and later replies back for C{errorSleepTime}; commands wait too.

        Replies already collected go out first; the held ones keep their order.
        """
        if self._held is not None:
            return
        self._held = []
        self._blocked = True
        self._tarpitCall = self.callLater(self.errorSleepTime, self._tarpitDone)

    def _tarpitDone(self) -> None:
        """The tarpit delay is over: write the held replies and carry on (or close)."""
        self._tarpitCall = None
        held, self._held = self._held, None
        if held:
            self._write(b"".join(held))
        if self._closing:
            self.transport.loseConnection()
        elif self._pending is None:
            self._unblock(None)

    def _emit(self, data: bytes) -> None:
        """Write a reply now, or (while a read is processed) with the read's others, or
        (while the tarpit holds replies back) after the held ones."""
        if self._held is not None:
            self._held.append(data)
        elif self._replies is not None:
            self._replies.append(data)
        else:
            self._write(data)

    def _flushReplies(self) -> None:
        """Write the replies collected so far in one go."""
        replies = self._replies
        if replies:
            self._replies = []
            self._write(replies[0] if len(replies) == 1 else b"".join(replies))

    def _write(self, data: bytes) -> None:
        """Write C{data}: straight to the socket when possible, else through the transport."""
        if self._tcp is not None:
            data = sendNow(self._tcp, data)
            if not data:
                return
        self.transport.write(data)

    def reply(self, code: int, text: str | bytes) -> None:
        """Send a one-line reply (text may hold an enhanced code; one is added if not)."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        self._send(code, [text])

    def sendCode(self, code: int, message: bytes | str = b"") -> None:
        """Twisted's reply writer, rerouted so every reply gets an enhanced code."""
        if isinstance(message, str):
            message = message.encode("utf-8")
        self._send(code, message.splitlines() or [b""])

    def sendSyntaxError(self) -> None:
        """Reply to an empty or unparsable command."""
        self.reply(500, "5.5.2 Error: bad syntax")

    # -- dispatch -----------------------------------------------------------------------

    def lineReceived(self, line: Any) -> None:
        """Route one line to DATA, AUTH or command handling; no exception escapes."""
        try:
            if self.mode == DATA:
                self._dataLine(line)
            elif self.mode == AUTH:
                self._authLine(line)
            else:
                self._commandLine(line)
        except Exception:
            self._internalError(Failure())

    def lineLengthExceeded(self, line: bytes) -> None:
        """Not used: the framing turns long lines into L{TOO_LONG}."""
        self.lineReceived(TOO_LONG)

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

    def _fromProxy(self) -> bool:
        """Whether the connection itself comes from a trusted proxy (XCLIENT allowed)."""
        return bool(self.trustedProxies) and inNetworks(self._proxyPeer, self.trustedProxies)

    def smtp_XCLIENT(self, arg: bytes) -> None:
        """XCLIENT (Postfix's extension, as nginx's mail proxy sends it): a trusted
        proxy names the real client (ADDR) and the user it authenticated (LOGIN).

        The session starts again as from that client: a new C{220} greeting, HELO/EHLO
        and the transaction forgotten, and with LOGIN the user's avatar installed as
        after AUTH (the proxy checked the password through auth_http).
        """
        if not self._fromProxy():
            self.reply(550, "5.7.0 Error: XCLIENT not authorized")
            return
        if self.txn is not None:
            self.reply(503, "5.5.1 Error: XCLIENT not allowed in a mail transaction")
            return
        attrs: dict[str, str] = {}
        for word in arg.split():
            name, eq, value = word.partition(b"=")
            key = name.decode("ascii", "replace").upper()
            if not eq or key not in ("ADDR", "LOGIN", "NAME", "HELO", "PROTO", "PORT",
                                     "DESTADDR", "DESTPORT"):
                self.reply(501, f"5.5.4 Bad XCLIENT attribute {key}")
                return
            decoded = _xtextDecode(value)
            if decoded is None:
                self.reply(501, f"5.5.4 Bad XCLIENT value for {key}")
                return
            if decoded.upper() not in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
                attrs[key] = decoded
        addr = attrs.get("ADDR", "")
        if addr.upper().startswith("IPV6:"):
            addr = addr[5:]
        if addr and parseIP(addr) is None:
            self.reply(501, "5.5.4 Bad XCLIENT ADDR")
            return
        login = attrs.get("LOGIN")
        if login is not None:
            try:
                login = canonical(login)
            except AddressError:
                self.reply(501, "5.5.4 Bad XCLIENT LOGIN")
                return
        self._resetSession()
        if addr:
            self.session.peerHost = addr
            self._helo = (None, addr.encode())
        greeting = [self.hostname.encode() + b" " + self.greetingText]
        if login is None:
            self._send(220, greeting, enhanced=False)
            return
        d = defer.maybeDeferred(self.portal.realm.requestAvatar, login, None,
                                smtp.IMessageDelivery)

        def installed(result: tuple[Any, Any, Callable[[], None]]) -> None:
            _iface, avatar, logout = result
            if self._closing:
                logout()
                return
            self.delivery, self._onLogout = avatar, logout
            self.authenticated = True
            self.authenticatedAs = login
            self.session.user = login
            avatar.session = self.session
            log.info("XCLIENT: {user} from {peer} via proxy {proxy}", user=login,
                     peer=self.session.peerHost, proxy=self._proxyPeer)
            self._send(220, greeting, enhanced=False)

        def failed(reason: Failure) -> None:
            log.failure("XCLIENT login of {user} failed", reason, user=login)
            self.reply(451, "4.3.0 Temporary failure, try again later")

        d.addCallbacks(installed, failed)
        self._wait(d)

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

    # -- AUTH ---------------------------------------------------------------------------

    def smtp_AUTH(self, arg: bytes) -> None:
        """AUTH PLAIN / LOGIN, with or without an initial response."""
        if not self._esmtp:
            self.reply(503, "5.5.1 Error: send EHLO first")
            return
        if self.authenticatedAs is not None:
            self.reply(503, "5.5.1 Error: already authenticated")
            return
        if self.txn is not None:
            self.reply(503, "5.5.1 Error: AUTH not allowed during a mail transaction")
            return
        parts = arg.split()
        if not parts or len(parts) > 2:
            self.reply(501, "5.5.2 Syntax: AUTH mechanism [initial-response]")
            return
        if self.gate is None:
            self.reply(454, "4.7.0 Temporary authentication failure")
            return
        if not self.authAllowed():
            self.reply(538, "5.7.11 Encryption required for requested authentication mechanism")
            return
        mech = parts[0].upper()
        if mech not in (b"PLAIN", b"LOGIN"):
            self.reply(504, "5.5.4 Unrecognized authentication type")
            return
        self._authMech = mech
        self._authUser = None
        self.mode = AUTH
        if len(parts) == 1:
            self._send(334, [b"" if mech == b"PLAIN" else _LOGIN_USER], enhanced=False)
            return
        self._authLine(parts[1])

    def _authFail(self, code: int, text: str) -> None:
        """Leave the AUTH exchange with an error reply."""
        self.mode = COMMAND
        self._authMech = None
        self._authUser = None
        self.reply(code, text)

    def _authLine(self, line: Any) -> None:
        """One client response in the AUTH exchange."""
        if line is TOO_LONG or len(line) > MAX_AUTH_LINE:
            self._authFail(500, "5.5.2 Error: line too long")
            return
        line = line.strip(b" \t")
        if line == b"*":
            self._authFail(501, "5.7.0 Authentication aborted")
            return
        try:
            decoded = _b64decode(line)
        except ValueError:
            self._authFail(501, "5.5.2 Error: invalid base64 data")
            return
        if self._authMech == b"LOGIN":
            if self._authUser is None:
                self._authUser = decoded
                self._send(334, [_LOGIN_PASS], enhanced=False)
                return
            user, password = self._authUser, decoded
        else:
            fields = decoded.split(b"\x00")
            if len(fields) != 3 or not fields[1]:
                self._authFail(501, "5.5.2 Error: malformed AUTH PLAIN response")
                return
            authzid, user, password = fields
            if authzid and authzid != user:
                self._authFail(535, "5.7.8 Authentication credentials invalid")
                return
        self._authMech = None
        self._authUser = None
        self._login(user, password)

    def _login(self, user: bytes, password: bytes) -> None:
        """Check the credentials through the gate; block commands until it answers."""
        creds = UsernamePassword(user, password)
        d = self.gate.login(self.session.peerHost, creds, smtp.IMessageDelivery)
        d.addCallbacks(self._authSucceeded, self._authFailed)
        self._wait(d)

    def _authSucceeded(self, result: tuple[Any, Any, Callable[[], None]]) -> None:
        """Install the user's avatar."""
        self.mode = COMMAND
        _iface, avatar, logout = result
        if self._closing:
            logout()
            return
        self._logout()
        self.delivery, self._onLogout = avatar, logout
        self.authenticated = True
        self.authenticatedAs = getattr(avatar, "user", None) or "?"
        self.session.user = self.authenticatedAs
        avatar.session = self.session
        log.info("AUTH ok: {user} from {peer}", user=self.authenticatedAs,
                 peer=self.session.peerHost)
        self.reply(235, "2.7.0 Authentication successful")

    def _authFailed(self, reason: Failure) -> None:
        """Bad credentials → 535; anything else → 454 (logged, without credentials)."""
        if reason.check(defer.CancelledError):
            return
        if reason.check(UnauthorizedLogin):
            self._authFail(535, "5.7.8 Authentication credentials invalid")
            return
        log.error("AUTH from {peer} failed: {error}", peer=self.session.peerHost,
                  error=reason.getErrorMessage())
        self._authFail(454, "4.7.0 Temporary authentication failure")

    def _logout(self) -> None:
        """Log the current avatar out."""
        logout, self._onLogout = self._onLogout, None
        self.delivery = None
        if logout is not None:
            try:
                logout()
            except Exception:
                log.failure("SMTP avatar logout failed")

    # -- mail transaction ---------------------------------------------------------------

    def _dropTransaction(self) -> None:
        """Forget the transaction (MAIL, RCPT and any message being received)."""
        self._discardMessage()
        self.txn = None

    def _decodeArg(self, arg: bytes, prefix: bytes) -> str | None:
        """The text after C{FROM:}/C{TO:} as str, or None after replying with an error."""
        if arg[: len(prefix)].upper() != prefix:
            verb = "MAIL FROM" if prefix == b"FROM:" else "RCPT TO"
            self.reply(501, f"5.5.4 Syntax: {verb}:<address>")
            return None
        try:
            return arg[len(prefix) :].decode("utf-8")
        except UnicodeDecodeError:
            self.reply(553, "5.6.7 Address is not valid UTF-8")
            return None

    def smtp_MAIL(self, arg: bytes) -> None:
        """MAIL FROM:<path> [SIZE= BODY= SMTPUTF8 AUTH=]."""
        if self._heloName is None:
            self.reply(503, "5.5.1 Error: send HELO/EHLO first")
            return
        if self.txn is not None:
            self.reply(503, "5.5.1 Error: nested MAIL command")
            return
        if self.role == "submission" and self.authenticatedAs is None:
            self.reply(530, "5.7.0 Authentication required")
            return
        text = self._decodeArg(arg, b"FROM:")
        if text is None:
            return
        parsed = self._pathAndParameters(text, sender=True)
        if parsed is None:
            return
        path, params = parsed
        if params and not self._esmtp:
            self.reply(555, "5.5.4 MAIL parameters need EHLO")
            return
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    self.reply(501, "5.5.4 Bad SIZE parameter")
                    return
                if int(value) > self.maxMessageSize:
                    self.reply(552, "5.3.4 Message size exceeds fixed maximum message size")
                    return
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    self.reply(501, "5.5.4 Unsupported BODY parameter")
                    return
            elif key == "SMTPUTF8":
                if value is not None:
                    self.reply(501, "5.5.4 SMTPUTF8 takes no value")
                    return
            elif key == "AUTH":
                # RFC 4954 section 5: accepted, and not trusted (we never relay it on).
                if value is None:
                    self.reply(501, "5.5.4 Bad AUTH parameter")
                    return
            else:
                self.reply(555, f"5.5.4 Unsupported parameter {key}")
                return
        utf8 = "SMTPUTF8" in params
        if not path.isASCII and not utf8:
            self.reply(553, "5.6.7 Non-ASCII address needs SMTPUTF8")
            return
        body = params.get("BODY")
        txn = Transaction(
            sender=path, smtputf8=utf8,
            size=int(params["SIZE"]) if params.get("SIZE") else None,
            body=body.upper() if body else None, user=self.authenticatedAs, helo=self._helo)
        self.session.tls = self._tlsDescription()
        if self.delivery is not None:
            d = defer.maybeDeferred(self.delivery.validateFrom, txn)
        else:
            d = self._delivery()
            d.addCallback(lambda delivery: delivery.validateFrom(txn))
        d.addCallbacks(self._mailAccepted, self._addressRejected, callbackArgs=(txn,))
        self._wait(d)

    def _delivery(self) -> defer.Deferred[Any]:
        """The session's avatar, logging in anonymously the first time."""
        if self.delivery is not None:
            return defer.succeed(self.delivery)
        if self.portal is None:
            return defer.fail(SMTPReply(451, "4.3.0 Mail service not configured"))
        d = self.portal.login(Anonymous(), None, smtp.IMessageDelivery)

        def loggedIn(result: tuple[Any, Any, Callable[[], None]]) -> Any:
            _iface, avatar, logout = result
            if self._closing:
                logout()
                raise defer.CancelledError()
            self.delivery, self._onLogout = avatar, logout
            avatar.session = self.session
            return avatar

        def failed(reason: Failure) -> Any:
            if reason.check(UnauthorizedLogin, defer.CancelledError):
                if reason.check(UnauthorizedLogin):
                    raise SMTPReply(530, "5.7.0 Authentication required")
                return reason
            log.failure("anonymous SMTP login failed", reason)
            raise SMTPReply(451, "4.3.0 Mail service temporarily unavailable")

        return d.addCallbacks(loggedIn, failed)

    def _mailAccepted(self, _path: Path, txn: Transaction) -> None:
        """MAIL succeeded: C{txn} is the session's transaction."""
        self.txn = txn
        self.reply(250, "2.1.0 Ok")

    def _addressRejected(self, reason: Failure) -> None:
        """A MAIL or RCPT refused by the avatar (or a lookup that failed)."""
        if reason.check(defer.CancelledError):
            return
        if reason.check(SMTPReply):
            self.reply(reason.value.code, reason.value.text)
            return
        if reason.check(smtp.SMTPServerError):
            resp = reason.value.resp
            self.reply(reason.value.code, resp if isinstance(resp, (bytes, str)) else str(resp))
            return
        log.failure("address validation failed", reason)
        self.reply(451, "4.3.0 Temporary lookup failure, try again later")

    def _pathAndParameters(self, text: str, sender: bool) -> tuple[Any, dict[str, Any]] | None:
        """Parse the path and parameters of MAIL or RCPT, or reply with the error and
        return C{None}."""
        code, what = ("5.1.7", "sender") if sender else ("5.1.3", "recipient")
        try:
            path, rest = _parsePath(text, sender)
        except PathRefused as e:
            self.reply(553, f"{code} {what.capitalize()} address rejected: {e}")
            return None
        except PathSyntaxError as e:
            self.reply(501, f"{code} Bad {what} address syntax: {e}")
            return None
        try:
            return path, parseParameters(rest)
        except PathSyntaxError as e:
            self.reply(501, f"5.5.4 {e}")
            return None

    def smtp_RCPT(self, arg: bytes) -> None:
        """RCPT TO:<path>."""
        txn = self.txn
        if txn is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return
        text = self._decodeArg(arg, b"TO:")
        if text is None:
            return
        parsed = self._pathAndParameters(text, sender=False)
        if parsed is None:
            return
        path, params = parsed
        if params:
            self.reply(555, f"5.5.4 Unsupported parameter {next(iter(params))}")
            return
        if not path.isASCII and not txn.smtputf8:
            self.reply(553, "5.6.7 Non-ASCII address needs SMTPUTF8 on MAIL")
            return
        if len(txn.recipients) >= self.maxRecipients:
            # Not an error: RFC 5321 section 4.5.3.1.10 has the client send the rest later.
            self._send(452, [b"4.5.3 Error: too many recipients"], error=False)
            return
        rcpt = txn.recipient(path)
        d = defer.maybeDeferred(self.delivery.validateTo, txn, rcpt)
        d.addCallbacks(self._rcptAccepted, self._addressRejected, callbackArgs=(txn, rcpt))
        self._wait(d)

    def _rcptAccepted(self, _result: None, txn: Transaction, rcpt: Recipient) -> None:
        """RCPT succeeded."""
        txn.recipients.append(rcpt)
        self.reply(250, "2.1.5 Ok")

    def smtp_DATA(self, arg: bytes) -> None:
        """DATA: start receiving the message."""
        if arg:
            self.reply(501, "5.5.4 Syntax: DATA")
            return
        txn = self.txn
        if txn is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return
        if not txn.recipients:
            self.reply(554, "5.5.1 Error: no valid recipients")
            return
        txn.message = self.delivery.open(txn)
        txn.failed = None
        txn.received = 0
        self.mode = DATA
        self._send(354, [b"End data with <CR><LF>.<CR><LF>"], enhanced=False)

    def _failData(self, code: int, text: str) -> None:
        """Fail the message being received; keep swallowing until CRLF.CRLF."""
        txn = self.txn
        if txn is not None and txn.failed is None:
            txn.failed = (code, text)
            self._discardMessage()

    def _discardMessage(self) -> None:
        """Tell the transaction's message to forget what it got."""
        txn = self.txn
        if txn is None or txn.message is None:
            return
        message, txn.message = txn.message, None
        try:
            message.connectionLost()
        except Exception:
            log.failure("message connectionLost failed")

    def _dataLine(self, line: Any) -> None:
        """One line of message content (still dot-stuffed)."""
        if line is TOO_LONG:
            self._failData(500, "5.5.2 Error: line too long in message")
            return
        if line[:1] == b".":
            if line == b".":
                self._endData()
                return
            line = line[1:]
        txn = self.txn
        if txn is None or txn.failed is not None:
            return
        if b"\r" in line or b"\n" in line:
            self._failData(550, "5.6.0 Message contains bare CR or LF, refused")
            return
        txn.received += len(line) + 2
        if txn.received > self.maxMessageSize:
            self._failData(552, "5.3.4 Message size exceeds fixed maximum message size")
            return
        try:
            txn.message.lineReceived(line)
        except smtp.SMTPServerError as e:
            resp = e.resp.decode("utf-8", "replace") if isinstance(e.resp, bytes) else str(e.resp)
            self._failData(e.code, resp)

    def _dataChunk(self, chunk: bytes) -> None:
        """Complete CRLF-terminated message lines, none starting with a dot."""
        txn = self.txn
        if txn is None or txn.failed is not None:
            return
        lines = chunk.count(b"\r\n")
        if chunk.count(b"\r") != lines or chunk.count(b"\n") != lines:
            self._failData(550, "5.6.0 Message contains bare CR or LF, refused")
            return
        if len(chunk) > MAX_DATA_LINE + 2 and max(map(len, chunk.split(b"\r\n"))) > MAX_DATA_LINE:
            self._failData(500, "5.5.2 Error: line too long in message")
            return
        txn.received += len(chunk)
        if txn.received > self.maxMessageSize:
            self._failData(552, "5.3.4 Message size exceeds fixed maximum message size")
            return
        try:
            bulk = getattr(txn.message, "dataReceived", None)
            if bulk is not None:
                bulk(chunk)
            else:
                for line in chunk.split(b"\r\n")[:-1]:
                    txn.message.lineReceived(line)
        except smtp.SMTPServerError as e:
            resp = e.resp.decode("utf-8", "replace") if isinstance(e.resp, bytes) else str(e.resp)
            self._failData(e.code, resp)

    def _endData(self) -> None:
        """The final dot: store the message, then answer; the transaction ends."""
        self.mode = COMMAND
        txn, self.txn = self.txn, None
        if txn is None:
            return
        message, txn.message = txn.message, None
        if txn.failed is not None:
            self._dataReply(txn, *txn.failed)
            return
        d = defer.maybeDeferred(message.eomReceived)
        d.addCallbacks(self._messageHandled, self._messageFailed, callbackArgs=(txn,),
                       errbackArgs=(txn,))
        self._wait(d)

    def _messageHandled(self, qid: Any, txn: Transaction) -> None:
        """Every copy is durable: 250 with the queue id."""
        self._dataReply(txn, 250, f"2.0.0 Ok: queued as {qid or '-'}")

    def _messageFailed(self, reason: Failure, txn: Transaction) -> None:
        """452/451 (never 550) when storing failed; a message refused on purpose (an
        L{SMTPReply}, e.g. C{554 5.4.6} for a mail loop) gets that reply."""
        if reason.check(StoreFull):
            log.warn("message refused: store full ({error})", error=reason.getErrorMessage())
            self._dataReply(txn, 452, "4.3.1 Insufficient system storage, try again later")
        elif reason.check(SMTPReply):
            self._dataReply(txn, reason.value.code, reason.value.text)
        else:
            log.failure("message could not be stored", reason)
            self._dataReply(txn, 451, "4.3.0 Error: could not store message, try again later")

    def _dataReply(self, txn: Transaction, code: int, text: str) -> None:
        """The reply to the final dot: one for the transaction (LMTP sends one per
        recipient, L{pymaild.smtp.lmtp})."""
        txn.finish(code, text)
        self.reply(code, text)

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
        p.trustedProxies = self.trustedProxies
        p.callLater = self.clock.callLater  # type: ignore[method-assign]
        return p


__all__ = ["SMTPFactory", "SMTPServer", "enhance", "plainTCP", "sendNow"]
