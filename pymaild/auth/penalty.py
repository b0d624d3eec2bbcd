"""Failed-login penalty per client address, after Dovecot's ``auth_penalty``.

Every failed login from an address makes the failure answer wait: 2 s after the first
failure, then 4, 8, and 15 s from the fourth on; once an address has failures on record,
every answer to it waits that long, success included, and an attempt abandoned before
its answer counts as a failure. A successful login answered clears the record, as do 5
minutes without a failure. IPv6 clients are grouped by /48
(one site), IPv4-mapped IPv6 addresses count as their IPv4 address, and networks listed
as trusted (a proxy, a webmail host) are never penalised. At most 100 000 addresses are
remembered; the least recently failing ones are forgotten first.

L{AuthGate} wraps a L{twisted.cred.portal.Portal}: the failure fires only when the delay
has passed on the reactor clock (C{callLater}, never a sleep), and it is the same
L{UnauthorizedLogin} whether the user is unknown or the password wrong.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from pymaild.limits import parseIP, parseNetworks

log = Logger()

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parseHost(host: str) -> _Address | None:
    """The IP address in C{host} (IPv4-mapped IPv6 unwrapped, zone dropped), or C{None}."""
    return parseIP(host)



class Clock(Protocol):
    """What the gate needs of the reactor's clock (L{twisted.internet.interfaces.
    IReactorTime}, written as a protocol so that the type checker sees its methods)."""

    def seconds(self) -> float:
        """Now, in seconds."""

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any,
                  **kw: Any) -> IDelayedCall:
        """Call C{callable(*args, **kw)} in C{delay} seconds."""

class AuthPenalty:
    """Per-client failure counts and the delay each failure earns.

    Times are plain seconds (the reactor clock's C{seconds()}); the caller passes them
    in, so the class itself never reads a clock.

    @ivar trusted: networks whose clients are never penalised.
    """

    def __init__(
        self,
        trusted: Iterable[str] = (),
        initial: float = 2.0,
        maximum: float = 15.0,
        idle: float = 300.0,
        maxEntries: int = 100_000,
        ipv6Prefix: int = 48,
    ) -> None:
        """
        @param trusted: network strings (C{"10.0.0.0/8"}, C{"::1"}) exempt from penalty.
        @raise ValueError: a trusted network is malformed.
        """
        self.trusted: tuple[_Network, ...] = parseNetworks(trusted)
        self.initial = initial
        self.maximum = maximum
        self.idle = idle
        self.maxEntries = maxEntries
        self.ipv6Prefix = ipv6Prefix
        # key -> (failure count, time of last failure); order = least recent first.
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        """The number of client keys remembered."""
        return len(self._entries)

    def key(self, host: str) -> str | None:
        """The key under which C{host} is counted; C{None} if it is trusted.

        IPv4 addresses are their own key, IPv6 addresses are keyed by their /48, and
        anything that is not an IP address (a UNIX socket path) by its text.
        """
        addr = parseHost(host)
        if addr is None:
            return f"host:{host}"
        if any(addr.version == net.version and addr in net for net in self.trusted):
            return None
        if isinstance(addr, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((addr, self.ipv6Prefix), strict=False))
        return str(addr)

    def delayFor(self, count: int) -> float:
        """The delay earned by the C{count}-th failure in a row."""
        if count <= 0:
            return 0.0
        return min(self.initial * 2.0 ** min(count - 1, 32), self.maximum)

    def _expire(self, now: float) -> None:
        """Forget entries idle for longer than C{idle} (they sit at the front)."""
        while self._entries:
            first = next(iter(self._entries))
            if now - self._entries[first][1] <= self.idle:
                break
            del self._entries[first]

    def failures(self, host: str, now: float) -> int:
        """How many failures in a row C{host} has on record at time C{now}."""
        key = self.key(host)
        entry = self._entries.get(key) if key is not None else None
        if entry is None or now - entry[1] > self.idle:
            return 0
        return entry[0]

    def failure(self, host: str, now: float) -> float:
        """Record a failed login from C{host} at C{now}; return the delay it earns."""
        self._expire(now)
        key = self.key(host)
        if key is None:
            return 0.0
        count, _last = self._entries.pop(key, (0, now))
        count += 1
        self._entries[key] = (count, now)
        while len(self._entries) > self.maxEntries:
            self._entries.popitem(last=False)
        return self.delayFor(count)

    def success(self, host: str) -> None:
        """Record a successful login from C{host}: its failures are forgiven."""
        key = self.key(host)
        if key is not None:
            self._entries.pop(key, None)


def _userForLog(credentials: Any) -> str:
    """The user name of C{credentials}, made safe for a log line (never the password)."""
    name = getattr(credentials, "username", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if not isinstance(name, str):
        return "-"
    name = "".join(c if c.isprintable() else "?" for c in name)
    return name[:80] + ("..." if len(name) > 80 else "")


class AuthGate:
    """Logs in through a portal and makes every answer wait out the client's penalty.

    As Dovecot's C{auth_penalty}: a client with failures on record gets every answer,
    success included, only when a failure would have been answered, so a client that
    hangs up early learns nothing from the timing; an attempt abandoned before its
    answer (the protocol cancels the Deferred when the connection is lost) counts as a
    failure, and a success clears the record only once it is answered.
    """

    def __init__(self, portal: Portal, penalty: AuthPenalty, clock: Clock,
                 metrics: Any = None) -> None:
        """
        @param metrics: a L{pymaild.metrics.Metrics} told of every answered or
            abandoned attempt (None: not counted).
        """
        self.portal = portal
        self.penalty = penalty
        self.clock = clock
        self.metrics = metrics

    def login(self, peerHost: str, credentials: Any, *interfaces: type[Interface]) -> Deferred[Any]:
        """Log in with C{credentials} for one of C{interfaces}, from C{peerHost}.

        @return: a Deferred firing with C{(interface, avatar, logout)}; on a login
            failure (unknown user, wrong password, unhandled credentials) it fails with
            L{UnauthorizedLogin} after the penalty delay. Other errors (the passwd file
            is unreadable) fail at once, unchanged and without penalty. Cancelling the
            Deferred before the answer (the client left) cancels the timer, logs the
            avatar out and counts the attempt as a failure.
        """
        return _Attempt(self, peerHost, credentials).start(interfaces)

    def count(self, interfaces: tuple[type[Interface], ...], result: str, delayed: bool) -> None:
        """Tell the metrics of one attempt's C{result}, under the protocol whose avatar
        interface it asked for."""
        if self.metrics is None:
            return
        name = interfaces[0].__name__ if interfaces else ""
        self.metrics.login(_PROTOCOLS.get(name, "other"), result, delayed)


#: The protocol a login is for, by the avatar interface it asks for.
_PROTOCOLS = {"IMessageDelivery": "smtp", "IMailboxPOP3": "pop3", "IAccountIMAP": "imap",
              "IWebUser": "web"}


class _Attempt:
    """One login through an L{AuthGate}, from its start to its answer."""

    def __init__(self, gate: AuthGate, host: str, credentials: Any) -> None:
        self.gate = gate
        self.host = host
        self.credentials = credentials
        self.started = gate.clock.seconds()
        self.holdUntil: float | None = None
        self.counted = False
        self.inner: Deferred[Any] | None = None
        self.timer: Any = None
        self.held: Any = None
        self.out: Deferred[Any] = Deferred(self._cancel)
        self.interfaces: tuple[type[Interface], ...] = ()
        self.delayed = False

    def start(self, interfaces: tuple[type[Interface], ...]) -> Deferred[Any]:
        """Verify the credentials; the returned Deferred carries the answer.

        A penalty kept by another process (a worker's
        L{pymaild.anvil.RemotePenalty}) answers with a Deferred: the credentials are
        verified once it has.
        """
        self.interfaces = interfaces
        earlier = self.gate.penalty.failures(self.host, self.started)
        if isinstance(earlier, Deferred):
            self.inner = earlier
            earlier.addCallbacks(self._begin, self._noRecord)
        else:
            self._begin(earlier)
        return self.out

    def _noRecord(self, reason: Failure) -> None:
        """The penalty record could not be read (the master is gone): fail at once."""
        self.inner = None
        if not self.out.called:
            self.out.errback(reason)

    def _begin(self, earlier: int) -> None:
        """With the client's failures on record known, verify the credentials."""
        self.inner = None
        if self.out.called:  # abandoned meanwhile (counted then)
            return
        # When a failure now would be answered: every answer from a penalised client
        # waits until then.
        if earlier:
            self.holdUntil = self.started + self.gate.penalty.delayFor(earlier + 1)
        inner = self.inner = self.gate.portal.login(self.credentials, None,
                                                    *self.interfaces)
        inner.addCallbacks(self._verified, self._refused)

    def _verified(self, result: Any) -> None:
        """The credentials are good: answer now, or when the penalty says."""
        self.inner = None
        if self.out.called:  # abandoned meanwhile
            result[2]()
            return
        self._answerAt(self.holdUntil, result)

    def _refused(self, reason: Failure) -> None:
        """A login failure is counted and answered after its delay; other errors at once."""
        self.inner = None
        if self.out.called:  # abandoned meanwhile (counted then)
            return
        if not reason.check(LoginFailed):
            self.out.errback(reason)
            return
        now = self.gate.clock.seconds()
        delay = self.gate.penalty.failure(self.host, now)
        self.counted = True
        if isinstance(delay, Deferred):  # counted by another process: its answer
            delay.addCallbacks(lambda d: self._failed(now, d),
                               lambda f: self._failed(now, self.gate.penalty.delayFor(1)))
            return
        self._failed(now, delay)

    def _failed(self, now: float, delay: float) -> None:
        """Log a failed login and answer it after C{delay} seconds from C{now}."""
        if self.out.called:
            return
        log.info(
            "authentication failed for {user} from {host} (answer delayed {delay:g} s)",
            user=_userForLog(self.credentials),
            host=self.host,
            delay=delay,
        )
        error = Failure(UnauthorizedLogin("Authentication failed"))
        # A penalised client's failure comes at the same moment its success would.
        self._answerAt(self.holdUntil if self.holdUntil is not None else now + delay, error)

    def _answerAt(self, when: float | None, result: Any) -> None:
        """Fire the answer at C{when} on the clock (C{None} or past: now)."""
        wait = 0.0 if when is None else when - self.gate.clock.seconds()
        if wait <= 0:
            self._answer(result)
            return
        self.delayed = True
        self.held = result
        self.timer = self.gate.clock.callLater(wait, self._answer, result)

    def _answer(self, result: Any) -> None:
        """Give the client its answer; a success answered clears the record."""
        self.timer = self.held = None
        if isinstance(result, Failure):
            self.gate.count(self.interfaces, "failure", self.delayed)
            self.out.errback(result)
            return
        self.gate.penalty.success(self.host)
        self.gate.count(self.interfaces, "success", self.delayed)
        self.out.callback(result)

    def _cancel(self, out: Deferred[Any]) -> None:
        """The client left before its answer: it counts as a failure."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        held, self.held = self.held, None
        if isinstance(held, tuple) and len(held) == 3 and callable(held[2]):
            held[2]()
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.cancel()
        self.gate.count(self.interfaces, "abandoned", self.delayed)
        if not self.counted:
            self.counted = True
            counted = self.gate.penalty.failure(self.host, self.gate.clock.seconds())
            if isinstance(counted, Deferred):
                counted.addErrback(lambda _: None)
            log.info("authentication abandoned by {host} before its answer (counted as a"
                     " failure)", host=self.host)
