"""What the admin web page does to the server's data (blocking: call through a runner).

One L{MailAdmin} object, built by the tap, wraps the passwd file, the outbound queue's
spool and the certificate in use. Every method blocks on files and is called by
L{pymaild.web.admin} through the delivery runner, never in the reactor. The same
operations as ``pymaild-admin`` (the same passwd-file and queue code), so the page and
the command can be used side by side while the server runs.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymaild import certificates
from pymaild.address import canonical
from pymaild.auth.passwd import PasswdFile
from pymaild.auth.quota import describe
from pymaild.errors import AddressError, NoSuchUser, PymaildError
from pymaild.smtp.queue import QUEUE_ID, Spool, queueCommand

#: The shortest password the page sets.
MIN_PASSWORD = 8


class AdminRefused(PymaildError):
    """An admin operation that cannot be done; the message is shown on the page."""


@dataclass(frozen=True)
class QueuedMessage:
    """One message of the outbound queue, as the page lists it."""

    id: str
    sender: str
    size: int
    arrival: float
    recipients: tuple[tuple[str, str, int, str], ...]  # address, state, attempts, reply


@dataclass(frozen=True)
class CertificateInfo:
    """The certificate the server serves."""

    path: str
    names: tuple[str, ...]
    notAfter: datetime.datetime | None


class MailAdmin:
    """Users, queue and certificate of one server.

    @param passwd: the server's L{PasswdFile}.
    @param queuePath: the queue directory.
    @param certificatePath: returns the certificate file in use now.
    @param domains: the local domains (a new user must be in one).
    @param admins: the addresses that may use the admin pages.
    @param quotas: the server's L{pymaild.auth.quota.Quotas}, shown in the user list
        (None: no quota column).
    """

    def __init__(self, passwd: PasswdFile, queuePath: str,
                 certificatePath: Callable[[], str], domains: Sequence[str],
                 admins: Sequence[str], quotas: Any = None) -> None:
        self.passwd = passwd
        self.quotas = quotas
        self.queuePath = queuePath
        self.certificatePath = certificatePath
        self.domains = frozenset(d.lower() for d in domains)
        self.admins = frozenset(a.lower() for a in admins)

    def isAdmin(self, address: str) -> bool:
        """Whether C{address} may use the admin pages."""
        return address.lower() in self.admins

    # -- users --------------------------------------------------------------------------

    def users(self) -> list[str]:
        """Every user, sorted."""
        return sorted(self.passwd.users())

    def usersWithQuota(self) -> list[tuple[str, str]]:
        """Every user, sorted, with its quota usage and limits in words
        (L{pymaild.auth.quota.describe}; C{""} without quotas). Blocking: the
        Maildirs are counted."""
        out = []
        for user in self.users():
            text = ""
            if self.quotas is not None:
                text = describe(*self.quotas.report(user))
            out.append((user, text))
        return out

    def _address(self, text: str) -> str:
        try:
            return canonical(text.strip())
        except AddressError as e:
            raise AdminRefused(f"not an address: {e}") from None

    @staticmethod
    def _password(password: str) -> str:
        if len(password) < MIN_PASSWORD:
            raise AdminRefused(f"a password needs at least {MIN_PASSWORD} characters")
        if any(c in password for c in "\r\n\0"):
            raise AdminRefused("a password cannot hold line breaks or NUL")
        return password

    def addUser(self, address: str, password: str) -> str:
        """Add a user in one of the local domains; return its canonical address."""
        address = self._address(address)
        if address.rpartition("@")[2] not in self.domains:
            raise AdminRefused(f"{address.rpartition('@')[2]} is not a domain of this server")
        if self.passwd.lookup(address) is not None:
            raise AdminRefused(f"user {address} already exists")
        return self.passwd.add(address, self._password(password))

    def deleteUser(self, address: str, by: str) -> str:
        """Delete a user (the mail stays on disk); an admin cannot delete itself."""
        address = self._address(address)
        if address == by.lower():
            raise AdminRefused("you cannot delete your own account")
        try:
            return self.passwd.remove(address)
        except NoSuchUser:
            raise AdminRefused(f"no user {address}") from None

    def setPassword(self, address: str, password: str) -> str:
        """Set a user's password."""
        address = self._address(address)
        if self.passwd.lookup(address) is None:
            raise AdminRefused(f"no user {address}")
        return self.passwd.setPassword(address, self._password(password))

    def changeOwnPassword(self, address: str, current: str, new: str) -> None:
        """A user's own change: the current password must verify."""
        if not self.passwd.verify(address, current):
            raise AdminRefused("the current password is wrong")
        self.passwd.setPassword(address, self._password(new))

    # -- queue --------------------------------------------------------------------------

    def queue(self) -> list[QueuedMessage]:
        """The queued messages, oldest first."""
        envelopes, _problems = Spool(self.queuePath).envelopes()
        out = [QueuedMessage(env.id, env.sender, env.size, env.arrival,
                             tuple((r.address, r.state, r.attempts, r.reply or "")
                                   for r in env.recipients))
               for env in envelopes]
        return sorted(out, key=lambda m: m.arrival)

    def queueAction(self, action: str, qid: str) -> None:
        """C{retry} or C{delete} one queued message (as C{pymaild-admin queue})."""
        import io

        if action not in ("retry", "delete") or not QUEUE_ID.match(qid.upper()):
            raise AdminRefused("bad queue request")
        err = io.StringIO()
        if queueCommand(self.queuePath, [action, qid], io.StringIO(), err) != 0:
            raise AdminRefused(err.getvalue().strip().replace("pymaild-admin queue: ", "")
                               or "queue command failed")

    # -- certificate --------------------------------------------------------------------

    def certificate(self) -> CertificateInfo:
        """The certificate in use: its names and expiry."""
        path = self.certificatePath()
        state = certificates.certificateState(path)
        if state is None:
            return CertificateInfo(path, (), None)
        return CertificateInfo(path, tuple(sorted(state[0])), state[1])


__all__ = ["AdminRefused", "CertificateInfo", "MailAdmin", "QueuedMessage"]
