"""Reading the header fields mail authentication needs from raw message bytes (pure).

Only the header block is looked at (at most L{MAX_HEADER} bytes of it), fields are
unfolded, and nothing here raises on bad input: a field that cannot be decoded reads as
empty, an address that cannot be parsed gives no domain.
"""

from __future__ import annotations

import email.utils
import re

from pymaild.address import domainToASCII
from pymaild.errors import AddressError

MAX_HEADER = 1 << 20
_FOLD = re.compile(rb"\r?\n[ \t]")


def headerBlock(message: bytes) -> bytes:
    """The header block of C{message} including the line end of its last field."""
    end = message.find(b"\r\n\r\n", 0, MAX_HEADER)
    if end >= 0:
        return message[:end + 2]
    end = message.find(b"\n\n", 0, MAX_HEADER)
    return message[:end + 1] if end >= 0 else message[:MAX_HEADER]


def fields(message: bytes) -> list[tuple[str, bytes]]:
    """The header fields as C{(lower-case name, unfolded value)} in order."""
    out: list[tuple[str, bytes]] = []
    block = headerBlock(message)
    for raw in re.split(rb"\r?\n(?![ \t])", block):
        if not raw.strip():
            continue
        name, sep, value = raw.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            continue
        out.append((name.decode("ascii", "replace").lower(),
                    _FOLD.sub(b" ", value).strip()))
    return out


def values(message: bytes, name: str) -> list[bytes]:
    """The values of every field called C{name}."""
    name = name.lower()
    return [v for n, v in fields(message) if n == name]


def addressDomain(address: str) -> str | None:
    """The A-label domain of C{address}, or None when it has none."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        return None
    try:
        return domainToASCII(domain.strip().rstrip(".>").lower())
    except AddressError:
        return None


def fromDomains(message: bytes) -> tuple[int, list[str]]:
    """How many From fields there are, and the domains of the addresses in them."""
    found = values(message, "from")
    domains: list[str] = []
    for value in found:
        text = value.decode("utf-8", "replace")
        for _name, address in email.utils.getaddresses([text]):
            domain = addressDomain(address)
            if domain and domain not in domains:
                domains.append(domain)
    return len(found), domains


__all__ = ["addressDomain", "fields", "fromDomains", "headerBlock", "values"]
