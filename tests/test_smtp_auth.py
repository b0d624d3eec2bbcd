"""Wire-level tests of SMTP AUTH, the submission role, relaying and sender rules."""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from pymaild.errors import StoreError
from tests.test_smtp_helpers import LOOPBACK, REMOTE, RecordingQueue, SMTPStack

BODY = b"Subject: test\r\n\r\nHello.\r\n"


def fromUser(user: str, body: bytes = BODY) -> bytes:
    """C{body} with a C{From:} header naming C{user} (what a submitting client sends)."""
    return f"From: {user}\r\n".encode() + body


def b64(data: bytes | str) -> str:
    """Base64 of C{data} as text."""
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


class AuthMechanismTests(TestCase):
    """AUTH PLAIN and LOGIN, good and bad, on the submission role from loopback."""

    def setUp(self) -> None:
        """Build the server stack and a client session for each test."""
        self.stack = SMTPStack(self, role="submission")
        self.c = self.stack.connect(LOOPBACK)
        self.c.ehlo()

    def test_plainInitialResponse(self) -> None:
        """AUTH PLAIN with an initial response logs in."""
        self.assertEqual(self.c.authPlain("alice@example.org", "alice-secret"),
                         b"235 2.7.0 Authentication successful")

    def test_plainWithoutInitialResponse(self) -> None:
        """AUTH PLAIN alone gets an empty 334 challenge, then the response logs in."""
        self.assertEqual(self.c.cmd("AUTH PLAIN"), b"334 ")
        self.assertEqual(self.c.cmd(b64("\0Alice@Example.org\0alice-secret")),
                         b"235 2.7.0 Authentication successful")

    def test_plainAuthzid(self) -> None:
        """An authorization identity equal to the user is fine; another one is refused."""
        self.assertEqual(self.c.cmd("AUTH PLAIN " + b64("bob@example.org\0alice@example.org\0"
                                                         "alice-secret")),
                         b"535 5.7.8 Authentication credentials invalid")
        self.assertEqual(self.c.cmd("AUTH PLAIN " + b64("alice@example.org\0alice@example.org\0"
                                                         "alice-secret")),
                         b"235 2.7.0 Authentication successful")

    def test_login(self) -> None:
        """AUTH LOGIN asks for the user name and the password in base64."""
        self.assertEqual(self.c.cmd("AUTH LOGIN"), b"334 VXNlcm5hbWU6")
        self.assertEqual(self.c.cmd(b64("alice@example.org")), b"334 UGFzc3dvcmQ6")
        self.assertEqual(self.c.cmd(b64("alice-secret")), b"235 2.7.0 Authentication successful")

    def test_loginInitialResponse(self) -> None:
        """AUTH LOGIN with the user name as initial response asks only for the password."""
        self.assertEqual(self.c.cmd("AUTH LOGIN " + b64("alice@example.org")),
                         b"334 UGFzc3dvcmQ6")
        self.assertEqual(self.c.cmd(b64("alice-secret")), b"235 2.7.0 Authentication successful")

    def test_badPasswordPenalty(self) -> None:
        """A wrong password gets 535 5.7.8 only after the per-IP penalty delay."""
        self.c.send(b"AUTH PLAIN " + b64("\0alice@example.org\0wrong").encode() + b"\r\nNOOP\r\n")
        self.assertEqual(self.c.replies(), [])
        self.stack.clock.advance(2)
        self.assertEqual(self.c.replies(), [b"535 5.7.8 Authentication credentials invalid",
                                            b"250 2.0.0 Ok"])
        self.c.send(b"AUTH LOGIN " + b64("nobody@example.org").encode() + b"\r\n" +
                    b64("x").encode() + b"\r\n")
        self.assertEqual(self.c.replies(), [b"334 UGFzc3dvcmQ6"])
        self.stack.clock.advance(3.9)
        self.assertEqual(self.c.replies(), [])
        self.stack.clock.advance(0.1)
        self.assertEqual(self.c.replies(), [b"535 5.7.8 Authentication credentials invalid"])

    def test_malformed(self) -> None:
        """Malformed AUTH gets 501 5.5.2 (or 504/501 5.7.0); the connection stays up."""
        c = self.c
        self.assertEqual(c.cmd("AUTH"), b"501 5.5.2 Syntax: AUTH mechanism [initial-response]")
        self.assertEqual(c.cmd("AUTH PLAIN !!notbase64"), b"501 5.5.2 Error: invalid base64 data")
        self.assertEqual(c.cmd("AUTH PLAIN " + b64("no-nuls")),
                         b"501 5.5.2 Error: malformed AUTH PLAIN response")
        self.assertEqual(c.cmd("AUTH PLAIN " + b64("\0\0pw")),
                         b"501 5.5.2 Error: malformed AUTH PLAIN response")
        self.assertEqual(c.cmd("AUTH LOGIN"), b"334 VXNlcm5hbWU6")
        self.assertEqual(c.cmd("%%%"), b"501 5.5.2 Error: invalid base64 data")
        self.assertEqual(c.cmd("AUTH PLAIN"), b"334 ")
        self.assertEqual(c.cmd("*"), b"501 5.7.0 Authentication aborted")
        self.assertEqual(c.cmd("AUTH CRAM-MD5"), b"504 5.5.4 Unrecognized authentication type")
        self.assertEqual(c.cmd("AUTH PLAIN a b c"),
                         b"501 5.5.2 Syntax: AUTH mechanism [initial-response]")
        self.assertFalse(c.closed)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"235 2.7.0 Authentication successful")
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"503 5.5.1 Error: already authenticated")

    def test_authNeedsEhlo(self) -> None:
        """AUTH before EHLO, or inside a transaction, gets 503 5.5.1."""
        c = self.stack.connect(LOOPBACK)
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"503 5.5.1 Error: send EHLO first")
        stack = SMTPStack(self)
        c = stack.connect(LOOPBACK)
        c.ehlo()
        c.cmd("MAIL FROM:<x@remote.example>")
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"503 5.5.1 Error: AUTH not allowed during a mail transaction")

    def test_passwordsNeverLogged(self) -> None:
        """Neither passwords nor AUTH payloads appear in any log event."""
        events: list[str] = []

        def observer(event: dict) -> None:
            from twisted.logger import formatEvent

            events.append(formatEvent(event) + repr(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        payload = b64("\0alice@example.org\0alice-secret")
        self.c.cmd("AUTH PLAIN " + payload)
        c = self.stack.connect(LOOPBACK)
        c.ehlo()
        c.send(b"AUTH LOGIN\r\n" + b64("bob@example.org").encode() + b"\r\n" +
               b64("hunter2-wrong").encode() + b"\r\n")
        self.stack.clock.advance(10)
        text = "\n".join(events)
        for secret in ["alice-secret", payload, "hunter2-wrong", b64("hunter2-wrong")]:
            self.assertNotIn(secret, text)
        self.assertIn("alice@example.org", text)


class AuthPolicyTests(TestCase):
    """Where AUTH is offered and accepted."""

    def test_notOfferedRemotePlaintext(self) -> None:
        """From a non-loopback client without TLS AUTH is not offered and gets 538 5.7.11."""
        stack = SMTPStack(self, role="submission")
        c = stack.connect(REMOTE)
        self.assertNotIn(b"AUTH", c.ehlo())
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"538 5.7.11 Encryption required for requested authentication mechanism")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"),
                         b"530 5.7.0 Authentication required")

    def test_tlsOnly(self) -> None:
        """Under the tls-only policy even loopback must use TLS first."""
        stack = SMTPStack(self, role="submission", cleartext="tls-only")
        c = stack.connect(LOOPBACK)
        self.assertNotIn(b"AUTH", c.ehlo())
        self.assertEqual(c.cmd("AUTH LOGIN"),
                         b"538 5.7.11 Encryption required for requested authentication mechanism")

    def test_implicitTLSRemote(self) -> None:
        """On implicit TLS (a secure transport) a remote client may authenticate."""
        stack = SMTPStack(self, role="submission", implicitTLS=True, tlsContext=object())
        c = stack.connect(REMOTE, tls=True)
        c.transport.startTLS(None)  # the transport now provides ISSLTransport
        self.assertIn(b"AUTH PLAIN LOGIN", c.ehlo())
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret"),
                         b"235 2.7.0 Authentication successful")


