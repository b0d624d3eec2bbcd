"""Tests for pymaild.smtp.tlsrpt (RFC 8460): results recorded by the relay over real
sockets, and the daily report queued, relayed to the destination's MX, DKIM-signed.

The world is the MTA-STS one of L{tests.test_mtasts} (loopback CA, HTTPS policy server,
test DNS server, scripted MX); the destination publishes C{_smtp._tls}.
"""

from __future__ import annotations

import calendar
import email
import gzip
import json
import os
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from pymaild.config import Config, RelayConfig, ServerConfig
from pymaild.mailauth.dkimkeys import DKIMKeys
from pymaild.mailauth.signer import DKIMSigner
from pymaild.smtp import tlsrpt
from pymaild.smtp.esmtpclient import DELIVERED, TEMPORARY
from pymaild.smtp.mtasts import ENFORCE
from pymaild.smtp.queue import Queue
from pymaild.smtp.relay import Relay
from pymaild.smtp.tlsrpt import (
    HTTPSReports,
    TLSReporter,
    TLSResults,
    buildReport,
    parseTLSRPT,
)
from pymaild.threads import InlineRunner
from pymaild.tls import loadCAFile
from tests.dnsserver import TXT, A
from tests.test_mtasts import MTASTSTestMixin
from tests.test_relay_support import LoopbackCA, tlsContext

DAY = "2026-03-04"
NOON = calendar.timegm(time.strptime(f"{DAY} 12:00:00", "%Y-%m-%d %H:%M:%S"))


class RecordTests(SynchronousTestCase):
    """The C{_smtp._tls} record and the report's aggregation."""

    def test_parse(self) -> None:
        """C{v=TLSRPTv1} first, then C{rua} with comma-separated URIs."""
        self.assertEqual(parseTLSRPT(b"v=TLSRPTv1; rua=mailto:a@b.test, https://r.test/x"),
                         ["mailto:a@b.test", "https://r.test/x"])
        self.assertEqual(parseTLSRPT(b"v=TLSRPTv1;rua=mailto:a@b.test;"), ["mailto:a@b.test"])
        for bad in (b"v=TLSRPTv2; rua=mailto:a@b.test", b"rua=mailto:a@b.test",
                    b"v=TLSRPTv1", b"\xff"):
            self.assertIsNone(parseTLSRPT(bad), bad)

    def test_report(self) -> None:
        """Sessions counted per policy; failures grouped by result type, MX and IP."""
        sts = ["version: STSv1", "mode: enforce", "mx: mx.d.test", "max_age: 60"]
        results = [
            {"domain": "d.test", "type": "sts", "strings": sts, "mx": "mx.d.test",
             "result": "success", "ip": "192.0.2.1"},
            {"domain": "d.test", "type": "sts", "strings": sts, "mx": "mx.d.test",
             "result": "success", "ip": "192.0.2.1"},
            {"domain": "d.test", "type": "sts", "strings": sts, "mx": "mx.d.test",
             "result": "certificate-not-trusted", "ip": "192.0.2.1"},
            {"domain": "d.test", "type": "no-policy-found", "strings": [], "mx": "mx.d.test",
             "result": "success", "ip": "192.0.2.1"},
        ]
        report = buildReport("d.test", DAY, results, "mail.s.test", "postmaster@s.test",
                             "r1")
        self.assertEqual(report["date-range"], {"start-datetime": f"{DAY}T00:00:00Z",
                                                "end-datetime": f"{DAY}T23:59:59Z"})
        self.assertEqual((report["organization-name"], report["contact-info"],
                          report["report-id"]), ("mail.s.test", "postmaster@s.test", "r1"))
        none, stsPolicy = report["policies"]
        self.assertEqual(none["policy"], {"policy-type": "no-policy-found",
                                          "policy-domain": "d.test"})
        self.assertEqual(stsPolicy["policy"], {"policy-type": "sts", "policy-domain": "d.test",
                                               "policy-string": sts, "mx-host": ["mx.d.test"]})
        self.assertEqual(stsPolicy["summary"], {"total-successful-session-count": 2,
                                                "total-failure-session-count": 1})
        self.assertEqual(stsPolicy["failure-details"], [{
            "result-type": "certificate-not-trusted", "failed-session-count": 1,
            "receiving-mx-hostname": "mx.d.test", "receiving-ip": "192.0.2.1"}])


