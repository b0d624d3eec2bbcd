"""The header and multipart splitting under BODYSTRUCTURE give exactly what the plain
ways gave.

C{splitHeader}, C{parseHeaders} and C{contentFields} in L{pymaild.imap.mimeheader} cut
header blocks with C{bytes} methods and one prefixed pattern instead of scanning every byte
with a pattern: the cost of a BODYSTRUCTURE is mostly this cutting. The regular
expressions they replaced are kept here as the oracle, and hypothesis feeds both
blocks made of the characters that matter (line ends, folding white space, colons,
C{Content-} names in any case). Likewise C{_splitMultipart} against the delimiter scan
it replaced, and C{_splitSemicolons} (parameter lists) against its character loop
(C{splitSemicolonsByChar}, still the way for lists with comments).
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap.bodystructure import Part, Shape, _multipartShape
from pymaild.imap.mimeheader import (
    _splitSemicolons,
    contentFields,
    parseHeaders,
    splitHeader,
    splitSemicolonsByChar,
)
from pymaild.imap.mimeparse import _splitMultipart
from tests.fuzzing import fuzzCase

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_SPLIT = re.compile(rb"\r?\n(?![ \t])")
_PRINTABLE = re.compile(rb"[!-9;-~]+")


def oracleSplit(data: bytes, start: int, end: int) -> int:
    """Where the body starts, the way the regular expression found it."""
    if start >= end:
        return end
    if data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        return start + (2 if data.startswith(b"\r\n", start) else 1)
    m = _HEADER_END.search(data, start, end)
    return end if m is None else m.end()


def oracleHeaders(block: bytes) -> list[tuple[bytes, bytes]]:
    """The (name, raw value) fields, the way the regular expression cut them."""
    out = []
    for line in _FIELD_SPLIT.split(block):
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip(), value))
    return out


def oracleContent(block: bytes) -> dict[bytes, bytes]:
    """The first value of each Content-* field with a printable-ASCII name."""
    out: dict[bytes, bytes] = {}
    for n, v in oracleHeaders(block):
        key = n.lower()
        if key.startswith(b"content-") and _PRINTABLE.fullmatch(key):
            out.setdefault(key, v)
    return out


def oracleMultipart(data: bytes, start: int, end: int,
                    boundary: bytes) -> tuple[list[tuple[int, int]], bool]:
    """The body part ranges and close-at-end flag, the way the first scan found them."""
    delim = b"--" + boundary
    closedAtEnd = False
    positions: list[tuple[int, int, bool]] = []
    pos = start
    while pos < end:
        if pos == start and data.startswith(delim, pos):
            i, lineStart = pos, pos
        else:
            i = data.find(b"\n" + delim, pos, end)
            if i < 0:
                break
            lineStart = i + 1
            if i > start and data[i - 1 : i] == b"\r":
                i -= 1
        after = lineStart + len(delim)
        close = data.startswith(b"--", after)
        j = after + (2 if close else 0)
        while j < end and data[j : j + 1] in (b" ", b"\t"):
            j += 1
        if j < end and data[j : j + 1] not in (b"\r", b"\n"):
            pos = lineStart + 1
            continue
        nl = data.find(b"\n", j, end)
        lineEnd = end if nl < 0 else nl + 1
        positions.append((i, lineEnd, close))
        if close:
            closedAtEnd = nl < 0
            break
        pos = lineEnd
    ranges = []
    for k, (_i, lineEnd, close) in enumerate(positions):
        if close:
            break
        nextStart = positions[k + 1][0] if k + 1 < len(positions) else end
        ranges.append((lineEnd, max(lineEnd, nextStart)))
    return ranges, closedAtEnd


_PIECES = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x0b", b"\x0c", b"a", b"X-A",
           b"Content-Type", b"content-id", b"CONTENT-md5", b"Content-", b"Content-\xe9",
           b"content type", b"=", b";", b'"', b"\r\n ", b"\r\n\t", b"\r\n\r\n", b"\n\n"]
blocks = st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join)


class SplitHeaderTests(SynchronousTestCase):
    """The body of an entity starts after the first blank line."""

    def test_crlfBlankLine(self) -> None:
        """A CRLF blank line ends the header, and the body starts after it."""
        data = b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n"
        self.assertEqual(splitHeader(data, 0, len(data)), 14)

    def test_bareLFBeforeCRLF(self) -> None:
        """A blank line of bare LFs before the CRLF one wins, even when the two touch."""
        data = b"A: 1\n\n\r\nbody"
        self.assertEqual(splitHeader(data, 0, len(data)), 6)
        self.assertEqual(oracleSplit(data, 0, len(data)), 6)

    def test_noBlankLine(self) -> None:
        """Without a blank line the whole entity is header."""
        data = b"A: 1\r\nB: 2\r\n"
        self.assertEqual(splitHeader(data, 0, len(data)), len(data))

    def test_boundedByEnd(self) -> None:
        """A blank line past C{end} is not seen."""
        data = b"A: 1\r\nB\r\n\r\nbody"
        self.assertEqual(splitHeader(data, 0, 9), 9)

    @given(data=blocks, a=st.integers(0, 60), b=st.integers(0, 60))
    @fuzzCase(300)
    def test_asTheRegexDid(self, data: bytes, a: int, b: int) -> None:
        """For any bytes and bounds, the same offset as the regular expression."""
        start, end = min(a, len(data)), min(b, len(data))
        self.assertEqual(splitHeader(data, start, end), oracleSplit(data, start, end))


class ParseHeadersTests(SynchronousTestCase):
    """Fields are cut at line ends not followed by folding."""

    def test_foldingKept(self) -> None:
        """A folded value keeps its line end; the cutting CR goes with the cut."""
        block = b"Subject: a\r\n b\r\nTo: x\r\n\r\n"
        self.assertEqual(parseHeaders(block), [(b"Subject", b" a\r\n b"), (b"To", b" x")])

    def test_firstLineWhiteSpace(self) -> None:
        """A first line starting with white space is still a field."""
        self.assertEqual(parseHeaders(b" A : 1\r\n"), [(b"A", b" 1")])

    @given(block=blocks)
    @fuzzCase(500)
    def test_asTheRegexDid(self, block: bytes) -> None:
        """For any block, the same fields as the regular expression."""
        self.assertEqual(parseHeaders(block), oracleHeaders(block))


class ContentFieldsTests(SynchronousTestCase):
    """The Content-* fields BODYSTRUCTURE needs are found without cutting the others."""

    def test_firstWins(self) -> None:
        """The first field of a name wins, whatever the case of its name."""
        block = b"From: a\r\nCONTENT-TYPE: text/html\r\nContent-Type: text/plain\r\n\r\n"
        self.assertEqual(contentFields(block), {b"content-type": b" text/html"})

    def test_foldedNotAField(self) -> None:
        """A Content- name on a folded line is part of the previous value, no field."""
        self.assertEqual(contentFields(b"Subject: x\r\n Content-Type: y\r\n"), {})

    def test_partUsesThem(self) -> None:
        """A part answers Content-* lookups from them and other lookups from all fields,
        with the same values."""
        block = b"Subject: s\r\nContent-ID: <a>\r\n\r\n"
        part = Part(0, len(block), len(block), block)
        self.assertEqual(part.rawValue(b"content-id"), b" <a>")
        self.assertIsNone(part._index)
        self.assertEqual(part.rawValue(b"subject"), b" s")
        self.assertEqual(part.rawValue(b"content-id"), b" <a>")

    @given(block=blocks)
    @fuzzCase(500)
    def test_asTheFieldsGive(self, block: bytes) -> None:
        """For any block, the Content-* fields with printable names are the first
        values the regular expression's fields give for them."""
        found = contentFields(block)
        self.assertEqual({k: v for k, v in found.items() if _PRINTABLE.fullmatch(k)},
                         oracleContent(block))
        for name in found:
            self.assertTrue(name.startswith(b"content-"), name)


