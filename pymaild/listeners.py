"""A listener service: binds its endpoint, says so in one line, or fails in one line.

``Listener`` replaces Twisted's ``StreamServerEndpointService`` for pymaild's listeners.
It binds in ``privilegedStartService`` (as root, before twistd drops privileges), logs
``imap on 127.0.0.1:2143`` once the port is open, and turns a port in use or a refused
bind into a L{StartupError} naming the listener and its configuration key, which the tap
shows as one line instead of two tracebacks.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from pymaild.errors import StartupError

log = Logger(namespace="pymaild")


def describeAddress(port: IListeningPort) -> str:
    """C{127.0.0.1:2143}, C{[::1]:2143} or the address's own text (UNIX sockets)."""
    host = port.getHost()
    address = getattr(host, "host", None)
    number = getattr(host, "port", None)
    if address is None or number is None:
        return str(getattr(host, "name", host))
    return f"[{address}]:{number}" if ":" in address else f"{address}:{number}"


class Listener(service.Service):
    """One configured listener: endpoint C{description} of config key C{listen.<kind>}.

    @ivar factory: the protocol factory (with its TLS and limit wrappers).
    @ivar port: the listening port once bound, else C{None}.
    """

    def __init__(self, kind: str, description: str, endpoint: Any, factory: Any) -> None:
        self.kind = kind
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._listening: defer.Deferred[Any] | None = None
        self.setName(f"{kind}:{description}")

    def privilegedStartService(self) -> None:
        """Bind now, while the process may still be root."""
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """Bind here when no privileged start came first (a test, a plain application)."""
        super().startService()
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        """Listen; a failure known at once raises, a later one is logged as critical."""
        outcome: list[Any] = []

        def seen(result: Any) -> Any:
            outcome.append(result)
            return result

        listening = self._listening = self.endpoint.listen(self.factory)
        listening.addBoth(seen)
        if not outcome:
            listening.addCallbacks(self._bound, self._lateFailure)
            return
        if isinstance(outcome[0], Failure):
            listening.addErrback(lambda _: None)
            self._listening = None
            why = self._why(outcome[0])
            log.critical("{why}", why=why)
            raise StartupError(why)
        self._bound(outcome[0])

    def _why(self, reason: Failure) -> str:
        """The one line for a failed bind."""
        error = reason.value
        detail = getattr(error, "socketError", None) or error
        text = getattr(detail, "strerror", None) or str(detail)
        return f"listen.{self.kind}: cannot listen on {self.description!r}: {text}"

    def _bound(self, port: IListeningPort) -> IListeningPort:
        """Remember the port and log the listener's one line."""
        self.port = port
        log.info("{kind} on {address}", kind=self.kind, address=describeAddress(port))
        return port

    def _lateFailure(self, reason: Failure) -> None:
        """A bind that failed after the start (an asynchronous endpoint type)."""
        log.critical("{why}", why=self._why(reason))

    def stopService(self) -> defer.Deferred[Any] | None:
        """Stop listening; open connections are left to finish."""
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        listening.cancel()
        return None
