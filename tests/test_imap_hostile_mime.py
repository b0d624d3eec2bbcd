"""Hostile MIME for ENVELOPE, BODYSTRUCTURE and SEARCH: a To: of 100,000 folded
addresses, a Content-Type of millions of parameters, thousands of parts and deep
nesting, and address values built to make a pattern backtrack.

Parsing is linear and capped (L{pymaild.imap.mimeheader.MAX_HEADER_BLOCK},
C{MAX_ALL_HEADERS}, C{MAX_ADDRESSES}, C{MAX_PARAMS}, C{MAX_PARAM_BYTES}, C{MAX_PARTS},
C{MAX_DEPTH}); what lies past a cap is dropped from the structure, never an error, and
SEARCH still finds text in the parts past the depth and part caps. The caps are pinned
by counting (addresses returned, parameters kept, bytes handed to the parsers,
tracemalloc peaks); linearity by comparing the CPU time of the same parse at n and 4n
with a generous factor (quadratic work would be 16 times, cubic 64), never by a bound
on elapsed time. The last tests APPEND such messages to a real server over a socket.
"""

from __future__ import annotations

import imaplib
import re
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.imap import bodystructure, mimeheader, mimeparse, search, summary, summarycache
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW


def foldedAddresses(n: int) -> bytes:
    """A message whose To: holds C{n} addresses, one per folded line (the 2.9 MB
    message of the report at n = 100,000)."""
    to = b",\r\n ".join(b"user%d@example.com" % i for i in range(n))
    return (b"From: sender@example.org\r\nSubject: many\r\nTo: " + to
            + b"\r\nMessage-ID: <m@example.org>\r\n\r\nbody\r\n")


def manyParameters(n: int) -> bytes:
    """A message whose Content-Type has a comment and C{n} parameters."""
    params = b"; ".join(b"p%d=%d" % (i % 97, i) for i in range(n))
    return (b"From: a@example.org\r\nContent-Type: text/plain (a comment); " + params
            + b"\r\n\r\nbody\r\n")


def manyParts(n: int, word: bytes) -> bytes:
    """A multipart message of C{n} text parts; the last one holds C{word}."""
    parts = [b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(n - 1)]
    parts.append(b"--b\r\nContent-Type: text/plain\r\n\r\n" + word + b"\r\n")
    return (b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            + b"".join(parts) + b"--b--\r\n")


def deepNesting(depth: int, word: bytes) -> bytes:
    """A message of C{depth} nested multiparts; the innermost text part holds C{word}."""
    inner = b"Content-Type: text/plain\r\n\r\n" + word + b"\r\n"
    for d in range(depth):
        b = b"d%d" % d
        inner = (b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b
                 + b"\r\n" + inner + b"--" + b + b"--\r\n")
    return b"From: a@example.org\r\n" + inner


def cpuWork(fn: Callable[[], Any]) -> float:
    """The least CPU time (this thread's) of three runs of C{fn}: a measure of work that
    other processes on the machine do not add to."""
    best = float("inf")
    for _ in range(3):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return max(best, 1e-4)


def addressCount(envelopeList: bytes) -> int:
    """The number of address structures in a serialised address list."""
    return envelopeList.count(b"(NIL NIL ") + envelopeList.count(b'("')


def balanced(data: bytes) -> bool:
    """Whether the parentheses of an IMAP response outside quoted strings balance."""
    depth = 0
    for m in re.finditer(rb'"(?:[^"\\]|\\.)*"|[()]', data):
        tok = m.group()
        if tok == b"(":
            depth += 1
        elif tok == b")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