_BODY_PIECES = [b"\r\n", b"\n", b"\r", b" ", b"\t", b"-", b"--", b"--b", b"--b--", b"x",
                b"b", b"\r\n--b\r\n", b"\r\n--b--", b"\n--b \t\n"]
bodies = st.lists(st.sampled_from(_BODY_PIECES), max_size=30).map(b"".join)


class SplitMultipartTests(SynchronousTestCase):
    """A multipart body is cut at its delimiter lines."""

    def test_parts(self) -> None:
        """Two parts (the CRLF before a delimiter is the delimiter's) and a close
        delimiter at the end without a line end."""
        body = b"--b\r\nA\r\n--b\r\nB\r\n--b--"
        self.assertEqual(_splitMultipart(body, 0, len(body), b"b"),
                         ([(5, 6), (13, 14)], True))

    @given(body=bodies, a=st.integers(0, 40), b=st.integers(0, 200))
    @fuzzCase(500)
    def test_asTheFirstScanDid(self, body: bytes, a: int, b: int) -> None:
        """For any body and bounds, the same ranges and flag as the first scan."""
        start, end = min(a, len(body)), min(b, len(body))
        self.assertEqual(_splitMultipart(body, start, end, b"b"),
                         oracleMultipart(body, start, end, b"b"))


