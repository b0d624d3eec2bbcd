"""Tests for L{pymaild.auth.penalty}: per-client failure delays and the login gate."""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import Anonymous, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface, implementer

from pymaild.auth.checker import PasswdChecker
from pymaild.auth.penalty import AuthGate, AuthPenalty, parseHost
from pymaild.auth.realm import MailRealm
from pymaild.threads import InlineRunner
from tests.test_auth_checker import PASSWORD, makePasswd


class IAvatar(Interface):
    """The avatar interface the tests log in for."""


class AuthPenaltyTests(SynchronousTestCase):
    """The delay schedule, grouping, trust, expiry and memory bound."""

    def test_schedule(self) -> None:
        """Failures in a row earn 2, 4, 8, 15, 15 seconds."""
        p = AuthPenalty()
        self.assertEqual([p.failure("192.0.2.1", 0) for _ in range(6)], [2, 4, 8, 15, 15, 15])
        self.assertEqual(p.failures("192.0.2.1", 0), 6)

    def test_successResets(self) -> None:
        """A success forgets the failures: the next failure earns 2 s again."""
        p = AuthPenalty()
        p.failure("192.0.2.1", 0)
        p.failure("192.0.2.1", 1)
        p.success("192.0.2.1")
        self.assertEqual(p.failure("192.0.2.1", 2), 2)

    def test_perAddress(self) -> None:
        """Different IPv4 addresses are counted apart."""
        p = AuthPenalty()
        p.failure("192.0.2.1", 0)
        p.failure("192.0.2.1", 0)
        self.assertEqual(p.failure("192.0.2.2", 0), 2)
        self.assertEqual(p.failure("192.0.2.1", 0), 8)

    def test_ipv6By48(self) -> None:
        """IPv6 addresses in one /48 share a count; another /48 has its own."""
        p = AuthPenalty()
        self.assertEqual(p.failure("2001:db8:1::1", 0), 2)
        self.assertEqual(p.failure("2001:db8:1:ffff:1:2:3:4", 0), 4)
        self.assertEqual(p.failure("[2001:DB8:1::99]", 0), 8)
        self.assertEqual(p.failure("2001:db8:2::1", 0), 2)
        self.assertEqual(p.key("2001:db8:1:abcd::1"), "2001:db8:1::/48")

    def test_ipv4Mapped(self) -> None:
        """An IPv4-mapped IPv6 address counts as the IPv4 address."""
        p = AuthPenalty()
        p.failure("::ffff:192.0.2.7", 0)
        self.assertEqual(p.failure("192.0.2.7", 0), 4)
        self.assertEqual(p.key("::ffff:192.0.2.7"), "192.0.2.7")

    def test_loopbackPenalisedByDefault(self) -> None:
        """Loopback clients are penalised unless configured as trusted."""
        p = AuthPenalty()
        self.assertEqual(p.failure("127.0.0.1", 0), 2)
        self.assertEqual(p.failure("::1", 0), 2)

    def test_trusted(self) -> None:
        """Trusted networks earn no delay and are not remembered."""
        p = AuthPenalty(trusted=["10.0.0.0/8", "::1", "2001:db8:aa::/48"])
        for host in ("10.1.2.3", "::1", "::ffff:10.0.0.1", "2001:db8:aa::5"):
            self.assertEqual(p.failure(host, 0), 0, host)
            self.assertIsNone(p.key(host))
        self.assertEqual(len(p), 0)
        self.assertEqual(p.failure("11.0.0.1", 0), 2)

    def test_badTrustedNetwork(self) -> None:
        """A malformed trusted network is a ValueError."""
        self.assertRaises(ValueError, AuthPenalty, trusted=["10.0.0.0/33"])
        self.assertRaises(ValueError, AuthPenalty, trusted=["example.com"])

    def test_nonIPHost(self) -> None:
        """A host that is no IP address (UNIX socket) is counted by its text."""
        p = AuthPenalty()
        self.assertEqual(p.failure("/run/pymaild.sock", 0), 2)
        self.assertEqual(p.failure("/run/pymaild.sock", 0), 4)
        self.assertIsNone(parseHost("/run/pymaild.sock"))

    def test_idleExpiry(self) -> None:
        """After 5 minutes without a failure the count starts again."""
        p = AuthPenalty()
        p.failure("192.0.2.1", 0)
        p.failure("192.0.2.1", 10)
        self.assertEqual(p.failure("192.0.2.1", 310), 8)  # 300 s after the last: kept
        self.assertEqual(p.failure("192.0.2.1", 610.5), 2)  # 300.5 s idle: forgotten
        self.assertEqual(p.failures("192.0.2.1", 911), 0)

    def test_expiredEntriesDropped(self) -> None:
        """Expired entries are removed from memory as time goes on."""
        p = AuthPenalty()
        for i in range(50):
            p.failure(f"192.0.2.{i}", 0)
        self.assertEqual(len(p), 50)
        p.failure("198.51.100.1", 301)
        self.assertEqual(len(p), 1)

    def test_boundedMemory(self) -> None:
        """At most maxEntries keys are kept; the least recently failing go first."""
        p = AuthPenalty(maxEntries=3)
        p.failure("192.0.2.1", 0)
        p.failure("192.0.2.2", 1)
        p.failure("192.0.2.3", 2)
        p.failure("192.0.2.1", 3)  # refreshes .1
        p.failure("192.0.2.4", 4)  # evicts .2, the least recent
        self.assertEqual(len(p), 3)
        self.assertEqual(p.failures("192.0.2.2", 5), 0)
        self.assertEqual(p.failures("192.0.2.1", 5), 2)
        self.assertEqual(p.failures("192.0.2.3", 5), 1)

    def test_defaultBound(self) -> None:
        """The default bound is 100 000 addresses."""
        self.assertEqual(AuthPenalty().maxEntries, 100_000)


