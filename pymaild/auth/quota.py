"""Mail quotas: each user's limits and usage, and the checks before mail is stored.

Limits come in Dovecot's C{quota_rule} syntax (RFC 9208 resources STORAGE and
MESSAGE), from the user's passwd-file extra fields (C{userdb_quota_rule=*:storage=1G},
C{userdb_quota_rule2=*:messages=10000}, or the same without the C{userdb_} prefix)
and otherwise from the configuration's C{quota.rules}. A user's own rules replace the
default limit they name; a limit of 0 means none, as in Dovecot.

The rules understood are L{pymaild.quotarules}'; in a passwd file a rule it refuses is
logged and skipped.

Usage is the store's (L{pymaild.store.quota.UsageCounter}). Everything here blocks:
callers use a runner.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger

from pymaild.errors import StoreFull
from pymaild.quotarules import QuotaLimits, applyRules, rulesFromExtra
from pymaild.store.quota import Usage, UsageCounter

log = Logger()

#: The name of the one quota root every account has (Dovecot's default name).
ROOT_NAME = "User quota"


class QuotaExceeded(StoreFull):
    """Storing would take an account over its quota; nothing was stored.

    @ivar tooBig: the message alone is larger than the whole storage limit, so it can
        never be stored (SMTP's permanent C{552 5.2.2}).
    """

    def __init__(self, message: str, tooBig: bool = False) -> None:
        super().__init__(message)
        self.tooBig = tooBig


class Quotas:
    """Limits and usage of every account, and the checks before storing (blocking).

    @param passwd: the L{pymaild.auth.passwd.PasswdFile} holding per-user rules.
    @param store: the L{pymaild.store.MaildirStore} (for each account's Maildir root).
    @param default: the limits of users without rules of their own (none by default).
    @param counter: the L{UsageCounter} (a new one by default).
    """

    def __init__(self, passwd: Any, store: Any, default: QuotaLimits | None = None,
                 counter: UsageCounter | None = None) -> None:
        self.passwd = passwd
        self.store = store
        self.default = default if default is not None else QuotaLimits()
        self.counter = counter if counter is not None else UsageCounter()
        self._parsed: dict[str, QuotaLimits] = {}

    def limits(self, address: str) -> QuotaLimits:
        """The limits of C{address} (the default for an unknown user)."""
        entry = self.passwd.lookup(address)
        extra = entry.extra if entry is not None else ""
        if not extra:
            return self.default
        hit = self._parsed.get(extra)
        if hit is not None:
            return hit
        limits = self.default
        for rule in rulesFromExtra(extra):
            try:
                limits = applyRules(limits, [rule])
            except ValueError as e:
                log.warn("passwd file: quota rule of {user} skipped: {why}",
                         user=address, why=str(e))
        if len(self._parsed) > 10000:
            self._parsed.clear()
        self._parsed[extra] = limits
        return limits

    def _root(self, address: str) -> str:
        """The Maildir root of C{address}."""
        return str(self.store._accountRoot(address)[1])

    def usage(self, address: str, keep: bool = True) -> Usage:
        """What C{address} holds now; with C{keep} (the server), C{maildirsize} is
        brought up to date too (tools running as another user pass False)."""
        root = self._root(address)
        usage = self.counter.usage(root)
        if keep:
            limits = self.limits(address)
            if not limits.unlimited and os.path.isdir(root):
                self.counter.record(root, usage, limits.storage, limits.messages)
        return usage

    def report(self, address: str, keep: bool = True) -> tuple[Usage, QuotaLimits]:
        """C{(usage, limits)} of C{address} (C{keep} as for L{usage})."""
        limits = self.limits(address)
        return self.usage(address, keep), limits

    def check(self, address: str, size: int, count: int = 1) -> None:
        """Refuse storing C{count} messages of C{size} bytes in all for C{address}.

        @raise QuotaExceeded: they would not fit (C{tooBig} when a single message, or
            all of them, exceed the whole storage limit).
        """
        limits = self.limits(address)
        if limits.unlimited:
            return
        if limits.storage is not None and size > limits.storage:
            raise QuotaExceeded(f"{address}: message larger than the quota", tooBig=True)
        usage = self.usage(address)
        if limits.storage is not None and usage.bytes + size > limits.storage:
            raise QuotaExceeded(f"{address}: storage quota exceeded")
        if limits.messages is not None and usage.messages + count > limits.messages:
            raise QuotaExceeded(f"{address}: message quota exceeded")

    def isFull(self, address: str, size: int = 0) -> QuotaExceeded | None:
        """The L{QuotaExceeded} L{check} would raise for one message of C{size}
        bytes, or None when it fits."""
        try:
            self.check(address, size, 1)
        except QuotaExceeded as e:
            return e
        return None


def _human(n: int) -> str:
    """A byte count for people: C{512 B}, C{1.5 KiB}, C{12 MiB}, C{1 GiB}."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B" or value >= 10 or value == int(value):
                return f"{value:.0f} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover (the loop always returns)


def describe(usage: Usage, limits: QuotaLimits) -> str:
    """One line for admins: C{"1.5 MiB of 1 GiB (0%), 3 of 10000 messages (0%)"};
    an unlimited resource shows the usage alone."""

    def part(used: str, n: int, limit: int | None, suffix: str = "") -> str:
        if limit is None:
            return f"{used}{suffix}"
        return f"{used} of {limit if suffix else _human(limit)}{suffix} ({100 * n // limit}%)"

    return (part(_human(usage.bytes), usage.bytes, limits.storage) + ", "
            + part(str(usage.messages), usage.messages, limits.messages, " messages"))


__all__ = ["ROOT_NAME", "describe", "QuotaExceeded", "QuotaLimits", "Quotas"]
