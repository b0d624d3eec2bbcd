"""IMAP framing and session rules: pipelining, literals, limits, IDLE, timeouts, errors."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap import framing, idle
from tests.test_imap_helpers import IMAPEnv, makeMessage, tagged, untagged


class FramingTests(SynchronousTestCase):
    """Lines, literals and their limits."""

    def test_pipelinedCommandsInOrder(self) -> None:
        """Several commands in one packet are answered in order."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.login()
        out = c.send(b"a SELECT INBOX\r\nb FETCH 1 UID\r\nc NOOP\r\nd LOGOUT\r\n")
        idx = [out.index(t) for t in (b"a OK", b"b OK", b"c OK", b"d OK")]
        self.assertEqual(idx, sorted(idx))
        self.assertLess(out.index(b"* 1 FETCH (UID 1)"), out.index(b"b OK"))

    def test_commandSplitAcrossPackets(self) -> None:
        """A command line may arrive byte by byte."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        out = b""
        for b in b"x1 NOOP\r\n":
            out += c.send(bytes([b]))
        self.assertEqual(out, b"x1 OK NOOP completed\r\n")

    def test_literalPlusInPipeline(self) -> None:
        """LITERAL+ literals inside pipelined commands are parsed, CRLFs in them too."""
        env = IMAPEnv(self)
        c = env.login()
        msg = b"Subject: x\r\n\r\nline\r\nb NOOP\r\n"
        out = c.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\nc NOOP\r\n")
        self.assertIn(b"a OK [APPENDUID", out)
        self.assertNotIn(b"b OK", out)
        self.assertIn(b"c OK", out)

    def test_lineTooLong(self) -> None:
        """An over-long line gets BAD and the session stays usable."""
        env = IMAPEnv(self)
        c = env.login()
        out = c.send(b"a NOOP " + b"x" * (framing.MAX_LINE + 10) + b"\r\nb NOOP\r\n")
        self.assertIn(b"a BAD Line too long", out)
        self.assertIn(b"b OK", out)
        self.assertFalse(c.transport.disconnecting)

    def test_lineTooLongInPieces(self) -> None:
        """An over-long line arriving in pieces is discarded up to its end, then BAD."""
        env = IMAPEnv(self)
        c = env.login()
        out = c.send(b"a NOOP ")
        for _ in range(10):
            out += c.send(b"y" * 10000)
        out += c.send(b"\r\nb NOOP\r\n")
        self.assertIn(b"a BAD Line too long", out)
        self.assertIn(b"b OK", out)

    def test_negativeLiteral(self) -> None:
        """{-100} and {abc} are BAD, not a crash."""
        env = IMAPEnv(self)
        c = env.login()
        self.assertIn(b" BAD ", c.cmd("LOGIN {-100}"))
        self.assertIn(b" BAD ", c.cmd("SELECT {abc}"))
        self.assertIn(b" OK ", c.cmd("NOOP"))

    def test_absurdLiteral(self) -> None:
        """A gigantic string literal is refused with BAD before any continuation."""
        env = IMAPEnv(self)
        c = env.login()
        out = c.cmd("SELECT {99999999999999999999}")
        self.assertIn(b" BAD ", out)
        self.assertNotIn(b"+ ", out)
        c2 = env.connect()
        c2.take()
        out = c2.cmd("LOGIN {100000}")
        self.assertIn(b" BAD ", out)

    def test_nestingDepth(self) -> None:
        """Deeply nested parentheses are BAD."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.selected()
        out = c.cmd("SEARCH " + "(" * 100 + "ALL" + ")" * 100)
        self.assertIn(b" BAD ", tagged(out, c.lastTag))
        self.assertIn(b"* SEARCH 1", c.cmd("SEARCH ((ALL))"))

    def test_unknownAndMalformed(self) -> None:
        """Unknown commands, missing tags and empty lines never crash the session."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        self.assertIn(b"a BAD", c.send(b"a FROB\r\n"))
        self.assertIn(b"* BAD", c.send(b"NOOP\r\n"))
        self.assertEqual(c.send(b"\r\n"), b"")
        self.assertIn(b"b BAD", c.send(b"b UID FROB 1\r\n"))
        self.assertIn(b"c OK", c.send(b"c NOOP\r\n"))

    def test_logout(self) -> None:
        """LOGOUT says BYE, OK, and closes; later input is ignored."""
        env = IMAPEnv(self)
        c = env.login()
        out = c.cmd("LOGOUT")
        self.assertEqual(untagged(out), [b"* BYE Logging out"])
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(c.send(b"x NOOP\r\n"), b"")

    def test_idleTimeout(self) -> None:
        """An idle unauthenticated client is logged out with BYE."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        env.clock.advance(61)
        self.assertIn(b"* BYE", c.take())
        self.assertTrue(c.transport.disconnecting)


