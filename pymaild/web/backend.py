"""What the admin web page does to the server's data (blocking: call through a runner).

One L{MailAdmin} object, built by the tap, wraps the passwd file, the outbound queue's
spool and the certificate in use. Every method blocks on files and is called by
L{pymaild.web.admin} through the delivery runner, never in the reactor. The same
operations as ``pymaild-admin`` (the same passwd-file and queue code), so the page and
the command can be used side by side while the server runs.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymaild import certificates
from pymaild.address import canonical
from pymaild.auth.passwd import PasswdFile
from pymaild.auth.quota import describe
from pymaild.errors import AddressError, NoSuchUser, PymaildError
from pymaild.mailauth.dkimkeys import DKIMKeyError, DKIMKeys
from pymaild.mailauth.dnsrecords import Record, recordsFor
from pymaild.sieve import autoreply
from pymaild.sieve.autoreply import VacationSettings
from pymaild.sieve.checker import Limits
from pymaild.sieve.storage import ScriptStorage
from pymaild.smtp.aliases import AliasesEditor, Entry
from pymaild.smtp.queueadmin import queueCommand
from pymaild.smtp.queuespool import QUEUE_ID, Spool

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


@dataclass(frozen=True)
class DomainInfo:
    """One local domain as the page shows it: its DKIM key sets and the DNS records it
    needs (as C{pymaild-admin dns} prints them)."""

    domain: str
    selectors: tuple[str, ...]
    records: tuple[Record, ...]


class MailAdmin:
    """Users, queue, certificate, DKIM keys and DNS records of one server.

    @param passwd: the server's L{PasswdFile}.
    @param queuePath: the queue directory.
    @param certificatePath: returns the certificate file in use now.
    @param domains: the local domains (a new user must be in one).
    @param admins: the addresses that may use the admin pages.
    @param dkim: the server's L{DKIMKeys} (None: no DKIM section).
    @param hostname: the server's host name (ASCII), for the DNS records.
    @param homeOf: a user's home directory (their Sieve scripts), or None when Sieve
        is off (then there is no vacation message).
    @param sieveLimits: the limits the vacation script must compile under.
    @param aliasesPath: the aliases file the server reads now ("" = none).
    @param sieveGlobalDir: the global Sieve scripts' directory ("" = none).
    @param stsPolicy: the MTA-STS policy the https listener serves (its id goes in the
        C{_mta-sts} record); "" for the default one.
    @param quotas: the server's L{pymaild.auth.quota.Quotas}, shown in the user list
        (None: no quota column).
    """

    def __init__(self, passwd: PasswdFile, queuePath: str,
                 certificatePath: Callable[[], str], domains: Sequence[str],
                 admins: Sequence[str], dkim: DKIMKeys | None = None,
                 hostname: str = "", homeOf: Callable[[str], str] | None = None,
                 sieveLimits: Limits | None = None,
                 aliasesPath: Callable[[], str] = lambda: "",
                 sieveGlobalDir: str = "", stsPolicy: str = "", quotas: Any = None) -> None:
        self.stsPolicy = stsPolicy
        self.sieveGlobalDir = sieveGlobalDir
        self.aliasesPath = aliasesPath
        self._editors: dict[str, AliasesEditor] = {}
        self.homeOf = homeOf
        self.sieveLimits = sieveLimits or Limits()
        self.dkim = dkim
        self.hostname = hostname
        self.passwd = passwd
        self.quotas = quotas
        self.queuePath = queuePath
        self.certificatePath = certificatePath
        self.domains = frozenset(d.lower() for d in domains)
        self.admins = frozenset(a.lower() for a in admins)

    def isAdmin(self, address: str) -> bool:
        """Whether C{address} may use the admin pages."""
        return address.lower() in self.admins

    def setAdmins(self, admins: Iterable[str]) -> None:
        """Who is an admin from now on (C{web.admins} changed on SIGHUP)."""
        self.admins = frozenset(a.lower() for a in admins)

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

    # -- aliases ------------------------------------------------------------------------

    def _aliases(self) -> AliasesEditor:
        path = self.aliasesPath()
        if not path:
            raise AdminRefused("no aliases file is configured (smtp.aliases)")
        editor = self._editors.get(path)
        if editor is None:
            editor = self._editors[path] = AliasesEditor(
                path, lambda domain: domain in self.domains)
        return editor

    def aliases(self) -> tuple[str, list[Entry]]:
        """The aliases file's path ("" when none is configured) and its entries."""
        if not self.aliasesPath():
            return "", []
        editor = self._aliases()
        try:
            return editor.path, editor.list()
        except OSError as e:
            raise AdminRefused(f"{editor.path}: {e.strerror}") from None

    def addAlias(self, key: str, targets: str) -> str:
        """Add an entry to the aliases file; return its key."""
        try:
            return self._aliases().add(key, targets)
        except AddressError as e:
            raise AdminRefused(str(e)) from None

    def removeAlias(self, key: str) -> str:
        """Remove an entry from the aliases file; return its key."""
        try:
            return self._aliases().remove(key)
        except AddressError as e:
            raise AdminRefused(str(e)) from None

    # -- vacation -----------------------------------------------------------------------

    def vacation(self, address: str) -> VacationSettings | None:
        """A user's vacation message, or None when Sieve is off."""
        if self.homeOf is None:
            return None
        return autoreply.read(ScriptStorage(self.homeOf(address), self.sieveGlobalDir))

    def setVacation(self, address: str, enabled: bool, subject: str, message: str,
                    days: str) -> VacationSettings:
        """Store a user's vacation message and turn it on or off."""
        if self.homeOf is None:
            raise AdminRefused("Sieve is off on this server: no vacation message")
        try:
            number = int(days)
        except ValueError:
            raise AdminRefused("days must be a number") from None
        try:
            return autoreply.store(ScriptStorage(self.homeOf(address), self.sieveGlobalDir),
                                   enabled, subject,
                                   message, number, self.sieveLimits)
        except autoreply.VacationRefused as e:
            raise AdminRefused(str(e)) from None

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

    # -- domains: DKIM keys and DNS records -------------------------------------------

    def _domain(self, text: str) -> str:
        domain = text.strip().lower()
        if domain not in self.domains:
            raise AdminRefused(f"{domain} is not a domain of this server")
        return domain

    def domainInfo(self) -> list[DomainInfo]:
        """Each local domain's key sets and records, sorted by domain."""
        out = []
        for domain in sorted(self.domains):
            keys = self.dkim.signingKeys(domain) if self.dkim is not None else []
            sets = tuple(self.dkim.sets(domain)) if self.dkim is not None else ()
            records = recordsFor(domain, self.hostname, keys, self.stsPolicy or None)
            out.append(DomainInfo(domain, sets, tuple(records)))
        return out

    def records(self, domain: str) -> list[Record]:
        """The records one local domain needs."""
        domain = self._domain(domain)
        return list(next(i for i in self.domainInfo() if i.domain == domain).records)

    def newDKIMKey(self, domain: str, selector: str = "") -> str:
        """Make a new key set (RSA and Ed25519) for a domain, named C{selector} (default:
        today's date); return its name."""
        domain = self._domain(domain)
        if self.dkim is None:
            raise AdminRefused("DKIM keys are not kept by this server")
        try:
            keys = self.dkim.keygen(domain, selector.strip() or None)
        except DKIMKeyError as e:
            raise AdminRefused(str(e)) from None
        return keys[0].selector.rsplit("-", 1)[0]

    def retireDKIMKey(self, domain: str, selector: str) -> None:
        """Stop a key set signing (its files are kept under C{retired/})."""
        domain = self._domain(domain)
        if self.dkim is None:
            raise AdminRefused("DKIM keys are not kept by this server")
        try:
            self.dkim.retire(domain, selector.strip())
        except DKIMKeyError as e:
            raise AdminRefused(str(e)) from None

    # -- certificate --------------------------------------------------------------------

    def certificate(self) -> CertificateInfo:
        """The certificate in use: its names and expiry."""
        path = self.certificatePath()
        state = certificates.certificateState(path)
        if state is None:
            return CertificateInfo(path, (), None)
        return CertificateInfo(path, tuple(sorted(state[0])), state[1])


__all__ = ["AdminRefused", "CertificateInfo", "DomainInfo", "MailAdmin", "QueuedMessage"]
