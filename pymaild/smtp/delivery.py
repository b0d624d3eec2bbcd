"""SMTP delivery avatars: who may send, who receives, and durable delivery.

The realm (L{pymaild.auth.realm.MailRealm}) is given C{{smtp.IMessageDelivery:
DeliveryAvatars(store, directory, diskRunner, config, queue)}}. Each SMTP session logs in
once (anonymously at its first MAIL, or with AUTH) and gets a L{Delivery} avatar: it
checks senders and recipients of the transaction the protocol owns
(L{pymaild.smtp.transaction.Transaction}, handed to it at MAIL, RCPT and DATA) and opens
the message that receives the transaction's body.

Rules the avatar applies (the protocol, L{pymaild.smtp.server}, owns syntax, limits,
the transaction and the reply framing):

- Recipients in a local domain are resolved through the aliases file
  (L{pymaild.smtp.aliases}) and L{pymaild.auth.directory.Directory} (exact account,
  C{user+tag}, C{postmaster@} of every domain), in the disk runner; unknown ones get
  C{550 5.1.1}. Known recipients are remembered (L{ResolutionCache}) and answered without
  the runner while the passwd and aliases files were checked less than a second ago.
- On the MX role an unauthenticated client may not use a sender in one of our own
  domains (C{550 5.7.1} at MAIL FROM: local senders authenticate on the submission
  port), unless its address is in C{auth.trusted_networks} (loopback is not trusted
  unless listed there). The null sender is always allowed.
- Recipients elsewhere are accepted only from authenticated users and only when a queue
  exists (C{554 5.7.1} unauthenticated, C{550 5.7.1} when relaying is not configured).
- An authenticated user's MAIL FROM must be one of the user's addresses: the account,
  a C{+tag} of it, or an alias that reaches it (catch-alls excluded); the null sender is
  refused (C{553 5.7.1}). Each user may send C{submission.max_messages_per_hour}
  messages per hour (C{450 4.7.1} beyond).
- So must every address in the message's C{From:} header fields (with
  C{submission.check_from_header}, the default): a message from an authenticated user
  whose C{From:} is missing, unparseable or names another address is refused after
  DATA with C{550 5.7.1}, and nothing of it is stored or queued.

Before anything is stored, the message passes the server's message checks
(L{pymaild.smtp.checks}: authentication verdicts, spam filtering, signing): a check may
refuse it, change it, or place each account's copy in another folder.

Delivery: the message is written and fsynced once and hard-linked into every local
mailbox (and folder) it goes to (L{pymaild.store.delivery.deliverLinked}), in the disk
runner. With one local account its copy carries C{Return-Path}, C{Delivered-To} and
C{Received ... for <rcpt>}; the file shared by several accounts names none of them
(C{Return-Path} and a C{Received} without C{for}, as Dovecot's LMTP does), so Bcc
recipients stay hidden. A copy with IMAP flags (Sieve's imap4flags) is written on its
own. The transaction is all-or-nothing: when one copy fails, the copies already written are
removed again. Remote recipients are handed to the outbound queue afterwards; if that
fails the local copies are removed too, so the client's retry duplicates nothing. Only
when everything is durable does the protocol answer 250.

Outbound queue interface (implemented by L{pymaild.smtp.queue}, not here)::

    queue.enqueue(sender: str, recipients: list[str], data: bytes | BinaryIO,
                  qid: str) -> Deferred

C{qid} is the transaction's id (L{DeliveryAvatars.newId}, a queue id from
L{pymaild.smtp.queuespool.newQueueId}): the queue files the message under it, so the id in the
C{250 ... queued as} reply, in the C{Received} header and in every log line about the
message (received, delivered locally, queued, relayed, deferred, bounced) is the same.
C{sender} is the reverse-path without brackets (C{""} for the null sender),
C{recipients} are the forward-paths as the client gave them, C{data} is the complete
message with CRLF line ends (our C{Received} header on top). The Deferred fires (with
anything) once the message is durably queued, or fails: L{pymaild.errors.StoreFull}
becomes C{452 4.3.1}, anything else C{451 4.3.0}. The envelope carries no SMTPUTF8 or
BODY flag: the relay asks for SMTPUTF8 when an address or header is not ASCII, and for
8BITMIME when the data has bytes above 127.
"""

