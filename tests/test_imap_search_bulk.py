"""SEARCH over the folders' header files gives exactly what the plain way gives.

L{pymaild.imap.search.spanMatches} searches the header records of a whole stretch of a
header file at once (the needle looked for in the stretch lower-cased, each occurrence
placed in its record and field by L{pymaild.imap.search._inField}); it is checked
against the plain way (C{parseHeaders}, unfolding, C{decodeHeaderText}, case folding:
the oracle of L{tests.test_imap_search_fast}) on hand-written and hypothesis-generated
records with junk between them. SEARCH over a real mailbox answers the same from the
header file as without it, after a restart (records checked again), with a damaged
header file, with another message's record in it, and for messages it lacks.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap import search
from pymaild.imap.search import HeaderKey, spanMatches
from pymaild.imap.summary import HEADER_PLAIN, HEADER_PREFIX, packHeaderRecord, unpackHeaderRecord
from pymaild.imap.summarycache import StructureCache
from pymaild.imap.syntax import Reader
from pymaild.store.cachefile import HEADERS_NAME, REC_HEADER_SIZE, CacheFile, Span
from tests.fuzzing import fuzzCase
from tests.test_imap_helpers import IMAPEnv, makeMessage
from tests.test_imap_search_fast import (
    NAMES,
    _block,
    _needle,
    oddHeaderMessages,
    oracleMatch,
    searchAnswers,
)


def makeSpan(blocks: list[bytes], gaps: list[bytes] | None = None) -> Span:
    """A span as L{pymaild.store.cachefile.CacheFile.readSpans} gives it, holding the
    header records of C{blocks} (UIDs 1, 2, ...; keys C{k1}, C{k2}, ...), each after a
    stand-in record header and its gap from C{gaps} (junk bytes, as replaced records
    or records not asked for)."""
    parts: list[bytes] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for i, block in enumerate(blocks):
        gap = gaps[i] if gaps else b""
        record = packHeaderRecord(f"k{i + 1}", block)
        head = b"PMR\x1e" + struct.pack("<III", 0xFFFF_FFFF - i, i + 1, len(record))
        parts += [gap, head, record]
        pos += len(gap) + REC_HEADER_SIZE
        starts.append(pos)
        pos += len(record)
        ends.append(pos)
    return Span(b"".join(parts), list(range(1, len(blocks) + 1)), starts, ends)


def expected(blocks: list[bytes], keys: list[tuple[str, str]]) -> list[int] | None:
    """The UIDs (from 1) of the blocks every (name, needle) key matches the plain way;
    None where the plain way raises (some charsets)."""
    out = []
    for uid, block in enumerate(blocks, 1):
        try:
            if all(oracleMatch(block, name, needle) for name, needle in keys):
                out.append(uid)
        except ValueError:
            return None
    return out


def matched(span: Span, keys: list[tuple[str, str]]) -> list[int]:
    """The UIDs L{spanMatches} gives for C{keys}, with their blocks checked."""
    found = spanMatches(span, [HeaderKey(name, needle) for name, needle in keys])
    for uid, block in found:
        start = span.starts[span.uids.index(uid)]
        assert span.data[start:span.ends[span.uids.index(uid)]].endswith(block)
    return sorted(uid for uid, _ in found)


_gap = st.one_of(
    st.just(b""),
    st.sampled_from([b"ZULU", b"zulu", b"\nSubject: zulu\r\n", b"\r\n", b"Subject:",
                     b"=?utf-8?q?zulu?=", b"\xff\xfe", b"report zulu", b"\n "]),
    st.binary(max_size=24),
)


class SpanMatchesTests(SynchronousTestCase):
    """L{spanMatches} answers as the plain way does, record by record."""

    BLOCKS = [
        b"From: zulu@example.net\r\nSubject: hello\r\n\r\n",
        b"Subject: Zulu report\r\n\r\n",
        b"Subject: hello\r\n zulu there\r\n\r\n",
        b"X-Subject: zulu\r\nSubject: other\r\n\r\n",
        b"Subject : zulu\r\n\r\n",
        b"subject:zulu",
        b"Sub\r\n ject: zulu\r\n\r\n",
        b" Subject: zulu\r\n\r\n",
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_zulu?=\r\n\r\n",
        b"Subject: =?utf-8?b?WnVsdQ==?=\r\n\r\n",
        b"From: =?utf-8?q?x?= <a@b>\r\nSubject: zulu\r\n\r\n",
        b"Subject: Gr\xc3\xbc\xc3\x9fe zulu\r\n\r\n",
        b"Subject: zu\r\n lu\r\n\r\n",
        b"Subject: a\r\nSubject: b zulu\r\n\r\n",
        b"Subject: nothing\r\nFrom: zulu\r\n\r\n",
        b"Subject\r\n : zulu\r\n\r\n",
        b"Subject: zulu",
        b"",
        b"Subjectzulu: x\r\n\r\n",
        b"Subject: x\rSubject: zulu\r\n\r\n",
        b"Subject: x\nSubject: zulu\n\n",
    ]

    def test_records(self) -> None:
        """Plain records are decided by where the needle occurs; encoded and 8-bit ones
        are decoded; the occurrences in other fields, in a field name, split by a fold
        or in the bytes between records do not count."""
        span = makeSpan(self.BLOCKS, [b"zulu", b"Subject: zulu\r\n", b""] * 7)
        for keys in ([("subject", "zulu")], [("from", "zulu")], [("x-subject", "zulu")],
                     [("subject", "grüße")], [("subject", "subject")],
                     [("subject", "zulu"), ("from", "zulu")], [("subject", "zu")],
                     [("subject", "zulu there")], [("subject", "")],
                     [("a b", "zulu")], [("subject", ":")]):
            self.assertEqual(matched(span, keys), expected(self.BLOCKS, keys), keys)
        self.assertEqual(matched(span, [("subject", "zulu")]),
                         [2, 3, 5, 6, 8, 9, 10, 11, 12, 14, 16, 17, 20, 21])

    def test_bulkKeys(self) -> None:
        """Which keys are searched for in bulk: a plain name with a needle beyond ASCII
        or a non-empty ASCII one without white space."""
        self.assertTrue(HeaderKey("subject", "zulu").bulk)
        self.assertTrue(HeaderKey("subject", "grüße").bulk)
        self.assertTrue(HeaderKey("x-tag", "=?").bulk)
        for name, needle in [("subject", ""), ("subject", "a b"), ("subject", "a\tb"),
                             ("subject", "a\x0bb"), ("subject", "a\r"), ("a b", "zulu"),
                             ("Subject", "zulu"), ("x-\xe4", "zulu"), ("", "zulu")]:
            self.assertFalse(HeaderKey(name, needle).bulk, (name, needle))

    def test_records_flags(self) -> None:
        """A header record names its message, and flags a block that is ASCII without
        encoded words; another message's or damaged bytes are refused."""
        record = packHeaderRecord("key", b"Subject: x\r\n\r\n")
        self.assertEqual(record[2], HEADER_PLAIN)
        self.assertEqual(record[HEADER_PREFIX:HEADER_PREFIX + 3], b"key")
        self.assertEqual(unpackHeaderRecord(record, "key"), b"Subject: x\r\n\r\n")
        self.assertIsNone(unpackHeaderRecord(record, "other"))
        self.assertIsNone(unpackHeaderRecord(record, "ke"))
        self.assertIsNone(unpackHeaderRecord(b"X" + record[1:], "key"))
        self.assertIsNone(unpackHeaderRecord(record[:4], "key"))
        self.assertEqual(packHeaderRecord("k", b"Subject: =?x?q?y?=\r\n")[2], 0)
        self.assertEqual(packHeaderRecord("k", b"Subject: \xff\r\n")[2], 0)

    def test_emptySpan(self) -> None:
        """A span without records matches nothing."""
        self.assertEqual(spanMatches(Span(b"junk zulu", [], [], []),
                                     [HeaderKey("subject", "zulu")]), [])

    @fuzzCase(600)
    @given(blocks=st.lists(_block, min_size=1, max_size=6),
           gaps=st.lists(_gap, min_size=6, max_size=6),
           name=st.sampled_from(NAMES + ["subject"] * 4), needle=_needle, data=st.data())
    def test_sameAsPlainWay(self, blocks: list[bytes], gaps: list[bytes], name: str,
                            needle: str, data: Any) -> None:
        """For any records, junk between them, name and needle (and sometimes a second
        key), the UIDs the plain way finds."""
        keys = [(name, needle)]
        if data.draw(st.booleans()):
            keys.append((data.draw(st.sampled_from(NAMES)), data.draw(_needle)))
        want = expected(blocks, keys)
        if want is None:
            spanMatches(makeSpan(blocks, gaps), [HeaderKey(n, s) for n, s in keys])
            return  # answers, does not raise
        self.assertEqual(matched(makeSpan(blocks, gaps), keys), want)


