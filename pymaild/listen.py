"""Listening ports: EMFILE-safe accepting, and adoption of a socket shared by workers.

The one room that reaches into Twisted's private C{tcp.Port} fields; each is named in
L{PRIVATE_PORT_FIELDS} and pinned by C{tests/test_listen.py}, so a Twisted upgrade that
renames one fails there, loudly, instead of somewhere in a listener.

- L{reservingServerFromString} / L{listenWithFDReserve} build listening ports that
  survive descriptor exhaustion. Twisted's own port keeps one spare descriptor too, but
  once re-reserving it fails (another thread took the freed slot), or when the error is
  ENFILE, ENOBUFS or ENOMEM, C{Port.doRead} just logs and returns: the listening socket
  stays readable and the reactor spins at 100% CPU. L{FDReservingPort} first uses its
  own spare descriptor (L{ReserveFD}) to accept and close every pending connection (the
  client sees a clean close, optionally after a one-line notice, rather than a hang);
  whenever that is not possible it stops reading the listening socket for a back-off that
  doubles from 100 ms to 1 s, and resumes. It logs once per burst, and once when
  accepting works again. C{tests/test_limits.py} provokes EMFILE in a subprocess: Twisted's
  port spins there, this one does not. That is why its C{doRead} is a copy of Twisted's
  accept loop (C{_buildAddr}, C{sessionno}, C{numberAccepts}, C{transport},
  C{_realPortNumber}) rather than a call to it.

- A worker process adopts the master's listening socket through C{_preexistingSocket},
  the hook C{reactor.adoptStreamPort} itself uses. The public call builds a plain
  C{tcp.Port}, without the defence above. Once the socket is shared, the master's port
  sets C{_shouldShutdown} off (as Twisted does for an adopted socket), so stopping one
  process's port closes its descriptor without C{shutdown(2)}, which would end accepting
  in every process. Neither field is about speed: each is the only way to keep a
  behaviour, so no bench figure applies.

- The C{listenSSL} of the reactor proxy marks its port's C{_type} as Twisted's own
  C{listenSSL} does, so the port's log and repr name TLS.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, cast

from twisted.internet import endpoints, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

log = Logger(namespace="pymaild.listen")

# The private fields of twisted.internet.tcp.Port this module reads or writes.
PRIVATE_PORT_FIELDS = ("_preexistingSocket", "_shouldShutdown", "_realPortNumber",
                       "_buildAddr", "_type")


# accept(2) errors meaning "out of descriptors or kernel memory": retrying at once fails
# the same way, so the listening socket must not be polled again right away.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept(2) errors about one connection only: skip it and go on.
_TRANSIENT = frozenset({errno.EPERM, errno.ECONNABORTED, errno.EINTR, errno.EPROTO})
_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})


class ReserveFD:
    """One spare file descriptor (C{/dev/null} opened read-only), kept for emergencies.

    When the process runs out of descriptors, releasing the spare frees one slot, so a
    pending connection can be accepted and closed instead of left hanging. Used only from
    the reactor thread.
    """

    def __init__(self, path: str = os.devnull) -> None:
        """
        @param path: the file held open as the spare.
        """
        self.path = path
        self._fd: int | None = None

    def available(self) -> bool:
        """Whether the spare descriptor is currently held."""
        return self._fd is not None

    def reserve(self) -> bool:
        """Open the spare unless held; C{False} if the process is out of descriptors."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                if e.errno in _EXHAUSTED:
                    return False
                raise
        return True

    def release(self) -> None:
        """Close the spare (if held), freeing its slot."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


_sharedReserve = ReserveFD()


class FDReservingPort(tcp.Port):
    """A TCP port that neither spins nor leaves clients hanging when descriptors run out.

    On an exhaustion error from C{accept} (EMFILE, ENFILE, ENOBUFS, ENOMEM) it releases
    its L{ReserveFD}, accepts every pending connection, writes C{shedLine} to it (if
    given; never on a TLS port) and closes it, then re-opens the spare. If the spare is
    not held, or accepting fails even with its slot free, it stops reading the listening
    socket for C{minPause} seconds, doubling up to C{maxPause} while the condition
    lasts, so a burst costs a few wake-ups a second instead of a busy loop. Pending
    connections then wait in the kernel backlog. A successful round of accepts resets the
    back-off and ends the burst; each burst is logged once when it starts and once when
    it ends.
    """

    def __init__(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        interface: str = "",
        reactor: Any = None,
        reserve: ReserveFD | None = None,
        shedLine: bytes = b"",
        minPause: float = 0.1,
        maxPause: float = 1.0,
        adopt: socket.socket | None = None,
    ) -> None:
        """
        @param reserve: the spare descriptor (shared by all such ports by default).
        @param shedLine: bytes written to connections closed unserved (plaintext only).
        @param minPause: the first back-off, in seconds.
        @param maxPause: the longest back-off, in seconds.
        @param adopt: a socket already bound and listening (one a worker process got
            from the master) to accept on instead of binding a new one. It is adopted
            the way C{reactor.adoptStreamPort} adopts one (Twisted's pre-existing
            socket of L{tcp.Port}), so stopping the port closes this process's
            descriptor without shutting the socket down for the other processes.

        The other parameters are those of L{twisted.internet.tcp.Port}.
        """
        super().__init__(port, factory, backlog, interface, reactor)
        if adopt is not None:
            # tcp.Port's own hook for adoptStreamPort: the public call builds a plain
            # tcp.Port, which would lose the protections below.
            self._preexistingSocket = adopt
        self.reserve = reserve if reserve is not None else _sharedReserve
        self.shedLine = shedLine
        self.minPause = minPause
        self.maxPause = maxPause
        self._pauseDelay = minPause
        self._resumeCall: IDelayedCall | None = None
        self._burstStart: float | None = None
        self._burstError = 0
        self._burstShed = 0
        self._burstPauses = 0

    def share(self) -> None:
        """The listening socket now belongs to worker processes as well: stopping this
        port closes this process's descriptor only, without shutting the socket down
        (which would end accepting in every process); Twisted does the same for an
        adopted socket."""
        self._shouldShutdown = False

    def _clock(self) -> IReactorTime:
        """The port's reactor as the clock it also is (Twisted types it as a file
        descriptor set only)."""
        return cast(IReactorTime, self.reactor)

    def startListening(self) -> None:
        """Listen, and make sure the spare descriptor is held."""
        super().startListening()
        self.reserve.reserve()

    def doRead(self) -> None:
        """Accept pending connections; on exhaustion shed them or back off."""
        accepted = 0
        failure: int | None = None
        for _ in range(self.numberAccepts):
            try:
                skt, addr = self.socket.accept()
            except OSError as e:
                if e.errno in _AGAIN:
                    break
                if e.errno in _TRANSIENT:
                    continue
                failure = e.errno or errno.EIO
                if e.errno not in _EXHAUSTED:
                    log.failure("accept() failed on port {port}", port=self._realPortNumber)
                break
            accepted += 1
            self._serve(skt, addr)
        if accepted == self.numberAccepts:
            self.numberAccepts += 20
        else:
            self.numberAccepts = max(1, accepted)
        if failure is not None:
            self._exhausted(failure)
        elif accepted and self._burstStart is not None:
            self._endBurst()

    def _serve(self, skt: socket.socket, addr: Any) -> None:
        """Hand an accepted socket to a protocol from the factory (as Twisted does)."""
        try:
            if len(addr) == 4:
                host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                addr = (host[0], *addr[1:])
            factory = cast(IProtocolFactory, self.factory)
            protocol = factory.buildProtocol(self._buildAddr(addr))
            if protocol is None:
                skt.close()
                return
            s = self.sessionno
            self.sessionno = s + 1
            transport = self.transport(skt, protocol, addr, self, s, self.reactor)
        except Exception:
            log.failure("cannot set up a connection from {addr}", addr=addr)
            skt.close()
            return
        try:
            protocol.makeConnection(transport)
        except Exception:
            log.failure("connectionMade failed for a connection from {addr}", addr=addr)

    def _exhausted(self, code: int) -> None:
        """Accepting failed with C{code}: shed pending connections or pause reading."""
        first = self._burstStart is None
        if first:
            self._burstStart = self._clock().seconds()
            self._burstError = code
            self._burstShed = 0
            self._burstPauses = 0
        stuck = True
        if self.reserve.available():
            shed, stuck = self._shed()
            self._burstShed += shed
        if stuck:
            self._pause()
        if first:
            log.warn(
                "port {port}: cannot accept connections: {error}; "
                "closing new connections unserved and backing off until descriptors "
                "are free (logged once per burst)",
                port=self._realPortNumber, error=os.strerror(code),
            )

    def _shed(self) -> tuple[int, bool]:
        """Free the spare and accept+close pending connections.

        Returns the number closed and whether accepting was still failing (so the port
        must pause instead).
        """
        shed = 0
        stuck = False
        self.reserve.release()
        try:
            for _ in range(max(self.numberAccepts, 100)):
                try:
                    skt, _addr = self.socket.accept()
                except OSError as e:
                    if e.errno in _AGAIN:
                        break
                    if e.errno in _TRANSIENT:
                        continue
                    stuck = True
                    break
                shed += 1
                if self.shedLine:
                    try:
                        skt.setblocking(False)
                        skt.send(self.shedLine)
                    except OSError:
                        pass
                skt.close()
        finally:
            if not self.reserve.reserve():
                stuck = True
        return shed, stuck

    def _pause(self) -> None:
        """Stop reading the listening socket for the current back-off."""
        self.stopReading()
        delay = self._pauseDelay
        self._pauseDelay = min(delay * 2, self.maxPause)
        self._burstPauses += 1
        if self._resumeCall is None or not self._resumeCall.active():
            self._resumeCall = self._clock().callLater(delay, self._resume)

    def _resume(self) -> None:
        """The back-off is over: re-take the spare and read the listening socket again."""
        self._resumeCall = None
        if self.connected and not self.disconnecting:
            self.reserve.reserve()
            self.startReading()

    def _endBurst(self) -> None:
        """Connections are accepted again: log the burst's summary and reset the back-off."""
        start, self._burstStart = self._burstStart, None
        self._pauseDelay = self.minPause
        log.info(
            "port {port}: accepting connections again after {seconds:.1f} s of {error}; "
            "{shed} connection(s) closed unserved, {pauses} pause(s)",
            port=self._realPortNumber,
            seconds=self._clock().seconds() - (start or 0.0),
            error=errno.errorcode.get(self._burstError, str(self._burstError)),
            shed=self._burstShed,
            pauses=self._burstPauses,
        )

    def connectionLost(self, reason: Failure) -> None:
        """Cancel a pending resume, then close the listening socket."""
        call, self._resumeCall = self._resumeCall, None
        if call is not None and call.active():
            call.cancel()
        super().connectionLost(reason)


