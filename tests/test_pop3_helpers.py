"""Fixtures shared by the POP3 tests (no tests here).

``POP3Env`` builds the real stack a POP3 session runs on: a ``MaildirStore`` in a temp
directory, a passwd file with two users, a ``Portal`` with ``PasswdChecker`` behind a
``MailRealm`` that serves ``POP3Avatars``, an ``AuthGate`` on a ``Clock`` and a
``POP3Factory``. ``WireClient`` drives one protocol instance over a ``StringTransport``.
``LoopbackServer`` runs POP3 and POP3S listeners on 127.0.0.1:0 with a thread pool, for
tests that use real clients (poplib, fetchmail).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import pop3
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from pymaild import config as configModule
from pymaild.auth.checker import PasswdChecker
from pymaild.auth.passwd import PasswdFile
from pymaild.auth.penalty import AuthGate, AuthPenalty
from pymaild.auth.realm import MailRealm
from pymaild.pop3.mailbox import SESSIONS, POP3Avatars, SessionRegistry
from pymaild.pop3.server import POP3Factory, POP3Server
from pymaild.store import MaildirStore
from pymaild.threads import InlineRunner, ThreadRunner, makePool
from pymaild.tls import ensureSelfSigned, serverContext
from tests.support import ALICE, ALICE_PW, BOB, BOB_PW, lowCostHashing, mailFixture  # noqa: F401

LOOPBACK = "127.0.0.1"
REMOTE = "192.0.2.7"


class GatedRunner(InlineRunner):
    """pymaild's InlineRunner, which can also hold work while C{hold} is set, until
    L{step} or L{flush}.

    Lets a test see what the protocol has (not) written while disk or hashing work is
    still outstanding.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.queue: list[tuple[defer.Deferred[Any], Callable[..., Any], tuple, dict]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Run C{f} now (as InlineRunner does), or queue it while holding."""
        if not self.hold:
            return super().run(f, *args, **kwargs)
        d: defer.Deferred[Any] = defer.Deferred()
        self.queue.append((d, f, args, kwargs))
        return d

    def step(self) -> None:
        """Run only the oldest queued call."""
        d, f, args, kwargs = self.queue.pop(0)
        defer.maybeDeferred(f, *args, **kwargs).chainDeferred(d)

    def flush(self) -> None:
        """Run everything queued (and whatever that queues), in order."""
        while self.queue:
            d, f, args, kwargs = self.queue.pop(0)
            defer.maybeDeferred(f, *args, **kwargs).chainDeferred(d)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that can 'start TLS': afterwards it provides ISSLTransport."""

    tlsContext: Any = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        """Record the context and become a (pretend) TLS transport."""
        self.tlsContext = contextFactory
        alsoProvides(self, ISSLTransport)


def makeMessage(subject: str, body: bytes, extra: bytes = b"") -> bytes:
    """A small CRLF message with the given subject and body."""
    return (
        b"From: Carol <carol@remote.example>\r\n"
        b"To: Alice <alice@example.org>\r\n"
        b"Subject: " + subject.encode() + b"\r\n" + extra + b"Message-ID: <" + subject.encode()
        + b"@remote.example>\r\n\r\n" + body
    )


def unstuff(data: bytes) -> bytes:
    """Undo POP3 dot-stuffing of a multi-line body (without the terminator line)."""
    lines = data.split(b"\r\n")
    out = [line[1:] if line.startswith(b".") else line for line in lines]
    return b"\r\n".join(out)


def readMultiline(wire: bytes) -> tuple[bytes, bytes, bytes]:
    """Split C{+OK ...CRLF body CRLF.CRLF rest}: return (status, unstuffed body, rest).

    The body ends at the first C{CRLF.CRLF} after the status line, as a client reads it.
    """
    status, _, rest = wire.partition(b"\r\n")
    if rest.startswith(b".\r\n"):
        return status, b"", rest[3:]
    end = rest.find(b"\r\n.\r\n")
    assert end != -1, f"no terminator in {wire[:200]!r}"
    return status, unstuff(rest[: end + 2]), rest[end + 5 :]


class POP3Env:
    """The real POP3 stack over a temporary Maildir tree, for one test."""

    def __init__(
        self,
        testcase: Any,
        delete: str = "expunge",
        cleartext: str = "tls-or-loopback",
        runner: Any = None,
        tlsContext: Any = None,
        implicitTLS: bool = False,
        registry: SessionRegistry | None = None,
    ) -> None:
        self.base, self.config, self.store, self.passwd = mailFixture(
            testcase, cleartext, "pop3", {"delete": delete})
        self.runner = runner if runner is not None else GatedRunner()
        self.clock = Clock()
        self.registry = registry if registry is not None else SESSIONS
        self.avatars = POP3Avatars(self.store, self.runner, self.config, registry=self.registry)
        realm = MailRealm({pop3.IMailbox: self.avatars})
        self.portal = Portal(realm, [PasswdChecker(self.passwd, self.runner),
                                     AllowAnonymousAccess()])
        self.gate = AuthGate(self.portal, AuthPenalty(), self.clock)
        self.factory = POP3Factory(
            config=self.config, gate=self.gate, tlsContext=tlsContext,
            implicitTLS=implicitTLS, clock=self.clock,
        )
        self.clients: list[WireClient] = []
        testcase.addCleanup(self.cleanup)

    def cleanup(self) -> None:
        """Drop every client still connected (as a lost connection would)."""
        for c in self.clients:
            if not c.proto._lost:
                c.lose()

    def deliver(self, *messages: bytes, address: str = ALICE) -> list[str]:
        """Deliver messages to the user's INBOX; return their keys."""
        keys: list[str] = []
        for m in messages:
            keys += self.store.deliver([address], m)
        return keys

    def inbox(self, address: str = ALICE) -> Any:
        """The user's INBOX folder object (a separate view, as IMAP would have)."""
        return self.store.account(address).folder("INBOX")

    def scan(self, address: str = ALICE) -> Any:
        """The INBOX state on disk now (no \\Recent claimed)."""
        return self.inbox(address).scan(claimRecent=False)

    def connect(self, host: str = REMOTE, tls: bool = False) -> WireClient:
        """A new connection from C{host}; C{tls} gives a transport that can start TLS."""
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        cls = TLSStringTransport if tls else StringTransport
        transport = cls(peerAddress=IPv4Address("TCP", host, 40000),
                        hostAddress=IPv4Address("TCP", "127.0.0.1", 110))
        proto.makeConnection(transport)
        client = WireClient(proto, transport)
        self.clients.append(client)
        return client

    def login(self, user: str = ALICE, password: str = ALICE_PW,
              host: str = LOOPBACK) -> WireClient:
        """A connection from loopback, logged in with USER/PASS."""
        c = self.connect(host)
        c.take()
        assert c.cmd(b"USER " + user.encode()) == b"+OK\r\n"
        reply = c.cmd(b"PASS " + password.encode())
        assert reply.startswith(b"+OK "), reply
        return c


class WireClient:
    """One protocol instance over a StringTransport, seen from the client side."""

    def __init__(self, proto: POP3Server, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport

    def send(self, data: bytes) -> None:
        """Deliver bytes to the server as one read."""
        self.proto.dataReceived(data)

    def take(self) -> bytes:
        """Everything the server wrote since the last take."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def cmd(self, line: bytes) -> bytes:
        """Send one command line; return the server's output."""
        self.send(line + b"\r\n")
        return self.take()

    def multi(self, line: bytes) -> tuple[bytes, bytes]:
        """Send a command with a multi-line answer: (status line, unstuffed body)."""
        status, body, rest = readMultiline(self.cmd(line))
        assert rest == b"", rest
        return status, body

    def lose(self) -> None:
        """The connection drops (no QUIT)."""
        self.proto.connectionLost(Failure(ConnectionDone()))

    @property
    def closing(self) -> bool:
        """Whether the server asked to close the connection."""
        return bool(self.transport.disconnecting)


class TrackingFactory(POP3Factory):
    """A POP3Factory that remembers its protocols and when each connection ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocols: list[POP3Server] = []
        self.lost: list[defer.Deferred[None]] = []
        self.commands: list[bytes] = []

    def buildProtocol(self, addr: Any) -> POP3Server:
        """Build, record, and hook connectionLost and command dispatch."""
        p = super().buildProtocol(addr)
        done: defer.Deferred[None] = defer.Deferred()
        original = p.connectionLost
        originalCommand = p.processCommand

        def connectionLost(reason: Any) -> None:
            original(reason)
            done.callback(None)

        def processCommand(line: bytes, *rest: bytes) -> Any:
            self.commands.append(line.split(b" ")[0].upper())
            return originalCommand(line, *rest)

        p.connectionLost = connectionLost  # type: ignore[method-assign]
        p.processCommand = processCommand  # type: ignore[method-assign]
        self.protocols.append(p)
        self.lost.append(done)
        return p


class LoopbackServer:
    """POP3 (with STLS) and POP3S listeners on 127.0.0.1:0 in the test's reactor.

    Real ThreadRunner over a started pool, the real gate on the reactor clock, and a
    self-signed certificate. Everything is stopped and every connection closed in the
    test's cleanups.
    """

    def __init__(self, testcase: Any, cleartext: str = "tls-or-loopback") -> None:
        lowCostHashing(testcase)
        base = os.path.abspath(testcase.mktemp())
        os.makedirs(base)
        self.base = base
        self.cert = os.path.join(base, "tls", "cert.pem")
        key = os.path.join(base, "tls", "key.pem")
        ensureSelfSigned(self.cert, key, ["mx.example.org"])
        ctx = serverContext(self.cert, key)
        self.config = configModule.load(None, {
            "server": {"data": base, "hostname": "mx.example.org", "domains": ["example.org"]},
            "auth": {"passwd": os.path.join(base, "passwd"), "cleartext": cleartext},
        })
        self.store = MaildirStore(os.path.join(base, "mail"), hostname="mx.example.org")
        passwd = PasswdFile(self.config.auth.passwd)
        passwd.add(ALICE, ALICE_PW)
        pool = makePool("pop3-test", 4)
        pool.start()
        testcase.addCleanup(pool.stop)
        runner = ThreadRunner(reactor, pool)
        realm = MailRealm({pop3.IMailbox: POP3Avatars(self.store, runner, self.config)})
        portal = Portal(realm, [PasswdChecker(passwd, runner), AllowAnonymousAccess()])
        gate = AuthGate(portal, AuthPenalty(), reactor)
        self.factory = TrackingFactory(config=self.config, gate=gate, tlsContext=ctx,
                                       implicitTLS=False, clock=reactor)
        self.sfactory = TrackingFactory(config=self.config, gate=gate, tlsContext=ctx,
                                        implicitTLS=True, clock=reactor)
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        sport = reactor.listenTCP(0, TLSMemoryBIOFactory(ctx, False, self.sfactory),
                                  interface="127.0.0.1")
        self.port = port.getHost().port
        self.sport = sport.getHost().port
        testcase.addCleanup(self.closeAll)
        testcase.addCleanup(port.stopListening)
        testcase.addCleanup(sport.stopListening)

    def closeAll(self) -> defer.Deferred[Any]:
        """Close server connections still open and wait until they are gone."""
        for f in (self.factory, self.sfactory):
            for p in f.protocols:
                if not p._lost and p.transport is not None:
                    p.transport.abortConnection()
        return defer.DeferredList(self.factory.lost + self.sfactory.lost)

    def deliver(self, *messages: bytes) -> None:
        """Put messages in alice's INBOX."""
        for m in messages:
            self.store.deliver([ALICE], m)

    def inboxCount(self) -> int:
        """Messages in alice's INBOX now."""
        return len(self.store.account(ALICE).folder("INBOX").scan().messages)
