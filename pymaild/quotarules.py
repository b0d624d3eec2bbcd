"""Dovecot C{quota_rule} syntax: the limits a rule sets (pure; stdlib only).

Rules understood: the mailbox C{*} (the whole account) with C{storage=} (kilobytes
unless a C{b}, C{k}, C{M}, C{G} or C{T} suffix, optionally followed by C{B}, says
otherwise), C{bytes=} (bytes unless suffixed) and C{messages=} (a count), several of
them joined by C{:} (C{*:storage=1G:messages=1000}). A limit of 0 means none, as in
Dovecot. Rules for single mailboxes (C{Trash:storage=+100M}, C{Spam:ignore}) and
relative values (C{+}, C{-}, C{%}) are refused by L{parseRule}.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^(\d{1,20})\s*([bkmgt]?)b?$", re.IGNORECASE)
_FIELD_RE = re.compile(r"^(?:userdb_)?quota_rule\d*$")


@dataclass(frozen=True)
class QuotaLimits:
    """One account's limits: C{storage} in bytes and C{messages}; None is no limit."""

    storage: int | None = None
    messages: int | None = None

    @property
    def unlimited(self) -> bool:
        """Whether neither resource is limited."""
        return self.storage is None and self.messages is None


def _size(value: str, defaultUnit: int) -> int:
    """A Dovecot size: digits and an optional unit suffix; bare digits in C{defaultUnit}.

    @raise ValueError: not a size.
    """
    m = _SIZE_RE.match(value.strip())
    if m is None:
        raise ValueError(f"not a size: {value!r}")
    unit = m.group(2).lower()
    return int(m.group(1)) * (_UNITS[unit] if unit else defaultUnit)


def parseRule(rule: str) -> dict[str, int | None]:
    """The limits one Dovecot quota rule sets: C{{"storage": bytes|None, "messages":
    n|None}} for the names it mentions (0 becomes None: no limit).

    @raise ValueError: a syntax or a rule pymaild does not apply (see the module).
    """
    mailbox, sep, rest = rule.strip().partition(":")
    if not sep or not rest:
        raise ValueError(f"expected MAILBOX:LIMIT=VALUE, got {rule!r}")
    if mailbox != "*":
        raise ValueError(f"only rules for the whole account (*) are supported: {rule!r}")
    out: dict[str, int | None] = {}
    for part in rest.split(":"):
        name, eq, value = part.strip().partition("=")
        name = name.lower()
        if not eq:
            raise ValueError(f"expected LIMIT=VALUE in {rule!r}, got {part!r}")
        if value[:1] in ("+", "-") or value.endswith("%"):
            raise ValueError(f"relative limits are not supported: {rule!r}")
        if name == "storage":
            amount = _size(value, 1 << 10)
            out["storage"] = amount or None
        elif name == "bytes":
            amount = _size(value, 1)
            out["storage"] = amount or None
        elif name == "messages":
            amount = _size(value, 1)
            out["messages"] = amount or None
        else:
            raise ValueError(f"unknown quota limit {name!r} in {rule!r}")
    return out


def applyRules(base: QuotaLimits, rules: list[str] | tuple[str, ...]) -> QuotaLimits:
    """C{base} with the limits C{rules} set replaced.

    @raise ValueError: a rule is malformed (L{parseRule}).
    """
    storage, messages = base.storage, base.messages
    for rule in rules:
        parsed = parseRule(rule)
        storage = parsed.get("storage", storage)
        messages = parsed.get("messages", messages)
    return QuotaLimits(storage, messages)


def rulesFromExtra(extra: str) -> list[str]:
    """The quota rules among a passwd-file line's extra fields (C{name=value} words,
    shell-quoted as Dovecot allows), in the order Dovecot applies them (C{quota_rule},
    then C{quota_rule2}, ...)."""
    try:
        words = shlex.split(extra)
    except ValueError:
        words = extra.split()
    found: list[tuple[int, str]] = []
    for word in words:
        name, eq, value = word.partition("=")
        if eq and _FIELD_RE.match(name):
            digits = re.sub(r"\D", "", name)
            found.append((int(digits) if digits else 1, value))
    return [v for _, v in sorted(found, key=lambda x: x[0])]



__all__ = ["QuotaLimits", "applyRules", "parseRule", "rulesFromExtra"]
