"""Tests for pymaild.smtp.dsn: RFC 3464 bounces and delay warnings."""

from __future__ import annotations

import email
import email.policy
from email.message import Message

from twisted.trial.unittest import SynchronousTestCase

from pymaild.smtp.dsn import (
    DELAYED,
    FAILED,
    RecipientReport,
    buildDSN,
    fold,
    originalHeaders,
)

HEADERS = b"From: Alice <alice@local.test>\r\nTo: bob@remote.test\r\nSubject: lunch\r\n"
ARRIVAL = 1700000000.0


def parse(data: bytes) -> Message:
    """Parse a DSN with the standard library (compat32 keeps the raw structure)."""
    return email.message_from_bytes(data, policy=email.policy.compat32)


def statusBlocks(msg: Message) -> list[dict[str, str]]:
    """The field blocks of the delivery-status part, as dicts (folding undone)."""
    part = msg.get_payload()[1]
    payload = part.get_payload()
    if isinstance(payload, list):
        # The stdlib parses message/delivery-status into one Message per block.
        return [{k: " ".join(str(v).split()) for k, v in m.items()} for m in payload]
    raise AssertionError(f"unexpected delivery-status payload {payload!r}")


class BuildDSNTests(SynchronousTestCase):
    """The DSN's MIME structure and fields."""

    def bounce(self, **kw: object) -> bytes:
        """A bounce for one recipient refused with 550."""
        report = RecipientReport(
            address="bob@remote.test", action=FAILED, status="5.1.1",
            diagnostic="550 5.1.1 <bob@remote.test>: Recipient address rejected",
            remoteMta="mx.remote.test", lastAttempt=ARRIVAL + 5,
        )
        args: dict[str, object] = dict(reportingMTA="mail.local.test", sender="alice@local.test",
                                       recipients=[report], headers=HEADERS, arrival=ARRIVAL,
                                       now=ARRIVAL + 10, queueId="ABCDEF0123456789")
        args.update(kw)
        return buildDSN(**args)  # type: ignore[arg-type]

    def test_structure(self) -> None:
        """multipart/report; report-type=delivery-status with three parts."""
        data = self.bounce()
        msg = parse(data)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        parts = msg.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        self.assertEqual(msg["To"], "<alice@local.test>")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        self.assertIn("MAILER-DAEMON@mail.local.test", msg["From"])
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))

    def test_fields(self) -> None:
        """Per-message and per-recipient fields of RFC 3464."""
        blocks = statusBlocks(parse(self.bounce()))
        self.assertEqual(blocks[0]["Reporting-MTA"], "dns; mail.local.test")
        self.assertIn("Arrival-Date", blocks[0])
        rcpt = blocks[1]
        self.assertEqual(rcpt["Final-Recipient"], "rfc822; bob@remote.test")
        self.assertEqual(rcpt["Action"], "failed")
        self.assertEqual(rcpt["Status"], "5.1.1")
        self.assertEqual(rcpt["Remote-MTA"], "dns; mx.remote.test")
        self.assertEqual(rcpt["Diagnostic-Code"],
                         "smtp; 550 5.1.1 <bob@remote.test>: Recipient address rejected")

    def test_originalHeaders(self) -> None:
        """The third part holds the original headers."""
        part = parse(self.bounce()).get_payload()[2]
        self.assertIn(b"Subject: lunch", part.as_bytes())

    def test_delayWarning(self) -> None:
        """A delay warning says Action: delayed and until when we retry."""
        report = RecipientReport(address="bob@remote.test", action=DELAYED, status="4.4.1",
                                 diagnostic="connect to mx.remote.test: refused",
                                 diagnosticType="x-pymaild", willRetryUntil=ARRIVAL + 432000)
        msg = parse(buildDSN(reportingMTA="mail.local.test", sender="alice@local.test",
                             recipients=[report], headers=HEADERS, arrival=ARRIVAL,
                             now=ARRIVAL + 14400))
        self.assertIn("Delayed", msg["Subject"])
        rcpt = statusBlocks(msg)[1]
        self.assertEqual(rcpt["Action"], "delayed")
        self.assertEqual(rcpt["Status"], "4.4.1")
        self.assertIn("Will-Retry-Until", rcpt)
        self.assertTrue(rcpt["Diagnostic-Code"].startswith("x-pymaild; "))

    def test_international(self) -> None:
        """A UTF-8 address uses the RFC 6533 global types."""
        report = RecipientReport(address="jörg@remote.test", action=FAILED, status="5.6.7",
                                 diagnostic="SMTPUTF8 is required")
        data = buildDSN(reportingMTA="mail.local.test", sender="alice@local.test",
                        recipients=[report], headers=HEADERS, arrival=ARRIVAL, now=ARRIVAL)
        self.assertIn(b"Content-Type: message/global-delivery-status", data)
        self.assertIn("Final-Recipient: utf-8; jörg@remote.test".encode(), data)

    def test_diagnosticSanitised(self) -> None:
        """CR/LF inside a reply cannot inject fields."""
        data = self.bounce(recipients=[RecipientReport(
            address="bob@remote.test", action=FAILED, status="5.0.0",
            diagnostic="550 bad\r\nAction: delivered")])
        rcpt = statusBlocks(parse(data))[1]
        self.assertEqual(rcpt["Action"], "failed")
        self.assertEqual(rcpt["Diagnostic-Code"], "smtp; 550 bad Action: delivered")

    def test_badStatusReplaced(self) -> None:
        """A malformed status code is replaced by the action's generic one."""
        data = self.bounce(recipients=[RecipientReport(
            address="bob@remote.test", action=FAILED, status="9.9", diagnostic="x")])
        self.assertEqual(statusBlocks(parse(data))[1]["Status"], "5.0.0")

    def test_mixedActions(self) -> None:
        """One DSN reports one action."""
        reports = [RecipientReport("a@x.test", FAILED, "5.0.0", "x"),
                   RecipientReport("b@x.test", DELAYED, "4.0.0", "y")]
        self.assertRaises(ValueError, self.bounce, recipients=reports)
        self.assertRaises(ValueError, self.bounce, recipients=[])


