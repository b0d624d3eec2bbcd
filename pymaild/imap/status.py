"""STATUS items (RFC 3501 section 6.3.10) with STATUS=SIZE (RFC 8438), APPENDLIMIT
(RFC 7889), MAILBOXID (RFC 8474) and HIGHESTMODSEQ (RFC 7162): parsing the item list
and rendering one C{* STATUS} response.

Shared by the STATUS command and LIST's C{RETURN (STATUS (...))} (LIST-STATUS,
RFC 5819), so both accept and answer exactly the same items.

QUOTA's DELETED and DELETED-STORAGE (RFC 9208 section 4.2, L{QUOTA_ITEMS}) are the
messages flagged \\Deleted and the KiB (rounded up) an EXPUNGE would free.
"""

from __future__ import annotations

from typing import Any

from pymaild.imap import objectid
from pymaild.imap.syntax import BadCommand, Reader, encodeMailbox

ITEMS = (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"SIZE",
         b"APPENDLIMIT", b"MAILBOXID", b"HIGHESTMODSEQ")
"""The STATUS data items understood."""

QUOTA_ITEMS = (b"DELETED", b"DELETED-STORAGE")
"""The items RFC 9208 adds, understood too."""


def parseItems(r: Reader) -> list[bytes]:
    """A parenthesised, non-empty list of STATUS items (each kept once, in order).

    @raise BadCommand: not a list, empty, or an unknown item.
    """
    r.openParen()
    items: list[bytes] = []
    first = True
    while r.peek() != 0x29:
        if not first:
            r.sp()
        first = False
        item = r.atom().upper()
        if item not in ITEMS and item not in QUOTA_ITEMS:
            raise BadCommand("unknown STATUS item " + item.decode("ascii", "replace"))
        if item not in items:
            items.append(item)
    r.closeParen()
    if not items:
        raise BadCommand("empty STATUS item list")
    return items


def statusLine(name: str, state: Any, items: list[bytes], appendLimit: int,
               utf8: bool = False) -> bytes:
    """The C{* STATUS} response (without CRLF) for folder C{name} in scan C{state}
    (the name in UTF-8 with C{utf8}, after ENABLE UTF8=ACCEPT).

    C{SIZE} is the sum of the messages' RFC822.SIZE (what FETCH reports, so a client
    can check one against the other); C{APPENDLIMIT} is the largest APPEND accepted.
    """
    values: dict[bytes, int | bytes] = {}
    for item in items:
        if item == b"MESSAGES":
            values[item] = len(state.messages)
        elif item == b"RECENT":
            values[item] = len(state.recent)
        elif item == b"UIDNEXT":
            values[item] = state.uidnext
        elif item == b"UIDVALIDITY":
            values[item] = state.uidvalidity
        elif item == b"UNSEEN":
            values[item] = sum(1 for m in state.messages if "\\Seen" not in m.flags)
        elif item == b"SIZE":
            values[item] = sum(m.size for m in state.messages)
        elif item == b"APPENDLIMIT":
            values[item] = appendLimit
        elif item == b"HIGHESTMODSEQ":
            values[item] = getattr(state, "highestModseq", 0) or 1
        elif item == b"MAILBOXID":
            values[item] = b"(" + objectid.mailboxId(state.guid) + b")"
        elif item == b"DELETED":
            values[item] = sum(1 for m in state.messages if "\\Deleted" in m.flags)
        elif item == b"DELETED-STORAGE":
            deleted = sum(m.size for m in state.messages if "\\Deleted" in m.flags)
            values[item] = -(-deleted // 1024)
    body = b" ".join(b"%s %s" % (i, v if isinstance(v, bytes) else b"%d" % v)
                     for i, v in ((i, values[i]) for i in items))
    return b"* STATUS " + encodeMailbox(name, utf8) + b" (" + body + b")"
