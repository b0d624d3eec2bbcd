"""THREAD=REFERENCES and THREAD=ORDEREDSUBJECT (RFC 5256) against Dovecot, the
reference: both servers serve one Maildir tree holding conversations built to exercise
the algorithm (reference chains, In-Reply-To only, missing parents that become dummies,
truncated References, duplicate and missing Message-IDs, a reference loop, threads
merged by base subject, replies whose parent is outside the searched set), and the
threads, by sequence number and by UID, with and without search keys, must be the same.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import check, serversOverOneTree, session
from tests.test_imap_helpers import ALICE

# (message-id, references, in-reply-to, subject, date offset in hours)
CORPUS: list[tuple[str | None, str | None, str | None, str, int]] = [
    ("<a@x>", None, None, "Plans", 0),
    ("<b@x>", "<a@x>", None, "Re: Plans", 2),
    ("<c@x>", "<a@x> <b@x>", None, "Re: Plans", 3),
    ("<d@x>", None, "<a@x>", "Re: Plans", 1),
    ("<e@x>", "<missing@x>", None, "Re: Ghost", 5),
    ("<f@x>", "<missing@x>", None, "Re: Ghost", 4),
    ("<g@x>", "<c@x>", None, "Re: Plans", 6),  # truncated References
    ("<h@x>", None, None, "Lunch", 7),
    ("<h@x>", None, None, "Lunch", 8),  # duplicate Message-ID
    (None, None, None, "Lunch", 9),  # no Message-ID
    ("<i@x>", "<j@x>", None, "Loop", 10),
    ("<j@x>", "<i@x>", None, "Re: Loop", 11),  # a loop
    ("<k@x>", None, None, "Re: Lunch", 12),  # a reply by subject only
    ("<l@x>", "<zz@x> <yy@x>", None, "Orphans", 13),
    ("<m@x>", "<zz@x> <ww@x>", None, "Orphans", 14),
    ("<n@x>", None, None, "Fwd: Plans", 15),
    ("<o@x>", "<n@x>", None, "Re: Fwd: Plans", 16),
    ("<p@x>", None, None, "", 17),
    ("<q@x>", "<p@x>", None, "", 18),
    ("<r@x>", "<bogus>", "<q@x>", "Other", 19),
    ("<s@x>", None, None, "[list] Plans", 20),
    ("<t@x>", "<a@x> <nope@x> <s@x>", None, "Re: [list] Plans", 21),
    ("<u@x>", None, None, "Same time", 22),
    ("<v@x>", None, None, "Same time", 22),
]


def message(i: int) -> bytes:
    """Message C{i} of the corpus."""
    msgid, refs, irt, subject, hours = CORPUS[i]
    lines = ["From: a@example.org", "To: b@example.org", f"Subject: {subject}",
             time.strftime("Date: %a, %d %b %Y %H:%M:%S +0000",
                           time.gmtime(1_600_000_000 + hours * 3600))]
    if msgid:
        lines.append(f"Message-ID: {msgid}")
    if refs:
        lines.append(f"References: {refs}")
    if irt:
        lines.append(f"In-Reply-To: {irt}")
    return ("\r\n".join(lines) + f"\r\n\r\nmessage {i}\r\n").encode()


def threads(m: imaplib.IMAP4) -> dict[str, Any]:
    """Both algorithms, by sequence number and UID, over everything and a subset."""
    check(m.select("INBOX"))
    out: dict[str, Any] = {}
    for algorithm in ("REFERENCES", "ORDEREDSUBJECT"):
        out[algorithm] = check(m.thread(algorithm, "UTF-8", "ALL"))
        out["UID " + algorithm] = check(m.uid("THREAD", algorithm, "UTF-8", "ALL"))
        out["subset " + algorithm] = check(m.thread(algorithm, "UTF-8", "NOT", "UID", "1,9"))
        out["none " + algorithm] = check(m.thread(algorithm, "UTF-8", "SUBJECT", "nothing"))
    return out


class DovecotThreadTests(TestCase):
    """pymaild threads as Dovecot does."""

    timeout = 180

    @defer.inlineCallbacks
    def test_sameThreadsAsDovecot(self) -> Any:
        """24 messages, both algorithms, four ways each: the same answers."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-thread-")
        folder = pymaild.store.account(ALICE).folder("INBOX")
        for i in range(len(CORPUS)):
            folder.append(message(i), [], 1_600_000_000 + ((i * 7) % 24) * 60)
        folder.expunge([folder.scan().messages[2].key])  # UIDs and numbers then differ
        dovecot.start()
        theirs = yield session(dovecot.port, threads)
        ours = yield session(pymaild.port, threads)
        for key in theirs:
            self.assertEqual(ours[key], theirs[key], key)
        self.assertIn(b"(", theirs["REFERENCES"][0])
