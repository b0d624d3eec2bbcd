"""Connection limits shared by every listener: caps, a trickle guard and EMFILE defence.

Three defences that do not depend on the protocol spoken, wired by the tap around every
room's factory and listening port:

- L{LimitedFactory} wraps a room's factory. It counts live connections in a
  L{ConnectionLimits} object (one per protocol family or one per process: the factory only
  refers to it) and answers a connection above the total or per-client cap with the
  protocol's refusal line (L{SMTP_REFUSAL}, L{IMAP_REFUSAL}, L{POP3_REFUSAL}) and closes
  it, without building the room's protocol. IPv6 clients are counted per /64, IPv4-mapped
  IPv6 addresses as their IPv4 address; loopback is counted like any other client unless a
  trusted network covers it. For implicit TLS the tap wraps
  C{TLSMemoryBIOFactory(ctx, False, LimitedFactory(roomFactory, ...))}, so the refusal is
  written through TLS.

- The same wrapper holds a trickle guard: a partial line (bytes since the last LF) that
  stays incomplete for longer than C{lineDeadline} seconds (C{firstLineDeadline} before
  the first complete line) aborts the connection, so a client sending a byte every few
  seconds cannot hold a slot for long. One timer per connection, armed when a partial line
  starts and moved with C{DelayedCall.reset} when a line completes with a new partial
  tail; data that extends a pending partial line costs no timer work at all.

- L{UserIPLimits} counts sessions per (user, client IP) after a successful login, after
  Dovecot's C{mail_max_userip_connections = 10}.

- L{HandshakeTimeoutFactory} goes directly inside the TLS layer of an implicit-TLS
  listener and aborts a connection whose TLS handshake has not finished within its
  deadline (30 s by default): Twisted has no such timeout, and neither the trickle guard
  nor a room's idle timeout can end a connection stuck before its first decrypted byte.

The listening ports themselves (descriptor exhaustion, workers) are in L{pymaild.listen}.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

log = Logger(namespace="pymaild.limits")

SMTP_REFUSAL = b"421 4.7.0 Too many connections, try later\r\n"
IMAP_REFUSAL = b"* BYE [UNAVAILABLE] Too many connections\r\n"
HTTP_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                b"Content-Length: 0\r\n\r\n")
POP3_REFUSAL = b"-ERR [SYS/TEMP] Too many connections\r\n"

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parseIP(host: str) -> _Address | None:
    """The IP address in C{host} (brackets and IPv6 zone dropped, IPv4-mapped unwrapped).

    Returns C{None} when C{host} is not an IP address (a UNIX socket path, say).
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parseNetworks(networks: Iterable[str]) -> tuple[_Network, ...]:
    """Parse network strings (C{"10.0.0.0/8"}, C{"::1"}); L{ValueError} names a bad one."""
    result = []
    for n in networks:
        try:
            result.append(ipaddress.ip_network(n.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"bad trusted network {n!r}: {e}") from None
    return tuple(result)


def inNetworks(host: str, networks: Iterable[_Network]) -> bool:
    """Whether C{host} (as L{parseIP} reads it) is inside one of C{networks}.

    Not an IP address (a UNIX socket path): never.
    """
    addr = parseIP(host)
    if addr is None:
        return False
    return any(addr.version == net.version and addr in net for net in networks)


def _peerHost(addr: IAddress | None) -> str:
    """The client host of a peer address; empty for addresses without one (UNIX)."""
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) else ""


