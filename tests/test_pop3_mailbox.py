"""POP3 mailboxes over the real Maildir store: the avatar factory, the session lock, the
C{pop3.IMailbox} methods (0-based, negative indexes refused) and the commit modes."""

from __future__ import annotations

import os

from twisted.cred.checkers import ANONYMOUS
from twisted.cred.error import UnauthorizedLogin
from twisted.mail import pop3
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pymaild.pop3.mailbox import (
    SESSIONS,
    MailboxClosed,
    MailboxInUse,
    POP3Mailbox,
    SessionRegistry,
    formatUIDL,
)
from tests.test_pop3_helpers import ALICE, POP3Env, makeMessage


class RegistryTests(SynchronousTestCase):
    """The session registry holds each key once."""

    def test_acquireRelease(self) -> None:
        """A key can be taken once until released; releasing twice is harmless."""
        r = SessionRegistry()
        self.assertTrue(r.acquire("k"))
        self.assertFalse(r.acquire("k"))
        self.assertTrue(r.isHeld("k"))
        r.release("k")
        r.release("k")
        self.assertFalse(r.isHeld("k"))
        self.assertTrue(r.acquire("k"))

    def test_uidlFormat(self) -> None:
        """Dovecot's %08Xu%08Xv, in the lower-case hex Dovecot prints."""
        self.assertEqual(formatUIDL(1, 0x5F3A), b"0000000100005f3a")
        self.assertEqual(formatUIDL(0xABCDEF12, 1), b"abcdef1200000001")


class AvatarTests(SynchronousTestCase):
    """POP3Avatars builds mailboxes for real users only, without touching the disk."""

    def test_refusesAnonymousAndJunk(self) -> None:
        """ANONYMOUS, empty, non-UTF-8 and non-address ids raise UnauthorizedLogin."""
        env = POP3Env(self)
        for bad in (ANONYMOUS, b"", "", b"\xff@x.org", "no-at-sign", "a/b@../x", 42):
            self.assertRaises(UnauthorizedLogin, env.avatars, bad)

    def test_buildsMailbox(self) -> None:
        """A canonical id (bytes or str) gives a POP3Mailbox and its logout; no Maildir is
        created until open()."""
        env = POP3Env(self)
        mbox, logout = env.avatars(b"Alice@Example.ORG")
        self.assertIsInstance(mbox, POP3Mailbox)
        self.assertEqual(mbox.address, ALICE)
        self.assertEqual(mbox.deleteMode, "expunge")
        self.assertTrue(verifyObject(pop3.IMailbox, mbox))
        self.assertFalse(os.path.exists(os.path.join(env.store.root, "example.org", "alice")))
        logout()
        self.assertFalse(env.registry.isHeld(mbox.lockKey))

    def test_deleteModeFromConfig(self) -> None:
        """pop3.delete = flag reaches the mailbox."""
        env = POP3Env(self, delete="flag")
        mbox, _ = env.avatars(ALICE)
        self.assertEqual(mbox.deleteMode, "flag")

    def test_badDeleteMode(self) -> None:
        """An unknown delete mode is a programming error."""
        env = POP3Env(self)
        self.assertRaises(ValueError, POP3Mailbox, env.store, env.runner, ALICE, "shred")


