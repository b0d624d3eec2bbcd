"""IMAP extensions of issue 16 at the wire level: the RFCs' examples, bad input (the
RFC's answer, then a command proving the session is still in sync), and what each
extension adds to CAPABILITY."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap import framing
from tests.test_imap_helpers import ALICE, IMAPEnv, makeMessage, tagged


class IdTests(SynchronousTestCase):
    """ID (RFC 2971) answers with the server's fields and OK, never BAD."""

    CASES = (
        b'ID ("name" "sodr" "version" "19.34" "vendor" "Pink Floyd Music Limited")',
        b"ID NIL",
        b"ID",
        b"ID ",
        b'ID ("name")',
        b'ID ("name" "x" "os"',
        b"ID (((((((((",
        b"ID " + b"(" * 5000,
        b'ID ("k" "v" ' * 40 + b")",
        b"ID garbage \x01\x7f",
        b'ID ("' + b"x" * 60000 + b'" NIL)',
    )

    def _check(self, c: object) -> None:
        for line in self.CASES:
            out = c.cmd(line)  # type: ignore[attr-defined]
            tag = c.lastTag  # type: ignore[attr-defined]
            self.assertIn(b'* ID ("name" "pymaild"', out, line[:40])
            self.assertTrue(tagged(out, tag).startswith(tag + b" OK "), (line[:40], out))
            self.assertIn(b" OK ", c.cmd("NOOP"))  # type: ignore[attr-defined]

    def test_beforeLogin(self) -> None:
        """Every form, good or bad, before login: untagged ID, tagged OK, still in sync."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        self._check(c)

    def test_afterLogin(self) -> None:
        """The same in the authenticated and selected states."""
        env = IMAPEnv(self)
        self._check(env.login())
        self._check(env.selected())

    def test_literals(self) -> None:
        """Fields sent as literals (synchronising and LITERAL+) are read to the end of the
        command; nothing of them is taken for a new command."""
        env = IMAPEnv(self)
        c = env.login()
        out = c.send(b"a ID ({4}\r\n")
        self.assertIn(b"+ ", out)
        out = c.send(b"name {9+}\r\nb NOOP\r\n)\r\nc NOOP\r\n")
        self.assertIn(b"a OK", out)
        self.assertNotIn(b"b OK", out)
        self.assertIn(b"c OK", out)


def capabilities(out: bytes) -> set[bytes]:
    """The capability names of the C{* CAPABILITY} line in C{out}."""
    for line in out.split(b"\r\n"):
        if line.startswith(b"* CAPABILITY "):
            return set(line.split()[2:])
    raise AssertionError(f"no CAPABILITY in {out!r}")


class StatusSizeTests(SynchronousTestCase):
    """STATUS=SIZE (RFC 8438)."""

    def test_rfcExample(self) -> None:
        """C{STATUS INBOX (MESSAGES SIZE)} gives the count and the sum of the messages'
        RFC822.SIZE, and follows deliveries, APPENDs and EXPUNGEs."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b", b"x" * 1000 + b"\r\n"))
        c = env.login()
        self.assertIn(b"STATUS=SIZE", capabilities(c.cmd("CAPABILITY")))
        sel = env.selected()
        fetched = sel.cmd("FETCH 1:* RFC822.SIZE")
        sizes = [int(n) for n in re.findall(rb"RFC822\.SIZE (\d+)", fetched)]
        self.assertEqual(len(sizes), 2)
        out = c.cmd("STATUS INBOX (MESSAGES SIZE)")
        self.assertIn(b'* STATUS "INBOX" (MESSAGES 2 SIZE %d)' % sum(sizes), out)
        msg = makeMessage("c")
        c.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
        out = c.cmd("STATUS INBOX (SIZE)")
        self.assertIn(b'* STATUS "INBOX" (SIZE %d)' % (sum(sizes) + len(msg)), out)
        sel.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        sel.ok("EXPUNGE")
        out = c.cmd("STATUS INBOX (SIZE MESSAGES UNSEEN)")
        self.assertIn(b'* STATUS "INBOX" (SIZE %d MESSAGES 2 UNSEEN 2)'
                      % (sizes[0] + len(msg)), out)

    def test_emptyAndBad(self) -> None:
        """An empty folder has SIZE 0; an unknown item, an empty list and a missing
        parenthesis are BAD; a missing folder NO [NONEXISTENT]; the session goes on."""
        env = IMAPEnv(self)
        c = env.login()
        c.ok("CREATE Empty")
        self.assertIn(b'* STATUS "Empty" (SIZE 0)', c.cmd("STATUS Empty (SIZE)"))
        for bad in ("STATUS INBOX (SIZE BOGUS)", "STATUS INBOX ()", "STATUS INBOX SIZE",
                    "STATUS INBOX (SIZE", "STATUS INBOX (SIZE) extra"):
            out = c.cmd(bad)
            self.assertTrue(tagged(out, c.lastTag).startswith(c.lastTag + b" BAD"), bad)
            self.assertNotIn(b"* STATUS", out)
            self.assertIn(b" OK ", c.cmd("NOOP"))
        self.assertIn(b"NO [NONEXISTENT]", c.cmd("STATUS Nope (SIZE)"))


class AppendLimitTests(SynchronousTestCase):
    """APPENDLIMIT (RFC 7889): the limit advertised is the one enforced."""

    def test_advertisedAndEnforced(self) -> None:
        """C{APPENDLIMIT=<max_literal>} in CAPABILITY and in C{STATUS (APPENDLIMIT)}; an
        APPEND of exactly the limit is stored, one octet more is C{NO [TOOBIG]} before
        any continuation, and the session stays in sync."""
        env = IMAPEnv(self, maxLiteral=2000)
        c = env.connect()
        self.assertIn(b"APPENDLIMIT=2000", capabilities(c.cmd("CAPABILITY")))
        c = env.login()
        self.assertIn(b"APPENDLIMIT=2000", capabilities(c.cmd("CAPABILITY")))
        self.assertIn(b'* STATUS "INBOX" (APPENDLIMIT 2000)', c.cmd("STATUS INBOX (APPENDLIMIT)"))
        head = b"Subject: limit\r\n\r\n"
        exact = head + b"x" * (2000 - len(head))
        out = c.send(b"a APPEND INBOX {2000}\r\n")
        self.assertIn(b"+ ", out)
        self.assertIn(b"a OK [APPENDUID", c.send(exact + b"\r\n"))
        out = c.send(b"b APPEND INBOX {2001}\r\n")
        self.assertIn(b"b NO [TOOBIG]", out)
        self.assertNotIn(b"+ ", out)
        self.assertIn(b"c OK", c.send(b"c NOOP\r\n"))
        self.assertIn(b'(MESSAGES 1)', c.cmd("STATUS INBOX (MESSAGES)"))


def listLines(out: bytes) -> list[bytes]:
    """The C{* LIST} and C{* STATUS} lines of C{out}, in order."""
    return [line for line in out.split(b"\r\n")
            if line.startswith((b"* LIST ", b"* STATUS "))]


