"""Property-based fuzzing of the SMTP room (hypothesis over the real server stack).

Command streams come from the SMTP grammar in L{tests.fuzzing}: HELO/EHLO with odd
names, MAIL/RCPT with every path form (source routes, quoted local parts, address
literals, UTF-8, over-long parts) and parameters (SIZE beyond 64 bits, BODY, SMTPUTF8,
AUTH=, unknown ones), DATA with dot-stuffed, bare-CR/LF, NUL, over-long and smuggling
lines, AUTH PLAIN/LOGIN with and without initial responses, STARTTLS, RSET, VRFY, BDAT.
Streams are valid or mutated (truncated, bytes flipped, CR/LF/NUL injected, lines around
the 4096/12288/16384-octet limits, STARTTLS and end-of-data sequences spliced in) and
delivered in chunks of 1-512 octets to an C{SMTPServer} from C{SMTPFactory} (MX and
submission roles) over a real Maildir store, passwd file, directory, outbound queue,
portal and auth gate, before and after EHLO/AUTH. The properties are those of
L{tests.fuzzing.Fuzzer.run}: nothing escapes C{dataReceived} or is logged as an error,
every command line gets exactly one reply (DATA answered at its final dot, AUTH
exchanges followed through their 334 challenges), multi-line replies keep their code,
the connection closes only after 221 or 421, no Python internals reach the client, no
call keeps the reactor busy over 100 ms.

C{HYPOTHESIS_PROFILE=fuzz-long} (or C{fuzz-soak}) runs many more, random examples.
"""

from __future__ import annotations

from hypothesis import given
from twisted.trial.unittest import SynchronousTestCase

from pymaild.smtp import server as serverModule
from tests.fuzzing import (
    FuzzCase,
    FuzzInput,
    SMTPFuzzer,
    Violation,
    cheapHashing,
    fuzzCase,
)

AFTER_GREETING = ("mx-ehlo", "submission-auth")


class SMTPFuzzTests(FuzzCase):
    """Random and mutated command streams never break the SMTP server's contract."""

    fuzzerClass = SMTPFuzzer

    @fuzzCase(120)
    @given(inp=SMTPFuzzer.inputs(mutated=False))
    def test_validCommandStreams(self, inp: FuzzInput) -> None:
        """Pipelined grammar-built command streams in every variant, in random chunks:
        every command is answered in order, DATA at its final dot."""
        self.fuzzer.run(inp)

    @fuzzCase(120)
    @given(inp=SMTPFuzzer.inputs(mutated=True))
    def test_mutatedCommandStreams(self, inp: FuzzInput) -> None:
        """Mutated streams (truncation, CR/LF/NUL, long lines, STARTTLS and end-of-data
        sequences in the middle) in every variant: the properties hold."""
        self.fuzzer.run(inp)

    @fuzzCase(100)
    @given(inp=SMTPFuzzer.inputs(mutated=True, variants=AFTER_GREETING))
    def test_mutatedAfterGreeting(self, inp: FuzzInput) -> None:
        """Mutated streams after EHLO, and after AUTH on the submission role (mail
        transactions, delivery and relaying into the queue): the properties hold."""
        self.fuzzer.run(inp)


