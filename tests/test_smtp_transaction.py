"""Tests for L{pymaild.smtp.transaction}: the one transaction object the SMTP protocol
owns, from an accepted MAIL to RSET or the end of DATA."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from pymaild.address import parsePath
from pymaild.smtp.transaction import Recipient, Transaction
from tests.test_smtp_helpers import SMTPStack

BODY = b"From: s@remote.example\r\nSubject: t\r\n\r\nbody\r\n"


class TransactionTests(TestCase):
    """The data object on its own."""

    def test_recipient(self) -> None:
        """A recipient carries the transaction's sender and HELO."""
        sender = parsePath("<s@remote.example>", null=True)[0]
        dest = parsePath("<a@example.org>", postmaster=True)[0]
        txn = Transaction(sender=sender, helo=(b"client.example", b"192.0.2.1"))
        self.assertEqual(txn.recipient(dest),
                         Recipient(dest=dest, orig=sender, helo=(b"client.example", b"192.0.2.1")))
        self.assertEqual(str(txn.recipient(dest)), "a@example.org")

    def test_finish(self) -> None:
        """The outcome is recorded once per accepted recipient."""
        sender = parsePath("<s@remote.example>", null=True)[0]
        txn = Transaction(sender=sender)
        for address in ("<a@example.org>", "<b@example.org>"):
            txn.recipients.append(txn.recipient(parsePath(address, postmaster=True)[0]))
        txn.finish(250, "2.0.0 Ok")
        self.assertEqual(txn.results, [(250, "2.0.0 Ok"), (250, "2.0.0 Ok")])


class ProtocolOwnershipTests(TestCase):
    """The protocol makes the transaction at MAIL and drops it at RSET and after DATA."""

    def setUp(self) -> None:
        """A delivery stack and an EHLOed session."""
        self.stack = SMTPStack(self)
        self.c = self.stack.connect()
        self.c.ehlo()

    def test_noTransactionBeforeMail(self) -> None:
        """A greeted session has no transaction; a refused MAIL makes none."""
        self.assertIsNone(self.c.proto.txn)
        self.assertRegex(self.c.cmd("MAIL FROM:<alice@example.org>"), rb"^550 5\.7\.1 ")
        self.assertIsNone(self.c.proto.txn)

    def test_envelope(self) -> None:
        """MAIL's parameters and each accepted RCPT land in the one object; a refused
        RCPT does not."""
        self.assertEqual(self.c.cmd("MAIL FROM:<s@remote.example> SIZE=1234 BODY=8bitmime"
                                    " SMTPUTF8"), b"250 2.1.0 Ok")
        txn = self.c.proto.txn
        self.assertIsInstance(txn, Transaction)
        self.assertEqual((txn.sender.address, txn.size, txn.body, txn.smtputf8, txn.user),
                         ("s@remote.example", 1234, "8BITMIME", True, None))
        self.assertRegex(txn.id, r"^[0-9A-F]{22}$")
        self.assertEqual(self.c.cmd("RCPT TO:<alice@example.org>"), b"250 2.1.5 Ok")
        self.assertRegex(self.c.cmd("RCPT TO:<nobody@example.org>"), rb"^550 5\.1\.1 ")
        self.assertEqual(self.c.cmd("RCPT TO:<bob+x@example.org>"), b"250 2.1.5 Ok")
        self.assertEqual([str(r) for r in txn.recipients],
                         ["alice@example.org", "bob+x@example.org"])
        self.assertEqual(txn.local, {"alice@example.org": "alice@example.org",
                                     "bob@example.org": "bob+x@example.org"})
        self.assertIs(self.c.proto.txn, txn)

    def test_rset(self) -> None:
        """RSET drops the transaction; the next MAIL starts a new one with a new id."""
        self.c.cmd("MAIL FROM:<s@remote.example>")
        first = self.c.proto.txn
        self.assertEqual(self.c.cmd("RSET"), b"250 2.0.0 Reset state")
        self.assertIsNone(self.c.proto.txn)
        self.c.cmd("MAIL FROM:<s@remote.example>")
        self.assertIsNot(self.c.proto.txn, first)
        self.assertNotEqual(self.c.proto.txn.id, first.id)

    def test_endOfData(self) -> None:
        """After the final dot the transaction is gone and its id is the 250's."""
        self.c.cmd("MAIL FROM:<s@remote.example>")
        qid = self.c.proto.txn.id
        self.c.cmd("RCPT TO:<alice@example.org>")
        self.c.cmd("DATA")
        self.assertIsNotNone(self.c.proto.txn.message)
        self.c.send(BODY + b".\r\n")
        self.assertEqual(self.c.replies(), [f"250 2.0.0 Ok: queued as {qid}".encode()])
        self.assertIsNone(self.c.proto.txn)
        self.assertFalse(hasattr(self.c.proto.delivery, "txn"))
        self.assertEqual(self.c.cmd("RCPT TO:<alice@example.org>"),
                         b"503 5.5.1 Error: need MAIL command")

    def test_failedDataEnds(self) -> None:
        """A message that failed in DATA ends the transaction at the final dot too."""
        self.c.cmd("MAIL FROM:<s@remote.example>")
        self.c.cmd("RCPT TO:<alice@example.org>")
        self.c.cmd("DATA")
        self.c.send(b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n")
        self.assertRegex(self.c.replies()[0], rb"^550 5\.6\.0 ")
        self.assertIsNone(self.c.proto.txn)
        self.assertEqual(self.stack.messages("alice@example.org"), [])

    def test_authIdentity(self) -> None:
        """After AUTH the transaction names the user it was started by."""
        stack = SMTPStack(self, role="submission")
        c = stack.connect("127.0.0.1")
        c.ehlo()
        self.assertRegex(c.authPlain("alice@example.org", "alice-secret"), rb"^235 ")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), b"250 2.1.0 Ok")
        self.assertEqual(c.proto.txn.user, "alice@example.org")
