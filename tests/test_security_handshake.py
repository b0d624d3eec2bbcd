"""I16 (and F8): an incomplete TLS handshake on an implicit-TLS port is timed out.

L{pymaild.limits.HandshakeTimeoutFactory} sits directly inside Twisted's TLS layer. The
first class shows, over a StringTransport, why it is needed (the IMAP room's own
pre-login timeout cannot close a connection whose handshake never started) and that it
aborts such a connection; the second runs real loopback TCP: a client sending half a
ClientHello is dropped and its slot freed, a client that completed its handshake is not.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild import tls
from pymaild.limits import (
    IMAP_REFUSAL,
    ConnectionLimits,
    HandshakeTimeoutFactory,
    LimitedFactory,
)
from tests.test_imap_helpers import IMAPEnv

HALF_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20


def serverContext(testcase: Any) -> Any:
    """A server TLS context with a fresh self-signed certificate."""
    d = os.path.abspath(testcase.mktemp())
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    tls.ensureSelfSigned(cert, key, ["mx.example.org"])
    return tls.serverContext(cert, key)


class HandshakeDeadlineUnitTests(SynchronousTestCase):
    """The deadline over a StringTransport and a Clock."""

    def connect(self, factory: Any) -> tuple[Any, StringTransport]:
        """Open one connection on C{factory} (the TLS layer) over a StringTransport."""
        addr = IPv4Address("TCP", "192.0.2.9", 50000)
        proto = factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr,
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 993))
        proto.makeConnection(transport)
        return proto, transport

    def test_roomTimeoutAloneLeavesStalledHandshakeOpen(self) -> None:
        """Without the deadline, IMAP's 60 s pre-login timeout writes its BYE into the
        TLS buffer and the connection stays open forever: Twisted's TLS layer waits for
        a handshake the client never sends (why the deadline exists)."""
        env = IMAPEnv(self, implicitTLS=True)
        factory = TLSMemoryBIOFactory(serverContext(self), False, env.factory)
        proto, transport = self.connect(factory)
        env.clock.advance(3600)
        self.assertEqual(proto.wrappedProtocol.state, "logout")  # the room timed out
        self.assertFalse(transport.disconnecting)
        self.assertFalse(transport.disconnected)

    def test_stalledHandshakeAborted(self) -> None:
        """With the deadline, a connection that sent nothing is aborted when it expires,
        not before; the count of expired handshakes goes up."""
        env = IMAPEnv(self, implicitTLS=True)
        clock = Clock()
        deadline = HandshakeTimeoutFactory(env.factory, clock, timeout=10)
        _, transport = self.connect(TLSMemoryBIOFactory(serverContext(self), False, deadline))
        clock.advance(9.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(deadline.expired, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_halfClientHelloAborted(self) -> None:
        """Half a ClientHello does not hold the connection open either."""
        env = IMAPEnv(self, implicitTLS=True)
        clock = Clock()
        deadline = HandshakeTimeoutFactory(env.factory, clock, timeout=5)
        tlsFactory = TLSMemoryBIOFactory(serverContext(self), False, deadline)
        addr = IPv4Address("TCP", "192.0.2.9", 50000)
        proto = tlsFactory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        proto.dataReceived(HALF_CLIENT_HELLO)
        clock.advance(5)
        self.assertTrue(transport.disconnected)

    def test_misuse(self) -> None:
        """Outside the TLS layer the deadline would kill every connection: refused; and
        the timeout must be positive."""
        env = IMAPEnv(self, implicitTLS=True)
        tlsFactory = TLSMemoryBIOFactory(serverContext(self), False, env.factory)
        self.assertRaises(TypeError, HandshakeTimeoutFactory, tlsFactory, Clock())
        self.assertRaises(ValueError, HandshakeTimeoutFactory, env.factory, Clock(), 0)


class _Watcher(protocol.Protocol):
    """A raw client that records what it got and when the connection ended."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        """Keep the bytes."""
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        """Fire C{lost}."""
        self.lost.callback(None)


class HandshakeDeadlineTCPTests(TestCase):
    """The deadline on a real loopback listener, built as the tap should build it."""

    timeout = 30

    def listen(self, deadline: float) -> tuple[int, ConnectionLimits, HandshakeTimeoutFactory]:
        """An implicit-TLS IMAP listener: TLS(deadline(limits(IMAP)))."""
        env = IMAPEnv(self, implicitTLS=True)
        env.factory.clock = reactor
        limits = ConnectionLimits(maxTotal=10, maxPerIP=10)
        limited = LimitedFactory(env.factory, limits, IMAP_REFUSAL, reactor)
        timed = HandshakeTimeoutFactory(limited, reactor, timeout=deadline)
        factory = TLSMemoryBIOFactory(serverContext(self), False, timed)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, limits, timed

    @defer.inlineCallbacks
    def test_halfHandshakeDroppedAndSlotFreed(self) -> Any:
        """A client that sends half a ClientHello and waits is disconnected after the
        deadline, and its connection slot is released."""
        portNumber, limits, timed = self.listen(0.3)
        client = _Watcher()
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", portNumber)
        yield endpoints.connectProtocol(ep, client)
        client.transport.write(HALF_CLIENT_HELLO)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(limits.total, 1)
        yield client.lost
        self.assertEqual(client.data, b"")
        self.assertEqual(timed.expired, 1)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(limits.total, 0)

    @defer.inlineCallbacks
    def test_completedHandshakeOutlivesDeadline(self) -> Any:
        """A client that finished its handshake stays connected past the deadline and
        is served normally."""
        portNumber, limits, timed = self.listen(0.3)
        client = _Watcher()
        ep = endpoints.wrapClientTLS(
            ssl.CertificateOptions(verify=False),
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", portNumber),
        )
        yield endpoints.connectProtocol(ep, client)
        yield deferLater(reactor, 0.8, lambda: None)
        self.assertTrue(client.data.startswith(b"* OK [CAPABILITY IMAP4rev1"), client.data)
        self.assertFalse(client.lost.called)
        client.transport.write(b"a NOOP\r\n")
        for _ in range(50):
            if b"a OK" in client.data:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertIn(b"a OK NOOP completed", client.data)
        self.assertEqual(timed.expired, 0)
        client.transport.loseConnection()
        yield client.lost
