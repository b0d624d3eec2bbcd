"""DANE for SMTP (RFC 7672): TLSA records of MX hosts, trusted only when DNSSEC-validated.

pymaild does not validate DNSSEC itself: it trusts the AD ("authentic data") bit of the
answers of the validating resolvers named in C{relay.dnssec_resolvers} (a local
unbound, say), and of no other server. L{ValidatingResolver} asks them over UDP with the
AD bit set in the query (RFC 6840 §5.7), so they say whether an answer is secure; an
answer truncated to fit a datagram (TC, as a TLSA RRset of several records with its
signatures is) is asked again over TCP (RFC 7766).

L{DANE.hosts} decides, for a destination's MX hosts, which are DANE-protected
(RFC 7672 §2.2):

  - the MX RRset must be secure, else no host is (a missing MX: the domain itself);
  - then a host's address records must be secure, and its C{_25._tcp.HOST} TLSA RRset
    secure and not empty: that host is protected (L{HostTLSA}); a secure denial or an
    insecure answer leaves it unprotected; a lookup that fails (SERVFAIL, a bogus
    signature, a timeout) makes the host unusable for now (a temporary failure).

For a protected host the relay requires STARTTLS, and L{HostTLSA.check} matches the
server's chain against the usable records (usages 2 DANE-TA and 3 DANE-EE, selectors 0
full certificate and 1 SubjectPublicKeyInfo, matching types 0 exact, 1 SHA-256,
2 SHA-512): DANE-EE compares the leaf only (no name or date check, §3.1.1); DANE-TA
needs a certificate of the presented chain to match and the leaf to chain to it, valid
for the MX host name (§3.1.2, checked with C{cryptography}'s verifier). Records with
other usages, selectors or matching types are ignored; when none is usable, TLS is still
required but not authenticated (§2.2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.names import dns

OK = "ok"
NXDOMAIN = "nxdomain"
NODATA = "nodata"
TEMPERROR = "temperror"

TLSA = 52
DANE_TA = 2
DANE_EE = 3


@dataclass(frozen=True)
class SecureAnswer:
    """One answer of a validating resolver.

    @ivar status: L{OK}, L{NXDOMAIN}, L{NODATA} or L{TEMPERROR}.
    @ivar secure: the resolver set the AD bit (the answer, or the denial, validated).
    @ivar records: the payloads of the records of the type asked for.
    @ivar reason: for a failure, why.
    """

    status: str
    secure: bool
    records: tuple[Any, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class TLSARecord:
    """One TLSA record (RFC 6698 §2.1)."""

    usage: int
    selector: int
    matching: int
    data: bytes

    @property
    def usable(self) -> bool:
        """Whether this record is one SMTP DANE uses (RFC 7672 §3.1)."""
        return (self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1)
                and self.matching in (0, 1, 2))

    @classmethod
    def fromWire(cls, data: bytes) -> TLSARecord | None:
        """A record from its RDATA, or None when it is too short."""
        if len(data) < 4:
            return None
        return cls(data[0], data[1], data[2], bytes(data[3:]))


class _Controller:
    """Takes the messages nobody asked for (late answers) and drops them."""

    def messageReceived(self, message: Any, protocol: Any, address: Any = None) -> None:
        """Ignore C{message}."""

    def connectionMade(self, protocol: Any) -> None:
        """A TCP connection is up (the query is sent by L{ValidatingResolver})."""

    def connectionLost(self, protocol: Any) -> None:
        """A TCP connection closed (a query still waiting ends at its timeout)."""


class _ADQuery(dns.DNSDatagramProtocol):
    """A UDP DNS client whose queries carry the AD bit."""

    def writeMessage(self, message: dns.Message, address: Any) -> None:
        """Set AD (RFC 6840 §5.7: ask for the AD bit in the answer), then send."""
        message.authenticData = 1
        super().writeMessage(message, address)


class _ADQueryTCP(dns.DNSProtocol):
    """A TCP DNS client whose queries carry the AD bit."""

    def writeMessage(self, message: dns.Message) -> None:
        """Set AD, then send."""
        message.authenticData = 1
        super().writeMessage(message)


class ValidatingResolver:
    """Asks the configured validating resolvers, in order, and reports the AD bit.

    @param servers: C{(address, port)} of the validating resolvers.
    @param reactor: for the UDP port and the deadlines.
    @param timeout: seconds one server may take to answer.
    """

    def __init__(self, servers: list[tuple[str, int]], reactor: Any,
                 timeout: float = 10.0) -> None:
        self.servers = servers
        self.reactor = reactor
        self.timeout = timeout

    async def query(self, name: str, rtype: int) -> SecureAnswer:
        """The records of type C{rtype} at C{name}; never raises."""
        reasons = []
        for server in self.servers:
            protocol = _ADQuery(_Controller(), reactor=self.reactor)
            query = [dns.Query(name.encode("ascii"), rtype, dns.IN)]
            try:
                message = await protocol.query(server, query, self.timeout)
                if message.trunc:
                    message = await self._queryTCP(server, query)
            except Exception as e:  # noqa: BLE001 - timeouts and socket errors alike
                reasons.append(f"{server[0]}:{server[1]}: {type(e).__name__}")
                continue
            finally:
                if protocol.transport is not None:
                    protocol.transport.stopListening()
            return _answer(message, name, rtype)
        return SecureAnswer(TEMPERROR, False, (), f"{name}: {'; '.join(reasons)}")


    async def _queryTCP(self, server: tuple[str, int], query: list[dns.Query]
                        ) -> dns.Message:
        """Ask C{server} over TCP (after a truncated UDP answer), within the timeout."""
        cls = TCP6ClientEndpoint if ":" in server[0] else TCP4ClientEndpoint
        endpoint = cls(self.reactor, server[0], server[1], timeout=self.timeout)
        protocol = _ADQueryTCP(_Controller(), reactor=self.reactor)
        await connectProtocol(endpoint, protocol)
        try:
            return await protocol.query(query, self.timeout)
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()


def _answer(message: dns.Message, name: str, rtype: int) -> SecureAnswer:
    """What a response says about C{name}'s records of C{rtype}."""
    secure = bool(message.authenticData)
    if message.trunc:
        return SecureAnswer(TEMPERROR, False, (), f"{name}: truncated answer")
    if message.rCode == dns.ENAME:
        return SecureAnswer(NXDOMAIN, secure, (), f"{name}: no such domain")
    if message.rCode != dns.OK:
        return SecureAnswer(TEMPERROR, False, (), f"{name}: rcode {message.rCode}")
    wanted = {name.lower().rstrip(".")}
    for _ in range(8):
        more = {str(cast(dns.Record_CNAME, r.payload).name).lower().rstrip(".")
                for r in message.answers
                if r.type == dns.CNAME and str(r.name).lower().rstrip(".") in wanted}
        if more <= wanted:
            break
        wanted |= more
    records = tuple(r.payload for r in message.answers
                    if r.type == rtype and str(r.name).lower().rstrip(".") in wanted)
    if not records:
        return SecureAnswer(NODATA, secure, (), f"{name}: no records")
    return SecureAnswer(OK, secure, records)


