"""The LMTP server (RFC 2033): local delivery from another node or a local MTA.

L{LMTPServer} is the ESMTP server of L{pymaild.smtp.server} with LMTP's differences:

- The greeting names LMTP; the client greets with C{LHLO} (its reply is EHLO's: the
  same extensions, never AUTH or STARTTLS, which an LMTP listener does not offer).
  C{HELO} and C{EHLO} are refused with C{500 5.5.1} (RFC 2033 section 4.1).
- After the final dot of DATA there is one reply per accepted recipient, in the order
  of their C{RCPT} commands (section 4.2). The delivery is the SMTP one
  (L{pymaild.smtp.delivery}: the message checks, then every copy stored durably, or
  none), so every recipient gets that one outcome; only the first of the replies
  counts towards the error tarpit, so a refused message for many recipients does not
  end the session.
- The session's role is C{"lmtp"}: anonymous, local recipients only (no relaying),
  alias forwarding as on the MX, and a sender in a local domain is accepted (the mail
  was accepted, after AUTH, where it came in); the message checks see C{role="lmtp"} and skip the
  inbound SPF/DKIM/DMARC verification (the node where the mail came in did it), while
  spam filtering and Sieve run as for MX mail.

An LMTP listener must only be reachable by trusted peers (loopback or a private
network of the nodes): anyone who can connect can deliver to every local mailbox.
"""

from __future__ import annotations

from typing import Any

from pymaild.smtp.server import SMTPFactory, SMTPServer
from pymaild.smtp.transaction import Transaction


class LMTPServer(SMTPServer):
    """One LMTP session (see the module docstring)."""

    role = "lmtp"
    greetingText = b"LMTP pymaild"

    def smtp_LHLO(self, arg: bytes) -> None:
        """LHLO: LMTP's EHLO."""
        if not arg:
            self.reply(501, "5.5.4 Syntax: LHLO hostname")
            return
        self._greet(arg, esmtp=True)

    def smtp_HELO(self, arg: bytes) -> None:
        """HELO is not LMTP."""
        self.reply(500, "5.5.1 Error: this is LMTP, use LHLO")

    def smtp_EHLO(self, arg: bytes) -> None:
        """EHLO is not LMTP."""
        self.reply(500, "5.5.1 Error: this is LMTP, use LHLO")

    def smtp_MAIL(self, arg: bytes) -> None:
        """MAIL FROM, with the error text naming LHLO."""
        if self._heloName is None:
            self.reply(503, "5.5.1 Error: send LHLO first")
            return
        super().smtp_MAIL(arg)

    def _dataReply(self, txn: Transaction, code: int, text: str) -> None:
        """One reply per accepted recipient, in RCPT order, each naming it."""
        txn.finish(code, text)
        for i, (rcpt, (rcode, rtext)) in enumerate(zip(txn.recipients, txn.results, strict=False)):
            enhanced, _, rest = rtext.partition(" ")
            line = f"{enhanced} <{rcpt.dest.address}> {rest}"
            error = None if i == 0 else False
            self._send(rcode, [line.encode("utf-8")], error=error)

    _COMMANDS: dict[bytes, Any] = {}


LMTPServer._COMMANDS = {
    **SMTPServer._COMMANDS,
    **{name[5:].encode(): getattr(LMTPServer, name)
       for name in ("smtp_LHLO", "smtp_HELO", "smtp_EHLO", "smtp_MAIL")},
}


class LMTPFactory(SMTPFactory):
    """Builds L{LMTPServer} protocols for one LMTP listener (role C{"lmtp"}; no AUTH,
    no STARTTLS)."""

    protocol = LMTPServer
    roles = ("lmtp",)

    def __init__(self, config: Any, portal: Any, clock: Any = None, **kwargs: Any) -> None:
        super().__init__(config, None, portal, tlsContext=None, role="lmtp",
                         implicitTLS=False, clock=clock, **kwargs)
