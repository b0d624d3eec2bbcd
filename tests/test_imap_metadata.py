"""METADATA (RFC 5464) on the wire: the RFC's examples, limits, bad input, and entries
kept across sessions, renames and deletes (L{pymaild.imap.metadata})."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from pymaild.store import metadata as store
from tests.test_imap_helpers import ALICE, BOB, BOB_PW, IMAPEnv, tagged, untagged


class MetadataWireTests(TestCase):
    """GETMETADATA and SETMETADATA."""

    def setUp(self) -> None:
        """Alice logged in, with limits of 100 bytes and 5 entries."""
        self.env = IMAPEnv(self, imap={"metadata_max_size": 100, "metadata_max_entries": 5})
        self.c = self.env.login()

    def test_capability(self) -> None:
        """METADATA and METADATA-SERVER after login."""
        caps = untagged(self.c.ok("CAPABILITY"))[0] + b" "
        self.assertIn(b" METADATA ", caps)
        self.assertIn(b" METADATA-SERVER ", caps)

    def test_rfcExamples(self) -> None:
        """RFC 5464 section 4.2/4.3's examples: a server comment, a mailbox comment set
        and read, several entries, removal with NIL."""
        self.c.ok('SETMETADATA "" (/shared/comment "My new comment")')
        out = self.c.ok('GETMETADATA "" /shared/comment')
        self.assertEqual(untagged(out), [b'* METADATA "" (/shared/comment "My new comment")'])
        self.c.ok("SETMETADATA INBOX (/private/comment {33+}\r\n"
                  "My new comment across\r\ntwo lines.)")
        out = self.c.ok("GETMETADATA INBOX (/shared/comment /private/comment)")
        self.assertEqual(out.split(b"\r\n")[0],
                         b'* METADATA "INBOX" (/shared/comment NIL /private/comment {33}')
        self.assertIn(b"My new comment across\r\ntwo lines.)", out)
        self.c.ok("SETMETADATA INBOX (/private/comment NIL)")
        out = self.c.ok("GETMETADATA INBOX /private/comment")
        self.assertEqual(untagged(out), [b'* METADATA "INBOX" (/private/comment NIL)'])

    def test_depthAndMaxSize(self) -> None:
        """DEPTH 1 adds children, infinity every descendant; MAXSIZE leaves long
        values out and reports the longest as LONGENTRIES."""
        self.c.ok('SETMETADATA INBOX (/private/filters/values/small "Hi"'
                  ' /private/filters/values/big "' + "x" * 60 + '"'
                  ' /private/filters "top")')
        out = self.c.ok("GETMETADATA (DEPTH 1) INBOX /private/filters")
        self.assertEqual(untagged(out), [b'* METADATA "INBOX" (/private/filters "top")'])
        out = self.c.ok("GETMETADATA (DEPTH infinity) INBOX /private/filters")
        self.assertIn(b"/private/filters/values/small", out)
        self.assertIn(b"/private/filters/values/big", out)
        out = self.c.ok("GETMETADATA (MAXSIZE 10 DEPTH infinity) INBOX /private/filters")
        self.assertNotIn(b"values/big", out)
        self.assertIn(b'/private/filters/values/small "Hi"', out)
        self.assertIn(b"OK [METADATA LONGENTRIES 60]", tagged(out, self.c.lastTag))
        out = self.c.ok("GETMETADATA (DEPTH 1) INBOX /private/filters/values")
        self.assertEqual(untagged(out), [
            b'* METADATA "INBOX" (/private/filters/values NIL'
            b' /private/filters/values/big "' + b"x" * 60 + b'"'
            b' /private/filters/values/small "Hi")'])

    def test_limits(self) -> None:
        """A value over the limit: NO [METADATA MAXSIZE 100]; a sixth entry: NO
        [METADATA TOOMANY]; a refused SETMETADATA changes nothing, not even its other
        entries; the session stays in sync."""
        out = self.c.cmd('SETMETADATA "" (/private/a "ok" /private/b "' + "y" * 101 + '")')
        self.assertIn(b"NO [METADATA MAXSIZE 100]", tagged(out, self.c.lastTag))
        self.assertIn(b"(/private/a NIL)", self.c.ok('GETMETADATA "" /private/a'))
        self.c.ok('SETMETADATA "" (/private/1 "a" /private/2 "b" /private/3 "c")')
        self.c.ok('SETMETADATA INBOX (/private/4 "d" /shared/5 "e")')
        out = self.c.cmd('SETMETADATA INBOX (/private/6 "f")')
        self.assertIn(b"NO [METADATA TOOMANY]", tagged(out, self.c.lastTag))
        self.c.ok('SETMETADATA INBOX (/private/4 "replaced")')
        self.c.ok('SETMETADATA INBOX (/private/4 NIL /private/6 "f")')
        self.assertIn(b'(/private/6 "f")', self.c.ok("GETMETADATA INBOX /private/6"))
        out = self.c.cmd("SETMETADATA INBOX (/private/big {70000}")
        self.assertIn(b" BAD ", tagged(out, self.c.lastTag))
        self.c.ok("NOOP")

    def test_binaryValue(self) -> None:
        """A literal8 value with NULs is kept and comes back as a literal8."""
        value = b"\x00\x01binary\x00"
        self.c.send(b"a1 SETMETADATA INBOX (/private/blob ~{%d+}\r\n" % len(value)
                    + value + b")\r\n")
        out = self.c.ok("GETMETADATA INBOX /private/blob")
        self.assertIn(b"/private/blob ~{%d}\r\n" % len(value) + value + b")", out)

    def test_badInput(self) -> None:
        """Bad entry names and options are BAD, a missing mailbox NO [NONEXISTENT]."""
        for bad in ('SETMETADATA INBOX (/comment "x")', 'SETMETADATA INBOX (private/x "x")',
                    'SETMETADATA INBOX (/private/a* "x")', 'SETMETADATA INBOX (/private// "x")',
                    'SETMETADATA INBOX (/private/x/ "x")', "SETMETADATA INBOX ()",
                    'SETMETADATA INBOX (/private/x)', "GETMETADATA INBOX",
                    "GETMETADATA (DEPTH 2) INBOX /private/x", "GETMETADATA (FOO 1) INBOX /x",
                    "GETMETADATA INBOX ()", "GETMETADATA INBOX /private/%"):
            out = self.c.cmd(bad)
            self.assertIn(b" BAD ", tagged(out, self.c.lastTag), bad)
        for missing in ('SETMETADATA Nope (/private/x "y")', "GETMETADATA Nope /private/x"):
            out = self.c.cmd(missing)
            self.assertIn(b"NO [NONEXISTENT]", tagged(out, self.c.lastTag), missing)
        self.c.ok("NOOP")

    def test_caseInsensitiveNames(self) -> None:
        """Entry names are case-insensitive."""
        self.c.ok('SETMETADATA INBOX (/Private/Comment "c")')
        self.assertIn(b'(/private/comment "c")',
                      self.c.ok("GETMETADATA INBOX /PRIVATE/COMMENT"))

    def test_keptAndFollowsFolders(self) -> None:
        """Entries survive the session, follow RENAME (children too), go with DELETE
        (a new folder of that name starts empty), and are per user."""
        self.c.ok("CREATE Work")
        self.c.ok("CREATE Work/Sub")
        self.c.ok('SETMETADATA Work (/private/comment "work")')
        self.c.ok('SETMETADATA Work/Sub (/private/comment "sub")')
        self.c.ok("LOGOUT")
        c = self.env.login()
        c.ok("RENAME Work Job")
        self.assertIn(b'(/private/comment "work")', c.ok("GETMETADATA Job /private/comment"))
        self.assertIn(b'(/private/comment "sub")',
                      c.ok("GETMETADATA Job/Sub /private/comment"))
        c.ok("DELETE Job/Sub")
        c.ok("CREATE Job/Sub")
        self.assertIn(b"(/private/comment NIL)", c.ok("GETMETADATA Job/Sub /private/comment"))
        root = self.env.store.account(ALICE).root
        self.assertEqual(store.read(root), {"Job": {"/private/comment": b"work"}})
        bob = self.env.login(BOB, BOB_PW)
        bob.ok("CREATE Job")
        self.assertIn(b"(/private/comment NIL)", bob.ok("GETMETADATA Job /private/comment"))
        self.assertEqual(store.read(self.env.store.account(BOB).root), {})