class _ReservingReactor:
    """A reactor proxy whose C{listenTCP}/C{listenSSL} build L{FDReservingPort}s.

    Handed to L{endpoints.serverFromString}, so Twisted still parses the description;
    every other attribute is the real reactor's. On a reactor that is not a
    L{PosixReactorBase} (a test's C{MemoryReactor}) listening is passed through.
    """

    def __init__(self, reactor: Any, portOptions: dict[str, Any]) -> None:
        """
        @param reactor: the real reactor.
        @param portOptions: keyword arguments for L{FDReservingPort} (C{adopt}: the
            listening socket to adopt instead of binding one).
        """
        self._reactor = reactor
        self._portOptions = portOptions

    def __getattr__(self, name: str) -> Any:
        """Everything else is the real reactor's."""
        return getattr(self._reactor, name)

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        """Listen on TCP with an L{FDReservingPort}."""
        if not isinstance(self._reactor, PosixReactorBase):
            return self._reactor.listenTCP(port, factory, backlog, interface)
        p = FDReservingPort(port, factory, backlog, interface, self._reactor,
                            **self._portOptions)
        p.startListening()
        return p

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        """Listen with TLS on an L{FDReservingPort} (no plaintext shed line)."""
        if not isinstance(self._reactor, PosixReactorBase):
            return self._reactor.listenSSL(port, factory, contextFactory, backlog, interface)
        options = dict(self._portOptions, shedLine=b"")
        p = FDReservingPort(port, TLSMemoryBIOFactory(contextFactory, False, factory),
                            backlog, interface, self._reactor, **options)
        p._type = "TLS"
        p.startListening()
        return p


