"""COMPRESS=DEFLATE (RFC 4978): at the wire level (a DEFLATE client over a
StringTransport, through the connection limiter's trickle guard as the tap builds it)
and over real sockets after STARTTLS and on an implicit-TLS listener."""

from __future__ import annotations

import os
import socket
import zlib
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild import limits
from pymaild.imap import framing
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, IMAPEnv, Wire, makeMessage


class Deflater:
    """The client side of COMPRESS over a L{Wire}: deflates what it sends, inflates
    what the server wrote (each response must inflate whole: the sync flush)."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.counter = 0

    def pack(self, data: bytes) -> bytes:
        """C{data} deflated and sync-flushed."""
        return self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH)

    def unpack(self, data: bytes) -> bytes:
        """The server's compressed output inflated."""
        return self.inflate.decompress(data)

    def send(self, data: bytes) -> bytes:
        """Send C{data} compressed; the server's answer inflated."""
        return self.unpack(self.wire.send(self.pack(data)))

    def cmd(self, line: str) -> bytes:
        """One tagged command (tags c1, c2...), compressed; the inflated answer."""
        self.counter += 1
        self.lastTag = b"c%d" % self.counter
        return self.send(self.lastTag + b" " + line.encode() + b"\r\n")


def startCompress(c: Wire) -> Deflater:
    """Send COMPRESS DEFLATE and check the plain tagged OK."""
    out = c.cmd("COMPRESS DEFLATE")
    assert out == c.lastTag + b" OK DEFLATE active\r\n", out
    return Deflater(c)


class WireTests(SynchronousTestCase):
    """COMPRESS DEFLATE over a StringTransport."""

    def test_rfcExample(self) -> None:
        """RFC 4978 section 3's example: after the tagged OK both directions are
        DEFLATE; SELECT, FETCH of a body, STORE and LOGOUT work, each response
        complete in what the server wrote for it (a sync flush per response)."""
        env = IMAPEnv(self)
        body = os.urandom(3000).hex().encode() + b"\r\n"
        env.deliver(makeMessage("one", body))
        c = env.login()
        self.assertIn(b"COMPRESS=DEFLATE", c.cmd("CAPABILITY"))
        d = startCompress(c)
        out = d.cmd("SELECT INBOX")
        self.assertIn(b"* 1 EXISTS\r\n", out)
        self.assertTrue(out.endswith(b"c1 OK [READ-WRITE] Select completed\r\n"), out)
        out = d.cmd("FETCH 1 (BODY[TEXT])")
        self.assertIn(b"{%d}\r\n" % len(body) + body, out)
        self.assertTrue(out.endswith(b"c2 OK Fetch completed\r\n"))
        self.assertIn(b"c3 OK", d.cmd("STORE 1 +FLAGS (\\Flagged)"))
        self.assertIn(b"COMPRESS=DEFLATE", d.cmd("CAPABILITY"))
        out = d.cmd("LOGOUT")
        self.assertEqual(out, b"* BYE Logging out\r\nc5 OK Logout completed\r\n")
        self.assertTrue(c.transport.disconnecting)

    def test_notAdvertisedBeforeLogin(self) -> None:
        """Before login COMPRESS is neither advertised nor accepted."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        self.assertNotIn(b"COMPRESS", c.cmd("CAPABILITY"))
        self.assertTrue(c.cmd("COMPRESS DEFLATE").startswith(c.lastTag + b" BAD Log in first"))
        self.assertIn(b" OK ", c.cmd("NOOP"))

    def test_pipelinedBehindCommand(self) -> None:
        """Compressed commands sent right behind COMPRESS (in the same packet) are the
        start of the compressed stream."""
        env = IMAPEnv(self)
        c = env.login()
        d = Deflater(c)
        out = c.send(b"a COMPRESS DEFLATE\r\n" + d.pack(b"b NOOP\r\nc SELECT INBOX\r\n"))
        plain, _, rest = out.partition(b"\r\n")
        self.assertEqual(plain, b"a OK DEFLATE active")
        text = d.unpack(rest)
        self.assertIn(b"b OK NOOP completed\r\n", text)
        self.assertIn(b"c OK [READ-WRITE]", text)

    def test_twiceAndBadArguments(self) -> None:
        """COMPRESS when active is C{NO [COMPRESSIONACTIVE]}, whatever the mechanism; an
        unknown mechanism, a
        missing or an extra argument is BAD (uncompressed, before it is active); the
        session stays in sync both ways."""
        env = IMAPEnv(self)
        c = env.login()
        for bad in ("COMPRESS", "COMPRESS GZIP", "COMPRESS DEFLATE now", "COMPRESS (DEFLATE)"):
            out = c.cmd(bad)
            self.assertTrue(out.startswith(c.lastTag + b" BAD "), (bad, out))
            self.assertIn(b" OK ", c.cmd("NOOP"))
        d = startCompress(c)
        out = d.cmd("COMPRESS DEFLATE")
        self.assertTrue(out.startswith(b"c1 NO [COMPRESSIONACTIVE]"), out)
        self.assertIn(b"c2 NO [COMPRESSIONACTIVE]", d.cmd("COMPRESS FOO"))
        self.assertIn(b"c3 OK NOOP completed", d.cmd("NOOP"))

    def test_garbageClosesCleanly(self) -> None:
        """Input that is not DEFLATE gets C{* BYE} (compressed, as the client's decoder
        expects) and the connection closes, logging no failure; later input is
        ignored."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        env = IMAPEnv(self)
        c = env.selected()
        d = startCompress(c)
        self.assertIn(b"c1 OK", d.cmd("NOOP"))
        out = c.send(b"\xff\xfe garbage that is not deflate \x00\x01")
        self.assertEqual(d.unpack(out), b"* BYE Invalid compressed data\r\n")
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(c.send(d.pack(b"x NOOP\r\n")), b"")
        self.assertEqual([e for e in events if e.get("log_level") in
                          (LogLevel.error, LogLevel.critical) or "log_failure" in e], [])

    def test_streamEndThenData(self) -> None:
        """A client that ends its DEFLATE stream and sends more is closed the same way."""
        env = IMAPEnv(self)
        c = env.login()
        d = startCompress(c)
        self.assertIn(b"c1 OK", d.cmd("NOOP"))
        out = c.send(d.out.compress(b"x NOOP\r\n") + d.out.flush(zlib.Z_FINISH) + b"more")
        self.assertIn(b"* BYE Invalid compressed data\r\n", d.unpack(out))
        self.assertTrue(c.transport.disconnecting)

    def test_inflationBomb(self) -> None:
        """64 MiB of one line inflated from about 64 KiB of input is handled a bounded
        step at a time: BAD for the line, the next command answered, and the input
        buffer never holds more than a step beyond the line limit."""
        env = IMAPEnv(self)
        c = env.login()
        d = startCompress(c)
        peak = [0]
        proto = c.proto
        original = proto._pumpBuffered

        def watched() -> None:
            peak[0] = max(peak[0], len(proto._inbuf))
            original()

        proto._pumpBuffered = watched  # type: ignore[method-assign]
        bomb = d.out.compress(b"x" * (64 << 20))
        packed = bomb + d.pack(b"\r\nb NOOP\r\n")
        self.assertLess(len(packed), 200000)
        out = d.unpack(c.send(packed))
        self.assertIn(b"* BAD Line too long\r\n", out)
        self.assertIn(b"b OK NOOP completed\r\n", out)
        self.assertLessEqual(peak[0], framing.MAX_LINE + 2 * 65536)


