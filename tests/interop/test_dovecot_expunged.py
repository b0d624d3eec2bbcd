"""Commands on a message another session expunged, not yet reported to this one,
against Dovecot 2.3 over one Maildir tree: STORE, FETCH of flags and of the body, COPY
(which reports the EXPUNGE) and a NOOP get Dovecot's tagged status and response code,
and the same FETCH responses where pymaild has the data (imaptest's stress run counts
any other answer as an error).

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
import re
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import check, connect, serversOverOneTree

COMMANDS = ["STORE 1:3 +FLAGS (\\Flagged)", "FETCH 1:3 (FLAGS)", "FETCH 1:3 (BODY.PEEK[])",
            "COPY 1 {folder}", "NOOP"]
"""What the first session sends once the second has expunged message 1."""

_TAGGED = re.compile(rb"^x\d+ (OK|NO|BAD)(?: \[([A-Z-]+)[^\]]*\])?")
_FETCH = re.compile(rb"^\* (\d+) FETCH ")
_EXPUNGE = re.compile(rb"^\* (\d+) EXPUNGE")


def raw(m: imaplib.IMAP4, tag: str, command: str) -> list[bytes]:
    """Send one command on imaplib's socket; the lines up to its tagged answer (literal
    contents included as lines)."""
    m.send(f"{tag} {command}\r\n".encode())
    lines = []
    while True:
        line = m.readline()
        if not line:
            raise AssertionError(f"connection closed after {command}")
        lines.append(line)
        if line.startswith(tag.encode() + b" "):
            return lines


def scenario(port: int, folder: str) -> list[dict[str, Any]]:
    """Two sessions over C{folder}: the second expunges message 1 of 3, then the first
    sends L{COMMANDS}; per command, its status, code and the FETCH/EXPUNGE numbers."""
    a, b = connect(port), connect(port)
    try:
        check(a.create(folder))
        for i in range(3):
            check(a.append(folder, None, None,
                           b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i)))
        check(a.select(folder))
        check(a.fetch("1:3", "(FLAGS)"))
        check(b.select(folder))
        check(b.store("1", "+FLAGS", "\\Deleted"))
        check(b.expunge())
        out = []
        for n, command in enumerate(COMMANDS):
            lines = raw(a, f"x{n}", command.format(folder=folder))
            m = _TAGGED.match(lines[-1])
            assert m is not None, lines[-1]
            out.append({
                "command": command, "status": m.group(1), "code": m.group(2),
                "fetched": sorted(int(f.group(1)) for f in map(_FETCH.match, lines) if f),
                "expunged": sorted(int(e.group(1)) for e in map(_EXPUNGE.match, lines) if e),
            })
        return out
    finally:
        for m in (a, b):
            try:
                m.logout()
            except (imaplib.IMAP4.error, OSError):
                pass


class DovecotExpungedTests(TestCase):
    """pymaild answers commands on a just-expunged message as Dovecot does."""

    timeout = 180

    @defer.inlineCallbacks
    def test_sameAnswersAsDovecot(self) -> Any:
        """Status and code of every command agree; STORE, FETCH FLAGS and NOOP send the
        same FETCH and EXPUNGE responses (the body FETCH may leave the expunged message
        out where Dovecot sends NIL)."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-expunged-")
        dovecot.start()
        theirs = yield threads.deferToThread(scenario, dovecot.port, "Dovecot")
        ours = yield threads.deferToThread(scenario, pymaild.port, "Pymaild")
        self.assertEqual([(r["status"], r["code"]) for r in ours],
                         [(r["status"], r["code"]) for r in theirs])
        for mine, other in zip(ours, theirs, strict=True):
            if "BODY" not in mine["command"]:
                self.assertEqual((mine["fetched"], mine["expunged"]),
                                 (other["fetched"], other["expunged"]), mine["command"])
        # Not vacuous: the message was gone, and both said so.
        self.assertEqual(theirs[2]["code"], b"EXPUNGEISSUED")
        self.assertEqual(theirs[3]["expunged"] + theirs[4]["expunged"], [1])
