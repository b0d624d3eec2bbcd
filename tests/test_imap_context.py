"""CONTEXT=SEARCH (RFC 5267 section 4, L{pymaild.imap.context}): PARTIAL results, searches
kept up to date with ADDTO/REMOVEFROM, CANCELUPDATE, and bad input, on the wire; two
imaplib sessions over a real socket."""

from __future__ import annotations

import imaplib
import random
import re
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.imap.context import MAX_UPDATES
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, IMAPEnv, makeMessage, tagged, untagged


def esearches(out: bytes) -> list[bytes]:
    """The C{* ESEARCH} lines of C{out}, in order."""
    return [line for line in untagged(out) if line.startswith(b"* ESEARCH")]


def selectedPair(port: int) -> tuple[imaplib.IMAP4, imaplib.IMAP4]:
    """Two imaplib sessions of alice's on C{port}, each with INBOX selected."""
    pair = (imaplib.IMAP4("127.0.0.1", port), imaplib.IMAP4("127.0.0.1", port))
    for m in pair:
        m.login(ALICE, ALICE_PW)
        m.select("INBOX")
    return pair


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
        """CONTEXT=SEARCH and CONTEXT=SORT are advertised, beside SORT and ESORT (RFC
        5267 4.1)."""
        caps = untagged(self.one.ok("CAPABILITY"))[0].split()
        for cap in (b"CONTEXT=SEARCH", b"CONTEXT=SORT", b"SORT", b"ESORT"):
            self.assertIn(cap, caps)

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
        is cancelled then); an UPDATE under the tag of a kept search is BAD (RFC 5267
        4.3, "Tag reuse") and keeps nothing; past the limit (searches and sorts count
        together) a search or sort is answered and refused NOUPDATE; outside the
        selected state CANCELUPDATE is BAD."""
        self.one.ok("SEARCH RETURN (UPDATE) ALL")
        for bad in ("CANCELUPDATE", "CANCELUPDATE t3", "CANCELUPDATE ()"):
            self.assertIn(b" BAD ", tagged(self.one.cmd(bad), self.one.lastTag), bad)
        out = self.one.cmd('CANCELUPDATE "t3" "nope"')
        self.assertIn(b" NO ", tagged(out, self.one.lastTag))
        for reuse in ("SEARCH RETURN (UPDATE) SEEN", "SORT RETURN (UPDATE) (SIZE) UTF-8 ALL"):
            out = self.one.cmd(reuse, tag=b"t3")
            self.assertTrue(tagged(out, b"t3").endswith(b"Tag reuse"), out)
            self.assertIn(b" BAD ", tagged(out, b"t3"))
        out = self.one.cmd("SEARCH RETURN () ALL", tag=b"t3")  # (no UPDATE: no reuse)
        self.assertEqual(tagged(out, b"t3"), b"t3 OK Search completed")
        self.assertEqual(esearches(out), [b'* ESEARCH (TAG "t3") ALL 1:5'])
        self.one.ok('CANCELUPDATE "t3"')
        out = self.one.ok("SORT RETURN (UPDATE ALL) (ARRIVAL) UTF-8 ALL")
        self.assertIn(b"ALL 1:5", out)
        self.assertNotIn(b"NOUPDATE", out)
        for _ in range(MAX_UPDATES - 1):
            self.assertNotIn(b"NOUPDATE", self.one.ok("SEARCH RETURN (UPDATE) ALL"))
        out = self.one.ok("SEARCH RETURN (UPDATE COUNT) ALL")
        self.assertIn(b"COUNT 5", out)
        self.assertIn(b'* NO [NOUPDATE "' + self.one.lastTag + b'"]', out)
        out = self.one.ok("SORT RETURN (UPDATE COUNT) (SIZE) UTF-8 ALL")
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
            a, b = selectedPair(srv.portNumber)
            try:
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


def dated(subject: str, day: int, size: int = 0) -> bytes:
    """A message with its own subject, date (day of January 2024) and body length."""
    return (b"From: Carol <carol@remote.example>\r\nTo: Alice <alice@example.org>\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Date: %d Jan 2024 10:00:00 +0000\r\n\r\n" % day + b"x" * size + b"\r\n")


def expand(text: bytes) -> list[int]:
    """A sequence set as a list, its order kept and each range ascending (RFC 5267
    3.2)."""
    out: list[int] = []
    for part in text.split(b","):
        a, _, b = part.partition(b":")
        lo, hi = sorted((int(a), int(b or a)))
        out.extend(range(lo, hi + 1))
    return out


_ITEM = re.compile(rb" (ADDTO|REMOVEFROM) \(([^)]*)\)")


class SortResult:
    """What a client keeps of an updating sort: the ids in order, changed by the
    ADDTO and REMOVEFROM pairs of its tag exactly as RFC 5267 4.3.3 and 4.3.4 say
    (a REMOVEFROM must name the ids at its position), and renumbered by EXPUNGE when
    the ids are sequence numbers."""

    def __init__(self, tag: bytes, ids: list[int], uid: bool) -> None:
        self.tag = tag
        self.ids = ids
        self.uid = uid

    def apply(self, out: bytes) -> None:
        """Apply the untagged lines of C{out} in order."""
        prefix = b'* ESEARCH (TAG "' + self.tag + b'")'
        for line in untagged(out):
            m = re.fullmatch(rb"\* (\d+) EXPUNGE", line)
            if m and not self.uid:
                n = int(m.group(1))
                assert n not in self.ids, (n, self.ids, out)
                self.ids = [i - 1 if i > n else i for i in self.ids]
            if not line.startswith(prefix + b" "):
                continue
            assert (b" UID " in line) == self.uid, line
            for name, body in _ITEM.findall(line):
                words = body.split()
                assert words and len(words) % 2 == 0, line
                for pos, ids in zip(words[::2], words[1::2], strict=True):
                    p, items = int(pos), expand(ids)
                    assert p >= 1, line  # (0 is for SEARCH only)
                    if name == b"REMOVEFROM":
                        assert self.ids[p - 1:p - 1 + len(items)] == items, (line, self.ids)
                        del self.ids[p - 1:p - 1 + len(items)]
                    else:
                        assert p <= len(self.ids) + 1, (line, self.ids)
                        self.ids[p - 1:p - 1] = items


def sortAll(c: Any, command: str) -> list[int]:
    """The ids a fresh C{SORT RETURN (ALL)} gives for C{command}'s criteria."""
    out = c.ok(command)
    line = esearches(out)[-1]
    m = re.search(rb" ALL (\S+)", line)
    return expand(m.group(1)) if m else []


