"""Tests for pymaild.smtp.relay and its pieces (esmtpclient, mx, relaysession): reply
parsing, MX lookup and the ESMTP client on loopback.

The loopback tests run a twisted.names DNS server and scripted ESMTP servers on
127.0.0.1 (see L{tests.test_relay_support}); the client reaches them through the
C{mx_port}, C{dns_servers} and C{smarthost} settings.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.config import RelayConfig, parseHostPort
from pymaild.errors import ConfigError
from pymaild.smtp.esmtpclient import (
    DELIVERED,
    PERMANENT,
    TEMPORARY,
    DeliveryError,
    ESMTPClientProtocol,
    Message,
    Outcome,
    ProtocolViolation,
    Reply,
    ReplyTimeout,
)
from pymaild.smtp.mx import MXResolver
from pymaild.smtp.relay import Relay
from pymaild.smtp.relaysession import wireAddress
from pymaild.threads import InlineRunner
from pymaild.wire import stuffMessage
from tests.test_relay_support import (
    LoopbackCA,
    ScriptedSMTPFactory,
    TwistedSMTPFactory,
    a,
    mx,
    startDNS,
    tlsContext,
)

SIMPLE = b"From: a@client.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def smugglingBody() -> bytes:
    """A message with lone-dot lines at offsets 0, 16384 and 65536, each followed by what
    a receiver would run as commands if the dot ended DATA early."""
    smuggle = b"MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<victim2@example.test>\r\nDATA\r\nx\r\n"
    body = b".\r\n" + smuggle
    for edge in (16384, 65536):
        pad = edge - len(body)
        while pad > 72:
            body += b"g" * 68 + b"\r\n"
            pad -= 70
        body += b"h" * (pad - 2) + b"\r\n"
        body += b".\r\n" + smuggle
    return body + b"the end\r\n"


class SmugglingBodyTests(SynchronousTestCase):
    """The test message really has lone dots at the chunk edges it claims."""

    def test_offsets(self) -> None:
        """Offsets 0, 16384 and 65536 each start a C{.} line."""
        body = smugglingBody()
        for offset in (0, 16384, 65536):
            self.assertEqual(body[offset : offset + 3], b".\r\n")
            if offset:
                self.assertEqual(body[offset - 2 : offset], b"\r\n")


class ReplyTests(SynchronousTestCase):
    """L{Reply} exposes the code, the one-line text and the enhanced status."""

    def test_enhancedFromText(self) -> None:
        """An enhanced code at the start of the text is used."""
        r = Reply(550, ("5.1.1 no such user", "really"))
        self.assertEqual(r.enhanced, "5.1.1")
        self.assertEqual(r.text, "550 5.1.1 no such user really")
        self.assertTrue(r.permanent)
        self.assertFalse(r.positive)

    def test_enhancedDerived(self) -> None:
        """Without one (or with a mismatching class) it is derived from the code."""
        self.assertEqual(Reply(451, ("try later",)).enhanced, "4.0.0")
        self.assertEqual(Reply(451, ("5.1.1 odd",)).enhanced, "4.0.0")
        self.assertEqual(Reply(250, ()).enhanced, "2.0.0")


class ClientProtocolTests(SynchronousTestCase):
    """The line layer assembles replies, keeps their order and rejects garbage."""

    def setUp(self) -> None:
        """A client protocol over a StringTransport with a fake clock."""
        self.clock = task.Clock()
        self.proto = ESMTPClientProtocol(self.clock)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_multiLine(self) -> None:
        """Continuation lines make one reply."""
        self.proto.dataReceived(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
        reply = self.successResultOf(self.proto.readReply(10))
        self.assertEqual(reply.code, 250)
        self.assertEqual(reply.lines, ("mx.test", "PIPELINING", "SIZE 100"))

    def test_queuedInOrder(self) -> None:
        """Replies that arrive before anyone waits are handed out in order."""
        self.proto.dataReceived(b"220 hi\r\n250 ok\r\n")
        self.assertEqual(self.successResultOf(self.proto.readReply(10)).code, 220)
        self.assertEqual(self.successResultOf(self.proto.readReply(10)).code, 250)

    def test_waiterGetsLaterReply(self) -> None:
        """A waiter fires when its reply arrives, split over reads."""
        d = self.proto.readReply(10)
        self.assertNoResult(d)
        self.proto.dataReceived(b"35")
        self.proto.dataReceived(b"4 go\r\n")
        self.assertEqual(self.successResultOf(d).code, 354)

    def test_garbage(self) -> None:
        """A line that is not a reply fails the waiter and aborts the connection."""
        d = self.proto.readReply(10)
        self.proto.dataReceived(b"HELLO there\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertTrue(self.transport.disconnecting)

    def test_codeChange(self) -> None:
        """A multi-line reply whose code changes is a violation."""
        d = self.proto.readReply(10)
        self.proto.dataReceived(b"250-a\r\n550 b\r\n")
        self.failureResultOf(d, ProtocolViolation)

    def test_timeout(self) -> None:
        """No reply within the timeout: ReplyTimeout, and the connection is dropped."""
        d = self.proto.readReply(5)
        self.clock.advance(4)
        self.assertNoResult(d)
        self.clock.advance(2)
        self.failureResultOf(d, ReplyTimeout)
        self.assertTrue(self.transport.disconnecting)

    def test_pipelinedSend(self) -> None:
        """Several commands are written in one write."""
        self.proto.send("MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
        self.assertEqual(self.transport.value(), b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")


class FakeResolver:
    """A resolver answering from canned results (or failures)."""

    def __init__(self, mx: Any = None, addresses: dict[str, Any] | None = None) -> None:
        self.mx = mx
        self.addresses = addresses or {}

    def _answer(self, value: Any) -> defer.Deferred[Any]:
        if isinstance(value, Exception):
            return defer.fail(value)
        return defer.succeed((value, [], []))

    def lookupMailExchange(self, name: str) -> defer.Deferred[Any]:
        """Canned MX answer."""
        return self._answer(self.mx)

    def lookupAddress(self, name: str) -> defer.Deferred[Any]:
        """Canned A answer."""
        return self._answer(self.addresses.get(name, dnserror.DNSNameError(name)))

    def lookupIPV6Address(self, name: str) -> defer.Deferred[Any]:
        """No AAAA records."""
        return self._answer([])


def rr(name: str, payload: Any) -> dns.RRHeader:
    """An answer record."""
    return dns.RRHeader(name, payload.TYPE, dns.IN, 60, payload)


class MXResolverTests(SynchronousTestCase):
    """MX records in preference order, implicit MX, null MX and DNS errors."""

    def exchanges(self, resolver: FakeResolver, domain: str = "example.test",
                  seed: int = 0) -> Any:
        """The exchanges of C{domain} as a Deferred."""
        return defer.Deferred.fromCoroutine(
            MXResolver(resolver, random.Random(seed)).exchanges(domain))

    def test_preferenceOrder(self) -> None:
        """Lower preference first; equal preferences in random order."""
        answers = [rr("example.test", mx(20, "c.test")), rr("example.test", mx(10, "a.test")),
                   rr("example.test", mx(10, "b.test"))]
        seen = set()
        for seed in range(20):
            hosts = self.successResultOf(self.exchanges(FakeResolver(list(answers)), seed=seed))
            self.assertEqual(hosts[2], "c.test")
            seen.add(tuple(hosts[:2]))
        self.assertEqual(seen, {("a.test", "b.test"), ("b.test", "a.test")})

    def test_noMX(self) -> None:
        """No MX record: the domain is its own exchanger (RFC 5321 §5.1)."""
        self.assertEqual(self.successResultOf(self.exchanges(FakeResolver([]))),
                         ["example.test"])

    def test_nullMX(self) -> None:
        """A null MX fails permanently with 5.1.10."""
        f = self.failureResultOf(self.exchanges(FakeResolver([rr("example.test", mx(0, ""))])),
                                 DeliveryError)
        self.assertEqual(f.value.status, "5.1.10")
        self.assertTrue(f.value.permanent)

    def test_noSuchDomain(self) -> None:
        """NXDOMAIN is permanent (5.1.2)."""
        f = self.failureResultOf(
            self.exchanges(FakeResolver(dnserror.DNSNameError("x"))), DeliveryError)
        self.assertEqual((f.value.status, f.value.permanent), ("5.1.2", True))

    def test_serverFailure(self) -> None:
        """SERVFAIL is temporary (4.4.3)."""
        f = self.failureResultOf(
            self.exchanges(FakeResolver(dnserror.DNSServerError("x"))), DeliveryError)
        self.assertEqual((f.value.status, f.value.permanent), ("4.4.3", False))

    def test_cname(self) -> None:
        """MX records of a CNAME target are used."""
        answers = [rr("example.test", dns.Record_CNAME(b"real.test")),
                   rr("real.test", mx(5, "mx.real.test"))]
        self.assertEqual(self.successResultOf(self.exchanges(FakeResolver(answers))),
                         ["mx.real.test"])

    def test_addressLiteral(self) -> None:
        """A domain literal is used as it is, without DNS."""
        self.assertEqual(self.successResultOf(self.exchanges(FakeResolver(None), "[127.0.0.1]")),
                         ["127.0.0.1"])

    def test_addresses(self) -> None:
        """A records become addresses; an unknown implicit-MX host fails permanently."""
        resolver = FakeResolver(addresses={"h.test": [rr("h.test", a("127.0.0.1"))]})
        m = MXResolver(resolver)
        self.assertEqual(self.successResultOf(defer.Deferred.fromCoroutine(
            m.addresses("h.test"))), ["127.0.0.1"])
        f = self.failureResultOf(defer.Deferred.fromCoroutine(m.addresses("x.test", True)),
                                 DeliveryError)
        self.assertTrue(f.value.permanent)
        f = self.failureResultOf(defer.Deferred.fromCoroutine(m.addresses("x.test", False)),
                                 DeliveryError)
        self.assertFalse(f.value.permanent)


class RecordingResolver(FakeResolver):
    """A L{FakeResolver} that records the names it was asked for."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.asked: list[str] = []

    def lookupMailExchange(self, name: str) -> defer.Deferred[Any]:
        """Record C{name}, then give the canned MX answer."""
        self.asked.append(name)
        return super().lookupMailExchange(name)


