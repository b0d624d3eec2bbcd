"""The user directory's one interface, which every backend implements.

pymaild knows its users through a L{UserSource}: the Dovecot passwd file
(L{pymaild.auth.passwd.PasswdFile}, the default, for one node) or PostgreSQL
(L{pymaild.auth.pgusers.PostgresUsers}, for several nodes that share their users). The
checker (L{pymaild.auth.checker.PasswdChecker}), the recipient directory
(L{pymaild.auth.directory.Directory}), C{pymaild-admin} and the admin page use only
these methods. Every method blocks (file or database I/O, password hashing): callers
run them in a L{pymaild.threads.Runner}, never in the reactor thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class NodeRecord:
    """A node of a cluster: where its services are reached (C{pymaild_nodes})."""

    name: str
    address: str
    imap_port: int = 143
    pop3_port: int = 110
    submission_port: int = 587
    lmtp_port: int = 24


class UserSource(Protocol):
    """Mail users, their password hashes, and changes to them (blocking)."""

    def lookup(self, address: str) -> Any:
        """The user's entry (it has C{address} and C{password}) or C{None}."""

    def users(self) -> list[str]:
        """Canonical addresses of all users."""

    def owner(self, address: str, fresh: bool = False) -> NodeRecord | None:
        """The cluster node that owns C{address}'s mailbox, or C{None} (no such user,
        no owner, no cluster); C{fresh}: read now, not a kept answer."""

    def route(self, address: str) -> tuple[bool, NodeRecord | None]:
        """C{(being moved, owner node)} of C{address}, from one answer."""

    def verify(self, address: str, password: str | bytes) -> bool:
        """Whether C{password} is C{address}'s (an unknown user costs a dummy hash)."""

    def add(self, address: str, password: str | bytes) -> str:
        """Add a user; return its canonical address.

        @raise pymaild.auth.passwd.UserExists: the user exists already.
        """

    def setPassword(self, address: str, password: str | bytes) -> str:
        """Give an existing user a new password; return its canonical address.

        @raise pymaild.errors.NoSuchUser: there is no such user.
        """

    def remove(self, address: str) -> str:
        """Remove a user; return its canonical address.

        @raise pymaild.errors.NoSuchUser: there is no such user.
        """
