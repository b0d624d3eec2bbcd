"""Tests for pymaild.smtp.mtasts and MTA-STS in the relay (RFC 8461), over real sockets.

A loopback CA issues the certificates; a real HTTPS server (twisted.web) on 127.0.0.1
serves the policy; the test DNS server (L{tests.dnsserver.ZoneServer}) holds the
C{_mta-sts} TXT record and maps C{mta-sts.example.test} (a name no C{/etc/hosts} knows)
and the MX host to 127.0.0.1; a scripted ESMTP server with STARTTLS is the MX.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

from twisted.internet import defer, reactor, task, utils
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import client
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from pymaild import admin
from pymaild.config import Config, RelayConfig, ServerConfig
from pymaild.mailauth.resolver import DNSResolver
from pymaild.smtp.esmtpclient import DELIVERED, TEMPORARY, Message, Outcome
from pymaild.smtp.mtasts import (
    ENFORCE,
    MAX_POLICY_SIZE,
    MTASTS,
    NONE,
    TESTING,
    Policy,
    PolicyError,
    ownPolicy,
    parsePolicy,
    parseRecord,
    policyId,
)
from pymaild.smtp.queue import Queue
from pymaild.smtp.queuespool import PENDING, Spool
from pymaild.smtp.relay import Relay
from pymaild.threads import InlineRunner
from pymaild.tls import loadCAFile
from tests.dnsserver import MX, TXT, A, ZoneServer
from tests.support import ServerProcess, dataWithUsers, requireClient
from tests.test_relay_support import LoopbackCA, ScriptedSMTPFactory, SNIContext, tlsContext

SIMPLE = b"From: a@client.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"
POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"


class RecordTests(SynchronousTestCase):
    """The C{_mta-sts} TXT record (RFC 8461 §3.1)."""

    def test_valid(self) -> None:
        """C{v=STSv1} first, then C{id}; spaces and a final semicolon are allowed."""
        self.assertEqual(parseRecord(b"v=STSv1; id=20160831085700Z;"), "20160831085700Z")
        self.assertEqual(parseRecord(b"v=STSv1;id=abc"), "abc")
        self.assertEqual(parseRecord(b"v=STSv1; ext=1; id=x1"), "x1")

    def test_invalid(self) -> None:
        """Another version, no id, a bad id or a field without C{=} is no record."""
        for record in (b"v=STSv2; id=1", b"v=STSv1;", b"id=1; v=STSv1", b"v=STSv1; id=a-b",
                       b"v=STSv1; id=" + b"1" * 33, b"v=STSv1; id", b"v=STSv1; id=\xff"):
            self.assertIsNone(parseRecord(record), record)


class PolicyParseTests(SynchronousTestCase):
    """The policy file (RFC 8461 §3.2) and the mx patterns (§4.1)."""

    def test_parse(self) -> None:
        """CRLF or LF lines, several mx, unknown keys ignored, max_age capped."""
        p = parsePolicy(b"version: STSv1\nmode: testing\nmx: MX1.Example.test.\n"
                        b"mx: *.example.test\nfoo: bar\nmax_age: 9999999999\n",
                        "example.test", "id1", 10.0)
        self.assertEqual((p.mode, p.mx, p.maxAge, p.id, p.fetched),
                         (TESTING, ("mx1.example.test", "*.example.test"), 31557600, "id1", 10.0))
        self.assertEqual(parsePolicy(POLICY, "example.test", "1", 0).mode, ENFORCE)
        self.assertEqual(parsePolicy(b"version: STSv1\nmode: none\nmax_age: 1\n", "d", "1",
                                     0).mx, ())

    def test_invalid(self) -> None:
        """A wrong version, mode or max_age, no mx, a line without a colon: refused."""
        for body in (b"version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                     b"version: STSv1\nmode: always\nmx: a\nmax_age: 1\n",
                     b"version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
                     b"version: STSv1\nmode: enforce\nmax_age: 1\n",
                     b"version: STSv1\nmode: enforce\nmx: a\nmax_age: 1\ngarbage\n",
                     b"version: STSv1\nmode: enforce\nmx: a\nmax_age: 1\n\xff\n",
                     b"<html>hello</html>"):
            self.assertRaises(PolicyError, parsePolicy, body, "d", "1", 0)

    def test_matches(self) -> None:
        """An exact name, or a wildcard standing for exactly one label; no case."""
        p = Policy("example.test", "1", ENFORCE, ("mx.example.test", "*.mail.test"), 60, 0)
        self.assertTrue(p.matches("MX.example.test."))
        self.assertTrue(p.matches("a.mail.test"))
        self.assertFalse(p.matches("a.b.mail.test"))
        self.assertFalse(p.matches("mail.test"))
        self.assertFalse(p.matches("xmx.example.test"))
        self.assertFalse(p.matches("mx.example.test.evil"))

    def test_cacheRoundTrip(self) -> None:
        """A policy survives its cache form; a damaged entry is refused."""
        p = Policy("example.test", "1", ENFORCE, ("mx.example.test",), 60, 5.0)
        self.assertEqual(Policy.fromJSON(json.loads(json.dumps(p.toJSON()))), p)
        self.assertRaises(PolicyError, Policy.fromJSON, {"domain": "x"})
        self.assertRaises(PolicyError, Policy.fromJSON, dict(p.toJSON(), mode="always"))
        self.assertTrue(p.fresh(64.9))
        self.assertFalse(p.fresh(65.0))


class PolicyResource(resource.Resource):
    """Serves C{/.well-known/mta-sts.txt} as the test sets it; counts requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = POLICY
        self.code = 200
        self.contentType = b"text/plain; charset=utf-8"
        self.hosts: list[bytes] = []
        self.paths: list[bytes] = []

    def render_GET(self, request: Any) -> bytes:
        """The policy (or what the test scripted)."""
        self.hosts.append(request.getHeader(b"host") or b"")
        self.paths.append(request.path)
        request.setResponseCode(self.code)
        if self.code in (301, 302):
            request.setHeader(b"location", b"https://elsewhere.test/.well-known/mta-sts.txt")
        request.setHeader(b"content-type", self.contentType)
        return self.body