class HeaderTests(SynchronousTestCase):
    """Extracting the original header block."""

    def test_stopsAtBody(self) -> None:
        """Only the header block is returned, CRLF-terminated."""
        self.assertEqual(originalHeaders(HEADERS + b"\r\nbody\r\n"), HEADERS)

    def test_bareLF(self) -> None:
        """LF-only input comes out with CRLF."""
        self.assertEqual(originalHeaders(b"A: 1\nB: 2\n\nbody\n"), b"A: 1\r\nB: 2\r\n")

    def test_limit(self) -> None:
        """A huge header is cut at a line end within the limit."""
        data = b"".join(b"X-%d: %s\r\n" % (i, b"y" * 50) for i in range(100)) + b"\r\nbody"
        out = originalHeaders(data, limit=1000)
        self.assertLessEqual(len(out), 1000)
        self.assertTrue(out.endswith(b"\r\n"))
        self.assertTrue(data.startswith(out))

    def test_noHeaders(self) -> None:
        """A message that starts with its body has no header block."""
        self.assertEqual(originalHeaders(b"\r\nbody\r\n"), b"")


class FoldTests(SynchronousTestCase):
    """Long fields are folded at spaces."""

    def test_fold(self) -> None:
        """Lines stay within the width; unfolding gives the value back."""
        value = "smtp; " + " ".join(f"word{i}" for i in range(40))
        folded = fold("Diagnostic-Code", value)
        self.assertTrue(all(len(x) <= 78 for x in folded.split("\r\n")))
        self.assertEqual(folded.replace("\r\n", ""), f"Diagnostic-Code: {value}")
