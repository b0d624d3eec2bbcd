"""The SMTP server on real sockets (127.0.0.1:0): smtplib and a raw TLS client.

The server runs in the test's reactor with a real thread pool for disk work (as the tap
wires it); the clients run in threads. Covered: plain delivery, SMTPUTF8, STARTTLS with
AUTH PLAIN and AUTH LOGIN, a wrong password, and STARTTLS command injection over a real
TLS handshake.
"""

from __future__ import annotations

import dataclasses
import os
import re
import smtplib
import socket
import ssl
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from pymaild import tls
from pymaild.auth.penalty import AuthPenalty
from pymaild.config import RelayConfig
from pymaild.smtp.queue import Queue
from pymaild.smtp.server import SMTPFactory
from pymaild.threads import ThreadRunner, makePool
from tests.test_relay_support import ScriptedSMTPFactory
from tests.test_smtp_helpers import HOSTNAME, SMTPStack


def clientContext() -> ssl.SSLContext:
    """A client TLS context that accepts the test's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class LiveServerMixin:
    """Starts an SMTP listener on 127.0.0.1:0 over a full stack with a real disk pool."""

    def startServer(self, role: str = "mx", cleartext: str = "tls-or-loopback") -> SMTPStack:
        """Listen with the given role; the port is in C{self.port}."""
        case: Any = self
        pool = makePool("test-disk", 4)
        pool.start()
        case.addCleanup(pool.stop)
        runner = ThreadRunner(reactor, pool)
        stack = SMTPStack(case, role=role, cleartext=cleartext, runner=runner,
                          penalty=AuthPenalty(initial=0.05, maximum=0.1))
        base = stack.base
        cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
        tls.ensureSelfSigned(cert, key, [HOSTNAME])
        stack.gate.clock = reactor
        stack.factory = SMTPFactory(stack.config, stack.gate, stack.portal,
                                    tls.serverContext(cert, key), role, False, reactor)
        port = reactor.listenTCP(0, stack.factory, interface="127.0.0.1")
        case.addCleanup(port.stopListening)
        case.port = port.getHost().port
        return stack


class SmtplibTests(LiveServerMixin, TestCase):
    """Python's smtplib against the server."""

    def smtp(self, func: Any) -> defer.Deferred[Any]:
        """Run C{func(smtp)} in a thread with a connected smtplib client."""

        def work() -> Any:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example",
                              timeout=20) as s:
                return func(s)

        return threads.deferToThread(work)

    @defer.inlineCallbacks
    def test_plainDelivery(self) -> Any:
        """A plain (unauthenticated) message to a local user is stored."""
        stack = self.startServer()

        def send(s: smtplib.SMTP) -> Any:
            return s.sendmail("sender@remote.example", ["alice@example.org"],
                              b"Subject: plain\r\n\r\nbody\r\n.dot\r\n")

        refused = yield self.smtp(send)
        self.assertEqual(refused, {})
        [msg] = stack.messages("alice@example.org")
        self.assertTrue(msg.endswith(b"Subject: plain\r\n\r\nbody\r\n.dot\r\n"))
        self.assertIn(b"with ESMTP id", msg)

    @defer.inlineCallbacks
    def test_smtputf8(self) -> Any:
        """smtplib's send_message uses SMTPUTF8 for a UTF-8 address; the UTF-8 user gets it."""
        stack = self.startServer()
        message = EmailMessage()
        message["From"] = "χρήστης@αλλού.example"
        message["To"] = "δοκιμή@παράδειγμα.δοκιμή"
        message["Subject"] = "Καλημέρα"
        message.set_content("γεια σου\n")
        yield self.smtp(lambda s: s.send_message(message))
        [msg] = stack.messages("δοκιμή@παράδειγμα.δοκιμή")
        self.assertIn(b"with UTF8SMTP id", msg)

    @defer.inlineCallbacks
    def test_unknownAndRelay(self) -> Any:
        """Unknown users and relay attempts are refused with the documented codes."""
        self.startServer()

        def send(s: smtplib.SMTP) -> Any:
            s.ehlo()
            s.mail("x@remote.example")
            return [s.rcpt("nobody@example.org"), s.rcpt("victim@elsewhere.example")]

        results = yield self.smtp(send)
        self.assertEqual([(code, text.split(b" ")[0]) for code, text in results],
                         [(550, b"5.1.1"), (554, b"5.7.1")])

    @defer.inlineCallbacks
    def test_localSenderNeedsAuth(self) -> Any:
        """Over a real socket from 127.0.0.1 (not in trusted_networks), an
        unauthenticated MAIL FROM a local address gets 550 5.7.1; nothing is stored."""
        stack = self.startServer()

        def send(s: smtplib.SMTP) -> Any:
            try:
                s.sendmail("bob@example.org", ["alice@example.org"],
                           b"From: bob@example.org\r\nSubject: forged\r\n\r\nx\r\n")
            except smtplib.SMTPSenderRefused as e:
                return e.smtp_code, e.smtp_error
            return None

        code, text = yield self.smtp(send)
        self.assertEqual(code, 550)
        self.assertEqual(text, b"5.7.1 Sender address <bob@example.org> is in a local domain:"
                               b" local senders must authenticate (use the submission port)")
        self.assertEqual(stack.messages("alice@example.org"), [])

    @defer.inlineCallbacks
    def test_startTLSAuthPlain(self) -> Any:
        """STARTTLS then AUTH PLAIN on submission; the Received line names TLS and the user."""
        stack = self.startServer(role="submission", cleartext="tls-only")

        def send(s: smtplib.SMTP) -> Any:
            s.ehlo()
            self.assertFalse(s.has_extn("auth"))
            s.starttls(context=clientContext())
            s.ehlo()
            self.assertEqual(s.esmtp_features["auth"].split(), ["PLAIN", "LOGIN"])
            self.assertNotIn("starttls", s.esmtp_features)
            code, _ = s.login("alice@example.org", "alice-secret")
            s.sendmail("alice@example.org", ["bob@example.org"],
                       b"From: alice@example.org\r\nSubject: tls\r\n\r\nx\r\n")
            return code

        code = yield self.smtp(send)
        self.assertEqual(code, 235)
        [msg] = stack.messages("bob@example.org")
        self.assertRegex(msg, rb"\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)\r\n")
        self.assertIn(b"(authenticated sender: alice@example.org)", msg)
        self.assertIn(b"with ESMTPSA id", msg)

    @defer.inlineCallbacks
    def test_startTLSAuthLogin(self) -> Any:
        """AUTH LOGIN (full challenge exchange) after STARTTLS."""
        stack = self.startServer(role="submission", cleartext="tls-only")

        def send(s: smtplib.SMTP) -> Any:
            s.starttls(context=clientContext())
            s.ehlo()
            s.user, s.password = "bob@example.org", "bob-secret"
            code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
            s.sendmail("bob@example.org", ["alice@example.org"],
                       b"From: bob@example.org\r\nSubject: login\r\n\r\nx\r\n")
            return code

        self.assertEqual((yield self.smtp(send)), 235)
        self.assertEqual(len(stack.messages("alice@example.org")), 1)

    @defer.inlineCallbacks
    def test_forgedFromHeaderRefused(self) -> Any:
        """Alice, logged in, cannot send a message whose From: names Bob: 550 5.7.1 after
        DATA, and nothing reaches a mailbox."""
        stack = self.startServer(role="submission", cleartext="tls-only")

        def send(s: smtplib.SMTP) -> Any:
            s.starttls(context=clientContext())
            s.ehlo()
            s.login("alice@example.org", "alice-secret")
            try:
                s.sendmail("alice@example.org", ["bob@example.org"],
                           b"From: Bob <bob@example.org>\r\nSubject: forged\r\n\r\nx\r\n")
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error
            return None

        code, text = yield self.smtp(send)
        self.assertEqual((code, text), (550, b"5.7.1 From: header address <bob@example.org>"
                                             b" not owned by alice@example.org"))
        self.assertEqual(stack.messages("bob@example.org"), [])

    @defer.inlineCallbacks
    def test_badPassword(self) -> Any:
        """A wrong password is refused with 535 5.7.8 and nothing can be sent."""
        self.startServer(role="submission")

        def send(s: smtplib.SMTP) -> Any:
            s.ehlo()
            try:
                s.login("alice@example.org", "wrong")
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code, e.smtp_error, s.mail("alice@example.org")
            return None

        code, text, mail = yield self.smtp(send)
        self.assertEqual((code, text), (535, b"5.7.8 Authentication credentials invalid"))
        self.assertEqual(mail, (530, b"5.7.0 Authentication required"))


