"""Tests for the store's delivery fast paths: group commit of directory fsyncs, trusted
known Maildirs (rechecked when one vanished) and the CRLF fast path."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pymaild.store import MaildirStore, writing

MSG = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


class ToCRLFTests(SynchronousTestCase):
    """toCRLF keeps CRLF-clean data as it is and converts bare LFs."""

    def test_cleanDataUnchanged(self) -> None:
        """Data with only CRLF line ends comes back as the very same object."""
        data = b"a\r\nb\r\n\r\nc"
        self.assertIs(writing.toCRLF(data), data)

    def test_bareLFConverted(self) -> None:
        """Bare LFs become CRLF; CRLFs stay; a bare CR is kept."""
        self.assertEqual(writing.toCRLF(b"a\nb\r\nc\rd\n"), b"a\r\nb\r\nc\rd\r\n")
        self.assertEqual(writing.toCRLF(b"\n\r\n\n"), b"\r\n\r\n\r\n")


class DirSyncTests(SynchronousTestCase):
    """_DirSync: concurrent fsyncs of one directory are shared, never skipped."""

    def setUp(self) -> None:
        """Record fsyncDir calls instead of syncing; the first one can be held back."""
        self.events: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.release.set()
        self.failures: list[OSError] = []
        self.count = 0

        def fakeFsyncDir(path: str) -> None:
            with self.lock:
                self.count += 1
                n = self.count
                self.events.append(("start", n))
            if n == 1:
                self.release.wait(10)
            if self.failures:
                raise self.failures.pop()
            with self.lock:
                self.events.append(("end", n))

        self.patch(writing, "fsyncDir", fakeFsyncDir)

    def test_waitersShareOneFsync(self) -> None:
        """Threads arriving during a running fsync share the next one: 2 fsyncs for 6."""
        ds = writing._DirSync()
        self.release.clear()
        first = threading.Thread(target=ds.sync, args=("/x",))
        first.start()
        self._waitFor(lambda: self.count == 1)
        covered: dict[int, int] = {}

        def waiter(i: int) -> None:
            ds.sync("/x")
            with self.lock:
                # The last fsync that ended before this thread returned.
                covered[i] = max(n for kind, n in self.events if kind == "end")

        others = [threading.Thread(target=waiter, args=(i,)) for i in range(5)]
        for t in others:
            t.start()
        self._waitFor(lambda: self._waiting(ds) == 5)
        self.release.set()
        for t in [first, *others]:
            t.join(10)
        self.assertEqual(self.count, 2)
        # Every waiter arrived while fsync 1 ran, so only fsync 2 covers it.
        self.assertEqual(set(covered.values()), {2})

    def test_failureRaisedAndRetried(self) -> None:
        """A failed fsync raises in the thread that ran it; the next caller syncs anew."""
        ds = writing._DirSync()
        self.failures.append(OSError(5, "EIO"))
        self.assertRaises(OSError, ds.sync, "/x")
        ds.sync("/x")
        self.assertEqual(self.count, 2)
        self.assertEqual(ds.done, 2)

    def test_sequentialCallsEachSync(self) -> None:
        """Without concurrency every call runs its own fsync."""
        ds = writing._DirSync()
        for _ in range(3):
            ds.sync("/x")
        self.assertEqual(self.count, 3)

    def _waiting(self, ds: writing._DirSync) -> int:
        """How many threads wait on C{ds}'s condition."""
        return len(ds.cond._waiters)  # type: ignore[attr-defined]

    def _waitFor(self, condition: Any) -> None:
        """Poll C{condition} for up to 10 seconds."""
        deadline = time.monotonic() + 10
        while not condition():
            if time.monotonic() > deadline:
                self.fail("condition not reached")
            time.sleep(0.005)


class KnownMaildirTests(SynchronousTestCase):
    """deliver() skips the Maildir checks for known accounts, and recovers when one went."""

    def setUp(self) -> None:
        """A fresh store in a scratch directory."""
        self.dir = tempfile.mkdtemp(prefix="pymaild-gc-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = MaildirStore(os.path.join(self.dir, "mail"), hostname="mx.example")

    def _new(self, address: str) -> list[str]:
        """The names in C{address}'s INBOX new/."""
        return os.listdir(os.path.join(self.store.account(address).root, "new"))

    def test_secondDeliveryUnchecked(self) -> None:
        """After the first delivery the account is not stat()ed again for bytes data."""
        self.store.deliver(["bob@example.com"], MSG)
        calls: list[str] = []
        original = self.store.account

        def account(address: str) -> Any:
            calls.append(address)
            return original(address)

        self.patch(self.store, "account", account)
        keys = self.store.deliver(["Bob@Example.com"], MSG)
        self.assertEqual(calls, [])
        self.patch(self.store, "account", original)
        self.assertIn(keys[0], self._new("bob@example.com"))

    def test_vanishedMaildirRecreated(self) -> None:
        """A Maildir removed after it became known is recreated and the message stored."""
        self.store.deliver(["bob@example.com"], MSG)
        shutil.rmtree(self.store.account("bob@example.com").root)
        keys = self.store.deliver(["bob@example.com"], MSG)
        self.assertEqual(self._new("bob@example.com"), [keys[0]])
        account = self.store.account("bob@example.com")
        self.assertTrue(os.path.exists(os.path.join(account.root, "dovecot-uidlist")))

    def test_vanishedSecondRecipientAllOrNothing(self) -> None:
        """A vanished second Maildir: nothing half-delivered, then both get the message."""
        self.store.deliver(["a@example.com", "b@example.com"], MSG)
        shutil.rmtree(self.store.account("b@example.com").root)
        keys = self.store.deliver(["a@example.com", "b@example.com"], MSG)
        self.assertIn(keys[0], self._new("a@example.com"))
        self.assertEqual(self._new("b@example.com"), [keys[1]])
        self.assertEqual(len(self._new("a@example.com")), 2)

    def test_streamAfterVanishedMaildir(self) -> None:
        """File-like data is always checked first, so it is never read twice."""
        self.store.deliver(["bob@example.com"], MSG)
        shutil.rmtree(self.store.account("bob@example.com").root)
        keys = self.store.deliver(["bob@example.com"], io.BytesIO(MSG))
        self.assertEqual(self._new("bob@example.com"), [keys[0]])
        path = os.path.join(self.store.account("bob@example.com").root, "new", keys[0])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), MSG)
