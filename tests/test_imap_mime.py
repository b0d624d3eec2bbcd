"""MIME structure: byte ranges, ENVELOPE and BODYSTRUCTURE edge cases, the LRU cache."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap.fetch import FetchItem, parseFetchAttributes, sectionRange
from pymaild.imap.mimeheader import parseAddressList
from pymaild.imap.mimeparse import parseMessage
from pymaild.imap.summarycache import StructureCache
from pymaild.imap.syntax import BadCommand, Reader, SequenceSet, serialise


class AddressTests(SynchronousTestCase):
    """Address-list parsing for ENVELOPE."""

    def test_forms(self) -> None:
        """Display names, quoted names, comments, bare addresses and routes."""
        self.assertEqual(parseAddressList(b'"Doe, John" <john@x.example>'),
                         [(b"Doe, John", None, b"john", b"x.example")])
        self.assertEqual(parseAddressList(b"jane@y.example (Jane)"),
                         [(b"Jane", None, b"jane", b"y.example")])
        self.assertEqual(parseAddressList(b"<@route.example:bob@z.example>"),
                         [(None, b"@route.example", b"bob", b"z.example")])
        self.assertEqual(parseAddressList(b"Ann Lee <ann@a.example>, b@b.example"),
                         [(b"Ann Lee", None, b"ann", b"a.example"),
                          (None, None, b"b", b"b.example")])

    def test_groups(self) -> None:
        """Empty groups and groups with members get start and end markers."""
        self.assertEqual(
            parseAddressList(b"undisclosed-recipients:;"),
            [(None, None, b"undisclosed-recipients", None), (None, None, None, None)],
        )

    def test_missingAndGarbage(self) -> None:
        """None for a missing header, no crash on junk."""
        self.assertIsNone(parseAddressList(None))
        parseAddressList(b'<<<"unterminated ((( , ;;; :')


class StructureTests(SynchronousTestCase):
    """Part trees and serialised structures."""

    def test_noHeaders(self) -> None:
        """A message without headers still has an envelope of NILs and a text body."""
        p = parseMessage(b"\r\njust a body\r\n")
        self.assertEqual(p.envelope, b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")
        self.assertTrue(p.bodystructure.startswith(b'("text" "plain"'))

    def test_noBlankLine(self) -> None:
        """A message that is all header has an empty body."""
        p = parseMessage(b"Subject: x\r\n")
        self.assertEqual(p.root.bodyStart, p.root.end)

    def test_nestedMultipart(self) -> None:
        """multipart/alternative inside multipart/mixed: byte ranges of each leaf."""
        msg = (b'Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n'
               b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
               b"--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b\r\n"
               b"Content-Type: text/html\r\n\r\n<p>html</p>\r\n--b--\r\n"
               b"--a\r\nContent-Type: application/pdf; name=x.pdf\r\n"
               b"Content-Disposition: attachment; filename=\"x.pdf\"\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--a--\r\n")
        p = parseMessage(msg)

        def body(path: tuple[int, ...]) -> bytes:
            a, b = sectionRange(p, FetchItem("section", path=path))
            return msg[a:b]

        self.assertEqual(body((1, 1)), b"plain")
        self.assertEqual(body((1, 2)), b"<p>html</p>")
        self.assertEqual(body((2,)), b"AAAA")
        self.assertIn(b'"alternative"', p.bodystructure)
        self.assertIn(b'("attachment" ("filename" "x.pdf"))', p.bodystructure)
        self.assertIn(b'"base64" 4 NIL', p.bodystructure)

    def test_missingBoundary(self) -> None:
        """A multipart without its boundary gets one empty text/plain part."""
        p = parseMessage(b"Content-Type: multipart/mixed\r\n\r\nnothing\r\n")
        self.assertTrue(p.body.startswith(b'(("text" "plain"'))

    def test_depthLimit(self) -> None:
        """Absurd nesting stops at MAX_DEPTH without recursion errors."""
        msg = b""
        for i in range(60):
            msg += b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        msg += b"\r\nleaf\r\n"
        parseMessage(msg)

    def test_lfOnly(self) -> None:
        """LF-only input still splits header and body."""
        p = parseMessage(b"Subject: s\n\nbody\n")
        self.assertIn(b'"s"', p.envelope)

    def test_cache(self) -> None:
        """The LRU keeps at most maxEntries and counts hits."""
        cache = StructureCache(maxEntries=2)
        p = parseMessage(b"Subject: a\r\n\r\nb")
        cache.put(("f", "1"), p)
        cache.put(("f", "2"), p)
        self.assertIs(cache.get(("f", "1")), p)
        cache.put(("f", "3"), p)
        self.assertIsNone(cache.get(("f", "2")))
        self.assertEqual(len(cache), 2)
        self.assertEqual(cache.hits, 1)


class SyntaxTests(SynchronousTestCase):
    """Reader, sequence sets, serialiser and FETCH attribute parsing."""

    def test_sequenceSetNeverExpands(self) -> None:
        """A huge range is kept as a range."""
        s = SequenceSet.parse(b"1:4294967295,7,*")
        self.assertTrue(s.contains(4000000000, 10))
        self.assertEqual(str(s), "1:4294967295,7,*")
        self.assertRaises(BadCommand, SequenceSet.parse, b"0")
        self.assertRaises(BadCommand, SequenceSet.parse, b"1,,2")

    def test_quotedEscapes(self) -> None:
        """Quoted strings unescape \\\\ and \\"."""
        r = Reader([b'"a\\"b\\\\c" rest'])
        self.assertEqual(r.astring(), b'a"b\\c')

    def test_serialiseChoosesLiteral(self) -> None:
        """8-bit or CR/LF data becomes a literal."""
        self.assertEqual(serialise([b"a", None, 3]), b'("a" NIL 3)')
        self.assertEqual(serialise(b"\xc3\xa9"), b"{2}\r\n\xc3\xa9")

    def test_fetchAttributes(self) -> None:
        """Labels echo sections; PEEK is dropped from the label."""
        items = parseFetchAttributes(b"(UID BODY.PEEK[1.2.HEADER.FIELDS (A B)]<0.9>)")
        self.assertEqual(items[1].responseLabel(), b"BODY[1.2.HEADER.FIELDS (A B)]<0>")
        self.assertTrue(items[1].peek)
        self.assertEqual(parseFetchAttributes(b"BODY[]")[0].responseLabel(), b"BODY[]")


