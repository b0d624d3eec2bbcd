"""Asynchronous DNS lookups for mail authentication, with answers that say why they are empty.

SPF, DKIM and DMARC each treat "no such domain", "the name exists but has no record of
that type" and "the DNS did not answer" differently (permerror, none, temperror). The
L{DNSResolver} wraps the same twisted.names resolver the relay uses for MX lookups
(L{pymaild.smtp.mx.makeResolver}, over C{relay.dns_servers}) and answers every lookup
with an L{Answer} carrying one of L{OK}, L{NXDOMAIN}, L{NODATA} or L{TEMPERROR}; it never
raises. CNAMEs the server does not resolve itself are followed (at most L{MAX_CNAME}
hops); a CNAME loop is answered as L{NODATA} with the reason saying so. Every lookup has a
deadline (C{timeout} seconds in all), so no check waits longer for a silent server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.names import dns
from twisted.names import error as dnserror

OK = "ok"
NXDOMAIN = "nxdomain"
NODATA = "nodata"
TEMPERROR = "temperror"

MAX_CNAME = 8


@dataclass(frozen=True)
class Answer:
    """The outcome of one lookup.

    @ivar status: L{OK} (C{records} is not empty), L{NXDOMAIN}, L{NODATA} or L{TEMPERROR}.
    @ivar records: for TXT the strings of each record joined (C{bytes}); for A, AAAA and
        PTR the address or name (C{str}); for MX C{(preference, host)} pairs; for SRV
        C{(priority, weight, port, target)}.
    @ivar reason: for a failure, a short description for logs and result comments.
    """

    status: str
    records: tuple[Any, ...] = ()
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether records were found."""
        return self.status == OK


def _name(value: Any) -> str:
    """A record's or header's name as lower-case text without the final dot."""
    raw = value.name if isinstance(value, dns.Name) else value
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    return str(raw).rstrip(".").lower()


def _payload(rtype: int, record: Any) -> Any:
    """What L{Answer.records} holds for one record of type C{rtype}."""
    if rtype == dns.TXT:
        return b"".join(record.data)
    if rtype == dns.MX:
        return (record.preference, _name(record.name))
    if rtype == dns.PTR:
        return _name(record.name)
    if rtype == dns.SRV:
        return (record.priority, record.weight, record.port, _name(record.target))
    return ipaddress.ip_address(record.address).compressed