class ConnectionLimits:
    """Live connection counts with a total cap and a per-client cap.

    One instance may be shared by any number of L{LimitedFactory} objects (all listeners
    of a protocol family, or the whole process). IPv4 clients are counted per address,
    IPv6 clients per C{/ipv6Prefix} network (default /64: one subnet, which one host
    usually controls entirely); clients inside a C{trusted} network are exempt from the
    per-client cap but still count towards, and are bounded by, the total. Connections
    without an IP address (UNIX sockets) count only towards the total. Use it from the
    reactor thread only.

    @ivar total: connections currently counted.
    """

    def __init__(
        self,
        maxTotal: int = 1000,
        maxPerIP: int = 20,
        trusted: Iterable[str] = (),
        ipv6Prefix: int = 64,
    ) -> None:
        """
        @param maxTotal: most connections counted at once.
        @param maxPerIP: most connections from one IPv4 address or IPv6 network.
        @param trusted: network strings exempt from C{maxPerIP}.
        @param ipv6Prefix: prefix length IPv6 clients are grouped by.
        @raise ValueError: a limit is not positive or a trusted network is malformed.
        """
        if maxTotal < 1 or maxPerIP < 1:
            raise ValueError("connection limits must be at least 1")
        if not 0 <= ipv6Prefix <= 128:
            raise ValueError("ipv6Prefix must be between 0 and 128")
        self.maxTotal = maxTotal
        self.maxPerIP = maxPerIP
        self.trusted = parseNetworks(trusted)
        self.ipv6Prefix = ipv6Prefix
        self.total = 0
        self._perClient: dict[str, int] = {}
        #: The admitted connections now open (their L{LimitedProtocol}s), for the
        #: shutdown drain.
        self.sessions: set[LimitedProtocol] = set()

    def key(self, host: str) -> str | None:
        """The per-client key C{host} is counted under; C{None} if it has none.

        C{None} means the per-client cap does not apply: the host is trusted or is not an
        IP address.
        """
        addr = parseIP(host)
        if addr is None or inNetworks(host, self.trusted):
            return None
        if isinstance(addr, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((addr, self.ipv6Prefix), strict=False))
        return str(addr)

    def count(self, host: str) -> int:
        """How many connections are counted for C{host}'s per-client key."""
        key = self.key(host)
        return 0 if key is None else self._perClient.get(key, 0)

    def refusalReason(self, host: str) -> str | None:
        """Why a new connection from C{host} would be refused now; C{None} if it would not."""
        if self.total >= self.maxTotal:
            return f"total limit {self.maxTotal} reached"
        key = self.key(host)
        if key is not None and self._perClient.get(key, 0) >= self.maxPerIP:
            return f"limit {self.maxPerIP} per client reached for {key}"
        return None

    def acquire(self, host: str) -> bool:
        """Count a new connection from C{host}; C{False} (nothing counted) if over a cap."""
        if self.refusalReason(host) is not None:
            return False
        key = self.key(host)
        self.total += 1
        if key is not None:
            self._perClient[key] = self._perClient.get(key, 0) + 1
        return True

    def release(self, host: str) -> None:
        """Stop counting one connection from C{host} (acquired earlier)."""
        key = self.key(host)
        if self.total <= 0:
            log.error("connection limits: release without acquire for {host}", host=host)
            return
        self.total -= 1
        if key is not None:
            left = self._perClient.get(key, 0) - 1
            if left > 0:
                self._perClient[key] = left
            else:
                self._perClient.pop(key, None)


class UserIPLimits:
    """Sessions per (user, client IP), after Dovecot's C{mail_max_userip_connections}.

    Protocol rooms call L{acquire} after a successful login and refuse the session when
    it returns C{False}; they call L{release} exactly once when an acquired session ends.
    The IP is normalised (IPv4-mapped IPv6 as IPv4, zone dropped), so one client is one
    key however its address was spelled. Use it from the reactor thread only.
    """

    def __init__(self, maxPerUserIP: int = 10) -> None:
        """
        @param maxPerUserIP: most concurrent sessions of one user from one IP address.
        @raise ValueError: the limit is not positive.
        """
        if maxPerUserIP < 1:
            raise ValueError("maxPerUserIP must be at least 1")
        self.maxPerUserIP = maxPerUserIP
        self._counts: dict[tuple[str, str], int] = {}

    @staticmethod
    def _key(user: str, ip: str) -> tuple[str, str]:
        """The counting key of a user and a client IP."""
        addr = parseIP(ip)
        return (user, str(addr) if addr is not None else ip)

    def count(self, user: str, ip: str) -> int:
        """How many sessions of C{user} from C{ip} are counted now."""
        return self._counts.get(self._key(user, ip), 0)

    def acquire(self, user: str, ip: str) -> bool:
        """Count a session of C{user} from C{ip}; C{False} (not counted) if at the limit."""
        key = self._key(user, ip)
        current = self._counts.get(key, 0)
        if current >= self.maxPerUserIP:
            log.info(
                "refusing session of {user} from {ip}: {limit} sessions already",
                user=user, ip=key[1], limit=self.maxPerUserIP,
            )
            return False
        self._counts[key] = current + 1
        return True

    def release(self, user: str, ip: str) -> None:
        """Stop counting one session of C{user} from C{ip}; an extra release is logged."""
        key = self._key(user, ip)
        current = self._counts.get(key, 0)
        if current <= 0:
            log.error("user/IP limits: release without acquire for {user} from {ip}",
                      user=user, ip=key[1])
            return
        if current == 1:
            del self._counts[key]
        else:
            self._counts[key] = current - 1