_PARAM_PIECES = [b";", b'"', b"\\", b"a", b"=", b" ", b"(", b")", b"b=1", b'"x;y"', b"\r\n "]
params = st.lists(st.sampled_from(_PARAM_PIECES), max_size=30).map(b"".join)


class SplitSemicolonsTests(SynchronousTestCase):
    """Parameter lists are cut at the semicolons outside quotes and comments."""

    def test_quotedSemicolonKept(self) -> None:
        """A semicolon inside a quoted value does not cut, nor does an escaped quote end
        the value."""
        self.assertEqual(_splitSemicolons(b'text/plain; name="a;\\"b"; x=1'),
                         [b"text/plain", b' name="a;\\"b"', b" x=1"])

    @given(text=params)
    @fuzzCase(500)
    def test_asTheLoopDid(self, text: bytes) -> None:
        """For any list, the same pieces as the character loop."""
        self.assertEqual(_splitSemicolons(text), splitSemicolonsByChar(text))


_BOUNDARY_PIECES = [b"----=_Part", b"a b", b"x", b"?", b"(", b")", b"*", b"\\", b";", b'"',
                    b",", b"'", b":", b".", b"=", b"-"]
contentTypes = st.tuples(
    st.sampled_from([b"", b" "]),
    st.sampled_from([b"multipart", b"MULTIPART", b"text"]), st.just(b"/"),
    st.sampled_from([b"mixed", b"digest", b"x*y", b"a/b", b""]),
    st.sampled_from([b"", b" ", b"\t", b"\r\n "]), st.sampled_from([b";", b""]),
    st.sampled_from([b"", b" "]), st.sampled_from([b"boundary", b"Boundary", b"name"]),
    st.sampled_from([b"=", b""]), st.sampled_from([b'"', b""]),
    st.lists(st.sampled_from(_BOUNDARY_PIECES), max_size=5).map(b"".join),
    st.sampled_from([b'"', b""]), st.sampled_from([b"", b" ", b"; x=1", b"(c)"]),
).map(b"".join)


class MultipartShapeTests(SynchronousTestCase):
    """The usual multipart Content-Type is read directly, as the general way reads it."""

    def test_usualForm(self) -> None:
        """A quoted boundary of a mail program's kind takes the direct way."""
        fields = [(b"Content-Type", b' multipart/alternative; boundary="----=_P_1.2"')]
        shape = _multipartShape(fields)
        assert shape is not None
        self.assertEqual(shape.boundary, b"----=_P_1.2")
        self.assertIsNone(_multipartShape([(b"Content-Type", b" text/plain")]))

    @given(value=contentTypes, name=st.sampled_from([b"Content-Type", b"CONTENT-type",
                                                     b"Content-ID"]))
    @fuzzCase(1000)
    def test_asTheGeneralWay(self, value: bytes, name: bytes) -> None:
        """Whenever the direct way answers, every part of its shape is what the general
        way makes of the same field."""
        shape = _multipartShape([(name, value)])
        if shape is not None:
            general = Shape({name.lower(): value}, b"text/plain", False)
            for slot in Shape.__slots__:
                self.assertEqual(getattr(shape, slot), getattr(general, slot), slot)
