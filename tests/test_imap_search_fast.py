"""SEARCH's fast header matching gives exactly what the plain way gives.

The plain way, which these tests keep as the oracle: every field of
C{pymaild.imap.mimeheader.parseHeaders} whose Latin-1 name lower-cased is the key's name,
its value unfolded, decoded by C{decodeHeaderText} and case-folded, contains the
case-folded needle. The fast way (L{pymaild.imap.search.fieldExtractor},
L{pymaild.imap.search.decodeWords}, L{pymaild.imap.search.valueContains},
L{pymaild.imap.search.HeaderKey}) is checked against it on hand-written tricky inputs
and on hypothesis-generated ones, and SEARCH over a real mailbox answers the same with
and without the cached header blocks.
"""

from __future__ import annotations

import binascii
import email.quoprimime
import encodings.aliases
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap import search
from pymaild.imap.collation import searchFold
from pymaild.imap.mimeheader import decodeHeaderText, parseHeaders, unfold
from pymaild.imap.search import (
    HeaderKey,
    compileQuery,
    decodeWords,
    fieldExtractor,
    headerFields,
    valueContains,
)
from pymaild.imap.syntax import Reader
from tests.fuzzing import fuzzCase
from tests.test_imap_helpers import IMAPEnv, makeMessage, tagged


def oddHeaderMessages() -> list[bytes]:
    """Messages whose headers are plain, folded, encoded (one in a charset whose codec
    fails, one broken), 8-bit and odd (spaces around and inside field names)."""
    return [
        makeMessage("zulu report"),
        makeMessage("other", extra=b"Cc: zulu@example.net\r\n"),
        makeMessage("=?utf-8?q?Gr=C3=BC=C3=9Fe_zulu?="),
        makeMessage("hello\r\n there report"),
        makeMessage("STRASSE", extra=b"X-Weird : odd\r\na b: spaced\r\n"),
        makeMessage("Gr\xfc\xdfe 8bit"),
        makeMessage("=?undefined?q?x?="),
        makeMessage("=?utf-8?b?!!!?= =?"),
    ]


def searchAnswers(case: SynchronousTestCase, c: Any, queries: list[str]
                  ) -> dict[str, list[int]]:
    """The numbers each SEARCH of C{queries} answers in session C{c} (each must end OK),
    by query; the session is then dropped."""
    out = {}
    for q in queries:
        text = c.cmd("SEARCH " + q)
        case.assertIn(b" OK ", tagged(text, c.lastTag), q)
        line = next(x for x in text.split(b"\r\n") if x.startswith(b"* SEARCH"))
        out[q] = [int(x) for x in line.split()[2:]]
    c.lose()
    return out


# --- oracles ------------------------------------------------------------------------


def oracleFields(block: bytes, name: str) -> list[bytes]:
    """The raw values of the fields named C{name}, the plain way."""
    return [v for n, v in parseHeaders(block) if n.decode("latin-1").lower() == name]


def oracleMatch(block: bytes, name: str, needle: str) -> bool:
    """Whether a field C{name} of C{block} contains C{needle}, the plain way (what
    SEARCH did before the fast path); may raise where C{decodeHeaderText} does."""
    needle = searchFold(needle)
    return any(needle in searchFold(decodeHeaderText(unfold(v)))
               for v in oracleFields(block, name))


def oracleDecode(value: bytes) -> str | None:
    """C{decodeHeaderText(value)}, or None where it raises."""
    try:
        return decodeHeaderText(value)
    except ValueError:
        return None


# --- strategies ---------------------------------------------------------------------

NAMES = ["subject", "from", "to", "x-tag", "message-id", "a b", "", "sub:ject", "Subject",
         "x-\xe4", "s"]
"""Field names searched for: plain, with a space, empty, with a colon, upper case,
beyond ASCII, a prefix of another."""

_fieldNames = st.sampled_from([
    b"Subject", b"SUBJECT", b"subject", b"From", b"To", b"X-Tag", b"Message-ID", b"a b",
    b"", b"Sub", b"Subject-X", b"X-Subject", b" Subject", b"Subject ", b"\x0bSubject",
    b"Subject\r\n ", b"\xc4", b"x-\xe4", b"S", b"s", b"sub", b"ject",
])
_words = st.sampled_from([
    b"zulu", b"ZULU", b"report", b"Gr\xc3\xbc\xc3\x9fe", b"STRASSE", b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
    b"=?iso-8859-1?q?Stra=DFe?=", b"=?UTF-8?B?WnVsdQ==?=", b"=?utf-8?b?WnVsdQ?=",
    b"=?utf-8?q?a_b?=", b"=?x-unknown?q?zulu?=", b"=?", b"?=", b"=?utf-8?q?", b":", b"_", b"=",
    b"subject:", b"Subject: x", b"\xff", b"a", b"", b"\x00", b"=?idna?q?x?=",
])
_spaces = st.sampled_from([b"", b" ", b"  ", b"\t", b"\r\n ", b"\r\n\t", b"\n ", b"\r"])
_value = st.lists(st.tuples(_spaces, _words), max_size=5).map(
    lambda items: b"".join(s + w for s, w in items))
