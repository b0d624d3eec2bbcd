"""Mail addresses and domains: parsing, normalisation and the +tag (pure, no I/O).

A canonical address is ``local@domain`` with the domain lower-cased (IDNA A-labels
decoded to Unicode) and the local part lower-cased, the way Dovecot's
``auth_username_format = %Lu`` treats user names. Canonical addresses are what the
passwd file, the store's directory names and the realm's avatar ids use.

Internationalised domains are converted in one place, L{domainToASCII} and
L{domainToUnicode}: IDNA 2008 with the UTS 46 (non-transitional) mapping, through the
C{idna} package. Python's own C{"idna"} codec is IDNA 2003, which maps C{ß} to C{ss},
C{ς} to C{σ} and drops joiners, so C{x@straße.de} would go to C{strasse.de}, another
domain; it is not used anywhere.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

from pymaild.errors import AddressError

MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_ADDRESS = 254

_LABEL = re.compile(r"^(?!-)[^\s.@/\\\x00-\x1f\x7f]{1,63}(?<!-)$")
_LOCAL_FORBIDDEN = re.compile(r"[\s/\\\x00-\x1f\x7f@]")


def _idnaLabels(domain: str) -> list[str]:
    """The labels of C{domain} (stripped, no trailing dot), UTS 46 mapped when not ASCII.

    The mapping is non-transitional: C{ß}, C{ς} and the joiners are kept, not replaced.

    @raise UnicodeError: the mapping refuses a character.
    """
    d = domain.strip()
    if not d.isascii():
        d = idna.uts46_remap(d, std3_rules=False, transitional=False)
    return d.rstrip(".").split(".")


def _needsIDNA(label: str) -> bool:
    """Whether C{label} is an IDNA label (non-ASCII, or an C{xn--} A-label)."""
    return not label.isascii() or label[:4].lower() == "xn--"


def domainToASCII(domain: str) -> str:
    """The A-label form of C{domain} (IDNA 2008, UTS 46 non-transitional), lower-case.

    ASCII labels that are not A-labels are only lower-cased; A-labels are checked.
    C{straße.de} becomes C{xn--strae-oqa.de} (not C{strasse.de} as with IDNA 2003).

    @raise AddressError: a label is not valid IDNA 2008 (e.g. a joiner out of context).
    """
    try:
        out = []
        for label in _idnaLabels(domain):
            if _needsIDNA(label):
                label = idna.alabel(label.lower()).decode("ascii")
            out.append(label.lower())
    except UnicodeError as e:
        raise AddressError(f"bad internationalised domain {ascii(domain)}: {e}") from None
    return ".".join(out)


def domainToUnicode(domain: str) -> str:
    """The U-label form of C{domain} (IDNA 2008, UTS 46 non-transitional), lower-case.

    C{xn--strae-oqa.de} and C{Straße.DE} both become C{straße.de}.

    @raise AddressError: a label is not valid IDNA 2008.
    """
    try:
        out = []
        for label in _idnaLabels(domain):
            if _needsIDNA(label):
                label = idna.ulabel(idna.alabel(label.lower()))
            out.append(label.lower())
    except UnicodeError as e:
        raise AddressError(f"bad internationalised domain {ascii(domain)}: {e}") from None
    return ".".join(out)


def normaliseDomain(domain: str) -> str:
    """Return C{domain} lower-cased, without a trailing dot, with IDNA decoded.

    IDNA goes through L{domainToUnicode} (IDNA 2008 / UTS 46), so A-label and U-label
    spellings of one domain give the same result.

    @raise AddressError: the domain is empty, too long, or has a bad label.
    """
    d = domain.strip().rstrip(".")
    if d.startswith("[") and d.endswith("]"):
        raise AddressError(f"address literal {domain!r} is not a local domain")
    if not d.isascii() or "xn--" in d.lower():
        d = domainToUnicode(d)
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


# ---------------------------------------------------------------------------------------
# RFC 5321 / RFC 6531 envelope paths (MAIL FROM / RCPT TO arguments)
# ---------------------------------------------------------------------------------------

MAX_PATH = 256

_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_ESMTP_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_DOMAIN_LABEL = re.compile(r"^(?!-)(?:[A-Za-z0-9-]|[^\x00-\x7f]){1,63}(?<!-)$")


class PathSyntaxError(AddressError):
    """An envelope path or parameter is not RFC 5321/6531 syntax (reply 501)."""


class PathRefused(AddressError):
    """A path uses routing syntax pymaild refuses (reply 553).

    Source routes (C{<@a:b@c>}), the percent hack (C{a%b@c}), bang paths (C{a!b@c}) and
    a second C{@} (C{a@b@c}) all let a sender make us route mail somewhere else.
    """


@dataclass(frozen=True)
class Path:
    """A parsed envelope path.

    @ivar local: the local part, quotes and backslash escapes removed ("" for C{<>}).
    @ivar domain: the domain as sent (a domain name or an address literal such as
        C{[192.0.2.1]}); "" for the null path and for a bare C{<postmaster>}.
    """

    local: str
    domain: str

    @property
    def isNull(self) -> bool:
        """Whether this is the null reverse-path C{<>}."""
        return not self.local and not self.domain

    @property
    def isASCII(self) -> bool:
        """Whether the path is plain ASCII (usable without SMTPUTF8)."""
        return self.local.isascii() and self.domain.isascii()

    @property
    def address(self) -> str:
        """The address as text, the local part quoted again if it needs it."""
        if self.isNull:
            return ""
        local = self.local if _isDotString(self.local) else _quote(self.local)
        return f"{local}@{self.domain}" if self.domain else local

    def __str__(self) -> str:
        return f"<{self.address}>"


def _isDotString(local: str) -> bool:
    """Whether C{local} is an RFC 5321/6531 Dot-string (needs no quoting)."""
    if not local or local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    return all(c in _ATEXT or c == "." or ord(c) > 0x7F for c in local)


def _quote(local: str) -> str:
    """C{local} as an RFC 5321 Quoted-string."""
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _checkDomain(domain: str) -> None:
    """Check an RFC 5321 Domain or address literal (U-labels allowed, RFC 6531).

    Internationalised domains must be valid IDNA 2008 (L{domainToASCII}).

    @raise PathSyntaxError: it is neither.
    """
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise PathSyntaxError(f"bad address literal {domain!r}")
        inner = domain[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(inner[5:])
            else:
                ipaddress.IPv4Address(inner)
        except ValueError:
            raise PathSyntaxError(f"bad address literal {domain!r}") from None
        return
    if not domain or len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise PathSyntaxError("bad domain length")
    for label in domain.split("."):
        if not _DOMAIN_LABEL.match(label):
            raise PathSyntaxError(f"bad domain {domain!r}")
    if not domain.isascii() or "xn--" in domain.lower():
        try:
            domainToASCII(domain)
        except AddressError as e:
            raise PathSyntaxError(str(e)) from None


def _splitAngle(text: str) -> tuple[str, str]:
    """Split C{<path> params} into the inside of the brackets and the rest.

    Quoted strings and backslash escapes may hide C{>} and spaces. A path without
    brackets (tolerated, as Postfix does) ends at the first space.
    """
    if not text.startswith("<"):
        path, _, rest = text.partition(" ")
        if not path or any(c in path for c in '<>"'):
            raise PathSyntaxError("path must be enclosed in <>")
        return path, rest
    i, inQuote = 1, False
    while i < len(text):
        c = text[i]
        if c == "\\" and inQuote:
            i += 2
            continue
        if c == '"':
            inQuote = not inQuote
        elif c == ">" and not inQuote:
            rest = text[i + 1 :]
            if rest and not rest.startswith(" "):
                raise PathSyntaxError("garbage after path")
            return text[1:i], rest
        i += 1
    raise PathSyntaxError("unbalanced <>")


def _parseLocal(text: str) -> tuple[str, str]:
    """Parse the local part at the start of C{text}; return it (unquoted) and the rest."""
    if text.startswith('"'):
        out = []
        i = 1
        while i < len(text):
            c = text[i]
            if c == "\\":
                if i + 1 >= len(text) or not (" " <= text[i + 1] or ord(text[i + 1]) > 0x7F):
                    raise PathSyntaxError("bad quoted pair")
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                return "".join(out), text[i + 1 :]
            if ord(c) < 0x20 or c == "\x7f":
                raise PathSyntaxError("control character in quoted local part")
            out.append(c)
            i += 1
        raise PathSyntaxError("unterminated quoted local part")
    at = text.find("@")
    local = text if at < 0 else text[:at]
    rest = "" if at < 0 else text[at:]
    if not _isDotString(local):
        raise PathSyntaxError(f"bad local part {local!r}")
    return local, rest


def parsePath(text: str, *, null: bool = False, postmaster: bool = False) -> tuple[Path, str]:
    """Parse an RFC 5321 path and what follows it (the ESMTP parameters).

    C{text} is what follows C{MAIL FROM:} or C{RCPT TO:} (leading spaces allowed),
    already decoded from UTF-8. With C{null}, C{<>} is accepted (reverse-path); with
    C{postmaster}, a domainless C{<postmaster>} is accepted (RCPT, RFC 5321 4.1.1.3).

    @return: the path and the unparsed parameter text.
    @raise PathSyntaxError: not a path (reply 501).
    @raise PathRefused: a source route, percent hack, bang path or extra C{@} (553).
    """
    text = text.lstrip(" ")
    inner, rest = _splitAngle(text)
    if len(inner.encode("utf-8")) > MAX_PATH:
        raise PathSyntaxError("path too long")
    if not inner:
        if null:
            return Path("", ""), rest
        raise PathSyntaxError("empty path")
    if inner.startswith("@"):
        raise PathRefused("source routes are not accepted")
    local, after = _parseLocal(inner)
    if not after:
        if postmaster and local.lower() == "postmaster":
            return Path(local, ""), rest
        raise PathSyntaxError("address has no domain")
    domain = after[1:]
    if "@" in domain:
        raise PathRefused("more than one @ in address")
    if "%" in local or "!" in local:
        raise PathRefused("percent hack and bang paths are not accepted")
    if ":" in domain and not domain.startswith("["):
        raise PathRefused("source routes are not accepted")
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise PathSyntaxError("local part too long")
    _checkDomain(domain)
    return Path(local, domain), rest


def parseParameters(text: str) -> dict[str, str | None]:
    """Parse ESMTP parameters C{KEY[=value] ...}; keys are upper-cased.

    @raise PathSyntaxError: a malformed or repeated parameter.
    """
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(key):
            raise PathSyntaxError(f"bad parameter {item!r}")
        if eq and (not value or "=" in value or any(ord(c) < 0x21 or c == "\x7f" for c in value)):
            raise PathSyntaxError(f"bad parameter value in {item!r}")
        key = key.upper()
        if key in params:
            raise PathSyntaxError(f"parameter {key} given twice")
        params[key] = value if eq else None
    return params
