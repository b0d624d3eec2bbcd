"""Tests for pymaild.wire: the stateful dot-stuffer."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pymaild.wire import DotStuffer, stuffMessage


def unstuff(wire: bytes) -> bytes:
    """Undo dot-stuffing the way a receiver does, stopping at the first lone dot."""
    out = []
    for line in wire.split(b"\r\n"):
        if line == b".":
            break
        out.append(line[1:] if line.startswith(b".") else line)
    return b"\r\n".join(out) + b"\r\n"


class DotStufferTests(SynchronousTestCase):
    """The stuffer's output ends only at the final terminator, whatever the chunking."""

    def test_leadingDot(self) -> None:
        """A dot at offset 0 is doubled."""
        self.assertEqual(stuffMessage(b".\r\nx\r\n"), b"..\r\nx\r\n.\r\n")

    def test_chunkEdges(self) -> None:
        """A dot line is stuffed wherever the chunks split the message."""
        body = b"a" * 16382 + b"\r\n.\r\nMAIL FROM:<x@y>\r\n.\r\n" + b"b\r\n"
        whole = stuffMessage(body)
        for size in (1, 2, 3, 7, 512, 16384, 16385):
            s = DotStuffer()
            wire = b"".join(s.feed(body[i:i + size]) for i in range(0, len(body), size))
            wire += s.finish()
            self.assertEqual(wire, whole, size)
            self.assertEqual(wire.count(b"\r\n.\r\n"), 1)
            self.assertEqual(unstuff(wire), body)

    def test_lineEnds(self) -> None:
        """Bare LF and bare CR become CRLF, also when CR and LF are split across chunks."""
        s = DotStuffer()
        wire = s.feed(b"a\r") + s.feed(b"\n.b\n") + s.feed(b"c\r") + s.feed(b"d") + s.finish()
        self.assertEqual(wire, b"a\r\n..b\r\nc\r\nd\r\n.\r\n")

    def test_empty(self) -> None:
        """An empty message is just the terminator."""
        self.assertEqual(stuffMessage(b""), b".\r\n")

    def test_chunkingNeverChangesOutput(self) -> None:
        """Random messages (CRLF-only ones, which take the one-replace fast path, and ones
        with bare CR/LF) stuff to the same bytes as the whole message normalised at once,
        for any chunking, including chunks that end between CR and LF."""
        import random

        def reference(data: bytes) -> bytes:
            text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if text.startswith(b"."):
                text = b"." + text
            out = text.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
            return out + (b"" if out.endswith(b"\r\n") or not out else b"\r\n") + b".\r\n"

        rng = random.Random(1939)
        crlfPieces = [b".", b"..", b"x", b"\r\n", b"\r\n.", b".\r\n", b"abc "]
        mixedPieces = [*crlfPieces, b"\n", b"\r", b"\n."]
        for trial in range(300):
            pieces = crlfPieces if trial % 2 else mixedPieces
            data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
            s = DotStuffer()
            wire = b""
            i = 0
            while i < len(data):
                n = rng.choice([1, 2, 3, 5, 17, 64])
                wire += s.feed(data[i:i + n])
                i += n
            wire += s.finish()
            self.assertEqual(wire, reference(data), data)
