"""PREVIEW and the draft PREVIEW=FUZZY / SNIPPET=FUZZY forms answered as Dovecot answers
them over the same messages.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import serversOverOneTree
from tests.interop.test_dovecot_binary import rawSession
from tests.test_imap_helpers import ALICE, makeMessage

FORMS = (b"PREVIEW", b"PREVIEW (LAZY)", b"PREVIEW (FUZZY)", b"PREVIEW (LAZY=FUZZY)",
         b"SNIPPET", b"SNIPPET (FUZZY)", b"SNIPPET (LAZY=FUZZY)")


class DovecotSnippetTests(TestCase):
    """Both servers give the same preview answers."""

    timeout = 180

    @defer.inlineCallbacks
    def test_sameAnswers(self) -> Any:
        """Every form's untagged answer is Dovecot's, byte for byte."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-snippet-")
        pymaild.store.deliver([ALICE], makeMessage("one", b"Hello   there,\r\n  how are you?\r\n"))
        pymaild.store.deliver([ALICE], makeMessage("two", b"Short.\r\n"))
        commands = [b"FETCH 1:2 (" + form + b")" for form in FORMS]
        ours = yield threads.deferToThread(rawSession, pymaild.port, commands)
        dovecot.start()
        theirs = yield threads.deferToThread(rawSession, dovecot.port, commands)
        for form, a, b in zip(FORMS, ours, theirs, strict=True):
            self.assertEqual(a.rsplit(b"\r\n", 2)[0], b.rsplit(b"\r\n", 2)[0], form)
