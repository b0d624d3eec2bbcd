"""Outbound SMTP: the delivery agent that delivers one domain's recipients.

Its pieces: the ESMTP client protocol, replies and outcomes (L{pymaild.smtp.esmtpclient}),
MX lookup (L{pymaild.smtp.mx}) and the conversation over one connection
(L{pymaild.smtp.relaysession}); this module chooses the route and the TLS policy of each
host (MX, DANE, MTA-STS, smarthost) and makes the connections.

L{Relay.deliver} makes one delivery attempt for the recipients of one domain:

  - route: the smarthost when one is configured, else the domain's MX records in
    preference order (equal preferences shuffled), or the domain itself when it has no
    MX (RFC 5321 §5.1); a null MX (RFC 7505) fails at once with 5.1.10;
  - for each MX and each of its addresses: connect, read the greeting, EHLO (HELO when
    EHLO is refused), STARTTLS when offered (required for a smarthost by default; a
    failed handshake is retried without TLS when the policy is opportunistic), AUTH
    PLAIN or LOGIN for the smarthost, then MAIL/RCPT/DATA (pipelined when the server
    offers PIPELINING) with SIZE=, BODY=8BITMIME and SMTPUTF8 as needed;
  - TLS to MX servers is opportunistic and not verified, unless the destination
    publishes an MTA-STS policy (RFC 8461, L{pymaild.smtp.mtasts}): under C{enforce}
    only MX hosts matching its C{mx:} patterns are tried, each with STARTTLS required
    and its certificate verified for the MX name (else a temporary failure naming the
    policy: the message stays queued and bounces at expiry with that reason); under
    C{testing} the same checks only log; C{none} changes nothing. DANE (RFC 7672,
    L{pymaild.smtp.dane}, with C{dnssec_resolvers}) comes first: an MX host with
    validated TLSA records gets mandatory STARTTLS and a chain that must match them
    (else a temporary failure, nothing sent), and the MTA-STS policy is not used for
    that host; the domain's other MX hosts stay under the policy (RFC 8461 §2). STARTTLS
    to an MX sends its name as SNI (RFC 7672 §3.2). With C{smarthost_tls =
    "required"} the smarthost's certificate must chain to the system trust store (or
    the CAs in C{smarthost_ca_file}) and be valid for the smarthost's name; if not, the
    handshake fails before AUTH (the password is never sent), the attempt is a
    temporary failure (4.7.5) and a log line says why;
  - connection failures, greetings other than 220 and failures before MAIL move on to
    the next address or MX; once MAIL was sent, the server's replies decide.

The result is one L{Outcome} per recipient: delivered, temporary (retry later) or
permanent (bounce). Every stage has a timeout.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pymaild.config import SMARTHOST_TLS_POLICIES, RelayConfig, parseHostPort
from pymaild.errors import ConfigError
from pymaild.smtp import tlsrpt
from pymaild.smtp.esmtpclient import (
    _CONTROL,
    DELIVERED,
    SMTP,
    DeliveryError,
    ESMTPClientProtocol,
    Message,
    Outcome,
    ProtocolViolation,
    _describe,
    _TLSFailed,
    _TryNext,
)
from pymaild.smtp.mtasts import ENFORCE, TESTING
from pymaild.smtp.mx import MXResolver, _isIP, _safeAscii, dnsServers, makeResolver
from pymaild.smtp.relaysession import ClientSession
from pymaild.threads import Runner
from pymaild.tls import clientContext, loadCAFile, verifyingClientContext

log = Logger()

TLS_POLICIES = SMARTHOST_TLS_POLICIES
MAX_ADDRESSES = 10
"""At most this many server addresses are tried in one delivery attempt."""

class Relay(ClientSession):
    """Delivers messages to other servers: directly by MX, or through a smarthost.

    @param config: the C{[relay]} section.
    @param hostname: our name in EHLO (sent as its A-label when internationalised).
    @param reactor: for connections, DNS and timeouts (IReactorTCP, IReactorTime...).
    @param runner: reads the message and the password file off the reactor thread.
    @param resolver: a twisted.names resolver; by default from L{makeResolver}.
    @param tlsContext: the client TLS context factory; by default
        L{pymaild.tls.clientContext}.
    @param mtasts: the destinations' MTA-STS policies (L{pymaild.smtp.mtasts.MTASTS}),
        or None to deliver without MTA-STS.
    @param dane: the MX hosts' DANE protection (L{pymaild.smtp.dane.DANE}), or None to
        deliver without DANE.
    @param tlsResults: records TLS results for TLS-RPT (L{pymaild.smtp.tlsrpt.TLSResults}),
        or None.
    """

    connectTimeout = 30.0

    def __init__(
        self,
        config: RelayConfig,
        hostname: str,
        reactor: Any,
        runner: Runner,
        resolver: Any = None,
        tlsContext: Any = None,
        rng: random.Random | None = None,
        mtasts: Any = None,
        dane: Any = None,
        tlsResults: Any = None,
    ) -> None:
        if config.smarthost_tls not in TLS_POLICIES:
            raise ConfigError(
                f"relay.smarthost_tls: must be one of {', '.join(TLS_POLICIES)},"
                f" got {config.smarthost_tls!r}"
            )
        self.config = config
        self.hostname = hostname
        self.ehloName = _safeAscii(hostname)
        self.reactor = reactor
        self.runner = runner
        self.smarthost = (
            parseHostPort(config.smarthost, 25, "relay.smarthost") if config.smarthost else None
        )
        dnsServers(config)
        self._resolver = resolver
        self._rng = rng
        self._mx: MXResolver | None = None
        self.mtasts = mtasts
        self.dane = dane
        self.tlsResults = tlsResults
        self.tlsContext = tlsContext if tlsContext is not None else clientContext()
        self.smarthostContext: Any = None
        self.smarthostTrust = ""
        if self.smarthost is not None and config.smarthost_tls == "required":
            caFile = config.smarthost_ca_file
            trust = loadCAFile(caFile) if caFile else None
            self.smarthostTrust = f"the CA file {caFile}" if caFile else "the system trust store"
            self.smarthostContext = verifyingClientContext(self.smarthost[0], trust)
        if config.connect_timeout:
            self.connectTimeout = float(config.connect_timeout)
        if config.command_timeout:
            self.commandTimeout = float(config.command_timeout)
            self.greetingTimeout = self.commandTimeout
            self.dataTimeout = 2 * self.commandTimeout
        self._running: set[defer.Deferred[list[Outcome]]] = set()
        #: The address LMTP to other nodes leaves from (C{cluster.address}: what the
        #: owner checks against its node table), or None (the system's choice).
        self.lmtpSource: str | None = None

    @property
    def mx(self) -> MXResolver:
        """The MX resolver, made on first use (a smarthost given by address needs none)."""
        if self._mx is None:
            resolver = self._resolver
            if resolver is None:
                resolver = makeResolver(self.config, self.reactor)
            self._mx = MXResolver(resolver, self._rng)
        return self._mx

    # -- public API ---------------------------------------------------------------------

    def deliver(
        self, sender: str, recipients: list[str], domain: str, message: Message
    ) -> defer.Deferred[list[Outcome]]:
        """Make one delivery attempt of C{message} to C{recipients}, all in C{domain}.

        Never fails: every problem becomes an L{Outcome} per recipient (a cancelled
        attempt, e.g. at shutdown, reports a temporary failure).
        """
        d = defer.Deferred.fromCoroutine(self._deliver(sender, recipients, domain, message))

        def recover(f: Failure) -> list[Outcome]:
            if f.check(defer.CancelledError):
                return DeliveryError("4.3.2", "delivery interrupted (server shutting down)"
                                     ).outcomes(recipients)
            log.failure("unexpected error delivering to {domain}", f, domain=domain)
            return DeliveryError("4.3.0", f"internal error: {f.getErrorMessage()}"
                                 ).outcomes(recipients)

        d.addErrback(recover)
        self._running.add(d)
        d.addBoth(self._forget, d)
        return d

    def deliverLMTP(
        self, sender: str, recipients: list[str], address: str, port: int, message: Message
    ) -> defer.Deferred[list[Outcome]]:
        """One LMTP (RFC 2033) delivery attempt to the node at C{address}:C{port} (the
        owner of C{recipients}' mailboxes); never fails, as L{deliver}."""
        d = defer.Deferred.fromCoroutine(
            self._deliverLMTP(sender, recipients, address, port, message))

        def recover(f: Failure) -> list[Outcome]:
            if f.check(DeliveryError):
                return f.value.outcomes(recipients)
            if f.check(defer.CancelledError):
                return DeliveryError("4.3.2", "delivery interrupted (server shutting down)"
                                     ).outcomes(recipients)
            return DeliveryError("4.4.2", f"LMTP with [{address}]:{port} failed:"
                                 f" {_describe(f.value)}").outcomes(recipients)

        d.addErrback(recover)
        self._running.add(d)
        d.addBoth(self._forget, d)
        return d

    async def _deliverLMTP(
        self, sender: str, recipients: list[str], address: str, port: int, message: Message
    ) -> list[Outcome]:
        """LHLO, MAIL, RCPTs, DATA, then one reply per accepted recipient."""
        where = f"[{address}]:{port}"
        proto = await self._connect(address, port, "LMTP ", self.lmtpSource)
        try:
            greeting = await proto.readReply(self.greetingTimeout)
            if greeting.code != 220:
                raise DeliveryError("4.4.2", f"{where} refused to talk to me: {greeting.text}")
            proto.send(f"LHLO {self.ehloName}")
            lhlo = await proto.readReply(self.commandTimeout)
            if not lhlo.positive:
                raise DeliveryError("4.4.2", f"{where} said: {lhlo.text} (in reply to LHLO)")
            params = " BODY=8BITMIME" if message.eightBit else ""
            needUTF8 = not sender.isascii() or any(not r.isascii() for r in recipients)
            params += " SMTPUTF8" if needUTF8 else ""
            proto.send(f"MAIL FROM:<{sender}>{params}",
                       *[f"RCPT TO:<{r}>" for r in recipients], "DATA")
            mailReply = await proto.readReply(self.commandTimeout)
            rcptReplies = [await proto.readReply(self.commandTimeout) for _ in recipients]
            dataReply = await proto.readReply(self.commandTimeout)
            if not mailReply.positive:
                if dataReply.code == 354:
                    proto.send(".")
                    await proto.readReply(self.dataTimeout)
                return self._replyOutcomes(recipients, mailReply, where, where, "MAIL FROM")
            results: dict[str, Outcome] = {}
            accepted = []
            for rcpt, reply in zip(recipients, rcptReplies, strict=True):
                if reply.positive:
                    accepted.append(rcpt)
                else:
                    results[rcpt] = self._replyOutcomes([rcpt], reply, where, where,
                                                        "RCPT TO")[0]
            if dataReply.code != 354:
                for o in self._replyOutcomes(accepted, dataReply, where, where, "DATA"):
                    results[o.recipient] = o
            elif not accepted:
                proto.send(".")
                await proto.readReply(self.dataTimeout)
            else:
                replies = [await self._sendBody(proto, message)]
                replies += [await proto.readReply(self.dataTimeout) for _ in accepted[1:]]
                for rcpt, reply in zip(accepted, replies, strict=True):
                    if reply.positive:
                        results[rcpt] = Outcome(rcpt, DELIVERED, reply.enhanced, reply.text,
                                                SMTP, where)
                    else:
                        results[rcpt] = self._replyOutcomes([rcpt], reply, where, where,
                                                            "end of DATA")[0]
            await self._quit(proto)
            return [results[r] for r in recipients]
        except BaseException:
            proto.transport.abortConnection()
            raise

    def _forget(self, result: Any, d: defer.Deferred[Any]) -> Any:
        """Drop a finished attempt from the running set."""
        self._running.discard(d)
        return result

    def stop(self) -> None:
        """Cancel every attempt in progress (they report temporary failures)."""
        for d in list(self._running):
            d.cancel()

    # -- routing -------------------------------------------------------------------------

    async def _deliver(
        self, sender: str, recipients: list[str], domain: str, message: Message
    ) -> list[Outcome]:
        """Route, then try servers in order until one takes responsibility."""
        if _CONTROL.search(sender):
            return DeliveryError("5.1.7", f"bad sender address {sender[:80]!r}: control"
                                 " character", True).outcomes(recipients)
        unsafe = [r for r in recipients if _CONTROL.search(r)]
        if unsafe:
            safe = [r for r in recipients if r not in unsafe]
            results = {o.recipient: o for o in DeliveryError(
                "5.1.3", "bad recipient address: control character", True).outcomes(unsafe)}
            if safe:
                for o in await self._deliver(sender, safe, domain, message):
                    results[o.recipient] = o
            return [results[r] for r in recipients]
        try:
            if self.smarthost is not None:
                host, port = self.smarthost
                targets = [(host, False)]
                tlsPolicy = self.config.smarthost_tls
            else:
                port = self.config.mx_port
                hosts = await self.mx.exchanges(domain)
                implicit = len(hosts) == 1 and hosts[0] == _safeAscii(domain)
                targets = [(h, implicit) for h in hosts]
                tlsPolicy = "opportunistic"
        except DeliveryError as e:
            return e.outcomes(recipients)

        daneHosts: dict[str, Any] = {}
        daneFailed: dict[str, str] = {}
        direct = self.smarthost is None and not domain.startswith("[")
        if direct and self.dane is not None:
            daneHosts, daneFailed = await self.dane.hosts(
                _safeAscii(domain), [h for h, _i in targets if not _isIP(h)])
        sts = None
        if direct and self.mtasts is not None:
            found = await self.mtasts.lookup(_safeAscii(domain))
            sts = found.policy
            if sts is None and found.failure:
                # The domain publishes MTA-STS, but its policy could not be had.
                self._tlsResult(domain, None, None, "", "", found.failure, found.detail,
                                tlsrpt.STS)
            if sts is not None and sts.mode not in (ENFORCE, TESTING):
                sts = None
        if sts is not None:
            # DANE comes first per MX host (RFC 8461 §2): a host with validated TLSA
            # records is DANE's; the policy governs the others.
            protected = [h for h, _i in targets if h in daneHosts]
            if protected:
                log.info("DANE protects MX {hosts} of {domain}: its MTA-STS policy is not"
                         " used for them", hosts=", ".join(protected), domain=domain)
            if sts.mode == ENFORCE:
                tlsPolicy = "required"
            refused = [h for h, _i in targets if h not in daneHosts and not sts.matches(h)]
            if refused:
                log.warn("MTA-STS policy of {domain} ({policy}): MX {hosts} not allowed{then}",
                         domain=sts.domain, policy=sts.describe(), hosts=", ".join(refused),
                         then=", skipped" if sts.mode == ENFORCE else " (testing: used)")
            for h in refused:
                self._tlsResult(domain, sts, None, h, "", tlsrpt.VALIDATION_FAILURE,
                                "MX not listed in the policy")
            if sts.mode == ENFORCE:
                allowed = [(h, i) for h, i in targets if h not in refused]
                if not allowed:
                    return DeliveryError(
                        "4.7.5", f"MTA-STS policy of {sts.domain} ({sts.describe()}):"
                        f" no MX host matches (MX: {', '.join(h for h, _i in targets)})"
                    ).outcomes(recipients)
                targets = allowed

        last: DeliveryError | None = None
        tried = 0
        for host, implicit in targets:
            if host in daneFailed:
                log.warn("{why}; not delivering to {host} now", why=daneFailed[host], host=host)
                self._tlsResult(domain, None, None, host, "", tlsrpt.DNSSEC_INVALID,
                                daneFailed[host], tlsrpt.TLSA)
                last = DeliveryError("4.7.5", daneFailed[host], remoteMta=host)
                continue
            dane = daneHosts.get(host)
            hostPolicy = "required" if dane is not None else tlsPolicy
            hostSts = sts if dane is None else None
            try:
                addresses = [host] if _isIP(host) else await self.mx.addresses(host, implicit)
            except DeliveryError as e:
                if e.permanent and len(targets) == 1:
                    return e.outcomes(recipients)
                last = DeliveryError(e.status[:1].replace("5", "4") + e.status[1:], e.text)
                continue
            for address in addresses:
                if tried >= MAX_ADDRESSES:
                    break
                tried += 1
                useTLS = True
                verify = None
                if hostSts is not None:
                    verify = verifyingClientContext(host, self.mtasts.trust)
                while True:
                    def report(result: str, detail: str = "", host: str = host,
                               address: str = address, dane: Any = dane,
                               hostSts: Any = hostSts) -> None:
                        self._tlsResult(domain, hostSts, dane, host, address, result, detail)

                    try:
                        return await self._session(
                            address, port, host, sender, recipients, message, hostPolicy,
                            useTLS, verify, hostSts, dane, report,
                        )
                    except _TLSFailed as e:
                        last = self._daneError(self._stsError(e, hostSts), dane)
                        if verify is not None and hostSts is not None and hostSts.mode == TESTING:
                            log.warn("MTA-STS policy of {domain} (testing): {e}; delivering"
                                     " anyway", domain=hostSts.domain, e=e.text)
                            verify = None
                            continue
                        if hostPolicy == "opportunistic" and useTLS:
                            log.info("TLS with {host}[{address}] failed, retrying in clear: {e}",
                                     host=host, address=address, e=e.text)
                            useTLS = False
                            continue
                        break
                    except _TryNext as e:
                        last = self._daneError(self._stsError(e, hostSts), dane)
                        break
        if last is None:
            last = DeliveryError("4.4.1", "no server could be reached")
        return DeliveryError(last.status if last.status.startswith("4") else "4.4.1",
                             last.text, False, last.remoteMta, last.diagnosticType
                             ).outcomes(recipients)

    def _tlsResult(self, domain: str, sts: Any, dane: Any, host: str, address: str,
                   result: str, detail: str = "", policyType: str = "") -> None:
        """Record a TLS result for TLS-RPT under the policy that applied."""
        if self.tlsResults is None:
            return
        if dane is not None:
            kind = tlsrpt.TLSA
            strings = [f"{r.usage} {r.selector} {r.matching} {r.data.hex()}"
                       for r in dane.records]
        elif sts is not None:
            kind, strings = tlsrpt.STS, sts.lines()
        else:
            kind, strings = policyType or tlsrpt.NO_POLICY, []
        self.tlsResults.record(_safeAscii(domain), kind, strings, host, result, address,
                               detail)

    def _daneError(self, e: DeliveryError, dane: Any) -> DeliveryError:
        """C{e}, its text naming the TLSA records when DANE made it (a TLS failure,
        4.7.x, at a DANE-protected host)."""
        if dane is None or not e.status.startswith("4.7.") or e.text.startswith("DANE"):
            return e
        return DeliveryError(e.status, f"DANE (TLSA {dane.describe()} of {dane.host}):"
                             f" {e.text}", e.permanent, e.remoteMta, e.diagnosticType)

    def _stsError(self, e: DeliveryError, sts: Any) -> DeliveryError:
        """C{e}, its text naming the MTA-STS policy when the policy made it (a TLS
        failure, 4.7.x, under an enforced policy)."""
        if sts is None or sts.mode != ENFORCE or not e.status.startswith("4.7."):
            return e
        return DeliveryError(e.status, f"MTA-STS policy of {sts.domain} ({sts.describe()}):"
                             f" {e.text}", e.permanent, e.remoteMta, e.diagnosticType)

    # -- one SMTP session ----------------------------------------------------------------

    async def _connect(self, address: str, port: int, host: str,
                       source: str | None = None) -> ESMTPClientProtocol:
        """Open a TCP connection to C{address}:C{port} (from C{source} when given, of
        the same family, and not a loopback address for a peer elsewhere)."""
        six = ":" in address
        cls = TCP6ClientEndpoint if six else TCP4ClientEndpoint
        bind = None
        if source and (":" in source) == six:
            try:
                usable = (not ipaddress.ip_address(source).is_loopback
                          or ipaddress.ip_address(address).is_loopback)
            except ValueError:
                usable = False
            bind = (source, 0) if usable else None
        endpoint = cls(self.reactor, address, port, timeout=self.connectTimeout,
                       bindAddress=bind)
        proto = ESMTPClientProtocol(self.reactor)
        try:
            await connectProtocol(endpoint, proto)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise _TryNext("4.4.1", f"connect to {host}[{address}]:{port}: {e}") from None
        return proto

    async def _session(
        self,
        address: str,
        port: int,
        host: str,
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
        """Deliver over one connection; raise L{_TryNext} when this server cannot.

        @param verify: a verifying TLS connection creator for C{host} (MTA-STS), used
            instead of the usual context.
        @param sts: the destination's MTA-STS policy, for log lines.
        @param dane: the host's validated TLSA records (L{pymaild.smtp.dane.HostTLSA}):
            the chain must match them after the handshake.
        @param report: C{report(result, detail)} records a TLS result (TLS-RPT).
        """
        if report is None:
            def report(result: str, detail: str = "") -> None:
                """Record nothing."""
        proto = await self._connect(address, port, host)
        where = f"{host}[{address}]"
        try:
            return await self._dialogue(
                proto, where, host, address, sender, recipients, message, tlsPolicy, useTLS,
                verify, sts, dane, report,
            )
        except (defer.CancelledError, DeliveryError):
            proto.transport.abortConnection()
            raise
        except Exception as e:
            expired = proto.tls and not proto.tlsDone and _chainExpired(proto)
            proto.transport.abortConnection()
            why = _describe(e)
            if proto.tls and not proto.tlsDone:
                refused = self._verificationFailure(e, where, host, tlsPolicy, verify)
                if refused and expired:
                    refused += " (the certificate has expired)"
                if verify is not None or dane is not None:
                    report(tlsrpt.CERTIFICATE_HOST_MISMATCH if isinstance(e, VerificationError)
                           else tlsrpt.CERTIFICATE_EXPIRED if refused and expired
                           else tlsrpt.CERTIFICATE_NOT_TRUSTED if refused
                           else tlsrpt.VALIDATION_FAILURE, refused or why)
                if refused:
                    log.warn("TLS with {where} refused, nothing sent: {why}",
                             where=where, why=refused)
                    raise _TLSFailed("4.7.5", refused, remoteMta=host) from None
                raise _TLSFailed("4.7.5", f"TLS with {where} failed: {why}",
                                 remoteMta=host) from None
            if isinstance(e, ProtocolViolation):
                raise _TryNext("4.5.0", f"protocol error from {where}: {why}",
                               remoteMta=host) from None
            raise _TryNext("4.4.2", f"conversation with {where} failed: {why}",
                           remoteMta=host) from None

    def _verificationFailure(
        self, e: BaseException, where: str, host: str, tlsPolicy: str, verify: Any = None
    ) -> str:
        """Why the server's certificate was refused (the smarthost's, or an MX host's
        under MTA-STS), or "" when C{e} is not that."""
        if verify is not None:
            trust = self.mtasts.trustName
        elif tlsPolicy == "required" and self.smarthostContext is not None:
            trust = self.smarthostTrust
        else:
            return ""
        if isinstance(e, VerificationError):
            return (f"TLS with {where} failed: the certificate is not valid for the host"
                    f" name {host}")
        if isinstance(e, SSL.Error) and "certificate verify failed" in str(e):
            return (f"TLS with {where} failed: the certificate could not be verified"
                    f" against {trust} (certificate verify failed)")
        return ""


def _chainExpired(proto: Any) -> bool:
    """Whether a certificate the server sent in a handshake that failed is outside its
    validity period (the chain is kept after a failed verification)."""
    try:
        chain = proto.transport.getHandle().get_peer_cert_chain(as_cryptography=True) or []
    except Exception:  # noqa: BLE001 - no TLS connection, or nothing received
        return False
    now = datetime.datetime.now(datetime.UTC)
    return any(c.not_valid_after_utc < now or c.not_valid_before_utc > now for c in chain)
