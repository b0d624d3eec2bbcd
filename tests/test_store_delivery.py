"""Tests for L{pymaild.store.delivery}: one message written once and hard-linked into
several accounts' folders, all or nothing."""

from __future__ import annotations

import errno
import io
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pymaild.errors import StoreError
from pymaild.store import MaildirStore, maildir
from pymaild.store.delivery import deliverLinked

MSG = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
ALICE = "alice@example.org"
BOB = "bob@example.org"


class DeliverLinkedTests(SynchronousTestCase):
    """deliverLinked over a real Maildir tree."""

    def setUp(self) -> None:
        """A store in a temporary directory."""
        self.root = os.path.abspath(self.mktemp())
        self.store = MaildirStore(self.root, "mx.example.org")

    def files(self, address: str, folder: str = "INBOX") -> list[str]:
        """Paths of the messages in C{folder} of C{address} (C{new/} and C{cur/})."""
        acct = self.store.account(address)
        base = acct._path(folder)
        return sorted(os.path.join(base, sub, n) for sub in ("new", "cur")
                      for n in os.listdir(os.path.join(base, sub)))

    def tmpFiles(self, address: str) -> list[str]:
        """What is left in C{address}'s INBOX C{tmp/}."""
        return os.listdir(os.path.join(self.store.account(address).root, "tmp"))

    def test_oneFileManyLinks(self) -> None:
        """Two accounts get the same inode, the same key, and no tmp/ leftover."""
        done = deliverLinked(self.store, [(ALICE, "INBOX"), ("Bob@Example.org", "INBOX")], MSG)
        self.assertEqual([(a, f) for a, f, _ in done], [(ALICE, "INBOX"), (BOB, "INBOX")])
        self.assertEqual(done[0][2], done[1][2])
        [a], [b] = self.files(ALICE), self.files(BOB)
        self.assertEqual(os.stat(a).st_ino, os.stat(b).st_ino)
        self.assertEqual(os.stat(a).st_nlink, 2)
        with open(a, "rb") as f:
            self.assertEqual(f.read(), MSG)
        self.assertEqual(self.tmpFiles(ALICE) + self.tmpFiles(BOB), [])
        [info] = self.store.account(BOB).folder("INBOX").scan().messages
        self.assertEqual(info.key, done[1][2])

    def test_folders(self) -> None:
        """An existing folder gets the link; a missing one gives INBOX."""
        self.store.account(ALICE).createFolder("Lists")
        done = deliverLinked(self.store, [(ALICE, "Lists"), (BOB, "Lists")], MSG)
        self.assertEqual([(a, f) for a, f, _ in done], [(ALICE, "Lists"), (BOB, "INBOX")])
        self.assertEqual(len(self.files(ALICE, "Lists")), 1)
        self.assertEqual(self.files(ALICE), [])
        self.assertEqual(len(self.files(BOB)), 1)

    def test_sameFolderTwice(self) -> None:
        """Two targets in one folder make two messages, from a file object too."""
        done = deliverLinked(self.store, [(ALICE, "INBOX"), (BOB, "INBOX"), (ALICE, "INBOX")],
                             io.BytesIO(MSG))
        self.assertEqual(len(self.files(ALICE)), 2)
        self.assertEqual(done[0][2], done[1][2])
        self.assertNotEqual(done[0][2], done[2][2])
        for path in self.files(ALICE) + self.files(BOB):
            with open(path, "rb") as f:
                self.assertEqual(f.read(), MSG)

    def test_linkImpossibleCopies(self) -> None:
        """Where a link fails with EXDEV the folder gets its own fsynced copy."""
        real = os.link
        calls: list[str] = []

        def link(src: str, dst: str) -> None:
            calls.append(dst)
            if "/bob/" in dst and "/tmp/" in src and "/alice/" in src:
                raise OSError(errno.EXDEV, "cross-device link")
            real(src, dst)

        self.patch(maildir.os, "link", link)
        deliverLinked(self.store, [(ALICE, "INBOX"), (BOB, "INBOX")], MSG)
        [a], [b] = self.files(ALICE), self.files(BOB)
        self.assertNotEqual(os.stat(a).st_ino, os.stat(b).st_ino)
        with open(b, "rb") as f:
            self.assertEqual(f.read(), MSG)
        self.assertGreaterEqual(len(calls), 3)
        self.assertEqual(self.tmpFiles(ALICE) + self.tmpFiles(BOB), [])

    def test_failureLeavesNothing(self) -> None:
        """A link failing with EIO removes the links made and the tmp/ file."""
        real = os.link
        calls: list[str] = []

        def link(src: str, dst: str) -> None:
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.EIO, "I/O error")
            real(src, dst)

        self.patch(maildir.os, "link", link)
        self.assertRaises(StoreError, deliverLinked, self.store,
                          [(ALICE, "INBOX"), (BOB, "INBOX")], MSG)
        self.assertEqual(self.files(ALICE) + self.files(BOB), [])
        self.assertEqual(self.tmpFiles(ALICE) + self.tmpFiles(BOB), [])

    def test_laterRoundFailureUndoesEarlier(self) -> None:
        """When the second round (a second copy in one folder) fails, the first
        round's links are removed too."""
        real = self.store._store
        rounds: list[Any] = []

        def store(targets: dict[str, str], order: list[str], data: Any) -> list[str]:
            rounds.append(targets)
            if len(rounds) == 2:
                raise StoreError("EIO")
            return real(targets, order, data)

        self.patch(self.store, "_store", store)
        self.assertRaises(StoreError, deliverLinked, self.store,
                          [(ALICE, "INBOX"), (BOB, "INBOX"), (ALICE, "INBOX")], MSG)
        self.assertEqual(len(rounds), 2)
        self.assertEqual(self.files(ALICE) + self.files(BOB), [])
