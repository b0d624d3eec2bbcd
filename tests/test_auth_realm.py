"""Tests for L{pymaild.auth.realm.MailRealm}."""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ANONYMOUS, AllowAnonymousAccess
from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from pymaild.auth.checker import PasswdChecker
from pymaild.auth.realm import MailRealm
from pymaild.threads import InlineRunner
from tests.test_auth_checker import PASSWORD, makePasswd


class IFirst(Interface):
    """An avatar interface for tests."""


class ISecond(Interface):
    """Another avatar interface for tests."""


class IUnknown(Interface):
    """An interface no factory serves."""


class Factory:
    """Makes (avatar, logout) pairs and records what it was asked for."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ids: list[Any] = []
        self.loggedOut: list[Any] = []

    def __call__(self, avatarId: Any) -> tuple[Any, Any]:
        """An avatar naming this factory and the id, with a recording logout."""
        self.ids.append(avatarId)
        return (self.name, avatarId), lambda: self.loggedOut.append(avatarId)


class MailRealmTests(SynchronousTestCase):
    """Avatar selection by interface."""

    def setUp(self) -> None:
        """A realm with factories for IFirst and ISecond."""
        self.first = Factory("first")
        self.second = Factory("second")
        self.realm = MailRealm({IFirst: self.first, ISecond: self.second})

    def test_interface(self) -> None:
        """MailRealm provides IRealm."""
        self.assertTrue(verifyObject(IRealm, self.realm))

    def test_firstMatchingInterfaceWins(self) -> None:
        """The first requested interface with a factory is used."""
        iface, avatar, logout = self.realm.requestAvatar("a@example.com", None, ISecond, IFirst)
        self.assertIs(iface, ISecond)
        self.assertEqual(avatar, ("second", "a@example.com"))
        self.assertEqual(self.first.ids, [])
        logout()
        self.assertEqual(self.second.loggedOut, ["a@example.com"])

    def test_skipsUnservedInterfaces(self) -> None:
        """Interfaces without a factory are skipped."""
        iface, avatar, _ = self.realm.requestAvatar("a@example.com", None, IUnknown, IFirst)
        self.assertIs(iface, IFirst)
        self.assertEqual(avatar, ("first", "a@example.com"))

    def test_noMatch(self) -> None:
        """No served interface raises NotImplementedError."""
        self.assertRaises(NotImplementedError, self.realm.requestAvatar, "a", None, IUnknown)
        self.assertRaises(NotImplementedError, self.realm.requestAvatar, "a", None)

    def test_anonymousPassedThrough(self) -> None:
        """The ANONYMOUS avatar id reaches the factory unchanged."""
        self.realm.requestAvatar(ANONYMOUS, None, IFirst)
        self.assertIs(self.first.ids[0], ANONYMOUS)

    def test_deferredFactory(self) -> None:
        """A factory may return a Deferred of (avatar, logout)."""
        pending: defer.Deferred[Any] = defer.Deferred()
        realm = MailRealm({IFirst: lambda avatarId: pending})
        d = realm.requestAvatar("a@example.com", None, IFirst)
        self.assertNoResult(d)
        pending.callback(("late", lambda: None))
        iface, avatar, _ = self.successResultOf(d)
        self.assertEqual((iface, avatar), (IFirst, "late"))

    def test_throughPortal(self) -> None:
        """A Portal with the passwd checker logs in and out through the realm."""
        pw = makePasswd(self)
        portal = Portal(self.realm, [PasswdChecker(pw, InlineRunner()), AllowAnonymousAccess()])
        d = portal.login(UsernamePassword(b"ALICE@example.com", PASSWORD.encode()), None, IFirst)
        iface, avatar, logout = self.successResultOf(d)
        self.assertEqual((iface, avatar), (IFirst, ("first", "alice@example.com")))
        logout()
        self.assertEqual(self.first.loggedOut, ["alice@example.com"])
        d = portal.login(Anonymous(), None, ISecond)
        self.assertEqual(self.successResultOf(d)[1], ("second", ANONYMOUS))
