"""Each user's quota limits and the checks before storing (L{pymaild.auth.quota})."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pymaild.auth.quota import QuotaExceeded, Quotas
from pymaild.errors import StoreFull
from pymaild.quotarules import QuotaLimits
from pymaild.store.quota import MAILDIRSIZE, readMaildirsize
from tests.support import ALICE, BOB, mailFixture, setExtraFields


class QuotasTests(SynchronousTestCase):
    """Limits from the passwd file's extra fields over the configured default."""

    def setUp(self) -> None:
        """Alice and Bob; Alice's line carries quota rules, Bob has the default."""
        self.base, self.config, self.store, self.passwd = mailFixture(
            self, "always", "imap", {})
        setExtraFields(self.passwd.path, ALICE,
                       "userdb_quota_rule=*:bytes=1000 userdb_quota_rule2=*:messages=3")
        self.quotas = Quotas(self.passwd, self.store, QuotaLimits(storage=1 << 20))

    def test_limits(self) -> None:
        """Alice's own rules replace the default; Bob and unknown users get it."""
        self.assertEqual(self.quotas.limits(ALICE), QuotaLimits(storage=1000, messages=3))
        self.assertEqual(self.quotas.limits(BOB), QuotaLimits(storage=1 << 20))
        self.assertEqual(self.quotas.limits("nobody@example.org"),
                         QuotaLimits(storage=1 << 20))

    def test_badRuleSkipped(self) -> None:
        """A rule pymaild does not apply is skipped (logged); the others hold."""
        setExtraFields(self.passwd.path, BOB,
                       "userdb_quota_rule=Trash:storage=+10M userdb_quota_rule2=*:messages=7")
        self.assertEqual(self.quotas.limits(BOB),
                         QuotaLimits(storage=1 << 20, messages=7))
        self.flushLoggedErrors()

    def test_check(self) -> None:
        """Messages fit until the bytes or the count would pass a limit; a message
        larger than the whole limit is C{tooBig}; QuotaExceeded is a StoreFull."""
        self.quotas.check(ALICE, 1000)
        self.store.deliver([ALICE], b"Subject: a\r\n\r\n" + b"x" * 400 + b"\r\n")
        used = self.quotas.usage(ALICE)
        self.assertEqual(used.messages, 1)
        self.quotas.check(ALICE, 1000 - used.bytes)
        e = self.assertRaises(QuotaExceeded, self.quotas.check, ALICE, 1001 - used.bytes)
        self.assertFalse(e.tooBig)
        self.assertIsInstance(e, StoreFull)
        self.assertTrue(self.assertRaises(QuotaExceeded, self.quotas.check,
                                          ALICE, 1001).tooBig)
        self.store.deliver([ALICE], b"Subject: b\r\n\r\nb\r\n")
        self.store.deliver([ALICE], b"Subject: c\r\n\r\nc\r\n")
        e = self.assertRaises(QuotaExceeded, self.quotas.check, ALICE, 1)
        self.assertIn("message quota", str(e))
        self.assertIsNotNone(self.quotas.isFull(ALICE))
        self.assertIsNone(self.quotas.isFull(BOB, 5000))

    def test_unlimited(self) -> None:
        """Without any limit everything fits and no maildirsize is written."""
        quotas = Quotas(self.passwd, self.store)
        self.store.deliver([BOB], b"Subject: a\r\n\r\na\r\n")
        quotas.check(BOB, 1 << 40, 10**9)
        self.assertEqual(quotas.usage(BOB).messages, 1)
        root = self.store.account(BOB).root
        self.assertFalse(os.path.exists(os.path.join(root, MAILDIRSIZE)))

    def test_maildirsizeKept(self) -> None:
        """Counting a limited account brings its maildirsize up to date, with the
        user's limits on the first line."""
        self.store.deliver([ALICE], b"Subject: a\r\n\r\na\r\n")
        usage = self.quotas.usage(ALICE)
        root = self.store.account(ALICE).root
        self.assertEqual(readMaildirsize(root), ("1000S,3C", usage))
