"""SMTP security catalogue rows (research/reliability.md §3.1) not covered elsewhere.

Inbound rows run against the real server stack of L{tests.test_smtp_helpers} (Maildir,
passwd file, portal, auth gate) over a StringTransport; every hostile input is also fed
byte by byte and in random chunks, because the server's framing is its own and a bug at
a read boundary is the classic smuggling hole. The outbound rows (S7, S25) run the
relay client against a loopback ESMTP server that records the raw bytes it receives.

The row each test covers is named in its class docstring; ``tests/catalogue_smtp.rst``
maps every row S1-S31 to its test.
"""

from __future__ import annotations

import base64
import os
import random
import secrets
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from pymaild.config import RelayConfig
from pymaild.smtp.esmtpclient import DELIVERED, PERMANENT, TEMPORARY, Message
from pymaild.smtp.relay import Relay
from pymaild.smtp.server import SMTPFactory
from pymaild.threads import InlineRunner
from tests.test_relay_support import ScriptedSMTP, ScriptedSMTPFactory
from tests.test_smtp_helpers import LOOPBACK, RecordingQueue, SMTPStack, WireClient

BODY = b"Subject: test\r\n\r\nHello.\r\n"
BARE = b"550 5.6.0 Message contains bare CR or LF, refused"
#: What a smuggling payload tries to run as a second transaction on the receiver.
SMUGGLED = (b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nevil\r\n")


def withoutTarpit(stack: SMTPStack) -> SMTPStack:
    """C{stack} with a factory whose soft error limit (the S28 tarpit) is never reached.

    For tests that check the reply to each of more than ten bad commands at once; the
    tarpit itself is pinned by L{tests.test_smtp_server.LimitTests}.
    """
    old = stack.factory
    stack.factory = SMTPFactory(stack.config, stack.gate, stack.portal, old.tlsContext,
                                old.role, old.implicitTLS, stack.clock, softErrorLimit=1000)
    return stack


def chunkings(data: bytes, seed: int = 7) -> Iterator[tuple[str, list[bytes]]]:
    """C{data} as one read, one byte per read, and random reads of 1 to 7 bytes."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    parts: list[bytes] = []
    i = 0
    while i < len(data):
        n = rng.randint(1, 7)
        parts.append(data[i : i + n])
        i += n
    yield "random", parts


def feed(c: WireClient, parts: list[bytes]) -> None:
    """Send C{parts} to the server as separate reads."""
    for part in parts:
        c.send(part)


def startData(c: WireClient, rcpt: str = "alice@example.org") -> None:
    """EHLO, MAIL, RCPT and DATA up to the 354."""
    c.ehlo()
    c.send(f"MAIL FROM:<s@remote.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    replies = c.replies()
    assert [r[:3] for r in replies] == [b"250", b"250", b"354"], replies


class SmugglingTests(TestCase):
    """S1-S6: no end-of-data sequence but CRLF.CRLF ends DATA, at any read boundary.

    Each sequence of the smtpsmug / SMTP-Smuggling-Tools lists sits between a first
    message and a complete smuggled transaction for bob. The server must answer exactly
    once, at the real CRLF.CRLF, and neither alice nor bob may get a message.
    """

    def setUp(self) -> None:
        """Build the server stack."""
        self.stack = SMTPStack(self)

    def assertNotSmuggled(self, sequences: list[bytes]) -> None:
        """Every sequence, in every chunking: one 550 5.6.0 and nothing delivered."""
        for seq in sequences:
            payload = b"Subject: first\r\n\r\nhello" + seq + SMUGGLED + b".\r\n"
            for how, parts in chunkings(payload):
                c = self.stack.connect()
                startData(c)
                feed(c, parts)
                self.assertEqual(c.replies(), [BARE], f"{seq!r} sent {how}")
                self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok", f"{seq!r} sent {how}")
        self.assertEqual(self.stack.messages("alice@example.org"), [])
        self.assertEqual(self.stack.messages("bob@example.org"), [])

    def test_lfDotLf(self) -> None:
        """S1: <LF>.<LF> never ends DATA; the bare LF fails the message (550 5.6.0)."""
        self.assertNotSmuggled([b"\n.\n"])

    def test_lfDotCrlf(self) -> None:
        """S2: <LF>.<CR><LF> (the Exchange Online to Postfix vector) never ends DATA."""
        self.assertNotSmuggled([b"\n.\r\n"])

    def test_crlfDotLf(self) -> None:
        """S3: <CR><LF>.<LF> never ends DATA."""
        self.assertNotSmuggled([b"\r\n.\n"])

    def test_bareCRVariants(self) -> None:
        """S4: every isolated-CR / CR-LF mix of the scanner lists never ends DATA."""
        self.assertNotSmuggled([
            b"\r.\r", b"\r.\n", b"\n.\r", b"\r.\r\n", b"\r\n.\r", b"\r\n.\r\r\n",
            b"\r\r\n.\r\r\n", b"\n\r.\r\n", b"\r\n\r.\r\n", b"\n.\r\r\n",
        ])

    def test_nulBeforeDot(self) -> None:
        """S5: <CR><LF>NUL.<CR><LF> is not end-of-data: one reply, one message at most.

        The NUL line is an ordinary body line; the smuggled transaction stays part of
        alice's message, bob gets nothing, and the session is still in step.
        """
        payload = b"Subject: first\r\n\r\nhello\r\n\x00.\r\n" + SMUGGLED + b".\r\n"
        expected = 0
        for how, parts in chunkings(payload):
            c = self.stack.connect()
            startData(c)
            feed(c, parts)
            replies = c.replies()
            self.assertEqual(len(replies), 1, how)
            self.assertRegex(replies[0], rb"^(250 2\.0\.0 Ok: queued as |5\d\d 5\.)", how)
            if replies[0].startswith(b"250"):
                expected += 1
            self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok", how)
        messages = self.stack.messages("alice@example.org")
        self.assertEqual(len(messages), expected)
        for msg in messages:
            self.assertTrue(msg.endswith(b"hello\r\n\x00.\r\n" + SMUGGLED), msg[-200:])
        self.assertEqual(self.stack.messages("bob@example.org"), [])

    def test_twoTransactionsOneWrite(self) -> None:
        """S6: two pipelined transactions in one write give two separate messages, in order.

        Replies come one per command, in order; alice gets only the first body and bob
        only the second, whatever the read boundaries.
        """
        session = (b"EHLO client.example\r\n"
                   b"MAIL FROM:<one@remote.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
                   b"Subject: one\r\n\r\nfirst body\r\n.\r\n"
                   b"MAIL FROM:<two@remote.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
                   b"Subject: two\r\n\r\nsecond body\r\n.\r\nQUIT\r\n")
        runs = 0
        for how, parts in chunkings(session):
            runs += 1
            c = self.stack.connect()
            feed(c, parts)
            replies = c.replies()
            self.assertEqual([r[:3] for r in replies],
                             [b"250", b"250", b"250", b"354", b"250",
                              b"250", b"250", b"354", b"250", b"221"], how)
            self.assertTrue(c.closed)
            alice = self.stack.messages("alice@example.org")
            bob = self.stack.messages("bob@example.org")
            self.assertEqual((len(alice), len(bob)), (runs, runs), how)
            self.assertTrue(alice[-1].endswith(b"Subject: one\r\n\r\nfirst body\r\n"))
            self.assertTrue(bob[-1].endswith(b"Subject: two\r\n\r\nsecond body\r\n"))
            self.assertNotIn(b"second body", alice[-1])
            self.assertNotIn(b"first body", bob[-1])
            self.assertIn(b"Return-Path: <one@remote.example>", alice[-1])
            self.assertIn(b"Return-Path: <two@remote.example>", bob[-1])


class StartTLSStateTests(TestCase):
    """S9: after STARTTLS the session is just-greeted; MAIL and AUTH before EHLO get 503."""

    def test_mailAndAuthNeedNewEhlo(self) -> None:
        """MAIL and AUTH straight after STARTTLS get 503 5.5.1; after a new EHLO they work."""
        stack = SMTPStack(self, tlsContext=object(), role="submission", cleartext="tls-only")
        c = stack.connect(LOOPBACK, tls=True)
        c.ehlo()
        self.assertEqual(c.cmd("STARTTLS"), b"220 2.0.0 Ready to start TLS")
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"503 5.5.1 Error: send EHLO first")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"),
                         b"503 5.5.1 Error: send HELO/EHLO first")
        c.ehlo()
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"235 2.7.0 Authentication successful")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), b"250 2.1.0 Ok")


def _peakWhile(action: Any) -> int:
    """The peak of traced Python allocations (bytes) while C{action()} runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        action()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


class LongLineTests(TestCase):
    """S11, S12: over-long lines get 500 5.5.2 with bounded memory, in and out of DATA."""

    def test_hugeCommandLineBounded(self) -> None:
        """S11: a 4 MiB MAIL FROM line costs well under 1 MiB and gets one 500 5.5.2.

        The line arrives in 4 KiB reads without a CRLF; the server must not buffer it,
        and after the CRLF the session is in step again.
        """
        stack = SMTPStack(self)
        c = stack.connect()
        c.ehlo()
        chunk = b"a" * 4096

        def flood() -> None:
            c.send(b"MAIL FROM:<")
            for _ in range(1024):
                c.send(chunk)

        peak = _peakWhile(flood)
        self.assertLess(peak, 1 << 20, f"peak {peak} bytes for a 4 MiB line")
        self.assertEqual(c.replies(), [])
        c.send(b"@remote.example>\r\nNOOP\r\n")
        self.assertEqual(c.replies(), [b"500 5.5.2 Error: line too long", b"250 2.0.0 Ok"])
        self.assertFalse(c.closed)

    def test_hugeDataLineBounded(self) -> None:
        """S12: a 16 MiB DATA line without CRLF is swallowed with bounded memory.

        At the final dot the message fails with 500 5.5.2, nothing is stored, and the
        session stays in step (no return to command mode inside the line).
        """
        stack = SMTPStack(self)
        c = stack.connect()
        startData(c)
        chunk = b"Z" * 65536

        def flood() -> None:
            c.send(b"Subject: huge\r\n\r\n")
            for _ in range(256):
                c.send(chunk)

        peak = _peakWhile(flood)
        self.assertLess(peak, 1 << 20, f"peak {peak} bytes for a 16 MiB line")
        self.assertEqual(c.replies(), [])
        c.send(b"\r\n.\r\nNOOP\r\n")
        self.assertEqual(c.replies(), [b"500 5.5.2 Error: line too long in message",
                                       b"250 2.0.0 Ok"])
        self.assertEqual(stack.messages("alice@example.org"), [])


class CommandInputTests(TestCase):
    """S15-S18, S27: hostile command arguments get the proper error and change nothing."""

    def setUp(self) -> None:
        """Build the server stack and a greeted client."""
        self.stack = SMTPStack(self)
        self.c = self.stack.connect()
        self.c.ehlo()

    def test_hugeSizeDeclared(self) -> None:
        """S13: MAIL with SIZE=999999999999 gets 552 5.3.4 at once, never 250.

        An absurd number (25 digits) is a syntax error (501), and the transaction can
        start normally afterwards.
        """
        c = self.c
        self.assertEqual(c.cmd("MAIL FROM:<a@remote.example> SIZE=999999999999"),
                         b"552 5.3.4 Message size exceeds fixed maximum message size")
        self.assertEqual(c.cmd("MAIL FROM:<a@remote.example> SIZE=" + "9" * 25),
                         b"501 5.5.4 Bad SIZE parameter")
        self.assertEqual(c.cmd("MAIL FROM:<a@remote.example> SIZE=-1"),
                         b"501 5.5.4 Bad SIZE parameter")
        self.assertEqual(c.cmd("MAIL FROM:<a@remote.example> SIZE=100"), b"250 2.1.0 Ok")

    def test_bdatHugeRefused(self) -> None:
        """S15: BDAT 99999999999 LAST gets 502 5.5.1 (no CHUNKING) and nothing is allocated."""
        c = self.c
        c.send(b"BDAT 99999999999 LAST\r\nBDAT 18446744073709551616\r\nNOOP\r\n")
        self.assertEqual(c.replies(), [b"502 5.5.1 CHUNKING not supported",
                                       b"502 5.5.1 CHUNKING not supported", b"250 2.0.0 Ok"])
        self.assertNotIn(b"CHUNKING", c.ehlo())

    def test_nulInCommandsAndHeaders(self) -> None:
        """S16: NUL in a command gets 500 5.5.2; NUL in a header name never crashes.

        A message with C{Sub<NUL>ject:} is answered once (accepted as data) and the
        session goes on; no error is logged.
        """
        c = self.c
        for line in [b"MAIL FROM:<a\x00b@remote.example>", b"EHLO a\x00b", b"\x00",
                     b"NOOP \x00"]:
            self.assertEqual(c.cmd(line), b"500 5.5.2 Error: bare CR, LF or NUL in command")
        self.assertEqual(c.cmd("MAIL FROM:<a@remote.example>"), b"250 2.1.0 Ok")
        self.assertEqual(c.cmd(b"RCPT TO:<alice\x00@example.org>"),
                         b"500 5.5.2 Error: bare CR, LF or NUL in command")
        self.assertEqual(c.cmd("RCPT TO:<alice@example.org>"), b"250 2.1.5 Ok")
        self.assertEqual(c.cmd("DATA")[:3], b"354")
        c.send(b"Sub\x00ject: x\r\nTo\x00: y\r\n\r\nbody\x00\r\n.\r\n")
        [reply] = c.replies()
        self.assertRegex(reply, rb"^250 2\.0\.0 Ok: queued as ")
        [msg] = self.stack.messages("alice@example.org")
        self.assertTrue(msg.endswith(b"Sub\x00ject: x\r\nTo\x00: y\r\n\r\nbody\x00\r\n"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_invalidUTF8(self) -> None:
        """S17: malformed UTF-8 in MAIL or RCPT gets 553 5.6.7, with or without SMTPUTF8.

        Stray continuation bytes, overlong encodings and UTF-16 surrogates are all
        refused; nothing raises, nothing is logged, the session stays usable (15 errors:
        the connection comes from a factory without the tarpit, so each reply is at once).
        """
        c = withoutTarpit(self.stack).connect()
        c.ehlo()
        bad = [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"a\x80"]
        for local in bad:
            for params in (b"", b" SMTPUTF8"):
                self.assertEqual(c.cmd(b"MAIL FROM:<" + local + b"@remote.example>" + params),
                                 b"553 5.6.7 Address is not valid UTF-8")
        self.assertEqual(c.cmd("MAIL FROM:<s@remote.example> SMTPUTF8"), b"250 2.1.0 Ok")
        for local in bad:
            self.assertEqual(c.cmd(b"RCPT TO:<" + local + b"@example.org>"),
                             b"553 5.6.7 Address is not valid UTF-8")
        self.assertEqual(c.cmd("RCPT TO:<alice@example.org>"), b"250 2.1.5 Ok")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_metacharactersStayLiteral(self) -> None:
        """S18: shell, format and path metacharacters are refused or kept as literal text.

        C{;sleep 66;} and C{../} are syntax errors (501); C{%s} is refused as percent
        routing (553); a quoted C{$(touch ...)} and a back-quoted command are plain
        senders whose text reaches the Return-Path unchanged and runs nothing;
        C{${run{...}}} as a recipient is just an unknown user (550 5.1.1), or a syntax
        error with spaces (501); no directory appears in the mail store for any of them.
        """
        c = self.c
        marker = f"/tmp/pmd{secrets.token_hex(4)}"
        self.addCleanup(lambda: os.path.exists(marker) and os.unlink(marker))
        self.assertRegex(c.cmd("MAIL FROM:<;sleep 66;>"), rb"^501 5\.1\.7 ")
        self.assertRegex(c.cmd("MAIL FROM:<%s%s%n@remote.example>"), rb"^553 5\.1\.7 ")
        sender = f'"$(touch {marker})`touch {marker}`"@remote.example'
        self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>"), b"250 2.1.0 Ok")
        self.assertEqual(c.cmd("RCPT TO:<${run{/bin/true}}@example.org>"),
                         b"550 5.1.1 <${run{/bin/true}}@example.org>: Recipient "
                         b"address rejected: User unknown")
        self.assertRegex(c.cmd("RCPT TO:<${run{/bin/sh -c 'touch x'}}@example.org>"),
                         rb"^501 5\.1\.3 ")
        self.assertRegex(c.cmd("RCPT TO:<../../etc/passwd@example.org>"), rb"^501 5\.1\.3 ")
        self.assertRegex(c.cmd("RCPT TO:<%2e%2e/x@example.org>"), rb"^553 5\.1\.3 ")
        self.assertEqual(c.cmd("RCPT TO:<alice@example.org>"), b"250 2.1.5 Ok")
        self.assertEqual(c.cmd("DATA")[:3], b"354")
        c.send(BODY + b".\r\n")
        self.assertRegex(c.replies()[0], rb"^250 2\.0\.0 Ok: queued as ")
        [msg] = self.stack.messages("alice@example.org")
        self.assertTrue(msg.startswith(f"Return-Path: <{sender}>\r\n".encode()), msg[:200])
        self.assertFalse(os.path.exists(marker))
        mailRoot = os.path.join(self.stack.base, "mail")
        self.assertEqual(sorted(os.listdir(mailRoot)), ["example.org"])
        self.assertEqual(sorted(os.listdir(os.path.join(mailRoot, "example.org"))), ["alice"])

    def test_noopWithJunkBeforeAuth(self) -> None:
        """S27: NOOP with malformed parameters before AUTH on submission: 250, no crash.

        Control characters, unbalanced quotes and parentheses, and a 4000-octet argument
        all get 250 2.0.0; MAIL still needs AUTH afterwards (530) and nothing is logged.
        """
        stack = SMTPStack(self, role="submission")
        c = stack.connect()
        c.ehlo()
        for arg in [b"\x01\x02\x7f", b'"unterminated', b"((((((((", b"x" * 4000,
                    b"\xff\xfe", b"=?utf-8?b?AAAA?=", b"%s%n%x"]:
            self.assertEqual(c.cmd(b"NOOP " + arg), b"250 2.0.0 Ok", repr(arg[:20]))
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"),
                         b"530 5.7.0 Authentication required")
        self.assertFalse(c.closed)
        self.assertEqual(self.flushLoggedErrors(), [])


class RecipientLimitTests(TestCase):
    """S19: at least 100 recipients are accepted; more get 452 4.5.3 with bounded state."""

    def test_hundredAcceptedThenTempFail(self) -> None:
        """100 RCPTs get 250 (the RFC 5321 minimum); the next 2000 get 452 4.5.3.

        452 is temporary, so it does not count towards the error limit and the
        connection stays open; the message then reaches its one local account once.
        """
        stack = SMTPStack(self)
        self.assertEqual(stack.config.smtp.max_recipients, 100)
        c = stack.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<s@remote.example>")
        c.send(b"".join(b"RCPT TO:<alice+%d@example.org>\r\n" % i for i in range(100)))
        self.assertEqual(c.replies(), [b"250 2.1.5 Ok"] * 100)
        c.send(b"".join(b"RCPT TO:<bob+%d@example.org>\r\n" % i for i in range(2000)))
        self.assertEqual(c.replies(), [b"452 4.5.3 Error: too many recipients"] * 2000)
        self.assertFalse(c.closed)
        self.assertEqual(c.cmd("DATA")[:3], b"354")
        c.send(BODY + b".\r\n")
        self.assertRegex(c.replies()[0], rb"^250 2\.0\.0 Ok: queued as ")
        self.assertEqual(len(stack.messages("alice@example.org")), 1)
        self.assertEqual(stack.messages("bob@example.org"), [])


class QuotedRoutingTests(TestCase):
    """S24: a quoted '@' in the local part never becomes routing, even for a relay user."""

    def test_quotedAtNotRelayed(self) -> None:
        """An authenticated user (who may relay) gets 550 5.1.1 for C{"v@other"@ours}.

        The relay decision is made on the final domain, which is local; the queue
        receives nothing, and the anonymous MX client gets the same answer.
        """
        queue = RecordingQueue()
        stack = SMTPStack(self, queue=queue)
        c = stack.connect(LOOPBACK)
        c.ehlo()
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"235 2.7.0 Authentication successful")
        c.cmd("MAIL FROM:<alice@example.org>")
        for rcpt in ['"victim@elsewhere.example"@example.org',
                     '"victim@elsewhere.example@"@example.org',
                     '"@elsewhere.example:victim@elsewhere.example"@example.org']:
            reply = c.cmd(f"RCPT TO:<{rcpt}>")
            self.assertRegex(reply, rb"^550 5\.1\.1 .*User unknown$", rcpt)
        self.assertEqual(c.cmd("RCPT TO:<x@elsewhere.example>"), b"250 2.1.5 Ok")
        self.assertEqual(c.cmd("DATA")[:3], b"354")
        c.send(b"From: alice@example.org\r\n" + BODY + b".\r\n")
        self.assertRegex(c.replies()[0], rb"^250 ")
        self.assertEqual([rcpts for _s, rcpts, _b in queue.items], [["x@elsewhere.example"]])
        anon = stack.connect()
        anon.ehlo()
        anon.cmd("MAIL FROM:<s@remote.example>")
        self.assertRegex(anon.cmd('RCPT TO:<"victim@elsewhere.example"@example.org>'),
                         rb"^550 5\.1\.1 ")
        self.assertEqual(len(queue.items), 1)


class HeaderBombTests(TestCase):
    """S26: huge header sections cost time and memory linear in their size, nothing more."""

    def test_manyAddressesAndHugeHeader(self) -> None:
        """5000 To addresses plus a 1 MiB folded header are stored intact within seconds.

        A single 1 MiB header line (no folding) fails with 500 5.5.2, and 10000
        Received headers are refused as a loop (554 5.4.6), also quickly.
        """
        stack = SMTPStack(self)
        c = stack.connect()
        c.ehlo()
        to = b"To: " + b",\r\n ".join(b"user%d@remote.example" % i for i in range(5000))
        folded = b"X-Big: " + b"\r\n ".join([b"y" * 1000] * 1024)
        message = to + b"\r\n" + folded + b"\r\nSubject: bomb\r\n\r\nbody\r\n"
        start = time.perf_counter()
        replies = c.sendMail("s@remote.example", ["alice@example.org"], message)
        elapsed = time.perf_counter() - start
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok: queued as ")
        self.assertLess(elapsed, 10.0)
        [msg] = stack.messages("alice@example.org")
        self.assertTrue(msg.endswith(message))
        start = time.perf_counter()
        replies = c.sendMail("s@remote.example", ["alice@example.org"],
                             b"X-Line: " + b"z" * (1 << 20) + b"\r\n\r\nbody\r\n")
        self.assertEqual(replies[-1], b"500 5.5.2 Error: line too long in message")
        loop = b"".join(b"Received: from h%d\r\n" % i for i in range(10000)) + b"\r\nx\r\n"
        replies = c.sendMail("s@remote.example", ["alice@example.org"], loop)
        self.assertEqual(replies[-1], b"554 5.4.6 Too many hops, mail loop suspected")
        self.assertLess(time.perf_counter() - start, 10.0)
        self.assertEqual(len(stack.messages("alice@example.org")), 1)
        self.flushLoggedErrors()


def b64(data: bytes) -> bytes:
    """Base64 of C{data}."""
    return base64.b64encode(data)


class SASLAbuseTests(TestCase):
    """S31: malformed or oversized SASL input never authenticates and stays bounded."""

    def setUp(self) -> None:
        """A submission session from loopback (AUTH offered there), without the S28
        tarpit: the test answers more than ten errors and checks each reply at once."""
        self.stack = withoutTarpit(SMTPStack(self, role="submission"))
        self.c = self.stack.connect(LOOPBACK)
        self.c.ehlo()

    def assertNotAuthenticated(self) -> None:
        """MAIL still needs AUTH: nothing above logged the session in."""
        self.assertEqual(self.c.cmd("MAIL FROM:<alice@example.org>"),
                         b"530 5.7.0 Authentication required")

    def test_abuse(self) -> None:
        """Bad base64, '*', missing NULs, a foreign authzid and 1 MiB responses all fail.

        Replies are 501/535/500 as appropriate, each exchange ends in command mode, an
        unverified (wrong-password) initial response never logs in, and AUTH after a
        successful login gets 503.
        """
        c = self.c
        self.assertEqual(c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.org")),
                         b"501 5.5.2 Error: malformed AUTH PLAIN response")
        self.assertEqual(c.cmd(b"AUTH PLAIN " + b64(b"alice@example.org\0alice-secret")),
                         b"501 5.5.2 Error: malformed AUTH PLAIN response")
        self.assertEqual(c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.org\0alice-secret\0x")),
                         b"501 5.5.2 Error: malformed AUTH PLAIN response")
        self.assertEqual(c.cmd(b"AUTH PLAIN YWxp=ZQ=="), b"501 5.5.2 Error: invalid base64 data")
        self.assertEqual(c.cmd(b"AUTH LOGIN"), b"334 VXNlcm5hbWU6")
        self.assertEqual(c.cmd(b"*"), b"501 5.7.0 Authentication aborted")
        self.assertEqual(
            c.cmd(b"AUTH PLAIN " + b64(b"bob@example.org\0alice@example.org\0alice-secret")),
            b"535 5.7.8 Authentication credentials invalid")
        huge = b64(b"\0alice@example.org\0" + b"p" * 786432)
        self.assertGreaterEqual(len(huge), 1 << 20)
        self.assertEqual(c.cmd(b"AUTH PLAIN " + huge), b"500 5.5.2 Error: line too long")
        self.assertEqual(c.cmd(b"AUTH PLAIN"), b"334 ")
        self.assertEqual(c.cmd(huge), b"500 5.5.2 Error: line too long")
        self.assertEqual(c.cmd(b"NOOP"), b"250 2.0.0 Ok")
        c.send(b"AUTH PLAIN " + b64(b"\0alice@example.org\0wrong") + b"\r\n")
        self.stack.clock.advance(30)
        self.assertEqual(c.replies(), [b"535 5.7.8 Authentication credentials invalid"])
        self.assertNotAuthenticated()
        self.assertFalse(c.closed)
        # From a penalised client the success waits as a failure would.
        c.send(b"AUTH PLAIN " + b64(b"\0alice@example.org\0alice-secret") + b"\r\n")
        self.stack.clock.advance(30)
        self.assertEqual(c.replies(), [b"235 2.7.0 Authentication successful"])
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"503 5.5.1 Error: already authenticated")
        self.assertEqual(self.flushLoggedErrors(), [])


