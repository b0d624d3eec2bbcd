"""offlineimap one-way (server to local Maildir) against pymaild's IMAP over STARTTLS.

The server runs in the test's reactor with ``auth.cleartext = tls-only`` and a
self-signed certificate that offlineimap is told to trust (``sslcacertfile``), so the
sync only works over a verified STARTTLS. The remote repository is read-only: the test
checks the first download, then that new mail, new folders and flag changes on the
server arrive in a second run while nothing changes on the server.

Without offlineimap installed the tests are skipped, except under CI (``CI=true``)
where a missing client is a failure.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer, utils
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support import requireClient
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, makeMessage

SUBJECT = re.compile(rb"^Subject: (\S+)\r?$", re.M)


def localMessages(path: str) -> dict[str, str]:
    """Subject -> maildir flag letters of the messages in a local Maildir folder."""
    out: dict[str, str] = {}
    for sub in ("cur", "new"):
        d = os.path.join(path, sub)
        if not os.path.isdir(d):
            continue
        for fn in os.listdir(d):
            with open(os.path.join(d, fn), "rb") as f:
                m = SUBJECT.search(f.read())
            if m:
                out[m.group(1).decode()] = fn.rpartition(":2,")[2] if ":2," in fn else ""
    return out


ATTEMPTS = 6
"""Runs of offlineimap per sync before a client-side stall or crash fails the test."""


def _killedBySignal(failure: Failure) -> Any:
    """getProcessOutputAndValue's failure for a process killed by a signal, which
    carries (out, err, signal), as (out, err, -signal); other failures as they are."""
    if isinstance(failure.value, tuple):
        out, err, signum = failure.value
        return out, err, -signum
    return failure


class OfflineimapTests(TestCase):
    """One-way download with a read-only remote."""

    timeout = 600

    def setUp(self) -> None:
        """Find offlineimap (skip, or fail under CI), start the server, write the rc."""
        self.offlineimap = requireClient("offlineimap", "offlineimap3")
        self.srv = ClientServer(self, cleartext="tls-only")
        self.home = os.path.abspath(self.mktemp())
        self.local = os.path.join(self.home, "mail")
        os.makedirs(self.local)
        self.rc = os.path.join(self.home, "offlineimaprc")
        with open(self.rc, "w") as f:
            f.write(
                "[general]\naccounts = pymaild\n"
                f"metadata = {self.home}/meta\nsocktimeout = 15\n\n"
                "[Account pymaild]\nlocalrepository = local\nremoterepository = remote\n\n"
                f"[Repository local]\ntype = Maildir\nlocalfolders = {self.local}\n\n"
                "[Repository remote]\ntype = IMAP\nremotehost = 127.0.0.1\n"
                f"remoteport = {self.srv.portNumber}\nremoteuser = {ALICE}\n"
                f"remotepass = {ALICE_PW}\nssl = no\nstarttls = yes\n"
                f"sslcacertfile = {self.srv.cert}\nreadonly = True\n"
                "auth_mechanisms = PLAIN, LOGIN\n"
            )

    @defer.inlineCallbacks
    def sync(self) -> Any:
        """Run offlineimap once; fail the test on a non-zero exit or a reported error."""
        env = {"HOME": self.home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "LC_ALL": "C.UTF-8"}
        # offlineimap's imaplib2 sometimes stalls reading the first reply after
        # STARTTLS (seen about one run in three here, never with mbsync, imaplib or
        # imapclient on the same server), and once in a few dozen runs the client
        # process died of SIGSEGV right after connecting; such a run is retried (up to
        # five times: this test syncs twice, and three stalls in a row
        # were seen), any other error fails.
        for attempt in range(ATTEMPTS):
            run = utils.getProcessOutputAndValue(
                self.offlineimap, ["-c", self.rc, "-o", "-u", "basic"], env=env)
            run.addErrback(_killedBySignal)
            out, err, code = yield run
            text = (out + err).decode(errors="replace")
            stalled = "Failed to start TLS connection: command: CAPABILITY" in text
            if (stalled or code < 0) and attempt < ATTEMPTS - 1:
                continue
            if code != 0 or "ERROR" in text:
                self.fail(f"offlineimap exited {code} (negative: killed by that signal):"
                          f"\n{text}")
            return text

    @defer.inlineCallbacks
    def test_oneWay(self) -> None:
        """The account is downloaded; later server changes follow; the server is untouched."""
        srv = self.srv
        acct = srv.store.account(ALICE)
        srv.store.deliver([ALICE], makeMessage("first"))
        srv.store.deliver([ALICE], makeMessage("second"))
        acct.createFolder("Lists/Twisted")
        acct.folder("Lists/Twisted").append(makeMessage("list-1"), ("\\Seen", "\\Flagged"))

        yield self.sync()
        self.assertEqual(set(localMessages(os.path.join(self.local, "INBOX"))),
                         {"first", "second"})
        self.assertEqual(localMessages(os.path.join(self.local, "Lists.Twisted")),
                         {"list-1": "FS"})

        srv.store.deliver([ALICE], makeMessage("third"))
        inbox = acct.folder("INBOX")
        first = inbox.scan().messages[0]
        inbox.setFlags(first.key, {"\\Answered"})
        acct.createFolder("Later")
        acct.folder("Later").append(makeMessage("later-1"))

        yield self.sync()
        local = localMessages(os.path.join(self.local, "INBOX"))
        self.assertEqual(set(local), {"first", "second", "third"})
        self.assertEqual(local["first"], "R")
        self.assertEqual(set(localMessages(os.path.join(self.local, "Later"))), {"later-1"})
        # Read-only remote: downloading set no \\Seen and removed nothing on the server.
        after = {m.uid: m.flags for m in acct.folder("INBOX").scan().messages}
        self.assertEqual(sorted(after), [1, 2, 3])
        self.assertEqual(after[1], frozenset({"\\Answered"}))
        self.assertEqual(after[2], frozenset())
