"""Tests for pymaild.limits: connection caps, the trickle guard, user+IP limits, EMFILE."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet import ssl as tssl
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import WrappingFactory
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
    FDReservingPort,
    LimitedFactory,
    LimitedProtocol,
    RefusalProtocol,
    ReserveFD,
    UserIPLimits,
    listenWithFDReserve,
    reservingServerFromString,
)
from tests.support import cpuSeconds

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


def captureLogs(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """Collect pymaild.limits log events for the rest of the test."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "pymaild.limits":
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


class _ScriptedSocket:
    """Wraps a real listening socket; C{accept} follows a script of results."""

    def __init__(self, real: socket.socket, script: list[Any]) -> None:
        self._real = real
        self.script = script
        self.accepted: list[_FakeClient] = []

    def accept(self) -> Any:
        """Return or raise the next scripted result; EAGAIN when the script is empty."""
        item = self.script.pop(0) if self.script else OSError(errno.EAGAIN, "again")
        if isinstance(item, OSError):
            raise item
        client = _FakeClient()
        self.accepted.append(client)
        return client, ("127.0.0.1", 50000 + len(self.accepted))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _FakeClient:
    """An accepted client socket that records what was sent and whether it was closed."""

    def __init__(self) -> None:
        self.sent = b""
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        """Accept the mode change."""
        self.blocking = flag

    def send(self, data: bytes) -> int:
        """Record the bytes."""
        self.sent += data
        return len(data)

    def close(self) -> None:
        """Record the close."""
        self.closed = True


class _CountingReserve(ReserveFD):
    """A ReserveFD that records releases and can be made unable to reserve."""

    def __init__(self, canReserve: bool = True) -> None:
        super().__init__()
        self.canReserve = canReserve
        self.releases = 0

    def reserve(self) -> bool:
        """Reserve unless told the process is out of descriptors."""
        if not self.canReserve:
            return False
        return super().reserve()

    def release(self) -> None:
        """Count and release."""
        if self.available():
            self.releases += 1
        super().release()


class _RecordingFactory(protocol.ServerFactory):
    """Declines every connection but records the addresses it was asked about."""

    def __init__(self) -> None:
        self.addrs: list[Any] = []

    def buildProtocol(self, addr: Any) -> None:
        """Record and decline (the port then closes the socket)."""
        self.addrs.append(addr)
        return None


def _emfile() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