class IdleTests(SynchronousTestCase):
    """IDLE ends only with DONE and pushes changes."""

    def test_idleDone(self) -> None:
        """IDLE answers '+ idling' and DONE ends it with OK."""
        env = IMAPEnv(self)
        c = env.selected()
        self.assertEqual(c.cmd("IDLE"), b"+ idling\r\n")
        self.assertIn(c.lastTag + b" OK IDLE terminated", c.send(b"DONE\r\n"))

    def test_idleOtherLineIsBad(self) -> None:
        """Any line other than DONE ends IDLE with BAD."""
        env = IMAPEnv(self)
        c = env.selected()
        c.cmd("IDLE")
        out = c.send(b"x NOOP\r\n")
        self.assertIn(c.lastTag + b" BAD", out)
        self.assertIn(b"y OK", c.send(b"y NOOP\r\n"))

    def test_idleDeliveryPushed(self) -> None:
        """A delivery announced through the registry reaches an IDLE session at once."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.selected()
        c.cmd("IDLE")
        env.deliver(makeMessage("b"))
        env.registry.mailDelivered(["alice@example.org"])
        self.assertIn(b"* 2 EXISTS", c.take())
        c.send(b"DONE\r\n")

    def test_idlePollsAndKeepalive(self) -> None:
        """While IDLE the folder is rescanned periodically and a keepalive is sent."""
        env = IMAPEnv(self)
        c = env.selected()
        c.cmd("IDLE")
        env.deliver(makeMessage("b"))
        env.clock.advance(idle.IDLE_POLL + 1)
        self.assertIn(b"* 1 EXISTS", c.take())
        for _ in range(4):
            env.clock.advance(idle.IDLE_POLL)
        self.assertIn(b"* OK Still here", c.take())
        self.assertIn(b"OK IDLE", c.send(b"DONE\r\n"))

    def _keepalives(self, env: IMAPEnv, c: Any, seconds: int) -> list[float]:
        """The clock times at which C{* OK Still here} arrived over C{seconds}."""
        times = []
        for _ in range(seconds):
            env.clock.advance(1)
            out = c.take()
            times += [env.clock.seconds()] * out.count(b"* OK Still here\r\n")
        return times

    def test_keepaliveEveryTwoMinutes(self) -> None:
        """By default C{* OK Still here} comes every 120 s (Dovecot's default): none in
        the first two minutes less one poll period, then one per 120 s, and DONE still
        ends the IDLE in sync."""
        env = IMAPEnv(self)
        c = env.selected()
        self.assertEqual(c.cmd("IDLE"), b"+ idling\r\n")
        start = env.clock.seconds()
        times = self._keepalives(env, c, 600)
        self.assertEqual(len(times), 5)
        gaps = [b - a for a, b in zip([start, *times[:-1]], times, strict=True)]
        for gap in gaps[1:]:
            self.assertEqual(gap, 120)
        self.assertGreater(gaps[0], 120 - idle.IDLE_POLL)
        self.assertLessEqual(gaps[0], 120)
        self.assertIn(c.lastTag + b" OK IDLE terminated", c.send(b"DONE\r\n"))
        self.assertEqual(self._keepalives(env, c, 300), [])
        self.assertIn(b" OK ", c.cmd("NOOP"))

    def test_keepaliveConfigured(self) -> None:
        """C{imap.idle_keepalive} sets the interval: 5 s gives a keepalive every 5 s, in
        the authenticated state too."""
        env = IMAPEnv(self, imap={"idle_keepalive": 5})
        c = env.login()
        c.cmd("IDLE")
        times = self._keepalives(env, c, 60)
        self.assertEqual(len(times), 12)
        self.assertEqual({b - a for a, b in zip(times[:-1], times[1:], strict=True)}, {5})
        self.assertIn(b"OK IDLE", c.send(b"DONE\r\n"))

    def test_keepaliveOff(self) -> None:
        """C{imap.idle_keepalive = 0} sends none; the folder is still polled."""
        env = IMAPEnv(self, imap={"idle_keepalive": 0})
        c = env.selected()
        c.cmd("IDLE")
        self.assertEqual(self._keepalives(env, c, 600), [])
        env.deliver(makeMessage("b"))
        env.clock.advance(idle.IDLE_POLL + 1)
        self.assertIn(b"* 1 EXISTS", c.take())
        self.assertIn(b"OK IDLE", c.send(b"DONE\r\n"))

    def test_idleSeesOtherSessionsExpunge(self) -> None:
        """Another session's EXPUNGE reaches the IDLE session as EXPUNGE."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        idler = env.selected()
        other = env.selected()
        idler.cmd("IDLE")
        other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertIn(b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))", idler.take())
        other.ok("EXPUNGE")
        self.assertIn(b"* 1 EXPUNGE", idler.take())
        idler.send(b"DONE\r\n")

    def test_idleInAuthState(self) -> None:
        """IDLE works without a selected mailbox."""
        env = IMAPEnv(self)
        c = env.login()
        self.assertEqual(c.cmd("IDLE"), b"+ idling\r\n")
        self.assertIn(b"OK IDLE", c.send(b"done\r\n"))


