"""THREAD=REFS (Dovecot's algorithm) against Dovecot over the corpus of the
REFERENCES comparison (L{tests.interop.test_dovecot_thread}).

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import check, serversOverOneTree, session
from tests.interop.test_dovecot_thread import CORPUS, message
from tests.test_imap_helpers import ALICE


def refsThreads(m: imaplib.IMAP4) -> dict[str, Any]:
    """REFS by sequence number and UID, over everything and subsets."""
    check(m.select("INBOX"))
    return {
        "all": check(m.thread("REFS", "UTF-8", "ALL")),
        "uid": check(m.uid("THREAD", "REFS", "UTF-8", "ALL")),
        "subset": check(m.thread("REFS", "UTF-8", "NOT", "UID", "1,9")),
        "subject": check(m.thread("REFS", "UTF-8", "SUBJECT", "Plans")),
        "none": check(m.thread("REFS", "UTF-8", "SUBJECT", "nothing")),
    }


class DovecotRefsTests(TestCase):
    """pymaild's REFS threads are Dovecot's."""

    timeout = 180

    @defer.inlineCallbacks
    def test_sameThreadsAsDovecot(self) -> Any:
        """The corpus threaded by REFS, five ways: Dovecot's answers."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-refs-")
        folder = pymaild.store.account(ALICE).folder("INBOX")
        for i in range(len(CORPUS)):
            folder.append(message(i), [], 1_600_000_000 + ((i * 7) % 24) * 60)
        folder.expunge([folder.scan().messages[2].key])
        dovecot.start()
        theirs = yield session(dovecot.port, refsThreads)
        ours = yield session(pymaild.port, refsThreads)
        for key in theirs:
            self.assertEqual(ours[key], theirs[key], key)
        self.assertIn(b"(", theirs["all"][0])
