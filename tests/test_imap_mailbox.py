"""IMAP mailbox commands at the wire: SELECT/EXAMINE, STORE, EXPUNGE, CLOSE, UNSELECT,
APPEND, COPY/MOVE (UIDPLUS codes), STATUS, LIST/LSUB, CREATE/DELETE/RENAME, (UN)SUBSCRIBE.

Real MaildirStore under a temp dir, InlineRunner, StringTransport.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imap_helpers import IMAPEnv, makeMessage, tagged, untagged


class SelectTests(SynchronousTestCase):
    """SELECT and EXAMINE responses."""

    def test_selectResponses(self) -> None:
        """SELECT sends FLAGS, PERMANENTFLAGS with \\*, EXISTS, RECENT, UNSEEN,
        UIDVALIDITY, UIDNEXT and READ-WRITE."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        c = env.login()
        out = c.cmd("SELECT INBOX")
        self.assertIn(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n", out)
        self.assertRegex(out, rb"\* OK \[PERMANENTFLAGS \([^)]*\\\*\)\]")
        self.assertIn(b"* 2 EXISTS\r\n", out)
        self.assertIn(b"* 2 RECENT\r\n", out)
        self.assertIn(b"* OK [UNSEEN 1]", out)
        validity = env.folder().scan().uidvalidity
        self.assertIn(b"* OK [UIDVALIDITY %d]" % validity, out)
        self.assertIn(b"* OK [UIDNEXT 3]", out)
        self.assertIn(b"OK [READ-WRITE]", tagged(out, c.lastTag))

    def test_recentClaimedOnce(self) -> None:
        """Only the first session to select sees the messages as \\Recent."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c1 = env.login()
        self.assertIn(b"* 1 RECENT", c1.cmd("SELECT INBOX"))
        c2 = env.login()
        self.assertIn(b"* 0 RECENT", c2.cmd("SELECT INBOX"))

    def test_examineReadOnly(self) -> None:
        """EXAMINE is READ-ONLY, shows no permanent flags, and STORE is refused."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.login()
        out = c.cmd("EXAMINE INBOX")
        self.assertIn(b"[PERMANENTFLAGS ()]", out)
        self.assertIn(b"OK [READ-ONLY]", tagged(out, c.lastTag))
        self.assertIn(b"NO [READ-ONLY]", c.cmd("STORE 1 +FLAGS (\\Seen)"))
        out = c.cmd("FETCH 1 BODY[TEXT]")
        self.assertNotIn(b"\\Seen", out)

    def test_selectMissing(self) -> None:
        """SELECT of a missing mailbox is NO [NONEXISTENT] and leaves no mailbox selected."""
        env = IMAPEnv(self)
        c = env.selected()
        self.assertIn(b"NO [NONEXISTENT]", c.cmd("SELECT Nope"))
        self.assertEqual(c.proto.state, "auth")
        self.assertIn(b" BAD ", c.cmd("FETCH 1 FLAGS"))

    def test_selectInboxCaseInsensitive(self) -> None:
        """inbox, Inbox and INBOX are the same mailbox."""
        env = IMAPEnv(self)
        c = env.login()
        c.ok("SELECT inbox")
        c.ok('EXAMINE "Inbox"')

    def test_uidsPersist(self) -> None:
        """UIDs and UIDVALIDITY are the same in a later session."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        c = env.selected()
        first = c.cmd("FETCH 1:* UID")
        validity = re.search(rb"UIDVALIDITY (\d+)", c.cmd("SELECT INBOX")).group(1)
        c.lose()
        c2 = env.selected()
        self.assertEqual(c2.cmd("FETCH 1:* UID").replace(b"t2", b"t2"), first.replace(
            b"t2", b"t2"))
        self.assertIn(b"UIDVALIDITY " + validity, c2.cmd("SELECT INBOX"))


class StoreExpungeTests(SynchronousTestCase):
    """STORE, EXPUNGE, UID EXPUNGE, CLOSE, UNSELECT."""

    def setUp(self) -> None:
        """A store with messages and a session on it."""
        self.env = IMAPEnv(self)
        self.env.deliver(*(makeMessage(f"m{i}") for i in range(1, 6)))
        self.c = self.env.selected()

    def test_storeAddRemoveReplace(self) -> None:
        """+FLAGS, -FLAGS and FLAGS answer the new flags, persisted on disk."""
        c = self.c
        out = c.cmd("STORE 1 +FLAGS (\\Flagged \\Seen)")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))", out)
        out = c.cmd("STORE 1 -FLAGS (\\Seen)")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Recent))", out)
        out = c.cmd("STORE 1 FLAGS (\\Answered)")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Answered \\Recent))", out)
        state = self.env.folder().scan()
        self.assertEqual(state.messages[0].flags, frozenset({"\\Answered"}))

    def test_storeSilentAndUid(self) -> None:
        """.SILENT sends no FETCH; UID STORE includes the UID."""
        c = self.c
        out = c.cmd("STORE 1:2 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(untagged(out), [])
        out = c.cmd("UID STORE 3 +FLAGS (\\Seen)")
        self.assertIn(b"* 3 FETCH (UID 3 FLAGS (\\Seen \\Recent))", out)

    def test_storeKeywords(self) -> None:
        """Keywords are stored, announced in FLAGS/PERMANENTFLAGS and survive a new session."""
        c = self.c
        out = c.cmd("STORE 2 +FLAGS ($Important work)")
        self.assertIn(b"$Important", out)
        self.assertIn(b"* FLAGS (", out)
        c2 = self.env.login()
        out = c2.cmd("SELECT INBOX")
        self.assertIn(b"$Important", out)
        self.assertIn(b"* 2 FETCH (FLAGS ($Important work))", c2.cmd("FETCH 2 FLAGS"))

    def test_storeUnknownSystemFlag(self) -> None:
        """An unknown system flag is BAD; \\Recent is ignored."""
        self.assertIn(b" BAD ", self.c.cmd("STORE 1 +FLAGS (\\Bogus)"))
        self.assertIn(b" OK ", self.c.cmd("STORE 1 +FLAGS (\\Recent)"))

    def test_expunge(self) -> None:
        """EXPUNGE removes \\Deleted messages with correct sequence numbers."""
        c = self.c
        c.ok("STORE 2,4 +FLAGS.SILENT (\\Deleted)")
        out = c.cmd("EXPUNGE")
        self.assertEqual(untagged(out), [b"* 4 EXPUNGE", b"* 2 EXPUNGE"])
        self.assertEqual(len(self.env.folder().scan().messages), 3)
        out = c.cmd("FETCH 1:* UID")
        self.assertEqual(re.findall(rb"UID (\d+)", out), [b"1", b"3", b"5"])

    def test_uidExpunge(self) -> None:
        """UID EXPUNGE only removes the \\Deleted messages in its set."""
        c = self.c
        c.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        out = c.cmd("UID EXPUNGE 2:3")
        self.assertEqual(untagged(out), [b"* 3 EXPUNGE", b"* 2 EXPUNGE"])
        self.assertEqual([m.uid for m in self.env.folder().scan().messages], [1, 4, 5])

    def test_closeExpungesSilently(self) -> None:
        """CLOSE expunges without EXPUNGE responses and leaves the selected state."""
        c = self.c
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        out = c.cmd("CLOSE")
        self.assertEqual(untagged(out), [])
        self.assertEqual(c.proto.state, "auth")
        self.assertEqual(len(self.env.folder().scan().messages), 4)

    def test_unselectKeepsDeleted(self) -> None:
        """UNSELECT leaves \\Deleted messages in place."""
        c = self.c
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.ok("UNSELECT")
        self.assertEqual(c.proto.state, "auth")
        self.assertEqual(len(self.env.folder().scan().messages), 5)

    def test_hugeSequenceSet(self) -> None:
        """FETCH 1:4294967295 names numbers past EXISTS (5): BAD, as Dovecot answers, with
        no expansion and no FETCH response; 1:* and the UID set 1:4294967295 (clipped)
        answer all five; 0 and 4294967296 are BAD."""
        c = self.c
        out = c.cmd("FETCH 1:4294967295 UID")
        self.assertEqual(out, c.lastTag + b" BAD Error in IMAP command FETCH: Invalid "
                                          b"messageset\r\n")
        out = c.cmd("FETCH 1:* UID")
        self.assertEqual(len(re.findall(rb"UID \d+", out)), 5)
        out = c.cmd("UID FETCH 1:4294967295 FLAGS")
        self.assertEqual(len(re.findall(rb"FLAGS", out)), 5)
        self.assertIn(b" BAD ", c.cmd("FETCH 0 UID"))
        self.assertIn(b" BAD ", c.cmd("FETCH 4294967296 UID"))

    def test_uidRangeStarIncludesLast(self) -> None:
        """UID n:* with n above the last UID still returns the last message."""
        out = self.c.cmd("UID FETCH 100:* FLAGS")
        self.assertIn(b"UID 5", out)


class AppendTests(SynchronousTestCase):
    """APPEND with and without flags and date, limits, TRYCREATE, EXISTS."""

    def test_appendWithFlagsAndDate(self) -> None:
        """APPEND stores the message with its flags and internal date; APPENDUID."""
        env = IMAPEnv(self)
        c = env.login()
        msg = makeMessage("appended")
        out = c.cmd(b'APPEND Drafts (\\Draft \\Seen) "05-Jan-2024 10:11:12 +0100" {%d}'
                    % len(msg))
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = c.send(msg + b"\r\n")
        folder = env.folder("Drafts")
        state = folder.scan()
        self.assertIn(b"OK [APPENDUID %d 1]" % state.uidvalidity, tagged(out, c.lastTag))
        self.assertEqual(state.messages[0].flags, frozenset({"\\Draft", "\\Seen"}))
        self.assertEqual(int(folder.internalDate(state.messages[0])), 1704445872)
        with folder.open(state.messages[0]) as f:
            self.assertEqual(f.read(), msg)

    def test_appendWithoutFlags(self) -> None:
        """APPEND without a flag list or date works (Twisted crashed)."""
        env = IMAPEnv(self)
        c = env.login()
        c.cmd(b"APPEND INBOX {5}")
        out = c.send(b"hello\r\n")
        self.assertIn(b"OK [APPENDUID", out)

    def test_appendLiteralPlus(self) -> None:
        """A non-synchronising literal needs no continuation."""
        env = IMAPEnv(self)
        c = env.login()
        out = c.send(b"a APPEND INBOX {5+}\r\nhello\r\n")
        self.assertNotIn(b"+ Ready", out)
        self.assertIn(b"a OK [APPENDUID", out)

    def test_appendToSelectedSendsExists(self) -> None:
        """APPEND to the selected mailbox reports EXISTS before the tagged OK."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.selected()
        c.cmd(b"APPEND INBOX {5}")
        out = c.send(b"hello\r\n")
        self.assertLess(out.index(b"* 2 EXISTS"), out.index(c.lastTag + b" OK"))

    def test_appendMissingMailbox(self) -> None:
        """APPEND to a missing mailbox is NO [TRYCREATE]."""
        env = IMAPEnv(self)
        c = env.login()
        c.cmd(b"APPEND Nope {5}")
        self.assertIn(b"NO [TRYCREATE]", c.send(b"hello\r\n"))

    def test_appendTooBig(self) -> None:
        """A literal above imap.max_literal gets NO [TOOBIG] before any continuation."""
        env = IMAPEnv(self, maxLiteral=1000)
        c = env.login()
        out = c.cmd(b"APPEND INBOX {1001}")
        self.assertIn(b"NO [TOOBIG]", out)
        self.assertNotIn(b"+ ", out)
        self.assertIn(b" OK ", c.cmd("NOOP"))

    def test_appendTooBigNonSync(self) -> None:
        """An oversized LITERAL+ literal cannot be resynchronised: NO, BYE, close."""
        env = IMAPEnv(self, maxLiteral=1000)
        c = env.login()
        out = c.send(b"a APPEND INBOX {5000+}\r\n" + b"x" * 100)
        self.assertIn(b"a NO [TOOBIG]", out)
        self.assertIn(b"* BYE", out)
        self.assertTrue(c.transport.disconnecting)

    def test_appendLargeSpooled(self) -> None:
        """A large literal is spooled to disk and stored intact."""
        env = IMAPEnv(self)
        c = env.login()
        body = (b"0123456789abcdef" * 64 + b"\r\n") * 700
        msg = makeMessage("big", body)
        c.cmd(b"APPEND INBOX {%d}" % len(msg))
        for i in range(0, len(msg), 30000):
            c.proto.dataReceived(msg[i : i + 30000])
        out = c.send(b"\r\n")
        self.assertIn(b"OK [APPENDUID", out)
        folder = env.folder()
        info = folder.scan().messages[0]
        with folder.open(info) as f:
            self.assertEqual(f.read(), msg)
        tmp = os.path.join(env.store.account("alice@example.org").root, "tmp")
        self.assertEqual([n for n in os.listdir(tmp) if n.startswith("append.")], [])

    def test_appendBadFlag(self) -> None:
        """An unknown system flag in APPEND is BAD."""
        env = IMAPEnv(self)
        c = env.login()
        c.cmd(b"APPEND INBOX (\\Bogus) {5}")
        self.assertIn(b" BAD ", c.send(b"hello\r\n"))

    def test_appendEmpty(self) -> None:
        """An empty message is refused with NO."""
        env = IMAPEnv(self)
        c = env.login()
        c.cmd(b"APPEND INBOX {0}")
        self.assertIn(b" NO ", c.send(b"\r\n"))


class CopyMoveTests(SynchronousTestCase):
    """COPY and MOVE with COPYUID."""

    def setUp(self) -> None:
        """A store with messages and a session on it."""
        self.env = IMAPEnv(self)
        self.env.deliver(*(makeMessage(f"m{i}") for i in range(1, 4)))
        self.c = self.env.selected()

    def test_copy(self) -> None:
        """COPY answers COPYUID and the copies keep their flags."""
        c = self.c
        c.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
        out = c.cmd("COPY 2:3 Archive")
        validity = self.env.folder("Archive").scan().uidvalidity
        self.assertIn(b"OK [COPYUID %d 2:3 1:2]" % validity, tagged(out, c.lastTag))
        msgs = self.env.folder("Archive").scan().messages
        self.assertEqual([m.flags for m in msgs], [frozenset({"\\Flagged"}), frozenset()])
        self.assertEqual(len(self.env.folder().scan().messages), 3)

    def test_copyMissing(self) -> None:
        """COPY to a missing mailbox is NO [TRYCREATE]."""
        self.assertIn(b"NO [TRYCREATE]", self.c.cmd("COPY 1 Nope"))

    def test_move(self) -> None:
        """MOVE sends OK [COPYUID] untagged, then EXPUNGEs, and removes the sources."""
        c = self.c
        out = c.cmd("MOVE 1,3 Trash")
        lines = untagged(out)
        self.assertTrue(lines[0].startswith(b"* OK [COPYUID "))
        self.assertEqual(lines[1:], [b"* 3 EXPUNGE", b"* 1 EXPUNGE"])
        self.assertEqual([m.uid for m in self.env.folder().scan().messages], [2])
        self.assertEqual(len(self.env.folder("Trash").scan().messages), 2)

    def test_uidMove(self) -> None:
        """UID MOVE moves by UID."""
        out = self.c.cmd("UID MOVE 2 Junk")
        self.assertIn(b"* 2 EXPUNGE", out)
        self.assertEqual([m.uid for m in self.env.folder().scan().messages], [1, 3])


class FolderCommandTests(SynchronousTestCase):
    """LIST, LSUB, CREATE, DELETE, RENAME, SUBSCRIBE, STATUS, NAMESPACE."""

    def setUp(self) -> None:
        """A store with messages and a session on it."""
        self.env = IMAPEnv(self)
        self.c = self.env.login()

    def test_listAttributes(self) -> None:
        """LIST shows children and SPECIAL-USE attributes, never message flags."""
        c = self.c
        c.ok("CREATE Work/Projects")
        out = c.cmd('LIST "" "*"')
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "INBOX"', out)
        self.assertIn(b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"', out)
        self.assertIn(b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"', out)
        self.assertIn(b'"/" "Work/Projects"', out)
        self.assertRegex(out, rb'\* LIST \([^)]*\\HasChildren[^)]*\) "/" "Work"')
        self.assertNotIn(b"\\Seen", out)

    def test_listPercent(self) -> None:
        """% does not cross the hierarchy delimiter."""
        c = self.c
        c.ok("CREATE A/B/C")
        out = c.cmd('LIST "" "A/%"')
        self.assertIn(b'"/" "A/B"', out)
        self.assertNotIn(b'"A/B/C"', out)

    def test_listEmptyPattern(self) -> None:
        """LIST "" "" returns the delimiter."""
        self.assertIn(b'* LIST (\\Noselect) "/" ""', self.c.cmd('LIST "" ""'))

    def test_listSpecialUseSelection(self) -> None:
        """LIST (SPECIAL-USE) "" "*" returns only special folders."""
        out = self.c.cmd('LIST (SPECIAL-USE) "" "*"')
        self.assertNotIn(b'"INBOX"', out)
        self.assertIn(b'"Drafts"', out)

    def test_createDeleteRename(self) -> None:
        """CREATE, RENAME (children move) and DELETE."""
        c = self.c
        c.ok("CREATE Old")
        c.ok("CREATE Old/Child")
        self.assertIn(b"NO [ALREADYEXISTS]", c.cmd("CREATE Old"))
        c.ok("RENAME Old New")
        out = c.cmd('LIST "" "*"')
        self.assertIn(b'"New/Child"', out)
        self.assertNotIn(b'"Old"', out)
        c.ok("DELETE New/Child")
        self.assertIn(b"NO [NONEXISTENT]", c.cmd("DELETE Nope"))
        self.assertIn(b" NO ", c.cmd("DELETE INBOX"))

    def test_invalidNames(self) -> None:
        """Names that would escape the tree or clash with Maildir++ get NO with a reason."""
        c = self.c
        for name in ('"a.b"', '"../x"', '"/abs"', '"a//b"'):
            out = c.cmd(f"CREATE {name}")
            self.assertIn(b"NO [CANNOT]", out, name)

    def test_unicodeName(self) -> None:
        """Modified UTF-7 names round-trip."""
        c = self.c
        c.ok('CREATE "Entw&APw-rfe"')
        self.assertIn(b'"Entw&APw-rfe"', c.cmd('LIST "" "*"'))
        c.ok('SELECT "Entw&APw-rfe"')

    def test_subscribe(self) -> None:
        """SUBSCRIBE/UNSUBSCRIBE change LSUB."""
        c = self.c
        c.ok("CREATE Lists")
        c.ok("SUBSCRIBE Lists")
        self.assertIn(b'"Lists"', c.cmd('LSUB "" "*"'))
        c.ok("UNSUBSCRIBE Lists")
        self.assertNotIn(b'"Lists"', c.cmd('LSUB "" "*"'))

    def test_status(self) -> None:
        """STATUS counts messages, unseen, UIDNEXT and UIDVALIDITY."""
        self.env.deliver(makeMessage("a"), makeMessage("b"))
        out = self.c.cmd("STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY RECENT)")
        v = self.env.folder().scan().uidvalidity
        self.assertIn(
            b'* STATUS "INBOX" (MESSAGES 2 UNSEEN 2 UIDNEXT 3 UIDVALIDITY %d RECENT 2)' % v, out
        )
        self.assertIn(b"NO [NONEXISTENT]", self.c.cmd("STATUS Nope (MESSAGES)"))
        self.assertIn(b" BAD ", self.c.cmd("STATUS INBOX (BOGUS)"))

    def test_namespaceEnableId(self) -> None:
        """NAMESPACE, ENABLE and ID answer per their RFCs."""
        c = self.c
        self.assertIn(b'* NAMESPACE (("" "/")) NIL NIL', c.cmd("NAMESPACE"))
        self.assertIn(b"* ENABLED CONDSTORE\r\n", c.cmd("ENABLE CONDSTORE"))
        self.assertIn(b"* ENABLED\r\n", c.cmd("ENABLE CONDSTORE X-UNKNOWN"))
        self.assertIn(b'* ID ("name" "pymaild"', c.cmd('ID ("name" "test")'))
        self.assertIn(b"* ID", c.cmd("ID NIL"))


class ReadHeaderTests(SynchronousTestCase):
    """The root header block read from a message file's first bytes."""

    def setUp(self) -> None:
        """A mail environment for Alice."""
        self.env = IMAPEnv(self)
        self.addCleanup(self.env.cleanup)
        self.folder = self.env.folder()

    def headerOf(self, raw: bytes) -> bytes:
        """Deliver C{raw} and read its header block back."""
        from pymaild.imap.mailbox import readHeader

        self.env.deliver(raw)
        [info] = self.folder.scan().messages
        return readHeader(self.folder, info)

    def test_shortHeader(self) -> None:
        """A header within the first read ends with its blank line, body excluded."""
        self.assertEqual(self.headerOf(b"Subject: a\r\n\r\nbody\r\n"), b"Subject: a\r\n\r\n")

    def test_longHeader(self) -> None:
        """A header far beyond the first 4 KiB read is read whole, up to the blank line."""
        head = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 70) for i in range(300))
        self.assertGreater(len(head), 20000)
        self.assertEqual(self.headerOf(head + b"\r\nbody\r\n"), head + b"\r\n")

    def test_blankLineAtReadEdge(self) -> None:
        """A blank line that straddles the first read's edge is still found."""
        filler = b"X: " + b"z" * (4096 - 3 - 3) + b"\r\n"
        self.assertEqual(len(filler), 4096 - 1)
        self.assertEqual(self.headerOf(filler + b"\r\nbody\r\n"), filler + b"\r\n")

    def test_noBlankLine(self) -> None:
        """A message without a blank line is all header."""
        raw = b"Subject: only\r\n" * 400
        self.assertEqual(self.headerOf(raw), raw)


class SnapshotKeptTests(SynchronousTestCase):
    """A folder's message snapshot outlives its last view for a while."""

    def test_reselectAfterLogoutSharesSnapshot(self) -> None:
        """A client that logs out and selects the folder again on a new connection gets
        the very snapshot the first session had (not one rebuilt over every message)."""
        import gc
        import weakref

        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        first = env.selected()
        ref = weakref.ref(first.proto.mbox._snap)
        first.ok("LOGOUT")
        first.lose()
        del first
        env.clients.clear()
        gc.collect()
        again = env.selected()
        self.assertIsNotNone(ref())
        self.assertIs(again.proto.mbox._snap, ref())
