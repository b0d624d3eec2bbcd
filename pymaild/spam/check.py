"""The spam check: rspamd's verdict applied at the end of DATA (a L{MessageCheck}).

On the MX role every message is scanned (unless all its recipients opted out). rspamd's
action decides, per local recipient, after that recipient's domain offset
(C{spam.threshold_offsets}: the offset is added to every action threshold, so the same
score can mean C{add header} for one domain and C{no action} for another):

- C{reject} → C{550 5.7.1} with rspamd's message; C{soft reject} and C{greylist} →
  C{451 4.7.1}. The reply to DATA is one for all recipients: the mildest of their
  actions counts (a message one recipient tolerates is delivered to all, and lands in
  Junk for the others);
- C{add header} / C{rewrite subject} (or worse, for a recipient outvoted as above) →
  the copy goes to the recipient's Junk folder (made, with C{\\Junk}, if missing),
  the message gets C{X-Spam: Yes} and C{X-Spam-Status: Yes, ...}, and the subject
  rspamd rewrote;
- C{no action} → INBOX, with C{X-Spam-Status: No, ...}.

Opted-out accounts (C{spam.opt_out}) count as C{no action} and always get INBOX.
In a cluster, a copy for a mailbox another node owns is placed in C{Junk} without
touching the mailbox here (the owner, told by L{pymaild.smtp.handoff}, makes the
folder), and mail arriving over LMTP from a cluster node is not scanned again: the MX
that took it did. Any
C{X-Spam}, C{X-Spam-Status} or C{X-Spam-Score} field the sender put in is removed, so
only this server's verdict is seen.

On submission (C{spam.submission}) rspamd's C{reject} is C{554 5.7.1} and a warning
naming the user (a compromised account); C{soft reject} is C{451 4.7.1}; anything else
is sent unchanged.

When rspamd cannot answer (down, slow, HTTP error, garbage, reset) or the message is
larger than C{spam.max_size}, the role's failure policy applies: C{tempfail}
(C{451 4.7.1}, the client retries: nothing is lost) or C{accept} (delivered with
C{X-Spam-Status: unchecked}).

The verdict is left in C{envelope.verdicts["spam"]} (the L{ScanResult}) and
C{envelope.verdicts["spam-actions"]} (account → action) for the checks after this one.
Authentication results a check before this one left in
C{envelope.verdicts["authentication-results"]} (the value of an
C{Authentication-Results} field) are put on top of the copy rspamd scans.
"""

from __future__ import annotations

import email.header
import ipaddress
import re
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from pymaild.config import SpamConfig
from pymaild.smtp.checks import Envelope, Placement, SMTPReply
from pymaild.spam.counters import SpamCounters
from pymaild.spam.junk import JUNK
from pymaild.spam.rspamd import ACTIONS, RspamdClient, RspamdError, ScanResult

log = Logger()

JUNK_ACTIONS = frozenset({"add header", "rewrite subject", "soft reject", "reject"})
OWN_FIELDS = frozenset({b"x-spam", b"x-spam-status", b"x-spam-score"})
THRESHOLDS_MAX_AGE = 300.0
_UNSAFE = re.compile(r"[^\x20-\x7e]+")


def severity(action: str) -> int:
    """How severe C{action} is (its place in L{ACTIONS})."""
    return ACTIONS.index(action)


def actionFor(score: float, thresholds: dict[str, float]) -> str:
    """The action rspamd's thresholds give C{score}: the most severe one reached."""
    reached = [a for a, limit in thresholds.items() if score >= limit]
    return max(reached, key=severity) if reached else "no action"


def replyText(text: str, default: str) -> str:
    """rspamd's message made safe for one SMTP reply line (printable ASCII, bounded)."""
    text = _UNSAFE.sub(" ", text).strip()[:200]
    return text or default


def editHeaders(message: bytes, add: list[bytes], subject: str | None = None) -> bytes:
    """C{message} without the spam fields a sender may forge, with C{add} on top and
    the C{Subject} replaced by C{subject} (when given)."""
    end = message.find(b"\r\n\r\n")
    head, rest = (message, b"") if end < 0 else (message[: end + 2], message[end + 2:])
    fields: list[list[bytes]] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept: list[bytes] = []
    for lines in fields:
        name = lines[0].split(b":", 1)[0].strip().lower()
        if name in OWN_FIELDS:
            continue
        if subject is not None and name == b"subject":
            lines = [b"Subject: " + _encodeSubject(subject)]
        kept.extend(lines)
    out = b"".join(line + b"\r\n" for line in add + kept)
    return out + rest


def _encodeSubject(subject: str) -> bytes:
    """A subject value as header bytes (RFC 2047 when it is not ASCII)."""
    subject = subject.replace("\r", " ").replace("\n", " ")
    if subject.isascii():
        return subject.encode("ascii")
    return email.header.Header(subject, "utf-8").encode().encode("ascii")


