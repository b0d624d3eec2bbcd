"""pymaild's mail store: a Dovecot-compatible Maildir++ tree (pure Python, no Twisted).

See L{pymaild.store.maildir} for the layout, locking and durability rules.
"""

from pymaild.errors import LockTimeout
from pymaild.store.account import Account, FolderHasChildren
from pymaild.store.flags import InvalidFlag, TooManyKeywords
from pymaild.store.folder import Folder
from pymaild.store.info import FolderState, MessageInfo
from pymaild.store.maildir import MaildirStore

__all__ = [
    "MaildirStore", "Account", "Folder", "FolderState", "MessageInfo",
    "FolderHasChildren", "InvalidFlag", "TooManyKeywords", "LockTimeout",
]
