"""HTTPS requests to a host whose address comes from the server's own resolver.

Both MTA-STS policy fetches (L{pymaild.smtp.mtasts}) and TLS-RPT reports posted to
C{https:} URIs (L{pymaild.smtp.tlsrpt}) name hosts that the system resolver and
C{/etc/hosts} must not answer for: the address is looked up through the asynchronous
resolver (L{pymaild.mailauth.resolver.DNSResolver}), the agent connects to that
address (L{PinnedEndpoints}), and TLS is verified for the host name against the given
trust root (L{pymaild.tls.verifyingClientContext}).
"""

from __future__ import annotations

import ipaddress
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from pymaild.tls import verifyingClientContext


class HTTPSError(Exception):
    """An HTTPS request could not be made (no address, a bad URL)."""


@implementer(IAgentEndpointFactory)
class PinnedEndpoints:
    """Connects the agent to one address already resolved, with TLS verified for the
    host's name (by C{creator})."""

    def __init__(self, reactor: Any, address: str, port: int, creator: Any,
                 timeout: float) -> None:
        self.reactor = reactor
        self.address = address
        self.port = port
        self.creator = creator
        self.timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:
        """The TLS endpoint to the resolved address (whatever the URI's host)."""
        cls = TCP6ClientEndpoint if ":" in self.address else TCP4ClientEndpoint
        return wrapClientTLS(self.creator, cls(self.reactor, self.address, self.port,
                                               timeout=self.timeout))


class Discard(protocol.Protocol):
    """Reads a response body nobody wants."""

    def dataReceived(self, data: bytes) -> None:
        """Drop C{data}."""


async def resolveAddress(dns: Any, host: str) -> str:
    """The first address of C{host} through C{dns} (IPv4 first).

    @raise HTTPSError: the name has no address.
    """
    reasons = []
    for lookup in (dns.a, dns.aaaa):
        answer = await lookup(host)
        if answer.ok:
            return str(ipaddress.ip_address(answer.records[0]))
        reasons.append(answer.reason)
    raise HTTPSError(f"{host} has no address ({'; '.join(r for r in reasons if r)})")


async def post(reactor: Any, dns: Any, url: str, body: bytes, contentType: bytes,
               trust: Any = None, timeout: float = 60.0) -> int:
    """POST C{body} to the C{https:} C{url}; the response's status code.

    @param trust: the trust root (L{pymaild.tls.loadCAFile}'s result), or None for the
        system trust store.
    @param timeout: seconds the whole request may take.
    @raise HTTPSError: the URL is not an https: URL with a host, or it has no address.
    @raise Exception: connection, TLS and HTTP failures as the agent reports them.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or 443
    except ValueError:
        raise HTTPSError(f"bad port in {url[:200]!r}") from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise HTTPSError(f"not an https: URL with a host: {url[:200]!r}")
    host = parts.hostname
    address = await resolveAddress(dns, host)
    agent = Agent.usingEndpointFactory(
        reactor, PinnedEndpoints(reactor, address, port, verifyingClientContext(host, trust),
                                 timeout))
    d = agent.request(b"POST", url.encode("ascii"),
                      Headers({b"User-Agent": [b"pymaild"], b"Content-Type": [contentType]}),
                      FileBodyProducer(BytesIO(body)))
    timer = reactor.callLater(timeout, d.cancel)
    try:
        response = await d
    except defer.CancelledError:
        raise HTTPSError(f"no answer from {host} within {timeout:g}s") from None
    finally:
        if timer.active():
            timer.cancel()
    response.deliverBody(Discard())
    return int(response.code)


__all__ = ["Discard", "HTTPSError", "PinnedEndpoints", "post", "resolveAddress"]
