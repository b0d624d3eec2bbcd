"""One SMTP mail transaction, from MAIL FROM to the reply after the final dot.

The protocol (L{pymaild.smtp.server}) owns the L{Transaction}: it makes one when MAIL
is accepted, adds each accepted RCPT, and drops it at RSET, a new HELO/EHLO/LHLO,
STARTTLS, XCLIENT, the end of DATA, or when the connection ends. The delivery avatar
(L{pymaild.smtp.delivery.Delivery}) is handed the transaction at every step (MAIL, RCPT,
DATA) and keeps nothing of it itself, so there is one place that says what the
transaction is: the envelope (sender, parameters, recipients), where the recipients
resolved to, the message being received, and the outcome.

Pure data: no I/O, no Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymaild.address import Path


@dataclass(frozen=True)
class Recipient:
    """One accepted RCPT TO (the shape of Twisted's C{smtp.User}).

    @ivar dest: the forward-path.
    @ivar orig: the transaction's reverse-path.
    @ivar helo: C{(helo argument, peer host)} as bytes.
    """

    dest: Path
    orig: Path
    helo: tuple[bytes | None, bytes] = (b"", b"")

    def __str__(self) -> str:
        return self.dest.address


@dataclass
class Transaction:
    """One mail transaction (MAIL to the end of DATA).

    Set by the protocol from the envelope:

    @ivar sender: the reverse-path of MAIL FROM.
    @ivar smtputf8: MAIL carried C{SMTPUTF8} (RFC 6531).
    @ivar size: the size MAIL FROM declared (C{SIZE=}), or None.
    @ivar body: the C{BODY=} parameter (C{"7BIT"} or C{"8BITMIME"}), or None.
    @ivar user: the authenticated user the transaction was started by, or None.
    @ivar helo: C{(HELO/EHLO argument, peer host)} as bytes when MAIL was given.
    @ivar recipients: the accepted RCPTs, in order.
    @ivar received: how many bytes of the message arrived so far (while in DATA).
    @ivar failed: C{(code, text)} once the message failed during DATA (bare CR/LF, an
        over-long line, the size limit): the reply at the final dot.
    @ivar results: the reply for each accepted recipient once the message was handled
        (one C{(code, text)} per entry of C{recipients}; LMTP sends them all).

    Set by the delivery avatar:

    @ivar id: the transaction's queue id (the one of the 250 reply, the Received
        header and the logs); given at MAIL.
    @ivar local: account → the first RCPT address that reached it (for C{for <...>}).
    @ivar remote: addresses in other domains (relayed through the queue).
    @ivar away: the accounts of C{local} whose mailboxes another node owns: queued for
        it (LMTP) instead of stored here.
    @ivar message: the C{IMessageSMTP} receiving the message body (at DATA).
    """

    sender: Path
    smtputf8: bool = False
    size: int | None = None
    body: str | None = None
    user: str | None = None
    helo: tuple[bytes | None, bytes] = (b"", b"")
    recipients: list[Recipient] = field(default_factory=list)
    received: int = 0
    failed: tuple[int, str] | None = None
    results: list[tuple[int, str]] = field(default_factory=list)
    id: str = ""
    local: dict[str, str] = field(default_factory=dict)
    remote: list[str] = field(default_factory=list)
    away: list[str] = field(default_factory=list)
    message: Any = None

    def recipient(self, dest: Path) -> Recipient:
        """The L{Recipient} for a RCPT TO of C{dest} in this transaction."""
        return Recipient(dest=dest, orig=self.sender, helo=self.helo)

    def finish(self, code: int, text: str) -> None:
        """Record the outcome for every recipient (the same one: the message is
        stored for all of them or for none)."""
        self.results = [(code, text)] * max(1, len(self.recipients))


__all__ = ["Recipient", "Transaction"]
