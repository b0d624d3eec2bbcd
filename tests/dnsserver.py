"""A real authoritative DNS server on loopback for the tests (twisted.names).

L{ZoneServer} listens on UDP and TCP at the same free port of 127.0.0.1 in the test's
reactor and answers from zones given as plain dictionaries::

    server = ZoneServer({"a.test": {"a.test": [TXT("v=spf1 -all")]}})
    port = server.start()          # then relay.dns_servers = [f"127.0.0.1:{port}"]
    ...
    yield server.stop()

A UDP answer longer than 512 bytes is sent truncated (TC set, no records), as a server
without EDNS does, so the client asks again over TCP: large DKIM keys take the real path.
Names listed in C{failing} are answered SERVFAIL; names in C{silent} are never answered
(a timeout). L{ZoneServer.set} changes records while the server runs.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.internet import error as ineterror
from twisted.names import authority, dns, server


def TXT(*strings: str | bytes, ttl: int = 60) -> dns.Record_TXT:
    """A TXT record of one or more character strings (each at most 255 bytes)."""
    parts = [s.encode() if isinstance(s, str) else s for s in strings]
    return dns.Record_TXT(*parts, ttl=ttl)


def longTXT(value: str | bytes, ttl: int = 60) -> dns.Record_TXT:
    """A TXT record holding C{value} split into 255-byte strings."""
    raw = value.encode() if isinstance(value, str) else value
    return dns.Record_TXT(*[raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""], ttl=ttl)


def A(address: str, ttl: int = 60) -> dns.Record_A:
    """An A record."""
    return dns.Record_A(address, ttl=ttl)


def AAAA(address: str, ttl: int = 60) -> dns.Record_AAAA:
    """An AAAA record."""
    return dns.Record_AAAA(address, ttl=ttl)


def MX(host: str, preference: int = 10, ttl: int = 60) -> dns.Record_MX:
    """An MX record."""
    return dns.Record_MX(preference, host.encode(), ttl=ttl)


def CNAME(target: str, ttl: int = 60) -> dns.Record_CNAME:
    """A CNAME record."""
    return dns.Record_CNAME(target.encode(), ttl=ttl)


def PTR(name: str, ttl: int = 60) -> dns.Record_PTR:
    """A PTR record."""
    return dns.Record_PTR(name.encode(), ttl=ttl)


def reverseName(address: str) -> str:
    """The PTR owner name of C{address}."""
    return ipaddress.ip_address(address).reverse_pointer


class Zone(authority.FileAuthority):
    """One zone from a dictionary: owner name → list of twisted.names records."""

    def __init__(self, origin: str, records: dict[str, list[Any]],
                 failing: set[str], silent: set[str]) -> None:
        self._origin = origin
        self._initial = records
        self.failing = failing
        self.silent = silent
        super().__init__(origin)

    def loadFile(self, filename: Any) -> None:
        """Take the records from the dictionary given to the constructor."""
        origin = self._origin.encode()
        self.soa = (origin, dns.Record_SOA(
            mname=b"ns." + origin, rname=b"hostmaster." + origin, serial=1,
            refresh=60, retry=60, expire=60, minimum=60, ttl=60))
        self.records = {origin: [self.soa[1]]}
        for name, recs in self._initial.items():
            self.records.setdefault(name.lower().rstrip(".").encode(), []).extend(recs)

    def _lookup(self, name: Any, cls: int, type: int, timeout: Any = None) -> Any:
        """Answer, fail (SERVFAIL) or stay silent as the test configured."""
        text = name.decode().lower() if isinstance(name, bytes) else str(name).lower()
        if dns._isSubdomainOf(name, self.soa[0]):
            if text in self.silent:
                return defer.Deferred()
            if text in self.failing:
                return defer.fail(_ServFail(text))
        return super()._lookup(name, cls, type, timeout)


class _ServFail(Exception):
    """Raised by a zone for a name the test wants answered SERVFAIL."""


class _TruncatingFactory(server.DNSServerFactory):
    """Sends UDP answers over 512 bytes truncated, as a server without EDNS does;
    answers L{_ServFail} with SERVFAIL (without logging it as an error)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed: list[defer.Deferred[None]] = []

    def gotResolverError(self, failure: Any, protocol: Any, message: dns.Message,
                         address: Any) -> None:
        """SERVFAIL for L{_ServFail}, the usual handling otherwise."""
        if failure.check(_ServFail):
            response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
            self.sendReply(protocol, response, address)
            return
        super().gotResolverError(failure, protocol, message, address)

    def connectionLost(self, protocol: Any) -> None:
        """A TCP client left: wake whoever waits for the connections to close."""
        super().connectionLost(protocol)
        if not self.connections:
            waiting, self.closed = self.closed, []
            for d in waiting:
                d.callback(None)

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        """Truncate a long UDP reply to its header and question."""
        if address is not None and len(message.toStr()) > 512:
            message.answers, message.authority, message.additional = [], [], []
            message.trunc = 1
        super().sendReply(protocol, message, address)


