"""CONDSTORE and QRESYNC (RFC 7162) at the wire level: the RFC's examples, bad input
(the RFC's answer, then a command proving the session is still in sync) and changes
made by other sessions and other processes."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imap_helpers import IMAPEnv, makeMessage, tagged


def modseqs(out: bytes) -> dict[int, int]:
    """UID -> MODSEQ of the FETCH responses in C{out}."""
    found = {}
    for line in out.split(b"\r\n"):
        u = re.search(rb"UID (\d+)", line)
        m = re.search(rb"MODSEQ \((\d+)\)", line)
        if line.startswith(b"* ") and b" FETCH " in line and u and m:
            found[int(u.group(1))] = int(m.group(1))
    return found


def highest(out: bytes) -> int:
    """The HIGHESTMODSEQ response code's value in C{out}."""
    m = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", out)
    assert m, out
    return int(m.group(1))


def isBad(c: object, out: bytes) -> bool:
    """Whether the last command was answered BAD."""
    tag = c.lastTag  # type: ignore[attr-defined]
    return tagged(out, tag).startswith(tag + b" BAD")


class CondstoreTests(SynchronousTestCase):
    """CONDSTORE: MODSEQ, HIGHESTMODSEQ, CHANGEDSINCE, UNCHANGEDSINCE, SEARCH MODSEQ."""

    def setUp(self) -> None:
        """Four messages in Alice's INBOX."""
        self.env = IMAPEnv(self)
        self.env.deliver(*(makeMessage(s) for s in "abcd"))

    def test_capabilityAndSelect(self) -> None:
        """CONDSTORE and QRESYNC are advertised; SELECT (CONDSTORE) answers with
        HIGHESTMODSEQ, as does a plain SELECT; STATUS gives the same number."""
        c = self.env.login()
        caps = c.cmd("CAPABILITY")
        self.assertIn(b" CONDSTORE", caps)
        self.assertIn(b" QRESYNC", caps)
        h = highest(c.ok("SELECT INBOX (CONDSTORE)"))
        self.assertGreater(h, 0)
        self.assertEqual(highest(c.ok("EXAMINE INBOX")), h)
        out = c.ok("STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
        self.assertIn(b'* STATUS "INBOX" (HIGHESTMODSEQ %d MESSAGES 4)' % h, out)

    def test_fetchModseqAndStore(self) -> None:
        """RFC 7162 3.1.4: FETCH MODSEQ; a STORE raises the message's MODSEQ above the old
        HIGHESTMODSEQ and reports it; HIGHESTMODSEQ follows."""
        c = self.env.login()
        h0 = highest(c.ok("SELECT INBOX"))
        out = c.ok("FETCH 1:* (UID MODSEQ)")
        self.assertEqual(set(modseqs(out).values()), {h0})
        out = c.ok("STORE 2 +FLAGS (\\Seen)")
        self.assertRegex(out, rb"\* 2 FETCH \(FLAGS \(\\Seen[^)]*\) MODSEQ \(\d+\)\)")
        m2 = int(re.search(rb"MODSEQ \((\d+)\)", out).group(1))
        self.assertGreater(m2, h0)
        out = c.ok(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % h0)
        self.assertEqual(modseqs(out), {2: m2})
        self.assertEqual(out.count(b" FETCH "), 1)
        self.assertIn(b"MODSEQ (%d)" % m2, out)
        self.assertEqual(highest(c.ok("SELECT INBOX")), m2)
        # Modifiers after attribute lists with nested parentheses and brackets.
        out = c.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] FLAGS) (CHANGEDSINCE 1)")
        self.assertRegex(out, rb"\* 1 FETCH \(BODY\[HEADER\.FIELDS \(SUBJECT\)\] \{\d+\}")
        self.assertIn(b"MODSEQ (%d)" % h0, out)
        out = c.ok(b"UID FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)] (CHANGEDSINCE %d)" % h0)
        self.assertIn(b"MODSEQ (%d)" % m2, out)
        self.assertIn(b"BODY[HEADER.FIELDS (SUBJECT)]", out)

    def test_unchangedSince(self) -> None:
        """RFC 7162 3.1.3 example: a STORE UNCHANGEDSINCE older than a message's MODSEQ
        leaves that message alone and names it in [MODIFIED]; the others are stored."""
        c = self.env.login()
        h0 = highest(c.ok("SELECT INBOX (CONDSTORE)"))
        c.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
        out = c.cmd(b"STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Deleted)" % h0)
        self.assertIn(c.lastTag + b" OK [MODIFIED 1]", out)
        self.assertNotIn(b"* 1 FETCH", out)
        self.assertRegex(out, rb"\* 2 FETCH \(MODSEQ \(\d+\)\)")  # .SILENT: MODSEQ only
        flags = c.ok("FETCH 1:3 (FLAGS)")
        self.assertNotIn(b"\\Deleted", flags.split(b"\r\n")[0])
        self.assertEqual(flags.count(b"\\Deleted"), 2)
        out = c.cmd("UID STORE 1:4 (UNCHANGEDSINCE 0) FLAGS (\\Seen)")
        self.assertIn(c.lastTag + b" OK [MODIFIED 1:4]", out)

    def test_searchModseq(self) -> None:
        """RFC 7162 3.1.5: SEARCH MODSEQ n finds the messages changed at or after n and
        ends with the highest MODSEQ of them; the entry-name form parses; ESEARCH too."""
        c = self.env.login()
        h0 = highest(c.ok("SELECT INBOX"))
        c.ok("STORE 3 +FLAGS (\\Answered)")
        out = c.ok(b"SEARCH MODSEQ %d" % (h0 + 1))
        m = re.search(rb"\* SEARCH 3 \(MODSEQ (\d+)\)", out)
        self.assertIsNotNone(m, out)
        out = c.ok(b'SEARCH MODSEQ "/flags/\\\\draft" all %d' % (h0 + 1))
        self.assertIn(b"* SEARCH 3 (MODSEQ", out)
        out = c.ok(b"SEARCH RETURN (ALL) MODSEQ %d" % (h0 + 1))
        self.assertIn(b" ALL 3 MODSEQ " + m.group(1), out)
        self.assertIn(b"* SEARCH\r\n", c.ok(b"SEARCH MODSEQ %d" % (int(m.group(1)) + 1)))

    def test_enabledByFetchTellsHighest(self) -> None:
        """RFC 7162 3.1: CONDSTORE switched on by FETCH MODSEQ with a mailbox selected
        sends C{* OK [HIGHESTMODSEQ]} (imaptest's esearch-condstore)."""
        c = self.env.selected()
        out = c.ok("FETCH 1 MODSEQ")
        self.assertIn(b"* OK [HIGHESTMODSEQ %d]" % modseqs(out.replace(
            b"FETCH (", b"FETCH (UID 1 "))[1], out)
        self.assertNotIn(b"HIGHESTMODSEQ", c.ok("FETCH 1 MODSEQ"))  # only once

    def test_esearchMinMaxModseq(self) -> None:
        """With RETURN (MIN) or (MAX) alone, MODSEQ is that message's; with ALL, the
        highest of all matches."""
        c = self.env.login()
        c.ok("SELECT INBOX (CONDSTORE)")
        c.ok("STORE 1 +FLAGS (\\Seen)")
        c.ok("STORE 3 +FLAGS (\\Seen)")
        c.ok("STORE 2 +FLAGS (\\Seen)")
        ms = modseqs(c.ok("FETCH 1:3 (UID MODSEQ)"))
        out = c.ok("SEARCH RETURN (MIN) 1:3 MODSEQ 1")
        self.assertIn(b" MIN 1 MODSEQ %d" % ms[1], out)
        out = c.ok("SEARCH RETURN (MAX) 1:3 MODSEQ 1")
        self.assertIn(b" MAX 3 MODSEQ %d" % ms[3], out)
        out = c.ok("SEARCH RETURN (ALL) 1:3 MODSEQ 1")
        self.assertIn(b" ALL 1:3 MODSEQ %d" % max(ms.values()), out)

    def test_twoSessionsKeepEachOthersFlags(self) -> None:
        """+FLAGS in one session and -FLAGS in another change only what each names
        (imaptest's store: "two sessions don't overwrite each others' changes")."""
        a = self.env.selected()
        b = self.env.selected()
        a.ok("STORE 1 FLAGS (\\Seen)")
        b.ok("NOOP")
        a.ok("STORE 1 +FLAGS (\\Answered)")
        b.ok("STORE 1 -FLAGS (\\Seen)")
        for c in (a, b):
            c.ok("NOOP")
            out = c.ok("FETCH 1 FLAGS")
            self.assertRegex(out, rb"^\* 1 FETCH \(FLAGS \(\\Answered( \\Recent)?\)\)\r\n")

    def test_badInput(self) -> None:
        """CHANGEDSINCE 0 or 2^63, unknown FETCH/STORE modifiers, unknown select
        parameters and QRESYNC without ENABLE are BAD; the session stays in sync."""
        c = self.env.login()
        c.ok("SELECT INBOX")
        for bad in ("FETCH 1:* (FLAGS) (CHANGEDSINCE 0)",
                    "FETCH 1:* (FLAGS) (CHANGEDSINCE 9223372036854775808)",
                    "FETCH 1:* (FLAGS) (CHANGEDSINCE 99999999999999999999999)",
                    "FETCH 1:* (FLAGS) (CHANGEDSINCE)",
                    "FETCH 1:* (FLAGS) (BOGUS 1)",
                    "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",
                    "STORE 1 (UNCHANGEDSINCE 9223372036854775808) +FLAGS (\\Seen)",
                    "STORE 1 (BOGUS 1) +FLAGS (\\Seen)",
                    "SEARCH MODSEQ 9223372036854775808",
                    "SELECT INBOX (BOGUS)",
                    "SELECT INBOX (QRESYNC (1 2))",
                    "SELECT INBOX ()",
                    "SELECT INBOX (CONDSTORE CONDSTORE)"):
            out = c.cmd(bad)
            self.assertTrue(isBad(c, out), (bad, out))
            self.assertNotIn(b" FETCH (", out, bad)
            self.assertIn(b" OK ", c.cmd("NOOP"))
        out = c.ok("FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775807)")
        self.assertNotIn(b" FETCH (", out)

    def test_otherSessionAndProcess(self) -> None:
        """A flag change by another session is reported to a CONDSTORE session with its
        MODSEQ; one made on disk by another program (renaming the file, as Dovecot
        does) moves HIGHESTMODSEQ forward and shows in CHANGEDSINCE."""
        a = self.env.login()
        h0 = highest(a.ok("SELECT INBOX (CONDSTORE)"))
        b = self.env.selected()
        b.ok("STORE 4 +FLAGS (\\Flagged)")
        out = a.ok("NOOP")
        self.assertRegex(out, rb"\* 4 FETCH \(UID 4 FLAGS \(\\Flagged[^)]*\) MODSEQ \(\d+\)\)")
        h1 = modseqs(out)[4]
        self.assertGreater(h1, h0)
        folder = self.env.folder()
        info = folder.scan().messages[0]
        cur = os.path.join(folder.path, "cur")
        name = next(n for n in os.listdir(cur) if n.startswith(info.key))
        os.rename(os.path.join(cur, name), os.path.join(cur, info.key + ":2,RS"))
        out = a.ok(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % h1)
        self.assertEqual(list(modseqs(out)), [1])
        self.assertGreater(modseqs(out)[1], h1)
        self.assertIn(b"\\Answered", out)