class FDReservingPortTests(SynchronousTestCase):
    """L{FDReservingPort} decisions, driven by a scripted accept()."""

    def makePort(self, script: list[Any], canReserve: bool = True,
                 shedLine: bytes = b"") -> tuple[FDReservingPort, _ScriptedSocket]:
        """A listening port on a memory reactor whose accept() follows C{script}."""
        self.reactor = MemoryReactorClock()
        self.factory = _RecordingFactory()
        self.reserve = _CountingReserve(canReserve)
        self.addCleanup(self.reserve.release)
        port = FDReservingPort(0, self.factory, 5, "127.0.0.1", self.reactor,
                               reserve=self.reserve, shedLine=shedLine)
        port.startListening()
        self.addCleanup(self.stop, port)
        fake = _ScriptedSocket(port.socket, script)
        port.socket = fake  # type: ignore[assignment]
        self.events = captureLogs(self)
        return port, fake

    def stop(self, port: FDReservingPort) -> None:
        """Stop listening (once) and let the memory reactor run the close."""
        if not port.connected or port.disconnecting:
            return
        if isinstance(port.socket, _ScriptedSocket):
            port.socket = port.socket._real
        port.stopListening()
        self.reactor.advance(0)

    def test_shedWithSpare(self) -> None:
        """On EMFILE the spare is released, pending clients get the line and are closed."""
        port, fake = self.makePort([_emfile(), None, None], shedLine=SMTP_REFUSAL)
        self.assertTrue(self.reserve.available())
        port.doRead()
        self.assertEqual(self.reserve.releases, 1)
        self.assertTrue(self.reserve.available())
        self.assertEqual(len(fake.accepted), 2)
        for c in fake.accepted:
            self.assertEqual(c.sent, SMTP_REFUSAL)
            self.assertTrue(c.closed)
        self.assertEqual(self.factory.addrs, [])
        self.assertIn(port, self.reactor.readers)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_shedWithoutLine(self) -> None:
        """Without a shed line the pending clients are just closed."""
        port, fake = self.makePort([_emfile(), None])
        port.doRead()
        self.assertEqual(fake.accepted[0].sent, b"")
        self.assertTrue(fake.accepted[0].closed)

    def test_pauseWithoutSpare(self) -> None:
        """Without a spare the port stops reading for 0.1 s, doubling to 1 s, then resumes."""
        port, fake = self.makePort([_emfile()] * 7, canReserve=False)
        delays = []
        for _ in range(6):
            port.doRead()
            self.assertNotIn(port, self.reactor.readers)
            [call] = self.reactor.getDelayedCalls()
            delays.append(round(call.getTime() - self.reactor.seconds(), 3))
            self.reactor.advance(delays[-1])
            self.assertIn(port, self.reactor.readers)
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        # The resource comes back: a connection is accepted and the back-off resets.
        fake.script[:] = [None]
        port.doRead()
        self.assertEqual(len(self.factory.addrs), 1)
        fake.script[:] = [_emfile()]
        port.doRead()
        [call] = self.reactor.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - self.reactor.seconds(), 0.1)

    def test_spareLostPausesThenRetakes(self) -> None:
        """If the freed slot is taken before accept, the port pauses and retakes the spare."""
        port, fake = self.makePort([_emfile(), _emfile(), None])
        port.doRead()
        self.assertNotIn(port, self.reactor.readers)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(0.1)
        self.assertTrue(self.reserve.available())
        port.doRead()
        self.assertEqual(len(self.factory.addrs), 1)

    def test_reReserveFailurePauses(self) -> None:
        """If the spare cannot be re-opened after shedding, the port pauses."""
        port, fake = self.makePort([_emfile(), None])
        self.reserve.canReserve = False
        port.doRead()
        self.assertTrue(fake.accepted[0].closed)
        self.assertFalse(self.reserve.available())
        self.assertNotIn(port, self.reactor.readers)
        self.reserve.canReserve = True
        self.reactor.advance(0.1)
        self.assertTrue(self.reserve.available())
        self.assertIn(port, self.reactor.readers)

    def test_otherExhaustionErrors(self) -> None:
        """ENFILE, ENOBUFS and ENOMEM are handled like EMFILE (no exception escapes)."""
        for code in (errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            port, fake = self.makePort([OSError(code, "x")] * 3)
            port.doRead()
            self.assertNotIn(port, self.reactor.readers)
            self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_transientErrorsSkipped(self) -> None:
        """ECONNABORTED and EPERM skip one connection and accepting goes on."""
        port, fake = self.makePort(
            [OSError(errno.ECONNABORTED, "x"), OSError(errno.EPERM, "x"), None])
        port.doRead()
        self.assertEqual(len(self.factory.addrs), 1)
        self.assertIn(port, self.reactor.readers)

    def test_logOncePerBurst(self) -> None:
        """A burst of failures logs one warning; the recovery logs one summary."""
        port, fake = self.makePort([])
        for _ in range(3):
            fake.script[:] = [_emfile(), None]
            port.doRead()
            self.assertIn(port, self.reactor.readers)
        self.assertEqual([e["log_level"].name for e in self.events], ["warn"])
        fake.script[:] = [None]
        port.doRead()
        self.assertEqual([e["log_level"].name for e in self.events], ["warn", "info"])
        self.assertEqual(self.events[1]["shed"], 3)
        self.assertEqual(self.events[1]["pauses"], 0)
        fake.script[:] = [_emfile()]
        port.doRead()
        self.assertEqual([e["log_level"].name for e in self.events],
                         ["warn", "info", "warn"])

    def test_stopListeningCancelsResume(self) -> None:
        """Stopping a paused port leaves no resume timer behind."""
        port, fake = self.makePort([_emfile()], canReserve=False)
        port.doRead()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.stop(port)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ReserveFDTests(SynchronousTestCase):
    """L{ReserveFD} holds exactly one descriptor."""

    def test_reserveRelease(self) -> None:
        """reserve opens one descriptor once; release closes it."""
        r = ReserveFD()
        self.addCleanup(r.release)
        self.assertFalse(r.available())
        self.assertTrue(r.reserve())
        fd = r._fd
        self.assertTrue(r.reserve())
        self.assertEqual(r._fd, fd)
        os.fstat(fd)
        r.release()
        self.assertFalse(r.available())
        self.assertRaises(OSError, os.fstat, fd)


class EndpointTests(TestCase):
    """L{reservingServerFromString} and L{listenWithFDReserve}."""

    def test_memoryReactorPassThrough(self) -> None:
        """On a memory reactor listening falls through to its listenTCP (tap tests)."""
        mem = MemoryReactorClock()
        ep = reservingServerFromString(mem, "tcp:2525:interface=127.0.0.1")
        f = protocol.ServerFactory()
        ep.listen(f)
        self.assertEqual(mem.tcpServers[0][:2], (2525, f))
        self.assertEqual(mem.tcpServers[0][3], "127.0.0.1")

    def test_badDescription(self) -> None:
        """A malformed description raises as serverFromString does."""
        self.assertRaises(ValueError, reservingServerFromString, reactor, "tcp:notaport")

    @defer.inlineCallbacks
    def test_realTCP(self) -> Any:
        """On the real reactor a tcp: endpoint listens with an FDReservingPort and serves."""
        room = RoomFactory()
        port = yield listenWithFDReserve(reactor, "tcp:0:interface=127.0.0.1", room)
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, FDReservingPort)
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield endpoints.connectProtocol(ep, _Collector())
        data = yield client.firstData
        self.assertEqual(data, RoomProtocol.greeting)
        self.assertEqual(room.built[0].transport.getPeer().host, "127.0.0.1")
        client.transport.loseConnection()
        yield client.done

    @defer.inlineCallbacks
    def test_realSSL(self) -> Any:
        """An ssl: endpoint gets an FDReservingPort under a TLS wrapper, and serves TLS."""
        base = self.mktemp()
        os.makedirs(base)
        cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
        tls.ensureSelfSigned(cert, key, ["localhost"])
        room = RoomFactory()
        desc = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        port = yield listenWithFDReserve(reactor, desc, room, shedLine=SMTP_REFUSAL)
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, FDReservingPort)
        self.assertIsInstance(port.factory, WrappingFactory)
        self.assertEqual(port.shedLine, b"")
        ctx = tssl.CertificateOptions(raiseMinimumTo=tssl.TLSVersion.TLSv1_2)
        ep = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, ctx)
        client = yield endpoints.connectProtocol(ep, _Collector())
        data = yield client.firstData
        self.assertEqual(data, RoomProtocol.greeting)
        client.transport.loseConnection()
        yield client.done