class ListExtendedTests(SynchronousTestCase):
    """LIST-EXTENDED (RFC 5258) on the mailboxes of the RFC's examples (delimiter
    C{/}): C{Fruit}, C{Fruit/Apple}, C{Fruit/Banana}, C{Tofu}, C{Vegetable},
    C{Vegetable/Broccoli}, C{Vegetable/Corn}; subscribed are C{INBOX},
    C{Fruit/Banana}, C{Fruit/Peach} (which does not exist), C{Vegetable} and
    C{Vegetable/Broccoli}."""

    def setUp(self) -> None:
        """The RFC's mailboxes and subscriptions."""
        self.env = IMAPEnv(self)
        c = self.c = self.env.login()
        for name in ("Fruit", "Fruit/Apple", "Fruit/Banana", "Tofu", "Vegetable",
                     "Vegetable/Broccoli", "Vegetable/Corn"):
            c.ok(f"CREATE {name}")
        for name in ("INBOX", "Fruit/Banana", "Fruit/Peach", "Vegetable",
                     "Vegetable/Broccoli"):
            c.ok(f"SUBSCRIBE {name}")
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive", "INBOX"):
            if name != "INBOX":
                c.ok(f"UNSUBSCRIBE {name}")

    def test_capability(self) -> None:
        """LIST-EXTENDED and LIST-STATUS are advertised."""
        caps = capabilities(self.c.cmd("CAPABILITY"))
        self.assertTrue({b"LIST-EXTENDED", b"LIST-STATUS"} <= caps)

    def test_subscribedStar(self) -> None:
        """RFC 5258 example 5.2: C{LIST (SUBSCRIBED) "" "*"} lists exactly the
        subscribed names with C{\\Subscribed}, the missing one C{\\NonExistent}."""
        out = listLines(self.c.ok('LIST (SUBSCRIBED) "" "*"'))
        self.assertEqual(out, [
            b'* LIST (\\Subscribed) "/" "INBOX"',
            b'* LIST (\\Subscribed) "/" "Fruit/Banana"',
            b'* LIST (\\NonExistent \\Subscribed) "/" "Fruit/Peach"',
            b'* LIST (\\Subscribed) "/" "Vegetable"',
            b'* LIST (\\Subscribed) "/" "Vegetable/Broccoli"',
        ])
        out = listLines(self.c.ok('LIST (SUBSCRIBED) "" "Veg*" RETURN (CHILDREN)'))
        self.assertEqual(out, [
            b'* LIST (\\HasChildren \\Subscribed) "/" "Vegetable"',
            b'* LIST (\\HasNoChildren \\Subscribed) "/" "Vegetable/Broccoli"',
        ])

    def test_returnSubscribed(self) -> None:
        """RFC 5258 example 5.3: C{RETURN (SUBSCRIBED)} lists every mailbox, marking
        the subscribed ones; no LIST-EXTENDED attribute in a plain LIST."""
        out = listLines(self.c.ok('LIST "" "%" RETURN (SUBSCRIBED CHILDREN)'))
        self.assertIn(b'* LIST (\\HasChildren) "/" "Fruit"', out)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "Tofu"', out)
        self.assertIn(b'* LIST (\\HasChildren \\Subscribed) "/" "Vegetable"', out)
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"', out)
        plain = self.c.ok('LIST "" "*"')
        self.assertNotIn(b"\\Subscribed", plain)
        self.assertNotIn(b"Peach", plain)

    def test_recursiveMatch(self) -> None:
        """RFC 5258 example 5.4: C{(SUBSCRIBED RECURSIVEMATCH) "" "%"} returns the
        top-level names that are subscribed or have a subscribed descendant, the
        latter with C{CHILDINFO ("SUBSCRIBED")}; a subscription below a name that does
        not exist still brings the name in."""
        out = listLines(self.c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"'))
        self.assertEqual(out, [
            b'* LIST (\\Subscribed) "/" "INBOX"',
            b'* LIST () "/" "Fruit" (CHILDINFO ("SUBSCRIBED"))',
            b'* LIST (\\Subscribed) "/" "Vegetable" (CHILDINFO ("SUBSCRIBED"))',
        ])
        # With "*" every subscribed name is listed itself: a parent that is not
        # subscribed is not brought in (Dovecot's reading of RFC 5258 section 3.5).
        out = listLines(self.c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"'))
        self.assertNotIn(b'"Fruit" (', b"".join(out))
        self.assertIn(b'* LIST (\\Subscribed) "/" "Vegetable" (CHILDINFO ("SUBSCRIBED"))',
                      out)
        self.c.ok("SUBSCRIBE Nuts/Pecan")
        out = listLines(self.c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "N%"'))
        self.assertEqual(out, [b'* LIST (\\NonExistent) "/" "Nuts" (CHILDINFO ("SUBSCRIBED"))'])

    def test_severalPatterns(self) -> None:
        """RFC 5258 example 5.7: several patterns in parentheses, each name once."""
        out = listLines(self.c.ok('LIST "" ("INBOX" "Tofu" "Fruit/%" "T*" {5}\r\nFruit)'))
        self.assertEqual(out, [
            b'* LIST () "/" "INBOX"',
            b'* LIST () "/" "Fruit"',
            b'* LIST () "/" "Fruit/Apple"',
            b'* LIST () "/" "Fruit/Banana"',
            b'* LIST () "/" "Tofu"',
            b'* LIST (\\Trash) "/" "Trash"',
        ])

    def test_specialUse(self) -> None:
        """RFC 6154: C{LIST (SPECIAL-USE) "" "*"} lists only special folders, and the
        option combines with SUBSCRIBED (both must hold)."""
        out = listLines(self.c.ok('LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)'))
        self.assertEqual(len(out), 5)
        self.assertIn(b'* LIST (\\Drafts) "/" "Drafts"', out)
        self.c.ok("SUBSCRIBE Sent")
        out = listLines(self.c.ok('LIST (SPECIAL-USE SUBSCRIBED) "" "*"'))
        self.assertEqual(out, [b'* LIST (\\Sent \\Subscribed) "/" "Sent"'])

    def test_impliedParent(self) -> None:
        """A parent implied by a deeper folder is C{\\Noselect} in plain LIST and
        C{\\NonExistent} (which implies it) in LIST-EXTENDED."""
        self.c.ok("CREATE Deep/Er")
        self.assertIn(b'* LIST (\\Noselect \\HasChildren) "/" "Deep"',
                      self.c.ok('LIST "" "%"'))
        self.assertIn(b'* LIST (\\NonExistent \\HasChildren) "/" "Deep"',
                      self.c.ok('LIST "" ("%") RETURN (CHILDREN)'))

    def test_remoteAndEmpty(self) -> None:
        """REMOTE changes nothing (no remote mailboxes); C{LIST () "" ""} still gives
        the delimiter; an empty RETURN list is allowed."""
        a = listLines(self.c.ok('LIST (REMOTE) "" "*" RETURN (CHILDREN)'))
        b = listLines(self.c.ok('LIST "" "*"'))
        self.assertEqual([x.replace(b"\\NonExistent", b"\\Noselect") for x in a], b)
        self.assertTrue(listLines(self.c.ok('LIST (REMOTE) "" "*" RETURN ()')))
        self.assertIn(b'* LIST (\\Noselect) "/" ""', self.c.ok('LIST () "" ""'))

    def test_badInput(self) -> None:
        """Unknown selection or return options, RECURSIVEMATCH alone, bad STATUS items,
        unclosed or empty pattern lists: BAD, nothing listed, session in sync."""
        for bad in ('LIST (BOGUS) "" "*"', 'LIST (RECURSIVEMATCH) "" "*"',
                    'LIST (SUBSCRIBED "" "*"', 'LIST "" "*" RETURN (BOGUS)',
                    'LIST "" "*" RETURN (STATUS ())', 'LIST "" "*" RETURN (STATUS (FOO))',
                    'LIST "" "*" RETURN (STATUS (MESSAGES) STATUS (UNSEEN))',
                    'LIST "" "*" RETURN (STATUS)', 'LIST "" ("a"', 'LIST "" ()',
                    'LIST "" "*" RETURN', 'LIST "" "*" RETURN (CHILDREN) x',
                    'LIST "" (' + '"a" ' * 101 + ')'):
            out = self.c.cmd(bad)
            self.assertTrue(tagged(out, self.c.lastTag).startswith(self.c.lastTag + b" BAD"),
                            (bad, out))
            self.assertEqual(listLines(out), [], bad)
            self.assertIn(b" OK ", self.c.cmd("NOOP"))


class ListStatusTests(SynchronousTestCase):
    """LIST-STATUS (RFC 5819)."""

    def test_rfcExample(self) -> None:
        """RFC 5819's example: C{LIST "" % RETURN (STATUS (MESSAGES UNSEEN))} follows
        each selectable mailbox's LIST with its STATUS and gives none for a
        non-selectable one; SIZE and APPENDLIMIT work there too."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        c = env.login()
        c.ok("CREATE foo")
        c.ok("CREATE bar/baz")
        env.deliver(makeMessage("c"), folder="foo")
        sel = env.selected()
        sel.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
        out = listLines(c.ok('LIST "" % RETURN (STATUS (MESSAGES UNSEEN))'))
        i = out.index(b'* LIST () "/" "INBOX"')
        self.assertEqual(out[i + 1], b'* STATUS "INBOX" (MESSAGES 2 UNSEEN 1)')
        i = out.index(b'* LIST () "/" "foo"')
        self.assertEqual(out[i + 1], b'* STATUS "foo" (MESSAGES 1 UNSEEN 1)')
        i = out.index(b'* LIST (\\NonExistent) "/" "bar"')
        self.assertTrue(out[i + 1].startswith(b"* LIST "))
        self.assertEqual(sum(1 for x in out if x.startswith(b"* STATUS")),
                         sum(1 for x in out if x.startswith(b"* LIST")) - 1)
        out = listLines(c.ok('LIST "" "foo" RETURN (STATUS (SIZE APPENDLIMIT))'))
        self.assertEqual(out[1], b'* STATUS "foo" (SIZE %d APPENDLIMIT 52428800)'
                         % len(makeMessage("c")))


def smithMessage(subject: str) -> bytes:
    """A message from Smith (the sender RFC 4731's examples leave out)."""
    return makeMessage(subject).replace(b"From: Carol <carol@remote.example>",
                                        b"From: John Smith <smith@remote.example>")


class ESearchTests(SynchronousTestCase):
    """ESEARCH (RFC 4731) on twelve messages: 2, 10 and 11 are \\Flagged, and so is 5,
    which is from Smith."""

    def setUp(self) -> None:
        """The mailbox of the examples, selected."""
        self.env = IMAPEnv(self)
        for i in range(1, 13):
            self.env.deliver(smithMessage(f"m{i}") if i == 5 else makeMessage(f"m{i}"))
        self.c = self.env.selected()
        self.c.ok("STORE 2,5,10:11 +FLAGS.SILENT (\\Flagged)")

    def test_capability(self) -> None:
        """ESEARCH, SEARCHRES and WITHIN are advertised."""
        caps = capabilities(self.c.cmd("CAPABILITY"))
        self.assertTrue({b"ESEARCH", b"SEARCHRES", b"WITHIN"} <= caps)

    def test_rfcExamples(self) -> None:
        """RFC 4731 section 3.1's examples: MIN COUNT, an empty RETURN () meaning ALL,
        UID MIN MAX, and COUNT 0 (no MIN, MAX or ALL) when nothing matches."""
        c = self.c
        key = 'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"'
        out = c.cmd("SEARCH RETURN (MIN COUNT) " + key, tag=b"A282")
        self.assertIn(b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\nA282 OK', out)
        self.assertNotIn(b"* SEARCH", out)
        out = c.cmd("SEARCH RETURN () " + key, tag=b"A283")
        self.assertIn(b'* ESEARCH (TAG "A283") ALL 2,10:11\r\n', out)
        out = c.cmd("UID SEARCH RETURN (MIN MAX) 1:5000", tag=b"A285")
        self.assertIn(b'* ESEARCH (TAG "A285") UID MIN 1 MAX 12\r\n', out)
        out = c.cmd("SEARCH RETURN (ALL COUNT MIN MAX) 3:4,12", tag=b"A286")
        self.assertIn(b'* ESEARCH (TAG "A286") MIN 3 MAX 12 ALL 3:4,12 COUNT 3\r\n', out)
        out = c.cmd("SEARCH RETURN (COUNT) DRAFT", tag=b"A287")
        self.assertIn(b'* ESEARCH (TAG "A287") COUNT 0\r\n', out)
        out = c.cmd("SEARCH RETURN (MIN MAX ALL) DRAFT", tag=b"A288")
        self.assertIn(b'* ESEARCH (TAG "A288")\r\nA288 OK', out)
        out = c.cmd("UID SEARCH RETURN (ALL) CHARSET UTF-8 FLAGGED", tag=b"A289")
        self.assertIn(b'* ESEARCH (TAG "A289") UID ALL 2,5,10:11\r\n', out)

    def test_uidsAfterExpunge(self) -> None:
        """UID ESEARCH gives UIDs, plain ESEARCH sequence numbers, after an EXPUNGE
        made them differ."""
        c = self.c
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        self.assertIn(b'* ESEARCH (TAG "a") ALL 1,4,9:10', c.cmd("SEARCH RETURN (ALL) FLAGGED",
                                                                 tag=b"a"))
        self.assertIn(b'* ESEARCH (TAG "b") UID ALL 2,5,10:11',
                      c.cmd("UID SEARCH RETURN (ALL) FLAGGED", tag=b"b"))

    def test_badInput(self) -> None:
        """Unknown return options, an unclosed list, RETURN without keys or after
        CHARSET: BAD, no ESEARCH, the session in sync."""
        for bad in ("SEARCH RETURN (BOGUS) ALL", "SEARCH RETURN (MIN ALL", "SEARCH RETURN (MIN)",
                    "SEARCH RETURN MIN ALL", "SEARCH CHARSET UTF-8 RETURN (MIN) ALL",
                    "SEARCH RETURN (MIN) (ALL"):
            out = self.c.cmd(bad)
            self.assertTrue(tagged(out, self.c.lastTag).startswith(self.c.lastTag + b" BAD"),
                            (bad, out))
            self.assertNotIn(b"* ESEARCH", out)
            self.assertIn(b" OK ", self.c.cmd("NOOP"))


class SearchResTests(SynchronousTestCase):
    """SEARCHRES (RFC 5182): RETURN (SAVE) and C{$}."""

    def setUp(self) -> None:
        """Six messages, 2, 4 and 6 flagged, selected."""
        self.env = IMAPEnv(self)
        for i in range(1, 7):
            self.env.deliver(makeMessage(f"m{i}"))
        self.c = self.env.selected()
        self.c.ok("STORE 2,4,6 +FLAGS.SILENT (\\Flagged)")

    def test_saveAndUse(self) -> None:
        """RFC 5182 section 4's examples: SAVE alone returns nothing; FETCH $, UID FETCH
        $, SEARCH $ with another key, STORE $ and COPY $ act on the saved messages."""
        c = self.c
        out = c.ok("SEARCH RETURN (SAVE) FLAGGED")
        self.assertNotIn(b"* ESEARCH", out)
        self.assertNotIn(b"* SEARCH", out)
        out = c.ok("FETCH $ (UID)")
        self.assertEqual(re.findall(rb"\* (\d+) FETCH \(UID (\d+)\)", out),
                         [(b"2", b"2"), (b"4", b"4"), (b"6", b"6")])
        out = c.ok("UID FETCH $ (FLAGS)")
        self.assertEqual(len(re.findall(rb"\* \d+ FETCH", out)), 3)
        self.assertIn(b"* SEARCH 4 6\r\n", c.ok("SEARCH $ UID 3:*"))
        self.assertIn(b"* SEARCH 2 4 6\r\n", c.ok("UID SEARCH $"))
        c.ok("STORE $ +FLAGS.SILENT (\\Seen)")
        self.assertIn(b"* SEARCH 2 4 6\r\n", c.ok("SEARCH SEEN"))
        out = c.ok("COPY $ Archive")
        self.assertIn(b"[COPYUID ", out)
        self.assertIn(b"(MESSAGES 3)", c.ok("STATUS Archive (MESSAGES)"))

    def test_saveWithResults(self) -> None:
        """SAVE with ALL or COUNT saves every match and returns ESEARCH; SAVE with MIN
        or MAX only (RFC 5182 section 2.4) saves just those."""
        c = self.c
        out = c.cmd("SEARCH RETURN (SAVE COUNT) FLAGGED", tag=b"x")
        self.assertIn(b'* ESEARCH (TAG "x") COUNT 3\r\n', out)
        self.assertIn(b"* SEARCH 2 4 6\r\n", c.ok("SEARCH $"))
        c.ok("SEARCH RETURN (SAVE MIN MAX) FLAGGED")
        self.assertIn(b"* SEARCH 2 6\r\n", c.ok("SEARCH $"))
        c.ok("SEARCH RETURN (SAVE MAX) FLAGGED")
        self.assertIn(b"* SEARCH 6\r\n", c.ok("SEARCH $"))

    def test_expungeAndReselect(self) -> None:
        """$ follows EXPUNGE (sequence numbers shift, expunged messages leave it) and is
        empty after SELECT; an empty $ is OK with nothing, even in an empty mailbox."""
        c = self.c
        c.ok("UID SEARCH RETURN (SAVE) FLAGGED")
        c.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        out = c.ok("FETCH $ (UID)")
        self.assertEqual(re.findall(rb"\* (\d+) FETCH \(UID (\d+)\)", out),
                         [(b"2", b"4"), (b"4", b"6")])
        c.ok("SELECT INBOX")
        out = c.ok("FETCH $ (UID)")
        self.assertNotIn(b"FETCH (", out)
        c.ok("CREATE Empty")
        c.ok("SELECT Empty")
        self.assertNotIn(b"FETCH (", c.ok("FETCH $ FLAGS"))
        self.assertIn(b"* SEARCH\r\n", c.ok("SEARCH $"))

    def test_failedSaveClears(self) -> None:
        """A SEARCH RETURN (SAVE) that fails (BAD) empties $ (RFC 5182 section 2.1)."""
        c = self.c
        c.ok("SEARCH RETURN (SAVE) FLAGGED")
        self.assertIn(b" BAD ", c.cmd("SEARCH RETURN (SAVE) BOGUS"))
        self.assertIn(b"* SEARCH\r\n", c.ok("SEARCH $"))

    def test_badDollar(self) -> None:
        """C{$} combined with numbers is BAD; the session stays in sync."""
        c = self.c
        c.ok("SEARCH RETURN (SAVE) FLAGGED")
        for bad in ("FETCH $,1 FLAGS", "FETCH 1,$ FLAGS", "FETCH $1 FLAGS", "SEARCH $:3",
                    "STORE $$ +FLAGS (\\Seen)"):
            out = c.cmd(bad)
            self.assertTrue(tagged(out, c.lastTag).startswith(c.lastTag + b" BAD"), (bad, out))
            self.assertIn(b" OK ", c.cmd("NOOP"))


class WithinTests(SynchronousTestCase):
    """WITHIN (RFC 5032): OLDER and YOUNGER against the internal date."""

    def test_olderYounger(self) -> None:
        """Of messages appended with internal dates an hour and ten days ago, YOUNGER
        86400 finds the first, OLDER 86400 the second, and they combine with ESEARCH;
        an interval of 0 or not a number is BAD."""
        env = IMAPEnv(self)
        c = env.selected()
        now = time.time()
        for age in (3600, 10 * 86400):
            when = time.strftime("%d-%b-%Y %H:%M:%S +0000", time.gmtime(now - age))
            msg = makeMessage(f"age{age}")
            c.send(b'a APPEND INBOX "%s" {%d+}\r\n' % (when.encode(), len(msg)) + msg + b"\r\n")
        self.assertIn(b"* SEARCH 1\r\n", c.ok("SEARCH YOUNGER 86400"))
        self.assertIn(b"* SEARCH 2\r\n", c.ok("SEARCH OLDER 86400"))
        self.assertIn(b"* SEARCH 1 2\r\n", c.ok("SEARCH YOUNGER 1000000"))
        self.assertIn(b"* SEARCH\r\n", c.ok("SEARCH OLDER 1000000"))
        self.assertIn(b"* SEARCH 2\r\n", c.ok("SEARCH NOT YOUNGER 7200"))
        self.assertIn(b'* ESEARCH (TAG "w") COUNT 1',
                      c.cmd("SEARCH RETURN (COUNT) OLDER 7200", tag=b"w"))
        for bad in ("SEARCH OLDER 0", "SEARCH YOUNGER x", "SEARCH OLDER", "SEARCH YOUNGER -5"):
            self.assertIn(b" BAD ", tagged(c.cmd(bad), c.lastTag), bad)
            self.assertIn(b" OK ", c.cmd("NOOP"))


RFC3502_ONE = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
               b"From: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n"
               b"Subject: afternoon meeting\r\n"
               b"To: mooch@owatagu.example.net\r\n"
               b"Message-Id: <B27397-0100000@Blurdybloop.example.COM>\r\n"
               b"MIME-Version: 1.0\r\n"
               b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n"
               b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n")
RFC3502_TWO = (b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\n"
               b"From: Joe Mooch <mooch@OWaTaGu.example.net>\r\n"
               b"Subject: Re: afternoon meeting\r\n"
               b"To: foobar@blurdybloop.example.com\r\n"
               b"Message-Id: <a0434793874930@OWaTaGu.example.net>\r\n"
               b"MIME-Version: 1.0\r\n"
               b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n"
               b"3:30 is fine with me.\r\n")


class MultiAppendTests(SynchronousTestCase):
    """MULTIAPPEND (RFC 3502): several messages in one APPEND, all stored or none."""

    def setUp(self) -> None:
        """A logged-in session and an empty folder C{saved-messages}."""
        self.env = IMAPEnv(self)
        self.c = self.env.login()
        self.c.ok("CREATE saved-messages")

    def count(self) -> int:
        """Messages in C{saved-messages}, as the store sees them."""
        return len(self.env.folder("saved-messages").scan().messages)

    def test_rfcExample(self) -> None:
        """RFC 3502 section 6's example: two messages with flags and a date, sent with
        synchronising literals; one APPENDUID names both; flags and dates are kept."""
        c = self.c
        out = c.send(b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(RFC3502_ONE))
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = c.send(RFC3502_ONE + b' (\\Seen) " 7-Feb-1994 22:43:04 -0800" {%d}\r\n'
                     % len(RFC3502_TWO))
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = c.send(RFC3502_TWO + b"\r\n")
        m = re.match(rb"A003 OK \[APPENDUID (\d+) 1:2\] Append completed\r\n$", out)
        self.assertIsNotNone(m, out)
        self.assertIn(b"MULTIAPPEND", capabilities(c.cmd("CAPABILITY")))
        c.ok("SELECT saved-messages")
        out = c.ok("FETCH 1:2 (FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(out.count(b"\\Seen"), 2)
        self.assertIn(b'INTERNALDATE " 8-Feb-1994 06:43:04 +0000"', out)
        self.assertIn(b"Subject: Re: afternoon meeting", out)

    def test_literalPlusAndMany(self) -> None:
        """Fifty messages in LITERAL+ literals in one APPEND, some large enough to be
        spooled, get fifty consecutive UIDs in order."""
        c = self.c
        parts = []
        for i in range(50):
            body = makeMessage(f"n{i}", b"y" * (300000 if i % 10 == 0 else 100) + b"\r\n")
            parts.append(b" {%d+}\r\n" % len(body) + body)
        out = c.send(b"a APPEND saved-messages" + b"".join(parts) + b"\r\nb NOOP\r\n")
        self.assertRegex(out, rb"a OK \[APPENDUID \d+ 1:50\]")
        self.assertIn(b"b OK", out)
        c.ok("SELECT saved-messages")
        out = c.ok("FETCH 1:50 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(re.findall(rb"Subject: (n\d+)", out),
                         [b"n%d" % i for i in range(50)])

    def test_allOrNothing(self) -> None:
        """A bad flag, a bad date or an empty message in the second part stores
        neither message; so does a full disk while the second is written."""
        c = self.c
        one = b"{%d+}\r\n" % len(RFC3502_ONE) + RFC3502_ONE
        for second, status in ((b"(\\Bogus) {3+}\r\nabc", b"BAD"),
                               (b'"31-Foo-1994 22:43:04 -0800" {3+}\r\nabc', b"BAD"),
                               (b"{0+}\r\n", b"NO"),
                               (b"{3+}\r\nabc extra", b"BAD")):
            out = c.send(b"a APPEND saved-messages " + one + b" " + second + b"\r\n")
            self.assertTrue(out.startswith(b"a " + status), (second, out))
            self.assertIn(b" OK ", c.cmd("NOOP"))
            self.assertEqual(self.count(), 0)
        from pymaild.store import folder as folderModule

        real = folderModule._writeTmp
        calls = [0]

        def fullDisk(*args: object, **kw: object) -> object:
            calls[0] += 1
            if calls[0] == 2:
                raise OSError(28, "No space left on device")
            return real(*args, **kw)  # type: ignore[arg-type]

        self.patch(folderModule, "_writeTmp", fullDisk)
        out = c.send(b"a APPEND saved-messages " + one + b" " + one + b"\r\n")
        self.assertTrue(out.startswith(b"a NO [OVERQUOTA]"), out)
        self.assertEqual(self.count(), 0)
        folder = self.env.folder("saved-messages")
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(os.listdir(os.path.join(folder.path, sub)), [], sub)
        self.assertIn(b" OK ", c.cmd("NOOP"))

    def test_tooBigOrTooMany(self) -> None:
        """A second message over APPENDLIMIT is NO [TOOBIG] before its continuation and
        the first is not stored; more than MAX_MULTIAPPEND messages are BAD."""
        env = IMAPEnv(self, maxLiteral=1000)
        c = env.login()
        out = c.send(b"a APPEND INBOX {10}\r\n")
        self.assertIn(b"+ ", out)
        out = c.send(b"Subject: x {1001}\r\n")
        self.assertTrue(out.startswith(b"a NO [TOOBIG]"), out)
        self.assertIn(b"b OK", c.send(b"b NOOP\r\n"))
        self.assertEqual(len(env.folder().scan().messages), 0)
        msg = b"Subject: y\r\n\r\nz\r\n"
        out = c.send(b"c APPEND INBOX" + (b" {%d+}\r\n" % len(msg) + msg)
                     * framing.MAX_MULTIAPPEND + b" {1}\r\n")
        self.assertIn(b"c BAD More than", out)
        self.assertNotIn(b"+ ", out)
        self.assertIn(b"d OK", c.send(b"d NOOP\r\n"))
        self.assertEqual(len(env.folder().scan().messages), 0)


class BaseSubjectTests(SynchronousTestCase):
    """RFC 5256 section 2.1's base subject."""

    def test_examples(self) -> None:
        """Leaders (Re, Fw, Fwd with blobs), trailers ((fwd)), [fwd: ...] wrappers,
        encoded words and white space all go; a lone blob stays; reply-or-forward is
        set only when such text was removed."""
        from pymaild.imap.sort import baseSubject

        cases = [
            (b"Hello", "Hello", False),
            (b"Re: Hello", "Hello", True),
            (b"RE: [list] Hello", "Hello", True),
            (b"Re: Re:  re: Zebra", "Zebra", True),
            (b"Fwd: Hello (fwd)", "Hello", True),
            (b"[fwd: Re: hello]", "hello", True),
            (b"[list] [other] apple", "apple", False),
            (b"[blob only]", "[blob only]", False),
            (b"  leading\r\n\tfolded   spaces ", "leading folded spaces", False),
            (b"=?utf-8?q?=C3=A9t=C3=A9?= (fwd)", "\u00e9t\u00e9", True),
            (b"fwd:[y]: kiwi", ": kiwi", True),  # as Dovecot: the blob goes, not the ":"
            (b"Re : odd", "odd", True),
            (b"", "", False),
        ]
        for raw, base, reply in cases:
            self.assertEqual(baseSubject(raw), (base, reply), raw)
        self.assertEqual(baseSubject(None), ("", False))


class SortTests(SynchronousTestCase):
    """SORT (RFC 5256) and SORT=DISPLAY (RFC 5957) at the wire level (the order itself
    is compared with Dovecot's in tests/interop/test_dovecot_sort.py)."""

    def setUp(self) -> None:
        """Four messages: subjects b, Re: a, c, [x] a; sizes growing."""
        self.env = IMAPEnv(self)
        for i, subject in enumerate(("b", "Re: a", "c", "[x] a")):
            self.env.deliver(makeMessage(subject, b"z" * (10 * i) + b"\r\n"))
        self.c = self.env.selected()

    def test_rfcExamples(self) -> None:
        """RFC 5256 section 3's examples: SORT by SUBJECT with a search key, SUBJECT
        with REVERSE DATE, and an empty answer; UID SORT answers UIDs; $ works."""
        c = self.c
        self.assertTrue({b"SORT", b"SORT=DISPLAY"} <= capabilities(c.cmd("CAPABILITY")))
        self.assertIn(b"* SORT 2 4 1 3\r\n", c.ok("SORT (SUBJECT) UTF-8 SINCE 1-Feb-1994"))
        self.assertIn(b"* SORT 4 2 1 3\r\n", c.ok("SORT (SUBJECT REVERSE SIZE) UTF-8 ALL"))
        self.assertIn(b"* SORT 3 1 2 4\r\n", c.ok("SORT (REVERSE SUBJECT) UTF-8 ALL"))
        self.assertIn(b"* SORT\r\n", c.ok('SORT (SUBJECT) US-ASCII TEXT "not in mailbox"'))
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        self.assertIn(b"* SORT 3 2 1\r\n", c.ok("SORT (REVERSE SIZE) UTF-8 ALL"))
        self.assertIn(b"* SORT 4 3 2\r\n", c.ok("UID SORT (REVERSE SIZE) UTF-8 ALL"))
        c.ok("SEARCH RETURN (SAVE) UID 2:3")
        self.assertIn(b"* SORT 3 2\r\n", c.ok("UID SORT (REVERSE SIZE) UTF-8 $"))

    def test_esort(self) -> None:
        """ESORT (RFC 5267): SORT RETURN answers ESEARCH, MIN and MAX the first and last
        in sort order, ALL in sort order; RETURN (SAVE) and unknown options are BAD."""
        c = self.c
        self.assertIn(b"ESORT", capabilities(c.cmd("CAPABILITY")))
        out = c.cmd("SORT RETURN (MIN MAX ALL COUNT) (SUBJECT) UTF-8 ALL", tag=b"e1")
        self.assertIn(b'* ESEARCH (TAG "e1") MIN 2 MAX 3 ALL 2,4,1,3 COUNT 4\r\ne1 OK', out)
        out = c.cmd("UID SORT RETURN () (REVERSE SIZE) UTF-8 ALL", tag=b"e2")
        self.assertIn(b'* ESEARCH (TAG "e2") UID ALL 4,3,2,1\r\n', out)
        for bad in ("SORT RETURN (SAVE) (SUBJECT) UTF-8 ALL",
                    "SORT RETURN (BOGUS) (SUBJECT) UTF-8 ALL", "SORT RETURN (SUBJECT) UTF-8 ALL"):
            out = c.cmd(bad)
            self.assertTrue(tagged(out, c.lastTag).startswith(c.lastTag + b" BAD"), (bad, out))
            self.assertNotIn(b"* ESEARCH", out)
            self.assertIn(b" OK ", c.cmd("NOOP"))

    def test_badInput(self) -> None:
        """1,000 sort keys, an unknown key, REVERSE alone, empty criteria, a missing
        charset or search key are BAD; an unknown charset NO [BADCHARSET]; nothing
        sorted, the session in sync; SORT outside the selected state is BAD."""
        c = self.c
        for bad in ("SORT (" + " ".join(["SUBJECT"] * 1000) + ") UTF-8 ALL",
                    "SORT (BOGUS) UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL", "SORT () UTF-8 ALL",
                    "SORT (SUBJECT) UTF-8", "SORT SUBJECT UTF-8 ALL",
                    "SORT (SUBJECT UTF-8 ALL", "SORT (SUBJECT) UTF-8 BOGUS"):
            out = c.cmd(bad)
            self.assertTrue(tagged(out, c.lastTag).startswith(c.lastTag + b" BAD"),
                            (bad[:60], out[:200]))
            self.assertNotIn(b"* SORT", out)
            self.assertIn(b" OK ", c.cmd("NOOP"))
        for nocharset in ("SORT (SUBJECT) KOI8-R ALL", "SORT (SUBJECT) ALL"):
            out = c.cmd(nocharset)
            self.assertIn(c.lastTag + b" NO [BADCHARSET", out)
        a = self.env.login()
        self.assertIn(b" BAD ", a.cmd("SORT (SUBJECT) UTF-8 ALL"))


def threadMessage(n: int, subject: str, msgid: str | None, refs: str | None = None) -> bytes:
    """A message for THREAD: its own Message-ID and References (sent n hours in)."""
    msg = makeMessage(subject).replace(
        b"Message-ID: <" + subject.encode().replace(b" ", b".") + b"@remote.example>\r\n",
        (b"Message-ID: " + msgid.encode() + b"\r\n" if msgid else b"")
        + (b"References: " + refs.encode() + b"\r\n" if refs else b""))
    return msg.replace(b"Date: Mon, 7 Feb 1994 21:52:25 -0800",
                       b"Date: Mon, 7 Feb 1994 %02d:00:00 +0000" % n)


class ThreadTests(SynchronousTestCase):
    """THREAD (RFC 5256) at the wire level (the threads themselves are compared with
    Dovecot's in tests/interop/test_dovecot_thread.py)."""

    def setUp(self) -> None:
        """A conversation (1 <- 2 <- 3, 1 <- 4), a lone message and a reply whose
        parent is missing, selected."""
        self.env = IMAPEnv(self)
        self.env.deliver(threadMessage(1, "Plans", "<a@x>"),
                         threadMessage(2, "Re: Plans", "<b@x>", "<a@x>"),
                         threadMessage(3, "Re: Plans", "<c@x>", "<a@x> <b@x>"),
                         threadMessage(4, "Re: Plans", "<d@x>", "<a@x>"),
                         threadMessage(5, "Lunch", "<e@x>"),
                         threadMessage(6, "Re: Ghost", "<f@x>", "<gone@x>"))
        self.c = self.env.selected()

    def test_rfcForms(self) -> None:
        """REFERENCES gives C{(1 (2 3)(4))}-style threads, ORDEREDSUBJECT one thread
        per base subject; UID THREAD answers UIDs; nothing found is C{* THREAD}."""
        c = self.c
        caps = capabilities(c.cmd("CAPABILITY"))
        self.assertTrue({b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT"} <= caps)
        self.assertIn(b"* THREAD (1 (2 3)(4))(5)(6)\r\n", c.ok("THREAD REFERENCES UTF-8 ALL"))
        self.assertIn(b"* THREAD (1 (2)(3)(4))(5)(6)\r\n",
                      c.ok("THREAD ORDEREDSUBJECT UTF-8 ALL"))
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        self.assertIn(b"* THREAD ((1 2)(3))(4)(5)\r\n", c.ok("THREAD REFERENCES UTF-8 ALL"))
        self.assertIn(b"* THREAD ((2 3)(4))(5)(6)\r\n",
                      c.ok("UID THREAD REFERENCES UTF-8 ALL"))
        self.assertIn(b"* THREAD\r\n", c.ok('THREAD REFERENCES UTF-8 SUBJECT "none such"'))

    def test_badInput(self) -> None:
        """An unknown algorithm, a missing charset or search key are BAD; an unknown
        charset NO [BADCHARSET]; THREAD outside the selected state BAD; in sync."""
        c = self.c
        for bad in ("THREAD BOGUS UTF-8 ALL", "THREAD REFERENCES UTF-8", "THREAD",
                    "THREAD REFERENCES", "THREAD (REFERENCES) UTF-8 ALL",
                    "THREAD REFERENCES UTF-8 BOGUS"):
            out = c.cmd(bad)
            self.assertTrue(tagged(out, c.lastTag).startswith(c.lastTag + b" BAD"), (bad, out))
            self.assertNotIn(b"* THREAD", out)
            self.assertIn(b" OK ", c.cmd("NOOP"))
        out = c.cmd("THREAD REFERENCES KOI8-R ALL")
        self.assertIn(c.lastTag + b" NO [BADCHARSET", out)
        self.assertIn(b" BAD ", self.env.login().cmd("THREAD REFERENCES UTF-8 ALL"))


class ThreadAlgorithmTests(SynchronousTestCase):
    """The REFERENCES algorithm on hostile input, without a mailbox."""

    def chain(self, n: int, reverse: bool = False) -> list[Any]:
        """C{n} messages, each replying to the one before (delivered in order, or
        newest first)."""
        from pymaild.imap.thread import _Message

        out = [_Message(i, i, float(i), b"S", i > 1, b"m%d@x" % i,
                        [b"m%d@x" % (i - 1)] if i > 1 else []) for i in range(1, n + 1)]
        return out[::-1] if reverse else out

    def test_longChain(self) -> None:
        """A chain of 100,000 replies, in order and newest first, is one thread
        written as one run of numbers (no recursion, no quadratic loop checks)."""
        from pymaild.imap.thread import references, render

        for reverse in (False, True):
            data = render(references(self.chain(100_000, reverse)))
            self.assertEqual(data, b"(" + b" ".join(b"%d" % i for i in range(1, 100_001))
                             + b")")

    def test_loopsAndSelfReferences(self) -> None:
        """Messages referring to themselves and to each other in a ring still give every
        message exactly once."""
        from pymaild.imap.thread import _Message, references, render

        msgs = [_Message(i, i, float(i), b"L", False, b"r%d@x" % i,
                         [b"r%d@x" % ((i % 50) + 1), b"r%d@x" % i]) for i in range(1, 51)]
        data = render(references(msgs))
        self.assertEqual(sorted(int(t) for t in re.findall(rb"\d+", data)), list(range(1, 51)))
        self.assertEqual(data.count(b"("), data.count(b")"))


class SaveDateTests(SynchronousTestCase):
    """SAVEDATE (RFC 8514): when a message was saved to its mailbox, beside the
    internal date a client may set."""

    def test_fetchAndSearch(self) -> None:
        """An APPEND with a 1994 internal date has today's save date; a message another
        program saved in 2001 (its Maildir name says when) has that save date, and
        one whose name says nothing has its internal date; SAVEDBEFORE, SAVEDON,
        SAVEDSINCE and SAVEDATESUPPORTED search them; bad dates are BAD."""
        env = IMAPEnv(self)
        folder = env.folder()
        msg = makeMessage("old")
        path = os.path.join(folder.path, "new", "1000000000.M1P1.elsewhere.example")
        with open(path, "wb") as f:
            f.write(msg)
        other = os.path.join(folder.path, "new", "imported-message")
        with open(other, "wb") as f:
            f.write(msg)
        when = time.mktime((2010, 6, 15, 12, 0, 0, 0, 0, -1))
        os.utime(other, (when, when))
        today = time.strftime("%Y").encode()
        c = env.selected()
        self.assertIn(b"SAVEDATE", capabilities(c.cmd("CAPABILITY")))
        appended = makeMessage("new")
        c.send(b'a APPEND INBOX " 7-Feb-1994 21:52:25 -0800" {%d+}\r\n' % len(appended)
               + appended + b"\r\n")
        c.ok("NOOP")
        out = c.ok("FETCH 1:* (UID SAVEDATE INTERNALDATE)")
        lines = {int(m.group(1)): m.group(2) for m in
                 re.finditer(rb"\* \d+ FETCH \(UID (\d+) (SAVEDATE .*?)\)\r\n", out)}
        byName = {}
        for u, text in lines.items():
            saved = re.search(rb'SAVEDATE "([^"]+)"', text).group(1)  # type: ignore[union-attr]
            internal = re.search(rb'INTERNALDATE "([^"]+)"', text).group(1)  # type: ignore[union-attr]
            byName[u] = (saved, internal)
        years = sorted((s[7:11], i[7:11]) for s, i in byName.values())
        self.assertEqual(years, sorted([(b"2001", today), (b"2010", b"2010"),
                                        (today, b"1994")]), out)
        self.assertIn(b"* SEARCH 1 2\r\n", c.ok("SEARCH SAVEDBEFORE 1-Jan-2011"))
        self.assertIn(b"* SEARCH 3\r\n", c.ok("SEARCH SAVEDSINCE 1-Jan-2011"))
        self.assertIn(b"* SEARCH 3\r\n", c.ok("SEARCH SAVEDON " +
                                              time.strftime("%d-%b-%Y")))
        self.assertIn(b"* SEARCH 3\r\n", c.ok("SEARCH BEFORE 1-Jan-2000 SAVEDSINCE 1-Jan-2011"))
        self.assertIn(b"* SEARCH 1 2 3\r\n", c.ok("SEARCH SAVEDATESUPPORTED"))
        for bad in ("SEARCH SAVEDBEFORE 31-Foo-2011", "SEARCH SAVEDON", "FETCH 1 SAVEDATE[]"):
            self.assertIn(b" BAD ", tagged(c.cmd(bad), c.lastTag), bad)
            self.assertIn(b" OK ", c.cmd("NOOP"))


class ObjectIdTests(SynchronousTestCase):
    """OBJECTID (RFC 8474): MAILBOXID and EMAILID from the GUIDs the store keeps."""

    def test_mailboxId(self) -> None:
        """RFC 8474 section 4.1's example: CREATE answers the new MAILBOXID, RENAME keeps
        it (STATUS and SELECT show the same), another folder has another, a folder
        deleted and created again a new one; the ids survive a new server process."""
        env = IMAPEnv(self)
        c = env.login()
        self.assertIn(b"OBJECTID", capabilities(c.cmd("CAPABILITY")))
        out = c.ok("CREATE foo")
        m = re.search(rb"OK \[MAILBOXID \((F[0-9a-f]{32})\)\] Create completed", out)
        self.assertIsNotNone(m, out)
        foo = m.group(1)  # type: ignore[union-attr]
        bar = re.search(rb"MAILBOXID \(([^)]+)\)", c.ok("CREATE bar")).group(1)  # type: ignore[union-attr]
        self.assertNotEqual(foo, bar)
        c.ok("RENAME foo renamed")
        self.assertIn(b'* STATUS "renamed" (MAILBOXID (%s))' % foo,
                      c.ok("STATUS renamed (MAILBOXID)"))
        self.assertIn(b"* OK [MAILBOXID (%s)]" % foo, c.ok("SELECT renamed"))
        self.assertIn(b'(MAILBOXID (%s) MESSAGES 0)' % bar, c.ok("STATUS bar (MAILBOXID MESSAGES)"))
        c.ok("UNSELECT")
        c.ok("DELETE bar")
        again = re.search(rb"MAILBOXID \(([^)]+)\)", c.ok("CREATE bar")).group(1)  # type: ignore[union-attr]
        self.assertNotEqual(again, bar)
        from pymaild.imap.objectid import mailboxId
        from pymaild.store import MaildirStore
        # A new store sees the tree as a new process does: only what is on disk.
        other = MaildirStore(env.store.root, hostname="other.example.org")
        self.assertEqual(mailboxId(other.account(ALICE).folder("renamed").scan().guid), foo)
        c2 = env.login()
        self.assertIn(b"(MAILBOXID (%s))" % foo, c2.ok("STATUS renamed (MAILBOXID)"))

    def test_emailId(self) -> None:
        """Every message has an EMAILID, COPY and MOVE keep it, other messages have other
        ones; THREADID is NIL; SEARCH EMAILID finds the message in each folder,
        SEARCH THREADID nothing; a value that is not an objectid is BAD."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        c = env.selected()
        out = c.ok("FETCH 1:2 (EMAILID THREADID)")
        ids = re.findall(rb"\* \d+ FETCH \(EMAILID \((M[0-9a-f]{24})\) THREADID NIL\)", out)
        self.assertEqual(len(ids), 2, out)
        self.assertNotEqual(ids[0], ids[1])
        c.ok("CREATE foo")
        c.ok("COPY 1 foo")
        c.ok("MOVE 2 foo")
        self.assertIn(b"* SEARCH 1\r\n", c.ok(b"SEARCH EMAILID " + ids[0]))
        self.assertIn(b"* SEARCH\r\n", c.ok(b"SEARCH EMAILID " + ids[1]))
        c.ok("SELECT foo")
        out = c.ok("UID FETCH 1:* (EMAILID)")
        self.assertEqual(re.findall(rb"EMAILID \((M[0-9a-f]{24})\)", out), ids)
        self.assertIn(b"* SEARCH 2\r\n", c.ok(b"SEARCH EMAILID " + ids[1]))
        self.assertIn(b"* SEARCH\r\n", c.ok("SEARCH THREADID T1"))
        env.store.clearCaches()  # read back from the uidlist, as after a restart
        c2 = env.selected("foo")
        self.assertEqual(re.findall(rb"EMAILID \((M[0-9a-f]{24})\)",
                                    c2.ok("UID FETCH 1:* (EMAILID)")), ids)
        for bad in ("SEARCH EMAILID M.1", "SEARCH EMAILID", 'SEARCH EMAILID "a b"',
                    "FETCH 1 EMAILID[]"):
            self.assertIn(b" BAD ", tagged(c.cmd(bad), c.lastTag), bad)
            self.assertIn(b" OK ", c.cmd("NOOP"))


class PreviewTests(SynchronousTestCase):
    """PREVIEW (RFC 8970)."""

    def test_rfcExamplesAndParts(self) -> None:
        """RFC 8970 section 3's examples: FETCH PREVIEW and PREVIEW (LAZY) give the text
        of the first text part: quoted lines left out, white space made one space, HTML
        markup removed, base64 and quoted-printable decoded, non-ASCII text as a
        literal, at most 256 characters, NIL without a text part; bad modifiers BAD."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("plain", b"> quoted\r\nPreview   text.\r\n\r\nMore.\r\n"))
        env.deliver(makeMessage("html", b"<html><head><style>p{}</style></head><body><p>Hi"
                                b" &amp; bye</p></body></html>\r\n",
                                extra=b"Content-Type: text/html; charset=utf-8\r\n"))
        env.deliver(makeMessage("b64", b"w6l0w6kgYXUgc29sZWls\r\n",
                                extra=b"Content-Type: text/plain; charset=utf-8\r\n"
                                      b"Content-Transfer-Encoding: base64\r\n"))
        env.deliver(makeMessage("long", b"word " * 200 + b"\r\n"))
        env.deliver(makeMessage("image", b"AAAA\r\n",
                                extra=b"Content-Type: image/png\r\n"
                                      b"Content-Transfer-Encoding: base64\r\n"))
        env.deliver(makeMessage("multi", b"--b\r\nContent-Type: application/pdf\r\n\r\nx\r\n"
                                b"--b\r\nContent-Type: text/plain\r\n\r\nInside.\r\n--b--\r\n",
                                extra=b'Content-Type: multipart/mixed; boundary="b"\r\n'))
        c = env.selected()
        self.assertIn(b"PREVIEW", capabilities(c.cmd("CAPABILITY")))
        out = c.ok("FETCH 1 (PREVIEW)")
        self.assertIn(b'* 1 FETCH (PREVIEW "Preview text. More.")', out)
        out = c.ok("FETCH 1:6 (UID PREVIEW (LAZY))")
        self.assertIn(b'* 2 FETCH (UID 2 PREVIEW "Hi & bye")', out)
        self.assertIn(b"* 3 FETCH (UID 3 PREVIEW {%d}\r\n" % len("été au soleil".encode())
                      + "été au soleil".encode() + b")", out)
        long = re.search(rb'\* 4 FETCH \(UID 4 PREVIEW "([^"]*)"\)', out)
        self.assertIsNotNone(long, out)
        self.assertEqual(long.group(1), (b"word " * 52)[:256].rstrip())  # type: ignore[union-attr]
        self.assertIn(b"* 5 FETCH (UID 5 PREVIEW NIL)", out)
        self.assertIn(b'* 6 FETCH (UID 6 PREVIEW "Inside.")', out)
        self.assertNotIn(b"\\Seen", c.ok("FETCH 1 FLAGS"))
        for bad in ("FETCH 1 (PREVIEW (EAGER))", "FETCH 1 (PREVIEW (LAZY)", "FETCH 1 PREVIEW ()"):
            self.assertIn(b" BAD ", tagged(c.cmd(bad), c.lastTag), bad)
            self.assertIn(b" OK ", c.cmd("NOOP"))


class CreateSpecialUseTests(SynchronousTestCase):
    """CREATE-SPECIAL-USE (RFC 6154 section 3)."""

    def test_rfcExample(self) -> None:
        """RFC 6154 section 5.3's example: CREATE MySpecial (USE (\\Drafts)) makes a
        folder LIST shows as \\Drafts (also with the SPECIAL-USE selection option); the
        use follows RENAME, goes with DELETE and stays for a new session."""
        env = IMAPEnv(self)
        c = env.login()
        self.assertIn(b"CREATE-SPECIAL-USE", capabilities(c.cmd("CAPABILITY")))
        c.ok("CREATE MySpecial (USE (\\Drafts))")
        self.assertIn(b'* LIST (\\HasNoChildren \\Drafts) "/" "MySpecial"',
                      c.ok('LIST "" "MySpecial"'))
        self.assertIn(b'"MySpecial"', c.ok('LIST (SPECIAL-USE) "" "*"'))
        c.ok("CREATE MySpecial/Child")
        c.ok("RENAME MySpecial Renamed")
        out = c.ok('LIST "" "*"')
        self.assertIn(b'* LIST (\\HasChildren \\Drafts) "/" "Renamed"', out)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "Renamed/Child"', out)
        c2 = env.login()
        self.assertIn(b'\\Drafts) "/" "Renamed"', c2.ok('LIST "" "Renamed"'))
        c.ok("DELETE Renamed/Child")
        c.ok("DELETE Renamed")
        c.ok("CREATE Renamed")
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "Renamed"', c.ok('LIST "" "Renamed"'))
        c.ok("CREATE Plain (USE ())")
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "Plain"', c.ok('LIST "" "Plain"'))

    def test_refused(self) -> None:
        """\\All, \\Flagged, an unknown attribute or two attributes are NO [USEATTR]
        and create nothing; a malformed or unknown parameter is BAD; in sync."""
        env = IMAPEnv(self)
        c = env.login()
        for line in ("CREATE A (USE (\\All))", "CREATE A (USE (\\Flagged))",
                     "CREATE A (USE (\\Bogus))", "CREATE A (USE (\\Sent \\Trash))"):
            out = c.cmd(line)
            self.assertIn(c.lastTag + b" NO [USEATTR]", out)
            self.assertNotIn(b'"A"', c.ok('LIST "" "*"'))
        for bad in ("CREATE A (USE)", "CREATE A (USE (Drafts))", "CREATE A (FOO (\\Drafts))",
                    "CREATE A USE (\\Drafts)", "CREATE A (USE (\\Drafts)", "CREATE A (USE ()) x"):
            out = c.cmd(bad)
            self.assertTrue(tagged(out, c.lastTag).startswith(c.lastTag + b" BAD"), (bad, out))
            self.assertIn(b" OK ", c.cmd("NOOP"))
        self.assertNotIn(b'"A"', c.ok('LIST "" "*"'))
