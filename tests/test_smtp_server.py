"""Wire-level tests of the ESMTP server (MX role) over StringTransport.

Every reply the server sends is checked byte for byte against what RFC 5321, 2034,
2920, 3463, 6531 and the pymaild rules require, with a real Maildir store, passwd file,
portal and auth gate behind it (see L{tests.test_smtp_helpers}).
"""

from __future__ import annotations

import os
import re

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from pymaild.smtp.server import SMTPFactory
from tests.test_smtp_helpers import LOOPBACK, DeferredRunner, SMTPStack

ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")
BODY = b"Subject: test\r\n\r\nHello.\r\n"
JUNK = b"500 5.5.2 Error: command not recognized"


class GreetingTests(TestCase):
    """The greeting, EHLO/HELO and the extensions offered."""

    def setUp(self) -> None:
        """Build the server stack and a client session for each test."""
        self.stack = SMTPStack(self)

    def test_greeting(self) -> None:
        """The server greets with 220, its host name, and no enhanced code (RFC 2034)."""
        c = self.stack.connect()
        self.assertEqual(c.greeting, [b"220 mx.example.org ESMTP pymaild"])

    def test_ehloExtensions(self) -> None:
        """EHLO lists exactly the implemented extensions; no AUTH from afar without TLS."""
        c = self.stack.connect()
        lines = c.ehlo().split(b"\n")
        self.assertEqual(lines, [
            b"250-mx.example.org", b"250-PIPELINING", b"250-SIZE 26214400", b"250-8BITMIME",
            b"250-ENHANCEDSTATUSCODES", b"250 SMTPUTF8",
        ])

    def test_ehloLoopbackOffersAuth(self) -> None:
        """From loopback (tls-or-loopback policy) AUTH PLAIN LOGIN is offered, never CRAM-MD5."""
        c = self.stack.connect(LOOPBACK)
        reply = c.ehlo()
        self.assertIn(b"250 AUTH PLAIN LOGIN", reply.split(b"\n"))
        self.assertNotIn(b"CRAM-MD5", reply)
        self.assertNotIn(b"CHUNKING", reply)
        self.assertNotIn(b"DSN", reply)

    def test_noStartTLSWithoutContext(self) -> None:
        """STARTTLS is neither offered nor accepted without a TLS context."""
        c = self.stack.connect(tls=True)
        self.assertNotIn(b"STARTTLS", c.ehlo())
        self.assertEqual(c.cmd("STARTTLS"), b"454 4.7.0 TLS not available")

    def test_ehloNeedsArgument(self) -> None:
        """EHLO and HELO without a host name get 501 5.5.4."""
        c = self.stack.connect()
        self.assertEqual(c.cmd("EHLO"), b"501 5.5.4 Syntax: EHLO hostname")
        self.assertEqual(c.cmd("HELO"), b"501 5.5.4 Syntax: HELO hostname")

    def test_helo(self) -> None:
        """HELO answers with the host name only and allows no MAIL parameters."""
        c = self.stack.connect()
        self.assertEqual(c.cmd("HELO client.example"), b"250 mx.example.org")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> SIZE=10"),
                         b"555 5.5.4 MAIL parameters need EHLO")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), b"250 2.1.0 Ok")

    def test_simpleCommands(self) -> None:
        """NOOP, RSET, VRFY, EXPN, HELP, BDAT and unknown verbs get enhanced replies."""
        c = self.stack.connect()
        c.ehlo()
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")
        self.assertEqual(c.cmd("RSET"), b"250 2.0.0 Reset state")
        self.assertEqual(c.cmd("RSET x"), b"501 5.5.4 Syntax: RSET")
        self.assertEqual(c.cmd("VRFY alice"), b"252 2.5.2 Cannot VRFY user, but will accept "
                                              b"message and attempt delivery")
        self.assertEqual(c.cmd("EXPN staff"), b"502 5.5.1 EXPN not supported")
        self.assertEqual(c.cmd("HELP"), b"214 2.0.0 See RFC 5321 (pymaild)")
        self.assertEqual(c.cmd("BDAT 10 LAST"), b"502 5.5.1 CHUNKING not supported")
        self.assertEqual(c.cmd("FOO bar"), b"500 5.5.2 Error: command not recognized")
        self.assertEqual(c.cmd(""), b"500 5.5.2 Error: bad syntax")
        self.assertEqual(c.cmd("QUIT"), b"221 2.0.0 Bye")
        self.assertTrue(c.closed)

    def test_everyReplyEnhanced(self) -> None:
        """Every 2xx/4xx/5xx reply of a long dialogue carries an enhanced status code."""
        c = self.stack.connect()
        c.send(b"EHLO x\r\n")
        c.replies()
        c.send(b"NOOP\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@example.org>\r\n"
               b"RCPT TO:<alice@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n")
        replies = c.replies()
        c.send(BODY + b".\r\nMAIL FROM:<bad\r\nFOO\r\nRSET\r\nQUIT\r\n")
        replies += c.replies()
        for reply in replies:
            if reply.startswith(b"354"):
                continue
            self.assertRegex(reply, ENHANCED)
        self.assertEqual(len(replies), 11)

    def test_mailBeforeHelo(self) -> None:
        """MAIL before HELO/EHLO gets 503 5.5.1."""
        c = self.stack.connect()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"),
                         b"503 5.5.1 Error: send HELO/EHLO first")

    def test_sequenceErrors(self) -> None:
        """RCPT and DATA out of order get 503 5.5.1; a nested MAIL too."""
        c = self.stack.connect()
        c.ehlo()
        self.assertEqual(c.cmd("RCPT TO:<alice@example.org>"),
                         b"503 5.5.1 Error: need MAIL command")
        self.assertEqual(c.cmd("DATA"), b"503 5.5.1 Error: need MAIL command")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), b"250 2.1.0 Ok")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), b"503 5.5.1 Error: nested MAIL command")
        self.assertEqual(c.cmd("DATA"), b"554 5.5.1 Error: no valid recipients")
        self.assertEqual(c.cmd("DATA x"), b"501 5.5.4 Syntax: DATA")