class HeaderFileSearchTests(SynchronousTestCase):
    """SEARCH over a real mailbox answers the same from the folder's header file."""

    QUERIES = [
        "SUBJECT zulu", "HEADER Subject zulu", "FROM zulu", "TO zulu", "SUBJECT report",
        "HEADER X-Weird odd", 'HEADER "a b" spaced', "SUBJECT =?", "NOT SUBJECT zulu",
        "OR SUBJECT zulu FROM zulu", "SUBJECT zulu SEEN", "SUBJECT zulu UNSEEN",
        'SUBJECT "hello there"', "TEXT zulu", "HEADER Message-ID 3", "SUBJECT x",
        'CHARSET UTF-8 SUBJECT "grüße"', 'CHARSET UTF-8 SUBJECT "straße"', "SUBJECT y",
        "SUBJECT zulu SUBJECT report", "SUBJECT zulu 2:5", "SUBJECT zulu BODY text",
        'SUBJECT ""',
    ]

    def setUp(self) -> None:
        """Messages with plain, folded, encoded, 8-bit and odd headers."""
        self.env = IMAPEnv(self)
        self.env.deliver(*oddHeaderMessages(),
                         makeMessage("Zulu", extra=b"Subject: second report\r\n"))
        self.path = os.path.join(self.env.folder().path, HEADERS_NAME)

    def searchAll(self) -> dict[str, list[int]]:
        """Every query's answer from a fresh session."""
        c = self.env.selected()
        c.ok("STORE 2:4 +FLAGS.SILENT (\\Seen)")
        return searchAnswers(self, c, self.QUERIES)

    def restart(self) -> None:
        """A fresh structure cache, as after a restart."""
        self.env.avatars.cache.close()
        self.env.avatars.cache = StructureCache()

    def headerFile(self) -> CacheFile:
        """The INBOX header file, opened as another process would."""
        cf = CacheFile(self.path, self.env.folder().scan().uidvalidity)
        self.addCleanup(cf.close)
        return cf

    def headerCount(self) -> int:
        """How many INBOX messages the header file has a record of."""
        uids = [m.uid for m in self.env.folder().scan().messages]
        return len(uids) - len(self.headerFile().missing(uids))

    def test_sameAnswers(self) -> None:
        """The answers are right, and the same without the header file (the first
        search, with no cache at all), from it (after FETCH ENVELOPE wrote it, and after
        a restart, its records checked again), and without any cache file."""
        self.restart()
        self.env.avatars.cache = StructureCache(files=False)
        plain = self.searchAll()
        self.restart()
        cold = self.searchAll()
        self.assertEqual(cold, plain)
        self.assertTrue(os.path.exists(self.path))
        self.assertEqual(self.headerCount(), 9)
        c = self.env.selected()
        c.ok("FETCH 1:* (ENVELOPE BODYSTRUCTURE)")
        c.lose()
        self.assertEqual(self.searchAll(), plain)
        self.restart()
        self.assertEqual(self.searchAll(), plain)
        self.assertEqual(plain["SUBJECT zulu"], [1, 3, 9])
        self.assertEqual(plain["SUBJECT zulu SEEN"], [3])
        self.assertEqual(plain["SUBJECT zulu SUBJECT report"], [1, 9])
        self.assertEqual(plain["SUBJECT zulu 2:5"], [3])
        self.assertEqual(plain["SUBJECT zulu BODY text"], [1, 3, 9])
        self.assertEqual(plain['CHARSET UTF-8 SUBJECT "grüße"'], [3, 6])
        self.assertEqual(plain['SUBJECT ""'], list(range(1, 10)))

    def test_readsOnlyTheHeaderFile(self) -> None:
        """With every header in the header file, a header search opens no message and
        reads no summary."""
        self.searchAll()
        self.restart()

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("read a message or summary the header file has")

        from pymaild.imap import mailbox

        self.patch(mailbox, "loadSummary", refuse)
        self.patch(mailbox, "readHeader", refuse)
        self.patch(StructureCache, "headersFromFile", refuse)
        c = self.env.selected()
        self.assertIn(b"* SEARCH 1 3 9\r\n", c.ok("SEARCH SUBJECT zulu"))
        self.assertIn(b"* SEARCH 2\r\n", c.ok('SEARCH CHARSET UTF-8 CC "zulu@"'))

    def test_damagedRecord(self) -> None:
        """A damaged record of the header file is not believed (after a restart): the
        answers stay right and the record is written again."""
        self.searchAll()
        want = self.searchAll()
        with open(self.path, "r+b") as f:
            data = f.read()
            pos = data.index(b"zulu report")
            f.seek(pos)
            f.write(b"ZZZZ")
        self.restart()
        self.assertEqual(self.searchAll(), want)
        first = self.env.folder().scan().messages[0]
        record = self.headerFile().get(first.uid)
        assert record is not None
        self.assertIn(b"Subject: zulu report\r\n", unpackHeaderRecord(record, first.key))

    def test_otherMessagesRecord(self) -> None:
        """A record naming another message (as after a uidlist rebuilt with the same
        UIDVALIDITY) is not taken for this one."""
        state = self.env.folder().scan()
        first, second = state.messages[0], state.messages[1]
        cf = self.headerFile()
        cf.put(first.uid, packHeaderRecord(second.key, b"Subject: nothing\r\n\r\n"))
        cf.put(second.uid, packHeaderRecord(second.key, b"Subject: zulu\r\n\r\n"))
        cf.close()
        self.restart()
        c = self.env.selected()
        # The first message's own header is read instead; the second's record is its own.
        self.assertIn(b"* SEARCH 1 2 3 9\r\n", c.ok("SEARCH SUBJECT zulu"))

    def test_messagesTheFileLacks(self) -> None:
        """Messages delivered after the header file was written are found (read from
        their files) and then added to it; so are those whose summaries only the
        cache file of an older version had."""
        self.searchAll()
        self.env.deliver(makeMessage("late zulu"), makeMessage("late other"))
        c = self.env.selected()
        self.assertIn(b"* SEARCH 1 3 9 10\r\n", c.ok("SEARCH SUBJECT zulu"))
        self.assertEqual(self.headerCount(), 11)
        # As after an upgrade: summaries in the cache file, no header file.
        c.ok("FETCH 1:* ENVELOPE")
        c.lose()
        self.restart()
        os.unlink(self.path)
        c = self.env.selected()
        self.assertIn(b"* SEARCH 1 3 9 10\r\n", c.ok("SEARCH SUBJECT zulu"))
        self.assertEqual(self.headerCount(), 11)

    def test_fileTierOff(self) -> None:
        """A cache keeping no files answers the same (no header file is made)."""
        want = self.searchAll()
        self.restart()
        os.unlink(self.path)
        self.env.avatars.cache = StructureCache(files=False)
        self.assertEqual(self.searchAll(), want)
        self.assertFalse(os.path.exists(self.path))

    def test_batches(self) -> None:
        """With header files read a few messages at a time, the answers (in order)
        are the same."""
        want = self.searchAll()
        self.patch(search, "BULK_BATCH", 2)
        self.restart()
        self.assertEqual(self.searchAll(), want)


class RunSearchTests(SynchronousTestCase):
    """runSearch's bulk path over a view: ghosts are left out, seqs come in order."""

    def test_ghostsAndOrder(self) -> None:
        """A message that vanished in another session (a ghost) is never in the
        answer; the others are, by sequence number, ascending."""
        from tests.test_imap_search_fast import View

        env = IMAPEnv(self)
        env.deliver(*[makeMessage(f"zulu {i}") for i in range(5)])
        folder = env.folder()
        infos = list(folder.scan().messages)
        cache = StructureCache()
        self.addCleanup(cache.close)
        for info in infos[::-1]:
            cache.recordHeader(folder, info, makeMessage(f"zulu {info.uid}").split(
                b"\r\n\r\n")[0] + b"\r\n\r\n")
        cache.flush()
        view = View(folder, infos, cache)
        view.ghosts = frozenset({infos[1].uid})
        out: list[list[int]] = []
        search.runSearch(view, search.parseSearch(Reader([b"SUBJECT zulu"]))[1]
                         ).addCallback(out.append)
        self.assertEqual(out, [[1, 3, 4, 5]])
