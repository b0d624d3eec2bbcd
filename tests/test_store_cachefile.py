"""Tests for L{pymaild.store.cachefile}: the per-folder on-disk record cache."""

from __future__ import annotations

import errno
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import zlib

from twisted.trial.unittest import SynchronousTestCase

from pymaild.store import cachefile as cf
from pymaild.store.cachefile import CACHE_NAME, HEADER_SIZE, REC_HEADER_SIZE, CacheFile
from tests.test_store_maildir import StoreTestCase

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MSG = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
_realWrite = os.write


def value(uid: int, size: int = 100) -> bytes:
    """A deterministic value of C{size} bytes for C{uid} (different for every uid)."""
    seed = b"%d:" % uid
    return (seed * (size // len(seed) + 1))[:size]


def recordSize(v: bytes) -> int:
    """The bytes one record holding C{v} takes in the file."""
    return REC_HEADER_SIZE + len(v)


class CacheTestCase(SynchronousTestCase):
    """Base: a scratch folder directory and helpers to open caches in it."""

    def setUp(self) -> None:
        """Create the directory; every cache made with L{cache} is closed at the end."""
        self.dir = tempfile.mkdtemp(prefix="pymaild-cache-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, CACHE_NAME)

    def cache(self, validity: int = 7, path: str | None = None, **kw: int) -> CacheFile:
        """A new cache on the path (as a new process would open it)."""
        c = CacheFile(path or self.path, validity, **kw)
        self.addCleanup(c.close)
        return c

    def fileSize(self) -> int:
        """The cache file's size on disk."""
        return os.path.getsize(self.path)

    def offsetOf(self, uid: int) -> int:
        """The file offset of the (last) record of C{uid}, found by walking the file."""
        with open(self.path, "rb") as f:
            data = f.read()
        pos, found = HEADER_SIZE, -1
        while pos + REC_HEADER_SIZE <= len(data):
            _, _, u, length = struct.unpack_from("<4sIII", data, pos)
            if u == uid:
                found = pos
            pos += REC_HEADER_SIZE + length
        self.assertNotEqual(found, -1)
        return found

    def flipByte(self, offset: int) -> None:
        """Invert one byte of the file in place."""
        with open(self.path, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0xFF]))


class RoundTripTests(CacheTestCase):
    """Values come back as stored, replaced by later puts, and survive a reopen."""

    def test_roundTrip(self) -> None:
        """put stores a value that get returns; unknown UIDs are None."""
        c = self.cache()
        self.assertTrue(c.put(5, b"hello"))
        self.assertEqual(c.get(5), b"hello")
        self.assertIsNone(c.get(6))
        self.assertEqual(len(c), 1)

    def test_emptyValue(self) -> None:
        """An empty value is stored and returned as b'', not as a miss."""
        c = self.cache()
        self.assertTrue(c.put(1, b""))
        self.assertEqual(c.get(1), b"")
        self.assertEqual(self.cache().get(1), b"")

    def test_lazyOpen(self) -> None:
        """Constructing a cache touches nothing on disk; first use creates the file."""
        c = self.cache()
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual(c.size, 0)
        self.assertIsNone(c.get(1))
        self.assertEqual(self.fileSize(), HEADER_SIZE)

    def test_header(self) -> None:
        """The file starts with the magic, the format version and the UIDVALIDITY."""
        self.cache(validity=0x1234ABCD).put(1, b"x")
        with open(self.path, "rb") as f:
            head = f.read(HEADER_SIZE)
        magic, version, flags, validity, crc = struct.unpack("<8sIIII", head)
        self.assertEqual((magic, version, flags, validity), (b"PYMDCACH", 1, 0, 0x1234ABCD))
        self.assertEqual(crc, zlib.crc32(head[:20]))

    def test_replace(self) -> None:
        """A second put for a UID replaces the first; the old record is dead space."""
        c = self.cache()
        c.put(3, b"old value")
        c.put(3, b"new")
        self.assertEqual(c.get(3), b"new")
        self.assertEqual(c.stats.deadBytes, recordSize(b"old value"))
        again = self.cache()
        self.assertEqual(again.get(3), b"new")
        self.assertEqual(again.stats.deadBytes, recordSize(b"old value"))

    def test_putManyLastWins(self) -> None:
        """putMany stores every pair; a UID given twice keeps its last value."""
        c = self.cache()
        self.assertEqual(c.putMany([(1, b"a"), (2, b"b"), (1, b"c")]), 3)
        self.assertEqual(c.getMany([1, 2]), {1: b"c", 2: b"b"})
        self.assertEqual(self.cache().getMany([1, 2]), {1: b"c", 2: b"b"})

    def test_reopen(self) -> None:
        """Values persist: a new instance on the same file reads them all."""
        c = self.cache()
        c.putMany((u, value(u)) for u in range(1, 501))
        c.close()
        c2 = self.cache()
        self.assertEqual(c2.getMany(range(1, 501)), {u: value(u) for u in range(1, 501)})
        self.assertEqual(c2.get(250), value(250))
        self.assertEqual(len(c2), 500)
        self.assertEqual(c2.size, self.fileSize())

    def test_tooLarge(self) -> None:
        """A value over maxValue is refused (False, nothing written); maxValue itself fits."""
        c = self.cache(maxValue=1000)
        c.put(1, b"a")
        size = self.fileSize()
        self.assertFalse(c.put(2, b"x" * 1001))
        self.assertEqual(self.fileSize(), size)
        self.assertIsNone(c.get(2))
        self.assertEqual(c.putMany([(3, b"y" * 1001), (4, b"z" * 1000)]), 1)
        self.assertEqual(c.get(4), b"z" * 1000)
        self.assertEqual(c.stats.refused, 2)

    def test_defaultLimit(self) -> None:
        """By default values above 1 MiB are refused and 1 MiB is stored."""
        c = self.cache()
        self.assertFalse(c.put(1, bytes(cf.MAX_VALUE + 1)))
        self.assertTrue(c.put(2, bytes(cf.MAX_VALUE)))
        self.assertEqual(self.cache().get(2), bytes(cf.MAX_VALUE))

    def test_badUids(self) -> None:
        """UIDs outside 1..2**32-1: put raises ValueError (nothing stored), get misses."""
        c = self.cache()
        self.assertRaises(ValueError, c.put, 0, b"x")
        self.assertRaises(ValueError, c.put, 2**32, b"x")
        self.assertRaises(ValueError, c.putMany, [(1, b"x"), (-1, b"y")])
        self.assertIsNone(c.get(1))
        self.assertIsNone(c.get(0))
        self.assertIsNone(c.get(-3))
        self.assertIsNone(c.get(2**40))
        self.assertTrue(c.put(2**32 - 1, b"max"))
        self.assertEqual(self.cache().get(2**32 - 1), b"max")

    def test_badValidity(self) -> None:
        """A UIDVALIDITY outside 1..2**32-1 is a programming error."""
        self.assertRaises(ValueError, CacheFile, self.path, 0)
        self.assertRaises(ValueError, CacheFile, self.path, 2**32)

    def test_closed(self) -> None:
        """After close, lookups miss and puts store nothing, without errors."""
        c = self.cache()
        c.put(1, b"x")
        c.close()
        self.assertIsNone(c.get(1))
        self.assertFalse(c.put(2, b"y"))
        self.assertEqual(c.getMany([1]), {})
        self.assertFalse(c.compact([], force=True))
        c.close()

    def test_contextManager(self) -> None:
        """Used in a with statement, the cache is closed at the end."""
        with CacheFile(self.path, 7) as c:
            c.put(1, b"x")
        self.assertIsNone(c.get(1))
        self.assertEqual(self.cache().get(1), b"x")


class DiscardTests(CacheTestCase):
    """A file of another UIDVALIDITY, version or no header at all is started afresh."""

    def test_validityChange(self) -> None:
        """Opening with another UIDVALIDITY discards every record."""
        self.cache(validity=1).putMany([(1, b"a"), (2, b"b")])
        c = self.cache(validity=2)
        self.assertIsNone(c.get(1))
        self.assertEqual(self.fileSize(), HEADER_SIZE)
        c.put(1, b"new")
        self.assertEqual(self.cache(validity=2).get(1), b"new")
        self.assertIsNone(self.cache(validity=1).get(1))

    def test_otherVersion(self) -> None:
        """A header of another format version is discarded."""
        self.cache().put(1, b"a")
        with open(self.path, "r+b") as f:
            f.seek(8)
            f.write(struct.pack("<I", 2))
        self.assertIsNone(self.cache().get(1))
        self.assertEqual(self.fileSize(), HEADER_SIZE)

    def test_garbageFile(self) -> None:
        """A file of garbage is replaced by a working cache."""
        with open(self.path, "wb") as f:
            f.write(os.urandom(5000))
        c = self.cache()
        self.assertIsNone(c.get(1))
        self.assertTrue(c.put(1, b"ok"))
        self.assertEqual(self.cache().get(1), b"ok")
        self.assertEqual(self.fileSize(), HEADER_SIZE + recordSize(b"ok"))

    def test_shortHeader(self) -> None:
        """A file shorter than a header (a crash while creating it) is started afresh."""
        with open(self.path, "wb") as f:
            f.write(b"PYMD")
        c = self.cache()
        self.assertTrue(c.put(1, b"ok"))
        self.assertEqual(self.cache().get(1), b"ok")

    def test_replacedByRename(self) -> None:
        """Discarding replaces the file by rename: a reader of the old one is undisturbed."""
        old = self.cache(validity=1)
        old.put(1, b"v1 value")
        self.assertEqual(old.get(1), b"v1 value")
        ino = os.stat(self.path).st_ino
        self.assertIsNone(self.cache(validity=2).get(1))
        self.assertNotEqual(os.stat(self.path).st_ino, ino)
        self.assertEqual(old.get(1), b"v1 value")
        self.assertFalse(os.path.exists(self.path + ".new"))


class DamageTests(CacheTestCase):
    """Torn tails are truncated by writers, damaged records are misses, never values."""

    def threeRecords(self) -> int:
        """Write records 1..3 and return the file size."""
        c = CacheFile(self.path, 7)
        c.putMany((u, value(u)) for u in (1, 2, 3))
        c.close()
        return self.fileSize()

    def test_tornTail(self) -> None:
        """Half a record at the end: readers ignore it, the next writer truncates it."""
        size = self.threeRecords()
        rec = cf._packRecord(4, value(4))
        with open(self.path, "ab") as f:
            f.write(rec[:len(rec) // 2])
        reader = self.cache()
        self.assertEqual(reader.getMany([1, 2, 3, 4]), {u: value(u) for u in (1, 2, 3)})
        self.assertIsNone(reader.get(4))
        self.assertEqual(self.fileSize(), size + len(rec) // 2)  # readers do not truncate
        writer = self.cache()
        self.assertTrue(writer.put(5, value(5)))
        self.assertEqual(self.fileSize(), size + recordSize(value(5)))
        self.assertEqual(reader.get(5), value(5))
        fresh = self.cache()
        self.assertEqual(fresh.getMany([1, 2, 3, 4, 5]),
                         {u: value(u) for u in (1, 2, 3, 5)})

    def test_tornHeader(self) -> None:
        """A partial record header at the end is truncated away by the next writer."""
        size = self.threeRecords()
        with open(self.path, "ab") as f:
            f.write(cf._packRecord(4, b"x")[:7])
        c = self.cache()
        self.assertEqual(c.get(3), value(3))
        self.assertTrue(c.put(4, b"x"))
        self.assertEqual(self.fileSize(), size + recordSize(b"x"))
        self.assertEqual(self.cache().get(4), b"x")

    def test_damagedLastRecord(self) -> None:
        """A complete last record failing its crc is not used and is truncated by a writer."""
        size = self.threeRecords()
        bad = bytearray(cf._packRecord(4, value(4)))
        bad[-1] ^= 0x55
        with open(self.path, "ab") as f:
            f.write(bad)
        reader = self.cache()
        self.assertIsNone(reader.get(4))
        self.assertEqual(reader.get(3), value(3))
        self.assertEqual(self.fileSize(), size + len(bad))
        self.assertTrue(self.cache().put(6, b"six"))
        self.assertEqual(self.fileSize(), size + recordSize(b"six"))
        self.assertIsNone(self.cache().get(4))

    def test_garbageTail(self) -> None:
        """Zeros at the end (blocks never written before a power loss) are cut off."""
        size = self.threeRecords()
        with open(self.path, "ab") as f:
            f.write(bytes(4096))
        c = self.cache()
        self.assertEqual(c.getMany([1, 2, 3]), {u: value(u) for u in (1, 2, 3)})
        self.assertTrue(c.put(4, b"four"))
        self.assertEqual(self.fileSize(), size + recordSize(b"four"))

    def test_crcCorruption(self) -> None:
        """A flipped payload byte makes that record a miss; the others read fine."""
        self.threeRecords()
        self.flipByte(self.offsetOf(2) + REC_HEADER_SIZE + 10)
        c = self.cache()
        self.assertIsNone(c.get(2))
        self.assertEqual(c.get(1), value(1))
        self.assertEqual(c.get(3), value(3))
        self.assertEqual(c.getMany([1, 2, 3]), {1: value(1), 3: value(3)})
        self.assertGreaterEqual(c.stats.corrupt, 1)
        self.assertTrue(c.put(2, b"recomputed"))
        self.assertEqual(c.get(2), b"recomputed")
        self.assertEqual(self.cache().get(2), b"recomputed")

    def test_corruptionAfterIndexing(self) -> None:
        """A record damaged after an instance indexed it is still a miss (reads check)."""
        self.threeRecords()
        c = self.cache()
        self.assertEqual(c.get(2), value(2))
        self.flipByte(self.offsetOf(2) + REC_HEADER_SIZE + 3)
        self.assertIsNone(c.get(2))
        self.assertEqual(c.getMany([1, 2, 3]), {1: value(1), 3: value(3)})

    def test_damagedUidField(self) -> None:
        """A flipped bit in a record's UID field yields no value for either UID."""
        self.threeRecords()
        off = self.offsetOf(2)
        self.flipByte(off + 8)  # low byte of the uid
        c = self.cache()
        self.assertEqual(c.getMany(range(1, 300)), {1: value(1), 3: value(3)})
        self.assertIsNone(c.get(2 ^ 0xFF))

    def test_damagedLengthField(self) -> None:
        """A damaged length field: no wrong value is ever returned, and writing recovers."""
        self.threeRecords()
        with open(self.path, "r+b") as f:
            f.seek(self.offsetOf(2) + 12)
            f.write(struct.pack("<I", 5))
        c = self.cache()
        got = c.getMany([1, 2, 3])
        self.assertEqual(got.get(1), value(1))
        for u, v in got.items():
            self.assertEqual(v, value(u))
        self.assertTrue(c.put(9, b"nine"))
        self.assertEqual(self.cache().get(9), b"nine")
        self.assertEqual(self.cache().get(1), value(1))

    def test_fileTruncatedUnderneath(self) -> None:
        """A file cut short behind an instance's back: misses, then it re-indexes."""
        self.threeRecords()
        c = self.cache()
        self.assertEqual(c.get(3), value(3))
        os.truncate(self.path, self.offsetOf(3))
        self.assertIsNone(c.get(3))
        self.assertTrue(c.put(4, b"four"))
        self.assertEqual(c.getMany([1, 2, 3, 4]), {1: value(1), 2: value(2), 4: b"four"})
        self.assertEqual(self.cache().get(4), b"four")


class SharingTests(CacheTestCase):
    """Two instances on one file (as two processes) see each other's records."""

    def test_interleavedAppends(self) -> None:
        """Appends from two instances interleave; each finds the other's records."""
        a, b = self.cache(), self.cache()
        a.put(1, value(1))
        b.put(2, value(2))
        a.putMany([(3, value(3)), (5, value(5))])
        b.put(4, value(4))
        expected = {u: value(u) for u in range(1, 6)}
        self.assertEqual(a.getMany(range(1, 6)), expected)
        self.assertEqual(b.get(1), value(1))
        self.assertEqual(b.get(5), value(5))
        self.assertEqual(self.cache().getMany(range(1, 6)), expected)
        self.assertEqual(self.fileSize(),
                         HEADER_SIZE + sum(recordSize(v) for v in expected.values()))

    def test_otherReplacementSeenOnRefresh(self) -> None:
        """Another instance's replacement of a known UID shows after refresh (until then
        the older value, still a right one, is returned)."""
        a, b = self.cache(), self.cache()
        a.put(1, b"partial")
        self.assertEqual(b.get(1), b"partial")
        a.put(1, b"complete")
        self.assertEqual(b.get(1), b"partial")
        b.refresh()
        self.assertEqual(b.get(1), b"complete")

    def test_writerIndexesOthersFirst(self) -> None:
        """A writer indexes what the other appended before appending its own records."""
        a, b = self.cache(), self.cache()
        a.get(1)
        b.putMany((u, value(u)) for u in range(1, 50))
        a.put(50, value(50))
        self.assertEqual(a.stats.records, 50)
        self.assertEqual(a.size, self.fileSize())

    def test_processes(self) -> None:
        """Two real processes appending at the same time lose and damage nothing."""
        script = (
            "import sys\n"
            "from pymaild.store.cachefile import CacheFile\n"
            "c = CacheFile(sys.argv[1], 7)\n"
            "first = int(sys.argv[2])\n"
            "for b in range(first, 4001, 40):\n"
            "    c.putMany((u, (b'%d:' % u) * 30) for u in range(b, b + 40, 2))\n"
            "    assert c.get(b) == (b'%d:' % b) * 30\n"
            "print(len(c))\n"
        )
        env = dict(os.environ, PYTHONPATH=ROOT)
        procs = [subprocess.Popen([sys.executable, "-c", script, self.path, str(first)],
                                  env=env, stdout=subprocess.PIPE) for first in (1, 2)]
        for p in procs:
            out, _ = p.communicate(timeout=120)
            self.assertEqual(p.returncode, 0)
            self.assertGreaterEqual(int(out), 2000)
        c = self.cache()
        expected = {u: (b"%d:" % u) * 30 for u in range(1, 4001)}
        self.assertEqual(c.getMany(range(1, 4001)), expected)
        self.assertEqual(self.fileSize(),
                         HEADER_SIZE + sum(recordSize(v) for v in expected.values()))


class CompactionTests(CacheTestCase):
    """compact() rewrites the file when garbage is large and is a no-op otherwise."""

    def fill(self, c: CacheFile, uids: range, size: int = 1000) -> None:
        """Store values of C{size} bytes for C{uids}, in batches."""
        us = list(uids)
        for i in range(0, len(us), 256):
            c.putMany((u, value(u, size)) for u in us[i:i + 256])

    def test_noopWhenSmall(self) -> None:
        """Under 1 MiB of garbage nothing happens, however much is dead."""
        c = self.cache()
        self.fill(c, range(1, 200))
        ino = os.stat(self.path).st_ino
        self.assertFalse(c.compact(set()))
        self.assertEqual(os.stat(self.path).st_ino, ino)
        self.assertEqual(len(c), 199)

    def test_noopWhenMostlyLive(self) -> None:
        """More than 1 MiB of garbage but under half the file: no rewrite."""
        c = self.cache()
        self.fill(c, range(1, 3001))
        ino = os.stat(self.path).st_ino
        self.assertFalse(c.compact(range(1, 1601)))
        self.assertEqual(os.stat(self.path).st_ino, ino)

    def test_dropsDeadUids(self) -> None:
        """Records of UIDs not in live are dropped; live ones are kept, in a new file."""
        c = self.cache()
        self.fill(c, range(1, 1501))
        ino = os.stat(self.path).st_ino
        self.assertTrue(c.compact(range(1, 301)))
        self.assertNotEqual(os.stat(self.path).st_ino, ino)
        live = {u: value(u, 1000) for u in range(1, 301)}
        self.assertEqual(self.fileSize(),
                         HEADER_SIZE + sum(recordSize(v) for v in live.values()))
        self.assertEqual(c.getMany(range(1, 1501)), live)
        self.assertEqual(self.cache().getMany(range(1, 1501)), live)
        self.assertEqual(c.stats.compactions, 1)
        self.assertEqual(c.stats.deadBytes, 0)
        self.assertFalse(os.path.exists(self.path + ".new"))
        self.assertTrue(c.put(2000, b"after"))
        self.assertEqual(self.cache().get(2000), b"after")

    def test_dropsReplacedRecords(self) -> None:
        """Replaced records count as garbage; the last value of each UID is kept."""
        c = self.cache()
        for round_ in range(30):
            c.putMany((u, value(u * 1000 + round_, 4000)) for u in range(1, 11))
        self.assertTrue(c.compact([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
        want = {u: value(u * 1000 + 29, 4000) for u in range(1, 11)}
        self.assertEqual(c.getMany(range(1, 11)), want)
        self.assertEqual(self.fileSize(),
                         HEADER_SIZE + sum(recordSize(v) for v in want.values()))

    def test_force(self) -> None:
        """force rewrites even a small file."""
        c = self.cache()
        self.fill(c, range(1, 11))
        self.assertTrue(c.compact({2, 4}, force=True))
        self.assertEqual(c.getMany(range(1, 11)), {2: value(2, 1000), 4: value(4, 1000)})

    def test_otherInstanceNoticesReplacement(self) -> None:
        """An instance that indexed the old file keeps reading it, then follows the new one
        on a miss, and its appends land in the new file."""
        a, b = self.cache(), self.cache()
        self.fill(a, range(1, 1501))
        self.assertEqual(b.get(100), value(100, 1000))
        self.assertEqual(b.get(1000), value(1000, 1000))
        self.assertTrue(a.compact(range(1, 201)))
        self.assertEqual(b.get(100), value(100, 1000))
        a.put(5000, b"new")
        self.assertEqual(b.get(5000), b"new")
        self.assertIsNone(b.get(1000))
        self.assertTrue(b.put(5001, b"from b"))
        self.assertEqual(a.get(5001), b"from b")
        fresh = self.cache()
        self.assertEqual(fresh.getMany([100, 5000, 5001]),
                         {100: value(100, 1000), 5000: b"new", 5001: b"from b"})

    def test_staleWriterAfterCompaction(self) -> None:
        """A writer still holding the compacted-away file reopens before appending."""
        a, b = self.cache(), self.cache()
        self.fill(a, range(1, 1501))
        b.get(1)
        self.assertTrue(a.compact(range(1, 11)))
        self.assertTrue(b.putMany([(7000, b"x"), (7001, b"y")]))
        self.assertEqual(self.cache().getMany([5, 7000, 7001]),
                         {5: value(5, 1000), 7000: b"x", 7001: b"y"})

    def test_compactSkipsDamagedRecords(self) -> None:
        """A damaged record is not copied into the compacted file."""
        c = self.cache()
        self.fill(c, range(1, 1501))
        c.get(1)
        self.flipByte(self.offsetOf(5) + REC_HEADER_SIZE + 1)
        self.assertTrue(c.compact(range(1, 11)))
        want = {u: value(u, 1000) for u in range(1, 11) if u != 5}
        self.assertEqual(self.cache().getMany(range(1, 11)), want)


class GetManyTests(CacheTestCase):
    """getMany reads neighbouring records with one pread and scattered ones apart."""

    def countPreads(self) -> list[int]:
        """Count os.pread calls (sizes) from now on."""
        sizes: list[int] = []
        real = os.pread

        def pread(fd: int, n: int, off: int) -> bytes:
            sizes.append(n)
            return real(fd, n, off)

        self.patch(os, "pread", pread)
        return sizes

    def test_contiguousOneRead(self) -> None:
        """Records written together come back with one read of their span."""
        self.cache().putMany((u, value(u, 300)) for u in range(1, 201))
        c = self.cache()
        c.get(1)
        sizes = self.countPreads()
        got = c.getMany(range(1, 201))
        self.assertEqual(got, {u: value(u, 300) for u in range(1, 201)})
        self.assertEqual(sizes, [200 * recordSize(value(1, 300))])

    def test_scatteredSeparateReads(self) -> None:
        """Records far apart are read one by one, each exactly."""
        c = self.cache()
        c.putMany((u, value(u, 40000)) for u in range(1, 11))
        sizes = self.countPreads()
        self.assertEqual(c.getMany([9, 1, 5]), {u: value(u, 40000) for u in (1, 5, 9)})
        self.assertEqual(sizes, [recordSize(value(1, 40000))] * 3)

    def test_mixed(self) -> None:
        """Runs of neighbours are grouped, far records read alone."""
        c = self.cache()
        c.putMany((u, value(u, 100)) for u in range(1, 21))
        c.put(21, bytes(100000))
        c.putMany((u, value(u, 100)) for u in range(22, 31))
        sizes = self.countPreads()
        got = c.getMany([1, 2, 3, 25, 26])
        self.assertEqual(got, {u: value(u, 100) for u in (1, 2, 3, 25, 26)})
        self.assertEqual(len(sizes), 2)

    def test_unknownDuplicatesAndInvalid(self) -> None:
        """Unknown, repeated and invalid UIDs are simply absent from the answer."""
        c = self.cache()
        c.put(1, b"one")
        self.assertEqual(c.getMany([1, 1, 999, 0, -5, 2**33]), {1: b"one"})
        self.assertEqual(c.getMany([]), {})
        self.assertEqual(c.getMany([404]), {})

    def test_seesOtherInstance(self) -> None:
        """UIDs appended by another instance are found (one stat, then re-indexing)."""
        a, b = self.cache(), self.cache()
        a.put(1, b"a")
        self.assertEqual(b.getMany([1]), {1: b"a"})
        a.putMany([(2, b"b"), (3, b"c")])
        self.assertEqual(b.getMany([1, 2, 3]), {1: b"a", 2: b"b", 3: b"c"})


class ReadSpansTests(CacheTestCase):
    """readSpans reads records in bulk, checked once, in file order, spans cut where
    getMany cuts its reads."""

    def values(self, spans: list[cf.Span]) -> dict[int, bytes]:
        """{uid: payload} of every record of C{spans}, checking each span's layout."""
        out: dict[int, bytes] = {}
        for span in spans:
            self.assertEqual(len(span.uids), len(span.starts))
            self.assertEqual(len(span.uids), len(span.ends))
            self.assertEqual(span.starts, sorted(span.starts))
            for uid, a, b in zip(span.uids, span.starts, span.ends, strict=True):
                self.assertNotIn(uid, out)
                out[uid] = span.data[a:b]
        return out

    def test_roundTrip(self) -> None:
        """Stored values come back in one span, the others as missing; empty or invalid
        UIDs ask for nothing."""
        self.cache().putMany((u, value(u, 300)) for u in range(1, 51) if u % 7)
        c = self.cache()
        spans, missing = c.readSpans(list(range(1, 61)))
        self.assertEqual(len(spans), 1)
        self.assertEqual(self.values(spans),
                         {u: value(u, 300) for u in range(1, 51) if u % 7})
        self.assertEqual(missing, [u for u in range(1, 61) if not u % 7 or u > 50])
        self.assertEqual(c.readSpans([]), ([], []))
        self.assertEqual(c.readSpans([0, 1, 2**33])[1], [])
        self.assertEqual(c.stats.hits, 44)

    def test_wideGapsAndLimit(self) -> None:
        """Records far apart (a large record not asked for between them) are in
        separate spans; so are runs longer than the span limit."""
        c = self.cache()
        c.putMany((u, value(u, 100)) for u in range(1, 11))
        c.put(11, bytes(40000))
        c.putMany((u, value(u, 100)) for u in range(12, 21))
        want = [u for u in range(1, 21) if u != 11]
        spans, missing = self.cache().readSpans(want)
        self.assertEqual([s.uids for s in spans], [list(range(1, 11)), list(range(12, 21))])
        self.assertEqual(missing, [])
        self.patch(cf, "_MAX_SPAN", 3 * recordSize(value(1, 100)))
        spans, _ = self.cache().readSpans(want)
        self.assertEqual(len(spans), 7)
        self.assertEqual(self.values(spans), {u: value(u, 100) for u in want})

    def test_fileOrder(self) -> None:
        """Records stored in descending UID order, and replaced ones, come in file
        order with their last values."""
        c = self.cache()
        for u in range(20, 0, -1):
            c.put(u, value(u))
        c.put(5, b"five")
        spans, _ = self.cache().readSpans(list(range(1, 21)))
        self.assertEqual([u for s in spans for u in s.uids],
                         [*range(20, 5, -1), *range(4, 0, -1), 5])
        self.assertEqual(self.values(spans),
                         {u: b"five" if u == 5 else value(u) for u in range(1, 21)})

    def test_damagedRecord(self) -> None:
        """A damaged record is left out, reported missing and dropped from the index."""
        self.cache().putMany((u, value(u)) for u in range(1, 6))
        self.flipByte(self.offsetOf(3) + REC_HEADER_SIZE + 5)
        c = self.cache()
        spans, missing = c.readSpans([1, 2, 3, 4, 5])
        self.assertEqual(self.values(spans), {u: value(u) for u in (1, 2, 4, 5)})
        self.assertEqual(missing, [3])
        self.assertEqual(c.stats.corrupt, 1)
        self.assertIsNone(c.get(3))

    def test_accept(self) -> None:
        """A record C{accept} refuses is reported missing (and kept in the index);
        accepted records are not checked again, by crc or C{accept}."""
        self.cache().putMany((u, value(u)) for u in range(1, 6))
        c = self.cache()
        seen: list[int] = []

        def accept(uid: int, data: bytes, start: int, end: int) -> bool:
            seen.append(uid)
            self.assertEqual(data[start:end], value(uid))
            return uid != 2

        spans, missing = c.readSpans([1, 2, 3, 4, 5], accept)
        self.assertEqual(sorted(self.values(spans)), [1, 3, 4, 5])
        self.assertEqual((missing, seen), ([2], [1, 2, 3, 4, 5]))
        self.assertEqual(c.get(2), value(2))
        seen.clear()
        spans, missing = c.readSpans([1, 2, 3, 4, 5], accept)
        self.assertEqual((missing, seen), ([2], [2]))
        # A record damaged after it was checked is still read (the check is not
        # repeated), though by this instance only.
        self.flipByte(self.offsetOf(4) + REC_HEADER_SIZE + 5)
        seen.clear()
        spans, _ = c.readSpans([4], accept)
        self.assertEqual((len(spans), seen), (1, []))
        self.assertEqual(self.cache().readSpans([4], accept), ([], [4]))

    def test_trustedAppends(self) -> None:
        """Records appended with trusted=True are not checked by this instance; those
        of other instances are, and a replaced (compacted) file is checked anew."""
        c = self.cache()
        c.putMany([(u, value(u)) for u in range(1, 4)], trusted=True)
        c.putMany([(4, value(4))])
        other = self.cache()
        other.put(5, value(5))
        seen: list[int] = []

        def accept(uid: int, data: bytes, start: int, end: int) -> bool:
            seen.append(uid)
            return True

        spans, missing = c.readSpans([1, 2, 3, 4, 5], accept)
        self.assertEqual((len(self.values(spans)), missing, seen), (5, [], [4, 5]))
        seen.clear()
        c.readSpans([1, 2, 3, 4, 5], accept)
        self.assertEqual(seen, [])
        self.assertTrue(other.compact({1, 2, 3, 4, 5}, force=True))
        c.readSpans([1, 2, 3, 4, 5], accept)  # still the file it has open
        self.assertEqual(seen, [])
        c.refresh()
        spans, _ = c.readSpans([1, 2, 3, 4, 5], accept)
        self.assertEqual(self.values(spans), {u: value(u) for u in range(1, 6)})
        self.assertEqual(seen, [1, 2, 3, 4, 5])

    def test_missing(self) -> None:
        """missing() names the UIDs without a record, from the index alone."""
        c = self.cache()
        c.putMany([(1, b"a"), (3, b"c")])
        self.assertEqual(c.missing([3, 2, 1, 4, 0]), [2, 4, 0])
        c.close()
        self.assertEqual(c.missing([1]), [1])


class IndexTests(SynchronousTestCase):
    """The in-memory UID index: dense window plus sparse dict, always exact."""

    def check(self, order: list[int]) -> cf._UidIndex:
        """Insert C{order} (packing the position) and compare with a dict."""
        idx = cf._UidIndex()
        ref: dict[int, int] = {}
        wrong = []
        for n, u in enumerate(order):
            packed = ((n + 1) << cf._LEN_BITS) | 16
            if idx.set(u, packed) != ref.get(u, 0):
                wrong.append(u)
            ref[u] = packed
        self.assertEqual(wrong, [])
        self.assertEqual({u: idx.get(u) for u in ref}, ref)
        self.assertEqual(idx.count, len(ref))
        self.assertEqual(dict(idx.items()), ref)
        self.assertEqual(len(list(idx.items())), len(ref))
        for u in (0, 10**12, max(ref) + 1):
            if u not in ref:
                self.assertEqual(idx.get(u), 0)
        return idx

    def test_denseAscendingSmall(self) -> None:
        """100,000 ascending UIDs take well under 2 MB (8 bytes each, no dict)."""
        idx = self.check(list(range(1, 100001)))
        self.assertFalse(idx.sparse)
        self.assertLess(idx.memory(), 1_000_000)

    def test_descending(self) -> None:
        """Descending UIDs (newest fetched first) end up in the dense window."""
        idx = self.check(list(range(20000, 0, -1)))
        self.assertLess(len(idx.sparse), 20000 // 4)
        self.assertLess(idx.memory(), 20000 * 8 * 2)

    def test_randomOrderWithReplacements(self) -> None:
        """Random order, repeats and far outliers all stay exact."""
        rnd = random.Random(42)
        uids = list(range(1000, 21000)) * 2 + [1, 2**32 - 1, 3_000_000, 2_000_000_000]
        rnd.shuffle(uids)
        idx = self.check(uids)
        self.assertLess(idx.memory(), 20000 * 8 * 3)

    def test_sparseHuge(self) -> None:
        """Widely spread UIDs go to the dict without a huge array."""
        idx = self.check([i * 1_000_003 for i in range(1, 3000)])
        self.assertLess(len(idx.dense), 100000)

    def test_windowGrowsOverSparse(self) -> None:
        """A UID parked in the dict stays found when the window later grows over it."""
        idx = cf._UidIndex()
        idx.set(1, 11 << cf._LEN_BITS | 1)
        idx.set(9000, 22 << cf._LEN_BITS | 1)
        self.assertIn(9000, idx.sparse)
        for u in range(2, 8000):
            idx.set(u, (u + 100) << cf._LEN_BITS | 1)
        idx.set(9500, 33 << cf._LEN_BITS | 1)
        self.assertEqual(idx.get(9000), 22 << cf._LEN_BITS | 1)
        self.assertEqual(idx.set(9000, 44 << cf._LEN_BITS | 1), 22 << cf._LEN_BITS | 1)
        self.assertEqual(idx.get(9000), 44 << cf._LEN_BITS | 1)
        self.assertEqual(idx.count, 8001)

    def test_pop(self) -> None:
        """pop forgets a UID from either part and returns its entry."""
        idx = cf._UidIndex()
        idx.set(5, 99)
        idx.set(4_000_000_000, 77)
        self.assertEqual(idx.pop(5), 99)
        self.assertEqual(idx.pop(4_000_000_000), 77)
        self.assertEqual(idx.pop(6), 0)
        self.assertEqual(idx.count, 0)

    def test_bytesNotIn(self) -> None:
        """The garbage count of compact: a range and the equal set give the same total."""
        idx = cf._UidIndex()
        for u in list(range(50, 150)) + [3, 10**9]:
            idx.set(u, (u << cf._LEN_BITS) | (u % 100 + 16))
        for live in (range(60, 100), range(0, 10), range(100, 10**6), range(1, 2**32)):
            want = sum(p & cf._LEN_MASK for u, p in idx.items() if u not in live)
            self.assertEqual(idx.bytesNotIn(live), want)
            self.assertEqual(idx.bytesNotIn(set(live) if len(live) < 10**5 else live), want)
        self.assertEqual(idx.bytesNotIn(set()),
                         sum(p & cf._LEN_MASK for _, p in idx.items()))

    def test_scanOfOutOfOrderFile(self) -> None:
        """A file written in descending UID order indexes exactly."""
        d = tempfile.mkdtemp(prefix="pymaild-cache-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, CACHE_NAME)
        c = CacheFile(path, 3)
        for u in range(3000, 0, -1):
            c.put(u, value(u, 20))
        c.put(4_000_000_000, b"far")
        c.close()
        c = CacheFile(path, 3)
        self.addCleanup(c.close)
        want = {u: value(u, 20) for u in range(1, 3001)}
        want[4_000_000_000] = b"far"
        self.assertEqual(c.getMany(list(want)), want)


class ThreadTests(CacheTestCase):
    """Many threads putting, getting and compacting at once see only right values."""

    def test_threads(self) -> None:
        """Six writer/reader threads and a compacting thread: no error, no wrong value."""
        c = self.cache()
        errors: list[BaseException] = []
        stop = threading.Event()

        def worker(t: int) -> None:
            rnd = random.Random(t)
            try:
                for i in range(300):
                    u = t * 1000 + i + 1
                    if i % 3:
                        self.assertTrue(c.put(u, value(u, 700)))
                    else:
                        self.assertEqual(c.putMany([(u, value(u, 700))]), 1)
                    self.assertEqual(c.get(u), value(u, 700))
                    other = rnd.randrange(1000, 7300)
                    got = c.get(other)
                    if got is not None:
                        self.assertEqual(got, value(other, 700))
                    for k, v in c.getMany(range(other, other + 20)).items():
                        self.assertEqual(v, value(k, 700))
            except BaseException as e:
                errors.append(e)

        def compactor() -> None:
            try:
                # A pause between rewrites: back to back, this thread takes the lock
                # again as soon as it lets go (CPython's locks are not fair), and on a
                # loaded machine the writers then starve past their join timeout.
                while not stop.wait(0.002):
                    c.compact(range(1, 100000), force=True)
            except BaseException as e:
                errors.append(e)

        before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(1, 7)]
        comp = threading.Thread(target=compactor)
        comp.start()
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        stop.set()
        comp.join(120)
        # A thread still running would make the checks below read a half-done state.
        self.assertEqual([th.name for th in [*threads, comp] if th.is_alive()], [])
        self.assertEqual(errors, [])
        self.assertGreater(c.stats.compactions, 0)
        want = {t * 1000 + i + 1: value(t * 1000 + i + 1, 700)
                for t in range(1, 7) for i in range(300)}
        self.assertEqual(c.getMany(list(want)), want)
        fresh = self.cache()
        self.assertEqual(fresh.getMany(list(want)), want)
        fresh.close()
        c.close()
        if before:
            self.assertLessEqual(len(os.listdir("/proc/self/fd")), before)


class ErrorTests(CacheTestCase):
    """Disk full, permissions and vanished folders never raise; the cache just misses."""

    def test_diskFull(self) -> None:
        """ENOSPC on write: put returns False, nothing is left in the file; later it works."""
        c = self.cache()
        c.put(1, b"one")
        size = self.fileSize()

        def full(fd: int, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", full)
        self.assertFalse(c.put(2, b"two"))
        self.assertEqual(c.putMany([(3, b"x"), (4, b"y")]), 0)
        self.assertIsNone(c.get(2))
        self.assertEqual(c.get(1), b"one")
        self.assertEqual(self.fileSize(), size)
        self.assertEqual(c.stats.writeErrors, 2)
        self.patch(os, "write", _realWrite)
        self.assertTrue(c.put(2, b"two"))
        self.assertEqual(self.cache().getMany([1, 2]), {1: b"one", 2: b"two"})

    def test_partialWrite(self) -> None:
        """A write cut short by ENOSPC is truncated away: no torn record remains."""
        c = self.cache()
        c.put(1, b"one")
        size = self.fileSize()
        calls = []

        def halfThenFull(fd: int, data: bytes) -> int:
            calls.append(len(data))
            if len(calls) == 1:
                return _realWrite(fd, bytes(data)[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", halfThenFull)
        self.assertFalse(c.putMany((u, value(u)) for u in range(2, 10)))
        self.assertEqual(self.fileSize(), size)
        self.patch(os, "write", _realWrite)
        self.assertEqual(self.cache().getMany(range(1, 10)), {1: b"one"})
        self.assertTrue(c.put(2, b"two"))
        self.assertEqual(self.cache().getMany(range(1, 10)), {1: b"one", 2: b"two"})

    def test_diskFullWhenCreating(self) -> None:
        """ENOSPC writing the header of a new file: misses and refusals, no error."""
        def full(fd: int, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", full)
        c = self.cache()
        self.assertIsNone(c.get(1))
        self.assertFalse(c.put(1, b"x"))

    def test_readOnlyDirectory(self) -> None:
        """No file and a directory we cannot write: misses and refusals, no file made."""
        if os.getuid() == 0:
            self.skipTest("root ignores directory permissions")
        os.chmod(self.dir, 0o500)
        self.addCleanup(os.chmod, self.dir, 0o700)
        c = self.cache()
        self.assertIsNone(c.get(1))
        self.assertFalse(c.put(1, b"x"))
        self.assertEqual(c.getMany([1]), {})
        self.assertFalse(c.compact([], force=True))
        self.assertFalse(os.path.exists(self.path))

    def test_readOnlyFile(self) -> None:
        """A file we may only read: lookups work, puts return False."""
        if os.getuid() == 0:
            self.skipTest("root ignores file permissions")
        self.cache().putMany([(1, b"a"), (2, b"b")])
        os.chmod(self.path, 0o400)
        c = self.cache()
        self.assertEqual(c.getMany([1, 2]), {1: b"a", 2: b"b"})
        self.assertFalse(c.put(3, b"c"))
        self.assertFalse(c.stats.writable)
        self.assertFalse(c.compact([], force=True))

    def refuseWritableOpens(self, err: int) -> None:
        """Make os.open fail with C{err} for opens asking to write or create."""
        real = os.open

        def fakeOpen(path: str, flags: int, mode: int = 0o777) -> int:
            if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
                raise OSError(err, os.strerror(err), path)
            return real(path, flags, mode)

        self.patch(os, "open", fakeOpen)

    def test_eaccesCreating(self) -> None:
        """EACCES creating the file (any uid, simulated): misses, refusals, no file."""
        self.refuseWritableOpens(errno.EACCES)
        c = self.cache()
        self.assertIsNone(c.get(1))
        self.assertFalse(c.put(1, b"x"))
        self.assertEqual(c.getMany([1, 2]), {})
        self.assertFalse(os.path.exists(self.path))

    def test_readOnlyFilesystem(self) -> None:
        """EROFS (simulated): an existing cache is read, puts return False."""
        self.cache().putMany([(1, b"a"), (2, b"b")])
        self.refuseWritableOpens(errno.EROFS)
        c = self.cache()
        self.assertEqual(c.getMany([1, 2, 3]), {1: b"a", 2: b"b"})
        self.assertFalse(c.put(3, b"c"))
        self.assertFalse(c.stats.writable)
        self.assertFalse(c.compact([], force=True))

    def test_readOnlyForeignFile(self) -> None:
        """A read-only file of another UIDVALIDITY cannot be replaced: the cache is off."""
        self.cache(validity=1).put(1, b"a")
        self.refuseWritableOpens(errno.EROFS)
        c = self.cache(validity=2)
        self.assertIsNone(c.get(1))
        self.assertFalse(c.put(1, b"b"))

    def test_folderMissing(self) -> None:
        """A cache in a directory that does not exist misses and stores nothing."""
        c = self.cache(path=os.path.join(self.dir, "gone", CACHE_NAME))
        self.assertIsNone(c.get(1))
        self.assertFalse(c.put(1, b"x"))
        self.assertEqual(c.putMany([(1, b"x")]), 0)

    def test_folderDeletedUnderneath(self) -> None:
        """The folder vanishes while the cache is open: puts fail quietly, reads of
        records already indexed still answer (from the open file, still right)."""
        sub = os.path.join(self.dir, "folder")
        os.mkdir(sub)
        c = self.cache(path=os.path.join(sub, CACHE_NAME))
        c.put(1, b"one")
        shutil.rmtree(sub)
        self.assertFalse(c.put(2, b"two"))
        self.assertIsNone(c.get(2))
        self.assertFalse(os.path.exists(sub))

    def test_readError(self) -> None:
        """EIO from pread is a miss, not an exception."""
        c = self.cache()
        c.put(1, b"one")

        def broken(fd: int, n: int, off: int) -> bytes:
            raise OSError(errno.EIO, "I/O error")

        self.patch(os, "pread", broken)
        self.assertIsNone(c.get(1))
        self.assertEqual(c.getMany([1]), {})



class MaildirTests(StoreTestCase):
    """The store is unaffected by cache files in folder directories."""

    def setUp(self) -> None:
        """A store with one account and a folder "A" holding one message."""
        super().setUp()
        self.account.createFolder("A")
        self.account.createFolder("A/Child")
        self.folder = self.account.folder("A")
        self.uid = self.folder.append(MSG)
        self.state = self.folder.scan()

    def cacheFor(self, name: str) -> CacheFile:
        """The cache of folder C{name} with its current UIDVALIDITY."""
        f = self.account.folder(name)
        c = CacheFile(os.path.join(f.path, CACHE_NAME), f.scan().uidvalidity)
        self.addCleanup(c.close)
        return c

    def test_listingAndScan(self) -> None:
        """Cache files in INBOX and a folder change neither the folder list nor a scan."""
        self.cacheFor("INBOX").put(1, b"x")
        self.cacheFor("A").put(self.uid, b"summary")
        self.assertEqual(self.account.listFolders(), ["INBOX", "A", "A/Child"])
        state = self.account.folder("A").scan()
        self.assertEqual([m.uid for m in state.messages], [self.uid])
        self.assertEqual(state.uidvalidity, self.state.uidvalidity)
        self.assertEqual(self.account.folder("INBOX").scan().messages, [])

    def test_renameKeepsCache(self) -> None:
        """RENAME moves the cache with the folder; UIDVALIDITY and records still match."""
        self.cacheFor("A").put(self.uid, b"summary")
        self.cacheFor("A/Child").put(1, b"child")
        self.account.renameFolder("A", "B")
        self.assertEqual(self.account.listFolders(), ["INBOX", "B", "B/Child"])
        b = self.account.folder("B")
        self.assertEqual(b.scan().uidvalidity, self.state.uidvalidity)
        self.assertTrue(os.path.exists(os.path.join(b.path, CACHE_NAME)))
        self.assertEqual(self.cacheFor("B").get(self.uid), b"summary")
        self.assertEqual(self.cacheFor("B/Child").get(1), b"child")

    def test_deleteWithCache(self) -> None:
        """DELETE removes a folder holding a cache file (and an open cache) completely."""
        c = self.cacheFor("A/Child")
        c.put(1, b"child")
        self.account.deleteFolder("A/Child")
        self.assertEqual(self.account.listFolders(), ["INBOX", "A"])
        self.assertFalse(os.path.exists(os.path.join(self.account.root, ".A.Child")))
        self.assertFalse(c.put(2, b"late"))
        self.assertEqual(os.listdir(os.path.join(self.account.root, "tmp")), [])

    def test_deleteThenRecreate(self) -> None:
        """A folder re-created under the same name gets a new UIDVALIDITY: the old
        instance's late writes cannot leak into it."""
        old = self.cacheFor("A")
        old.put(self.uid, b"old folder")
        self.account.renameFolder("A/Child", "Kid")
        self.account.deleteFolder("A")
        self.account.createFolder("A")
        old.put(self.uid + 1, b"late")
        new = self.cacheFor("A")
        self.assertNotEqual(new.uidValidity, old.uidValidity)
        self.assertIsNone(new.get(self.uid))
        self.assertIsNone(new.get(self.uid + 1))

    def test_renameInboxWithCache(self) -> None:
        """Renaming INBOX leaves its cache at the root and gives the new folder none."""
        self.store.deliver(["bob@example.com"], MSG)
        inbox = self.cacheFor("INBOX")
        inbox.put(1, b"inbox")
        self.account.renameFolder("INBOX", "Old")
        self.assertEqual(self.account.listFolders(), ["INBOX", "A", "A/Child", "Old"])
        old = self.account.folder("Old")
        self.assertFalse(os.path.exists(os.path.join(old.path, CACHE_NAME)))
        self.assertEqual(len(old.scan().messages), 1)
        self.assertEqual(self.cacheFor("INBOX").get(1), b"inbox")
