"""FETCH BINARY (RFC 3516) against Dovecot over the same message: the decoded parts,
their sizes and partial ranges are the bytes Dovecot sends, literal8 and all.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import serversOverOneTree
from tests.test_imap_binary import DECODABLE, MESSAGE, literalBody
from tests.test_imap_helpers import ALICE, ALICE_PW

ITEMS = (b"BINARY.PEEK[1]", b"BINARY.PEEK[2]", b"BINARY.PEEK[2]<10.20>",
         b"BINARY.SIZE[1]", b"BINARY.SIZE[2]", b"BINARY.PEEK[]")


def rawSession(port: int, commands: list[bytes]) -> list[bytes]:
    """Log in, run C{commands} (each one tagged line), return each one's whole answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    buf = b""

    def until(tag: bytes) -> bytes:
        nonlocal buf
        pattern = re.compile(rb"(?:^|\r\n)" + tag + rb" [A-Z]+[^\r\n]*\r\n")
        while True:
            m = pattern.search(buf)
            if m is not None:
                out, buf = buf[: m.end()], buf[m.end():]
                return out
            data = sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed: {buf!r}")
            buf += data

    try:
        until(b"\\*")  # the greeting: "* OK ..."
        answers = []
        for n, cmd in enumerate([b'LOGIN %s "%s"' % (ALICE.encode(), ALICE_PW.encode()),
                                 b"SELECT INBOX", *commands]):
            tag = b"c%d" % n
            sock.sendall(tag + b" " + cmd + b"\r\n")
            answers.append(until(tag))
        sock.sendall(b"z LOGOUT\r\n")
        return answers[2:]
    finally:
        sock.close()


def values(answer: bytes) -> dict[bytes, Any]:
    """The BINARY values of one FETCH answer: label -> bytes (literals) or int."""
    out: dict[bytes, Any] = {}
    for label in (b"BINARY[1]", b"BINARY[2]", b"BINARY[2]<10>", b"BINARY[]"):
        out[label] = literalBody(answer, label)
    for label in (b"BINARY.SIZE[1]", b"BINARY.SIZE[2]"):
        m = re.search(re.escape(label) + rb" (\d+)", answer)
        assert m is not None, answer
        out[label] = int(m.group(1))
    out[b"literal8"] = re.findall(rb"(BINARY\[[^\]]*\](?:<\d+>)?) ~\{", answer)
    return out


class DovecotBinaryTests(TestCase):
    """pymaild and Dovecot answer FETCH BINARY alike."""

    timeout = 180

    @defer.inlineCallbacks
    def test_sameBinaryAnswers(self) -> Any:
        """Every BINARY item over the same stored message has Dovecot's value (BINARY[]
        the whole message decoded), and the same items come as literal8; a part in an
        unknown encoding is UNKNOWN-CTE in both."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-binary-")
        pymaild.store.deliver([ALICE], DECODABLE)
        pymaild.store.deliver([ALICE], MESSAGE)
        fetch = b"FETCH 1 (" + b" ".join(ITEMS) + b")"
        commands = [fetch, b"FETCH 2 BINARY.PEEK[3]", b"FETCH 1 (BINARY.PEEK[7] BINARY.SIZE[7])"]
        ours = yield threads.deferToThread(rawSession, pymaild.port, commands)
        dovecot.start()
        theirs = yield threads.deferToThread(rawSession, dovecot.port, commands)
        self.assertEqual(values(ours[0]), values(theirs[0]))
        self.assertEqual(values(ours[0])[b"literal8"],
                         [b"BINARY[1]", b"BINARY[2]", b"BINARY[2]<10>", b"BINARY[]"])
        for answers in (ours, theirs):
            self.assertIn(b"c3 NO [UNKNOWN-CTE]", answers[1])
            self.assertIn(b"BINARY[7] {0}\r\n BINARY.SIZE[7] 0)", answers[2])
