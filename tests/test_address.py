"""Tests for pymaild.address: canonical forms, unsafe names, sub-address tags."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pymaild.address import (
    PathSyntaxError,
    canonical,
    domainToASCII,
    domainToUnicode,
    normaliseDomain,
    parsePath,
    stripTag,
)
from pymaild.errors import AddressError


class AddressTests(SynchronousTestCase):
    """Address parsing and normalisation."""

    def test_canonical(self) -> None:
        """Local part and domain are lower-cased; IDNA domains are decoded."""
        self.assertEqual(canonical("Alice@Example.ORG"), "alice@example.org")
        self.assertEqual(canonical("bob@xn--bcher-kva.example"), "bob@bücher.example")
        self.assertEqual(canonical("δοκιμή@παράδειγμα.δοκιμή"), "δοκιμή@παράδειγμα.δοκιμή")

    def test_unsafe(self) -> None:
        """Addresses that could escape a directory or route mail elsewhere are refused."""
        for bad in ["../x@example.org", "a/b@example.org", ".a@example.org", "x@",
                    "@example.org", "a%b@example.org", "a!b@example.org", "a\x00@ex.org",
                    "a b@example.org", "a@exa mple.org", "a@[127.0.0.1]", "noatsign",
                    "a@-bad.example", "a@" + "x" * 64 + ".org", "x" * 65 + "@example.org"]:
            self.assertRaises(AddressError, canonical, bad)

    def test_domain(self) -> None:
        """A trailing dot is dropped and case folded."""
        self.assertEqual(normaliseDomain("Example.ORG."), "example.org")
        self.assertRaises(AddressError, normaliseDomain, "")
        self.assertRaises(AddressError, normaliseDomain, "a..b")

    def test_stripTag(self) -> None:
        """user+tag@domain becomes user@domain; a leading delimiter is kept."""
        self.assertEqual(stripTag("user+tag@d.example"), "user@d.example")
        self.assertEqual(stripTag("user+a+b@d.example"), "user@d.example")
        self.assertEqual(stripTag("+x@d.example"), "+x@d.example")
        self.assertEqual(stripTag("user+tag@d.example", ""), "user+tag@d.example")


class IDNATests(SynchronousTestCase):
    """Internationalised domains follow IDNA 2008 with the UTS 46 non-transitional
    mapping; IDNA 2003 (Python's C{"idna"} codec) would name other domains."""

    def test_sharpS(self) -> None:
        """C{ß} is kept: C{straße.de} is C{xn--strae-oqa.de}, not C{strasse.de}."""
        self.assertEqual(domainToASCII("straße.de"), "xn--strae-oqa.de")
        self.assertEqual(domainToASCII("Straße.DE."), "xn--strae-oqa.de")
        self.assertEqual(normaliseDomain("xn--strae-oqa.de"), "straße.de")
        self.assertEqual(normaliseDomain("XN--STRAE-OQA.DE"), "straße.de")
        self.assertEqual(domainToUnicode("xn--strae-oqa.de"), "straße.de")
        self.assertEqual(canonical("x@Straße.de"), "x@straße.de")
        self.assertNotEqual(canonical("x@straße.de"), canonical("x@strasse.de"))

    def test_finalSigma(self) -> None:
        """Final sigma C{ς} stays C{ς} (IDNA 2003 maps it to C{σ}, C{xn--4xa})."""
        self.assertEqual(domainToASCII("ς.example"), "xn--3xa.example")
        self.assertEqual(normaliseDomain("xn--3xa.example"), "ς.example")
        self.assertEqual(normaliseDomain("xn--4xa.example"), "σ.example")

    def test_zeroWidthJoiner(self) -> None:
        """A ZWJ out of context is refused (IDNA 2003 silently drops it: C{ab.example});
        after a virama (CONTEXTJ rule) it is valid and kept."""
        self.assertRaises(AddressError, domainToASCII, "a\u200db.example")
        self.assertRaises(AddressError, normaliseDomain, "a\u200db.example")
        self.assertEqual(domainToASCII("\u0d15\u0d4d\u200d.example"), "xn--bwc6iy31d.example")
        self.assertEqual(normaliseDomain("xn--bwc6iy31d.example"), "\u0d15\u0d4d\u200d.example")

    def test_invalidLabel(self) -> None:
        """A broken A-label is an AddressError, and a path syntax error in SMTP."""
        for bad in ("xn--a.example", "xn--strasse-.example", "a\u200db.example"):
            self.assertRaises(AddressError, domainToASCII, bad)
            self.assertRaises(AddressError, normaliseDomain, bad)
            self.assertRaises(PathSyntaxError, parsePath, f"<x@{bad}>")
        self.assertEqual(parsePath("<x@straße.de>")[0].domain, "straße.de")

    def test_asciiLabels(self) -> None:
        """Plain ASCII labels are only lower-cased, even beside an IDNA label."""
        self.assertEqual(domainToASCII("Mail.Example.ORG"), "mail.example.org")
        self.assertEqual(domainToASCII("_dmarc.Bücher.example"), "_dmarc.xn--bcher-kva.example")
        self.assertEqual(normaliseDomain("ab--c.example"), "ab--c.example")

    def test_ideographicStop(self) -> None:
        """UTS 46 maps the ideographic full stop to a dot."""
        self.assertEqual(domainToASCII("bücher\u3002example"), "xn--bcher-kva.example")