class IDNARouteTests(SynchronousTestCase):
    """Destination domains are looked up by their IDNA 2008 A-label."""

    def test_sharpS(self) -> None:
        """C{straße.test} is looked up as C{xn--strae-oqa.test}, not C{strasse.test}."""
        resolver = RecordingResolver([])
        d = defer.Deferred.fromCoroutine(MXResolver(resolver).exchanges("straße.test"))
        self.assertEqual(self.successResultOf(d), ["xn--strae-oqa.test"])
        self.assertEqual(resolver.asked, ["xn--strae-oqa.test"])

    def test_finalSigma(self) -> None:
        """C{ς} keeps its own A-label (C{xn--3xa}), not that of C{σ}."""
        resolver = RecordingResolver([])
        d = defer.Deferred.fromCoroutine(MXResolver(resolver).exchanges("ς.test"))
        self.assertEqual(self.successResultOf(d), ["xn--3xa.test"])

    def test_invalidLabel(self) -> None:
        """A domain that is not IDNA 2008 (a stray ZWJ) fails permanently with 5.1.2,
        without a DNS query (IDNA 2003 would have asked for C{ab.test})."""
        resolver = RecordingResolver([])
        d = defer.Deferred.fromCoroutine(MXResolver(resolver).exchanges("a\u200db.test"))
        f = self.failureResultOf(d, DeliveryError)
        self.assertEqual((f.value.status, f.value.permanent), ("5.1.2", True))
        self.assertEqual(resolver.asked, [])

    def test_wireAddress(self) -> None:
        """On the wire the domain is the IDNA 2008 A-label."""
        self.assertEqual(wireAddress("x@straße.de"), "x@xn--strae-oqa.de")
        self.assertEqual(wireAddress("x@ς.gr"), "x@xn--3xa.gr")