class QresyncTests(SynchronousTestCase):
    """QRESYNC: ENABLE, SELECT (QRESYNC ...), VANISHED, VANISHED (EARLIER)."""

    def setUp(self) -> None:
        """Six messages in Alice's INBOX."""
        self.env = IMAPEnv(self)
        self.env.deliver(*(makeMessage(s) for s in "abcdef"))

    def _qresync(self) -> object:
        c = self.env.login()
        self.assertIn(b"* ENABLED QRESYNC\r\n", c.ok("ENABLE QRESYNC"))
        return c

    def test_expungeIsVanished(self) -> None:
        """Once QRESYNC is enabled, EXPUNGE (and UID EXPUNGE) answer VANISHED and end
        with the new HIGHESTMODSEQ (RFC 7162 3.2.10), and
        another session's expunge comes as VANISHED on NOOP and in IDLE; [CLOSED] on
        reselect."""
        c = self._qresync()
        c.ok("SELECT INBOX")  # type: ignore[attr-defined]
        c.ok("STORE 2,4 +FLAGS.SILENT (\\Deleted)")  # type: ignore[attr-defined]
        out = c.ok("EXPUNGE")  # type: ignore[attr-defined]
        self.assertIn(b"* VANISHED 2,4\r\n", out)
        h = int(re.search(rb"OK \[HIGHESTMODSEQ (\d+)\] Expunge", out).group(1))
        status = c.ok("STATUS INBOX (HIGHESTMODSEQ)")  # type: ignore[attr-defined]
        self.assertIn(b"(HIGHESTMODSEQ %d)" % h, status)
        self.assertNotIn(b"EXPUNGE\r\n", out.replace(b"OK Expunge", b""))
        other = self.env.selected()
        other.ok("UID STORE 6 +FLAGS.SILENT (\\Deleted)")
        other.ok("UID EXPUNGE 6")
        out = c.ok("NOOP")  # type: ignore[attr-defined]
        self.assertIn(b"* VANISHED 6\r\n", out)
        # In IDLE too.
        self.assertIn(b"+ ", c.send(b"i IDLE\r\n"))  # type: ignore[attr-defined]
        other.ok("UID STORE 5 +FLAGS.SILENT (\\Deleted)")
        other.ok("UID EXPUNGE 5")
        out = c.send(b"DONE\r\n")  # type: ignore[attr-defined]
        self.assertIn(b"* VANISHED 5\r\n", out)
        self.assertNotIn(b" EXPUNGE\r\n", out)
        out = c.ok("SELECT INBOX")  # type: ignore[attr-defined]
        self.assertIn(b"* OK [CLOSED]", out)

    def test_selectQresync(self) -> None:
        """RFC 7162 3.2.5.2: SELECT with QRESYNC (uidvalidity modseq known-uids) gives
        VANISHED (EARLIER) for the known UIDs expunged since and FETCH (UID FLAGS MODSEQ)
        for those changed since; eM Client's combined parameters parse."""
        c = self._qresync()
        out = c.ok("SELECT INBOX")  # type: ignore[attr-defined]
        h0 = highest(out)
        v = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))
        c.ok("STORE 1 +FLAGS.SILENT (\\Seen)")  # type: ignore[attr-defined]
        c.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")  # type: ignore[attr-defined]
        c.ok("EXPUNGE")  # type: ignore[attr-defined]
        c.ok("UNSELECT")  # type: ignore[attr-defined]
        out = c.ok(b"SELECT INBOX (QRESYNC (%d %d 1:6))" % (v, h0))  # type: ignore
        self.assertIn(b"* VANISHED (EARLIER) 3\r\n", out)
        self.assertRegex(out, rb"\* 1 FETCH \(UID 1 FLAGS \(\\Seen[^)]*\) MODSEQ \(\d+\)\)")
        self.assertEqual(out.count(b" FETCH "), 1)
        # Without known UIDs, and with a sequence match; with eM Client's form.
        out = c.ok(b"SELECT INBOX (QRESYNC (%d %d))" % (v, h0))  # type: ignore
        self.assertIn(b"* VANISHED (EARLIER) 3\r\n", out)
        out = c.ok(b"EXAMINE INBOX (QRESYNC (%d %d 1:6 (1:2 1:2)))" % (v, h0))  # type: ignore
        self.assertIn(b"* VANISHED (EARLIER) 3\r\n", out)
        out = c.ok(b"SELECT INBOX (CONDSTORE QRESYNC (%d %d))" % (v, h0))  # type: ignore
        self.assertIn(b"[HIGHESTMODSEQ", out)
        # A wrong UIDVALIDITY: a plain select, nothing about the old state.
        out = c.ok(b"SELECT INBOX (QRESYNC (%d %d 1:6))" % (v + 1, h0))  # type: ignore
        self.assertNotIn(b"VANISHED", out)
        self.assertNotIn(b" FETCH ", out)
        # Up to date: nothing to tell.
        h1 = highest(out)
        out = c.ok(b"SELECT INBOX (QRESYNC (%d %d 1:6))" % (v, h1))  # type: ignore
        self.assertNotIn(b"VANISHED", out)
        self.assertNotIn(b" FETCH ", out)

    def test_fetchVanished(self) -> None:
        """RFC 7162 3.2.6: UID FETCH ... (CHANGEDSINCE n VANISHED) reports the UIDs of
        the set expunged since n first, then the changed messages."""
        c = self._qresync()
        h0 = highest(c.ok("SELECT INBOX"))  # type: ignore[attr-defined]
        c.ok("UID STORE 2,5 +FLAGS.SILENT (\\Deleted)")  # type: ignore[attr-defined]
        c.ok("UID EXPUNGE 5")  # type: ignore[attr-defined]
        out = c.ok(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % h0)  # type: ignore
        self.assertTrue(out.startswith(b"* VANISHED (EARLIER) 5\r\n"), out)
        self.assertEqual(list(modseqs(out)), [2])
        out = c.ok(b"UID FETCH 1:4 (FLAGS) (CHANGEDSINCE %d VANISHED)" % h0)  # type: ignore
        self.assertNotIn(b"VANISHED", out)

    def test_restartKeepsModseqs(self) -> None:
        """A new server over the same tree (a restart) gives the same HIGHESTMODSEQ and
        answers a QRESYNC select from before the restart."""
        c = self._qresync()
        out = c.ok("SELECT INBOX")  # type: ignore[attr-defined]
        v = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))
        h0 = highest(out)
        c.ok("STORE 2 +FLAGS.SILENT (\\Seen)")  # type: ignore[attr-defined]
        h1 = highest(c.ok("SELECT INBOX"))  # type: ignore[attr-defined]
        self.env.store.clearCaches()  # the process's in-memory state is gone, as after a restart
        d = self.env.login()
        self.assertIn(b"* ENABLED QRESYNC", d.ok("ENABLE QRESYNC"))
        out = d.ok(b"SELECT INBOX (QRESYNC (%d %d))" % (v, h0))
        self.assertEqual(highest(out), h1)
        self.assertEqual(list(modseqs(out)), [2])
