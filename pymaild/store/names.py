"""Folder names: validation, INBOX folding, and the Maildir++ directory names on disk.

The API speaks Unicode names with C{/} as the hierarchy delimiter (C{"Lists/Twisted"}).
On disk, a folder other than INBOX is the directory C{.<c1>.<c2>...} under the Maildir
root, each component in IMAP modified UTF-7 -- Dovecot's default C{maildir:} layout with
C{separator = /}. Since C{.} separates components on disk, a C{.} inside a component is
refused, as Dovecot does in this layout.
"""

from __future__ import annotations

from pymaild.errors import InvalidFolderName
from pymaild.store import mutf7

__all__ = [
    "INBOX", "DELIMITER", "MAX_DIRNAME_BYTES", "normalise", "isInbox", "toDirName",
    "fromDirName", "parents",
]

INBOX = "INBOX"
DELIMITER = "/"
MAX_DIRNAME_BYTES = 255
_WILDCARDS = frozenset("*%")


def isInbox(name: str) -> bool:
    """True when C{name} is INBOX in any letter case."""
    return name.upper() == INBOX


def normalise(name: object) -> str:
    """Validate a folder name and return its canonical spelling.

    INBOX (in any case) becomes C{"INBOX"}, also as the first component of a longer name
    (C{"inbox/x"} is C{"INBOX/x"}).

    @raise InvalidFolderName: with the reason: not text, empty, leading/trailing or doubled
        C{/}, a C{.} in a component, C{\\}, a wildcard, a control character, a lone
        surrogate, or an on-disk name longer than 255 bytes.
    """
    if not isinstance(name, str):
        raise InvalidFolderName("folder name must be text")
    if not name:
        raise InvalidFolderName("empty folder name")
    for ch in name:
        if ch < "\x20" or "\x7f" <= ch <= "\x9f":
            raise InvalidFolderName(f"control character {ch!r} in folder name")
        if ch == "\\":
            raise InvalidFolderName("backslash in folder name")
        if ch in _WILDCARDS:
            raise InvalidFolderName(f"wildcard {ch!r} in folder name")
        if "\ud800" <= ch <= "\udfff":
            raise InvalidFolderName("lone surrogate in folder name")
    if name.startswith(DELIMITER) or name.endswith(DELIMITER):
        raise InvalidFolderName("folder name starts or ends with '/'")
    parts = name.split(DELIMITER)
    for part in parts:
        if not part:
            raise InvalidFolderName("empty hierarchy level ('//') in folder name")
        if "." in part:
            raise InvalidFolderName(
                f"'.' is not allowed in a folder name component ({part!r})")
    if isInbox(parts[0]):
        parts[0] = INBOX
    result = DELIMITER.join(parts)
    if result != INBOX:
        dirname = toDirName(result)
        if len(dirname.encode("ascii")) > MAX_DIRNAME_BYTES:
            raise InvalidFolderName("folder name too long (over 255 bytes on disk)")
    return result


def toDirName(name: str) -> str:
    """The Maildir++ directory name of a normalised folder name other than INBOX."""
    return "." + ".".join(mutf7.encode(part) for part in name.split(DELIMITER))


def fromDirName(dirname: str) -> str | None:
    """The folder name a Maildir++ directory entry stands for, or None if it is none.

    Entries that are not C{.<something>}, have empty components, are not canonical
    modified UTF-7, or would not pass L{normalise} (for example C{.INBOX} itself, which
    would shadow INBOX) are ignored.
    """
    if len(dirname) < 2 or not dirname.startswith(".") or dirname == "..":
        return None
    comps = dirname[1:].split(".")
    try:
        parts = [mutf7.decode(c) for c in comps]
    except mutf7.MUTF7Error:
        return None
    if any(not p or DELIMITER in p for p in parts):
        return None
    name = DELIMITER.join(parts)
    try:
        canon = normalise(name)
    except InvalidFolderName:
        return None
    if canon == INBOX or toDirName(canon) != dirname:
        return None
    return canon


def parents(name: str) -> list[str]:
    """The proper ancestors of C{name}, outermost first: C{"a/b/c"} gives C{["a", "a/b"]}."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]
