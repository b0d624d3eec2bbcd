"""IMAP4rev2 (RFC 9051) beside IMAP4rev1: after C{ENABLE IMAP4rev2} the session has no
\\Recent and no UNSEEN code, SELECT includes the mailbox's LIST response and
C{OK [CLOSED]}, SEARCH answers ESEARCH, and mailbox names are UTF-8; without ENABLE
nothing changes. On the wire, and over a real socket."""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, IMAPEnv, makeMessage, tagged, untagged


class Rev2Tests(SynchronousTestCase):
    """One session with IMAP4rev2 enabled, one without."""

    def setUp(self) -> None:
        """Two messages in INBOX (the first seen), a logged-in session with rev2."""
        self.env = IMAPEnv(self)
        self.env.deliver(makeMessage("one"), makeMessage("two"))
        setup = self.env.selected()
        setup.ok("STORE 1 +FLAGS (\\Seen)")
        setup.ok("LOGOUT")
        self.c = self.env.login()
        self.assertEqual(untagged(self.c.ok("ENABLE IMAP4rev2")), [b"* ENABLED IMAP4rev2"])

    def test_capability(self) -> None:
        """IMAP4rev2 is advertised beside IMAP4rev1, before and after login."""
        greeting = self.env.connect().take()
        self.assertIn(b"IMAP4rev1 IMAP4rev2 ", greeting)
        self.assertIn(b" IMAP4rev2 ", untagged(self.c.ok("CAPABILITY"))[0])

    def test_select(self) -> None:
        """SELECT: FLAGS, EXISTS, the mailbox's LIST, no RECENT and no UNSEEN; a second
        SELECT first says OK [CLOSED]."""
        lines = untagged(self.c.ok("SELECT INBOX"))
        self.assertIn(b"* 2 EXISTS", lines)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "INBOX"', lines)
        self.assertFalse([x for x in lines if b"RECENT" in x or b"UNSEEN" in x], lines)
        lines = untagged(self.c.ok("EXAMINE INBOX"))
        self.assertEqual(lines[0], b"* OK [CLOSED] Previous mailbox closed")

    def test_noRecent(self) -> None:
        """No \\Recent in FETCH FLAGS, no RECENT with a new message's EXISTS; a rev1
        session still has both."""
        rev1 = self.env.login()
        self.c.ok("SELECT INBOX")
        self.assertNotIn(b"\\Recent", self.c.ok("FETCH 1:* FLAGS"))
        self.env.deliver(makeMessage("three"))
        self.env.avatars.registry.changed(ALICE, "INBOX")
        lines = untagged(self.c.ok("NOOP"))
        self.assertEqual(lines, [b"* 3 EXISTS"])
        self.assertNotIn(b"\\Recent", self.c.ok("FETCH 3 FLAGS"))
        out = rev1.ok("SELECT INBOX")
        self.assertIn(b"* 1 RECENT", out)
        self.assertIn(b"* OK [UNSEEN 2]", out)
        self.assertIn(b"\\Recent", rev1.ok("FETCH 3 FLAGS"))

    def test_searchAnswersEsearch(self) -> None:
        """SEARCH and UID SEARCH answer ESEARCH (ALL), none matching an empty ESEARCH;
        RETURN options still apply; CHARSET UTF-8 is allowed."""
        self.c.ok("SELECT INBOX")
        out = self.c.ok("SEARCH UNSEEN")
        self.assertEqual(untagged(out), [b'* ESEARCH (TAG "%s") ALL 2' % self.c.lastTag])
        out = self.c.ok("UID SEARCH ALL")
        self.assertEqual(untagged(out), [b'* ESEARCH (TAG "%s") UID ALL 1:2' % self.c.lastTag])
        out = self.c.ok("SEARCH SUBJECT nothing-like-this")
        self.assertEqual(untagged(out), [b'* ESEARCH (TAG "%s")' % self.c.lastTag])
        out = self.c.ok("SEARCH RETURN (COUNT) ALL")
        self.assertEqual(untagged(out), [b'* ESEARCH (TAG "%s") COUNT 2' % self.c.lastTag])
        out = self.c.ok("SEARCH CHARSET UTF-8 SUBJECT two")
        self.assertEqual(untagged(out), [b'* ESEARCH (TAG "%s") ALL 2' % self.c.lastTag])

    def test_utf8Names(self) -> None:
        """Mailbox names are UTF-8 both ways; a rev1 session sees modified UTF-7."""
        name = "Café".encode()
        self.c.ok(b'CREATE "' + name + b'"')
        self.assertIn(b'"/" "Caf\xc3\xa9"', self.c.ok('LIST "" "Caf*"'))
        self.assertIn(b'* STATUS "Caf\xc3\xa9" (MESSAGES 0)',
                      self.c.ok(b'STATUS "' + name + b'" (MESSAGES)'))
        self.assertIn(b'"/" "Caf&AOk-"', self.env.login().ok('LIST "" "Caf*"'))

    def test_list(self) -> None:
        """LIST in rev2 (RFC 9051 6.3.9): children attributes even with LIST-EXTENDED
        syntax, a name that is only a parent \\NonExistent (rev1: \\Noselect),
        \\Subscribed and a deleted subscribed name's \\NonExistent with SUBSCRIBED."""
        rev1 = self.env.login()
        self.c.ok("CREATE Top/Child")
        self.c.ok("SUBSCRIBE Gone")
        out = self.c.ok('LIST "" "Top*"')
        self.assertIn(b'* LIST (\\NonExistent \\HasChildren) "/" "Top"', out)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "Top/Child"', out)
        self.assertIn(b'* LIST (\\Noselect \\HasChildren) "/" "Top"',
                      rev1.ok('LIST "" "Top*"'))
        out = self.c.ok('LIST (SUBSCRIBED) "" "*"')
        self.assertIn(b'* LIST (\\NonExistent \\Subscribed) "/" "Gone"', out)
        out = self.c.ok('LIST "" "Top" RETURN (SUBSCRIBED)')
        self.assertIn(b'* LIST (\\NonExistent \\HasChildren) "/" "Top"', out)

    def test_removedFromRev1(self) -> None:
        """RFC 9051 appendix E: after ENABLE IMAP4rev2, LSUB and CHECK are unknown
        commands and the RECENT status item is BAD, in STATUS and in LIST's RETURN
        (STATUS); a rev1 session still has them all; the session stays in sync."""
        rev1 = self.env.login()
        cases = ['LSUB "" "*"', "STATUS INBOX (RECENT)", "STATUS INBOX (MESSAGES RECENT)",
                 'LIST "" "*" RETURN (STATUS (RECENT))']
        for command in cases:
            out = self.c.cmd(command)
            self.assertIn(b" BAD ", tagged(out, self.c.lastTag), command)
            self.assertEqual(untagged(out), [], command)
            self.assertIn(b" OK ", tagged(rev1.cmd(command), rev1.lastTag), command)
        self.assertEqual(tagged(self.c.cmd('LSUB "" "*"'), self.c.lastTag),
                         self.c.lastTag + b" BAD Unknown command")
        self.c.ok("SELECT INBOX")
        rev1.ok("SELECT INBOX")
        self.assertEqual(tagged(self.c.cmd("CHECK"), self.c.lastTag),
                         self.c.lastTag + b" BAD Unknown command")
        rev1.ok("CHECK")
        self.assertIn(b"* STATUS", self.c.ok("STATUS INBOX (MESSAGES UNSEEN SIZE DELETED)"))
        self.c.ok("NOOP")

    def test_badInput(self) -> None:
        """ENABLE in the selected state is BAD; enabling again reports nothing new; the
        session goes on."""
        self.assertEqual(untagged(self.c.ok("ENABLE IMAP4rev2")), [b"* ENABLED"])
        self.c.ok("SELECT INBOX")
        self.assertIn(b" BAD ", tagged(self.c.cmd("ENABLE IMAP4rev2"), self.c.lastTag))
        self.c.ok("NOOP")


