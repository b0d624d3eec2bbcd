"""Property-based fuzzing of the IMAP room (hypothesis over the real server stack).

Command streams come from the IMAP grammar in L{tests.fuzzing}: every command pymaild
knows (and some it does not), with mailbox names in every syntax (atoms, quoted,
literals, LITERAL+, modified UTF-7, invalid names), sequence sets with absurd numbers,
FETCH attributes with sections and partial ranges, SEARCH keys nested hundreds deep,
APPEND with flags, dates and literals, IDLE/DONE and AUTHENTICATE continuations. Streams
are valid or mutated (truncated, bytes flipped, CR/LF/NUL injected, literal sizes like
C{{-1}} and C{{99999999999}}, parentheses 300 deep, lines around the 64 KiB limit,
STARTTLS spliced in) and are delivered in chunks of 1-512 octets to an C{IMAPServer}
from C{IMAPFactory} over a real Maildir store, passwd file, portal and auth gate,
unauthenticated, authenticated and with a mailbox selected. The properties are those of
L{tests.fuzzing.Fuzzer.run}: nothing escapes C{dataReceived} or is logged as an error,
responses are well-formed, every tagged command of a valid stream gets exactly one
tagged response in order, a final C{NOOP} is still answered (unless the server said
BYE), no Python internals reach the client, no call keeps the reactor busy over 100 ms.

C{HYPOTHESIS_PROFILE=fuzz-long} (or C{fuzz-soak}) runs many more, random examples.
"""

from __future__ import annotations

import re
import time
import types

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap import framing
from pymaild.imap import server as serverModule
from pymaild.imap.account import ListPattern
from pymaild.imap.mailbox import MailboxView
from pymaild.imap.syntax import SequenceSet
from tests.fuzzing import (
    MESSAGES,
    FuzzCase,
    FuzzInput,
    IMAPFuzzer,
    Violation,
    cheapHashing,
    fuzzCase,
)

LOGGED_IN = ("auth", "selected", "examine")
HUGE = b"9" * 5000


class IMAPFuzzTests(FuzzCase):
    """Random and mutated command streams never break the IMAP server's contract."""

    fuzzerClass = IMAPFuzzer

    @fuzzCase(120)
    @given(inp=IMAPFuzzer.inputs(mutated=False))
    def test_validCommandStreams(self, inp: FuzzInput) -> None:
        """Pipelined grammar-built commands in every session variant, in random chunks:
        each tag gets exactly one tagged response, in order."""
        self.fuzzer.run(inp)

    @fuzzCase(120)
    @given(inp=IMAPFuzzer.inputs(mutated=True))
    def test_mutatedCommandStreams(self, inp: FuzzInput) -> None:
        """Mutated streams (absurd literal sizes, deep parentheses, long lines,
        STARTTLS in the middle...) in every variant: the properties hold."""
        self.fuzzer.run(inp)

    @fuzzCase(100)
    @given(inp=IMAPFuzzer.inputs(mutated=True, variants=LOGGED_IN))
    def test_mutatedAfterLogin(self, inp: FuzzInput) -> None:
        """Mutated streams once logged in, with and without a selected mailbox (FETCH
        streaming, STORE, SEARCH, COPY/MOVE, APPEND, IDLE): the properties hold."""
        self.fuzzer.run(inp)


