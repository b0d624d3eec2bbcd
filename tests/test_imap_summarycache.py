"""The on-disk tier of the IMAP summary cache: ENVELOPE, BODY, BODYSTRUCTURE and header
blocks kept in each folder's C{pymaild.cache}, so they survive a restart and a large
mailbox's summaries cost disk rather than memory; damaged, foreign or stale records are
never believed, and EXPUNGE lets the file shrink. The header blocks are kept once more,
alone, in each folder's C{pymaild.headers} (for SEARCH)."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap import bodystructure, mimeparse, summary
from pymaild.imap.summary import Summary, packSummary, unpackHeader, unpackSummary
from pymaild.imap.summarycache import StructureCache
from pymaild.store import cachefile
from tests.test_imap_helpers import ALICE, IMAPEnv, makeMessage

MULTI = (b"From: Carol <carol@remote.example>\r\nTo: alice@example.org\r\n"
         b"Subject: parts\r\nMIME-Version: 1.0\r\n"
         b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
         b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
         b"--b\r\nContent-Type: application/pdf\r\n\r\n%PDF\r\n--b--\r\n")

ITEMS = "(ENVELOPE BODY BODYSTRUCTURE BODY.PEEK[HEADER])"


def responses(out: bytes) -> list[bytes]:
    """The untagged FETCH lines of a reply, without the trailing tagged line."""
    return [line for line in out.split(b"\r\n") if line.startswith(b"* ")]


def expungeShrinks(case: SynchronousTestCase, env: IMAPEnv, path: str) -> None:
    """EXPUNGE messages 2 and 3 of the INBOX (with compaction allowed at any size) and
    check that the file at C{path} got smaller."""
    case.patch(cachefile, "COMPACT_MIN_BYTES", 0)
    before = os.path.getsize(path)
    c = env.selected()
    c.ok("STORE 2:3 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")
    case.assertLess(os.path.getsize(path), before)


class PackTests(SynchronousTestCase):
    """A summary packed for the file comes back only for its own message."""

    def test_roundTrip(self) -> None:
        """Every field survives packing, None ones included."""
        for s in (Summary(b"(env)", 12, b"H: v\r\n\r\n", b"(body)", b"(bs)"),
                  Summary(b"(env)", 5, None), Summary(b"()", 0, b"", None, b"(x)")):
            back = unpackSummary(packSummary("key1", s), "key1")
            assert back is not None
            self.assertEqual((back.envelope, back.bodyStart, back.header, back.body,
                              back.bodystructure),
                             (s.envelope, s.bodyStart, s.header, s.body, s.bodystructure))

    def test_headerOnly(self) -> None:
        """The header block alone comes out of a packed summary; None when it was not
        kept, for another message's record, or for damaged bytes."""
        packed = packSummary("k", Summary(b"(env)", 9, b"H: v\r\n\r\n", None, b"(bs)"))
        self.assertEqual(unpackHeader(packed, "k"), b"H: v\r\n\r\n")
        self.assertIsNone(unpackHeader(packed, "other"))
        self.assertIsNone(unpackHeader(packed[:-1], "k"))
        self.assertIsNone(unpackHeader(packSummary("k", Summary(b"(e)", 1, None)), "k"))

    def test_otherMessageRefused(self) -> None:
        """A record packed for another message key (a UID reused after the uidlist was
        rebuilt) is not taken for this one."""
        packed = packSummary("key1", Summary(b"(env)", 1, None))
        self.assertIsNone(unpackSummary(packed, "key2"))

    def test_damageRefused(self) -> None:
        """Truncated, extended or foreign bytes are refused."""
        packed = packSummary("k", Summary(b"(env)", 1, b"h", b"b", b"s"))
        self.assertIsNone(unpackSummary(packed[:-1], "k"))
        self.assertIsNone(unpackSummary(packed + b"x", "k"))
        self.assertIsNone(unpackSummary(b"XX" + packed[2:], "k"))
        self.assertIsNone(unpackSummary(b"", "k"))


