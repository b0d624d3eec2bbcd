"""The conversation of one outbound SMTP session, once connected: EHLO (or HELO),
STARTTLS, AUTH for the smarthost, then MAIL/RCPT/DATA (pipelined when offered) and QUIT.

L{ClientSession} is a mixin of L{pymaild.smtp.relay.Relay}, which chooses the hosts and
the TLS policy and makes the connection; the session turns the server's replies into an
L{pymaild.smtp.esmtpclient.Outcome} per recipient.
"""


from __future__ import annotations

import base64
import ipaddress
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.logger import Logger

from pymaild.config import RelayConfig
from pymaild.smtp import tlsrpt
from pymaild.smtp.esmtpclient import (
    DELIVERED,
    PERMANENT,
    SMTP,
    TEMPORARY,
    DeliveryError,
    ESMTPClientProtocol,
    Message,
    Outcome,
    Reply,
    _describe,
    _TryNext,
)
from pymaild.smtp.mx import _asciiDomain, _safeAscii
from pymaild.threads import Runner
from pymaild.tls import namedClientContext
from pymaild.wire import DotStuffer

log = Logger()

CHUNK = 65536


class ClientSession:
    """The conversation over one connected L{ESMTPClientProtocol}; a mixin of
    L{pymaild.smtp.relay.Relay}, whose configuration and TLS contexts it reads."""

    greetingTimeout = 300.0
    commandTimeout = 300.0
    dataTimeout = 600.0
    tlsTimeout = 60.0
    quitTimeout = 10.0

    config: RelayConfig
    ehloName: str
    runner: Runner
    smarthost: tuple[str, int] | None
    smarthostContext: Any
    tlsContext: Any

    async def _quit(self, proto: ESMTPClientProtocol) -> None:
        """Say goodbye politely, then close."""
        try:
            proto.send("QUIT")
            await proto.readReply(self.quitTimeout)
        except Exception:  # noqa: BLE001 - the transaction is already decided
            pass
        proto.transport.loseConnection()

    async def _ehlo(self, proto: ESMTPClientProtocol, where: str, host: str) -> dict[str, str]:
        """EHLO, or HELO if EHLO is refused; returns the extensions (upper-case keys)."""
        proto.send(f"EHLO {self.ehloName}")
        reply = await proto.readReply(self.commandTimeout)
        if reply.positive:
            extensions: dict[str, str] = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    extensions[keyword.upper()] = params.strip()
            return extensions
        if reply.code == 421:
            raise _TryNext(reply.enhanced, f"{where} said: {reply.text} (in reply to EHLO)",
                           remoteMta=host, diagnosticType=SMTP)
        proto.send(f"HELO {self.ehloName}")
        reply = await proto.readReply(self.commandTimeout)
        if not reply.positive:
            raise _TryNext(reply.enhanced.replace("5.", "4.", 1),
                           f"{where} said: {reply.text} (in reply to HELO)",
                           remoteMta=host, diagnosticType=SMTP)
        return {}

    async def _dialogue(
        self,
        proto: ESMTPClientProtocol,
        where: str,
        host: str,
        address: str,
        sender: str,
        recipients: list[str],
        message: Message,
        tlsPolicy: str,
        useTLS: bool,
        verify: Any = None,
        sts: Any = None,
        dane: Any = None,
        report: Any = None,
    ) -> list[Outcome]:
        """The SMTP conversation over an open connection."""
        greeting = await proto.readReply(self.greetingTimeout)
        if greeting.code != 220:
            await self._quit(proto)
            raise _TryNext(greeting.enhanced.replace("5.", "4.", 1),
                           f"{where} refused to talk to me: {greeting.text}",
                           remoteMta=host, diagnosticType=SMTP)
        extensions = await self._ehlo(proto, where, host)

        if "STARTTLS" in extensions and useTLS:
            proto.send("STARTTLS")
            reply = await proto.readReply(self.commandTimeout)
            if reply.code == 220:
                # The server name (SNI) is the MX host's: the TLSA base domain under
                # DANE (RFC 7672 §3.2), the name MTA-STS verifies (RFC 8461 §4.2).
                context = namedClientContext(_safeAscii(host), self.tlsContext)
                if verify is not None:
                    context = verify
                elif tlsPolicy == "required" and self.smarthostContext is not None:
                    context = self.smarthostContext
                await proto.startTLS(context, self.tlsTimeout)
                if dane is not None:
                    chain = proto.transport.getHandle().get_peer_cert_chain(
                        as_cryptography=True) or []
                    why = dane.check(list(chain))
                    if why:
                        report(tlsrpt.TLSA_INVALID, why)
                        log.warn("DANE: TLS with {where} refused, nothing sent: {why}",
                                 where=where, why=why)
                        raise _TryNext("4.7.5", f"DANE (TLSA {dane.describe()} of {host}):"
                                       f" TLS with {where}: {why}", remoteMta=host)
                report(tlsrpt.SUCCESS)
                extensions = await self._ehlo(proto, where, host)
            elif tlsPolicy == "required":
                report(tlsrpt.STARTTLS_NOT_SUPPORTED, reply.text)
                await self._quit(proto)
                raise _TryNext("4.7.4", f"TLS is required, but {where} refused STARTTLS:"
                               f" {reply.text}", remoteMta=host)
            elif sts is not None:
                report(tlsrpt.STARTTLS_NOT_SUPPORTED, reply.text)
                log.warn("MTA-STS policy of {domain} (testing): {where} refused STARTTLS;"
                         " delivering anyway", domain=sts.domain, where=where)
        elif tlsPolicy == "required":
            report(tlsrpt.STARTTLS_NOT_SUPPORTED)
            await self._quit(proto)
            raise _TryNext("4.7.4", f"TLS is required, but was not offered by {where}",
                           remoteMta=host)
        elif sts is not None and useTLS:
            report(tlsrpt.STARTTLS_NOT_SUPPORTED)
            log.warn("MTA-STS policy of {domain} (testing): {where} offers no STARTTLS;"
                     " delivering anyway", domain=sts.domain, where=where)

        if self.smarthost is not None and self.config.smarthost_user:
            await self._authenticate(proto, extensions, where, host, address)

        wireSender = wireAddress(sender)
        wireRecipients = [wireAddress(r) for r in recipients]
        needUTF8 = not wireSender.isascii() or any(not r.isascii() for r in wireRecipients)
        if needUTF8 and "SMTPUTF8" not in extensions:
            await self._quit(proto)
            return DeliveryError("5.6.7", f"SMTPUTF8 is required, but was not offered by {where}",
                                 True, host).outcomes(recipients)
        sizeLimit = _sizeLimit(extensions.get("SIZE"))
        if "SIZE" in extensions and sizeLimit and message.size > sizeLimit:
            await self._quit(proto)
            return DeliveryError(
                "5.3.4",
                f"message size {message.size} exceeds size limit {sizeLimit} of server {where}",
                True, host,
            ).outcomes(recipients)

        params = []
        if "SIZE" in extensions:
            params.append(f"SIZE={message.size}")
        if message.eightBit and "8BITMIME" in extensions:
            params.append("BODY=8BITMIME")
        if needUTF8:
            params.append("SMTPUTF8")
        mail = " ".join([f"MAIL FROM:<{wireSender}>", *params])
        rcpts = [f"RCPT TO:<{r}>" for r in wireRecipients]

        if "PIPELINING" in extensions:
            proto.send(mail, *rcpts, "DATA")
            mailReply = await proto.readReply(self.commandTimeout)
            rcptReplies = [await proto.readReply(self.commandTimeout) for _ in rcpts]
            dataReply = await proto.readReply(self.commandTimeout)
        else:
            proto.send(mail)
            mailReply = await proto.readReply(self.commandTimeout)
            rcptReplies = []
            dataReply = None
            if mailReply.positive:
                for r in rcpts:
                    proto.send(r)
                    rcptReplies.append(await proto.readReply(self.commandTimeout))
                if any(x.positive for x in rcptReplies):
                    proto.send("DATA")
                    dataReply = await proto.readReply(self.commandTimeout)

        if not mailReply.positive:
            await self._quit(proto)
            return self._replyOutcomes(recipients, mailReply, where, host, "MAIL FROM")

        results: dict[str, Outcome] = {}
        accepted = []
        for rcpt, reply in zip(recipients, rcptReplies, strict=True):
            if reply.positive:
                accepted.append(rcpt)
            else:
                results[rcpt] = self._replyOutcomes([rcpt], reply, where, host, "RCPT TO")[0]

        if dataReply is not None and dataReply.code == 354:
            if accepted:
                try:
                    final = await self._sendBody(proto, message)
                except defer.CancelledError:
                    raise
                except Exception as e:
                    # The server may or may not have the message: retry later rather
                    # than hand it to the next MX at once.
                    proto.transport.abortConnection()
                    error = DeliveryError("4.4.2", f"lost connection with {where} while sending"
                                          f" the message: {_describe(e)}", False, host)
                    for o in error.outcomes(accepted):
                        results[o.recipient] = o
                    return [results[r] for r in recipients]
            else:
                # Some servers answer DATA with 354 even with no valid recipient
                # (RFC 2920 §3.1); end the empty message at once.
                proto.send(".")
                await proto.readReply(self.dataTimeout)
                final = None
            if final is not None:
                if final.positive:
                    for rcpt in accepted:
                        results[rcpt] = Outcome(rcpt, DELIVERED, final.enhanced, final.text,
                                                SMTP, host)
                else:
                    for o in self._replyOutcomes(accepted, final, where, host, "end of DATA"):
                        results[o.recipient] = o
        elif accepted:
            assert dataReply is not None
            for o in self._replyOutcomes(accepted, dataReply, where, host, "DATA"):
                results[o.recipient] = o
        await self._quit(proto)
        return [results[r] for r in recipients]

    def _replyOutcomes(
        self, recipients: list[str], reply: Reply, where: str, host: str, command: str
    ) -> list[Outcome]:
        """Outcomes for a negative reply: 5xx permanent, anything else temporary."""
        kind = PERMANENT if reply.permanent else TEMPORARY
        status = reply.enhanced
        if kind == TEMPORARY and not status.startswith("4"):
            status = "4.0.0"
        text = f"{reply.text} (in reply to {command} command)"
        return [Outcome(r, kind, status, text, SMTP, host) for r in recipients]

    async def _sendBody(self, proto: ESMTPClientProtocol, message: Message) -> Reply:
        """Stream the message through the dot-stuffer, then read the final reply."""
        stuffer = DotStuffer()
        f: BinaryIO = await self.runner.run(open, message.path, "rb")
        proto.transport.registerProducer(proto, True)
        try:
            while True:
                chunk = await self.runner.run(f.read, CHUNK)
                if not chunk:
                    break
                proto.write(stuffer.feed(chunk))
                await proto.whenWritable()
            proto.write(stuffer.finish())
        finally:
            proto.transport.unregisterProducer()
            await self.runner.run(f.close)
        return await proto.readReply(self.dataTimeout)

    async def _authenticate(
        self,
        proto: ESMTPClientProtocol,
        extensions: dict[str, str],
        where: str,
        host: str,
        address: str,
    ) -> None:
        """AUTH PLAIN (or LOGIN) with the smarthost credentials.

        The password is only sent over TLS, or in clear to a loopback address.

        @raise _TryNext: AUTH unavailable or refused (a temporary failure).
        """
        if not proto.tlsDone and not ipaddress.ip_address(address).is_loopback:
            raise _TryNext("4.7.0", f"refusing to send the password to {where} without TLS",
                           remoteMta=host)
        mechanisms = extensions.get("AUTH", "").upper().split()
        user = self.config.smarthost_user
        password = await self.runner.run(_readSecret, self.config.smarthost_password_file)
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
            proto.send(f"AUTH PLAIN {token}")
            reply = await proto.readReply(self.commandTimeout)
            if reply.code == 334:
                proto.send(token)
                reply = await proto.readReply(self.commandTimeout)
        elif "LOGIN" in mechanisms:
            proto.send("AUTH LOGIN")
            reply = await proto.readReply(self.commandTimeout)
            for secret in (user, password):
                if reply.code != 334:
                    break
                proto.send(base64.b64encode(secret.encode()).decode("ascii"))
                reply = await proto.readReply(self.commandTimeout)
        else:
            raise _TryNext("4.7.0", f"{where} offers no AUTH PLAIN or LOGIN", remoteMta=host)
        if reply.code != 235:
            raise _TryNext("4.7.0", f"authentication with {where} failed: {reply.text}",
                           remoteMta=host, diagnosticType=SMTP)


def wireAddress(address: str) -> str:
    """The address as sent on the wire: an internationalised domain becomes its A-label,
    so only a non-ASCII local part needs SMTPUTF8 (RFC 6531 §3.2)."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{_asciiDomain(domain)}"
    except DeliveryError:
        return address


def _readSecret(path: str) -> str:
    """The first line of the password file (blocking; run through the Runner)."""
    if not path:
        return ""
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def _sizeLimit(value: str | None) -> int:
    """The peer's SIZE limit (0 = none announced)."""
    if not value:
        return 0
    first = value.split()[0]
    return int(first) if first.isdigit() else 0
