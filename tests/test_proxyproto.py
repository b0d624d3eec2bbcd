"""Pins what L{pymaild.cluster.proxyproto} uses of Twisted's private PROXY protocol
modules, so a Twisted upgrade that moves or changes them fails here, loudly (the
system tests through nginx are in C{tests/test_cluster_proxy.py})."""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from pymaild.cluster import proxyproto

V2_HEADER = (V2Parser.PREFIX + bytes([0x21, 0x11, 0x00, 12])
             + bytes([192, 0, 2, 7, 198, 51, 100, 9]) + (40000).to_bytes(2, "big")
             + (143).to_bytes(2, "big"))


class PrivateHAProxyTests(SynchronousTestCase):
    """The parsers, their prefixes and buffers, and the wrapper's fields."""

    def test_prefixes(self) -> None:
        """The two signatures the module tells the versions apart by."""
        self.assertEqual(V1Parser.PROXYSTR, b"PROXY")
        self.assertEqual(V2Parser.PREFIX, b"\r\n\r\n\x00\r\nQUIT\n")

    def test_v1Feed(self) -> None:
        """C{feed} answers C{(info, rest)}, keeps a partial header in C{buffer}, and
        raises L{InvalidProxyHeader} for a bad one."""
        parser = V1Parser()
        info, rest = parser.feed(b"PROXY TCP4 192.0.2.7 ")
        self.assertIsNone(info)
        self.assertEqual(parser.buffer, b"PROXY TCP4 192.0.2.7 ")
        info, rest = parser.feed(b"198.51.100.9 40000 143\r\na1 NOOP\r\n")
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.7", 40000))
        self.assertEqual(rest, b"a1 NOOP\r\n")
        self.assertRaises(InvalidProxyHeader, V1Parser().feed, b"PROXY TCP4 x\r\n")

    def test_v2Feed(self) -> None:
        """The binary header gives the client's address and the bytes after it."""
        info, rest = V2Parser().feed(V2_HEADER + b"a1 NOOP\r\n")
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.7", 40000))
        self.assertEqual(rest, b"a1 NOOP\r\n")

    def test_wrapperFields(self) -> None:
        """The module's connection is a L{HAProxyProtocolWrapper} and sets the fields
        the wrapper's C{getPeer}/C{getHost} read (C{_proxyInfo}, C{_parser})."""
        self.assertTrue(issubclass(proxyproto._ProxiedConnection, HAProxyProtocolWrapper))
        wrapper = HAProxyProtocolWrapper(WrappingFactory(Factory()), Protocol())
        self.assertIsNone(wrapper._parser)
        self.assertIsNone(wrapper._proxyInfo)
        wrapper._proxyInfo = V2Parser().feed(V2_HEADER)[0]
        self.assertEqual(wrapper.getPeer().host, "192.0.2.7")
        self.assertEqual(wrapper.getHost().port, 143)
