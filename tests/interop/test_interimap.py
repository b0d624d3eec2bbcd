"""interimap (QRESYNC two-way synchronisation) between two pymaild accounts.

interimap keeps, per mailbox, both servers' UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ in
a SQLite database and on each run asks each server only for what changed since
(``SELECT ... (QRESYNC (...))``, ``VANISHED (EARLIER)``, ``UID FETCH ... (CHANGEDSINCE)``);
it refuses servers without QRESYNC, LIST-EXTENDED and LIST-STATUS. Here both of its
sides are pymaild (``ClientServer``: real listener, store and thread pool): the
"local" side is Alice's account, the "remote" side Bob's, over STARTTLS with the
server certificate pinned, the remote side with COMPRESS=DEFLATE. The test changes
both sides between runs (new mail, flags, expunges, a new folder) and checks that
every change crossed, each way.

Without interimap installed the tests are skipped, except under CI (``CI=true``) where
a missing client is a failure.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

from pymaild.auth.passwd import PasswdFile
from tests.support import requireClient
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, makeMessage

BOB = "bob@example.org"
BOB_PW = "hunter2 hunter2"
SUBJECT = re.compile(rb"^Subject: (\S+)\r?$", re.M)


def messages(srv: ClientServer, user: str, folder: str) -> dict[str, frozenset[str]]:
    """Subject -> flags of the messages in a server folder."""
    f = srv.store.account(user).folder(folder)
    out = {}
    for info in f.scan().messages:
        with f.open(info) as fh:
            m = SUBJECT.search(fh.read())
        if m:
            out[m.group(1).decode()] = info.flags
    return out


class InterimapTests(TestCase):
    """Two-way QRESYNC sync: new mail, flags and expunges both ways, a new folder."""

    timeout = 240

    def setUp(self) -> None:
        """Find interimap (skip, or fail under CI), start the server, write the config."""
        self.interimap = requireClient("interimap")
        self.srv = ClientServer(self, cleartext="tls-only")
        PasswdFile(self.srv.config.auth.passwd).add(BOB, BOB_PW)
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        with open(self.srv.cert, "rb") as f:
            # interimap pins the key: the digest of the SubjectPublicKeyInfo.
            der = x509.load_pem_x509_certificate(f.read()).public_key().public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        pin = "sha256$" + hashlib.sha256(der).hexdigest()
        self.log = os.path.join(self.home, "interimap.log")
        self.config = os.path.join(self.home, "config")
        side = (
            "type = imap\nhost = 127.0.0.1\nport = {port}\nusername = {user}\n"
            "password = {pw}\nSTARTTLS = YES\nSSL_verify = NO\nSSL_fingerprint = {pin}\n"
            "compress = {compress}\n"
        )
        with open(self.config, "w") as f:
            f.write(f"database = {os.path.join(self.home, 'state.db')}\n"
                    f"logfile = {self.log}\n\n")
            f.write("[local]\n" + side.format(port=self.srv.portNumber, user=ALICE,
                                              pw=ALICE_PW, pin=pin, compress="NO") + "\n")
            f.write("[remote]\n" + side.format(port=self.srv.portNumber, user=BOB,
                                               pw=BOB_PW, pin=pin, compress="YES"))

    @defer.inlineCallbacks
    def sync(self) -> Any:
        """One interimap run (debug traffic in the log); fails the test on an error."""
        env = {"HOME": self.home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "XDG_CONFIG_HOME": self.home, "XDG_DATA_HOME": self.home}
        out, err, code = yield utils.getProcessOutputAndValue(
            self.interimap, [f"--config={self.config}", "--debug"], env=env)
        with open(self.log, "rb") as f:
            log = f.read()
        if code != 0:
            self.fail(f"interimap exited {code}:\n{out.decode(errors='replace')}\n"
                      f"{err.decode(errors='replace')}\n{log[-6000:].decode(errors='replace')}")
        return log

    @defer.inlineCallbacks
    def test_twoWay(self) -> None:
        """First run copies each side's mail to the other; the second, after changes on
        both sides, carries only those (by QRESYNC) and both accounts end up equal."""
        srv = self.srv
        for s in ("a1", "a2", "a3"):
            srv.store.deliver([ALICE], makeMessage(s))
        srv.store.deliver([BOB], makeMessage("b1"))
        alice = srv.store.account(ALICE)
        alice.createFolder("Work")
        alice.folder("Work").append(makeMessage("w1"), ["\\Seen"])
        log = yield self.sync()
        self.assertEqual(set(messages(srv, ALICE, "INBOX")), {"a1", "a2", "a3", "b1"})
        self.assertEqual(set(messages(srv, BOB, "INBOX")), {"a1", "a2", "a3", "b1"})
        self.assertEqual(messages(srv, BOB, "Work"), {"w1": frozenset({"\\Seen"})})
        self.assertIn(b"COMPRESS DEFLATE", log)

        # Changes on both sides: Alice flags a2 and expunges a3; Bob gets new mail and
        # flags b1.
        inbox = alice.folder("INBOX")
        byKey = {SUBJECT.search(inbox.read(i)).group(1): i for i in inbox.scan().messages}
        inbox.setFlags(byKey[b"a2"].key, ["\\Flagged"])
        inbox.expunge([byKey[b"a3"].key])
        srv.store.deliver([BOB], makeMessage("b2"))
        bobInbox = srv.store.account(BOB).folder("INBOX")
        bobKeys = {SUBJECT.search(bobInbox.read(i)).group(1): i
                   for i in bobInbox.scan().messages}
        bobInbox.setFlags(bobKeys[b"b1"].key, ["\\Answered", "$Label1"])
        os.replace(self.log, self.log + ".1")  # (kept for debugging)
        log = yield self.sync()
        a, b = messages(srv, ALICE, "INBOX"), messages(srv, BOB, "INBOX")
        self.assertEqual(set(a), {"a1", "a2", "b1", "b2"})
        self.assertEqual(a, b)
        self.assertEqual(a["a2"], frozenset({"\\Flagged"}))
        self.assertEqual(a["b1"], frozenset({"\\Answered", "$Label1"}))
        self.assertIn(b"QRESYNC (", log)  # the second run resynchronised by QRESYNC

        # A third run copies and removes nothing (it may re-store the flags of the
        # message it appended last time, whose MODSEQ is above the one it recorded);
        # a fourth, with the state settled, sends no change at all.
        os.replace(self.log, self.log + ".2")
        log = yield self.sync()
        commands = re.findall(rb" C: \S+ (?:UID )?([A-Z]+)", log)
        self.assertNotIn(b"APPEND", commands)
        self.assertNotIn(b"EXPUNGE", commands)
        self.assertEqual(messages(srv, ALICE, "INBOX"), a)
        self.assertEqual(messages(srv, BOB, "INBOX"), a)
        os.replace(self.log, self.log + ".3")
        log = yield self.sync()
        commands = re.findall(rb" C: \S+ (?:UID )?([A-Z]+)", log)
        for verb in (b"APPEND", b"STORE", b"EXPUNGE", b"SELECT"):
            self.assertNotIn(verb, commands)
