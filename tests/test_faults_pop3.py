"""POP3 under faults and concurrent change: a client vanishing mid-RETR changes
nothing (F4), the session's message list is frozen while IMAP changes the INBOX (P10),
and an oversized USER line costs one -ERR (P5).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pymaild.pop3.lines import MAX_LINE
from pymaild.pop3.mailbox import SESSIONS
from tests.test_pop3_helpers import ALICE, POP3Env, makeMessage, readMultiline


def listing(env: POP3Env) -> dict[str, list[str]]:
    """The INBOX's new/, cur/ and tmp/ entries as on disk."""
    path = env.inbox().path
    return {sub: sorted(os.listdir(os.path.join(path, sub))) for sub in ("new", "cur", "tmp")}


class DisconnectMidRetrTests(SynchronousTestCase):
    """F4: a connection lost in the middle of RETR leaves the mailbox untouched."""

    def test_dropMidRetrChangesNothing(self) -> None:
        """DELE 1, then RETR 2 cut off half-way: every file keeps its name (no flag
        change, nothing moved or removed), the UIDLs stay, the session lock is gone,
        and the next session downloads the same message intact."""
        env = POP3Env(self)
        body = b"line of text\r\n" * 20000
        env.deliver(makeMessage("a", b"a\r\n"), makeMessage("big", body))
        before = listing(env)
        c = env.login()
        uidls = c.multi(b"UIDL")[1]
        c.proto.chunkSize = 4096
        c.cmd(b"DELE 1")
        env.runner.hold = True
        c.send(b"RETR 2\r\n")
        env.runner.step()
        env.runner.step()
        sent = c.take()
        self.assertTrue(sent.startswith(b"+OK"))
        self.assertLess(len(sent), len(body))
        lockKey = c.proto.mailbox.lockKey
        c.lose()
        env.runner.hold = False
        env.runner.flush()
        self.assertFalse(SESSIONS.isHeld(lockKey))
        self.assertEqual(listing(env), before)
        again = env.login()
        self.assertEqual(again.multi(b"UIDL")[1], uidls)
        status, text, rest = readMultiline(again.cmd(b"RETR 2"))
        self.assertEqual(text, makeMessage("big", body))
        self.assertEqual(rest, b"")


class FrozenListTests(SynchronousTestCase):
    """P10: what IMAP does to the INBOX during a POP3 session does not renumber it."""

    def test_imapChangesDuringSession(self) -> None:
        """New mail, IMAP flag changes, a move to cur/ and an IMAP expunge during the
        session: STAT/LIST/UIDL stay as at login, the expunged message is -ERR on RETR,
        QUIT deletes only what was marked; the next session sees the new state with
        the same UIDL for every surviving message."""
        env = POP3Env(self)
        keys = env.deliver(*[makeMessage(f"m{i}", b"x%d\r\n" % i) for i in range(4)])
        c = env.login()
        stat = c.cmd(b"STAT")
        listed = c.multi(b"LIST")
        uidls = c.multi(b"UIDL")[1]
        folder = env.inbox()
        folder.scan(claimRecent=True)  # IMAP SELECT moves everything to cur/
        folder.setFlags(keys[1], {"\\Seen", "\\Flagged"})
        folder.expunge([keys[2]])
        env.deliver(makeMessage("late", b"late\r\n"))
        self.assertEqual(c.cmd(b"STAT"), stat)
        self.assertEqual(c.multi(b"LIST"), listed)
        self.assertEqual(c.multi(b"UIDL")[1], uidls)
        self.assertEqual(c.cmd(b"RETR 3"), b"-ERR Message was removed by another session.\r\n")
        status, text, _ = readMultiline(c.cmd(b"RETR 2"))
        self.assertEqual(text, makeMessage("m1", b"x1\r\n"))
        self.assertEqual(c.cmd(b"DELE 4"), b"+OK Marked to be deleted.\r\n")
        self.assertTrue(c.cmd(b"QUIT").startswith(b"+OK"))
        c.lose()  # the transport closes after QUIT
        after = env.login()
        self.assertTrue(after.cmd(b"STAT").startswith(b"+OK 3 "))
        survivors = {line.split()[1] for line in after.multi(b"UIDL")[1].split(b"\r\n")
                     if line}
        old = [line.split()[1] for line in uidls.split(b"\r\n") if line]
        self.assertIn(old[0], survivors)
        self.assertIn(old[1], survivors)
        self.assertNotIn(old[2], survivors)
        self.assertNotIn(old[3], survivors)
        self.assertEqual(len(survivors), 3)


class LongUserLineTests(SynchronousTestCase):
    """P5: a 100 KB USER argument is one -ERR, bounded, and the session stays usable."""

    def test_hugeUser(self) -> None:
        """USER with 100 KB (in one read and trickled) gives -ERR Line too long, keeps
        no more than a line in memory and still accepts a real login."""
        env = POP3Env(self)
        c = env.connect("127.0.0.1")
        c.take()
        self.assertEqual(c.cmd(b"USER " + b"u" * 100000), b"-ERR Line too long.\r\n")
        for _ in range(10):
            c.send(b"USER " + b"v" * 10000)
            self.assertLessEqual(len(c.proto._buffer), MAX_LINE + 1)
        self.assertEqual(c.cmd(b""), b"-ERR Line too long.\r\n")
        self.assertEqual(c.cmd(b"USER " + ALICE.encode()), b"+OK\r\n")
        self.assertFalse(c.closing)
