"""fetchmail against pymaild's POP3 over STLS, on a loopback listener.

The server runs in the test's reactor (``LoopbackServer``: real store, passwd checker,
thread pool, self-signed certificate) with ``auth.cleartext = tls-only``, so a login
only succeeds if fetchmail really negotiated STLS. fetchmail runs as a child process
with a generated rc file (mode 0600) in a temporary HOME/FETCHMAILHOME, delivering
each message through ``--mda`` into one file per run.

Without fetchmail installed the tests are skipped, except under CI (``CI=true``) where
a missing client is a failure.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.trial.unittest import TestCase

from tests.support import requireClient
from tests.test_pop3_helpers import ALICE, ALICE_PW, LoopbackServer, makeMessage

SUBJECT = re.compile(rb"^Subject: (fm-\d+)\r?$", re.M)


class FetchmailTests(TestCase):
    """fetchmail downloads over STLS; 'keep' uses UIDL to fetch nothing twice."""

    timeout = 120

    def setUp(self) -> None:
        """Find fetchmail (skip, or fail under CI) and start the server."""
        self.fetchmail = requireClient("fetchmail")
        self.server = LoopbackServer(self, cleartext="tls-only")
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home, mode=0o700)
        self.messages = [
            makeMessage(f"fm-{i}", b"line one\r\n.line with a dot\r\n.\r\nlast\r\n")
            for i in range(3)
        ]
        self.server.deliver(*self.messages)
        self.runs = 0

    def writeRC(self, keep: bool, out: str) -> str:
        """Write the rc file (mode 0600) for one poll; return its path."""
        rc = os.path.join(self.home, "fetchmailrc")
        text = (
            "set no syslog\n"
            "set no bouncemail\n"
            f"poll 127.0.0.1 service {self.server.port} protocol pop3 auth password uidl\n"
            f'    user "{ALICE}" there with password "{ALICE_PW}"\n'
            '    sslproto "TLS1.2+" no sslcertck\n'
            f"    {'keep' if keep else 'no keep'}\n"
            f'    mda "cat >> {out}"\n'
        )
        fd = os.open(rc, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(rc, 0o600)
        return rc

    @defer.inlineCallbacks
    def fetch(self, keep: bool) -> Any:
        """Run fetchmail once; return (exit code, subjects delivered, output)."""
        self.runs += 1
        out = os.path.join(self.home, f"delivered-{self.runs}")
        open(out, "wb").close()
        rc = self.writeRC(keep, out)
        env = {
            "HOME": self.home,
            "FETCHMAILHOME": self.home,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
        }
        args = ["-f", rc, "-i", os.path.join(self.home, "fetchids"), "--nosyslog", "-v",
                "-d0"]
        d = utils.getProcessOutputAndValue(self.fetchmail, args, env=env, path=self.home)
        d.addTimeout(90, reactor)
        stdout, stderr, code = yield d
        with open(out, "rb") as f:
            delivered = SUBJECT.findall(f.read())
        return code, [s.decode() for s in delivered], (stdout + stderr).decode(errors="replace")

    def stlsSessions(self) -> int:
        """How many server sessions started TLS with STLS."""
        return sum(1 for p in self.server.factory.protocols if p._tlsStarted)

    @defer.inlineCallbacks
    def test_keep(self) -> Any:
        """With 'keep' the first run fetches all three, a second run fetches nothing new
        (UIDL), a new message is the only one fetched next; nothing is deleted."""
        code, got, log = yield self.fetch(keep=True)
        self.assertEqual(code, 0, log)
        self.assertEqual(got, ["fm-0", "fm-1", "fm-2"], log)
        self.assertIn("STLS", log)
        code, got, log = yield self.fetch(keep=True)
        self.assertEqual(code, 1, log)  # 1 = no new mail
        self.assertEqual(got, [], log)
        self.server.deliver(makeMessage("fm-3", b"new\r\n"))
        code, got, log = yield self.fetch(keep=True)
        self.assertEqual(code, 0, log)
        self.assertEqual(got, ["fm-3"], log)
        self.assertEqual(self.server.inboxCount(), 4)
        self.assertEqual(self.stlsSessions(), 3)

    @defer.inlineCallbacks
    def test_noKeep(self) -> Any:
        """Without 'keep' fetchmail downloads everything and the mailbox ends empty; the
        bodies arrive unstuffed and complete."""
        code, got, log = yield self.fetch(keep=False)
        self.assertEqual(code, 0, log)
        self.assertEqual(sorted(got), ["fm-0", "fm-1", "fm-2"], log)
        yield defer.DeferredList(self.server.factory.lost)
        self.assertEqual(self.server.inboxCount(), 0)
        with open(os.path.join(self.home, "delivered-1"), "rb") as f:
            data = f.read().replace(b"\r\n", b"\n")
        self.assertEqual(data.count(b"\n.line with a dot\n.\nlast\n"), 3)
        code, got, log = yield self.fetch(keep=False)
        self.assertEqual(code, 1, log)
        self.assertEqual(got, [])
        self.assertEqual(self.stlsSessions(), 2)
