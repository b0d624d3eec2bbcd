"""The anvil: what worker processes share through the master, over AMP.

With C{--workers N} (L{pymaild.workers}) the master process keeps, as one process does
alone, the state that must be counted server-wide: the connection caps
(L{pymaild.limits.ConnectionLimits}), the sessions per user and client IP
(L{pymaild.limits.UserIPLimits}), the failed-login penalty
(L{pymaild.auth.penalty.AuthPenalty}) and the messages per hour each user sent
(L{pymaild.smtp.delivery.DeliveryAvatars}). Each worker talks to it over one AMP
connection (a socketpair the master made, inherited as a descriptor), after Dovecot's
C{anvil} process:

- a worker's objects of the same names (L{RemoteConnectionLimits},
  L{RemoteUserIPLimits}, L{RemotePenalty}, L{RemoteRate}) answer with Deferreds, and
  the rooms wait for the answer where one process would have answered at once (a new
  connection waits in L{pymaild.limits.AdmissionProtocol});
- what a worker counted is released by it when the session ends, and by the master
  when the worker's connection ends (a worker killed holds nothing);
- a worker that queued a message says so (L{Queued}) and the master's queue delivers
  it at once (a notice lost is found by the queue's scan of the spool);
- the master asks each worker for its metrics (L{Scrape}) to serve them with its own.

Every call is answered in the master's reactor thread from the same objects its own
sessions use, so the counts are exact across processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

log = Logger(namespace="pymaild")

#: Bytes of the metrics text per L{Scrape} answer (an AMP value holds at most 65,535).
SCRAPE_CHUNK = 60_000


class Hello(amp.Command):
    """A worker says who it is (its index and process id) once connected."""

    arguments = [(b"index", amp.Integer()), (b"pid", amp.Integer())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class Acquire(amp.Command):
    """Count a new connection from a client host; C{ok}: admitted (and counted)."""

    arguments = [(b"host", amp.Unicode())]
    response = [(b"ok", amp.Boolean())]


class Release(amp.Command):
    """Stop counting one connection from a host."""

    arguments = [(b"host", amp.Unicode())]
    requiresAnswer = False


class UserAcquire(amp.Command):
    """Count a session of a user from an IP; C{ok}: under the limit (and counted)."""

    arguments = [(b"user", amp.Unicode()), (b"ip", amp.Unicode())]
    response = [(b"ok", amp.Boolean())]


class UserRelease(amp.Command):
    """Stop counting one session of a user from an IP."""

    arguments = [(b"user", amp.Unicode()), (b"ip", amp.Unicode())]
    requiresAnswer = False


class Failures(amp.Command):
    """How many failed logins in a row a client host has on record now."""

    arguments = [(b"host", amp.Unicode())]
    response = [(b"count", amp.Integer())]


class FailedLogin(amp.Command):
    """Record a failed login from a host; C{delay}: the seconds it earns."""

    arguments = [(b"host", amp.Unicode())]
    response = [(b"delay", amp.Float())]


class Success(amp.Command):
    """Record a successful login from a host (its failures are forgiven)."""

    arguments = [(b"host", amp.Unicode())]
    requiresAnswer = False


class RateAllows(amp.Command):
    """Whether a user may send another message within the hourly limit."""

    arguments = [(b"user", amp.Unicode())]
    response = [(b"ok", amp.Boolean())]


class RecordSent(amp.Command):
    """A user sent a message (for the hourly limit)."""

    arguments = [(b"user", amp.Unicode())]
    requiresAnswer = False


class Queued(amp.Command):
    """A worker queued message C{qid} durably: the master's queue takes it up now."""

    arguments = [(b"qid", amp.Unicode())]
    requiresAnswer = False


class Scrape(amp.Command):
    """Part C{part} of the worker's metrics in Prometheus' text format (part 0 renders
    them anew); C{more}: further parts follow."""

    arguments = [(b"part", amp.Integer())]
    response = [(b"text", amp.String()), (b"more", amp.Boolean())]


class Shared:
    """The master's objects the anvil answers from (those of its own sessions).

    @ivar connections: the L{pymaild.limits.ConnectionLimits}.
    @ivar userIP: the L{pymaild.limits.UserIPLimits}.
    @ivar penalty: the L{pymaild.auth.penalty.AuthPenalty}.
    @ivar delivery: the L{pymaild.smtp.delivery.DeliveryAvatars} (hourly limit).
    @ivar queued: C{queued(qid)}: the master's queue takes up a message a worker queued.
    @ivar clock: the master's clock (penalty times are its own).
    """

    def __init__(self, connections: Any, userIP: Any, penalty: Any, delivery: Any,
                 queued: Callable[[str], Any], clock: Any) -> None:
        self.connections = connections
        self.userIP = userIP
        self.penalty = penalty
        self.delivery = delivery
        self.queued = queued
        self.clock = clock