class SubmissionTests(TestCase):
    """The submission role: sender ownership, local and queued recipients, rate limits."""

    def setUp(self) -> None:
        """Build the server stack and a client session for each test."""
        self.queue = RecordingQueue()
        self.stack = SMTPStack(
            self, role="submission", queue=self.queue,
            aliases="sales@example.org: alice@example.org, bob@example.org\n"
                    "info: alice\n@example.net: carol@example.net\n",
            submission={"max_messages_per_hour": 2},
        )
        self.c = self.stack.connect(LOOPBACK)
        self.c.ehlo("laptop.example")
        self.c.authPlain("alice@example.org", "alice-secret")

    def test_unauthenticated(self) -> None:
        """MAIL without AUTH on submission gets 530 5.7.0."""
        c = self.stack.connect(LOOPBACK)
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"),
                         b"530 5.7.0 Authentication required")

    def test_senderOwnership(self) -> None:
        """The account, its +tags and aliases reaching it are allowed; others get 553 5.7.1."""
        c = self.c
        for sender in ["alice@example.org", "ALICE+news@example.org", "sales@example.org",
                       "info@example.org"]:
            self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>"), b"250 2.1.0 Ok", sender)
            c.cmd("RSET")
        # info@example.net means alice@example.net (no such user); catch-alls do not count.
        for sender in ["bob@example.org", "someone@remote.example", "nobody@example.net",
                       "info@example.net"]:
            self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>"),
                             f"553 5.7.1 Sender address <{sender}> not owned by "
                             "alice@example.org".encode(), sender)
        self.assertEqual(c.cmd("MAIL FROM:<>"), b"553 5.7.1 Null sender not allowed after AUTH")

    def test_localAndQueued(self) -> None:
        """Local recipients are stored at once; the others go to the queue with ESMTPA trace."""
        replies = self.c.sendMail("alice@example.org",
                                  ["bob@example.org", "friend@remote.example"],
                                  fromUser("alice@example.org"))
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok: queued as ")
        [copy] = self.stack.messages("bob@example.org")
        self.assertIn(b"with ESMTPA id", copy)
        self.assertIn(b"(authenticated sender: alice@example.org)", copy)
        [(sender, rcpts, data)] = self.queue.items
        self.assertEqual((sender, rcpts), ("alice@example.org", ["friend@remote.example"]))
        self.assertTrue(data.startswith(b"Received: from laptop.example ([127.0.0.1])\r\n"))
        self.assertIn(b"for <friend@remote.example>;", data)
        self.assertNotIn(b"Delivered-To", data)
        self.assertNotIn(b"Return-Path", data)
        self.assertTrue(data.endswith(b"\r\n" + fromUser("alice@example.org")))

    def test_queueFailureUndoesLocal(self) -> None:
        """When queueing fails the answer is 451 4.3.0 and no local copy is left."""
        self.queue.fail = RuntimeError("spool broken")
        replies = self.c.sendMail("alice@example.org",
                                  ["bob@example.org", "friend@remote.example"],
                                  fromUser("alice@example.org"))
        self.assertEqual(replies[-1], b"451 4.3.0 Error: could not store message, try again later")
        self.assertEqual(self.stack.messages("bob@example.org"), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_rateLimit(self) -> None:
        """Past submission.max_messages_per_hour, MAIL gets 450 4.7.1 until the hour passes."""
        for _ in range(2):
            replies = self.c.sendMail("alice@example.org", ["bob@example.org"],
                                      fromUser("alice@example.org"))
            self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(self.c.cmd("MAIL FROM:<alice@example.org>"),
                         b"450 4.7.1 Message rate limit exceeded, try later")
        other = self.stack.connect(LOOPBACK)
        other.ehlo()
        other.authPlain("bob@example.org", "bob-secret")
        self.assertEqual(other.cmd("MAIL FROM:<bob@example.org>"), b"250 2.1.0 Ok")
        self.stack.clock.advance(3601)
        again = self.stack.connect(LOOPBACK)
        again.ehlo()
        again.authPlain("alice@example.org", "alice-secret")
        self.assertEqual(again.cmd("MAIL FROM:<alice@example.org>"), b"250 2.1.0 Ok")

    def test_noQueue(self) -> None:
        """Without a queue, remote recipients of authenticated users get 550 5.7.1."""
        stack = SMTPStack(self, role="submission")
        c = stack.connect(LOOPBACK)
        c.ehlo()
        c.authPlain("alice@example.org", "alice-secret")
        c.cmd("MAIL FROM:<alice@example.org>")
        self.assertEqual(c.cmd("RCPT TO:<friend@remote.example>"),
                         b"550 5.7.1 Relaying not configured")
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), b"250 2.1.5 Ok")


