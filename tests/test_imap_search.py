"""SEARCH: every key, literals with CHARSET UTF-8, empty results, UID SEARCH."""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imap_helpers import IMAPEnv, makeMessage, tagged


def ids(out: bytes) -> list[int]:
    """The numbers of the SEARCH response."""
    for line in out.split(b"\r\n"):
        if line.startswith(b"* SEARCH"):
            return [int(x) for x in line.split()[2:]]
    raise AssertionError(f"no SEARCH response in {out!r}")


class SearchTests(SynchronousTestCase):
    """Search keys against four messages."""

    def setUp(self) -> None:
        """Four messages with distinct headers, bodies, sizes, dates and flags."""
        self.env = IMAPEnv(self)
        env = self.env
        env.deliver(
            makeMessage("Meeting tomorrow", b"Let us meet at noon.\r\n",
                        extra=b"Cc: Dave <dave@example.net>\r\nX-Tag: blue\r\n"),
            makeMessage("=?utf-8?q?Gr=C3=BC=C3=9Fe?=", b"caf\xc3\xa9 au lait\r\n",
                        extra=b"Content-Type: text/plain; charset=utf-8\r\n"
                              b"Content-Transfer-Encoding: 8bit\r\n"),
            makeMessage("Report", b"UmVwb3J0IGF0dGFjaGVk\r\n",
                        extra=b"Content-Transfer-Encoding: base64\r\n"),
            makeMessage("Big one", b"x" * 5000 + b"\r\n"),
        )
        folder = env.folder()
        infos = folder.scan().messages
        old = time.mktime((2020, 1, 15, 12, 0, 0, 0, 0, -1))
        os.utime(os.path.join(folder.path, infos[0].filename), (old, old))
        self.c = env.selected()
        self.c.ok("STORE 2 +FLAGS.SILENT (\\Seen $Work)")
        self.c.ok("STORE 3 +FLAGS.SILENT (\\Flagged \\Answered)")

    def search(self, query: str) -> list[int]:
        """Run SEARCH and return the numbers."""
        out = self.c.cmd("SEARCH " + query)
        self.assertIn(b" OK ", tagged(out, self.c.lastTag), query)
        return ids(out)

    def test_flags(self) -> None:
        """SEEN, UNSEEN, FLAGGED, ANSWERED, KEYWORD, UNKEYWORD, NEW, OLD, RECENT."""
        self.assertEqual(self.search("SEEN"), [2])
        self.assertEqual(self.search("UNSEEN"), [1, 3, 4])
        self.assertEqual(self.search("FLAGGED ANSWERED"), [3])
        self.assertEqual(self.search("KEYWORD $Work"), [2])
        self.assertEqual(self.search("UNKEYWORD $Work"), [1, 3, 4])
        self.assertEqual(self.search("NEW"), [1, 3, 4])
        self.assertEqual(self.search("OLD"), [])
        self.assertEqual(self.search("RECENT"), [1, 2, 3, 4])
        self.assertEqual(self.search("DELETED"), [])

    def test_emptyResultStillAnswers(self) -> None:
        """An empty result still sends '* SEARCH'."""
        out = self.c.cmd("SEARCH SUBJECT nothing-like-this")
        self.assertIn(b"* SEARCH\r\n", out)

    def test_headers(self) -> None:
        """SUBJECT, FROM, TO, CC, HEADER match case-insensitively, encoded words decoded."""
        self.assertEqual(self.search("SUBJECT meeting"), [1])
        self.assertEqual(self.search('FROM "carol@remote"'), [1, 2, 3, 4])
        self.assertEqual(self.search("TO alice"), [1, 2, 3, 4])
        self.assertEqual(self.search("CC dave"), [1])
        self.assertEqual(self.search("HEADER X-Tag blue"), [1])
        self.assertEqual(self.search('HEADER X-Tag ""'), [1])
        self.assertEqual(self.search("BCC anyone"), [])

    def test_literalUtf8(self) -> None:
        """SEARCH CHARSET UTF-8 SUBJECT {n} waits for the literal; UTF-8 matches."""
        needle = "grüße".encode()
        out = self.c.cmd(b"SEARCH CHARSET UTF-8 SUBJECT {%d}" % len(needle))
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = self.c.send(needle + b"\r\n")
        self.assertEqual(ids(out), [2])
        body = "CAFÉ".encode()
        self.c.cmd(b"SEARCH CHARSET UTF-8 BODY {%d}" % len(body))
        self.assertEqual(ids(self.c.send(body + b"\r\n")), [2])

    def test_badCharset(self) -> None:
        """An unsupported charset is NO [BADCHARSET]."""
        out = self.c.cmd("SEARCH CHARSET KOI8-R ALL")
        self.assertIn(b"NO [BADCHARSET", out)

    def test_bodyAndText(self) -> None:
        """BODY searches decoded text; TEXT also headers."""
        self.assertEqual(self.search("BODY noon"), [1])
        self.assertEqual(self.search("BODY attached"), [3])
        self.assertEqual(self.search("TEXT report"), [3])
        self.assertEqual(self.search("BODY Meeting"), [])
        self.assertEqual(self.search("TEXT Meeting"), [1])

    def test_sizes(self) -> None:
        """LARGER and SMALLER."""
        self.assertEqual(self.search("LARGER 4000"), [4])
        self.assertEqual(self.search("SMALLER 4000"), [1, 2, 3])

    def test_dates(self) -> None:
        """BEFORE/SINCE/ON use the internal date; SENT* use the Date header."""
        self.assertEqual(self.search("BEFORE 1-Jan-2021"), [1])
        self.assertEqual(self.search("ON 15-Jan-2020"), [1])
        self.assertEqual(self.search("SINCE 1-Jan-2021"), [2, 3, 4])
        self.assertEqual(self.search('SENTON "7-Feb-1994"'), [1, 2, 3, 4])
        self.assertEqual(self.search("SENTBEFORE 7-Feb-1994"), [])
        self.assertEqual(self.search("SENTSINCE 8-Feb-1994"), [])
        self.assertIn(b" BAD ", self.c.cmd("SEARCH BEFORE 31-Foo-2020"))

    def test_logic(self) -> None:
        """NOT, OR, parentheses and implicit AND."""
        self.assertEqual(self.search("NOT SEEN"), [1, 3, 4])
        self.assertEqual(self.search("OR SEEN FLAGGED"), [2, 3])
        self.assertEqual(self.search("(OR SEEN FLAGGED) NOT ANSWERED"), [2])
        self.assertEqual(self.search("OR (SEEN) (LARGER 4000)"), [2, 4])

    def test_sequenceAndUid(self) -> None:
        """Sequence sets, UID sets and UID SEARCH returning UIDs."""
        self.assertEqual(self.search("2:3"), [2, 3])
        self.assertEqual(self.search("*"), [4])
        self.assertEqual(self.search("UID 1,4"), [1, 4])
        self.c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.c.ok("EXPUNGE")
        out = self.c.cmd("UID SEARCH UID 2:*")
        self.assertEqual(ids(out), [2, 3, 4])
        self.assertEqual(ids(self.c.cmd("SEARCH UID 2:*")), [1, 2, 3])

    def test_syntaxErrors(self) -> None:
        """Unknown keys and missing arguments are BAD."""
        for q in ("FROB", "SUBJECT", "OR SEEN", "LARGER x", "(SEEN"):
            self.assertIn(b" BAD ", self.c.cmd("SEARCH " + q), q)


class RaisingCodecTests(SynchronousTestCase):
    """A charset whose codec raises (C{idna}) is treated as unknown: SEARCH answers."""

    def test_bodyAndHeaderInRaisingCharset(self) -> None:
        """BODY and SUBJECT searches over a message whose text part and encoded word
        name the idna charset still answer, and find what is there."""
        env = IMAPEnv(self)
        env.deliver(b"Subject: =?idna?q?xn--caf-dma?=\r\nMIME-Version: 1.0\r\n"
                    b"Content-Type: text/plain; charset=idna\r\n\r\n"
                    b"caf\xc3\xa9 body words\r\n")
        c = env.selected()
        out = c.cmd("SEARCH BODY words")
        self.assertIn(b"* SEARCH 1\r\n", out)
        out = c.cmd("SEARCH SUBJECT xn")
        self.assertIn(c.lastTag + b" OK", out)
