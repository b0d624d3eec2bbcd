"""Tests for the RFC 5321/6531 path parser in pymaild.address (used by the SMTP server)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pymaild.address import Path, PathRefused, PathSyntaxError, parseParameters, parsePath


class ParsePathTests(SynchronousTestCase):
    """parsePath splits the path from the parameters and refuses routing tricks."""

    def test_plain(self) -> None:
        """A bracketed address and its parameters are separated."""
        path, rest = parsePath("<Alice@Example.org> SIZE=10")
        self.assertEqual(path, Path("Alice", "Example.org"))
        self.assertEqual(rest, " SIZE=10")
        self.assertEqual(path.address, "Alice@Example.org")

    def test_null(self) -> None:
        """<> is the null path only where allowed."""
        path, _ = parsePath("<>", null=True)
        self.assertTrue(path.isNull)
        self.assertRaises(PathSyntaxError, parsePath, "<>")

    def test_postmaster(self) -> None:
        """A bare <postmaster> is accepted for RCPT only."""
        path, _ = parsePath("<Postmaster>", postmaster=True)
        self.assertEqual(path, Path("Postmaster", ""))
        self.assertRaises(PathSyntaxError, parsePath, "<postmaster>")
        self.assertRaises(PathSyntaxError, parsePath, "<alice>", postmaster=True)

    def test_quoted(self) -> None:
        """Quoted local parts are unquoted and quoted again on output."""
        path, rest = parsePath('<"john >doe"@example.org> BODY=8BITMIME')
        self.assertEqual(path.local, "john >doe")
        self.assertEqual(path.address, '"john >doe"@example.org')
        self.assertEqual(rest, " BODY=8BITMIME")

    def test_utf8(self) -> None:
        """UTF-8 local parts and domains (RFC 6531) parse and are flagged non-ASCII."""
        path, _ = parsePath("<δοκιμή@παράδειγμα.δοκιμή>")
        self.assertEqual(path.domain, "παράδειγμα.δοκιμή")
        self.assertFalse(path.isASCII)
        self.assertTrue(parsePath("<a@b.example>")[0].isASCII)

    def test_literal(self) -> None:
        """Address literals must be IP addresses."""
        self.assertEqual(parsePath("<a@[192.0.2.1]>")[0].domain, "[192.0.2.1]")
        self.assertEqual(parsePath("<a@[IPv6:2001:db8::1]>")[0].domain, "[IPv6:2001:db8::1]")
        self.assertRaises(PathSyntaxError, parsePath, "<a@[999.1.1.1]>")

    def test_refused(self) -> None:
        """Source routes, the percent hack, bang paths and a second @ are refused."""
        for bad in ["<@relay.example:alice@example.org>", "<@a,@b:alice@example.org>",
                    "<alice%other.example@example.org>", "<other.example!alice@example.org>",
                    "<alice@other.example@example.org>"]:
            self.assertRaises(PathRefused, parsePath, bad)

    def test_syntax(self) -> None:
        """Malformed paths are syntax errors."""
        for bad in ["<alice@>", "<alice@example.org", "alice@example.org>", "<.a@example.org>",
                    "<a..b@example.org>", "<a@-x.example>", "<a b@example.org>", "",
                    "<alice@example.org>junk", '<"unterminated@example.org>',
                    "<" + "a" * 65 + "@example.org>"]:
            self.assertRaises(PathSyntaxError, parsePath, bad)

    def test_noBrackets(self) -> None:
        """A path without brackets is tolerated and ends at the first space."""
        path, rest = parsePath("alice@example.org SIZE=1")
        self.assertEqual(path.address, "alice@example.org")
        self.assertEqual(rest, "SIZE=1")


class ParametersTests(SynchronousTestCase):
    """parseParameters reads ESMTP keyword[=value] lists."""

    def test_parse(self) -> None:
        """Keys are upper-cased, values kept, missing values are None."""
        self.assertEqual(parseParameters(" size=10 SMTPUTF8 body=8BITMIME"),
                         {"SIZE": "10", "SMTPUTF8": None, "BODY": "8BITMIME"})
        self.assertEqual(parseParameters(""), {})

    def test_bad(self) -> None:
        """Repeated keys, empty values and bad keywords are errors."""
        for bad in ["SIZE=1 SIZE=2", "SIZE=", "=x", "SI_ZE=1", "A=b=c"]:
            self.assertRaises(PathSyntaxError, parseParameters, bad)