# --- EMFILE: a real server subprocess with a lowered RLIMIT_NOFILE --------------------------



def _greeted(s: socket.socket, timeout: float) -> bytes | None:
    """What the server first sends on C{s}: bytes, b"" on close, None if it stays silent."""
    s.settimeout(timeout)
    try:
        return s.recv(100)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


class EMFILETests(SynchronousTestCase):
    """A server whose descriptors run out neither spins nor stays broken."""

    capacity = 20

    def setUp(self) -> None:
        """Skip without /proc; remember client sockets for cleanup."""
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc (Linux)")
        self.clients: list[socket.socket] = []
        self.addCleanup(self.closeClients)

    def closeClients(self) -> None:
        """Close every client socket still open."""
        for s in self.clients:
            s.close()
        self.clients = []

    def startServer(self, mode: str) -> tuple[subprocess.Popen[bytes], int, str]:
        """Start tests/emfile_server.py in C{mode}; return it, its port, its log path."""
        logPath = self.mktemp()
        log = open(logPath, "wb")
        self.addCleanup(log.close)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, HELPER, mode, str(self.capacity)],
                                stdout=subprocess.PIPE, stderr=log, env=env)

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()

        self.addCleanup(stop)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            proc.wait(10)
            with open(logPath) as f:
                self.fail(f"server did not start: {line!r} {f.read()}")
        return proc, int(line.split()[1]), logPath

    def connect(self, port: int) -> socket.socket:
        """A new client connection to the server."""
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.clients.append(s)
        return s

    def saturate(self, port: int) -> tuple[int, bytes | None]:
        """Open connections until one is not greeted; return (greeted count, its answer)."""
        for _ in range(self.capacity * 2):
            s = self.connect(port)
            answer = _greeted(s, 1.0)
            if answer != b"hello\r\n":
                return len(self.clients) - 1, answer
        self.fail("the server never ran out of descriptors")

    def keepTrying(self, port: int, seconds: float) -> dict[str, int]:
        """Clients keep connecting for C{seconds}; count what each attempt saw."""
        outcomes: dict[str, int] = {}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    answer = _greeted(s, 0.2)
                    key = "silent" if answer is None else repr(answer)
            except OSError as e:
                key = type(e).__name__
            outcomes[key] = outcomes.get(key, 0) + 1
            time.sleep(0.005)
        return outcomes

    def recover(self, port: int) -> float:
        """After the held clients close, time until a new client is greeted again."""
        self.closeClients()
        start = time.monotonic()
        while time.monotonic() - start < 10:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if _greeted(s, 2.0) == b"hello\r\n":
                    return time.monotonic() - start
            time.sleep(0.05)
        self.fail("the server did not serve new connections after clients closed")

    def runScenario(self, mode: str) -> tuple[float, dict[str, int], bytes | None, str]:
        """Saturate, measure CPU over 2 s of retries, recover; return the observations."""
        proc, port, logPath = self.startServer(mode)
        served, answer = self.saturate(port)
        self.assertGreaterEqual(served, self.capacity // 2)
        self.assertLessEqual(served, self.capacity + 5)
        before = cpuSeconds(proc.pid)
        outcomes = self.keepTrying(port, 2.0)
        cpu = cpuSeconds(proc.pid) - before
        if mode != "twisted-lost-spare":
            self.recover(port)
        proc.terminate()
        proc.wait(10)
        with open(logPath) as f:
            logText = f.read()
        return cpu, outcomes, answer, logText

    def test_reserveShedsCheaply(self) -> None:
        """With the spare: refused clients get the shed line and a close, CPU stays low."""
        cpu, outcomes, answer, logText = self.runScenario("reserve")
        self.assertEqual(answer, b"busy\r\n")
        self.assertEqual(list(outcomes), ["b'busy\\r\\n'"], outcomes)
        self.assertGreater(outcomes["b'busy\\r\\n'"], 20)
        self.assertLess(cpu, 0.5, f"server used {cpu:.2f} s CPU in 2 s ({outcomes})")
        self.assertEqual(logText.count("cannot accept connections: Too many open files"), 1)
        self.assertEqual(logText.count("accepting connections again"), 1)

    def test_pauseBacksOffCheaply(self) -> None:
        """Without the spare: accepting pauses (clients wait), CPU stays low, then recovers."""
        cpu, outcomes, answer, logText = self.runScenario("pause")
        self.assertIsNone(answer)
        self.assertNotIn("b'hello\\r\\n'", outcomes)
        self.assertLess(cpu, 0.5, f"server used {cpu:.2f} s CPU in 2 s ({outcomes})")
        self.assertEqual(logText.count("cannot accept connections: Too many open files"), 1)
        self.assertIn("accepting connections again", logText)

    def test_controlTwistedSpins(self) -> None:
        """Control: Twisted's own port without its spare busy-loops in the same harness."""
        cpu, outcomes, answer, logText = self.runScenario("twisted-lost-spare")
        self.assertIsNone(answer)
        self.assertIn("Could not accept new connection (EMFILE)", logText)
        self.assertGreater(cpu, 0.5, f"expected a busy loop, server used {cpu:.2f} s")


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