class SortUpdateTests(SynchronousTestCase):
    """SORT RETURN (UPDATE) (CONTEXT=SORT): positional ADDTO and REMOVEFROM."""

    def setUp(self) -> None:
        """Six messages (subjects and dates out of arrival order); two sessions with
        INBOX selected."""
        self.env = IMAPEnv(self)
        self.env.deliver(*[dated(s, d) for s, d in
                           [("delta", 4), ("alpha", 1), ("foxtrot", 6), ("charlie", 3),
                            ("echo", 5), ("bravo", 2)]])
        self.one = self.env.selected()
        self.two = self.env.selected()

    def test_imaptestPartial(self) -> None:
        """imaptest's sort-partial: PARTIAL over a reversed sort (REVERSE DATE here:
        the deliveries' arrival times may share a second) and ARRIVAL, and the
        malformed ranges BAD."""
        self.assertEqual(esearches(self.one.ok("SORT RETURN (PARTIAL 2:4) (REVERSE DATE)"
                                               " US-ASCII ALL")),
                         [b'* ESEARCH (TAG "t3") PARTIAL (2:4 5,1,4)'])
        self.assertEqual(esearches(self.one.ok("SORT RETURN (PARTIAL 4:2) (ARRIVAL)"
                                               " US-ASCII ALL")),
                         [b'* ESEARCH (TAG "t4") PARTIAL (2:4 2:4)'])
        for bad in ("1", "1:*", "*:1"):
            out = self.one.cmd(f"SORT RETURN (PARTIAL {bad}) (ARRIVAL) US-ASCII ALL")
            self.assertIn(b" BAD ", tagged(out, self.one.lastTag), bad)

    def test_positions(self) -> None:
        """By subject, UNFLAGGED: flagging messages sends REMOVEFROM at their places
        (a run of neighbours in one pair; pairs counted after those before), unflagging
        them ADDTO at their new places, both in one line in that order."""
        out = self.one.ok("SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNFLAGGED")
        # alpha 2, bravo 6, charlie 4, delta 1, echo 5, foxtrot 3
        self.assertEqual(esearches(out), [b'* ESEARCH (TAG "t3") ALL 2,6,4,1,5,3'])
        self.two.ok("STORE 6,4,3 +FLAGS (\\Flagged)")
        out = self.one.ok("NOOP")
        self.assertEqual(esearches(out),
                         [b'* ESEARCH (TAG "t3") REMOVEFROM (2 6,4 4 3)'])
        self.two.ok("STORE 6 -FLAGS (\\Flagged)")
        self.two.ok("STORE 2 +FLAGS (\\Flagged)")
        out = self.one.ok("NOOP")
        self.assertEqual(esearches(out),
                         [b'* ESEARCH (TAG "t3") REMOVEFROM (1 2) ADDTO (1 6)'])

    def test_uidExpungeAppend(self) -> None:
        """UID SORT by REVERSE DATE: an EXPUNGE's REMOVEFROM comes before the EXPUNGE
        lines, an APPEND's ADDTO after EXISTS, at the place its date gives; the
        session's own STORE is reported at its end; CANCELUPDATE ends it."""
        out = self.one.ok("UID SORT RETURN (UPDATE MIN) (REVERSE DATE) UTF-8 UNDELETED")
        self.assertEqual(esearches(out), [b'* ESEARCH (TAG "t3") UID MIN 3'])
        out = self.one.ok("STORE 1,2 +FLAGS (\\Deleted)")
        self.assertIn(b'* ESEARCH (TAG "t3") UID REMOVEFROM (3 1 5 2)', out)
        self.one.ok("STORE 1,2 -FLAGS (\\Deleted)")
        self.two.ok("STORE 5 +FLAGS (\\Deleted)")
        self.two.ok("EXPUNGE")
        lines = untagged(self.one.ok("NOOP"))
        self.assertEqual(lines[-2:], [b'* ESEARCH (TAG "t3") UID REMOVEFROM (2 5)',
                                      b"* 5 EXPUNGE"])
        message = dated("golf", 3)
        out = self.one.ok(b"APPEND INBOX {%d+}\r\n" % len(message) + message)
        lines = untagged(out)
        self.assertLess(lines.index(b"* 6 EXISTS"),
                        lines.index(b'* ESEARCH (TAG "t3") UID ADDTO (4 7)'))
        # 6 foxtrot, 1 delta, 4 charlie, 7 golf (day 3, later UID), 6 bravo? no: 2 alpha
        self.assertEqual(sortAll(self.one, "UID SORT RETURN (ALL) (REVERSE DATE) UTF-8"
                                           " UNDELETED"), [3, 1, 4, 7, 6, 2])
        self.one.ok('CANCELUPDATE "t3"')
        self.two.ok("STORE 1 +FLAGS (\\Deleted)")
        self.assertEqual(esearches(self.one.ok("NOOP")), [])

    def test_rfcAddtoExample(self) -> None:
        """RFC 5267 4.3.3's example, its preferred form: 2734:2735 kept, three that
        sort before them join as one pair at position 1 (here UIDs 1:3 join 4:5 by
        ARRIVAL)."""
        self.one.ok("STORE 1:3 +FLAGS (\\Flagged)")
        self.one.ok("UID SORT RETURN (UPDATE) (ARRIVAL) UTF-8 UNFLAGGED 1:5")
        out = self.one.ok("STORE 1:3 -FLAGS (\\Flagged)")
        self.assertEqual(esearches(out), [b'* ESEARCH (TAG "t4") UID ADDTO (1 1:3)'])

    def test_idle(self) -> None:
        """During IDLE a kept sort's update comes as soon as another session changes
        the folder."""
        self.one.ok("SORT RETURN (UPDATE) (DATE) UTF-8 UNSEEN")
        self.one.send(b"t9 IDLE\r\n")
        self.two.ok("STORE 4 +FLAGS (\\Seen)")
        self.assertIn(b'* ESEARCH (TAG "t3") REMOVEFROM (3 4)', self.one.take())
        self.one.send(b"DONE\r\n")

    def test_updateStorm(self) -> None:
        """Three hundred random changes from both sessions (flags, appends, expunges,
        several at once between two of the first session's commands): after each, the
        results each kept sort (by UID and by number, several criteria) gives through
        its updates equal a fresh sort."""
        rnd = random.Random(5267)
        commands = ["UID SORT RETURN (UPDATE) (SUBJECT REVERSE DATE) UTF-8 UNFLAGGED",
                    "SORT RETURN (UPDATE) (REVERSE SIZE) UTF-8 OR SEEN DELETED",
                    "SORT RETURN (UPDATE) (DATE) UTF-8 ALL"]
        results = []
        for command in commands:
            fresh = command.replace("UPDATE", "ALL")
            self.one.ok(command)
            results.append((SortResult(self.one.lastTag, sortAll(self.one, fresh),
                                       command.startswith("UID")), fresh))
        top = 6  # the highest UID given so far
        for step in range(300):
            actor = self.one if rnd.random() < 0.3 else self.two
            outs = []
            for _ in range(rnd.randint(1, 4)):
                roll = rnd.random()
                if roll < 0.15:
                    m = dated(rnd.choice(["a", "b", "Re: a", "c"]), rnd.randint(1, 28),
                              rnd.randint(0, 50))
                    outs.append(actor.ok(b"APPEND INBOX {%d+}\r\n" % len(m) + m))
                    top += 1
                elif roll < 0.25:
                    u = rnd.randint(1, top)
                    outs.append(actor.ok(f"UID STORE {u} +FLAGS.SILENT (\\Deleted)"))
                    outs.append(actor.ok(f"UID EXPUNGE {u}"))
                else:
                    flag = rnd.choice(["\\Flagged", "\\Seen", "\\Deleted"])
                    lo = rnd.randint(1, top)
                    outs.append(actor.ok(f"UID STORE {lo}:{lo + rnd.randint(0, 3)} "
                                         f"{rnd.choice('+-')}FLAGS.SILENT ({flag})"))
            outs.append(self.one.ok("NOOP"))
            if actor is not self.one:
                outs = outs[-1:]
            for result, fresh in results:
                for out in outs:
                    result.apply(out)
                self.assertEqual(result.ids, sortAll(self.one, fresh), (step, fresh, outs))