class ZoneServer:
    """An authoritative server for test zones on 127.0.0.1 (UDP and TCP, one port).

    @param zones: zone origin → (owner name → records).
    @param failing: names answered SERVFAIL.
    @param silent: names never answered.
    """

    def __init__(self, zones: dict[str, dict[str, list[Any]]],
                 failing: set[str] | None = None, silent: set[str] | None = None,
                 reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.reactor = reactor
        self.failing = {n.lower() for n in failing or set()}
        self.silent = {n.lower() for n in silent or set()}
        self.zones = {origin: Zone(origin, recs, self.failing, self.silent)
                      for origin, recs in zones.items()}
        self.factory = _TruncatingFactory(authorities=list(self.zones.values()))
        self.factory.noisy = False
        self.ports: list[Any] = []
        self.port = 0

    def start(self) -> int:
        """Listen on a free port (UDP and TCP); return it."""
        for _ in range(20):
            udp = self.reactor.listenUDP(0, dns.DNSDatagramProtocol(self.factory),
                                         interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = self.reactor.listenTCP(port, self.factory, interface="127.0.0.1")
            except ineterror.CannotListenError:
                udp.stopListening()
                continue
            self.ports = [udp, tcp]
            self.port = port
            return port
        raise RuntimeError("no free port for the test DNS server")

    @property
    def address(self) -> str:
        """C{127.0.0.1:port}, as C{relay.dns_servers} takes it."""
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, records: list[Any]) -> None:
        """Replace the records at C{name} (in the zone it belongs to)."""
        key = name.lower().rstrip(".")
        for origin, zone in sorted(self.zones.items(), key=lambda z: -len(z[0])):
            if key == origin or key.endswith("." + origin):
                zone.records[key.encode()] = list(records)
                return
        raise KeyError(f"{name}: in no zone of the test server")

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening and close the TCP connections clients left open.

        twisted.names clients keep a TCP connection for later queries; once the server
        end is gone, the client end sees it close within a moment.
        """
        from twisted.internet.task import deferLater

        ports, self.ports = self.ports, []
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        if self.factory.connections:
            closed: defer.Deferred[None] = defer.Deferred()
            self.factory.closed.append(closed)
            for protocol in list(self.factory.connections):
                protocol.transport.abortConnection()
            yield closed
            yield deferLater(self.reactor, 0.05, lambda: None)


def recordsFromJSON(entries: list[list[Any]]) -> list[Any]:
    """Records from C{[["TXT", "text"], ["MX", "host", 10], ["A", "1.2.3.4"], ...]}."""
    makers = {"TXT": longTXT, "A": A, "AAAA": AAAA, "MX": MX, "CNAME": CNAME, "PTR": PTR}
    return [makers[kind](*args) for kind, *args in entries]


def main(argv: list[str]) -> None:
    """Serve zones from a JSON file in a process of its own, for tests whose own
    thread is busy (a browser): C{python -m tests.dnsserver ZONES.json PORTFILE}.

    The file maps zone origin → owner name → records as L{recordsFromJSON} reads them;
    the port is written to PORTFILE once the server listens. SIGTERM stops it.
    """
    import json
    import os

    from twisted.internet import reactor

    with open(argv[0], encoding="utf-8") as f:
        raw = json.load(f)
    zones = {origin: {name: recordsFromJSON(recs) for name, recs in names.items()}
             for origin, names in raw.items()}
    port = ZoneServer(zones, reactor=reactor).start()
    with open(argv[1] + ".new", "w") as out:
        out.write(str(port))
    os.replace(argv[1] + ".new", argv[1])
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
