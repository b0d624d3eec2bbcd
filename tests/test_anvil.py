"""The anvil (L{pymaild.anvil}) over a real AMP connection on loopback.

A master's L{AnvilServer} and a worker's L{AnvilClient} talk over a real TCP connection
on 127.0.0.1; the worker-side objects (L{RemoteConnectionLimits},
L{RemoteUserIPLimits}, L{RemotePenalty}, L{RemoteRate}) are checked against the
master's real L{ConnectionLimits}, L{UserIPLimits}, L{AuthPenalty} and a delivery
avatar's hourly count, and a L{LimitedFactory} over the remote limits serves real
loopback connections (admitted with the bytes sent early, or refused).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from pymaild.anvil import (
    AnvilClient,
    AnvilServer,
    RemoteConnectionLimits,
    RemotePenalty,
    RemoteRate,
    RemoteUserIPLimits,
    Shared,
)
from pymaild.auth.penalty import AuthPenalty
from pymaild.limits import SMTP_REFUSAL, ConnectionLimits, LimitedFactory, UserIPLimits


class HourlyCount:
    """A delivery avatar's hourly limit, counted (the master's side of L{RemoteRate})."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[str] = []

    def rateAllows(self, user: str) -> bool:
        """Under the limit."""
        return self.sent.count(user) < self.limit

    def recordSent(self, user: str) -> None:
        """Count one."""
        self.sent.append(user)


class Greeter(protocol.Protocol):
    """A room protocol: greets, then echoes what it gets."""

    def connectionMade(self) -> None:
        """Greet."""
        assert self.transport is not None
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data: bytes) -> None:
        """Echo."""
        assert self.transport is not None
        self.transport.write(data)