def reservingServerFromString(
    reactor: Any,
    description: str,
    shedLine: bytes = b"",
    reserve: ReserveFD | None = None,
    minPause: float = 0.1,
    maxPause: float = 1.0,
    adopt: socket.socket | None = None,
) -> IStreamServerEndpoint:
    """L{endpoints.serverFromString}, with EMFILE-safe ports for C{tcp:} and C{ssl:}.

    A drop-in for the tap: the result goes to C{StreamServerEndpointService} as before.
    Other endpoint types (C{unix:}, C{systemd:}) are built as Twisted builds them.

    @param shedLine: a line written to connections closed unserved while descriptors are
        exhausted (e.g. L{SMTP_REFUSAL}); leave it empty on implicit-TLS listeners whose
        TLS the tap adds itself, where it would be plaintext on a TLS port.
    @param reserve: the spare descriptor; by default one shared by all ports.
    @param minPause: the first accept back-off, in seconds.
    @param maxPause: the longest accept back-off, in seconds.
    @param adopt: for C{tcp:} and C{ssl:}, a socket bound and listening already (a
        worker process's copy of the master's listener): the port accepts on it, with
        the description's options (TLS certificate, say), instead of binding.
    @raise ValueError: the description is malformed (as L{endpoints.serverFromString}).
    """
    options = {"shedLine": shedLine, "reserve": reserve, "minPause": minPause,
               "maxPause": maxPause, "adopt": adopt}
    return endpoints.serverFromString(_ReservingReactor(reactor, options), description)


def listenWithFDReserve(
    reactor: Any, description: str, factory: IProtocolFactory, **options: Any
) -> Deferred[IListeningPort]:
    """Listen on C{description} with C{factory}; see L{reservingServerFromString}."""
    return reservingServerFromString(reactor, description, **options).listen(factory)
