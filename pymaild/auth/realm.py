"""The mail realm: hands out the avatar a protocol asks for.

The protocol rooms own their avatars; the server (``pymaild.tap``) registers one
factory per avatar interface, e.g. C{pop3.IMailbox}, C{imap4.IAccount} and
C{smtp.IMessageDelivery}. A factory is called with the avatar id (a canonical address,
or L{twisted.cred.checkers.ANONYMOUS} for unauthenticated SMTP) and returns
C{(avatar, logout)} or a Deferred firing with that pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

AvatarPair = tuple[Any, Callable[[], None]]
AvatarFactory = Callable[[Any], Union[AvatarPair, "Deferred[AvatarPair]"]]
Avatar = tuple[type[Interface], Any, Callable[[], None]]
"""What C{IRealm.requestAvatar} answers: C{(interface, avatar, logout)}."""


@implementer(IRealm)
class MailRealm:
    """An L{IRealm} over a table of avatar factories keyed by interface.

    @ivar factories: C{{interface: factory(avatarId) -> (avatar, logout)}}.
    """

    def __init__(self, factories: Mapping[type[Interface], AvatarFactory]) -> None:
        self.factories = dict(factories)

    def requestAvatar(
        self, avatarId: Any, mind: Any, *interfaces: type[Interface]
    ) -> Deferred[Avatar] | Avatar:
        """Build the avatar for the first of C{interfaces} that has a factory.

        @return: C{(interface, avatar, logout)}, or a Deferred firing with it when the
            factory returned a Deferred.
        @raise NotImplementedError: no requested interface has a factory.
        """
        for iface in interfaces:
            factory = self.factories.get(iface)
            if factory is None:
                continue
            result = factory(avatarId)
            if isinstance(result, Deferred):
                return result.addCallback(self._triple, iface)
            return self._triple(result, iface)
        names = ", ".join(getattr(i, "__name__", repr(i)) for i in interfaces)
        raise NotImplementedError(f"no avatar for interfaces: {names or '(none)'}")

    @staticmethod
    def _triple(pair: AvatarPair, iface: type[Interface]) -> Avatar:
        """Prefix a factory's C{(avatar, logout)} with the interface it answers."""
        avatar, logout = pair
        return (iface, avatar, logout)
