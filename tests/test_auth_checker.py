"""Tests for L{pymaild.auth.checker.PasswdChecker}."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, reactor
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from pymaild.auth.checker import PasswdChecker, usernameToAddress
from pymaild.auth.passwd import PasswdFile
from pymaild.threads import InlineRunner, ThreadRunner
from tests.test_auth_passwd import SHA512_LINE, countDummies, fastHashing

PASSWORD = "Tr0ub4dor&3"


class RecordingRunner:
    """An inline runner that records what it was asked to run."""

    def __init__(self) -> None:
        self.calls: list[Callable[..., Any]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Record C{f} and run it now."""
        self.calls.append(f)
        return defer.maybeDeferred(f, *args, **kwargs)


def makePasswd(case: SynchronousTestCase) -> PasswdFile:
    """A passwd file with alice (argon2id), jörg (argon2id) and bob (SHA512-CRYPT)."""
    fastHashing(case)
    directory = case.mktemp()
    os.mkdir(directory)
    pw = PasswdFile(os.path.join(directory, "passwd"))
    pw.add("alice@example.com", PASSWORD)
    pw.add("jörg@example.com", "grüße")
    with open(pw.path, "a", encoding="utf-8") as f:
        f.write(SHA512_LINE + "\n")
    return pw


class PasswdCheckerTests(SynchronousTestCase):
    """Credential checks through an inline runner."""

    def setUp(self) -> None:
        """A checker over a small passwd file and a recording runner."""
        self.pw = makePasswd(self)
        self.runner = RecordingRunner()
        self.checker = PasswdChecker(self.pw, self.runner)

    def check(self, username: bytes | str, password: bytes | str) -> Any:
        """The avatar id of one successful check."""
        d = self.checker.requestAvatarId(UsernamePassword(username, password))
        return self.successResultOf(d)

    def assertRefused(self, username: bytes | str, password: bytes | str) -> None:
        """The check fails with UnauthorizedLogin."""
        d = self.checker.requestAvatarId(UsernamePassword(username, password))
        self.failureResultOf(d, UnauthorizedLogin)

    def test_interface(self) -> None:
        """It is an ICredentialsChecker for IUsernamePassword only."""
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))
        self.assertEqual(self.checker.credentialInterfaces, (IUsernamePassword,))

    def test_rightPasswordGivesCanonicalAddress(self) -> None:
        """A right password fires with the canonical address as str, whatever the case."""
        d = self.checker.requestAvatarId(UsernamePassword(b"Alice@EXAMPLE.com", PASSWORD.encode()))
        avatarId = self.successResultOf(d)
        self.assertEqual(avatarId, "alice@example.com")
        self.assertIsInstance(avatarId, str)

    def test_utf8Username(self) -> None:
        """A UTF-8 user name and password are decoded and accepted."""
        d = self.checker.requestAvatarId(
            UsernamePassword("JÖRG@example.com".encode(), "grüße".encode())
        )
        self.assertEqual(self.successResultOf(d), "jörg@example.com")

    def test_textCredentials(self) -> None:
        """Text (str) user names and passwords work as well as bytes."""
        d = self.checker.requestAvatarId(UsernamePassword("alice@example.com", PASSWORD))
        self.assertEqual(self.successResultOf(d), "alice@example.com")

    def test_wrongPassword(self) -> None:
        """A wrong password fails with UnauthorizedLogin."""
        self.assertRefused(b"alice@example.com", b"wrong")
        self.assertRefused(b"alice@example.com", b"")

    def test_unknownUser(self) -> None:
        """An unknown user fails the same way, after a dummy verification."""
        calls = countDummies(self)
        self.assertRefused(b"nobody@example.com", PASSWORD.encode())
        self.assertEqual(len(calls), 1)

    def test_badUsernames(self) -> None:
        """Non-UTF-8 and non-address user names fail, each after a dummy verification."""
        calls = countDummies(self)
        for name in (b"\xff\xfe@example.com", b"alice", b"", b"a/b@example.com", b"a@b@"):
            self.assertRefused(name, PASSWORD.encode())
        self.assertEqual(len(calls), 5)

    def test_verificationRunsInRunner(self) -> None:
        """Hashing goes through the runner, never inline in the caller."""
        self.check(b"alice@example.com", PASSWORD.encode())
        self.assertRefused(b"\xff", b"x")
        self.assertEqual(len(self.runner.calls), 2)
        self.assertEqual(self.runner.calls[0], self.pw.verify)

    def test_rehashThroughChecker(self) -> None:
        """Logging in as an old-scheme user upgrades the hash (done in the runner)."""
        d = self.checker.requestAvatarId(UsernamePassword(b"bob@example.com", b"test123"))
        self.assertEqual(self.successResultOf(d), "bob@example.com")
        entry = self.pw.lookup("bob@example.com")
        assert entry is not None
        self.assertEqual(entry.scheme, "ARGON2ID")

    def test_passwordNeverLogged(self) -> None:
        """No log event (failures, rehash notices) contains the password."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        secret = "test123"
        self.check(b"bob@example.com", secret.encode())  # rehash: logs an info event
        self.assertRefused(b"bob@example.com", b"not-" + secret.encode())
        self.assertRefused(b"ghost@example.com", b"ghost-" + secret.encode())
        self.assertTrue(events)
        for event in events:
            self.assertNotIn(secret, formatEvent(event))
            self.assertNotIn(secret, repr(event))

    def test_unreadablePasswdIsNotUnauthorized(self) -> None:
        """If the passwd file cannot be read, the error is passed on (not a wrong password)."""
        os.unlink(self.pw.path)
        os.mkdir(self.pw.path)
        d = self.checker.requestAvatarId(UsernamePassword(b"alice@example.com", b"x"))
        failure = self.failureResultOf(d)
        self.assertFalse(failure.check(UnauthorizedLogin))
        self.assertTrue(failure.check(OSError))

    def test_usernameToAddress(self) -> None:
        """usernameToAddress decodes and canonicalises, or raises ValueError."""
        self.assertEqual(usernameToAddress(b"Bob@Example.COM"), "bob@example.com")
        self.assertRaises(ValueError, usernameToAddress, b"\xc3")
        self.assertRaises(ValueError, usernameToAddress, "nobody")


class ThreadedCheckerTests(TestCase):
    """The checker with a real thread pool, as the server runs it."""

    def setUp(self) -> None:
        """A started two-thread pool, stopped after the test."""
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="test-auth")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.pw = makePasswd(self)

    @defer.inlineCallbacks
    def test_threadedVerification(self) -> Any:
        """Right and wrong passwords resolve through the pool into the reactor thread."""
        checker = PasswdChecker(self.pw, ThreadRunner(reactor, self.pool))
        avatarId = yield checker.requestAvatarId(
            UsernamePassword(b"alice@example.com", PASSWORD.encode())
        )
        self.assertEqual(avatarId, "alice@example.com")
        d = checker.requestAvatarId(UsernamePassword(b"alice@example.com", b"bad"))
        yield self.assertFailure(d, UnauthorizedLogin)


class InlineRunnerTests(SynchronousTestCase):
    """The checker works with the InlineRunner used by protocol tests."""

    def test_inline(self) -> None:
        """InlineRunner gives an already-fired Deferred."""
        pw = makePasswd(self)
        checker = PasswdChecker(pw, InlineRunner())
        d = checker.requestAvatarId(UsernamePassword(b"alice@example.com", PASSWORD.encode()))
        self.assertEqual(self.successResultOf(d), "alice@example.com")