class ParseTests(SynchronousTestCase):
    """C{host:port} parsing for the smarthost and DNS servers."""

    def test_forms(self) -> None:
        """Host, host:port and [v6]:port."""
        self.assertEqual(parseHostPort("mail.test", 25, "k"), ("mail.test", 25))
        self.assertEqual(parseHostPort("mail.test:587", 25, "k"), ("mail.test", 587))
        self.assertEqual(parseHostPort("[::1]:2525", 25, "k"), ("::1", 2525))

    def test_bad(self) -> None:
        """A bad value names the key."""
        e = self.assertRaises(ConfigError, parseHostPort, "mail.test:x", 25, "relay.smarthost")
        self.assertIn("relay.smarthost", str(e))

    def test_badDNSServer(self) -> None:
        """A DNS server given by name is refused when the Relay is made."""
        e = self.assertRaises(ConfigError, Relay, RelayConfig(dns_servers=("ns.test",)),
                              "client.test", reactor, InlineRunner())
        self.assertIn("relay.dns_servers", str(e))

    def test_badTLSPolicy(self) -> None:
        """An unknown smarthost_tls value is a configuration error."""
        self.assertRaises(ConfigError, Relay, RelayConfig(smarthost_tls="sometimes"),
                          "client.test", reactor, InlineRunner(), resolver=FakeResolver())


class RelayTestMixin:
    """Helpers to run L{Relay.deliver} against loopback servers."""

    def writeMessage(self, body: bytes) -> Message:
        """Write C{body} to a file and describe it."""
        path = self.mktemp()  # type: ignore[attr-defined]
        with open(path, "wb") as f:
            f.write(body)
        return Message(path, len(body), not body.isascii())

    def relay(self, **kw: Any) -> Relay:
        """A Relay over the given [relay] settings."""
        kw.setdefault("command_timeout", 10)
        kw.setdefault("connect_timeout", 5)
        return Relay(RelayConfig(**kw), "client.test", reactor, InlineRunner())

    def smarthost(self, server: Any, **kw: Any) -> Relay:
        """A Relay sending everything to C{server} (TLS opportunistic unless given)."""
        kw.setdefault("smarthost_tls", "opportunistic")
        return self.relay(smarthost=f"127.0.0.1:{server.listen(self)}", **kw)

    def viaMX(self, server: Any, records: dict[str, list[Any]], **kw: Any) -> Relay:
        """A Relay using the loopback DNS server and C{server} as every MX."""
        port = server.listen(self)
        dnsPort = startDNS(self, records)  # type: ignore[arg-type]
        return self.relay(mx_port=port, dns_servers=(f"127.0.0.1:{dnsPort}",), **kw)


class DotStuffingTests(RelayTestMixin, TestCase):
    """Lone-dot lines at chunk edges never end DATA early (twisted-traps.md §3.6)."""

    async def test_twistedReceiver(self) -> None:
        """Twisted's own ESMTP server gets exactly one message, identical after unstuffing.

        Twisted's server inserts an empty line before a first line that is not a
        header, so the message it records is that empty line plus ours.
        """
        server = TwistedSMTPFactory()
        relay = self.smarthost(server)
        body = smugglingBody()
        outcomes = await relay.deliver("a@client.test", ["victim@example.test"], "example.test",
                                       self.writeMessage(body))
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertEqual(len(server.delivery.messages), 1)
        self.assertEqual(server.delivery.messages[0], b"\r\n" + body)

    async def test_wireBytes(self) -> None:
        """On the wire the body is exactly the dot-stuffed message and its terminator."""
        server = ScriptedSMTPFactory()
        relay = self.smarthost(server)
        body = smugglingBody()
        await relay.deliver("a@client.test", ["victim@example.test"], "example.test",
                            self.writeMessage(body))
        self.assertEqual(len(server.messages), 1)
        self.assertEqual(server.messages[0].raw, stuffMessage(body))
        self.assertEqual(server.messages[0].data, body)
        self.assertEqual(server.messages[0].rcpts, ["victim@example.test"])
        self.assertNotIn("RCPT TO:<victim2@example.test>", server.commands)