class SortSocketTests(TestCase):
    """A kept sort seen by imaplib over a real listener."""

    timeout = 60

    @defer.inlineCallbacks
    def test_sortUpdateSeenByImaplib(self) -> None:
        """A kept UID SORT by REVERSE SUBJECT over a real socket (its sort run by the
        server's disk threads): the other session's delivery and flag change come as
        ADDTO and REMOVEFROM that, applied by position, give the new order."""
        srv = ClientServer(self)
        for subject in ("b", "d", "f"):
            srv.store.deliver([ALICE], makeMessage(subject))

        def client() -> Any:
            a, b = selectedPair(srv.portNumber)
            try:
                typ, _ = a._simple_command("UID", "SORT", "RETURN", "(UPDATE ALL)",
                                           "(REVERSE SUBJECT)", "UTF-8", "UNFLAGGED")
                first = a.untagged_responses.pop("ESEARCH")
                message = makeMessage("e")
                b.append("INBOX", None, None, message)
                b.store("1", "+FLAGS", "(\\Flagged)")
                a.noop()
                return typ, first, a.untagged_responses.get("ESEARCH")
            finally:
                a.logout()
                b.logout()

        typ, first, updates = yield threads.deferToThread(client)
        self.assertEqual(typ, "OK")
        self.assertTrue(first[-1].endswith(b"UID ALL 3,2,1"), first)
        tag = re.match(rb'\(TAG "([^"]+)"\)', first[-1]).group(1)  # type: ignore[union-attr]
        result = SortResult(tag, [3, 2, 1], True)
        result.apply(b"".join(b"* ESEARCH " + u + b"\r\n" for u in updates))
        self.assertEqual(result.ids, [3, 4, 2])
