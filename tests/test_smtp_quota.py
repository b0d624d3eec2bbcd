"""SMTP delivery against each account's quota: C{452 4.2.2} over quota (at RCPT when
known, at the end of DATA otherwise), C{552 5.2.2} for a message larger than the whole
quota, nothing stored for anyone when the message is refused."""

from __future__ import annotations

import smtplib
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from pymaild.auth.quota import Quotas
from pymaild.smtp.checks import CheckChain, Placement
from tests.support import setExtraFields
from tests.test_smtp_helpers import SMTPStack
from tests.test_smtp_integration import LiveServerMixin

ALICE = "alice@example.org"
BOB = "bob@example.org"
SENDER = "s@remote.example"


def message(size: int) -> bytes:
    """A message of about C{size} bytes of body."""
    return b"Subject: quota\r\n\r\n" + (b"x" * 78 + b"\r\n") * (size // 80) + b"end\r\n"


def limited(stack: SMTPStack, rules: str) -> Quotas:
    """Give Alice the quota C{rules} (passwd extra fields) and the stack quotas."""
    setExtraFields(stack.passwdPath, ALICE, rules)
    quotas = Quotas(stack.passwd, stack.store)
    stack.avatars.quotas = quotas
    return quotas


class _TwoCopies:
    """A message check placing each local copy in INBOX and in Archive (as a Sieve
    C{fileinto} with C{keep} does)."""

    def check(self, envelope: Any, data: bytes) -> bytes:
        """Two placements per account."""
        for account in envelope.local:
            envelope.placements[account] = [Placement("Archive", create=True), Placement()]
        return data


class QuotaWireTests(TestCase):
    """The replies over the wire."""

    def test_fullAtRcpt(self) -> None:
        """A recipient already at its message limit is refused at RCPT with 452 4.2.2;
        the other recipient gets the message."""
        stack = SMTPStack(self)
        limited(stack, "userdb_quota_rule=*:messages=1")
        stack.store.deliver([ALICE], message(100))
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail(SENDER, [ALICE, BOB], message(100))
        self.assertRegex(replies[1], rb"^452 4\.2\.2 <alice@example\.org>: Mailbox full")
        self.assertRegex(replies[2], rb"^250 ")
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(len(stack.messages(ALICE)), 1)
        self.assertEqual(len(stack.messages(BOB)), 1)

    def test_declaredSize(self) -> None:
        """With MAIL FROM's SIZE=, RCPT knows: 552 5.2.2 when larger than the whole
        quota, 452 4.2.2 when larger than what is left, 250 when it fits."""
        stack = SMTPStack(self)
        limited(stack, "userdb_quota_rule=*:bytes=10000")
        stack.store.deliver([ALICE], message(6000))
        c = stack.connect()
        c.ehlo()
        self.assertRegex(c.cmd("MAIL FROM:<s@remote.example> SIZE=20000"), rb"^250 ")
        self.assertRegex(c.cmd(f"RCPT TO:<{ALICE}>"), rb"^552 5\.2\.2 ")
        self.assertRegex(c.cmd(f"RCPT TO:<{BOB}>"), rb"^250 ")
        self.assertRegex(c.cmd("RSET"), rb"^250 ")
        self.assertRegex(c.cmd("MAIL FROM:<s@remote.example> SIZE=5000"), rb"^250 ")
        self.assertRegex(c.cmd(f"RCPT TO:<{ALICE}>"), rb"^452 4\.2\.2 ")
        self.assertRegex(c.cmd("RSET"), rb"^250 ")
        replies = c.sendMail(SENDER, [ALICE], message(1000), params=" SIZE=1100")
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(len(stack.messages(ALICE)), 2)

    def test_atEndOfData(self) -> None:
        """Without SIZE= the message is measured at the end of DATA: over the quota it
        is refused with 452 4.2.2 and stored for no one; larger than the whole quota
        with 552 5.2.2."""
        stack = SMTPStack(self)
        limited(stack, "userdb_quota_rule=*:bytes=10000")
        stack.store.deliver([ALICE], message(6000))
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail(SENDER, [ALICE, BOB], message(5000))
        self.assertRegex(replies[1], rb"^250 ")
        self.assertRegex(replies[-1], rb"^452 4\.2\.2 <alice@example\.org>")
        self.assertEqual(len(stack.messages(ALICE)), 1)
        self.assertEqual(stack.messages(BOB), [])
        replies = c.sendMail(SENDER, [ALICE], message(12000))
        self.assertRegex(replies[-1], rb"^552 5\.2\.2 ")
        replies = c.sendMail(SENDER, [ALICE], message(1000))
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(len(stack.messages(ALICE)), 2)

    def test_everyPlacementCounts(self) -> None:
        """Copies a check places in several folders (Sieve's fileinto plus keep) all
        count: two copies that do not fit together are refused, one that fits is
        stored."""
        stack = SMTPStack(self)
        quotas = limited(stack, "userdb_quota_rule=*:messages=3")
        stack.avatars.checks = CheckChain([_TwoCopies()])
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail(SENDER, [ALICE], message(100))
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(quotas.usage(ALICE).messages, 2)
        replies = c.sendMail(SENDER, [ALICE], message(100))
        self.assertRegex(replies[-1], rb"^452 4\.2\.2 ")
        self.assertEqual(quotas.usage(ALICE).messages, 2)

    def test_unlimitedUnaffected(self) -> None:
        """Users without limits take any message the size limit allows."""
        stack = SMTPStack(self)
        limited(stack, "userdb_quota_rule=*:messages=1")
        c = stack.connect()
        c.ehlo()
        for _ in range(3):
            replies = c.sendMail(SENDER, [BOB], message(3000), params=" SIZE=4000")
            self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(len(stack.messages(BOB)), 3)


class QuotaSmtplibTests(LiveServerMixin, TestCase):
    """smtplib over a real socket sees the per-recipient refusal."""

    timeout = 60

    @defer.inlineCallbacks
    def test_recipientRefused(self) -> Any:
        """sendmail() to a full and a free recipient: the full one is reported refused
        with 452, the other gets the message."""
        stack = self.startServer()
        limited(stack, "userdb_quota_rule=*:storage=1")
        stack.store.deliver([ALICE], message(2000))

        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example",
                              timeout=20) as s:
                return s.sendmail(SENDER, [ALICE, BOB], message(100))

        refused = yield threads.deferToThread(send)
        self.assertEqual(list(refused), [ALICE])
        self.assertEqual(refused[ALICE][0], 452)
        self.assertIn(b"4.2.2", refused[ALICE][1])
        self.assertEqual(len(stack.messages(BOB)), 1)


