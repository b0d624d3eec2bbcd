"""The outbound ESMTP client: its protocol, the replies it reads, and the outcomes and
errors of one delivery attempt.

Twisted's ``relaymanager`` does not run on Python 3 and its ``SMTPClient`` dot-stuffs
per 16 KiB chunk, which lets a ``.`` line at a chunk edge end DATA early and run the rest
of the body as commands on the remote server (twisted-traps.md §3.6, §4). So pymaild has
its own client, L{ESMTPClientProtocol}, on
L{twisted.protocols.basic.LineOnlyReceiver}; L{pymaild.smtp.relaysession} streams the
body through the stateful L{pymaild.wire.DotStuffer}.
"""


from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from pymaild.wire import TLSGuardMixin

log = Logger()

DELIVERED = "delivered"
TEMPORARY = "temporary"
PERMANENT = "permanent"

SMTP = "smtp"
"""Diagnostic type of a reply that came from a remote server."""
LOCAL = "x-pymaild"
"""Diagnostic type of a finding of our own (DNS, connection, policy)."""



@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt for one recipient.

    @ivar kind: L{DELIVERED}, L{TEMPORARY} (retry later) or L{PERMANENT} (bounce).
    @ivar status: the RFC 3463 enhanced status code.
    @ivar reply: the server's reply (C{"550 5.1.1 no such user"}) or our own diagnosis.
    @ivar diagnosticType: L{SMTP} for a server reply, L{LOCAL} for our own finding.
    @ivar remoteMta: the host name of the server that answered, if any.
    """

    recipient: str
    kind: str
    status: str
    reply: str
    diagnosticType: str = SMTP
    remoteMta: str = ""


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as one line: C{"550 5.1.1 text text"}."""
        return f"{self.code} " + " ".join(s.strip() for s in self.lines if s.strip())

    @property
    def enhanced(self) -> str:
        """The enhanced status code the reply carries, or one derived from its class."""
        first = self.lines[0].split(" ", 1)[0] if self.lines else ""
        parts = first.split(".")
        if (
            len(parts) == 3
            and all(p.isdigit() and 0 < len(p) <= 3 for p in parts)
            and parts[0] == str(self.code // 100)
        ):
            return first
        return f"{self.code // 100}.0.0" if self.code // 100 in (2, 4, 5) else "4.0.0"

    @property
    def positive(self) -> bool:
        """2xx."""
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        """5xx."""
        return 500 <= self.code < 600


class DeliveryError(Exception):
    """A delivery attempt could not be made: it ends with the same outcome for everyone."""

    def __init__(
        self,
        status: str,
        text: str,
        permanent: bool = False,
        remoteMta: str = "",
        diagnosticType: str = LOCAL,
    ) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.permanent = permanent
        self.remoteMta = remoteMta
        self.diagnosticType = diagnosticType

    def outcomes(self, recipients: Iterable[str]) -> list[Outcome]:
        """The same outcome for each of C{recipients}."""
        kind = PERMANENT if self.permanent else TEMPORARY
        return [
            Outcome(r, kind, self.status, self.text, self.diagnosticType, self.remoteMta)
            for r in recipients
        ]


class _TryNext(DeliveryError):
    """This server could not take the mail; the next address or MX may."""


class _TLSFailed(_TryNext):
    """The TLS handshake failed; with opportunistic TLS, try the same server in clear."""


class ReplyTimeout(Exception):
    """The server did not answer in time."""


class ProtocolViolation(Exception):
    """The server sent something that is not an SMTP reply."""


class UnsafeCommand(ValueError):
    """A command to send holds CR, LF or another control character (S25: injection)."""


#: Characters that must never appear in an SMTP command line we send.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------------------------------
# The client protocol


@implementer(IHandshakeListener, IPushProducer)
class ESMTPClientProtocol(TLSGuardMixin, LineOnlyReceiver):
    """Line-level half of the SMTP client: collects replies and hands them out in order.

    The dialogue itself is driven by L{Relay} as a coroutine: it L{send}s commands and
    awaits L{readReply}. Pipelined commands are simply several writes followed by as
    many reads. Replies that arrive before anyone waits are kept. Bytes that arrive in
    the same read as the C{220} reply to STARTTLS are discarded unseen (a server-side
    injection, the client-side twin of CVE-2011-0411).
    """

    MAX_LENGTH = 4096
    MAX_REPLY_LINES = 200

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._partial: list[str] = []
        self._replies: deque[Reply] = deque()
        self._waiters: deque[defer.Deferred[Reply]] = deque()
        self._lost: Failure | None = None
        self._handshake: defer.Deferred[None] | None = None
        self._writable: defer.Deferred[None] | None = None
        self.tls = False
        self.tlsDone = False

    def lineReceived(self, line: bytes) -> None:
        """Add one reply line; hand out the reply when its last line arrived.

        Lines that came in the same read as the reply to STARTTLS are dropped.
        """
        if self._tlsDiscarding:
            return
        text = line.decode("utf-8", "replace")
        code = text[:3]
        sep = text[3:4]
        valid = len(code) == 3 and code.isdigit() and code[0] in "2345"
        if not valid or sep not in ("", " ", "-"):
            self._violation(f"not an SMTP reply: {text[:80]!r}")
            return
        if self._partial and not self._partial[0].startswith(code):
            self._violation("reply code changed inside a multi-line reply")
            return
        self._partial.append(text)
        if len(self._partial) > self.MAX_REPLY_LINES:
            self._violation("reply has too many lines")
            return
        if sep == "-":
            return
        lines = tuple(p[4:] for p in self._partial)
        self._partial = []
        reply = Reply(int(code), lines)
        if self._waiters:
            self._waiters.popleft().callback(reply)
        else:
            self._replies.append(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        """An over-long reply line is a protocol violation."""
        self._violation("reply line too long")

    def _violation(self, why: str) -> None:
        """Give up on a server that does not speak SMTP."""
        self._fail(Failure(ProtocolViolation(why)))
        self.transport.abortConnection()

    def _fail(self, reason: Failure) -> None:
        """Fail everything that waits, now and later, with C{reason}."""
        if self._lost is None:
            self._lost = reason
        waiters, self._waiters = self._waiters, deque()
        for d in waiters:
            d.errback(self._lost)
        if self._handshake is not None and not self._handshake.called:
            self._handshake.errback(self._lost)
        if self._writable is not None and not self._writable.called:
            self._writable.errback(self._lost)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fail all waiters with the reason the connection went away."""
        self._fail(reason)

    def send(self, *lines: str) -> None:
        """Write commands (one write, so pipelined commands travel together).

        @raise UnsafeCommand: a line holds a control character (a CR or LF would inject
            a command); nothing is written then.
        """
        for line in lines:
            if _CONTROL.search(line):
                raise UnsafeCommand(f"refusing to send a command with a control character:"
                                    f" {line[:80]!r}")
        self.transport.write(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))

    def readReply(self, timeout: float) -> defer.Deferred[Reply]:
        """The next reply; the connection is dropped when none arrives within C{timeout}."""
        if self._replies:
            return defer.succeed(self._replies.popleft())
        if self._lost is not None:
            return defer.fail(self._lost)
        d: defer.Deferred[Reply] = defer.Deferred(self._forgetWaiter)
        self._waiters.append(d)

        def timedOut(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                self.transport.abortConnection()
                return Failure(ReplyTimeout(f"no reply within {timeout:g}s"))
            return f

        d.addTimeout(timeout, self.clock)
        d.addErrback(timedOut)
        return d

    def _forgetWaiter(self, d: defer.Deferred[Reply]) -> None:
        """Canceller: a reply nobody waits for any more."""
        if d in self._waiters:
            self._waiters.remove(d)

    def startTLS(self, contextFactory: Any, timeout: float) -> defer.Deferred[None]:
        """Start TLS; the Deferred fires when the handshake completed."""
        self._handshake = defer.Deferred()
        d = self._handshake
        self.startTLSGuarded(contextFactory)
        self.tls = True

        def timedOut(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                self.transport.abortConnection()
            return f

        d.addTimeout(timeout, self.clock)
        d.addErrback(timedOut)
        return d

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done (IHandshakeListener)."""
        self.tlsDone = True
        if self._handshake is not None and not self._handshake.called:
            self._handshake.callback(None)

    def write(self, data: bytes) -> None:
        """Write raw (already dot-stuffed) body bytes."""
        self.transport.write(data)

    def whenWritable(self) -> defer.Deferred[None]:
        """Fires at once, or when the transport's buffer drained (flow control)."""
        if self._lost is not None:
            return defer.fail(self._lost)
        if self._writable is None:
            return defer.succeed(None)
        return self._writable

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: make L{whenWritable} wait."""
        if self._writable is None:
            self._writable = defer.Deferred()

    def resumeProducing(self) -> None:
        """The buffer drained: let the body writer continue."""
        d, self._writable = self._writable, None
        if d is not None and not d.called:
            d.callback(None)

    def stopProducing(self) -> None:
        """The connection is going away; L{connectionLost} fails the writer."""


@dataclass(frozen=True)
class Message:
    """What L{pymaild.smtp.relay.Relay.deliver} needs to know about the message it sends.

    @ivar path: the message file (CRLF line ends), read through the Runner.
    @ivar size: its size in bytes (for C{SIZE=}).
    @ivar eightBit: it contains bytes above 127 (C{BODY=8BITMIME}).
    """

    path: str
    size: int
    eightBit: bool


def _describe(e: BaseException) -> str:
    """A short description of an exception (TLS and connection errors included)."""
    if isinstance(e, error.ConnectionDone):
        return "connection closed by the server"
    if isinstance(e, error.ConnectionLost):
        return "connection lost"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
