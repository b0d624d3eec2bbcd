"""Sieve end to end through a real C{twistd pymaild} process: a script uploaded over
ManageSieve (sievelib, after STARTTLS) files a message delivered over SMTP into a
folder an IMAP client then sees, and its vacation reply reaches the sender once.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import ssl
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pymaild.auth.passwd import PasswdFile
from tests.support import ServerProcess, missing

SCRIPT = """require ["fileinto", "mailbox", "imap4flags", "vacation"];
if header :contains "subject" "report" {
  addflag "$Report";
  fileinto :create "Reports/2026";
}
vacation :days 1 :subject "Away until Monday" "I read mail on Monday.";
"""


def message(subject: str) -> bytes:
    """A message from Bob to Alice."""
    return (f"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\nHello.\r\n"
            ).encode()


def insecure() -> ssl.SSLContext:
    """A client context accepting the server's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SieveEndToEndTests(SynchronousTestCase):
    """ManageSieve in, SMTP in, IMAP out, vacation back."""

    def setUp(self) -> None:
        """A server with Alice and Bob."""
        try:
            from sievelib.managesieve import Client  # noqa: F401
        except ImportError:
            missing("sievelib", "pip install sievelib")
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        passwd = PasswdFile(os.path.join(self.data, "passwd"))
        passwd.add("alice@example.org", "wonderland")
        passwd.add("bob@example.org", "builder")
        self.server = ServerProcess(self.data).start()
        self.addCleanup(self.server.stop)

    def imap(self, user: str, password: str) -> imaplib.IMAP4:
        """A logged-in IMAP session over STARTTLS."""
        imap = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=30)
        imap.starttls(insecure())
        imap.login(user, password)
        return imap

    def upload(self) -> None:
        """Upload and activate the script with sievelib over STARTTLS."""
        from sievelib.managesieve import Client

        cert = os.path.join(self.data, "tls", "cert.pem")
        old = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = cert
        try:
            c = Client("localhost", self.server.ports["managesieve"])
            self.assertTrue(c.connect("alice@example.org", "wonderland", starttls=True,
                                      authmech="PLAIN"))
            self.assertTrue(c.putscript("rules", SCRIPT))
            self.assertTrue(c.setactive("rules"))
            c.logout()
        finally:
            if old is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = old

    def send(self, subject: str) -> None:
        """Bob sends Alice a message over submission (AUTH after STARTTLS)."""
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as s:
            s.starttls(context=insecure())
            s.login("bob@example.org", "builder")
            self.assertEqual(s.sendmail("bob@example.org", ["alice@example.org"],
                                        message(subject)), {})

    def waitFor(self, check: Any, timeout: float = 60.0) -> Any:
        """Poll C{check()} until it returns something true."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.5)

    def test_fileAndVacation(self) -> None:
        """The report lands in Reports/2026 with its flag; the other in INBOX; Bob gets
        exactly one vacation reply for the two messages."""
        self.upload()
        self.send("monthly report")
        self.send("lunch")
        alice = self.imap("alice@example.org", "wonderland")
        typ, folders = alice.list()
        self.assertTrue(any(b'"Reports/2026"' in f or b" Reports/2026" in f for f in folders),
                        folders)
        typ, data = alice.select('"Reports/2026"')
        self.assertEqual(data, [b"1"])
        typ, data = alice.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertIn(b"$Report", data[0][0])
        self.assertIn(b"monthly report", data[0][1])
        typ, data = alice.select("INBOX")
        self.assertEqual(data, [b"1"])
        alice.logout()

        def replies() -> list[bytes]:
            bob = self.imap("bob@example.org", "builder")
            try:
                typ, data = bob.select("INBOX")
                if data == [b"0"]:
                    return []
                typ, data = bob.fetch("1:*", "(BODY.PEEK[])")
                return [d[1] for d in data if isinstance(d, tuple)]
            finally:
                bob.logout()

        got = self.waitFor(replies)
        self.assertEqual(len(got), 1, got)
        self.assertIn(b"Subject: Away until Monday", got[0])
        self.assertIn(b"Auto-Submitted: auto-replied", got[0])
        self.assertIn(b"I read mail on Monday.", got[0])
        time.sleep(3)
        self.assertEqual(len(replies()), 1)
