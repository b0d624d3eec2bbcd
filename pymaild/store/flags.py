"""Message flags in Maildir file names and the C{dovecot-keywords} file.

A file name is C{<key>:2,<letters>}: C{D F R S T} are C{\\Draft \\Flagged \\Answered
\\Seen \\Deleted}; C{a}..C{z} are keywords whose names C{dovecot-keywords} lists as
C{<index> <name>} lines (index 0 is C{a}); any other letter (C{P} = passed, ...) is not
an IMAP flag and is carried over unchanged when flags are replaced. Letters are written
sorted in ASCII order, as Dovecot does.
"""

from __future__ import annotations

from collections.abc import Iterable

from pymaild.errors import StoreError

__all__ = [
    "InvalidFlag", "TooManyKeywords", "SYSTEM_LETTERS", "LETTER_OF", "MAX_KEYWORDS",
    "INFO_SEP", "splitName", "infoLetters", "buildName", "normaliseFlags", "Keywords",
    "isValidKeyword",
]

SYSTEM_LETTERS: dict[str, str] = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
LETTER_OF: dict[str, str] = {v.lower(): k for k, v in SYSTEM_LETTERS.items()}
MAX_KEYWORDS = 26
FIRST_KEYWORD = "a"
INFO_SEP = ":"
RECENT = "\\recent"
# RFC 3501 atom-specials (besides CTL and SP), not allowed in a keyword.
_ATOM_SPECIALS = frozenset('(){%*"\\]')


class InvalidFlag(StoreError, ValueError):
    """A flag is not a system flag the store keeps nor a valid keyword atom."""


class TooManyKeywords(StoreError):
    """The folder already uses all 26 keyword letters (a..z) of Maildir file names."""


def splitName(filename: str) -> tuple[str, str | None]:
    """Split a Maildir file name into its unique key and the info after C{:} (or None).

    C{"1.M2P3Q4.h,S=5,W=5:2,RS"} gives C{("1.M2P3Q4.h,S=5,W=5", "2,RS")}.
    """
    key, sep, info = filename.partition(INFO_SEP)
    return key, (info if sep else None)


def infoLetters(info: str | None) -> str:
    """The flag letters of an info part: the text after C{2,}, or C{""} for other infos."""
    if info is None or not info.startswith("2,"):
        return ""
    return info[2:]


def buildName(key: str, letters: Iterable[str]) -> str:
    """The C{cur/} file name for C{key} carrying flag C{letters} (sorted, deduplicated)."""
    return key + INFO_SEP + "2," + "".join(sorted(set(letters)))


def isValidKeyword(name: str) -> bool:
    """True when C{name} is an IMAP atom usable as a keyword (7-bit, no specials)."""
    if not name or name.startswith("\\") or len(name) > 200:
        return False
    for ch in name:
        if not "\x21" <= ch <= "\x7e" or ch in _ATOM_SPECIALS:
            return False
    return True


def normaliseFlags(flags: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Split IMAP flag names into system letters and keyword names.

    System flags match case-insensitively; C{\\Recent} is ignored (it is not stored).
    Keywords keep their spelling, duplicates (case-insensitive) dropped, order kept.

    @raise InvalidFlag: an unknown C{\\}-flag or a keyword that is not an atom.
    """
    if isinstance(flags, str):
        raise InvalidFlag("flags must be an iterable of flag names, not one string")
    letters: set[str] = set()
    keywords: list[str] = []
    seen: set[str] = set()
    for flag in flags:
        if not isinstance(flag, str):
            raise InvalidFlag(f"flag {flag!r} is not text")
        low = flag.lower()
        if flag.startswith("\\"):
            if low == RECENT:
                continue
            letter = LETTER_OF.get(low)
            if letter is None:
                raise InvalidFlag(f"unknown system flag {flag!r}")
            letters.add(letter)
        else:
            if not isValidKeyword(flag):
                raise InvalidFlag(f"invalid keyword {flag!r}")
            if low not in seen:
                seen.add(low)
                keywords.append(flag)
    return frozenset(letters), tuple(keywords)


class Keywords:
    """The keyword table of one folder: up to 26 names, slot I{i} is letter C{a}+I{i}."""

    def __init__(self, slots: Iterable[str | None] = ()) -> None:
        """Build a table from slot names (None for a free slot)."""
        self.slots: list[str | None] = list(slots)[:MAX_KEYWORDS]
        self._index: dict[str, int] = {}
        for i, name in enumerate(self.slots):
            if name is not None:
                self._index.setdefault(name.lower(), i)

    @classmethod
    def parse(cls, data: bytes) -> Keywords:
        """Parse C{dovecot-keywords} content; malformed or out-of-range lines are skipped."""
        slots: list[str | None] = []
        for raw in data.split(b"\n"):
            line = raw.decode("utf-8", "replace").rstrip("\r")
            num, sep, name = line.partition(" ")
            if not sep or not name or not num.isdigit():
                continue
            idx = int(num)
            if idx >= MAX_KEYWORDS:
                continue
            while len(slots) <= idx:
                slots.append(None)
            slots[idx] = name
        return cls(slots)

    def serialise(self) -> bytes:
        """The C{dovecot-keywords} content: one C{<index> <name>} line per used slot."""
        return "".join(
            f"{i} {name}\n" for i, name in enumerate(self.slots) if name is not None
        ).encode("utf-8")

    def names(self) -> tuple[str, ...]:
        """The defined keyword names in slot order."""
        return tuple(n for n in self.slots if n is not None)

    def letterOf(self, name: str) -> str | None:
        """The letter of keyword C{name} (case-insensitive), or None if it has none."""
        idx = self._index.get(name.lower())
        return None if idx is None else chr(ord(FIRST_KEYWORD) + idx)

    def nameOf(self, letter: str) -> str | None:
        """The keyword name of a letter a..z, or None when that slot is free."""
        idx = ord(letter) - ord(FIRST_KEYWORD)
        if 0 <= idx < len(self.slots):
            return self.slots[idx]
        return None

    def allocate(self, name: str) -> str:
        """Give C{name} the first free slot and return its letter.

        @raise TooManyKeywords: all 26 slots are used.
        """
        existing = self.letterOf(name)
        if existing is not None:
            return existing
        for i, slot in enumerate(self.slots):
            if slot is None:
                self.slots[i] = name
                self._index[name.lower()] = i
                return chr(ord(FIRST_KEYWORD) + i)
        if len(self.slots) >= MAX_KEYWORDS:
            raise TooManyKeywords(
                f"cannot add keyword {name!r}: this folder already has {MAX_KEYWORDS}")
        self.slots.append(name)
        self._index[name.lower()] = len(self.slots) - 1
        return chr(ord(FIRST_KEYWORD) + len(self.slots) - 1)

    def flagsOf(self, letters: str) -> frozenset[str]:
        """The IMAP flag names of info letters (unknown and non-flag letters skipped)."""
        out = set()
        for ch in letters:
            sysflag = SYSTEM_LETTERS.get(ch)
            if sysflag is not None:
                out.add(sysflag)
            elif "a" <= ch <= "z":
                name = self.nameOf(ch)
                if name is not None:
                    out.add(name)
        return frozenset(out)
