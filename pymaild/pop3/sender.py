"""RETR and TOP bodies on their way to the client: the TOP line filter and the push
producer that streams a message file in chunks through the stateful
L{pymaild.sendbody.CRLFStuffer} (a C{.} line at offset 0 or at any chunk edge is stuffed).
"""

from __future__ import annotations

from typing import BinaryIO

from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.python.failure import Failure
from zope.interface import implementer

from pymaild.pop3.mailbox import POP3Mailbox, readFull
from pymaild.sendbody import CRLFStuffer

log = Logger(namespace="pymaild.pop3")

class TopFilter:
    """Pass a message's header, the blank line after it, and the first C{n} body lines.

    Works across chunk edges with bounded memory. A message without a blank line is all
    header and passes whole.
    """

    def __init__(self, lines: int) -> None:
        self.lines = lines
        self.inHeader = True
        self.bodyLines = 0
        self.done = False
        self._head = b""  # first two octets of the current line (enough to spot "" / "\r")

    def feed(self, data: bytes) -> bytes:
        """Return the part of C{data} that belongs to the TOP reply."""
        if self.done:
            return b""
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n:
            if not self.inHeader and self.bodyLines >= self.lines:
                self.done = True
                break
            nl = data.find(b"\n", pos)
            if nl == -1:
                segment = data[pos:]
                self._head = (self._head + segment[:2])[:2]
                out.append(segment)
                break
            segment = data[pos : nl + 1]
            head = (self._head + segment[:2])[:2]
            self._head = b""
            out.append(segment)
            pos = nl + 1
            if self.inHeader:
                if head in (b"\n", b"\r\n"):
                    self.inHeader = False
            else:
                self.bodyLines += 1
        if not self.inHeader and self.bodyLines >= self.lines:
            self.done = True
        return b"".join(out)


@implementer(interfaces.IPushProducer)
class MessageSender:
    """Streams one message for RETR or TOP: file chunks → (TOP filter) → dot-stuffer.

    C{proto} is the session (a L{pymaild.pop3.server.POP3Server}): its transport and its
    idle timer are all the sender touches.

    Reads happen in the mailbox's Runner one chunk at a time; the sender registers as a
    streaming producer so a slow client pauses the reads. C{done} fires (never errs) when
    the reply is complete or the connection was given up.
    """

    def __init__(
        self,
        proto: pop3.POP3,
        mailbox: POP3Mailbox,
        fp: BinaryIO | None,
        first: bytes,
        chunkSize: int,
        top: TopFilter | None,
    ) -> None:
        self.proto = proto
        self.mailbox = mailbox
        self.fp = fp
        self.chunkSize = chunkSize
        self.top = top
        self.stuffer = CRLFStuffer()
        self.done: defer.Deferred[None] = defer.Deferred()
        self._first: bytes | None = first
        self._paused = False
        self._reading = False
        self._pumping = False
        self._finished = False

    def start(self) -> defer.Deferred[None]:
        """Begin streaming (the +OK line has been written)."""
        self.proto.transport.registerProducer(self, True)
        first, self._first = self._first, None
        assert first is not None
        self._emit(first, eof=self.fp is None)
        self._pump()
        return self.done

    def _emit(self, data: bytes, eof: bool) -> None:
        """Send one chunk; finish when the file or the TOP range ends."""
        if self._finished:
            return
        if self.top is not None:
            data = self.top.feed(data)
        out = self.stuffer.feed(data)
        if out:
            self.proto.transport.write(out)
            self.proto.resetTimeout()
        if eof or (self.top is not None and self.top.done):
            self._finish()

    def _pump(self) -> None:
        """Read chunks until paused, finished or waiting for the Runner."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._paused or self._finished or self._reading):
                fp = self.fp
                if fp is None:
                    self._finish()
                    break
                self._reading = True
                d = self.mailbox.readChunk(fp, self.chunkSize)
                d.addCallbacks(self._gotChunk, self._readFailed)
        finally:
            self._pumping = False

    def _gotChunk(self, data: bytes) -> None:
        """A chunk arrived from the Runner."""
        self._reading = False
        if len(data) < self.chunkSize:
            self.fp = None  # readOrClose closed it
        if self._finished:
            self._closeFile()  # stopped while this read was in flight
            return
        self._emit(data, eof=self.fp is None)
        if not self._pumping:
            self._pump()

    def _readFailed(self, f: Failure) -> None:
        """The file could not be read after +OK: the reply cannot be completed, drop."""
        self._reading = False
        if self._finished:
            self._closeFile()
            return
        log.failure("pop3: reading a message failed mid-reply", f)
        self._abort()
        self.proto.transport.loseConnection()

    def _closeFile(self) -> None:
        """Close the message file (if still open) in the Runner.

        While a read is in flight the file is left alone; the read's completion closes
        it, so a pool thread never has the file closed under it.
        """
        if self._reading:
            return
        fp, self.fp = self.fp, None
        if fp is not None:
            self.mailbox.closeMessage(fp).addErrback(
                lambda f: log.failure("pop3: closing a message file failed", f)
            )

    def _finish(self) -> None:
        """Send the terminator and hand the connection back to the command loop."""
        if self._finished:
            return
        self._finished = True
        self._closeFile()
        self.proto.transport.write(self.stuffer.finish())
        self.proto.transport.unregisterProducer()
        self.done.callback(None)

    def _abort(self) -> None:
        """Stop without a terminator (the connection is going away)."""
        if self._finished:
            return
        self._finished = True
        self._closeFile()
        try:
            self.proto.transport.unregisterProducer()
        except Exception:  # noqa: BLE001 - the transport may already be gone
            pass
        self.done.callback(None)

    def pauseProducing(self) -> None:
        """The client is slow: stop reading chunks."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The client caught up: read on."""
        self._paused = False
        if not self._finished:
            self._pump()

    def stopProducing(self) -> None:
        """The connection is closing: release the file."""
        self._abort()


class _FileReply:
    """Marks a RETR going out by sendfile (the session is mid-reply); the sender stops
    by itself when the connection goes (Twisted calls its C{stopProducing})."""

    def stopProducing(self) -> None:
        """Nothing to do: the registered sender is told by the transport."""

    def pauseProducing(self) -> None:
        """Nothing to do (see L{stopProducing})."""


def _rewind(fp: BinaryIO, chunkSize: int) -> bytes:
    """Read C{fp}'s first chunk again from its start (blocking)."""
    fp.seek(0)
    return readFull(fp, chunkSize)