class SieveQuotaTests(TestCase):
    """A real Sieve script's fileinto against the quota (one root holds every folder,
    so the fallback Pigeonhole takes, the implicit keep into INBOX, is over quota too:
    the message is refused and no copy is left anywhere)."""

    def test_fileintoOverQuota(self) -> None:
        """fileinto :create plus keep fits while two copies fit; then 452 4.2.2 and
        neither the folder nor INBOX gets a copy; a script-less recipient is unaffected
        by another's full mailbox when alone."""
        from pymaild.sieve.checker import Limits
        from pymaild.sieve.filter import SieveCheck, homeOf
        from pymaild.sieve.outgoing import Outgoing
        from pymaild.sieve.storage import ScriptStorage
        from pymaild.threads import InlineRunner
        from tests.test_smtp_helpers import RecordingQueue

        stack = SMTPStack(self)
        quotas = limited(stack, "userdb_quota_rule=*:messages=3")
        outgoing = Outgoing(RecordingQueue(), lambda: "Q1", "mx.example.org")
        stack.avatars.checks = CheckChain([SieveCheck(stack.store, InlineRunner(), Limits(),
                                                      outgoing)])
        storage = ScriptStorage(homeOf(stack.store, ALICE))
        storage.write("main", b'require ["fileinto", "mailbox"];\r\n'
                              b'fileinto :create "Lists";\r\nkeep;\r\n')
        storage.activate("main")
        c = stack.connect()
        c.ehlo()
        self.assertRegex(c.sendMail(SENDER, [ALICE], message(100))[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(quotas.usage(ALICE).messages, 2)
        self.assertRegex(c.sendMail(SENDER, [ALICE], message(100))[-1], rb"^452 4\.2\.2 ")
        self.assertEqual(quotas.usage(ALICE).messages, 2)
        self.assertEqual(len(stack.messages(ALICE)), 1)
        self.assertRegex(c.sendMail(SENDER, [BOB], message(100))[-1], rb"^250 2\.0\.0 ")


class ExactlyFullTests(TestCase):
    """A mailbox exactly at its storage limit."""

    def test_fullToTheByte(self) -> None:
        """Usage equal to the limit: the next RCPT, without SIZE=, is refused with 452
        4.2.2 (no message has zero bytes)."""
        stack = SMTPStack(self)
        stack.store.deliver([ALICE], message(500))
        used = Quotas(stack.passwd, stack.store).usage(ALICE).bytes
        limited(stack, f"userdb_quota_rule=*:bytes={used}")
        c = stack.connect()
        c.ehlo()
        self.assertRegex(c.cmd("MAIL FROM:<s@remote.example>"), rb"^250 ")
        self.assertRegex(c.cmd(f"RCPT TO:<{ALICE}>"), rb"^452 4\.2\.2 ")