_ends = st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r\n", b"\r\r\n", b"\n\n", b"\r\n\x0b"])
_line = st.one_of(
    st.tuples(_fieldNames, st.sampled_from([b":", b" :", b":\t", b"\r\n :"]), _value).map(
        lambda t: t[0] + t[1] + t[2]),
    _value,  # a line without a colon, or a continuation
)
_block = st.tuples(st.lists(st.tuples(_line, _ends), max_size=7), st.booleans()).map(
    lambda t: b"".join(a + b for a, b in t[0]) + (b"\r\n" if t[1] else b""))
_needle = st.sampled_from([
    "zulu", "Zulu", "report", "grüße", "GRÜSSE", "straße", "strasse", "a b", " ", "", "\t",
    "subject", "x", "=?", "\ufffd", "é", "z", "sub:ject",
])


# --- field extraction ---------------------------------------------------------------


class FieldExtractorTests(SynchronousTestCase):
    """L{fieldExtractor} finds exactly the fields C{parseHeaders} finds."""

    def check(self, block: bytes, name: str, expected: list[bytes]) -> None:
        """The fast and the plain way both give C{expected}."""
        self.assertEqual(oracleFields(block, name), expected, "oracle")
        self.assertEqual(fieldExtractor(name)(block), expected, "fast")
        self.assertEqual(headerFields(block, name), expected, "headerFields")

    def test_plainFields(self) -> None:
        """Each field of the name, any case, in order, with the value as it is (the
        space after the colon and the folding kept)."""
        block = (b"From: a@b\r\nSubject: one\r\nsubject:two\r\nSUBJECT:  three \r\n"
                 b"X-Subject: no\r\nSubject-X: no\r\n\r\n")
        self.check(block, "subject", [b" one", b"two", b"  three "])
        self.check(block, "from", [b" a@b"])
        self.check(block, "to", [])

    def test_folding(self) -> None:
        """A folded value runs to the end of its logical line, CRLF or bare LF; a field
        name inside a folded value starts no field."""
        block = (b"Subject: a\r\n b\r\n\tc\r\nX: y\r\n Subject: not a field\r\n"
                 b"Subject: d\n e\nTo: t\n\n")
        self.check(block, "subject", [b" a\r\n b\r\n\tc", b" d\n e"])
        self.check(block, "x", [b" y\r\n Subject: not a field"])

    def test_whiteSpaceAroundName(self) -> None:
        """White space around the name before the colon is dropped (as parseHeaders'
        strip does): a first line starting with white space, C{Subject :}, a name
        folded before its colon, a vertical tab at a line start."""
        self.check(b" Subject: a\r\n\r\n", "subject", [b" a"])
        self.check(b"\tSubject: a\r\n\r\n", "subject", [b" a"])
        self.check(b"X: 1\r\nSubject : b\r\n\r\n", "subject", [b" b"])
        self.check(b"X: 1\r\nSubject\r\n : c\r\n\r\n", "subject", [b" c"])
        self.check(b"X: 1\r\n\x0bSubject: d\r\n\r\n", "subject", [b" d"])
        self.check(b"X: 1\n\n Subject: e\n", "subject", [b" e"])
        self.check(b"X: 1\r\n\rSubject: f\r\n", "subject", [b" f"])

    def test_linesWithoutColon(self) -> None:
        """A line without a colon is no field, and does not hide the next one."""
        self.check(b"garbage\r\nSubject\r\nSubject: x\r\n", "subject", [b" x"])

    def test_carriageReturns(self) -> None:
        """A bare CR stays in the value; CR before the LF ending the line does not."""
        self.check(b"Subject: a\rb\r\r\nTo: t\r\n", "subject", [b" a\rb\r"])
        self.check(b"Subject: a\r", "subject", [b" a\r"])
        self.check(b"Subject: a\r\r\n b\r\n", "subject", [b" a\r\r\n b"])

    def test_unusualNames(self) -> None:
        """Names a pattern does not cover (empty, with a space, with a colon, upper
        case, beyond ASCII) give what parseHeaders gives."""
        block = b": empty\r\na b: spaced\r\nA B : spaced2\r\n\xc4: latin\r\nSub: x\r\n\r\n"
        self.check(block, "", [b" empty"])
        self.check(block, "a b", [b" spaced", b" spaced2"])
        self.check(block, "sub:ject", [])
        self.check(block, "A B", [])
        self.check(block, "\xe4", [b" latin"])
        self.check(block, "\ufffd", [])

    def test_memoBounded(self) -> None:
        """The memo of extractors stays small however many names are searched."""
        for i in range(300):
            fieldExtractor(f"x-name-{i}")
        self.assertLessEqual(len(search._extractors), search._EXTRACTORS_MAX)
        self.assertIs(fieldExtractor("x-name-299"), fieldExtractor("x-name-299"))

    @fuzzCase(600)
    @given(block=_block, name=st.sampled_from(NAMES))
    def test_sameAsParseHeaders(self, block: bytes, name: str) -> None:
        """For any block and name, the same values as parseHeaders filtered by name."""
        self.assertEqual(fieldExtractor(name)(block), oracleFields(block, name))

    @fuzzCase(400)
    @given(block=st.binary(max_size=80), name=st.sampled_from(NAMES))
    def test_sameOnArbitraryBytes(self, block: bytes, name: str) -> None:
        """Also for arbitrary bytes (the name spliced in at random places)."""
        lowered = name.encode("latin-1", "replace")
        for candidate in (block, lowered + b":" + block, block.replace(b"a", b"\n" + lowered)):
            self.assertEqual(fieldExtractor(name)(candidate), oracleFields(candidate, name))


