"""Tests for the SMTP ingest fast paths: the recipient resolution cache, the Received
date cache, the single-message end of DATA, and replies sent at once (one write per
read, straight to the socket when nothing is queued)."""

from __future__ import annotations

import email.utils
import os
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from pymaild.smtp.delivery import ResolutionCache
from tests.test_smtp_helpers import SMTPStack

BODY = b"Subject: test\r\n\r\nHello.\r\n"


class CountingRunner:
    """Runs callables inline and counts them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Record the callable's name and run it now."""
        self.calls.append(getattr(f, "__name__", repr(f)))
        return defer.maybeDeferred(f, *args, **kwargs)


class FakeTimer:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """The current fake time."""
        return self.now


class ResolutionCacheTests(TestCase):
    """ResolutionCache: known recipients without a thread; file changes seen within 1 s."""

    def setUp(self) -> None:
        """A stack with an aliases file and a cache on a fake timer."""
        self.stack = SMTPStack(self, aliases="team@example.org: alice@example.org\n")
        self.timer = FakeTimer()
        avatars = self.stack.avatars
        self.cache = ResolutionCache(
            avatars.resolver, [self.stack.passwdPath, self.stack.aliasesPath], timer=self.timer
        )

    def test_hitWhileFresh(self) -> None:
        """A resolved address is answered from memory until the check is a second old."""
        self.assertIsNone(self.cache.cached("team@example.org"))
        self.assertEqual(self.cache.resolve("team@example.org").local, ["alice@example.org"])
        hit = self.cache.cached("team@example.org")
        assert hit is not None
        self.assertEqual((hit.local, hit.remote), (["alice@example.org"], []))
        self.timer.now += 1.0
        self.assertIsNone(self.cache.cached("team@example.org"))

    def test_unknownNotCached(self) -> None:
        """An address that resolves nowhere is looked up again each time."""
        self.assertEqual(self.cache.resolve("nobody@example.org").local, [])
        self.assertIsNone(self.cache.cached("nobody@example.org"))

    def test_changedFileInvalidates(self) -> None:
        """After the aliases file changed, the next check (≥ 1 s later) forgets the cache."""
        self.cache.resolve("team@example.org")
        with open(self.stack.aliasesPath, "w") as f:
            f.write("team@example.org: bob@example.org, carol@example.net\n")
        st = os.stat(self.stack.aliasesPath)
        os.utime(self.stack.aliasesPath, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        # Within the second the old destination may still be served...
        hit = self.cache.cached("team@example.org")
        assert hit is not None
        self.assertEqual(hit.local, ["alice@example.org"])
        # ...after it, the files are checked again and the new one wins.
        self.timer.now += 1.5
        self.assertIsNone(self.cache.cached("team@example.org"))
        res = self.cache.resolve("team@example.org")
        self.assertEqual(res.local, ["bob@example.org", "carol@example.net"])
        hit = self.cache.cached("team@example.org")
        assert hit is not None
        self.assertEqual(hit.local, ["bob@example.org", "carol@example.net"])

    def test_removedUserForgotten(self) -> None:
        """A user removed from the passwd file stops resolving after the next check."""
        self.cache.resolve("bob@example.org")
        self.stack.passwd.remove("bob@example.org")
        self.timer.now += 1.0
        self.assertIsNone(self.cache.cached("bob@example.org"))
        self.assertEqual(self.cache.resolve("bob@example.org").local, [])

    def test_hitIsACopy(self) -> None:
        """Changing a returned resolution does not change the cache."""
        self.cache.resolve("team@example.org")
        hit = self.cache.cached("team@example.org")
        assert hit is not None
        hit.local.append("evil@example.org")
        again = self.cache.cached("team@example.org")
        assert again is not None
        self.assertEqual(again.local, ["alice@example.org"])


class WireFastPathTests(TestCase):
    """Over the wire: cached RCPTs skip the disk runner; replies are unchanged."""

    def test_secondRcptFromCache(self) -> None:
        """The second transaction to a recipient only uses the runner to store."""
        runner = CountingRunner()
        stack = SMTPStack(self, runner=runner)
        stack.avatars.resolutions.timer = FakeTimer()  # no second passes, however slow
        c = stack.connect()
        c.ehlo()
        first = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertEqual(runner.calls, ["resolve", "storeCopies"])
        runner.calls.clear()
        second = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertEqual(runner.calls, ["storeCopies"])
        self.assertEqual(first[:3], second[:3])
        self.assertEqual(first[:3], [b"250 2.1.0 Ok", b"250 2.1.5 Ok",
                                     b"354 End data with <CR><LF>.<CR><LF>"])
        self.assertRegex(second[3], rb"^250 2\.0\.0 Ok: queued as [0-9A-F]{22}$")
        self.assertEqual(len(stack.messages("alice@example.org")), 2)

    def test_unknownStillRejected(self) -> None:
        """Unknown recipients are looked up (and refused) every time."""
        runner = CountingRunner()
        stack = SMTPStack(self, runner=runner)
        c = stack.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<s@remote.example>")
        for _ in range(2):
            self.assertRegex(c.cmd("RCPT TO:<nobody@example.org>"), rb"^550 5\.1\.1 ")
        self.assertEqual(runner.calls, ["resolve", "resolve"])

    def test_storeFailureSingleMessage(self) -> None:
        """A failing store still gets 451 (one message, without a DeferredList)."""
        stack = SMTPStack(self)

        def broken(*args: Any) -> None:
            raise RuntimeError("disk on fire")

        stack.avatars.storeCopies = broken  # type: ignore[method-assign]
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertEqual(replies[-1],
                         b"451 4.3.0 Error: could not store message, try again later")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")


class ReceivedDateTests(TestCase):
    """The Received header date is formatted once per second, and correctly."""

    def test_dateCached(self) -> None:
        """Within one second the same string; the next second a new one, as formatdate."""
        stack = SMTPStack(self)
        avatars = stack.avatars
        stack.clock.advance(1_700_000_000.25)
        first = avatars.dateNow()
        self.assertEqual(first, email.utils.formatdate(1_700_000_000.25, localtime=True))
        stack.clock.advance(0.5)
        self.assertIs(avatars.dateNow(), first)
        stack.clock.advance(0.5)
        self.assertEqual(avatars.dateNow(),
                         email.utils.formatdate(1_700_000_001, localtime=True))

    def test_headerCarriesDate(self) -> None:
        """A stored copy's Received header ends with the clock's date."""
        stack = SMTPStack(self)
        stack.clock.advance(1_700_000_000)
        c = stack.connect()
        c.ehlo()
        c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        [message] = stack.messages("alice@example.org")
        date = email.utils.formatdate(1_700_000_000, localtime=True).encode()
        self.assertIn(b"for <alice@example.org>; " + date + b"\r\n", message)


class FakeSocket:
    """A socket whose send takes at most C{limit} bytes, or raises C{error}."""

    def __init__(self, limit: int = 1 << 20, error: OSError | None = None) -> None:
        self.limit = limit
        self.error = error
        self.sent = b""

    def send(self, data: bytes) -> int:
        """Take up to C{limit} bytes."""
        if self.error is not None:
            raise self.error
        n = min(self.limit, len(data))
        self.sent += bytes(data[:n])
        return n


class FakeTCP:
    """The parts of a Twisted TCP transport that sendNow reads; write() queues."""

    def __init__(self, sock: FakeSocket) -> None:
        self.socket = sock
        self.TLS = False
        self.connected = True
        self.disconnecting = False
        self._writeDisconnected = False
        self._tempDataBuffer: list[bytes] = []
        self.dataBuffer = b""
        self.offset = 0

    def write(self, data: bytes) -> None:
        """Queue C{data} as Twisted does."""
        self._tempDataBuffer.append(data)

    def wire(self) -> bytes:
        """Everything in the order the peer would get it."""
        return self.socket.sent + b"".join(self._tempDataBuffer)


class SendNowTests(TestCase):
    """sendNow writes to the socket only when that keeps the byte order."""

    def test_sentAtOnce(self) -> None:
        """With nothing queued the reply goes straight to the socket."""
        from pymaild.smtp.fastreply import sendNow

        conn = FakeTCP(FakeSocket())
        self.assertEqual(sendNow(conn, b"250 ok\r\n"), b"")
        self.assertEqual(conn.socket.sent, b"250 ok\r\n")

    def test_shortSendLeavesRest(self) -> None:
        """A short send returns what is left."""
        from pymaild.smtp.fastreply import sendNow

        conn = FakeTCP(FakeSocket(limit=3))
        self.assertEqual(sendNow(conn, b"250 ok\r\n"), b" ok\r\n")

    def test_notWhenQueuedOrTLSOrClosing(self) -> None:
        """Queued output, TLS, a closing or lost connection and errors: nothing is sent."""
        from pymaild.smtp.fastreply import sendNow

        for setup in (
            lambda c: c._tempDataBuffer.append(b"x"),
            lambda c: setattr(c, "dataBuffer", b"xy"),
            lambda c: setattr(c, "TLS", True),
            lambda c: setattr(c, "disconnecting", True),
            lambda c: setattr(c, "connected", False),
            lambda c: setattr(c, "_writeDisconnected", True),
            lambda c: setattr(c.socket, "error", BlockingIOError()),
            lambda c: setattr(c.socket, "error", BrokenPipeError()),
        ):
            conn = FakeTCP(FakeSocket())
            setup(conn)
            self.assertEqual(sendNow(conn, b"250 ok\r\n"), b"250 ok\r\n")
            self.assertEqual(conn.socket.sent, b"")

    def test_orderKeptAcrossShortSends(self) -> None:
        """Replies after a short send queue behind its rest: the client sees them in order."""
        stack = SMTPStack(self)
        proto = stack.factory.buildProtocol(None)
        conn = FakeTCP(FakeSocket(limit=10))
        transport = StringTransport()
        transport.write = conn.write  # type: ignore[method-assign]
        proto.makeConnection(transport)
        proto._tcp = conn
        proto.dataReceived(b"EHLO x\r\nNOOP\r\n")
        proto.dataReceived(b"NOOP\r\n")
        wire = conn.wire()
        self.assertTrue(wire.startswith(b"220 mx.example.org ESMTP pymaild\r\n250-mx."))
        self.assertTrue(wire.endswith(b"250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"))

    def test_pipelinedRepliesInOneWrite(self) -> None:
        """The replies to the commands of one read leave in one write."""
        stack = SMTPStack(self)
        c = stack.connect()
        writes: list[bytes] = []
        original = c.transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        c.transport.write = write  # type: ignore[method-assign]
        c.send(b"EHLO x\r\nMAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
               b"DATA\r\n")
        self.assertEqual(len(writes), 1)
        self.assertEqual([r[:3] for r in c.replies()], [b"250", b"250", b"250", b"354"])

    def test_plainTCPNotForOtherTransports(self) -> None:
        """Test transports and TLS wrappers are not written to directly."""
        from twisted.protocols.tls import TLSMemoryBIOProtocol

        from pymaild.smtp.fastreply import plainTCP

        self.assertIsNone(plainTCP(StringTransport()))
        wrapper = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
        self.assertIsNone(plainTCP(wrapper))


class LiveSendNowTests(TestCase):
    """Over real loopback TCP, through a relaying wrapper, replies go straight out."""

    def test_sessionThroughWrapper(self) -> Any:
        """A whole session in one write is answered in order; the socket is used directly."""
        from twisted.internet import reactor, threads
        from twisted.internet.tcp import Server
        from twisted.protocols.policies import WrappingFactory

        stack = SMTPStack(self)
        stack.gate.clock = reactor
        stack.factory.clock = reactor
        built: list[Any] = []
        original = stack.factory.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            p = original(addr)
            p.callLater = reactor.callLater
            built.append(p)
            return p

        stack.factory.buildProtocol = buildProtocol  # type: ignore[method-assign]
        port = reactor.listenTCP(0, WrappingFactory(stack.factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port.getHost().port), 10) as s:
                s.sendall(b"EHLO x\r\nMAIL FROM:<s@remote.example>\r\n"
                          b"RCPT TO:<alice@example.org>\r\nDATA\r\n" + BODY + b".\r\nQUIT\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return data
                    data += chunk

        def check(data: bytes) -> None:
            codes = [line[:4] for line in data.split(b"\r\n") if line[3:4] == b" "]
            self.assertEqual(codes, [b"220 ", b"250 ", b"250 ", b"250 ", b"354 ", b"250 ",
                                     b"221 "])
            self.assertIsInstance(built[0]._tcp, Server)
            self.assertEqual(len(stack.messages("alice@example.org")), 1)

        return threads.deferToThread(client).addCallback(check)