class TrickleGuardTests(SynchronousTestCase):
    """The connection limiter's trickle guard watches the inflated lines once
    COMPRESS is active (the compressed bytes rarely hold an LF)."""

    def connect(self, env: IMAPEnv) -> tuple[Wire, Any]:
        """A connection through a L{limits.LimitedFactory} as the tap builds it."""
        factory = limits.LimitedFactory(env.factory, limits.ConnectionLimits(),
                                        limits.IMAP_REFUSAL, env.clock, lineDeadline=120)
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 143))
        proto.makeConnection(transport)
        wire = Wire(proto, transport)
        self.addCleanup(lambda: proto.connectionLost(None) if not proto._lost else None)
        wire.take()
        wire.cmd(f'LOGIN {ALICE} "{ALICE_PW}"')
        return wire, proto

    def test_idleSurvives(self) -> None:
        """An IDLE of 20 minutes over COMPRESS is not taken for a trickling line, though
        no compressed byte of it is an LF; DONE ends it."""
        env = IMAPEnv(self)
        c, _ = self.connect(env)
        d = startCompress(c)
        packed = d.pack(b"c1 IDLE\r\n")
        self.assertNotIn(b"\n", packed)  # else this test would prove nothing
        self.assertIn(b"+ idling", d.unpack(c.send(packed)))
        for _ in range(20):
            env.clock.advance(60)
        self.assertFalse(c.transport.disconnecting)
        self.assertIn(b"c1 OK IDLE terminated", d.unpack(c.send(d.pack(b"DONE\r\n"))))

    def test_tricklingStillCaught(self) -> None:
        """A partial inflated line older than the deadline still closes the connection."""
        env = IMAPEnv(self)
        c, _ = self.connect(env)
        d = startCompress(c)
        c.send(d.pack(b"c1 NOO"))
        env.clock.advance(121)
        self.assertTrue(c.transport.disconnecting)