@implementer(ICredentialsChecker)
class BrokenChecker:
    """A checker whose user database is unavailable."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        """Fail with an I/O error."""
        return defer.fail(OSError(5, "Input/output error"))


class AuthGateTests(SynchronousTestCase):
    """Logins through a real Portal over the passwd checker, timed with a Clock."""

    def setUp(self) -> None:
        """A gate over a Portal, a passwd file with alice, and a fake clock."""
        self.pw = makePasswd(self)
        self.clock = Clock()
        self.logouts: list[str] = []
        realm = MailRealm({IAvatar: lambda a: (f"avatar:{a}", lambda: self.logouts.append(a))})
        portal = Portal(realm, [PasswdChecker(self.pw, InlineRunner())])
        self.penalty = AuthPenalty(trusted=["10.9.0.0/16"])
        self.gate = AuthGate(portal, self.penalty, self.clock)

    def login(
        self, password: str, user: str = "alice@example.com", host: str = "192.0.2.1"
    ) -> defer.Deferred[Any]:
        """Start a login; return its Deferred."""
        creds = UsernamePassword(user.encode(), password.encode())
        return self.gate.login(host, creds, IAvatar)

    def failAfter(self, d: defer.Deferred[Any], delay: float) -> None:
        """C{d} has no result until C{delay} seconds pass, then fails UnauthorizedLogin."""
        self.clock.advance(delay - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        failure = self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(failure.getErrorMessage(), "Authentication failed")

    def test_success(self) -> None:
        """A right password gives (interface, avatar, logout) at once."""
        iface, avatar, logout = self.successResultOf(self.login(PASSWORD))
        self.assertIs(iface, IAvatar)
        self.assertEqual(avatar, "avatar:alice@example.com")
        logout()
        self.assertEqual(self.logouts, ["alice@example.com"])

    def test_failureSchedule(self) -> None:
        """Wrong passwords fail only after 2, 4, 8, 15, 15 seconds."""
        for delay in (2, 4, 8, 15, 15):
            self.failAfter(self.login("wrong"), delay)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unknownUserSameAsWrongPassword(self) -> None:
        """Unknown users and wrong passwords share the schedule and the error."""
        self.failAfter(self.login("wrong"), 2)
        self.failAfter(self.login(PASSWORD, user="ghost@example.com"), 4)
        self.failAfter(self.login("wrong"), 8)
        self.failAfter(self.login("x", user="not an address"), 15)

    def succeedAfter(self, d: defer.Deferred[Any], delay: float) -> Any:
        """C{d} has no result until C{delay} seconds pass, then logs in."""
        self.clock.advance(delay - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        return self.successResultOf(d)

    def test_successResetsPenalty(self) -> None:
        """A penalised client's success waits as long as a failure would (it came at
        once, so hanging up early told a wrong password from a right one), then
        resets the schedule."""
        self.failAfter(self.login("wrong"), 2)
        self.failAfter(self.login("wrong"), 4)
        self.succeedAfter(self.login(PASSWORD), 8)
        self.successResultOf(self.login(PASSWORD))
        self.failAfter(self.login("wrong"), 2)

    def test_successAndFailureLookAlike(self) -> None:
        """From a penalised client a right and a wrong password are answered at the
        same moment."""
        self.failAfter(self.login("wrong"), 2)
        right, wrong = self.login(PASSWORD), self.login("wrong", host="192.0.2.1")
        self.clock.advance(3.999)
        self.assertNoResult(right)
        self.assertNoResult(wrong)
        self.clock.advance(0.001)
        self.successResultOf(right)
        self.failureResultOf(wrong, UnauthorizedLogin)

    def test_abandonedAttemptsCount(self) -> None:
        """Attempts abandoned before their answer count as failures, a held success
        included (its avatar is logged out and the record is not cleared)."""
        self.failAfter(self.login("wrong"), 2)
        d = self.login(PASSWORD)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.logouts, ["alice@example.com"])
        self.assertEqual(self.penalty.failures("192.0.2.1", self.clock.seconds()), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for _ in range(3):
            attempt = self.login("wrong")
            attempt.cancel()
            self.failureResultOf(attempt, defer.CancelledError)
        self.assertEqual(self.penalty.failures("192.0.2.1", self.clock.seconds()), 5)
        self.succeedAfter(self.login(PASSWORD), 15)

    def test_otherClientsUnaffected(self) -> None:
        """One client's failures do not delay another client."""
        for delay in (2, 4, 8):
            self.failAfter(self.login("wrong"), delay)
        self.failAfter(self.login("wrong", host="198.51.100.9"), 2)

    def test_concurrentFailuresEachCount(self) -> None:
        """Failures started together from one client each count and each wait."""
        first, second = self.login("wrong"), self.login("wrong")
        self.clock.advance(2)
        self.failureResultOf(first, UnauthorizedLogin)
        self.assertNoResult(second)
        self.clock.advance(2)
        self.failureResultOf(second, UnauthorizedLogin)

    def test_trustedNotDelayed(self) -> None:
        """A trusted client's failure is answered at once."""
        d = self.login("wrong", host="10.9.8.7")
        self.failureResultOf(d, UnauthorizedLogin)

    def test_unhandledCredentials(self) -> None:
        """Credentials no checker handles fail as UnauthorizedLogin, after the penalty."""
        d = self.gate.login("192.0.2.1", Anonymous(), IAvatar)
        self.failAfter(d, 2)

    def test_otherErrorsPassThrough(self) -> None:
        """A broken user database fails at once with its own error and no penalty."""
        realm = MailRealm({IAvatar: lambda a: (a, lambda: None)})
        gate = AuthGate(Portal(realm, [BrokenChecker()]), self.penalty, self.clock)
        d = gate.login("192.0.2.1", UsernamePassword(b"a@example.com", b"x"), IAvatar)
        self.failureResultOf(d, OSError)
        self.assertEqual(self.penalty.failures("192.0.2.1", 0), 0)

    def test_cancelDuringDelay(self) -> None:
        """Cancelling a delayed failure (client gone) cancels its timer."""
        d = self.login("wrong")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failureLoggedWithoutPassword(self) -> None:
        """The failure is logged with user and host but never the password."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.failAfter(self.login("hunter2-secret"), 2)
        texts = [formatEvent(e) for e in events]
        self.assertTrue(any("alice@example.com" in t and "192.0.2.1" in t for t in texts), texts)
        self.assertTrue(any("2 s" in t for t in texts), texts)
        for event, text in zip(events, texts, strict=True):
            self.assertNotIn("hunter2-secret", text)
            self.assertNotIn("hunter2-secret", repr(event))