class Reader(protocol.Protocol):
    """A client that keeps what it reads and fires when the connection ends."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.waiting: list[tuple[bytes, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        """Keep the bytes."""
        self.data += data
        for want, d in list(self.waiting):
            if want in self.data:
                self.waiting.remove((want, d))
                d.callback(None)

    def until(self, want: bytes) -> defer.Deferred[None]:
        """Fires once C{want} was read."""
        if want in self.data:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append((want, d))
        return d

    def connectionLost(self, reason: Any = None) -> None:
        """Done."""
        self.ended.callback(None)


class AnvilTests(TestCase):
    """The worker's objects count in the master's, over a real connection."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        """A master's shared objects and anvil listening on loopback, a worker's
        client connected to it."""
        self.connections = ConnectionLimits(maxTotal=10, maxPerIP=2)
        self.userIP = UserIPLimits(maxPerUserIP=1)
        self.penalty = AuthPenalty()
        self.rate = HourlyCount(2)
        self.queued: list[str] = []
        self.shared = Shared(self.connections, self.userIP, self.penalty, self.rate,
                             self.queued.append, reactor)
        self.hello: defer.Deferred[AnvilServer] = defer.Deferred()
        self.servers: list[AnvilServer] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

        def build() -> AnvilServer:
            server = AnvilServer(self.shared, onHello=self.hello.callback,
                                 onLost=lambda s: self.lost.callback(None))
            self.servers.append(server)
            return server

        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: build()  # type: ignore[method-assign]
        self.port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory)
        self.addCleanup(self.port.stopListening)
        self.client = AnvilClient(1, 4242, lambda: b"pymaild_x 1.0\n")
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port).connect(
            _One(self.client))
        server = yield self.hello
        self.assertEqual((server.index, server.pid), (1, 4242))

    def tearDown(self) -> Any:
        """Close the anvil connection."""
        if self.client.transport is not None:
            self.client.transport.loseConnection()
            return self.lost
        return None

    @defer.inlineCallbacks
    def test_connectionsCountedByTheMaster(self) -> Any:
        """Two connections from one host are admitted, the third refused; a release
        frees a slot; the master's own acquisitions share the same count."""
        remote = RemoteConnectionLimits(self.client)
        self.assertTrue((yield remote.acquire("192.0.2.1")))
        self.assertTrue(self.connections.acquire("192.0.2.1"))
        self.assertFalse((yield remote.acquire("192.0.2.1")))
        self.assertEqual(self.connections.count("192.0.2.1"), 2)
        remote.release("192.0.2.1")
        yield self.client.ask(_Sync(), "ok", host="192.0.2.9")  # after the release
        self.assertEqual(self.connections.count("192.0.2.1"), 1)

    @defer.inlineCallbacks
    def test_workerGoneReleasesAll(self) -> Any:
        """What a worker still holds when its connection ends is released."""
        remote = RemoteConnectionLimits(self.client)
        users = RemoteUserIPLimits(self.client)
        self.assertTrue((yield remote.acquire("192.0.2.1")))
        self.assertTrue((yield remote.acquire("192.0.2.2")))
        self.assertTrue((yield users.acquire("alice@example.org", "192.0.2.1")))
        self.assertEqual(self.connections.total, 2)
        self.client.transport.loseConnection()  # type: ignore[union-attr]
        yield self.lost
        self.assertEqual(self.connections.total, 0)
        self.assertEqual(self.userIP.count("alice@example.org", "192.0.2.1"), 0)

    @defer.inlineCallbacks
    def test_unknownReleaseIgnored(self) -> Any:
        """A release of a connection the worker never counted does not touch the
        master's count of its own."""
        self.assertTrue(self.connections.acquire("192.0.2.1"))
        RemoteConnectionLimits(self.client).release("192.0.2.1")
        yield self.client.ask(_Sync(), "ok", host="192.0.2.9")
        self.assertEqual(self.connections.count("192.0.2.1"), 1)

    @defer.inlineCallbacks
    def test_userSessions(self) -> Any:
        """One session per user and IP: the second is refused until released."""
        users = RemoteUserIPLimits(self.client)
        self.assertTrue((yield users.acquire("alice@example.org", "192.0.2.1")))
        self.assertFalse((yield users.acquire("alice@example.org", "192.0.2.1")))
        self.assertFalse(self.userIP.acquire("alice@example.org", "192.0.2.1"))
        users.release("alice@example.org", "192.0.2.1")
        self.assertTrue((yield users.acquire("alice@example.org", "192.0.2.1")))

    @defer.inlineCallbacks
    def test_penalty(self) -> Any:
        """Failures recorded through the worker are the master's record, with the
        doubling delays; a success clears it."""
        penalty = RemotePenalty(self.client, AuthPenalty())
        self.assertEqual((yield penalty.failures("192.0.2.1", 0.0)), 0)
        self.assertEqual((yield penalty.failure("192.0.2.1", 0.0)), 2.0)
        self.penalty.failure("192.0.2.1", reactor.seconds())
        self.assertEqual((yield penalty.failure("192.0.2.1", 0.0)), 8.0)
        self.assertEqual((yield penalty.failures("192.0.2.1", 0.0)), 3)
        self.assertEqual(penalty.delayFor(4), 15.0)
        penalty.success("192.0.2.1")
        self.assertEqual((yield penalty.failures("192.0.2.1", 0.0)), 0)

    @defer.inlineCallbacks
    def test_rateAndQueue(self) -> Any:
        """The hourly count is the master's; a queued message's id reaches it."""
        rate = RemoteRate(self.client)
        self.assertTrue((yield rate.allows("alice@example.org")))
        rate.sent("alice@example.org")
        rate.sent("alice@example.org")
        self.assertFalse((yield rate.allows("alice@example.org")))
        from pymaild.anvil import Queued

        self.client.tell(Queued, qid="17000000000000000000")
        yield self.client.ask(_Sync(), "ok", host="192.0.2.9")
        self.assertEqual(self.queued, ["17000000000000000000"])

    @defer.inlineCallbacks
    def test_scrape(self) -> Any:
        """The master gets the worker's metrics text, in parts when it is long."""
        server = self.servers[0]
        self.assertEqual((yield server.scrape()), b"pymaild_x 1.0\n")
        long = b"".join(b"pymaild_y{n=\"%d\"} 1.0\n" % i for i in range(10_000))
        self.client.render = lambda: long
        self.assertGreater(len(long), 65_535)
        self.assertEqual((yield server.scrape()), long)

    @defer.inlineCallbacks
    def test_limitedFactoryOverRemoteLimits(self) -> Any:
        """A worker's listener: a client's bytes sent before the master's answer reach
        the room once admitted; over the cap, the client gets the refusal line."""
        remote = RemoteConnectionLimits(self.client)
        room = protocol.Factory.forProtocol(Greeter)
        limited = LimitedFactory(room, remote, SMTP_REFUSAL, reactor)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(limited)
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        first = Reader()
        yield endpoint.connect(_One(first))
        first.transport.write(b"early\r\n")  # type: ignore[union-attr]
        yield first.until(b"220 hello\r\nearly\r\n")
        self.assertEqual(len(remote.sessions), 1)
        second = Reader()
        yield endpoint.connect(_One(second))
        yield second.until(b"220 hello")
        third = Reader()
        yield endpoint.connect(_One(third))
        yield third.ended
        self.assertEqual(third.data, SMTP_REFUSAL)
        self.assertEqual(limited.refused, 1)
        self.assertEqual(self.connections.count("127.0.0.1"), 2)
        first.transport.loseConnection()  # type: ignore[union-attr]
        yield first.ended
        second.transport.loseConnection()  # type: ignore[union-attr]
        yield second.ended
        yield self.client.ask(_Sync(), "ok", host="192.0.2.9")
        self.assertEqual(self.connections.count("127.0.0.1"), 0)


def _Sync() -> Any:
    """A command whose answer comes after every command sent before it (AMP answers
    in order on one connection): an acquire for an address no test uses."""
    from pymaild.anvil import Acquire

    return Acquire


class _One(protocol.Factory):
    """A factory for one given protocol."""

    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        """The protocol."""
        return self.proto
