"""The SMTP server's replies: enhanced status codes, one write per read, the tarpit.

Every 2xx/4xx/5xx reply carries an RFC 3463 enhanced status code (L{enhance}; RFC 2034
exempts the greeting and the HELO/EHLO replies, and 3xx replies have none). The replies
to the commands of one read go out in one write, straight to the socket where
L{pymaild.smtp.fastreply} allows it.

Error flood tarpit (Postfix's C{smtpd_soft_error_limit}, C{smtpd_error_sleep_time} and
C{smtpd_hard_error_limit}): an error is a 4xx/5xx reply to a command (not C{421}, and not
C{452 4.5.3} for recipients past the limit, which the client is to send again). After
C{softErrorLimit} errors each further error reply is held back C{errorSleepTime} (on the
factory's clock; never a sleep), and the commands pipelined behind it wait; at
C{maxErrors} errors the last error reply is followed by C{421 4.7.0} and the connection
closes.

L{RepliesMixin} is one part of L{pymaild.smtp.server.SMTPServer}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

from pymaild.smtp.fastreply import sendNow
from pymaild.smtp.framing import COMMAND, SessionPart

log = Logger()

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


def enhance(code: int, text: bytes) -> bytes:
    """C{text} with an enhanced status code in front unless it has one (2xx/4xx/5xx)."""
    if code // 100 not in (2, 4, 5) or _ENHANCED.match(text):
        return text
    default = DEFAULT_ENHANCED.get(code, b"%d.0.0" % (code // 100))
    return default + (b" " + text if text else b"")


class DelayedCall(Protocol):
    """What the tarpit needs of a pending call (L{twisted.internet.interfaces.
    IDelayedCall}, written as a protocol so that the type checker sees its methods)."""

    def active(self) -> bool:
        """Whether it has neither run nor been cancelled."""

    def cancel(self) -> None:
        """Stop it from running."""


class RepliesMixin(SessionPart):
    """Writes replies; see the module docstring."""

    mode: str
    transport: Any
    hostname: str
    session: Any
    maxErrors: int
    softErrorLimit: int
    errorSleepTime: float
    _closing: bool
    _errors: int
    _blocked: bool
    _pending: Any
    _held: list[bytes] | None
    _replies: list[bytes] | None
    _tarpitCall: DelayedCall | None
    _tcp: Any

    if TYPE_CHECKING:  # the other parts of the protocol, as the type checker sees them
        def callLater(self, period: float, func: Callable[[], object]) -> Any:
            """The factory's clock (Twisted's C{TimeoutMixin.callLater})."""

        def _close(self) -> None:
            """L{pymaild.smtp.server.SMTPServer}'s close after the replies."""

        def _dropTransaction(self) -> None:
            """L{pymaild.smtp.spool.TransactionMixin._dropTransaction}."""

        def _unblock(self, result: Any) -> None:
            """L{pymaild.smtp.framing.FramingMixin._unblock}."""

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


__all__ = ["DEFAULT_ENHANCED", "RepliesMixin", "enhance"]
