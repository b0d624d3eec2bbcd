"""Tests for L{pymaild.smtp.fastreply}: the private attributes of Twisted's TCP
connection it reads are pinned on a real loopback connection, so a Twisted release that
changes them fails here."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, protocol, reactor, tcp
from twisted.trial.unittest import TestCase

from pymaild.smtp import fastreply


class _Server(protocol.Protocol):
    """Hands its transport to the test once connected."""

    def connectionMade(self) -> None:
        """Tell the factory's Deferred."""
        self.factory.made.callback(self.transport)  # type: ignore[attr-defined]


class PinnedAttributesTests(TestCase):
    """The C{tcp.Connection} internals L{fastreply.sendNow} relies on."""

    @defer.inlineCallbacks
    def connection(self) -> Any:
        """The server side of a real loopback TCP connection (a C{tcp.Server})."""
        factory = protocol.Factory.forProtocol(_Server)
        factory.made = defer.Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port), 5)
        self.addCleanup(client.close)
        transport = yield factory.made
        self.addCleanup(transport.loseConnection)
        return transport

    @defer.inlineCallbacks
    def test_attributes(self) -> Any:
        """Every name in C{_TCP_ATTRS} exists with the type and the idle value
        C{sendNow} reads: no TLS, connected, not closing, empty write queues."""
        conn = yield self.connection()
        self.assertIsInstance(conn, tcp.Connection)
        self.assertEqual(set(fastreply._TCP_ATTRS),
                         {"TLS", "connected", "disconnecting", "_writeDisconnected",
                          "_tempDataBuffer", "dataBuffer", "offset", "socket"})
        self.assertIs(conn.TLS, False)
        self.assertTrue(conn.connected)
        self.assertFalse(conn.disconnecting)
        self.assertFalse(conn._writeDisconnected)
        self.assertEqual(conn._tempDataBuffer, [])
        self.assertIsInstance(conn.dataBuffer, bytes)
        self.assertEqual(conn.offset, len(conn.dataBuffer))
        self.assertIsInstance(conn.socket, socket.socket)
        self.assertIs(fastreply.plainTCP(conn), conn)

    @defer.inlineCallbacks
    def test_writeQueues(self) -> Any:
        """Twisted's C{write} queues in C{_tempDataBuffer} until the reactor's next
        pass: the queue C{sendNow} must not jump."""
        conn = yield self.connection()
        conn.write(b"queued\r\n")
        self.assertEqual(conn._tempDataBuffer, [b"queued\r\n"])
        self.assertEqual(fastreply.sendNow(conn, b"250 ok\r\n"), b"250 ok\r\n")

    @defer.inlineCallbacks
    def test_loseConnectionMarks(self) -> Any:
        """C{loseConnection} sets C{disconnecting}: nothing more is sent directly."""
        conn = yield self.connection()
        conn.loseConnection()
        self.assertTrue(conn.disconnecting)
        self.assertEqual(fastreply.sendNow(conn, b"250 ok\r\n"), b"250 ok\r\n")

    @defer.inlineCallbacks
    def test_sendsOnIdleConnection(self) -> Any:
        """On an idle connection the reply goes to the socket at once (nothing queued)."""
        conn = yield self.connection()
        self.assertEqual(fastreply.sendNow(conn, b"250 ok\r\n"), b"")
        self.assertEqual(conn._tempDataBuffer, [])
