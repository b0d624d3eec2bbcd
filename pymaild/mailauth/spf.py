"""SPF (RFC 7208): C{check_host()} over the asynchronous L{DNSResolver}.

Written here rather than taken from pyspf: pyspf (unmaintained since 2020) evaluates
synchronously, asking DNS through a module-level lookup function (a global to patch,
shared by every session) and pydns or dnspython; an SPF evaluation's lookups depend on
each other (an C{include:} names the next record), so they cannot be fetched ahead and
answered from memory as DKIM keys can. Running pyspf in a thread would tie up a thread
per message for up to the whole DNS deadline. This evaluator awaits each lookup on the
reactor instead, with the RFC's limits: at most 10 mechanisms or modifiers that look
things up (C{include a mx ptr exists redirect}), at most 2 lookups that find nothing
(void lookups), at most 10 MX or PTR names per lookup; past a limit the result is
C{permerror}. A DNS failure is C{temperror}.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Any

from pymaild.address import domainToASCII
from pymaild.errors import AddressError
from pymaild.mailauth.resolver import NODATA, NXDOMAIN, OK, TEMPERROR, Answer, DNSResolver

PASS = "pass"
FAIL = "fail"
SOFTFAIL = "softfail"
NEUTRAL = "neutral"
NONE = "none"
PERMERROR = "permerror"

MAX_LOOKUPS = 10
MAX_VOID = 2
MAX_NAMES = 10
MAX_RECORD = 4096

_QUALIFIERS = {"+": PASS, "-": FAIL, "~": SOFTFAIL, "?": NEUTRAL}
_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|(.))")
_CIDR = re.compile(r"^(.*?)(?:/(\d+))?(?://(\d+))?$")


@dataclass(frozen=True)
class SPFResult:
    """The result of one identity's check.

    @ivar identity: C{"mailfrom"} or C{"helo"}.
    @ivar domain: the domain checked.
    @ivar reason: a short explanation (the matching mechanism, the error).
    """

    result: str
    identity: str
    domain: str
    reason: str = ""


class SPFError(Exception):
    """Ends an evaluation with C{result} (permerror or temperror)."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


