"""A tiny server run as a subprocess by tests/test_limits.py to provoke EMFILE.

Usage: ``python tests/emfile_server.py MODE CAPACITY``. The server listens on
127.0.0.1 (port chosen by the kernel), greets every connection with ``hello`` and keeps it
open until the client closes it. Once listening it lowers its RLIMIT_NOFILE soft limit so
that only about CAPACITY more descriptors can be opened, prints ``PORT <n>`` on stdout
and logs to stderr.

Modes:
- ``reserve``: L{pymaild.listen.listenWithFDReserve} (spare descriptor, then back-off),
  connections closed unserved get ``busy``;
- ``pause``: the same, but the spare can never be opened, so only the back-off acts
  (what happens after the spare is lost, or on ENFILE);
- ``twisted-lost-spare``: Twisted's own port after its spare descriptor is lost (the
  control: it spins).
"""

from __future__ import annotations

import os
import resource
import sys

from twisted.internet import protocol, reactor, tcp
from twisted.logger import globalLogBeginner, textFileLogObserver

from pymaild.listen import ReserveFD, listenWithFDReserve


class Greeter(protocol.Protocol):
    """Says hello and keeps the connection open."""

    def connectionMade(self) -> None:
        """Greet the client."""
        self.transport.write(b"hello\r\n")


class _NoSpare(ReserveFD):
    """A spare descriptor that can never be opened."""

    def reserve(self) -> bool:
        """Pretend the process is out of descriptors."""
        return False


def _openDescriptors() -> list[int]:
    """The descriptors open in this process."""
    return [int(n) for n in os.listdir("/proc/self/fd")]


def main(mode: str, capacity: int) -> None:
    """Listen in C{mode}, limit descriptors to about C{capacity} more, and run."""
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    factory = protocol.Factory.forProtocol(Greeter)
    desc = "tcp:0:interface=127.0.0.1"
    if mode == "reserve":
        d = listenWithFDReserve(reactor, desc, factory, shedLine=b"busy\r\n")
    elif mode == "pause":
        d = listenWithFDReserve(reactor, desc, factory, reserve=_NoSpare())
    elif mode == "twisted-lost-spare":
        tcp._reservedFD = tcp._NullFileDescriptorReservation()
        from twisted.internet import endpoints

        d = endpoints.serverFromString(reactor, desc).listen(factory)
    else:
        raise SystemExit(f"unknown mode {mode}")

    def listening(port: object) -> None:
        fds = _openDescriptors()
        limit = max(len(fds) + capacity, max(fds) + 1)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        sys.stdout.write(f"PORT {port.getHost().port}\n")  # type: ignore[attr-defined]
        sys.stdout.flush()

    d.addCallback(listening)
    d.addErrback(lambda f: (f.printTraceback(sys.stderr), reactor.stop()))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
