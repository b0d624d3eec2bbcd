"""Tests for L{pymaild.auth.policy.cleartextAllowed}."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from pymaild.auth.policy import POLICIES, cleartextAllowed, isLoopback, isSecure


def transport(peer: Any, tls: bool = False) -> StringTransport:
    """A StringTransport with peer C{peer}, providing ISSLTransport if C{tls}."""
    t = StringTransport(peerAddress=peer)
    if tls:
        directlyProvides(t, ISSLTransport)
    return t


def v4(host: str) -> IPv4Address:
    """A TCP IPv4 peer address."""
    return IPv4Address("TCP", host, 40000)


def v6(host: str) -> IPv6Address:
    """A TCP IPv6 peer address."""
    return IPv6Address("TCP", host, 40000)


# (peer, is it local?)
PEERS = [
    (v4("127.0.0.1"), True),
    (v4("127.45.6.7"), True),
    (v6("::1"), True),
    (v6("::ffff:127.0.0.1"), True),
    (UNIXAddress(b"/run/pymaild.sock"), True),
    (v4("10.0.0.1"), False),
    (v4("192.0.2.1"), False),
    (v4("128.0.0.1"), False),
    (v6("2001:db8::1"), False),
    (v6("::ffff:192.0.2.1"), False),
    (v6("fe80::1%eth0"), False),
    (v6("::"), False),
]

# policy -> (allowed without TLS for a local peer, for a remote peer)
TABLE = {
    "tls-only": (False, False),
    "tls-or-loopback": (True, False),
    "always": (True, True),
}


class CleartextPolicyTests(SynchronousTestCase):
    """The policy table over peers and TLS."""

    def test_table(self) -> None:
        """Every policy, peer and TLS state gives the documented answer."""
        self.assertEqual(set(TABLE), set(POLICIES))
        for policy, (local, remote) in TABLE.items():
            for peer, isLocal in PEERS:
                expected = local if isLocal else remote
                got = cleartextAllowed(policy, transport(peer))
                self.assertEqual(got, expected, f"{policy} {peer} plain")
                self.assertTrue(cleartextAllowed(policy, transport(peer, tls=True)), policy)

    def test_unknownPolicy(self) -> None:
        """An unknown policy name is a ValueError, not a silent answer."""
        for bad in ("", "never", "TLS-ONLY", "tls_only"):
            self.assertRaises(ValueError, cleartextAllowed, bad, transport(v4("127.0.0.1")))

    def test_loopbackHelpers(self) -> None:
        """isLoopback reads the peer; isSecure reads the transport's interfaces."""
        self.assertTrue(isLoopback(transport(v4("127.0.0.2"))))
        self.assertFalse(isLoopback(transport(v4("192.0.2.1"))))
        self.assertFalse(isSecure(transport(v4("127.0.0.1"))))
        self.assertTrue(isSecure(transport(v4("192.0.2.1"), tls=True)))

    def test_peerless(self) -> None:
        """A transport whose getPeer fails is not loopback."""

        class NoPeer:
            def getPeer(self) -> Any:
                raise RuntimeError("closed")

        self.assertFalse(isLoopback(NoPeer()))
        self.assertFalse(cleartextAllowed("tls-or-loopback", NoPeer()))

    def test_twistedTLSTransport(self) -> None:
        """Twisted's TLS transport (implicit TLS ports) counts as TLS."""
        self.assertTrue(ISSLTransport.implementedBy(TLSMemoryBIOProtocol))

    def test_wrappedTransport(self) -> None:
        """A wrapper over a transport that started TLS after wrapping counts as TLS."""
        for tls in (True, False):
            inner = transport(v4("192.0.2.1"))
            wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())  # type: ignore[arg-type]
            wrapper.makeConnection(inner)  # copies the interfaces inner has now
            if tls:  # what startTLS does to the TCP transport later
                directlyProvides(inner, ISSLTransport)
            self.assertFalse(ISSLTransport.providedBy(wrapper))
            self.assertEqual(cleartextAllowed("tls-only", wrapper), tls)