class _Evaluation:
    """The state of one C{check_host()} with its nested includes (the shared limits)."""

    def __init__(self, dns: DNSResolver, ip: Any, sender: str, helo: str) -> None:
        self.dns = dns
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.lookups = 0
        self.voids = 0

    def count(self) -> None:
        """One more DNS-querying term."""
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise SPFError(PERMERROR, f"more than {MAX_LOOKUPS} DNS lookups")

    def answered(self, answer: Answer, what: str) -> Answer:
        """Raise temperror on a DNS failure; count void lookups."""
        if answer.status == TEMPERROR:
            raise SPFError(TEMPERROR, f"DNS failure looking up {what}")
        if answer.status in (NXDOMAIN, NODATA):
            self.voids += 1
            if self.voids > MAX_VOID:
                raise SPFError(PERMERROR, f"more than {MAX_VOID} void DNS lookups")
        return answer

    # -- macros (RFC 7208 §7) ---------------------------------------------------------

    def expand(self, spec: str, domain: str) -> str:
        """Expand the macros of a domain-spec."""
        local, _at, senderDomain = self.sender.rpartition("@")

        def letter(ch: str) -> str:
            ch = ch.lower()
            if ch == "s":
                return self.sender
            if ch == "l":
                return local or "postmaster"
            if ch == "o":
                return senderDomain
            if ch == "d":
                return domain
            if ch == "i":
                if self.ip.version == 4:
                    return str(self.ip)
                return ".".join(self.ip.exploded.replace(":", ""))
            if ch == "v":
                return "in-addr" if self.ip.version == 4 else "ip6"
            if ch == "h":
                return self.helo
            if ch == "p":
                return "unknown"
            if ch in "crt":
                if ch == "c":
                    return str(self.ip)
                if ch == "r":
                    return "unknown"
                return str(int(time.time()))
            raise SPFError(PERMERROR, f"bad macro letter {ch!r}")

        def replace(m: re.Match[str]) -> str:
            if m.group(5) is not None:
                literal = {"%": "%", "_": " ", "-": "%20"}.get(m.group(5))
                if literal is None:
                    raise SPFError(PERMERROR, f"bad macro %{m.group(5)}")
                return literal
            value = letter(m.group(1))
            delimiters = m.group(4) or "."
            parts = re.split("[" + re.escape(delimiters) + "]", value)
            if m.group(3):
                parts.reverse()
            if m.group(2):
                keep = int(m.group(2))
                if keep == 0:
                    raise SPFError(PERMERROR, "macro keeps zero labels")
                parts = parts[-keep:]
            return ".".join(parts)

        if "%" not in spec:
            return spec
        rest = _MACRO.sub(replace, spec)
        if len(rest) > 253:  # §7.3: drop labels from the left until it fits
            labels = rest.split(".")
            while labels and len(".".join(labels)) > 253:
                labels.pop(0)
            rest = ".".join(labels)
        return rest

    # -- the evaluation ---------------------------------------------------------------

    async def record(self, domain: str) -> str | None:
        """The domain's single SPF record, or None when it has none.

        @raise SPFError: DNS failure (temperror), several records (permerror).
        """
        answer = await self.dns.txt(domain)
        if answer.status == TEMPERROR:
            raise SPFError(TEMPERROR, f"DNS failure looking up {domain} TXT")
        records = []
        for raw in answer.records:
            text = raw.decode("ascii", "replace")
            if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 "):
                records.append(text)
        if not records:
            return None
        if len(records) > 1:
            raise SPFError(PERMERROR, f"{domain} has {len(records)} SPF records")
        if len(records[0]) > MAX_RECORD:
            raise SPFError(PERMERROR, f"{domain}: SPF record too long")
        return records[0]

    async def checkHost(self, domain: str, depth: int = 0) -> tuple[str, str]:
        """C{check_host()} for C{domain}: C{(result, reason)}."""
        if depth > MAX_LOOKUPS:
            raise SPFError(PERMERROR, "include/redirect nesting too deep")
        if not _validDomain(domain):
            return NONE, f"not a domain name: {domain!r}"
        record = await self.record(domain)
        if record is None:
            return NONE, f"no SPF record for {domain}"
        terms = record.split()[1:]
        redirect = None
        parsed = []
        for term in terms:
            name, eq, value = term.partition("=")
            if eq and re.match(r"^[A-Za-z][A-Za-z0-9\-_.]*$", name):
                if name.lower() == "redirect":
                    if redirect is not None:
                        raise SPFError(PERMERROR, "two redirect modifiers")
                    redirect = value
                elif name.lower() == "exp":
                    continue
                continue  # unknown modifiers are ignored (§6)
            qualifier = PASS
            if term[0] in _QUALIFIERS:
                qualifier = _QUALIFIERS[term[0]]
                term = term[1:]
            m = re.match(r"^([A-Za-z0-9]+)(?:([:/])(.*))?$", term)
            if m is None:
                raise SPFError(PERMERROR, f"bad term {term!r}")
            mech, sep, arg = m.group(1).lower(), m.group(2) or "", m.group(3) or ""
            if mech not in _MECHANISMS:
                raise SPFError(PERMERROR, f"unknown mechanism {term!r}")
            parsed.append((qualifier, mech, sep, arg, term))
        for qualifier, mech, sep, arg, term in parsed:
            if await self.matches(mech, sep, arg, domain, depth):
                return qualifier, f"matched {term}"
        if redirect is not None:
            self.count()
            target = self.expand(redirect, domain)
            result, reason = await self.checkHost(target, depth + 1)
            if result == NONE:
                raise SPFError(PERMERROR, f"redirect to {target}: no SPF record")
            return result, reason
        return NEUTRAL, "no mechanism matched"

    async def matches(self, mech: str, sep: str, arg: str, domain: str, depth: int) -> bool:
        """Whether one mechanism matches the client."""
        ip = self.ip
        if mech == "all":
            if sep:
                raise SPFError(PERMERROR, "all takes no argument")
            return True
        if mech in ("ip4", "ip6"):
            if sep != ":":
                raise SPFError(PERMERROR, f"{mech} needs an address")
            try:
                network = ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise SPFError(PERMERROR, f"bad {mech} network {arg!r}") from None
            if (mech == "ip4") != (network.version == 4):
                raise SPFError(PERMERROR, f"bad {mech} network {arg!r}")
            return ip.version == network.version and ip in network
        if mech == "include":
            if sep != ":" or not arg:
                raise SPFError(PERMERROR, "include needs a domain")
            self.count()
            result, _reason = await self.checkHost(self.expand(arg, domain), depth + 1)
            if result == PASS:
                return True
            if result in (FAIL, SOFTFAIL, NEUTRAL):
                return False
            if result == TEMPERROR:
                raise SPFError(TEMPERROR, f"include:{arg}: temperror")
            raise SPFError(PERMERROR, f"include:{arg}: {result}")
        if mech == "exists":
            if sep != ":" or not arg:
                raise SPFError(PERMERROR, "exists needs a domain")
            self.count()
            answer = self.answered(await self.dns.a(self.expand(arg, domain)), "exists")
            return answer.status == OK
        # a, mx, ptr: [:domain][/cidr4][//cidr6]
        spec, v4, v6 = domain, 32, 128
        text = sep + arg
        if text:
            m = _CIDR.match(text)
            assert m is not None
            name, c4, c6 = m.group(1), m.group(2), m.group(3)
            if name.startswith(":"):
                spec = self.expand(name[1:], domain)
                if not spec:
                    raise SPFError(PERMERROR, f"{mech}: empty domain")
            elif name:
                raise SPFError(PERMERROR, f"bad {mech} argument {text!r}")
            if c4 is not None:
                v4 = int(c4)
            if c6 is not None:
                v6 = int(c6)
            if v4 > 32 or v6 > 128:
                raise SPFError(PERMERROR, f"bad prefix length in {mech}{text}")
        if not _validDomain(spec):
            raise SPFError(PERMERROR, f"{mech}: not a domain name: {spec!r}")
        self.count()
        if mech == "a":
            return await self.addressMatch(spec, v4, v6)
        if mech == "mx":
            answer = self.answered(await self.dns.mx(spec), f"{spec} MX")
            if len(answer.records) > MAX_NAMES:
                raise SPFError(PERMERROR, f"{spec} has more than {MAX_NAMES} MX records")
            for _pref, host in answer.records:
                if host and await self.addressMatch(host, v4, v6):
                    return True
            return False
        # ptr (§5.5): validated names of the client ending in the target domain
        answer = await self.dns.ptr(str(ip))
        if answer.status == TEMPERROR:
            return False  # §5.5: a failed PTR lookup is no match
        for name in answer.records[:MAX_NAMES]:
            forward = await (self.dns.a(name) if ip.version == 4 else self.dns.aaaa(name))
            if forward.status == OK and str(ip) in forward.records and (
                    name == spec or name.endswith("." + spec)):
                return True
        return False

    async def addressMatch(self, name: str, v4: int, v6: int) -> bool:
        """Whether an address of C{name} (of the client's family) is within the prefix."""
        ip = self.ip
        lookup = self.dns.a if ip.version == 4 else self.dns.aaaa
        answer = self.answered(await lookup(name), f"{name} address")
        prefix = v4 if ip.version == 4 else v6
        for address in answer.records:
            network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
            if ip in network:
                return True
        return False