class SMTPFuzzRegressionTests(SynchronousTestCase):
    """Inputs at the edges the fuzzer explores, checked explicitly."""

    def setUp(self) -> None:
        """A fuzzer over a fresh store, with cheap password hashing."""
        self.addCleanup(cheapHashing())
        self.fuzzer = SMTPFuzzer(self.mktemp())

    def run_(self, variant: str, data: bytes, chunks: tuple[int, ...] = (512,)) -> bytes:
        """Run C{data} as one unit and return the server's output."""
        return self.fuzzer.run(FuzzInput("smtp", variant, (data,), chunks=chunks)).output

    def test_startTLSDropsSplitCRLF(self) -> None:
        """A CR left behind STARTTLS in the same read is dropped with the rest: the next
        read starts a fresh line (here a bare LF), answered on its own."""
        out = self.run_("mx-remote-tls", b"STARTTLS\r\nDATA\r\nNOOP\r\nNOOP\r\n",
                        chunks=(15, 512))
        self.assertIn(b"220 2.0.0 Ready to start TLS\r\n", out)
        self.assertIn(b"500 5.5.2 Error: bare CR, LF or NUL in command\r\n", out)
        self.assertTrue(out.endswith(b"250 2.0.0 Ok\r\n"))

    def test_dataEndAcrossReads(self) -> None:
        """The end-of-data dot split over reads one octet at a time still ends DATA, and
        a command pipelined after it is answered."""
        out = self.run_("mx-ehlo", b"MAIL FROM:<x@remote.example>\r\n"
                                   b"RCPT TO:<alice@example.org>\r\nDATA\r\n"
                                   b"Subject: s\r\n\r\n.x\r\n.\r\nNOOP\r\n", chunks=(1,))
        self.assertIn(b"354 ", out)
        self.assertIn(b"250 2.0.0 Ok: queued as ", out)
        self.assertTrue(out.endswith(b"250 2.0.0 Ok\r\n"))

    def test_hugeSize(self) -> None:
        """SIZE= with 4000 digits (a command line within the limit) is a syntax error,
        not an internal error."""
        out = self.run_("mx-ehlo", b"MAIL FROM:<x@remote.example> SIZE=" + b"9" * 4000
                        + b"\r\nNOOP\r\n")
        self.assertIn(b"501 5.5.4 Bad SIZE parameter\r\n", out)


class SMTPFuzzHarnessTests(SynchronousTestCase):
    """The properties can fail: the harness notices broken servers."""

    def setUp(self) -> None:
        """A fuzzer over a fresh store and a valid input with a mail transaction."""
        self.addCleanup(cheapHashing())
        self.fuzzer = SMTPFuzzer(self.mktemp())
        self.inp = FuzzInput("smtp", "mx-ehlo", (
            b"MAIL FROM:<x@remote.example>\r\n", b"RCPT TO:<alice@example.org>\r\n",
            b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n", b"NOOP\r\n"), chunks=(9,))

    def test_passes(self) -> None:
        """The unbroken server passes and delivers the message."""
        out = self.fuzzer.run(self.inp).output
        self.assertIn(b"250 2.0.0 Ok: queued as", out)

    def test_missingReplyNoticed(self) -> None:
        """Output with a reply removed is a violation."""
        record = self.fuzzer.execute(self.inp)
        record.output = record.output.replace(b"250 2.1.5 Ok\r\n", b"")
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_extraReplyNoticed(self) -> None:
        """An unsolicited extra reply is a violation."""
        record = self.fuzzer.execute(self.inp)
        record.output += b"250 2.0.0 Ok\r\n"
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_brokenMultilineNoticed(self) -> None:
        """A multi-line reply that changes its code is a violation."""
        record = self.fuzzer.execute(self.inp)
        record.output = record.output.replace(b"250-PIPELINING", b"251-PIPELINING")
        self.assertRaises(Violation, self.fuzzer.verify, record)

    def test_closeWithoutGoodbyeNoticed(self) -> None:
        """Closing the connection without 221 or 421 is a violation."""

        def hangUp(server: serverModule.SMTPServer, arg: bytes) -> None:
            server.transport.loseConnection()

        self.patch(serverModule._ESMTPCore, "_COMMANDS",
                   {**serverModule._ESMTPCore._COMMANDS, b"NOOP": hangUp})
        self.assertRaises(Violation, self.fuzzer.run, self.inp)

    def test_internalErrorNoticed(self) -> None:
        """A command that fails inside the server (logged, answered 451) is a violation."""

        def broken(server: object, arg: bytes) -> None:
            raise RuntimeError("bug")

        self.patch(serverModule._ESMTPCore, "_COMMANDS",
                   {**serverModule._ESMTPCore._COMMANDS, b"NOOP": broken})
        e = self.assertRaises(Violation, self.fuzzer.run, self.inp)
        self.assertIn("logged error", str(e))
        self.assertTrue(self.flushLoggedErrors(RuntimeError))