class ClientFeatureTests(RelayTestMixin, TestCase):
    """ESMTP extensions, per-recipient results, timeouts."""

    async def send(self, relay: Relay, rcpts: list[str], body: bytes = SIMPLE,
                   sender: str = "a@client.test") -> list[Outcome]:
        """Deliver C{body} to C{rcpts} (domain example.test)."""
        return await relay.deliver(sender, rcpts, "example.test", self.writeMessage(body))

    async def test_pipelining(self) -> None:
        """With PIPELINING, MAIL, the RCPTs and DATA go in one write."""
        server = ScriptedSMTPFactory()
        outcomes = await self.send(self.smarthost(server), ["b@example.test", "c@example.test"])
        self.assertEqual([o.kind for o in outcomes], [DELIVERED, DELIVERED])
        batch = [r for r in server.reads if r[0].startswith("MAIL")]
        self.assertEqual([c.split(":")[0] for c in batch[0]],
                         ["MAIL FROM", "RCPT TO", "RCPT TO", "DATA"])

    async def test_withoutPipelining(self) -> None:
        """Without PIPELINING, each command waits for the previous reply."""
        server = ScriptedSMTPFactory(extensions=["8BITMIME"])
        outcomes = await self.send(self.smarthost(server), ["b@example.test"])
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertIn(["MAIL FROM:<a@client.test>"], server.reads)
        self.assertIn(["DATA"], server.reads)

    async def test_ehloRefusedFallsBackToHelo(self) -> None:
        """A server that refuses EHLO gets HELO and plain SMTP."""
        server = ScriptedSMTPFactory()
        relay = self.smarthost(server)
        original = server.buildProtocol

        def build(addr: Any) -> Any:
            p = original(addr)
            handle = p.lineReceived

            def lineReceived(line: bytes) -> None:
                if line.upper().startswith(b"EHLO"):
                    p.reply("502 5.5.1 no EHLO here")
                else:
                    handle(line)

            p.lineReceived = lineReceived
            return p

        server.buildProtocol = build  # type: ignore[method-assign]
        outcomes = await self.send(relay, ["b@example.test"])
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertIn("HELO client.test", server.commands)
        self.assertEqual(server.messages[0].mail, "MAIL FROM:<a@client.test>")

    async def test_sizeParameter(self) -> None:
        """SIZE= is sent when the server offers SIZE."""
        server = ScriptedSMTPFactory()
        await self.send(self.smarthost(server), ["b@example.test"])
        self.assertEqual(server.messages[0].mail, f"MAIL FROM:<a@client.test> SIZE={len(SIMPLE)}")

    async def test_sizeExceeded(self) -> None:
        """A message above the server's SIZE limit fails permanently (5.3.4), unsent."""
        server = ScriptedSMTPFactory(extensions=["PIPELINING", "SIZE 50"])
        outcomes = await self.send(self.smarthost(server), ["b@example.test"])
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(PERMANENT, "5.3.4")])
        self.assertFalse([c for c in server.commands if c.startswith("MAIL")])

    async def test_eightBit(self) -> None:
        """An 8-bit message is announced with BODY=8BITMIME."""
        server = ScriptedSMTPFactory()
        body = SIMPLE.replace(b"Hello.", "Grüße.".encode())
        await self.send(self.smarthost(server), ["b@example.test"], body)
        self.assertIn("BODY=8BITMIME", server.messages[0].mail)
        self.assertEqual(server.messages[0].data, body)

    async def test_eightBitWithout8BITMIME(self) -> None:
        """A peer without 8BITMIME still gets the message (as Postfix does), no BODY=."""
        server = ScriptedSMTPFactory(extensions=["PIPELINING"])
        body = SIMPLE.replace(b"Hello.", "Grüße.".encode())
        outcomes = await self.send(self.smarthost(server), ["b@example.test"], body)
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertNotIn("BODY=", server.messages[0].mail)

    async def test_smtputf8Required(self) -> None:
        """A non-ASCII address to a peer without SMTPUTF8 fails permanently (5.6.7)."""
        server = ScriptedSMTPFactory(extensions=["PIPELINING", "8BITMIME"])
        outcomes = await self.send(self.smarthost(server), ["jörg@example.test"])
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(PERMANENT, "5.6.7")])
        self.assertEqual(server.messages, [])

    async def test_smtputf8Offered(self) -> None:
        """With SMTPUTF8 offered, MAIL carries SMTPUTF8 and the address goes as UTF-8."""
        server = ScriptedSMTPFactory()
        outcomes = await self.send(self.smarthost(server), ["jörg@example.test"])
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertIn("SMTPUTF8", server.messages[0].mail)
        self.assertEqual(server.messages[0].rcpts, ["jörg@example.test"])

    async def test_internationalDomain(self) -> None:
        """An IDNA domain goes out as its A-label: no SMTPUTF8 needed for it."""
        server = ScriptedSMTPFactory(extensions=["PIPELINING"])
        outcomes = await self.send(self.smarthost(server), ["bob@exämple.test"],
                                   sender="jo@bücher.test")
        self.assertEqual([(o.kind, o.recipient) for o in outcomes],
                         [(DELIVERED, "bob@exämple.test")])
        self.assertEqual(server.messages[0].rcpts, ["bob@xn--exmple-cua.test"])
        self.assertEqual(server.messages[0].mail, "MAIL FROM:<jo@xn--bcher-kva.test>")

    async def test_sharpSDomain(self) -> None:
        """C{x@straße.test} is sent as C{x@xn--strae-oqa.test} (IDNA 2003: strasse.test)."""
        server = ScriptedSMTPFactory(extensions=["PIPELINING"])
        outcomes = await self.send(self.smarthost(server), ["x@straße.test"])
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertEqual(server.messages[0].rcpts, ["x@xn--strae-oqa.test"])

    async def test_perRecipient(self) -> None:
        """Each recipient gets its own result: accepted, refused, deferred."""
        server = ScriptedSMTPFactory(rcptReplies={
            "bad@example.test": ["550 5.1.1 no such user"],
            "later@example.test": ["451 4.7.1 greylisted"],
        })
        rcpts = ["ok@example.test", "bad@example.test", "later@example.test"]
        outcomes = await self.send(self.smarthost(server), rcpts)
        self.assertEqual([(o.kind, o.status) for o in outcomes],
                         [(DELIVERED, "2.0.0"), (PERMANENT, "5.1.1"), (TEMPORARY, "4.7.1")])
        self.assertIn("550 5.1.1 no such user", outcomes[1].reply)
        self.assertEqual(outcomes[1].diagnosticType, "smtp")
        self.assertEqual(server.messages[0].rcpts, ["ok@example.test"])

    async def test_allRecipientsRefused(self) -> None:
        """When every RCPT is refused no message is sent."""
        server = ScriptedSMTPFactory(extensions=[],
                                     rcptReplies={"b@example.test": ["550 5.1.1 nope"]})
        outcomes = await self.send(self.smarthost(server), ["b@example.test"])
        self.assertEqual([o.kind for o in outcomes], [PERMANENT])
        self.assertNotIn("DATA", server.commands)

    async def test_mailRefused(self) -> None:
        """A refused MAIL FROM decides for all recipients."""
        server = ScriptedSMTPFactory(extensions=[])
        server.auth = ("u", "p")  # MAIL without AUTH is answered 530
        relay = self.smarthost(server)
        outcomes = await self.send(relay, ["b@example.test", "c@example.test"])
        self.assertEqual([(o.kind, o.status) for o in outcomes],
                         [(PERMANENT, "5.7.0"), (PERMANENT, "5.7.0")])

    async def test_dataRefusedPermanently(self) -> None:
        """5xx after the body is a permanent failure."""
        server = ScriptedSMTPFactory(dataReplies=["554 5.7.1 looks like spam"])
        outcomes = await self.send(self.smarthost(server), ["b@example.test"])
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(PERMANENT, "5.7.1")])
        self.assertIn("end of DATA", outcomes[0].reply)

    async def test_dataDeferred(self) -> None:
        """4xx after the body is a temporary failure."""
        server = ScriptedSMTPFactory(dataReplies=["451 4.3.0 try later"])
        outcomes = await self.send(self.smarthost(server), ["b@example.test"])
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(TEMPORARY, "4.3.0")])

    async def test_timeout(self) -> None:
        """No reply after the body: a temporary failure once the timeout passes."""
        server = ScriptedSMTPFactory(dataReplies=["silent"])
        outcomes = await self.send(self.smarthost(server, command_timeout=1), ["b@example.test"])
        self.assertEqual([o.kind for o in outcomes], [TEMPORARY])
        self.assertIn("ReplyTimeout", outcomes[0].reply)

    async def test_stopCancels(self) -> None:
        """L{Relay.stop} ends an attempt in progress with a temporary failure."""
        server = ScriptedSMTPFactory(greetings=["silent"])
        relay = self.smarthost(server)
        d = relay.deliver("a@client.test", ["b@example.test"], "example.test",
                          self.writeMessage(SIMPLE))
        await task.deferLater(reactor, 0.2, lambda: None)
        relay.stop()
        outcomes = await d
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(TEMPORARY, "4.3.2")])


