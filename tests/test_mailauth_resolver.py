"""Tests for L{pymaild.mailauth.resolver} against a real DNS server on loopback."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from pymaild.config import RelayConfig
from pymaild.mailauth.resolver import NODATA, NXDOMAIN, OK, TEMPERROR, DNSResolver
from pymaild.smtp.mx import makeResolver
from tests.dnsserver import AAAA, CNAME, MX, PTR, TXT, A, ZoneServer, longTXT, reverseName

ZONES = {
    "example.test": {
        "example.test": [TXT("v=spf1 ", "mx -all"), MX("mx.example.test", 5), A("192.0.2.1")],
        "mx.example.test": [A("192.0.2.25"), AAAA("2001:db8::25")],
        "alias.example.test": [CNAME("example.test")],
        "far.example.test": [CNAME("other.test")],
        "loop1.example.test": [CNAME("loop2.example.test")],
        "loop2.example.test": [CNAME("loop1.example.test")],
        "big.example.test": [longTXT("v=DKIM1; k=rsa; p=" + "A" * 16000)],
        "empty.example.test": [A("192.0.2.9")],
    },
    "other.test": {"other.test": [TXT("far away")]},
    "2.0.192.in-addr.arpa": {reverseName("192.0.2.25"): [PTR("mx.example.test")]},
}


def resolverFor(server: ZoneServer, timeout: float = 10.0) -> DNSResolver:
    """A L{DNSResolver} over the relay's resolver pointed at C{server}."""
    config = RelayConfig(dns_servers=(server.address,))
    return DNSResolver(makeResolver(config, reactor), reactor, timeout=timeout)


class DNSResolverTests(TestCase):
    """Each lookup kind against the test server, and each kind of empty answer."""

    def setUp(self) -> None:
        """Start the test DNS server."""
        self.server = ZoneServer(ZONES, failing={"broken.example.test"},
                                    silent={"slow.example.test"})
        self.server.start()
        self.addCleanup(self.server.stop)
        self.resolver = resolverFor(self.server)

    @defer.inlineCallbacks
    def test_txtJoinsStrings(self) -> defer.Generator:
        """The strings of one TXT record are joined with nothing between them."""
        answer = yield self.resolver.txt("example.test")
        self.assertEqual((answer.status, answer.records), (OK, (b"v=spf1 mx -all",)))

    @defer.inlineCallbacks
    def test_addressesAndMX(self) -> defer.Generator:
        """A, AAAA, MX and PTR lookups give addresses, pairs and names."""
        a = yield self.resolver.a("mx.example.test")
        aaaa = yield self.resolver.aaaa("mx.example.test")
        mx = yield self.resolver.mx("example.test")
        ptr = yield self.resolver.ptr("192.0.2.25")
        self.assertEqual(a.records, ("192.0.2.25",))
        self.assertEqual(aaaa.records, ("2001:db8::25",))
        self.assertEqual(mx.records, ((5, "mx.example.test"),))
        self.assertEqual(ptr.records, ("mx.example.test",))

    @defer.inlineCallbacks
    def test_nxdomainAndNodata(self) -> defer.Generator:
        """A missing name is NXDOMAIN; a name without the type is NODATA."""
        missing = yield self.resolver.txt("nothing.example.test")
        empty = yield self.resolver.txt("empty.example.test")
        self.assertEqual(missing.status, NXDOMAIN)
        self.assertEqual(empty.status, NODATA)

    @defer.inlineCallbacks
    def test_cnameFollowed(self) -> defer.Generator:
        """CNAMEs are followed, within the zone and into another one."""
        near = yield self.resolver.txt("alias.example.test")
        far = yield self.resolver.txt("far.example.test")
        self.assertEqual(near.records, (b"v=spf1 mx -all",))
        self.assertEqual(far.records, (b"far away",))

    @defer.inlineCallbacks
    def test_cnameLoop(self) -> defer.Generator:
        """A CNAME loop ends as NODATA naming the loop, not as endless queries."""
        answer = yield self.resolver.txt("loop1.example.test")
        self.assertEqual(answer.status, NODATA)
        self.assertIn("CNAME loop", answer.reason)

    @defer.inlineCallbacks
    def test_servfailIsTemporary(self) -> defer.Generator:
        """SERVFAIL is a temporary error."""
        answer = yield self.resolver.txt("broken.example.test")
        self.assertEqual(answer.status, TEMPERROR)

    @defer.inlineCallbacks
    def test_timeoutIsTemporary(self) -> defer.Generator:
        """A server that never answers gives a temporary error within the deadline."""
        resolver = resolverFor(self.server, timeout=1.0)
        start = reactor.seconds()
        answer = yield resolver.txt("slow.example.test")
        self.assertEqual(answer.status, TEMPERROR)
        self.assertLess(reactor.seconds() - start, 10)

    @defer.inlineCallbacks
    def test_largeRecordOverTCP(self) -> defer.Generator:
        """A 16 KB TXT record arrives whole (truncated over UDP, then asked over TCP)."""
        answer = yield self.resolver.txt("big.example.test")
        self.assertEqual(answer.status, OK)
        self.assertEqual(len(answer.records[0]), len("v=DKIM1; k=rsa; p=") + 16000)

    @defer.inlineCallbacks
    def test_badNames(self) -> defer.Generator:
        """Names that cannot be asked for are NXDOMAIN, not exceptions."""
        long = yield self.resolver.txt("a" * 64 + ".example.test")
        empty = yield self.resolver.txt("a..example.test")
        notip = yield self.resolver.ptr("not-an-address")
        self.assertEqual({long.status, empty.status, notip.status}, {NXDOMAIN})