class SilentFactory(ServerFactory):
    """Accepts connections and never says anything (a stuck policy server)."""

    noisy = False

    def __init__(self) -> None:
        self.open: list[Any] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        """A protocol that remembers its transport so the test can close it."""
        p = Protocol()
        p.factory = self
        original = p.makeConnection

        def made(transport: Any) -> None:
            self.open.append(transport)
            original(transport)

        p.makeConnection = made  # type: ignore[method-assign]
        return p


class MTASTSTestMixin:
    """A CA, the policy's HTTPS server, the test DNS server, an MX and a relay."""

    def setUpWorld(self, mxNames: tuple[str, ...] = ("mx.example.test",),
                   policyCA: LoopbackCA | None = None, starttls: bool = True,
                   selfSigned: bool = False) -> None:
        """Start the servers; C{self.mx} is the scripted MX."""
        case: Any = self
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.ca = LoopbackCA(case)
        self.policy = PolicyResource()
        site = server.Site(self.policy)
        site.noisy = False
        httpsCA = policyCA or self.ca
        port = reactor.listenSSL(0, site, httpsCA.serverContext(["mta-sts.example.test"]),
                                 interface="127.0.0.1")
        case.addCleanup(port.stopListening)
        self.httpsPort = port.getHost().port
        self.zones = ZoneServer({"example.test": {
            "example.test": [MX("mx.example.test")],
            "_mta-sts.example.test": [TXT("v=STSv1; id=1;")],
            "mta-sts.example.test": [A("127.0.0.1")],
            "mx.example.test": [A("127.0.0.1")],
            "other.example.test": [A("127.0.0.1")],
        }})
        self.zones.start()
        case.addCleanup(self.zones.stop)
        if not starttls:
            context = None
        elif selfSigned:
            context = tlsContext(case, mxNames)
        else:
            context = self.ca.serverContext(list(mxNames))
        self.mx = ScriptedSMTPFactory(tls=context)
        self.mxPort = self.mx.listen(case)
        self.cacheDir = os.path.join(case.mktemp(), "mta-sts")

    def mtasts(self, **kw: Any) -> MTASTS:
        """An L{MTASTS} over the test DNS server, trusting the loopback CA."""
        resolver = client.Resolver(servers=[("127.0.0.1", self.zones.port)], reactor=reactor)
        dns = DNSResolver(resolver, reactor, timeout=5)
        kw.setdefault("timeout", 5.0)
        return MTASTS(dns, reactor, InlineRunner(), self.cacheDir, trust=loadCAFile(self.ca.path),
                      trustName=f"the CA file {self.ca.path}", port=self.httpsPort, **kw)

    def relay(self, sts: MTASTS | None = None) -> Relay:
        """A relay delivering to the scripted MX through the test DNS server."""
        config = RelayConfig(mx_port=self.mxPort, dns_servers=(self.zones.address,),
                             command_timeout=10, connect_timeout=5)
        return Relay(config, "client.test", reactor, InlineRunner(),
                     mtasts=sts if sts is not None else self.mtasts())

    def writeMessage(self) -> Message:
        """The message file."""
        path = self.mktemp()  # type: ignore[attr-defined]
        with open(path, "wb") as f:
            f.write(SIMPLE)
        return Message(path, len(SIMPLE), False)

    async def send(self, relay: Relay) -> list[Outcome]:
        """Deliver SIMPLE to b@example.test."""
        return await relay.deliver("a@client.test", ["b@example.test"], "example.test",
                                   self.writeMessage())

    def logged(self, text: str) -> list[str]:
        """The log lines holding C{text}."""
        lines = [formatEvent(e) for e in self.events]
        return [line for line in lines if line and text in line]

    def setPolicy(self, mode: str, *mx: str, maxAge: int = 86400) -> None:
        """Serve a policy with this mode and these mx patterns."""
        lines = ["version: STSv1", f"mode: {mode}", *[f"mx: {m}" for m in mx],
                 f"max_age: {maxAge}"]
        self.policy.body = ("\r\n".join(lines) + "\r\n").encode()


