"""pymaild.sendbody: the Twisted behaviour it relies on (pinned, so an upgrade that
changes it fails here), the dot-stuffing ranges, and message bodies over real sockets
-- POP3 RETR/TOP and IMAP FETCH BODY[] on plain TCP (sendfile), STLS/STARTTLS and
implicit TLS, from CRLF files and from LF files another MTA left, with dot lines,
large messages, a client that reads slowly and one that leaves mid-message.
"""

from __future__ import annotations

import os
import random
import re
import socket
import ssl
import time
from typing import Any

from twisted.internet import defer, interfaces, protocol, reactor, task, tcp, threads
from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from pymaild import sendbody, tls
from pymaild.sendbody import CRLFStuffer, dotRanges, plainSocket
from pymaild.store.writing import escapeHostname, uniqueName
from pymaild.wire import DotStuffer
from tests.test_imap_clients import ClientServer
from tests.test_pop3_helpers import ALICE, ALICE_PW, LoopbackServer, makeMessage

HOST = "127.0.0.1"


def bufferedBytes(transport: Any) -> int:
    """Octets Twisted holds for a connection (its write buffers, TLS's included)."""
    total = 0
    if isinstance(transport, TLSMemoryBIOProtocol):
        total += sum(len(b) for b in transport._appSendBuffer)
        transport = transport.transport
    return total + len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def stuffed(data: bytes) -> bytes:
    """The POP3 wire form of CRLF content: dots doubled at line starts, terminator."""
    s = CRLFStuffer()
    return s.feed(data) + s.finish()


def crlfBody(size: int, rng: random.Random, dotEvery: int = 40) -> bytes:
    """About C{size} octets of CRLF lines, some starting with a dot (and a few lines
    that are only a dot)."""
    lines = []
    total = 0
    while total < size:
        r = rng.randrange(dotEvery)
        if r == 0:
            line = b".\r\n"
        elif r == 1:
            line = b"..two dots\r\n"
        elif r == 2:
            line = b".dotted line " + b"d" * rng.randrange(60) + b"\r\n"
        else:
            line = b"x" * rng.randrange(1, 78) + b"\r\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)


def putForeign(root: str, lfData: bytes) -> None:
    """Put a message into a Maildir's new/ as another MTA does: LF line ends, a name
    with C{S=} (the file's size) and no C{W=}."""
    name = f"{uniqueName(escapeHostname('other.example'))},S={len(lfData)}"
    with open(os.path.join(root, "new", name), "wb") as f:
        f.write(lfData)


def countSendfile(testcase: Any) -> list[int]:
    """The octets each sendfile call of pymaild.sendbody sent during C{testcase}."""
    sent: list[int] = []
    real = sendbody._sendfile

    def counting(out: int, fd: int, offset: int, count: int) -> int:
        n = real(out, fd, offset, count)
        sent.append(n)
        return n

    testcase.patch(sendbody, "_sendfile", counting)
    return sent


def openFilesUnder(path: str) -> int:
    """How many of this process's descriptors are open message files (in C{cur/} or
    C{new/}) of the Maildir at C{path}."""
    n = 0
    dirs = (os.path.join(path, "cur") + "/", os.path.join(path, "new") + "/")
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(dirs):
                n += 1
        except OSError:
            pass
    return n


def watchBuffers(testcase: Any, protocols: Any) -> list[int]:
    """Every 5 ms until the test ends, note the most octets Twisted held for any
    connection of C{protocols()}; returns a one-item list holding that peak."""
    peak = [0]

    def watch() -> None:
        for p in protocols():
            if not p._lost and p.transport is not None:
                peak[0] = max(peak[0], bufferedBytes(p.transport))

    loop = task.LoopingCall(watch)
    loop.start(0.005)
    testcase.addCleanup(lambda: loop.running and loop.stop())
    return peak