class LimitedProtocol(ProtocolWrapper):
    """The wrapper around an admitted connection: releases its count, guards trickles.

    The trickle guard applies to every byte the room reads, so a payload without LF
    (a binary literal, say) must also arrive within C{lineDeadline}; mail rooms read
    CRLF lines and line-structured literals, for which this holds.

    It is the room protocol's transport. Besides relaying, it keeps
    C{ISSLTransport} visible after STARTTLS (L{startTLS} re-copies the interfaces of the
    real transport) and reports the real transport's C{disconnecting} state.
    """

    factory: LimitedFactory

    def __init__(self, factory: LimitedFactory, wrappedProtocol: IProtocol, host: str) -> None:
        """
        @param factory: the factory whose limits counted this connection.
        @param wrappedProtocol: the room's protocol.
        @param host: the client host the connection was counted under.
        """
        super().__init__(factory, wrappedProtocol)
        self.host = host
        self._released = False
        self._lost = False
        self._disconnectingFlag = False
        self._sawLine = False
        self._partialSince: float | None = None
        self._partialLimit = 0.0
        self._deadlineCall: IDelayedCall | None = None
        self._encoded = False

    @property  # type: ignore[override]
    def disconnecting(self) -> bool:
        """True once this wrapper or the real transport started closing."""
        if self._disconnectingFlag:
            return True
        return bool(getattr(self.transport, "disconnecting", False))

    @disconnecting.setter
    def disconnecting(self, value: bool) -> None:
        """Record that the room asked this wrapper to close (L{ProtocolWrapper} sets it)."""
        self._disconnectingFlag = bool(value)

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        """Start TLS on the real transport and take over the interfaces it now provides."""
        self.transport.startTLS(contextFactory, normal)  # type: ignore[union-attr]
        directlyProvides(self, providedBy(self.transport))

    def closeIfIdle(self, force: bool = False) -> bool:
        """Close the session if its protocol says it is idle (or C{force}): with the
        protocol's goodbye (C{421}, C{* BYE}, C{-ERR}) when it has one. True when asked
        to close."""
        room = self.wrappedProtocol
        idle = getattr(room, "sessionIdle", None)
        if not force and idle is not None and not idle():
            return False
        goodbye = getattr(room, "goodbye", None)
        if goodbye is not None:
            goodbye()
        else:
            self.loseConnection()
        return True

    def abort(self) -> None:
        """Drop the connection at once (a session that did not close in time)."""
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif self.transport is not None:
            self.transport.loseConnection()

    def decodeLines(self) -> Callable[[bytes], None]:
        """The room's bytes are encoded from now on (IMAP COMPRESS=DEFLATE), so they no
        longer show where lines end: stop watching the bytes that arrive and return the
        callable the room hands its decoded bytes to instead, so that the guard goes on
        watching the lines the client really sends."""
        self._encoded = True
        self._partialSince = None
        return self._track

    def dataReceived(self, data: bytes) -> None:
        """Track the partial line for the trickle guard, then pass the bytes on."""
        if not self._encoded:
            self._track(data)
        self.wrappedProtocol.dataReceived(data)

    def _track(self, data: bytes) -> None:
        """Note where C{data} leaves the current line: complete, or partial since now."""
        if data:
            lf = data.rfind(b"\n")
            if lf >= 0:
                self._sawLine = True
                self._partialSince = None
                if lf != len(data) - 1:
                    self._startPartial()
            elif self._partialSince is None:
                self._startPartial()

    def _startPartial(self) -> None:
        """A partial line begins now: (re)arm the deadline for it."""
        if self._lost:
            return
        factory = self.factory
        limit = factory.lineDeadline if self._sawLine else factory.firstLineDeadline
        if limit is None:
            return
        clock = factory.clock
        self._partialSince = clock.seconds()
        self._partialLimit = limit
        call = self._deadlineCall
        if call is not None and call.active():
            call.reset(limit)
        else:
            self._deadlineCall = clock.callLater(limit, self._deadlineExpired)

    def _deadlineExpired(self) -> None:
        """The timer fired: abort if the pending partial line is older than its limit."""
        self._deadlineCall = None
        since = self._partialSince
        if since is None or self._lost:
            return
        clock = self.factory.clock
        elapsed = clock.seconds() - since
        if elapsed < self._partialLimit - 1e-3:
            self._deadlineCall = clock.callLater(self._partialLimit - elapsed,
                                                 self._deadlineExpired)
            return
        log.info(
            "closing connection from {host}: a line stayed incomplete for {elapsed:.0f} s "
            "(limit {limit:.0f} s)",
            host=self.host or "?", elapsed=elapsed, limit=self._partialLimit,
        )
        self._partialSince = None
        self._disconnectingFlag = True
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel the deadline, release the count, then tell the room."""
        self._lost = True
        self._partialSince = None
        call, self._deadlineCall = self._deadlineCall, None
        if call is not None and call.active():
            call.cancel()
        if not self._released:
            self._released = True
            self.factory.limits.release(self.host)
            self.factory.limits.sessions.discard(self)
            metrics = self.factory.metrics
            if metrics is not None:
                metrics.connectionClosed(self.factory.listener, _tlsVersion(self.transport))
        super().connectionLost(reason)


def _tlsVersion(transport: Any) -> str | None:
    """The TLS version a transport negotiated (e.g. C{"TLSv1.3"}), or None without TLS.

    C{getHandle()} of a TLS transport is its pyOpenSSL connection (public API of both).
    """
    if transport is None or not ISSLTransport.providedBy(transport):
        return None
    try:
        version = cast(Any, transport).getHandle().get_protocol_version_name()
    except Exception:
        return "unknown"
    return str(version) if version else "unknown"


class RefusalProtocol(Protocol):
    """Answers a connection over a cap: writes the refusal line and closes.

    If the connection is still open C{timeout} seconds later (the peer does not read, or
    never finishes the TLS handshake the line waits for), it is aborted.
    """

    def __init__(self, refusal: bytes, clock: IReactorTime, timeout: float) -> None:
        """
        @param refusal: the complete line to send (with its CRLF).
        @param clock: schedules the abort.
        @param timeout: seconds before an unclosed connection is aborted.
        """
        self.refusal = refusal
        self.clock = clock
        self.timeout = timeout
        self._abortCall: IDelayedCall | None = None

    def connectionMade(self) -> None:
        """Send the refusal, close, and arm the abort timer."""
        assert self.transport is not None
        self.transport.write(self.refusal)
        self.transport.loseConnection()
        self._abortCall = self.clock.callLater(self.timeout, self._abort)

    def _abort(self) -> None:
        """The peer did not let the connection close in time: drop it."""
        self._abortCall = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel the abort timer."""
        call, self._abortCall = self._abortCall, None
        if call is not None and call.active():
            call.cancel()


