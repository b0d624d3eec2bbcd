"""OBJECTID (RFC 8474): the MAILBOXID and EMAILID of folders and messages.

Both come from the GUIDs Dovecot's Maildir format already keeps, so they survive
restarts and are the same for every process on the tree: a folder's from the C{G} field
of its C{dovecot-uidlist} header (which moves with the folder on RENAME; a new folder,
or a folder deleted and created again, gets a new one), a message's from its uidlist
record's C{G} field (which COPY and MOVE carry over, so a moved message keeps its
EMAILID) or else its Maildir base name. An objectid may hold only letters, digits, C{-}
and C{_}: the MAILBOXID is C{F} and the 32 hex digits of the folder GUID, the EMAILID
C{M} and 24 hex digits of the SHA-256 of the message GUID. THREADID is NIL (threads are
not tracked), as RFC 8474 section 5.2 allows.
"""

from __future__ import annotations

import hashlib
import re

_OBJECTID = re.compile(rb"[A-Za-z0-9_-]{1,255}")


def mailboxId(guid: str) -> bytes:
    """The MAILBOXID of a folder whose uidlist GUID is C{guid}."""
    return b"F" + re.sub(r"[^A-Za-z0-9_-]", "", guid).encode("ascii")


def emailId(guid: str) -> bytes:
    """The EMAILID of a message whose GUID is C{guid}."""
    return b"M" + hashlib.sha256(guid.encode("utf-8", "surrogateescape")).hexdigest()[
        :24].encode("ascii")


def isObjectId(value: bytes) -> bool:
    """Whether C{value} is a valid objectid (RFC 8474 section 4)."""
    return _OBJECTID.fullmatch(value) is not None
