"""pymaild.files: atomic replace, directory fsync and the short-write loop."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from pymaild import files


class WriteFileAtomicTests(SynchronousTestCase):
    """L{files.writeFileAtomic} replaces a file whole, with exactly the mode asked."""

    def setUp(self) -> None:
        """A directory of our own."""
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "f")

    def test_modeWhateverTheUmask(self) -> None:
        """Mode 0644 under a umask of 077 is still 0644 (the aliases file keeps its
        permissions when the admin page edits it)."""
        old = os.umask(0o077)
        try:
            files.writeFileAtomic(self.path, b"x", 0o644)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)

    def test_replaces(self) -> None:
        """The new content replaces the old; nothing else is left in the directory."""
        files.writeFileAtomic(self.path, b"old")
        files.writeFileAtomic(self.path, b"new")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(os.listdir(self.dir), ["f"])

    def test_failedRenameLeavesOld(self) -> None:
        """A rename that fails (disk full) leaves the old file and no temporary one."""
        files.writeFileAtomic(self.path, b"old")

        def failing(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(files.os, "rename", failing)
        self.assertRaises(OSError, files.writeFileAtomic, self.path, b"new")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(os.listdir(self.dir), ["f"])

    def test_ownerOfOurOwn(self) -> None:
        """An owner that is us changes nothing (no chown attempted)."""
        calls: list[object] = []
        self.patch(files.os, "fchown", lambda *a: calls.append(a))
        files.writeFileAtomic(self.path, b"x", 0o600, os.stat(self.dir))
        self.assertEqual(calls, [])


class WriteAllTests(SynchronousTestCase):
    """L{files.writeAll} loops over short writes and fails on a write of nothing."""

    def test_shortWrites(self) -> None:
        """Writes of one byte at a time still write everything, in order."""
        written: list[bytes] = []

        def write(fd: int, data: memoryview) -> int:
            written.append(bytes(data[:1]))
            return 1

        self.patch(files.os, "write", write)
        files.writeAll(3, b"abc")
        self.assertEqual(b"".join(written), b"abc")

    def test_nothingWritten(self) -> None:
        """A write that writes nothing raises instead of looping for ever."""
        self.patch(files.os, "write", lambda fd, data: 0)
        self.assertRaises(OSError, files.writeAll, 3, b"abc")


class LockedUpdateTests(SynchronousTestCase):
    """L{files.readTabbedLines} and L{files.updateLocked}, the small tab-separated files
    of the Maildir root (IMAP METADATA, URLAUTH keys)."""

    def setUp(self) -> None:
        """A path in a fresh directory."""
        base = self.mktemp()
        os.mkdir(base)
        self.path = os.path.join(base, "table")

    def test_readTabbedLines(self) -> None:
        """Lines with the asked number of fields are given, others skipped; a missing
        file has none."""
        self.assertEqual(files.readTabbedLines(self.path, 2), [])
        with open(self.path, "wb") as f:
            f.write(b"a\t1\nbroken\nb\t2\tthree\nc\t3\n")
        self.assertEqual(files.readTabbedLines(self.path, 2), [[b"a", b"1"], [b"c", b"3"]])

    def test_updateWritesOnlyChanges(self) -> None:
        """The change gets a copy of what was read, its result is written and returned;
        an unchanged result writes nothing; a change that raises writes nothing."""
        def read() -> dict[str, list[int]]:
            rows = files.readTabbedLines(self.path, 2)
            return {k.decode(): [int(v)] for k, v in rows}

        def serialise(d: dict[str, list[int]]) -> bytes:
            return b"".join(b"%s\t%d\n" % (k.encode(), v[0]) for k, v in sorted(d.items()))

        def add(d: dict[str, list[int]]) -> dict[str, list[int]]:
            d.setdefault("a", [0])[0] += 1
            return d

        self.assertEqual(files.updateLocked(self.path, read, serialise, add), {"a": [1]})
        self.assertEqual(files.updateLocked(self.path, read, serialise, add), {"a": [2]})
        before = os.stat(self.path).st_ino
        self.assertEqual(files.updateLocked(self.path, read, serialise, lambda d: d),
                         {"a": [2]})
        self.assertEqual(os.stat(self.path).st_ino, before)

        def refuse(d: dict[str, list[int]]) -> dict[str, list[int]]:
            d["a"][0] = 99
            raise ValueError("no")

        self.assertRaises(ValueError, files.updateLocked, self.path, read, serialise, refuse)
        self.assertEqual(read(), {"a": [2]})
        self.assertFalse(os.path.exists(self.path + ".lock"))
