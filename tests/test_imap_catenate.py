"""CATENATE (RFC 4469) and URL-PARTIAL (RFC 5550) on the wire (L{pymaild.imap.catenate}):
the RFC's example, every kind of part, and each bad input answered as the RFCs say with
the session still in sync; one session over a real socket with imaplib."""

from __future__ import annotations

import imaplib
import re
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, BOB, IMAPEnv, makeMessage, tagged

#: The draft of RFC 4469's example: a multipart/mixed whose first part is kept and
#: whose attachment is replaced.
DRAFT = (b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: draft\r\n"
         b"MIME-Version: 1.0\r\n"
         b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\n'
         b"--XYZ\r\nContent-Type: text/plain\r\n\r\nFirst part.\r\n"
         b"--XYZ\r\nContent-Type: application/octet-stream\r\n\r\nold attachment\r\n"
         b"--XYZ--\r\n")
HEADER, _, _ = DRAFT.partition(b"\r\n\r\n")
HEADER += b"\r\n\r\n"


def lit(data: bytes) -> str:
    """A non-synchronising literal (LITERAL+) holding C{data}, for a command line."""
    return f"{{{len(data)}+}}\r\n" + data.decode()


def body(out: bytes) -> bytes:
    """The literal of the one FETCH BODY[] response in C{out}."""
    m = re.search(rb"BODY\[\] \{(\d+)\}\r\n", out)
    assert m is not None, out
    return out[m.end():m.end() + int(m.group(1))]


