"""Mail handed from the MX node to the owner node: what the MX decided travels with it.

In a cluster (C{docs/cluster.rst}) the node whose MX accepts a message runs the inbound
checks once: SPF/DKIM/DMARC and the spam filter. Copies for mailboxes another node owns
are queued and delivered to the owner over LMTP, where the owner runs the user's Sieve
script (as Postfix with rspamd in front of Dovecot's LMTP and Pigeonhole: the filter at
the edge, the script where the mailbox and its scripts are). What the MX's checks decided
for such a copy, a placement (the Junk folder for spam, DMARC's quarantine), is carried
in one header field on top of the queued copy::

    X-Pymaild-Placement: [{"folder": "Junk", "create": true}]

a JSON list of copies (C{folder}, C{flags}, C{create}) for every recipient of that LMTP
transaction; the MX queues one copy per distinct placement, so the field names no
recipient (nothing a Bcc recipient could learn from, even in a bounce's returned header).

L{HandoffCheck}, first in every cluster node's check chain, removes every such field
from every message. Only on LMTP from a node of the cluster (the peer's address is in
C{pymaild_nodes}; L{pymaild.smtp.checks.Envelope.fromNode}) is a single well-formed field
honoured: each local recipient's copy goes where it says (the Junk folder made as the
spam filter makes it). From anyone else (the MX's clients, a local MTA speaking LMTP)
it is dropped unread, so no sender can file its mail anywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from pymaild.smtp.checks import Envelope, Placement

log = Logger()

FIELD = b"X-Pymaild-Placement"
"""The header field that carries a placement from the MX node to the owner."""

#: A placement longer than this is not carried (the copy goes to INBOX): one header
#: line stays well inside RFC 5322's 998 characters.
MAX_FIELD = 900
#: At most this many copies in one carried placement (Sieve's own limit is far lower).
MAX_COPIES = 16

_NAME = re.compile(rb"^" + FIELD + rb"[ \t]*:", re.IGNORECASE)


def encode(placements: list[Placement]) -> bytes | None:
    """The header line (with CRLF) carrying C{placements}; None when they are the
    default (one copy in INBOX) or too large to carry."""
    if placements == [Placement()]:
        return None
    copies = []
    for p in placements:
        copy: dict[str, Any] = {"folder": p.folder}
        if p.flags:
            copy["flags"] = list(p.flags)
        if p.create:
            copy["create"] = True
        copies.append(copy)
    value = json.dumps(copies, ensure_ascii=True, separators=(",", ":"))
    if len(value) > MAX_FIELD or len(copies) > MAX_COPIES:
        log.warn("placement {value} too large to hand on: the owner files it in INBOX",
                 value=value[:200])
        return None
    return FIELD + b": " + value.encode("ascii") + b"\r\n"


def decode(value: bytes) -> list[Placement] | None:
    """The placements in a field's value, or None when it is not one we wrote."""
    if len(value) > MAX_FIELD:
        return None
    try:
        copies = json.loads(value)
    except ValueError:
        return None
    if not isinstance(copies, list) or not 0 < len(copies) <= MAX_COPIES:
        return None
    out = []
    for copy in copies:
        if not isinstance(copy, dict):
            return None
        folder, flags, create = copy.get("folder"), copy.get("flags", []), copy.get("create")
        if (not isinstance(folder, str) or not folder or not isinstance(flags, list)
                or not all(isinstance(f, str) and f for f in flags)
                or create not in (None, True, False)):
            return None
        out.append(Placement(folder, tuple(flags), bool(create)))
    return out


def take(message: bytes) -> tuple[bytes, list[bytes]]:
    """C{message} without any placement field of its header section, and the values of
    those it had (unfolded, stripped)."""
    end = message.find(b"\r\n\r\n")
    head, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 2:])
    if FIELD.lower() not in head.lower():
        return message, []
    lines = head.split(b"\r\n")
    kept: list[bytes] = []
    values: list[bytes] = []
    dropping = False
    for line in lines[:-1] if head.endswith(b"\r\n") else lines:
        if line[:1] in (b" ", b"\t") and (dropping or kept):
            if dropping:
                values[-1] += b" " + line.strip()
            else:
                kept.append(line)
            continue
        dropping = bool(_NAME.match(line))
        if dropping:
            values.append(line.split(b":", 1)[1].strip())
        else:
            kept.append(line)
    return b"".join(line + b"\r\n" for line in kept) + body, values


def carried(message: bytes) -> tuple[bytes, list[Placement] | None]:
    """C{message} without placement fields, and the placement it carried: None unless
    it had exactly one well-formed field."""
    stripped, values = take(message)
    if len(values) != 1:
        return stripped, None
    return stripped, decode(values[0])


class HandoffCheck:
    """The first message check of a cluster node (see the module docstring).

    @param ensureJunk: C{account -> Deferred[folder]}: makes the account's Junk folder
        (in the delivery runner) as the spam filter does, and fires with the folder to
        deliver into; a carried copy for C{junk} goes there.
    @param junk: the name of the Junk folder.
    """

    def __init__(self, ensureJunk: Callable[[str], defer.Deferred[str]] | None = None,
                 junk: str = "Junk") -> None:
        self.ensureJunk = ensureJunk
        self.junk = junk

    def check(self, envelope: Envelope, message: bytes) -> defer.Deferred[bytes] | bytes:
        """Remove the placement fields; apply one from a cluster node."""
        stripped, values = take(message)
        if not values:
            return message
        if not (envelope.role == "lmtp" and envelope.fromNode):
            log.info("{id}: placement field from [{peer}] (no cluster node) removed",
                     id=envelope.id, peer=envelope.client)
            return stripped
        placements = decode(values[0]) if len(values) == 1 else None
        if placements is None:
            log.warn("{id}: unusable placement field from node [{peer}]: INBOX",
                     id=envelope.id, peer=envelope.client)
            return stripped
        work = []
        for account in envelope.local:
            if account in envelope.away:
                # Handed on again (the mailbox moved once more): carried as it came.
                envelope.placements[account] = list(placements)
                continue
            work.append(self._place(envelope, account, placements))
        d = defer.gatherResults(work, consumeErrors=True) if work else defer.succeed(None)
        return d.addCallback(lambda _: stripped)

    def _place(self, envelope: Envelope, account: str,
               placements: list[Placement]) -> defer.Deferred[None]:
        """Set C{account}'s placements; its Junk folder made first when one goes there."""
        if self.ensureJunk is None or not any(p.folder == self.junk for p in placements):
            envelope.placements[account] = list(placements)
            return defer.succeed(None)

        def made(folder: str) -> None:
            envelope.placements[account] = [
                Placement(folder, p.flags) if p.folder == self.junk else p
                for p in placements]

        return self.ensureJunk(account).addCallback(made)


__all__ = ["FIELD", "HandoffCheck", "carried", "decode", "encode", "take"]
