"""Delivery status notifications: RFC 3464 bounces and delay warnings.

A DSN is a ``multipart/report; report-type=delivery-status`` message with three parts:
a human-readable explanation, the machine-readable ``message/delivery-status`` fields
(one per-message block, then one block per recipient: ``Final-Recipient``, ``Action``,
``Status``, ``Remote-MTA``, ``Diagnostic-Code``...), and the headers of the original
message as ``text/rfc822-headers``. When an address or the original headers are not
ASCII, the RFC 6533 forms are used instead (``message/global-delivery-status``,
``utf-8`` address type, ``message/global-headers``).

Everything here is pure: the queue reads the original headers from disk (through its
Runner), builds the notification with L{buildDSN} and queues it from the null sender.
The output uses CRLF line ends, as the store and the SMTP client expect.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

FAILED = "failed"
DELAYED = "delayed"

HEADER_LIMIT = 65536
"""At most this many bytes of the original header block are returned in a DSN."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class RecipientReport:
    """What a DSN says about one recipient.

    @ivar address: the recipient address as it was given to the queue.
    @ivar action: L{FAILED} or L{DELAYED}.
    @ivar status: the RFC 3463 enhanced status code, e.g. C{"5.1.1"}.
    @ivar diagnostic: the remote reply (C{"550 5.1.1 No such user"}) or our own text.
    @ivar diagnosticType: C{"smtp"} when C{diagnostic} is a server reply, else
        C{"x-pymaild"} for a finding of our own (DNS error, refused connection...).
    @ivar remoteMta: the host name of the server that gave the reply, if any.
    @ivar lastAttempt: when the last delivery attempt happened (POSIX time), if any.
    @ivar willRetryUntil: for delay warnings, when the queue gives up (POSIX time).
    """

    address: str
    action: str
    status: str
    diagnostic: str
    diagnosticType: str = "smtp"
    remoteMta: str = ""
    lastAttempt: float | None = None
    willRetryUntil: float | None = None


def originalHeaders(message: bytes, limit: int = HEADER_LIMIT) -> bytes:
    """The header block of C{message} (without the empty line), CRLF-terminated.

    The block is cut at C{limit} bytes, on a line end when one is available, so a huge
    header cannot make a huge bounce.
    """
    data = message[: limit + 4].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if data.startswith(b"\n"):
        return b""
    end = data.find(b"\n\n")
    block = (data if end == -1 else data[: end + 1]).rstrip(b"\n")
    if not block:
        return b""
    out = block.replace(b"\n", b"\r\n") + b"\r\n"
    if len(out) > limit:
        out = out[:limit]
        cut = out.rfind(b"\r\n")
        out = out[: cut + 2] if cut > 0 else out[: limit - 2] + b"\r\n"
    return out


def sanitise(text: str) -> str:
    """One line of text without control characters (CR, LF, TAB... become one space)."""
    return _CONTROL.sub(" ", text).strip()


def fold(name: str, value: str, width: int = 78) -> str:
    """A header field C{name: value} folded at spaces onto CRLF+space continuation lines."""
    words = value.split(" ")
    lines: list[str] = []
    current = f"{name}: "
    for word in words:
        if len(current) + len(word) > width and current.strip() and not current.endswith(": "):
            lines.append(current.rstrip(" "))
            current = " "
        current += word + " "
    lines.append(current.rstrip(" "))
    return "\r\n".join(lines)


def _date(when: float) -> str:
    """An RFC 5322 date for POSIX time C{when}."""
    return email.utils.formatdate(when, localtime=False)


def _addressType(address: str) -> str:
    """The RFC 3464/6533 address-type prefix for C{address}."""
    return "rfc822" if address.isascii() else "utf-8"


def _status(report: RecipientReport) -> str:
    """A valid enhanced status code for the report (falls back on the action's class)."""
    if _ENHANCED.match(report.status):
        return report.status
    return "5.0.0" if report.action == FAILED else "4.0.0"


def _explain(report: RecipientReport) -> str:
    """One human-readable paragraph about one recipient."""
    where = f"host {report.remoteMta} said: " if report.remoteMta else ""
    return f"<{report.address}>: {where}{sanitise(report.diagnostic)}"