def _validDomain(domain: str) -> bool:
    """Whether C{domain} can be looked up (§4.3: at least two labels, none empty)."""
    labels = domain.rstrip(".").split(".")
    return (len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels)
            and len(domain) <= 253 and domain.isascii())


def _clientAddress(client: str) -> Any:
    """The client's address, IPv4-mapped IPv6 as IPv4."""
    ip = ipaddress.ip_address(client)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class SPFChecker:
    """Checks the SPF of a session's identities.

    @param dns: the L{DNSResolver}.
    """

    def __init__(self, dns: DNSResolver) -> None:
        self.dns = dns

    async def checkHost(self, client: str, domain: str, sender: str, helo: str,
                        identity: str) -> SPFResult:
        """One C{check_host()}; never raises."""
        try:
            ip = _clientAddress(client)
        except ValueError:
            return SPFResult(PERMERROR, identity, domain, f"bad client address {client!r}")
        evaluation = _Evaluation(self.dns, ip, sender, helo)
        try:
            ascii = domainToASCII(domain.strip().rstrip(".").lower())
        except AddressError:
            return SPFResult(NONE, identity, domain, f"not a domain name: {domain!r}")
        try:
            result, reason = await evaluation.checkHost(ascii)
        except SPFError as e:
            result, reason = e.result, e.reason
        return SPFResult(result, identity, domain, reason)

    async def mailFrom(self, client: str, sender: str, helo: str) -> SPFResult:
        """The MAIL FROM identity (C{postmaster@HELO} for the null sender, §2.4)."""
        if not sender:
            if not _validDomain(helo):
                return SPFResult(NONE, "mailfrom", helo, "null sender, HELO is no domain")
            return await self.checkHost(client, helo, f"postmaster@{helo}", helo, "mailfrom")
        local, _at, domain = sender.rpartition("@")
        if not local:
            sender = f"postmaster@{domain}"
        return await self.checkHost(client, domain, sender, helo, "mailfrom")

    async def helo(self, client: str, helo: str) -> SPFResult:
        """The HELO identity (§2.3); C{none} when the HELO argument is no domain name."""
        if not _validDomain(helo):
            return SPFResult(NONE, "helo", helo, "HELO is no domain name")
        return await self.checkHost(client, helo, f"postmaster@{helo}", helo, "helo")


__all__ = ["FAIL", "NEUTRAL", "NONE", "PASS", "PERMERROR", "SOFTFAIL", "SPFChecker",
           "SPFResult", "TEMPERROR"]
