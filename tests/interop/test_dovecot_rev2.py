"""IMAP4rev2's removals (RFC 9051 appendix E: LSUB, CHECK, the RECENT status item)
against a real Dovecot 2.3 over the same tree: in an IMAP4rev1 session both servers
answer them alike, and Dovecot 2.3, which does not implement IMAP4rev2, enables nothing
on C{ENABLE IMAP4rev2} and so keeps answering them as rev1 does; pymaild refuses them
only after it has said C{* ENABLED IMAP4rev2}.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import serversOverOneTree
from tests.test_imap_helpers import ALICE, ALICE_PW, makeMessage

COMMANDS = [b'LSUB "" "*"', b"STATUS INBOX (MESSAGES RECENT)",
            b'LIST "" "INBOX" RETURN (STATUS (RECENT))', b"SELECT INBOX", b"CHECK",
            b"NOOP"]
"""What each session sends after logging in (and ENABLE, if asked)."""


def talk(port: int, enable: bool) -> list[tuple[bytes, list[bytes]]]:
    """Log in to the server on C{port} (with C{ENABLE IMAP4rev2} first when asked) and
    send L{COMMANDS}; each command's tagged status word and its untagged lines."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rb")
    out = []
    try:
        f.readline()
        lines = [b'a LOGIN %s "%s"' % (ALICE.encode(), ALICE_PW.encode())]
        if enable:
            lines.append(b"b ENABLE IMAP4rev2")
        lines += [b"c%d " % i + c for i, c in enumerate(COMMANDS)]
        for line in lines:
            tag = line.split(b" ", 1)[0]
            s.sendall(line + b"\r\n")
            untagged = []
            while True:
                got = f.readline()
                assert got, line
                if got.startswith(tag + b" "):
                    out.append((got.split(b" ")[1], untagged))
                    break
                untagged.append(got.rstrip(b"\r\n"))
        s.sendall(b"z LOGOUT\r\n")
    finally:
        s.close()
    return out


class Rev2RemovalsTests(TestCase):
    """LSUB, CHECK and STATUS RECENT with and without ENABLE IMAP4rev2."""

    timeout = 180

    @defer.inlineCallbacks
    def test_againstDovecot(self) -> Any:
        """rev1 sessions: the same status for every command on both servers; after
        ENABLE IMAP4rev2, Dovecot enables nothing and answers as before, pymaild says
        ENABLED and answers BAD to LSUB, STATUS RECENT, LIST's STATUS (RECENT) and
        CHECK, OK to the rest."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-rev2-")
        pymaild.store.deliver([ALICE], makeMessage("one"))
        ours = yield threads.deferToThread(talk, pymaild.port, False)
        dovecot.handOver()  # (after pymaild wrote there)
        dovecot.start()
        theirs = yield threads.deferToThread(talk, dovecot.port, False)
        self.assertEqual([s for s, _ in ours], [s for s, _ in theirs])
        self.assertEqual({s for s, _ in ours}, {b"OK"})
        ours = yield threads.deferToThread(talk, pymaild.port, True)
        dovecot.handOver()
        theirs = yield threads.deferToThread(talk, dovecot.port, True)
        self.assertEqual(theirs[1], (b"OK", []))  # (no "* ENABLED IMAP4rev2")
        self.assertEqual({s for s, _ in theirs}, {b"OK"})
        self.assertEqual(ours[1], (b"OK", [b"* ENABLED IMAP4rev2"]))
        self.assertEqual([s for s, _ in ours[2:]],
                         [b"BAD", b"BAD", b"BAD", b"OK", b"BAD", b"OK"])
        for _status, untagged in ours[2:5]:
            self.assertEqual(untagged, [])
