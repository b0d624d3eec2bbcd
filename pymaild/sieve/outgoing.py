"""Mail a Sieve script sends: redirected copies and vacation replies.

L{Outgoing.send} is the one place where a message produced for a script leaves pymaild:
it hands the bytes to the outbound queue (C{queue.enqueue}); nothing else in the Sieve
room talks to the queue. A redirected copy leaves with its envelope sender rewritten by
SRS (L{pymaild.smtp.srs}), so SPF passes at the next hop and a bounce finds its way
back; vacation replies and rejection notices are DKIM-signed like any mail the users
submit (L{pymaild.mailauth.signer.DKIMSigner}, in the CPU runner), when the tap gives
them.

Redirect (RFC 5228 section 4.2): the message goes on unchanged under its original
envelope sender, with a C{Delivered-To:} of the redirecting account on top, so a loop
through other servers comes back with it: a message that already carries
C{Delivered-To:} of the account is not redirected again (the copy stays in INBOX).

Vacation (RFC 5230 section 4.5, RFC 3834 section 2): no reply to the null sender, to
C{MAILER-DAEMON}, C{owner-*}, C{*-request} or C{LISTSERV} senders, to messages with an
C{Auto-Submitted:} other than C{no}, a C{Precedence:} of C{bulk}, C{list} or C{junk},
any C{List-*:} field, or C{X-Spam-Flag: YES}, to the user's own addresses, nor when none
of the user's addresses is in C{To:}, C{Cc:}, C{Bcc:}, C{Resent-To:}, C{Resent-Cc:} or
C{Resent-Bcc:} (the user's addresses: the account, the address the message reached
it at, every alias address of the aliases file that reaches it, and C{:addresses});
at most one reply per sender and handle per period, remembered in
C{<home>/.pymaild.vacation} (sender and handle hashed). The reply comes from the null
sender, with C{Auto-Submitted: auto-replied}, C{In-Reply-To:} and C{References:}.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from email.header import Header
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from pymaild.files import writeFileAtomic
from pymaild.sieve.actions import Vacation
from pymaild.sieve.message import MessageView, addresses, decodeWords

log = Logger()

VACATION_FILE = ".pymaild.vacation"
#: How many senders a user's vacation file remembers at most (the oldest go first).
MAX_TRACKED = 10000
_LIST_FIELD = re.compile(r"list-[a-z]+\Z")
_BAD_SENDER = re.compile(r"(?i)\A(mailer-daemon|owner-.*|.*-request|listserv|majordomo)\Z")


class Outgoing:
    """Sends what scripts decide, through the outbound queue.

    @param queue: the outbound queue (C{enqueue(sender, recipients, data, qid)}).
    @param newId: makes a queue id for each outgoing message.
    @param hostname: this server's name (Message-IDs of replies).
    @param clock: POSIX seconds (tests pass a fake).
    @param srs: rewrites a redirect's envelope sender (C{forward(sender) -> str}), or None.
    @param signer: DKIM-signs replies (C{sign(message) -> bytes}, blocking), or None.
    @param runner: runs the signer off the reactor (needed with C{signer}).
    """

    def __init__(self, queue: Any, newId: Callable[[], str], hostname: str,
                 clock: Callable[[], float] = time.time, srs: Any = None,
                 signer: Any = None, runner: Any = None) -> None:
        self.queue = queue
        self.newId = newId
        self.hostname = hostname
        self.clock = clock
        self.srs = srs
        self.signer = signer
        self.runner = runner

    def send(self, kind: str, sender: str, recipients: list[str],
             data: bytes) -> defer.Deferred[Any]:
        """Queue one message a script produced (C{kind}: C{"redirect"}, C{"reject"} or
        C{"vacation"}): a redirect under its SRS sender, the others signed."""
        qid = self.newId()
        if kind == "redirect" and self.srs is not None and sender:
            sender = self.srs.forward(sender)
        log.info("{qid}: sieve {kind} from=<{sender}> to={rcpts}", qid=qid, kind=kind,
                 sender=sender, rcpts=",".join(recipients))
        if kind != "redirect" and self.signer is not None and self.runner is not None:
            d = self.runner.run(self.signer.sign, data)
        else:
            d = defer.succeed(data)
        return d.addCallback(
            lambda signed: self.queue.enqueue(sender, recipients, signed, qid=qid))

    # -- redirect -------------------------------------------------------------------------

    @staticmethod
    def isLoop(message: bytes, account: str) -> bool:
        """Whether C{message} already passed through C{account} (a C{Delivered-To:}
        naming it)."""
        seen = [a.lower() for a in MessageView(message).header("delivered-to")]
        return account.lower() in seen

    def redirect(self, account: str, sender: str, address: str,
                 message: bytes) -> defer.Deferred[Any]:
        """Send C{message} on to C{address} from C{sender}, marked as delivered to
        C{account}."""
        data = f"Delivered-To: {account}\r\n".encode() + message
        return self.send("redirect", sender, [address], data)

    # -- reject ---------------------------------------------------------------------------

    def rejectionMessage(self, account: str, sender: str, reason: str,
                         message: bytes) -> bytes:
        """The MDN that tells the sender a message was refused (RFC 5429 section 2.1.1,
        RFC 8098): the reason, the disposition, and the original header section."""
        view = MessageView(message)
        boundary = f"pymaild-reject-{hashlib.sha256(message).hexdigest()[:16]}"
        subjects = view.header("subject")
        subject = "Rejected: " + (decodeWords(subjects[0]) if subjects else "your message")
        if not subject.isascii():
            subject = Header(subject, "utf-8").encode()
        msgid = view.raw("message-id")
        head = [
            f"From: <{account}>",
            f"To: <{sender}>",
            f"Subject: {subject}",
            f"Date: {email.utils.formatdate(self.clock(), localtime=True)}",
            f"Message-ID: {email.utils.make_msgid('reject', domain=self.hostname)}",
            "Auto-Submitted: auto-replied (rejected)",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type=disposition-notification;'
            f' boundary="{boundary}"',
        ]
        if msgid:
            head.append(f"In-Reply-To: {msgid[0].strip()}")
        text = reason.replace("\r\n", "\n").replace("\n", "\r\n").rstrip("\r\n")
        mdn = [f"Reporting-UA: {self.hostname}; pymaild", f"Final-Recipient: rfc822; {account}",
               "Disposition: automatic-action/MDN-sent-automatically; deleted"]
        if msgid:
            mdn.append(f"Original-Message-ID: {msgid[0].strip()}")
        parts = [
            "\r\n".join(head), "", f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "",
            text, f"--{boundary}", "Content-Type: message/disposition-notification", "",
            "\r\n".join(mdn), f"--{boundary}", "Content-Type: text/rfc822-headers", "",
        ]
        return ("\r\n".join(parts) + "\r\n").encode() + view.headerBytes.rstrip(b"\r\n") + \
            f"\r\n--{boundary}--\r\n".encode()

    def reject(self, account: str, sender: str, reason: str,
               message: bytes) -> defer.Deferred[Any]:
        """Tell C{sender} that C{account} refused the message (from the null sender)."""
        return self.send("reject", "", [sender],
                         self.rejectionMessage(account, sender, reason, message))

    # -- vacation -------------------------------------------------------------------------

    def vacationRefusal(self, vacation: Vacation, account: str, sender: str,
                        view: MessageView, own: list[str]) -> str | None:
        """Why no vacation reply may go to this message, or None (RFC 3834, 5230)."""
        if not sender:
            return "null sender"
        local = sender.rpartition("@")[0]
        if _BAD_SENDER.match(local):
            return f"sender {sender} is a system or list address"
        mine = {a.lower() for a in [account, *own, *vacation.addresses]}
        if sender.lower() in mine:
            return "sender is the user"
        auto = [v.lower() for v in view.header("auto-submitted")]
        if any(v.split(";")[0].strip() != "no" for v in auto):
            return "message is auto-submitted"
        if any(v.lower() in ("bulk", "list", "junk") for v in view.header("precedence")):
            return "message is bulk or list mail"
        if any(_LIST_FIELD.match(name) for name, _ in view.fields()):
            return "message is list mail"
        if any(v.strip().lower() == "yes" for v in view.header("x-spam-flag")):
            return "message is spam"
        headers = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
        listed = {a.lower() for h in headers for a in addresses(view.raw(h))}
        if not listed & mine:
            return "user not addressed in To/Cc/Bcc"
        return None

    def vacationDue(self, home: str, sender: str, handle: str, seconds: int) -> bool:
        """Whether a reply to C{sender} for C{handle} is due now; if so, it is recorded
        (blocking: reads and rewrites the user's vacation file)."""
        path = os.path.join(home, VACATION_FILE)
        now = self.clock()
        try:
            with open(path, encoding="utf-8") as f:
                seen = json.load(f)
            if not isinstance(seen, dict):
                seen = {}
        except (FileNotFoundError, ValueError):
            seen = {}
        key = hashlib.sha256(f"{sender.lower()}\0{handle}".encode()).hexdigest()
        until = seen.get(key)
        if isinstance(until, (int, float)) and until > now:
            return False
        seen = {k: v for k, v in seen.items() if isinstance(v, (int, float)) and v > now}
        seen[key] = now + seconds
        if len(seen) > MAX_TRACKED:
            seen = dict(sorted(seen.items(), key=lambda kv: kv[1])[-MAX_TRACKED:])
        writeFileAtomic(path, json.dumps(seen).encode())
        return True

    def vacationMessage(self, vacation: Vacation, account: str, sender: str,
                        view: MessageView) -> bytes:
        """The reply (RFC 5230 section 5)."""
        subjects = view.header("subject")
        subject = vacation.subject
        if subject is None:
            subject = "Auto: " + (decodeWords(subjects[0]) if subjects else "")
        fromAddress = vacation.fromAddress or account
        msgid = view.raw("message-id")
        refs = view.raw("references")
        lines = [
            f"From: {fromAddress}",
            f"To: <{sender}>",
            f"Subject: {Header(subject, 'utf-8').encode() if not subject.isascii() else subject}",
            f"Date: {email.utils.formatdate(self.clock(), localtime=True)}",
            f"Message-ID: {email.utils.make_msgid('vacation', domain=self.hostname)}",
            "Auto-Submitted: auto-replied (vacation)",
            "Precedence: bulk",
        ]
        if msgid:
            lines.append(f"In-Reply-To: {msgid[0].strip()}")
            lines.append(f"References: {(refs[0].strip() + ' ') if refs else ''}"
                         f"{msgid[0].strip()}")
        body = vacation.reason.replace("\r\n", "\n").replace("\n", "\r\n")
        if vacation.mime:
            return ("\r\n".join(lines) + "\r\nMIME-Version: 1.0\r\n").encode() + \
                body.encode("utf-8")
        lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
                  "Content-Transfer-Encoding: 8bit"]
        return ("\r\n".join(lines) + "\r\n\r\n" + body.rstrip("\r\n") + "\r\n").encode()

    def vacation(self, vacation: Vacation, account: str, sender: str,
                 message: bytes) -> defer.Deferred[Any]:
        """Send the reply (the checks and the period were applied by the caller)."""
        data = self.vacationMessage(vacation, account, sender, MessageView(message))
        return self.send("vacation", "", [sender], data)


__all__ = ["Outgoing", "VACATION_FILE"]
