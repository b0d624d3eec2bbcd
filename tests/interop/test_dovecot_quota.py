"""Quotas that Dovecot and pymaild agree on: the same passwd-file rules
(C{userdb_quota_rule=...}) give the same limits in both, the usage pymaild reports is
what Dovecot's C{maildir} quota backend (the Maildir++ C{maildirsize} file) reports over
the same tree, and each counts the mail the other stored.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from pymaild.auth.quota import Quotas
from pymaild.store.quota import readMaildirsize
from tests.interop.test_dovecot import check, serversOverOneTree, session
from tests.support import setExtraFields
from tests.test_imap_helpers import ALICE, makeMessage

QUOTA_RE = re.compile(rb'^"User quota" \((.*)\)$')


def quotaOf(m: imaplib.IMAP4) -> bytes:
    """The resource list of INBOX's quota root, as the server answers GETQUOTAROOT."""
    _roots, quotas = check(m.getquotaroot("INBOX"))
    match = QUOTA_RE.match(quotas[0])
    assert match is not None, quotas
    return match.group(1)


class DovecotQuotaTests(TestCase):
    """Dovecot's quota plugin over pymaild's tree."""

    timeout = 180

    @defer.inlineCallbacks
    def test_sameUsageBothWays(self) -> Any:
        """pymaild and Dovecot report the same STORAGE and MESSAGE usage and limits for
        mail pymaild delivered; after Dovecot APPENDs, pymaild counts that message too,
        and both still agree; Dovecot refuses an APPEND over the limit as pymaild does."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-quota-", quota=True)
        setExtraFields(pymaild.passwd.path, ALICE,
                       "userdb_quota_rule=*:storage=64 userdb_quota_rule2=*:messages=4")
        pymaild.avatars.quotas = Quotas(pymaild.passwd, pymaild.store)
        for n in range(2):
            pymaild.store.deliver([ALICE], makeMessage(f"m{n}", b"x" * (9000 + n) + b"\r\n"))
        ours = yield session(pymaild.port, quotaOf)
        self.assertRegex(ours, rb"^STORAGE 1[78] 64 MESSAGE 2 4$")
        dovecot.start()
        theirs = yield session(dovecot.port, quotaOf)
        self.assertEqual(theirs, ours)

        def append(m: imaplib.IMAP4) -> Any:
            return check(m.append("INBOX", None, None,
                                  makeMessage("from dovecot", b"y" * 20000 + b"\r\n")))

        yield session(dovecot.port, append)
        dovecot.handOver()
        theirs = yield session(dovecot.port, quotaOf)
        ours = yield session(pymaild.port, quotaOf)
        self.assertEqual(ours, theirs)
        self.assertRegex(ours, rb"^STORAGE 3[89] 64 MESSAGE 3 4$")
        root = pymaild.store.account(ALICE).root
        limits, _usage = readMaildirsize(root) or ("", None)
        self.assertEqual(limits, "65536S,4C")

        def tooMuch(m: imaplib.IMAP4) -> Any:
            return m.append("INBOX", None, None, makeMessage("big", b"z" * 40000 + b"\r\n"))

        dovecot.handOver()  # pymaild (root, in a test) rewrote maildirsize
        typ, data = yield session(dovecot.port, tooMuch)
        self.assertEqual(typ, "NO")
        self.assertIn(b"OVERQUOTA", data[0])
        typ, data = yield session(pymaild.port, tooMuch)
        self.assertEqual(typ, "NO")
        self.assertIn(b"OVERQUOTA", data[0])
        self.assertNotIn("quota: Failed", dovecot.log())
