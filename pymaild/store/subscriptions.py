"""The C{subscriptions} file in the Maildir root, in Dovecot's format.

Dovecot 2 writes version 2: the header C{"V\\t2\\n\\n"}, then one subscribed mailbox per
line, its hierarchy levels separated by a TAB and each level tab-escaped (C{\\x01} is
written C{\\x011}, TAB C{\\x01t}, CR C{\\x01r}, LF C{\\x01n}). Levels are storage names,
that is modified UTF-7 with Dovecot's default (non-UTF-8) Maildir++ layout. A file without
the header is version 1: one storage name per line with the layout's C{.} separator.
Dovecot updates the file by writing the new content into C{subscriptions.lock} (created
with C{O_EXCL}) and renaming it over C{subscriptions}; so does L{pymaild.store}.
"""

from __future__ import annotations

from collections.abc import Iterable

from pymaild.store import mutf7
from pymaild.store.names import DELIMITER, INBOX, isInbox

__all__ = ["SUBSCRIPTIONS_NAME", "VERSION2_HEADER", "parse", "serialise"]

SUBSCRIPTIONS_NAME = "subscriptions"
VERSION2_HEADER = b"V\t2\n\n"

_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_UNESCAPES = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}


def _tabEscape(s: str) -> str:
    """Dovecot's C{str_append_tabescaped}."""
    return "".join(_ESCAPES.get(ch, ch) for ch in s)


def _tabUnescape(s: str) -> str:
    """Dovecot's C{str_append_tabunescaped}: C{\\x01} + letter back to the character."""
    if "\x01" not in s:
        return s
    out = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\x01" and i + 1 < len(s):
            out.append(_UNESCAPES.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _decodeLevel(level: str) -> str:
    """A storage-name level decoded from modified UTF-7 (kept raw if it is not mUTF-7)."""
    try:
        return mutf7.decode(level)
    except mutf7.MUTF7Error:
        return level


def parse(data: bytes) -> list[str]:
    """The subscribed names (API form, C{/} delimiter) in file order, without duplicates."""
    text = data.decode("utf-8", "replace")
    if data.startswith(VERSION2_HEADER):
        body = text[len(VERSION2_HEADER):]
        rows = [[_tabUnescape(x) for x in line.split("\t")] for line in body.split("\n")]
    else:
        rows = [line.split(".") for line in text.split("\n")]
    out: list[str] = []
    seen: set[str] = set()
    for levels in rows:
        if not levels or levels == [""]:
            continue
        name = DELIMITER.join(_decodeLevel(x) for x in levels)
        if isInbox(name):
            name = INBOX
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def serialise(names: Iterable[str]) -> bytes:
    """Version 2 file content for the subscribed C{names}."""
    lines = [
        "\t".join(_tabEscape(mutf7.encode(level)) for level in name.split(DELIMITER))
        for name in names
    ]
    body = "".join(line + "\n" for line in lines)
    return VERSION2_HEADER + body.encode("utf-8")