class AddressListTests(SynchronousTestCase):
    """A To: of 100,000 folded addresses costs linear, capped work."""

    def test_envelopeKeepsAtMostMaxAddresses(self) -> None:
        """ENVELOPE of a 2.9 MB To: lists the first MAX_ADDRESSES addresses, in order,
        the address parser is handed at most MAX_HEADER_BLOCK bytes, and the fields
        past that cut (the Message-ID here) are dropped: NIL, no error."""
        msg = foldedAddresses(100_000)
        self.assertGreater(len(msg), 2_400_000)
        seen: list[int] = []
        real = mimeheader.parseAddressList

        def counting(value: bytes | None, limit: int = mimeheader.MAX_ADDRESSES) -> Any:
            seen.append(len(value or b""))
            return real(value, limit)

        self.patch(bodystructure, "parseAddressList", counting)
        self.patch(bodystructure, "_addressMemo", {})
        env = summary.summariseHeader(summary.readHeaderBlock(lambda n: msg[:n])).envelope
        self.assertLessEqual(max(seen), mimeheader.MAX_HEADER_BLOCK)
        self.assertEqual(env.count(b'"example.com"'), mimeheader.MAX_ADDRESSES)
        self.assertIn(b'"user0" "example.com"', env)
        self.assertIn(b'"user%d" "example.com"' % (mimeheader.MAX_ADDRESSES - 1), env)
        self.assertNotIn(b'"user%d" "example.com"' % mimeheader.MAX_ADDRESSES, env)
        self.assertTrue(balanced(env))
        self.assertTrue(env.endswith(b" NIL NIL NIL NIL)"), env[-40:])
        self.assertTrue(env.startswith(b'(NIL "many" ((NIL NIL "sender" "example.org"))'))

    def test_parseMessageAgreesWithSummary(self) -> None:
        """A complete parse gives the same capped ENVELOPE and the true header size."""
        msg = foldedAddresses(60_000)
        parsed = mimeparse.parseMessage(msg)
        block = summary.readHeaderBlock(lambda n: msg[:n])
        self.assertEqual(parsed.envelope, summary.summariseHeader(block).envelope)
        self.assertEqual(parsed.headerSize, len(block))
        self.assertIsNone(parsed.header)  # too big to keep with the parse
        self.assertLessEqual(len(parsed.root.block), mimeheader.MAX_HEADER_BLOCK)

    def test_foldedHeaderLinear(self) -> None:
        """parseHeaders of a field folded 4n times costs about four times the work of
        one folded n times (it was quadratic: 16 times)."""
        small = foldedAddresses(10_000)
        large = foldedAddresses(40_000)
        ratio = cpuWork(lambda: mimeheader.parseHeaders(large)) / cpuWork(
            lambda: mimeheader.parseHeaders(small))
        self.assertLess(ratio, 10, ratio)
        self.assertEqual(len(mimeheader.parseHeaders(large)), 4)

    def test_hostileAddressValuesLinear(self) -> None:
        """Values that made a pattern backtrack or a scan restart (runs of white space
        before a character no token starts with, unclosed quoted strings and domain
        literals, commas inside an unclosed angle bracket) cost linear work."""
        families = {
            "spaces then junk": lambda n: b"a@b," + b" " * n + b"]",
            "phrase of spaces": lambda n: b"a@b, x" + b" " * n + b"y",
            "unclosed escapes": lambda n: b'"\\' * n,
            "unclosed literals": lambda n: b"[" * n,
            "commas in angle": lambda n: b"<" + b"a@b, " * n,
        }
        for name, family in families.items():
            small, large = family(1000), family(4000)
            ratio = cpuWork(lambda v=large: mimeheader.parseAddressList(v)) / cpuWork(
                lambda v=small: mimeheader.parseAddressList(v))
            self.assertLess(ratio, 10, (name, ratio))

    def test_groupCutShortIsClosed(self) -> None:
        """A group cut by the cap still gets its end marker; the cap counts entries."""
        value = b"team: " + b", ".join(b"u%d@x" % i for i in range(10)) + b";, z@y"
        addrs = mimeheader.parseAddressList(value, limit=4)
        assert addrs is not None
        self.assertEqual(addrs[0], (None, None, b"team", None))
        self.assertEqual(len(addrs), 5)
        self.assertEqual(addrs[-1], (None, None, None, None))
        self.assertEqual(mimeheader.parseAddressList(b"a@b, c@d, e@f", limit=2),
                         [(None, None, b"a", b"b"), (None, None, b"c", b"d")])

    def test_headerBlockCut(self) -> None:
        """consideredBlock keeps a block within the cap whole and the first bytes of a
        longer one (the field the cut falls in keeps its start)."""
        data = b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n"
        self.assertEqual(mimeheader.consideredBlock(data, 0, len(data), 100), data)
        self.assertEqual(mimeheader.consideredBlock(data, 0, len(data), 9), b"A: 1\r\nB: ")
        self.assertEqual(mimeheader.consideredBlock(b"0123456789" * 5, 5, 50, 10), b"5678901234")


