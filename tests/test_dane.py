"""Tests for pymaild.smtp.dane and DANE in the relay (RFC 7672), over real sockets.

The zone C{example.test} is signed with ldns-signzone and served to a validating
unbound (L{tests.dnssec_support}) that trusts only its key; the relay asks that unbound
both as its ordinary resolver and as its validating one. The MX is a scripted ESMTP
server on loopback with certificates from a loopback CA (or self-signed).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server

from pymaild.config import RelayConfig
from pymaild.mailauth.resolver import DNSResolver
from pymaild.smtp.dane import (
    DANE,
    TLSA,
    HostTLSA,
    TLSARecord,
    ValidatingResolver,
    _ADQuery,
    _Controller,
)
from pymaild.smtp.esmtpclient import DELIVERED, TEMPORARY, Message, Outcome
from pymaild.smtp.mtasts import MTASTS
from pymaild.smtp.relay import Relay
from pymaild.smtp.tlsrpt import TLSResults
from pymaild.threads import InlineRunner
from pymaild.tls import ensureSelfSigned, loadCAFile, serverContext
from tests import dnssec_support
from tests.dnsserver import MX, ZoneServer
from tests.test_mtasts import PolicyResource
from tests.test_relay_support import LoopbackCA, ScriptedSMTPFactory, SNIContext

SIMPLE = b"From: a@client.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def loadCert(path: str) -> list[x509.Certificate]:
    """The certificates of a PEM file."""
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


def spki(cert: x509.Certificate) -> bytes:
    """The DER SubjectPublicKeyInfo of C{cert}."""
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def der(cert: x509.Certificate) -> bytes:
    """The DER certificate."""
    return cert.public_bytes(serialization.Encoding.DER)


def tlsa(usage: int, selector: int, matching: int, cert: x509.Certificate) -> str:
    """The zone-file data of a TLSA record for C{cert}."""
    content = der(cert) if selector == 0 else spki(cert)
    if matching == 1:
        content = hashlib.sha256(content).digest()
    elif matching == 2:
        content = hashlib.sha512(content).digest()
    return f"{usage} {selector} {matching} {content.hex()}"


class Issued:
    """A server certificate the loopback CA issued: its files, leaf and context
    (which presents the leaf and, with C{withCA}, the CA certificate)."""

    def __init__(self, ca: LoopbackCA, names: list[str], withCA: bool = True) -> None:
        ca.serverContext(names)
        n = ca._issued
        certPath = os.path.join(ca.base, f"server{n}.pem")
        self.key = os.path.join(ca.base, f"server{n}.key")
        self.leaf = loadCert(certPath)[0]
        self.chain = os.path.join(ca.base, f"chain{n}.pem")
        with open(self.chain, "wb") as f:
            f.write(self.leaf.public_bytes(serialization.Encoding.PEM))
            if withCA:
                f.write(ca.cert.public_bytes(serialization.Encoding.PEM))
        self.context = serverContext(self.chain, self.key)


class MatchTests(SynchronousTestCase):
    """L{HostTLSA.check} for each usage, selector and matching type."""

    def setUp(self) -> None:
        """A CA and certificates it issued for mx.example.test and another name."""
        self.ca = LoopbackCA(self)
        self.good = Issued(self.ca, ["mx.example.test"])
        self.other = Issued(self.ca, ["other.example.test"])

    def check(self, records: list[str], chain: list[x509.Certificate],
              host: str = "mx.example.test") -> str:
        """What L{HostTLSA.check} says for TLSA records in zone-file form."""
        parsed = []
        for text in records:
            u, s, m, data = text.split()
            parsed.append(TLSARecord(int(u), int(s), int(m), bytes.fromhex(data)))
        return HostTLSA(host, tuple(parsed)).check(chain)

    def test_daneEE(self) -> None:
        """3 0 0, 3 0 1, 3 0 2, 3 1 0, 3 1 1, 3 1 2 of the leaf match; of another leaf
        not. DANE-EE ignores the name (a leaf for another name matches its own record)."""
        chain = [self.good.leaf, self.ca.cert]
        for s in (0, 1):
            for m in (0, 1, 2):
                self.assertEqual(self.check([tlsa(3, s, m, self.good.leaf)], chain), "")
                why = self.check([tlsa(3, s, m, self.other.leaf)], chain)
                self.assertIn("matches none of its TLSA records", why)
        self.assertEqual(self.check([tlsa(3, 1, 1, self.other.leaf)], [self.other.leaf]), "")

    def test_daneTA(self) -> None:
        """2 s m of the CA matches a chain that presents it, for a leaf valid for the
        host; a leaf for another name, or a chain without the CA, does not."""
        for s in (0, 1):
            for m in (0, 1, 2):
                record = [tlsa(2, s, m, self.ca.cert)]
                self.assertEqual(self.check(record, [self.good.leaf, self.ca.cert]), "")
                why = self.check(record, [self.other.leaf, self.ca.cert])
                self.assertIn("DANE-TA", why)
                self.assertIn("matches none", self.check(record, [self.good.leaf]))
        # The leaf as a "trust anchor" is not DANE-TA.
        self.assertIn("matches none",
                      self.check([tlsa(2, 0, 1, self.good.leaf)], [self.good.leaf]))

    def test_unusableRecords(self) -> None:
        """Usages 0 and 1, unknown selectors or matching types are ignored: with only
        those, any chain will do (TLS unauthenticated)."""
        records = [tlsa(1, 1, 1, self.other.leaf), tlsa(0, 0, 1, self.ca.cert),
                   "3 2 1 00", "3 1 3 00"]
        self.assertEqual(self.check(records, [self.other.leaf]), "")
        self.assertIn("matches none",
                      self.check([*records, tlsa(3, 1, 1, self.good.leaf)], [self.other.leaf]))

    def test_fromWire(self) -> None:
        """RDATA shorter than four bytes is no record."""
        self.assertIsNone(TLSARecord.fromWire(b"\x03\x01\x01"))
        self.assertEqual(TLSARecord.fromWire(b"\x03\x01\x01\xab"), TLSARecord(3, 1, 1, b"\xab"))


class DANERelayTests(TestCase):
    """The relay against a DNSSEC-signed destination through a validating unbound."""

    def setUpWorld(self, records: list[str], mxContext: Any, starttls: bool = True,
                   tamper: tuple[str, str, str] | None = None,
                   plain: dict[str, list[Any]] | None = None) -> None:
        """Sign C{records} into example.test, start unbound (and, with C{plain}, an
        unsigned zone C{plain.test} on the twisted.names server), and the MX."""
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        base = os.path.abspath(self.mktemp())
        self.zone = dnssec_support.SignedZone(base, "example.test", [
            "@ IN MX 10 mx.example.test.", "mx IN A 127.0.0.1", *records])
        if tamper is not None:
            self.zone.tamper(*tamper)
        stubs = {}
        if plain is not None:
            self.plain = ZoneServer({"plain.test": plain})
            self.plain.start()
            self.addCleanup(self.plain.stop)
            stubs["plain.test"] = f"127.0.0.1@{self.plain.port}"
        self.unbound = dnssec_support.start(self, self.zone, stubs)
        self.mx = ScriptedSMTPFactory(tls=mxContext if starttls else None)
        self.mxPort = self.mx.listen(self)

    def relay(self, mtasts: Any = None) -> Relay:
        """A relay with unbound as its resolver and its validating resolver."""
        config = RelayConfig(mx_port=self.mxPort, dns_servers=(self.unbound.address,),
                             dnssec_resolvers=(self.unbound.address,),
                             command_timeout=10, connect_timeout=5)
        dane = DANE(ValidatingResolver([("127.0.0.1", self.unbound.port)], reactor, 5))
        return Relay(config, "client.test", reactor, InlineRunner(), dane=dane, mtasts=mtasts)

    async def send(self, relay: Relay, domain: str = "example.test") -> list[Outcome]:
        """Deliver SIMPLE to b@DOMAIN."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(SIMPLE)
        return await relay.deliver("a@client.test", [f"b@{domain}"], domain,
                                   Message(path, len(SIMPLE), False))

    def selfSigned(self, names: tuple[str, ...] = ("mx.example.test",)) -> tuple[Any, Any]:
        """A self-signed server context and its certificate."""
        base = self.mktemp()
        os.makedirs(base)
        cert, key = os.path.join(base, "c.pem"), os.path.join(base, "k.pem")
        ensureSelfSigned(cert, key, list(names))
        return serverContext(cert, key), loadCert(cert)[0]

    def assertRefused(self, outcomes: list[Outcome], status: str, why: str) -> None:
        """A temporary failure naming DANE and C{why}; nothing reached the MX."""
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(TEMPORARY, status)])
        self.assertIn("DANE", outcomes[0].reply)
        self.assertIn(why, outcomes[0].reply)
        self.assertEqual(self.mx.messages, [])
        self.assertFalse([c for c in self.mx.commands if c.startswith("MAIL")])

    def recorded(self, relay: Relay) -> None:
        """Give C{relay} a result recorder (read by L{results})."""
        directory = os.path.join(os.path.abspath(self.mktemp()), "tls-rpt")
        relay.tlsResults = TLSResults(directory, InlineRunner())
        self.resultsDir = directory

    def results(self) -> list[dict[str, Any]]:
        """Every result recorded today."""
        [name] = os.listdir(self.resultsDir)
        with open(os.path.join(self.resultsDir, name), encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    async def test_validatedAD(self) -> None:
        """unbound marks the signed zone's answers secure and the unsigned zone's not."""
        self.setUpWorld([], None, plain={"plain.test": [MX("mx.plain.test")]})
        resolver = ValidatingResolver([("127.0.0.1", self.unbound.port)], reactor, 5)
        signed = await resolver.query("example.test", 15)
        self.assertEqual((signed.status, signed.secure), ("ok", True))
        unsigned = await resolver.query("plain.test", 15)
        self.assertEqual((unsigned.status, unsigned.secure), ("ok", False))
        denied = await resolver.query("nothing.example.test", 1)
        self.assertEqual((denied.status, denied.secure), ("nxdomain", True))

    async def test_largeTLSARRsetOverTCP(self) -> None:
        """A TLSA RRset too big for a 512-byte datagram (nine records, most of them
        SHA-512 digests, and its signature): unbound's UDP answer is truncated, the
        resolver asks again over TCP, the records validate, and the relay delivers to
        the MX whose certificate matches one of them."""
        context, cert = self.selfSigned()
        records = [f"_25._tcp.mx IN TLSA 3 0 2 {os.urandom(64).hex()}" for _ in range(8)]
        self.setUpWorld([*records, f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, cert)}"], context)
        # Over UDP alone the answer does not fit.
        udp = _ADQuery(_Controller(), reactor=reactor)
        try:
            message = await udp.query(("127.0.0.1", self.unbound.port),
                                      [dns.Query(b"_25._tcp.mx.example.test", TLSA, dns.IN)], 5)
        finally:
            udp.transport.stopListening()
        self.assertTrue(message.trunc)
        resolver = ValidatingResolver([("127.0.0.1", self.unbound.port)], reactor, 5)
        answer = await resolver.query("_25._tcp.mx.example.test", TLSA)
        self.assertEqual((answer.status, answer.secure, len(answer.records)), ("ok", True, 9),
                         answer)
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertTrue(self.mx.messages[0].tls)

    async def test_eeDelivers(self) -> None:
        """DANE-EE (3 1 1) of a self-signed certificate: delivered over TLS, no CA."""
        context, cert = self.selfSigned()
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, cert)}"], context)
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertTrue(self.mx.messages[0].tls)

    async def test_eeMismatchRefused(self) -> None:
        """A certificate matching no record: refused after the handshake, nothing sent;
        the message stays queued (temporary)."""
        context, _cert = self.selfSigned()
        _other, otherCert = self.selfSigned()
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, otherCert)}"], context)
        outcomes = await self.send(self.relay())
        self.assertRefused(outcomes, "4.7.5", "matches none of its TLSA records (3 1 1)")
        logged = [formatEvent(e) for e in self.events
                  if "refused, nothing sent" in e.get("log_format", "")]
        self.assertEqual(len(logged), 1, logged)

    async def test_taDelivers(self) -> None:
        """DANE-TA (2 0 1) of the CA, the chain presenting it, the leaf for the MX name:
        delivered."""
        ca = LoopbackCA(self)
        issued = Issued(ca, ["mx.example.test"])
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(2, 0, 1, ca.cert)}"], issued.context)
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)

    async def test_taWrongNameRefused(self) -> None:
        """DANE-TA with a leaf for another name: refused."""
        ca = LoopbackCA(self)
        issued = Issued(ca, ["other.example.test"])
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(2, 1, 1, ca.cert)}"], issued.context)
        outcomes = await self.send(self.relay())
        self.assertRefused(outcomes, "4.7.5", "DANE-TA")

    async def test_noStartTLSRefused(self) -> None:
        """TLSA records and no STARTTLS: refused (4.7.4)."""
        _context, cert = self.selfSigned()
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, cert)}"], None, starttls=False)
        outcomes = await self.send(self.relay())
        self.assertRefused(outcomes, "4.7.4", "TLS is required, but was not offered")

    async def test_bogusTLSARefused(self) -> None:
        """A TLSA record whose signature does not validate (changed after signing): the
        lookup fails, the MX is not contacted, the message stays queued."""
        context, cert = self.selfSigned()
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, cert)}"], context,
                        tamper=("_25._tcp.mx.example.test.", "TLSA", "3 1 1 " + "00" * 32))
        outcomes = await self.send(self.relay())
        self.assertRefused(outcomes, "4.7.5", "TLSA lookup of _25._tcp.mx.example.test failed")
        self.assertEqual(self.mx.connections, 0)

    async def test_insecureMXNoDANE(self) -> None:
        """plain.test (unsigned) names mx.example.test as its MX: the MX lookup is
        insecure, so the TLSA records of mx.example.test (which this certificate does
        not match) do not apply; delivered with opportunistic TLS."""
        context, _cert = self.selfSigned()
        _other, otherCert = self.selfSigned()
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, otherCert)}"], context,
                        plain={"plain.test": [MX("mx.example.test")]})
        outcomes = await self.send(self.relay(), "plain.test")
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        # The same MX for the signed domain is refused.
        self.mx.messages.clear()
        self.mx.commands.clear()
        outcomes = await self.send(self.relay())
        self.assertRefused(outcomes, "4.7.5", "matches none")

    async def test_noTLSAOpportunistic(self) -> None:
        """A secure denial of TLSA records: no DANE, opportunistic TLS as before."""
        context, _cert = self.selfSigned()
        self.setUpWorld([], context)
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)

    async def test_sniIsTheMXName(self) -> None:
        """The relay sends the MX host name, the TLSA base domain, as the TLS server name
        (RFC 7672 §3.2): the MX presents the certificate its TLSA record names only to a
        client that asks for mx.example.test (another one otherwise)."""
        default, _defaultCert = self.selfSigned(("default.example.test",))
        named, cert = self.selfSigned()
        sni = SNIContext(default, {"mx.example.test": named})
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, cert)}"], sni)
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertEqual(sni.names, ["mx.example.test"])

    async def test_sniWithoutTLSA(self) -> None:
        """Opportunistic TLS (no TLSA records) names the MX host too."""
        default, _cert = self.selfSigned(("default.example.test",))
        sni = SNIContext(default, {})
        self.setUpWorld([], sni)
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertEqual(sni.names, ["mx.example.test"])

    def policyServer(self, ca: LoopbackCA, body: bytes) -> int:
        """An HTTPS server for mta-sts.example.test (certificate from C{ca}) serving
        C{body} as the policy; its port."""
        resource = PolicyResource()
        resource.body = body
        site = server.Site(resource)
        site.noisy = False
        https = reactor.listenSSL(0, site, ca.serverContext(["mta-sts.example.test"]),
                                  interface="127.0.0.1")
        self.addCleanup(https.stopListening)
        return https.getHost().port

    def mtasts(self, ca: LoopbackCA, port: int) -> MTASTS:
        """MTA-STS through unbound, trusting C{ca}, fetching from C{port}."""
        from twisted.names import client

        resolver = client.Resolver(servers=[("127.0.0.1", self.unbound.port)], reactor=reactor)
        return MTASTS(DNSResolver(resolver, reactor, timeout=5), reactor, InlineRunner(),
                      self.mktemp(), trust=loadCAFile(ca.path), port=port, timeout=5)

    async def test_danePrecedesMTASTS(self) -> None:
        """An enforced MTA-STS policy that lists another MX is not used when the MX has
        validated TLSA records that its certificate matches: delivered."""
        ca = LoopbackCA(self)
        issued = Issued(ca, ["mx.example.test"])
        port = self.policyServer(ca, b"version: STSv1\r\nmode: enforce\r\n"
                                 b"mx: mx2.example.test\r\nmax_age: 86400\r\n")
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, issued.leaf)}",
                         '_mta-sts IN TXT "v=STSv1; id=1"', "mta-sts IN A 127.0.0.1"],
                        issued.context)
        sts = self.mtasts(ca, port)
        # The policy is there and would refuse this MX ...
        policy = await sts.policy("example.test")
        assert policy is not None
        self.assertFalse(policy.matches("mx.example.test"))
        # ... but DANE comes first.
        outcomes = await self.send(self.relay(sts))
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertTrue([e for e in self.events
                         if "its MTA-STS policy is not used" in e.get("log_format", "")])

    def twoMX(self, mx2Trusted: bool) -> tuple[SNIContext, MTASTS]:
        """example.test with MX 10 mx (TLSA records its certificate does not match) and
        MX 20 mx2 (no TLSA records; a certificate from the policy's CA, or self-signed),
        both served by one MX that picks the certificate by SNI, and an enforced policy
        listing only mx2."""
        ca = LoopbackCA(self)
        port = self.policyServer(ca, b"version: STSv1\r\nmode: enforce\r\n"
                                 b"mx: mx2.example.test\r\nmax_age: 86400\r\n")
        mxContext, _mxCert = self.selfSigned()
        _other, otherCert = self.selfSigned()
        mx2 = (ca.serverContext(["mx2.example.test"]) if mx2Trusted
               else self.selfSigned(("mx2.example.test",))[0])
        sni = SNIContext(mxContext, {"mx2.example.test": mx2})
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, otherCert)}",
                         "@ IN MX 20 mx2.example.test.", "mx2 IN A 127.0.0.1",
                         '_mta-sts IN TXT "v=STSv1; id=1"', "mta-sts IN A 127.0.0.1"], sni)
        return sni, self.mtasts(ca, port)

    async def test_perHostDANEThenMTASTS(self) -> None:
        """In one domain, the MX with TLSA records is judged by DANE (its mismatch is
        refused, though the policy does not list it: C{tlsa-invalid} under the TLSA
        policy) and the MX without falls back to the MTA-STS policy (verified against
        its CA, C{success} under the STS policy): delivered to mx2."""
        sni, sts = self.twoMX(mx2Trusted=True)
        relay = self.relay(sts)
        self.recorded(relay)
        outcomes = await self.send(relay)
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertEqual(sni.names, ["mx.example.test", "mx2.example.test"])
        self.assertEqual([(r["mx"], r["type"], r["result"])
                          for r in self.results()],
                         [("mx.example.test", "tlsa", "tlsa-invalid"),
                          ("mx2.example.test", "sts", "success")])

    async def test_perHostMTASTSEnforced(self) -> None:
        """The MX without TLSA records is held to the enforced policy: a self-signed
        certificate there is refused too, and nothing is delivered."""
        sni, sts = self.twoMX(mx2Trusted=False)
        outcomes = await self.send(self.relay(sts))
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(TEMPORARY, "4.7.5")],
                         outcomes)
        self.assertIn("MTA-STS policy of example.test", outcomes[0].reply)
        self.assertIn("could not be verified", outcomes[0].reply)
        self.assertEqual(sni.names, ["mx.example.test", "mx2.example.test"])
        self.assertEqual(self.mx.messages, [])