class FetchTests(MTASTSTestMixin, TestCase):
    """Fetching policies over HTTPS: the resolver's address, verified TLS, limits."""

    async def test_fetchThroughResolver(self) -> None:
        """The policy comes from the HTTPS server at the address the test DNS server
        gave for C{mta-sts.example.test}, with its Host header; it is cached on disk."""
        self.setUpWorld()
        sts = self.mtasts()
        policy = await sts.policy("example.test")
        assert policy is not None
        self.assertEqual((policy.mode, policy.mx, policy.maxAge, policy.id),
                         (ENFORCE, ("mx.example.test",), 86400, "1"))
        self.assertEqual(self.policy.paths, [b"/.well-known/mta-sts.txt"])
        self.assertEqual(self.policy.hosts, [f"mta-sts.example.test:{self.httpsPort}".encode()])
        with open(os.path.join(self.cacheDir, "example.test.json"), encoding="utf-8") as f:
            self.assertEqual(json.load(f)["mx"], ["mx.example.test"])
        # Same id: the cache answers, no second fetch.
        self.assertEqual(await sts.policy("example.test"), policy)
        self.assertEqual(len(self.policy.paths), 1)

    async def test_untrustedPolicyServer(self) -> None:
        """A policy server whose certificate another CA issued gives no policy."""
        self.setUpWorld(policyCA=LoopbackCA(self, "another CA"))
        self.assertIsNone(await self.mtasts().policy("example.test"))
        self.assertTrue(self.logged("could not be fetched"), self.events)
        self.assertFalse(os.path.exists(self.cacheDir))

    async def test_refusedResponses(self) -> None:
        """Not 200 (a redirect is not followed), not text/plain, over the size limit or
        not a valid policy: no policy."""
        self.setUpWorld()
        cases = [("code", 404, "HTTP 404"), ("code", 301, "HTTP 301"),
                 ("contentType", b"text/html", "text/html, not text/plain"),
                 ("body", POLICY + b"x: " + b"y" * MAX_POLICY_SIZE + b"\n", "larger than"),
                 ("body", b"version: STSv1\nmode: enforce\n", "max_age")]
        for attribute, value, why in cases:
            fresh = PolicyResource()
            setattr(fresh, attribute, value)
            self.policy.__dict__.update(fresh.__dict__)
            self.events.clear()
            self.assertIsNone(await self.mtasts().policy("example.test"), why)
            logged = self.logged("could not be fetched")
            self.assertEqual(len(logged), 1, (why, logged))
            self.assertIn(why, logged[0])

    async def test_timeout(self) -> None:
        """A policy server that never answers: no policy once the deadline passed."""
        self.setUpWorld()
        silent = SilentFactory()
        port = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.httpsPort = port.getHost().port
        self.assertIsNone(await self.mtasts(timeout=0.5).policy("example.test"))
        self.assertIn("no policy within 0.5s", self.logged("could not be fetched")[0])
        for transport in silent.open:
            transport.abortConnection()

    async def test_noRecordNoFetch(self) -> None:
        """Without a C{_mta-sts} record, or with two, nothing is fetched."""
        self.setUpWorld()
        self.zones.set("_mta-sts.example.test", [TXT("v=spf1 -all")])
        self.assertIsNone(await self.mtasts().policy("example.test"))
        self.zones.set("_mta-sts.example.test", [TXT("v=STSv1; id=1"), TXT("v=STSv1; id=2")])
        self.assertIsNone(await self.mtasts().policy("example.test"))
        self.assertEqual(self.policy.paths, [])

    async def test_cacheSurvivesRestart(self) -> None:
        """A new L{MTASTS} over the same directory uses the cached policy while the TXT
        id is unchanged, even when the server fails or the record went away; a new id
        fetches again."""
        self.setUpWorld()
        await self.mtasts().policy("example.test")
        self.policy.code = 500
        again = await self.mtasts().policy("example.test")
        assert again is not None
        self.assertEqual(again.mx, ("mx.example.test",))
        self.assertEqual(len(self.policy.paths), 1)
        self.zones.set("_mta-sts.example.test", [])
        self.assertEqual(await self.mtasts().policy("example.test"), again)
        # A new id: fetched again; a failing fetch keeps the cached policy.
        self.zones.set("_mta-sts.example.test", [TXT("v=STSv1; id=2")])
        self.assertEqual(await self.mtasts().policy("example.test"), again)
        self.assertEqual(len(self.policy.paths), 2)
        self.policy.code = 200
        self.setPolicy(TESTING, "*.example.test")
        fresh = await self.mtasts().policy("example.test")
        assert fresh is not None
        self.assertEqual((fresh.id, fresh.mode, fresh.mx), ("2", TESTING, ("*.example.test",)))

    async def test_expiredCacheIgnored(self) -> None:
        """A cached policy past its max_age does not apply."""
        self.setUpWorld()
        now = [1000.0]
        await self.mtasts(clock=lambda: now[0]).policy("example.test")
        self.zones.set("_mta-sts.example.test", [])
        now[0] += 86400
        self.assertIsNone(await self.mtasts(clock=lambda: now[0]).policy("example.test"))


