"""I18NLEVEL=1 (RFC 5255 section 4.3): SEARCH and SORT compare with i;unicode-casemap
(RFC 5051, L{pymaild.imap.collation}), on the wire and over a real socket."""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.imap.collation import casemap, searchFold, sortKey
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, IMAPEnv, tagged, untagged

SUBJECTS = [
    "=?utf-8?q?=C3=89t=C3=A9?= report",   # Été report
    "eta",
    "Stra=?utf-8?q?=C3=9F?=e",              # Straße (one encoded word in the middle)
    "=?utf-8?q?=EF=BD=86=EF=BD=95=EF=BD=8C=EF=BD=8C?=",  # ｆｕｌｌ (full width)
    "=?utf-8?q?=EF=AC=81le?=",               # ﬁle (ligature)
    "etf",
]


def message(subject: str, body: str = "Plain body.") -> bytes:
    """A message with C{subject} (header text as given) and a UTF-8 C{body}."""
    return (f"From: a@example.org\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


class CollationTests(SynchronousTestCase):
    """The comparator itself."""

    def test_rfc5051(self) -> None:
        """Simple title case then full decomposition (RFC 5051 section 2): case apart,
        precomposed and decomposed forms are equal, compatibility forms become their
        decompositions (ﬁ is fi, in lower case), ß is no ss."""
        self.assertEqual(casemap("été"), "E\u0301TE\u0301")
        self.assertEqual(casemap("ÉTÉ"), casemap("e\u0301te\u0301"))
        self.assertEqual(casemap("ﬁle"), "fiLE")
        self.assertEqual(casemap("ｆｕｌｌ"), "FULL")
        self.assertEqual(casemap("straße"), "STRAßE")
        self.assertEqual(casemap("ascii Text"), "ASCII TEXT")
        self.assertEqual(casemap("ǆ"), "Dz\u030c")  # title case ǅ, decomposed
        self.assertIn(searchFold("ΣΟΣ"), searchFold("οδος σος"))  # final sigma folds
        self.assertEqual(searchFold(casemap("MiXeD")), casemap("mixed"))
        # Octets of the decomposed key: an accented letter sorts after the words with
        # its base letter there, before the next letter.
        self.assertLess(sortKey("etf"), sortKey("été"))
        self.assertLess(sortKey("été"), sortKey("f"))
        self.assertEqual(sortKey("Été"), sortKey("été"))


class WireTests(SynchronousTestCase):
    """SEARCH and SORT over the real IMAP stack."""

    def setUp(self) -> None:
        """The six L{SUBJECTS} in INBOX (the third with a body of accented text);
        INBOX selected."""
        self.env = IMAPEnv(self)
        self.env.deliver(*[message(s, "Ça va? Résumé." if i == 2 else "Plain body.")
                           for i, s in enumerate(SUBJECTS)])
        self.c = self.env.selected()

    def search(self, key: str, text: str) -> bytes:
        """The SEARCH response for C{key} with the UTF-8 literal C{text}."""
        data = text.encode()
        out = self.c.ok(f"SEARCH CHARSET UTF-8 {key} {{{len(data)}+}}\r\n".encode() + data)
        return untagged(out)[0]

    def test_capability(self) -> None:
        """I18NLEVEL=1 after login; COMPARATOR (I18NLEVEL=2) is not a command."""
        self.assertIn(b" I18NLEVEL=1", untagged(self.c.ok("CAPABILITY"))[0])
        out = self.c.cmd("COMPARATOR i;unicode-casemap")
        self.assertIn(b" BAD ", tagged(out, self.c.lastTag))
        self.c.ok("NOOP")

    def test_search(self) -> None:
        """Case apart, precomposed or decomposed, full-width letters as their ASCII
        forms, a ligature by itself; ß is not ss (as Dovecot answers, see
        tests/interop/test_dovecot_i18n.py); in headers (decoded) and bodies."""
        self.assertEqual(self.search("SUBJECT", "ÉTÉ"), b"* SEARCH 1")
        self.assertEqual(self.search("SUBJECT", "e\u0301te\u0301 REPORT"), b"* SEARCH 1")
        self.assertEqual(self.search("SUBJECT", "STRASSE"), b"* SEARCH")
        self.assertEqual(self.search("SUBJECT", "STRAßE"), b"* SEARCH 3")
        self.assertEqual(self.search("SUBJECT", "FULL"), b"* SEARCH 4")
        self.assertEqual(self.search("SUBJECT", "ｆｕｌｌ"), b"* SEARCH 4")
        self.assertEqual(self.search("SUBJECT", "ﬁLE"), b"* SEARCH 5")
        # ASCII "fiLE" is the key FILE: only the ligature finds the ligature.
        self.assertEqual(self.search("SUBJECT", "fiLE"), b"* SEARCH")
        self.assertEqual(self.search("BODY", "résumé"), b"* SEARCH 3")
        self.assertEqual(self.search("TEXT", "ÇA VA"), b"* SEARCH 3")
        self.assertEqual(self.search("SUBJECT", "etx"), b"* SEARCH")

    def test_sort(self) -> None:
        """SORT SUBJECT orders by the casemap key's octets: an accented letter after
        the words with its base letter there, full-width letters as theirs, the
        ligature as its lower-case decomposition (last)."""
        out = untagged(self.c.ok("SORT (SUBJECT) UTF-8 ALL"))[0]
        # ETA, ETF, E\u0301TE\u0301 REPORT, FULL, STRAßE, fiLE
        self.assertEqual(out, b"* SORT 2 6 1 4 3 5")

    def test_badInput(self) -> None:
        """A search string that is not UTF-8, and an unknown charset: the RFC's
        answers, the session in sync."""
        out = self.c.cmd(b"SEARCH CHARSET UTF-8 SUBJECT {2+}\r\n\xff\xfe")
        self.assertRegex(tagged(out, self.c.lastTag), rb" (BAD|NO) ")
        out = self.c.cmd("SEARCH CHARSET X-UNKNOWN SUBJECT x")
        self.assertIn(b" NO [BADCHARSET", tagged(out, self.c.lastTag))
        self.assertEqual(self.search("SUBJECT", "eta"), b"* SEARCH 2")


class SocketTests(TestCase):
    """imaplib over a real listener."""

    timeout = 60

    @defer.inlineCallbacks
    def test_imaplibSearch(self) -> None:
        """A UTF-8 SEARCH sent as a literal finds the decomposed, differently cased
        subject."""
        srv = ClientServer(self)
        for s in SUBJECTS:
            srv.store.deliver([ALICE], message(s))

        def client() -> Any:
            m = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            try:
                m.login(ALICE, ALICE_PW)
                m.select("INBOX")
                caps = m.capability()[1][0].decode().split()
                m.literal = "ÉTÉ".encode()
                return caps, m.search("UTF-8", "SUBJECT")[1]
            finally:
                m.logout()

        caps, found = yield threads.deferToThread(client)
        self.assertIn("I18NLEVEL=1", caps)
        self.assertEqual(found, [b"1"])