@defer.inlineCallbacks
def filesClosed(testcase: Any, root: str) -> Any:
    """Wait (up to 4 s) until the server has no message file of C{root} open; fail the
    test if one stays open."""
    for _ in range(200):
        if not openFilesUnder(root):
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    testcase.assertEqual(openFilesUnder(root), 0)


# -- the Twisted behaviour sendbody relies on ----------------------------------------


@implementer(interfaces.IPullProducer)
class _CountingPull:
    """A pull producer that records, at each call, what Twisted still buffered."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.calls: list[int] = []
        self.waiter: defer.Deferred[None] | None = None

    def resumeProducing(self) -> None:
        """Record the buffered octets."""
        self.calls.append(bufferedBytes(self.transport))
        w, self.waiter = self.waiter, None
        if w is not None:
            w.callback(None)

    def stopProducing(self) -> None:
        """Nothing to release."""


class _Keep(protocol.Protocol):
    """Server side: hands its connection to the test."""

    def connectionMade(self) -> None:
        """Tell the factory."""
        self.factory.made.callback(self)  # type: ignore[attr-defined]


class PinnedTwistedTests(TestCase):
    """What the module docstring of pymaild.sendbody says of Twisted, checked on real
    connections."""

    timeout = 30

    @defer.inlineCallbacks
    def connection(self) -> Any:
        """A server-side protocol of a real loopback connection, and the client socket."""
        f = protocol.Factory()
        f.protocol = _Keep
        f.made = defer.Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, f, interface=HOST)
        self.addCleanup(port.stopListening)
        sock = yield threads.deferToThread(
            socket.create_connection, (HOST, port.getHost().port), 10)
        self.addCleanup(sock.close)
        proto = yield f.made
        self.addCleanup(proto.transport.abortConnection)
        return proto, sock

    @defer.inlineCallbacks
    def test_plainTransportAndStartTLS(self) -> Any:
        """A plain connection is a tcp.Connection with a socket fileno and no
        ISSLTransport; STARTTLS adds ISSLTransport, so it is no longer plain."""
        proto, _sock = yield self.connection()
        t = proto.transport
        self.assertIsInstance(t, tcp.Connection)
        self.assertEqual(t.fileno(), t.getHandle().fileno())
        self.assertTrue(plainSocket(t))
        base = self.mktemp()
        os.makedirs(base)
        cert, key = os.path.join(base, "c.pem"), os.path.join(base, "k.pem")
        tls.ensureSelfSigned(cert, key, ["localhost"])
        t.startTLS(tls.serverContext(cert, key))
        self.assertTrue(interfaces.ISSLTransport.providedBy(t))
        self.assertFalse(plainSocket(t))
        self.assertFalse(plainSocket(TLSMemoryBIOProtocol(TLSMemoryBIOFactory(
            tls.serverContext(cert, key), False, protocol.Factory()), protocol.Protocol())))

    @defer.inlineCallbacks
    def test_pullProducerContract(self) -> Any:
        """registerProducer calls a pull producer at once; afterwards doWrite calls it
        only once the buffer is empty, and startWriting() with an empty buffer brings
        that call; startWriting is public on FileDescriptor."""
        self.assertFalse(FileDescriptor.startWriting.__name__.startswith("_"))
        proto, sock = yield self.connection()
        t = proto.transport
        t.write(b"a" * 1000)
        p = _CountingPull(t)
        t.registerProducer(p, False)
        self.assertEqual(p.calls, [1000])  # at once, with the buffer still full
        p.waiter = defer.Deferred()
        yield p.waiter
        self.assertEqual(p.calls[1:], [0])  # the buffer drained
        p.waiter = defer.Deferred()
        t.startWriting()
        yield p.waiter
        self.assertEqual(p.calls[2:], [0])
        # A large write: the next call comes only after all of it left Twisted.
        sock.setblocking(True)
        reader = threads.deferToThread(lambda: _readN(sock, 1000 + (4 << 20)))
        p.waiter = defer.Deferred()
        t.write(b"b" * (4 << 20))
        yield p.waiter
        self.assertEqual(p.calls[3:], [0])
        t.unregisterProducer()
        got = yield reader
        self.assertEqual(len(got), 1000 + (4 << 20))


def _readN(sock: socket.socket, n: int) -> bytes:
    """Read exactly C{n} octets (blocking)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