# --- RFC 2047 -----------------------------------------------------------------------

TRICKY_VALUES = [
    b"plain text", b"", b"=?", b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=", b"=?UTF-8?Q?Gr=c3=bc=c3=9fe?=",
    b"=?utf-8?b?R3LDvMOfZQ==?=", b"=?utf-8?B?R3LDvMOfZQ?=", b"=?utf-8?b?R3LDvMOfZ?=",
    b"=?utf-8?b?!!!?=", b"=?utf-8?b??=", b"=?utf-8?q??=", b"=??q?abc?=", b"=?x-unknown?q?a?=",
    b"=?utf-8*en?q?a?=", b"=?iso-8859-1?q?Stra=DFe?=", b"=?utf-8?q?a?= =?utf-8?q?b?=",
    b"=?utf-8?q?a?=  \t =?utf-8?q?b?=", b"=?utf-8?q?a?=x=?utf-8?q?b?=",
    b"=?utf-8?q?a?= x =?utf-8?q?b?=", b"pre =?utf-8?q?a?= post", b"  lead =?utf-8?q?a?=",
    b"=?utf-8?q?=C3?= =?utf-8?q?=BC?=", b"=?utf-8?q?=C3?= =?iso-8859-1?q?=BC?=",
    b"=?utf-8?q?a?==?utf-8?q? ?==?utf-8?q?b?=", b"=?utf-8?q?a?==?utf-8?q?b?=",
    b"=?utf-8?q?a?b?=", b"=?utf-8?q?a=?= =?utf-8?q?==41?=", b"=?utf-8?q?=4=41=G1=5_?=",
    b"=?utf-8?Q?a_b__c?=", b"a =?utf-8?q?b?= c =?utf-8?q?d?=", b"=?utf-8?x?a?=",
    b"=?utf-8?q?a?=\r=?utf-8?q?b?=", b"x\x0b=?utf-8?q?a?=", b"=?utf-8?q?a\x1c?=",
    b"caf\xc3\xa9 =?utf-8?q?a?=", b"\xff =?utf-8?q?a?=", b"=?idna?q?x?=",
    b"=?undefined?b?eA==?=", b"=?utf\x00-8?q?x?=", b"=?punycode?q?=FF?=",
    b"=?utf-8?q?a?= \x1f =?utf-8?q?b?=", b"\x1f=?utf-8?q?a?=", b"=?us-ascii?q?=FF?=",
    b"=?utf-16?b?AGEAYg==?=", b"==?utf-8?q?a?==", b"=?utf-8?q?a?= =?", b"=?=?utf-8?q?a?=",
    b"=?utf-8?b?YQ==?= =?utf-8?b?Yg==?=", b"=?utf-8?q?a?= =?UTF-8?q?b?=",
]