def requestHeaders(envelope: Envelope) -> dict[str, list[str]]:
    """The rspamd request headers for C{envelope}: C{From}, C{Rcpt} (one per
    recipient), C{Deliver-To} (a single local recipient), C{IP}, C{Helo}, C{User},
    C{Queue-Id}, C{MTA-Name} (this server) and the C{TLS-Version}/C{TLS-Cipher} of the
    session.

    No C{Hostname} is sent: pymaild does not look up the client's reverse DNS name, and
    without the header rspamd resolves the client's PTR itself (its C{once_received}
    module) rather than treating the name as missing.
    """
    headers: dict[str, list[str]] = {}
    if envelope.sender:
        headers["From"] = [envelope.sender]
    headers["Rcpt"] = [*envelope.local.values(), *envelope.remote]
    if len(envelope.local) == 1:
        headers["Deliver-To"] = list(envelope.local)
    try:
        ipaddress.ip_address(envelope.client)
        headers["IP"] = [envelope.client]
    except ValueError:
        pass
    if envelope.helo:
        headers["Helo"] = [envelope.helo]
    if envelope.user:
        headers["User"] = [envelope.user]
    headers["Queue-Id"] = [envelope.id]
    headers["MTA-Name"] = [envelope.hostname]
    if envelope.tls:
        version, _, cipher = envelope.tls.partition(" with cipher ")
        headers["TLS-Version"] = [version.strip()]
        if cipher:
            headers["TLS-Cipher"] = [cipher.strip()]
    for values in headers.values():
        values[:] = [_UNSAFE.sub(" ", v)[:1000] for v in values]
    return headers