class RobustnessTests(SynchronousTestCase):
    """Random command soup never reaches an internal error."""

    def test_randomCommands(self) -> None:
        """Seeded random commands: no SERVERBUG answer and no logged error."""
        import random

        from twisted.python import log

        errors: list[dict] = []

        def observer(e: dict) -> None:
            if e.get("isError"):
                errors.append(e)

        log.addObserver(observer)
        self.addCleanup(log.removeObserver, observer)
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        rng = random.Random(1)
        cmds = [b"FETCH", b"STORE", b"SEARCH", b"UID", b"SELECT", b"APPEND", b"LIST", b"COPY",
                b"MOVE", b"STATUS", b"EXPUNGE", b"CREATE", b"RENAME", b"IDLE", b"ID",
                b"ENABLE", b"LSUB", b"NOOP", b"AUTHENTICATE"]
        toks = [b"1", b"*", b"1:*", b"(", b")", b"[", b"]", b"BODY[", b"BODY.PEEK[1.2.MIME]<0.5>",
                b"FLAGS", b"+FLAGS", b"\\Seen", b'"', b'"x"', b"{3}", b"{0}", b"{5+}", b"INBOX",
                b"NIL", b"CHARSET", b"UTF-8", b"OR", b"NOT", b"HEADER", b"\x00", b"\xff", b"%",
                b"&", b"-1", b"4294967296", b"<1.2>", b"ENVELOPE", b"BODYSTRUCTURE", b"Trash",
                b"RETURN", b"PLAIN"]
        for i in range(200):
            c = env.selected() if i % 3 else env.login()
            for _ in range(15):
                line = b"x " + rng.choice(cmds) + b" " + b" ".join(
                    rng.choice(toks) for _ in range(rng.randint(0, 8)))
                out = c.send(line + b"\r\n")
                self.assertNotIn(b"SERVERBUG", out, line)
                if rng.random() < 0.3:
                    c.send(b"abc\r\n")
                if c.transport.disconnecting:
                    break
            c.lose()
        self.assertEqual(errors, [])