class MailRcptTests(TestCase):
    """MAIL and RCPT: syntax, parameters, recipients and relaying."""

    def setUp(self) -> None:
        """Build the server stack and a client session for each test."""
        self.stack = SMTPStack(self, smtp={"max_recipients": 3, "max_message_size": 2000})
        self.c = self.stack.connect()
        self.c.ehlo()

    def test_mailSyntax(self) -> None:
        """Malformed MAIL commands get 501 with a 5.5.4 or 5.1.7 code."""
        c = self.c
        self.assertEqual(c.cmd("MAIL TO:<a@b.example>"), b"501 5.5.4 Syntax: MAIL FROM:<address>")
        self.assertRegex(c.cmd("MAIL FROM:<a@>"), rb"^501 5\.1\.7 Bad sender address syntax")
        self.assertRegex(c.cmd("MAIL FROM:<@relay.example:a@b.example>"),
                         rb"^553 5\.1\.7 Sender address rejected: source routes")

    def test_sizeParameter(self) -> None:
        """SIZE over the limit gets 552 5.3.4; a malformed SIZE 501; within the limit 250."""
        c = self.c
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> SIZE=2001"),
                         b"552 5.3.4 Message size exceeds fixed maximum message size")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> SIZE=abc"),
                         b"501 5.5.4 Bad SIZE parameter")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> SIZE=2000 BODY=8BITMIME"),
                         b"250 2.1.0 Ok")

    def test_unknownParameters(self) -> None:
        """Unknown MAIL and RCPT parameters (DSN's among them) get 555 5.5.4."""
        c = self.c
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> RET=FULL"),
                         b"555 5.5.4 Unsupported parameter RET")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> BODY=BINARYMIME"),
                         b"501 5.5.4 Unsupported BODY parameter")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> AUTH=<>"), b"250 2.1.0 Ok")
        self.assertEqual(c.cmd("RCPT TO:<alice@example.org> NOTIFY=NEVER"),
                         b"555 5.5.4 Unsupported parameter NOTIFY")

    def test_unknownUser(self) -> None:
        """An unknown local recipient gets 550 5.1.1."""
        self.c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(self.c.cmd("RCPT TO:<nobody@example.org>"),
                         b"550 5.1.1 <nobody@example.org>: Recipient address rejected: "
                         b"User unknown")

    def test_relayDenied(self) -> None:
        """Unauthenticated relaying gets 554 5.7.1."""
        self.c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(self.c.cmd("RCPT TO:<victim@elsewhere.example>"),
                         b"554 5.7.1 <victim@elsewhere.example>: Relay access denied")
        self.assertEqual(self.c.cmd("RCPT TO:<victim@[192.0.2.9]>"),
                         b"554 5.7.1 <victim@[192.0.2.9]>: Relay access denied")

    def test_routingTricks(self) -> None:
        """Percent hack, source routes, bang paths and a@b@c are refused with 553 5.1.3."""
        c = self.c
        c.cmd("MAIL FROM:<a@b.example>")
        for rcpt in ["<victim%elsewhere.example@example.org>",
                     "<@example.org:victim@elsewhere.example>",
                     "<elsewhere.example!victim@example.org>",
                     "<victim@elsewhere.example@example.org>"]:
            reply = c.cmd(f"RCPT TO:{rcpt}")
            self.assertRegex(reply, rb"^553 5\.1\.3 Recipient address rejected: ")
        self.assertRegex(c.cmd("RCPT TO:<alice@>"), rb"^501 5\.1\.3 Bad recipient address")
        self.assertEqual(c.cmd("RCPT <alice@example.org>"), b"501 5.5.4 Syntax: RCPT TO:<address>")

    def test_tooManyRecipients(self) -> None:
        """Past smtp.max_recipients accepted recipients, RCPT gets 452 4.5.3."""
        c = self.c
        c.cmd("MAIL FROM:<a@b.example>")
        for rcpt in ["alice@example.org", "bob@example.org", "carol@example.net"]:
            self.assertEqual(c.cmd(f"RCPT TO:<{rcpt}>"), b"250 2.1.5 Ok")
        self.assertEqual(c.cmd("RCPT TO:<postmaster@example.org>"),
                         b"452 4.5.3 Error: too many recipients")

    def test_postmaster(self) -> None:
        """postmaster of every domain and a bare <postmaster> are always accepted."""
        c = self.c
        c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(c.cmd("RCPT TO:<Postmaster>"), b"250 2.1.5 Ok")
        self.assertEqual(c.cmd("RCPT TO:<postmaster@example.net>"), b"250 2.1.5 Ok")
        self.assertEqual(c.cmd("RCPT TO:<POSTMASTER@παράδειγμα.δοκιμή>"),
                         b"553 5.6.7 Non-ASCII address needs SMTPUTF8 on MAIL")

    def test_nonASCIIWithoutSMTPUTF8(self) -> None:
        """A non-ASCII address without the SMTPUTF8 parameter gets 553 5.6.7."""
        self.assertEqual(self.c.cmd("MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή>"),
                         b"553 5.6.7 Non-ASCII address needs SMTPUTF8")
        self.assertEqual(self.c.cmd(b"MAIL FROM:<\xff@b.example>"),
                         b"553 5.6.7 Address is not valid UTF-8")

    def test_rset(self) -> None:
        """RSET forgets the transaction: DATA then needs MAIL again."""
        c = self.c
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<alice@example.org>")
        c.cmd("RSET")
        self.assertEqual(c.cmd("DATA"), b"503 5.5.1 Error: need MAIL command")