class SpamCheck:
    """The L{pymaild.smtp.checks.MessageCheck} that asks rspamd (see the module doc).

    @param client: the L{RspamdClient}.
    @param config: the C{[spam]} section.
    @param counters: where what was done is counted.
    @param ensureJunk: C{account → Deferred[folder]} making the account's Junk folder
        (through the disk runner) and firing with the folder to deliver into.
    @param clock: for the age of the cached thresholds.
    """

    def __init__(self, client: RspamdClient, config: SpamConfig, counters: SpamCounters,
                 ensureJunk: Callable[[str], defer.Deferred[str]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.counters = counters
        self.ensureJunk = ensureJunk
        self.clock = clock
        self._thresholds: tuple[float, dict[str, float]] | None = None
        self.configure(config)

    def configure(self, config: SpamConfig) -> None:
        """Take a C{[spam]} section's policy (at start and on SIGHUP): the failure
        policies, C{max_size}, C{opt_out} and C{threshold_offsets}."""
        self.config = config
        self.optOut = frozenset(a.casefold() for a in config.opt_out)
        self.offsets = config.offsets()

    # -- what applies to whom ----------------------------------------------------
    def optedOut(self, account: str) -> bool:
        """Whether C{account}'s mail is not filtered."""
        return account.casefold() in self.optOut

    def offsetFor(self, account: str) -> float:
        """The threshold offset of C{account}'s domain (0 when none is configured)."""
        return self.offsets.get(account.rpartition("@")[2].casefold(), 0.0)

    def thresholds(self) -> defer.Deferred[dict[str, float] | None]:
        """rspamd's action thresholds (controller C{/actions}), cached a few minutes;
        None when they cannot be had (then rspamd's own action is used)."""
        now = self.clock()
        if self._thresholds is not None and now - self._thresholds[0] < THRESHOLDS_MAX_AGE:
            return defer.succeed(self._thresholds[1])

        def got(values: dict[str, float]) -> dict[str, float]:
            self._thresholds = (now, values)
            return values

        def failed(reason: Any) -> None:
            log.warn("spam: rspamd's action thresholds are not available ({why}); domain"
                     " offsets are not applied", why=reason.getErrorMessage())
            return None

        return self.client.actions().addCallbacks(got, failed)

    @staticmethod
    def effective(result: ScanResult, offset: float,
                  thresholds: dict[str, float] | None) -> str:
        """rspamd's action for a recipient whose thresholds are C{offset} higher.

        A forced action (GTUBE, a rule's passthrough: not what the score gives) is
        kept as it is.
        """
        if not offset or not thresholds or result.skipped:
            return result.action
        if actionFor(result.score, thresholds) != result.action:
            return result.action
        return actionFor(result.score - offset, thresholds)

    # -- the check -----------------------------------------------------------------
    def check(self, envelope: Envelope, message: bytes) -> defer.Deferred[bytes] | bytes:
        """Scan C{message} and act on the verdict (see the module docstring)."""
        if envelope.role == "submission":
            if not self.config.submission:
                return message
            policy = self.config.submission_failure
        elif envelope.role == "lmtp" and envelope.fromNode:
            return message  # the cluster node whose MX took it scanned it
        else:
            if envelope.local and not envelope.remote and all(
                    self.optedOut(a) for a in envelope.local):
                self.counters.add("opted out")
                return message
            policy = self.config.mx_failure
        if len(message) > self.config.max_size:
            return self._unavailable(envelope, message, policy,
                                     f"message of {len(message)} bytes is larger than"
                                     f" spam.max_size ({self.config.max_size})")
        d = self.client.check(self._scanned(envelope, message), requestHeaders(envelope))
        if envelope.role == "submission":
            d.addCallback(lambda result: self._submitted(envelope, message, result))
        else:
            d.addCallback(lambda result: self._received(envelope, message, result))

        def failed(reason: Any) -> Any:
            reason.trap(RspamdError)
            return self._unavailable(envelope, message, policy, reason.value.reason)

        return d.addErrback(failed)

    @staticmethod
    def _scanned(envelope: Envelope, message: bytes) -> bytes:
        """The copy rspamd scans: the message, with the authentication results on top."""
        results = envelope.verdicts.get("authentication-results")
        if isinstance(results, str) and results:
            field = _UNSAFE.sub(" ", results)
            return b"Authentication-Results: " + field.encode("ascii") + b"\r\n" + message
        return message

    def _unavailable(self, envelope: Envelope, message: bytes, policy: str,
                     why: str) -> bytes:
        """The failure policy: tempfail, or accept with C{X-Spam-Status: unchecked}."""
        self.counters.add("unchecked")
        log.warn("{id}: spam filter unavailable ({why}): {what}", id=envelope.id, why=why,
                 what="temporary failure" if policy == "tempfail" else "accepted unchecked")
        envelope.verdicts["spam"] = None
        if policy == "tempfail":
            raise SMTPReply(451, "4.7.1 Spam filter unavailable, try again later")
        if envelope.role == "submission":
            return message
        return editHeaders(message, [b"X-Spam-Status: unchecked"])

    def _submitted(self, envelope: Envelope, message: bytes, result: ScanResult) -> bytes:
        """Act on rspamd's verdict on a message a user submitted."""
        self.counters.add(f"submission {result.action}")
        envelope.verdicts["spam"] = result
        if result.action == "reject":
            log.warn("{id}: submission by {user} refused as spam (score {score:.2f},"
                     " {symbols}): is the account compromised?", id=envelope.id,
                     user=envelope.user or "-", score=result.score,
                     symbols=",".join(result.symbols) or "-")
            raise SMTPReply(554, "5.7.1 " + replyText(result.message,
                                                      "Message refused as spam"))
        if result.action == "soft reject":
            raise SMTPReply(451, "4.7.1 " + replyText(result.message, "Try again later"))
        return message

    @defer.inlineCallbacks
    def _received(self, envelope: Envelope, message: bytes, result: ScanResult) -> Any:
        """Act on rspamd's verdict on a message for the MX role."""
        thresholds = None
        if any(self.offsetFor(a) for a in envelope.local):
            thresholds = yield self.thresholds()
        actions = {
            account: "no action" if self.optedOut(account)
            else self.effective(result, self.offsetFor(account), thresholds)
            for account in envelope.local
        }
        levels = list(actions.values()) + ([result.action] if envelope.remote else [])
        overall = min(levels or [result.action], key=severity)
        envelope.verdicts["spam"] = result
        envelope.verdicts["spam-actions"] = actions
        self.counters.add(overall)
        detail = f"score={result.score:.2f} required={result.required:.2f}"
        if overall == "reject":
            log.info("{id}: refused as spam ({detail} {symbols})", id=envelope.id,
                     detail=detail, symbols=",".join(result.symbols) or "-")
            raise SMTPReply(550, "5.7.1 " + replyText(result.message,
                                                      "Message refused as spam"))
        if overall in ("soft reject", "greylist"):
            log.info("{id}: {action} by the spam filter ({detail})", id=envelope.id,
                     action=overall, detail=detail)
            raise SMTPReply(451, "4.7.1 " + replyText(result.message, "Try again later"))
        junk = [a for a, action in actions.items() if action in JUNK_ACTIONS]
        for account in junk:
            if account in envelope.away:
                # Made by the owner node, which files the copy there (handed on).
                envelope.placements[account] = [
                    Placement(JUNK, create=True) for _ in envelope.placementsFor(account)]
            else:
                folder = yield self.ensureJunk(account)
                envelope.placements[account] = [
                    Placement(folder) for _ in envelope.placementsFor(account)]
            self.counters.add("junked")
        if junk:
            worst = max((actions[a] for a in junk), key=severity)
            add = [b"X-Spam: Yes",
                   f"X-Spam-Status: Yes, {detail} action={worst}".encode("ascii")]
            rewrite = result.subject if result.action == "rewrite subject" else None
            return editHeaders(message, add, rewrite)
        return editHeaders(message, [f"X-Spam-Status: No, {detail}".encode("ascii")])


__all__ = ["SpamCheck", "actionFor", "editHeaders", "requestHeaders"]
