"""MIME structure: byte ranges, ENVELOPE and BODYSTRUCTURE edge cases, the LRU cache."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap.fetch import FetchItem, parseFetchAttributes, sectionRange
from pymaild.imap.mime import StructureCache, parseAddressList, parseMessage
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
                         [(None, None, b"bob", b"z.example")])
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