@dataclass(frozen=True)
class HostTLSA:
    """The validated TLSA records of one MX host: TLS is required, and authenticated
    by L{check} when a record is usable."""

    host: str
    records: tuple[TLSARecord, ...]

    @property
    def usable(self) -> tuple[TLSARecord, ...]:
        """The records RFC 7672 uses."""
        return tuple(r for r in self.records if r.usable)

    def describe(self) -> str:
        """C{"3 1 1, 2 0 1"} for log lines and outcomes."""
        return ", ".join(f"{r.usage} {r.selector} {r.matching}" for r in self.records)

    def check(self, chain: list[x509.Certificate]) -> str:
        """"" when the server's chain (leaf first) matches a usable record, else why not.

        No usable record: any chain will do (TLS unauthenticated, RFC 7672 §2.2).
        """
        usable = self.usable
        if not usable:
            return ""
        if not chain:
            return "the server sent no certificate"
        leaf = chain[0]
        for record in usable:
            if record.usage == DANE_EE and _matches(record, leaf):
                return ""
        taFailures = []
        for record in usable:
            if record.usage != DANE_TA:
                continue
            for anchor in chain[1:]:
                if not _matches(record, anchor):
                    continue
                why = _chainsTo(leaf, chain[1:], anchor, self.host)
                if not why:
                    return ""
                taFailures.append(why)
        detail = f" ({'; '.join(taFailures)})" if taFailures else ""
        return (f"the certificate of {self.host} matches none of its TLSA records"
                f" ({self.describe()}){detail}")


