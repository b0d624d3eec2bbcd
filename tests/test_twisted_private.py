"""The private fields of Twisted's tcp.Port that pymaild.listen.FDReservingPort sets for
the worker processes, pinned by what they do, so a Twisted upgrade that renames or
changes one fails here and not in production.

There is no public way to have a tcp.Port subclass accept on a socket another process
bound (C{reactor.adoptStreamPort} builds a plain tcp.Port, without the descriptor
reserve and the back-off of FDReservingPort), nor to stop a port without shutting down a
socket other processes still accept on: C{_preexistingSocket} is the hook
adoptStreamPort itself uses, and C{_shouldShutdown} the flag it clears.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, protocol, reactor, tcp, threads
from twisted.trial.unittest import TestCase

from pymaild.listen import FDReservingPort


def listeningSocket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1:0 and listening, non-blocking (as adopted)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    s.setblocking(False)
    return s


def acceptsAfterConnect(listener: socket.socket) -> bool:
    """Whether C{listener} still accepts: connect a client to it and accept (blocking)."""
    port = listener.getsockname()[1]
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return False
    try:
        listener.settimeout(5)
        conn, _ = listener.accept()
        conn.close()
        return True
    except OSError:
        return False
    finally:
        client.close()


class PortPrivateFieldsTests(TestCase):
    """_preexistingSocket and _shouldShutdown of tcp.Port."""

    timeout = 30

    def test_fieldsExist(self) -> None:
        """Both are still class attributes of tcp.Port, with their defaults."""
        self.assertIsNone(tcp.Port._preexistingSocket)
        self.assertTrue(tcp.Port._shouldShutdown)

    @defer.inlineCallbacks
    def test_adoptedSocket(self) -> Any:
        """A port given C{adopt} accepts on that very socket, and stopping it leaves the
        socket working for the process that still holds it (no shutdown)."""
        original = listeningSocket()
        self.addCleanup(original.close)
        port = FDReservingPort(0, protocol.Factory.forProtocol(protocol.Protocol),
                               interface="127.0.0.1", reactor=reactor,
                               adopt=original.dup())
        port.startListening()
        self.assertEqual(port.getHost().port, original.getsockname()[1])
        self.assertFalse(port._shouldShutdown)
        yield port.stopListening()
        ok = yield threads.deferToThread(acceptsAfterConnect, original)
        self.assertTrue(ok)

    @defer.inlineCallbacks
    def test_shareKeepsSocketForOthers(self) -> Any:
        """share() stops the port without shutting its socket down (a copy of it still
        accepts); without share(), Twisted shuts it down for every holder."""
        for shared in (True, False):
            port = FDReservingPort(0, protocol.Factory.forProtocol(protocol.Protocol),
                                   interface="127.0.0.1", reactor=reactor)
            port.startListening()
            other = port.socket.dup()
            self.addCleanup(other.close)
            if shared:
                port.share()
            yield port.stopListening()
            ok = yield threads.deferToThread(acceptsAfterConnect, other)
            self.assertEqual(ok, shared)
