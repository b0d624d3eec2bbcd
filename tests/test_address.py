"""Tests for pymaild.address: canonical forms, unsafe names, sub-address tags."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pymaild.address import canonical, normaliseDomain, stripTag
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
