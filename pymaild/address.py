"""Mail addresses and domains: parsing, normalisation and the +tag (pure, no I/O).

A canonical address is ``local@domain`` with the domain lower-cased (IDNA A-labels
decoded to Unicode) and the local part lower-cased, the way Dovecot's
``auth_username_format = %Lu`` treats user names. Canonical addresses are what the
passwd file, the store's directory names and the realm's avatar ids use.
"""

from __future__ import annotations

import re

from pymaild.errors import AddressError

MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_ADDRESS = 254

_LABEL = re.compile(r"^(?!-)[^\s.@/\\\x00-\x1f\x7f]{1,63}(?<!-)$")
_LOCAL_FORBIDDEN = re.compile(r"[\s/\\\x00-\x1f\x7f@]")


def normaliseDomain(domain: str) -> str:
    """Return C{domain} lower-cased, without a trailing dot, with IDNA decoded.

    @raise AddressError: the domain is empty, too long, or has a bad label.
    """
    d = domain.strip().rstrip(".")
    if d.startswith("[") and d.endswith("]"):
        raise AddressError(f"address literal {domain!r} is not a local domain")
    try:
        if d.isascii() and "xn--" in d.lower():
            d = d.encode("ascii").decode("idna")
    except UnicodeError as e:
        raise AddressError(f"bad IDNA domain {domain!r}") from e
    d = d.lower()
    if not d or len(d.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError(f"bad domain length in {domain!r}")
    for label in d.split("."):
        if not _LABEL.match(label):
            raise AddressError(f"bad domain label {label!r} in {domain!r}")
    return d


def splitAddress(address: str) -> tuple[str, str]:
    """Split C{local@domain} at its last C{@}, checking both halves.

    The local part may not contain C{/}, C{\\}, C{@}, white space or control characters,
    may not start with a dot or be C{.}/C{..}, so it is always a safe directory name.

    @raise AddressError: the address is malformed or unsafe.
    """
    if not isinstance(address, str):
        raise AddressError("address must be text")
    if "@" not in address:
        raise AddressError(f"no domain in address {address!r}")
    local, _, domain = address.rpartition("@")
    if not local or len(local.encode("utf-8")) > MAX_LOCAL:
        raise AddressError(f"bad local part length in {address!r}")
    if _LOCAL_FORBIDDEN.search(local) or local.startswith(".") or local in (".", ".."):
        raise AddressError(f"unsafe local part in {address!r}")
    if "%" in local or "!" in local:
        raise AddressError(f"percent hack or bang path in {address!r}")
    return local, normaliseDomain(domain)


def canonical(address: str) -> str:
    """The canonical form of C{address}: lower-cased local part and domain.

    @raise AddressError: the address is malformed or unsafe.
    """
    local, domain = splitAddress(address.strip())
    result = f"{local.lower()}@{domain}"
    if len(result.encode("utf-8")) > MAX_ADDRESS:
        raise AddressError(f"address too long: {address!r}")
    return result


def stripTag(address: str, delimiter: str = "+") -> str:
    """Remove a sub-address tag: C{user+tag@domain} becomes C{user@domain}.

    An address whose local part starts with the delimiter is left alone.
    """
    if not delimiter:
        return address
    local, _, domain = address.rpartition("@")
    base, sep, _tag = local.partition(delimiter)
    if sep and base:
        return f"{base}@{domain}"
    return address