# -- the ranges ------------------------------------------------------------------------


class DotRangesTests(SynchronousTestCase):
    """dotRanges and CRLFStuffer give POP3's dot-stuffed form of CRLF content."""

    def check(self, data: bytes) -> None:
        """The ranges of a file holding C{data}, whole and from offsets, and the
        stuffer fed in random chunks, all give the stuffed form."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        want = CRLFStuffer().feed(data)
        if b"\r" not in data.replace(b"\r\n", b""):
            self.assertEqual(want, DotStuffer().feed(data))  # as before, without bare CR
        fd = os.open(path, os.O_RDONLY)
        try:
            got = b"".join(data[a:b] for a, b in dotRanges(fd, 0, len(data)))
            self.assertEqual(got, want)
            rng = random.Random(len(data))
            for _ in range(5):
                cut = rng.randrange(len(data) + 1) if data else 0
                head = b"".join(data[a:b] for a, b in dotRanges(fd, 0, cut))
                tail = b"".join(data[a:b] for a, b in dotRanges(
                    fd, cut, len(data), atLineStart=cut == 0 or data[cut - 1:cut] == b"\n"))
                self.assertEqual(head + tail, want)
        finally:
            os.close(fd)
        s = CRLFStuffer()
        rng = random.Random(7)
        pos, parts = 0, []
        while pos < len(data):
            n = rng.randrange(1, 50)
            parts.append(s.feed(data[pos:pos + n]))
            pos += n
        self.assertEqual(b"".join(parts), want)

    def test_shapes(self) -> None:
        """Dots at the start, at the end, consecutive, a last line without CRLF, a bare
        CR before a dot (not a line start), empty content."""
        for data in (b"", b".", b".\r\n", b"..\r\n.\r\n", b"a\r\n.", b"a\r\n.b\r\n..\r\n",
                     b"x\r.y\r\n", b"no dots at all\r\n", b"\r\n\r\n.\r\n\r\n"):
            self.check(data)

    def test_random(self) -> None:
        """Random CRLF bodies with many dot lines."""
        rng = random.Random(1939)
        for size in (10, 1000, 70000, 300000):
            self.check(crlfBody(size, rng, dotEvery=6))

    def test_finish(self) -> None:
        """The terminator adds a CRLF only when the content did not end with one."""
        self.assertEqual(stuffed(b""), b".\r\n")
        self.assertEqual(stuffed(b"a\r\n"), b"a\r\n.\r\n")
        self.assertEqual(stuffed(b"a"), b"a\r\n.\r\n")


# -- POP3 over real sockets ------------------------------------------------------------


class RawPOP3:
    """A blocking POP3 client that keeps the exact wire bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def fill(self, size: int = 1 << 16) -> None:
        """Read more."""
        chunk = self.sock.recv(size)
        if not chunk:
            raise ConnectionError("closed")
        self.buf += chunk

    def line(self) -> bytes:
        """One line, CRLF included."""
        while b"\r\n" not in self.buf:
            self.fill()
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def abandon(self, request: bytes, after: int) -> None:
        """Send C{request}, read C{after} octets of the answer, then reset the
        connection (a client that goes away mid-reply)."""
        self.sock.sendall(request + b"\r\n")
        while len(self.buf) < after:
            self.fill()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.sock.close()

    def cmd(self, text: bytes) -> bytes:
        """A command and its one-line reply."""
        self.sock.sendall(text + b"\r\n")
        return self.line()

    def multi(self, text: bytes) -> bytes:
        """A command and its whole multi-line reply, status line and terminator too."""
        self.sock.sendall(text + b"\r\n")
        status = self.line()
        start = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                end = 3
                break
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                end = i + 5
                break
            start = max(0, len(self.buf) - 4)
            self.fill()
        out, self.buf = self.buf[:end], self.buf[end:]
        return status + out

    def login(self) -> None:
        """Greeting, USER, PASS."""
        assert self.line().startswith(b"+OK")
        assert self.cmd(b"USER " + ALICE.encode()).startswith(b"+OK")
        assert self.cmd(b"PASS " + ALICE_PW.encode()).startswith(b"+OK")


