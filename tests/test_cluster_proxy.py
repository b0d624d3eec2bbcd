"""pymaild behind nginx's mail proxy: auth_http, the PROXY protocol, XCLIENT.

A real C{twistd pymaild} with its C{auth_http} listener, and a real nginx
(L{tests.nginx_support.NginxMail}) in front of it; imaplib, poplib and smtplib connect
to nginx from 127.0.0.5, so the tests can tell the client's address from the proxy's
(127.0.0.1). The auth_http endpoint is also asked directly over HTTP, as nginx asks it.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.trial.unittest import TestCase

from pymaild.auth.passwd import PasswdFile
from tests.nginx_support import NginxMail
from tests.support import ServerProcess, freePort, lowCostHashing

SECRET = "a-shared-secret-for-tests"
CLIENT = "127.0.0.5"


class IMAPFrom(imaplib.IMAP4):
    """imaplib's client, connecting from a chosen loopback address."""

    source = CLIENT

    def _create_socket(self, timeout: Any) -> socket.socket:
        """A socket bound to L{source} before it connects."""
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


class IMAPFromElsewhere(IMAPFrom):
    """imaplib's client from 127.0.0.2, an address that is no proxy."""

    source = "127.0.0.2"


class POP3From(poplib.POP3):
    """poplib's client, connecting from L{CLIENT}."""

    def _create_socket(self, timeout: Any) -> socket.socket:
        """A socket bound to L{CLIENT} before it connects."""
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(CLIENT, 0))


def waitForText(read: Any, text: str, timeout: float = 10.0) -> bool:
    """Poll C{read()} until it contains C{text}."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in read():
            return True
        time.sleep(0.1)
    return False


class ProxyCase(TestCase):
    """A pymaild (one user, alice) that trusts 127.0.0.1 as its proxy."""

    def startServer(self) -> ServerProcess:
        """Start pymaild with IMAP, POP3, submission and auth_http listeners."""
        lowCostHashing(self)
        base = os.path.abspath(self.mktemp())
        data = os.path.join(base, "data")
        os.makedirs(data)
        PasswdFile(os.path.join(data, "passwd")).add("alice@example.org", "wonderland")
        config = os.path.join(base, "pymaild.toml")
        with open(config, "w") as f:
            f.write(f'[cluster]\nauth_http_secret = "{SECRET}"\n'
                    'trusted_proxies = ["127.0.0.1"]\n')
        self.authPort = freePort()
        server = ServerProcess(
            data, listeners=("imap", "pop3", "submission"),
            extra=["--config", config,
                   "--auth-http", f"tcp:{self.authPort}:interface=127.0.0.1"]).start()
        self.addCleanup(server.stop)
        return server

    def ask(self, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        """One auth_http request as nginx makes it; (status, response headers)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.authPort}/auth",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers)


class AuthHTTPTests(ProxyCase):
    """The endpoint itself, asked directly."""

    def login(self, password: str, attempt: int = 1, protocol: str = "imap",
              **extra: str) -> tuple[int, dict[str, str]]:
        """Ask about alice's login with C{password}."""
        headers = {"Auth-Method": "plain", "Auth-User": "Alice%40example.org",
                   "Auth-Pass": password, "Auth-Protocol": protocol,
                   "Auth-Login-Attempt": str(attempt), "Client-IP": "192.0.2.7",
                   "X-Pymaild-Secret": SECRET}
        headers.update(extra)
        return self.ask(headers)

    def test_answers(self) -> None:
        """OK with this node's address and the protocol's port; failures earn a
        growing Auth-Wait, none from the 10th attempt; no secret, no answer."""
        server = self.startServer()
        status, h = self.login("wonderland")
        self.assertEqual(status, 200)
        self.assertEqual((h["Auth-Status"], h["Auth-Server"], h["Auth-Port"], h["Auth-User"]),
                         ("OK", "127.0.0.1", str(server.ports["imap"]), "alice@example.org"))
        _s, h = self.login("wonderland", protocol="pop3")
        self.assertEqual(h["Auth-Port"], str(server.ports["pop3"]))
        _s, h = self.login("wonderland", protocol="smtp")
        self.assertEqual(h["Auth-Port"], str(server.ports["submission"]))
        waits = []
        for attempt in (1, 2, 3):
            status, h = self.login("wrong", attempt)
            self.assertEqual((status, h["Auth-Status"]), (200, "Invalid login or password"))
            self.assertNotIn("Auth-Server", h)
            waits.append(int(h["Auth-Wait"]))
        self.assertEqual(waits, [2, 4, 8])  # pymaild's penalty for 192.0.2.7
        _s, h = self.login("wrong", 10)
        self.assertNotIn("Auth-Wait", h)
        _s, h = self.login("wrong", 2, protocol="smtp")
        self.assertEqual(h["Auth-Error-Code"], "535 5.7.8")
        # A success forgives the address (as a direct login does).
        self.assertEqual(self.login("wonderland")[1]["Auth-Status"], "OK")
        self.assertEqual(self.login("wrong")[1]["Auth-Wait"], "2")
        _s, h = self.login("wonderland", **{"Auth-Method": "cram-md5"})
        self.assertNotEqual(h["Auth-Status"], "OK")
        self.assertNotIn("Auth-Wait", h)
        self.assertEqual(self.login("wonderland", **{"X-Pymaild-Secret": "nope"})[0], 403)
        headers = {"Auth-Method": "plain", "Auth-User": "alice@example.org",
                   "Auth-Pass": "wonderland", "Auth-Protocol": "imap"}
        self.assertEqual(self.ask(headers)[0], 403)
        self.assertNotIn("wonderland", server.log())


