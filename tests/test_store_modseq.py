"""Tests for L{pymaild.store.modseq}: per-message mod-sequences kept beside the uidlist,
shared by processes, surviving restarts and following changes made by others."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from pymaild.store import MaildirStore
from pymaild.store import modseq as modseqModule
from pymaild.store.info import MessageInfo
from pymaild.store.modseq import MODSEQ_NAME

MSG = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class ModseqStoreTests(SynchronousTestCase):
    """Mod-sequences through L{pymaild.store.folderscan.FolderScan.scan}."""

    def setUp(self) -> None:
        """A store with one account and three messages in INBOX."""
        self.dir = tempfile.mkdtemp(prefix="pymaild-modseq-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.root = os.path.join(self.dir, "mail")
        self.store = MaildirStore(self.root, hostname="mx.example")
        self.inbox = self.store.account("bob@example.com").folder("INBOX")
        for _ in range(3):
            self.inbox.append(MSG)

    def fresh(self) -> object:
        """INBOX as a restarted process sees it (a new store: no in-memory state)."""
        return MaildirStore(self.root, hostname="mx.example").account(
            "bob@example.com").folder("INBOX")

    def test_startsHighAndEqual(self) -> None:
        """Every message present when the log starts has the same modseq, HIGHESTMODSEQ,
        which is positive and far below 2^63."""
        state = self.inbox.scan()
        log = self.inbox.modseqs
        values = {log.modseq(m.uid) for m in state.messages}
        self.assertEqual(values, {state.highestModseq})
        self.assertGreater(state.highestModseq, 0)
        self.assertLess(state.highestModseq, modseqModule.MAX_MODSEQ)
        self.assertTrue(os.path.exists(os.path.join(self.inbox.path, MODSEQ_NAME)))

    def test_storeMovesForward(self) -> None:
        """A flag change gives that message, and only it, a higher modseq."""
        state = self.inbox.scan()
        h0 = state.highestModseq
        first = state.messages[0]
        self.inbox.setFlags(first.key, ["\\Seen"])
        h1 = self.inbox.syncModseqs()
        log = self.inbox.modseqs
        self.assertGreater(h1, h0)
        self.assertEqual(log.modseq(first.uid), h1)
        self.assertEqual(log.modseq(state.messages[1].uid), h0)
        self.assertEqual(log.changedSince([m.uid for m in state.messages], h0), [first.uid])
        # Setting the same flags again changes nothing.
        self.inbox.setFlags(first.key, ["\\Seen"])
        self.assertEqual(self.inbox.syncModseqs(), h1)

    def test_survivesRestart(self) -> None:
        """The numbers are read back after a restart, not made up again."""
        state = self.inbox.scan()
        self.inbox.setFlags(state.messages[1].key, ["\\Flagged"])
        h1 = self.inbox.syncModseqs()
        again = self.fresh()
        st = again.scan()
        self.assertEqual(st.highestModseq, h1)
        self.assertEqual(again.modseqs.modseq(state.messages[1].uid), h1)
        self.assertLess(again.modseqs.modseq(state.messages[0].uid), h1)

    def test_otherProcessRename(self) -> None:
        """A flag change made by another program (a rename of the file, as Dovecot
        does) is seen by the next scan and gets a new modseq."""
        state = self.inbox.scan()
        h0 = state.highestModseq
        m = state.messages[2]
        cur = os.path.join(self.inbox.path, "cur")
        new = os.path.join(self.inbox.path, "new")
        src = next(os.path.join(d, f) for d in (cur, new) if os.path.isdir(d)
                   for f in os.listdir(d) if f.startswith(m.key))
        os.rename(src, os.path.join(cur, m.key + ":2,FS"))
        self.inbox.scan()  # within the sync window the listing is re-read
        st = self.fresh().scan()
        self.assertGreater(st.highestModseq, h0)

    def test_expungeMovesForwardAndTombstones(self) -> None:
        """An expunge raises HIGHESTMODSEQ and is remembered with its modseq."""
        state = self.inbox.scan()
        h0 = state.highestModseq
        victim = state.messages[0]
        self.inbox.expunge([victim.key])
        st = self.inbox.scan()
        self.assertGreater(st.highestModseq, h0)
        log = self.fresh()
        log.scan()
        self.assertEqual(log.modseqs.vanished(h0, range(1, 10), {m.uid for m in st.messages}),
                         [victim.uid])
        self.assertEqual(log.modseqs.vanished(st.highestModseq, range(1, 10), set()), [])

    def test_expungedNeverGoesBack(self) -> None:
        """A message expunged since keeps a mod-sequence no lower than it had (that of
        its expunge): a session not yet told of the EXPUNGE answers FETCH MODSEQ with it
        (imaptest's stress run caught the base being answered instead)."""
        state = self.inbox.scan()
        victim = state.messages[1]
        self.inbox.setFlags(victim.key, ["\\Seen"])
        shown = self.inbox.syncModseqs()
        self.assertEqual(self.inbox.modseqs.modseq(victim.uid), shown)
        self.inbox.expunge([victim.key])
        h = self.inbox.scan().highestModseq
        self.assertGreater(h, shown)
        self.assertEqual(self.inbox.modseqs.modseq(victim.uid), h)
        self.assertEqual(self.inbox.modseqs.changedSince([victim.uid], shown), [victim.uid])
        again = self.fresh()
        again.scan()
        self.assertEqual(again.modseqs.modseq(victim.uid), h)

    def test_sharedBetweenProcesses(self) -> None:
        """A second process changing flags moves this process's numbers forward, and
        both agree on the values."""
        state = self.inbox.scan()
        h0 = state.highestModseq
        script = (
            "import sys\n"
            "from pymaild.store import MaildirStore\n"
            "f = MaildirStore(sys.argv[1], hostname='mx.example').account("
            "'bob@example.com').folder('INBOX')\n"
            "st = f.scan()\n"
            "f.setFlags(st.messages[1].key, ['\\\\Answered'])\n"
            "print(f.syncModseqs(), f.modseqs.modseq(st.messages[1].uid))\n"
        )
        out = subprocess.run([sys.executable, "-c", script, self.root], check=True,
                             capture_output=True, cwd=ROOT).stdout.split()
        theirs, theirMsg = int(out[0]), int(out[1])
        self.assertGreater(theirs, h0)
        st = self.inbox.scan()
        self.assertEqual(st.highestModseq, theirs)
        self.assertEqual(self.inbox.modseqs.modseq(state.messages[1].uid), theirMsg)

    def test_tornTailNeverGoesBack(self) -> None:
        """A torn record at the end is dropped and the numbers still only go up."""
        state = self.inbox.scan()
        self.inbox.setFlags(state.messages[0].key, ["\\Seen"])
        h1 = self.inbox.syncModseqs()
        with open(os.path.join(self.inbox.path, MODSEQ_NAME), "ab") as f:
            f.write(b"\x01\x02\x03")
        again = self.fresh()
        st = again.scan()
        self.assertGreaterEqual(st.highestModseq, h1)
        again.setFlags(state.messages[1].key, ["\\Seen"])
        self.assertGreater(again.syncModseqs(), h1)

    def test_compaction(self) -> None:
        """Many changes compact the file; the values and HIGHESTMODSEQ stay."""
        self.patch(modseqModule, "COMPACT_MIN", 8)
        state = self.inbox.scan()
        key = state.messages[0].key
        for i in range(30):
            self.inbox.setFlags(key, ["\\Seen"] if i % 2 else [])
            self.inbox.syncModseqs()
        h = self.inbox.modseqs.highest
        size = os.path.getsize(os.path.join(self.inbox.path, MODSEQ_NAME))
        self.assertLess(size, 24 + 24 * 20)
        again = self.fresh()
        self.assertEqual(again.scan().highestModseq, h)
        self.assertEqual(again.modseqs.modseq(state.messages[0].uid), h)

    def test_uidvalidityChangeStartsAfresh(self) -> None:
        """A log of another UIDVALIDITY is not trusted."""
        state = self.inbox.scan()
        log = self.inbox.modseqs
        h = log.sync(state.uidvalidity + 1, state.messages)
        self.assertGreaterEqual(h, state.highestModseq)
        self.assertEqual(log.uidvalidity, state.uidvalidity + 1)


class ModseqLogSyncTests(SynchronousTestCase):
    """L{modseqModule.ModseqLog.sync} given lists that differ from the last one in a
    few entries compares only those, and still sees an expunge."""

    def setUp(self) -> None:
        """A log over a scratch directory, synced once with three messages."""
        self.dir = tempfile.mkdtemp(prefix="pymaild-modseqlog-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.log = modseqModule.ModseqLog(self.dir)
        self.msgs = [MessageInfo(u, f"k{u}", f"k{u}:2,", frozenset(), 10)
                     for u in (1, 2, 3)]
        self.h0 = self.log.sync(7, self.msgs)

    def info(self, uid: int, flags: frozenset[str]) -> MessageInfo:
        """A message entry for C{uid} with C{flags}."""
        return MessageInfo(uid, f"k{uid}", f"k{uid}:2,", flags, 10)

    def test_oneChanged(self) -> None:
        """One entry replaced: that message alone moves forward."""
        msgs = list(self.msgs)
        msgs[1] = self.info(2, frozenset({"\\Seen"}))
        h1 = self.log.sync(7, msgs)
        self.assertGreater(h1, self.h0)
        self.assertEqual([self.log.modseq(u) for u in (1, 2, 3)], [self.h0, h1, self.h0])
        self.assertEqual(self.log.sync(7, msgs), h1)

    def test_sameLengthOtherUid(self) -> None:
        """A list as long as the last one but with another UID in it (one expunged,
        one new): the vanished UID gets its tombstone."""
        msgs = [self.msgs[0], self.msgs[2], self.info(4, frozenset())]
        h1 = self.log.sync(7, msgs)
        self.assertGreater(h1, self.h0)
        self.assertEqual(self.log.vanished(self.h0, range(1, 5), {1, 3, 4}), [2])
        self.assertEqual(self.log.modseq(4), h1)

    def test_anotherProcessRecord(self) -> None:
        """Records another process appended are read before the comparison: a change
        both saw is recorded once."""
        other = modseqModule.ModseqLog(self.dir)
        other.sync(7, self.msgs)
        msgs = list(self.msgs)
        msgs[0] = self.info(1, frozenset({"\\Flagged"}))
        h1 = other.sync(7, msgs)
        mine = list(self.msgs)
        mine[0] = self.info(1, frozenset({"\\Flagged"}))
        self.assertEqual(self.log.sync(7, mine), h1)
        self.assertEqual(self.log.modseq(1), h1)


class RecentAcrossProcessesTests(SynchronousTestCase):
    """\\Recent of a message APPENDed into C{cur/} (with flags) reaches exactly one
    claiming scan, whichever process stored it and whichever process scans."""

    SCRIPT = (
        "import sys\n"
        "from pymaild.store import MaildirStore\n"
        "f = MaildirStore(sys.argv[1], hostname='mx.example').account("
        "'bob@example.com').folder('INBOX')\n"
        "if sys.argv[2] == 'append':\n"
        "    print(f.append(b'Subject: x\\r\\n\\r\\nhi\\r\\n', ['\\\\Seen']))\n"
        "else:\n"
        "    print(' '.join(map(str, sorted(f.scan(claimRecent=True).recent))))\n"
    )

    def setUp(self) -> None:
        """An INBOX with one claimed message."""
        self.dir = tempfile.mkdtemp(prefix="pymaild-recent-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.root = os.path.join(self.dir, "mail")
        self.inbox = MaildirStore(self.root, hostname="mx.example").account(
            "bob@example.com").folder("INBOX")
        self.inbox.append(MSG)
        self.inbox.scan(claimRecent=True)

    def other(self, what: str) -> str:
        """Run C{what} (append, claim) in another process over the same tree."""
        return subprocess.run([sys.executable, "-c", self.SCRIPT, self.root, what],
                              check=True, capture_output=True, cwd=ROOT,
                              text=True).stdout.strip()

    def test_appendHereClaimedThere(self) -> None:
        """Our APPEND is \\Recent in the other process's session, then in none here."""
        uid = self.inbox.append(MSG, ["\\Seen"])
        self.assertEqual(self.inbox.scan().recent, {uid})  # not claimed by a peek
        self.assertEqual(self.other("claim"), str(uid))
        self.assertEqual(self.inbox.scan(claimRecent=True).recent, frozenset())
        self.assertEqual(self.other("claim"), "")

    def test_appendThereClaimedHere(self) -> None:
        """The other process's APPEND is \\Recent in our claiming scan, once."""
        uid = int(self.other("append"))
        state = self.inbox.scan(claimRecent=True)
        self.assertEqual(state.recent, {uid})
        self.assertEqual(self.inbox.scan(claimRecent=True).recent, frozenset())
        self.assertEqual(self.other("claim"), "")

    def test_copyMarked(self) -> None:
        """A COPY into another folder marks the copies there."""
        acct = MaildirStore(self.root, hostname="mx.example").account("bob@example.com")
        acct.createFolder("Archive")
        archive = acct.folder("Archive")
        archive.scan(claimRecent=True)
        key = self.inbox.scan().messages[0].key
        self.inbox.setFlags(key, ["\\Seen"])
        [(_src, dst)] = self.inbox.copy([key], archive)
        self.assertEqual(archive.scan(claimRecent=True).recent, {dst})
        self.assertEqual(archive.scan(claimRecent=True).recent, frozenset())

    def test_expungedMarkDropped(self) -> None:
        """A message expunged before any claim is not reported."""
        uid, key = self.inbox.appendKeyed(MSG, ["\\Seen"])
        self.inbox.scan()
        self.inbox.expunge([key])
        self.assertNotIn(uid, self.inbox.scan(claimRecent=True).recent)


class ScanVersionTests(SynchronousTestCase):
    """L{FolderState.version}: equal for scans returning the same message
    list, different once a message changed (so callers may skip comparing lists)."""

    def test_versionFollowsChanges(self) -> None:
        """Two scans with nothing between share a version; a flag change, a new
        message or a folder of another path gives a new one."""
        d = tempfile.mkdtemp(prefix="pymaild-version-")
        self.addCleanup(shutil.rmtree, d, True)
        acct = MaildirStore(os.path.join(d, "mail"), hostname="mx.example").account(
            "bob@example.com")
        inbox = acct.folder("INBOX")
        inbox.append(MSG)
        a = inbox.scan()
        self.assertEqual(inbox.scan().version, a.version)
        self.assertNotEqual(a.version, 0)
        inbox.setFlags(a.messages[0].key, ["\\Seen"])
        b = inbox.scan()
        self.assertNotEqual(b.version, a.version)
        self.assertEqual(b.messages[0].flags, {"\\Seen"})
        inbox.append(MSG)
        c = inbox.scan()
        self.assertNotIn(c.version, (a.version, b.version))
        acct.createFolder("Other")
        self.assertNotIn(acct.folder("Other").scan().version,
                         (a.version, b.version, c.version))
