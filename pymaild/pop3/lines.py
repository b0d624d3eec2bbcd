"""POP3 line framing and the in-order command queue under L{pymaild.pop3.server.POP3Server}.

Lines end in CRLF (a bare LF is tolerated); one longer than L{MAX_LINE} is discarded up
to its end and answered with C{-ERR}, so the session stays in sync; pipelined commands
are answered strictly in order, and reading stops while L{MAX_PENDING} lines wait.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.python.failure import Failure

log = Logger(namespace="pymaild.pop3")

MAX_LINE = 8190
"""Longest command line accepted (RFC 2449 allows 255; clients send long SASL lines)."""

MAX_PENDING = 64
"""Pipelined lines held before the server stops reading from the client."""

_LINE_TOO_LONG = object()


class _POP3Lines(pop3.POP3):
    """Line framing and the in-order command queue under L{POP3Server}.

    Lines end in CRLF (a bare LF is tolerated). A line longer than C{MAX_LINE} is
    discarded up to its end and answered with C{-ERR}; the session stays in sync. Every
    line goes through one FIFO: a command that returns a Deferred holds the queue until
    it fires, so pipelined commands are answered in order (RFC 2449 PIPELINING).
    """

    maxLineLength = MAX_LINE
    _overflow = False
    _inData = False

    def _initLines(self) -> None:
        """Set up the queue state (called from the subclass constructor)."""
        self._pending: collections.deque[Any] = collections.deque()
        self._busy = False
        self._draining = False
        self._readPaused = False
        self._closing = False

    def dataReceived(self, data: bytes) -> None:
        """Split the input into lines and queue them."""
        self._inData = True
        try:
            if self._overflow:
                nl = data.find(b"\n")
                if nl == -1:
                    return
                data = data[nl + 1 :]
                self._overflow = False
                self._lineTooLong()
            lines = (self._buffer + data).split(b"\n")
            self._buffer = lines.pop()
            for line in lines:
                if self._closing:
                    return
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > self.maxLineLength:
                    self._lineTooLong()
                    continue
                self.lineReceived(line)
            # + 1: the CR of a line of the maximum length may wait here for its LF.
            if len(self._buffer) > self.maxLineLength + 1:
                self._buffer = b""
                self._overflow = True
        finally:
            self._inData = False

    def _lineTooLong(self) -> None:
        """Queue the answer to an over-long line, unless it is discarded plaintext."""
        if getattr(self, "_tlsDiscarding", False) or self._closing:
            return
        self._enqueue(_LINE_TOO_LONG)

    def lineReceived(self, line: bytes) -> None:
        """Queue one command line (TLSGuardMixin drops those behind STLS before this)."""
        if self._closing:
            return
        self._enqueue(line)

    def _enqueue(self, item: Any) -> None:
        """Add a line to the FIFO and process what can be processed now."""
        self._pending.append(item)
        if self._busy and len(self._pending) > MAX_PENDING and not self._readPaused:
            self._readPaused = True
            self.transport.pauseProducing()
        self._drain()

    def _drain(self) -> None:
        """Run queued lines until one starts an asynchronous operation."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._pending and not self._busy and not self._closing:
                item = self._pending.popleft()
                d = self._runLine(item)
                if d is not None:
                    self._busy = True
                    d.addBoth(self._operationDone)
        finally:
            self._draining = False
        if self._readPaused and not self._pending and not self._closing:
            self._readPaused = False
            self.transport.resumeProducing()

    def _operationDone(self, result: Any) -> None:
        """An asynchronous command finished: let the queue move on."""
        self._busy = False
        if isinstance(result, Failure):
            log.failure("pop3: command failed unexpectedly", result)
        self._drain()

    def _runLine(self, item: Any) -> defer.Deferred[Any] | None:
        """Handle one queued line; a returned Deferred blocks the queue."""
        raise NotImplementedError