from __future__ import annotations

import collections
import email.utils
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from typing import Any, BinaryIO, Protocol

from twisted.cred.checkers import ANONYMOUS
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from zope.interface import implementer

from pymaild.address import Path, canonical, normaliseDomain
from pymaild.auth.penalty import Clock
from pymaild.errors import (
    AddressError,
    DatabaseUnavailable,
    StoreFull,
)
from pymaild.limits import inNetworks, parseNetworks
from pymaild.smtp import handoff
from pymaild.smtp.aliases import Aliases, AliasSource
from pymaild.smtp.checks import CheckChain, Envelope, Placement, SMTPReply
from pymaild.smtp.copies import LocalCopiesMixin, chainedFile
from pymaild.smtp.queuespool import newQueueId
from pymaild.smtp.resolver import Resolution, ResolutionCache, Resolver
from pymaild.smtp.srs import SRS
from pymaild.smtp.transaction import Recipient, Transaction
from pymaild.store.names import INBOX
from pymaild.threads import Runner

log = Logger()

#: More Received headers than this means a mail loop (Postfix's hopcount_limit).
MAX_HOPS = 50

_RECEIVED = re.compile(rb"^Received:", re.IGNORECASE | re.MULTILINE)

_HEADER_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
_HELO_SAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")



class OutboundQueue(Protocol):
    """What the delivery needs from the outbound queue (see the module docstring)."""

    def enqueue(
        self, sender: str, recipients: list[str], data: bytes | BinaryIO, qid: str
    ) -> defer.Deferred[Any]:
        """Queue C{data} for C{recipients} durably under id C{qid}; fire when it is on
        disk."""


@dataclass
class SessionInfo:
    """What the protocol tells the avatar about the SMTP session (for checks and headers).

    @ivar role: C{"mx"}, C{"submission"} or C{"lmtp"}.
    @ivar hostname: this server's name (Received C{by}).
    @ivar peerHost: the client's IP address (or C{"unix"}).
    @ivar helo: the HELO/EHLO argument as sent.
    @ivar esmtp: whether the client said EHLO.
    @ivar tls: e.g. C{"TLSv1.3 with cipher TLS_AES_256_GCM_SHA384"}, or None.
    @ivar user: the authenticated address, or None.
    """

    role: str = "mx"
    hostname: str = "localhost"
    peerHost: str = ""
    helo: str = ""
    esmtp: bool = False
    tls: str | None = None
    user: str | None = None


@implementer(IMessageSMTP)
class Message:
    """The message of one transaction, shared by all its recipients.

    The protocol feeds it dot-unstuffed lines without their CRLF (it has already
    refused bare CR/LF and enforced the size limit); they are kept in memory (the size
    limit bounds them) and stored at L{eomReceived}.
    """

    def __init__(self, delivery: Delivery, txn: Transaction) -> None:
        self.delivery = delivery
        self.txn = txn
        self._chunks: list[bytes] = []
        self._first = True
        self.size = 0

    def lineReceived(self, line: bytes) -> None:
        """Add one line of the message."""
        if self._first:
            self._first = False
            if line and not _HEADER_FIELD.match(line):
                # No header section: keep our trace headers out of the body's first line.
                self._chunks.append(b"\r\n")
        self._chunks.append(line)
        self._chunks.append(b"\r\n")
        self.size += len(line) + 2

    def dataReceived(self, chunk: bytes) -> None:
        """Add complete CRLF-terminated lines at once (the server's fast path)."""
        if self._first and chunk:
            self._first = False
            first = chunk[: chunk.find(b"\r\n")]
            if first and not _HEADER_FIELD.match(first):
                self._chunks.append(b"\r\n")
        self._chunks.append(chunk)
        self.size += len(chunk)

    def eomReceived(self) -> defer.Deferred[str]:
        """Store the message durably; fire with the queue id."""
        body = b"".join(self._chunks)
        self._chunks = []
        return self.delivery.commit(self.txn, body)

    def connectionLost(self) -> None:
        """Forget the message (the transfer failed or the client went away)."""
        self._chunks = []