class RefreshTests(MTASTSTestMixin, TestCase):
    """Proactive refresh (RFC 8461 §10.2): cached policies are renewed before they
    lapse and a new id is noticed without any mail to the domain."""

    def cacheFile(self) -> dict[str, Any]:
        """The cache file of example.test."""
        with open(os.path.join(self.cacheDir, "example.test.json"), encoding="utf-8") as f:
            return json.load(f)

    async def test_renewedBeforeExpiry(self) -> None:
        """A policy an hour from expiry is fetched again though its id is unchanged; an
        hour past its first expiry, with the policy server down and the record gone, the
        renewed policy still applies. Without the refresh it would have lapsed."""
        self.setUpWorld()
        now = [1000.0]
        sts = self.mtasts(clock=lambda: now[0])
        await sts.policy("example.test")
        # Far from expiry, a refresh with a one-hour margin only checks the record.
        self.assertEqual(await sts.refreshAll(3600), 1)
        self.assertEqual(len(self.policy.paths), 1)
        now[0] += 86400 - 1800
        self.assertEqual(await sts.refreshAll(3600), 1)
        self.assertEqual(len(self.policy.paths), 2)
        self.assertEqual(self.cacheFile()["fetched"], now[0])
        now[0] += 3600
        self.policy.code = 500
        self.zones.set("_mta-sts.example.test", [])
        policy = await self.mtasts(clock=lambda: now[0]).policy("example.test")
        assert policy is not None
        self.assertEqual(policy.mx, ("mx.example.test",))

    async def test_newIdFetched(self) -> None:
        """A changed id is fetched by the refresh, before any delivery."""
        self.setUpWorld()
        sts = self.mtasts()
        await sts.policy("example.test")
        self.zones.set("_mta-sts.example.test", [TXT("v=STSv1; id=2")])
        self.setPolicy(TESTING, "*.example.test")
        await sts.refreshAll(3600)
        self.assertEqual(len(self.policy.paths), 2)
        self.assertEqual((self.cacheFile()["id"], self.cacheFile()["mode"]), ("2", TESTING))

    async def test_lapsedForgotten(self) -> None:
        """A policy that expired and cannot be renewed (the domain dropped MTA-STS) is
        forgotten: its cache file is removed, later refreshes skip it."""
        self.setUpWorld()
        now = [1000.0]
        sts = self.mtasts(clock=lambda: now[0])
        await sts.policy("example.test")
        self.zones.set("_mta-sts.example.test", [])
        now[0] += 86401
        self.assertEqual(await sts.refreshAll(3600), 1)
        self.assertEqual(os.listdir(self.cacheDir), [])
        self.assertEqual(await sts.refreshAll(3600), 0)

    async def test_timerService(self) -> None:
        """The service runs a refresh each interval (not at start), with a margin of two
        intervals: a policy due within that is fetched again at the first tick."""
        self.setUpWorld()
        now = [1000.0]
        sts = self.mtasts(clock=lambda: now[0])
        await sts.policy("example.test")
        clock = task.Clock()
        service = sts.service(clock, 3600)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIsNone(service.pending)
        now[0] += 86400 - 7000
        clock.advance(3600)
        assert service.pending is not None
        await service.pending
        self.assertEqual(len(self.policy.paths), 2)
        self.assertIsNone(service.pending)


