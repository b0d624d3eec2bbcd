"""NOTIFY (RFC 5465, L{pymaild.imap.notifyset}) on the wire: STATUS for other mailboxes,
the selected mailbox's changes without a command, mailbox-list, subscription and
metadata events, NOTIFY NONE, and bad input; one session over a real socket."""

from __future__ import annotations

import imaplib
import os
import re
import socket
import subprocess
import sys
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, IMAPEnv, makeMessage, tagged, untagged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lit(data: bytes) -> bytes:
    """A LITERAL+ literal of C{data}."""
    return b"{%d+}\r\n" % len(data) + data


class NotifyTests(SynchronousTestCase):
    """Two sessions of one user; the first asks for notifications."""

    def setUp(self) -> None:
        """Box holds one message; sessions one and two are logged in."""
        self.env = IMAPEnv(self)
        self.one = self.env.login()
        self.two = self.env.login()
        self.two.ok("CREATE Box")
        self.two.ok(b"APPEND Box " + lit(makeMessage("first")))
        out = self.two.ok("STATUS Box (UIDVALIDITY)")
        self.uidv = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))  # type: ignore

    def test_capability(self) -> None:
        """NOTIFY is advertised after login."""
        self.assertIn(b" NOTIFY", untagged(self.one.ok("CAPABILITY"))[0])

    def test_initialStatus(self) -> None:
        """imaptest's notify: STATUS gives each watched mailbox's values for its events
        at once; without STATUS nothing is sent."""
        out = self.one.ok("NOTIFY SET STATUS (MAILBOXES Box (MessageExpunge))")
        self.assertEqual(untagged(out), [b'* STATUS "Box" (MESSAGES 1)'])
        out = self.one.ok("NOTIFY SET STATUS (MAILBOXES Box (MessageNew))")
        self.assertEqual(untagged(out),
                         [b'* STATUS "Box" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d)' % self.uidv])
        out = self.one.ok("NOTIFY SET STATUS (MAILBOXES Box (FlagChange))")
        self.assertRegex(untagged(out)[0],
                         rb'^\* STATUS "Box" \(UIDVALIDITY \d+ HIGHESTMODSEQ \d+\)$')
        out = self.one.ok("NOTIFY SET (MAILBOXES Box (MessageNew MessageExpunge FlagChange))")
        self.assertEqual(untagged(out), [])

    def test_otherMailboxes(self) -> None:
        """With nothing running, an APPEND by another session, a delivery, a flag
        change and an expunge each bring a STATUS at once; a mailbox not watched
        brings nothing; the personal filter covers every mailbox."""
        self.one.ok("NOTIFY SET (MAILBOXES Box (MessageNew MessageExpunge FlagChange))")
        self.one.take()
        self.two.ok(b"APPEND Box " + lit(makeMessage("second")))
        self.assertRegex(self.one.take(),
                         rb'^\* STATUS "Box" \(MESSAGES 2 UIDNEXT 3 UIDVALIDITY \d+ '
                         rb'HIGHESTMODSEQ \d+\)\r\n$')
        self.two.ok("SELECT Box")
        self.two.ok("STORE 1 +FLAGS (\\Flagged)")
        self.assertIn(b'* STATUS "Box" (MESSAGES 2 UIDNEXT 3', self.one.take())
        self.two.ok("STORE 1 +FLAGS (\\Deleted)")
        self.one.take()
        self.two.ok("EXPUNGE")
        self.assertIn(b'* STATUS "Box" (MESSAGES 1 UIDNEXT 3', self.one.take())
        self.env.deliver(makeMessage("mail"))
        self.env.avatars.registry.changed(ALICE, "INBOX")
        self.assertEqual(self.one.take(), b"")
        self.one.ok("NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
        self.env.deliver(makeMessage("more mail"))
        self.env.avatars.registry.changed(ALICE, "INBOX")
        self.assertRegex(self.one.take(), rb'^\* STATUS "INBOX" \(MESSAGES 2 UIDNEXT 3 ')

    def test_heldDuringACommand(self) -> None:
        """A notification that comes while a command of the session runs goes out
        just before its tagged response."""
        self.one.ok("NOTIFY SET (MAILBOXES Box (MessageNew MessageExpunge))")
        self.one.proto._busy = True  # as while one of its commands runs
        self.one.proto.sendNotifications([b"* STATUS \"Box\" (MESSAGES 9)\r\n"])
        self.assertEqual(self.one.take(), b"")
        self.one.proto._busy = False
        out = self.one.ok("NOOP")
        self.assertTrue(out.startswith(b'* STATUS "Box" (MESSAGES 9)\r\n'), out)

    def test_selected(self) -> None:
        """Events for the selected mailbox arrive with no command running: FETCH for
        another session's flag change, EXISTS for a delivery, EXPUNGE; with
        selected-delayed the EXPUNGE waits for a command."""
        self.one.ok("SELECT Box")
        self.one.ok("NOTIFY SET (SELECTED (MessageNew MessageExpunge FlagChange))")
        self.two.ok("SELECT Box")
        self.two.ok("STORE 1 +FLAGS (\\Flagged)")
        self.assertRegex(self.one.take(), rb"^\* 1 FETCH \(.*\\Flagged")
        self.two.ok(b"APPEND Box " + lit(makeMessage("second")))
        self.assertIn(b"* 2 EXISTS\r\n", self.one.take())
        self.two.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.one.take()
        self.two.ok("EXPUNGE")
        self.assertIn(b"* 1 EXPUNGE\r\n", self.one.take())
        self.one.ok("NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge))")
        self.two.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.two.ok("EXPUNGE")
        self.assertNotIn(b"EXPUNGE", self.one.take())
        self.assertIn(b"* 1 EXPUNGE", self.one.ok("NOOP"))

    def test_messageNewFetch(self) -> None:
        """RFC 5465 section 5.2's example shape: MessageNew with fetch attributes sends,
        after the EXISTS, a FETCH of them for each new message, without a command;
        PEEK forms leave the message unseen."""
        self.one.ok("SELECT Box")
        self.one.ok("NOTIFY SET (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS "
                    "(SUBJECT)]) MessageExpunge)) (SUBTREE Lists (MessageNew MessageExpunge))")
        self.two.ok(b"APPEND Box " + lit(makeMessage("second")))
        out = self.one.take()
        self.assertTrue(out.startswith(b"* 2 EXISTS\r\n"), out)
        self.assertIn(b"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (SUBJECT)] {19}\r\n"
                      b"Subject: second\r\n\r\n)\r\n", out)
        self.assertNotIn(b"\\Seen", self.one.ok("FETCH 2 FLAGS"))

    def test_mailboxNamesAndSubscriptions(self) -> None:
        """Another session's CREATE, RENAME (with OLDNAME), DELETE, SUBSCRIBE and
        UNSUBSCRIBE are LIST lines at once; the session's own are not echoed."""
        self.one.ok("NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))")
        self.two.ok("CREATE New")
        self.assertEqual(self.one.take(), b'* LIST () "/" "New"\r\n')
        self.two.ok("RENAME New Newer")
        self.assertEqual(self.one.take(),
                         b'* LIST () "/" "Newer" ("OLDNAME" ("New"))\r\n')
        self.two.ok("SUBSCRIBE Newer")
        self.assertEqual(self.one.take(), b'* LIST (\\Subscribed) "/" "Newer"\r\n')
        self.two.ok("UNSUBSCRIBE Newer")
        self.assertEqual(self.one.take(), b'* LIST () "/" "Newer"\r\n')
        self.two.ok("DELETE Newer")
        self.assertEqual(self.one.take(), b'* LIST (\\NonExistent) "/" "Newer"\r\n')
        out = self.one.ok("CREATE Mine")
        self.assertNotIn(b"* LIST", out)

    def otherProcess(self, code: str) -> None:
        """Run C{code} (with C{acct}, alice's store account) in another process over
        the same tree, as a second pymaild or an administrator would."""
        script = ("import sys\n"
                  "from pymaild.store import MaildirStore\n"
                  "acct = MaildirStore(sys.argv[1], hostname='mx.example').account("
                  "sys.argv[2])\n" + code)
        subprocess.run([sys.executable, "-c", script, self.env.store.root, ALICE],
                       check=True, cwd=ROOT)

    def test_otherProcessListChanges(self) -> None:
        """Folders created, deleted and renamed and subscriptions changed by another
        process are LIST lines at the next NOOP (a rename as a deletion and a
        creation: the other process's command is not seen); nothing when nothing
        changed, and the session's own CREATE is not reported again."""
        self.one.ok("NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))")
        self.assertNotIn(b"* LIST", self.one.ok("NOOP"))
        self.otherProcess("acct.createFolder('Far')\nacct.subscribe('Far')\n")
        out = self.one.ok("NOOP")
        self.assertEqual(untagged(out), [b'* LIST () "/" "Far"',
                                         b'* LIST (\\Subscribed) "/" "Far"'])
        self.two.ok("CREATE Near")
        self.one.take()
        self.one.ok("CREATE Mine")
        # The subscription moves with the renamed folder.
        self.otherProcess("acct.renameFolder('Far', 'Farther')\n"
                          "acct.deleteFolder('Box')\n")
        out = self.one.ok("NOOP")
        self.assertEqual(untagged(out), [b'* LIST (\\NonExistent) "/" "Box"',
                                         b'* LIST (\\NonExistent) "/" "Far"',
                                         b'* LIST () "/" "Farther"',
                                         b'* LIST () "/" "Far"',
                                         b'* LIST (\\Subscribed) "/" "Farther"'])
        self.assertNotIn(b"* LIST", self.one.ok("NOOP"))

    def test_otherProcessDuringIdle(self) -> None:
        """While IDLE, the periodic poll brings another process's CREATE."""
        from pymaild.imap.idle import IDLE_POLL

        self.one.ok("NOTIFY SET (PERSONAL (MailboxName))")
        self.assertTrue(self.one.send(b"i1 IDLE\r\n").startswith(b"+ "))
        self.otherProcess("acct.createFolder('Far')\n")
        self.env.clock.advance(IDLE_POLL + 1)
        self.assertIn(b'* LIST () "/" "Far"\r\n', self.one.take())
        self.assertIn(b"i1 OK", self.one.send(b"DONE\r\n"))

    def test_metadata(self) -> None:
        """SETMETADATA by another session: METADATA lines naming the entries, for
        a mailbox and for the server."""
        self.one.ok("NOTIFY SET (PERSONAL (MailboxMetadataChange ServerMetadataChange))")
        self.two.ok('SETMETADATA Box (/private/comment "hello")')
        self.assertEqual(self.one.take(), b'* METADATA "Box" (/private/comment)\r\n')
        self.two.ok('SETMETADATA "" (/private/comment "server")')
        self.assertEqual(self.one.take(), b'* METADATA "" (/private/comment)\r\n')

    def test_none(self) -> None:
        """NOTIFY NONE ends notifications."""
        self.one.ok("NOTIFY SET (MAILBOXES Box (MessageNew MessageExpunge))")
        self.one.ok("NOTIFY NONE")
        self.two.ok(b"APPEND Box " + lit(makeMessage("second")))
        self.assertEqual(self.one.take(), b"")

    def test_badInput(self) -> None:
        """Malformed NOTIFY commands are BAD, events this server does not offer NO
        [BADEVENT (...)]; the session goes on, with no notifications set."""
        bad = [
            "NOTIFY", "NOTIFY FOO", "NOTIFY SET", "NOTIFY SET ()", "NOTIFY SET (BOGUS NONE)",
            "NOTIFY SET (PERSONAL (NoSuchEvent))", "NOTIFY SET (PERSONAL ())",
            "NOTIFY SET (MAILBOXES (MessageNew))", "NOTIFY SET (PERSONAL NONE) (PERSONAL NONE)",
            "NOTIFY SET (PERSONAL (MessageNew MessageNew))",
            "NOTIFY SET (SELECTED (FlagChange))",
            "NOTIFY SET (PERSONAL (MessageNew (UID)))",
            "NOTIFY SET (SELECTED NONE) (SELECTED-DELAYED NONE)",
            "NOTIFY SET " + " ".join(["(MAILBOXES x NONE)"] * 65),
            "NOTIFY NONE extra",
        ]
        for cmd in bad:
            self.assertIn(b" BAD ", tagged(self.one.cmd(cmd), self.one.lastTag), cmd)
        for bad in ("NOTIFY SET (SELECTED (MessageNew (UID BODY[]) MessageExpunge))",
                    "NOTIFY SET (SELECTED (MessageNew (NOSUCHITEM) MessageExpunge))",
                    "NOTIFY SET (SELECTED (MessageNew (UID MessageExpunge))"):
            self.assertIn(b" BAD ", tagged(self.one.cmd(bad), self.one.lastTag), bad)
        for cmd in ("NOTIFY SET (PERSONAL (AnnotationChange))",):
            line = tagged(self.one.cmd(cmd), self.one.lastTag)
            self.assertIn(b" NO [BADEVENT (MessageNew MessageExpunge FlagChange", line)
        self.assertIsNone(self.one.proto._notifier)
        self.one.ok("NOOP")


def watchBox(port: int, spec: bytes = b"(MAILBOXES Box (MessageNew MessageExpunge))"
             ) -> tuple[socket.socket, Any]:
    """A raw IMAP connection (and its reading file) logged in as alice that has just set
    NOTIFY C{spec} (by default: new and expunged messages in C{Box})."""
    a = socket.create_connection(("127.0.0.1", port), timeout=20)
    f = a.makefile("rb")
    f.readline()
    a.sendall(f'a1 LOGIN {ALICE} "{ALICE_PW}"\r\n'.encode())
    while not f.readline().startswith(b"a1 "):
        pass
    a.sendall(b"a2 NOTIFY SET " + spec + b"\r\n")
    assert f.readline().startswith(b"a2 OK")
    return a, f


class SocketTests(TestCase):
    """A real listener: the notification comes without a command."""

    timeout = 60

    @defer.inlineCallbacks
    def test_otherProcess(self) -> None:
        """A message put into the watched mailbox's Maildir behind the server's back
        (as Dovecot or another pymaild would) brings a STATUS through inotify."""
        srv = ClientServer(self, watcher=True)
        srv.store.account(ALICE).createFolder("Box")

        def client() -> Any:
            a, f = watchBox(srv.portNumber)
            try:
                # Straight into the Maildir, not through any pymaild session.
                srv.store.account(ALICE).folder("Box").append(makeMessage("behind"))
                return f.readline()
            finally:
                f.close()
                a.close()

        line = yield threads.deferToThread(client)
        self.assertRegex(line, rb'^\* STATUS "?Box"? \(MESSAGES 1 UIDNEXT 2 ')

    @defer.inlineCallbacks
    def test_folderMadeBehindTheServersBack(self) -> None:
        """A folder made in the Maildir behind the server's back (as another process
        would) brings a LIST at once, through inotify on the Maildir root, while the
        client sends nothing; then one deleted, likewise."""
        srv = ClientServer(self, watcher=True)
        acct = srv.store.account(ALICE)

        def client() -> Any:
            a, f = watchBox(srv.portNumber, b"(PERSONAL (MailboxName))")
            try:
                acct.createFolder("Far")
                first = f.readline()
                acct.deleteFolder("Far")
                return first, f.readline()
            finally:
                f.close()
                a.close()

        made, gone = yield threads.deferToThread(client)
        self.assertEqual(made, b'* LIST () "/" "Far"\r\n')
        self.assertEqual(gone, b'* LIST (\\NonExistent) "/" "Far"\r\n')

    @defer.inlineCallbacks
    def test_statusWithoutCommand(self) -> None:
        """After NOTIFY SET, another client's APPEND to the watched mailbox brings an
        untagged STATUS that the first client reads while sending nothing."""
        srv = ClientServer(self)

        def client() -> Any:
            b = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            b.login(ALICE, ALICE_PW)
            b.create("Box")
            a, f = watchBox(srv.portNumber)
            try:
                b.append("Box", None, None, makeMessage("x"))
                return f.readline()
            finally:
                b.logout()
                f.close()
                a.close()

        line = yield threads.deferToThread(client)
        self.assertRegex(line, rb'^\* STATUS "?Box"? \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+\)')