class ImplicitTLSTests(LiveServerMixin, TestCase):
    """Port 465 style: the tap wraps the factory in TLSMemoryBIOFactory."""

    @defer.inlineCallbacks
    def test_smtpsAuth(self) -> Any:
        """Over implicit TLS AUTH is offered under tls-only, STARTTLS is not; mail is traced."""
        from twisted.protocols.tls import TLSMemoryBIOFactory

        stack = self.startServer(role="submission", cleartext="tls-only")
        ctx = stack.factory.tlsContext
        factory = SMTPFactory(stack.config, stack.gate, stack.portal, ctx, "submission",
                              True, reactor)
        port = reactor.listenTCP(0, TLSMemoryBIOFactory(ctx, False, factory),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def send() -> Any:
            with smtplib.SMTP_SSL("127.0.0.1", port.getHost().port, timeout=20,
                                  context=clientContext()) as s:
                s.ehlo()
                features = dict(s.esmtp_features)
                s.login("alice@example.org", "alice-secret")
                s.sendmail("alice@example.org", ["bob@example.org"],
                           b"From: alice@example.org\r\nSubject: 465\r\n\r\nx\r\n")
                return features

        features = yield threads.deferToThread(send)
        self.assertNotIn("starttls", features)
        self.assertEqual(features["auth"].split(), ["PLAIN", "LOGIN"])
        [msg] = stack.messages("bob@example.org")
        self.assertRegex(msg, rb"\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)\r\n")
        self.assertIn(b"with ESMTPSA id", msg)


class RawTLSInjectionTests(LiveServerMixin, TestCase):
    """STARTTLS command injection over a real loopback TLS connection."""

    def test_injectedRSETNeverAnswered(self) -> defer.Deferred[Any]:
        """'STARTTLS\\r\\nRSET\\r\\n' in one write: after TLS only NOOP and QUIT answer."""
        self.startServer()

        def client() -> bytes:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=20)
            try:
                reader = sock.makefile("rb")
                reader.readline()
                sock.sendall(b"EHLO client.example\r\n")
                while reader.readline()[3:4] == b"-":
                    pass
                sock.sendall(b"STARTTLS\r\nRSET\r\n")
                line = b""
                while not line.endswith(b"\r\n"):
                    line += sock.recv(1)
                assert line == b"220 2.0.0 Ready to start TLS\r\n", line
                tlsSock = clientContext().wrap_socket(sock)
                tlsSock.sendall(b"NOOP\r\nQUIT\r\n")
                data = b""
                while True:
                    chunk = tlsSock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data
            finally:
                sock.close()

        d = threads.deferToThread(client)
        d.addCallback(self.assertEqual, b"250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n")
        return d