def _selected(selector: int, cert: x509.Certificate) -> bytes:
    """The part of C{cert} a record's selector names."""
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _matches(record: TLSARecord, cert: x509.Certificate) -> bool:
    """Whether C{cert} matches C{record} (selector and matching type)."""
    content = _selected(record.selector, cert)
    if record.matching == 1:
        content = hashlib.sha256(content).digest()
    elif record.matching == 2:
        content = hashlib.sha512(content).digest()
    return content == record.data


def _chainsTo(leaf: x509.Certificate, intermediates: list[x509.Certificate],
              anchor: x509.Certificate, host: str) -> str:
    """"" when C{leaf} chains to C{anchor} and is valid for C{host}, else why not."""
    try:
        verifier = PolicyBuilder().store(Store([anchor])).build_server_verifier(
            x509.DNSName(host))
        verifier.verify(leaf, [c for c in intermediates if c != anchor])
    except (VerificationError, ValueError) as e:
        return f"DANE-TA: {e}"
    return ""


class DANE:
    """Which MX hosts of a destination are DANE-protected (see the module docstring).

    @param resolver: a L{ValidatingResolver}.
    """

    def __init__(self, resolver: ValidatingResolver) -> None:
        self.resolver = resolver

    async def hosts(self, domain: str, hosts: list[str]
                    ) -> tuple[dict[str, HostTLSA], dict[str, str]]:
        """C{(protected, failed)} for C{hosts}, the MX hosts of C{domain}.

        @return: C{protected} maps a host to its validated TLSA records; C{failed} maps a
            host whose lookups failed to the reason (do not deliver there now).
        """
        protected: dict[str, HostTLSA] = {}
        failed: dict[str, str] = {}
        mx = await self.resolver.query(domain, dns.MX)
        if mx.status == TEMPERROR:
            # Without a validated answer the MX hosts' protection is unknown.
            return {}, {h: f"DANE: MX lookup of {domain} failed: {mx.reason}" for h in hosts}
        if not mx.secure:
            return {}, {}
        lookups = [defer.Deferred.fromCoroutine(self._host(h)) for h in hosts]
        for host, result in zip(hosts, await defer.gatherResults(lookups), strict=True):
            if isinstance(result, HostTLSA):
                protected[host] = result
            elif result:
                failed[host] = result
        return protected, failed

    async def _host(self, host: str) -> HostTLSA | str:
        """The host's TLSA records, "" when it is not protected, or why the lookup
        failed."""
        for rtype in (dns.A, dns.AAAA):
            address = await self.resolver.query(host, rtype)
            if address.status == TEMPERROR:
                return f"DANE: address lookup of {host} failed: {address.reason}"
            if address.status == OK:
                if not address.secure:
                    return ""
                break
        else:
            return ""
        name = f"_25._tcp.{host}"
        answer = await self.resolver.query(name, TLSA)
        if answer.status == TEMPERROR:
            return f"DANE: TLSA lookup of {name} failed: {answer.reason}"
        if answer.status != OK or not answer.secure:
            return ""
        records = tuple(r for r in (TLSARecord.fromWire(p.data) for p in answer.records)
                        if r is not None)
        return HostTLSA(host, records) if records else ""


__all__ = ["DANE", "HostTLSA", "SecureAnswer", "TLSARecord", "ValidatingResolver"]
