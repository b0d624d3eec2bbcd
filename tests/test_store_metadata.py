"""The METADATA file of an account (L{pymaild.store.metadata})."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pymaild.store import MaildirStore
from pymaild.store import metadata as store
from tests.support import ALICE


class MetadataFileTests(SynchronousTestCase):
    """Reading, writing and moving entries."""

    def setUp(self) -> None:
        """Alice's Maildir."""
        self.acct = MaildirStore(self.mktemp()).account(ALICE)
        self.root = self.acct.root

    def test_roundTrip(self) -> None:
        """Entries of any bytes, for the server and folders with non-ASCII names, are
        written one a line and read back; no lock or temporary file is left."""
        entries = {"": {"/shared/comment": b"hi\r\nthere"},
                   "Caf\u00e9/\u00dcbersicht": {"/private/x": b"\x00\xff"}}
        store.update(self.root, lambda cur: entries)
        self.assertEqual(store.read(self.root), entries)
        with open(os.path.join(self.root, store.METADATA_NAME), "rb") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertFalse(os.path.exists(os.path.join(self.root, store.METADATA_NAME + ".lock")))

    def test_refusedChangeWritesNothing(self) -> None:
        """A change that raises leaves the file as it was and the lock free."""
        store.update(self.root, lambda cur: {"": {"/private/a": b"1"}})

        def refuse(cur: store.Entries) -> store.Entries:
            cur[""]["/private/a"] = b"2"
            raise ValueError("no")

        self.assertRaises(ValueError, store.update, self.root, refuse)
        self.assertEqual(store.read(self.root), {"": {"/private/a": b"1"}})
        store.update(self.root, lambda cur: {})
        self.assertEqual(store.read(self.root), {})

    def test_malformedLinesSkipped(self) -> None:
        """Lines that are not folder, entry and base64 value are skipped."""
        with open(os.path.join(self.root, store.METADATA_NAME), "wb") as f:
            f.write(b"\t/private/ok\tb2s=\nbroken line\n\tnoslash\teA==\n\t/private/x\t!!\n")
        self.assertEqual(store.read(self.root), {"": {"/private/ok": b"ok"}})

    def test_moveFolder(self) -> None:
        """Entries follow a renamed folder and its children; a deleted folder's go, its
        children's stay; folders with a common prefix are left alone."""
        store.update(self.root, lambda cur: {
            "A": {"/private/c": b"a"}, "A/B": {"/private/c": b"ab"},
            "AB": {"/private/c": b"other"}})
        store.moveFolder(self.root, "A", "Z")
        self.assertEqual(store.read(self.root), {
            "Z": {"/private/c": b"a"}, "Z/B": {"/private/c": b"ab"},
            "AB": {"/private/c": b"other"}})
        store.moveFolder(self.root, "Z", None)
        self.assertEqual(store.read(self.root), {
            "Z/B": {"/private/c": b"ab"}, "AB": {"/private/c": b"other"}})
        store.moveFolder(self.root, "Nothing", None)
