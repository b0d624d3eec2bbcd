"""The Junk folder: its name, and making it where a delivery needs it.

The store gives the folder named C{Junk} the C{\\Junk} special-use attribute (RFC 6154;
L{pymaild.store.account.SPECIAL_FOLDERS}); the spam filter delivers there and learns
from what users move in and out of it.
"""

from __future__ import annotations

from typing import Any

from pymaild.errors import FolderExists
from pymaild.store.account import SPECIAL_FOLDERS
from pymaild.store.names import INBOX

JUNK = next(name for name, use in SPECIAL_FOLDERS if use == "\\Junk")
"""The name of the folder with the C{\\Junk} attribute."""

TRASH = next(name for name, use in SPECIAL_FOLDERS if use == "\\Trash")
"""The name of the folder with the C{\\Trash} attribute (moving there is deleting)."""


def ensureJunk(store: Any, address: str) -> str:
    """Create and subscribe C{address}'s Junk folder when it is missing (blocking).

    @return: the folder a delivery into Junk goes to (Junk; INBOX only when the folder
        cannot be made because a non-folder of that name is in the way).
    """
    account = store.account(address)
    if account.deliveryFolder(JUNK) == JUNK:
        return JUNK
    try:
        account.createFolder(JUNK)
        account.subscribe(JUNK)
    except FolderExists:
        pass
    folder: str = account.deliveryFolder(JUNK)
    return folder if folder == JUNK else INBOX


__all__ = ["JUNK", "TRASH", "ensureJunk"]
