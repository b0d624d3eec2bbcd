"""The POP3 server: RFC 1939 with CAPA (2449), STLS (2595), response codes (3206), SASL (5034).

``POP3Server`` subclasses Twisted's ``pop3.POP3`` for its name and interface but replaces
the parts that are wrong (twisted-traps §2):

* every message number is checked to be a decimal in ``1..N`` (``DELE 0`` no longer
  deletes the last message), and wrong argument counts get ``-ERR`` instead of a dropped
  connection;
* RETR/TOP stream the message file in chunks through a push producer and the stateful
  ``pymaild.sendbody.CRLFStuffer``, so a ``.`` line at offset 0 or at any chunk edge is
  stuffed; a plain message file is opened and its first chunk read inline (twisted-traps
  §7.7), and a message that fits in that chunk is answered with a single write; on a
  plain TCP connection, RETR of a larger file whose name promises CRLF content goes by
  sendfile (``pymaild.sendbody``: the dot lines found by one scan, each ``.`` sent twice);
* CAPA lists only real capabilities; STLS is offered before TLS and discards plaintext
  pipelined behind it (``TLSGuardMixin``);
* USER/PASS and AUTH PLAIN/LOGIN (with initial response) are accepted only where the
  cleartext policy allows, through ``AuthGate.login`` so the per-IP penalty applies; no
  APOP (the greeting carries no timestamp), and no second login;
* QUIT commits deletions in the disk Runner *before* answering ``+OK``; a connection lost
  without QUIT deletes nothing;
* lines up to 8190 octets are accepted; longer ones get ``-ERR`` and the session stays in
  sync; pipelined commands are answered strictly in order;
* no exception text ever reaches the client.

``POP3Factory(config, gate, tlsContext, implicitTLS, clock)`` builds the protocols. The
line framing and command queue are L{pymaild.pop3.lines}; the RETR/TOP producer and the
TOP filter are L{pymaild.pop3.sender}.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.python.failure import Failure

from pymaild import __version__
from pymaild.auth.policy import cleartextAllowed, isSecure
from pymaild.errors import DatabaseUnavailable, MessageVanished
from pymaild.pop3.lines import _LINE_TOO_LONG, _POP3Lines
from pymaild.pop3.mailbox import MailboxInUse, POP3Mailbox, readOrClose
from pymaild.pop3.sender import MessageSender, TopFilter, _FileReply, _rewind
from pymaild.sendbody import (
    SENDFILE_MIN,
    CRLFStuffer,
    dotStuffedPlan,
    plainSocket,
    sendRanges,
)
from pymaild.wire import TLSGuardMixin, setNoDelay

if TYPE_CHECKING:
    from pymaild.config import Config

log = Logger(namespace="pymaild.pop3")

PRE_LOGIN_TIMEOUT = 60
"""Seconds of silence allowed before login."""

IDLE_TIMEOUT = 600
"""Seconds of silence allowed after login (RFC 1939: at least 10 minutes)."""

CHUNK_SIZE = 65536
"""Bytes read from a message file per trip to the disk pool."""

SASL_MECHANISMS = (b"PLAIN", b"LOGIN")

MSG_CLEARTEXT = b"[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
MSG_AUTH_FAILED = b"[AUTH] Authentication failed."
MSG_IN_USE = b"[IN-USE] Mailbox is locked by another POP3 session."
MSG_TEMP = b"[SYS/TEMP] Temporary server failure, try again later."

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"


class _Reply(Exception):
    """Raised by argument checks: send C{-ERR <text>} and end the command."""

    def __init__(self, text: bytes) -> None:
        super().__init__(text)
        self.text = text


def _number(arg: bytes) -> int:
    """Parse a POP3 number: ASCII digits only, no sign; ValueError otherwise.

    Absurdly long digit strings map to a value larger than any message number.
    """
    if not arg or not arg.isdigit():
        raise ValueError("not a number")
    if len(arg) > 18:
        return 10**18
    return int(arg)


class POP3Server(TLSGuardMixin, _POP3Lines):
    """One POP3 connection (see the module docstring for what it fixes in Twisted)."""

    chunkSize = CHUNK_SIZE

    def __init__(
        self,
        config: Config,
        gate: Any,
        tlsContext: Any = None,
        implicitTLS: bool = False,
        clock: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        self.gate = gate
        self.tlsContext = tlsContext
        self.implicitTLS = implicitTLS
        self.clock = clock
        self.state = AUTHORIZATION
        self.mailbox: POP3Mailbox | None = None
        self._logout: Callable[[], None] | None = None
        self._user: bytes | None = None
        self._sasl: tuple[bytes, bytes | None] | None = None
        self._tlsStarted = False
        self._lost = False
        self._sender: MessageSender | _FileReply | None = None
        self._pendingLogin: defer.Deferred[Any] | None = None
        self._initLines()

    # -- connection --------------------------------------------------------------------

    def callLater(self, period: float, func: Callable[[], Any]) -> Any:
        """Schedule timeouts on the factory's clock."""
        return self.clock.callLater(period, func)

    def connectionMade(self) -> None:
        """Greet without an APOP timestamp and start the pre-login timer."""
        setNoDelay(self.transport)
        self.sendOK(b"pymaild POP3 server ready.")
        self.setTimeout(PRE_LOGIN_TIMEOUT)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Forget the session: nothing is deleted, the mailbox lock is released."""
        self._lost = True
        self._closing = True
        self._pending.clear()
        self.setTimeout(None)
        login, self._pendingLogin = self._pendingLogin, None
        if login is not None:
            login.cancel()
        if self._sender is not None:
            self._sender.stopProducing()
            self._sender = None
        self._endSession()

    def _endSession(self) -> None:
        """Call the avatar's logout once."""
        logout, self._logout = self._logout, None
        self.mailbox = None
        if logout is not None:
            try:
                logout()
            except Exception:  # noqa: BLE001 - logout must not break connectionLost
                log.failure("pop3: avatar logout failed")

    def sessionIdle(self) -> bool:
        """Whether no command is running or queued: the server may close the session
        when stopping (deletions wait for QUIT, so nothing is lost)."""
        return not self._busy and not self._pending and self._sender is None

    def goodbye(self) -> None:
        """The server is stopping: say so (unless mid-reply) and close."""
        if self._closing:
            return
        if self._sender is None:
            self.sendERR(b"[SYS/TEMP] Server shutting down")
        self._closing = True
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        """Idle too long: say so (unless mid-reply) and close."""
        if self._sender is None:
            self.sendERR(b"Disconnected for inactivity.")
        self._closing = True
        self.transport.loseConnection()

    # -- replies -----------------------------------------------------------------------

    def sendOK(self, text: bytes = b"") -> None:
        """Write a C{+OK} line."""
        self.transport.write(b"+OK " + text + b"\r\n" if text else b"+OK\r\n")

    def sendERR(self, text: bytes) -> None:
        """Write a C{-ERR} line."""
        self.transport.write(b"-ERR " + text + b"\r\n")

    def successResponse(self, message: Any = b"") -> None:
        """Twisted's name for L{sendOK}."""
        self.sendOK(message if isinstance(message, bytes) else str(message).encode("utf-8"))

    def failResponse(self, message: Any = b"") -> None:
        """Twisted's name for L{sendERR}."""
        self.sendERR(message if isinstance(message, bytes) else str(message).encode("utf-8"))

    def sendMultiline(self, first: bytes, lines: list[bytes]) -> None:
        """Write C{+OK first}, the (already safe) lines and the terminator at once."""
        head = b"+OK " + first + b"\r\n" if first else b"+OK\r\n"
        body = b"\r\n".join(lines)
        # One bytes object: writeSequence would walk thousands of lines in Python.
        self.transport.write(head + body + b"\r\n.\r\n" if lines else head + b".\r\n")

    # -- security state ---------------------------------------------------------------

    @property
    def secure(self) -> bool:
        """Whether the connection is encrypted (implicit TLS, or STLS done)."""
        return self.implicitTLS or self._tlsStarted or isSecure(self.transport)

    def canStartTLS(self) -> bool:
        """Whether STLS is available now."""
        return (
            self.tlsContext is not None
            and not self.secure
            and interfaces.ITLSTransport.providedBy(self.transport)
        )

    def cleartextAllowed(self) -> bool:
        """Whether USER/PASS and AUTH PLAIN/LOGIN may be used on this connection."""
        if self.secure:
            return True
        return bool(cleartextAllowed(self.config.auth.cleartext, self.transport))

    def listCapabilities(self) -> list[bytes]:
        """The CAPA list; the same in both states (RFC 2449 §5)."""
        caps = [b"TOP", b"UIDL"]
        if self.cleartextAllowed():
            caps.append(b"USER")
        caps += [b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.cleartextAllowed():
            caps.append(b"SASL " + b" ".join(SASL_MECHANISMS))
        if self.canStartTLS():
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION pymaild-" + __version__.encode("ascii"))
        return caps

    # -- dispatch ------------------------------------------------------------------------

    COMMANDS: dict[bytes, tuple[str, str, int, int]] = {
        # command: (handler, states ("A"uthorization, "T"ransaction), min args, max args)
        b"CAPA": ("do_CAPA", "AT", 0, 0),
        b"USER": ("do_USER", "A", 1, -1),
        b"PASS": ("do_PASS", "A", 0, -1),
        b"AUTH": ("do_AUTH", "A", 0, 2),
        b"STLS": ("do_STLS", "A", 0, 0),
        b"QUIT": ("do_QUIT", "AT", 0, 0),
        b"STAT": ("do_STAT", "T", 0, 0),
        b"LIST": ("do_LIST", "T", 0, 1),
        b"UIDL": ("do_UIDL", "T", 0, 1),
        b"RETR": ("do_RETR", "T", 1, 1),
        b"TOP": ("do_TOP", "T", 2, 2),
        b"DELE": ("do_DELE", "T", 1, 1),
        b"NOOP": ("do_NOOP", "T", 0, 0),
        b"RSET": ("do_RSET", "T", 0, 0),
    }

    def _runLine(self, item: Any) -> defer.Deferred[Any] | None:
        """Handle one line: a SASL response or a command. Never raises."""
        if self._lost:
            return None
        self.resetTimeout()
        try:
            if item is _LINE_TOO_LONG:
                if self._sasl is not None:
                    self._sasl = None
                self.sendERR(b"Line too long.")
                return None
            if self._sasl is not None:
                return self._saslContinue(item)
            return self.processCommand(item)
        except _Reply as r:
            self.sendERR(r.text)
        except Exception:  # noqa: BLE001 - a bug must cost one -ERR, not the connection
            log.failure("pop3: internal error handling a command")
            self.sendERR(MSG_TEMP)
        return None

    def processCommand(self, line: bytes, *ignored: bytes) -> defer.Deferred[Any] | None:  # type: ignore[override]
        """Parse a command line, check state and argument count, and run the handler."""
        if self.state == UPDATE:
            return None
        name, _, rest = line.partition(b" ")
        command = name.upper()
        spec = self.COMMANDS.get(command)
        if spec is None:
            self.sendERR(b"Unknown command.")
            return None
        handler, states, lo, hi = spec
        if self.state == AUTHORIZATION and "A" not in states:
            self.sendERR(b"Not logged in.")
            return None
        if self.state == TRANSACTION and "T" not in states:
            self.sendERR(b"Already logged in.")
            return None
        if hi == -1:
            # USER and PASS take the rest of the line as one argument (RFC 1939 §7).
            args: list[bytes] = [rest] if rest else []
        else:
            args = rest.split()
        if len(args) < lo or (hi >= 0 and len(args) > hi):
            self.sendERR(b"Wrong number of arguments.")
            return None
        return getattr(self, handler)(*args)

    # -- AUTHORIZATION -------------------------------------------------------------------

    def do_CAPA(self) -> None:
        """List the capabilities (RFC 2449)."""
        self.sendMultiline(b"Capability list follows", self.listCapabilities())

    def do_STLS(self) -> None:
        """Start TLS (RFC 2595); plaintext pipelined behind the command is discarded."""
        if not self.canStartTLS():
            if self.secure:
                self.sendERR(b"TLS is already active.")
            else:
                self.sendERR(b"STLS is not available.")
            return
        self.sendOK(b"Begin TLS negotiation now.")
        self._pending.clear()
        self._user = None
        self._overflow = False
        self.startTLSGuarded(self.tlsContext)
        self._tlsStarted = True
        if not self._inData:
            # Run from the queue after an asynchronous command: the plaintext that was
            # behind STLS is already dropped (queue and buffer); later reads are TLS.
            self._tlsDiscarding = False

    def do_USER(self, name: bytes) -> None:
        """Remember the user name for PASS."""
        if not self.cleartextAllowed():
            self.sendERR(MSG_CLEARTEXT)
            return
        name = name.strip()
        if not name:
            self.sendERR(b"Wrong number of arguments.")
            return
        self._user = name
        self.sendOK()

    def do_PASS(self, password: bytes = b"") -> defer.Deferred[Any] | None:
        """Log in with the name from USER."""
        user, self._user = self._user, None
        if not self.cleartextAllowed():
            self.sendERR(MSG_CLEARTEXT)
            return None
        if user is None:
            self.sendERR(b"No user name given: send USER first.")
            return None
        return self._login(user, password)

    def do_AUTH(self, mechanism: bytes | None = None, initial: bytes | None = None) -> Any:
        """SASL authentication (RFC 5034): PLAIN and LOGIN, with initial response."""
        allowed = self.cleartextAllowed()
        if mechanism is None:
            self.sendMultiline(b"", list(SASL_MECHANISMS) if allowed else [])
            return None
        mech = mechanism.upper()
        if mech not in SASL_MECHANISMS:
            self.sendERR(b"Unsupported authentication mechanism.")
            return None
        if not allowed:
            self.sendERR(MSG_CLEARTEXT)
            return None
        if initial is None:
            self._sasl = (mech, None)
            self.transport.write(b"+ \r\n" if mech == b"PLAIN" else b"+ VXNlcm5hbWU6\r\n")
            return None
        self._sasl = (mech, None)
        return self._saslContinue(initial, initialResponse=True)

    def _saslContinue(self, line: bytes, initialResponse: bool = False) -> Any:
        """Take one client response of the SASL exchange."""
        assert self._sasl is not None
        mech, username = self._sasl
        if line.strip() == b"*" and not initialResponse:
            self._sasl = None
            self.sendERR(b"Authentication aborted.")
            return None
        if initialResponse and line == b"=":
            data = b""
        else:
            try:
                data = base64.b64decode(line.strip(), validate=True)
            except (binascii.Error, ValueError):
                self._sasl = None
                self.sendERR(b"Invalid base64 data.")
                return None
        if mech == b"PLAIN":
            self._sasl = None
            parts = data.split(b"\0")
            if len(parts) != 3 or not parts[1]:
                self.sendERR(b"Malformed SASL PLAIN response.")
                return None
            authzid, authcid, password = parts
            if authzid and authzid != authcid:
                self.sendERR(MSG_AUTH_FAILED)
                return None
            return self._login(authcid, password)
        if username is None:
            if not data:
                self._sasl = None
                self.sendERR(b"Empty user name.")
                return None
            self._sasl = (mech, data)
            self.transport.write(b"+ UGFzc3dvcmQ6\r\n")
            return None
        self._sasl = None
        return self._login(username, data)

    def _login(self, user: bytes, password: bytes) -> defer.Deferred[None]:
        """Authenticate through the gate, then open the mailbox; answer the client."""
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "") or ""
        credentials = UsernamePassword(user, password)
        d = defer.maybeDeferred(self.gate.login, host, credentials, pop3.IMailbox)
        # Kept so that a client leaving before the answer cancels it (the gate counts
        # an abandoned attempt as a failure).
        self._pendingLogin = d

        def answered(result: Any) -> Any:
            self._pendingLogin = None
            return result

        d.addBoth(answered)
        d.addCallback(self._loggedIn, host)
        d.addErrback(self._loginFailed, host)
        return d

    def _loggedIn(self, result: tuple[Any, Any, Callable[[], None]], host: str) -> Any:
        """Authentication succeeded: take the session lock and scan the INBOX."""
        _iface, avatar, logout = result
        if self._lost:
            logout()
            return None
        self._logout = logout
        if not isinstance(avatar, POP3Mailbox):
            logout()
            self._logout = None
            raise TypeError(f"POP3 avatar of unexpected type {type(avatar).__name__}")
        d = avatar.open()

        def opened(_: None) -> None:
            if self._lost:
                return
            self.mailbox = avatar
            self.state = TRANSACTION
            self.setTimeout(IDLE_TIMEOUT)
            log.info("pop3: login {user} from {host}", user=avatar.address, host=host)
            n, octets = avatar.stat()
            self.sendOK(b"Logged in, %d messages (%d octets)." % (n, octets))

        def notOpened(f: Failure) -> None:
            self._endSession()
            if self._lost:
                return
            if f.check(MailboxInUse):
                log.info("pop3: {user} refused, mailbox in use", user=avatar.address)
                self.sendERR(MSG_IN_USE)
                return
            log.failure("pop3: opening the mailbox of {user} failed", f, user=avatar.address)
            self.sendERR(MSG_TEMP)

        return d.addCallbacks(opened, notOpened)

    def _loginFailed(self, f: Failure, host: str) -> None:
        """Answer a failed login without revealing why."""
        if self._lost:
            return
        if f.check(UnauthorizedLogin, UnhandledCredentials):
            log.info("pop3: authentication failed from {host}", host=host)
            self.sendERR(MSG_AUTH_FAILED)
            return
        if f.check(DatabaseUnavailable):
            log.error("pop3: login error: {error}", error=f.getErrorMessage())
        else:
            log.failure("pop3: login error", f)
        self.sendERR(MSG_TEMP)

    # -- TRANSACTION -----------------------------------------------------------------

    def _box(self) -> POP3Mailbox:
        """The session's mailbox (TRANSACTION state)."""
        if self.mailbox is None:
            raise _Reply(b"Not logged in.")
        return self.mailbox

    def _message(self, arg: bytes) -> int:
        """The 0-based index for a message-number argument, or an -ERR via L{_Reply}."""
        box = self._box()
        try:
            n = _number(arg)
        except ValueError:
            raise _Reply(b"Invalid message number.") from None
        if n < 1 or n > box.count():
            raise _Reply(b"No such message.")
        if box.isDeleted(n - 1):
            raise _Reply(b"Message %d is marked for deletion." % n)
        return n - 1

    def do_STAT(self) -> None:
        """Count and size of the messages not marked for deletion."""
        n, octets = self._box().stat()
        self.sendOK(b"%d %d" % (n, octets))

    def do_LIST(self, arg: bytes | None = None) -> None:
        """Scan listing of one message or of all not marked for deletion."""
        box = self._box()
        if arg is not None:
            i = self._message(arg)
            self.sendOK(b"%d %d" % (i + 1, box.entry(i).size))
            return
        n, octets = box.stat()
        self.sendMultiline(
            b"%d messages (%d octets)" % (n, octets),
            [b"%d %d" % (num, e.size) for num, e in box.visible()],
        )

    def do_UIDL(self, arg: bytes | None = None) -> None:
        """Unique-id listing of one message or of all not marked for deletion."""
        box = self._box()
        if arg is not None:
            i = self._message(arg)
            self.sendOK(b"%d %s" % (i + 1, box.entry(i).uidl))
            return
        self.sendMultiline(b"", [b"%d %s" % (num, e.uidl) for num, e in box.visible()])

    def do_RETR(self, arg: bytes) -> defer.Deferred[None] | None:
        """Send a whole message, dot-stuffed."""
        i = self._message(arg)
        size = self._box().entry(i).size
        return self._send(i, b"%d octets" % size, None, size)

    def do_TOP(self, arg: bytes, lines: bytes) -> defer.Deferred[None] | None:
        """Send a message's header, the blank line and the first C{lines} body lines."""
        i = self._message(arg)
        try:
            count = _number(lines)
        except ValueError:
            raise _Reply(b"Invalid line count.") from None
        return self._send(i, b"Top of message follows.", TopFilter(count),
                          self._box().entry(i).size)

    def _send(self, index: int, okText: bytes, top: TopFilter | None,
              size: int) -> defer.Deferred[None] | None:
        """Open the message, then stream it.

        A plain message file (its name promises CRLF content) is opened and its first
        chunk read at once (no trip to the Runner, twisted-traps §7.7), and so is a
        smaller file with LF line ends (converted as read); a message that fits in that
        chunk goes out in a single write with its +OK line and terminator,
        and a RETR of one of at least C{SENDFILE_MIN} octets on a plain TCP connection
        goes by sendfile (L{_sendFile}). Otherwise the file is opened in the Runner.
        C{size} is the message's size as LIST gives it.
        """
        box = self._box()
        chunkSize = self.chunkSize
        now: tuple[BinaryIO | None, bytes] | None = None
        try:
            if top is None and size >= SENDFILE_MIN and plainSocket(self.transport):
                fp = box.openPlainNow(index)
                if fp is not None:
                    return self._sendFile(box, fp, okText)
            small = box.readSmallNow(index, chunkSize) if size < chunkSize else None
            if small is not None:
                now = (None, small)
            else:
                fp = box.openPlainNow(index)
                if fp is not None:
                    data = readOrClose(fp, chunkSize)
                    now = (None, data) if len(data) < chunkSize else (fp, data)
        except OSError:
            now = None  # let the Runner path retry and report it
        if now is not None and now[0] is None and top is None:
            stuffer = CRLFStuffer()
            ok = b"+OK " + okText + b"\r\n" if okText else b"+OK\r\n"
            self.transport.writeSequence((ok, stuffer.feed(now[1]), stuffer.finish()))
            return None
        d: defer.Deferred[tuple[BinaryIO | None, bytes]] = (
            defer.succeed(now) if now is not None else box.openMessage(index, chunkSize))

        def opened(result: tuple[BinaryIO | None, bytes]) -> Any:
            fp, first = result
            return self._stream(box, fp, first, okText, top)

        def failed(f: Failure) -> None:
            if self._lost:
                return
            if f.check(MessageVanished):
                self.sendERR(b"Message was removed by another session.")
                return
            log.failure("pop3: opening a message failed", f)
            self.sendERR(MSG_TEMP)

        return d.addCallbacks(opened, failed)

    def _stream(self, box: POP3Mailbox, fp: BinaryIO | None, first: bytes, okText: bytes,
                top: TopFilter | None) -> Any:
        """Answer +OK and stream the message from its first chunk on (L{MessageSender});
        C{fp} is None when C{first} is all of it."""
        if self._lost:
            if fp is not None:
                box.closeMessage(fp)
            return None
        self.sendOK(okText)
        sender = MessageSender(self, box, fp, first, self.chunkSize, top)
        self._sender = sender

        def finished(_: None) -> None:
            if self._sender is sender:
                self._sender = None

        return sender.start().addCallback(finished)

    def _sendFile(self, box: POP3Mailbox, fp: BinaryIO,
                  okText: bytes) -> defer.Deferred[None]:
        """RETR of a large file whose name promises CRLF content, on a plain TCP
        connection: the disk pool finds its dot lines (one scan through a memory map),
        then the file goes by sendfile (L{pymaild.sendbody}), each dot line's C{.} twice
        -- or, with many dot lines, as bytes stuffed in the pool, in one write."""

        def scanned(result: tuple[list[tuple[int, int]] | bytes | None, bool]) -> Any:
            if self._lost:
                box.closeMessage(fp)
                return None
            ranges, endsWithLF = result
            if ranges is None:  # a large file with many dot lines: stream it in chunks
                return box.runner.run(_rewind, fp, self.chunkSize).addCallback(
                    lambda first: self._stream(box, fp, first, okText, None))
            end = b".\r\n" if endsWithLF else b"\r\n.\r\n"
            if isinstance(ranges, bytes):  # many dot lines: stuffed in memory
                box.closeMessage(fp)
                ok = b"+OK " + okText + b"\r\n" if okText else b"+OK\r\n"
                self.transport.write(ok + ranges + end)
                return None
            self.sendOK(okText)
            self._sender = sending = _FileReply()

            def sent(ok: bool) -> None:
                if self._sender is sending:
                    self._sender = None
                box.closeMessage(fp).addErrback(
                    lambda f: log.failure("pop3: closing a message file failed", f))
                if ok and not self._lost:
                    self.transport.write(end)
                    self.resetTimeout()

            return sendRanges(self.transport, fp, ranges, box.runner).addCallback(sent)

        def failed(f: Failure) -> None:
            box.closeMessage(fp).addErrback(lambda _: None)
            if self._lost:
                return
            log.failure("pop3: reading a message failed", f)
            self.sendERR(MSG_TEMP)

        return box.runner.run(dotStuffedPlan, fp.fileno()).addCallbacks(scanned, failed)

    def do_DELE(self, arg: bytes) -> None:
        """Mark a message for deletion at QUIT."""
        i = self._message(arg)
        self._box().deleteMessage(i)
        self.sendOK(b"Marked to be deleted.")

    def do_NOOP(self) -> None:
        """Do nothing, successfully."""
        self.sendOK()

    def do_RSET(self) -> None:
        """Unmark every message marked for deletion."""
        box = self._box()
        box.undeleteMessages()
        n, octets = box.stat()
        self.sendOK(b"%d messages (%d octets)." % (n, octets))

    # -- UPDATE ------------------------------------------------------------------------

    def do_QUIT(self) -> defer.Deferred[None] | None:
        """End the session; in TRANSACTION commit the deletions first (RFC 1939 UPDATE)."""
        self._closing = True
        self._pending.clear()
        box = self.mailbox
        if self.state != TRANSACTION or box is None:
            self.sendOK(b"Logging out.")
            self.transport.loseConnection()
            return None
        self.state = UPDATE
        self.setTimeout(None)
        d = box.commit()

        def committed(uids: list[int]) -> None:
            if uids:
                self.sendOK(b"Logging out, messages deleted.")
            else:
                self.sendOK(b"Logging out.")

        def failed(f: Failure) -> None:
            log.failure("pop3: committing deletions failed for {user}", f, user=box.address)
            self.sendERR(b"[SYS/TEMP] Could not delete messages; they are kept.")

        d.addCallbacks(committed, failed)
        d.addBoth(lambda _: self.transport.loseConnection())
        return d


class POP3Factory(protocol.ServerFactory):
    """Builds L{POP3Server}s for one listener.

    @ivar implicitTLS: the listener is wrapped in TLS by the tap (POP3S): the connection
        counts as secure and STLS is not offered.
    """

    noisy = False
    protocol = POP3Server  # type: ignore[assignment]

    def __init__(
        self,
        config: Config,
        gate: Any,
        tlsContext: Any = None,
        implicitTLS: bool = False,
        clock: Any = None,
        chunkSize: int = CHUNK_SIZE,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        self.gate = gate
        self.tlsContext = tlsContext
        self.implicitTLS = implicitTLS
        self.clock = clock
        self.chunkSize = chunkSize

    def buildProtocol(self, addr: Any) -> POP3Server:
        """A protocol for one connection."""
        p = POP3Server(
            config=self.config,
            gate=self.gate,
            tlsContext=self.tlsContext,
            implicitTLS=self.implicitTLS,
            clock=self.clock,
        )
        p.chunkSize = self.chunkSize
        p.factory = self
        return p