class DecodeWordsTests(SynchronousTestCase):
    """L{decodeWords} gives what C{decodeHeaderText} gives, and never raises."""

    def test_examples(self) -> None:
        """Some decodings spelled out: Q and B words, padding added, white space
        between words dropped, words in one charset joined before decoding, an
        undecodable Base64 word leaving the value as it is."""
        self.assertEqual(decodeWords(b"=?utf-8?q?Gr=C3=BC=C3=9Fe_x?="), "Grüße x")
        self.assertEqual(decodeWords(b"=?utf-8?B?R3LDvMOfZQ?="), "Grüße")
        self.assertEqual(decodeWords(b"=?utf-8?q?a?=  =?utf-8?q?b?="), "ab")
        self.assertEqual(decodeWords(b"a =?utf-8?q?b?= c"), "a b c")
        self.assertEqual(decodeWords(b"=?utf-8?q?=C3?= =?utf-8?q?=BC?="), "ü")
        self.assertEqual(decodeWords(b"=?utf-8?b?R3LDvMOfZ?="), "=?utf-8?b?R3LDvMOfZ?=")
        self.assertEqual(decodeWords(b"=?x-unknown?q?a=C3=BC?="), "aü")
        self.assertEqual(decodeWords(b"no words"), "no words")
        self.assertEqual(decodeWords(b"caf\xc3\xa9"), "café")

    def test_trickyValues(self) -> None:
        """Each hand-written tricky value decodes as C{decodeHeaderText} decodes it."""
        for value in TRICKY_VALUES:
            expected = oracleDecode(value)
            if expected is not None:
                self.assertEqual(decodeWords(value), expected, value)

    def test_failingCodecs(self) -> None:
        """Where a codec fails even with C{replace} (or the charset has a NUL), the
        octets are read as UTF-8 -- or, for a value it decodes itself, the value is
        taken as it is -- instead of failing the search; C{decodeHeaderText} agrees."""
        self.assertEqual(oracleDecode(b"=?idna?q?x?="), "x")
        self.assertEqual(decodeWords(b"=?idna?q?x?="), "x")
        self.assertEqual(decodeWords(b"=?undefined?b?eA==?="), "x")
        self.assertEqual(decodeWords(b"=?utf\x00-8?q?x?="), "x")
        self.assertEqual(decodeWords(b"=?punycode?q?=C3=BC?="), "ü")
        mixed = b"\xc3\xa9 =?idna?q?x?="  # 8-bit text: decodeHeaderText's own way
        self.assertEqual(decodeWords(mixed), oracleDecode(mixed))

    def test_everyCodec(self) -> None:
        """Encoded words in every charset name Python knows decode as
        C{decodeHeaderText} does (or, where it fails, without raising)."""
        names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
        for name in sorted(names):
            for value in (b"=?%s?q?a=FF=C3=BC=00?=" % name.encode(),
                          b"=?%s?b?YWJj/w==?= x" % name.encode()):
                got = decodeWords(value)
                expected = oracleDecode(value)
                if expected is not None:
                    self.assertEqual(got, expected, value)

    def test_qDecode(self) -> None:
        """L{search._qDecode} gives the octets C{email.quoprimime.header_decode} gives
        (through binascii when it agrees, piecewise for C{==} and a final C{=})."""
        for text in ["", "abc", "a_b", "=41", "==41", "a=", "=", "=4", "=G1", "=5_", "=a1=Z",
                     "=3d=3D", "===", "=4=41", "_=5f", "=C3=BC="]:
            expected = email.quoprimime.header_decode(text).encode("raw-unicode-escape")
            self.assertEqual(search._qDecode(text), expected, text)

    @fuzzCase(500)
    @given(text=st.text(st.sampled_from("=_aF09xG? \t"), max_size=12))
    def test_qDecodeProperty(self, text: str) -> None:
        """L{search._qDecode} agrees with the email package on any Q text."""
        expected = email.quoprimime.header_decode(text).encode("raw-unicode-escape")
        self.assertEqual(search._qDecode(text), expected)

    def test_wordOctets(self) -> None:
        """L{search._wordOctets}: Q or B text (any case) to octets, Base64 padded; None
        for Base64 that does not decode."""
        self.assertEqual(search._wordOctets("a_b=41", "Q"), b"a bA")
        self.assertEqual(search._wordOctets("YWI", "b"), b"ab")
        self.assertEqual(search._wordOctets("", "B"), b"")
        self.assertIsNone(search._wordOctets("Y", "b"))

    def test_decodeChunk(self) -> None:
        """L{search._decodeChunk}: octets in their charset; UTF-8 when the charset is
        none, unknown, not a text codec, or failing."""
        self.assertEqual(search._decodeChunk(b"\xdf", "iso-8859-1"), "ß")
        self.assertEqual(search._decodeChunk(b"\xc3\x9f", None), "ß")
        self.assertEqual(search._decodeChunk(b"\xc3\x9f", "x-nothing"), "ß")
        self.assertEqual(search._decodeChunk(b"\xc3\x9f", "rot13"), "ß")
        self.assertEqual(search._decodeChunk(b"\xc3\x9f", "idna"), "ß")

    @fuzzCase(600)
    @given(value=_value)
    def test_sameAsDecodeHeaderText(self, value: bytes) -> None:
        """Any unfolded value built of encoded words, plain words and white space
        decodes as C{decodeHeaderText} decodes it."""
        value = unfold(value)
        expected = oracleDecode(value)
        got = decodeWords(value)
        if expected is not None:
            self.assertEqual(got, expected)

    @fuzzCase(500)
    @given(
        items=st.lists(st.tuples(
            st.sampled_from(["", " ", "  ", "\t", " x ", "pre", "\x1f", " \x1f "]),
            st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii", "x-bad", "",
                             "utf-8*en", "koi8-r", "utf-16"]),
            st.sampled_from("qQbB"),
            st.binary(max_size=8),
            st.booleans()), min_size=1, max_size=4))
    def test_wellFormedWords(self, items: list[tuple[str, str, str, bytes, bool]]) -> None:
        """Values of well-formed encoded words (random octets in random charsets, Q or
        B, sometimes unpadded) between white space and words decode as
        C{decodeHeaderText} decodes them."""
        out = []
        for space, charset, enc, octets, pad in items:
            if enc in "qQ":
                text = "".join(chr(c) if chr(c).isascii() and chr(c).isalnum() else f"={c:02X}"
                               for c in octets)
            else:
                text = binascii.b2a_base64(octets, newline=False).decode()
                if not pad:
                    text = text.rstrip("=")
            out.append(f"{space}=?{charset}?{enc}?{text}?=")
        value = "".join(out).encode("ascii")
        expected = oracleDecode(value)
        assume(expected is not None)
        self.assertEqual(decodeWords(value), expected)


