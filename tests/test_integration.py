"""End to end: a real ``twistd -n pymaild`` subprocess, driven by Python's mail clients.

A message sent with smtplib is read back with poplib and imaplib, byte-identical apart
from the trace headers the server adds; a fresh data directory gets a postmaster
account whose password is printed once and works.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import smtplib
import ssl

from twisted.trial.unittest import SynchronousTestCase

from pymaild.auth.passwd import PasswdFile
from tests.support import ServerProcess

MESSAGE = (
    b"From: Bob <bob@remote.example>\r\n"
    b"To: Alice <alice@example.org>\r\n"
    b"Subject: end to end\r\n"
    b"Message-ID: <e2e-1@remote.example>\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"\r\n"
    b"Hello Alice,\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..two dots\r\n" + b"x" * 900 + b"\r\n" * 3 + b"bye\r\n"
)
TRACE = re.compile(rb"^(Return-Path|Delivered-To|Received):.*?\r\n(?![ \t])", re.S | re.I)


def stripTrace(raw: bytes) -> tuple[bytes, list[bytes]]:
    """Remove the trace headers the server prepended; return the rest and their names."""
    names = []
    while True:
        m = TRACE.match(raw)
        if not m:
            return raw, names
        names.append(m.group(1).lower())
        raw = raw[m.end():]


def insecure() -> ssl.SSLContext:
    """A client context that accepts the server's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class EndToEndTests(SynchronousTestCase):
    """SMTP in, POP3 and IMAP out, through a real server process."""

    def setUp(self) -> None:
        """Start a server with one user, alice@example.org."""
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        PasswdFile(os.path.join(self.data, "passwd")).add("alice@example.org", "wonderland")
        self.server = ServerProcess(self.data).start()
        self.addCleanup(self.server.stop)

    def test_smtpToPop3AndImap(self) -> None:
        """A message sent with smtplib reads back identically through POP3 and IMAP."""
        ports = self.server.ports
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
            s.ehlo("client.remote.example")
            refused = s.sendmail("bob@remote.example", ["alice@example.org"], MESSAGE)
            self.assertEqual(refused, {})
            code, _ = s.rcpt("nobody@example.org")
            self.assertEqual(code, 503)  # no MAIL yet after the completed transaction
            s.mail("bob@remote.example")
            code, msg = s.rcpt("nobody@example.org")
            self.assertEqual(code, 550)
            self.assertIn(b"5.1.1", msg)

        imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30)
        imap.starttls(insecure())
        imap.login("alice@example.org", "wonderland")
        typ, data = imap.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        typ, data = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        self.assertEqual(typ, "OK")
        viaImap = data[0][1]
        imap.logout()

        pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
        pop.stls(insecure())
        pop.user("alice@example.org")
        pop.pass_("wonderland")
        self.assertEqual(pop.stat()[0], 1)
        _resp, lines, octets = pop.retr(1)
        viaPop = b"\r\n".join(lines) + b"\r\n"
        self.assertEqual(octets, len(viaPop))
        pop.dele(1)
        pop.quit()

        self.assertEqual(viaPop, viaImap)
        body, names = stripTrace(viaImap)
        self.assertEqual(body, MESSAGE)
        self.assertEqual(set(names), {b"return-path", b"delivered-to", b"received"})

        pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
        pop.user("alice@example.org")
        pop.pass_("wonderland")
        self.assertEqual(pop.stat()[0], 0)
        pop.quit()

    def test_uidsPersistAcrossRestart(self) -> None:
        """UIDVALIDITY and UIDs seen over IMAP are the same after a restart."""
        ports = self.server.ports
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
            for _ in range(3):
                s.sendmail("bob@remote.example", ["alice+tag@example.org"], MESSAGE)

        def uids(port: int) -> tuple[bytes, bytes]:
            imap = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            imap.login("alice@example.org", "wonderland")
            imap.select("INBOX")
            validity = imap.response("UIDVALIDITY")[1][0]
            _typ, data = imap.uid("SEARCH", "ALL")
            imap.logout()
            return validity, data[0]

        before = uids(ports["imap"])
        self.assertEqual(before[1], b"1 2 3")
        self.server.stop()
        self.server = ServerProcess(self.data).start()
        self.addCleanup(self.server.stop)
        self.assertEqual(uids(self.server.ports["imap"]), before)


class FirstStartTests(SynchronousTestCase):
    """The embedded default on an empty data directory."""

    def test_postmasterCreated(self) -> None:
        """With no user, postmaster@<domain> is created and its password logged once."""
        data = os.path.abspath(self.mktemp())
        server = ServerProcess(data, listeners=("imaps", "smtp"))
        server.start()
        self.addCleanup(server.stop)
        match = re.search(r"created postmaster@example\.org with password (\S+)", server.log())
        self.assertIsNotNone(match, server.log())
        assert match is not None
        imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=insecure())
        imap.login("postmaster@example.org", match.group(1))
        imap.logout()
        self.assertTrue(os.path.exists(os.path.join(data, "tls", "cert.pem")))
        self.assertRegex(server.log(), r"SHA-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}")
        server.stop()
        before = len(server.log())
        server = ServerProcess(data, listeners=("smtp",))
        server.start()
        self.addCleanup(server.stop)
        self.assertNotIn("created postmaster", server.log()[before:])

    def test_badOptionOneLine(self) -> None:
        """A bad option or config value prints one line naming the problem, no traceback."""
        import subprocess
        import sys

        from tests.support import ROOT

        env = dict(os.environ, PYTHONPATH=ROOT)
        cfg = os.path.abspath(self.mktemp() + ".toml")
        with open(cfg, "w") as f:
            f.write('[auth]\ncleartext = "sometimes"\n')
        for extra in (["--config", cfg], ["--cleartext-auth", "never"]):
            p = subprocess.run(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "pymaild", *extra],
                cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=60)
            self.assertNotEqual(p.returncode, 0)
            self.assertNotIn("Traceback", p.stdout + p.stderr)
            self.assertIn("auth.cleartext", p.stdout + p.stderr)