class ParameterTests(SynchronousTestCase):
    """A Content-Type of a million parameters with a comment."""

    def test_parametersCapped(self) -> None:
        """At most MAX_PARAMS parameters are kept (the first ones, in order) and the
        parse's tracemalloc peak stays a small multiple of the caps, not of the field."""
        msg = manyParameters(800_000)
        self.assertGreater(len(msg), 7_000_000)
        tracemalloc.start()
        try:
            parsed = mimeparse.parseMessage(msg)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 8 * mimeheader.MAX_HEADER_BLOCK, peak)
        params = parsed.root.params
        self.assertEqual(params[:2], [(b"p0", b"0"), (b"p1", b"1")])
        self.assertEqual(params[-1], (b"charset", b"us-ascii"))
        self.assertEqual(len(params), mimeheader.MAX_PARAMS + 1)  # the default charset appended
        self.assertLess(len(parsed.bodystructure), 4 * mimeheader.MAX_PARAMS * 16)
        self.assertTrue(balanced(parsed.bodystructure))

    def test_parameterBytesCapped(self) -> None:
        """The parameters kept hold at most MAX_PARAM_BYTES: the first one that would
        go past it is dropped with the rest."""
        big = b"x" * (mimeheader.MAX_PARAM_BYTES // 3)
        value, params = mimeheader.parseParams(b"text/plain; a=" + big + b"; b=" + big
                                         + b"; c=" + big + b"; d=1")
        self.assertEqual(value, b"text/plain")
        self.assertEqual([n for n, _ in params], [b"a", b"b"])
        self.assertLessEqual(sum(len(n) + len(v) for n, v in params), mimeheader.MAX_PARAM_BYTES)

    def test_splitStopsAtTheLimit(self) -> None:
        """Every way of cutting a parameter list gives the first pieces the unlimited
        cut gives, and the comment path stops looking after them."""
        for text in (b"a;b;c;d;e", b'a;"x;y";c;d', b'a;"x\\"y";c;d', b"a (c;d);b;c;d"):
            for limit in (1, 2, 3, 10):
                self.assertEqual(mimeheader._splitSemicolons(text, limit),
                                 mimeheader.splitSemicolonsByChar(text)[:limit], (text, limit))
                self.assertEqual(mimeheader.splitSemicolonsByChar(text, limit),
                                 mimeheader.splitSemicolonsByChar(text)[:limit])


class PartCapTests(SynchronousTestCase):
    """Thousands of parts and deep nesting: the part tree is capped, memory bounded."""

    def test_manyPartsBounded(self) -> None:
        """A multipart of 20,000 parts parses MAX_PARTS of them, lists no more ranges
        than it can use, and records where the rest starts."""
        msg = manyParts(20_000, b"needle")
        ranges, _ = mimeparse._splitMultipart(msg, msg.index(b"--b"), len(msg), b"b", 10)
        self.assertEqual(len(ranges), 10)
        tracemalloc.start()
        try:
            parsed = mimeparse.parseMessage(msg)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        root = parsed.root
        self.assertEqual(len(root.children), mimeheader.MAX_PARTS - 1)
        self.assertGreater(root.rest, root.children[-1].end)
        self.assertLess(peak, 8 << 20, peak)
        self.assertTrue(balanced(parsed.bodystructure))

    def test_closedAtEndAgreesWhenCut(self) -> None:
        """Listing only the first ranges reports the same close delimiter state."""
        for tail in (b"--b--", b"--b--\r\n", b"--b--  ", b"--b--x\r\n--b--", b""):
            body = b"--b\r\n1\r\n--b\r\n2\r\n--b\r\n3\r\n" + tail
            full = mimeparse._splitMultipart(body, 0, len(body), b"b")
            for limit in (1, 2, 3, 5):
                cut = mimeparse._splitMultipart(body, 0, len(body), b"b", limit)
                self.assertEqual(cut[0], full[0][:limit])
                self.assertEqual(cut[1], full[1], (tail, limit))

    def test_allHeadersBudget(self) -> None:
        """Past MAX_ALL_HEADERS of part headers, a part's header is cut to what is left:
        the parse keeps at most that many header bytes."""
        field = b"X-Pad: " + b"p" * 1000 + b"\r\n"
        part = b"--b\r\nContent-Type: text/plain\r\n" + field * 600 + b"\r\nx\r\n"
        msg = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + part * 12
               + b"--b--\r\n")
        parsed = mimeparse.parseMessage(msg)
        kept = len(parsed.root.block) + sum(len(c.block) for c in parsed.root.children)
        self.assertLessEqual(kept, mimeheader.MAX_ALL_HEADERS)
        self.assertEqual(len(parsed.root.children), 12)
        self.assertEqual(parsed.root.children[-1].block, b"")

    def test_deepNestingHidden(self) -> None:
        """A part nested past MAX_DEPTH is an opaque leaf marked hidden."""
        parsed = mimeparse.parseMessage(deepNesting(mimeheader.MAX_DEPTH + 5, b"deep"))
        part = parsed.root
        while part.children:
            part = part.children[0]
        self.assertTrue(part.hidden)
        self.assertEqual((part.mainType, part.subType), (b"application", b"octet-stream"))


