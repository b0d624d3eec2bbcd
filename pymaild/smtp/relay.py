"""Outbound SMTP: MX lookup and a small ESMTP client that delivers one domain's recipients.

Twisted's ``relaymanager`` does not run on Python 3 and its ``SMTPClient`` dot-stuffs
per 16 KiB chunk, which lets a ``.`` line at a chunk edge end DATA early and run the rest
of the body as commands on the remote server (twisted-traps.md §3.6, §4). So this module
has its own client, L{ESMTPClientProtocol}, on
L{twisted.protocols.basic.LineOnlyReceiver}, and streams the body through the stateful
L{pymaild.wire.DotStuffer}.

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

import base64
import datetime
import ipaddress
import random
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names import error as dnserror
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from pymaild.address import domainToASCII
from pymaild.config import SMARTHOST_TLS_POLICIES, RelayConfig, parseHostPort
from pymaild.errors import AddressError, ConfigError
from pymaild.smtp import tlsrpt
from pymaild.smtp.mtasts import ENFORCE, TESTING
from pymaild.threads import Runner
from pymaild.tls import clientContext, loadCAFile, namedClientContext, verifyingClientContext
from pymaild.wire import DotStuffer, TLSGuardMixin

log = Logger()

DELIVERED = "delivered"
TEMPORARY = "temporary"
PERMANENT = "permanent"

SMTP = "smtp"
"""Diagnostic type of a reply that came from a remote server."""
LOCAL = "x-pymaild"
"""Diagnostic type of a finding of our own (DNS, connection, policy)."""

TLS_POLICIES = SMARTHOST_TLS_POLICIES
CHUNK = 65536
MAX_ADDRESSES = 10
"""At most this many server addresses are tried in one delivery attempt."""


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt for one recipient.

    @ivar kind: L{DELIVERED}, L{TEMPORARY} (retry later) or L{PERMANENT} (bounce).
    @ivar status: the RFC 3463 enhanced status code.
    @ivar reply: the server's reply (C{"550 5.1.1 no such user"}) or our own diagnosis.
    @ivar diagnosticType: L{SMTP} for a server reply, L{LOCAL} for our own finding.
    @ivar remoteMta: the host name of the server that answered, if any.
    """

    recipient: str
    kind: str
    status: str
    reply: str
    diagnosticType: str = SMTP
    remoteMta: str = ""


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as one line: C{"550 5.1.1 text text"}."""
        return f"{self.code} " + " ".join(s.strip() for s in self.lines if s.strip())

    @property
    def enhanced(self) -> str:
        """The enhanced status code the reply carries, or one derived from its class."""
        first = self.lines[0].split(" ", 1)[0] if self.lines else ""
        parts = first.split(".")
        if (
            len(parts) == 3
            and all(p.isdigit() and 0 < len(p) <= 3 for p in parts)
            and parts[0] == str(self.code // 100)
        ):
            return first
        return f"{self.code // 100}.0.0" if self.code // 100 in (2, 4, 5) else "4.0.0"

    @property
    def positive(self) -> bool:
        """2xx."""
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        """5xx."""
        return 500 <= self.code < 600


class DeliveryError(Exception):
    """A delivery attempt could not be made: it ends with the same outcome for everyone."""

    def __init__(
        self,
        status: str,
        text: str,
        permanent: bool = False,
        remoteMta: str = "",
        diagnosticType: str = LOCAL,
    ) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.permanent = permanent
        self.remoteMta = remoteMta
        self.diagnosticType = diagnosticType

    def outcomes(self, recipients: Iterable[str]) -> list[Outcome]:
        """The same outcome for each of C{recipients}."""
        kind = PERMANENT if self.permanent else TEMPORARY
        return [
            Outcome(r, kind, self.status, self.text, self.diagnosticType, self.remoteMta)
            for r in recipients
        ]


class _TryNext(DeliveryError):
    """This server could not take the mail; the next address or MX may."""


class _TLSFailed(_TryNext):
    """The TLS handshake failed; with opportunistic TLS, try the same server in clear."""


class ReplyTimeout(Exception):
    """The server did not answer in time."""


class ProtocolViolation(Exception):
    """The server sent something that is not an SMTP reply."""


class UnsafeCommand(ValueError):
    """A command to send holds CR, LF or another control character (S25: injection)."""


#: Characters that must never appear in an SMTP command line we send.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------------------------------
# The client protocol


@implementer(IHandshakeListener, IPushProducer)
class ESMTPClientProtocol(TLSGuardMixin, LineOnlyReceiver):
    """Line-level half of the SMTP client: collects replies and hands them out in order.

    The dialogue itself is driven by L{Relay} as a coroutine: it L{send}s commands and
    awaits L{readReply}. Pipelined commands are simply several writes followed by as
    many reads. Replies that arrive before anyone waits are kept. Bytes that arrive in
    the same read as the C{220} reply to STARTTLS are discarded unseen (a server-side
    injection, the client-side twin of CVE-2011-0411).
    """

    MAX_LENGTH = 4096
    MAX_REPLY_LINES = 200

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._partial: list[str] = []
        self._replies: deque[Reply] = deque()
        self._waiters: deque[defer.Deferred[Reply]] = deque()
        self._lost: Failure | None = None
        self._handshake: defer.Deferred[None] | None = None
        self._writable: defer.Deferred[None] | None = None
        self.tls = False
        self.tlsDone = False

    def lineReceived(self, line: bytes) -> None:
        """Add one reply line; hand out the reply when its last line arrived.

        Lines that came in the same read as the reply to STARTTLS are dropped.
        """
        if self._tlsDiscarding:
            return
        text = line.decode("utf-8", "replace")
        code = text[:3]
        sep = text[3:4]
        valid = len(code) == 3 and code.isdigit() and code[0] in "2345"
        if not valid or sep not in ("", " ", "-"):
            self._violation(f"not an SMTP reply: {text[:80]!r}")
            return
        if self._partial and not self._partial[0].startswith(code):
            self._violation("reply code changed inside a multi-line reply")
            return
        self._partial.append(text)
        if len(self._partial) > self.MAX_REPLY_LINES:
            self._violation("reply has too many lines")
            return
        if sep == "-":
            return
        lines = tuple(p[4:] for p in self._partial)
        self._partial = []
        reply = Reply(int(code), lines)
        if self._waiters:
            self._waiters.popleft().callback(reply)
        else:
            self._replies.append(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        """An over-long reply line is a protocol violation."""
        self._violation("reply line too long")

    def _violation(self, why: str) -> None:
        """Give up on a server that does not speak SMTP."""
        self._fail(Failure(ProtocolViolation(why)))
        self.transport.abortConnection()

    def _fail(self, reason: Failure) -> None:
        """Fail everything that waits, now and later, with C{reason}."""
        if self._lost is None:
            self._lost = reason
        waiters, self._waiters = self._waiters, deque()
        for d in waiters:
            d.errback(self._lost)
        if self._handshake is not None and not self._handshake.called:
            self._handshake.errback(self._lost)
        if self._writable is not None and not self._writable.called:
            self._writable.errback(self._lost)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fail all waiters with the reason the connection went away."""
        self._fail(reason)

    def send(self, *lines: str) -> None:
        """Write commands (one write, so pipelined commands travel together).

        @raise UnsafeCommand: a line holds a control character (a CR or LF would inject
            a command); nothing is written then.
        """
        for line in lines:
            if _CONTROL.search(line):
                raise UnsafeCommand(f"refusing to send a command with a control character:"
                                    f" {line[:80]!r}")
        self.transport.write(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))

    def readReply(self, timeout: float) -> defer.Deferred[Reply]:
        """The next reply; the connection is dropped when none arrives within C{timeout}."""
        if self._replies:
            return defer.succeed(self._replies.popleft())
        if self._lost is not None:
            return defer.fail(self._lost)
        d: defer.Deferred[Reply] = defer.Deferred(self._forgetWaiter)
        self._waiters.append(d)

        def timedOut(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                self.transport.abortConnection()
                return Failure(ReplyTimeout(f"no reply within {timeout:g}s"))
            return f

        d.addTimeout(timeout, self.clock)
        d.addErrback(timedOut)
        return d

    def _forgetWaiter(self, d: defer.Deferred[Reply]) -> None:
        """Canceller: a reply nobody waits for any more."""
        if d in self._waiters:
            self._waiters.remove(d)

    def startTLS(self, contextFactory: Any, timeout: float) -> defer.Deferred[None]:
        """Start TLS; the Deferred fires when the handshake completed."""
        self._handshake = defer.Deferred()
        d = self._handshake
        self.startTLSGuarded(contextFactory)
        self.tls = True

        def timedOut(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                self.transport.abortConnection()
            return f

        d.addTimeout(timeout, self.clock)
        d.addErrback(timedOut)
        return d

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done (IHandshakeListener)."""
        self.tlsDone = True
        if self._handshake is not None and not self._handshake.called:
            self._handshake.callback(None)

    def write(self, data: bytes) -> None:
        """Write raw (already dot-stuffed) body bytes."""
        self.transport.write(data)

    def whenWritable(self) -> defer.Deferred[None]:
        """Fires at once, or when the transport's buffer drained (flow control)."""
        if self._lost is not None:
            return defer.fail(self._lost)
        if self._writable is None:
            return defer.succeed(None)
        return self._writable

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: make L{whenWritable} wait."""
        if self._writable is None:
            self._writable = defer.Deferred()

    def resumeProducing(self) -> None:
        """The buffer drained: let the body writer continue."""
        d, self._writable = self._writable, None
        if d is not None and not d.called:
            d.callback(None)

    def stopProducing(self) -> None:
        """The connection is going away; L{connectionLost} fails the writer."""


# ---------------------------------------------------------------------------------------
# DNS


def _isIP(host: str) -> bool:
    """Whether C{host} is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _asciiDomain(domain: str) -> str:
    """The A-label form of C{domain} (IDNA 2008 through L{domainToASCII}).

    @raise DeliveryError: the domain cannot be encoded (permanent 5.1.2).
    """
    d = domain.strip().rstrip(".").lower()
    if d.isascii() and "xn--" not in d:
        return d
    try:
        return domainToASCII(d)
    except AddressError as e:
        raise DeliveryError("5.1.2", f"bad destination domain: {e}", True) from None


def _dnsError(f: Failure, name: str, kind: str, permanentNX: bool) -> DeliveryError:
    """Translate a resolver failure into a delivery error."""
    if f.check(dnserror.DNSNameError):
        return DeliveryError(
            "5.1.2" if permanentNX else "4.4.3",
            f"Host or domain name not found. Name service error for name={name} type={kind}:"
            " Host not found",
            permanentNX,
        )
    return DeliveryError(
        "4.4.3",
        f"Host or domain name not found. Name service error for name={name} type={kind}:"
        f" {f.getErrorMessage() or f.type.__name__}, try again",
    )


def _follow(answers: Iterable[dns.RRHeader], name: str, rtype: int) -> list[Any]:
    """The payloads of type C{rtype} for C{name}, following CNAMEs in C{answers}."""
    records = list(answers)
    wanted = {name.lower()}
    for _ in range(8):
        more = {
            str(r.payload.name).lower()
            for r in records
            if r.type == dns.CNAME and str(r.name).lower() in wanted
        }
        if more <= wanted:
            break
        wanted |= more
    return [r.payload for r in records if r.type == rtype and str(r.name).lower() in wanted]


class MXResolver:
    """Finds the servers that accept mail for a domain, over a twisted.names resolver."""

    def __init__(self, resolver: Any, rng: random.Random | None = None) -> None:
        self.resolver = resolver
        self.rng = rng or random.Random()

    async def exchanges(self, domain: str) -> list[str]:
        """The mail exchangers of C{domain}, best first.

        Equal preferences come in random order. A domain without MX records is its own
        exchanger (RFC 5321 §5.1). An address literal (C{[192.0.2.1]}) is used as it is.

        @raise DeliveryError: null MX (5.1.10), no such domain (5.1.2), DNS failure (4.4.3).
        """
        if domain.startswith("[") and domain.endswith("]"):
            literal = domain[1:-1]
            if literal.lower().startswith("ipv6:"):
                literal = literal[5:]
            if not _isIP(literal):
                raise DeliveryError("5.1.2", f"bad address literal {domain}", True)
            return [literal]
        name = _asciiDomain(domain)
        try:
            answers, _auth, _add = await self.resolver.lookupMailExchange(name)
        except Exception:
            raise _dnsError(Failure(), name, "MX", True) from None
        records = _follow(answers, name, dns.MX)
        if not records:
            return [name]
        if any(str(r.name) in ("", ".") for r in records):
            raise DeliveryError(
                "5.1.10",
                f"Recipient address rejected: domain {name} does not accept mail (nullMX)",
                True,
            )
        byPreference: dict[int, list[str]] = {}
        for r in records:
            byPreference.setdefault(r.preference, []).append(str(r.name).rstrip(".").lower())
        hosts: list[str] = []
        for pref in sorted(byPreference):
            group = byPreference[pref]
            self.rng.shuffle(group)
            hosts.extend(h for h in group if h not in hosts)
        return hosts

    async def addresses(self, host: str, implicit: bool = False) -> list[str]:
        """The IPv4 then IPv6 addresses of C{host}.

        @param implicit: C{host} is the domain itself (no MX): a missing name is then a
            permanent failure rather than a temporary one.
        @raise DeliveryError: the name has no address.
        """
        if _isIP(host):
            return [host]
        found: list[str] = []
        failures: list[Failure] = []
        for lookup, rtype in (
            (self.resolver.lookupAddress, dns.A),
            (self.resolver.lookupIPV6Address, dns.AAAA),
        ):
            try:
                answers, _auth, _add = await lookup(host)
            except Exception:
                failures.append(Failure())
                continue
            for record in _follow(answers, host, rtype):
                address = ipaddress.ip_address(record.address).compressed
                if address not in found:
                    found.append(address)
        if found:
            return found
        if failures and all(f.check(dnserror.DNSNameError) for f in failures):
            raise _dnsError(failures[0], host, "A", implicit)
        if failures:
            raise _dnsError(failures[0], host, "A", False)
        raise DeliveryError(
            "5.4.4" if implicit else "4.4.4",
            f"Host {host} has no address (A/AAAA) records",
            implicit,
        )


def makeResolver(config: RelayConfig, reactor: Any) -> Any:
    """A twisted.names resolver: the configured servers, or the system's resolver.

    With C{dns_servers} the resolver asks those servers only and keeps no cache and no
    resolv.conf watcher (so tests leave a clean reactor).

    @raise ConfigError: a server entry is not C{address[:port]}.
    """
    servers = dnsServers(config)
    if not servers:
        return client.getResolver()
    return client.Resolver(servers=servers, reactor=reactor)


def dnsServers(config: RelayConfig) -> list[tuple[str, int]]:
    """The configured DNS servers as C{(address, port)} pairs.

    @raise ConfigError: an entry is not C{address[:port]} with an IP address.
    """
    servers = [parseHostPort(s, 53, "relay.dns_servers") for s in config.dns_servers]
    for host, _port in servers:
        if not _isIP(host):
            raise ConfigError(f"relay.dns_servers: {host!r} is not an IP address")
    return servers


# ---------------------------------------------------------------------------------------
# The delivery agent


@dataclass(frozen=True)
class Message:
    """What L{Relay.deliver} needs to know about the message it sends.

    @ivar path: the message file (CRLF line ends), read through the Runner.
    @ivar size: its size in bytes (for C{SIZE=}).
    @ivar eightBit: it contains bytes above 127 (C{BODY=8BITMIME}).
    """

    path: str
    size: int
    eightBit: bool


class Relay:
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
    greetingTimeout = 300.0
    commandTimeout = 300.0
    dataTimeout = 600.0
    tlsTimeout = 60.0
    quitTimeout = 10.0

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


def _chainExpired(proto: Any) -> bool:
    """Whether a certificate the server sent in a handshake that failed is outside its
    validity period (the chain is kept after a failed verification)."""
    try:
        chain = proto.transport.getHandle().get_peer_cert_chain(as_cryptography=True) or []
    except Exception:  # noqa: BLE001 - no TLS connection, or nothing received
        return False
    now = datetime.datetime.now(datetime.UTC)
    return any(c.not_valid_after_utc < now or c.not_valid_before_utc > now for c in chain)


def _safeAscii(domain: str) -> str:
    """The A-label of C{domain}, or the domain as given when it cannot be encoded."""
    try:
        return _asciiDomain(domain)
    except DeliveryError:
        return domain


def _describe(e: BaseException) -> str:
    """A short description of an exception (TLS and connection errors included)."""
    if isinstance(e, error.ConnectionDone):
        return "connection closed by the server"
    if isinstance(e, error.ConnectionLost):
        return "connection lost"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