class FileTierTests(SynchronousTestCase):
    """FETCH answers from the cache file after a restart, and never from a bad one."""

    def setUp(self) -> None:
        """Alice's INBOX with a multipart and two plain messages, fetched once (which
        writes their summaries to the folder's cache file)."""
        self.env = IMAPEnv(self)
        self.env.deliver(MULTI, makeMessage("one"), makeMessage("two"))
        c = self.env.selected()
        self.first = responses(c.cmd(f"FETCH 1:* {ITEMS}"))
        self.assertEqual(len(self.first), 3)
        self.path = os.path.join(self.env.folder().path, cachefile.CACHE_NAME)

    def restart(self) -> bytes:
        """A fresh in-memory cache (as after a restart) and the same FETCH again."""
        self.env.avatars.cache.close()
        self.env.avatars.cache = StructureCache()
        return self.env.selected().cmd(f"FETCH 1:* {ITEMS}")

    def test_summariesSurviveRestart(self) -> None:
        """After a restart the same answers come from the file: no message is parsed."""
        self.assertTrue(os.path.getsize(self.path) > 0)

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("parsed a message the cache file knows")

        self.patch(mimeparse, "parseMessage", refuse)
        self.patch(summary, "summariseHeader", refuse)
        from pymaild.imap import mailbox

        self.patch(mailbox, "parseMessage", refuse)
        self.patch(mailbox, "summariseHeader", refuse)
        self.assertEqual(responses(self.restart()), self.first)

    def test_garbageFileRecomputed(self) -> None:
        """A cache file overwritten with garbage is not believed: the answers are
        computed again, identical."""
        with open(self.path, "r+b") as f:
            size = f.seek(0, 2)
            f.seek(0)
            f.write(os.urandom(size))
        self.assertEqual(responses(self.restart()), self.first)

    def test_flippedByteRecomputed(self) -> None:
        """A record with one byte changed is a miss, never a wrong answer."""
        with open(self.path, "r+b") as f:
            data = f.read()
            pos = data.index(b"parts")  # inside the multipart's ENVELOPE
            f.seek(pos)
            f.write(b"P")
        self.assertEqual(responses(self.restart()), self.first)

    def test_expungeCompacts(self) -> None:
        """EXPUNGE of most messages lets the cache file drop their records."""
        expungeShrinks(self, self.env, self.path)
        out = self.restart()
        self.assertEqual(len(re.findall(rb"\* \d+ FETCH", out)), 1)
        self.assertEqual(responses(out)[0], self.first[0])


class PartialRecordTests(SynchronousTestCase):
    """A file record made by ENVELOPE alone serves the BODYSTRUCTURE fetched later."""

    def test_envelopeReusedAfterRestart(self) -> None:
        """After a restart, FETCH BODYSTRUCTURE of messages whose file records hold only
        their ENVELOPE parses their bodies but does not compute their ENVELOPE again,
        and answers exactly as a cold server does; the memory tier then holds the
        complete summaries."""
        env = IMAPEnv(self)
        env.deliver(MULTI, makeMessage("one"), makeMessage("two"))
        expected = responses(env.selected().cmd("FETCH 1:* (ENVELOPE BODYSTRUCTURE)"))
        path = os.path.join(env.folder().path, cachefile.CACHE_NAME)
        os.unlink(path)
        env.avatars.cache.close()
        env.avatars.cache = StructureCache()
        self.assertEqual(len(responses(env.selected().cmd("FETCH 1:* ENVELOPE"))), 3)
        env.avatars.cache.close()
        env.avatars.cache = cache = StructureCache()

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("computed an ENVELOPE the cache file knows")

        for module in (bodystructure, mimeparse, summary):
            self.patch(module, "envelopeBytes", refuse)
        self.assertEqual(
            responses(env.selected().cmd("FETCH 1:* (ENVELOPE BODYSTRUCTURE)")), expected)
        folder = env.folder()
        for info in folder.scan().messages:
            cached = cache.peekSummary((folder.path, info.key))
            assert cached is not None
            self.assertIsNotNone(cached.bodystructure)


