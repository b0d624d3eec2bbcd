"""Tests for pymaild.mailauth.dmarcreports (RFC 7489 §7): the MX records each DMARC
evaluation, and the daily aggregate report goes to the policy domain's C{rua=mailto:}
after the external-destination check, gzip'd XML, DKIM-signed.

Mail arrives over real SMTP at a live MX whose chain runs the authentication check
(the world of L{tests.test_mailauth_inbound}); the test DNS server holds the policies.
"""

from __future__ import annotations

import calendar
import email
import gzip
import os
import time
from typing import Any
from xml.etree import ElementTree as ET

import dkim
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.config import MailAuthConfig
from pymaild.mailauth.dkimkeys import DKIMKeys
from pymaild.mailauth.dkimverify import DKIMVerifier
from pymaild.mailauth.dmarc import DMARCEvaluator
from pymaild.mailauth.dmarcreports import (
    DMARCRecorder,
    DMARCReporter,
    buildReport,
    ruaAddresses,
)
from pymaild.mailauth.inbound import AuthenticationCheck
from pymaild.mailauth.signer import DKIMSigner
from pymaild.mailauth.spf import SPFChecker
from pymaild.smtp.checks import CheckChain
from pymaild.threads import InlineRunner, ThreadRunner, makePool
from tests.dnsserver import TXT
from tests.mailauth_support import message
from tests.test_mailauth_inbound import MailAuthServerMixin, PolicyTests
from tests.test_smtp_integration import LiveServerMixin

DAY = "2026-03-04"
NOON = calendar.timegm(time.strptime(f"{DAY} 12:00:00", "%Y-%m-%d %H:%M:%S"))


class ParseTests(SynchronousTestCase):
    """The C{rua} tag and the XML report."""

    def test_rua(self) -> None:
        """Comma-separated URIs; none; not a DMARC record."""
        self.assertEqual(ruaAddresses("v=DMARC1; p=none; rua=mailto:a@b.test,mailto:c@d.test"),
                         ["mailto:a@b.test", "mailto:c@d.test"])
        self.assertEqual(ruaAddresses("v=DMARC1; p=none"), [])
        self.assertIsNone(ruaAddresses("v=spf1 -all"))

    def test_report(self) -> None:
        """Rows with the same facts are counted together; the published policy and the
        date range are there."""
        row = {"domain": "r.test", "ip": "192.0.2.1", "from": "r.test",
               "published": {"adkim": "r", "aspf": "r", "p": "reject", "sp": "reject",
                             "pct": 100},
               "disposition": "reject", "dkimEval": "fail", "spfEval": "fail",
               "spf": ["r.test", "fail"], "dkim": [["r.test", "s1-rsa", "fail"]]}
        other = dict(row, ip="192.0.2.2", disposition="none", dkimEval="pass",
                     dkim=[["r.test", "s1-rsa", "pass"]])
        root = ET.fromstring(buildReport("r.test", DAY, [row, row, other], "mx.s.test",
                                         "postmaster@s.test", "id1"))
        self.assertEqual(root.findtext("report_metadata/report_id"), "id1")
        self.assertEqual(int(root.findtext("report_metadata/date_range/begin")), NOON - 43200)
        self.assertEqual(root.findtext("policy_published/p"), "reject")
        records = root.findall("record")
        self.assertEqual([(r.findtext("row/source_ip"), r.findtext("row/count"),
                           r.findtext("row/policy_evaluated/disposition"),
                           r.findtext("row/policy_evaluated/dkim"),
                           r.findtext("auth_results/dkim/selector"),
                           r.findtext("auth_results/spf/result")) for r in records],
                         [("192.0.2.1", "2", "reject", "fail", "s1-rsa", "fail"),
                          ("192.0.2.2", "1", "none", "pass", "s1-rsa", "fail")])


class FakeQueue:
    """Keeps what would be queued."""

    def __init__(self) -> None:
        self.items: list[tuple[str, list[str], bytes]] = []

    def enqueue(self, sender: str, recipients: list[str], data: bytes) -> defer.Deferred[str]:
        """Keep the message."""
        self.items.append((sender, recipients, data))
        return defer.succeed(f"q{len(self.items)}")