class RelayPolicyTests(MTASTSTestMixin, TestCase):
    """The relay under a destination's policy: enforce refuses, testing logs."""

    def assertRefused(self, outcomes: list[Outcome], status: str, why: str) -> None:
        """A temporary failure naming the policy and C{why}; no message reached the MX."""
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(TEMPORARY, status)])
        self.assertIn("MTA-STS policy of example.test (mode enforce", outcomes[0].reply)
        self.assertIn(why, outcomes[0].reply)
        self.assertEqual(self.mx.messages, [])
        self.assertFalse([c for c in self.mx.commands if c.startswith("MAIL")])

    async def test_enforceVerifiedDelivery(self) -> None:
        """A matching MX with a certificate valid for its name: delivered over TLS."""
        self.setUpWorld()
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertTrue(self.mx.messages[0].tls)

    async def test_enforceSendsSNI(self) -> None:
        """The MX host name is sent as the TLS server name: an MX whose certificate for
        mx.example.test is chosen by SNI (another name's otherwise) is verified."""
        self.setUpWorld()
        sni = SNIContext(self.ca.serverContext(["other.example.test"]),
                         {"mx.example.test": self.ca.serverContext(["mx.example.test"])})
        self.mx.tls = sni
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertEqual(sni.names, ["mx.example.test"])

    async def test_enforceWildcard(self) -> None:
        """A C{*.example.test} pattern and a wildcard certificate."""
        self.setUpWorld(mxNames=("*.example.test",))
        self.setPolicy(ENFORCE, "*.example.test")
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)

    async def test_enforceSelfSignedRefused(self) -> None:
        """A self-signed certificate on the MX: refused, nothing sent."""
        self.setUpWorld(selfSigned=True)
        outcomes = await self.send(self.relay())
        self.assertRefused(outcomes, "4.7.5", "could not be verified against the CA file")

    async def test_enforceWrongNameRefused(self) -> None:
        """A certificate from the trusted CA for another name: refused."""
        self.setUpWorld(mxNames=("other.example.test",))
        outcomes = await self.send(self.relay())
        self.assertRefused(outcomes, "4.7.5", "not valid for the host name mx.example.test")

    async def test_enforceNoStartTLSRefused(self) -> None:
        """An MX without STARTTLS: refused (4.7.4)."""
        self.setUpWorld(starttls=False)
        outcomes = await self.send(self.relay())
        self.assertRefused(outcomes, "4.7.4", "TLS is required, but was not offered")

    async def test_enforceUnlistedMXRefused(self) -> None:
        """An MX the policy does not list is never contacted."""
        self.setUpWorld()
        self.setPolicy(ENFORCE, "mx2.example.test")
        outcomes = await self.send(self.relay())
        self.assertRefused(outcomes, "4.7.5", "no MX host matches (MX: mx.example.test)")
        self.assertEqual(self.mx.connections, 0)
        self.assertTrue(self.logged("MX mx.example.test not allowed, skipped"))

    async def test_enforceSkipsUnlistedMX(self) -> None:
        """With two MX, the one the policy does not list is skipped."""
        self.setUpWorld()
        self.zones.set("example.test", [MX("bad.example.test", 5), MX("mx.example.test", 10)])
        self.zones.set("bad.example.test", [A("127.0.0.1")])
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertEqual(self.mx.connections, 1)

    async def test_testingOnlyLogs(self) -> None:
        """Under C{testing}, a self-signed certificate and an unlisted MX are logged, and
        the message is delivered."""
        self.setUpWorld(selfSigned=True)
        self.setPolicy(TESTING, "mx2.example.test")
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertTrue(self.mx.messages[0].tls)
        self.assertTrue(self.logged("MX mx.example.test not allowed (testing: used)"))
        self.assertTrue(self.logged("(testing): TLS with mx.example.test[127.0.0.1] failed:"
                                    " the certificate could not be verified"))

    async def test_noneChangesNothing(self) -> None:
        """Under C{none}, opportunistic TLS as without a policy."""
        self.setUpWorld(selfSigned=True)
        self.setPolicy(NONE)
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertEqual(self.logged("MTA-STS policy of example.test ("), [
            line for line in self.logged("MTA-STS policy of example.test (id 1)")])

    async def test_noPolicyOpportunistic(self) -> None:
        """No policy (an untrusted policy server): the self-signed MX gets the mail."""
        self.setUpWorld(policyCA=LoopbackCA(self, "another CA"), selfSigned=True)
        outcomes = await self.send(self.relay())
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)

    async def test_cachedPolicyEnforcedAfterRestart(self) -> None:
        """A relay made after a restart enforces the cached policy while the policy server
        is down."""
        self.setUpWorld(selfSigned=True)
        await self.mtasts().policy("example.test")
        self.policy.code = 503
        outcomes = await self.send(self.relay(self.mtasts()))
        self.assertRefused(outcomes, "4.7.5", "could not be verified")


