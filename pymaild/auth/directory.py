"""Which local mailboxes a recipient address reaches.

A L{Directory} knows the local domains and the users (a
L{pymaild.auth.users.UserSource}: the passwd file or the PostgreSQL directory).
C{resolve(address)} gives the canonical addresses of the accounts that should receive
mail sent to C{address}:

1. The address must be in a local domain (otherwise C{[]}: not ours).
2. An account with exactly that address gets it.
3. Otherwise a sub-address C{user+tag@domain} reaches C{user@domain}. Every character
   of C{recipientDelimiter} is a delimiter (as Postfix reads ``recipient_delimiter``);
   an empty delimiter turns sub-addressing off.
4. C{postmaster@<any local domain>} (RFC 5321 section 4.5.1 requires it) always
   reaches someone: that account if it exists (step 2), else C{postmaster@<first
   domain>} if that account exists, else the first user in the passwd file. A bare
   C{postmaster} (no domain, allowed in RCPT TO) is read as C{postmaster@<first
   domain>}. Only an empty passwd file leaves postmaster unresolved.
5. Anything else resolves to C{[]} (unknown user).

Blocking (it reads the passwd file or asks the database): callers use a L{pymaild.threads.Runner}.
"""

from __future__ import annotations

from collections.abc import Iterable

from pymaild.address import canonical, normaliseDomain, stripTag
from pymaild.auth.users import UserSource
from pymaild.errors import AddressError

POSTMASTER = "postmaster"


class Directory:
    """Maps recipient addresses to local accounts.

    @ivar domains: the local domains, normalised, in configuration order (the first
        one is the primary domain).
    """

    def __init__(
        self, passwd: UserSource, domains: Iterable[str], recipientDelimiter: str = "+"
    ) -> None:
        """
        @raise AddressError: a domain is malformed.
        """
        self.passwd = passwd
        self.setDomains(domains)
        self.recipientDelimiter = recipientDelimiter

    def setDomains(self, domains: Iterable[str]) -> None:
        """Serve C{domains} from now on (the first is the primary one).

        @raise AddressError: a domain is malformed.
        """
        normalised: list[str] = []
        for domain in domains:
            d = normaliseDomain(domain)
            if d not in normalised:
                normalised.append(d)
        self.domains: tuple[str, ...] = tuple(normalised)

    def isLocalDomain(self, domain: str) -> bool:
        """Whether mail for C{domain} (any case, IDNA or Unicode) is delivered here."""
        try:
            return normaliseDomain(domain) in self.domains
        except AddressError:
            return False

    def resolve(self, address: str) -> list[str]:
        """The canonical local accounts for recipient C{address}; C{[]} if none."""
        text = address.strip()
        if "@" not in text and text.lower() == POSTMASTER and self.domains:
            text = f"{POSTMASTER}@{self.domains[0]}"
        try:
            key = canonical(text)
        except AddressError:
            return []
        local, _, domain = key.rpartition("@")
        if domain not in self.domains:
            return []
        if self.passwd.lookup(key) is not None:
            return [key]
        base = self._untagged(key)
        if base != key and self.passwd.lookup(base) is not None:
            return [base]
        if base.rpartition("@")[0] == POSTMASTER:
            return self._postmaster()
        return []

    def _untagged(self, key: str) -> str:
        """C{key} without its sub-address tag (the first delimiter found wins)."""
        local = key.rpartition("@")[0]
        positions = [local.find(c) for c in self.recipientDelimiter if local.find(c) > 0]
        if not positions:
            return key
        return stripTag(key, local[min(positions)])

    def _postmaster(self) -> list[str]:
        """Where postmaster mail goes when no postmaster account has the domain."""
        if self.domains:
            primary = f"{POSTMASTER}@{self.domains[0]}"
            if self.passwd.lookup(primary) is not None:
                return [primary]
        return self.passwd.users()[:1]