class IDNAPathTests(TestCase):
    """Internationalised domains in MAIL and RCPT must be valid IDNA 2008."""

    def setUp(self) -> None:
        """Build the server stack and a greeted client session."""
        self.stack = SMTPStack(self)
        self.c = self.stack.connect()
        self.c.ehlo()

    def test_invalidALabelSender(self) -> None:
        """A broken A-label in MAIL FROM gets 501 5.1.7, not a traceback or a 250."""
        self.assertRegex(self.c.cmd("MAIL FROM:<x@xn--a.example>"),
                         rb"^501 5\.1\.7 Bad sender address syntax: bad internationalised"
                         rb" domain 'xn--a\.example'")

    def test_joinerRecipient(self) -> None:
        """A stray ZWJ in a recipient domain gets 501 5.1.3 (the reply stays ASCII)."""
        self.assertEqual(self.c.cmd("MAIL FROM:<a@b.example> SMTPUTF8"), b"250 2.1.0 Ok")
        reply = self.c.cmd("RCPT TO:<x@a\u200db.example>")
        self.assertRegex(reply, rb"^501 5\.1\.3 Bad recipient address syntax: bad"
                                rb" internationalised domain 'a\\u200db\.example'")
        self.assertTrue(reply.isascii())

    def test_validIDNAccepted(self) -> None:
        """The A-label of a local domain reaches the same mailbox as its U-label."""
        replies = self.c.sendMail("a@b.example", ["δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"],
                                  BODY, " SMTPUTF8")
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok: queued as ")
        self.assertEqual(len(self.stack.messages("δοκιμή@παράδειγμα.δοκιμή")), 1)


