"""When a password may be sent in clear text (LOGIN, USER/PASS, AUTH PLAIN/LOGIN).

Policies, as the ``auth.cleartext`` setting names them:

- ``"tls-only"``: only over TLS (implicit TLS or after STARTTLS/STLS).
- ``"tls-or-loopback"``: over TLS, or from a loopback client (127.0.0.0/8, ``::1``,
  ``::ffff:127.x.y.z``) or a UNIX socket, which never leave the machine.
- ``"always"``: everywhere (tests and closed networks only).

A transport is TLS when it provides L{ISSLTransport}: Twisted's TLS transports do, and
a TCP transport does once C{startTLS} ran. Protocol wrappers (L{ProtocolWrapper},
e.g. from L{twisted.protocols.policies}) are looked through.

Behind a trusted proxy (a wrapper with C{proxyHop = True}:
L{pymaild.cluster.proxyproto}), the client's own connection is the proxy's business;
what is judged is the hop from the proxy: a loopback proxy counts as loopback, whatever
address its PROXY header names.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.policies import ProtocolWrapper

from pymaild.auth.penalty import parseHost

POLICIES = ("tls-only", "tls-or-loopback", "always")


def isSecure(transport: Any) -> bool:
    """Whether C{transport}, or a transport it wraps, is encrypted with TLS."""
    seen = 0
    while transport is not None and seen < 16:
        if ISSLTransport.providedBy(transport):
            return True
        if not isinstance(transport, ProtocolWrapper):
            return False
        transport = transport.transport
        seen += 1
    return False


def _proxyHop(transport: Any) -> Any:
    """The connection from a trusted proxy under C{transport}'s wrappers, or None."""
    seen = 0
    while transport is not None and seen < 16:
        if getattr(type(transport), "proxyHop", False) is True:  # not via __getattr__
            return transport
        if not isinstance(transport, ProtocolWrapper):
            return None
        transport = transport.transport
        seen += 1
    return None


def isLoopback(transport: Any) -> bool:
    """Whether the peer of C{transport} is on this machine (loopback IP or UNIX socket);
    behind a trusted proxy, whether the proxy is."""
    hop = _proxyHop(transport)
    if hop is not None:
        transport = hop.transport
    try:
        peer = transport.getPeer()
    except Exception:
        return False
    if isinstance(peer, UNIXAddress):
        return True
    host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return False
    addr = parseHost(host)
    if addr is None:
        return False
    if isinstance(addr, ipaddress.IPv4Address):
        return addr in ipaddress.IPv4Network("127.0.0.0/8")
    return addr == ipaddress.IPv6Address("::1")


def checkPolicy(policy: str) -> str:
    """Return C{policy} if it is a known policy name.

    @raise ValueError: it is not one of L{POLICIES}.
    """
    if policy not in POLICIES:
        raise ValueError(
            f"unknown cleartext policy {policy!r} (expected one of {', '.join(POLICIES)})"
        )
    return policy


def cleartextAllowed(policy: str, transport: Any) -> bool:
    """Whether a cleartext password may be accepted on C{transport} under C{policy}.

    @raise ValueError: C{policy} is not one of L{POLICIES}.
    """
    checkPolicy(policy)
    if policy == "always":
        return True
    if isSecure(transport):
        return True
    return policy == "tls-or-loopback" and isLoopback(transport)
