"""BINARY (RFC 3516) on the wire: FETCH BINARY[], BINARY.PEEK[], BINARY.SIZE[], APPEND
with a literal8, and the errors (L{pymaild.imap.binary})."""

from __future__ import annotations

import base64
import re

from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.imap.binary import UnknownCTE, decode, decodeBase64
from tests.test_imap_helpers import IMAPEnv, tagged, untagged

PAYLOAD = bytes(range(256)) * 4  # NULs and every other byte
TEXT = "Grüße, caf\u00e9 = 100%\r\n".encode() * 3

MESSAGE = (
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: binary\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Gr=C3=BC=C3=9Fe, caf=C3=A9 =3D 100%\r\nGr=C3=BC=C3=9Fe, caf=C3=A9 =3D 100%\r\n"
    b"Gr=C3=BC=C3=9Fe, caf=C3=A9 =3D 1=\r\n00%\r\n"
    b"\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: BASE64\r\n\r\n"
    + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
    + b"\r\n--XX\r\nContent-Type: application/x-thing\r\n"
    b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\nend\r\n"
    b"--XX--\r\n"
)

#: MESSAGE without its part in an unknown encoding.
DECODABLE = (MESSAGE[: MESSAGE.index(b"\r\n--XX\r\nContent-Type: application/x-thing")]
             + b"\r\n--XX--\r\n")


def literalBody(out: bytes, label: bytes) -> bytes:
    """The bytes of the (literal or literal8) value of C{label} in C{out}."""
    m = re.search(re.escape(label) + rb" (~?)\{(\d+)\}\r\n", out)
    assert m is not None, out
    start = m.end()
    return out[start : start + int(m.group(2))]


class DecodeTests(SynchronousTestCase):
    """The transfer decodings."""

    def test_encodings(self) -> None:
        """base64 (lenient), quoted-printable, identities; anything else is refused."""
        self.assertEqual(decodeBase64(b"AAEC\r\nAw==\r\n"), b"\x00\x01\x02\x03")
        self.assertEqual(decodeBase64(b"AA*EC!Aw"), b"\x00\x01\x02\x03")
        self.assertEqual(decodeBase64(b"AAECA"), b"\x00\x01\x02")
        self.assertEqual(decode(b"a=3Db=\r\nc", b"Quoted-Printable"), b"a=bc")
        for enc in (b"", b"7bit", b"8BIT", b"binary", b" 7bit (comment)"):
            self.assertEqual(decode(b"as is\r\n", enc), b"as is\r\n")
        e = self.assertRaises(UnknownCTE, decode, b"x", b"x-uuencode")
        self.assertIn("[UNKNOWN-CTE]", str(e))


