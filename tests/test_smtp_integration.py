"""The SMTP server on real sockets (127.0.0.1:0): smtplib and a raw TLS client.

The server runs in the test's reactor with a real thread pool for disk work (as the tap
wires it); the clients run in threads. Covered: plain delivery, SMTPUTF8, STARTTLS with
AUTH PLAIN and AUTH LOGIN, a wrong password, and STARTTLS command injection over a real
TLS handshake.
"""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from pymaild import tls
from pymaild.auth.penalty import AuthPenalty
from pymaild.smtp.server import SMTPFactory
from pymaild.threads import ThreadRunner, makePool
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