class ReportTests(MTASTSTestMixin, TestCase):
    """Results recorded by the relay end up, the next day, in a signed report that the
    queue relays to the address in the destination's C{_smtp._tls} record."""

    def reporting(self) -> tuple[TLSResults, str]:
        """Results recorded as if on L{DAY}."""
        directory = os.path.join(self.mktemp(), "tls-rpt")
        return TLSResults(directory, InlineRunner(), clock=lambda: NOON), directory

    def relayWith(self, results: TLSResults) -> Relay:
        """The MTA-STS relay of the mixin, recording into C{results}."""
        relay = self.relay()
        relay.tlsResults = results
        return relay

    async def test_recordAndReport(self) -> None:
        """An enforced delivery (success), a self-signed MX under the policy (failure),
        then the daily job: one gzip'd JSON report in RFC 8460's MIME form, DKIM-signed,
        relayed to tlsrpt@example.test; the day is marked sent."""
        self.setUpWorld()
        results, directory = self.reporting()
        outcomes = await self.send(self.relayWith(results))
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        # The MX now shows a certificate the policy refuses.
        from tests.test_relay_support import tlsContext

        self.mx.tls = tlsContext(self, ("mx.example.test",))
        outcomes = await self.send(self.relayWith(results))
        self.assertEqual([o.kind for o in outcomes], [TEMPORARY])
        self.mx.tls = self.ca.serverContext(["mx.example.test"])
        with open(os.path.join(directory, f"{DAY}.jsonl"), encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual([(r["type"], r["result"]) for r in lines],
                         [("sts", "success"), ("sts", "certificate-not-trusted")])

        self.zones.set("_smtp._tls.example.test", [
            TXT("v=TLSRPTv1; rua=mailto:tlsrpt@example.test,https://reports.example.test/")])
        keys = DKIMKeys(os.path.join(self.mktemp(), "dkim"))
        keys.keygen("local.test", "s1")
        queue, settle = await self.startQueue()
        reporter = TLSReporter(results, self.mtasts().dns, queue, "mail.local.test",
                               "postmaster@local.test", DKIMSigner(keys), InlineRunner(),
                               clock=lambda: NOON + 86400)
        self.assertEqual(await reporter.runPending(), 1)
        await settle()
        [received] = [m for m in self.mx.messages if m.rcpts == ["tlsrpt@example.test"]]
        self.assertEqual(received.mail.split()[1], "FROM:<postmaster@local.test>")
        # Without an HTTPS poster the https: URI is only logged.
        self.assertTrue(self.logged("asks for https://reports.example.test/: not supported"))
        self.checkReport(received.data, keys)
        self.assertEqual(sorted(os.listdir(directory)), [f"{DAY}.sent"])
        self.assertEqual(await reporter.runPending(), 0)

    def checkReport(self, data: bytes, keys: DKIMKeys) -> None:
        """The report message: fields, parts, the JSON inside, the DKIM signatures."""
        import dkim

        message = email.message_from_bytes(data)
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message.get_param("report-type"), "tlsrpt")
        self.assertEqual(message["TLS-Report-Domain"], "example.test")
        self.assertEqual(message["TLS-Report-Submitter"], "mail.local.test")
        self.assertEqual(" ".join(message["Subject"].split()),
                         "Report Domain: example.test Submitter: mail.local.test Report-ID:"
                         f" <{DAY}.example.test@mail.local.test>")
        text, attachment = message.get_payload()
        self.assertEqual(text.get_content_type(), "text/plain")
        self.assertEqual(attachment.get_content_type(), "application/tlsrpt+gzip")
        start = int(NOON - 12 * 3600)
        self.assertEqual(attachment.get_filename(),
                         f"mail.local.test!example.test!{start}!{start + 86399}.json.gz")
        report = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
        [policy] = report["policies"]
        self.assertEqual(policy["policy"]["policy-type"], "sts")
        self.assertEqual(policy["policy"]["policy-string"],
                         ["version: STSv1", "mode: enforce", "mx: mx.example.test",
                          "max_age: 86400"])
        self.assertEqual(policy["summary"], {"total-successful-session-count": 1,
                                             "total-failure-session-count": 1})
        self.assertEqual(policy["failure-details"][0]["result-type"], "certificate-not-trusted")
        self.assertEqual(policy["failure-details"][0]["receiving-ip"], "127.0.0.1")
        published = {f"{k.dnsName}.".encode(): k.dnsValue.encode()
                     for k in keys.signingKeys("local.test")}

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            return published.get(name, b"")

        self.assertEqual(data.count(b"DKIM-Signature:"), 2)
        d = dkim.DKIM(data)
        self.assertTrue(all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(2)))

    async def startQueue(self) -> tuple[Queue, Any]:
        """A queue for local.test relaying (without MTA-STS) to the scripted MX, and a
        function that lets it settle."""
        clock = task.Clock()
        clock.advance(time.time())
        config = Config(
            server=ServerConfig(hostname="mail.local.test", domains=("local.test",)),
            relay=RelayConfig(mx_port=self.mxPort, dns_servers=(self.zones.address,),
                              command_timeout=10, connect_timeout=5))

        def deliverLocal(rcpt: str, data: bytes) -> defer.Deferred[None]:
            return defer.succeed(None)

        relay = Relay(config.relay, "mail.local.test", reactor, InlineRunner())
        q = Queue(self.mktemp(), InlineRunner(), clock, config, "mail.local.test",
                  deliverLocal, relay=relay)
        q.service.startService()
        self.addCleanup(q.service.stopService)
        clock.advance(0)
        await q.service.whenStarted()

        async def settle() -> None:
            for _ in range(50):
                clock.advance(0)
                await q.whenIdle()
                if not q.busy:
                    return
            raise AssertionError("the queue did not settle")

        return q, settle

    async def test_noRecordNoReport(self) -> None:
        """A destination without C{_smtp._tls}: nothing is sent, the day is done; a DNS
        failure keeps the day for the next run."""
        self.setUpWorld()
        results, directory = self.reporting()
        await self.send(self.relayWith(results))
        queued: list[Any] = []

        class FakeQueue:
            """Records what would be queued."""

            def enqueue(self, *args: Any) -> defer.Deferred[str]:
                queued.append(args)
                return defer.succeed("x")

        self.zones.failing.add("_smtp._tls.example.test")
        reporter = TLSReporter(results, self.mtasts().dns, FakeQueue(), "mail.local.test",
                               "postmaster@local.test", clock=lambda: NOON + 86400)
        self.assertEqual(await reporter.runPending(), 0)
        self.assertEqual(os.listdir(directory), [f"{DAY}.jsonl"])
        self.zones.failing.clear()
        self.assertEqual(await reporter.runPending(), 0)
        self.assertEqual(os.listdir(directory), [f"{DAY}.sent"])
        self.assertEqual(queued, [])

    async def test_todayNotReported(self) -> None:
        """Results of the current day wait for the day to end."""
        self.setUpWorld()
        results, directory = self.reporting()
        await self.send(self.relayWith(results))
        reporter = TLSReporter(results, self.mtasts().dns, None, "mail.local.test",
                               "postmaster@local.test", clock=lambda: NOON)
        self.assertEqual(await reporter.runPending(), 0)
        self.assertEqual(os.listdir(directory), [f"{DAY}.jsonl"])


