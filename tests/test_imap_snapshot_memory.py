"""What the IMAP views keep in memory: snapshots kept for reuse, and copied on change.

See L{pymaild.imap.mailbox}: a view shares its folder's L{Snapshot} until it changes;
the last snapshot of each folder is kept alive for the next session. These tests check
that a session's own STORE lets go of a snapshot no scan can return again, that a STORE
copies the containers it changes (so other sessions and readers never see them change),
that one STORE shares its new flag sets, and that L{MailboxView.resolve} names exactly
the messages of a set.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap import mailbox
from pymaild.imap.syntax import SequenceSet
from tests.test_imap_helpers import IMAPEnv, makeMessage


class KeptSnapshotTests(SynchronousTestCase):
    """Which snapshots stay alive when no view holds them."""

    def test_oneKeptPerFolder(self) -> None:
        """New mail makes a new snapshot of the folder, which replaces the kept one."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        a = env.selected()
        path = a.proto.mbox.folder.path
        first = mailbox._keptSnapshots[path]
        env.deliver(makeMessage("b"))
        a.ok("NOOP")
        second = mailbox._keptSnapshots[path]
        self.assertIsNot(second, first)
        self.assertNotIn(first, list(mailbox._keptSnapshots.values()))
        self.assertIs(a.proto.mbox.uids, second.uids)

    def test_ownStoreLetsGo(self) -> None:
        """A session's own STORE changes a copy of its snapshot's containers, and the
        snapshot (which no later scan returns) is no longer kept; the next scan's state
        is shared again."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        a = env.selected()
        view = a.proto.mbox
        path = view.folder.path
        snap = mailbox._keptSnapshots[path]
        self.assertIs(snap.infos, view.infos)
        a.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
        self.assertIsNot(view.infos, snap.infos)
        self.assertNotIn("\\Flagged", snap.infos[2].flags)
        self.assertIn("\\Flagged", view.infos[2].flags)
        self.assertIsNot(mailbox._keptSnapshots.get(path), snap)
        a.ok("NOOP")
        self.assertIs(mailbox._keptSnapshots[path].infos, view.infos)

    def test_sharedStoreCopies(self) -> None:
        """With another session on the snapshot, a STORE copies it: the other session's
        view is untouched and still holds the snapshot, which is no longer kept."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        a, b = env.selected(), env.selected()
        va, vb = a.proto.mbox, b.proto.mbox
        shared = vb.infos
        self.assertIs(va.infos, shared)
        a.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
        self.assertIsNot(va.infos, shared)
        self.assertIs(vb.infos, shared)
        self.assertNotIn("\\Seen", vb.infos[1].flags)
        self.assertIn("\\Seen", va.infos[1].flags)
        kept = mailbox._keptSnapshots.get(va.folder.path)
        self.assertTrue(kept is None or kept.infos is not shared)

    def test_readerKeepsItsCopy(self) -> None:
        """A command still holding the snapshot's info map (a reader) makes the STORE
        copy it, so what the reader sees never changes under it."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        a = env.selected()
        view = a.proto.mbox
        reading = view.infos
        before = reading[1]
        a.ok("STORE 1 +FLAGS.SILENT (\\Answered)")
        self.assertIsNot(view.infos, reading)
        self.assertIs(reading[1], before)

    def test_storeSharesFlagSets(self) -> None:
        """Messages that had the same flags get one new flag set between them."""
        env = IMAPEnv(self)
        env.deliver(*(makeMessage(f"m{i}") for i in range(6)))
        a = env.selected()
        a.ok("STORE 1:* +FLAGS.SILENT (\\Flagged)")
        infos = a.proto.mbox.infos
        sets = {id(infos[u].flags) for u in range(1, 7)}
        self.assertEqual(len(sets), 1)
        self.assertEqual(infos[1].flags, frozenset({"\\Flagged"}))


class ResolveTests(SynchronousTestCase):
    """L{MailboxView.resolve} without collecting indexes first."""

    def test_sameAsEveryMessageChecked(self) -> None:
        """For random sets over a view with gaps in its UIDs, resolve gives exactly the
        (seq, uid) pairs whose number is in the set, ascending."""
        env = IMAPEnv(self)
        env.deliver(*(makeMessage(f"m{i}") for i in range(40)))
        a = env.selected()
        a.ok("STORE 3,7:9,20,33:35 +FLAGS.SILENT (\\Deleted)")
        a.ok("EXPUNGE")
        view = a.proto.mbox
        uids = list(view.uids)
        rng = random.Random(4)
        for _ in range(300):
            parts = []
            for _ in range(rng.randint(1, 4)):
                lo = rng.randint(1, 45)
                form = rng.randrange(3)
                if form == 0:
                    parts.append(str(lo))
                elif form == 1:
                    parts.append(f"{lo}:{rng.randint(1, 45)}")
                else:
                    parts.append(f"{lo}:*")
            text = ",".join(parts)
            seqset = SequenceSet.parse(text.encode("ascii"))
            for byUid in (True, False):
                star = uids[-1] if byUid else len(uids)
                want = [(i + 1, u) for i, u in enumerate(uids)
                        if seqset.contains(u if byUid else i + 1, star)]
                self.assertEqual(view.resolve(seqset, byUid), want, (text, byUid))

    def test_empty(self) -> None:
        """An empty view resolves every set to nothing."""
        env = IMAPEnv(self)
        a = env.selected()
        self.assertEqual(a.proto.mbox.resolve(SequenceSet.parse(b"1:*"), True), [])
        self.assertEqual(a.proto.mbox.resolve(SequenceSet.parse(b"1:*"), False), [])