def clientContext() -> ssl.SSLContext:
    """A client TLS context that accepts the test's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class POP3SendTests(TestCase):
    """RETR and TOP byte-exact on every kind of connection, sendfile on plain TCP."""

    timeout = 120

    def setUp(self) -> None:
        """A POP3/POP3S server; alice's mailbox holds, in this order: a small CRLF
        message with dots, a 300 KB CRLF one with a few dot lines (at 64 KiB edges
        among them), a 200 KB CRLF one with many, a big LF file from another MTA, a
        small LF one; sendfile calls are counted."""
        self.server = LoopbackServer(self)
        rng = random.Random(110)
        small = makeMessage("small", b".leading\r\nmid\r\n..\r\n.\r\nend\r\n")
        big = bytearray(makeMessage("big", b""))
        for edge in (65536, 131072):
            big += b"y" * (edge - len(big) - 2) + b"\r\n"
            big += b".edge\r\n"
        big += crlfBody(300000 - len(big), rng, dotEvery=2000)
        dotty = makeMessage("dotty", crlfBody(200000, rng, dotEvery=6))
        self.crlf = [small, bytes(big), dotty]
        self.server.deliver(*self.crlf)
        root = self.server.store.account(ALICE).root
        lfBig = crlfBody(400000, rng).replace(b"\r\n", b"\n")
        lfSmall = b"Subject: lf\n\n.dot\nlast line without end"
        time.sleep(0.01)
        putForeign(root, b"Subject: lf big\n\n" + lfBig)
        time.sleep(0.01)
        putForeign(root, lfSmall)
        crlfOf = lambda d: d.replace(b"\n", b"\r\n")  # noqa: E731
        self.messages = self.crlf + [crlfOf(b"Subject: lf big\n\n" + lfBig), crlfOf(lfSmall)]
        self.sendfiles = countSendfile(self)

    def connect(self, kind: str) -> RawPOP3:
        """A logged-in client: C{plain}, C{stls} or C{pop3s} (blocking)."""
        port = self.server.sport if kind == "pop3s" else self.server.port
        sock = socket.create_connection((HOST, port), timeout=60)
        if kind == "pop3s":
            sock = clientContext().wrap_socket(sock)
        c = RawPOP3(sock)
        if kind == "stls":
            assert c.line().startswith(b"+OK")
            assert c.cmd(b"STLS").startswith(b"+OK")
            c = RawPOP3(clientContext().wrap_socket(sock))
            assert c.cmd(b"USER " + ALICE.encode()).startswith(b"+OK")
            assert c.cmd(b"PASS " + ALICE_PW.encode()).startswith(b"+OK")
        else:
            c.login()
        return c

    @defer.inlineCallbacks
    def exact(self, kind: str) -> Any:
        """Every message by RETR and by TOP, compared octet for octet."""
        def client() -> dict[str, Any]:
            c = self.connect(kind)
            out = {"list": c.multi(b"LIST")}
            out["retr"] = [c.multi(b"RETR %d" % i) for i in range(1, 6)]
            out["top"] = [c.multi(b"TOP %d 3" % i) for i in range(1, 6)]
            out["quit"] = c.cmd(b"QUIT")
            c.sock.close()
            return out

        out = yield threads.deferToThread(client)
        sizes = [int(x) for x in re.findall(rb"^\d+ (\d+)\r$", out["list"], re.M)]
        self.assertEqual(sizes, [len(m) for m in self.messages])
        for i, m in enumerate(self.messages):
            self.assertEqual(out["retr"][i], b"+OK %d octets\r\n" % len(m) + stuffed(m))
            head, _, body = m.partition(b"\r\n\r\n")
            top = head + b"\r\n\r\n" + b"".join(body.splitlines(True)[:3])
            self.assertEqual(out["top"][i], b"+OK Top of message follows.\r\n" + stuffed(top))
        self.assertTrue(out["quit"].startswith(b"+OK"))
        return out

    @defer.inlineCallbacks
    def test_plain(self) -> Any:
        """Plain TCP: exact replies; the large CRLF file with few dot lines went by
        sendfile (and only it: small ones are one write, one with many dot lines is
        stuffed in memory, LF files are converted, TOP filters)."""
        yield self.exact("plain")
        self.assertGreater(len(self.sendfiles), 0)
        self.assertEqual(sum(self.sendfiles), len(stuffed(self.crlf[1])) - 3)

    @defer.inlineCallbacks
    def test_stls(self) -> Any:
        """After STLS: exact replies, no sendfile."""
        yield self.exact("stls")
        self.assertEqual(self.sendfiles, [])

    @defer.inlineCallbacks
    def test_pop3s(self) -> Any:
        """Implicit TLS: exact replies, no sendfile."""
        yield self.exact("pop3s")
        self.assertEqual(self.sendfiles, [])

    @defer.inlineCallbacks
    def slowReader(self, kind: str, dotEvery: int = 100000) -> Any:
        """An 8 MB message read 16 KiB at a time with pauses: it arrives whole while
        Twisted never holds more than a bounded part of it."""
        body = crlfBody(8 << 20, random.Random(8), dotEvery=dotEvery)
        message = makeMessage("huge", body)
        self.server.deliver(message)
        peak = watchBuffers(
            self, lambda: self.server.factory.protocols + self.server.sfactory.protocols)

        def client() -> bytes:
            c = self.connect(kind)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            c.sock.sendall(b"RETR 6\r\n")
            deadline = time.monotonic() + 60
            while not c.buf.endswith(b"\r\n.\r\n") and time.monotonic() < deadline:
                c.fill(16384)
                if len(c.buf) % 7 == 0:
                    time.sleep(0.001)
            c.sock.close()
            return c.buf

        got = yield threads.deferToThread(client)
        self.assertEqual(got, b"+OK %d octets\r\n" % len(message) + stuffed(message))
        self.assertLess(peak[0], 2 << 20)

    def test_slowReaderPlain(self) -> Any:
        """Slow reader on plain TCP (sendfile)."""
        d = self.slowReader("plain")
        return d.addCallback(lambda _: self.assertGreater(len(self.sendfiles), 10))

    def test_slowReaderPlainManyDots(self) -> Any:
        """Slow reader on plain TCP of a file with many dot lines (streamed in chunks
        through the stuffer, not stuffed whole in memory)."""
        d = self.slowReader("plain", dotEvery=6)
        return d.addCallback(lambda _: self.assertEqual(self.sendfiles, []))

    def test_slowReaderTLS(self) -> Any:
        """Slow reader over implicit TLS."""
        return self.slowReader("pop3s")

    @defer.inlineCallbacks
    def leaves(self, kind: str) -> Any:
        """A client that reads 200 KB of an 8 MB RETR and closes: the session ends,
        its file is closed, the mailbox can be opened again and nothing is logged."""
        self.server.deliver(makeMessage("huge", crlfBody(8 << 20, random.Random(9),
                                                         dotEvery=100000)))
        root = self.server.store.account(ALICE).root

        yield threads.deferToThread(lambda: self.connect(kind).abandon(b"RETR 6", 200000))
        yield defer.DeferredList(self.server.factory.lost + self.server.sfactory.lost)
        yield filesClosed(self, root)

        def again() -> bytes:
            c = self.connect(kind)
            out = c.cmd(b"STAT")
            c.cmd(b"QUIT")
            c.sock.close()
            return out

        stat = yield threads.deferToThread(again)
        self.assertTrue(stat.startswith(b"+OK 6 "), stat)

    def test_leavesPlain(self) -> Any:
        """Leaving mid-RETR on plain TCP."""
        return self.leaves("plain")

    def test_leavesTLS(self) -> Any:
        """Leaving mid-RETR over implicit TLS."""
        return self.leaves("pop3s")


# -- IMAP over real sockets ------------------------------------------------------------


class RawIMAP(RawPOP3):
    """A blocking IMAP client that reads FETCH literals by their length."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.n = 0

    def line(self) -> bytes:
        """One line without CRLF."""
        return super().line()[:-2]

    def command(self, text: bytes) -> tuple[list[bytes], list[bytes]]:
        """Send a command; (response lines, literals in order) up to its tagged reply."""
        self.n += 1
        tag = b"t%d" % self.n
        self.sock.sendall(tag + b" " + text + b"\r\n")
        lines, literals = [], []
        while True:
            line = self.line()
            lines.append(line)
            m = re.search(rb"\{(\d+)\}$", line)
            if m:
                n = int(m.group(1))
                while len(self.buf) < n:
                    self.fill()
                literals.append(self.buf[:n])
                self.buf = self.buf[n:]
                continue
            if line.startswith(tag + b" "):
                return lines, literals


