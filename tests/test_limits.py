"""Tests for pymaild.limits: connection caps, the trickle guard, user+IP limits, the TLS
handshake timeout and the failure log (the EMFILE-safe ports are in tests/test_listen.py)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet import ssl as tssl
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import directlyProvides

from pymaild import tls
from pymaild.limits import (
    IMAP_REFUSAL,
    POP3_REFUSAL,
    SMTP_REFUSAL,
    ConnectionLimits,
    LimitedFactory,
    LimitedProtocol,
    RefusalProtocol,
    UserIPLimits,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "emfile_server.py")


# --- helpers ----------------------------------------------------------------------------


class RoomProtocol(protocol.Protocol):
    """A stand-in room protocol: greets, records what it receives and whether it closed."""

    greeting = b"220 room ready\r\n"

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        """Send the greeting."""
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        """Remember the bytes."""
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Remember the close."""
        self.lost = True


class RoomFactory(protocol.ServerFactory):
    """Builds L{RoomProtocol}s and counts them."""

    protocol = RoomProtocol

    def __init__(self) -> None:
        self.built: list[RoomProtocol] = []

    def buildProtocol(self, addr: Any) -> RoomProtocol:
        """Build and remember a room protocol."""
        p = RoomProtocol()
        p.factory = self
        self.built.append(p)
        return p


class AbortTransport(StringTransport):
    """A StringTransport that records C{abortConnection} calls."""

    aborts = 0

    def abortConnection(self) -> None:
        """Count the abort and mark the transport as closing."""
        self.aborts += 1
        self.loseConnection()


def address(host: str, port: int = 40000) -> IPv4Address | IPv6Address:
    """The peer address object for C{host}."""
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


def connect(factory: LimitedFactory, host: str) -> tuple[Any, AbortTransport]:
    """Open a fake connection from C{host} through C{factory}."""
    addr = address(host)
    proto = factory.buildProtocol(addr)
    transport = AbortTransport(peerAddress=addr)
    proto.makeConnection(transport)
    return proto, transport


def close(proto: Any) -> None:
    """Deliver C{connectionLost} as the reactor would after a close."""
    proto.connectionLost(Failure(ConnectionDone()))


