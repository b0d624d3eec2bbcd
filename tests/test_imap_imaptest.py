"""Wire checks taken from Dovecot's imaptest compliance files, for behaviour those
files found wrong in pymaild (each test names its file)."""

from __future__ import annotations

from typing import Any

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

    def afterAnotherSessionsKeyword(self) -> Any:
        """A session with INBOX selected after another session of the same user gave
        message 1 the keyword C{$Fresh}, new to the folder (the second session's client
        is returned; it has not been told of the keyword)."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        one, two = env.login(), env.login()
        one.ok("SELECT INBOX")
        two.ok("SELECT INBOX")
        one.ok("STORE 1 +FLAGS ($Fresh)")
        return two

    def test_flagsBeforeAnotherSessionsKeyword(self) -> None:
        """A STORE whose resulting flags carry a keyword another session just made
        sends C{* FLAGS} naming it before the FETCH that shows it (imaptest's stress
        run: "Keyword used without being in FLAGS")."""
        two = self.afterAnotherSessionsKeyword()
        out = two.ok("STORE 1 +FLAGS (\\Seen)")
        fetch = out.index(b"* 1 FETCH (FLAGS ($Fresh \\Seen))")
        flags = out.index(b"* FLAGS (")
        self.assertLess(flags, fetch)
        self.assertIn(b"$Fresh", out[flags:out.index(b"\r\n", flags)])
        self.assertEqual(out.count(b"* FLAGS ("), 1)
        self.assertNotIn(b"* FLAGS", two.ok("NOOP"))

    def test_flagsBeforeAnotherSessionsKeywordOnFetch(self) -> None:
        """A FETCH that sets \\Seen (BODY[]) and shows the flags announces another
        session's new keyword with C{* FLAGS} before the FETCH that carries it."""
        two = self.afterAnotherSessionsKeyword()
        out = two.ok("FETCH 1 (FLAGS BODY[])")
        flags = out.index(b"* FLAGS (")
        self.assertLess(flags, out.index(b"* 1 FETCH"))
        self.assertIn(b"$Fresh", out[flags:out.index(b"\r\n", flags)])

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


class QuotedPrintableTests(SynchronousTestCase):
    """imaptest's fetch-binary-mime-qp: RFC 2045's rules for decoding."""

    BODY = (b"hello  \r\nbar=\r\n\r\nfoo\t=\r\nbar\r\nfoo\t \t= \r\n=62\r\nfoo = \t\r\n"
            b"bar\r\nfoo =\r\n=62\r\nfoo  \r\nbar=\r\n\r\nfoo_bar\r\n")
    DECODED = (b"hello\r\nbar\r\nfoo\tbar\r\nfoo\t \tb\r\nfoo bar\r\nfoo b\r\nfoo\r\nbar\r\n"
               b"foo_bar\r\n")

    def test_decode(self) -> None:
        """Trailing white space is padding, C{=} with white space after it at a line's
        end a soft break; a malformed C{=} stays."""
        from pymaild.imap.mimeheader import decodeQuotedPrintable

        self.assertEqual(decodeQuotedPrintable(self.BODY), self.DECODED)
        self.assertEqual(decodeQuotedPrintable(b"a=zz b=41\r\n"), b"a=zz bA\r\n")

    def test_binaryAndSearch(self) -> None:
        """BINARY[1] and BINARY.SIZE[1] of a quoted-printable part, and BODY search in
        it, see the decoded text."""
        env = IMAPEnv(self)
        env.deliver(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
                    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: "
                    b"quoted-printable\r\n\r\n" + self.BODY + b"--b--\r\n")
        c = env.login()
        c.ok("SELECT INBOX")
        out = c.ok("FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])")
        decoded = self.DECODED[:-2]  # the CRLF before the boundary is the boundary's
        self.assertIn(b"BINARY.SIZE[1] %d" % len(decoded), out)
        self.assertIn(b"BINARY[1] {%d}\r\n" % len(decoded) + decoded, out)
        self.assertIn(b"* SEARCH 1\r\n", c.ok('SEARCH BODY "foo bar"'))
        self.assertIn(b"* SEARCH\r\n", c.ok('SEARCH BODY "hello  "'))