class IMAPSendTests(TestCase):
    """FETCH BODY[], BODY.PEEK[] and BODY[]<partial> of large bodies, exact, on plain
    TCP (sendfile) and implicit TLS, from CRLF files and LF files."""

    timeout = 120

    def setUp(self) -> None:
        """A server with a 1.2 MB CRLF message and a 900 KB LF file from another MTA."""
        self.srv = ClientServer(self)
        rng = random.Random(3501)
        crlf = makeMessage("big", crlfBody(1200000, rng))
        self.srv.store.deliver([ALICE], crlf)
        lf = b"Subject: lf\n\n" + crlfBody(900000, rng).replace(b"\r\n", b"\n")
        time.sleep(0.01)
        putForeign(self.srv.store.account(ALICE).root, lf)
        self.messages = [crlf, lf.replace(b"\n", b"\r\n")]
        self.sendfiles = countSendfile(self)

    def connect(self, implicitTLS: bool) -> RawIMAP:
        """A logged-in client with INBOX selected (blocking)."""
        port = self.srv.portNumber
        sock = socket.create_connection((HOST, port), timeout=60)
        if implicitTLS:
            sock = self.srv.sslContext().wrap_socket(sock, server_hostname="localhost")
        c = RawIMAP(sock)
        c.line()
        c.command(b'LOGIN %s "%s"' % (ALICE.encode(), ALICE_PW.encode()))
        assert c.command(b"SELECT INBOX")[0][-1].endswith(b"OK [READ-WRITE] Select completed")
        return c

    def tlsPort(self) -> None:
        """Make the server's port speak TLS from the first byte (as imaps does)."""
        factory = self.srv.port.factory
        factory.implicitTLS = True
        port = reactor.listenTCP(0, TLSMemoryBIOFactory(factory.tlsContext, False, factory),
                                 interface=HOST)
        self.addCleanup(port.stopListening)
        self.srv.portNumber = port.getHost().port

    @defer.inlineCallbacks
    def exact(self, implicitTLS: bool) -> Any:
        """Each message whole (PEEK and not), and two partial ranges."""
        def client() -> list[Any]:
            c = self.connect(implicitTLS)
            out = [c.command(b"FETCH 1:2 BODY.PEEK[]"),
                   c.command(b"FETCH 1:2 BODY[]<1000.500000>"),
                   c.command(b"FETCH 2 BODY[]<899990.100>"),
                   c.command(b"FETCH 1 BODY[]")]
            c.command(b"LOGOUT")
            c.sock.close()
            return out

        out = yield threads.deferToThread(client)
        (l1, whole), (l2, parts), (l3, tail), (l4, again) = out
        self.assertEqual(whole, self.messages)
        self.assertEqual(parts, [m[1000:501000] for m in self.messages])
        self.assertEqual(tail, [self.messages[1][899990:900090]])
        self.assertEqual(again, self.messages[:1])
        for lines in (l1, l2, l3, l4):
            self.assertIn(b" OK ", lines[-1])
        self.assertIn(b"BODY[]<1000> {500000}", b"\n".join(l2))

    @defer.inlineCallbacks
    def test_plain(self) -> Any:
        """Plain TCP: exact literals; the CRLF file's ranges went by sendfile."""
        yield self.exact(False)
        # BODY.PEEK[], <1000.500000> and BODY[] of the CRLF message, none of the LF one.
        self.assertEqual(sum(self.sendfiles), 2 * len(self.messages[0]) + 500000)

    @defer.inlineCallbacks
    def test_implicitTLS(self) -> Any:
        """Implicit TLS: exact literals, no sendfile."""
        self.tlsPort()
        yield self.exact(True)
        self.assertEqual(self.sendfiles, [])

    @defer.inlineCallbacks
    def slowReader(self, implicitTLS: bool) -> Any:
        """An 8 MB message fetched by a client reading 16 KiB at a time: the literal
        arrives exact while Twisted never holds more than a bounded part of it."""
        message = makeMessage("huge", crlfBody(8 << 20, random.Random(12)))
        self.srv.store.deliver([ALICE], message)
        if implicitTLS:
            self.tlsPort()
        built: list[Any] = []
        factory = self.srv.port.factory
        original = factory.buildProtocol

        def recording(addr: Any) -> Any:
            p = original(addr)
            built.append(p)
            return p

        self.patch(factory, "buildProtocol", recording)
        peak = watchBuffers(self, lambda: built)

        def client() -> bytes:
            c = self.connect(implicitTLS)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            c.sock.sendall(b"t9 FETCH 3 BODY.PEEK[]\r\n")
            head = c.line()
            n = int(head.rsplit(b"{", 1)[1].rstrip(b"}"))
            while len(c.buf) < n:
                c.fill(16384)
                if len(c.buf) % 5 == 0:
                    time.sleep(0.001)
            body = c.buf[:n]
            c.buf = c.buf[n:]
            assert c.line() == b")"
            assert c.line().startswith(b"t9 OK")
            c.sock.close()
            return body

        got = yield threads.deferToThread(client)
        self.assertEqual(got, message)
        self.assertLess(peak[0], 2 << 20)
        self.hugeSize = len(message)

    @defer.inlineCallbacks
    def test_slowReaderPlain(self) -> Any:
        """Slow reader on plain TCP: the whole literal went by sendfile."""
        yield self.slowReader(False)
        self.assertEqual(sum(self.sendfiles), self.hugeSize)

    def test_slowReaderTLS(self) -> Any:
        """Slow reader over implicit TLS (reads of 256 KB in the disk pool)."""
        return self.slowReader(True)

    @defer.inlineCallbacks
    def test_leavesMidFetch(self) -> Any:
        """A client that closes 100 KB into a large FETCH: the server lets the session
        go and closes the message file; a new session works."""
        root = self.srv.store.account(ALICE).root

        def client() -> None:
            c = self.connect(False)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            c.abandon(b"t9 FETCH 1:2 BODY.PEEK[]", 100000)

        yield threads.deferToThread(client)
        yield filesClosed(self, root)

        def again() -> list[bytes]:
            c = self.connect(False)
            lines, lits = c.command(b"FETCH 1 BODY.PEEK[]<0.10>")
            c.sock.close()
            return lits

        lits = yield threads.deferToThread(again)
        self.assertEqual(lits, [self.messages[0][:10]])
