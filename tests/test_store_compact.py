"""Tests for the compact per-folder state of L{pymaild.store.maildir}.

A folder's cached state keeps each message's name once (the uidlist record, the listing
and the L{MessageInfo} share the string), file names as shared (head, tail) places, and
one message list that flag changes patch in place. These tests check that this state
always equals what a fresh scan of the disk builds, that L{MessageInfo} still behaves as
the five-field tuple the store API promises, and that the memory a message costs does
not grow back.
"""

from __future__ import annotations

import copy
import gc
import os
import pickle
import random
import tracemalloc

from pymaild.store import MessageInfo, listing
from pymaild.store.folder import Folder
from pymaild.store.info import FolderState
from pymaild.store.uidlist import UidList
from tests.test_store_maildir import MSG, StoreTestCase


def freshScan(folder: Folder) -> FolderState:
    """C{folder} scanned by a private cache, as a newly started process would."""
    other = Folder(folder.account, folder.name, folder.path)
    other._c = listing._FolderCache(folder.path)
    return other.scan()


def fields(state: FolderState) -> list[tuple[object, ...]]:
    """The five public fields of every message of C{state}."""
    return [(m.uid, m.key, m.filename, m.flags, m.size) for m in state.messages]


class MessageInfoTests(StoreTestCase):
    """L{MessageInfo} behaves as a five-field named tuple whatever it stores inside."""

    def test_fields(self) -> None:
        """The constructor takes and the attributes give uid, key, filename, flags and
        size; the file name comes back as given, also in C{new/}."""
        flags = frozenset({"\\Seen"})
        info = MessageInfo(7, "1.M2P3.h,S=5,W=6", "cur/1.M2P3.h,S=5,W=6:2,S", flags, 6)
        self.assertEqual((info.uid, info.key, info.filename, info.flags, info.size),
                         (7, "1.M2P3.h,S=5,W=6", "cur/1.M2P3.h,S=5,W=6:2,S", flags, 6))
        self.assertEqual(info.place, ("cur/", ":2,S"))
        new = MessageInfo(8, "k", "new/k", frozenset(), 1)
        self.assertEqual(new.filename, "new/k")
        self.assertEqual(new.place, ("new/", ""))
        self.assertEqual(MessageInfo._fields, ("uid", "key", "filename", "flags", "size"))

    def test_sizeFromName(self) -> None:
        """A size the key's C{,W=} field gives is not stored twice, yet reads, compares
        and hashes as the number; another size, or a key without C{,W=}, keeps its own."""
        a = MessageInfo(1, "k,S=5,W=7", "new/k,S=5,W=7", frozenset(), 7)
        self.assertEqual(a.size, 7)
        self.assertIsNone(a[4])
        b = MessageInfo(1, "k,S=5,W=7", "new/k,S=5,W=7", frozenset(), 9)
        self.assertEqual(b.size, 9)
        self.assertNotEqual(a, b)
        self.assertEqual(MessageInfo(1, "k", "new/k", frozenset(), 9).size, 9)
        scanned = MessageInfo.fromPlace(1, "k,S=5,W=7", ("new/", ""), frozenset(), None)
        self.assertEqual(scanned, a)
        self.assertEqual(hash(scanned), hash(a))

    def test_otherFileNames(self) -> None:
        """A file name that is not C{<sub>/<key><tail>} is kept as it is."""
        for name in ("elsewhere", "cur/other:2,S", "cu/k", "", "cur/"):
            info = MessageInfo(1, "k", name, frozenset(), 0)
            self.assertEqual(info.filename, name)

    def test_equalityAndHash(self) -> None:
        """Infos with equal fields are equal and hash alike; another file name, flag set,
        size or UID makes them differ."""
        a = MessageInfo(1, "k", "cur/k:2,S", frozenset({"\\Seen"}), 3)
        b = MessageInfo(1, "k", "cur/k:2,S", frozenset({"\\Seen"}), 3)
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        for other in (MessageInfo(2, "k", "cur/k:2,S", frozenset({"\\Seen"}), 3),
                      MessageInfo(1, "k", "cur/k:2,", frozenset({"\\Seen"}), 3),
                      MessageInfo(1, "k", "new/k:2,S", frozenset({"\\Seen"}), 3),
                      MessageInfo(1, "k", "cur/k:2,S", frozenset(), 3),
                      MessageInfo(1, "k", "cur/k:2,S", frozenset({"\\Seen"}), 4)):
            self.assertNotEqual(a, other)

    def test_picklesAndCopies(self) -> None:
        """Pickling and copying keep every field."""
        info = MessageInfo(3, "k,W=9", "cur/k,W=9:2,FS", frozenset({"\\Seen", "$x"}), 9)
        for again in (pickle.loads(pickle.dumps(info)), copy.copy(info), copy.deepcopy(info)):
            self.assertEqual(again, info)
            self.assertIsInstance(again, MessageInfo)
            self.assertEqual(again.filename, info.filename)

    def test_repr(self) -> None:
        """The repr names the five fields."""
        info = MessageInfo(3, "k", "new/k", frozenset(), 9)
        self.assertEqual(repr(info), "MessageInfo(uid=3, key='k', filename='new/k', "
                                     "flags=frozenset(), size=9)")

    def test_immutable(self) -> None:
        """Fields cannot be assigned."""
        info = MessageInfo(3, "k", "new/k", frozenset(), 9)
        with self.assertRaises(AttributeError):
            info.uid = 4  # type: ignore[misc]
        with self.assertRaises(AttributeError):
            info.filename = "x"  # type: ignore[misc]


