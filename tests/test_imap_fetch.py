"""FETCH at the wire: data items, exact partial ranges, \\Seen on non-PEEK, sections,
streaming of large bodies with back-pressure, and vanished messages.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.test_imap_helpers import IMAPEnv, makeMessage, tagged

MULTI = (
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.net>\r\n"
    b"To: a@example.org, Group: b@example.org, c@example.org;\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"part one\r\n"
    b"--XX\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b"From: x@y.example\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--XX--\r\n"
)


def literalOf(out: bytes, label: bytes) -> bytes:
    """The literal value following C{label} in a FETCH response."""
    i = out.index(label + b" {")
    j = out.index(b"}\r\n", i)
    n = int(out[i + len(label) + 2 : j])
    return out[j + 3 : j + 3 + n]


class FetchItemTests(SynchronousTestCase):
    """Data items and sections."""

    def setUp(self) -> None:
        """A store with messages and a session on it."""
        self.env = IMAPEnv(self)
        self.msg = makeMessage("hello", b"line one\r\nline two\r\n")
        self.env.deliver(self.msg, MULTI)
        self.c = self.env.selected()

    def test_bodyPeekWhole(self) -> None:
        """BODY.PEEK[] returns the exact message and does not set \\Seen."""
        out = self.c.cmd("FETCH 1 BODY.PEEK[]")
        self.assertEqual(literalOf(out, b"BODY[]"), self.msg)
        self.assertNotIn(b"\\Seen", out)
        self.assertNotIn(b"\\Seen", self.c.cmd("FETCH 1 FLAGS"))

    def test_bodySetsSeen(self) -> None:
        """Non-PEEK BODY[] sets \\Seen on disk and reports FLAGS in the same response."""
        out = self.c.cmd("FETCH 1 BODY[]")
        self.assertRegex(out, rb"FLAGS \(\\Seen \\Recent\)\)\r\n")
        self.assertIn("\\Seen", self.env.folder().scan().messages[0].flags)

    def test_rfc822Variants(self) -> None:
        """RFC822 sets \\Seen; RFC822.HEADER does not; RFC822.TEXT is the body."""
        out = self.c.cmd("FETCH 2 RFC822.HEADER")
        self.assertTrue(literalOf(out, b"RFC822.HEADER").endswith(b"\r\n\r\n"))
        self.assertNotIn(b"\\Seen", out)
        out = self.c.cmd("FETCH 1 RFC822.TEXT")
        self.assertEqual(literalOf(out, b"RFC822.TEXT"), b"line one\r\nline two\r\n")
        self.assertIn(b"\\Seen", out)
        out = self.c.cmd("FETCH 2 RFC822")
        self.assertEqual(literalOf(out, b"RFC822"), MULTI)

    def test_partial(self) -> None:
        """BODY[]<n.m> sends exactly m octets from n, labelled <n>; past the end is empty."""
        out = self.c.cmd("FETCH 1 BODY.PEEK[]<5.10>")
        self.assertEqual(literalOf(out, b"BODY[]<5>"), self.msg[5:15])
        size = len(self.msg)
        out = self.c.cmd(f"FETCH 1 BODY.PEEK[]<{size - 3}.100>")
        self.assertEqual(literalOf(out, b"BODY[]<%d>" % (size - 3)), self.msg[-3:])
        out = self.c.cmd(f"FETCH 1 BODY.PEEK[]<{size + 10}.5>")
        self.assertIn(b"BODY[]<%d> {0}\r\n" % (size + 10), out)
        out = self.c.cmd("FETCH 1 BODY.PEEK[TEXT]<2.4>")
        self.assertEqual(literalOf(out, b"BODY[TEXT]<2>"), b"ne o")

    def test_headerFields(self) -> None:
        """HEADER.FIELDS and .NOT select fields case-insensitively and end with CRLF."""
        out = self.c.cmd("FETCH 1 BODY.PEEK[HEADER.FIELDS (subject FROM)]")
        value = literalOf(out, b"BODY[HEADER.FIELDS (subject FROM)]")
        self.assertEqual(
            value, b"From: Carol <carol@remote.example>\r\nSubject: hello\r\n\r\n"
        )
        out = self.c.cmd("FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (Subject From To Date)]")
        value = literalOf(out, b"BODY[HEADER.FIELDS.NOT (Subject From To Date)]")
        self.assertEqual(value, b"Message-ID: <hello@remote.example>\r\n\r\n")

    def test_mimeParts(self) -> None:
        """Numbered parts, MIME headers and encapsulated message sections."""
        c = self.c
        self.assertEqual(literalOf(c.cmd("FETCH 2 BODY.PEEK[1]"), b"BODY[1]"), b"part one")
        self.assertEqual(
            literalOf(c.cmd("FETCH 2 BODY.PEEK[1.MIME]"), b"BODY[1.MIME]"),
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n",
        )
        self.assertEqual(
            literalOf(c.cmd("FETCH 2 BODY.PEEK[2.HEADER]"), b"BODY[2.HEADER]"),
            b"Subject: inner\r\nFrom: x@y.example\r\n\r\n",
        )
        self.assertEqual(
            literalOf(c.cmd("FETCH 2 BODY.PEEK[2.TEXT]"), b"BODY[2.TEXT]"), b"inner body"
        )
        self.assertEqual(literalOf(c.cmd("FETCH 2 BODY.PEEK[2.1]"), b"BODY[2.1]"),
                         b"inner body")
        self.assertIn(b"BODY[9] NIL", c.cmd("FETCH 2 BODY.PEEK[9]"))
        self.assertEqual(literalOf(c.cmd("FETCH 1 BODY.PEEK[1]"), b"BODY[1]"),
                         b"line one\r\nline two\r\n")

    def test_envelope(self) -> None:
        """ENVELOPE keeps encoded words raw and expands groups."""
        out = self.c.cmd("FETCH 2 ENVELOPE")
        self.assertIn(b'"=?utf-8?q?Gr=C3=BC=C3=9Fe?="', out)
        self.assertIn(b'(("=?utf-8?q?J=C3=B6rg?=" NIL "joerg" "example.net"))', out)
        self.assertIn(
            b'(NIL NIL "a" "example.org")(NIL NIL "Group" NIL)(NIL NIL "b" "example.org")'
            b'(NIL NIL "c" "example.org")(NIL NIL NIL NIL)', out)  # no spaces, as Dovecot

    def test_bodystructure(self) -> None:
        """BODYSTRUCTURE of a multipart with an encapsulated message."""
        out = self.c.cmd("FETCH 2 (BODYSTRUCTURE BODY)")
        self.assertIn(
            b'BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 8 0 NIL NIL NIL'
            b' NIL)("message" "rfc822" NIL NIL NIL "7bit" 47 (NIL "inner" ((NIL NIL "x"'
            b' "y.example"))', out)
        # Line counts are the body's line ends (Dovecot's count).
        self.assertIn(b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL'
                      b' NIL) 3 NIL NIL NIL NIL)', out)
        self.assertIn(b'"mixed" ("boundary" "XX") NIL NIL NIL)', out)
        self.assertIn(b'BODY ((', out)

    def test_fastAllFull(self) -> None:
        """The ALL, FAST and FULL macros expand."""
        out = self.c.cmd("FETCH 1 FULL")
        for item in (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY ("):
            self.assertIn(item, out)

    def test_uidFetchAddsUid(self) -> None:
        """UID FETCH always includes UID."""
        self.assertIn(b"(UID 2 FLAGS", self.c.cmd("UID FETCH 2 FLAGS"))

    def test_internalDateFormat(self) -> None:
        """INTERNALDATE is dd-Mon-yyyy hh:mm:ss +zzzz."""
        out = self.c.cmd("FETCH 1 INTERNALDATE")
        self.assertRegex(out, rb'INTERNALDATE "[ 0-9]\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d '
                              rb'[+-]\d{4}"')

    def test_badAttributes(self) -> None:
        """Unknown attributes and malformed sections are BAD."""
        for bad in ("FETCH 1 BOGUS", "FETCH 1 BODY[HEADER.FIELDS]", "FETCH 1 BODY[]<1>",
                    "FETCH 1 (FLAGS", "FETCH 1 BODY[MIME]"):
            self.assertIn(b" BAD ", self.c.cmd(bad), bad)

    def test_rfc822SizeMatchesBody(self) -> None:
        """RFC822.SIZE equals the length of BODY[]."""
        out = self.c.cmd("FETCH 2 (RFC822.SIZE BODY.PEEK[])")
        size = int(re.search(rb"RFC822.SIZE (\d+)", out).group(1))
        self.assertEqual(size, len(literalOf(out, b"BODY[]")))


class StreamingTests(SynchronousTestCase):
    """Large bodies stream from the file in chunks with back-pressure."""

    def test_largeBodyStreams(self) -> None:
        """A 1 MiB body arrives intact, read and written a bounded piece at a time
        (never held whole)."""
        from pymaild import sendbody

        self.patch(sendbody, "CHUNK", 65536)
        env = IMAPEnv(self)
        body = os.urandom(400000).hex().encode()[:1000000]
        body = b"\r\n".join(body[i : i + 76] for i in range(0, len(body), 76)) + b"\r\n"
        msg = makeMessage("big", body)
        env.deliver(msg)
        c = env.selected()
        writes = []
        orig = c.transport.write

        def spy(data: bytes) -> None:
            writes.append(len(data))
            orig(data)

        c.transport.write = spy
        out = c.cmd("FETCH 1 BODY.PEEK[]")
        self.assertEqual(literalOf(out, b"BODY[]"), msg)
        self.assertGreater(len(writes), 10)
        self.assertLessEqual(max(writes), 65536)
        self.assertIn(b" OK ", tagged(out, c.lastTag))

    def test_pausedTransportWaits(self) -> None:
        """When the transport pauses the producer, streaming waits for resume."""
        env = IMAPEnv(self)
        msg = makeMessage("big", b"x" * 600000 + b"\r\n")
        env.deliver(msg)
        c = env.selected()
        paused = []
        orig = c.transport.write

        def write(data: bytes) -> None:
            orig(data)
            p = c.transport.producer
            if p is not None and not paused:
                paused.append(p)
                p.pauseProducing()

        c.transport.write = write
        out = c.cmd("FETCH 1 BODY.PEEK[]")
        self.assertNotIn(b" OK ", out)
        self.assertTrue(paused)
        paused[0].resumeProducing()
        out += c.take()
        self.assertEqual(literalOf(out, b"BODY[]"), msg)
        self.assertIn(c.lastTag + b" OK", out)


class VanishedTests(SynchronousTestCase):
    """A message file removed underneath a session never breaks it."""

    def vanished(self, count: int, index: int) -> Any:
        """A session on C{count} messages, the file of message C{index} (0-based) since
        removed underneath it."""
        env = IMAPEnv(self)
        env.deliver(*(makeMessage(chr(ord("a") + i)) for i in range(count)))
        c = env.selected()
        folder = env.folder()
        info = folder.scan().messages[index]
        os.unlink(os.path.join(folder.path, info.filename))
        return c

    def test_fetchVanished(self) -> None:
        """FETCH of a vanished message: the others' data and OK [EXPUNGEISSUED], as
        Dovecot answers (tests/interop/test_dovecot_expunged.py), then EXPUNGE on
        NOOP."""
        c = self.vanished(2, 0)
        out = c.cmd("FETCH 1:2 BODY.PEEK[]")
        self.assertIn(b"OK [EXPUNGEISSUED]", tagged(out, c.lastTag))
        self.assertNotIn(b"* 1 FETCH", out)
        self.assertIn(b"* 2 FETCH", out)
        self.assertNotIn(b"EXPUNGE\r\n", out)
        out = c.cmd("NOOP")
        self.assertIn(b"* 1 EXPUNGE", out)
        self.assertIn(b"* 1 FETCH (BODY[]", c.cmd("FETCH 1 BODY.PEEK[]"))

    def test_bodystructureVanished(self) -> None:
        """FETCH BODYSTRUCTURE over a vanished message (parsed with the others of its
        run) answers for the rest and OK [EXPUNGEISSUED]."""
        c = self.vanished(3, 1)
        out = c.cmd("FETCH 1:3 BODYSTRUCTURE")
        self.assertIn(b"OK [EXPUNGEISSUED]", tagged(out, c.lastTag))
        self.assertIn(b"* 1 FETCH (BODYSTRUCTURE (", out)
        self.assertIn(b"* 3 FETCH (BODYSTRUCTURE (", out)
        self.assertNotIn(b"* 2 FETCH", out)

    def test_storeVanished(self) -> None:
        """STORE on a vanished message answers OK with the flags the STORE would have
        given (as Dovecot does), writes nothing, and the EXPUNGE follows on NOOP."""
        c = self.vanished(2, 0)
        out = c.cmd("STORE 1:2 +FLAGS (\\Flagged)")
        self.assertIn(b" OK ", tagged(out, c.lastTag))
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Recent))", out)
        self.assertIn(b"* 2 FETCH (FLAGS (\\Flagged \\Recent))", out)
        out = c.cmd("STORE 1 +FLAGS.SILENT (\\Seen)")
        self.assertNotIn(b"* 1 FETCH", out)
        self.assertIn(b" OK ", tagged(out, c.lastTag))
        self.assertIn(b"* 1 EXPUNGE", c.cmd("NOOP"))
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Recent))", c.cmd("FETCH 1 FLAGS"))


class DeferredRunnerTests(SynchronousTestCase):
    """With a runner whose work completes later, FETCH still answers in order."""

    def test_pipelinedFetchWithDeferredRunner(self) -> None:
        """SELECT + FETCH + NOOP pipelined while disk work is pending run in order."""
        pending: list[tuple] = []

        class LaterRunner:
            def run(self, f, *a, **kw):
                d = defer.Deferred()
                pending.append((d, f, a, kw))
                return d

        def flush() -> None:
            while pending:
                d, f, a, kw = pending.pop(0)
                try:
                    d.callback(f(*a, **kw))
                except Exception:
                    d.errback()

        env = IMAPEnv(self, runner=LaterRunner())
        env.deliver(makeMessage("a"))
        c = env.connect()
        c.take()
        c.proto.dataReceived(b'a LOGIN alice@example.org "correct horse"\r\n'
                             b"b SELECT INBOX\r\nc FETCH 1 (UID BODY.PEEK[TEXT])\r\nd NOOP\r\n")
        flush()
        env.clock.advance(0)
        flush()
        out = c.take()
        positions = [out.index(t + b" OK") for t in (b"a", b"b", b"c", b"d")]
        self.assertEqual(positions, sorted(positions))
        self.assertIn(b"BODY[TEXT] {12}\r\nBody text.\r\n", out)


class BatchedFetchTests(SynchronousTestCase):
    """FETCH over many messages renders in batches (memory, then the disk runner) and
    still answers every message, in order, exactly as one at a time would."""

    def test_manyMessagesAcrossBatches(self) -> None:
        """FETCH 1:* (FLAGS ENVELOPE BODY[]) over more than one batch (and a batch cut
        short by its byte budget): one response per message in sequence order, \\Seen set
        on each (FLAGS shows it), the exact bytes, and the same answer when cached."""
        from pymaild.imap import fetch, fetchcmd

        env = IMAPEnv(self)
        count = fetchcmd.FETCH_BATCH + 40
        msgs = [makeMessage(f"m{i}", b"x" * (i % 7 * 100) + b"\r\n") for i in range(count)]
        msgs[3] = makeMessage("big", b"y" * 200000 + b"\r\n")  # fills a small byte budget
        env.deliver(*msgs)
        c = env.selected()
        self.patch(fetch, "BATCH_BYTES", 100000)
        out = c.cmd("FETCH 1:* (FLAGS ENVELOPE BODY[])")
        self.assertIn(c.lastTag + b" OK", out)
        seqs = [int(m) for m in re.findall(rb"\* (\d+) FETCH", out)]
        self.assertEqual(seqs, list(range(1, count + 1)))
        self.assertEqual(out.count(b"\\Seen"), count)
        for n in (1, 4, count):
            start = out.index(b"* %d FETCH" % n)
            self.assertEqual(literalOf(out[start:], b"BODY[]"), msgs[n - 1])
        again = c.cmd("FETCH 1:* (FLAGS ENVELOPE BODY.PEEK[])")
        self.assertEqual(again.replace(b"BODY[]", b"X").split(b"\r\n")[:-2],
                         out.replace(b"BODY[]", b"X").split(b"\r\n")[:-2])

    def test_readAheadClosedWhenClientLeaves(self) -> None:
        """While one run of responses is sent the next is read ahead; a client that
        leaves mid-send leaves no file of the read-ahead run open."""
        from pymaild.imap import fetch
        from pymaild.store.folder import Folder
        from pymaild.store.info import MessageInfo
        from tests.test_pop3_helpers import GatedRunner

        opened: list[object] = []
        realOpen = Folder.open

        def recordingOpen(folder: Folder, info: MessageInfo) -> object:
            f = realOpen(folder, info)
            opened.append(f)
            return f

        self.patch(Folder, "open", recordingOpen)
        self.patch(fetch, "INLINE_SECTION", 1000)  # bigger sections are streamed
        self.patch(fetch, "BATCH_BYTES", 100)  # a run ends after an inline section
        runner = GatedRunner()
        env = IMAPEnv(self, runner=runner)
        env.deliver(makeMessage("streamed 1", b"a" * 5000 + b"\r\n"),
                    makeMessage("inline", b"b\r\n"),
                    makeMessage("streamed 3", b"c" * 5000 + b"\r\n"))
        c = env.selected()
        runner.hold = True
        c.send(b"f1 FETCH 1:3 BODY.PEEK[]\r\n")
        runner.step()  # the first run: messages 1 (to stream) and 2 (inline)
        self.assertEqual(len(runner.queue), 2)  # the read-ahead run, then message 1's read
        c.lose()
        runner.flush()
        self.assertTrue(opened)
        self.assertTrue(all(f.closed for f in opened))  # type: ignore[attr-defined]

    def test_envelopeFromHeaderOnlyEqualsFullParse(self) -> None:
        """ENVELOPE rendered from the header alone (cold) equals the one a full parse
        gives, and BODYSTRUCTURE afterwards is the full parse's."""
        from pymaild.imap.mimeparse import parseMessage

        env = IMAPEnv(self)
        env.deliver(MULTI, makeMessage("plain"))
        c = env.selected()
        out = c.cmd("FETCH 1:2 ENVELOPE")
        out += c.cmd("FETCH 1:2 BODYSTRUCTURE")
        for msg in (MULTI, makeMessage("plain")):
            p = parseMessage(msg)
            self.assertIn(b"ENVELOPE " + p.envelope, out)
            self.assertIn(b"BODYSTRUCTURE " + p.bodystructure, out)
