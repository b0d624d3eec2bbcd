"""The CAPABILITY list after login compared with a real Dovecot 2.3's (started the way
the other interop tests start it, with its quota plugin): everything Dovecot offers that
pymaild does not is in L{NOT_YET}, the list of what is still to be done, so a
capability lost or a new Dovecot one shows up here.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from pymaild.auth.quota import Quotas
from tests.interop.test_dovecot import check, serversOverOneTree, session

#: Dovecot 2.3 capabilities pymaild does not offer yet (none: the list is empty, and
#: a capability Dovecot gains or pymaild loses fails the test).
NOT_YET: frozenset[str] = frozenset()


def capabilities(m: imaplib.IMAP4) -> set[str]:
    """The capabilities the logged-in session reports, upper-cased."""
    return {c.decode().upper() for c in check(m.capability())[0].split()}


class CapabilityTests(TestCase):
    """pymaild's list after login against Dovecot's."""

    timeout = 180

    @defer.inlineCallbacks
    def test_supersetButForTheKnownGaps(self) -> Any:
        """Every capability Dovecot advertises after login is pymaild's too, except
        those in NOT_YET; pymaild offers QUOTA, METADATA, BINARY and UTF8=ACCEPT."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-caps-", quota=True)
        pymaild.avatars.quotas = Quotas(pymaild.passwd, pymaild.store)
        ours = yield session(pymaild.port, capabilities)
        dovecot.start()
        theirs = yield session(dovecot.port, capabilities)
        self.assertIn("QUOTA", theirs)
        self.assertEqual(sorted(theirs - ours - NOT_YET), [])
        for cap in ("QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE", "METADATA",
                    "METADATA-SERVER", "BINARY", "UTF8=ACCEPT", "IMAP4REV1", "CONDSTORE",
                    "QRESYNC", "CATENATE", "URL-PARTIAL", "LOGIN-REFERRALS",
                    "I18NLEVEL=1", "CONTEXT=SEARCH", "NOTIFY"):
            self.assertIn(cap, ours)