class BinaryWireTests(TestCase):
    """FETCH BINARY over the wire."""

    def setUp(self) -> None:
        """Alice with the test message in INBOX, selected."""
        self.env = IMAPEnv(self)
        self.env.deliver(MESSAGE)
        self.c = self.env.selected()

    def test_capability(self) -> None:
        """BINARY is advertised."""
        self.assertIn(b" BINARY", untagged(self.c.ok("CAPABILITY"))[0])

    def test_decodedParts(self) -> None:
        """BINARY.PEEK[2] is the base64 part decoded, NULs and all, as a literal8;
        BINARY.PEEK[1] the quoted-printable part decoded (8-bit text: a literal8 too,
        as Dovecot sends it); neither sets \\Seen."""
        out = self.c.ok("FETCH 1 (BINARY.PEEK[2] BINARY.PEEK[1])")
        self.assertIn(b"BINARY[2] ~{%d}\r\n" % len(PAYLOAD), out)
        self.assertEqual(literalBody(out, b"BINARY[2]"), PAYLOAD)
        self.assertIn(b"BINARY[1] ~{%d}\r\n" % len(TEXT), out)
        self.assertEqual(literalBody(out, b"BINARY[1]"), TEXT)
        self.assertNotIn(b"\\Seen", self.c.ok("FETCH 1 FLAGS"))

    def test_sizesAndPartial(self) -> None:
        """BINARY.SIZE is the decoded size; a partial range cuts the decoded data and
        is echoed by its origin."""
        out = self.c.ok("FETCH 1 (BINARY.SIZE[2] BINARY.SIZE[1] BINARY.PEEK[2]<10.20>)")
        self.assertIn(b"BINARY.SIZE[2] %d" % len(PAYLOAD), out)
        self.assertIn(b"BINARY.SIZE[1] %d" % len(TEXT), out)
        self.assertEqual(literalBody(out, b"BINARY[2]<10>"), PAYLOAD[10:30])

    def test_wholeMessageAndMissing(self) -> None:
        """BINARY[] is the message with every part decoded and marked
        C{Content-Transfer-Encoding: binary} (and sets \\Seen); a missing part is
        empty, as Dovecot answers."""
        self.env.deliver(DECODABLE)
        self.c.ok("NOOP")
        out = self.c.ok("FETCH 2 (BINARY[] BINARY.SIZE[] BINARY.PEEK[9] BINARY.SIZE[9])")
        whole = literalBody(out, b"BINARY[]")
        self.assertIn(b"BINARY.SIZE[] %d" % len(whole), out)
        self.assertEqual(whole.count(b"Content-Transfer-Encoding: binary\r\n"), 2)
        self.assertNotIn(b"base64", whole.lower())
        self.assertIn(b"\r\n\r\n" + TEXT + b"\r\n--XX\r\n", whole)
        self.assertIn(b"\r\n\r\n" + PAYLOAD + b"\r\n--XX--\r\n", whole)
        self.assertTrue(whole.startswith(DECODABLE[: DECODABLE.index(b"--XX")]))
        self.assertIn(b"BINARY[9] {0}\r\n", out)
        self.assertIn(b"BINARY.SIZE[9] 0", out)
        self.assertIn(b"\\Seen", self.c.ok("FETCH 2 FLAGS"))

    def test_unknownEncoding(self) -> None:
        """A part in an encoding the server cannot decode, or BINARY[] of a message
        holding one: NO [UNKNOWN-CTE]."""
        for fetch in ("FETCH 1 BINARY.PEEK[3]", "FETCH 1 BINARY.SIZE[]"):
            out = self.c.cmd(fetch)
            self.assertIn(b"NO [UNKNOWN-CTE]", tagged(out, self.c.lastTag))
        self.c.ok("NOOP")

    def test_badSyntax(self) -> None:
        """Text specifiers, a partial range on BINARY.SIZE and malformed sections are
        BAD; the session stays in sync."""
        for bad in ("FETCH 1 BINARY[1.TEXT]", "FETCH 1 BINARY[HEADER]",
                    "FETCH 1 BINARY.SIZE[1]<0.5>", "FETCH 1 BINARY[1", "FETCH 1 BINARY",
                    "FETCH 1 BINARY[0]", "FETCH 1 BINARY.PEEK[1]<5>"):
            out = self.c.cmd(bad)
            self.assertIn(b" BAD ", tagged(out, self.c.lastTag), bad)
        self.c.ok("NOOP")

    def test_appendLiteral8(self) -> None:
        """APPEND takes a literal8 (~{n}, synchronising or not) holding NULs, bare CRs
        and every other byte; the message comes back byte for byte."""
        data = (b"Subject: nul\r\nContent-Type: application/octet-stream\r\n\r\n"
                + PAYLOAD.replace(b"\n", b"\r\n"))
        out = self.c.send(b"a1 APPEND INBOX ~{%d}\r\n" % len(data))
        self.assertTrue(out.startswith(b"+ "), out)
        out = self.c.send(data + b"\r\n")
        self.assertIn(b"a1 OK [APPENDUID", out)
        out = self.c.send(b"a2 APPEND INBOX ~{%d+}\r\n" % len(data) + data + b"\r\n")
        self.assertIn(b"a2 OK [APPENDUID", out)
        out = self.c.ok("FETCH 2:3 (BINARY.PEEK[] BINARY.SIZE[1])")
        self.assertEqual(out.count(b"~{%d}\r\n" % len(data) + data), 2)
        self.assertEqual(out.count(b"BINARY.SIZE[1] %d" % (len(PAYLOAD) + 4)), 2)

    def test_appendBareLineFeed(self) -> None:
        """A literal8 whose body has a bare LF, which the store would write as CRLF, is
        stored with that body base64-encoded (as Dovecot converts it; imaptest's
        append-binary): BINARY[1] gives the very octets back, BODY[1] the base64. One
        whose header has a bare LF cannot be kept so and is refused with NO
        [UNKNOWN-CTE] (RFC 3516 section 4.3); nothing is stored then."""
        data = b"Subject: lf\r\n\r\n" + PAYLOAD
        out = self.c.send(b"a1 APPEND INBOX ~{%d+}\r\n" % len(data) + data + b"\r\n")
        self.assertIn(b"a1 OK [APPENDUID", out)
        self.c.ok("SELECT INBOX")
        out = self.c.ok("FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[1] BODY.PEEK[1])")
        self.assertIn(b"BINARY[1] ~{%d}\r\n" % len(PAYLOAD) + PAYLOAD, out)
        self.assertIn(b"BINARY.SIZE[1] %d" % len(PAYLOAD), out)
        encoded = base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
        self.assertIn(b"BODY[1] {%d}\r\n" % len(encoded) + encoded, out)
        bad = b"Subject: lf\nX: y\r\n\r\nbody\n"
        out = self.c.send(b"a2 APPEND INBOX ~{%d+}\r\n" % len(bad) + bad + b"\r\n")
        self.assertIn(b"a2 NO [UNKNOWN-CTE]", out)
        self.assertIn(b"* 2 EXISTS", self.c.ok("SELECT INBOX"))

    def test_storable(self) -> None:
        """The bare-LF check reads spool files in chunks, a CRLF split between two
        chunks included."""
        import io

        from pymaild.imap.binary import storable

        ok = b"x" * ((1 << 20) - 1) + b"\r\n" + b"y\r\n"
        self.assertTrue(storable(io.BytesIO(ok)))
        self.assertFalse(storable(io.BytesIO(b"x" * (1 << 20) + b"\ny")))
        self.assertFalse(storable(io.BytesIO(b"a\r\nb\nc")))
        self.assertTrue(storable(b"a\r\n\x00\rb"))
        self.assertFalse(storable(b"a\nb"))

    def test_literal8OutsideAppend(self) -> None:
        """A literal8 anywhere but APPEND (and SETMETADATA) is BAD and no continuation
        is sent."""
        out = self.c.send(b"a1 SELECT ~{5}\r\n")
        self.assertEqual(out, b"a1 BAD literal8 is allowed only in APPEND and SETMETADATA\r\n")
        self.c.ok("NOOP")
