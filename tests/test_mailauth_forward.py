"""Alias forwarding to another domain: SRS (L{pymaild.smtp.srs}) and the ARC seal.

The forwarded copy leaves with an SRS0 envelope sender in our domain and an ARC set that
mailauth (Node.js) validates; a bounce to the SRS0 address is accepted and goes back to
the original sender; a forged or expired SRS0 address is refused.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.mailauth.dkimkeys import DKIMKeys
from pymaild.mailauth.signer import ARCSealer
from pymaild.smtp.checks import CheckChain, Envelope
from pymaild.smtp.srs import SRS, loadSecret
from pymaild.threads import InlineRunner
from tests.dnsserver import ZoneServer, longTXT
from tests.mailauth_support import independentVerify, message, requireVerifier
from tests.test_smtp_helpers import HOSTNAME, RecordingQueue, SMTPStack

DAY = 86400.0


class SRSTests(SynchronousTestCase):
    """Rewriting and reversing addresses."""

    def setUp(self) -> None:
        """An SRS for example.org at day 20000."""
        self.now = [20000 * DAY]
        self.srs = SRS(b"k" * 32, "example.org", clock=lambda: self.now[0])

    def test_roundTrip(self) -> None:
        """A rewritten sender is in our domain and reverses to the original."""
        out = self.srs.forward("User.Name@sender.test")
        self.assertRegex(out, r"^SRS0=[A-Za-z0-9_-]{4}=[A-Z2-7]{2}=sender\.test=User\.Name"
                              r"@example\.org$")
        self.assertEqual(self.srs.reverse(out), "User.Name@sender.test")
        self.assertEqual(self.srs.reverse(out.lower()), "user.name@sender.test")

    def test_refused(self) -> None:
        """A changed hash, another secret or an age over 21 days reverse to nothing."""
        out = self.srs.forward("u@sender.test")
        local, _at, domain = out.partition("@")
        parts = local.split("=")
        parts[1] = "AAAA" if parts[1] != "AAAA" else "BBBB"
        self.assertIsNone(self.srs.reverse("=".join(parts) + "@" + domain))
        self.assertIsNone(SRS(b"x" * 32, "example.org").reverse(out))
        self.now[0] += 22 * DAY
        self.assertIsNone(self.srs.reverse(out))
        self.assertIsNone(self.srs.reverse("SRS0=bad@example.org"))
        self.assertIsNone(self.srs.reverse("plain@example.org"))

    def test_ownAndNull(self) -> None:
        """Our own senders (our SRS0 addresses too) and the null sender stay; another
        forwarder's SRS0 address is wrapped and comes back whole."""
        self.assertEqual(self.srs.forward("alice@example.org"), "alice@example.org")
        self.assertEqual(self.srs.forward(""), "")
        once = self.srs.forward("u@sender.test")
        self.assertEqual(self.srs.forward(once), once)
        other = SRS(b"o" * 32, "example.net", clock=lambda: self.now[0])
        self.assertEqual(other.reverse(other.forward(once)), once)

    def test_secretFile(self) -> None:
        """The secret is made once (mode 0600) and read back the same."""
        path = os.path.abspath(self.mktemp())
        first = loadSecret(path)
        self.assertEqual(loadSecret(path), first)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)


class ForwardingTests(TestCase):
    """An alias forwarding to another domain, over the SMTP protocol."""

    def setUp(self) -> None:
        """A stack with the alias fwd@example.org → carol@c.test, SRS and a sealer."""
        self.queue = RecordingQueue()
        self.stack = SMTPStack(self, queue=self.queue,
                               aliases="fwd@example.org: carol@c.test, alice@example.org\n")
        self.keys = DKIMKeys(os.path.abspath(self.mktemp()))
        self.keys.keygen("example.org", "s1")
        avatars = self.stack.avatars
        avatars.srs = SRS(b"s" * 32, "example.org")
        avatars.forwardSealer = ARCSealer(self.keys, "example.org", HOSTNAME,
                                          InlineRunner()).seal

        class Verdicts:
            """Stands in for the inbound check: writes our Authentication-Results."""

            def check(self, envelope: Envelope, msg: bytes) -> bytes:
                return (f"Authentication-Results: {HOSTNAME}; spf=pass"
                        " smtp.mailfrom=sender.test; arc=none\r\n").encode() + msg

        avatars.checks = CheckChain([Verdicts()])

    @defer.inlineCallbacks
    def test_forwardedWithSRSAndSeal(self) -> defer.Generator:
        """The queued copy has an SRS0 sender and an ARC set mailauth validates."""
        node = requireVerifier()
        c = self.stack.connect()
        c.ehlo("mta.sender.test")
        replies = c.sendMail("bob@sender.test", ["fwd@example.org"],
                             message(sender="bob@sender.test", to="fwd@example.org"))
        self.assertRegex(replies[-1], rb"^250 ")
        [(sender, recipients, data)] = self.queue.items
        self.assertEqual(recipients, ["carol@c.test"])
        self.assertTrue(sender.startswith("SRS0=") and sender.endswith("@example.org"))
        self.assertEqual(self.stack.avatars.srs.reverse(sender), "bob@sender.test")
        self.assertIn(b"ARC-Seal: i=1;", data)
        [local] = self.stack.messages("alice@example.org")
        self.assertNotIn(b"ARC-Seal", local)
        server = ZoneServer({"example.org": {}})
        server.start()
        self.addCleanup(server.stop)
        for key in self.keys.signingKeys("example.org"):
            server.set(key.dnsName, [longTXT(key.dnsValue)])
        body = data[data.index(b"ARC-Seal"):]
        verdicts = yield independentVerify(node, body, server.port)
        self.assertEqual(verdicts["arc"], "pass")

    def test_bounceGoesBack(self) -> None:
        """A bounce to the SRS0 address is accepted and queued to the original sender."""
        address = self.stack.avatars.srs.forward("bob@sender.test")
        c = self.stack.connect()
        c.ehlo("mx.c.test")
        replies = c.sendMail("", [address], b"Subject: bounce\r\n\r\nundeliverable\r\n")
        self.assertRegex(replies[-1], rb"^250 ")
        [(sender, recipients, _data)] = self.queue.items
        self.assertEqual((sender, recipients), ("", ["bob@sender.test"]))

    def test_forgedSRSRefused(self) -> None:
        """An SRS0 address that does not verify is refused at RCPT."""
        c = self.stack.connect()
        c.ehlo("mx.c.test")
        reply = c.cmd("MAIL FROM:<>")
        self.assertEqual(reply[:3], b"250")
        reply = c.cmd("RCPT TO:<SRS0=abcd=AA=victim.test=x@example.org>")
        self.assertEqual(reply[:9], b"550 5.1.1")
        self.assertEqual(self.queue.items, [])
