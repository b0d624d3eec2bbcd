"""The SMTP server's mail transaction: MAIL, RCPT, DATA, and the reply after the dot.

MAIL makes the session's L{pymaild.smtp.transaction.Transaction} once the avatar
accepted the sender; each RCPT the avatar accepts joins it; DATA opens the avatar's
message and the framing feeds it the body (bare CR or LF fails the message with
C{550 5.6.0}, the size limit with C{552 5.3.4}, both without leaving DATA); at the final
dot the message is stored and the transaction ends: C{250} only once every copy is
durable, C{452}/C{451} (never C{550}) when storing failed.

L{TransactionMixin} is one part of L{pymaild.smtp.server.SMTPServer}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import Anonymous
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from pymaild.address import (
    Path,
    PathRefused,
    PathSyntaxError,
    parseParameters,
    parsePath,
)
from pymaild.errors import StoreFull
from pymaild.smtp.delivery import SMTPReply
from pymaild.smtp.framing import COMMAND, DATA, MAX_DATA_LINE, TOO_LONG, SessionPart
from pymaild.smtp.transaction import Recipient, Transaction

log = Logger()

_PATHS: dict[tuple[str, bool], tuple[Path, str]] = {}
#: How many parsed MAIL/RCPT arguments are remembered, and the longest one remembered.
_PATHS_MAX = 4096
_PATHS_LONGEST = 512


def _parsePath(text: str, reverse: bool) -> tuple[Path, str]:
    """L{parsePath} for MAIL (C{reverse}: the null path allowed) or RCPT (bare postmaster).

    Results are remembered (L{Path} is immutable; errors are not remembered): most mail
    goes to the same few local recipients.

    @raise PathSyntaxError: not a path (reply 501).
    @raise PathRefused: routing syntax (reply 553).
    """
    key = (text, reverse)
    hit = _PATHS.get(key)
    if hit is not None:
        return hit
    result = parsePath(text, null=reverse, postmaster=not reverse)
    if len(text) <= _PATHS_LONGEST:
        if len(_PATHS) >= _PATHS_MAX:
            _PATHS.clear()
        _PATHS[key] = result
    return result


class TransactionMixin(SessionPart):
    """MAIL, RCPT and DATA; see the module docstring."""

    mode: str
    role: str
    portal: Any
    delivery: Any
    session: Any
    maxMessageSize: int
    maxRecipients: int
    authenticatedAs: str | None
    txn: Transaction | None
    _heloName: bytes | None
    _helo: tuple[bytes | None, bytes]
    _esmtp: bool
    _closing: bool
    _onLogout: Any

    if TYPE_CHECKING:  # the other parts of the protocol, as the type checker sees them
        def _tlsDescription(self) -> str | None:
            """L{pymaild.smtp.server.SMTPServer}'s TLS description for Received."""

    def _dropTransaction(self) -> None:
        """Forget the transaction (MAIL, RCPT and any message being received)."""
        self._discardMessage()
        self.txn = None

    def _decodeArg(self, arg: bytes, prefix: bytes) -> str | None:
        """The text after C{FROM:}/C{TO:} as str, or None after replying with an error."""
        if arg[: len(prefix)].upper() != prefix:
            verb = "MAIL FROM" if prefix == b"FROM:" else "RCPT TO"
            self.reply(501, f"5.5.4 Syntax: {verb}:<address>")
            return None
        try:
            return arg[len(prefix) :].decode("utf-8")
        except UnicodeDecodeError:
            self.reply(553, "5.6.7 Address is not valid UTF-8")
            return None

    def smtp_MAIL(self, arg: bytes) -> None:
        """MAIL FROM:<path> [SIZE= BODY= SMTPUTF8 AUTH=]."""
        if self._heloName is None:
            self.reply(503, "5.5.1 Error: send HELO/EHLO first")
            return
        if self.txn is not None:
            self.reply(503, "5.5.1 Error: nested MAIL command")
            return
        if self.role == "submission" and self.authenticatedAs is None:
            self.reply(530, "5.7.0 Authentication required")
            return
        parsed = self._envelopeArgument(arg, sender=True)
        if parsed is None:
            return
        path, params = parsed
        if params and not self._esmtp:
            self.reply(555, "5.5.4 MAIL parameters need EHLO")
            return
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    self.reply(501, "5.5.4 Bad SIZE parameter")
                    return
                if int(value) > self.maxMessageSize:
                    self.reply(552, "5.3.4 Message size exceeds fixed maximum message size")
                    return
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    self.reply(501, "5.5.4 Unsupported BODY parameter")
                    return
            elif key == "SMTPUTF8":
                if value is not None:
                    self.reply(501, "5.5.4 SMTPUTF8 takes no value")
                    return
            elif key == "AUTH":
                # RFC 4954 section 5: accepted, and not trusted (we never relay it on).
                if value is None:
                    self.reply(501, "5.5.4 Bad AUTH parameter")
                    return
            else:
                self.reply(555, f"5.5.4 Unsupported parameter {key}")
                return
        utf8 = "SMTPUTF8" in params
        if not path.isASCII and not utf8:
            self.reply(553, "5.6.7 Non-ASCII address needs SMTPUTF8")
            return
        body = params.get("BODY")
        txn = Transaction(
            sender=path, smtputf8=utf8,
            size=int(params["SIZE"]) if params.get("SIZE") else None,
            body=body.upper() if body else None, user=self.authenticatedAs, helo=self._helo)
        self.session.tls = self._tlsDescription()
        if self.delivery is not None:
            d = defer.maybeDeferred(self.delivery.validateFrom, txn)
        else:
            d = self._delivery()
            d.addCallback(lambda delivery: delivery.validateFrom(txn))
        d.addCallbacks(self._mailAccepted, self._addressRejected, callbackArgs=(txn,))
        self._wait(d)

    def _delivery(self) -> defer.Deferred[Any]:
        """The session's avatar, logging in anonymously the first time."""
        if self.delivery is not None:
            return defer.succeed(self.delivery)
        if self.portal is None:
            return defer.fail(SMTPReply(451, "4.3.0 Mail service not configured"))
        d = self.portal.login(Anonymous(), None, smtp.IMessageDelivery)

        def loggedIn(result: tuple[Any, Any, Callable[[], None]]) -> Any:
            _iface, avatar, logout = result
            if self._closing:
                logout()
                raise defer.CancelledError()
            self.delivery, self._onLogout = avatar, logout
            avatar.session = self.session
            return avatar

        def failed(reason: Failure) -> Any:
            if reason.check(UnauthorizedLogin, defer.CancelledError):
                if reason.check(UnauthorizedLogin):
                    raise SMTPReply(530, "5.7.0 Authentication required")
                return reason
            log.failure("anonymous SMTP login failed", reason)
            raise SMTPReply(451, "4.3.0 Mail service temporarily unavailable")

        return d.addCallbacks(loggedIn, failed)

    def _mailAccepted(self, _path: Path, txn: Transaction) -> None:
        """MAIL succeeded: C{txn} is the session's transaction."""
        self.txn = txn
        self.reply(250, "2.1.0 Ok")

    def _addressRejected(self, reason: Failure) -> None:
        """A MAIL or RCPT refused by the avatar (or a lookup that failed)."""
        if reason.check(defer.CancelledError):
            return
        if reason.check(SMTPReply):
            self.reply(reason.value.code, reason.value.text)
            return
        if reason.check(smtp.SMTPServerError):
            resp = reason.value.resp
            self.reply(reason.value.code, resp if isinstance(resp, (bytes, str)) else str(resp))
            return
        log.failure("address validation failed", reason)
        self.reply(451, "4.3.0 Temporary lookup failure, try again later")

    def _envelopeArgument(self, arg: bytes, sender: bool) -> tuple[Any, dict[str, Any]] | None:
        """The path and parameters after C{FROM:} (C{sender}) or C{TO:}, or None after
        replying with the error."""
        text = self._decodeArg(arg, b"FROM:" if sender else b"TO:")
        if text is None:
            return None
        return self._pathAndParameters(text, sender)

    def _pathAndParameters(self, text: str, sender: bool) -> tuple[Any, dict[str, Any]] | None:
        """Parse the path and parameters of MAIL or RCPT, or reply with the error and
        return C{None}."""
        code, what = ("5.1.7", "sender") if sender else ("5.1.3", "recipient")
        try:
            path, rest = _parsePath(text, sender)
        except PathRefused as e:
            self.reply(553, f"{code} {what.capitalize()} address rejected: {e}")
            return None
        except PathSyntaxError as e:
            self.reply(501, f"{code} Bad {what} address syntax: {e}")
            return None
        try:
            return path, parseParameters(rest)
        except PathSyntaxError as e:
            self.reply(501, f"5.5.4 {e}")
            return None

    def smtp_RCPT(self, arg: bytes) -> None:
        """RCPT TO:<path>."""
        txn = self.txn
        if txn is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return
        parsed = self._envelopeArgument(arg, sender=False)
        if parsed is None:
            return
        path, params = parsed
        if params:
            self.reply(555, f"5.5.4 Unsupported parameter {next(iter(params))}")
            return
        if not path.isASCII and not txn.smtputf8:
            self.reply(553, "5.6.7 Non-ASCII address needs SMTPUTF8 on MAIL")
            return
        if len(txn.recipients) >= self.maxRecipients:
            # Not an error: RFC 5321 section 4.5.3.1.10 has the client send the rest later.
            self._send(452, [b"4.5.3 Error: too many recipients"], error=False)
            return
        rcpt = txn.recipient(path)
        d = defer.maybeDeferred(self.delivery.validateTo, txn, rcpt)
        d.addCallbacks(self._rcptAccepted, self._addressRejected, callbackArgs=(txn, rcpt))
        self._wait(d)

    def _rcptAccepted(self, _result: None, txn: Transaction, rcpt: Recipient) -> None:
        """RCPT succeeded."""
        txn.recipients.append(rcpt)
        self.reply(250, "2.1.5 Ok")

    def smtp_DATA(self, arg: bytes) -> None:
        """DATA: start receiving the message."""
        if arg:
            self.reply(501, "5.5.4 Syntax: DATA")
            return
        txn = self.txn
        if txn is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return
        if not txn.recipients:
            self.reply(554, "5.5.1 Error: no valid recipients")
            return
        txn.message = self.delivery.open(txn)
        txn.failed = None
        txn.received = 0
        self.mode = DATA
        self._send(354, [b"End data with <CR><LF>.<CR><LF>"], enhanced=False)

    def _failData(self, code: int, text: str) -> None:
        """Fail the message being received; keep swallowing until CRLF.CRLF."""
        txn = self.txn
        if txn is not None and txn.failed is None:
            txn.failed = (code, text)
            self._discardMessage()

    def _discardMessage(self) -> None:
        """Tell the transaction's message to forget what it got."""
        txn = self.txn
        if txn is None or txn.message is None:
            return
        message, txn.message = txn.message, None
        try:
            message.connectionLost()
        except Exception:
            log.failure("message connectionLost failed")

    def _dataLine(self, line: Any) -> None:
        """One line of message content (still dot-stuffed)."""
        if line is TOO_LONG:
            self._failData(500, "5.5.2 Error: line too long in message")
            return
        if line[:1] == b".":
            if line == b".":
                self._endData()
                return
            line = line[1:]
        txn = self.txn
        if txn is None or txn.failed is not None:
            return
        if b"\r" in line or b"\n" in line:
            self._failData(550, "5.6.0 Message contains bare CR or LF, refused")
            return
        txn.received += len(line) + 2
        if txn.received > self.maxMessageSize:
            self._failData(552, "5.3.4 Message size exceeds fixed maximum message size")
            return
        try:
            txn.message.lineReceived(line)
        except smtp.SMTPServerError as e:
            resp = e.resp.decode("utf-8", "replace") if isinstance(e.resp, bytes) else str(e.resp)
            self._failData(e.code, resp)

    def _dataChunk(self, chunk: bytes) -> None:
        """Complete CRLF-terminated message lines, none starting with a dot."""
        txn = self.txn
        if txn is None or txn.failed is not None:
            return
        lines = chunk.count(b"\r\n")
        if chunk.count(b"\r") != lines or chunk.count(b"\n") != lines:
            self._failData(550, "5.6.0 Message contains bare CR or LF, refused")
            return
        if len(chunk) > MAX_DATA_LINE + 2 and max(map(len, chunk.split(b"\r\n"))) > MAX_DATA_LINE:
            self._failData(500, "5.5.2 Error: line too long in message")
            return
        txn.received += len(chunk)
        if txn.received > self.maxMessageSize:
            self._failData(552, "5.3.4 Message size exceeds fixed maximum message size")
            return
        try:
            bulk = getattr(txn.message, "dataReceived", None)
            if bulk is not None:
                bulk(chunk)
            else:
                for line in chunk.split(b"\r\n")[:-1]:
                    txn.message.lineReceived(line)
        except smtp.SMTPServerError as e:
            resp = e.resp.decode("utf-8", "replace") if isinstance(e.resp, bytes) else str(e.resp)
            self._failData(e.code, resp)

    def _endData(self) -> None:
        """The final dot: store the message, then answer; the transaction ends."""
        self.mode = COMMAND
        txn, self.txn = self.txn, None
        if txn is None:
            return
        message, txn.message = txn.message, None
        if txn.failed is not None:
            self._dataReply(txn, *txn.failed)
            return
        d = defer.maybeDeferred(message.eomReceived)
        d.addCallbacks(self._messageStored, self._messageFailed, callbackArgs=(txn,),
                       errbackArgs=(txn,))
        self._wait(d)

    def _messageStored(self, qid: Any, txn: Transaction) -> None:
        """Every copy is durable: 250 with the queue id."""
        self._dataReply(txn, 250, f"2.0.0 Ok: queued as {qid or '-'}")

    def _messageFailed(self, reason: Failure, txn: Transaction) -> None:
        """452/451 (never 550) when storing failed; a message refused on purpose (an
        L{SMTPReply}, e.g. C{554 5.4.6} for a mail loop) gets that reply."""
        if reason.check(StoreFull):
            log.warn("message refused: store full ({error})", error=reason.getErrorMessage())
            self._dataReply(txn, 452, "4.3.1 Insufficient system storage, try again later")
        elif reason.check(SMTPReply):
            self._dataReply(txn, reason.value.code, reason.value.text)
        else:
            log.failure("message could not be stored", reason)
            self._dataReply(txn, 451, "4.3.0 Error: could not store message, try again later")

    def _dataReply(self, txn: Transaction, code: int, text: str) -> None:
        """The reply to the final dot: one for the transaction (LMTP sends one per
        recipient, L{pymaild.smtp.lmtp})."""
        txn.finish(code, text)
        self.reply(code, text)


__all__ = ["TransactionMixin"]