class MailboxTests(SynchronousTestCase):
    """The IMailbox view of one session."""

    def setUp(self) -> None:
        """Three messages for alice, and her mailbox opened."""
        self.env = POP3Env(self)
        self.msgs = [makeMessage(f"m{i}", b"body %d\r\n" % i * (i + 1)) for i in range(3)]
        self.env.deliver(*self.msgs)
        self.mbox, self.logout = self.env.avatars(ALICE)
        self.addCleanup(self.logout)
        self.successResultOf(self.mbox.open())

    def test_openTakesProcessWideLock(self) -> None:
        """open() takes the lock in the shared registry; a second mailbox for the same
        user fails with MailboxInUse; logout releases."""
        self.assertIs(self.env.registry, SESSIONS)
        self.assertTrue(SESSIONS.isHeld(self.mbox.lockKey))
        other, otherLogout = self.env.avatars(ALICE)
        self.failureResultOf(other.open(), MailboxInUse)
        otherLogout()
        self.assertTrue(SESSIONS.isHeld(self.mbox.lockKey))
        self.logout()
        self.assertFalse(SESSIONS.isHeld(self.mbox.lockKey))
        self.failureResultOf(self.mbox.open(), MailboxClosed)

    def test_listMessages(self) -> None:
        """Sizes are the CRLF sizes; marked messages count 0; indexes are checked."""
        sizes = [len(m) for m in self.msgs]
        self.assertEqual(self.mbox.listMessages(), sizes)
        self.assertEqual(self.mbox.listMessages(2), sizes[2])
        self.mbox.deleteMessage(1)
        self.assertEqual(self.mbox.listMessages(), [sizes[0], 0, sizes[2]])
        self.assertEqual(self.mbox.stat(), (2, sizes[0] + sizes[2]))
        for bad in (-1, 3, 100):
            self.assertRaises(ValueError, self.mbox.listMessages, bad)

    def test_deleteMessageChecksIndex(self) -> None:
        """deleteMessage(-1) (what 'DELE 0' turns into) raises and marks nothing."""
        self.assertRaises(ValueError, self.mbox.deleteMessage, -1)
        self.assertRaises(ValueError, self.mbox.deleteMessage, 3)
        self.assertEqual(self.mbox.deleted, set())
        self.mbox.deleteMessage(0)
        self.assertRaises(ValueError, self.mbox.deleteMessage, 0)
        self.mbox.undeleteMessages()
        self.assertEqual(self.mbox.deleted, set())

    def test_getUidlAndMessage(self) -> None:
        """getUidl and getMessage give the stored UIDL and content; bad indexes raise."""
        state = self.env.scan()
        for i, info in enumerate(state.messages):
            self.assertEqual(self.mbox.getUidl(i), formatUIDL(info.uid, state.uidvalidity))
            f = self.successResultOf(self.mbox.getMessage(i))
            with f:
                self.assertEqual(f.read(), self.msgs[i])
        self.assertRaises(ValueError, self.mbox.getUidl, -1)
        self.mbox.deleteMessage(0)
        self.assertRaises(ValueError, self.mbox.getUidl, 0)
        self.assertRaises(ValueError, self.mbox.getMessage, 0)

    def test_openMessageChunks(self) -> None:
        """openMessage reads the first chunk; readChunk the rest; a short chunk closes."""
        fp, first = self.successResultOf(self.mbox.openMessage(2, 10))
        self.assertEqual(first, self.msgs[2][:10])
        data = first
        while fp is not None:
            chunk = self.successResultOf(self.mbox.readChunk(fp, 10))
            data += chunk
            if len(chunk) < 10:
                self.assertTrue(fp.closed)
                fp = None
        self.assertEqual(data, self.msgs[2])
        fp, whole = self.successResultOf(self.mbox.openMessage(0, 1 << 20))
        self.assertIsNone(fp)
        self.assertEqual(whole, self.msgs[0])

    def test_syncExpunges(self) -> None:
        """sync() (QUIT) removes the marked messages and fires with their UIDs."""
        state = self.env.scan()
        self.mbox.deleteMessage(0)
        self.mbox.deleteMessage(2)
        uids = self.successResultOf(self.mbox.sync())
        self.assertEqual(uids, [state.messages[0].uid, state.messages[2].uid])
        self.assertEqual([m.uid for m in self.env.scan().messages], [state.messages[1].uid])
        self.assertEqual(self.mbox.deleted, set())

    def test_commitNothing(self) -> None:
        """Nothing marked: no disk work (the runner is not called)."""
        self.env.runner.hold = True
        self.assertEqual(self.successResultOf(self.mbox.commit()), [])
        self.assertEqual(self.env.runner.queue, [])

    def test_commitSkipsVanished(self) -> None:
        """A marked message expunged elsewhere meanwhile is skipped without error."""
        keys = [m.key for m in self.env.scan().messages]
        self.mbox.deleteMessage(0)
        self.mbox.deleteMessage(1)
        self.env.inbox().expunge([keys[0]])
        uids = self.successResultOf(self.mbox.commit())
        self.assertEqual(len(uids), 1)
        self.assertEqual(len(self.env.scan().messages), 1)

    def test_snapshotFixedAtOpen(self) -> None:
        """Mail delivered after open is not in this session's snapshot."""
        self.env.deliver(makeMessage("late", b"late\r\n"))
        self.assertEqual(self.mbox.count(), 3)


class FlagCommitTests(SynchronousTestCase):
    """Commit in flag mode."""

    def test_flagCommit(self) -> None:
        """Flag mode sets \\Deleted (keeping \\Seen) and removes nothing; a vanished
        message is skipped."""
        env = POP3Env(self, delete="flag")
        keys = env.deliver(makeMessage("a", b"a\r\n"), makeMessage("b", b"b\r\n"),
                           makeMessage("c", b"c\r\n"))
        mbox, logout = env.avatars(ALICE)
        self.addCleanup(logout)
        self.successResultOf(mbox.open())
        byKey = {e.info.key: i for i, e in enumerate(mbox.entries)}
        env.inbox().setFlags(keys[0], {"\\Seen"})
        for k in keys:
            mbox.deleteMessage(byKey[k])
        env.inbox().expunge([keys[2]])
        uids = self.successResultOf(mbox.commit())
        self.assertEqual(len(uids), 2)
        flags = {m.key: set(m.flags) for m in env.scan().messages}
        self.assertEqual(flags, {keys[0]: {"\\Seen", "\\Deleted"}, keys[1]: {"\\Deleted"}})