@implementer(IMessageDelivery)
class Delivery:
    """The SMTP avatar of one session: anonymous (MX) or an authenticated user.

    The protocol owns the transaction (L{pymaild.smtp.transaction.Transaction}) and
    hands it to every step: L{validateFrom} gives it its id, L{validateTo} records where
    each recipient goes, L{open} makes the message that receives the body. The avatar
    keeps no transaction state of its own.

    @ivar user: the authenticated canonical address, or None for anonymous.
    @ivar session: the protocol's L{SessionInfo}, set after login.
    """

    def __init__(self, avatars: DeliveryAvatars, user: str | None) -> None:
        self.avatars = avatars
        self.user = user
        self.session = SessionInfo()

    def _received(self, txn: Transaction | None, recipients: Sequence[Any]) -> bytes:
        """The C{Received} header of C{txn} for C{recipients}, without the final CRLF."""
        s = self.session
        name = _HELO_SAFE.sub("?", s.helo)[:200] or "unknown"
        host = s.peerHost
        literal = f"[IPv6:{host}]" if ":" in host else f"[{host}]"
        proto = ("UTF8SMTP" if txn and txn.smtputf8 else "ESMTP") if s.esmtp else "SMTP"
        if s.tls:
            proto += "S"
        if s.user:
            proto += "A"
        lines = [f"Received: from {name} ({literal})"]
        if s.tls:
            lines.append(f"\t(using {s.tls})")
        if s.user:
            lines.append(f"\t(authenticated sender: {s.user})")
        qid = f" id {txn.id}" if txn else ""
        lines.append(f"\tby {s.hostname} (pymaild) with {proto}{qid}")
        date = self.avatars.dateNow()
        if len(recipients) == 1:
            lines.append(f"\tfor <{recipients[0]}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return "\r\n".join(lines).encode("utf-8")

    def validateFrom(self, txn: Transaction) -> defer.Deferred[Path]:
        """Accept C{txn}'s sender and give C{txn} its id, or fail with an L{SMTPReply}.

        C{txn.size} (the C{SIZE=} of MAIL FROM), if any, is what each local
        recipient's quota must have room for at RCPT.
        """
        origin = txn.sender
        txn.id = self.avatars.newId()
        if self.user is None:
            if self.session.role == "submission":
                return defer.fail(SMTPReply(530, "5.7.0 Authentication required"))
            # LMTP peers hand on mail another node (or the local MTA) already accepted.
            if (origin.domain and self.avatars.resolver.isLocalDomain(origin.domain)
                    and self.session.role != "lmtp"
                    and not self.avatars.isTrustedClient(self.session.peerHost)):
                log.info("{id}: refused unauthenticated local sender <{sender}>"
                         " from [{peer}]", id=txn.id, sender=origin.address,
                         peer=self.session.peerHost)
                return defer.fail(SMTPReply(
                    550, f"5.7.1 Sender address {origin} is in a local domain: local"
                         " senders must authenticate (use the submission port)"))
            return defer.succeed(origin)
        if origin.isNull:
            return defer.fail(SMTPReply(553, "5.7.1 Null sender not allowed after AUTH"))
        allowed = self.avatars.rateAllows(self.user)
        if isinstance(allowed, defer.Deferred):  # counted by the master process
            user = self.user
            return allowed.addCallback(
                lambda yes: self._owned(txn, origin, user) if yes else defer.fail(
                    SMTPReply(450, "4.7.1 Message rate limit exceeded, try later")))
        if not allowed:
            return defer.fail(SMTPReply(450, "4.7.1 Message rate limit exceeded, try later"))
        return self._owned(txn, origin, self.user)

    def _owned(self, txn: Transaction, origin: Path, user: str) -> defer.Deferred[Path]:
        """MAIL FROM after AUTH, within the rate: the sender must be C{user}'s."""
        d = self.avatars.runner.run(self.avatars.ownsAddress, user, origin.address)

        def checked(owned: bool) -> Path:
            if not owned:
                raise SMTPReply(553, f"5.7.1 Sender address {origin} not owned by {self.user}")
            return origin

        return d.addCallbacks(checked, self._temporary)

    def validateTo(self, txn: Transaction, user: Recipient) -> defer.Deferred[None]:
        """Accept C{user} into C{txn} (recording where it goes), or fail with an
        L{SMTPReply}."""
        resolver = self.avatars.resolver
        dest = user.dest
        if not dest.domain:  # bare <postmaster>
            address = f"{dest.local}@{resolver.primaryDomain()}"
        else:
            address = dest.address
        srs = self.avatars.srs
        if (srs is not None and dest.domain and dest.local.lower().startswith("srs0=")
                and resolver.isLocalDomain(dest.domain)):
            original = srs.reverse(address)
            if original is None or self.avatars.queue is None:
                return defer.fail(SMTPReply(550, f"5.1.1 <{address}>: Recipient address"
                                                 " rejected: not a valid SRS address"))
            txn.remote.append(original)
            return defer.succeed(None)
        if not resolver.isLocalDomain(dest.domain or resolver.primaryDomain()):
            if self.user is None:
                return defer.fail(SMTPReply(554, f"5.7.1 <{address}>: Relay access denied"))
            if self.avatars.queue is None:
                return defer.fail(SMTPReply(550, "5.7.1 Relaying not configured"))
            txn.remote.append(address)
            return defer.succeed(None)
        cache = self.avatars.resolutions
        hit = cache.cached(address)
        if hit is not None:
            d: defer.Deferred[Resolution] = defer.succeed(hit)
        else:
            d = self.avatars.runner.run(cache.resolve, address)

        def resolved(res: Resolution) -> Any:
            remote = res.remote
            if remote and self.avatars.queue is None:
                log.warn("alias {address} forwards to {remote} but no queue exists: dropped",
                         address=address, remote=remote)
                if not res.local:
                    raise SMTPReply(550, f"5.7.1 <{address}>: Forwarding not configured")
                remote = []
            if not res.local and not remote:
                raise SMTPReply(550, f"5.1.1 <{address}>: Recipient address rejected: "
                                     "User unknown")

            def accept(_: Any) -> None:
                for account in res.local:
                    txn.local.setdefault(account, address)
                txn.remote.extend(r for r in remote if r not in txn.remote)

            quotas = self.avatars.quotas
            if quotas is None or not res.local:
                return accept(None)
            # Without SIZE= the message is at least one byte: a full mailbox is refused.
            q = self.avatars.runner.run(self.avatars.quotaProblem, list(res.local),
                                        txn.size or 1, address)
            return q.addCallback(accept)

        return d.addCallbacks(resolved, self._temporary)

    # -- the rest -----------------------------------------------------------------------

    def _temporary(self, reason: Any) -> Any:
        """Pass L{SMTPReply} on; turn anything else into C{451 4.3.0} (logged)."""
        if reason.check(SMTPReply):
            return reason
        if reason.check(DatabaseUnavailable):
            log.warn("address lookup failed: {error}", error=reason.value)
        else:
            log.failure("address lookup failed", reason)
        raise SMTPReply(451, "4.3.0 Temporary lookup failure, try again later")

    def open(self, txn: Transaction) -> Message:
        """The message that receives C{txn}'s body (at DATA)."""
        return Message(self, txn)

    def commit(self, txn: Transaction, body: bytes) -> defer.Deferred[str]:
        """Deliver C{body} to the transaction's recipients; fire with the queue id.

        Order: the hop count, the C{From:} header check (authenticated users), the
        server's message checks (L{pymaild.smtp.checks}), the local copies, the queue.
        """
        avatars = self.avatars
        sender = txn.sender.address
        end = body.find(b"\r\n\r\n")
        headers = body if end < 0 else body[: end + 2]
        started = time.monotonic()

        def refused(reason: Any) -> Any:
            if avatars.metrics is not None:
                code = reason.value.code if reason.check(SMTPReply) else 451
                avatars.metrics.messageRefused(self.session.role, code,
                                               time.monotonic() - started)
            return reason

        if len(_RECEIVED.findall(headers)) >= MAX_HOPS:
            log.warn("{id}: too many Received headers, mail loop? refused", id=txn.id)
            return defer.fail(
                SMTPReply(554, "5.4.6 Too many hops, mail loop suspected")).addErrback(refused)
        user = self.user
        envelope = self.envelope(txn)
        d: defer.Deferred[Any] = defer.succeed(None)
        if user is not None and avatars.checkFromHeader:
            d.addCallback(lambda _: avatars.runner.run(avatars.fromHeaderProblem, user, headers))

            def checked(problem: str | None) -> None:
                if problem is not None:
                    log.warn("{id}: refused: {problem} (user={user} client=[{peer}])",
                             id=txn.id, problem=problem, user=user,
                             peer=self.session.peerHost)
                    raise SMTPReply(550, f"5.7.1 {problem}")

            d.addCallback(checked)
        if (avatars.elsewhere is not None and txn.local) or (
                avatars.isNode is not None and self.session.role == "lmtp"):
            d.addCallback(lambda _: avatars.runner.run(avatars.cluster, list(txn.local),
                                                       self.session.role,
                                                       self.session.peerHost))

            def placed(where: tuple[list[str], bool]) -> None:
                away, fromNode = where
                txn.away.extend(away)
                envelope.away = frozenset(away)
                envelope.fromNode = fromNode

            d.addCallback(placed)
        if avatars.checks:
            d.addCallback(lambda _: avatars.checks.run(envelope, body))
        else:
            d.addCallback(lambda _: body)
        final: list[bytes] = []

        def store(message: bytes) -> Any:
            final.append(message)
            here = [(a, r) for a, r in txn.local.items() if a not in txn.away]
            copies = []
            for account, rcpt in here:
                copies.append((account, self.traceHeader(txn, account, rcpt, len(here) > 1),
                               envelope.placementsFor(account)))
            return avatars.runner.run(avatars.storeCopies, copies, message)

        d.addCallback(store)

        forwarding = (user is None and self.session.role in ("mx", "lmtp"))

        def sealed(keys: list[tuple[str, str, str]]) -> Any:
            if not (txn.remote and forwarding and avatars.forwardSealer is not None):
                return keys
            s = defer.maybeDeferred(avatars.forwardSealer, final[0])

            def keep(message: bytes) -> Any:
                final.append(message)
                return keys

            def undo(reason: Any) -> Any:
                u = avatars.runner.run(avatars.removeCopies, keys)
                return u.addBoth(lambda _: reason)

            return s.addCallbacks(keep, undo)

        def queued(keys: list[tuple[str, str, str]]) -> Any:
            if not txn.remote:
                return keys
            trace = self._received(txn, txn.remote) + b"\r\n"
            envelopeSender = sender
            if forwarding and avatars.srs is not None and sender:
                domain = sender.rpartition("@")[2]
                if not avatars.resolver.isLocalDomain(domain):
                    envelopeSender = avatars.srs.forward(sender)
            queue = avatars.queue
            if queue is None:  # validateTo accepts no remote recipient without one
                raise SMTPReply(451, "4.3.0 Relaying not configured")
            q = defer.maybeDeferred(
                queue.enqueue, envelopeSender, list(txn.remote),
                chainedFile(trace, final[-1]), qid=txn.id,
            )

            def undo(reason: Any) -> Any:
                log.failure("queueing {id} failed; removing local copies", reason, id=txn.id)
                u = avatars.runner.run(avatars.removeCopies, keys)
                u.addErrback(lambda f: log.failure("undo of {id} failed", f, id=txn.id))
                return u.addCallback(lambda _: reason)

            return q.addCallbacks(lambda _: keys, undo)

        if txn.remote:
            d.addCallback(sealed)
            d.addCallback(queued)

        def handedOn(keys: list[tuple[str, str, str]]) -> Any:
            if not txn.away:
                return keys
            if avatars.queue is None:
                raise SMTPReply(451, "4.3.0 Mailbox on another node, but no queue")
            q = defer.Deferred.fromCoroutine(self._handOn(txn, envelope, final[0]))

            def undo(reason: Any) -> Any:
                log.failure("queueing {id} for its owner nodes failed; removing local"
                            " copies", reason, id=txn.id)
                u = avatars.runner.run(avatars.removeCopies, keys)
                u.addErrback(lambda f: log.failure("undo of {id} failed", f, id=txn.id))
                return u.addCallback(lambda _: reason)

            return q.addCallbacks(lambda _: keys, undo)

        if avatars.elsewhere is not None:
            d.addCallback(handedOn)

        def done(keys: list[tuple[str, str, str]]) -> str:
            if self.user is not None:
                avatars.recordSent(self.user)
            log.info(
                "{id}: from=<{sender}> size={size} local={local} remote={remote}"
                " user={user} client=[{peer}]",
                id=txn.id, sender=sender, size=len(final[0]), local=len(txn.local),
                remote=len(txn.remote), user=self.user or "-", peer=self.session.peerHost,
            )
            for account, folder, _ in keys:
                where = "mailbox" if folder == INBOX else f"folder {folder}"
                log.info("{id}: to=<{rcpt}> delivered to {where}", id=txn.id, rcpt=account,
                         where=where)
            for account in txn.away:
                if envelope.placementsFor(account):
                    log.info("{id}: to=<{rcpt}> queued for the node that owns it",
                             id=txn.id, rcpt=account)
            for account in txn.local:
                if not envelope.placementsFor(account):
                    log.info("{id}: to=<{rcpt}> discarded by the message checks",
                             id=txn.id, rcpt=account)
            if avatars.metrics is not None:
                avatars.metrics.messageAccepted(self.session.role, time.monotonic() - started,
                                                len(keys), bool(txn.remote))
            avatars.tellDelivered(keys)
            return txn.id

        return d.addCallbacks(done, refused)

    async def _handOn(self, txn: Transaction, envelope: Envelope, message: bytes) -> None:
        """Queue the copies for mailboxes other nodes own: one queued message per
        distinct placement the checks chose, carrying it (L{pymaild.smtp.handoff}) so the
        owner files it there; accounts the checks discarded get none."""
        queue = self.avatars.queue
        if queue is None:  # handedOn refuses the message before it gets here
            raise SMTPReply(451, "4.3.0 Mailbox on another node, but no queue")
        groups: dict[tuple[Placement, ...], list[str]] = {}
        for account in txn.away:
            groups.setdefault(tuple(envelope.placementsFor(account)), []).append(account)
        for placements, accounts in groups.items():
            if not placements:
                continue
            trace = self._received(txn, [txn.local[a] for a in accounts]) + b"\r\n"
            field = handoff.encode(list(placements)) or b""
            await queue.enqueue(
                txn.sender.address, accounts, chainedFile(trace, field, message),
                qid=self.avatars.newId())

    def traceHeader(self, txn: Transaction, account: str, rcpt: str, shared: bool) -> bytes:
        """The trace fields on top of C{account}'s stored copy (C{rcpt}: the RCPT
        address that reached it).

        C{Return-Path}, C{Delivered-To} and a C{Received ... for <rcpt>}; when the
        message is stored for several accounts (C{shared}), one file is linked into
        every mailbox, so its trace names none of them: C{Return-Path} and a
        C{Received} without C{for} (what Dovecot's LMTP writes when a transaction has
        more than one recipient). Bcc recipients stay hidden either way.
        """
        path = f"Return-Path: <{txn.sender.address}>\r\n".encode()
        if shared:
            return path + self._received(txn, []) + b"\r\n"
        return (path + f"Delivered-To: {account}\r\n".encode()
                + self._received(txn, [rcpt]) + b"\r\n")

    def envelope(self, txn: Transaction) -> Envelope:
        """The L{Envelope} the message checks see for C{txn} in this session."""
        s = self.session
        return Envelope(
            id=txn.id, sender=txn.sender.address, local=dict(txn.local),
            remote=list(txn.remote), role=s.role, client=s.peerHost, helo=s.helo,
            hostname=s.hostname, user=self.user, tls=s.tls,
        )

    def logout(self) -> None:
        """The session ended (the protocol drops any transaction it had)."""


class DeliveryAvatars(LocalCopiesMixin):
    """Builds SMTP avatars for the realm: C{avatars(avatarId) -> (Delivery, logout)}.

    @param store: the L{pymaild.store.MaildirStore}.
    @param directory: the L{pymaild.auth.directory.Directory}.
    @param diskRunner: where blocking disk work (lookups, delivery) runs.
    @param config: the server's L{pymaild.config.Config}.
    @param queue: the outbound queue (see the module docstring) or None: then only
        local recipients are accepted.
    @param clock: for rate limits and Received dates (default: the reactor).
    @param aliases: an L{Aliases} (default: one over C{config.smtp.aliases}).
    @param checks: the L{CheckChain} every message passes before it is stored or
        queued (default: none).
    @param metrics: a L{pymaild.metrics.Metrics} told of every accepted and refused
        message (None: not counted).
    @param srs: an L{pymaild.smtp.srs.SRS}: MX mail an alias forwards to another domain
        leaves with a rewritten envelope sender, and bounces to such addresses go back
        to the original sender (default: no rewriting).
    @param forwardSealer: C{message -> Deferred[bytes]}: adds an ARC set to the copy an
        alias forwards (default: none).
    @param quotas: a L{pymaild.auth.quota.Quotas}: a recipient over quota is refused at
        RCPT (C{452 4.2.2}; C{552 5.2.2} when the declared size exceeds the whole quota)
        and the message at the end of DATA when a copy would not fit (default: none).
    """

    def __init__(
        self,
        store: Any,
        directory: Any,
        diskRunner: Runner,
        config: Any,
        queue: OutboundQueue | None = None,
        clock: Clock | None = None,
        aliases: AliasSource | None = None,
        checks: CheckChain | None = None,
        metrics: Any = None,
        srs: SRS | None = None,
        forwardSealer: Callable[[bytes], Any] | None = None,
        quotas: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        self.store = store
        self.directory = directory
        self.runner = diskRunner
        self.config = config
        self.queue = queue
        self.clock: Clock = clock
        self.useAliases(aliases if aliases is not None else Aliases(config.smtp.aliases))
        self.maxPerHour = config.submission.max_messages_per_hour
        self.checkFromHeader = config.submission.check_from_header
        self.checks = checks if checks is not None else CheckChain()
        self.metrics = metrics
        self.srs = srs
        self.forwardSealer = forwardSealer
        self.quotas = quotas
        #: C{delivered(accounts, folder)} (reactor thread): new mail is in C{folder} of
        #: each of C{accounts} (the tap gives the IMAP sessions' registry, so sessions
        #: of this process with the folder open hear of it at once); None: nobody.
        self.delivered: Callable[[list[str], str], None] | None = None
        #: C{elsewhere(accounts) -> accounts} (blocking): those whose mailboxes another
        #: node of the cluster owns; None: every mailbox is here.
        self.elsewhere: Callable[[list[str]], list[str]] | None = None
        #: C{isNode(host) -> bool} (blocking): whether an LMTP client at C{host} is a
        #: node of the cluster, whose checks are trusted; None: no cluster.
        self.isNode: Callable[[str], bool] | None = None
        self.trustedNetworks = parseNetworks(config.auth.trusted_networks)
        self._sent: dict[str, collections.deque[float]] = {}
        #: In a worker process, the master's count of messages per hour
        #: (L{pymaild.anvil.RemoteRate}); None: counted here.
        self.remoteRate: Any = None
        self._date: tuple[int, str] = (-1, "")

    def useAliases(self, aliases: AliasSource) -> None:
        """Resolve recipients through C{aliases} from now on (at start, and when
        C{smtp.aliases} names another file on SIGHUP); forget what was resolved."""
        self.aliases = aliases
        self.resolver = Resolver(self.directory, aliases)
        passwdPath = getattr(getattr(self.directory, "passwd", None), "path", None)
        # Without a passwd file to watch, changes could not be noticed: never serve hits.
        self.resolutions = ResolutionCache(
            self.resolver, [passwdPath, aliases.path], maxAge=1.0 if passwdPath else 0.0
        )

    def __call__(self, avatarId: Any) -> tuple[Delivery, Callable[[], None]]:
        """The avatar for C{avatarId} (a canonical address, or C{ANONYMOUS})."""
        user = None if avatarId is ANONYMOUS else str(avatarId)
        delivery = Delivery(self, user)
        return delivery, delivery.logout

    def tellDelivered(self, keys: list[tuple[str, str, str]]) -> None:
        """Tell L{delivered} of the stored copies C{(account, folder, key)}: once per
        folder, with every account that got a copy there."""
        if self.delivered is None or not keys:
            return
        folders: dict[str, list[str]] = {}
        for account, folder, _ in keys:
            accounts = folders.setdefault(folder, [])
            if account not in accounts:
                accounts.append(account)
        for folder, accounts in folders.items():
            try:
                self.delivered(accounts, folder)
            except Exception:
                log.failure("telling of the delivery to {accounts} failed", accounts=accounts)

    def isTrustedClient(self, host: str) -> bool:
        """Whether C{host} is in C{auth.trusted_networks} (may use local senders on the
        MX without AUTH)."""
        return inNetworks(host, self.trustedNetworks)

    def newId(self) -> str:
        """A new transaction id: a queue id (L{newQueueId}), the one id of the message
        in the 250 reply, the Received header, the queue and the logs."""
        return newQueueId(self.clock.seconds())

    def dateNow(self) -> str:
        """The current time as an RFC 5322 date in local time (formatted once a second)."""
        now = self.clock.seconds()
        second = int(now)
        if self._date[0] != second:
            self._date = (second, email.utils.formatdate(second, localtime=True))
        return self._date[1]

    # -- rate limit ---------------------------------------------------------------------

    def _recent(self, user: str) -> int:
        """How many messages C{user} sent within the last hour (older ones forgotten)."""
        times = self._sent.get(user)
        if not times:
            return 0
        horizon = self.clock.seconds() - 3600
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._sent[user]
        return len(times)

    def rateAllows(self, user: str) -> bool | defer.Deferred[bool]:
        """Whether C{user} may start another message now (a Deferred when another
        process counts: L{remoteRate})."""
        if self.maxPerHour <= 0:
            return True
        if self.remoteRate is not None:
            return self.remoteRate.allows(user)
        return self._recent(user) < self.maxPerHour

    def recordSent(self, user: str) -> None:
        """Count one accepted message against C{user}'s hourly limit."""
        if self.maxPerHour > 0:
            if self.remoteRate is not None:
                self.remoteRate.sent(user)
                return
            self._sent.setdefault(user, collections.deque()).append(self.clock.seconds())

    # -- blocking work (run in the disk runner) -----------------------------------------

    def cluster(self, accounts: list[str], role: str, peer: str) -> tuple[list[str], bool]:
        """C{(the accounts another node owns, whether an LMTP peer is a cluster node)}
        (blocking: directory lookups)."""
        away = self.elsewhere(accounts) if self.elsewhere is not None and accounts else []
        fromNode = role == "lmtp" and self.isNode is not None and self.isNode(peer)
        return away, fromNode

    def ownsAddress(self, user: str, address: str) -> bool:
        """Whether C{user} may use C{address} as MAIL FROM (blocking).

        The account itself, a C{+tag} of it, or an address whose aliases reach it
        (without catch-alls) qualify.
        """
        try:
            key = canonical(address)
        except AddressError:
            return False
        if key == user or self.resolver._untagged(key) == user:
            return True
        domain = key.rpartition("@")[2]
        try:
            normaliseDomain(domain)
        except AddressError:
            return False
        if not self.resolver.isLocalDomain(domain):
            return False
        return user in self.resolver.resolve(key, catchAll=False).local

    def fromHeaderProblem(self, user: str, headers: bytes) -> str | None:
        """Why C{user} may not send a message with this header section, or None
        (blocking: alias lookups).

        Every address in every C{From:} field (parsed with the C{email} package's header
        parser and C{getaddresses}) must be one L{ownsAddress} grants C{user}. A
        message without a C{From:} field, or whose fields hold no address or something
        that is not an address, is refused: RFC 5322 section 3.6 requires one.
        """
        text = headers.decode("utf-8", "replace")
        fields = [str(f) for f in HeaderParser().parsestr(text).get_all("From") or []]
        if not fields:
            return "Message has no From: header (RFC 5322 requires one)"
        addresses = [a for name, a in email.utils.getaddresses(fields) if name or a]
        if not addresses or any("@" not in a for a in addresses):
            return "Message From: header could not be parsed"
        for address in addresses:
            if not self.ownsAddress(user, address):
                return f"From: header address <{address}> not owned by {user}"
        return None

__all__ = [
    "Delivery",
    "DeliveryAvatars",
    "Message",
    "Recipient",
    "Resolution",
    "ResolutionCache",
    "Resolver",
    "SMTPReply",
    "SessionInfo",
    "StoreFull",
    "chainedFile",
]