class SameAsFreshScanTests(StoreTestCase):
    """After any mix of changes, the cached state equals a fresh scan of the disk."""

    def check(self, claimed: bool = False) -> None:
        """The cached scan and a fresh one agree on everything."""
        ours = self.inbox.scan()
        fresh = freshScan(self.inbox)
        self.assertEqual(fields(ours), fields(fresh))
        self.assertEqual((ours.uidvalidity, ours.uidnext, ours.keywords),
                         (fresh.uidvalidity, fresh.uidnext, fresh.keywords))
        self.assertEqual(ours.recent, fresh.recent)

    def test_randomChanges(self) -> None:
        """Deliveries, appends with flags and keywords, flag changes (ours and another
        program's renames), expunges, files removed behind our back, claims of \\Recent
        and uidlist appends by another process keep the cached state right."""
        rng = random.Random(20240601)
        flagChoices = [(), ("\\Seen",), ("\\Flagged", "\\Seen"), ("$Label1",),
                       ("\\Deleted", "$Label2"), ("\\Answered",)]
        for step in range(300):
            keys = [m.key for m in self.inbox.scan().messages]
            op = rng.randrange(8)
            if op == 0 or not keys:
                self.store.deliver([self.account.address], MSG + b"%d\r\n" % step)
            elif op == 1:
                self.inbox.append(MSG, rng.choice(flagChoices))
            elif op in (2, 3):
                for key in rng.sample(keys, min(len(keys), rng.randint(1, 5))):
                    self.inbox.setFlags(key, rng.choice(flagChoices))
            elif op == 4:
                self.inbox.expunge(rng.sample(keys, min(len(keys), rng.randint(1, 3))))
            elif op == 5:
                # Another program renames a file in cur/ (a new flag letter).
                cur = os.path.join(self.inbox.path, "cur")
                names = sorted(os.listdir(cur))
                if names:
                    fn = rng.choice(names)
                    key = fn.partition(":")[0]
                    os.rename(os.path.join(cur, fn), os.path.join(cur, key + ":2,RS"))
                    self.age(self.inbox)
            elif op == 6:
                # Another program deletes a file.
                sub = rng.choice(["cur", "new"])
                names = sorted(os.listdir(os.path.join(self.inbox.path, sub)))
                if names:
                    os.unlink(os.path.join(self.inbox.path, sub, rng.choice(names)))
                    self.age(self.inbox)
            else:
                self.inbox.scan(claimRecent=True)
            self.check()

    def test_otherProcessAppends(self) -> None:
        """Files given UIDs by another process (its lines appended to the uidlist) show
        up with those UIDs, and the records we already had are reused, not copied."""
        for i in range(5):
            self.store.deliver([self.account.address], MSG + b"%d\r\n" % i)
        self.inbox.scan()
        before = self.inbox._c.uidlist
        assert before is not None
        other = Folder(self.account, "INBOX", self.inbox.path)
        other._c = listing._FolderCache(self.inbox.path)
        self.store.deliver([self.account.address], MSG + b"late\r\n")
        other.scan()  # the "other process" gives the new file its UID
        self.check()
        after = self.inbox._c.uidlist
        assert after is not None
        self.assertIsNot(after, before)
        for rec in before.records:
            self.assertIs(after.byKey[rec.key], rec)

    def test_keywordTableChanges(self) -> None:
        """A keyword letter renamed in C{dovecot-keywords} by another program renames the
        flag of every message that carries it."""
        self.inbox.append(MSG, ("$Old",))
        self.inbox.append(MSG, ("\\Seen",))
        self.assertIn("$Old", self.inbox.scan().messages[0].flags)
        with open(os.path.join(self.inbox.path, "dovecot-keywords"), "w") as f:
            f.write("0 $New\n")
        state = self.inbox.scan()
        self.assertEqual(state.messages[0].flags, frozenset({"$New"}))
        self.assertEqual(state.keywords, ("$New",))
        self.check()