class RoutingTests(RelayTestMixin, TestCase):
    """MX order, fallbacks and DNS failures against a loopback DNS server."""

    RECORDS = {
        "example.test": [mx(10, "mx1.example.test"), mx(20, "mx2.example.test")],
        "mx1.example.test": [a()],
        "mx2.example.test": [a()],
        "aonly.test": [a()],
        "nullmx.test": [mx(0, "")],
        "ghost.test": [mx(10, "missing.ghost.test"), mx(20, "mx2.example.test")],
        "dead.test": [mx(10, "missing.dead.test")],
    }

    async def send(self, relay: Relay, domain: str) -> list[Outcome]:
        """Deliver SIMPLE to C{user@domain}."""
        return await relay.deliver("a@client.test", [f"user@{domain}"], domain,
                                   self.writeMessage(SIMPLE))

    async def test_viaMX(self) -> None:
        """Mail goes to the domain's MX."""
        server = ScriptedSMTPFactory()
        outcomes = await self.send(self.viaMX(server, self.RECORDS), "example.test")
        self.assertEqual([(o.kind, o.remoteMta) for o in outcomes],
                         [(DELIVERED, "mx1.example.test")])
        self.assertEqual(server.connections, 1)

    async def test_greetingRefusedTriesNextMX(self) -> None:
        """A 4xx greeting moves on to the next MX."""
        server = ScriptedSMTPFactory(greetings=["421 4.3.2 busy"])
        outcomes = await self.send(self.viaMX(server, self.RECORDS), "example.test")
        self.assertEqual([(o.kind, o.remoteMta) for o in outcomes],
                         [(DELIVERED, "mx2.example.test")])
        self.assertEqual(server.connections, 2)

    async def test_droppedConnectionTriesNextMX(self) -> None:
        """A connection dropped before the greeting moves on to the next MX."""
        server = ScriptedSMTPFactory(greetings=["drop"])
        outcomes = await self.send(self.viaMX(server, self.RECORDS), "example.test")
        self.assertEqual([(o.kind, o.remoteMta) for o in outcomes],
                         [(DELIVERED, "mx2.example.test")])

    async def test_allMXFail(self) -> None:
        """When every MX refuses, the failure is temporary."""
        server = ScriptedSMTPFactory(greetings=["554 5.7.1 go away", "421 4.3.2 busy"])
        outcomes = await self.send(self.viaMX(server, self.RECORDS), "example.test")
        self.assertEqual([o.kind for o in outcomes], [TEMPORARY])
        self.assertIn("421", outcomes[0].reply)
        self.assertEqual(server.messages, [])

    async def test_mxWithoutAddress(self) -> None:
        """An MX host without an address is skipped."""
        server = ScriptedSMTPFactory()
        outcomes = await self.send(self.viaMX(server, self.RECORDS), "ghost.test")
        self.assertEqual([(o.kind, o.remoteMta) for o in outcomes],
                         [(DELIVERED, "mx2.example.test")])

    async def test_onlyMXWithoutAddress(self) -> None:
        """When the only MX host has no address the failure is temporary."""
        server = ScriptedSMTPFactory()
        outcomes = await self.send(self.viaMX(server, self.RECORDS), "dead.test")
        self.assertEqual([o.kind for o in outcomes], [TEMPORARY])

    async def test_fallbackToA(self) -> None:
        """A domain without MX records receives mail at its own address."""
        server = ScriptedSMTPFactory()
        outcomes = await self.send(self.viaMX(server, self.RECORDS), "aonly.test")
        self.assertEqual([(o.kind, o.remoteMta) for o in outcomes], [(DELIVERED, "aonly.test")])

    async def test_nullMX(self) -> None:
        """A null MX fails at once, permanently, without connecting (RFC 7505)."""
        server = ScriptedSMTPFactory()
        outcomes = await self.send(self.viaMX(server, self.RECORDS), "nullmx.test")
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(PERMANENT, "5.1.10")])
        self.assertEqual(server.connections, 0)

    async def test_noSuchDomain(self) -> None:
        """A domain that does not exist fails permanently (5.1.2)."""
        server = ScriptedSMTPFactory()
        outcomes = await self.send(self.viaMX(server, self.RECORDS), "nowhere.test")
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(PERMANENT, "5.1.2")])