class CatenateTests(SynchronousTestCase):
    """APPEND ... CATENATE (...) against the real IMAP stack."""

    def setUp(self) -> None:
        """The draft in Drafts (UID 1) and one message in INBOX; a logged-in session."""
        self.env = IMAPEnv(self)
        self.c = self.env.login()  # makes Drafts
        self.env.deliver(DRAFT, folder="Drafts")
        self.env.deliver(makeMessage("inbox", b"Inbox body.\r\n"))
        self.c.ok("STATUS INBOX (UIDNEXT)")  # the delivered messages get their UIDs
        out = self.c.ok("STATUS Drafts (UIDVALIDITY)")
        self.uidv = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))  # type: ignore

    def made(self, folder: str = "Drafts") -> bytes:
        """The newest message of C{folder}, as FETCH BODY[] gives it."""
        self.c.ok(f"SELECT {folder}")
        out = self.c.ok("FETCH * BODY.PEEK[]")
        self.c.ok("UNSELECT")
        return body(out)

    def test_capabilities(self) -> None:
        """CATENATE and URL-PARTIAL are advertised after login."""
        out = self.c.ok("CAPABILITY")
        self.assertIn(b" CATENATE", out)
        self.assertIn(b" URL-PARTIAL", out)

    def test_rfcExample(self) -> None:
        """RFC 4469 section 5's example: the header, the first part's MIME header and
        content by URL, a new boundary and attachment as text; APPENDUID answered."""
        sep = b"\r\n--XYZ\r\n"
        attachment = b"Content-Type: text/plain\r\n\r\nnew attachment\r\n--XYZ--\r\n"
        url = f"/Drafts;UIDVALIDITY={self.uidv}/;UID=1"
        out = self.c.ok(
            f'APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "{url}/;section=HEADER"'
            f" TEXT {lit(b'--XYZ' + chr(13).encode() + chr(10).encode())}"
            f' URL "{url}/;section=1.MIME" URL "{url}/;section=1" TEXT {lit(sep + attachment)})')
        self.assertIn(b"[APPENDUID %d 2]" % self.uidv, out)
        expected = (HEADER + b"--XYZ\r\nContent-Type: text/plain\r\n\r\nFirst part."
                    + sep + attachment)
        self.assertEqual(self.made(), expected)
        self.c.ok("SELECT Drafts")
        self.assertIn(b"$MDNSent", self.c.ok("FETCH 2 FLAGS"))

    def test_sections(self) -> None:
        """Whole message, TEXT, HEADER.FIELDS, and an absolute URL with this server's
        host name and user."""
        self.c.ok('APPEND INBOX CATENATE (URL "/Drafts/;UID=1")')
        self.assertEqual(self.made("INBOX"), DRAFT)
        self.c.ok('APPEND INBOX CATENATE (URL "/Drafts/;UID=1/;SECTION=HEADER.FIELDS%20'
                  '(SUBJECT%20TO)" TEXT {3+}\r\nx\r\n)')
        self.assertEqual(self.made("INBOX"),
                         b"To: bob@example.org\r\nSubject: draft\r\n\r\nx\r\n")
        user = ALICE.replace("@", "%40")
        self.c.ok(f'APPEND INBOX CATENATE (TEXT {{4+}}\r\nA: b URL "imap://{user};AUTH=*@'
                  'MX.example.org/INBOX/;UID=1/;SECTION=TEXT")')
        self.assertEqual(self.made("INBOX"), b"A: bInbox body.\r\n")

    def test_partial(self) -> None:
        """URL-PARTIAL: C{;PARTIAL=offset.length} and C{;PARTIAL=offset} (to the end);
        past the end is empty."""
        self.c.ok('APPEND INBOX CATENATE (TEXT {2+}\r\nX: URL "/Drafts/;UID=1/;PARTIAL=6.6"'
                  ' TEXT {2+}\r\n\r\n)')
        self.assertEqual(self.made("INBOX"), b"X:" + DRAFT[6:12] + b"\r\n")
        self.c.ok('APPEND INBOX CATENATE (URL "/Drafts/;UID=1/;SECTION=1/;PARTIAL=6")')
        self.assertEqual(self.made("INBOX"), b"part.")
        self.c.ok('APPEND INBOX CATENATE (URL "/Drafts/;UID=1/;PARTIAL=100000.1"'
                  " TEXT {4+}\r\nA: b)")
        self.assertEqual(self.made("INBOX"), b"A: b")

    def test_multiappend(self) -> None:
        """A CATENATE message beside a plain literal in one MULTIAPPEND."""
        plain = makeMessage("plain")
        out = self.c.ok(f'APPEND INBOX {lit(plain)} (\\Seen) CATENATE (URL "/Drafts/;UID=1")')
        self.assertIn(b"[APPENDUID ", out)
        self.c.ok("SELECT INBOX")
        self.assertIn(b"* 3 EXISTS", self.c.ok("NOOP") + self.c.ok("SELECT INBOX"))

    def badUrl(self, url: str, reason: bytes) -> None:
        """C{url} (as a middle part) is answered NO [BADURL url] and nothing is stored."""
        out = self.c.cmd(f'APPEND INBOX CATENATE (TEXT {{3+}}\r\nA:  URL "{url}" TEXT'
                         f" {{2+}}\r\n\r\n)")
        line = tagged(out, self.c.lastTag)
        self.assertIn(b" NO [BADURL ", line)
        self.assertIn(reason, line)
        self.assertIn(b"MESSAGES 1)", self.c.ok("STATUS INBOX (MESSAGES)"))

    def test_badUrls(self) -> None:
        """Every URL that names nothing readable: a wrong UIDVALIDITY, no such UID,
        folder or section, another host or user, a relative URLAUTH URL, no UID,
        garbage."""
        self.badUrl(f"/Drafts;UIDVALIDITY={self.uidv + 1}/;UID=1", b"UIDVALIDITY")
        self.badUrl("/Drafts/;UID=9", b"No such message")
        self.badUrl("/Nowhere/;UID=1", b"No such mailbox")
        self.badUrl("/Drafts/;UID=1/;SECTION=7", b"No such section")
        self.badUrl("/Drafts/;UID=1/;SECTION=BOGUS", b"Invalid section")
        self.badUrl("imap://other.example/Drafts/;UID=1", b"another server")
        self.badUrl(f"imap://{BOB.replace('@', '%40')}@mx.example.org/Drafts/;UID=1",
                    b"another server or user")
        self.badUrl("/Drafts/;UID=1;URLAUTH=anonymous", b"Not an absolute IMAP URL with"
                    b" URLAUTH")  # (a URLAUTH URL must be absolute, with its token)
        self.badUrl("/Drafts", b"Not an IMAP URL")
        self.badUrl("/Drafts/;UID=0", b"Not an IMAP URL")
        self.badUrl("]" * 5000, b"too long")

    def test_badSyntaxAndLimits(self) -> None:
        """BAD for a malformed CATENATE, NO TRYCREATE before BADURL for a missing
        folder, NO for an empty result, NO [TOOBIG] past the APPEND limit; the session
        goes on."""
        for cmd in ("APPEND INBOX CATENATE ()", "APPEND INBOX CATENATE (FOO {1+}\r\nx)",
                    "APPEND INBOX CATENATE TEXT {1+}\r\nx", 'APPEND INBOX CATENATE (URL)',
                    "APPEND INBOX CATENATE (" + " ".join(['URL "/INBOX/;UID=1"'] * 257)
                    + ")"):
            self.assertIn(b" BAD ", tagged(self.c.cmd(cmd), self.c.lastTag))
        out = self.c.cmd('APPEND Nowhere CATENATE (URL "/Drafts;UIDVALIDITY=1/;UID=1")')
        self.assertIn(b" NO [TRYCREATE]", out)
        out = self.c.cmd('APPEND INBOX CATENATE (TEXT {0+}\r\n)')
        self.assertIn(b" NO Cannot save a zero byte message", out)
        self.c.proto.maxLiteral = len(DRAFT) + 2
        out = self.c.cmd('APPEND INBOX CATENATE (URL "/Drafts/;UID=1" TEXT {3+}\r\nabc)')
        self.assertIn(b" NO [TOOBIG]", out)
        self.assertIn(b"MESSAGES 1)", self.c.ok("STATUS INBOX (MESSAGES)"))


class CatenateSocketTests(TestCase):
    """imaplib over a real listener sends a CATENATE APPEND (LITERAL+ literals)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_imaplib(self) -> None:
        """The message made is what FETCH returns afterwards."""
        srv = ClientServer(self)
        srv.store.deliver([ALICE], DRAFT)

        def client() -> Any:
            m = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            try:
                m.login(ALICE, ALICE_PW)
                typ, data = m._simple_command(
                    "APPEND", "INBOX", 'CATENATE (URL "/INBOX/;UID=1/;SECTION=HEADER" TEXT'
                    ' {6+}\r\nnew.\r\n)')
                m.select("INBOX")
                return typ, m.fetch("2", "(BODY.PEEK[])")[1][0][1]
            finally:
                m.logout()

        typ, data = yield threads.deferToThread(client)
        self.assertEqual(typ, "OK")
        self.assertEqual(data, HEADER + b"new.\r\n")
