"""IMAP extensions of issue 16 at the wire level: the RFCs' examples, bad input (the
RFC's answer, then a command proving the session is still in sync), and what each
extension adds to CAPABILITY."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imap_helpers import IMAPEnv, makeMessage, tagged


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
