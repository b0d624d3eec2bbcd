"""Property-based fuzzing of the POP3 room (hypothesis over the real server stack).

Command streams come from the POP3 grammar in L{tests.fuzzing} (every command of RFC
1939/2449/5034 and the ones pymaild refuses, with absurd message numbers, odd user
names and SASL responses), valid or mutated (truncated, bytes flipped, CR/LF/NUL
injected, lines around the 8190-octet limit, STLS spliced in), and are delivered in
chunks of 1-512 octets to a C{POP3Server} from C{POP3Factory} over a real Maildir store,
passwd file, portal and auth gate, before and after login. The properties are those of
L{tests.fuzzing.Fuzzer.run}: nothing escapes C{dataReceived} or is logged as an error,
every line gets its reply (multi-line replies correctly terminated) unless the client
quit, no Python internals reach the client, no call keeps the reactor busy over 100 ms.

C{HYPOTHESIS_PROFILE=fuzz-long} (or C{fuzz-soak}) runs many more, random examples.
"""

from __future__ import annotations

import time

from hypothesis import given
from twisted.trial.unittest import SynchronousTestCase

from pymaild.pop3 import server as serverModule
from pymaild.pop3.lines import MAX_LINE
from tests.fuzzing import (
    FuzzCase,
    FuzzInput,
    POP3Fuzzer,
    Step,
    Violation,
    cheapHashing,
    fuzzCase,
)

LOGIN = ("login", "login-sasl")


class POP3FuzzTests(FuzzCase):
    """Random and mutated command streams never break the POP3 server's contract."""

    fuzzerClass = POP3Fuzzer

    @fuzzCase(150)
    @given(inp=POP3Fuzzer.inputs(mutated=False))
    def test_validCommandStreams(self, inp: FuzzInput) -> None:
        """Pipelined grammar-built command streams in every session variant, in random
        chunks: every line is answered in order and the properties hold."""
        self.fuzzer.run(inp)

    @fuzzCase(150)
    @given(inp=POP3Fuzzer.inputs(mutated=True))
    def test_mutatedCommandStreams(self, inp: FuzzInput) -> None:
        """Mutated streams (truncation, flips, CR/LF/NUL, long lines, STLS in the
        middle) before and after login: the properties hold."""
        self.fuzzer.run(inp)

    @fuzzCase(100)
    @given(inp=POP3Fuzzer.inputs(mutated=True, variants=LOGIN))
    def test_mutatedAfterLogin(self, inp: FuzzInput) -> None:
        """Mutated streams in the TRANSACTION state (RETR/TOP streaming, DELE, QUIT
        committing deletions): the properties hold."""
        self.fuzzer.run(inp)


class POP3FuzzRegressionTests(SynchronousTestCase):
    """Inputs at the edges the fuzzer explores, checked explicitly."""

    def setUp(self) -> None:
        """A fuzzer over a fresh store, with cheap password hashing."""
        self.addCleanup(cheapHashing())
        self.fuzzer = POP3Fuzzer(self.mktemp())

    def run_(self, variant: str, *lines: bytes, chunks: tuple[int, ...] = (512,)) -> bytes:
        """Run C{lines} (CRLF added) and return the server's output."""
        units = tuple(line + b"\r\n" for line in lines)
        return self.fuzzer.run(FuzzInput("pop3", variant, units, chunks=chunks)).output

    def test_lineAtTheLimitSplitBeforeLF(self) -> None:
        """A line of exactly the maximum length whose CR and LF arrive in different
        reads is a command like any other, not an over-long line (CAPA followed by
        spaces up to the limit gets the capability list)."""
        line = b"CAPA" + b" " * (MAX_LINE - 4)
        stream = line + b"\r\n"
        out = self.run_("loopback", line, chunks=(len(stream) - 1, 1))
        self.assertIn(b"+OK Capability list follows\r\n", out)
        self.assertNotIn(b"Line too long", out)

    def test_hugeMessageNumbers(self) -> None:
        """Message numbers of thousands of digits, signs and non-ASCII digits get -ERR."""
        out = self.run_("login", b"RETR " + b"9" * 5000, b"TOP 1 " + b"9" * 5000,
                        b"DELE -1", b"LIST \xd9\xa1", b"STAT")
        self.assertEqual(out.count(b"-ERR"), 4)
        self.assertIn(b"+OK 4 ", out)

    def test_stlsPipelinedPlaintextDropped(self) -> None:
        """Commands pipelined behind STLS in the same read get no answer; the next read
        is served (under TLS)."""
        inp = FuzzInput("pop3", "remote-tls", (b"STLS\r\nUSER x\r\nPASS y\r\n", b"CAPA\r\n"),
                        chunks=(22, 512))
        out = self.fuzzer.run(inp).output
        self.assertIn(b"+OK Begin TLS negotiation now.\r\n", out)
        self.assertNotIn(b"USER x", out)
        self.assertEqual(out.count(b"\r\n+OK") + out.count(b"\r\n-ERR"), 2)