class DataTests(TestCase):
    """DATA: storage, headers, and the smuggling defences."""

    def setUp(self) -> None:
        """Build the server stack and a client session for each test."""
        self.stack = SMTPStack(self, smtp={"max_message_size": 4000})
        self.c = self.stack.connect()
        self.c.ehlo("client.example")

    def startData(self, rcpt: str = "alice@example.org") -> None:
        """MAIL, RCPT and DATA up to the 354."""
        self.c.send(f"MAIL FROM:<sender@remote.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        self.assertEqual(self.c.replies(), [b"250 2.1.0 Ok", b"250 2.1.5 Ok",
                                            b"354 End data with <CR><LF>.<CR><LF>"])

    def test_deliver(self) -> None:
        """A message is stored with CRLF ends, trace headers, dot-unstuffed; 250 has its id."""
        replies = self.c.sendMail("sender@remote.example", ["alice@example.org"],
                                  b"Subject: hi\r\n\r\n..leading dot\r\nend\r\n")
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok: queued as [0-9A-F]{22}$")
        qid = replies[-1].rsplit(b" ", 1)[1]
        [msg] = self.stack.messages("alice@example.org")
        head, body = msg.split(b"Subject: hi\r\n", 1)
        self.assertEqual(body, b"\r\n.leading dot\r\nend\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"Return-Path: <sender@remote.example>")
        self.assertEqual(lines[1], b"Delivered-To: alice@example.org")
        self.assertEqual(lines[2], b"Received: from client.example ([192.0.2.1])")
        self.assertEqual(lines[3], b"\tby mx.example.org (pymaild) with ESMTP id " + qid)
        self.assertTrue(lines[4].startswith(b"\tfor <alice@example.org>; "))

    def test_oneFileLinkedToEveryRecipient(self) -> None:
        """Several recipients share one file, hard-linked into each Maildir, whose
        trace names none of them (Bcc stays hidden): Return-Path and a Received
        without C{for}, no Delivered-To (Dovecot's LMTP does the same)."""
        rcpts = ["alice@example.org", "bob+lists@example.org", "Alice@example.org"]
        replies = self.c.sendMail("s@remote.example", rcpts, BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok: queued as ")
        qid = replies[-1].rsplit(b" ", 1)[1]
        [a] = self.stack.messages("alice@example.org")
        [b] = self.stack.messages("bob@example.org")
        self.assertEqual(a, b)
        [pa] = self.stack.files("alice@example.org")
        [pb] = self.stack.files("bob@example.org")
        self.assertEqual(os.stat(pa).st_ino, os.stat(pb).st_ino)
        self.assertEqual(os.stat(pa).st_nlink, 2)
        lines = a.split(b"\r\n")
        self.assertEqual(lines[0], b"Return-Path: <s@remote.example>")
        self.assertEqual(lines[1], b"Received: from client.example ([192.0.2.1])")
        self.assertTrue(lines[2].startswith(b"\tby mx.example.org (pymaild) with ESMTP id "
                                            + qid + b";"), lines[2])
        self.assertNotIn(b"Delivered-To", a)
        self.assertNotIn(b"for <", a)
        self.assertNotIn(b"alice", a.lower())
        self.assertNotIn(b"bob", a.lower())

    def test_linkedCopiesAreIndependent(self) -> None:
        """Expunging the linked copy in one mailbox leaves the other's."""
        self.c.sendMail("s@remote.example", ["alice@example.org", "bob@example.org"], BODY)
        inbox = self.stack.store.account("alice@example.org").folder("INBOX")
        state = inbox.scan()
        inbox.expunge([info.key for info in state.messages])
        self.assertEqual(self.stack.messages("alice@example.org"), [])
        [b] = self.stack.messages("bob@example.org")
        self.assertTrue(b.endswith(BODY))

    def test_nullSender(self) -> None:
        """Bounces (MAIL FROM:<>) are accepted on the MX role; Return-Path is <>."""
        replies = self.c.sendMail("", ["alice@example.org"], BODY)
        self.assertRegex(replies[-1], rb"^250 ")
        self.assertTrue(self.stack.messages("alice@example.org")[0].startswith(b"Return-Path: <>"))

    def test_headless(self) -> None:
        """A message without a header section keeps its first line in the body."""
        self.c.sendMail("s@remote.example", ["alice@example.org"], b"just text\r\n")
        [msg] = self.stack.messages("alice@example.org")
        self.assertTrue(msg.endswith(b"\r\n\r\njust text\r\n"))

    def test_smtputf8(self) -> None:
        """A UTF-8 sender with SMTPUTF8 reaches a UTF-8 local user; Received says UTF8SMTP.

        (The sender is outside our domains: an unauthenticated client may not use ours.)
        """
        replies = self.c.sendMail("χρήστης@αλλού.example", ["δοκιμή@παράδειγμα.δοκιμή"],
                                  "Subject: Καλημέρα\r\n\r\nγεια\r\n".encode(), params=" SMTPUTF8")
        self.assertEqual(replies[:3], [b"250 2.1.0 Ok", b"250 2.1.5 Ok",
                                       b"354 End data with <CR><LF>.<CR><LF>"])
        self.assertRegex(replies[3], rb"^250 2\.0\.0 Ok: queued as ")
        [msg] = self.stack.messages("δοκιμή@παράδειγμα.δοκιμή")
        self.assertIn("Return-Path: <χρήστης@αλλού.example>\r\n".encode(), msg)
        self.assertIn(b" with UTF8SMTP id ", msg)
        self.assertTrue(msg.endswith("γεια\r\n".encode()))

    def test_sizeLimitInData(self) -> None:
        """A message over the size limit gets 552 5.3.4 after the dot; nothing is stored."""
        self.startData()
        self.c.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100 + b".\r\n")
        self.assertEqual(self.c.replies(),
                         [b"552 5.3.4 Message size exceeds fixed maximum message size"])
        self.assertEqual(self.stack.messages("alice@example.org"), [])
        self.assertEqual(self.c.cmd("NOOP"), b"250 2.0.0 Ok")

    def test_bareLFAndCR(self) -> None:
        """Bare LF or CR anywhere in DATA fails the message with 550 5.6.0, even from loopback."""
        for peer in ("192.0.2.1", LOOPBACK):
            for body in [b"a\nb\r\n", b"a\rb\r\n", b"trailing\r\r\n", b"x\n.\nMAIL FROM:<a@b>\r\n"]:
                c = self.stack.connect(peer)
                c.ehlo()
                replies = c.sendMail("s@remote.example", ["alice@example.org"], body)
                self.assertEqual(replies[-1], b"550 5.6.0 Message contains bare CR or LF, refused")
        self.assertEqual(self.stack.messages("alice@example.org"), [])

    def test_smuggling(self) -> None:
        """None of the smuggling end-of-data variants ends DATA; nothing is delivered.

        Each variant is followed by a complete second transaction for bob; the only
        reply is the 550 5.6.0 for the whole (bare-LF carrying) message at the real
        CRLF.CRLF, and neither alice nor bob gets anything.
        """
        smuggled = (b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
                    b"Subject: smuggled\r\n\r\nevil\r\n")
        for seq in [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r"]:
            c = self.stack.connect()
            c.ehlo()
            c.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
            self.assertEqual(len(c.replies()), 3)
            c.send(b"Subject: first\r\n\r\nhello" + seq + smuggled + b".\r\n")
            self.assertEqual(c.replies(), [b"550 5.6.0 Message contains bare CR or LF, refused"],
                             repr(seq))
            self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")
        self.assertEqual(self.stack.messages("alice@example.org"), [])
        self.assertEqual(self.stack.messages("bob@example.org"), [])

    def test_crcrlfDotIsRealEnd(self) -> None:
        """<CR><CR><LF>.<CR><LF> holds a real CRLF.CRLF: the message ends there (bare CR: 550)."""
        self.startData()
        self.c.send(b"Subject: first\r\n\r\nhello\r\r\n.\r\nNOOP\r\n")
        self.assertEqual(self.c.replies(), [b"550 5.6.0 Message contains bare CR or LF, refused",
                                            b"250 2.0.0 Ok"])
        self.assertEqual(self.stack.messages("alice@example.org"), [])

    def test_longLineThenSmuggledCommandsLater(self) -> None:
        """A >16 KiB DATA line never returns to command mode, even with commands in a later write.

        This is the desync Twisted's stock server has: its 500 reply sets command mode,
        so the following 'body' lines became a delivered second transaction.
        """
        self.startData()
        self.c.send(b"Subject: long\r\n\r\n" + b"A" * 20000)
        self.assertEqual(self.c.replies(), [])
        self.c.send(b"B" * 5000)
        self.c.send(b"\r\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
                    b"Subject: smuggled\r\n\r\nevil\r\n")
        self.assertEqual(self.c.replies(), [])
        self.c.send(b".\r\n")
        self.assertEqual(self.c.replies(), [b"500 5.5.2 Error: line too long in message"])
        self.assertEqual(self.stack.messages("alice@example.org"), [])
        self.assertEqual(self.stack.messages("bob@example.org"), [])
        # The session is in step: a normal message goes through.
        replies = self.c.sendMail("s@remote.example", ["bob@example.org"], BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok")
        self.assertEqual(len(self.stack.messages("bob@example.org")), 1)

    def test_longLineSameWrite(self) -> None:
        """A long line with the smuggled commands in the same write is swallowed the same way."""
        self.startData()
        self.c.send(b"x\r\n" + b"A" * 17000 + b"\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:"
                    b"<bob@example.org>\r\nDATA\r\nevil\r\n.\r\nNOOP\r\n")
        self.assertEqual(self.c.replies(), [b"500 5.5.2 Error: line too long in message",
                                            b"250 2.0.0 Ok"])
        self.assertEqual(self.stack.messages("bob@example.org"), [])

    def test_longCommandLine(self) -> None:
        """Command lines over 4096 octets get 500 5.5.2 and the session stays in step."""
        c = self.c
        self.assertEqual(c.cmd(b"NOOP " + b"x" * 5000), b"500 5.5.2 Error: line too long")
        c.send(b"NOOP " + b"y" * 20000)
        self.assertEqual(c.replies(), [])
        c.send(b"y" * 20000 + b"\r\nNOOP\r\n")
        self.assertEqual(c.replies(), [b"500 5.5.2 Error: line too long", b"250 2.0.0 Ok"])
        self.assertEqual(c.cmd(b"MAIL FROM:<a@b.example> " + b"X" * 600), b"555 5.5.4 "
                         b"Unsupported parameter " + b"X" * 600)

    def test_bareLFInCommand(self) -> None:
        """A command line with a bare LF is refused, not split."""
        self.assertEqual(self.c.cmd(b"NOOP\nMAIL FROM:<a@b.example>"),
                         b"500 5.5.2 Error: bare CR, LF or NUL in command")


class PipeliningTests(TestCase):
    """PIPELINING: replies stay in order while lookups are pending."""

    def test_orderWhileLookupsPending(self) -> None:
        """Commands behind a pending RCPT lookup wait; replies come out in command order."""
        runner = DeferredRunner()
        stack = SMTPStack(self, runner=runner)
        c = stack.connect()
        c.ehlo()
        c.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
               b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        self.assertEqual(c.replies(), [b"250 2.1.0 Ok"])
        runner.release(1)
        self.assertEqual(c.replies(), [b"250 2.1.5 Ok"])
        self.assertEqual(len(runner.calls), 1)
        runner.release(1)
        self.assertEqual(c.replies(), [b"550 5.1.1 <nobody@example.org>: Recipient address "
                                       b"rejected: User unknown"])
        runner.release(1)
        self.assertEqual(c.replies(), [b"250 2.1.5 Ok", b"354 End data with <CR><LF>.<CR><LF>"])
        c.send(BODY + b".\r\nNOOP\r\n")
        self.assertEqual(c.replies(), [])
        runner.release()
        replies = c.replies()
        self.assertRegex(replies[0], rb"^250 2\.0\.0 Ok: queued as ")
        self.assertEqual(replies[1:], [b"250 2.0.0 Ok"])
        self.assertEqual(len(stack.messages("alice@example.org")), 1)
        self.assertEqual(len(stack.messages("bob@example.org")), 1)

    def test_wholeSessionInOneWrite(self) -> None:
        """A session sent in one write is answered completely and in order."""
        stack = SMTPStack(self)
        c = stack.connect()
        c.send(b"EHLO x\r\nMAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
               b"DATA\r\n" + BODY + b".\r\nQUIT\r\n")
        replies = c.replies()
        self.assertEqual([r[:3] for r in replies], [b"250", b"250", b"250", b"354", b"250", b"221"])
        self.assertTrue(c.closed)


class LimitTests(TestCase):
    """Error limits and timeouts."""

    def test_tooManyErrors(self) -> None:
        """After 20 errors the server sends 421 4.7.0 and hangs up; later lines are dropped.

        Errors 11 to 20 each come a second after the one before (the tarpit), the 421
        right behind the 20th, and the connection closes only then.
        """
        stack = SMTPStack(self)
        c = stack.connect()
        c.send(b"JUNK\r\n" * 19)
        self.assertEqual(c.replies(), [JUNK] * 10)
        for _ in range(9):
            stack.clock.advance(1)
            self.assertEqual(c.replies(), [JUNK])
        self.assertFalse(c.closed)
        c.send(b"JUNK\r\nNOOP\r\nNOOP\r\n")
        self.assertEqual(c.replies(), [])
        self.assertFalse(c.closed)
        stack.clock.advance(1)
        self.assertEqual(c.replies(), [JUNK, b"421 4.7.0 mx.example.org Error: too many errors"])
        self.assertTrue(c.closed)
        stack.clock.advance(10)
        self.assertEqual(c.replies(), [])

    def test_tarpitAfterSoftLimit(self) -> None:
        """S28: ten errors are answered at once; the 11th reply appears only a second later
        on the factory's clock, and the commands pipelined behind it wait for it.

        Unknown verbs, bad syntax, 4xx replies and rejected recipients all count; a
        successful reply does not. The tarpit timer dies with the connection.
        """
        stack = SMTPStack(self)
        c = stack.connect()
        c.ehlo()
        c.send(b"JUNK\r\n" * 5 + b"STARTTLS\r\nMAIL FROM:<bad\r\n"
               b"MAIL FROM:<s@remote.example>\r\n" + b"RCPT TO:<nobody@example.org>\r\n" * 3
               + b"RCPT TO:<nobody2@example.org>\r\nRCPT TO:<alice@example.org>\r\nNOOP\r\n")
        replies = c.replies()
        self.assertEqual([r[:3] for r in replies],
                         [b"500"] * 5 + [b"454", b"501", b"250"] + [b"550"] * 3)
        stack.clock.advance(0.999)
        self.assertEqual(c.output(), b"")
        stack.clock.advance(0.001)
        self.assertEqual(c.replies(), [
            b"550 5.1.1 <nobody2@example.org>: Recipient address rejected: User unknown",
            b"250 2.1.5 Ok", b"250 2.0.0 Ok"])
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")
        c.send(b"JUNK\r\n")
        self.assertEqual(c.output(), b"")
        stack.clock.advance(1)
        self.assertEqual(c.replies(), [JUNK])
        c.send(b"JUNK\r\n")
        c.proto.connectionLost(Failure(ConnectionDone()))
        stack.clock.advance(1)
        self.assertEqual(c.output(), b"")

    def test_tarpitHoldsLateRejection(self) -> None:
        """Past the soft limit, a RCPT refused after a pending lookup is held back a second
        too, and the command pipelined behind it still waits for it."""
        runner = DeferredRunner()
        stack = SMTPStack(self, runner=runner)
        c = stack.connect()
        c.ehlo()
        c.send(b"JUNK\r\n" * 10 + b"MAIL FROM:<s@remote.example>\r\n"
               b"RCPT TO:<nobody@example.org>\r\nNOOP\r\n")
        self.assertEqual(c.replies(), [JUNK] * 10 + [b"250 2.1.0 Ok"])
        runner.release()
        self.assertEqual(c.output(), b"")
        stack.clock.advance(1)
        self.assertEqual(c.replies(), [b"550 5.1.1 <nobody@example.org>: Recipient address "
                                       b"rejected: User unknown", b"250 2.0.0 Ok"])

    def test_errorLimitsConfigurable(self) -> None:
        """The factory takes the soft limit, the delay and the hard limit; a delay of 0
        turns the tarpit off (the hard limit stays)."""
        stack = SMTPStack(self)
        stack.factory = SMTPFactory(stack.config, stack.gate, stack.portal, clock=stack.clock,
                                    softErrorLimit=2, errorSleepTime=3, maxErrors=4)
        c = stack.connect()
        c.send(b"JUNK\r\n" * 5)
        self.assertEqual(c.replies(), [JUNK] * 2)
        stack.clock.advance(2.9)
        self.assertEqual(c.replies(), [])
        stack.clock.advance(0.1)
        self.assertEqual(c.replies(), [JUNK])
        self.assertFalse(c.closed)
        stack.clock.advance(3)
        self.assertEqual(c.replies(), [JUNK, b"421 4.7.0 mx.example.org Error: too many errors"])
        self.assertTrue(c.closed)
        stack.factory = SMTPFactory(stack.config, stack.gate, stack.portal, clock=stack.clock,
                                    errorSleepTime=0)
        c = stack.connect()
        c.send(b"JUNK\r\n" * 21)
        self.assertEqual(c.replies(), [JUNK] * 20
                         + [b"421 4.7.0 mx.example.org Error: too many errors"])
        self.assertTrue(c.closed)

    def test_recipientOverflowIsNoError(self) -> None:
        """452 4.5.3 for recipients past the limit does not count as an error (the client
        is to send them again later): 30 of them are answered at once, no tarpit, no 421."""
        stack = SMTPStack(self, smtp={"max_recipients": 1})
        c = stack.connect()
        c.ehlo()
        c.send(b"MAIL FROM:<s@remote.example>\r\n"
               + b"RCPT TO:<alice@example.org>\r\n" * 31 + b"NOOP\r\n")
        self.assertEqual(c.replies(), [b"250 2.1.0 Ok", b"250 2.1.5 Ok"]
                         + [b"452 4.5.3 Error: too many recipients"] * 30 + [b"250 2.0.0 Ok"])
        self.assertFalse(c.closed)

    def test_greetingTimeout(self) -> None:
        """Without HELO/EHLO the client gets 30 s, then 421 4.4.2."""
        stack = SMTPStack(self)
        c = stack.connect()
        stack.clock.advance(29)
        self.assertFalse(c.closed)
        stack.clock.advance(1.5)
        self.assertEqual(c.replies(), [b"421 4.4.2 mx.example.org Error: timeout exceeded"])
        self.assertTrue(c.closed)

    def test_commandTimeout(self) -> None:
        """After EHLO the idle timeout is 5 minutes per command."""
        stack = SMTPStack(self)
        c = stack.connect()
        c.ehlo()
        stack.clock.advance(299)
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")
        stack.clock.advance(299)
        self.assertFalse(c.closed)
        stack.clock.advance(2)
        self.assertEqual(c.replies(), [b"421 4.4.2 mx.example.org Error: timeout exceeded"])
        self.assertTrue(c.closed)

    def test_timeoutInData(self) -> None:
        """A client stalling in DATA is cut off and its partial message discarded."""
        stack = SMTPStack(self)
        c = stack.connect()
        c.ehlo()
        c.sendMail("s@remote.example", ["alice@example.org"], b"")  # stores an empty message
        c.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
               b"Subject: partial\r\n")
        c.replies()
        stack.clock.advance(301)
        self.assertEqual(c.replies(), [b"421 4.4.2 mx.example.org Error: timeout exceeded"])
        c.proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(len(stack.messages("alice@example.org")), 1)


class FakeStartTLSTests(TestCase):
    """STARTTLS state handling, over a transport that only pretends to encrypt."""

    def setUp(self) -> None:
        """Build the server stack and a client session for each test."""
        self.stack = SMTPStack(self, tlsContext=object(), role="submission",
                               cleartext="tls-only")
        self.c = self.stack.connect(LOOPBACK, tls=True)

    def test_offeredThenForgotten(self) -> None:
        """STARTTLS is offered until TLS is on; AUTH only afterwards (tls-only policy)."""
        c = self.c
        reply = c.ehlo()
        self.assertIn(b"250 STARTTLS", reply)
        self.assertNotIn(b"AUTH", reply)
        self.assertEqual(c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
                         b"538 5.7.11 Encryption required for requested authentication mechanism")
        self.assertEqual(c.cmd("STARTTLS"), b"220 2.0.0 Ready to start TLS")
        self.assertTrue(c.transport.tlsStarted)
        reply = c.ehlo()
        self.assertNotIn(b"STARTTLS", reply)
        self.assertIn(b"AUTH PLAIN LOGIN", reply)
        self.assertEqual(c.cmd("STARTTLS"), b"503 5.5.1 TLS already active")

    def test_injectionDropped(self) -> None:
        """Commands pipelined behind STARTTLS in the same read are never answered."""
        c = self.c
        c.ehlo()
        c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(c.replies(), [b"220 2.0.0 Ready to start TLS"])
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")

    def test_stateReset(self) -> None:
        """After STARTTLS the session is just-greeted: EHLO and AUTH are forgotten."""
        stack = SMTPStack(self, tlsContext=object(), role="mx")
        c = stack.connect(LOOPBACK, tls=True)
        c.ehlo()
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"235 2.7.0 Authentication successful")
        c.cmd("STARTTLS")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"),
                         b"503 5.5.1 Error: send HELO/EHLO first")
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"),
                         b"550 5.7.1 Sender address <alice@example.org> is in a local domain:"
                         b" local senders must authenticate (use the submission port)")
        self.assertEqual(c.cmd("MAIL FROM:<s@remote.example>"), b"250 2.1.0 Ok")
        self.assertEqual(c.cmd("RCPT TO:<x@elsewhere.example>"),
                         b"554 5.7.1 <x@elsewhere.example>: Relay access denied")

    def test_startTLSWithArgument(self) -> None:
        """STARTTLS takes no parameters."""
        self.c.ehlo()
        self.assertEqual(self.c.cmd("STARTTLS now"), b"501 5.5.4 Syntax: STARTTLS")

    def test_startTLSPipelinedBehindLookup(self) -> None:
        """STARTTLS reached from the backlog (after a pending reply) drops the rest too."""
        runner = DeferredRunner()
        stack = SMTPStack(self, tlsContext=object(), runner=runner)
        c = stack.connect(tls=True)
        c.ehlo()
        c.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\nSTARTTLS\r\n"
               b"NOOP\r\n")
        self.assertEqual(c.replies(), [b"250 2.1.0 Ok"])
        runner.release()
        self.assertEqual(c.replies(), [b"250 2.1.5 Ok", b"220 2.0.0 Ready to start TLS"])
        self.assertEqual(c.cmd("EHLO again"), b"\n".join([
            b"250-mx.example.org", b"250-PIPELINING", b"250-SIZE 26214400", b"250-8BITMIME",
            b"250-ENHANCEDSTATUSCODES", b"250-SMTPUTF8", b"250 AUTH PLAIN LOGIN"]))

    def test_implicitTLS(self) -> None:
        """On an implicit-TLS listener STARTTLS is never offered."""
        stack = SMTPStack(self, tlsContext=object(), implicitTLS=True, role="submission")
        c = stack.connect(LOOPBACK, tls=True)
        self.assertNotIn(b"STARTTLS", c.ehlo())
        self.assertEqual(c.cmd("STARTTLS"), b"503 5.5.1 TLS already active")


