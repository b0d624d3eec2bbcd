"""The SMTP server's framing: lines, DATA in bulk, and commands that wait their turn.

Only CRLF ends a line and only CRLF.CRLF ends DATA. An over-long line becomes
L{TOO_LONG} (the command gets C{500 5.5.2}; inside DATA the message fails at the final
dot, so a long line can never put the session back into command mode). Complete DATA
lines between dot-led ones are handed on as one chunk (L{FramingMixin._dataBulk}).
While a reply waits on a Deferred (L{FramingMixin._wait}: a lookup, AUTH, the fsync of
a message) later commands wait in the buffer, so replies come in order (PIPELINING), and
past L{MAX_BUFFERED} the transport is paused.

L{FramingMixin} is one part of L{pymaild.smtp.server.SMTPServer}; the attributes it
declares are the session's, set up by the server's C{__init__}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

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


class _TooLong:
    """The marker the framing hands on in place of an over-long line."""

    def __repr__(self) -> str:
        return "<line too long>"


TOO_LONG: Any = _TooLong()


class SessionPart:
    """The base of the server's parts (framing, replies, logins, the transaction):
    what each may call on the others, declared for the type checker only (at run time
    the class is empty, so it hides nothing of the parts or of Twisted's C{ESMTP})."""

    if TYPE_CHECKING:
        def reply(self, code: int, text: str | bytes) -> None:
            """L{pymaild.smtp.replies.RepliesMixin.reply}."""

        def _send(self, code: int, lines: list[bytes], enhanced: bool = True,
                  error: bool | None = None) -> None:
            """L{pymaild.smtp.replies.RepliesMixin._send}."""

        def _wait(self, d: defer.Deferred[Any]) -> None:
            """L{pymaild.smtp.framing.FramingMixin._wait}."""


class FramingMixin(SessionPart):
    """Lines in, one at a time, in order; see the module docstring."""

    mode: str
    transport: Any
    _buffer: bytes
    _pos: int
    _skipping: bool
    _blocked: bool
    _processing: bool
    _inDataReceived: bool
    _pausedByUs: bool
    _closing: bool
    _tlsDiscarding: bool
    _pending: defer.Deferred[Any] | None
    _held: list[bytes] | None
    _replies: list[bytes] | None
    session: Any

    if TYPE_CHECKING:  # the other parts of the protocol, as the type checker sees them
        def resetTimeout(self) -> None:
            """Twisted's C{TimeoutMixin.resetTimeout}."""

        def _flushReplies(self) -> None:
            """L{pymaild.smtp.replies.RepliesMixin._flushReplies}."""

        def _dataChunk(self, chunk: bytes) -> None:
            """L{pymaild.smtp.spool.TransactionMixin._dataChunk}."""

        def _dataLine(self, line: Any) -> None:
            """L{pymaild.smtp.spool.TransactionMixin._dataLine}."""

        def _failData(self, code: int, text: str) -> None:
            """L{pymaild.smtp.spool.TransactionMixin._failData}."""

        def _authLine(self, line: Any) -> None:
            """L{pymaild.smtp.login.LoginMixin._authLine}."""

        def _commandLine(self, line: Any) -> None:
            """L{pymaild.smtp.server.SMTPServer}'s command dispatch."""

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


__all__ = ["AUTH", "COMMAND", "DATA", "MAX_AUTH_LINE", "MAX_BUFFERED", "MAX_COMMAND_LINE",
           "MAX_DATA_LINE", "TOO_LONG", "FramingMixin", "SessionPart"]