# --- matching -----------------------------------------------------------------------


class ValueContainsTests(SynchronousTestCase):
    """L{valueContains}: the decoded, unfolded, case-folded value holds the needle."""

    def contains(self, value: bytes, needle: str) -> bool:
        """L{valueContains} for a raw needle (case-folded here, as parseSearch does)."""
        folded = searchFold(needle)
        got = valueContains(value, folded, folded.lower().encode() if folded.isascii() else None)
        self.assertEqual(got, folded in searchFold(decodeHeaderText(unfold(value))), value)
        return got

    def test_ascii(self) -> None:
        """Plain ASCII values match case-insensitively, across a fold."""
        self.assertTrue(self.contains(b" Weekly REPORT", "report"))
        self.assertTrue(self.contains(b" a\r\n b", "a b"))
        self.assertFalse(self.contains(b" a\r\n b", "a\r\n b"))
        self.assertTrue(self.contains(b" anything", ""))
        self.assertFalse(self.contains(b" report", "reports"))

    def test_nonAsciiNeedle(self) -> None:
        """A needle beyond ASCII is in no plain ASCII value; one whose casemap key is
        ASCII (full-width letters) is in the ASCII value that holds that; C{ß} is no
        C{ss} (i;unicode-casemap, as Dovecot)."""
        self.assertFalse(self.contains(b" Grusse", "grüße"))
        self.assertTrue(self.contains(b" STRASSE", "ｓｔｒａｓｓｅ"))
        self.assertFalse(self.contains(b" STRASSE", "straße"))
        self.assertFalse(self.contains(b" Strae", "straße"))

    def test_encoded(self) -> None:
        """Encoded words and 8-bit values are decoded before matching."""
        self.assertTrue(self.contains(b" =?utf-8?q?Gr=C3=BC=C3=9Fe?=", "GRÜßE"))
        self.assertTrue(self.contains(b" =?utf-8?q?Gr=C3=BC=C3=9Fe?=", "GRU\u0308ßE"))
        self.assertFalse(self.contains(b" =?utf-8?q?Gr=C3=BC=C3=9Fe?=", "GRÜSSE"))
        self.assertTrue(self.contains(b" =?iso-8859-1?q?Stra=DFe?=", "STRAßE"))
        self.assertTrue(self.contains(b" Gr\xc3\xbc\xc3\x9fe", "grüße"))
        self.assertFalse(self.contains(b" =?utf-8?q?abc?=", "=?utf"))
        self.assertTrue(self.contains(b" =?utf-8?b?R3LDvMOfZ?=", "=?utf"))


