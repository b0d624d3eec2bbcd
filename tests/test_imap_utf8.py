"""UTF8=ACCEPT (RFC 6855): ENABLE, UTF-8 mailbox names in and out, APPEND's UTF8 data
item, and SEARCH CHARSET refused; sessions without it keep modified UTF-7."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.test_imap_helpers import IMAPEnv, tagged, untagged

NAME = "Bücher/Größe"
MUTF7 = b"B&APw-cher/Gr&APYA3w-e"
UTF8_MESSAGE = ("From: Jörg <jörg@example.org>\r\nTo: alice@example.org\r\n"
                "Subject: Grüße aus Köln\r\n\r\nHallo!\r\n").encode()


class UTF8AcceptTests(TestCase):
    """A session that ENABLEs UTF8=ACCEPT, beside one that does not."""

    def setUp(self) -> None:
        """Alice logged in twice; the first session enables UTF8=ACCEPT."""
        self.env = IMAPEnv(self)
        self.c = self.env.login()
        out = self.c.ok("ENABLE UTF8=ACCEPT")
        self.assertIn(b"* ENABLED UTF8=ACCEPT\r\n", out)
        self.old = self.env.login()

    def test_capabilityAndEnable(self) -> None:
        """UTF8=ACCEPT is advertised; enabling it again enables nothing new; unknown
        names are ignored; ENABLE after SELECT is BAD."""
        self.assertIn(b" UTF8=ACCEPT", untagged(self.c.ok("CAPABILITY"))[0])
        self.assertIn(b"* ENABLED\r\n", self.c.ok("ENABLE UTF8=ACCEPT X-UNKNOWN"))
        self.c.ok("SELECT INBOX")
        out = self.c.cmd("ENABLE UTF8=ACCEPT")
        self.assertIn(b" BAD ", tagged(out, self.c.lastTag))

    def test_namesBothWays(self) -> None:
        """A folder created by its UTF-8 name is listed in UTF-8 here and in modified
        UTF-7 to the other session, which reaches it by that name; STATUS, LSUB and
        SELECT take and give UTF-8."""
        self.c.ok('CREATE "' + NAME + '"')
        self.c.ok('SUBSCRIBE "' + NAME + '"')
        out = self.c.ok('LIST "" "B*"')
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "' + NAME.encode() + b'"', out)
        out = self.old.ok('LIST "" "B*"')
        self.assertIn(b'"/" "' + MUTF7 + b'"', out)
        self.assertIn(b"* STATUS \"" + NAME.encode() + b"\" (MESSAGES 0)",
                      self.c.ok('STATUS "' + NAME + '" (MESSAGES)'))
        self.assertIn(b"* STATUS \"" + MUTF7 + b"\" (MESSAGES 0)",
                      self.old.ok('STATUS "' + MUTF7.decode() + '" (MESSAGES)'))
        self.assertIn(b'"/" "' + NAME.encode() + b'"', self.c.ok('LSUB "" "*"'))
        self.c.ok('SELECT "' + NAME + '"')
        out = self.c.ok('LIST (SUBSCRIBED) "" "*" RETURN (STATUS (MESSAGES))')
        self.assertIn(b"* STATUS \"" + NAME.encode() + b"\"", out)

    def test_modifiedUTF7IsJustAName(self) -> None:
        """After ENABLE, an ampersand is an ampersand: the name is not decoded."""
        self.c.ok('CREATE "R&D"')
        self.assertIn(b'"/" "R&-D"', self.old.ok('LIST "" "R*"'))

    def test_badNames(self) -> None:
        """Invalid UTF-8 or control characters in a name: NO [CANNOT], in sync."""
        for raw in (b'CREATE "\xff\xfe"', b'CREATE "a\x01b"', b'SELECT "\xc3"'):
            out = self.c.cmd(raw)
            self.assertIn(b"NO [CANNOT]", tagged(out, self.c.lastTag), raw)
        self.c.ok("NOOP")

    def test_appendUTF8(self) -> None:
        """APPEND's UTF8 (~{n}) data item stores a message with UTF-8 headers as it is;
        without ENABLE the data item is BAD."""
        out = self.c.send(b"a1 APPEND INBOX (\\Seen) UTF8 (~{%d+}\r\n" % len(UTF8_MESSAGE)
                          + UTF8_MESSAGE + b")\r\n")
        self.assertIn(b"a1 OK [APPENDUID", out)
        self.c.ok("SELECT INBOX")
        out = self.c.ok("FETCH 1 (FLAGS BODY.PEEK[])")
        self.assertIn(UTF8_MESSAGE, out)
        self.assertIn(b"\\Seen", out)
        out = self.old.send(b"a2 APPEND INBOX UTF8 (~{%d+}\r\n" % len(UTF8_MESSAGE)
                            + UTF8_MESSAGE + b")\r\n")
        self.assertIn(b"a2 BAD ", out)
        self.old.ok("NOOP")

    def test_searchCharsetRefused(self) -> None:
        """SEARCH with CHARSET is BAD after ENABLE (RFC 6855 section 3); UTF-8 strings
        search as UTF-8 without it; the other session may still name a charset."""
        self.c.send(b"a1 APPEND INBOX UTF8 (~{%d+}\r\n" % len(UTF8_MESSAGE)
                    + UTF8_MESSAGE + b")\r\n")
        self.c.ok("SELECT INBOX")
        out = self.c.cmd("SEARCH CHARSET UTF-8 SUBJECT Köln")
        self.assertIn(b" BAD ", tagged(out, self.c.lastTag))
        self.assertIn(b"* SEARCH 1\r\n", self.c.ok('SEARCH SUBJECT "Grüße"'))
        self.old.ok("SELECT INBOX")
        self.assertIn(b"* SEARCH 1\r\n", self.old.ok('SEARCH CHARSET UTF-8 SUBJECT "Köln"'))