class _View:
    """Just enough of a mailbox view for a search candidate."""

    def __init__(self, data: bytes) -> None:
        self.cache = summarycache.StructureCache(files=False)
        self.folder = self
        self.path = "/nowhere"
        self.data = data

    def read(self, info: Any) -> bytes:
        """The message's bytes."""
        return self.data

    def open(self, info: Any) -> Any:
        """The message as a file."""
        import io

        return io.BytesIO(self.data)


class _Info:
    """A message's key, for the structure cache."""

    key = "k"
    flags: frozenset[str] = frozenset()


class SearchBeyondCapsTests(SynchronousTestCase):
    """SEARCH BODY and TEXT reach text in parts past the part and depth caps."""

    def bodyText(self, data: bytes) -> str:
        """The text SEARCH BODY matches in C{data}."""
        return search._bodyText(search._Candidate(_View(data), 1, 1, _Info(), False))

    def test_partPastThePartCap(self) -> None:
        """A word in part 3000 of 3000 is found; raw bytes past the cap are bounded by
        the message."""
        msg = manyParts(3000, b"needle-past-the-cap")
        text = self.bodyText(msg)
        self.assertIn("needle-past-the-cap", text)
        self.assertLess(len(text), 2 * len(msg))

    def test_partPastTheDepthCap(self) -> None:
        """A word nested past MAX_DEPTH is found."""
        self.assertIn("deep-needle",
                      self.bodyText(deepNesting(mimeheader.MAX_DEPTH + 3, b"deep-needle")))

    def test_headerBlockCappedForSearch(self) -> None:
        """SEARCH looks at the first MAX_HEADER_BLOCK bytes of a header: a field past
        them is out of reach, one before them is found."""
        msg = (b"Subject: early\r\nX-Pad: " + b"p" * (mimeheader.MAX_HEADER_BLOCK + 10)
               + b"\r\nSubject: late\r\n\r\nbody\r\n")
        view = _View(msg)
        view.cache.putSummary((view.path, "k"), summary.summariseHeader(
            summary.readHeaderBlock(lambda n: msg[:n])))
        view.readPrefix = lambda info, n: msg[:n]  # type: ignore[attr-defined]
        cand = search._Candidate(view, 1, 1, _Info(), False)
        import pymaild.imap.mailbox as mailbox

        self.patch(mailbox, "readHeader", lambda folder, info: summary.readHeaderBlock(
            lambda n: msg[:n]))
        self.assertLessEqual(len(cand.headerBlock()), mimeheader.MAX_HEADER_BLOCK)
        self.assertTrue(search.HeaderKey("subject", "early").matches(cand.headerBlock()))
        self.assertFalse(search.HeaderKey("subject", "late").matches(cand.headerBlock()))


class HeaderRereadTests(SynchronousTestCase):
    """A header too large for the summary costs SEARCH one bounded read per message."""

    def test_oneBoundedRead(self) -> None:
        """SEARCH's header block of a message with a 3 MB header is one read of at most
        MAX_HEADER_BLOCK bytes once the summary is known, not the growing reads that
        find the blank line (4 KiB, 16 KiB, ... past the whole header)."""
        msg = foldedAddresses(100_000)
        self.assertGreater(len(msg), 2 * mimeheader.MAX_HEADER_BLOCK)
        view = _View(msg)
        view.cache.putSummary((view.path, "k"), summary.summariseHeader(
            summary.readHeaderBlock(lambda n: msg[:n])))
        reads: list[int] = []

        def readPrefix(info: Any, n: int) -> bytes:
            reads.append(n)
            return msg[:n]

        view.readPrefix = readPrefix  # type: ignore[attr-defined]
        block = search._Candidate(view, 1, 1, _Info(), False).headerBlock()
        self.assertEqual(reads, [mimeheader.MAX_HEADER_BLOCK])
        self.assertEqual(block, msg[: mimeheader.MAX_HEADER_BLOCK])
        self.assertTrue(search._headerMayContain(block, "user9@example.com"))


