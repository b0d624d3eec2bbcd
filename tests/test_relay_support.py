"""Loopback fakes for the relay and queue tests (this module holds no tests itself).

- L{startDNS}: a twisted.names DNS server on 127.0.0.1 (UDP and TCP, same port) that
  answers from a dict of records for the zone C{test}.
- L{LoopbackCA}: a throwaway certificate authority (its PEM file, and server contexts with
  certificates it issued), for verified TLS to a smarthost.
- L{ScriptedSMTPFactory}: a small recording ESMTP server with scripted greetings and
  replies, optional STARTTLS (any server context: L{tlsContext}'s self-signed one or a
  L{LoopbackCA} one), AUTH PLAIN/LOGIN, PIPELINING,
  SIZE, 8BITMIME, SMTPUTF8; it keeps every received message, the raw DATA bytes, each
  read's lines and connection counts.
- L{TwistedSMTPFactory}: Twisted's own C{smtp.ESMTP} with a recording delivery, used to
  check that our client's DATA ends exactly where the message ends.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, error, reactor
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.protocol import ServerFactory
from twisted.mail import smtp
from twisted.names import authority, common, dns, server
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from pymaild.tls import ensureSelfSigned, serverContext

ZONE = "test"


class DictAuthority(authority.FileAuthority):
    """An authority for the zone C{test} answering from a dict C{name -> [records]}."""

    def __init__(self, records: dict[str, list[Any]]) -> None:
        common.ResolverBase.__init__(self)
        self._cache: dict[Any, Any] = {}
        self.soa = (
            ZONE.encode(),
            dns.Record_SOA(mname=b"ns.test", rname=b"root.test", serial=1, refresh=60,
                           retry=60, expire=60, minimum=60, ttl=60),
        )
        self.records = {k.encode("ascii").lower(): list(v) for k, v in records.items()}
        self.records.setdefault(ZONE.encode(), []).append(self.soa[1])


def startDNS(case: TestCase, records: dict[str, list[Any]]) -> int:
    """Serve C{records} on 127.0.0.1 (UDP and TCP on one port); returns the port.

    The listeners are closed when the test ends.
    """
    factory = server.DNSServerFactory(authorities=[DictAuthority(records)])
    factory.noisy = False
    for _ in range(50):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except error.CannotListenError:
            udp.stopListening()
            continue
        case.addCleanup(udp.stopListening)
        case.addCleanup(tcp.stopListening)
        return port
    raise RuntimeError("no free port for the DNS server")


def mx(preference: int, host: str) -> dns.Record_MX:
    """An MX record."""
    return dns.Record_MX(preference, host.encode("ascii"), ttl=60)


def a(address: str = "127.0.0.1") -> dns.Record_A:
    """An A record."""
    return dns.Record_A(address, ttl=60)


def tlsContext(case: TestCase, names: tuple[str, ...] = ("localhost",)) -> Any:
    """A server TLS context with a fresh self-signed certificate for C{names}."""
    base = case.mktemp()
    os.makedirs(base)
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    ensureSelfSigned(cert, key, list(names))
    return serverContext(cert, key)


class LoopbackCA:
    """A throwaway certificate authority: its certificate in a PEM file (L{path}) and
    server TLS contexts with certificates it signs."""

    def __init__(self, case: TestCase, name: str = "pymaild test CA") -> None:
        self.base = case.mktemp()
        os.makedirs(self.base)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path = os.path.join(self.base, "ca.pem")
        with open(self.path, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))
        self._issued = 0

    def serverContext(self, names: list[str], expired: bool = False) -> Any:
        """A server TLS context whose certificate this CA issued for C{names} (DNS
        names or IP addresses); with C{expired}, one whose validity ended yesterday."""
        self._issued += 1
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = []
        for n in names:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                san.append(x509.DNSName(n))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=31 if expired else 1))
            .not_valid_after(now + datetime.timedelta(days=-1 if expired else 30))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        certPath = os.path.join(self.base, f"server{self._issued}.pem")
        keyPath = os.path.join(self.base, f"server{self._issued}.key")
        with open(certPath, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(keyPath, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        return serverContext(certPath, keyPath)


@implementer(IOpenSSLContextFactory)
class SNIContext:
    """A server TLS context factory that picks its certificate by the server name the
    client sends (SNI), as a server with several names does, and records the names.

    @param default: the context (L{serverContext}'s result) for a client that sends no
        name or one not in C{byName}.
    @param byName: server name → the context to switch to.
    @ivar names: the name each handshake asked for (None: no SNI).
    """

    def __init__(self, default: Any, byName: dict[str, Any]) -> None:
        self.default = default
        self.byName = byName
        self.names: list[str | None] = []
        self._context: Any = None

    def getContext(self) -> Any:
        """The default context, with the SNI callback installed."""
        if self._context is None:
            self._context = self.default.getContext()
            self._context.set_tlsext_servername_callback(self._pick)
        return self._context

    def _pick(self, connection: Any) -> None:
        """Record the name; switch to its context when there is one."""
        raw = connection.get_servername()
        name = raw.decode("ascii") if raw else None
        self.names.append(name)
        chosen = self.byName.get(name) if name else None
        if chosen is not None:
            connection.set_context(chosen.getContext())


@dataclass
class Received:
    """One message the scripted server accepted."""

    mail: str
    rcpts: list[str]
    data: bytes
    raw: bytes
    tls: bool
    auth: tuple[str, str] | None


@dataclass(eq=False, repr=False)
class ScriptedSMTPFactory(ServerFactory):
    """Configuration, script and records of the scripted ESMTP server.

    @ivar greetings: consumed one per connection; C{"drop"} closes at once; when empty
        the greeting is C{220}.
    @ivar rcptReplies: per address, replies consumed by successive RCPTs (then 250).
    @ivar dataReplies: replies consumed by successive ends of DATA (then 250);
        C{"silent"} never answers.
    @ivar breakTLS: this many STARTTLS commands are answered 220 and then the
        connection is dropped (a failed handshake).
    @ivar injectAfterStartTLS: the 220 to STARTTLS is followed by a plaintext
        C{250 injected} line in the same write.
    @ivar auth: C{(user, password)} to require AUTH (offered only after STARTTLS when a
        TLS context is set).
    """

    extensions: list[str] = field(default_factory=lambda: [
        "PIPELINING", "SIZE 10485760", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"])
    tls: Any = None
    auth: tuple[str, str] | None = None
    greetings: list[str] = field(default_factory=list)
    rcptReplies: dict[str, list[str]] = field(default_factory=dict)
    dataReplies: list[str] = field(default_factory=list)
    breakTLS: int = 0
    injectAfterStartTLS: bool = False
    messages: list[Received] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    reads: list[list[str]] = field(default_factory=list)
    connections: int = 0
    active: int = 0
    maxActive: int = 0
    authAttempts: list[tuple[str, str]] = field(default_factory=list)

    noisy = False

    def buildProtocol(self, addr: Any) -> ScriptedSMTP:
        """A new server protocol."""
        p = ScriptedSMTP()
        p.factory = self
        return p

    def listen(self, case: TestCase) -> int:
        """Listen on 127.0.0.1:0 until the test ends; returns the port."""
        port = reactor.listenTCP(0, self, interface="127.0.0.1")
        case.addCleanup(port.stopListening)
        case.addCleanup(self.dropAll)
        return port.getHost().port

    def dropAll(self) -> None:
        """Close every connection still open."""
        for p in list(ScriptedSMTP.open):
            if p.factory is self:
                p.transport.abortConnection()


class ScriptedSMTP(LineOnlyReceiver):
    """The scripted server's protocol (see L{ScriptedSMTPFactory})."""

    MAX_LENGTH = 1 << 20
    open: set[ScriptedSMTP] = set()
    factory: ScriptedSMTPFactory

    def connectionMade(self) -> None:
        """Greet (or not) as scripted."""
        f = self.factory
        f.connections += 1
        f.active += 1
        f.maxActive = max(f.maxActive, f.active)
        ScriptedSMTP.open.add(self)
        self.tls = False
        self.user: tuple[str, str] | None = None
        self.authState: list[str] = []
        self.inData = False
        self._reset()
        greeting = f.greetings.pop(0) if f.greetings else "220 mx.test ESMTP scripted"
        if greeting == "drop":
            self.transport.abortConnection()
        elif greeting != "silent":
            self.reply(greeting)

    def connectionLost(self, reason: Any = None) -> None:
        """Count the connection as closed."""
        if self in ScriptedSMTP.open:
            ScriptedSMTP.open.discard(self)
            self.factory.active -= 1

    def _reset(self) -> None:
        """Forget the transaction."""
        self.mail = ""
        self.rcpts: list[str] = []
        self.lines: list[bytes] = []
        self.raw = b""

    def reply(self, *lines: str) -> None:
        """Send reply lines."""
        self.transport.write(b"".join(x.encode("utf-8") + b"\r\n" for x in lines))

    def dataReceived(self, data: bytes) -> None:
        """Record which command lines arrived in one read."""
        self._read: list[str] = []
        super().dataReceived(data)
        if self._read:
            self.factory.reads.append(self._read)

    def lineReceived(self, line: bytes) -> None:
        """Handle one command or DATA line."""
        f = self.factory
        if self.inData:
            self.raw += line + b"\r\n"
            if line == b".":
                self.inData = False
                self._endData()
            else:
                self.lines.append(line[1:] if line.startswith(b".") else line)
            return
        text = line.decode("utf-8", "replace")
        if self.authState:
            self._authContinue(text)
            return
        f.commands.append(text)
        self._read.append(text)
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb == "EHLO":
            self._reset()
            exts = list(f.extensions)
            if f.tls is not None and not self.tls:
                exts.append("STARTTLS")
            if f.auth is not None and (self.tls or f.tls is None):
                exts.append("AUTH PLAIN LOGIN")
            lines = ["mx.test", *exts]
            self.reply(*[f"250-{x}" for x in lines[:-1]], f"250 {lines[-1]}")
        elif verb == "HELO":
            self.reply("250 mx.test")
        elif verb == "STARTTLS":
            if f.breakTLS:
                f.breakTLS -= 1
                self.reply("220 2.0.0 go ahead")
                self.transport.loseConnection()
                return
            if f.injectAfterStartTLS:
                self.transport.write(b"220 2.0.0 go ahead\r\n250 injected\r\n")
            else:
                self.reply("220 2.0.0 go ahead")
            self.transport.startTLS(f.tls)
            self.tls = True
            self._reset()
        elif verb == "AUTH":
            mech, _, initial = arg.partition(" ")
            mech = mech.upper()
            if mech == "PLAIN":
                if initial:
                    self._authPlain(initial)
                else:
                    self.authState = ["plain"]
                    self.reply("334 ")
            elif mech == "LOGIN":
                self.authState = ["login"]
                self.reply("334 VXNlcm5hbWU6")
            else:
                self.reply("504 5.5.4 unknown mechanism")
        elif verb == "MAIL":
            if f.auth is not None and self.user is None:
                self.reply("530 5.7.0 authentication required")
                return
            self._reset()
            self.mail = text
            self.reply("250 2.1.0 ok")
        elif verb == "RCPT":
            address = text[text.find("<") + 1 : text.rfind(">")]
            script = f.rcptReplies.get(address)
            reply = script.pop(0) if script else "250 2.1.5 ok"
            if reply.startswith("2"):
                self.rcpts.append(address)
            self.reply(reply)
        elif verb == "DATA":
            if not self.mail or not self.rcpts:
                self.reply("554 5.5.1 no valid recipients")
                return
            self.inData = True
            self.reply("354 go ahead")
        elif verb in ("RSET", "NOOP"):
            self._reset()
            self.reply("250 2.0.0 ok")
        elif verb == "QUIT":
            self.reply("221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.reply("500 5.5.2 what?")

    def _endData(self) -> None:
        """The message is complete: record it and answer as scripted."""
        f = self.factory
        reply = f.dataReplies.pop(0) if f.dataReplies else "250 2.0.0 queued"
        if reply.startswith("2"):
            data = b"".join(x + b"\r\n" for x in self.lines)
            f.messages.append(Received(self.mail, list(self.rcpts), data, self.raw, self.tls,
                                       self.user))
        self._reset()
        if reply != "silent":
            self.reply(reply)

    def _authPlain(self, token: str) -> None:
        """Check an AUTH PLAIN response."""
        try:
            _authz, user, password = base64.b64decode(token).decode().split("\0")
        except ValueError:
            self.reply("501 5.5.2 bad PLAIN response")
            return
        self._authCheck(user, password)

    def _authContinue(self, text: str) -> None:
        """A line of an AUTH exchange."""
        state = self.authState
        if state[0] == "plain":
            self.authState = []
            self._authPlain(text)
        elif len(state) == 1:
            state.append(base64.b64decode(text).decode())
            self.reply("334 UGFzc3dvcmQ6")
        else:
            self.authState = []
            self._authCheck(state[1], base64.b64decode(text).decode())

    def _authCheck(self, user: str, password: str) -> None:
        """Accept or refuse credentials."""
        self.factory.authAttempts.append((user, password))
        if (user, password) == self.factory.auth:
            self.user = (user, password)
            self.reply("235 2.7.0 authenticated")
        else:
            self.reply("535 5.7.8 bad credentials")


@implementer(smtp.IMessageDelivery)
class RecordingDelivery:
    """An IMessageDelivery for Twisted's ESMTP that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        """Add no Received header (the test compares bytes)."""
        return None

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        """Accept any sender."""
        return origin

    def validateTo(self, user: Any) -> Any:
        """Accept any recipient into a recording message."""
        return lambda: RecordingMessage(self)


@implementer(smtp.IMessage)
class RecordingMessage:
    """Collects the unstuffed lines Twisted's server hands over."""

    def __init__(self, delivery: RecordingDelivery) -> None:
        self.delivery = delivery
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        """Keep a line."""
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[None]:
        """The message ended: record it."""
        self.delivery.messages.append(b"".join(x + b"\r\n" for x in self.lines))
        return defer.succeed(None)

    def connectionLost(self) -> None:
        """The message was aborted: forget its lines."""
        self.lines = []


class TwistedSMTPFactory(smtp.SMTPFactory):
    """Twisted's own ESMTP server over a L{RecordingDelivery}."""

    protocol = smtp.ESMTP
    noisy = False

    def __init__(self) -> None:
        super().__init__()
        self.delivery = RecordingDelivery()
        self.protocols: list[smtp.ESMTP] = []

    def buildProtocol(self, addr: Any) -> smtp.ESMTP:
        """An ESMTP protocol delivering to the recorder."""
        p = super().buildProtocol(addr)
        p.delivery = self.delivery
        self.protocols.append(p)
        return p

    def listen(self, case: TestCase) -> int:
        """Listen on 127.0.0.1:0 until the test ends; returns the port."""
        port = reactor.listenTCP(0, self, interface="127.0.0.1")
        case.addCleanup(port.stopListening)

        def close() -> None:
            for p in self.protocols:
                p.setTimeout(None)
                if p.transport is not None and p.transport.connected:
                    p.transport.abortConnection()

        case.addCleanup(close)
        return port.getHost().port
