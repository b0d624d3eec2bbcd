"""Wire checks taken from Dovecot's imaptest compliance files, for behaviour those
files found wrong in pymaild (each test names its file)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imap_helpers import IMAPEnv, makeMessage


class ListAtomsTests(SynchronousTestCase):
    """imaptest's atoms: LIST with every atom character in the pattern."""

    def test_patternNotModifiedUtf7(self) -> None:
        """A LIST or LSUB pattern that is not modified UTF-7 (C{&'}) matches nothing and
        is answered OK, as Dovecot does; the session goes on."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.login()
        c.ok("CREATE Folder")
        out = c.ok("LIST \"\" !#$$&'+,-.0123456789:;<=>?@^_`|[}%*")
        self.assertNotIn(b"* LIST", out)
        out = c.ok("LSUB \"\" &'*")
        self.assertNotIn(b"* LSUB", out)
        self.assertIn(b'"Folder"', c.ok('LIST "" F%'))


class CopyTests(SynchronousTestCase):
    """imaptest's copy: what a second session sees of a COPY into its mailbox."""

    def test_copiedMessagesAreRecent(self) -> None:
        """Messages copied with flags into a folder another session has selected are
        C{\\Recent} there (EXISTS and RECENT, then FETCH FLAGS with C{\\Recent}), and
        only for that session."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        one = env.login()
        one.ok("CREATE Box2")
        one.ok("SELECT INBOX")
        one.ok("STORE 1 FLAGS (\\Seen)")
        two = env.login()
        two.ok("SELECT Box2")
        one.ok("COPY 1:2 Box2")
        out = two.ok("NOOP")
        self.assertIn(b"* 2 EXISTS", out)
        self.assertIn(b"* 2 RECENT", out)
        out = two.ok("FETCH 1:2 FLAGS")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Seen \\Recent))", out)
        self.assertIn(b"* 2 FETCH (FLAGS (\\Recent))", out)
        three = env.login()
        out = three.ok("SELECT Box2")
        self.assertIn(b"* 0 RECENT", out)

    def test_flagsBeforeANewKeyword(self) -> None:
        """A STORE that adds a keyword the folder did not have sends C{* FLAGS} (and
        PERMANENTFLAGS) naming it before the FETCH that uses it."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.login()
        c.ok("SELECT INBOX")
        out = c.ok("STORE 1 FLAGS (\\Flagged $kw1 $kw2)")
        flags = out.index(b"* FLAGS (")
        self.assertIn(b"$kw1 $kw2", out[flags:out.index(b"\r\n", flags)])
        self.assertLess(flags, out.index(b"* 1 FETCH"))
        self.assertIn(b"* OK [PERMANENTFLAGS (", out)
        out = c.ok("STORE 1 +FLAGS ($kw1)")
        self.assertNotIn(b"* FLAGS", out)


class SearchAddressTests(SynchronousTestCase):
    """imaptest's search-addresses: comments inside an address."""

    def test_commentsInsideAddress(self) -> None:
        """FROM finds C{user@domain.org} in C{<user (c)@ (c) domain.org>}, and a
        display name is found as before; a message without the address is not."""
        env = IMAPEnv(self)
        env.deliver(
            b"From: <user-from (comment)@ (comment) domain.org>\r\nSubject: 1\r\n\r\nx\r\n",
            b"From: Real From <user-from@domain.org>\r\nSubject: 2\r\n\r\nx\r\n",
            b"From: other@domain.org (user-from@domain.org)\r\nSubject: 3\r\n\r\nx\r\n",
            b"From: <someone@else.org>\r\nSubject: 4\r\n\r\nx\r\n")
        c = env.login()
        c.ok("SELECT INBOX")
        self.assertIn(b"* SEARCH 1 2 3\r\n", c.ok("SEARCH FROM user-from@domain.org"))
        self.assertIn(b"* SEARCH 2\r\n", c.ok('SEARCH FROM "real from"'))
        self.assertIn(b"* SEARCH 4\r\n", c.ok("SEARCH FROM else.org"))


class ThreadReferencesTests(SynchronousTestCase):
    """imaptest's thread: a References loop between two messages."""

    def test_laterReferencesBreakTheParent(self) -> None:
        """b refers to a then c; c refers to b: c's parent a (from b's References) is
        dropped although c cannot become b's child (a loop), so c heads b's thread
        and a stands alone, as Dovecot answers; after a is expunged c heads b."""
        env = IMAPEnv(self)
        env.deliver(
            b"Message-ID: <a@b>\r\nDate: Fri, 22 Feb 2008 17:06:23 +0000\r\n\r\nx\r\n",
            b"Message-Id: <b@b>\r\nReferences: <a@b> <c@b>\r\n"
            b"Date: Fri, 22 Feb 2008 15:06:23 +0000\r\n\r\nx\r\n",
            b"Message-Id: <c@b>\r\nReferences: <b@b>\r\n"
            b"Date: Fri, 22 Feb 2008 16:06:25 +0000\r\n\r\nx\r\n")
        c = env.login()
        c.ok("SELECT INBOX")
        self.assertIn(b"* THREAD (3 2)(1)\r\n", c.ok("THREAD REFERENCES US-ASCII ALL"))
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        self.assertIn(b"* THREAD (2 1)\r\n", c.ok("THREAD REFERENCES US-ASCII ALL"))