class SharingTests(StoreTestCase):
    """One copy of each name, one message list patched in place."""

    def test_keysShared(self) -> None:
        """The listing, the uidlist record and the MessageInfo hold one key string, also
        after a restart and after the directory is listed again."""
        for i in range(3):
            self.store.deliver([self.account.address], MSG + b"%d\r\n" % i)
        self.inbox.scan(claimRecent=True)
        for restart in (False, True):
            if restart:
                store = self.restart()
                self.inbox = store.account(self.account.address).folder("INBOX")
            self.age(self.inbox)
            c = self.inbox._c
            state = self.inbox.scan()
            assert c.uidlist is not None
            for info in state.messages:
                listed = next(k for k in c.lists["cur"] if k == info.key)
                self.assertIs(listed, info.key)
                self.assertIs(c.uidlist.byKey[info.key].key, info.key)

    def test_setFlagsPatchesInPlace(self) -> None:
        """The MessageInfo setFlags returns is the one the next scan gives; the others
        are the very objects of the previous scan."""
        for i in range(4):
            self.store.deliver([self.account.address], MSG + b"%d\r\n" % i)
        first = self.inbox.scan(claimRecent=True).messages
        changed = self.inbox.setFlags(first[1].key, ["\\Flagged"])
        second = self.inbox.scan().messages
        self.assertIs(second[1], changed)
        self.assertEqual(changed.flags, frozenset({"\\Flagged"}))
        for i in (0, 2, 3):
            self.assertIs(second[i], first[i])
        same = self.inbox.setFlags(first[2].key, [])
        self.assertIs(same, first[2])

    def test_sharedPlaces(self) -> None:
        """Messages with the same subdirectory and flag letters share one place pair."""
        for flags in (("\\Seen",), ("\\Seen",), ()):
            self.inbox.append(MSG, flags)
        msgs = self.inbox.scan().messages
        self.assertIs(msgs[0].place, msgs[1].place)
        self.assertEqual(msgs[2].place, ("new/", ""))

    def test_parseReusesPrevious(self) -> None:
        """Parsing a uidlist with the previous parse reuses every equal record (with or
        without extension fields) and makes new ones for the rest."""
        data = (b"3 V1 N9 G0123456789abcdef0123456789abcdef\n"
                b"1 :a\n2 W9 :b\n4 :c\n")
        old = UidList.parse(data)
        again = UidList.parse(data + b"5 :d\n", previous=old)
        for i in range(3):
            self.assertIs(again.records[i], old.records[i])
        self.assertEqual([r.uid for r in again.records], [1, 2, 4, 5])
        changed = UidList.parse(data.replace(b"4 :c", b"6 :c"), previous=old)
        self.assertIsNot(changed.byKey["c"], old.byKey["c"])
        self.assertEqual(changed.byKey["c"].uid, 6)


class MemoryTests(StoreTestCase):
    """What a scanned message costs in memory (measured by tracemalloc: deterministic)."""

    N = 3000
    # A message costs about 385 bytes here (its name once, the uidlist record, the
    # listing entry, the MessageInfo, the list slots). The store kept about 720 before
    # names and file names were shared and the key -> info map went; fail well before
    # that again.
    MAX_BYTES_PER_MESSAGE = 520

    def test_bytesPerMessage(self) -> None:
        """A folder of a few thousand messages scanned from a fresh cache holds at most
        MAX_BYTES_PER_MESSAGE bytes per message (all cached state, the returned state
        included)."""
        cur = os.path.join(self.inbox.path, "cur")
        new = os.path.join(self.inbox.path, "new")
        for i in range(self.N):
            name = (f"{1700000000 + i}.M{i * 37 % 999999}P{1000 + i}Q{i}.mx.example"
                    f",S={2000 + i},W={2040 + i}")
            target = os.path.join(new, name) if i % 3 == 0 else os.path.join(
                cur, name + (":2,S" if i % 2 else ":2,FS"))
            with open(target, "wb"):
                pass
        self.inbox.scan()  # assigns UIDs and writes the uidlist
        self.store.clearCaches()
        self.age(self.inbox)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            state = self.inbox.scan()
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(len(state.messages), self.N)
        perMessage = held / self.N
        self.assertLess(perMessage, self.MAX_BYTES_PER_MESSAGE,
                        f"{perMessage:.0f} bytes per message")