def _regexMatch(pattern: str, name: str) -> bool:
    """LIST pattern semantics as a (backtracking) regular expression, for comparison."""
    out = []
    for ch in pattern:
        out.append(".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch))
    return re.fullmatch("".join(out), name, re.S) is not None


class ListPatternTests(SynchronousTestCase):
    """LIST patterns match as before, in time linear in the name (was exponential)."""

    @fuzzCase(400)
    @given(pattern=st.text("ab/*%", max_size=8), name=st.text("ab/", max_size=8))
    def test_sameAsRegex(self, pattern: str, name: str) -> None:
        """For any pattern and name, the matcher agrees with the regex translation."""
        self.assertEqual(ListPattern(pattern).fullmatch(name), _regexMatch(pattern, name))

    def test_noBacktracking(self) -> None:
        """C{%a%a...%b} against a 255-character name of C{a}s is answered at once (the
        regex took exponential time: 0.13 s already for 40 characters)."""
        start = time.perf_counter()
        self.assertFalse(ListPattern("%a" * 20 + "%b").fullmatch("a" * 255))
        self.assertTrue(ListPattern("%a" * 255).fullmatch("a" * 255))
        self.assertFalse(ListPattern("%a" * 30000).fullmatch("a" * 255))
        self.assertLess(time.perf_counter() - start, 0.5)


class IMAPFuzzRegressionTests(SynchronousTestCase):
    """Inputs the fuzzer found breaking the server, checked explicitly."""

    def setUp(self) -> None:
        """A fuzzer over a fresh store, with cheap password hashing."""
        self.addCleanup(cheapHashing())
        self.fuzzer = IMAPFuzzer(self.mktemp())

    def run_(self, variant: str, *units: bytes, chunks: tuple[int, ...] = (512,)) -> bytes:
        """Run the untagged C{units} (tagged T0, T1... by the fuzzer); return the output."""
        return self.fuzzer.run(FuzzInput("imap", variant, units, chunks=chunks)).output

    def tagged(self, out: bytes, tag: bytes) -> bytes:
        """The tagged response line for C{tag}."""
        m = re.search(rb"(?:^|\r\n)" + re.escape(tag) + rb" ([^\r\n]*)\r\n", out)
        self.assertIsNotNone(m, out[-1000:])
        assert m is not None
        return m.group(1)

    def test_nonASCIIFlag(self) -> None:
        """A non-ASCII flag in STORE or APPEND is a BAD command, not an internal error."""
        out = self.run_("selected", b"STORE 1 +FLAGS (\xc3\xa9)",
                        b"APPEND INBOX (\\Seen \xc3\xa9) {3}\r\nabc")
        self.assertTrue(self.tagged(out, b"T0").startswith(b"BAD "))
        self.assertTrue(self.tagged(out, b"T1").startswith(b"BAD "))

    def test_numbersOfThousandsOfDigits(self) -> None:
        """Numbers longer than Python converts (4300 digits) in sequence sets, section
        parts, partial ranges and SEARCH sizes are BAD (out of the 32-bit range), not
        internal errors; the session goes on."""
        out = self.run_("selected", b"FETCH " + HUGE + b" FLAGS",
                        b"FETCH 1 BODY[1." + HUGE + b"]", b"FETCH 1 BODY[]<" + HUGE + b".1>",
                        b"SEARCH LARGER " + HUGE, b"UID STORE " + HUGE + b" +FLAGS (\\Seen)",
                        b"FETCH 1 BODY.PEEK[1.4294967296]", b"FETCH 1 BODY.PEEK[1.4294967295]")
        for tag in (b"T0", b"T1", b"T2", b"T3", b"T4", b"T5"):
            self.assertTrue(self.tagged(out, tag).startswith(b"BAD "), tag)
        self.assertTrue(self.tagged(out, b"T6").startswith(b"OK "))
        self.assertIn(b"BODY[1.4294967295] NIL", out)

    def test_literalSizeOfThousandsOfDigits(self) -> None:
        """A literal size of 5000 digits is refused as too large; it used to raise out
        of dataReceived."""
        out = self.run_("loopback", b"LOGIN {" + HUGE + b"}", b"NOOP")
        self.assertEqual(self.tagged(out, b"T0"), b"BAD Literal too large")
        self.assertTrue(self.tagged(out, b"T1").startswith(b"OK "))

    def test_listWithManyWildcards(self) -> None:
        """LIST with fifty C{%} answers at once (the pattern regex backtracked for
        seconds against existing folder names)."""
        out = self.run_("auth", b"CREATE Fuzz/Sub/Deep", b'LIST "" ' + b"%" * 50,
                        b'LIST "" ' + b"%a" * 30 + b"%b")
        self.assertTrue(self.tagged(out, b"T1").startswith(b"OK "))
        self.assertTrue(self.tagged(out, b"T2").startswith(b"OK "))

    def test_sequenceSetOfRepeatedRanges(self) -> None:
        """Sequence sets of thousands of repeated ranges are answered correctly by
        FETCH, STORE and SEARCH, within the reactor time limit."""
        many = b",".join([b"1:*"] * 3000)
        out = self.run_("selected", b"FETCH " + many + b" FLAGS",
                        b"FETCH " + b",".join([b"1"] * 5000) + b" (FLAGS UID)",
                        b"STORE " + many + b" +FLAGS (\\Flagged)",
                        b"SEARCH " + b" ".join([b"1:*"] * 3000))
        for tag in (b"T0", b"T1", b"T2", b"T3"):
            self.assertTrue(self.tagged(out, tag).startswith(b"OK "), tag)
        self.assertEqual(out.count(b" FETCH (FLAGS "), 4 + 1 + 4)
        self.assertIn(b"* SEARCH 1 2 3 4\r\n", out)

    def test_resolveCostsOnePassOverTheMailbox(self) -> None:
        """Resolving 16,000 C{1:*} ranges (a 64 KiB command) against 20,000 messages,
        and testing membership of every message in a 30,000-range set, take one pass:
        they took one pass per range (minutes) before ranges were merged."""
        view = types.SimpleNamespace(uids=list(range(1, 20001)))
        start = time.thread_time()
        pairs = MailboxView.resolve(view, SequenceSet.parse(b",".join([b"1:*"] * 16000)),
                                    False)
        self.assertEqual(len(pairs), 20000)
        self.assertEqual(pairs[-1], (20000, 20000))
        uids = MailboxView.resolve(view, SequenceSet.parse(b"5:3,20000:*,7"), True)
        self.assertEqual(uids, [(3, 3), (4, 4), (5, 5), (7, 7), (20000, 20000)])
        big = SequenceSet.parse(b",".join(b"%d" % (2 * i + 1) for i in range(30000)))
        self.assertEqual(sum(big.contains(n, 20000) for n in range(1, 20001)), 10000)
        self.assertLess(time.thread_time() - start, 2.0)

    def test_mergedSequenceSet(self) -> None:
        """Merging keeps exactly the members: overlapping, adjacent and reversed ranges
        and C{*} become disjoint ascending ranges; membership is a binary search."""
        s = SequenceSet.parse(b"7:5,1,2,3:4,9:*,20,12:10," + b",".join([b"1:*"] * 20000))
        self.assertEqual(s.merged(30), [(1, 30)])
        s = SequenceSet.parse(b"7:5,1,2,9:*,12:10,4")
        self.assertEqual(s.merged(8), [(1, 2), (4, 12)])
        self.assertEqual([n for n in range(0, 15) if s.contains(n, 8)],
                         [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12])
        self.assertEqual(s.merged(20), [(1, 2), (4, 7), (9, 20)])

    def test_overlongLineWhileAuthenticating(self) -> None:
        """An over-long line as the AUTHENTICATE response fails the command and the next
        line is a command again (it used to raise out of dataReceived)."""
        long = b"\xff" * (framing.MAX_LINE + 10)
        out = self.run_("loopback", b"AUTHENTICATE PLAIN\r\n" + long, b"NOOP",
                        chunks=(200, 512))
        self.assertTrue(self.tagged(out, b"T0").startswith(b"BAD "))
        self.assertTrue(self.tagged(out, b"T1").startswith(b"OK "))

    def test_overlongLineWhileIdling(self) -> None:
        """An over-long line during IDLE ends it with BAD and the next line is a command
        again (it used to raise out of dataReceived)."""
        long = b"9" * (framing.MAX_LINE + 10)
        out = self.run_("selected", b"IDLE\r\n" + long, b"NOOP", chunks=(300, 512))
        self.assertTrue(self.tagged(out, b"T0").startswith(b"BAD "))
        self.assertTrue(self.tagged(out, b"T1").startswith(b"OK "))


class IMAPFuzzHarnessTests(SynchronousTestCase):
    """The properties can fail: the harness notices broken servers."""

    def setUp(self) -> None:
        """A fuzzer over a fresh store and a valid logged-in input."""
        self.addCleanup(cheapHashing())
        self.fuzzer = IMAPFuzzer(self.mktemp())
        self.inp = FuzzInput("imap", "selected",
                             (b"NOOP", b"FETCH 1:* (FLAGS BODY.PEEK[])", b"CAPABILITY"),
                             chunks=(7,))

    def test_passes(self) -> None:
        """The unbroken server passes and its output is what a client expects."""
        out = self.fuzzer.run(self.inp).output
        for tag in (b"Prefix.Login", b"Prefix.Select", b"T0", b"T1", b"T2", b"ZZSYNC"):
            self.assertIn(b"\r\n" + tag + b" OK ", out)

    def test_openExchangeCompletedBeforeFinalNoop(self) -> None:
        """A stream cut inside AUTHENTICATE or IDLE is completed (the server's C{+}
        continuation answered) before the final NOOP, which is then answered."""
        for unit in (b"AUTHENTICATE PLAIN", b"IDLE", b"APPEND INBOX {30}"):
            inp = FuzzInput("imap", "selected", (unit,),
                            mutations=(("truncate", len(unit) + 3, 0),))
            out = self.fuzzer.run(inp).output
            self.assertIn(b"\r\nZZSYNC OK ", out)

    def test_taggedLinesInDroppedLiteral(self) -> None:
        """After STARTTLS drops the start of an APPEND, lines of its message that look
        like tagged commands (C{T1 OK fake}) are answered as commands; that is not a
        second response to T1."""
        literal = b"{%d}\r\n" % len(MESSAGES[0]) + MESSAGES[0]
        inp = FuzzInput("imap", "remote-tls", (b"STARTTLS", b"APPEND INBOX " + literal),
                        chunks=(60, 512))
        out = self.fuzzer.run(inp).output
        self.assertIn(b"T0 OK Begin TLS negotiation now\r\n", out)
        self.assertIn(b"\r\nT1 BAD ", out)

    def test_missingTaggedResponseNoticed(self) -> None:
        """Output without one command's tagged response is a violation."""
        record = self.fuzzer.execute(self.inp)
        record.output = record.output.replace(b"T0 OK NOOP completed\r\n", b"")
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_duplicateTaggedResponseNoticed(self) -> None:
        """A command answered twice is a violation."""
        record = self.fuzzer.execute(self.inp)
        record.output = record.output.replace(b"T0 OK NOOP completed\r\n",
                                              b"T0 OK NOOP completed\r\n" * 2)
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_outOfOrderNoticed(self) -> None:
        """Tagged responses out of command order are a violation."""
        record = self.fuzzer.execute(self.inp)
        record.output = record.output.replace(b"T0 OK NOOP completed\r\n", b"").replace(
            b"ZZSYNC OK", b"T0 OK NOOP completed\r\nZZSYNC OK")
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_unansweredFinalNoopNoticed(self) -> None:
        """A server that stops answering (the final NOOP unanswered) is a violation."""
        record = self.fuzzer.execute(self.inp)
        record.output = record.output[: record.output.index(b"ZZSYNC")]
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_stuckServerNoticed(self) -> None:
        """A command that never completes leaves the final NOOP unanswered."""
        from twisted.internet import defer

        def stuck(server: object, tag: bytes, r: object, uid: bool) -> defer.Deferred[None]:
            return defer.Deferred()

        self.patch(serverModule.IMAPServer, "cmd_CAPABILITY", stuck)
        e = self.assertRaises(Violation, self.fuzzer.run, self.inp)
        self.assertIn("final NOOP", str(e))

    def test_serverBugNoticed(self) -> None:
        """An internal error (SERVERBUG, logged) is a violation."""

        def broken(server: object, tag: bytes, r: object, uid: bool) -> None:
            raise RuntimeError("bug")

        self.patch(serverModule.IMAPServer, "cmd_NOOP", broken)
        e = self.assertRaises(Violation, self.fuzzer.run, self.inp)
        self.assertIn("logged error", str(e))
        self.assertTrue(self.flushLoggedErrors(RuntimeError))