class TLSTests(RelayTestMixin, TestCase):
    """STARTTLS: opportunistic for MX, required for the smarthost, AUTH only over TLS."""

    async def send(self, relay: Relay) -> list[Outcome]:
        """Deliver SIMPLE to b@example.test."""
        return await relay.deliver("a@client.test", ["b@example.test"], "example.test",
                                   self.writeMessage(SIMPLE))

    async def test_opportunistic(self) -> None:
        """STARTTLS is used when offered."""
        server = ScriptedSMTPFactory(tls=tlsContext(self))
        outcomes = await self.send(self.smarthost(server))
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertTrue(server.messages[0].tls)

    async def test_handshakeFailureRetriesInClear(self) -> None:
        """With opportunistic TLS, a failed handshake is retried without STARTTLS."""
        server = ScriptedSMTPFactory(tls=tlsContext(self), breakTLS=1)
        outcomes = await self.send(self.smarthost(server))
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertFalse(server.messages[0].tls)
        self.assertEqual(server.connections, 2)

    async def test_requiredHandshakeFailure(self) -> None:
        """With required TLS, a failed handshake is a temporary failure, never clear."""
        server = ScriptedSMTPFactory(tls=tlsContext(self), breakTLS=1)
        outcomes = await self.send(self.smarthost(server, smarthost_tls="required"))
        self.assertEqual([o.kind for o in outcomes], [TEMPORARY])
        self.assertEqual(server.messages, [])
        self.assertEqual(server.connections, 1)

    async def test_injectionAfterStartTLSDropped(self) -> None:
        """A reply pipelined after the 220 to STARTTLS is not taken as the EHLO reply."""
        server = ScriptedSMTPFactory(tls=tlsContext(self), injectAfterStartTLS=True)
        outcomes = await self.send(self.smarthost(server))
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertTrue(server.messages[0].tls)
        self.assertIn("SIZE=", server.messages[0].mail)

    async def test_requiredNotOffered(self) -> None:
        """Required TLS and no STARTTLS: temporary failure 4.7.4, nothing sent."""
        server = ScriptedSMTPFactory()
        outcomes = await self.send(self.smarthost(server, smarthost_tls="required"))
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(TEMPORARY, "4.7.4")])
        self.assertFalse([c for c in server.commands if c.startswith("MAIL")])

    def passwordFile(self, password: str) -> str:
        """A password file holding C{password}."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(password + "\n")
        return path

    def trusted(self) -> tuple[Any, str]:
        """A server context whose certificate (for 127.0.0.1) a loopback CA issued, and
        that CA's PEM file: a smarthost that required TLS verifies."""
        ca = LoopbackCA(self)
        return ca.serverContext(["127.0.0.1"]), ca.path

    async def test_smarthostAuthPlain(self) -> None:
        """Smarthost with required TLS and AUTH PLAIN: authenticated, encrypted delivery."""
        context, caFile = self.trusted()
        server = ScriptedSMTPFactory(tls=context, auth=("relayuser", "s3cret pw"))
        relay = self.smarthost(server, smarthost_tls="required", smarthost_user="relayuser",
                               smarthost_password_file=self.passwordFile("s3cret pw"),
                               smarthost_ca_file=caFile)
        outcomes = await self.send(relay)
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertTrue(server.messages[0].tls)
        self.assertEqual(server.messages[0].auth, ("relayuser", "s3cret pw"))
        self.assertTrue([c for c in server.commands if c.startswith("AUTH PLAIN ")])

    async def test_smarthostAuthLogin(self) -> None:
        """AUTH LOGIN is used when PLAIN is not offered."""
        context, caFile = self.trusted()
        server = ScriptedSMTPFactory(tls=context, auth=("relayuser", "pw"))
        relay = self.smarthost(server, smarthost_tls="required", smarthost_user="relayuser",
                               smarthost_password_file=self.passwordFile("pw"),
                               smarthost_ca_file=caFile)
        build = server.buildProtocol

        def buildLoginOnly(addr: Any) -> Any:
            p = build(addr)
            reply = p.reply

            def filtered(*lines: str) -> None:
                reply(*[x.replace("AUTH PLAIN LOGIN", "AUTH LOGIN") for x in lines])

            p.reply = filtered
            return p

        server.buildProtocol = buildLoginOnly  # type: ignore[method-assign]
        outcomes = await self.send(relay)
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertIn("AUTH LOGIN", server.commands)
        self.assertEqual(server.messages[0].auth, ("relayuser", "pw"))

    async def test_smarthostAuthRefused(self) -> None:
        """Refused credentials are a temporary failure (the admin can fix them)."""
        context, caFile = self.trusted()
        server = ScriptedSMTPFactory(tls=context, auth=("relayuser", "right"))
        relay = self.smarthost(server, smarthost_tls="required", smarthost_user="relayuser",
                               smarthost_password_file=self.passwordFile("wrong"),
                               smarthost_ca_file=caFile)
        outcomes = await self.send(relay)
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(TEMPORARY, "4.7.0")])
        self.assertEqual(server.authAttempts, [("relayuser", "wrong")])
        self.assertEqual(server.messages, [])

    async def test_passwordNeverInClearToRemote(self) -> None:
        """The password is not sent without TLS to a non-loopback address."""
        relay = self.relay(smarthost="127.0.0.1:1", smarthost_user="u")
        proto = ESMTPClientProtocol(reactor)
        proto.makeConnection(StringTransport())
        d = defer.Deferred.fromCoroutine(relay._authenticate(
            proto, {"AUTH": "PLAIN"}, "remote.test[192.0.2.1]", "remote.test", "192.0.2.1"))
        f = self.failureResultOf(d, DeliveryError)
        self.assertEqual(f.value.status, "4.7.0")
        self.assertEqual(proto.transport.value(), b"")


