"""Comparators and match types (RFC 5228 section 2.7, RFC 5231, the regex draft) (pure).

Every match is linear in its inputs: C{:matches} and C{:regex} are translated to RE2
(google-re2), which never backtracks, so no key and no header value can stall a script.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pymaild.sieve.checker import compileRegex


def asciiLower(text: str) -> str:
    """C{text} with A-Z lowered and nothing else changed (i;ascii-casemap)."""
    return text.translate(_LOWER)


_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_DIGITS = re.compile(r"[0-9]*")


def numeric(text: str) -> float:
    """The i;ascii-numeric value of C{text}: its leading digits, or infinity (RFC 4790)."""
    digits = _DIGITS.match(text)
    return int(digits.group()) if digits and digits.group() else float("inf")


def _prepare(text: str, comparator: str) -> str:
    """C{text} as the comparator sees it for equality and substrings."""
    return asciiLower(text) if comparator == "i;ascii-casemap" else text


def _relate(a: Any, b: Any, relation: str) -> bool:
    """C{a relation b}."""
    if relation == "gt":
        return bool(a > b)
    if relation == "ge":
        return bool(a >= b)
    if relation == "lt":
        return bool(a < b)
    if relation == "le":
        return bool(a <= b)
    if relation == "eq":
        return bool(a == b)
    return bool(a != b)


def globToRegex(pattern: str) -> str:
    """A C{:matches} pattern as an RE2 pattern capturing each wildcard."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "*":
            out.append("(.*?)")
        elif ch == "?":
            out.append("(.)")
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


class Matcher:
    """One test's comparator and match type, applied to values and keys.

    @ivar captured: the match variables of the last successful C{:matches} or
        C{:regex} (C{${0}} first), or None.
    """

    def __init__(self, opts: dict[str, Any]) -> None:
        self.comparator = opts.get("comparator", "i;ascii-casemap")
        self.match = opts.get("match", "is")
        self.relation = opts.get("relation", "eq")
        self.captured: list[str] | None = None
        self._compiled: dict[str, Any] = {}

    def _regex(self, key: str) -> Any:
        """The compiled RE2 for C{key} under this match type."""
        hit = self._compiled.get(key)
        if hit is None:
            import re2

            caseless = self.comparator == "i;ascii-casemap"
            if self.match == "regex":
                hit = compileRegex(key, caseless)
            else:
                options = re2.Options()
                options.dot_nl = True
                options.case_sensitive = not caseless
                options.max_mem = 8 << 20
                options.log_errors = False
                hit = re2.compile(globToRegex(key), options)
            self._compiled[key] = hit
        return hit

    def one(self, value: str, key: str) -> bool:
        """Whether one value matches one key."""
        comparator = self.comparator
        match = self.match
        if match == "value":
            if comparator == "i;ascii-numeric":
                return _relate(numeric(value), numeric(key), self.relation)
            return _relate(_prepare(value, comparator), _prepare(key, comparator),
                           self.relation)
        if match == "is":
            if comparator == "i;ascii-numeric":
                return numeric(value) == numeric(key)
            return _prepare(value, comparator) == _prepare(key, comparator)
        if match == "contains":
            return _prepare(key, comparator) in _prepare(value, comparator)
        if match == "matches":
            m = self._regex(key).fullmatch(value)
        else:
            m = self._regex(key).search(value)
        if m is None:
            return False
        groups = [m.group(0), *(g or "" for g in m.groups())]
        self.captured = groups[:10] if match == "matches" else groups[:10]
        return True

    def any(self, values: Iterable[str], keys: list[str]) -> bool:
        """Whether any value matches any key (C{:count} compares how many values)."""
        if self.match == "count":
            count = str(sum(1 for _ in values))
            return any(_relate(numeric(count), numeric(k), self.relation) for k in keys)
        for value in values:
            for key in keys:
                if self.one(value, key):
                    return True
        return False


__all__ = ["Matcher", "asciiLower", "globToRegex", "numeric"]