class AdmissionProtocol(Protocol):
    """A connection waiting for limits kept elsewhere (the master's anvil) to admit it.

    A worker process's L{LimitedFactory} cannot know at C{buildProtocol} whether the
    server-wide caps leave room; this protocol holds the connection (bytes a client
    sends meanwhile are kept, up to C{maxEarly}) until the verdict arrives, then either
    starts the session (a L{LimitedProtocol} on the same transport, given the bytes
    kept) or sends the refusal. It stays in between, passing received bytes and the
    connection's end to whichever it started.
    """

    #: Bytes kept from a client that talks before the verdict; more aborts.
    maxEarly = 65536

    def __init__(self, factory: LimitedFactory, addr: IAddress | None, host: str,
                 verdict: Deferred[bool]) -> None:
        """
        @param verdict: fires with whether the connection is admitted (and counted).
        """
        self.factory = factory  # type: ignore[assignment]
        self.addr = addr
        self.host = host
        self.inner: Any = None
        self._early: list[bytes] = []
        self._earlySize = 0
        self._lost: Failure | None = None
        verdict.addCallbacks(self._decided, self._failed)

    def dataReceived(self, data: bytes) -> None:
        """Pass bytes on once decided; keep them (bounded) until then."""
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._earlySize += len(data)
        if self._earlySize > self.maxEarly:
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()
            return
        self._early.append(data)

    def _failed(self, reason: Failure) -> None:
        """The limits could not be asked (the master is gone): refuse."""
        log.warn("connection from {host} refused: the connection limits cannot be asked:"
                 " {why}", host=self.host or "?", why=reason.getErrorMessage())
        self._decided(False, counted=False)

    def _decided(self, admitted: bool, counted: bool = True) -> None:
        """Start the session or the refusal on this connection."""
        factory: LimitedFactory = self.factory  # type: ignore[assignment]
        if self._lost is not None or self.transport is None:
            if admitted and counted:
                factory.limits.release(self.host)
            return
        if not admitted:
            self.inner = (factory.refuse(self.host) if counted else
                          RefusalProtocol(factory.refusal, factory.clock,
                                          factory.refusalTimeout))
            self._early = []
            self.inner.makeConnection(self.transport)
            return
        session = factory.admit(self.addr, self.host)
        if session is None:
            self.transport.loseConnection()
            return
        self.inner = session
        session.makeConnection(self.transport)
        early, self._early = self._early, []
        for data in early:
            if self._lost is not None:
                break
            session.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Tell the session or refusal; a verdict still to come is released then."""
        self._lost = reason
        if self.inner is not None:
            self.inner.connectionLost(reason)


class LimitedFactory(WrappingFactory[LimitedProtocol]):
    """Wraps a room's factory with connection caps and the trickle guard.

    A connection the shared L{ConnectionLimits} refuses gets a L{RefusalProtocol}; the
    room's factory is not asked for a protocol. An admitted one gets a L{LimitedProtocol}
    around the room's protocol, which releases the count on C{connectionLost}. Refusals
    are logged at most once a minute per factory, with the number left unlogged.
    """

    protocol = LimitedProtocol
    refusalLogInterval = 60.0

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        limits: ConnectionLimits,
        refusal: bytes,
        clock: IReactorTime,
        lineDeadline: float | None = 120.0,
        firstLineDeadline: float | None = 30.0,
        refusalTimeout: float = 10.0,
        metrics: Any = None,
        listener: str = "",
    ) -> None:
        """
        @param wrappedFactory: the room's factory.
        @param limits: the counts, shared with other listeners as the tap chooses.
        @param refusal: the protocol's refusal line, e.g. L{SMTP_REFUSAL}.
        @param clock: the reactor's clock (timers of the trickle guard and refusals).
        @param lineDeadline: seconds a partial line may stay incomplete; C{None}: no limit.
        @param firstLineDeadline: the same before the first complete line.
        @param refusalTimeout: seconds a refused connection may take to close.
        @param metrics: a L{pymaild.metrics.Metrics} told of every admitted, refused
            and ended connection under the name C{listener} (None: not counted).
        @raise TypeError: C{wrappedFactory} is a TLS wrapper: the refusal would then be
            plaintext on a TLS port; put TLS outside instead,
            C{TLSMemoryBIOFactory(ctx, False, LimitedFactory(roomFactory, ...))}.
        """
        if isinstance(wrappedFactory, TLSMemoryBIOFactory):
            raise TypeError(
                "LimitedFactory must be inside TLSMemoryBIOFactory, not around it "
                "(the refusal would be sent in plaintext)"
            )
        super().__init__(wrappedFactory)
        self.limits = limits
        self.refusal = refusal
        self.clock = clock
        self.lineDeadline = lineDeadline
        self.firstLineDeadline = firstLineDeadline
        self.refusalTimeout = refusalTimeout
        self.metrics = metrics
        self.listener = listener
        self.refused = 0
        self._unloggedRefusals = 0
        self._lastRefusalLog: float | None = None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """A L{LimitedProtocol} around the room's protocol, or a L{RefusalProtocol};
        an L{AdmissionProtocol} while limits kept by another process (a worker's
        L{pymaild.anvil.RemoteConnectionLimits}) decide."""
        host = _peerHost(addr)
        verdict = self.limits.acquire(host)
        if isinstance(verdict, Deferred):
            return AdmissionProtocol(self, addr, host, verdict)
        if not verdict:
            return self.refuse(host)
        return self.admit(addr, host)

    def refuse(self, host: str) -> RefusalProtocol:
        """The protocol for a connection from C{host} over a cap (counted and logged)."""
        self._noteRefusal(host)
        return RefusalProtocol(self.refusal, self.clock, self.refusalTimeout)

    def admit(self, addr: IAddress | None, host: str) -> Any:
        """The L{LimitedProtocol} for a connection from C{host} already counted in the
        limits (released again if the room builds no protocol)."""
        try:
            inner = self.wrappedFactory.buildProtocol(addr)
        except BaseException:
            self.limits.release(host)
            raise
        if inner is None:
            self.limits.release(host)
            return None
        if self.metrics is not None:
            self.metrics.connectionOpened(self.listener)
        session = self.protocol(self, inner, host)
        self.limits.sessions.add(session)
        return session

    def _noteRefusal(self, host: str) -> None:
        """Count a refusal and log it, at most once per C{refusalLogInterval}."""
        self.refused += 1
        if self.metrics is not None:
            self.metrics.connectionRefused(self.listener)
        now = self.clock.seconds()
        last = self._lastRefusalLog
        if last is not None and now - last < self.refusalLogInterval:
            self._unloggedRefusals += 1
            return
        log.warn(
            "refused connection from {host}: {reason} "
            "({unlogged} more refused since the last report)",
            host=host or "?",
            reason=self.limits.refusalReason(host) or "over limit",
            unlogged=self._unloggedRefusals,
        )
        self._lastRefusalLog = now
        self._unloggedRefusals = 0


# --- TLS handshake deadline ---------------------------------------------------------


@implementer(IHandshakeListener)
class HandshakeTimeoutProtocol(ProtocolWrapper):
    """Aborts a TLS connection whose handshake does not finish within the deadline.

    It sits directly inside the TLS layer, which calls L{handshakeCompleted} (the
    C{IHandshakeListener} interface) when the handshake is done; that cancels the timer
    and is passed on to the wrapped protocol if its class listens for it too. A client that
    opens an implicit-TLS port and sends nothing, or half a ClientHello, is aborted when
    the timer fires, so its slot (and the L{LimitedFactory} count) is freed.
    """

    factory: HandshakeTimeoutFactory

    def __init__(self, factory: HandshakeTimeoutFactory, wrappedProtocol: IProtocol) -> None:
        """
        @param factory: the factory holding the clock and the deadline.
        @param wrappedProtocol: the protocol inside (a L{LimitedProtocol} or the room's).
        """
        super().__init__(factory, wrappedProtocol)
        self._timer: IDelayedCall | None = None
        self.handshakeDone = False

    def makeConnection(self, transport: Any) -> None:
        """Arm the deadline, then connect the wrapped protocol."""
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._expired)
        super().makeConnection(transport)

    def handshakeCompleted(self) -> None:
        """The TLS handshake finished: disarm, and tell the wrapped protocol if it asks."""
        self.handshakeDone = True
        self._cancel()
        # Only a protocol whose class listens: wrappers copy their transport's interfaces
        # (this one's included) and forward unknown attributes back to it.
        if IHandshakeListener.implementedBy(type(self.wrappedProtocol)):
            cast(IHandshakeListener, self.wrappedProtocol).handshakeCompleted()

    def _cancel(self) -> None:
        """Cancel the timer if it is pending."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _expired(self) -> None:
        """The deadline passed without a finished handshake: abort the connection."""
        self._timer = None
        if self.handshakeDone:
            return
        self.factory.expired += 1
        peer = self.getPeer() if self.transport is not None else None
        log.info(
            "closing connection from {host}: TLS handshake not finished within {limit:g} s",
            host=_peerHost(peer) or "?", limit=self.factory.timeout,
        )
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Disarm, then tell the wrapped protocol."""
        self._cancel()
        super().connectionLost(reason)


class HandshakeTimeoutFactory(WrappingFactory[HandshakeTimeoutProtocol]):
    """Gives every connection of an implicit-TLS listener a handshake deadline.

    Twisted's TLS layer has none, and a room's own idle timeout does not help: its
    goodbye line waits in the TLS send buffer for a handshake that never comes, so
    C{loseConnection} leaves the connection open (Dovecot CVE-2014-3430 is this
    resource leak). The trickle guard of L{LimitedFactory} cannot see it either, as no
    application byte ever arrives. Put it directly inside the TLS layer::

        TLSMemoryBIOFactory(ctx, False,
                            HandshakeTimeoutFactory(LimitedFactory(roomFactory, ...), clock))

    @ivar expired: how many connections were aborted for a late handshake.
    """

    protocol = HandshakeTimeoutProtocol

    def __init__(
        self, wrappedFactory: IProtocolFactory, clock: IReactorTime, timeout: float = 30.0
    ) -> None:
        """
        @param wrappedFactory: the factory inside (a L{LimitedFactory} or the room's).
        @param clock: schedules the deadlines.
        @param timeout: seconds from TCP accept to a finished TLS handshake.
        @raise TypeError: C{wrappedFactory} is the TLS layer itself; this factory must be
            inside it, or no handshake would ever be reported and every connection would
            be aborted.
        @raise ValueError: the timeout is not positive.
        """
        if isinstance(wrappedFactory, TLSMemoryBIOFactory):
            raise TypeError(
                "HandshakeTimeoutFactory must be inside TLSMemoryBIOFactory, not around it"
            )
        if timeout <= 0:
            raise ValueError("the handshake timeout must be positive")
        super().__init__(wrappedFactory)
        self.clock = clock
        self.timeout = timeout
        self.expired = 0


class FailureLog:
    """Logs unexpected failures, but the same one in full at most once a minute.

    A client that repeats a command which trips a server bug would otherwise write a
    traceback per command (about 125 KB for a RecursionError). The first failure of a
    kind (the command and the exception type) is logged with its traceback; repeats
    within C{interval} seconds are counted, and the next full entry says how many were
    left out. C{clock} is an C{IReactorTime} (C{None}: the monotonic clock).
    """

    def __init__(self, clock: Any, logger: Logger, interval: float = 60.0,
                 maxKinds: int = 1000) -> None:
        self.clock = clock
        self.logger = logger
        self.interval = interval
        self.maxKinds = maxKinds
        self._kinds: dict[tuple[str, type], list[float]] = {}

    def report(self, failure: Failure, what: str) -> bool:
        """Log C{failure} of C{what} unless it was logged lately; True when logged."""
        key = (what, failure.type)
        now = self.clock.seconds() if self.clock is not None else time.monotonic()
        entry = self._kinds.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        left = int(entry[1]) if entry else 0
        if len(self._kinds) >= self.maxKinds and entry is None:
            self._kinds.clear()
        self._kinds[key] = [now, 0]
        if left:
            self.logger.failure("{what} failed ({left} more like it in the last {interval:.0f} s"
                         " were not logged)", failure, what=what, left=left,
                         interval=self.interval)
        else:
            self.logger.failure("{what} failed", failure, what=what)
        return True
