"""Message bodies from their files to the client with as little copying as the transport
allows: C{os.sendfile} on a plain TCP connection, large reads written through anything
else (TLS, COMPRESS=DEFLATE).

A body is sent as a list of byte ranges of one open file; the bytes on the wire are the
ranges in order. POP3's dot-stuffing is such a list too (L{dotRanges}): a range ends
just after the C{.} that starts a line and the next one starts at that C{.}, so the
dot goes out twice and nothing is copied to stuff it. IMAP literals are one range, so
the literal's length is the range's.

L{sendRanges} returns a Deferred that fires with True once every byte is handed to
the kernel (sendfile) or to the transport (the chunked path), with False when the
connection went away first (nothing more may be written for that reply then).

The Twisted internals this module relies on, and why; tests/test_sendbody.py pins
each of them, so a Twisted upgrade that changes one fails there first:

* a plain connection is a C{twisted.internet.tcp.Connection} without
  C{ISSLTransport} (STARTTLS adds it; implicit TLS and COMPRESS wrap the connection
  in another object), and C{fileno()} is its socket;
* a pull producer's C{resumeProducing} is called by C{registerProducer} at once, and
  afterwards only by C{FileDescriptor.doWrite} when the write buffer is empty; and
  C{startWriting()} (public on C{FileDescriptor}, though not part of C{ITransport})
  makes the reactor call C{doWrite} when the socket is writable -- with an empty
  buffer that only calls the producer again. So the sender writes to the socket
  itself only from a C{doWrite}-driven C{resumeProducing}, when nothing Twisted holds
  can be overtaken, and waits for a writable socket with C{startWriting()}. No
  private attribute is read.

Figures (bench/pop3_bench.py --min-size 65536 --repeat 5: RETR of the 480 messages of
64 to 256 KiB, on 2 shared cores at load 1.6 to 4): the server's CPU per message was
417 to 437 us with sendfile and 417 to 437 us with one read and one write, 240 to 300
MB/s both ways, bound by the Python client; the path is kept for what it saves besides
time -- no copy of the body in the server's memory, so a slow client holding a large
message costs no buffer. Bodies under L{SENDFILE_MIN} go in one read and one write with
their status line (three writes around a sendfile would cost more), and POP3 files
with many dot lines are stuffed in memory (L{dotStuffedPlan}).

Blocking: C{sendfile} reads the page cache in the reactor thread. The ranges come
from a file the disk pool has just read (the L{dotRanges} scan touches every page) or
asked the kernel to read ahead (L{willNeed}); a page evicted in between costs one
blocking read of it. The chunked path reads in the disk pool.
"""

from __future__ import annotations

import mmap
import os
from collections import deque
from typing import Any, BinaryIO

from twisted.internet import defer, interfaces, tcp
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="pymaild.sendbody")

SENDFILE_MIN = 65536
"""Bodies of at least this many octets go by sendfile (smaller ones: one read, one write)."""

MIN_RANGE = 16384
"""Average range length below which L{dotStuffedPlan} sends bytes, not file ranges."""

STUFF_LIMIT = 1 << 20
"""Largest file L{dotStuffedPlan} stuffs in memory in one piece."""

TURN_BYTES = 1 << 20
"""At most this many octets are sent by sendfile in one reactor turn (fairness)."""

CHUNK = 262144
"""Octets read (in the disk pool) per write on the chunked path."""

Ranges = list[tuple[int, int]]

_sendfile = os.sendfile
"""The system call (a name the tests can count calls through)."""


def plainSocket(transport: Any) -> bool:
    """Whether C{transport} is a TCP connection whose socket carries the bytes as they
    are (no TLS, no compression): then sendfile may write to it."""
    return isinstance(transport, tcp.Connection) and not interfaces.ISSLTransport.providedBy(
        transport)


