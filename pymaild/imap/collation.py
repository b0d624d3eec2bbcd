"""i;unicode-casemap (RFC 5051), the comparator I18NLEVEL=1 (RFC 5255 section 4.3)
makes the one SEARCH and SORT use.

L{casemap} is the RFC's key: every character replaced by its title case, then the
string fully decomposed (canonical and compatibility mappings), so that case aside,
C{"Été"} written precomposed or decomposed compares equal, and full-width letters as
their ASCII forms. SORT compares these keys' UTF-8 octets (L{sortKey}); SEARCH looks
for the needle's key in the haystack's (L{searchFold}). On ASCII the key is the upper
case, so the search fast paths compare plain ASCII lower-cased, needle and block.
"""

from __future__ import annotations

import functools
import unicodedata

CAPABILITY = b"I18NLEVEL=1"


def casemap(text: str) -> str:
    """The i;unicode-casemap key of C{text}: each character's simple title case, then
    the full decomposition (NFKD), as RFC 5051 has it and Dovecot does (C{ß} stays
    C{ß}; the ligature C{ﬁ} becomes C{fi}, lower case, which is not C{FI})."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFKD", text.translate(_titleTable()))


def _title(c: str) -> str:
    """The simple title-case mapping of character C{c} (UnicodeData.txt's): Python's
    full mapping where it is one character, else C{c} itself."""
    t = c.title()
    return t if len(t) == 1 else c


@functools.cache
def _titleTable() -> dict[int, str]:
    """The title-case table for C{str.translate} (a constant of the Unicode data, made
    at the first non-ASCII key, not at import: the pass over two planes costs 25 ms,
    which every process start and C{pymaild-admin} would pay; every cased character
    lies in the first two planes), so that a long text maps at C speed."""
    return {i: t for i in range(0x20000) for t in (_title(chr(i)),) if t != chr(i)}


def sortKey(text: str) -> bytes:
    """C{text} as SORT compares it: its L{casemap} key in UTF-8 octets."""
    return casemap(text).encode("utf-8", "replace")


def searchFold(text: str) -> str:
    """C{text} as SEARCH compares it, needle and haystack alike: its L{casemap} key
    (the substring operation of i;unicode-casemap is the substring test of keys)."""
    return casemap(text)