class FastPathTests(SynchronousTestCase):
    """The fast paths (simple address lists, direct ENVELOPE bytes, header-only
    summaries, the two-tier cache) give exactly what the general code gives."""

    def test_simpleAddressesAsTokenizer(self) -> None:
        """Common address forms parse the same with and without the fast path."""
        import random

        from pymaild.imap import mimeheader

        rng = random.Random(3501)
        names = [b"Joe", b"Joe Doe", b"  Joe   Doe ", b"=?utf-8?q?J=C3=B6?=", b"O'Neil", b"",
                 b"J. Doe", b'"Doe, J"', b"(c)"]
        locals_ = [b"joe", b"j.doe", b"a+tag", b"a..b", b".a", b"x_y"]
        hosts = [b"example.com", b"h", b"a-b.c", b"a..b", b"[1.2.3.4]"]
        fast = 0
        for _ in range(3000):
            parts = []
            for _ in range(rng.randint(1, 3)):
                a = rng.choice(locals_) + b"@" + rng.choice(hosts)
                parts.append(a if rng.random() < 0.4 else rng.choice(names) + b" <" + a + b">")
            value = rng.choice([b",", b", "]).join(parts) + rng.choice([b"", b" ", b","])
            fast += mimeheader._simpleAddressList(value) is not None
            general = mimeheader._simpleAddressList
            self.patch(mimeheader, "_simpleAddressList", lambda v, *limit: None)
            expected = mimeheader.parseAddressList(value)
            self.patch(mimeheader, "_simpleAddressList", general)
            self.assertEqual(mimeheader.parseAddressList(value), expected, value)
        self.assertGreater(fast, 200)  # the fast path was really exercised

    def test_envelopeBytes(self) -> None:
        """envelopeBytes equals serialising envelope() for awkward headers."""
        from pymaild.imap import bodystructure, mimeparse, summary
        from pymaild.imap.syntax import serialise

        blocks = [
            b'Subject: a "q" \\ b\r\nFrom: "Doe, J" <j@d>, x@y (c)\r\n'
            b"To: undisclosed-recipients:;\r\nCc: A <a@b>, <c@d>\r\nDate: x\r\n\r\n",
            b"From: =?utf-8?q?x?= <a@b>\r\nSubject:\r\nSender: s@h\r\n\r\n",
            b"\r\n",
            b"Subject: " + b"x" * 2000 + b"\r\n\r\n",
            b"From: \xc3\xa9 <a@b>\r\nReply-To: r@h\r\nIn-Reply-To: <i@d>\r\n\r\n",
        ]
        for block in blocks:
            part = mimeparse.parseMessage(block + b"body\r\n").root
            self.assertEqual(bodystructure.envelopeBytes(part),
                             serialise(bodystructure.envelope(part)), block)
            self.assertEqual(summary.summariseHeader(block).envelope,
                             mimeparse.parseMessage(block + b"body\r\n").envelope)

    def test_readHeaderBlock(self) -> None:
        """readHeaderBlock returns what parseMessage calls the header, whatever the
        header's size (across read sizes) and without a blank line at all; the parse
        keeps the block only up to HEADER_CACHE_MAX."""
        from pymaild.imap import mimeparse, summary

        for msg in (b"A: b\r\n\r\nbody", b"\r\nbody", b"no blank line",
                    b"X: " + b"y" * 40000 + b"\r\n\r\n" + b"z" * 10,
                    b"X: " + b"y" * 16378 + b"\r\n\r\nbody", b"X: b\n\nLF body"):
            parsed = mimeparse.parseMessage(msg)
            self.assertEqual(summary.readHeaderBlock(lambda n, m=msg: m[:n]),
                             msg[: parsed.headerSize], msg[:20])
            # The parse keeps the block itself only when it is small enough to cache.
            self.assertEqual(parsed.header,
                             msg[: parsed.headerSize]
                             if parsed.headerSize <= summary.HEADER_CACHE_MAX else None)

    def test_summaryBudget(self) -> None:
        """Summaries are evicted least recently used first once over the byte budget,
        and a complete summary is not replaced by a header-only one."""
        from pymaild.imap import mimeparse, summary

        full = mimeparse.parseMessage(b"Subject: a\r\n\r\nb")
        cache = StructureCache(maxEntries=1, maxSummaryBytes=3 * summary.summaryOf(full).cost())
        for k in "1234":
            cache.put(("f", k), full)
        self.assertIsNone(cache.summary(("f", "1")))
        self.assertIsNotNone(cache.summary(("f", "4")))
        self.assertEqual(len(cache), 1)
        headerOnly = summary.summariseHeader(b"Subject: a\r\n\r\n")
        kept = cache.putSummary(("f", "4"), headerOnly)
        self.assertIsNotNone(kept.bodystructure)