class OneIdTests(LiveServerMixin, TestCase):
    """A message has one id: the one in the 250 reply names the queue file, and is in the
    Received headers and in every log line about the message."""

    def setUp(self) -> None:
        """Collect log events."""
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, fragment: str) -> list[str]:
        """The formatted log lines holding C{fragment}."""
        return [line for line in (formatEvent(e) for e in self.events) if fragment in line]

    async def settled(self, queue: Queue, qid: str) -> None:
        """Wait (on the real reactor) until every recipient of C{qid} was tried once and
        the queue is idle."""
        for _ in range(400):
            env = queue.queued().get(qid)
            if env is not None and all(r.attempts for r in env.recipients) and not queue.busy:
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"queue did not settle: {queue.queued()}")

    async def test_replyIdIsQueueId(self) -> None:
        """Submit over a real socket to a local user and three remote ones (relayed,
        deferred, bounced); the 250 reply's id is the queue file's, and the received,
        delivered-locally, queued, relayed, deferred and bounced log lines all carry it."""
        stack = self.startServer(role="submission", cleartext="tls-only")
        smarthost = ScriptedSMTPFactory(rcptReplies={
            "later@remote.example": ["451 4.3.0 try again later"],
            "gone@remote.example": ["550 5.1.1 no such user"]})
        port = smarthost.listen(self)
        config = dataclasses.replace(stack.config, relay=RelayConfig(
            smarthost=f"127.0.0.1:{port}", smarthost_tls="opportunistic",
            command_timeout=10, connect_timeout=5))
        bounces: list[tuple[str, bytes]] = []

        def localDelivery(rcpt: str, data: bytes) -> defer.Deferred[None]:
            bounces.append((rcpt, data))
            return defer.succeed(None)

        queueDir = os.path.join(stack.base, "queue")
        queue = Queue(queueDir, stack.avatars.runner, reactor, config, HOSTNAME, localDelivery)
        stack.avatars.queue = queue
        queue.service.startService()
        self.addCleanup(queue.service.stopService)
        await queue.service.whenStarted()

        def send(s: smtplib.SMTP) -> Any:
            s.starttls(context=clientContext())
            s.ehlo()
            s.login("alice@example.org", "alice-secret")
            s.mail("alice@example.org")
            for rcpt in ("bob@example.org", "friend@remote.example", "later@remote.example",
                         "gone@remote.example"):
                s.rcpt(rcpt)
            return s.data(b"From: alice@example.org\r\nSubject: one id\r\n\r\nHello.\r\n")

        code, text = await threads.deferToThread(lambda: self.smtpSession(send))
        self.assertEqual(code, 250)
        match = re.fullmatch(rb"2\.0\.0 Ok: queued as ([0-9A-F]{22})", text)
        assert match is not None, text
        qid = match.group(1).decode()
        self.assertTrue(os.path.exists(os.path.join(queueDir, "msg", qid)))
        self.assertTrue(os.path.exists(os.path.join(queueDir, "env", qid)))
        await self.settled(queue, qid)

        [copy] = stack.messages("bob@example.org")
        self.assertIn(f" id {qid}\r\n".encode(), copy)
        [relayed] = smarthost.messages
        self.assertEqual(relayed.rcpts, ["friend@remote.example"])
        self.assertIn(f" id {qid};\r\n".encode(), relayed.data)
        self.assertEqual([rcpt for rcpt, _data in bounces], ["alice@example.org"])
        self.assertIn(qid.encode(), bounces[0][1])

        for fragment in (f"{qid}: from=<alice@example.org>",
                         f"{qid}: to=<bob@example.org> delivered to mailbox",
                         f"queue {qid}: from=<alice@example.org>",
                         f"queue {qid}: to=<friend@remote.example> delivered",
                         f"queue {qid}: to=<later@remote.example> temporary",
                         f"queue {qid}: to=<gone@remote.example> permanent",
                         f"queue {qid}: failed notice "):
            starting = [line for line in self.lines(fragment) if line.startswith(fragment)]
            self.assertEqual(len(starting), 1, (fragment, self.lines(qid)))
        ids = {m for line in self.lines("@") for m in re.findall(r"\b[0-9A-F]{12,}\b", line)}
        notice = re.search(r"notice ([0-9A-F]+)", self.lines("failed notice")[0])
        assert notice is not None
        self.assertEqual(ids - {notice.group(1)}, {qid})

    def smtpSession(self, func: Any) -> Any:
        """Run C{func(smtp)} with a connected smtplib client (blocking: in a thread)."""
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example",
                          timeout=20) as s:
            return func(s)
