"""Interoperability: the swaks SMTP test tool against pymaild's SMTP server.

swaks runs as a subprocess against a listener on 127.0.0.1:0 (MX or submission role)
backed by a real Maildir store. The tests are skipped when swaks is not installed,
except under CI (C{CI=true}), where a missing swaks is a failure: CI must install it
(C{apt-get install swaks}). swaks speaks TLS only with the Perl module Net::SSLeay
(C{libnet-ssleay-perl}, which Debian's swaks merely recommends): the STARTTLS tests are
skipped without it, and fail under CI, as for a missing program.
"""

from __future__ import annotations

import subprocess
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.support import missing, requireClient
from tests.test_smtp_integration import LiveServerMixin


def requireSwaksTLS() -> None:
    """Make sure the installed swaks can do STARTTLS (its C{--support} report).

    @raise SkipTest: Net::SSLeay is missing (outside CI).
    @raise AssertionError: swaks or Net::SSLeay is missing under CI.
    """
    done = subprocess.run([requireClient("swaks"), "--support"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    report = done.stdout + done.stderr
    if "=== TLS supported" not in report:
        missing("Net::SSLeay (swaks's TLS)", "apt-get install libnet-ssleay-perl")


class SwaksTests(LiveServerMixin, TestCase):
    """swaks sessions: plain delivery, STARTTLS + AUTH PLAIN/LOGIN, bad password, relaying."""

    def swaks(self, *args: str) -> defer.Deferred[tuple[int, str]]:
        """Run swaks against the test server; fire with (exit code, transcript)."""
        command = [requireClient("swaks"), "--server", "127.0.0.1", "--port", str(self.port),
                   "--ehlo", "client.example", "--timeout", "20", *args]

        def run() -> tuple[int, str]:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
            return done.returncode, done.stdout + done.stderr

        return threads.deferToThread(run)

    @defer.inlineCallbacks
    def test_plainDelivery(self) -> Any:
        """swaks delivers a message over plain SMTP to a local user."""
        stack = self.startServer()
        code, out = yield self.swaks("--from", "sender@remote.example",
                                     "--to", "alice@example.org",
                                     "--header", "Subject: swaks plain", "--body", "hello swaks")
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"<- {2}250 2\.0\.0 Ok: queued as [0-9A-F]{22}")
        [msg] = stack.messages("alice@example.org")
        self.assertIn(b"Subject: swaks plain\r\n", msg)
        self.assertIn(b"hello swaks\r\n", msg)
        self.assertIn(b"Received: from client.example ([127.0.0.1])\r\n", msg)

    @defer.inlineCallbacks
    def _tlsAuth(self, mechanism: str) -> Any:
        """STARTTLS then AUTH with C{mechanism} on submission; the message is stored."""
        requireSwaksTLS()
        stack = self.startServer(role="submission", cleartext="tls-only")
        code, out = yield self.swaks("-tls", "--auth", mechanism,
                                     "--auth-user", "alice@example.org",
                                     "--auth-password", "alice-secret",
                                     "--from", "alice@example.org", "--to", "bob@example.org",
                                     "--header", f"Subject: swaks {mechanism}")
        self.assertEqual(code, 0, out)
        self.assertIn("235 2.7.0 Authentication successful", out)
        [msg] = stack.messages("bob@example.org")
        self.assertIn(f"Subject: swaks {mechanism}".encode(), msg)
        self.assertIn(b"with ESMTPSA id", msg)
        self.assertRegex(msg, rb"\(using TLSv1\.[23] with cipher ")

    def test_startTLSAuthPlain(self) -> Any:
        """swaks -tls --auth PLAIN on submission."""
        return self._tlsAuth("PLAIN")

    def test_startTLSAuthLogin(self) -> Any:
        """swaks -tls --auth LOGIN on submission."""
        return self._tlsAuth("LOGIN")

    @defer.inlineCallbacks
    def test_wrongPassword(self) -> Any:
        """A wrong password makes swaks fail in AUTH (exit 28) with 535 5.7.8."""
        requireSwaksTLS()
        stack = self.startServer(role="submission", cleartext="tls-only")
        code, out = yield self.swaks("-tls", "--auth", "PLAIN",
                                     "--auth-user", "alice@example.org",
                                     "--auth-password", "not-the-password",
                                     "--from", "alice@example.org", "--to", "bob@example.org")
        self.assertEqual(code, 28, out)
        self.assertIn("535 5.7.8 Authentication credentials invalid", out)
        self.assertEqual(stack.messages("bob@example.org"), [])

    @defer.inlineCallbacks
    def test_relayRefused(self) -> Any:
        """An unauthenticated relay attempt is refused (no RCPT accepted, exit 24, 554 5.7.1)."""
        self.startServer()
        code, out = yield self.swaks("--from", "spammer@remote.example",
                                     "--to", "victim@elsewhere.example")
        self.assertEqual(code, 24, out)
        self.assertIn("554 5.7.1 <victim@elsewhere.example>: Relay access denied", out)

    @defer.inlineCallbacks
    def test_submissionNeedsAuth(self) -> Any:
        """On submission, swaks without AUTH is refused at MAIL with 530 5.7.0 (exit 23)."""
        self.startServer(role="submission")
        code, out = yield self.swaks("--from", "alice@example.org", "--to", "bob@example.org")
        self.assertEqual(code, 23, out)
        self.assertIn("530 5.7.0 Authentication required", out)