class QueueTests(MTASTSTestMixin, TestCase):
    """Through the queue: a message an enforced policy refuses stays queued with the
    reason, and bounces with it at expiry."""

    async def test_queuedThenBounced(self) -> None:
        """A self-signed MX under C{enforce}: pending with the policy's reason, then a
        bounce to the local sender quoting it."""
        self.setUpWorld(selfSigned=True)
        clock = task.Clock()
        clock.advance(time.time())
        local: list[tuple[str, bytes]] = []

        def deliverLocal(rcpt: str, data: bytes) -> defer.Deferred[None]:
            local.append((rcpt, data))
            return defer.succeed(None)

        spool = self.mktemp()
        config = Config(
            server=ServerConfig(hostname="mail.local.test", domains=("local.test",)),
            relay=RelayConfig(mx_port=self.mxPort, dns_servers=(self.zones.address,),
                              command_timeout=10, connect_timeout=5, max_queue_life=1000,
                              delay_warning=0))
        q = Queue(spool, InlineRunner(), clock, config, "mail.local.test", deliverLocal,
                  relay=self.relay())
        q.service.startService()
        self.addCleanup(q.service.stopService)
        clock.advance(0)
        await q.service.whenStarted()
        await q.enqueue("alice@local.test", ["bob@example.test"], SIMPLE)

        async def settle() -> None:
            for _ in range(50):
                clock.advance(0)
                await q.whenIdle()
                if not q.busy:
                    return
            raise AssertionError("the queue did not settle")

        await settle()
        [env] = Spool(spool).loadAll()[0]
        r = env.recipients[0]
        self.assertEqual((r.state, r.status), (PENDING, "4.7.5"))
        self.assertIn("MTA-STS policy of example.test (mode enforce", r.reply)
        self.assertEqual(local, [])
        for step in (300, 600, 1200):
            clock.advance(step)
            await settle()
        self.assertEqual(len(local), 1)
        dsn = local[0][1]
        self.assertIn(b"Action: failed", dsn)
        self.assertIn(b"MTA-STS policy of example.test", dsn)
        self.assertEqual(self.mx.messages, [])
        self.assertEqual(Spool(spool).loadAll()[0], [])


