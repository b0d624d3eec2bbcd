"""Tests for L{pymaild.store.mutf7}, the IMAP modified UTF-7 codec of folder names."""

from twisted.trial.unittest import SynchronousTestCase

from pymaild.store import mutf7

# (Unicode, modified UTF-7) pairs; the first comes from RFC 3501 section 5.1.3.
EXAMPLES = [
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("INBOX", "INBOX"),
    ("", ""),
    ("&", "&-"),
    ("Tom & Jerry", "Tom &- Jerry"),
    ("\u00dcber", "&ANw-ber"),
    ("Entw\u00fcrfe", "Entw&APw-rfe"),
    ("caf\u00e9 cr\u00e8me", "caf&AOk- cr&AOg-me"),
    ("\U0001f600", "&2D3eAA-"),
    ("a\u00e9\u00e8b", "a&AOkA6A-b"),
    ("\u00e9&", "&AOk-&-"),
    ("tab\there", "tab&AAk-here"),
    ("\u00ff\u00ff\u00ff", "&AP8A,wD,-"),
]

BAD = [
    ("&", "unterminated shift"),
    ("&AOk", "unterminated shift"),
    ("&AGE-", "printable ASCII encoded"),
    ("&AOl-", "non-canonical (padding bits set)"),
    ("&A-", "truncated base64"),
    ("&AO!-", "bad base64 character"),
    ("&AOk=-", "base64 padding"),
    ("&2D0-", "lone surrogate"),
    ("\u00e9", "raw non-ASCII"),
    ("a\tb", "raw control character"),
    ("&AOk/-", "'/' instead of ','"),
]


class EncodeTests(SynchronousTestCase):
    """L{mutf7.encode} produces RFC 3501 modified UTF-7."""

    def test_examples(self) -> None:
        """Each example encodes to its expected spelling."""
        for text, encoded in EXAMPLES:
            self.assertEqual(mutf7.encode(text), encoded, text)

    def test_asciiOnly(self) -> None:
        """The output is always printable ASCII."""
        for text, _ in EXAMPLES:
            out = mutf7.encode(text)
            self.assertTrue(all("\x20" <= ch <= "\x7e" for ch in out), out)

    def test_loneSurrogate(self) -> None:
        """A lone surrogate cannot be encoded."""
        self.assertRaises(mutf7.MUTF7Error, mutf7.encode, "a\ud800b")


class DecodeTests(SynchronousTestCase):
    """L{mutf7.decode} inverts L{mutf7.encode} and refuses non-canonical input."""

    def test_examples(self) -> None:
        """Each example decodes back to its text."""
        for text, encoded in EXAMPLES:
            self.assertEqual(mutf7.decode(encoded), text, encoded)

    def test_roundTrip(self) -> None:
        """Arbitrary mixes of ASCII, BMP and astral characters survive a round trip."""
        samples = ["a&b&&c", "\u4e2d\u6587&\u65e5\u672c", "x\U0001f4e7y\u00e9z", "&-&", "~"]
        for text in samples:
            self.assertEqual(mutf7.decode(mutf7.encode(text)), text)

    def test_bad(self) -> None:
        """Malformed or non-canonical input raises MUTF7Error (a ValueError)."""
        for encoded, why in BAD:
            with self.assertRaises(mutf7.MUTF7Error, msg=why):
                mutf7.decode(encoded)
        self.assertTrue(issubclass(mutf7.MUTF7Error, ValueError))