class DANEReportTests(TestCase):
    """TLS-RPT results under DANE: the TLSA policy, success and the RFC's failure types."""

    setUpWorld = DANERelayTests.setUpWorld
    relay = DANERelayTests.relay
    send = DANERelayTests.send
    selfSigned = DANERelayTests.selfSigned
    recorded = DANERelayTests.recorded
    results = DANERelayTests.results

    async def test_reported(self) -> None:
        """A match is a C{success} under policy type C{tlsa} with the records as the
        policy strings; a mismatch C{tlsa-invalid}."""
        context, cert = self.selfSigned()
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, cert)}"], context)
        relay = self.relay()
        self.recorded(relay)
        self.assertEqual([o.kind for o in await self.send(relay)], [DELIVERED])
        [first] = self.results()
        self.assertEqual((first["type"], first["result"], first["mx"], first["strings"]),
                         ("tlsa", "success", "mx.example.test", [tlsa(3, 1, 1, cert)]))

    async def test_reportedFailures(self) -> None:
        """A bogus TLSA answer is C{dnssec-invalid}; a chain matching nothing is
        C{tlsa-invalid}."""
        context, cert = self.selfSigned()
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, cert)}"], context,
                        tamper=("_25._tcp.mx.example.test.", "TLSA", "3 1 1 " + "00" * 32))
        relay = self.relay()
        self.recorded(relay)
        await self.send(relay)
        self.assertEqual([(r["type"], r["result"]) for r in self.results()],
                         [("tlsa", "dnssec-invalid")])

    async def test_reportedNoStartTLS(self) -> None:
        """TLSA records and an MX without STARTTLS: C{starttls-not-supported} under the
        TLSA policy."""
        _context, cert = self.selfSigned()
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, cert)}"], None, starttls=False)
        relay = self.relay()
        self.recorded(relay)
        await self.send(relay)
        self.assertEqual([(r["type"], r["result"]) for r in self.results()],
                         [("tlsa", "starttls-not-supported")])

    async def test_reportedMismatch(self) -> None:
        """A certificate matching none of the records: C{tlsa-invalid}."""
        context, _cert = self.selfSigned()
        _other, otherCert = self.selfSigned()
        self.setUpWorld([f"_25._tcp.mx IN TLSA {tlsa(3, 1, 1, otherCert)}"], context)
        relay = self.relay()
        self.recorded(relay)
        await self.send(relay)
        [result] = self.results()
        self.assertEqual((result["type"], result["result"], result["ip"]),
                         ("tlsa", "tlsa-invalid", "127.0.0.1"))
