"""The METADATA file pymaild keeps in the Maildir root (C{pymaild-metadata}) is left
alone by Dovecot: it lists the same folders, opens them, and logs no error.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import check, parseList, serversOverOneTree, session
from tests.test_imap_helpers import ALICE, makeMessage


class DovecotMetadataTests(TestCase):
    """Dovecot over a tree with METADATA entries."""

    timeout = 180

    @defer.inlineCallbacks
    def test_dovecotUntroubled(self) -> Any:
        """After pymaild stored server and folder entries, Dovecot lists the same
        folders, selects them with their messages, and its log has no error."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-metadata-")
        pymaild.store.deliver([ALICE], makeMessage("one"))

        def setEntries(m: imaplib.IMAP4) -> Any:
            check(m.create("Projects"))
            check(m.xatom("SETMETADATA", '""', '(/shared/comment "server")'))
            check(m.xatom("SETMETADATA", "INBOX", '(/private/comment "inbox")'))
            check(m.xatom("SETMETADATA", "Projects", '(/private/color "red")'))
            return parseList(check(m.list()))

        ours = yield session(pymaild.port, setEntries)
        dovecot.start()

        def look(m: imaplib.IMAP4) -> Any:
            folders = parseList(check(m.list()))
            return folders, check(m.select("INBOX")), check(m.select("Projects"))

        theirs, inbox, projects = yield session(dovecot.port, look)
        self.assertEqual(theirs, ours)
        self.assertEqual(inbox, [b"1"])
        self.assertEqual(projects, [b"0"])
        self.assertNotIn("Error", dovecot.log())
        self.assertNotIn("Warning", dovecot.log())