class ReportReceiver(resource.Resource):
    """An HTTPS report endpoint: records each POST, answers as scripted.

    @ivar codes: consumed one per POST (then 200).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.codes: list[int] = []
        self.posts: list[tuple[bytes, bytes, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        """Record C{(path, content type, body)}."""
        self.posts.append((request.path, request.getHeader(b"content-type") or b"",
                           request.content.read()))
        request.setResponseCode(self.codes.pop(0) if self.codes else 200)
        return b""


class HTTPSReportTests(MTASTSTestMixin, TestCase):
    """Reports POSTed to an C{https:} rua (RFC 8460 §3) on a real HTTPS server on
    loopback, its certificate verified, retried with backoff when a post fails."""

    def startReceiver(self, ca: LoopbackCA | None = None) -> ReportReceiver:
        """The world, one recorded delivery on L{DAY}, an HTTPS report server for
        reports.example.test (certificate from C{ca}, by default the world's CA) named
        in the C{_smtp._tls} record."""
        self.setUpWorld()
        receiver = ReportReceiver()
        site = server.Site(receiver)
        site.noisy = False
        port = reactor.listenSSL(0, site, (ca or self.ca).serverContext(
            ["reports.example.test"]), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.zones.set("reports.example.test", [A("127.0.0.1")])
        self.zones.set("_smtp._tls.example.test", [TXT(
            f"v=TLSRPTv1; rua=https://reports.example.test:{port.getHost().port}/tlsrpt")])
        return receiver

    async def reporter(self, first: float = 600, lifetime: float = 86400
                       ) -> tuple[TLSReporter, HTTPSReports, list[float]]:
        """A reporter with an HTTPS poster over the test DNS server, trusting the world's
        CA, with results of one delivery on L{DAY}; the clock is the list's value."""
        directory = os.path.join(self.mktemp(), "tls-rpt")
        results = TLSResults(directory, InlineRunner(), clock=lambda: NOON)
        relay = self.relay()
        relay.tlsResults = results
        await self.send(relay)
        now = [NOON + 86400]
        dns = self.mtasts().dns
        https = HTTPSReports(os.path.join(directory, "https"), InlineRunner(), reactor, dns,
                             trust=loadCAFile(self.ca.path), timeout=5, first=first,
                             lifetime=lifetime, clock=lambda: now[0])
        reporter = TLSReporter(results, dns, None, "mail.local.test", "postmaster@local.test",
                               clock=lambda: now[0], https=https)
        return reporter, https, now

    async def test_posted(self) -> None:
        """The report is POSTed as application/tlsrpt+gzip to the URI's path; the gzip
        holds the day's JSON report; the day is marked sent, nothing is kept."""
        receiver = self.startReceiver()
        reporter, https, _now = await self.reporter()
        self.assertEqual(await reporter.runPending(), 1)
        [(path, contentType, body)] = receiver.posts
        self.assertEqual((path, contentType), (b"/tlsrpt", b"application/tlsrpt+gzip"))
        report = json.loads(gzip.decompress(body))
        self.assertEqual(report["report-id"], f"{DAY}.example.test@mail.local.test")
        [policy] = report["policies"]
        self.assertEqual((policy["policy"]["policy-domain"], policy["policy"]["policy-type"],
                          policy["summary"]["total-successful-session-count"]),
                         ("example.test", "sts", 1))
        self.assertEqual(await https.runner.run(https._pending), [])

    async def test_retried(self) -> None:
        """A post answered 503 is kept; it is not tried again before it is due, then is
        posted at the first run after its delay."""
        receiver = self.startReceiver()
        receiver.codes = [503]
        reporter, https, now = await self.reporter()
        await reporter.runPending()
        self.assertEqual(len(receiver.posts), 1)
        [(_name, entry)] = await https.runner.run(https._pending)
        self.assertEqual((entry["attempts"], entry["next"]), (1, now[0] + 600))
        now[0] += 300
        self.assertEqual(await reporter.runPending(), 0)
        self.assertEqual(len(receiver.posts), 1)
        now[0] += 300
        await reporter.runPending()
        self.assertEqual(len(receiver.posts), 2)
        self.assertEqual(receiver.posts[0][2], receiver.posts[1][2])
        self.assertEqual(await https.runner.run(https._pending), [])

    async def test_untrustedServerNeverPosted(self) -> None:
        """A report server whose certificate another CA issued gets no report (the
        handshake fails first); the post is retried, then dropped after its lifetime."""
        receiver = self.startReceiver(LoopbackCA(self, "another CA"))
        reporter, https, now = await self.reporter(first=600, lifetime=1000)
        await reporter.runPending()
        self.assertEqual(len(await https.runner.run(https._pending)), 1)
        now[0] += 600
        await reporter.runPending()
        self.assertEqual(receiver.posts, [])
        self.assertEqual(await https.runner.run(https._pending), [])
        self.assertTrue(self.logged("dropped: not posted within"))


class ResultTypeTests(MTASTSTestMixin, TestCase):
    """Each RFC 8460 result type the relay gives under MTA-STS, from a real attempt."""

    async def attempt(self) -> list[tuple[str, str, str]]:
        """One delivery attempt with a fresh policy cache; the C{(policy type, result,
        MX host)} of the results it recorded."""
        directory = os.path.join(self.mktemp(), "tls-rpt")
        self.cacheDir = os.path.join(self.mktemp(), "mta-sts")
        relay = self.relay()
        relay.tlsResults = TLSResults(directory, InlineRunner())
        await self.send(relay)
        [name] = os.listdir(directory)
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            return [(r["type"], r["result"], r["mx"]) for r in map(json.loads, f)]

    async def test_policyFetchFailures(self) -> None:
        """The domain publishes a valid C{_mta-sts} record, but no policy comes: a
        server error is C{sts-policy-fetch-error}, a body that is no policy
        C{sts-policy-invalid} (both under the STS policy type, with no MX); the message
        then goes out without a policy. A report carries the failure."""
        self.setUpWorld()
        self.policy.code = 500
        fetchError = await self.attempt()
        self.assertEqual(fetchError, [("sts", "sts-policy-fetch-error", ""),
                                      ("no-policy-found", "success", "mx.example.test")])
        self.policy.code = 200
        self.policy.body = b"version: STSv1\r\nmode: enforce\r\n"
        self.assertEqual((await self.attempt())[0], ("sts", "sts-policy-invalid", ""))
        report = buildReport("example.test", DAY, [
            {"domain": "example.test", "type": t, "strings": [], "mx": mx, "result": r}
            for t, r, mx in fetchError], "mail.local.test", "postmaster@local.test", "r1")
        [sts] = [p for p in report["policies"] if p["policy"]["policy-type"] == "sts"]
        self.assertEqual(sts["summary"]["total-failure-session-count"], 1)
        self.assertEqual(sts["failure-details"],
                         [{"result-type": "sts-policy-fetch-error", "failed-session-count": 1}])

    async def test_policyServerNotTrusted(self) -> None:
        """A policy server whose certificate does not verify: C{sts-webpki-invalid}."""
        self.setUpWorld(policyCA=LoopbackCA(self, "another CA"))
        self.assertEqual((await self.attempt())[0], ("sts", "sts-webpki-invalid", ""))

    async def test_noRecordNothingReported(self) -> None:
        """No C{_mta-sts} record: nothing about a policy fetch is recorded."""
        self.setUpWorld()
        self.zones.set("_mta-sts.example.test", [])
        self.assertEqual(await self.attempt(),
                         [("no-policy-found", "success", "mx.example.test")])

    async def test_negotiationFailures(self) -> None:
        """Under an enforced policy: no STARTTLS is C{starttls-not-supported}, a
        certificate for another name C{certificate-host-mismatch}, an expired one
        C{certificate-expired}, a self-signed one C{certificate-not-trusted}, an MX the
        policy does not list C{validation-failure}."""
        self.setUpWorld()
        mx = "mx.example.test"
        cases = [
            (None, "starttls-not-supported"),
            (self.ca.serverContext(["other.example.test"]), "certificate-host-mismatch"),
            (self.ca.serverContext([mx], expired=True), "certificate-expired"),
            (tlsContext(self, (mx,)), "certificate-not-trusted"),
        ]
        for context, result in cases:
            self.mx.tls = context
            self.assertEqual(await self.attempt(), [("sts", result, mx)], result)
        self.mx.tls = self.ca.serverContext([mx])
        self.setPolicy(ENFORCE, "mx2.example.test")
        self.assertEqual(await self.attempt(), [("sts", "validation-failure", mx)])
        self.setPolicy(ENFORCE, mx)
        self.assertEqual(await self.attempt(), [("sts", "success", mx)])


class DANEResultTests(SynchronousTestCase):
    """The result types the relay uses are the RFC's."""

    def test_names(self) -> None:
        """Spelled as RFC 8460 §4.3 spells them."""
        self.assertEqual(
            {tlsrpt.STARTTLS_NOT_SUPPORTED, tlsrpt.CERTIFICATE_HOST_MISMATCH,
             tlsrpt.CERTIFICATE_NOT_TRUSTED, tlsrpt.VALIDATION_FAILURE, tlsrpt.TLSA_INVALID,
             tlsrpt.DNSSEC_INVALID, tlsrpt.CERTIFICATE_EXPIRED, tlsrpt.STS_POLICY_FETCH_ERROR,
             tlsrpt.STS_POLICY_INVALID, tlsrpt.STS_WEBPKI_INVALID},
            {"starttls-not-supported", "certificate-host-mismatch", "certificate-not-trusted",
             "validation-failure", "tlsa-invalid", "dnssec-invalid", "certificate-expired",
             "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid"})