class LazyResolver:
    """A twisted.names resolver made on first use, shared by its users.

    The system resolver (no C{relay.dns_servers}) watches C{resolv.conf} from the
    moment it exists; making it only when a lookup is due keeps a server (and its tests)
    that never looks anything up free of that. The relay's MX lookups and the
    L{DNSResolver} of the checks go through one such object.

    @param make: makes the resolver (L{pymaild.smtp.mx.makeResolver}).
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._resolver: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("lookup") or name == "query":
            if self._resolver is None:
                self._resolver = self._make()
            return getattr(self._resolver, name)
        raise AttributeError(name)


class DNSResolver:
    """TXT, A, AAAA, MX, SRV and PTR lookups over a twisted.names resolver.

    @param resolver: a twisted.names C{IResolver} (the tap gives the relay's).
    @param reactor: for the deadline of each lookup.
    @param timeout: seconds a lookup may take in all, CNAMEs followed included.
    """

    def __init__(self, resolver: Any, reactor: Any, timeout: float = 10.0) -> None:
        self.resolver = resolver
        self.reactor = reactor
        self.timeout = timeout

    def _attempts(self) -> tuple[float, ...]:
        """The per-try timeouts twisted.names uses (a quick first try, then the rest)."""
        if self.timeout <= 2:
            return (self.timeout,)
        first = min(2.0, self.timeout / 3)
        return (first, self.timeout - first)

    def txt(self, name: str) -> defer.Deferred[Answer]:
        """The TXT records at C{name}."""
        return self._lookup(name, dns.TXT, self.resolver.lookupText)

    def a(self, name: str) -> defer.Deferred[Answer]:
        """The IPv4 addresses of C{name}."""
        return self._lookup(name, dns.A, self.resolver.lookupAddress)

    def aaaa(self, name: str) -> defer.Deferred[Answer]:
        """The IPv6 addresses of C{name}."""
        return self._lookup(name, dns.AAAA, self.resolver.lookupIPV6Address)

    def mx(self, name: str) -> defer.Deferred[Answer]:
        """The mail exchangers of C{name} as C{(preference, host)}."""
        return self._lookup(name, dns.MX, self.resolver.lookupMailExchange)

    def srv(self, name: str) -> defer.Deferred[Answer]:
        """The SRV records at C{name} as C{(priority, weight, port, target)}."""
        return self._lookup(name, dns.SRV, self.resolver.lookupService)

    def ptr(self, address: str) -> defer.Deferred[Answer]:
        """The names of C{address} (its C{in-addr.arpa} or C{ip6.arpa} PTR records)."""
        try:
            name = ipaddress.ip_address(address).reverse_pointer
        except ValueError:
            return defer.succeed(Answer(NXDOMAIN, (), f"not an IP address: {address!r}"))
        return self._lookup(name, dns.PTR, self.resolver.lookupPointer)

    def _lookup(self, name: str, rtype: int,
                lookup: Callable[..., defer.Deferred[Any]]) -> defer.Deferred[Answer]:
        """Ask for C{rtype} at C{name}, following CNAMEs; always fires with an L{Answer}."""
        d = defer.ensureDeferred(self._chase(name.rstrip(".").lower(), rtype, lookup))
        d.addTimeout(self.timeout + 1, self.reactor)

        def failed(reason: Any) -> Answer:
            return Answer(TEMPERROR, (), f"{name}: {reason.getErrorMessage() or 'timeout'}")

        return d.addErrback(failed)

    async def _chase(self, name: str, rtype: int,
                     lookup: Callable[..., defer.Deferred[Any]]) -> Answer:
        """The records of C{rtype} at C{name}, asking again for CNAME targets."""
        seen: list[str] = []
        current = name
        for _ in range(MAX_CNAME + 1):
            if current in seen:
                return Answer(NODATA, (), f"CNAME loop at {current}")
            seen.append(current)
            if not current or len(current) > 253 or any(
                    len(label) > 63 or not label for label in current.split(".")):
                return Answer(NXDOMAIN, (), f"not a domain name: {current!r}")
            try:
                answers, _auth, _add = await lookup(current, timeout=self._attempts())
            except dnserror.DNSNameError:
                return Answer(NXDOMAIN, (), f"{current}: no such domain")
            except (dnserror.DNSServerError, dnserror.DNSQueryRefusedError,
                    dnserror.DNSFormatError, dnserror.DNSNotImplementedError,
                    dnserror.DNSUnknownError, dnserror.DNSQueryTimeoutError,
                    TwistedTimeoutError, defer.TimeoutError) as e:
                return Answer(TEMPERROR, (), f"{current}: {type(e).__name__}")
            except UnicodeError:
                return Answer(NXDOMAIN, (), f"not a domain name: {current!r}")
            # The server may give the whole chain: follow it within the answer first.
            target = current
            for _hop in range(MAX_CNAME + 1):
                found = [r.payload for r in answers
                         if r.type == rtype and _name(r.name) == target]
                if found:
                    return Answer(OK, tuple(_payload(rtype, r) for r in found))
                alias = [r.payload for r in answers
                         if r.type == dns.CNAME and _name(r.name) == target]
                if not alias:
                    break
                target = _name(alias[0].name)
                if target in seen:
                    return Answer(NODATA, (), f"CNAME loop at {target}")
                seen.append(target)
            if target == current:
                return Answer(NODATA, (), f"{current}: no {dns.QUERY_TYPES.get(rtype)} record")
            seen.pop()
            current = target
        return Answer(NODATA, (), f"{name}: more than {MAX_CNAME} CNAMEs")


__all__ = ["Answer", "DNSResolver", "LazyResolver", "NODATA", "NXDOMAIN", "OK", "TEMPERROR"]
