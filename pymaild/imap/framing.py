"""The IMAP server's input side: a command assembled from its line(s) and literals.

Lines are capped at L{MAX_LINE} (BAD, and the session stays in sync), literal sizes are
checked before the C{+} (C{NO [TOOBIG]} for APPEND, BAD otherwise), LITERAL+ is
understood, and large APPEND literals are spooled to disk through the runner
(L{_LiteralSink}); L{_Pusher} is the push producer FETCH's writes wait on. Pipelined input
waits while a command runs; bytes pipelined behind STARTTLS are discarded.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pymaild.imap.compress import CompressedDataError, Inflater
from pymaild.imap.syntax import BadCommand, Literal, boundedInt
from pymaild.store.writing import uniqueName

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

_DONE = object()
_IDLING = object()
"""Returned by IDLE: the command stays running, without a Deferred, until DONE."""

"""The base class's SASL challenger table; AUTHENTICATE is implemented here instead."""
_TAG_RE = re.compile(rb"[^(){ %*\"\\\]+\x00-\x1f\x7f]+")
_LITERAL_RE = re.compile(rb"(?P<eight>~?)\{(?P<n>[0-9]+)(?P<plus>\+?)\}$")
_LITERAL_LIKE = re.compile(rb"\{[^{}]*\}$")

IMAP4REV2 = b"IMAP4REV2"
"""The ENABLE name of IMAP4rev2 (upper case, as ENABLE compares)."""
REV2_REMOVED = frozenset({b"LSUB", b"CHECK"})
"""IMAP4rev1 commands RFC 9051 removed (appendix E): unknown once IMAP4rev2 is on."""

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



def _oneLine(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")[:300]


class FramingMixin:
    """Input framing of L{pymaild.imap.server.IMAPServer}: lines, literals, the
    command's parts, handed whole to C{_dispatch}."""

    __slots__ = ()

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