class AnvilServer(amp.AMP):
    """The master's end of one worker's connection.

    What the worker counted and has not released is remembered here, and released
    when the connection ends (the worker exited or was killed).

    @ivar index: the worker's index (from L{Hello}; 0 until then).
    @ivar pid: the worker's process id (from L{Hello}).
    """

    def __init__(self, shared: Shared, onHello: Callable[[AnvilServer], None] | None = None,
                 onLost: Callable[[AnvilServer], None] | None = None) -> None:
        super().__init__()
        self.shared = shared
        self.onHello = onHello
        self.onLost = onLost
        self.index = 0
        self.pid = 0
        self._hosts: dict[str, int] = {}
        self._users: dict[tuple[str, str], int] = {}

    @Hello.responder
    def hello(self, index: int, pid: int) -> dict[str, Any]:
        """Note who the worker is."""
        self.index, self.pid = index, pid
        if self.onHello is not None:
            self.onHello(self)
        return {}

    @Acquire.responder
    def acquire(self, host: str) -> dict[str, Any]:
        """Count a connection in the master's limits."""
        ok = self.shared.connections.acquire(host)
        if ok:
            self._hosts[host] = self._hosts.get(host, 0) + 1
        return {"ok": bool(ok)}

    @Release.responder
    def release(self, host: str) -> dict[str, Any]:
        """Release a connection this worker counted (an unknown one is ignored)."""
        if _take(self._hosts, host):
            self.shared.connections.release(host)
        return {}

    @UserAcquire.responder
    def userAcquire(self, user: str, ip: str) -> dict[str, Any]:
        """Count a user's session."""
        ok = self.shared.userIP.acquire(user, ip)
        if ok:
            self._users[(user, ip)] = self._users.get((user, ip), 0) + 1
        return {"ok": bool(ok)}

    @UserRelease.responder
    def userRelease(self, user: str, ip: str) -> dict[str, Any]:
        """Release a user's session this worker counted."""
        if _take(self._users, (user, ip)):
            self.shared.userIP.release(user, ip)
        return {}

    @Failures.responder
    def failures(self, host: str) -> dict[str, Any]:
        """The host's failures on record."""
        return {"count": self.shared.penalty.failures(host, self.shared.clock.seconds())}

    @FailedLogin.responder
    def failure(self, host: str) -> dict[str, Any]:
        """Record a failure; the delay it earns."""
        return {"delay": self.shared.penalty.failure(host, self.shared.clock.seconds())}

    @Success.responder
    def success(self, host: str) -> dict[str, Any]:
        """Record a success."""
        self.shared.penalty.success(host)
        return {}

    @RateAllows.responder
    def rateAllows(self, user: str) -> dict[str, Any]:
        """Whether the user is under the hourly limit."""
        return {"ok": bool(self.shared.delivery.rateAllows(user))}

    @RecordSent.responder
    def recordSent(self, user: str) -> dict[str, Any]:
        """Count a message the user sent."""
        self.shared.delivery.recordSent(user)
        return {}

    @Queued.responder
    def queuedMessage(self, qid: str) -> dict[str, Any]:
        """Hand the message to the master's queue."""
        d = defer.maybeDeferred(self.shared.queued, qid)
        d.addErrback(lambda f: log.failure(
            "anvil: the queue could not take up {qid} (its scan will)", f, qid=qid))
        return {}

    def scrape(self) -> defer.Deferred[bytes]:
        """The worker's metrics text, all parts of it."""
        parts: list[bytes] = []

        def got(answer: dict[str, Any]) -> Any:
            parts.append(answer["text"])
            if answer["more"] and len(parts) < 1000:
                return self.callRemote(Scrape, part=len(parts)).addCallback(got)
            return b"".join(parts)

        return self.callRemote(Scrape, part=0).addCallback(got)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Release everything the worker still held."""
        hosts, self._hosts = self._hosts, {}
        for host, n in hosts.items():
            for _ in range(n):
                self.shared.connections.release(host)
        users, self._users = self._users, {}
        for (user, ip), n in users.items():
            for _ in range(n):
                self.shared.userIP.release(user, ip)
        super().connectionLost(reason)
        if self.onLost is not None:
            self.onLost(self)


def _take(counts: dict[Any, int], key: Any) -> bool:
    """Take one from C{counts[key]}; False when there was none."""
    n = counts.get(key, 0)
    if n <= 0:
        return False
    if n == 1:
        del counts[key]
    else:
        counts[key] = n - 1
    return True


class AnvilClient(amp.AMP):
    """A worker's end of its connection to the master.

    @param render: returns the worker's metrics in Prometheus' text format.
    @param onLost: called when the connection ends (the master is gone: the worker
        stops).
    """

    def __init__(self, index: int, pid: int, render: Callable[[], bytes],
                 onLost: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.index = index
        self.pid = pid
        self.render = render
        self.onLost = onLost
        self._text = b""

    def connectionMade(self) -> None:
        """Say who this worker is."""
        super().connectionMade()
        self.callRemote(Hello, index=self.index, pid=self.pid).addErrback(
            lambda f: log.failure("anvil: hello failed", f))

    @Scrape.responder
    def scrape(self, part: int) -> dict[str, Any]:
        """One part of this worker's metrics text."""
        if part == 0:
            self._text = self.render()
        start = part * SCRAPE_CHUNK
        text = self._text[start:start + SCRAPE_CHUNK]
        more = start + SCRAPE_CHUNK < len(self._text)
        if not more:
            self._text = b""
        return {"text": text, "more": more}

    def tell(self, command: type[amp.Command], **arguments: Any) -> None:
        """Send a command that needs no answer (nothing when the master is gone)."""
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        self.callRemote(command, **arguments)

    def ask(self, command: type[amp.Command], key: str, **arguments: Any) -> defer.Deferred[Any]:
        """Send a command and fire with the C{key} value of its answer."""
        return self.callRemote(command, **arguments).addCallback(lambda answer: answer[key])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The master is gone."""
        super().connectionLost(reason)
        if self.onLost is not None:
            self.onLost()


class RemoteConnectionLimits:
    """A worker's L{pymaild.limits.ConnectionLimits}: the master counts.

    The caps' attributes are kept (a HUP sets them) but the master applies its own.

    @ivar sessions: the admitted sessions of this worker, for its shutdown drain.
    """

    def __init__(self, client: AnvilClient, maxTotal: int = 0, maxPerIP: int = 0) -> None:
        self.client = client
        self.maxTotal = maxTotal
        self.maxPerIP = maxPerIP
        self.trusted: Any = ()
        self.sessions: set[Any] = set()

    def acquire(self, host: str) -> defer.Deferred[bool]:
        """Ask the master to count a connection from C{host}."""
        return self.client.ask(Acquire, "ok", host=host)

    def release(self, host: str) -> None:
        """Tell the master a connection from C{host} ended."""
        self.client.tell(Release, host=host)

    def refusalReason(self, host: str) -> str:
        """Why a connection was refused (the master knows which cap)."""
        return "a server-wide connection limit (counted by the master process)"


class RemoteUserIPLimits:
    """A worker's L{pymaild.limits.UserIPLimits}: the master counts."""

    def __init__(self, client: AnvilClient, maxPerUserIP: int = 0) -> None:
        self.client = client
        self.maxPerUserIP = maxPerUserIP

    def acquire(self, user: str, ip: str) -> defer.Deferred[bool]:
        """Ask the master to count a session of C{user} from C{ip}."""
        return self.client.ask(UserAcquire, "ok", user=user, ip=ip)

    def release(self, user: str, ip: str) -> None:
        """Tell the master the session ended."""
        self.client.tell(UserRelease, user=user, ip=ip)


