"""mbsync (isync) two-way synchronisation against pymaild's IMAP over STARTTLS.

The server runs in the test's reactor (``ClientServer``: real store, passwd checker,
thread pool, self-signed certificate) with ``auth.cleartext = tls-only``, so mbsync can
only log in after a real STARTTLS. mbsync syncs the whole account into a local Maildir
(``Create Both``, ``Expunge Both``, ``Sync All``); the test then changes both sides —
new folders, flags, deletions — and checks a second run carried every change across.

Without mbsync installed the tests are skipped, except under CI (``CI=true``) where a
missing client is a failure.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer, utils
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


def serverMessages(srv: ClientServer, folder: str) -> dict[str, frozenset[str]]:
    """Subject -> flags of the messages in a server folder."""
    f = srv.store.account(ALICE).folder(folder)
    out = {}
    for info in f.scan().messages:
        with f.open(info) as fh:
            m = SUBJECT.search(fh.read())
        if m:
            out[m.group(1).decode()] = info.flags
    return out


class MbsyncTests(TestCase):
    """Two-way sync: folders created on either side, flags and deletions both ways."""

    timeout = 180

    def setUp(self) -> None:
        """Find mbsync (skip, or fail under CI), start the server, write the config."""
        self.mbsync = requireClient("mbsync", "isync")
        self.srv = ClientServer(self, cleartext="tls-only")
        self.home = os.path.abspath(self.mktemp())
        self.local = os.path.join(self.home, "mail")
        os.makedirs(self.local)
        self.rc = os.path.join(self.home, "mbsyncrc")
        with open(self.rc, "w") as f:
            f.write(
                "IMAPAccount pymaild\n"
                "Host 127.0.0.1\n"
                f"Port {self.srv.portNumber}\n"
                f"User {ALICE}\n"
                f'Pass "{ALICE_PW}"\n'
                "SSLType STARTTLS\n"
                f"CertificateFile {self.srv.cert}\n"
                "AuthMechs PLAIN\n"
                "\n"
                "IMAPStore far\nAccount pymaild\n\n"
                "MaildirStore near\n"
                f"Path {self.local}/\n"
                f"Inbox {self.local}/INBOX\n"
                "SubFolders Verbatim\n\n"
                "Channel sync\nFar :far:\nNear :near:\nPatterns *\nCreate Both\n"
                "Expunge Both\nSyncState *\nSync All\n"
            )

    @defer.inlineCallbacks
    def sync(self) -> Any:
        """Run mbsync once; fail the test on a non-zero exit."""
        env = {"HOME": self.home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "LC_ALL": "C"}
        out, err, code = yield utils.getProcessOutputAndValue(
            self.mbsync, ["-c", self.rc, "-a", "-V"], env=env)
        if code != 0:
            self.fail(f"mbsync exited {code}:\n{out.decode(errors='replace')}\n"
                      f"{err.decode(errors='replace')}")
        return out + err

    @defer.inlineCallbacks
    def test_twoWaySync(self) -> None:
        """Messages, folders, flags and deletions travel in both directions."""
        srv = self.srv
        acct = srv.store.account(ALICE)
        srv.store.deliver([ALICE], makeMessage("keep-1"))
        srv.store.deliver([ALICE], makeMessage("flag-on-server"))
        srv.store.deliver([ALICE], makeMessage("delete-on-server"))
        srv.store.deliver([ALICE], makeMessage("delete-locally"))
        srv.store.deliver([ALICE], makeMessage("seen-locally"))
        acct.createFolder("Work")
        acct.folder("Work").append(makeMessage("work-1"), ("\\Seen",))

        yield self.sync()
        inbox = localMessages(os.path.join(self.local, "INBOX"))
        self.assertEqual(set(inbox), {"keep-1", "flag-on-server", "delete-on-server",
                                      "delete-locally", "seen-locally"})
        self.assertEqual(localMessages(os.path.join(self.local, "Work")), {"work-1": "S"})
        self.assertTrue(os.path.isdir(os.path.join(self.local, "Sent")))

        # Server side changes.
        inboxFolder = acct.folder("INBOX")
        byName = {}
        for info in inboxFolder.scan().messages:
            with inboxFolder.open(info) as fh:
                byName[SUBJECT.search(fh.read()).group(1).decode()] = info
        inboxFolder.setFlags(byName["flag-on-server"].key, {"\\Flagged"})
        inboxFolder.expunge([byName["delete-on-server"].key])
        acct.createFolder("FromServer")
        acct.folder("FromServer").append(makeMessage("server-new"))

        # Local side changes.
        localInbox = os.path.join(self.local, "INBOX")
        for sub in ("cur", "new"):
            for fn in os.listdir(os.path.join(localInbox, sub)):
                p = os.path.join(localInbox, sub, fn)
                with open(p, "rb") as f:
                    subject = SUBJECT.search(f.read()).group(1).decode()
                if subject == "delete-locally":
                    os.unlink(p)
                elif subject == "seen-locally":
                    base = fn.split(":2,")[0]
                    os.rename(p, os.path.join(localInbox, "cur", base + ":2,S"))
        newDir = os.path.join(self.local, "FromLocal")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(newDir, sub))
        with open(os.path.join(newDir, "new", "1700000000.1.localhost"), "wb") as f:
            f.write(makeMessage("local-new").replace(b"\r\n", b"\n"))

        yield self.sync()
        server = serverMessages(srv, "INBOX")
        self.assertEqual(set(server), {"keep-1", "flag-on-server", "seen-locally"})
        self.assertIn("\\Seen", server["seen-locally"])
        self.assertIn("FromLocal", acct.listFolders())
        self.assertEqual(set(serverMessages(srv, "FromLocal")), {"local-new"})
        local = localMessages(localInbox)
        self.assertEqual(set(local), {"keep-1", "flag-on-server", "seen-locally"})
        self.assertIn("F", local["flag-on-server"])
        self.assertEqual(set(localMessages(os.path.join(self.local, "FromServer"))),
                         {"server-new"})

        # A third run changes nothing.
        yield self.sync()
        self.assertEqual(set(serverMessages(srv, "INBOX")), set(server))