# -- outbound -----------------------------------------------------------------------------


class _RawSMTP(ScriptedSMTP):
    """The scripted server, also keeping every byte it reads."""

    def dataReceived(self, data: bytes) -> None:
        """Record the raw bytes, then parse them as usual."""
        self.factory.raw += data  # type: ignore[attr-defined]
        super().dataReceived(data)


class _RawFactory(ScriptedSMTPFactory):
    """A L{ScriptedSMTPFactory} whose connections record their raw input in C{raw}."""

    def buildProtocol(self, addr: Any) -> ScriptedSMTP:
        """A recording server protocol."""
        if not hasattr(self, "raw"):
            self.raw = bytearray()
        p = _RawSMTP()
        p.factory = self
        return p


def _lineEndsClean(raw: bytes) -> bool:
    """Whether every CR in C{raw} starts a CRLF and every LF ends one."""
    crlf = raw.count(b"\r\n")
    return raw.count(b"\r") == crlf and raw.count(b"\n") == crlf


class OutboundTests(TestCase):
    """S7, S25: what the relay client puts on the wire."""

    def relayTo(self, server: _RawFactory, hostname: str = "client.test") -> Relay:
        """A Relay whose smarthost is C{server} on loopback (no TLS offered)."""
        port = server.listen(self)
        config = RelayConfig(smarthost=f"127.0.0.1:{port}", smarthost_tls="opportunistic",
                             command_timeout=10, connect_timeout=5)
        return Relay(config, hostname, reactor, InlineRunner())

    def message(self, body: bytes) -> Message:
        """Write C{body} to a file and describe it."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        return Message(path, len(body), not body.isascii())

    async def test_bareLineEndsNormalised(self) -> None:
        """S7: a queued message with bare LF/CR and LF.CRLF goes out as CRLF, dot-stuffed.

        The raw bytes have no bare CR or LF, exactly one CRLF.CRLF (the terminator),
        the receiver records one message and none of the smuggled commands.
        """
        server = _RawFactory()
        relay = self.relayTo(server)
        body = (b"Subject: out\r\n\r\nline\nbare LF\rbare CR\r\n.leading dot\n.\n"
                + SMUGGLED.replace(b"\r\n", b"\n") + b"\n.\r\n" + SMUGGLED + b"\r.\r"
                + b"tail without end")
        outcomes = await relay.deliver("a@client.test", ["b@example.test"], "example.test",
                                       self.message(body))
        self.assertEqual([o.kind for o in outcomes], [DELIVERED])
        raw = bytes(server.raw)
        self.assertTrue(_lineEndsClean(raw), raw)
        self.assertEqual(raw.count(b"\r\n.\r\n"), 1)
        self.assertEqual(len(server.messages), 1)
        self.assertEqual([c for c in server.commands if c.startswith("MAIL")],
                         [f"MAIL FROM:<a@client.test> SIZE={len(body)}"])
        self.assertNotIn("RCPT TO:<bob@example.org>", server.commands)
        data = server.messages[0].data
        self.assertTrue(_lineEndsClean(data))
        self.assertIn(b"\r\n.leading dot\r\n.\r\nMAIL FROM:<ceo@bank.example>\r\n", data)
        self.assertTrue(data.endswith(b"tail without end\r\n"))

    async def test_commandInjectionRefused(self) -> None:
        """S25: CR, LF or NUL in an envelope address never reaches the wire.

        A sender or recipient carrying C{CRLF RCPT TO:<...>} fails permanently
        without any MAIL being sent; a host name with CRLF (the EHLO argument) sends
        nothing after the greeting but the clean part of no command; the raw bytes have
        clean line ends throughout.
        """
        server = _RawFactory()
        relay = self.relayTo(server)
        msg = self.message(BODY)
        bad = "a@client.test>\r\nRCPT TO:<victim@evil.test"
        outcomes = await relay.deliver(bad, ["b@example.test", "c@example.test"],
                                       "example.test", msg)
        self.assertEqual([(o.kind, o.status) for o in outcomes],
                         [(PERMANENT, "5.1.7"), (PERMANENT, "5.1.7")])
        outcomes = await relay.deliver("a@client.test",
                                       ["b@example.test\r\nRSET", "c@example.test",
                                        "d@example.test\x00x", "e@example.test\nDATA"],
                                       "example.test", msg)
        self.assertEqual([(o.kind, o.status) for o in outcomes],
                         [(PERMANENT, "5.1.3"), (DELIVERED, "2.0.0"), (PERMANENT, "5.1.3"),
                          (PERMANENT, "5.1.3")])
        self.assertEqual(server.messages[0].rcpts, ["c@example.test"])
        evil = self.relayTo(server, hostname="client.test\r\nMAIL FROM:<spoof@evil.test>")
        outcomes = await evil.deliver("a@client.test", ["b@example.test"], "example.test", msg)
        self.assertEqual([o.kind for o in outcomes], [TEMPORARY])
        raw = bytes(server.raw)
        self.assertTrue(_lineEndsClean(raw), raw)
        for needle in (b"victim@evil.test", b"RSET", b"\x00", b"spoof@evil.test",
                       b"e@example.test"):
            self.assertNotIn(needle, raw)
        self.assertEqual(len(server.messages), 1)
