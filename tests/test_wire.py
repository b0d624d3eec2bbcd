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
