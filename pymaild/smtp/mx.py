"""MX and address lookup for outbound mail (RFC 5321 §5.1, null MX of RFC 7505), and the
twisted.names resolver the relay and the mail-authentication checks use.
"""


from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names import error as dnserror
from twisted.python.failure import Failure

from pymaild.address import domainToASCII
from pymaild.config import RelayConfig, parseHostPort
from pymaild.errors import AddressError, ConfigError
from pymaild.smtp.esmtpclient import DeliveryError

log = Logger()

def _isIP(host: str) -> bool:
    """Whether C{host} is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _asciiDomain(domain: str) -> str:
    """The A-label form of C{domain} (IDNA 2008 through L{domainToASCII}).

    @raise DeliveryError: the domain cannot be encoded (permanent 5.1.2).
    """
    d = domain.strip().rstrip(".").lower()
    if d.isascii() and "xn--" not in d:
        return d
    try:
        return domainToASCII(d)
    except AddressError as e:
        raise DeliveryError("5.1.2", f"bad destination domain: {e}", True) from None


def _dnsError(f: Failure, name: str, kind: str, permanentNX: bool) -> DeliveryError:
    """Translate a resolver failure into a delivery error."""
    if f.check(dnserror.DNSNameError):
        return DeliveryError(
            "5.1.2" if permanentNX else "4.4.3",
            f"Host or domain name not found. Name service error for name={name} type={kind}:"
            " Host not found",
            permanentNX,
        )
    return DeliveryError(
        "4.4.3",
        f"Host or domain name not found. Name service error for name={name} type={kind}:"
        f" {f.getErrorMessage() or f.type.__name__}, try again",
    )


def _follow(answers: Iterable[dns.RRHeader], name: str, rtype: int) -> list[Any]:
    """The payloads of type C{rtype} for C{name}, following CNAMEs in C{answers}."""
    records = list(answers)
    wanted = {name.lower()}
    for _ in range(8):
        more = {
            str(r.payload.name).lower()
            for r in records
            if r.type == dns.CNAME and str(r.name).lower() in wanted
        }
        if more <= wanted:
            break
        wanted |= more
    return [r.payload for r in records if r.type == rtype and str(r.name).lower() in wanted]


class MXResolver:
    """Finds the servers that accept mail for a domain, over a twisted.names resolver."""

    def __init__(self, resolver: Any, rng: random.Random | None = None) -> None:
        self.resolver = resolver
        self.rng = rng or random.Random()

    async def exchanges(self, domain: str) -> list[str]:
        """The mail exchangers of C{domain}, best first.

        Equal preferences come in random order. A domain without MX records is its own
        exchanger (RFC 5321 §5.1). An address literal (C{[192.0.2.1]}) is used as it is.

        @raise DeliveryError: null MX (5.1.10), no such domain (5.1.2), DNS failure (4.4.3).
        """
        if domain.startswith("[") and domain.endswith("]"):
            literal = domain[1:-1]
            if literal.lower().startswith("ipv6:"):
                literal = literal[5:]
            if not _isIP(literal):
                raise DeliveryError("5.1.2", f"bad address literal {domain}", True)
            return [literal]
        name = _asciiDomain(domain)
        try:
            answers, _auth, _add = await self.resolver.lookupMailExchange(name)
        except Exception:
            raise _dnsError(Failure(), name, "MX", True) from None
        records = _follow(answers, name, dns.MX)
        if not records:
            return [name]
        if any(str(r.name) in ("", ".") for r in records):
            raise DeliveryError(
                "5.1.10",
                f"Recipient address rejected: domain {name} does not accept mail (nullMX)",
                True,
            )
        byPreference: dict[int, list[str]] = {}
        for r in records:
            byPreference.setdefault(r.preference, []).append(str(r.name).rstrip(".").lower())
        hosts: list[str] = []
        for pref in sorted(byPreference):
            group = byPreference[pref]
            self.rng.shuffle(group)
            hosts.extend(h for h in group if h not in hosts)
        return hosts

    async def addresses(self, host: str, implicit: bool = False) -> list[str]:
        """The IPv4 then IPv6 addresses of C{host}.

        @param implicit: C{host} is the domain itself (no MX): a missing name is then a
            permanent failure rather than a temporary one.
        @raise DeliveryError: the name has no address.
        """
        if _isIP(host):
            return [host]
        found: list[str] = []
        failures: list[Failure] = []
        for lookup, rtype in (
            (self.resolver.lookupAddress, dns.A),
            (self.resolver.lookupIPV6Address, dns.AAAA),
        ):
            try:
                answers, _auth, _add = await lookup(host)
            except Exception:
                failures.append(Failure())
                continue
            for record in _follow(answers, host, rtype):
                address = ipaddress.ip_address(record.address).compressed
                if address not in found:
                    found.append(address)
        if found:
            return found
        if failures and all(f.check(dnserror.DNSNameError) for f in failures):
            raise _dnsError(failures[0], host, "A", implicit)
        if failures:
            raise _dnsError(failures[0], host, "A", False)
        raise DeliveryError(
            "5.4.4" if implicit else "4.4.4",
            f"Host {host} has no address (A/AAAA) records",
            implicit,
        )


def makeResolver(config: RelayConfig, reactor: Any) -> Any:
    """A twisted.names resolver: the configured servers, or the system's resolver.

    With C{dns_servers} the resolver asks those servers only and keeps no cache and no
    resolv.conf watcher (so tests leave a clean reactor).

    @raise ConfigError: a server entry is not C{address[:port]}.
    """
    servers = dnsServers(config)
    if not servers:
        return client.getResolver()
    return client.Resolver(servers=servers, reactor=reactor)


def dnsServers(config: RelayConfig) -> list[tuple[str, int]]:
    """The configured DNS servers as C{(address, port)} pairs.

    @raise ConfigError: an entry is not C{address[:port]} with an IP address.
    """
    servers = [parseHostPort(s, 53, "relay.dns_servers") for s in config.dns_servers]
    for host, _port in servers:
        if not _isIP(host):
            raise ConfigError(f"relay.dns_servers: {host!r} is not an IP address")
    return servers


def _safeAscii(domain: str) -> str:
    """The A-label of C{domain}, or the domain as given when it cannot be encoded."""
    try:
        return _asciiDomain(domain)
    except DeliveryError:
        return domain