class SocketClient:
    """A blocking IMAP client over a (TLS) socket that can switch to COMPRESS."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deflate: Any = None
        self.inflate: Any = None
        self.buf = b""
        self.counter = 0

    def sendRaw(self, data: bytes) -> None:
        """Send bytes (compressed when active)."""
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def readLine(self) -> bytes:
        """One line from the server (inflated when active)."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed: " + repr(self.buf))
            self.buf += self.inflate.decompress(chunk) if self.inflate else chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def command(self, text: bytes) -> list[bytes]:
        """Send a tagged command; the lines up to its tagged response."""
        self.counter += 1
        tag = b"s%d" % self.counter
        self.sendRaw(tag + b" " + text + b"\r\n")
        lines = []
        while True:
            line = self.readLine()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def compress(self) -> None:
        """COMPRESS DEFLATE, then switch both directions."""
        lines = self.command(b"COMPRESS DEFLATE")
        assert lines[-1].endswith(b"OK DEFLATE active"), lines
        assert not self.buf
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)


def session(c: SocketClient, greeting: bool = True) -> dict[str, Any]:
    """(Read the greeting,) log in, compress, select, fetch the one message, IDLE."""
    out: dict[str, Any] = {}
    if greeting:
        c.readLine()
    c.command(b'LOGIN %s "%s"' % (ALICE.encode(), ALICE_PW.encode()))
    c.compress()
    out["select"] = c.command(b"SELECT INBOX")
    c.sendRaw(b"s99 FETCH 1 BODY.PEEK[]\r\n")
    head = c.readLine()
    n = int(head.rsplit(b"{", 1)[1].rstrip(b"}"))
    while len(c.buf) < n:
        chunk = c.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed during FETCH")
        c.buf += c.inflate.decompress(chunk)
    out["body"], c.buf = c.buf[:n], c.buf[n:]
    out["tail"] = [c.readLine(), c.readLine()]
    c.sendRaw(b"s100 IDLE\r\n")
    out["idle"] = c.readLine()
    c.sendRaw(b"DONE\r\n")
    out["done"] = c.readLine()
    out["logout"] = c.command(b"LOGOUT")
    return out


class SocketTests(TestCase):
    """COMPRESS over real sockets: after STARTTLS, and on an implicit-TLS listener."""

    timeout = 60

    def check(self, out: dict[str, Any], message: bytes) -> None:
        """The session's results: the whole message, in sync to the end."""
        self.assertIn(b"* 1 EXISTS", out["select"])
        self.assertEqual(out["body"], message)
        self.assertEqual(out["tail"], [b")", b"s99 OK Fetch completed"])
        self.assertEqual(out["idle"], b"+ idling")
        self.assertEqual(out["done"], b"s100 OK IDLE terminated")
        self.assertTrue(out["logout"][-1].endswith(b" OK Logout completed"), out["logout"])

    @defer.inlineCallbacks
    def test_afterStartTLS(self) -> Any:
        """STARTTLS, LOGIN, COMPRESS, then a 2 MB FETCH and IDLE, over TLS."""
        srv = ClientServer(self, cleartext="tls-only")
        message = makeMessage("big", os.urandom(1 << 20).hex().encode() + b"\r\n")
        srv.store.deliver([ALICE], message)

        def client() -> dict[str, Any]:
            raw = socket.create_connection(("127.0.0.1", srv.portNumber), timeout=30)
            plain = SocketClient(raw)
            plain.readLine()
            assert plain.command(b"STARTTLS")[-1].endswith(b"OK Begin TLS negotiation now")
            tlsSock = srv.sslContext().wrap_socket(raw, server_hostname="localhost")
            try:
                return session(SocketClient(tlsSock), greeting=False)
            finally:
                tlsSock.close()

        out = yield threads.deferToThread(client)
        self.check(out, message)

    @defer.inlineCallbacks
    def test_implicitTLS(self) -> Any:
        """The same on a listener that is TLS from the first byte (the imaps port)."""
        srv = ClientServer(self)
        message = makeMessage("big", os.urandom(1 << 20).hex().encode() + b"\r\n")
        srv.store.deliver([ALICE], message)
        factory = srv.port.factory
        factory.implicitTLS = True
        ctxFactory = factory.tlsContext
        port = reactor.listenTCP(0, TLSMemoryBIOFactory(ctxFactory, False, factory),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def client() -> dict[str, Any]:
            raw = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=30)
            tlsSock = srv.sslContext().wrap_socket(raw, server_hostname="localhost")
            try:
                return session(SocketClient(tlsSock))
            finally:
                tlsSock.close()

        out = yield threads.deferToThread(client)
        self.check(out, message)
