"""What a Sieve script decides for one message: the actions of its result (pure).

The interpreter (L{pymaild.sieve.interpreter}) produces a L{Result}; delivery
(L{pymaild.sieve.check}) carries it out. Keeping the decision apart from its execution is
what lets the differential tests compare decisions with Pigeonhole's C{sieve-test}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pymaild.store.names import INBOX


@dataclass(frozen=True)
class Store:
    """Store a copy in C{folder} with C{flags} (keep is a store into INBOX).

    @ivar create: create the folder when it is missing (C{fileinto :create}).
    """

    folder: str = INBOX
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass(frozen=True)
class Redirect:
    """Send the message on to C{address}."""

    address: str


@dataclass(frozen=True)
class Reject:
    """Refuse the message with C{reason}; C{extended} for C{ereject} (RFC 5429)."""

    reason: str
    extended: bool = False


@dataclass(frozen=True)
class Vacation:
    """Answer the sender (RFC 5230), subject to RFC 3834's rules at execution.

    @ivar seconds: the period per sender, after clamping to the configured range.
    @ivar handle: what identifies this vacation for the period (the explicit
        C{:handle}, or one made from the reason, subject, from and mime flag).
    """

    reason: str
    subject: str | None
    fromAddress: str | None
    addresses: tuple[str, ...]
    mime: bool
    seconds: int
    handle: str


@dataclass
class Result:
    """The actions a script decided, in order, and whether the implicit keep stands.

    @ivar flags: the internal flags variable at the end (for the implicit keep).
    """

    actions: list[Store | Redirect | Reject | Vacation] = field(default_factory=list)
    implicitKeep: bool = True
    discarded: bool = False
    flags: tuple[str, ...] = ()

    def stores(self) -> list[Store]:
        """Every copy to store, the implicit keep included (at most one per folder)."""
        out: dict[str, Store] = {}
        for action in self.actions:
            if isinstance(action, Store) and action.folder not in out:
                out[action.folder] = action
        if self.implicitKeep and INBOX not in out:
            out[INBOX] = Store(INBOX, self.flags)
        return list(out.values())

    def redirects(self) -> list[str]:
        """The addresses to redirect to, each once."""
        return list(dict.fromkeys(a.address for a in self.actions if isinstance(a, Redirect)))

    def reject(self) -> Reject | None:
        """The reject action, if any."""
        return next((a for a in self.actions if isinstance(a, Reject)), None)

    def vacation(self) -> Vacation | None:
        """The vacation action, if any."""
        return next((a for a in self.actions if isinstance(a, Vacation)), None)


__all__ = ["Redirect", "Reject", "Result", "Store", "Vacation"]