class NginxTests(ProxyCase):
    """imaplib, poplib and smtplib through a real nginx."""

    def setUp(self) -> None:
        """pymaild and nginx in front of it."""
        self.server = self.startServer()
        self.nginx = NginxMail(self.mktemp(), f"{self.authPort}/auth", SECRET).start()
        self.addCleanup(self.nginx.stop)

    def test_imap(self) -> None:
        """LOGIN through nginx reaches pymaild, which sees the client's address (the
        PROXY header) and sends its capabilities in the tagged OK; a wrong password
        gets NO and, after the Auth-Wait, another try on the same connection."""
        imap = IMAPFrom("127.0.0.1", self.nginx.ports["imap"], timeout=30)
        started = time.monotonic()
        self.assertRaises(imaplib.IMAP4.error, imap.login, "alice@example.org", "wrong")
        self.assertGreaterEqual(time.monotonic() - started, 1.5)  # nginx waited Auth-Wait
        typ, data = imap.login("alice@example.org", "wonderland")
        self.assertEqual(typ, "OK")
        self.assertIn(b"[CAPABILITY IMAP4rev1", data[0])
        self.assertEqual(imap.select("INBOX"), ("OK", [b"0"]))
        imap.logout()
        self.assertIn(f"imap: login alice@example.org from {CLIENT}", self.server.log())

    def test_pop3(self) -> None:
        """USER/PASS through nginx reaches pymaild with the client's address."""
        pop = POP3From("127.0.0.1", self.nginx.ports["pop3"], timeout=30)
        pop.user("alice@example.org")
        pop.pass_("wonderland")
        self.assertEqual(pop.stat(), (0, 0))
        pop.quit()
        self.assertIn(f"pop3: login alice@example.org from {CLIENT}", self.server.log())

    def test_proxyHeaderByHand(self) -> None:
        """A v1 header from the trusted proxy naming a far client (192.0.2.7): the
        session is that client's (the log names it), and LOGIN is allowed in clear, as
        the hop from the proxy is loopback; an invalid header ends the connection."""
        with socket.create_connection(("127.0.0.1", self.server.ports["imap"]), 30,
                                      source_address=("127.0.0.1", 0)) as s:
            s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 143\r\n")
            f = s.makefile("rb")
            self.assertTrue(f.readline().startswith(b"* OK"))
            s.sendall(b"a LOGIN alice@example.org wonderland\r\n")
            line = f.readline()
            self.assertTrue(line.startswith(b"a OK"), line)
        self.assertTrue(waitForText(self.server.log, "imap: login alice@example.org from"
                                                     " 192.0.2.7"))
        with socket.create_connection(("127.0.0.1", self.server.ports["imap"]), 30,
                                      source_address=("127.0.0.1", 0)) as s:
            s.sendall(b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n")
            try:
                got = s.recv(100)
            except ConnectionResetError:
                got = b""
            self.assertEqual(got, b"")

    def test_untrustedNeedsNoHeader(self) -> None:
        """Straight to pymaild: the trusted proxy's address without a PROXY header is
        dropped; any other address is greeted as always."""
        with socket.create_connection(("127.0.0.1", self.server.ports["imap"]), 30,
                                      source_address=("127.0.0.1", 0)) as s:
            s.sendall(b"a LOGIN alice@example.org wonderland\r\n")
            try:
                got = s.recv(100)
            except ConnectionResetError:
                got = b""
            self.assertEqual(got, b"")
        imap = IMAPFromElsewhere("127.0.0.1", self.server.ports["imap"], timeout=30)
        imap.login("alice@example.org", "wonderland")
        imap.logout()


class SMTPFrom(smtplib.SMTP):
    """smtplib's client, connecting from L{CLIENT}."""

    def _get_socket(self, host: str, port: int, timeout: Any) -> socket.socket:
        """A socket bound to L{CLIENT} before it connects."""
        return socket.create_connection((host, port), timeout, source_address=(CLIENT, 0))


class NginxSMTPTests(ProxyCase):
    """Submission through nginx: nginx checks the password, pymaild gets XCLIENT."""

    setUp = NginxTests.setUp

    def test_submission(self) -> None:
        """AUTH at nginx, then MAIL through it: pymaild takes the user and the client's
        address from XCLIENT, and the stored copy's Received line names the client."""
        with SMTPFrom("127.0.0.1", self.nginx.ports["smtp"], timeout=30) as s:
            s.ehlo("client.example")
            self.assertRaises(smtplib.SMTPAuthenticationError, s.login,
                              "alice@example.org", "wrong")
        with SMTPFrom("127.0.0.1", self.nginx.ports["smtp"], timeout=30) as s:
            s.ehlo("client.example")
            s.login("alice@example.org", "wonderland")
            refused = s.sendmail("alice@example.org", ["alice@example.org"],
                                 b"From: alice@example.org\r\nSubject: via nginx\r\n\r\nhi\r\n")
            self.assertEqual(refused, {})
        self.assertIn(f"XCLIENT: alice@example.org from {CLIENT} via proxy 127.0.0.1",
                      self.server.log())
        new = os.path.join(self.server.data, "mail", "example.org", "alice", "Maildir", "new")
        deadline = time.monotonic() + 30
        while not os.listdir(new) and time.monotonic() < deadline:
            time.sleep(0.1)
        [name] = os.listdir(new)
        with open(os.path.join(new, name), "rb") as f:
            message = f.read()
        self.assertIn(CLIENT.encode(), message.split(b"\r\n\r\n")[0])


class XCLIENTTests(TestCase):
    """XCLIENT over the wire of the SMTP stack: only from a trusted proxy."""

    def stack(self, role: str = "mx") -> Any:
        """A stack that trusts 127.0.0.1 as its proxy, recording envelopes."""
        from pymaild.limits import parseNetworks
        from pymaild.smtp.checks import CheckChain
        from tests.test_smtp_checks import Recorder
        from tests.test_smtp_helpers import SMTPStack

        stack = SMTPStack(self, role=role)
        self.recorder = Recorder()
        stack.avatars.checks = CheckChain([self.recorder])
        stack.factory.trustedProxies = parseNetworks(["127.0.0.1"])
        return stack

    def test_untrusted(self) -> None:
        """From anywhere else XCLIENT is neither offered nor accepted."""
        c = self.stack().connect("192.0.2.1")
        self.assertNotIn(b"XCLIENT", c.ehlo())
        self.assertTrue(c.cmd("XCLIENT ADDR=198.51.100.7").startswith(b"550 5.7.0"))

    def test_trusted(self) -> None:
        """From the proxy: offered; bad attributes get 501; ADDR restarts the session
        as from that client, whose address the message checks see."""
        c = self.stack().connect("127.0.0.1")
        self.assertIn(b"XCLIENT ADDR LOGIN NAME HELO PROTO", c.ehlo())
        self.assertTrue(c.cmd("XCLIENT FOO=1").startswith(b"501 "))
        self.assertTrue(c.cmd("XCLIENT ADDR=not-an-ip").startswith(b"501 "))
        self.assertTrue(c.cmd("XCLIENT LOGIN=+ZZ").startswith(b"501 "))
        reply = c.cmd("XCLIENT ADDR=198.51.100.7 NAME=[UNAVAILABLE]")
        self.assertTrue(reply.startswith(b"220 mx.example.org"), reply)
        self.assertTrue(c.cmd("MAIL FROM:<s@remote.example>").startswith(b"503"))
        c.ehlo("client.example")
        replies = c.sendMail("s@remote.example", ["alice@example.org"],
                             b"Subject: x\r\n\r\nbody\r\n")
        self.assertTrue(replies[-1].startswith(b"250 "), replies)
        [(envelope, _message)] = self.recorder.seen
        self.assertEqual(envelope.client, "198.51.100.7")
        self.assertIsNone(envelope.user)

    def test_login(self) -> None:
        """XCLIENT LOGIN makes the session the user's, as after AUTH: submission's MAIL
        needs no AUTH then, and the checks see the user."""
        stack = self.stack(role="submission")
        c = stack.connect("127.0.0.1")
        c.ehlo()
        self.assertTrue(c.cmd("MAIL FROM:<alice@example.org>").startswith(b"530 "))
        self.assertTrue(c.cmd("XCLIENT ADDR=198.51.100.7 LOGIN=Alice+40example.org")
                        .startswith(b"220 "))
        c.ehlo("client.example")
        replies = c.sendMail("alice@example.org", ["bob@example.org"],
                             b"From: alice@example.org\r\nSubject: x\r\n\r\nbody\r\n")
        self.assertTrue(replies[-1].startswith(b"250 "), replies)
        [(envelope, _message)] = self.recorder.seen
        self.assertEqual((envelope.user, envelope.client),
                         ("alice@example.org", "198.51.100.7"))