class SocketTests(TestCase):
    """imaplib over a real listener, speaking IMAP4rev2 after ENABLE."""

    timeout = 60

    @defer.inlineCallbacks
    def test_imaplib(self) -> None:
        """ENABLE IMAP4rev2, SELECT's LIST response, SEARCH's ESEARCH."""
        srv = ClientServer(self)
        srv.store.deliver([ALICE], makeMessage("one"))

        def client() -> Any:
            m = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            try:
                m.login(ALICE, ALICE_PW)
                typ, _ = m._simple_command("ENABLE", "IMAP4rev2")
                enabled = m.untagged_responses.get("ENABLED")
                m.select("INBOX")  # (imaplib forgets earlier untagged responses here)
                listed = m.untagged_responses.get("LIST")
                recent = m.untagged_responses.get("RECENT")
                m._simple_command("SEARCH", "ALL")
                return typ, enabled, listed, m.untagged_responses.get("ESEARCH"), recent
            finally:
                m.logout()

        typ, enabled, listed, esearch, recent = yield threads.deferToThread(client)
        self.assertEqual(typ, "OK")
        self.assertEqual(enabled, [b"IMAP4rev2"])
        self.assertEqual(listed, [b'(\\HasNoChildren) "/" "INBOX"'])
        self.assertTrue(esearch[-1].endswith(b") ALL 1"), esearch)
        self.assertIsNone(recent)