class SmarthostVerificationTests(RelayTestMixin, TestCase):
    """With C{smarthost_tls = "required"} the smarthost's certificate must chain to the
    system trust store or C{smarthost_ca_file} and be valid for the smarthost's name;
    otherwise the attempt fails temporarily, says why, and the password never leaves.
    Opportunistic MX delivery stays unverified."""

    def setUp(self) -> None:
        """Collect log events; a loopback CA."""
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.ca = LoopbackCA(self)

    def passwordFile(self) -> str:
        """A password file for the smarthost login."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("s3cret pw\n")
        return path

    def named(self, server: ScriptedSMTPFactory, caFile: str = "", **kw: Any) -> Relay:
        """A Relay whose smarthost is C{server} by the name C{smtp.relay.test} (resolved by
        a loopback DNS server to 127.0.0.1), with required TLS and AUTH."""
        port = server.listen(self)
        dnsPort = startDNS(self, {"smtp.relay.test": [a("127.0.0.1")]})
        return self.relay(smarthost=f"smtp.relay.test:{port}", smarthost_tls="required",
                          smarthost_user="relayuser", smarthost_password_file=self.passwordFile(),
                          smarthost_ca_file=caFile, dns_servers=(f"127.0.0.1:{dnsPort}",), **kw)

    async def send(self, relay: Relay) -> list[Outcome]:
        """Deliver SIMPLE to b@example.test."""
        return await relay.deliver("a@client.test", ["b@example.test"], "example.test",
                                   self.writeMessage(SIMPLE))

    def assertNothingSent(self, server: ScriptedSMTPFactory, outcomes: list[Outcome],
                          why: str) -> None:
        """A temporary 4.7.5 failure saying C{why}; no AUTH, no MAIL, no message; a log
        line giving the reason."""
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(TEMPORARY, "4.7.5")])
        self.assertIn(why, outcomes[0].reply)
        self.assertEqual(server.authAttempts, [])
        self.assertFalse([c for c in server.commands if c.startswith(("AUTH", "MAIL"))],
                         server.commands)
        self.assertEqual(server.messages, [])
        logged = [formatEvent(e) for e in self.events if "refused, nothing sent" in
                  e.get("log_format", "")]
        self.assertEqual(len(logged), 1, logged)
        self.assertIn(why, logged[0])

    async def test_selfSignedRefused(self) -> None:
        """A self-signed certificate (for the right name) is refused against the
        configured CA file."""
        server = ScriptedSMTPFactory(tls=tlsContext(self, ("smtp.relay.test",)),
                                     auth=("relayuser", "s3cret pw"))
        outcomes = await self.send(self.named(server, self.ca.path))
        self.assertNothingSent(server, outcomes, "could not be verified against the CA file")

    async def test_selfSignedRefusedBySystemTrust(self) -> None:
        """Without a CA file the system trust store decides: a self-signed certificate
        (for the right name) is refused too, and so is one from an unknown CA."""
        server = ScriptedSMTPFactory(tls=tlsContext(self, ("smtp.relay.test",)),
                                     auth=("relayuser", "s3cret pw"))
        outcomes = await self.send(self.named(server))
        self.assertNothingSent(server, outcomes,
                               "could not be verified against the system trust store")
        self.events.clear()
        server = ScriptedSMTPFactory(tls=self.ca.serverContext(["smtp.relay.test"]),
                                     auth=("relayuser", "s3cret pw"))
        outcomes = await self.send(self.named(server))
        self.assertNothingSent(server, outcomes,
                               "could not be verified against the system trust store")

    async def test_otherCARefused(self) -> None:
        """A certificate for the right name from another CA is refused."""
        other = LoopbackCA(self, "another CA")
        server = ScriptedSMTPFactory(tls=other.serverContext(["smtp.relay.test"]),
                                     auth=("relayuser", "s3cret pw"))
        outcomes = await self.send(self.named(server, self.ca.path))
        self.assertNothingSent(server, outcomes, "could not be verified")

    async def test_trustedCADelivers(self) -> None:
        """A certificate from the configured CA for the smarthost's name: verified TLS,
        AUTH, delivery."""
        server = ScriptedSMTPFactory(tls=self.ca.serverContext(["smtp.relay.test"]),
                                     auth=("relayuser", "s3cret pw"))
        outcomes = await self.send(self.named(server, self.ca.path))
        self.assertEqual([o.kind for o in outcomes], [DELIVERED], outcomes)
        self.assertTrue(server.messages[0].tls)
        self.assertEqual(server.messages[0].auth, ("relayuser", "s3cret pw"))

    async def test_wrongHostNameRefused(self) -> None:
        """The right CA but a certificate for another name is refused."""
        server = ScriptedSMTPFactory(tls=self.ca.serverContext(["other.relay.test"]),
                                     auth=("relayuser", "s3cret pw"))
        outcomes = await self.send(self.named(server, self.ca.path))
        self.assertNothingSent(server, outcomes,
                               "not valid for the host name smtp.relay.test")

    async def test_ipAddressSmarthost(self) -> None:
        """A smarthost given by IP address is checked against the certificate's IP
        addresses."""
        server = ScriptedSMTPFactory(tls=self.ca.serverContext(["127.0.0.2"]))
        relay = self.smarthost(server, smarthost_tls="required", smarthost_ca_file=self.ca.path)
        outcomes = await self.send(relay)
        self.assertEqual([(o.kind, o.status) for o in outcomes], [(TEMPORARY, "4.7.5")])
        self.assertIn("not valid for the host name 127.0.0.1", outcomes[0].reply)
        server = ScriptedSMTPFactory(tls=self.ca.serverContext(["127.0.0.1"]))
        relay = self.smarthost(server, smarthost_tls="required", smarthost_ca_file=self.ca.path)
        self.assertEqual([o.kind for o in await self.send(relay)], [DELIVERED])

    async def test_opportunisticMXUnverified(self) -> None:
        """Direct MX delivery still takes a self-signed certificate (opportunistic TLS)."""
        server = ScriptedSMTPFactory(tls=tlsContext(self))
        relay = self.viaMX(server, {"example.test": [mx(10, "mx.example.test")],
                                    "mx.example.test": [a("127.0.0.1")]})
        outcomes = await self.send(relay)
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        self.assertTrue(server.messages[0].tls)

    def test_badCAFile(self) -> None:
        """A missing or empty CA file is a configuration error naming the key."""
        e = self.assertRaises(ConfigError, self.relay, smarthost="127.0.0.1:25",
                              smarthost_ca_file="/nonexistent/ca.pem")
        self.assertIn("relay.smarthost_ca_file", str(e))
        empty = self.mktemp()
        open(empty, "w").close()
        e = self.assertRaises(ConfigError, self.relay, smarthost="127.0.0.1:25",
                              smarthost_ca_file=empty)
        self.assertIn("relay.smarthost_ca_file", str(e))