class DovecotPinnedTests(SynchronousTestCase):
    """The answers Dovecot gives for the awkward messages of
    L{tests.interop.test_dovecot_structure} (which checks them against a live Dovecot),
    pinned so the behaviour holds where Dovecot is not installed."""

    def parsed(self, name: str) -> Any:
        """The parse of corpus message C{name}."""
        from tests.interop.test_dovecot_structure import CORPUS
        return parseMessage(dict(CORPUS)[name])

    def test_noSpaceBetweenParts(self) -> None:
        """Sub-parts of a multipart follow each other without a space (RFC 3501
        C{1*body SP media-subtype}); a line count excludes the CRLF before a delimiter."""
        self.assertEqual(
            self.parsed("nested-alternative").bodystructure,
            b'((("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 10 0 NIL NIL NIL NIL)'
            b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 11 0 NIL NIL NIL NIL) '
            b'"alternative" ("boundary" "inner") NIL NIL NIL)("application" "pdf" '
            b'("name" "x.pdf") NIL NIL "base64" 12 NIL ("attachment" ("filename" "x.pdf")) '
            b'NIL NIL) "mixed" ("boundary" "outer") NIL NIL NIL)')
        self.assertEqual(
            self.parsed("preamble-epilogue").body,
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 24 0)'
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0) "mixed")')
        self.assertEqual(
            self.parsed("case-types").body,
            b'(("Text" "Plain" ("Charset" "UTF-8") NIL NIL "7bit" 1 0)'
            b'("APPLICATION" "Octet-Stream" NIL NIL NIL "Base64" 4) "Mixed")')

    def test_encapsulatedMultipart(self) -> None:
        """A message/rfc822 part whose multipart ends right before the enclosing
        delimiter owns the line end after its close delimiter (size 385, not 383), and
        its TEXT section includes it."""
        p = self.parsed("rfc822-attachment")
        self.assertEqual(
            p.body,
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0)("message" '
            b'"rfc822" NIL NIL "forwarded mail" "7bit" 385 ("Tue, 8 Feb 1994 10:00:00 +0000"'
            b' "inner one" (("Dave" NIL "dave" "d.example")) (("Dave" NIL "dave" '
            b'"d.example")) (("Dave" NIL "dave" "d.example")) (("Eve" NIL "eve" "e.example")'
            b'(NIL NIL "frank" "f.example")) ((NIL NIL "undisclosed-recipients" NIL)'
            b'(NIL NIL NIL NIL)) NIL "<prev@d.example>" "<inner@d.example>") (("text" '
            b'"plain" ("charset" "us-ascii") NIL NIL "7bit" 21 1)("text" "html" ("charset" '
            b'"us-ascii") NIL NIL "7bit" 12 0) "alternative") 19) "mixed")')
        from tests.interop.test_dovecot_structure import CORPUS
        raw = dict(CORPUS)["rfc822-attachment"]
        a, b = sectionRange(p, FetchItem("section", path=(2,), spec="TEXT"))
        self.assertTrue(raw[a:b].endswith(b"<b>inner</b>\r\n--ib--\r\n"))

    def test_rfc2231AndDefaultCharset(self) -> None:
        """RFC 2231 continuations are joined as they are under C{name*}; the default
        charset of a text part comes after its other parameters."""
        self.assertEqual(
            self.parsed("rfc2231").bodystructure,
            b'(("application" "octet-stream" ("name*" "utf-8\'\'%E2%82%AC%20rates%20and%20'
            b'more.txt") NIL NIL "base64" 8 NIL ("attachment" ("filename*" "utf-8\'\'%E2%82'
            b'%AC%20rates and more.txt")) NIL NIL)("text" "plain" ("title*" "us-ascii\'en-us'
            b'\'This%20is%20it" "charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL) '
            b'"mixed" ("boundary" "r") NIL NIL NIL)')

    def test_emptyParts(self) -> None:
        """A part with a header and no body, and a part with neither, have size 0 and an
        empty MIME header; TEXT of a part that is no message is empty."""
        p = self.parsed("empty-part")
        self.assertEqual(
            p.body,
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)("text" "plain" '
            b'("charset" "us-ascii") NIL NIL "7bit" 0 0)("application" "x-empty" NIL NIL '
            b'NIL "7bit" 0) "mixed")')
        a, b = sectionRange(p, FetchItem("section", path=(2,), spec="MIME"))
        self.assertEqual(a, b)
        a, b = sectionRange(p, FetchItem("section", path=(1,), spec="TEXT"))
        self.assertEqual(a, b)

    def test_topLevelRfc822Sections(self) -> None:
        """In a message whose own type is message/rfc822, part 1 is its whole body (the
        encapsulated message) and 1.HEADER that message's header."""
        from tests.interop.test_dovecot_structure import CORPUS
        raw = dict(CORPUS)["rfc822-top-level"]
        p = parseMessage(raw)
        a, b = sectionRange(p, FetchItem("section", path=(1,)))
        self.assertEqual(raw[a:b], b"Subject: wrapped\r\nFrom: w@w.example\r\n\r\n"
                                   b"wrapped body\r\n")
        a, b = sectionRange(p, FetchItem("section", path=(1,), spec="HEADER"))
        self.assertEqual(raw[a:b], b"Subject: wrapped\r\nFrom: w@w.example\r\n\r\n")

    def test_envelopeAddresses(self) -> None:
        """Addresses follow each other without a space; a missing mailbox or domain is
        MISSING_MAILBOX / MISSING_DOMAIN; a source route is the adl; a comment before
        an address is no name; groups get their markers."""
        self.assertEqual(
            self.parsed("odd-addresses").envelope,
            b'(NIL "addresses" (("Joe Q. Public" NIL "john.q.public" "example.com")) '
            b'(("Sender Name" NIL "sender" "s.test")) ((NIL NIL "no-at-sign" '
            b'"MISSING_DOMAIN")(NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")(NIL NIL '
            b'"MISSING_MAILBOX" "MISSING_DOMAIN")) ((NIL NIL "quoted local" "example.com")'
            b'("Mary Smith" "@route1,@route2" "mary" "x.test")) (("John Doe" NIL "jdoe" '
            b'"one.test")(NIL NIL "plain" "two.test")) ((NIL NIL "bare" "angle.test")'
            b'("Pete" NIL "pete" "silly.test")) NIL NIL)')
        self.assertEqual(
            self.parsed("undisclosed").envelope,
            b'(NIL "groups" ((NIL NIL "a" "b.example")) ((NIL NIL "a" "b.example")) '
            b'((NIL NIL "a" "b.example")) ((NIL NIL "undisclosed-recipients" NIL)'
            b'(NIL NIL NIL NIL)) ((NIL NIL "Friends" NIL)(NIL NIL "one" "f.example")'
            b'("Two" NIL "two" "f.example")(NIL NIL NIL NIL)(NIL NIL "after" "f.example")) '
            b'NIL NIL NIL)')

    def test_envelopeTextForHumans(self) -> None:
        """Subjects and names have white space runs made one space and their ends
        trimmed (then sent as a literal), NUL made U+FFFD; Date, In-Reply-To and
        Message-ID keep their spaces; present but empty fields are empty strings."""
        self.assertEqual(
            self.parsed("message-id-and-date-odd").envelope,
            b'("Mon,  7 Feb 1994   21:52:25 -0800  " {14}\r\nspaced subject ((NIL NIL "a" '
            b'"b.example")) ((NIL NIL "a" "b.example")) ((NIL NIL "a" "b.example")) NIL NIL '
            b'NIL "<a@b> <c@d>" "<x@y>   (comment)")')
        self.assertEqual(
            self.parsed("tab-and-nul-subject").envelope,
            b'(NIL {24}\r\ntab here \xef\xbf\xbd and "quote" (({3}\r\nA"B NIL "ab" '
            b'"x.example")) (({3}\r\nA"B NIL "ab" "x.example")) (({3}\r\nA"B NIL "ab" '
            b'"x.example")) NIL NIL NIL NIL NIL)')
        self.assertTrue(self.parsed("long-folded").envelope.startswith(
            b"(NIL {116}\r\nThis is a very long subject line that has been folded across "
            b"several physical lines because it is long and then some ((\"Someone"))
        self.assertEqual(
            self.parsed("empty-subject-date").envelope,
            b'("" "" ((NIL NIL "a" "b.example")) ((NIL NIL "a" "b.example")) ((NIL NIL "a" '
            b'"b.example")) NIL NIL NIL NIL NIL)')
