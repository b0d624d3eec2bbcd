"""What a folder needs of its account and an account of its store, as typing protocols.

L{pymaild.store.folder.Folder} is given its L{pymaild.store.account.Account}, and the
account its L{pymaild.store.maildir.MaildirStore}; the layers below them name their owner
through these protocols, so that every import of the store runs one way (downward) and
L{pymaild.store.account} need not be imported by the folder that it hands out.
"""

from __future__ import annotations

from typing import Protocol

from pymaild.store.listing import FolderCaches
from pymaild.store.writing import DirSyncs


class StoreOwner(Protocol):
    """The parts of L{pymaild.store.maildir.MaildirStore} its accounts and folders use."""

    @property
    def hostTag(self) -> str:
        """The escaped host name that goes into new file names."""

    @property
    def caches(self) -> FolderCaches:
        """The store's per-folder caches and locks."""

    @property
    def dirSyncs(self) -> DirSyncs:
        """The store's shared directory fsyncs."""


class AccountOwner(Protocol):
    """The parts of L{pymaild.store.account.Account} its folders use."""

    @property
    def address(self) -> str:
        """The canonical address of the account."""

    @property
    def store(self) -> StoreOwner:
        """The store the account belongs to."""

    def _nextUidValidity(self) -> int:
        """A fresh UIDVALIDITY for a folder of the account (unique across its folders)."""
