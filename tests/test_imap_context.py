"""CONTEXT=SEARCH (RFC 5267 section 4, L{pymaild.imap.context}): PARTIAL results, searches
kept up to date with ADDTO/REMOVEFROM, CANCELUPDATE, and bad input, on the wire; two
imaplib sessions over a real socket."""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.imap.context import MAX_UPDATES
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, IMAPEnv, makeMessage, tagged, untagged


def esearches(out: bytes) -> list[bytes]:
    """The C{* ESEARCH} lines of C{out}, in order."""
    return [line for line in untagged(out) if line.startswith(b"* ESEARCH")]


class PartialTests(SynchronousTestCase):
    """RETURN (PARTIAL low:high): the results at those positions."""

    def setUp(self) -> None:
        """Five messages, INBOX selected."""
        self.env = IMAPEnv(self)
        self.env.deliver(*[makeMessage(f"m{i}") for i in range(5)])
        self.c = self.env.selected()

    def test_ranges(self) -> None:
        """imaptest's search-partial and RFC 5267 4.4: a range, a reversed one (given
        low first), one past the end (cut), one beyond (NIL), over a subset, with COUNT,
        and by UID."""
        cases = {
            "SEARCH RETURN (PARTIAL 1:1) ALL": b'* ESEARCH (TAG "t3") PARTIAL (1:1 1)',
            "SEARCH RETURN (PARTIAL 2:4) ALL": b'* ESEARCH (TAG "t4") PARTIAL (2:4 2:4)',
            "SEARCH RETURN (PARTIAL 4:2) ALL": b'* ESEARCH (TAG "t5") PARTIAL (2:4 2:4)',
            "SEARCH RETURN (PARTIAL 1:6) ALL": b'* ESEARCH (TAG "t6") PARTIAL (1:6 1:5)',
            "SEARCH RETURN (PARTIAL 6:6) ALL": b'* ESEARCH (TAG "t7") PARTIAL (6:6 NIL)',
            "SEARCH RETURN (PARTIAL 2:3) 1:2,4:5":
                b'* ESEARCH (TAG "t8") PARTIAL (2:3 2,4)',
            "SEARCH RETURN (COUNT PARTIAL 2:10) 1:2,4:5":
                b'* ESEARCH (TAG "t9") COUNT 4 PARTIAL (2:10 2,4:5)',
            "UID SEARCH RETURN (PARTIAL 2:2) ALL":
                b'* ESEARCH (TAG "t10") UID PARTIAL (2:2 2)',
            "SORT RETURN (PARTIAL 1:2) (REVERSE SUBJECT) UTF-8 ALL":
                b'* ESEARCH (TAG "t11") PARTIAL (1:2 5,4)',
        }
        for command, expected in cases.items():
            self.assertEqual(esearches(self.c.ok(command)), [expected], command)

    def test_badPartial(self) -> None:
        """A zero, missing, malformed, too large or repeated range is BAD; the session
        goes on."""
        for bad in ("PARTIAL 0:5", "PARTIAL 1", "PARTIAL", "PARTIAL a:b", "PARTIAL 1:-5",
                    "PARTIAL 1:4294967296", "PARTIAL 1:2 PARTIAL 3:4", "PARTIAL 1:2:3"):
            out = self.c.cmd(f"SEARCH RETURN ({bad}) ALL")
            self.assertIn(b" BAD ", tagged(out, self.c.lastTag), bad)
        self.assertEqual(esearches(self.c.ok("SEARCH RETURN (CONTEXT COUNT) ALL")),
                         [b'* ESEARCH (TAG "t11") COUNT 5'])