def buildDSN(
    *,
    reportingMTA: str,
    sender: str,
    recipients: Sequence[RecipientReport],
    headers: bytes,
    arrival: float,
    now: float,
    queueId: str = "",
) -> bytes:
    """Build the complete DSN message (CRLF line ends) to send to C{sender}.

    All reports must share one action: a bounce (L{FAILED}) or a delay warning
    (L{DELAYED}). C{headers} is the original header block (see L{originalHeaders}).
    The caller sends the result from the null sender C{<>}; it carries
    C{Auto-Submitted: auto-replied} so that auto-responders leave it alone.

    @raise ValueError: no recipients, or mixed actions.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient report")
    actions = {r.action for r in recipients}
    if len(actions) != 1 or not actions <= {FAILED, DELAYED}:
        raise ValueError(f"a DSN reports one action, got {sorted(actions)}")
    action = actions.pop()
    boundary = f"=_pymaild_{secrets.token_hex(12)}"
    international = (
        not sender.isascii()
        or any(not r.address.isascii() or not r.diagnostic.isascii() for r in recipients)
        or not headers.isascii()
    )
    if action == FAILED:
        subject = "Undelivered Mail Returned to Sender"
        intro = (
            f"This is the mail system at host {reportingMTA}.\r\n\r\n"
            "I'm sorry to have to inform you that your message could not\r\n"
            "be delivered to one or more recipients. It's attached below.\r\n\r\n"
            "The mail system\r\n"
        )
    else:
        subject = "Delayed Mail (still being retried)"
        until = recipients[0].willRetryUntil
        retry = f" until {_date(until)}" if until is not None else ""
        intro = (
            f"This is the mail system at host {reportingMTA}.\r\n\r\n"
            "####################################################################\r\n"
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n"
            "####################################################################\r\n\r\n"
            f"Your message could not be delivered yet. The mail system will keep\r\n"
            f"trying{retry}.\r\n\r\n"
            "The mail system\r\n"
        )
    human = intro + "".join(f"\r\n{_explain(r)}\r\n" for r in recipients)

    perMessage = [f"Reporting-MTA: dns; {reportingMTA}"]
    if queueId:
        perMessage.append(f"X-Pymaild-Queue-ID: {queueId}")
    perMessage.append(f"Arrival-Date: {_date(arrival)}")
    blocks = ["\r\n".join(perMessage)]
    for r in recipients:
        fields = [f"Final-Recipient: {_addressType(r.address)}; {r.address}"]
        fields.append(f"Action: {r.action}")
        fields.append(f"Status: {_status(r)}")
        if r.remoteMta:
            fields.append(f"Remote-MTA: dns; {sanitise(r.remoteMta)}")
        if r.diagnostic:
            kind = r.diagnosticType or "smtp"
            fields.append(fold("Diagnostic-Code", f"{kind}; {sanitise(r.diagnostic)}"))
        if r.lastAttempt is not None:
            fields.append(f"Last-Attempt-Date: {_date(r.lastAttempt)}")
        if r.willRetryUntil is not None and r.action == DELAYED:
            fields.append(f"Will-Retry-Until: {_date(r.willRetryUntil)}")
        blocks.append("\r\n".join(fields))
    status = "\r\n\r\n".join(blocks) + "\r\n"

    statusType = "message/global-delivery-status" if international else "message/delivery-status"
    headersType = "message/global-headers" if not headers.isascii() else "text/rfc822-headers"
    charset = "utf-8" if international else "us-ascii"
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reportingMTA}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{secrets.token_hex(12)}.dsn@{reportingMTA}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Description: Delivery report",
    ]
    parts = [
        "\r\n".join(top) + "\r\n\r\nThis is a MIME-encapsulated message.\r\n",
        (
            f"Content-Description: Notification\r\n"
            f"Content-Type: text/plain; charset={charset}\r\n\r\n{human}"
        ),
        (
            f"Content-Description: Delivery report\r\n"
            f"Content-Type: {statusType}\r\n\r\n{status}"
        ),
        (
            f"Content-Description: {'Undelivered' if action == FAILED else 'Delayed'}"
            f" Message Headers\r\n"
            f"Content-Type: {headersType}\r\n\r\n"
        ),
    ]
    text = parts[0]
    for part in parts[1:]:
        text += f"\r\n--{boundary}\r\n{part}"
    return text.encode("utf-8") + headers + f"\r\n--{boundary}--\r\n".encode("ascii")