class OwnPolicyTests(SynchronousTestCase):
    """The policy pymaild serves for its own domains, and its id."""

    def test_text(self) -> None:
        """CRLF lines that L{parsePolicy} reads back."""
        text = ownPolicy(TESTING, ("mail.example.org", "*.mx.example.org"), 3600)
        self.assertEqual(text, b"version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\n"
                               b"mx: *.mx.example.org\r\nmax_age: 3600\r\n")
        p = parsePolicy(text, "example.org", policyId(text), 0)
        self.assertEqual((p.mode, p.mx, p.maxAge),
                         (TESTING, ("mail.example.org", "*.mx.example.org"), 3600))

    def test_idFollowsPolicy(self) -> None:
        """The same policy gives the same id (a valid record id); any change, another."""
        one = policyId(ownPolicy(ENFORCE, ("mail.example.org",), 3600))
        self.assertEqual(one, policyId(ownPolicy(ENFORCE, ("mail.example.org",), 3600)))
        self.assertEqual(parseRecord(f"v=STSv1; id={one}".encode()), one)
        others = {policyId(ownPolicy(TESTING, ("mail.example.org",), 3600)),
                  policyId(ownPolicy(ENFORCE, ("mx.example.org",), 3600)),
                  policyId(ownPolicy(ENFORCE, ("mail.example.org",), 3601))}
        self.assertEqual(len(others), 3)
        self.assertNotIn(one, others)


