"""Usage counting over a Maildir and the C{maildirsize} file (L{pymaild.store.quota})."""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from pymaild.store import MaildirStore
from pymaild.store.quota import (
    MAILDIRSIZE,
    Usage,
    UsageCounter,
    limitsLine,
    readMaildirsize,
)
from tests.support import ALICE


class _Clock:
    """A settable clock for L{UsageCounter}."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        """The current time."""
        return self.now


def _age(path: str, seconds: float = 60.0) -> None:
    """Set a directory's modification time C{seconds} into the past."""
    t = time.time() - seconds
    os.utime(path, (t, t))


class UsageCounterTests(SynchronousTestCase):
    """L{UsageCounter} sums C{S=} sizes over every folder and notices changes."""

    def setUp(self) -> None:
        """A store with Alice's Maildir."""
        self.store = MaildirStore(self.mktemp(), hostname="mx.example.org")
        self.acct = self.store.account(ALICE)
        self.root = self.acct.root

    def _fileSizes(self) -> int:
        """The sizes of every message file on disk, the slow way."""
        total = 0
        for d, _dirs, files in os.walk(self.root):
            if os.path.basename(d) in ("cur", "new"):
                total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
        return total

    def test_allFolders(self) -> None:
        """INBOX, folders (Trash too), new/ and cur/ all count; bytes are file sizes."""
        self.store.deliver([ALICE], b"Subject: a\r\n\r\none\r\n")
        self.acct.createFolder("Archive")
        self.acct.createFolder("Trash")
        self.acct.folder("Archive").append(b"Subject: b\r\n\r\ntwo two\r\n", ["\\Seen"])
        self.store.deliver([ALICE], b"Subject: c\r\n\r\nthree\r\n", folder="Trash")
        usage = UsageCounter().usage(self.root)
        self.assertEqual(usage, Usage(self._fileSizes(), 3))

    def test_changesSeen(self) -> None:
        """Deliveries, expunges and files removed behind its back are all counted."""
        counter = UsageCounter()
        self.assertEqual(counter.usage(self.root), Usage(0, 0))
        keys = self.store.deliver([ALICE], b"Subject: a\r\n\r\n" + b"x" * 1000 + b"\r\n")
        self.store.deliver([ALICE], b"Subject: b\r\n\r\nb\r\n")
        self.assertEqual(counter.usage(self.root).messages, 2)
        folder = self.acct.folder("INBOX")
        folder.scan(claimRecent=True)
        folder.expunge(keys)
        self.assertEqual(counter.usage(self.root), Usage(self._fileSizes(), 1))
        new = os.path.join(self.root, "new")
        cur = os.path.join(self.root, "cur")
        for d in (new, cur):
            for f in os.listdir(d):
                os.unlink(os.path.join(d, f))
        self.assertEqual(counter.usage(self.root), Usage(0, 0))

    def test_nameWithoutSize(self) -> None:
        """A file whose name has no C{S=} (a foreign delivery agent's) is stat()ed; dot
        files are not messages."""
        with open(os.path.join(self.root, "new", "1700000000.x1.host"), "wb") as f:
            f.write(b"Subject: plain\r\n\r\n12345\r\n")
        with open(os.path.join(self.root, "cur", ".hidden"), "wb") as f:
            f.write(b"junk")
        self.assertEqual(UsageCounter().usage(self.root), Usage(25, 1))

    def test_settledDirectoriesCached(self) -> None:
        """A directory unchanged since a listing made after it settled is not listed
        again: a change that keeps its modification time goes unseen (the proof that
        the cache is used), one that moves it is seen."""
        self.store.deliver([ALICE], b"Subject: a\r\n\r\na\r\n")
        new = os.path.join(self.root, "new")
        _age(new)
        counter = UsageCounter()
        first = counter.usage(self.root)
        st = os.stat(new)
        with open(os.path.join(new, "1700000001.x2.host,S=100"), "wb") as f:
            f.write(b"x" * 100)
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertEqual(counter.usage(self.root), first)
        self.assertEqual(UsageCounter().usage(self.root).messages, 2)
        _age(new, 30)
        self.assertEqual(counter.usage(self.root).messages, 2)

    def test_freshDirectoryListedAgain(self) -> None:
        """A directory modified within L{SETTLE} seconds of its listing is listed again
        next time, even when its modification time then looks unchanged."""
        new = os.path.join(self.root, "new")
        clock = _Clock(time.time())
        counter = UsageCounter(clock)
        st = os.stat(new)
        self.assertEqual(counter.usage(self.root).messages, 0)
        with open(os.path.join(new, "1700000001.x2.host,S=5"), "wb") as f:
            f.write(b"x" * 5)
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertEqual(counter.usage(self.root), Usage(5, 1))


class MaildirsizeTests(SynchronousTestCase):
    """C{maildirsize} is written in the Maildir++ format Dovecot reads."""

    def setUp(self) -> None:
        """A store with Alice's Maildir holding one message."""
        self.store = MaildirStore(self.mktemp(), hostname="mx.example.org")
        self.root = self.store.account(ALICE).root
        self.store.deliver([ALICE], b"Subject: a\r\n\r\nhello\r\n")

    def test_format(self) -> None:
        """The limits line, then one usage line; rewritten when usage changes."""
        counter = UsageCounter()
        usage = counter.usage(self.root)
        counter.record(self.root, usage, 1 << 30, 1000)
        with open(os.path.join(self.root, MAILDIRSIZE)) as f:
            self.assertEqual(f.read(), f"1073741824S,1000C\n{usage.bytes} 1\n")
        self.store.deliver([ALICE], b"Subject: b\r\n\r\nhello\r\n")
        later = counter.usage(self.root)
        counter.record(self.root, later, 1 << 30, 1000)
        self.assertEqual(readMaildirsize(self.root), ("1073741824S,1000C", later))
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])

    def test_noLimitsNoFile(self) -> None:
        """Without limits no file is written (Dovecot writes none either)."""
        counter = UsageCounter()
        counter.record(self.root, counter.usage(self.root), None, None)
        self.assertFalse(os.path.exists(os.path.join(self.root, MAILDIRSIZE)))

    def test_limitsLine(self) -> None:
        """An unlimited resource is left out of the limits line."""
        self.assertEqual(limitsLine(100, None), "100S")
        self.assertEqual(limitsLine(None, 5), "5C")
        self.assertEqual(limitsLine(100, 5), "100S,5C")

    def test_readsDovecotLines(self) -> None:
        """A file with lines appended by Dovecot (deltas, negative ones too) sums up;
        a malformed one reads as None."""
        path = os.path.join(self.root, MAILDIRSIZE)
        with open(path, "w") as f:
            f.write("1000S,10C\n  300   3\n120 1\n-20 -1\n")
        self.assertEqual(readMaildirsize(self.root), ("1000S,10C", Usage(400, 3)))
        with open(path, "w") as f:
            f.write("1000S\nnonsense\n")
        self.assertIsNone(readMaildirsize(self.root))
