"""The PROXY protocol (v1 and v2) on IMAP and POP3 listeners, from trusted proxies only.

Behind nginx's mail proxy every connection comes from nginx; with C{proxy_protocol on}
nginx starts each one with a PROXY header naming the real client. L{TrustedProxyFactory}
wraps a listener's factory: a connection from an address in C{trusted}
(C{cluster.trusted_proxies}) must start with a PROXY header (v1 text or v2 binary,
parsed by Twisted's C{twisted.protocols.haproxy} parsers), and only once it has arrived
is the wrapped factory asked for a protocol, with the client's address. So the
per-IP connection caps (L{pymaild.limits.LimitedFactory}), the login penalty and the
logs all see the real client, and the greeting is sent only after the header. A
trusted peer that sends no valid header within C{timeout} seconds, or a bad one, is
disconnected. A connection from anywhere else is passed through untouched: a PROXY
header from an untrusted address is just a bad first command line.

A v2 C{LOCAL} header (a proxy's health check) keeps the proxy's own address.

Twisted's public PROXY support is C{proxyEndpoint}, which demands a header of every
peer; trusting only some peers needs its parsers and wrapper, which live in private
modules (C{_exceptions}, C{_v1parser}, C{_v2parser}, C{_wrapper}). This is the one room
that imports them; C{tests/test_proxyproto.py} pins what it uses of them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from pymaild.limits import inNetworks, parseIP, parseNetworks

log = Logger()

#: The longest PROXY header accepted (v1 is at most 107 bytes; v2 carries TLVs).
MAX_HEADER = 4096


class _ProxiedConnection(HAProxyProtocolWrapper):
    """One connection from a trusted proxy: the header first, then the real protocol.

    It is the transport of the protocol built after the header (a
    L{policies.ProtocolWrapper}), whose C{getPeer} and C{getHost} give the header's
    addresses.
    """

    transport: ITCPTransport  # set by makeConnection, before any use

    factory: TrustedProxyFactory
    proxyHop = True
    """Read by L{pymaild.auth.policy}: cleartext rules judge the hop from the proxy."""

    def __init__(self, factory: TrustedProxyFactory, proxyAddress: IAddress) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self.proxyAddress = proxyAddress
        self._buffer = b""
        self._timer: Any = None
        self._started = False

    def makeConnection(self, transport: Any) -> None:
        """Take the transport; the wrapped protocol does not exist yet."""
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        """Wait for the header."""
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._noHeader)

    def _noHeader(self) -> None:
        """The header did not come in time."""
        self._timer = None
        log.info("no PROXY header from {proxy} in time: disconnected",
                 proxy=getattr(self.proxyAddress, "host", "?"))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Collect and parse the header; then hand everything to the real protocol."""
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._parser is None:
            self._buffer += data
            data, self._buffer = self._buffer, b""
            if len(data) < 16 and (V2Parser.PREFIX.startswith(data[:12])
                                   or V1Parser.PROXYSTR.startswith(data[:5])):
                self._buffer = data  # not enough to tell the version yet
                return
            if data[:12] == V2Parser.PREFIX and data[12] & 0xF0 == 0x20:
                self._parser = V2Parser()
            elif data[:5] == V1Parser.PROXYSTR:
                self._parser = V1Parser()
            else:
                self._refuse("no PROXY header")
                return
        try:
            info, remaining = self._parser.feed(data)
        except InvalidProxyHeader:
            self._refuse("invalid PROXY header")
            return
        if info is None:
            if len(self._parser.buffer) > MAX_HEADER:
                self._refuse("PROXY header too long")
            return
        source = info.source
        if source is not None and parseIP(str(getattr(source, "host", ""))) is None:
            # Twisted's v1 parser takes any word for an address.
            self._refuse("invalid PROXY header (source is not an IP address)")
            return
        self._proxyInfo = info
        self._start(remaining or b"")

    def _refuse(self, why: str) -> None:
        """Drop a trusted peer whose connection does not start with a good header."""
        log.info("{why} from trusted proxy {proxy}: disconnected", why=why,
                 proxy=getattr(self.proxyAddress, "host", "?"))
        self._cancelTimer()
        self.transport.abortConnection()

    def _cancelTimer(self) -> None:
        """Stop waiting for the header."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _start(self, remaining: bytes) -> None:
        """Build the real protocol for the client's address and connect it to us."""
        self._cancelTimer()
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self.transport.loseConnection()
            return
        self.wrappedProtocol = protocol
        self._started = True
        protocol.makeConnection(self)
        if remaining:
            protocol.dataReceived(remaining)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Pass the loss on to the real protocol, if there is one yet."""
        self._cancelTimer()
        if self._started:
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)


class TrustedProxyFactory(policies.WrappingFactory):
    """Expects a PROXY header from C{trusted} peers only (see the module docstring).

    @param wrappedFactory: the listener's factory (the connection-limited one).
    @param trusted: networks of the proxies (C{"127.0.0.1"}, C{"10.0.0.0/24"}).
    @param clock: the reactor clock, for the header deadline.
    @param timeout: seconds a trusted peer has to send its header.
    """

    def __init__(self, wrappedFactory: Any, trusted: tuple[str, ...], clock: IReactorTime,
                 timeout: float = 10.0) -> None:
        super().__init__(wrappedFactory)
        self.trusted = parseNetworks(trusted)
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """A header reader for a trusted proxy; the wrapped protocol for anyone else."""
        host = getattr(addr, "host", None)
        if addr is not None and isinstance(host, str) and inNetworks(host, self.trusted):
            return _ProxiedConnection(self, addr)
        return self.wrappedFactory.buildProtocol(addr)

    def logPrefix(self) -> str:
        """The wrapped factory's prefix, marked as PROXY-aware."""
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        name = inner() if callable(inner) else type(self.wrappedFactory).__name__
        return f"{name} (PROXY)"