def captureLogs(case: SynchronousTestCase,
                namespace: str = "pymaild.limits") -> list[dict[str, Any]]:
    """Collect the log events of C{namespace} for the rest of the test."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == namespace:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


# --- caps -------------------------------------------------------------------------------


class ConnectionCapTests(SynchronousTestCase):
    """L{LimitedFactory} with L{ConnectionLimits} over StringTransport."""

    def setUp(self) -> None:
        """A shared limits object (20 per IP) and an SMTP-style factory on a fake clock."""
        self.clock = Clock()
        self.room = RoomFactory()
        self.limits = ConnectionLimits(maxTotal=1000, maxPerIP=20)
        self.factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock)

    def test_refusalConstants(self) -> None:
        """The three refusal lines are the protocols' temporary-failure replies."""
        self.assertEqual(SMTP_REFUSAL, b"421 4.7.0 Too many connections, try later\r\n")
        self.assertEqual(IMAP_REFUSAL, b"* BYE [UNAVAILABLE] Too many connections\r\n")
        self.assertEqual(POP3_REFUSAL, b"-ERR [SYS/TEMP] Too many connections\r\n")

    def test_perIPCap(self) -> None:
        """The 21st connection from one IP gets the refusal line and is closed unbuilt."""
        conns = [connect(self.factory, "192.0.2.7") for _ in range(20)]
        for proto, transport in conns:
            self.assertIsInstance(proto, LimitedProtocol)
            self.assertEqual(transport.value(), RoomProtocol.greeting)
            self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.room.built), 20)
        self.assertEqual(self.limits.count("192.0.2.7"), 20)

        proto, transport = connect(self.factory, "192.0.2.7")
        self.assertIsInstance(proto, RefusalProtocol)
        self.assertEqual(transport.value(), SMTP_REFUSAL)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.room.built), 20)
        self.assertEqual(self.limits.total, 20)
        close(proto)
        self.assertEqual(self.limits.total, 20)

    def test_otherIPAccepted(self) -> None:
        """Another client IP is admitted while one IP is at its cap."""
        for _ in range(20):
            connect(self.factory, "192.0.2.7")
        proto, transport = connect(self.factory, "198.51.100.1")
        self.assertIsInstance(proto, LimitedProtocol)
        self.assertEqual(transport.value(), RoomProtocol.greeting)
        self.assertEqual(self.limits.total, 21)

    def test_releaseOnClose(self) -> None:
        """Closing a connection frees its slot; after all close nothing is counted."""
        conns = [connect(self.factory, "192.0.2.7") for _ in range(20)]
        close(conns[0][0])
        self.assertTrue(self.room.built[0].lost)
        self.assertEqual(self.limits.count("192.0.2.7"), 19)
        proto, _ = connect(self.factory, "192.0.2.7")
        self.assertIsInstance(proto, LimitedProtocol)
        for p, _ in conns[1:]:
            close(p)
        close(proto)
        self.assertEqual(self.limits.total, 0)
        self.assertEqual(self.limits.count("192.0.2.7"), 0)
        self.assertEqual(self.limits._perClient, {})

    def test_totalCap(self) -> None:
        """Above maxTotal every client is refused, whatever its address."""
        self.limits = ConnectionLimits(maxTotal=3, maxPerIP=20)
        factory = LimitedFactory(self.room, self.limits, POP3_REFUSAL, self.clock)
        for i in range(3):
            self.assertIsInstance(connect(factory, f"192.0.2.{i}")[0], LimitedProtocol)
        proto, transport = connect(factory, "203.0.113.9")
        self.assertIsInstance(proto, RefusalProtocol)
        self.assertEqual(transport.value(), POP3_REFUSAL)
        self.assertIn("total", self.limits.refusalReason("203.0.113.9") or "")

    def test_ipv6CountedPerSlash64(self) -> None:
        """IPv6 clients in one /64 share a count; another /64 has its own."""
        self.limits = ConnectionLimits(maxPerIP=2)
        factory = LimitedFactory(self.room, self.limits, IMAP_REFUSAL, self.clock)
        self.assertIsInstance(connect(factory, "2001:db8:1:2::1")[0], LimitedProtocol)
        self.assertIsInstance(connect(factory, "2001:db8:1:2:ffff::9")[0], LimitedProtocol)
        proto, transport = connect(factory, "2001:db8:1:2:abcd:1:2:3")
        self.assertIsInstance(proto, RefusalProtocol)
        self.assertEqual(transport.value(), IMAP_REFUSAL)
        self.assertIsInstance(connect(factory, "2001:db8:1:3::1")[0], LimitedProtocol)
        self.assertEqual(self.limits.key("2001:db8:1:2::77"), "2001:db8:1:2::/64")

    def test_ipv4MappedCountsAsIPv4(self) -> None:
        """An IPv4-mapped IPv6 peer is counted with the plain IPv4 address."""
        self.limits = ConnectionLimits(maxPerIP=1)
        factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock)
        connect(factory, "192.0.2.5")
        proto, _ = connect(factory, "::ffff:192.0.2.5")
        self.assertIsInstance(proto, RefusalProtocol)

    def test_loopbackNotExempt(self) -> None:
        """Loopback clients are capped like any other unless trusted."""
        self.limits = ConnectionLimits(maxPerIP=2)
        factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock)
        connect(factory, "127.0.0.1")
        connect(factory, "127.0.0.1")
        self.assertIsInstance(connect(factory, "127.0.0.1")[0], RefusalProtocol)

    def test_trustedExemptFromPerIPButNotTotal(self) -> None:
        """Trusted networks skip the per-client cap but count towards the total."""
        self.limits = ConnectionLimits(maxTotal=5, maxPerIP=2, trusted=["127.0.0.0/8", "::1"])
        factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock)
        for _ in range(4):
            self.assertIsInstance(connect(factory, "127.0.0.1")[0], LimitedProtocol)
        self.assertIsInstance(connect(factory, "::1")[0], LimitedProtocol)
        self.assertEqual(self.limits.total, 5)
        self.assertIsInstance(connect(factory, "127.0.0.1")[0], RefusalProtocol)

    def test_badTrustedNetwork(self) -> None:
        """A malformed trusted network is a ValueError naming it."""
        e = self.assertRaises(ValueError, ConnectionLimits, trusted=["10.0.0.0/33"])
        self.assertIn("10.0.0.0/33", str(e))

    def test_sharedAcrossFactories(self) -> None:
        """Factories sharing a limits object share counts; separate objects do not."""
        smtp = LimitedFactory(RoomFactory(), self.limits, SMTP_REFUSAL, self.clock)
        submission = LimitedFactory(RoomFactory(), self.limits, SMTP_REFUSAL, self.clock)
        imap = LimitedFactory(RoomFactory(), ConnectionLimits(maxPerIP=20), IMAP_REFUSAL,
                              self.clock)
        for _ in range(10):
            connect(smtp, "192.0.2.7")
            connect(submission, "192.0.2.7")
        proto, transport = connect(submission, "192.0.2.7")
        self.assertEqual(transport.value(), SMTP_REFUSAL)
        self.assertIsInstance(connect(imap, "192.0.2.7")[0], LimitedProtocol)

    def test_nonIPPeerCountsTotalOnly(self) -> None:
        """A UNIX-socket peer is not per-IP capped but is counted in the total."""
        self.limits = ConnectionLimits(maxTotal=3, maxPerIP=1)
        factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock)
        protos = [factory.buildProtocol(UNIXAddress(b"/run/sock")) for _ in range(3)]
        for p in protos:
            p.makeConnection(StringTransport())
        self.assertEqual(self.limits.total, 3)
        self.assertIsInstance(factory.buildProtocol(UNIXAddress(None)), RefusalProtocol)
        close(protos[0])
        self.assertEqual(self.limits.total, 2)

    def test_wrappedReturnsNone(self) -> None:
        """If the room's factory declines (None), nothing stays counted."""

        class Declining(protocol.ServerFactory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        factory = LimitedFactory(Declining(), self.limits, SMTP_REFUSAL, self.clock)
        self.assertIsNone(factory.buildProtocol(address("192.0.2.1")))
        self.assertEqual(self.limits.total, 0)

    def test_wrappedRaises(self) -> None:
        """If the room's factory raises, the count is released and the error propagates."""

        class Broken(protocol.ServerFactory):
            def buildProtocol(self, addr: Any) -> None:
                raise RuntimeError("boom")

        factory = LimitedFactory(Broken(), self.limits, SMTP_REFUSAL, self.clock)
        self.assertRaises(RuntimeError, factory.buildProtocol, address("192.0.2.1"))
        self.assertEqual(self.limits.total, 0)

    def test_refusalAbortedIfNotClosed(self) -> None:
        """A refused connection still open after refusalTimeout is aborted."""
        for _ in range(20):
            connect(self.factory, "192.0.2.7")
        proto, transport = connect(self.factory, "192.0.2.7")
        self.clock.advance(9.9)
        self.assertEqual(transport.aborts, 0)
        self.clock.advance(0.2)
        self.assertEqual(transport.aborts, 1)
        close(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refusalClosedInTimeCancelsAbort(self) -> None:
        """A refused connection that closes promptly leaves no timer behind."""
        for _ in range(20):
            connect(self.factory, "192.0.2.7")
        proto, transport = connect(self.factory, "192.0.2.7")
        close(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(transport.aborts, 0)

    def test_refusalLogRateLimited(self) -> None:
        """Refusals are logged at most once a minute, with the number not logged."""
        events = captureLogs(self)
        self.limits = ConnectionLimits(maxPerIP=1)
        factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock)
        connect(factory, "192.0.2.7")
        for _ in range(5):
            connect(factory, "192.0.2.7")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["host"], "192.0.2.7")
        self.assertIn("per client", events[0]["reason"])
        self.clock.advance(61)
        connect(factory, "192.0.2.7")
        self.assertEqual(len(events), 2)
        self.assertEqual(events[1]["unlogged"], 4)
        self.assertEqual(factory.refused, 6)

    def test_tlsInsideRefused(self) -> None:
        """Wrapping a TLS factory (refusal in plaintext on a TLS port) is a TypeError."""
        tlsFactory = TLSMemoryBIOFactory(tssl.CertificateOptions(), False, self.room)
        self.assertRaises(TypeError, LimitedFactory, tlsFactory, self.limits, IMAP_REFUSAL,
                          self.clock)

    def test_badLimits(self) -> None:
        """Limits below one are refused."""
        self.assertRaises(ValueError, ConnectionLimits, maxTotal=0)
        self.assertRaises(ValueError, ConnectionLimits, maxPerIP=0)


class WrapperTransportTests(SynchronousTestCase):
    """L{LimitedProtocol} as the room's transport."""

    def setUp(self) -> None:
        """A limited factory over a fake clock."""
        self.clock = Clock()
        self.limits = ConnectionLimits()
        self.factory = LimitedFactory(RoomFactory(), self.limits, SMTP_REFUSAL, self.clock)

    def test_startTLSShowsISSLTransport(self) -> None:
        """After STARTTLS through the wrapper, the wrapper provides ISSLTransport."""

        class TLSCapable(StringTransport):
            def startTLS(self, ctx: Any, normal: bool = True) -> None:
                self.tlsStarted = ctx
                directlyProvides(self, ISSLTransport)

        proto = self.factory.buildProtocol(address("192.0.2.1"))
        transport = TLSCapable()
        proto.makeConnection(transport)
        self.assertFalse(ISSLTransport.providedBy(proto))
        ctx = object()
        proto.startTLS(ctx)
        self.assertIs(transport.tlsStarted, ctx)
        self.assertTrue(ISSLTransport.providedBy(proto))

    def test_disconnectingFollowsTransport(self) -> None:
        """An abort through the wrapper shows as C{disconnecting} on the wrapper."""
        proto, transport = connect(self.factory, "192.0.2.1")
        self.assertFalse(proto.disconnecting)
        proto.abortConnection()
        self.assertEqual(transport.aborts, 1)
        self.assertTrue(proto.disconnecting)

    def test_loseConnectionSetsDisconnecting(self) -> None:
        """loseConnection through the wrapper closes the transport and sets the flag."""
        proto, transport = connect(self.factory, "192.0.2.1")
        proto.loseConnection()
        self.assertTrue(transport.disconnecting)
        self.assertTrue(proto.disconnecting)


# --- trickle guard ----------------------------------------------------------------------


class TrickleGuardTests(SynchronousTestCase):
    """The partial-line deadline of L{LimitedProtocol}."""

    def setUp(self) -> None:
        """A limited factory over a fake clock, capturing pymaild.limits logs."""
        self.clock = Clock()
        self.limits = ConnectionLimits()
        self.room = RoomFactory()
        self.factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock)
        self.events = captureLogs(self)

    def trickle(self, proto: Any, transport: AbortTransport, data: bytes, every: float,
                duration: float) -> float | None:
        """Send C{data} byte by byte every C{every} s for up to C{duration} s.

        Returns the time of the abort, or None if the connection survived.
        """
        start = self.clock.seconds()
        i = 0
        while self.clock.seconds() - start < duration:
            if transport.aborts:
                return self.clock.seconds() - start
            proto.dataReceived(data[i % len(data):i % len(data) + 1])
            i += 1
            self.clock.advance(every)
        return (self.clock.seconds() - start) if transport.aborts else None

    def test_trickleBeforeFirstLineClosed(self) -> None:
        """One byte every 5 s with no LF is aborted once 30 s pass, writing nothing."""
        proto, transport = connect(self.factory, "192.0.2.1")
        abortedAt = self.trickle(proto, transport, b"x", 5.0, 200.0)
        self.assertIsNotNone(abortedAt)
        self.assertLessEqual(abortedAt, 35.0)
        self.assertGreaterEqual(abortedAt, 30.0)
        self.assertEqual(transport.value(), RoomProtocol.greeting)
        self.assertEqual(len(self.events), 1)
        self.assertIn("incomplete", self.events[0]["log_format"])
        close(proto)
        self.assertEqual(self.limits.total, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_trickleAfterFirstLineClosedAt120(self) -> None:
        """After a complete line the allowance is 120 s: aborted at 120, not before."""
        proto, transport = connect(self.factory, "192.0.2.1")
        proto.dataReceived(b"EHLO client\r\n")
        self.clock.advance(1)
        proto.dataReceived(b"M")
        for _ in range(23):
            self.clock.advance(5)
            proto.dataReceived(b"A")
        self.clock.advance(4.9)
        self.assertEqual(transport.aborts, 0)
        self.clock.advance(0.1)
        self.assertEqual(transport.aborts, 1)
        self.assertEqual(self.room.built[0].received, b"EHLO client\r\nM" + b"A" * 23)

    def test_trickleFor200sWithLineClosed(self) -> None:
        """A client that sent a line, then trickles a byte every 5 s, loses its slot."""
        proto, transport = connect(self.factory, "192.0.2.1")
        proto.dataReceived(b"HELO x\r\n")
        abortedAt = self.trickle(proto, transport, b"y", 5.0, 200.0)
        self.assertIsNotNone(abortedAt)
        self.assertLessEqual(abortedAt, 125.0)

    def test_slowCompletingClientKept(self) -> None:
        """A slow client completing a line every 20 s is never cut off."""
        proto, transport = connect(self.factory, "192.0.2.1")
        abortedAt = self.trickle(proto, transport, b"NOOP\r\n", 4.0, 400.0)
        self.assertIsNone(abortedAt)
        self.assertEqual(self.room.built[0].received.count(b"NOOP\r\n"), 16)
        self.assertEqual(self.events, [])

    def test_linesResetDeadline(self) -> None:
        """A line completed with a partial tail restarts the deadline for that tail."""
        proto, transport = connect(self.factory, "192.0.2.1")
        proto.dataReceived(b"A")
        self.clock.advance(25)
        proto.dataReceived(b"\r\nB")
        self.clock.advance(119)
        self.assertEqual(transport.aborts, 0)
        proto.dataReceived(b"\r\nC")
        self.clock.advance(119)
        self.assertEqual(transport.aborts, 0)
        self.clock.advance(1)
        self.assertEqual(transport.aborts, 1)

    def test_wholeLinesNeedNoTimer(self) -> None:
        """Clients that send whole lines never cause a timer to be scheduled."""
        proto, transport = connect(self.factory, "192.0.2.1")
        for _ in range(100):
            proto.dataReceived(b"NOOP\r\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneTimerPerConnection(self) -> None:
        """Partial lines and line completions reuse one DelayedCall per connection."""
        proto, transport = connect(self.factory, "192.0.2.1")
        proto.dataReceived(b"a")
        first = self.clock.getDelayedCalls()
        self.assertEqual(len(first), 1)
        for chunk in [b"b", b"c\n", b"d", b"e\nf", b"g"] * 20:
            proto.dataReceived(chunk)
            self.clock.advance(0.5)
            self.assertEqual(self.clock.getDelayedCalls(), first)
        self.assertEqual(transport.aborts, 0)

    def test_completedLineDisarms(self) -> None:
        """A partial line later completed (no tail) leads to no abort."""
        proto, transport = connect(self.factory, "192.0.2.1")
        proto.dataReceived(b"NO")
        self.clock.advance(20)
        proto.dataReceived(b"OP\r\n")
        self.clock.advance(1000)
        self.assertEqual(transport.aborts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeCancelsTimer(self) -> None:
        """connectionLost cancels a pending deadline."""
        proto, transport = connect(self.factory, "192.0.2.1")
        proto.dataReceived(b"partial")
        close(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadlineCanBeDisabled(self) -> None:
        """With both deadlines None the guard never fires."""
        factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock,
                                 lineDeadline=None, firstLineDeadline=None)
        proto, transport = connect(factory, "192.0.2.1")
        self.assertIsNone(self.trickle(proto, transport, b"x", 5.0, 200.0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_onlyFirstLineDeadline(self) -> None:
        """With lineDeadline None, completing the first line ends all checking."""
        factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock,
                                 lineDeadline=None, firstLineDeadline=30.0)
        proto, transport = connect(factory, "192.0.2.1")
        proto.dataReceived(b"EH")
        self.clock.advance(20)
        proto.dataReceived(b"LO x\r\nMA")
        self.clock.advance(100)
        self.assertEqual(transport.aborts, 0)
        proto2, transport2 = connect(factory, "192.0.2.1")
        proto2.dataReceived(b"EH")
        self.clock.advance(30)
        self.assertEqual(transport2.aborts, 1)

    def test_customDeadlines(self) -> None:
        """Custom deadlines apply: 2 s before the first line, 4 s after."""
        factory = LimitedFactory(self.room, self.limits, SMTP_REFUSAL, self.clock,
                                 lineDeadline=4.0, firstLineDeadline=2.0)
        proto, transport = connect(factory, "192.0.2.1")
        proto.dataReceived(b"x")
        self.clock.advance(2)
        self.assertEqual(transport.aborts, 1)
        proto2, transport2 = connect(factory, "192.0.2.1")
        proto2.dataReceived(b"x\ny")
        self.clock.advance(3.9)
        self.assertEqual(transport2.aborts, 0)
        self.clock.advance(0.1)
        self.assertEqual(transport2.aborts, 1)


# --- user + IP ----------------------------------------------------------------------------


class UserIPLimitsTests(SynchronousTestCase):
    """L{UserIPLimits}: Dovecot's mail_max_userip_connections."""

    def test_eleventhRefused(self) -> None:
        """Ten sessions of one user from one IP are allowed; the eleventh is not."""
        u = UserIPLimits()
        self.assertEqual(u.maxPerUserIP, 10)
        for _ in range(10):
            self.assertTrue(u.acquire("alice@example.org", "192.0.2.1"))
        self.assertFalse(u.acquire("alice@example.org", "192.0.2.1"))
        self.assertEqual(u.count("alice@example.org", "192.0.2.1"), 10)

    def test_otherUserOrIPIndependent(self) -> None:
        """Another user from the same IP, or the same user from another IP, is counted apart."""
        u = UserIPLimits(maxPerUserIP=1)
        self.assertTrue(u.acquire("alice@example.org", "192.0.2.1"))
        self.assertTrue(u.acquire("bob@example.org", "192.0.2.1"))
        self.assertTrue(u.acquire("alice@example.org", "192.0.2.2"))
        self.assertTrue(u.acquire("alice@example.org", "2001:db8::1"))
        self.assertTrue(u.acquire("alice@example.org", "2001:db8::2"))

    def test_releaseFreesSlot(self) -> None:
        """A release lets the next session in; extra releases never go negative."""
        u = UserIPLimits(maxPerUserIP=2)
        u.acquire("alice@example.org", "192.0.2.1")
        u.acquire("alice@example.org", "192.0.2.1")
        self.assertFalse(u.acquire("alice@example.org", "192.0.2.1"))
        u.release("alice@example.org", "192.0.2.1")
        self.assertTrue(u.acquire("alice@example.org", "192.0.2.1"))
        for _ in range(5):
            u.release("alice@example.org", "192.0.2.1")
        self.assertEqual(u.count("alice@example.org", "192.0.2.1"), 0)
        self.assertEqual(u._counts, {})
        self.assertTrue(u.acquire("alice@example.org", "192.0.2.1"))
        self.assertTrue(u.acquire("alice@example.org", "192.0.2.1"))
        self.assertFalse(u.acquire("alice@example.org", "192.0.2.1"))

    def test_addressSpellings(self) -> None:
        """IPv4-mapped, zoned and bracketed spellings count as the same client."""
        u = UserIPLimits(maxPerUserIP=2)
        u.acquire("alice@example.org", "192.0.2.1")
        u.acquire("alice@example.org", "::ffff:192.0.2.1")
        self.assertFalse(u.acquire("alice@example.org", "192.0.2.1"))
        u.acquire("bob@example.org", "fe80::1%eth0")
        u.acquire("bob@example.org", "[fe80::1]")
        self.assertFalse(u.acquire("bob@example.org", "fe80:0::1"))

    def test_badLimit(self) -> None:
        """A limit below one is refused."""
        self.assertRaises(ValueError, UserIPLimits, 0)


# --- refusal over real TLS ------------------------------------------------------------------


class _Collector(protocol.Protocol):
    """A client protocol that collects bytes and fires C{done} with them on close."""

    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.firstData: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        """Collect."""
        self.data += data
        if not self.firstData.called:
            self.firstData.callback(self.data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Report everything received."""
        self.done.callback(self.data)


class TLSRefusalTests(TestCase):
    """Over a real loopback TLS listener, the refusal travels inside TLS."""

    timeout = 30

    def setUp(self) -> None:
        """Listen with TLS outside a LimitedFactory allowing one connection per IP."""
        base = self.mktemp()
        os.makedirs(base)
        cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
        tls.ensureSelfSigned(cert, key, ["localhost"])
        self.room = RoomFactory()
        self.limits = ConnectionLimits(maxPerIP=1)
        self.limited = LimitedFactory(self.room, self.limits, IMAP_REFUSAL, reactor,
                                      refusalTimeout=1.0)
        factory = TLSMemoryBIOFactory(tls.serverContext(cert, key), False, self.limited)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.portNumber = self.port.getHost().port

    def tlsClient(self) -> defer.Deferred[_Collector]:
        """Connect a TLS client (no certificate check) and return its protocol."""
        ctx = tssl.CertificateOptions(raiseMinimumTo=tssl.TLSVersion.TLSv1_2)
        ep = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", self.portNumber, ctx)
        return endpoints.connectProtocol(ep, _Collector())

    @defer.inlineCallbacks
    def test_refusalThroughTLS(self) -> Any:
        """The second client gets the IMAP refusal decrypted from TLS, then a close."""
        first = yield self.tlsClient()
        greeting = yield first.firstData
        self.assertEqual(greeting, RoomProtocol.greeting)
        second = yield self.tlsClient()
        data = yield second.done
        self.assertEqual(data, IMAP_REFUSAL)
        self.assertEqual(len(self.room.built), 1)
        self.assertEqual(self.limits.total, 1)
        first.transport.loseConnection()
        yield first.done
        self.assertEqual(self.limits.total, 0)
        third = yield self.tlsClient()
        greeting = yield third.firstData
        self.assertEqual(greeting, RoomProtocol.greeting)
        third.transport.loseConnection()
        yield third.done

    @defer.inlineCallbacks
    def test_noPlaintextRefusal(self) -> Any:
        """A plaintext client on the TLS port never sees the refusal; it is aborted."""
        first = yield self.tlsClient()
        yield first.firstData
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.portNumber)
        raw = yield endpoints.connectProtocol(ep, _Collector())
        data = yield raw.done
        self.assertNotIn(b"BYE", data)
        self.assertEqual(data, b"")
        self.assertEqual(len(self.room.built), 1)
        first.transport.loseConnection()
        yield first.done


# --- EMFILE: unit tests over a fake listening socket ------------------------------------


class FailureLogTests(SynchronousTestCase):
    """Repeated unexpected failures are logged in full once a minute."""

    def test_repeatsCounted(self) -> None:
        """The same failure 50 times in a minute is one traceback; the next entry a
        minute later says how many were left out; another kind is logged at once."""
        from twisted.logger import LogEvent, Logger

        from pymaild.limits import FailureLog

        events: list[LogEvent] = []
        clock = Clock()
        failures = FailureLog(clock, Logger(observer=events.append))
        for _ in range(50):
            failures.report(Failure(RecursionError("deep")), "IMAP command SEARCH")
        self.assertEqual(len(events), 1)
        failures.report(Failure(KeyError("k")), "IMAP command SEARCH")
        self.assertEqual(len(events), 2)
        clock.advance(61)
        self.assertTrue(failures.report(Failure(RecursionError("deep")), "IMAP command SEARCH"))
        self.assertEqual(len(events), 3)
        self.assertEqual(events[2]["left"], 49)
        self.assertIsNotNone(events[2]["log_failure"])
