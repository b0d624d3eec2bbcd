"""Tests for L{pymaild.auth.directory.Directory}: recipient resolution."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pymaild.auth.directory import Directory
from pymaild.auth.passwd import PasswdFile
from pymaild.errors import AddressError

USERS = """\
# test users
alice@example.com:{CRYPT}x:::::
bob@example.com:{CRYPT}x:::::
postmaster@example.org:{CRYPT}x:::::
bob+special@example.com:{CRYPT}x:::::
carol@example.net:{CRYPT}x:::::
jörg@example.com:{CRYPT}x:::::
"""

# address -> accounts, for domains example.com (primary), example.org, bücher.example
TABLE = {
    "alice@example.com": ["alice@example.com"],
    "ALICE@Example.COM": ["alice@example.com"],
    "  alice@example.com ": ["alice@example.com"],
    "alice@example.com.": ["alice@example.com"],
    "alice+news@example.com": ["alice@example.com"],
    "alice+a+b@example.com": ["alice@example.com"],
    "alice-news@example.com": [],  # "-" is not a delimiter by default
    "+alice@example.com": [],  # a leading delimiter is not a tag
    "bob+special@example.com": ["bob+special@example.com"],  # exact match first
    "bob+other@example.com": ["bob@example.com"],
    "nobody@example.com": [],
    "nobody+tag@example.com": [],
    "alice@example.org": [],  # another local domain, no such user there
    "carol@example.net": [],  # carol's domain is not local
    "alice@example.net": [],
    "jörg@example.com": ["jörg@example.com"],
    "JÖRG+x@EXAMPLE.com": ["jörg@example.com"],
    # postmaster: the domain's own account, else postmaster@<first domain> if it
    # exists, else the first passwd user
    "postmaster@example.org": ["postmaster@example.org"],
    "PostMaster@example.com": ["alice@example.com"],
    "postmaster+x@example.com": ["alice@example.com"],
    "postmaster@xn--bcher-kva.example": ["alice@example.com"],
    "postmaster@bücher.example": ["alice@example.com"],
    "postmaster": ["alice@example.com"],
    "Postmaster": ["alice@example.com"],
    "postmaster@example.net": [],  # not a local domain
    # malformed input
    "": [],
    "alice": [],
    "@example.com": [],
    "alice@": [],
    "a/b@example.com": [],
    "alice@[192.0.2.1]": [],
    "alice%example.com@example.com": [],
}


class DirectoryTests(SynchronousTestCase):
    """Resolution of recipient addresses to local accounts."""

    def setUp(self) -> None:
        """A passwd file with USERS and a directory for three local domains."""
        directory = self.mktemp()
        os.mkdir(directory)
        self.path = os.path.join(directory, "passwd")
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(USERS)
        self.pw = PasswdFile(self.path)
        self.directory = Directory(self.pw, ["Example.com", "example.org", "bücher.example"])

    def test_table(self) -> None:
        """Every address of the table resolves as listed."""
        for address, expected in TABLE.items():
            self.assertEqual(self.directory.resolve(address), expected, repr(address))

    def test_postmasterOfPrimaryDomain(self) -> None:
        """Without its own account, postmaster@<local> goes to postmaster@<first domain>."""
        d = Directory(self.pw, ["example.org", "example.com"])
        self.assertEqual(d.resolve("postmaster@example.com"), ["postmaster@example.org"])
        self.assertEqual(d.resolve("postmaster"), ["postmaster@example.org"])

    def test_postmasterWithoutUsers(self) -> None:
        """With an empty passwd file nothing resolves, postmaster included."""
        d = Directory(PasswdFile(self.path + ".empty"), ["example.com"])
        self.assertEqual(d.resolve("postmaster@example.com"), [])
        self.assertEqual(d.resolve("postmaster"), [])

    def test_noDomains(self) -> None:
        """With no local domains, nothing is local."""
        d = Directory(self.pw, [])
        self.assertEqual(d.resolve("alice@example.com"), [])
        self.assertEqual(d.resolve("postmaster"), [])
        self.assertFalse(d.isLocalDomain("example.com"))

    def test_delimiters(self) -> None:
        """Each delimiter character works; an empty delimiter turns tags off."""
        d = Directory(self.pw, ["example.com"], recipientDelimiter="+-")
        self.assertEqual(d.resolve("alice-news@example.com"), ["alice@example.com"])
        self.assertEqual(d.resolve("alice+news@example.com"), ["alice@example.com"])
        self.assertEqual(d.resolve("alice-x+y@example.com"), ["alice@example.com"])
        off = Directory(self.pw, ["example.com"], recipientDelimiter="")
        self.assertEqual(off.resolve("alice+news@example.com"), [])
        self.assertEqual(off.resolve("alice@example.com"), ["alice@example.com"])

    def test_followsPasswdChanges(self) -> None:
        """Users added to the passwd file afterwards resolve at once."""
        self.assertEqual(self.directory.resolve("dave@example.com"), [])
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("dave@example.com:{CRYPT}x:::::\n")
        self.assertEqual(self.directory.resolve("dave+x@example.com"), ["dave@example.com"])

    def test_isLocalDomain(self) -> None:
        """Local domains match in any case, with a trailing dot, as IDNA or Unicode."""
        for domain in (
            "example.com",
            "EXAMPLE.COM",
            "example.com.",
            "xn--bcher-kva.example",
            "BÜCHER.example",
            "example.org",
        ):
            self.assertTrue(self.directory.isLocalDomain(domain), domain)
        for domain in ("example.net", "sub.example.com", "", "[192.0.2.1]", "bad..domain"):
            self.assertFalse(self.directory.isLocalDomain(domain), domain)

    def test_domainsNormalised(self) -> None:
        """Configured domains are normalised and de-duplicated in order."""
        d = Directory(self.pw, ["Example.COM.", "example.com", "xn--bcher-kva.example"])
        self.assertEqual(d.domains, ("example.com", "bücher.example"))
        self.assertRaises(AddressError, Directory, self.pw, ["bad domain"])