class ServeTests(TestCase):
    """A real pymaild serves its policy on the https listener for C{mta-sts.DOMAIN}; an
    independent client (curl) and pymaild's own fetcher read it, and the id that
    C{pymaild-admin dns} prints is the one of the policy served."""

    def startServer(self, mtasts: str) -> tuple[ServerProcess, LoopbackCA]:
        """A server for example.org with a CA-issued certificate for its host name and
        mta-sts.example.org, and the C{[mtasts]} text in its configuration."""
        self.curl = requireClient("curl")
        base, data = dataWithUsers(self, {"alice@example.org": "alice-secret-pw"})
        ca = LoopbackCA(self)
        ca.serverContext(["mail.example.org", "mta-sts.example.org"])
        cert = os.path.abspath(os.path.join(ca.base, "server1.pem"))
        key = os.path.abspath(os.path.join(ca.base, "server1.key"))
        self.config = os.path.join(base, "pymaild.toml")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(f'[server]\ndata = "{data}"\nhostname = "mail.example.org"\n'
                    f'domains = ["example.org"]\n[mtasts]\n{mtasts}')
        server = ServerProcess(data, "example.org", extra=[
            "--config", self.config, "--tls-cert", cert, "--tls-key", key],
            listeners=("smtp", "http", "https"))
        server.start()
        self.addCleanup(server.stop)
        return server, ca

    async def curlGet(self, server: ServerProcess, ca: LoopbackCA, host: str,
                      scheme: str = "https") -> tuple[int, str, bytes]:
        """C{(status, content type, body)} of the policy URL at C{host}, by curl with
        the CA and C{host} resolved to loopback."""
        port = server.ports[scheme]
        out, err, code = await utils.getProcessOutputAndValue(self.curl, [
            "-sS", "--max-time", "20", "--cacert", os.path.abspath(ca.path),
            "--resolve", f"{host}:{port}:127.0.0.1",
            "-w", "\n%{http_code} %{content_type}",
            f"{scheme}://{host}:{port}/.well-known/mta-sts.txt"], env=dict(os.environ))
        self.assertEqual(code, 0, err)
        body, _, tail = out.rpartition(b"\n")
        status, _, ctype = tail.decode().partition(" ")
        return int(status), ctype, body

    def adminDNS(self) -> str:
        """What C{pymaild-admin dns example.org} prints for this configuration."""
        out = io.StringIO()
        self.assertEqual(admin.main(["--config", self.config, "dns", "example.org"],
                                    stdout=out), 0)
        return out.getvalue()

    async def test_served(self) -> None:
        """curl gets the configured policy as text/plain over verified TLS; another
        host, plain HTTP and another path do not; pymaild's fetcher, given the id
        C{pymaild-admin dns} prints, reads the same policy."""
        server, ca = self.startServer(
            'serve = true\nmode = "testing"\nmax_age = 86400\n'
            'mx = ["mail.example.org", "*.mx.example.org"]\n')
        expected = ownPolicy(TESTING, ("mail.example.org", "*.mx.example.org"), 86400)
        status, ctype, body = await self.curlGet(server, ca, "mta-sts.example.org")
        self.assertEqual((status, ctype.split(";")[0], body), (200, "text/plain", expected))
        status, _ctype, _body = await self.curlGet(server, ca, "mail.example.org")
        self.assertEqual(status, 404)
        status, _ctype, body = await self.curlGet(server, ca, "mta-sts.example.org", "http")
        self.assertNotEqual(status, 200)
        self.assertNotIn(b"STSv1", body)

        printed = self.adminDNS()
        self.assertIn(f'"v=STSv1; id={policyId(expected)}"', printed)
        self.assertIn("; mode: testing\n; mx: mail.example.org\n; mx: *.mx.example.org\n"
                      "; max_age: 86400\n", printed)
        zones = ZoneServer({"example.org": {
            "_mta-sts.example.org": [TXT(f"v=STSv1; id={policyId(expected)}")],
            "mta-sts.example.org": [A("127.0.0.1")]}})
        zones.start()
        self.addCleanup(zones.stop)
        resolver = client.Resolver(servers=[("127.0.0.1", zones.port)], reactor=reactor)
        sts = MTASTS(DNSResolver(resolver, reactor, timeout=5), reactor, InlineRunner(),
                     self.mktemp(), trust=loadCAFile(ca.path), port=server.ports["https"],
                     timeout=10)
        policy = await sts.policy("example.org")
        assert policy is not None
        self.assertEqual((policy.mode, policy.mx, policy.maxAge, policy.id),
                         (TESTING, ("mail.example.org", "*.mx.example.org"), 86400,
                          policyId(expected)))

    async def test_notServedByDefault(self) -> None:
        """Without C{serve = true} the URL is 404; C{pymaild-admin dns} still prints the
        record and policy to publish (mode enforce, the host name as mx)."""
        server, ca = self.startServer("")
        status, _ctype, body = await self.curlGet(server, ca, "mta-sts.example.org")
        self.assertEqual(status, 404)
        self.assertNotIn(b"STSv1", body)
        default = ownPolicy(ENFORCE, ("mail.example.org",), 604800)
        self.assertIn(f'"v=STSv1; id={policyId(default)}"', self.adminDNS())