def dotStuffedPlan(fd: int) -> tuple[Ranges | bytes | None, bool]:
    """How to send a whole CRLF message file dot-stuffed, and whether it ends with an
    LF (blocking: one scan through a memory map).

    The plan is L{dotRanges} when its ranges are long (on average at least
    L{MIN_RANGE} octets: each one is a sendfile call). A file with many dot lines
    costs less read and stuffed in memory: up to L{STUFF_LIMIT} octets the plan is
    the stuffed bytes themselves, beyond it None (stream it in chunks through a
    stuffer, so memory stays bounded).
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return [], True
    ranges = dotRanges(fd, 0, size)
    endsWithLF = os.pread(fd, 1, size - 1) == b"\n"
    if len(ranges) > 1 and size // len(ranges) < MIN_RANGE:
        if size > STUFF_LIMIT:
            return None, endsWithLF
        return CRLFStuffer().feed(os.pread(fd, size, 0)), endsWithLF
    return ranges, endsWithLF


def dotRanges(fd: int, start: int, end: int, atLineStart: bool = True) -> Ranges:
    """The ranges of C{fd}'s bytes C{start..end} that, sent in order, are those bytes
    dot-stuffed: every C{.} that starts a line goes out twice (blocking: it reads the
    range, through a memory map, with no copy).

    The file's line ends are CRLF (a name that promises it: C{S=} equal to C{W=}), so a
    line starts after each LF. C{atLineStart} says whether C{start} begins a line.
    """
    if end <= start:
        return []
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
        end = min(end, len(mm))
        out: Ranges = []
        pos = start
        if atLineStart and mm[start:start + 1] == b".":
            out.append((start, start + 1))
        while True:
            i = mm.find(b"\n.", pos, end)
            if i < 0:
                break
            out.append((pos, i + 2))
            pos = i + 1
        if pos < end:
            out.append((pos, end))
        return out


class CRLFStuffer:
    """Dot-stuffing of content whose line ends are CRLF (what the store's C{open} gives),
    fed in chunks of any size: the rule of L{dotRanges} (a line starts after an LF; a
    bare CR is an ordinary octet, so the reply's length is the size LIST gave), at the
    cost of one C{bytes.replace} per chunk."""

    def __init__(self) -> None:
        self.atLineStart = True

    def feed(self, data: bytes) -> bytes:
        """The wire form of the next chunk."""
        if not data:
            return b""
        out = data.replace(b"\n.", b"\n..")
        if self.atLineStart and data.startswith(b"."):
            out = b"." + out
        self.atLineStart = data.endswith(b"\n")
        return out

    def finish(self) -> bytes:
        """The end of the reply: a CRLF if the content did not end with one, then
        C{.CRLF}."""
        tail = b".\r\n" if self.atLineStart else b"\r\n.\r\n"
        self.atLineStart = True
        return tail


def willNeed(fd: int, start: int, end: int) -> None:
    """Ask the kernel to read C{fd}'s bytes C{start..end} into the page cache now, so a
    sendfile of them in the reactor thread finds them there."""
    if end > start and hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


def _readRanges(fp: BinaryIO, parts: Ranges) -> bytes:
    """The bytes of C{parts} of C{fp}, joined (blocking)."""
    out = []
    fd = _fd(fp)
    for a, b in parts:
        if fd is not None:
            out.append(os.pread(fd, b - a, a))
        else:
            fp.seek(a)
            out.append(fp.read(b - a))
    return b"".join(out)


def _fd(fp: Any) -> int | None:
    """The descriptor of a real file, or None (an in-memory file)."""
    try:
        return int(fp.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def sendRanges(transport: Any, fp: BinaryIO, ranges: Ranges, runner: Any,
               prefetch: bool = False) -> defer.Deferred[bool]:
    """Send the bytes of C{ranges} of C{fp} on C{transport}, in order, after what was
    written before; fires with True when all went, False when the connection went away.

    The caller must not have a producer registered on the transport (it is this
    sender's while it runs) and writes nothing until the Deferred fires. C{fp} stays
    the caller's to close; C{runner} is the disk pool the chunked path reads in. With
    C{prefetch}, the sendfile path first asks the kernel, from the disk pool, to read
    the ranges ahead (L{willNeed}); without, the caller has just read them.
    """
    total = sum(b - a for a, b in ranges)
    if total == 0:
        return defer.succeed(True)
    fd = _fd(fp)
    if fd is None or not plainSocket(transport):
        return _ChunkSender(transport, fp, ranges, runner).start()
    sender = _SendfileSender(transport, fd, ranges)
    if not prefetch:
        return sender.start()
    first, last = ranges[0][0], max(b for _, b in ranges)
    d = runner.run(willNeed, fd, first, last)
    return d.addCallback(lambda _: sender.start())


class _Sender:
    """What both senders share: the ranges left, the outcome, the unregistering."""

    def __init__(self, transport: Any, ranges: Ranges) -> None:
        self.transport = transport
        self.ranges = deque((a, b) for a, b in ranges if b > a)
        self.done: defer.Deferred[bool] = defer.Deferred()
        self.finished = False

    def finish(self, ok: bool) -> None:
        """Stop, give the transport back to the caller, report C{ok}."""
        if self.finished:
            return
        self.finished = True
        self.ranges.clear()
        try:
            self.transport.unregisterProducer()
        except Exception:  # noqa: BLE001 - the transport may already be gone
            pass
        self.done.callback(ok)

    def shrank(self) -> None:
        """The file is shorter than the ranges said: the reply's length is already
        promised, so the connection has to go."""
        log.error("message file shrank while it was being sent; closing the connection")
        self.finish(False)
        self.transport.loseConnection()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.finish(False)


@implementer(interfaces.IPullProducer)
class _SendfileSender(_Sender):
    """sendfile from the reactor thread, only while Twisted's write buffer is empty."""

    def __init__(self, transport: Any, fd: int, ranges: Ranges) -> None:
        super().__init__(transport, ranges)
        self.fd = fd
        self.armed = False

    def start(self) -> defer.Deferred[bool]:
        """Register; the first send waits for Twisted to flush what it holds."""
        self.transport.registerProducer(self, False)  # calls resumeProducing: ignored
        if not self.finished:
            self.armed = True
            self.transport.startWriting()
        return self.done

    def resumeProducing(self) -> None:
        """Twisted's buffer is empty (see the module docstring): send what the socket
        takes, up to L{TURN_BYTES}, then wait for it to be writable."""
        if self.finished or not self.armed:
            return
        sock = self.transport.fileno()
        budget = TURN_BYTES
        ranges = self.ranges
        while ranges and budget > 0:
            a, b = ranges[0]
            want = min(b - a, budget)
            try:
                n = _sendfile(sock, self.fd, a, want)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # The peer went away (EPIPE, ECONNRESET): Twisted sees it on its side.
                self.finish(False)
                self.transport.loseConnection()
                return
            if n == 0:
                self.shrank()
                return
            budget -= n
            if a + n >= b:
                ranges.popleft()
            else:
                ranges[0] = (a + n, b)
                if n < want:
                    break  # the socket buffer is full
        if not ranges:
            self.finish(True)
            return
        self.transport.startWriting()


@implementer(interfaces.IPushProducer)
class _ChunkSender(_Sender):
    """Reads of up to L{CHUNK} in the disk pool, each written through the transport
    (which encrypts or compresses it); one chunk read ahead while one is sent."""

    def __init__(self, transport: Any, fp: BinaryIO, ranges: Ranges, runner: Any) -> None:
        super().__init__(transport, ranges)
        self.fp = fp
        self.runner = runner
        self.paused = False
        self.reading = False
        self.ready: bytes | None = None

    def start(self) -> defer.Deferred[bool]:
        """Register as a streaming producer and read the first chunk."""
        self.transport.registerProducer(self, True)
        self._readAhead()
        return self.done

    def _take(self) -> tuple[Ranges, int]:
        """The next ranges totalling at most L{CHUNK} octets, and their size."""
        parts: Ranges = []
        size = 0
        ranges = self.ranges
        while ranges and size < CHUNK:
            a, b = ranges[0]
            n = min(b - a, CHUNK - size)
            parts.append((a, a + n))
            size += n
            if a + n >= b:
                ranges.popleft()
            else:
                ranges[0] = (a + n, b)
        return parts, size

    def _readAhead(self) -> None:
        """Start reading the next chunk unless one is read or waiting."""
        if self.finished or self.reading or self.ready is not None or not self.ranges:
            return
        parts, size = self._take()
        self.reading = True
        d = self.runner.run(_readRanges, self.fp, parts)
        d.addCallbacks(self._gotChunk, self._readFailed, callbackArgs=(size,))

    def _gotChunk(self, data: bytes, size: int) -> None:
        """A chunk was read: send it now, or when the transport drains."""
        self.reading = False
        if self.finished:
            return
        if len(data) != size:
            self.shrank()
            return
        self.ready = data
        self._deliver()

    def _readFailed(self, f: Any) -> None:
        """The file could not be read after the reply began: drop the connection."""
        self.reading = False
        if self.finished:
            return
        log.failure("reading a message file failed mid-reply", f)
        self.finish(False)
        self.transport.loseConnection()

    def _deliver(self) -> None:
        """Write the chunk read, if the transport takes it, and read on."""
        if self.finished or self.paused or self.ready is None:
            return
        data, self.ready = self.ready, None
        self.transport.write(data)
        if not self.ranges and not self.reading:
            self.finish(True)
            return
        self._readAhead()

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The transport drained."""
        self.paused = False
        self._deliver()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.finish(False)