class HeaderFileTests(SynchronousTestCase):
    """Each folder's header file (C{pymaild.headers}) gets every cached header block
    once, shrinks with EXPUNGE, and is filled from the summaries of an older cache."""

    def setUp(self) -> None:
        """Alice's INBOX with three messages, fetched once."""
        self.env = IMAPEnv(self)
        self.env.deliver(MULTI, makeMessage("one"), makeMessage("two"))
        self.env.selected().ok(f"FETCH 1:* {ITEMS}")
        self.folder = self.env.folder()
        self.infos = list(self.folder.scan().messages)
        self.path = os.path.join(self.folder.path, cachefile.HEADERS_NAME)

    def headerFile(self) -> cachefile.CacheFile:
        """The header file, opened as another process would."""
        cf = cachefile.CacheFile(self.path, self.folder.scan().uidvalidity)
        self.addCleanup(cf.close)
        return cf

    def test_writtenOnce(self) -> None:
        """The header blocks are written once: computing the summaries again (after a
        restart) appends nothing."""
        records = self.headerFile().getMany([i.uid for i in self.infos])
        self.assertEqual(len(records), 3)
        with self.folder.open(self.infos[0]) as f:
            self.assertTrue(f.read().startswith(
                summary.unpackHeaderRecord(records[self.infos[0].uid], self.infos[0].key)))
        size = os.path.getsize(self.path)
        self.env.avatars.cache.close()
        self.env.avatars.cache = StructureCache()
        os.unlink(os.path.join(self.folder.path, cachefile.CACHE_NAME))
        self.env.selected().ok(f"FETCH 1:* {ITEMS}")
        self.env.avatars.cache.flush()
        self.assertEqual(os.path.getsize(self.path), size)

    def test_largeHeaderNotKept(self) -> None:
        """A header block larger than the cache keeps is not queued."""
        cache = StructureCache()
        self.addCleanup(cache.close)
        os.unlink(self.path)
        cache.recordHeader(self.folder, self.infos[0], b"X: " + bytes(summary.HEADER_CACHE_MAX))
        cache.flush()
        self.assertFalse(os.path.exists(self.path))

    def test_expungeCompacts(self) -> None:
        """EXPUNGE of most messages lets the header file drop their records."""
        expungeShrinks(self, self.env, self.path)
        self.assertEqual(self.headerFile().missing([i.uid for i in self.infos]),
                         [i.uid for i in self.infos[1:]])

    def test_filledFromSummaries(self) -> None:
        """Without a header file (as after an upgrade) the header blocks come from the
        cache file's summaries, and are then written to a new header file."""
        os.unlink(self.path)
        cache = StructureCache()
        self.addCleanup(cache.close)
        blocks = cache.headersFromFile(self.folder, self.infos)
        self.assertEqual(sorted(blocks), sorted(i.key for i in self.infos))
        self.assertTrue(blocks[self.infos[1].key].endswith(b"\r\n\r\n"))
        cache.flush()
        records = self.headerFile().getMany([i.uid for i in self.infos])
        self.assertEqual({i.key: summary.unpackHeaderRecord(records[i.uid], i.key)
                          for i in self.infos}, blocks)
        self.assertEqual(cache.headersFromFile(self.folder, self.infos), blocks)


class OwnedCacheTests(SynchronousTestCase):
    """The cache belongs to the IMAP avatars the composition root builds: their sessions
    share it, and a second set of avatars in the same process has its own."""

    def test_sessionsShareTheAvatarsCache(self) -> None:
        """A session's FETCH fills the cache of its avatars; the account of every
        session they open holds that same cache, and other avatars over the same store
        (built without a cache, as the tap builds them) start with their own, empty."""
        from pymaild.imap.account import IMAPAvatars

        env = IMAPEnv(self)
        env.deliver(MULTI, makeMessage("one"))
        env.selected().ok("FETCH 1:* (ENVELOPE BODYSTRUCTURE)")
        folder = env.folder()
        keys = [(folder.path, info.key) for info in folder.scan().messages]
        self.assertTrue(all(env.avatars.cache.peekSummary(k) is not None for k in keys))
        account, logout = env.avatars(ALICE)
        self.addCleanup(logout)
        self.assertIs(account.cache, env.avatars.cache)

        first = IMAPAvatars(env.store, env.runner, env.config, watcher=False)
        second = IMAPAvatars(env.store, env.runner, env.config, watcher=False)
        self.addCleanup(first.cache.close)
        self.addCleanup(second.cache.close)
        self.assertIsNot(first.cache, second.cache)
        self.assertIsNot(first.cache, env.avatars.cache)
        self.assertTrue(all(first.cache.peekSummary(k) is None for k in keys))
        other, otherLogout = first(ALICE)
        self.addCleanup(otherLogout)
        self.assertIs(other.cache, first.cache)