class HeaderKeyTests(SynchronousTestCase):
    """L{HeaderKey.matches} answers as the plain way does."""

    def test_prefilters(self) -> None:
        """A needle elsewhere in the header does not match the named field; a needle
        beyond ASCII does not match a plain ASCII header; a field split by a fold
        matches a needle with the white space."""
        block = b"From: zulu@example.net\r\nSubject: hello\r\n there\r\n\r\n"
        self.assertFalse(HeaderKey("subject", "zulu").matches(block))
        self.assertTrue(HeaderKey("from", "zulu").matches(block))
        self.assertTrue(HeaderKey("subject", "hello there").matches(block))
        self.assertFalse(HeaderKey("subject", "hello\r\n there").matches(block))
        self.assertFalse(HeaderKey("subject", "grüße").matches(block))
        self.assertTrue(HeaderKey("subject", "").matches(block))
        self.assertFalse(HeaderKey("cc", "").matches(block))

    def test_encodedBlock(self) -> None:
        """In a header with encoded words only the named field's words count."""
        block = (b"From: =?utf-8?q?Zulu?= <z@example.net>\r\n"
                 b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n")
        self.assertFalse(HeaderKey("subject", "zulu").matches(block))
        self.assertTrue(HeaderKey("from", "zulu").matches(block))
        self.assertTrue(HeaderKey("subject", "GRÜßE").matches(block))
        self.assertFalse(HeaderKey("subject", "grüsse").matches(block))
        self.assertTrue(HeaderKey("subject", searchFold("grüße")).matches(block))
        self.assertFalse(HeaderKey("subject", "=?utf").matches(block))

    @fuzzCase(800)
    @given(block=_block, name=st.sampled_from(NAMES + ["subject"] * 4), needle=_needle,
           data=st.data())
    def test_sameAsPlainWay(self, block: bytes, name: str, needle: str, data: Any) -> None:
        """For any block, name and needle -- often a piece of one of the field's decoded
        values -- the plain way's answer (where it has one: it raises on some
        charsets)."""
        values = oracleFields(block, name)
        if values and data.draw(st.booleans()):
            decoded = oracleDecode(unfold(data.draw(st.sampled_from(values))))
            if decoded is not None:
                i = data.draw(st.integers(0, len(decoded)))
                j = data.draw(st.integers(i, len(decoded)))
                needle = decoded[i:j]
        try:
            expected = oracleMatch(block, name, needle)
        except ValueError:
            HeaderKey(name, needle).matches(block)  # answers, does not raise
            return
        self.assertEqual(HeaderKey(name, needle).matches(block), expected)


def oracleText(block: bytes, needle: str) -> bool:
    """Whether a field name or decoded value of C{block} holds C{needle} (C{TEXT}'s
    header part), the plain way."""
    needle = searchFold(needle)
    return any(needle in searchFold(decodeHeaderText(unfold(v)))
               or needle in searchFold(n.decode("latin-1")) for n, v in parseHeaders(block))


class TextPrefilterTests(SynchronousTestCase):
    """L{search._headerMayContain} refuses only headers where C{TEXT} cannot match."""

    def test_examples(self) -> None:
        """A plain header lacking the needle is refused; one holding it in a name, a
        value, across a fold or inside a folded name is not; encoded words and 8-bit
        headers are never refused; a needle beyond ASCII is refused by plain ones."""
        may = search._headerMayContain
        self.assertFalse(may(b"Subject: hello\r\n\r\n", "zulu"))
        self.assertTrue(may(b"Subject: hello\r\n\r\n", "subj"))
        self.assertTrue(may(b"Subject: hello\r\n there\r\n\r\n", "hello there"))
        self.assertTrue(may(b"Sub\r\n ject: x\r\n\r\n", "b\r\n j"))
        self.assertTrue(may(b"Subject: =?utf-8?q?zulu?=\r\n\r\n", "zulu"))
        self.assertTrue(may(b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\n", "zulu"))
        self.assertFalse(may(b"Subject: Grusse\r\n\r\n", "gr\u00fc\u00dfe"))

    @fuzzCase(500)
    @given(block=_block, needle=_needle)
    def test_neverRefusesAMatch(self, block: bytes, needle: str) -> None:
        """Whenever the header part of C{TEXT} matches, the prefilter lets it through."""
        try:
            expected = oracleText(block, needle)
        except ValueError:
            return
        if expected:
            self.assertTrue(search._headerMayContain(block, needle))


class QueryTests(SynchronousTestCase):
    """L{compileQuery} and how runSearch splits a query."""

    def parse(self, text: bytes) -> tuple[Any, ...]:
        """The parsed query."""
        return search.parseSearch(Reader([text]))[1]

    def test_compile(self) -> None:
        """Header keys anywhere in the tree become L{HeaderKey}s; the rest is kept."""
        tree = compileQuery(self.parse(b"SUBJECT a OR NOT FROM b (SEEN HEADER X-Y c)"))
        self.assertEqual(tree[0], "and")
        first, other = tree[1]
        self.assertEqual(first[0], "hkey")
        self.assertEqual((first[1].name, first[1].needle), ("subject", "A"))  # casemap
        self.assertEqual(other[0], "or")
        self.assertEqual(other[1][0], "not")
        self.assertEqual((other[1][1][1].name, other[1][1][1].needle), ("from", "B"))
        self.assertEqual(other[2][1][0], ("flag", "\\Seen", True))
        self.assertEqual(other[2][1][1][1].name, "x-y")

    def test_splitRequired(self) -> None:
        """The header keys ANDed at the top (nested ANDs too) are required; the others
        are the rest, or None."""
        required, rest = search._splitRequired(
            compileQuery(self.parse(b"SUBJECT a (TO b SEEN) OR FROM c CC d")))
        self.assertEqual([k.name for k in required], ["subject", "to"])
        self.assertIsNotNone(rest)
        assert rest is not None
        self.assertEqual([k[0] for k in rest[1]], ["flag", "or"])
        required, rest = search._splitRequired(compileQuery(self.parse(b"SUBJECT a TO b")))
        self.assertEqual(len(required), 2)
        self.assertIsNone(rest)

    def test_readsHeader(self) -> None:
        """Header, TEXT and SENT* keys read the header; flags, sizes, BODY and internal
        dates do not."""
        for text, expected in [(b"NOT SUBJECT a", True), (b"OR SEEN TEXT a", True),
                               (b"SENTSINCE 1-Jan-2020", True), (b"SEEN LARGER 5", False),
                               (b"BODY a SINCE 1-Jan-2020", False)]:
            self.assertEqual(search._readsHeader(compileQuery(self.parse(text))), expected,
                             text)


# --- SEARCH over a mailbox ------------------------------------------------------------


class MailboxSearchTests(SynchronousTestCase):
    """SEARCH over a real mailbox: same answers with or without cached headers."""

    QUERIES = [
        "SUBJECT zulu", "HEADER Subject zulu", "FROM zulu", "TO zulu", "SUBJECT report",
        "HEADER X-Weird odd", 'HEADER "a b" spaced', "SUBJECT =?", "NOT SUBJECT zulu",
        "OR SUBJECT zulu FROM zulu", "SUBJECT zulu SEEN",
        'SUBJECT "hello there"', "TEXT zulu", "HEADER Message-ID 3", "SUBJECT x",
        'CHARSET UTF-8 SUBJECT "grüße"', 'CHARSET UTF-8 SUBJECT "straße"', "SUBJECT y",
        'CHARSET UTF-8 SUBJECT "ｓｔｒａｓｓｅ"',
    ]

    def setUp(self) -> None:
        """Messages with plain, folded, encoded, 8-bit and odd headers, one with a
        charset whose codec fails."""
        self.env = IMAPEnv(self)
        self.env.deliver(*oddHeaderMessages())

    def searchAll(self) -> dict[str, list[int]]:
        """Every query's answer from a fresh session."""
        return searchAnswers(self, self.env.selected(), self.QUERIES)

    def test_sameWithCachedHeaders(self) -> None:
        """The answers are right, and the same before and after FETCH ENVELOPE put the
        header blocks in the structure cache (the fast path)."""
        cold = self.searchAll()
        c = self.env.selected()
        c.ok("FETCH 1:* (ENVELOPE)")
        c.lose()
        warm = self.searchAll()
        self.assertEqual(warm, cold)
        self.assertEqual(cold["SUBJECT zulu"], [1, 3])
        self.assertEqual(cold["FROM zulu"], [])
        self.assertEqual(cold["TEXT zulu"], [1, 2, 3])
        self.assertEqual(cold["HEADER X-Weird odd"], [5])
        self.assertEqual(cold['HEADER "a b" spaced'], [5])
        self.assertEqual(cold["SUBJECT =?"], [8])
        self.assertEqual(cold["NOT SUBJECT zulu"], [2, 4, 5, 6, 7, 8])
        self.assertEqual(cold['SUBJECT "hello there"'], [4])
        self.assertEqual(cold['CHARSET UTF-8 SUBJECT "grüße"'], [3, 6])
        # i;unicode-casemap, as Dovecot: message 5's STRASSE holds no ß.
        self.assertEqual(cold['CHARSET UTF-8 SUBJECT "straße"'], [])
        self.assertEqual(cold['CHARSET UTF-8 SUBJECT "ｓｔｒａｓｓｅ"'], [5])
        self.assertEqual(cold["SUBJECT x"], [7])
        self.assertEqual(cold["SUBJECT y"], [])


class SplitCache:
    """A structure cache whose memory holds only some summaries: the others come
    through C{headersFromFile} (as from a cache file). Records the reads and flushes."""

    def __init__(self, summaries: dict[tuple[str, str], Any], inMemory: set[tuple[str, str]],
                 fileTier: bool) -> None:
        """Summaries by key; C{inMemory} are the keys in memory at first."""
        self.all = summaries
        self.memory = {k: v for k, v in summaries.items() if k in inMemory}
        self.loads: list[list[int]] = []
        self.flushes = 0
        if fileTier:
            self.headersFromFile = self._headersFromFile
            self.flush = self._flush

    def peekSummary(self, key: tuple[str, str]) -> Any:
        """The summary in memory, or None."""
        return self.memory.get(key)

    summary = peekSummary

    def _headersFromFile(self, folder: Any, infos: list[Any]) -> dict[str, bytes]:
        """The header blocks of C{infos} by message key (memory is left as it is)."""
        self.loads.append([i.uid for i in infos])
        return {info.key: self.all[(folder.path, info.key)].header for info in infos}

    def _flush(self) -> None:
        """Count the flush."""
        self.flushes += 1


class View:
    """What runSearch needs of a mailbox view."""

    def __init__(self, folder: Any, infos: list[Any], cache: Any) -> None:
        """A view of C{infos} of C{folder} over C{cache}, run inline."""
        from pymaild.threads import InlineRunner

        self.folder = folder
        self.cache = cache
        self.uids = [i.uid for i in infos]
        self.infos = {i.uid: i for i in infos}
        self.recent: frozenset[int] = frozenset()
        self.ghosts: frozenset[int] = frozenset()
        self.runner = InlineRunner()


class FileTierSearchTests(SynchronousTestCase):
    """runSearch over a cache that keeps only some summaries in memory."""

    QUERIES = [b"SUBJECT zulu", b"NOT SUBJECT zulu", b"SUBJECT zulu FROM carol",
               b"OR TO x HEADER Subject zulu", b"SEEN", b"SUBJECT zulu 2:9"]

    def setUp(self) -> None:
        """Twelve messages, every third about zulu, and all their summaries."""
        from pymaild.imap.mailbox import readHeader
        from pymaild.imap.summary import summariseHeader

        env = IMAPEnv(self)
        env.deliver(*[makeMessage(f"{'zulu' if i % 3 == 0 else 'other'} {i}")
                      for i in range(12)])
        self.folder = env.folder()
        self.infos = list(self.folder.scan().messages)
        self.summaries = {}
        for info in self.infos:
            block = readHeader(self.folder, info)
            self.summaries[(self.folder.path, info.key)] = summariseHeader(block)

    def searchWith(self, cache: Any, query: bytes) -> list[int]:
        """The seqs matching C{query}."""
        out: list[list[int]] = []
        search.runSearch(View(self.folder, self.infos, cache),
                         search.parseSearch(Reader([query]))[1]).addCallback(out.append)
        return out[0]

    def test_sameAnswersBatchedLoads(self) -> None:
        """With every other summary in memory, the answers (in order) are those of a
        cache holding them all; only the missing ones are loaded, at most
        L{search.LOAD_BATCH} at a time, after the others were evaluated, and the cache
        is flushed once per search."""
        self.patch(search, "LOAD_BATCH", 2)
        keys = list(self.summaries)
        for query in self.QUERIES:
            full = self.searchWith(SplitCache(self.summaries, set(keys), False), query)
            split = SplitCache(self.summaries, set(keys[::2]), True)
            got = self.searchWith(split, query)
            self.assertEqual(got, full, query)
            self.assertEqual(got, sorted(got))
            if query == b"SEEN":
                self.assertEqual(split.loads, [])  # no header needed: nothing loaded
            else:
                loaded = [uid for batch in split.loads for uid in batch]
                self.assertEqual(loaded, [i.uid for i in self.infos[1::2]], query)
                self.assertTrue(all(len(b) <= 2 for b in split.loads))
            self.assertEqual(split.flushes, 1)
        self.assertEqual(self.searchWith(SplitCache(self.summaries, set(keys), False),
                                  b"SUBJECT zulu"), [1, 4, 7, 10])
