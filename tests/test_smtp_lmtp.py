"""The LMTP server (L{pymaild.smtp.lmtp}, RFC 2033).

The wire tests run the full delivery stack (L{tests.test_smtp_helpers.SMTPStack}) with
an L{LMTPFactory} in place of the SMTP one; the end-to-end test drives a real
C{twistd pymaild} with an C{lmtp} listener through Python's C{smtplib.LMTP}.
"""

from __future__ import annotations

import os
import smtplib
from typing import Any

from twisted.trial.unittest import TestCase

from pymaild.auth.passwd import PasswdFile
from pymaild.smtp.checks import CheckChain, Envelope, SMTPReply
from pymaild.smtp.lmtp import LMTPFactory
from tests.support import ServerProcess, freePort, lowCostHashing
from tests.test_smtp_helpers import SMTPStack, WireClient

BODY = b"From: s@remote.example\r\nSubject: lmtp\r\n\r\nbody\r\n"


class Refuse:
    """A message check that refuses every message."""

    def __init__(self) -> None:
        self.seen: list[Envelope] = []

    def check(self, envelope: Envelope, message: bytes) -> Any:
        """Record the envelope, then refuse."""
        self.seen.append(envelope)
        raise SMTPReply(550, "5.7.1 Refused by policy")


class LMTPWireTests(TestCase):
    """LHLO, per-recipient replies, refusals and framing over the wire."""

    def connect(self, *checks: Any) -> tuple[SMTPStack, WireClient]:
        """A delivery stack behind an LMTP factory, and a session to it."""
        stack = SMTPStack(self)
        if checks:
            stack.avatars.checks = CheckChain(checks)
        stack.factory = LMTPFactory(stack.config, stack.portal, stack.clock)
        return stack, stack.connect()

    def transaction(self, c: WireClient, rcpts: list[str], body: bytes) -> list[bytes]:
        """MAIL, RCPTs and DATA pipelined; the body after C{354}; every reply."""
        lines = [b"MAIL FROM:<s@remote.example>"]
        lines += [f"RCPT TO:<{r}>".encode() for r in rcpts]
        c.send(b"\r\n".join([*lines, b"DATA"]) + b"\r\n")
        got = c.replies()
        if got[-1].startswith(b"354"):
            c.send(body + b".\r\n")
            got += c.replies()
        return got

    def test_greetingAndLHLO(self) -> None:
        """The greeting names LMTP; LHLO lists the extensions (no AUTH, no STARTTLS);
        HELO and EHLO are refused, and MAIL before LHLO names LHLO."""
        _stack, c = self.connect()
        self.assertRegex(c.greeting[0], rb"^220 mx\.example\.org LMTP ")
        self.assertTrue(c.cmd("EHLO client.example").startswith(b"500 5.5.1 "))
        self.assertTrue(c.cmd("HELO client.example").startswith(b"500 5.5.1 "))
        self.assertIn(b"LHLO", c.cmd("MAIL FROM:<s@remote.example>"))
        self.assertTrue(c.cmd("LHLO").startswith(b"501 "))
        reply = c.cmd("LHLO client.example")
        self.assertTrue(reply.startswith(b"250-mx.example.org"), reply)
        for keyword in (b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SIZE"):
            self.assertIn(keyword, reply)
        self.assertNotIn(b"AUTH", reply)
        self.assertNotIn(b"STARTTLS", reply)

    def test_oneReplyPerRecipient(self) -> None:
        """After the dot, one 250 per accepted recipient in RCPT order, each naming its
        recipient; the refused RCPT gets none; every copy is stored; the session
        stays in step."""
        stack, c = self.connect()
        c.cmd("LHLO client.example")
        replies = self.transaction(
            c, ["bob@example.org", "nobody@example.org", "alice+tag@example.org"], BODY)
        self.assertEqual(replies[0], b"250 2.1.0 Ok")
        self.assertEqual(replies[1], b"250 2.1.5 Ok")
        self.assertTrue(replies[2].startswith(b"550 5.1.1 "), replies[2])
        self.assertEqual(replies[3], b"250 2.1.5 Ok")
        self.assertTrue(replies[4].startswith(b"354"))
        self.assertEqual(len(replies), 7, replies)
        self.assertRegex(replies[5], rb"^250 2\.0\.0 <bob@example\.org> Ok: queued as ")
        self.assertRegex(replies[6], rb"^250 2\.0\.0 <alice\+tag@example\.org> Ok: queued as ")
        for address in ("alice@example.org", "bob@example.org"):
            [message] = stack.messages(address)
            self.assertTrue(message.endswith(BODY))
            self.assertNotIn(b"Delivered-To", message)
        self.assertEqual(os.stat(stack.files("alice@example.org")[0]).st_ino,
                         os.stat(stack.files("bob@example.org")[0]).st_ino)
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")

    def test_oneRecipientDeliveredTo(self) -> None:
        """A transaction for one recipient names it in Delivered-To and Received."""
        stack, c = self.connect()
        c.cmd("LHLO client.example")
        replies = self.transaction(c, ["alice+tag@example.org"], BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 <alice\+tag@example\.org> Ok: ")
        [message] = stack.messages("alice@example.org")
        self.assertIn(b"Delivered-To: alice@example.org\r\n", message)
        self.assertIn(b"for <alice+tag@example.org>", message)

    def test_localSender(self) -> None:
        """A sender in a local domain needs no AUTH over LMTP (it was checked where the
        mail came in), unlike on the MX."""
        stack, c = self.connect()
        c.cmd("LHLO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), b"250 2.1.0 Ok")
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), b"250 2.1.5 Ok")

    def test_noRelay(self) -> None:
        """A recipient in another domain is refused (LMTP delivers locally only)."""
        _stack, c = self.connect()
        c.cmd("LHLO client.example")
        c.cmd("MAIL FROM:<s@remote.example>")
        self.assertTrue(c.cmd("RCPT TO:<x@elsewhere.example>").startswith(b"554 5.7.1"))

    def test_refusedByCheck(self) -> None:
        """The check chain runs with role lmtp; its refusal is repeated for each
        recipient, counted once as an error; nothing is stored."""
        check = Refuse()
        stack, c = self.connect(check)
        c.cmd("LHLO client.example")
        rcpts = [f"alice+{i}@example.org" for i in range(25)] + ["bob@example.org"]
        replies = self.transaction(c, rcpts, BODY)
        final = replies[len(rcpts) + 2:]
        self.assertEqual(len(final), len(rcpts))
        for rcpt, reply in zip(rcpts, final, strict=True):
            self.assertEqual(reply, f"550 5.7.1 <{rcpt}> Refused by policy".encode())
        [envelope] = check.seen
        self.assertEqual(envelope.role, "lmtp")
        self.assertEqual(stack.messages("alice@example.org"), [])
        self.assertFalse(c.closed)
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")

    def test_badDataEachRecipient(self) -> None:
        """A message failed during DATA (a bare LF) gets that error once per recipient."""
        _stack, c = self.connect()
        c.cmd("LHLO client.example")
        replies = self.transaction(c, ["alice@example.org", "bob@example.org"],
                                   b"Subject: x\r\n\r\nbare\nLF\r\n")
        self.assertEqual(len(replies), 6, replies)
        for reply in replies[4:]:
            self.assertTrue(reply.startswith(b"550 5.6.0 <"), reply)
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")


class LMTPServerTests(TestCase):
    """A real server with an LMTP listener, driven by C{smtplib.LMTP}."""

    def test_smtplibLMTP(self) -> None:
        """smtplib.LMTP delivers to two mailboxes and reads one reply per recipient;
        the listener is off unless configured."""
        lowCostHashing(self)
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        passwd = PasswdFile(os.path.join(data, "passwd"))
        for user in ("alice@example.org", "bob@example.org"):
            passwd.add(user, "pw")
        port = freePort()
        server = ServerProcess(data, listeners=("smtp",),
                               extra=["--lmtp", f"tcp:{port}:interface=127.0.0.1"]).start()
        self.addCleanup(server.stop)
        client = smtplib.LMTP("127.0.0.1", port)
        self.addCleanup(client.close)
        code, _ = client.ehlo("client.example")  # smtplib.LMTP sends LHLO
        self.assertEqual(code, 250)
        self.assertNotIn("auth", client.esmtp_features)
        self.assertEqual(client.mail("s@remote.example")[0], 250)
        self.assertEqual(client.rcpt("alice@example.org")[0], 250)
        self.assertEqual(client.rcpt("bob@example.org")[0], 250)
        first = client.data(BODY)
        second = client.getreply()
        self.assertEqual(first[0], 250)
        self.assertIn(b"<alice@example.org>", first[1])
        self.assertEqual(second[0], 250)
        self.assertIn(b"<bob@example.org>", second[1])
        self.assertEqual(client.noop()[0], 250)
        client.quit()
        for user in ("alice", "bob"):
            new = os.path.join(data, "mail", "example.org", user, "Maildir", "new")
            [name] = os.listdir(new)
            with open(os.path.join(new, name), "rb") as f:
                self.assertTrue(f.read().endswith(BODY))

    def test_offByDefault(self) -> None:
        """Without listen.lmtp nothing listens for LMTP (the embedded default)."""
        from pymaild import config as configModule

        self.assertEqual(configModule.load(None).listen.lmtp, ())