class RemoveFoldsTests(SynchronousTestCase):
    """L{mimeheader.removeFolds} gives what the folding regex gives, on any input."""

    def test_agreesWithTheRegex(self) -> None:
        """Random strings over the characters that matter (CR, LF, SP, HT, a letter),
        with and without bare LFs, unfold exactly as C{re.sub(rb"\r?\n(?=[ \t])")}."""
        import random

        fold = re.compile(rb"\r?\n(?=[ \t])")
        rng = random.Random(7)
        crlfOnly = (b"\r\n", b"\r\n ", b"\r\n\t", b" ", b"\t", b"a", b"\r")
        anyEnds = crlfOnly + (b"\n", b"\n ", b"\n\t")
        for i in range(20_000):
            choices = anyEnds if i % 2 else crlfOnly
            pieces = [rng.choice(choices) for _ in range(rng.randrange(12))]
            data = b"".join(pieces)
            self.assertEqual(mimeheader.removeFolds(data), fold.sub(b"", data), data)

    def test_foldedAddresses(self) -> None:
        """The 100,000-address To: unfolds to one line."""
        msg = foldedAddresses(1000)
        self.assertEqual(mimeheader.removeFolds(msg), re.sub(rb"\r?\n(?=[ \t])", b"", msg))


class RealServerTests(TestCase):
    """The hostile messages APPENDed to a real server over 127.0.0.1 and fetched."""

    timeout = 300

    @defer.inlineCallbacks
    def test_hostileMessagesOverTheWire(self) -> None:
        """APPEND the 100,000-address and the 4-million-parameter messages and one of
        3000 parts; FETCH ENVELOPE and BODYSTRUCTURE give well-formed, capped answers,
        SEARCH BODY finds the word past the part cap, and the session stays in sync."""
        srv = ClientServer(self)
        addresses = foldedAddresses(100_000)
        params = manyParameters(4_000_000)
        parts = manyParts(3000, b"wirebound")
        self.assertGreater(len(params), 20_000_000)

        def client() -> dict[str, Any]:
            out: dict[str, Any] = {}
            m = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            try:
                m.login(ALICE, ALICE_PW)
                for msg in (addresses, params, parts):
                    typ, _ = m.append("INBOX", None, None, msg)
                    assert typ == "OK", typ
                m.select("INBOX")
                out["envelope"] = m.fetch("1", "(ENVELOPE)")
                out["bodystructure"] = m.fetch("2", "(BODYSTRUCTURE)")
                out["again"] = m.fetch("1:2", "(ENVELOPE BODYSTRUCTURE)")
                out["search"] = m.search(None, "BODY", "wirebound")
                out["noop"] = m.noop()
                out["uid"] = m.fetch("1:3", "(UID RFC822.SIZE)")
                m.logout()
            finally:
                try:
                    m.shutdown()
                except Exception:  # noqa: BLE001
                    pass
            return out

        out = yield threads.deferToThread(client)
        typ, data = out["envelope"]
        self.assertEqual(typ, "OK")
        envelope = b"".join(d if isinstance(d, bytes) else b"".join(d) for d in data)
        self.assertTrue(envelope.startswith(b"1 (ENVELOPE ("))
        self.assertTrue(balanced(envelope))
        self.assertEqual(envelope.count(b'"example.com"'), mimeheader.MAX_ADDRESSES)
        typ, data = out["bodystructure"]
        self.assertEqual(typ, "OK")
        structure = b"".join(d if isinstance(d, bytes) else b"".join(d) for d in data)
        self.assertTrue(balanced(structure))
        self.assertIn(b'("p0" "0" "p1" "1"', structure)
        self.assertLess(len(structure), 16 * 1024)
        self.assertEqual(out["again"][0], "OK")
        self.assertEqual(out["search"], ("OK", [b"3"]))
        self.assertEqual(out["noop"][0], "OK")
        typ, data = out["uid"]
        self.assertEqual(typ, "OK")
        self.assertEqual(len(data), 3)
        self.assertIn(b"RFC822.SIZE %d" % len(params), data[1])
