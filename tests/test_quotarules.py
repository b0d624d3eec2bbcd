"""Dovecot C{quota_rule} syntax (L{pymaild.quotarules})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pymaild.quotarules import QuotaLimits, applyRules, parseRule, rulesFromExtra


class ParseRuleTests(SynchronousTestCase):
    """L{parseRule} reads what Dovecot's quota_rule setting accepts for C{*}."""

    def test_storageUnits(self) -> None:
        """C{storage=} without a suffix is in KiB; b/k/M/G/T (with or without B) scale."""
        self.assertEqual(parseRule("*:storage=1024"), {"storage": 1 << 20})
        self.assertEqual(parseRule("*:storage=1G"), {"storage": 1 << 30})
        self.assertEqual(parseRule("*:storage=5GB"), {"storage": 5 << 30})
        self.assertEqual(parseRule("*:storage=100M"), {"storage": 100 << 20})
        self.assertEqual(parseRule("*:storage=2T"), {"storage": 2 << 40})
        self.assertEqual(parseRule("*:storage=512b"), {"storage": 512})

    def test_bytesAndMessages(self) -> None:
        """C{bytes=} is in bytes, C{messages=} a count; several limits join with C{:}."""
        self.assertEqual(parseRule("*:bytes=1000"), {"storage": 1000})
        self.assertEqual(parseRule("*:messages=10000"), {"messages": 10000})
        self.assertEqual(parseRule("*:storage=10M:messages=50"),
                         {"storage": 10 << 20, "messages": 50})

    def test_zeroIsUnlimited(self) -> None:
        """A limit of 0 means no limit, as in Dovecot."""
        self.assertEqual(parseRule("*:storage=0"), {"storage": None})
        self.assertEqual(parseRule("*:messages=0"), {"messages": None})

    def test_refused(self) -> None:
        """Malformed rules, per-mailbox rules and relative values raise ValueError."""
        for bad in ("", "*", "*:", "storage=1G", "*:storage", "*:storage=lots",
                    "*:storage=1X", "*:frobs=3", "Trash:storage=+100M", "Spam:ignore",
                    "*:storage=+10M", "*:storage=-10M", "*:storage=10%",
                    "*:storage=" + "9" * 30):
            self.assertRaises(ValueError, parseRule, bad)


class ApplyRulesTests(SynchronousTestCase):
    """L{applyRules} replaces only the limits the rules name."""

    def test_override(self) -> None:
        """A user's storage rule keeps the default message limit."""
        base = QuotaLimits(storage=1 << 30, messages=1000)
        self.assertEqual(applyRules(base, ["*:storage=10M"]),
                         QuotaLimits(storage=10 << 20, messages=1000))
        self.assertEqual(applyRules(base, ["*:storage=0"]),
                         QuotaLimits(storage=None, messages=1000))
        self.assertTrue(applyRules(QuotaLimits(), []).unlimited)


class ExtraFieldsTests(SynchronousTestCase):
    """L{rulesFromExtra} finds quota rules among a passwd line's extra fields."""

    def test_fields(self) -> None:
        """C{userdb_quota_rule}, numbered rules in order, and the unprefixed form."""
        extra = ("userdb_quota_rule2=*:messages=10 allow_nets=127.0.0.1/8"
                 " userdb_quota_rule=*:storage=1G")
        self.assertEqual(rulesFromExtra(extra), ["*:storage=1G", "*:messages=10"])
        self.assertEqual(rulesFromExtra("quota_rule=*:bytes=5"), ["*:bytes=5"])
        self.assertEqual(rulesFromExtra("userdb_mail=maildir:~/Maildir"), [])
        self.assertEqual(rulesFromExtra('userdb_quota_rule="*:storage=1M"'), ["*:storage=1M"])
        self.assertEqual(rulesFromExtra('broken="quote'), [])