class FromHeaderTests(TestCase):
    """An authenticated user's message must carry a C{From:} naming only the user's own
    addresses (account, +tag, aliases); otherwise C{550 5.7.1} after DATA and nothing is
    stored or queued."""

    def setUp(self) -> None:
        """A submission stack with aliases; Alice logged in from loopback."""
        self.queue = RecordingQueue()
        self.stack = SMTPStack(
            self, role="submission", queue=self.queue,
            aliases="sales@example.org: alice@example.org, bob@example.org\n"
                    "@example.net: carol@example.net\n",
        )
        self.c = self.stack.connect(LOOPBACK)
        self.c.ehlo("laptop.example")
        self.c.authPlain("alice@example.org", "alice-secret")

    def send(self, headers: bytes) -> bytes:
        """Send a message with C{headers} from Alice to Bob and a remote friend; return the
        final reply."""
        replies = self.c.sendMail("alice@example.org",
                                  ["bob@example.org", "friend@remote.example"],
                                  headers + b"Subject: hi\r\n\r\nHello.\r\n")
        self.assertEqual(replies[:-1], [b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"250 2.1.5 Ok",
                                        b"354 End data with <CR><LF>.<CR><LF>"])
        return replies[-1]

    def assertRefused(self, headers: bytes, text: bytes) -> None:
        """C{headers} get exactly C{550 5.7.1 <text>}; nothing stored, nothing queued."""
        self.assertEqual(self.send(headers), b"550 5.7.1 " + text)
        self.assertEqual(self.stack.messages("bob@example.org"), [])
        self.assertEqual(self.queue.items, [])

    def test_ownAddressesAccepted(self) -> None:
        """The account (any case), a +tag, an alias that reaches it, a display name and
        a group of own addresses are all fine."""
        for header in [b"From: Alice <alice@example.org>\r\n",
                       b"From: ALICE@Example.ORG\r\n",
                       b"From: alice+lists@example.org\r\n",
                       b"From: Sales <sales@example.org>\r\n",
                       b"from: alice@example.org (Alice)\r\n",
                       b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.org>\r\n",
                       b"From: Team: alice@example.org, sales@example.org;\r\n"]:
            self.assertRegex(self.send(header), rb"^250 2\.0\.0 Ok: queued as ", header)
        self.assertEqual(len(self.stack.messages("bob@example.org")), 7)
        self.assertEqual(len(self.queue.items), 7)

    def test_otherUserRefused(self) -> None:
        """C{From: bob@...} from Alice is refused."""
        self.assertRefused(b"From: Bob <bob@example.org>\r\n",
                           b"From: header address <bob@example.org> not owned by"
                           b" alice@example.org")

    def test_anyForeignAddressRefused(self) -> None:
        """Every address counts: a second mailbox, a second From: field, or a catch-all
        address that only reaches someone else."""
        self.assertRefused(b"From: alice@example.org, mallory@remote.example\r\n",
                           b"From: header address <mallory@remote.example> not owned by"
                           b" alice@example.org")
        self.assertRefused(b"From: alice@example.org\r\nFrom: bob@example.org\r\n",
                           b"From: header address <bob@example.org> not owned by"
                           b" alice@example.org")
        self.assertRefused(b"From: info@example.net\r\n",
                           b"From: header address <info@example.net> not owned by"
                           b" alice@example.org")

    def test_foldedAndDisguised(self) -> None:
        """A folded field and an address behind another address's display name are
        parsed, not matched as text."""
        self.assertRefused(b"From: \"alice@example.org\"\r\n <bob@example.org>\r\n",
                           b"From: header address <bob@example.org> not owned by"
                           b" alice@example.org")

    def test_missingFrom(self) -> None:
        """No C{From:} at all is refused (RFC 5322 requires one), as is a body-only
        message."""
        self.assertRefused(b"To: bob@example.org\r\n",
                           b"Message has no From: header (RFC 5322 requires one)")
        replies = self.c.sendMail("alice@example.org", ["bob@example.org"], b"just text\r\n")
        self.assertEqual(replies[-1],
                         b"550 5.7.1 Message has no From: header (RFC 5322 requires one)")
        self.assertEqual(self.stack.messages("bob@example.org"), [])

    def test_unparseableFrom(self) -> None:
        """A C{From:} that holds no address, or something that is not one, is refused."""
        for header in [b"From: \r\n", b"From: <>\r\n", b"From: Alice\r\n",
                       b"From: alice@example.org, Alice\r\n"]:
            self.assertRefused(header, b"Message From: header could not be parsed")

    def test_logged(self) -> None:
        """The refusal is logged with the transaction's id and the reason."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.send(b"From: bob@example.org\r\n")
        lines = [formatEvent(e) for e in events if "refused" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("not owned by alice@example.org", lines[0])
        self.assertIn("user=alice@example.org", lines[0])

    def test_switchOff(self) -> None:
        """With C{submission.check_from_header = false} the header is not checked (the
        envelope still is)."""
        stack = SMTPStack(self, role="submission", queue=RecordingQueue(),
                          submission={"check_from_header": False})
        c = stack.connect(LOOPBACK)
        c.ehlo()
        c.authPlain("alice@example.org", "alice-secret")
        replies = c.sendMail("alice@example.org", ["bob@example.org"],
                             b"From: bob@example.org\r\n\r\nHi.\r\n")
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok: queued as ")
        self.assertEqual(c.cmd("MAIL FROM:<bob@example.org>"),
                         b"553 5.7.1 Sender address <bob@example.org> not owned by"
                         b" alice@example.org")

    def test_anonymousMXUnchecked(self) -> None:
        """Mail from outside to a local user (no AUTH, MX role) keeps any From:."""
        stack = SMTPStack(self)
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["bob@example.org"],
                             b"From: someone@else.example\r\n\r\nHi.\r\n")
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok: queued as ")


class LocalSenderTests(TestCase):
    """On the MX, an unauthenticated client may not claim a sender in our domains: it is
    refused at MAIL FROM unless the client is in C{auth.trusted_networks}."""

    REFUSAL = (b"550 5.7.1 Sender address <%s> is in a local domain: local senders must"
               b" authenticate (use the submission port)")

    def test_outsideClientRefused(self) -> None:
        """Every spelling of a local-domain sender is refused, known user or not; the
        session stays usable and a foreign sender or <> is accepted."""
        stack = SMTPStack(self)
        c = stack.connect(REMOTE)
        c.ehlo()
        for sender in ["alice@example.org", "Alice@EXAMPLE.ORG", "alice+x@example.org",
                       "nobody@example.org", "carol@example.net",
                       "δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"]:
            params = "" if sender.isascii() else " SMTPUTF8"
            self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>{params}"),
                             self.REFUSAL % sender.encode(), sender)
        self.assertEqual(c.cmd("MAIL FROM:<>"), b"250 2.1.0 Ok")
        c.cmd("RSET")
        replies = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok: queued as ")
        self.assertEqual(len(stack.messages("alice@example.org")), 1)

    def test_loopbackNotTrustedByDefault(self) -> None:
        """Loopback is no exception unless it is listed in trusted_networks."""
        stack = SMTPStack(self)
        c = stack.connect(LOOPBACK)
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"),
                         self.REFUSAL % b"alice@example.org")

    def test_nothingDelivered(self) -> None:
        """A pipelined transaction behind the refused MAIL delivers nothing."""
        stack = SMTPStack(self)
        c = stack.connect(REMOTE)
        c.ehlo()
        replies = c.sendMail("bob@example.org", ["alice@example.org"], BODY)
        self.assertEqual(replies, [self.REFUSAL % b"bob@example.org",
                                   b"503 5.5.1 Error: need MAIL command",
                                   b"503 5.5.1 Error: need MAIL command"])
        self.assertEqual(stack.messages("alice@example.org"), [])

    def test_trustedNetwork(self) -> None:
        """A client inside auth.trusted_networks may use a local sender without AUTH;
        one outside it still may not."""
        stack = SMTPStack(self, auth={"trusted_networks": ["192.0.2.0/24", "::1"]})
        c = stack.connect(REMOTE)
        c.ehlo()
        replies = c.sendMail("alice@example.org", ["bob@example.org"], BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 Ok: queued as ")
        self.assertEqual(len(stack.messages("bob@example.org")), 1)
        other = stack.connect("198.51.100.7")
        other.ehlo()
        self.assertEqual(other.cmd("MAIL FROM:<alice@example.org>"),
                         self.REFUSAL % b"alice@example.org")
        loopback = stack.connect(LOOPBACK)
        loopback.ehlo()
        self.assertEqual(loopback.cmd("MAIL FROM:<alice@example.org>"),
                         self.REFUSAL % b"alice@example.org")

    def test_authenticatedOnMX(self) -> None:
        """After AUTH on the MX the user's own address is fine."""
        stack = SMTPStack(self)
        c = stack.connect(LOOPBACK)
        c.ehlo()
        c.authPlain("alice@example.org", "alice-secret")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), b"250 2.1.0 Ok")

    def test_logged(self) -> None:
        """The refusal is logged with the sender and the client address."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        c = SMTPStack(self).connect(REMOTE)
        c.ehlo()
        c.cmd("MAIL FROM:<alice@example.org>")
        lines = [formatEvent(e) for e in events
                 if "unauthenticated local sender" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("<alice@example.org> from [192.0.2.1]", lines[0])


class MXAuthTests(TestCase):
    """Port 25: authenticated users may relay (permit_sasl_authenticated), others never."""

    def test_authenticatedRelay(self) -> None:
        """After AUTH on the MX role, remote recipients go to the queue."""
        queue = RecordingQueue()
        stack = SMTPStack(self, queue=queue)
        c = stack.connect(LOOPBACK)
        c.ehlo()
        self.assertEqual(c.authPlain("carol@example.net", "carol-secret"),
                         b"235 2.7.0 Authentication successful")
        replies = c.sendMail("carol@example.net", ["x@remote.example"],
                             fromUser("carol@example.net"))
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(queue.items[0][1], ["x@remote.example"])

    def test_unauthenticatedRelayRefused(self) -> None:
        """Without AUTH the MX refuses relaying even with a queue and from loopback."""
        stack = SMTPStack(self, queue=RecordingQueue())
        c = stack.connect(LOOPBACK)
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<s@remote.example>"), b"250 2.1.0 Ok")
        self.assertEqual(c.cmd("RCPT TO:<x@remote.example>"),
                         b"554 5.7.1 <x@remote.example>: Relay access denied")


class StoreFailureTests(TestCase):
    """A message that cannot be stored never gets 250 (nor 550)."""

    def _failingStore(self, error: Exception) -> SMTPStack:
        """A stack whose store fails every write of a message with C{error}."""
        stack = SMTPStack(self)

        def write(targets: object, order: object, data: object) -> list[str]:
            raise error

        stack.store._store = write  # type: ignore[method-assign]
        return stack

    def test_storeFull(self) -> None:
        """StoreFull gets 452 4.3.1."""
        from pymaild.errors import StoreFull

        stack = self._failingStore(StoreFull("disk full"))
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertEqual(replies[-1], b"452 4.3.1 Insufficient system storage, try again later")

    def test_otherError(self) -> None:
        """Any other store error gets 451 4.3.0, and no traceback reaches the client."""
        stack = self._failingStore(StoreError("EIO"))
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertEqual(replies[-1], b"451 4.3.0 Error: could not store message, try again later")
        self.assertEqual(len(self.flushLoggedErrors(StoreError)), 1)

    def test_partialFailureUndone(self) -> None:
        """When linking the second copy fails, the first is removed again
        (all-or-nothing)."""
        import errno

        from pymaild.store import maildir

        stack = SMTPStack(self)
        real = os.link
        calls: list[str] = []

        def link(src: str, dst: str) -> None:
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.EIO, "EIO on the second copy")
            real(src, dst)

        self.patch(maildir.os, "link", link)
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org", "bob@example.org"], BODY)
        self.assertEqual(len(calls), 2)
        self.assertEqual(replies[-1], b"451 4.3.0 Error: could not store message, try again later")
        self.assertEqual(stack.messages("alice@example.org"), [])
        self.assertEqual(stack.messages("bob@example.org"), [])
        self.flushLoggedErrors(StoreError)

    def test_flaggedThenLinkedUndone(self) -> None:
        """A flagged copy already appended is removed again when the linked copies
        fail (the undo spans both kinds)."""
        from pymaild.smtp.checks import CheckChain, Placement

        class Flagging:
            def check(self, envelope: object, message: bytes) -> bytes:
                envelope.placements = {  # type: ignore[attr-defined]
                    "alice@example.org": [Placement(flags=("\\Flagged",))]}
                return message

        stack = SMTPStack(self)
        stack.avatars.checks = CheckChain([Flagging()])

        def write(targets: object, order: object, data: object) -> list[str]:
            raise StoreError("EIO")

        stack.store._store = write  # type: ignore[method-assign]
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org", "bob@example.org"], BODY)
        self.assertEqual(replies[-1], b"451 4.3.0 Error: could not store message, try again later")
        self.assertEqual(stack.messages("alice@example.org"), [])
        self.assertEqual(stack.messages("bob@example.org"), [])
        self.flushLoggedErrors(StoreError)

    def test_lookupFailure(self) -> None:
        """A broken passwd lookup gets 451 4.3.0 at RCPT, no traceback on the wire."""
        stack = SMTPStack(self)

        def broken(address: str) -> object:
            raise OSError("passwd unreadable")

        stack.passwd.lookup = broken  # type: ignore[method-assign]
        c = stack.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<s@remote.example>")
        reply = c.cmd("RCPT TO:<alice@example.org>")
        self.assertEqual(reply, b"451 4.3.0 Temporary lookup failure, try again later")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
