"""``pymaild-admin status`` against a running server (L{pymaild.status})."""

from __future__ import annotations

import imaplib
import io
import os
import smtplib
import socket
import ssl

from twisted.trial.unittest import SynchronousTestCase

from pymaild.admin import main
from tests.support import ServerProcess, dataWithUsers, freePort

USER = "alice@example.org"
PASSWORD = "alice-secret-pw"


class StatusTests(SynchronousTestCase):
    """The status command reads the data and asks the running server."""

    def setUp(self) -> None:
        """A server whose configuration file names its listeners (so the command sees
        the same ports), with a smarthost that refuses connections."""
        base, self.data = dataWithUsers(self, {USER: PASSWORD})
        self.server = ServerProcess(self.data, "example.org",
                                    listeners=("submission", "imap", "metrics"))
        self.config = os.path.join(base, "pymaild.toml")
        ports = self.server.ports
        self.lmtp, self.authHTTP = freePort(), freePort()
        with open(self.config, "w") as f:
            f.write(f'[server]\ndata = "{self.data}"\nhostname = "mail.example.org"\n'
                    'domains = ["example.org"]\n[listen]\nsmtp = []\nsmtps = []\n'
                    'pop3 = []\npop3s = []\nimaps = []\nhttp = []\nhttps = []\n'
                    f'submission = ["tcp:{ports["submission"]}:interface=127.0.0.1"]\n'
                    f'imap = ["tcp:{ports["imap"]}:interface=127.0.0.1"]\n'
                    f'metrics = ["tcp:{ports["metrics"]}:interface=127.0.0.1"]\n'
                    f'lmtp = ["tcp:{self.lmtp}:interface=127.0.0.1"]\n'
                    f'auth_http = ["tcp:{self.authHTTP}:interface=127.0.0.1"]\n'
                    '[cluster]\nauth_http_secret = "0123456789abcdef0123"\n'
                    f'[relay]\nsmarthost = "127.0.0.1:{freePort()}"\n'
                    'smarthost_tls = "opportunistic"\n')
        self.server.extra = ["--config", self.config]

    def status(self) -> str:
        """Run C{pymaild-admin --config FILE status}; its output."""
        out = io.StringIO()
        self.assertEqual(main(["--config", self.config, "status"], stdout=out), 0)
        return out.getvalue()

    def test_running(self) -> None:
        """Users, the listeners (the cluster's LMTP and auth_http too), the queue, the
        certificate, and the server's open sessions."""
        self.server.start()
        self.addCleanup(self.server.stop)
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as s:
            s.starttls(context=ssl._create_unverified_context())
            s.login(USER, PASSWORD)
            s.sendmail(USER, ["far@remote.example"],
                       f"From: {USER}\r\nSubject: out\r\n\r\nout\r\n".encode())
        imap = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"])
        self.addCleanup(imap.logout)
        lmtp = socket.create_connection(("127.0.0.1", self.lmtp), timeout=30)
        self.addCleanup(lmtp.close)
        self.assertTrue(lmtp.recv(512).startswith(b"220 "))
        out = self.status()
        self.assertIn("users         1\n", out)
        self.assertRegex(out, r"queue         1 message\(s\), 0 held, oldest \d+ s\n")
        self.assertIn("names example.org, localhost, mail.example.org\n", out)
        self.assertRegex(out, r"\((36[45]\d) days left\)")
        self.assertIn("server        running", out)
        self.assertIn("imap 1", out)
        self.assertIn("listen pop3       off\n", out)
        self.assertIn(f"listen lmtp       tcp:{self.lmtp}:interface=127.0.0.1\n", out)
        self.assertIn(f"listen auth_http  tcp:{self.authHTTP}:interface=127.0.0.1\n", out)
        self.assertIn("lmtp 1", out)
        self.assertIn("received      1 message(s)", out)

    def test_stopped(self) -> None:
        """With the server stopped, the data is still reported and the server is said
        not to answer."""
        out = self.status()
        self.assertIn("queue         empty\n", out)
        self.assertIn("server        not answering at http://127.0.0.1:", out)