class POP3FuzzHarnessTests(SynchronousTestCase):
    """The properties can fail: the harness notices broken servers."""

    def setUp(self) -> None:
        """A fuzzer over a fresh store, with cheap password hashing."""
        self.addCleanup(cheapHashing())
        self.fuzzer = POP3Fuzzer(self.mktemp())
        self.inp = FuzzInput("pop3", "login", (b"NOOP\r\n", b"CAPA\r\n", b"STAT\r\n"),
                             chunks=(5,))

    def test_missingReplyNoticed(self) -> None:
        """Output with a reply removed is a violation."""
        record = self.fuzzer.execute(self.inp)
        self.fuzzer.verify(record)
        record.output = record.output.replace(b"+OK\r\n", b"", 1)
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_brokenMultilineNoticed(self) -> None:
        """A multi-line reply without its terminator is a violation."""
        record = self.fuzzer.execute(self.inp)
        record.output = record.output.replace(b"\r\n.\r\n", b"\r\n", 1)
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_tracebackTextNoticed(self) -> None:
        """Exception text in a reply is a violation."""
        record = self.fuzzer.execute(self.inp)
        record.output = record.output.replace(b"+OK\r\n", b"-ERR KeyError: 'x'\r\n", 1)
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_loggedErrorNoticed(self) -> None:
        """A command that fails inside the server (logged, answered -ERR) is a violation."""

        def broken(server: object) -> None:
            raise RuntimeError("bug")

        self.patch(serverModule.POP3Server, "do_NOOP", broken)
        e = self.assertRaises(Violation, self.fuzzer.run, self.inp)
        self.assertIn("logged error", str(e))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_escapingExceptionNoticed(self) -> None:
        """An exception escaping dataReceived is a violation."""

        def broken(server: object, data: bytes) -> None:
            raise RuntimeError("bug")

        self.patch(serverModule.POP3Server, "dataReceived", broken)
        e = self.assertRaises(Violation, self.fuzzer.run, self.inp)
        self.assertIn("exception escaped", str(e))

    def test_slowCommandNoticed(self) -> None:
        """A command that blocks the reactor for longer than the limit is a violation,
        also on the second try."""
        original = serverModule.POP3Server.do_NOOP

        def slow(server: serverModule.POP3Server) -> None:
            time.sleep(0.12)
            original(server)

        self.patch(serverModule.POP3Server, "do_NOOP", slow)
        e = self.assertRaises(Violation, self.fuzzer.run, self.inp)
        self.assertIn("kept the reactor busy", str(e))

    def test_busyCommandNoticed(self) -> None:
        """A command that computes for longer than the limit is a violation."""
        original = serverModule.POP3Server.do_NOOP

        def busy(server: serverModule.POP3Server) -> None:
            end = time.thread_time() + 0.12
            while time.thread_time() < end:
                pass
            original(server)

        self.patch(serverModule.POP3Server, "do_NOOP", busy)
        e = self.assertRaises(Violation, self.fuzzer.run, self.inp)
        self.assertIn("kept the reactor busy", str(e))

    def test_preemptionIsNotBusy(self) -> None:
        """A step that took long on the wall clock but used little CPU and never waited
        was only preempted by other processes: not slow. CPU or a wait makes it slow."""
        self.assertFalse(Step("feed", 0, 0, seconds=0.3, cpu=0.01, waits=0).slow())
        self.assertTrue(Step("feed", 0, 0, seconds=0.3, cpu=0.06, waits=0).slow())
        self.assertTrue(Step("feed", 0, 0, seconds=0.3, cpu=0.0, waits=1).slow())
        self.assertFalse(Step("feed", 0, 0, seconds=0.09, cpu=0.09, waits=3).slow())

    def test_loginPrefixWorks(self) -> None:
        """The logged-in variants really are logged in (STAT answers +OK)."""
        out = self.fuzzer.run(self.inp).output
        self.assertIn(b"+OK Logged in", out)
        self.assertIn(b"+OK 4 ", out)
