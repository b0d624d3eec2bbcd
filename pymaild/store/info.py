"""What a scan of the Maildir store reports: L{MessageInfo}, one message, and
L{FolderState}, one folder.

A L{MessageInfo} holds its file name as a shared L{Place} and its size as None when the
key's C{,W=} field gives it, so that a 100,000-message folder keeps one copy of each
message's name and no size objects (see L{pymaild.store.maildir}, "Memory").
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

_W_RE = re.compile(r",W=(\d+)")


try:
    from _collections import _tuplegetter  # type: ignore[import-not-found]  # C accessor
except ImportError:  # pragma: no cover - other Pythons
    def _tuplegetter(index: int, doc: str) -> Any:
        """A read-only property returning item C{index} of a tuple."""
        return property(operator.itemgetter(index), doc=doc)

Place = tuple[str, "str | None"]
"""Where a message file is, relative to its folder, as a (head, tail) pair shared by every
message with the same subdirectory and info part: the file name is C{head + key + tail}
(C{("cur/", ":2,S")}); C{(filename, None)} for a name that does not follow that form."""


def _compactSize(key: str, size: int) -> int | None:
    """How a L{MessageInfo} holds C{size}: None when the key's C{,W=} field says it (the
    usual case; no int object per message), else the number."""
    return None if size == _vsizeFromName(key) else size


def _placeOf(key: str, filename: str) -> Place:
    """The L{Place} of C{filename} for a message called C{key}."""
    if filename[3:4] == "/" and filename.startswith(key, 4):
        return filename[:4], filename[4 + len(key):]
    return filename, None


class MessageInfo(tuple):  # type: ignore[type-arg]
    """One message as a scan saw it (immutable).

    @ivar uid: its IMAP UID.
    @ivar key: its unique base name (the file name without C{:2,...}); stable across flag
        changes, the handle for L{Folder.setFlags}, L{Folder.expunge}, L{Folder.copy}.
    @ivar filename: its path relative to the folder directory when scanned
        (C{"cur/<key>:2,S"} or C{"new/<key>"}); it may since have been renamed.
    @ivar flags: IMAP flag names, keywords included (never C{\\Recent}).
    @ivar size: the size in octets with CRLF line ends (what L{Folder.open} returns).

    A tuple like a C{NamedTuple} of those five fields, except that it holds the file name
    as a shared L{Place} and builds the string when asked, and the size as None when the
    key's C{,W=} field gives it: a 100,000-message folder then keeps one copy of each
    message's name (its key), not two, and no size objects. Equal fields still make
    equal (and equally hashed) infos however they were made.
    """

    __slots__ = ()
    _fields = ("uid", "key", "filename", "flags", "size")

    def __new__(cls, uid: int, key: str, filename: str, flags: frozenset[str],
                size: int) -> MessageInfo:
        """A MessageInfo of these fields."""
        return tuple.__new__(cls, (uid, key, _placeOf(key, filename), flags,
                                   _compactSize(key, size)))

    @classmethod
    def fromPlace(cls, uid: int, key: str, place: Place, flags: frozenset[str],
                  size: int | None) -> MessageInfo:
        """A MessageInfo from a L{Place} and a size as L{_compactSize} gives it (the
        store's scans: no parsing of a file name)."""
        return tuple.__new__(cls, (uid, key, place, flags, size))

    def __getnewargs__(self) -> tuple[int, str, str, frozenset[str], int]:
        """The constructor's arguments (pickle and copy)."""
        return self.uid, self.key, self.filename, self.flags, self.size

    def __repr__(self) -> str:
        """C{MessageInfo(uid=..., key=..., filename=..., flags=..., size=...)}."""
        return (f"MessageInfo(uid={self.uid!r}, key={self.key!r}, "
                f"filename={self.filename!r}, flags={self.flags!r}, size={self.size!r})")

    uid: int = _tuplegetter(0, "The IMAP UID.")
    key: str = _tuplegetter(1, "The unique base name.")
    place: Place = _tuplegetter(
        2, "The file name as a shared (head, tail) L{Place}.")
    flags: frozenset[str] = _tuplegetter(3, "The IMAP flag names.")

    @property
    def size(self) -> int:
        """The size in octets with CRLF line ends."""
        size = self[4]
        return _vsizeFromName(self[1]) if size is None else size  # type: ignore[return-value]

    @property
    def filename(self) -> str:
        """The path relative to the folder directory when scanned."""
        head, tail = self[2]
        return head if tail is None else head + self[1] + tail  # type: ignore[no-any-return]


@dataclass(frozen=True)
class FolderState:
    """The result of L{Folder.scan}: the folder's UIDVALIDITY, next UID and messages.

    @ivar messages: sorted by UID.
    @ivar recent: UIDs claimed by this scan (C{claimRecent=True}) or still in C{new/}.
    @ivar keywords: the keywords defined for the folder, in letter order.
    """

    uidvalidity: int
    uidnext: int
    messages: list[MessageInfo]
    recent: frozenset[int]
    keywords: tuple[str, ...]
    guid: str = ""
    """The folder's GUID (the uidlist's C{G}): kept by RENAME, new for a new folder."""
    highestModseq: int = 0
    """HIGHESTMODSEQ (RFC 7162) after this scan (L{pymaild.store.modseq})."""
    version: int = 0
    """Equal for two scans of this process whose message lists are the same objects
    (unique across folders; 0: unknown), so that the caller need not compare them."""


# -- helpers ---------------------------------------------------------------------------

def _vsizeFromName(key: str) -> int | None:
    """The CRLF size from the name's C{,W=} field, or None.

    Without C{W=} the size is unknown: an C{S=} alone is the raw size, which differs from
    the CRLF size for LF-only files.
    """
    i = key.rfind(",W=")
    if i < 0:
        return None
    tail = key[i + 3:]
    if tail.isdigit():
        return int(tail)
    m = _W_RE.search(key)
    return int(m.group(1)) if m else None