class AggregateTests(MailAuthServerMixin, LiveServerMixin, TestCase):
    """Messages over SMTP to a live MX, then the daily reports."""

    send = PolicyTests.send

    def setUp(self) -> None:
        """DNS, an MX listener whose chain runs the authentication check, recording."""
        self.startDNS()
        self.stack = self.startServer(role="mx")
        pool = makePool("test-crypto", 2)
        pool.start()
        self.addCleanup(pool.stop)
        self.directory = os.path.join(os.path.abspath(self.mktemp()), "dmarc-reports")
        self.rows = DMARCRecorder(self.directory, InlineRunner(), clock=lambda: NOON)
        config = MailAuthConfig(internal_networks=(), dns_timeout=5)
        self.check = AuthenticationCheck(
            SPFChecker(self.dns), DKIMVerifier(self.dns, ThreadRunner(reactor, pool)),
            DMARCEvaluator(self.dns), config, reactor, reports=self.rows)
        self.stack.avatars.checks = CheckChain([self.check])

    def reporter(self, queue: Any) -> DMARCReporter:
        """A reporter for the day after L{DAY}, signing with local.test's keys."""
        self.localKeys = DKIMKeys(os.path.abspath(self.mktemp()))
        self.localKeys.keygen("local.test", "s1")
        return DMARCReporter(self.rows, self.dns, self.check.dmarc.organisational, queue,
                             "mx.local.test", "postmaster@local.test",
                             DKIMSigner(self.localKeys), InlineRunner(),
                             clock=lambda: NOON + 86400)

    @defer.inlineCallbacks
    def test_reported(self) -> defer.Generator:
        """A signed message that passes and a forged one refused with 550 are both in
        the report sent to r.test's own rua address and to an outside address that
        agreed (its C{r.test._report._dmarc} record); an outside address that did not
        agree gets nothing."""
        self.server.set("_dmarc.r.test", [TXT(
            "v=DMARC1; p=reject; rua=mailto:dmarc@r.test,mailto:agg@q.test,"
            "mailto:x@l.test,https://r.test/dmarc")])
        self.server.set("r.test._report._dmarc.q.test", [TXT("v=DMARC1")])
        signed = self.signer.sign(message(sender="alice@r.test"))
        code, _text = yield self.send("alice@r.test", signed)
        self.assertEqual(code, 250)
        code, _text = yield self.send("alice@r.test", message(sender="alice@r.test"))
        self.assertEqual(code, 550)
        queue = FakeQueue()
        sent = yield defer.ensureDeferred(self.reporter(queue).runPending())
        self.assertEqual(sent, 2)
        self.assertEqual([(s, r) for s, r, _d in queue.items],
                         [("postmaster@local.test", ["dmarc@r.test"]),
                          ("postmaster@local.test", ["agg@q.test"])])
        self.assertEqual(os.listdir(self.directory), [f"{DAY}.sent"])
        data = queue.items[0][2]
        parsed = email.message_from_bytes(data)
        self.assertEqual(" ".join(parsed["Subject"].split()),
                         f"Report Domain: r.test Submitter: mx.local.test Report-ID:"
                         f" {DAY}.r.test@mx.local.test")
        _text, attachment = parsed.get_payload()
        self.assertEqual(attachment.get_content_type(), "application/gzip")
        begin = NOON - 43200
        self.assertEqual(attachment.get_filename(),
                         f"mx.local.test!r.test!{begin}!{begin + 86399}.xml.gz")
        root = ET.fromstring(gzip.decompress(attachment.get_payload(decode=True)))
        self.assertEqual(root.findtext("policy_published/domain"), "r.test")
        rows = sorted((r.findtext("row/policy_evaluated/disposition"),
                       r.findtext("row/policy_evaluated/dkim"),
                       r.findtext("row/policy_evaluated/spf"),
                       r.findtext("row/source_ip"), r.findtext("identifiers/header_from"))
                      for r in root.findall("record"))
        self.assertEqual(rows, [("none", "pass", "fail", "127.0.0.1", "r.test"),
                                ("reject", "fail", "fail", "127.0.0.1", "r.test")])
        published = {f"{k.dnsName}.".encode(): k.dnsValue.encode()
                     for k in self.localKeys.signingKeys("local.test")}

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            return published.get(name, b"")

        d = dkim.DKIM(data)
        self.assertEqual(data.count(b"DKIM-Signature:"), 2)
        self.assertTrue(all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(2)))

    @defer.inlineCallbacks
    def test_noRua(self) -> defer.Generator:
        """A policy without rua: rows are recorded, nothing is sent, the day is done."""
        code, _text = yield self.send("bob@q.test", message(sender="bob@q.test"))
        self.assertEqual(code, 250)
        self.assertEqual(os.listdir(self.directory), [f"{DAY}.jsonl"])
        queue = FakeQueue()
        self.assertEqual((yield defer.ensureDeferred(self.reporter(queue).runPending())), 0)
        self.assertEqual(queue.items, [])
        self.assertEqual(os.listdir(self.directory), [f"{DAY}.sent"])
