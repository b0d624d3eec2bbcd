"""Message checks at the end of DATA: where authentication, filtering and signing plug in.

When a message has been received completely, and before the server answers the DATA
command, the delivery (L{pymaild.smtp.delivery.Delivery.commit}) hands it to the
server's L{CheckChain}: an ordered list of L{MessageCheck}s built by the tap. Each check
sees the L{Envelope} (who sent it, from where, to whom) and the message bytes, and may:

- refuse the message: raise (or fail its Deferred with) an
  L{pymaild.smtp.delivery.SMTPReply}, which becomes the reply to DATA; nothing is
  stored or queued;
- change the message: return new bytes (a header field added on top, a signature, an
  C{Authentication-Results} field replaced); the next check sees the new bytes;
- decide where each local recipient's copy goes: set C{envelope.placements[account]}
  to a list of L{Placement}s (several for several copies, none to discard it);
- leave facts for the checks after it in C{envelope.verdicts} (e.g. the
  authentication results a spam filter passes on).

The chain is one place so the order is visible: inbound verification, then spam
filtering, then per-recipient rules, then outbound signing. A check that does not apply
to a message (a signer on the MX role, a verifier on submission) returns the message
unchanged. A check must not block the reactor: DNS and HTTP go through Twisted, CPU work
through a runner. An unexpected exception in a check becomes C{451 4.3.0} (logged, rate
limited): mail is never lost or half-delivered because a check broke.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail.smtp import SMTPServerError

from pymaild.store.names import INBOX

log = Logger()


class SMTPReply(SMTPServerError):
    """A reply to send to the client: C{code} and text starting with an enhanced code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.text = text


@dataclass(frozen=True)
class Placement:
    """One copy of a message in a local account: the folder it goes to.

    A folder the account does not have gets the copy in INBOX instead (the store's
    rule), unless C{create} is set: then the delivery creates it (a Junk folder
    that a spam verdict fills before the user made one, Sieve's C{fileinto :create}).

    @ivar flags: IMAP flags and keywords the copy is stored with (Sieve's imap4flags).
    @ivar create: create the folder when the account does not have it (Sieve's
        C{fileinto :create}).
    """

    folder: str = INBOX
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass
class Envelope:
    """What the checks know about one message besides its bytes.

    @ivar id: the transaction's id (the one of the logs and the 250 reply).
    @ivar sender: the reverse-path without brackets (C{""} for the null sender).
    @ivar local: canonical local account → the RCPT address that reached it.
    @ivar remote: recipients in other domains (relayed through the queue).
    @ivar role: C{"mx"}, C{"submission"} or C{"lmtp"} (delivery from another node or
        a local MTA: the inbound authentication checks were done where the mail came in).
    @ivar client: the client's IP address.
    @ivar helo: the HELO/EHLO argument.
    @ivar hostname: this server's host name.
    @ivar user: the authenticated user, or None.
    @ivar tls: the TLS description of the session, or None.
    @ivar placements: account → where its copy goes (absent: one copy in INBOX).
    @ivar verdicts: facts checks leave for later checks (name → value).
    @ivar away: the accounts of C{local} whose mailboxes another node of the cluster
        owns: their copies are handed on (LMTP, through the queue) with their
        placements, and what needs the mailbox (Sieve, making folders) is left to the
        owner.
    @ivar fromNode: the LMTP client is a node of the cluster (its address is in the
        directory's node table): the checks it ran are trusted, not repeated
        (L{pymaild.smtp.handoff}).
    """

    id: str
    sender: str
    local: dict[str, str]
    remote: list[str]
    role: str = "mx"
    client: str = ""
    helo: str = ""
    hostname: str = "localhost"
    user: str | None = None
    tls: str | None = None
    placements: dict[str, list[Placement]] = field(default_factory=dict)
    verdicts: dict[str, Any] = field(default_factory=dict)
    away: frozenset[str] = frozenset()
    fromNode: bool = False

    def placementsFor(self, account: str) -> list[Placement]:
        """Where C{account}'s copy goes: the checks' decision, or one copy in INBOX."""
        return self.placements.get(account, [Placement()])


class MessageCheck(Protocol):
    """One step of the chain (see the module docstring)."""

    def check(self, envelope: Envelope, message: bytes) -> defer.Deferred[bytes] | bytes:
        """Return the message (changed or not), or raise an C{SMTPReply} to refuse it."""


def _runStep(data: bytes, step: MessageCheck, envelope: Envelope
             ) -> defer.Deferred[bytes] | bytes:
    """One step of L{CheckChain.run}: C{step} over the message so far."""
    return step.check(envelope, data)


class CheckChain:
    """Runs L{MessageCheck}s in order over one message.

    @param checks: the steps, in the order they run.
    """

    def __init__(self, checks: Sequence[MessageCheck] = ()) -> None:
        self.checks = list(checks)

    def __bool__(self) -> bool:
        return bool(self.checks)

    def run(self, envelope: Envelope, message: bytes) -> defer.Deferred[bytes]:
        """Pass C{message} through every check; fire with the final bytes.

        Fails with the C{SMTPReply} a check raised; any other failure is logged and
        becomes C{451 4.3.0}.
        """
        d: defer.Deferred[bytes] = defer.succeed(message)
        for step in self.checks:
            d.addCallback(_runStep, step, envelope)

        def failed(reason: Any) -> Any:
            if reason.check(SMTPReply):
                return reason
            log.failure("{id}: a message check failed", reason, id=envelope.id)
            raise SMTPReply(451, "4.3.0 Temporary failure checking the message, try again later")

        return d.addErrback(failed)


__all__ = ["CheckChain", "Envelope", "MessageCheck", "Placement", "SMTPReply"]