class RobustnessTests(TestCase):
    """Flow control, lost connections and Twisted's own reply paths."""

    def test_pausedWhileBlocked(self) -> None:
        """A client flooding while a reply is pending is paused, and resumed afterwards."""
        runner = DeferredRunner()
        stack = SMTPStack(self, runner=runner)
        c = stack.connect()
        c.ehlo()
        c.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\n")
        c.send(b"NOOP\r\n" * 200_000)
        self.assertEqual(c.transport.producerState, "paused")
        self.assertEqual(c.replies(), [b"250 2.1.0 Ok"])
        runner.release()
        self.assertEqual(c.transport.producerState, "producing")
        replies = c.replies()
        self.assertEqual(replies[0], b"250 2.1.5 Ok")
        self.assertEqual(len(replies), 200_001)

    def test_lostDuringAuthPenalty(self) -> None:
        """A client leaving while its failed AUTH waits out the penalty causes no error."""
        stack = SMTPStack(self)
        c = stack.connect(LOOPBACK)
        c.ehlo()
        c.send(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n\r\n")
        c.proto.connectionLost(None)  # type: ignore[arg-type]
        stack.clock.advance(20)
        self.assertEqual(c.replies(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_lostDuringData(self) -> None:
        """A client leaving in the middle of DATA leaves nothing stored."""
        stack = SMTPStack(self)
        c = stack.connect()
        c.ehlo()
        c.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
               b"Subject: partial\r\n\r\nhalf a mess")
        c.proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(stack.messages("alice@example.org"), [])

    def test_twistedRepliesTranslated(self) -> None:
        """Replies sent through Twisted's sendCode get enhanced codes added."""
        stack = SMTPStack(self)
        c = stack.connect()
        c.proto.sendCode(503, b"Only one sender per message, please")
        c.proto.sendCode(250, b"Delivery in progress")
        c.proto.sendCode(451, b"Requested action aborted: local error in processing")
        c.proto.sendCode(535, b"Authentication failed")
        c.proto.sendCode(250, b"2.1.0 already enhanced")
        self.assertEqual(c.replies(), [
            b"503 5.5.1 Only one sender per message, please", b"250 2.0.0 Delivery in progress",
            b"451 4.3.0 Requested action aborted: local error in processing",
            b"535 5.7.8 Authentication failed", b"250 2.1.0 already enhanced",
        ])

    def test_internalErrorNoTraceback(self) -> None:
        """A bug in the avatar gives 451 4.3.0 on the wire and a logged error, not a traceback."""
        stack = SMTPStack(self)

        def broken(*args: object, **kwargs: object) -> None:
            raise ZeroDivisionError("bug")

        stack.avatars.resolver.resolve = broken  # type: ignore[method-assign]
        c = stack.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<s@remote.example>")
        reply = c.cmd("RCPT TO:<alice@example.org>")
        self.assertEqual(reply, b"451 4.3.0 Temporary lookup failure, try again later")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")