class RemotePenalty:
    """A worker's L{pymaild.auth.penalty.AuthPenalty}: the master keeps the record.

    The delays follow the same rule (L{delayFor}); the times are the master's.
    """

    def __init__(self, client: AnvilClient, local: Any) -> None:
        """
        @param local: an L{AuthPenalty} with the configured delays (for L{delayFor}).
        """
        self.client = client
        self.local = local

    @property
    def trusted(self) -> Any:
        """The trusted networks (applied by the master; kept for a HUP)."""
        return self.local.trusted

    @trusted.setter
    def trusted(self, value: Any) -> None:
        self.local.trusted = value

    def delayFor(self, count: int) -> float:
        """The delay earned by the C{count}-th failure in a row."""
        return float(self.local.delayFor(count))

    def failures(self, host: str, now: float) -> defer.Deferred[int]:
        """The failures C{host} has on record, asked of the master."""
        return self.client.ask(Failures, "count", host=host)

    def failure(self, host: str, now: float) -> defer.Deferred[float]:
        """Record a failure at the master; fires with the delay it earns."""
        return self.client.ask(FailedLogin, "delay", host=host)

    def success(self, host: str) -> None:
        """Record a success at the master."""
        self.client.tell(Success, host=host)


class RemoteRate:
    """A worker's hourly sending limit: the master counts the messages."""

    def __init__(self, client: AnvilClient) -> None:
        self.client = client

    def allows(self, user: str) -> defer.Deferred[bool]:
        """Whether C{user} may send another message, asked of the master."""
        return self.client.ask(RateAllows, "ok", user=user)

    def sent(self, user: str) -> None:
        """Tell the master C{user} sent a message."""
        self.client.tell(RecordSent, user=user)


__all__ = ["AnvilClient", "AnvilServer", "RemoteConnectionLimits", "RemotePenalty",
           "RemoteRate", "RemoteUserIPLimits", "Shared"]