class UpdateTests(SynchronousTestCase):
    """RETURN (UPDATE): the search is kept and its changes are sent."""

    def setUp(self) -> None:
        """Five messages; session one has INBOX selected, session two too."""
        self.env = IMAPEnv(self)
        self.env.deliver(*[makeMessage(f"m{i}") for i in range(5)])
        self.one = self.env.selected()
        self.two = self.env.selected()

    def test_capability(self) -> None:
        """CONTEXT=SEARCH is advertised (CONTEXT=SORT is not: SORT updates are
        refused)."""
        caps = untagged(self.one.ok("CAPABILITY"))[0]
        self.assertIn(b" CONTEXT=SEARCH", caps)
        self.assertNotIn(b"CONTEXT=SORT", caps)

    def test_imaptestSequence(self) -> None:
        """imaptest's search-context-update: the session's own STOREs, an EXPUNGE (its
        REMOVEFROM before the EXPUNGE lines, while the numbers hold), an APPEND (after
        EXISTS), then CANCELUPDATE ends the updates."""
        out = self.one.ok("SEARCH RETURN (UPDATE) BODY body SEEN")
        self.assertEqual(esearches(out), [b'* ESEARCH (TAG "t3")'])
        out = self.one.ok("STORE 1,2,4 +FLAGS (\\Seen)")
        self.assertEqual(esearches(out), [b'* ESEARCH (TAG "t3") ADDTO (0 1:2,4)'])
        out = self.one.ok("STORE 1,2 -FLAGS (\\Seen)")
        self.assertEqual(esearches(out), [b'* ESEARCH (TAG "t3") REMOVEFROM (0 1:2)'])
        self.one.ok("STORE 3:5 +FLAGS.SILENT (\\Deleted)")
        out = self.one.ok("EXPUNGE")
        lines = untagged(out)
        self.assertEqual(lines, [b'* ESEARCH (TAG "t3") REMOVEFROM (0 4)', b"* 5 EXPUNGE",
                                 b"* 4 EXPUNGE", b"* 3 EXPUNGE"])
        out = self.one.ok(b"APPEND INBOX (\\Seen) {%d+}\r\n" % len(makeMessage("new"))
                          + makeMessage("new"))
        lines = untagged(out)
        self.assertLess(lines.index(b"* 3 EXISTS"),
                        lines.index(b'* ESEARCH (TAG "t3") ADDTO (0 3)'))
        self.one.ok('CANCELUPDATE "t3"')
        self.assertEqual(esearches(self.one.ok("STORE 1 +FLAGS (\\Seen)")), [])

    def test_otherSession(self) -> None:
        """Another session's changes reach the search at NOOP after the FETCH lines,
        by UID for a UID SEARCH; a delivery is added; both searches are updated."""
        self.one.ok("UID SEARCH RETURN (UPDATE) UNSEEN")
        self.one.ok("SEARCH RETURN (UPDATE COUNT) SEEN")
        self.two.ok("STORE 2 +FLAGS (\\Seen)")
        lines = untagged(self.one.ok("NOOP"))
        self.assertTrue(lines[0].startswith(b"* 2 FETCH ("), lines)
        self.assertEqual(lines[1:], [b'* ESEARCH (TAG "t3") UID REMOVEFROM (0 2)',
                                     b'* ESEARCH (TAG "t4") ADDTO (0 2)'])
        self.env.deliver(makeMessage("late"))
        self.env.avatars.registry.changed(ALICE, "INBOX")
        lines = untagged(self.one.ok("NOOP"))
        self.assertEqual(lines[0], b"* 6 EXISTS")
        self.assertEqual(lines[2:], [b'* ESEARCH (TAG "t3") UID ADDTO (0 6)'])

    def test_idle(self) -> None:
        """During IDLE an update is sent as soon as the folder changes."""
        self.one.ok("SEARCH RETURN (UPDATE) FLAGGED")
        self.one.send(b"t9 IDLE\r\n")
        self.two.ok("STORE 5 +FLAGS (\\Flagged)")
        out = self.one.take()
        self.assertIn(b'* ESEARCH (TAG "t3") ADDTO (0 5)', out)
        self.one.send(b"DONE\r\n")

    def test_endsWithTheMailbox(self) -> None:
        """UNSELECT (or another SELECT) ends every update: CANCELUPDATE of its tag is
        then unknown."""
        self.one.ok("SEARCH RETURN (UPDATE) ALL")
        self.one.ok("SELECT INBOX")
        out = self.one.cmd('CANCELUPDATE "t3"')
        self.assertIn(b" NO Unknown", tagged(out, self.one.lastTag))

    def test_badInput(self) -> None:
        """CANCELUPDATE of no tag or an atom is BAD, of an unknown tag NO (and no tag
        is cancelled then); SORT's UPDATE is refused with NOUPDATE and the sort still
        answered; past the limit a search is answered and refused NOUPDATE; outside
        the selected state CANCELUPDATE is BAD."""
        self.one.ok("SEARCH RETURN (UPDATE) ALL")
        for bad in ("CANCELUPDATE", "CANCELUPDATE t3", "CANCELUPDATE ()"):
            self.assertIn(b" BAD ", tagged(self.one.cmd(bad), self.one.lastTag), bad)
        out = self.one.cmd('CANCELUPDATE "t3" "nope"')
        self.assertIn(b" NO ", tagged(out, self.one.lastTag))
        self.one.ok('CANCELUPDATE "t3"')
        out = self.one.ok("SORT RETURN (UPDATE ALL) (ARRIVAL) UTF-8 ALL")
        self.assertIn(b"ALL 1:5", out)
        self.assertIn(b'* NO [NOUPDATE "' + self.one.lastTag + b'"]', out)
        for _ in range(MAX_UPDATES):
            self.assertNotIn(b"NOUPDATE", self.one.ok("SEARCH RETURN (UPDATE) ALL"))
        out = self.one.ok("SEARCH RETURN (UPDATE COUNT) ALL")
        self.assertIn(b"COUNT 5", out)
        self.assertIn(b'* NO [NOUPDATE "' + self.one.lastTag + b'"]', out)
        self.one.ok("UNSELECT")
        out = self.one.cmd('CANCELUPDATE "t3"')
        self.assertIn(b" BAD ", tagged(out, self.one.lastTag))


class SocketTests(TestCase):
    """Two imaplib sessions over a real listener."""

    timeout = 60

    @defer.inlineCallbacks
    def test_updateSeenByImaplib(self) -> None:
        """One session keeps a search of unseen messages; the other reads one; the
        first's NOOP brings the REMOVEFROM."""
        srv = ClientServer(self)
        for i in range(3):
            srv.store.deliver([ALICE], makeMessage(f"m{i}"))

        def client() -> Any:
            a = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            b = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            try:
                for m in (a, b):
                    m.login(ALICE, ALICE_PW)
                    m.select("INBOX")
                typ, _ = a._simple_command("SEARCH", "RETURN", "(UPDATE)", "UNSEEN")
                b.fetch("2", "(BODY[TEXT])")
                a.noop()
                return typ, a.untagged_responses.get("ESEARCH")
            finally:
                a.logout()
                b.logout()

        typ, updates = yield threads.deferToThread(client)
        self.assertEqual(typ, "OK")
        self.assertIn(b'(TAG "' , updates[-1])
        self.assertTrue(updates[-1].endswith(b"REMOVEFROM (0 2)"), updates)
