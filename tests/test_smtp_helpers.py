"""Shared fixtures for the SMTP tests: a full server stack over real files, and a wire client.

L{SMTPStack} builds what the tap builds, for real: a L{MaildirStore} in a temporary
directory, a L{PasswdFile} with a few users (cheap argon2 settings), the L{Directory},
L{DeliveryAvatars}, L{MailRealm}, a L{Portal} with the passwd checker and anonymous
access, an L{AuthGate} on a L{task.Clock}, and an L{SMTPFactory}. L{WireClient} drives a
protocol over a L{StringTransport} and splits what it writes into replies.

This module holds no tests; it only serves the C{test_smtp_*} modules.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.mail.smtp import IMessageDelivery
from twisted.trial.unittest import TestCase
from zope.interface import directlyProvides, implementer

from pymaild import config as configModule
from pymaild.auth import passwd as passwdModule
from pymaild.auth.checker import PasswdChecker
from pymaild.auth.directory import Directory
from pymaild.auth.passwd import PasswdFile
from pymaild.auth.penalty import AuthGate, AuthPenalty
from pymaild.auth.realm import MailRealm
from pymaild.smtp.delivery import DeliveryAvatars
from pymaild.smtp.server import SMTPFactory, SMTPServer
from pymaild.store import MaildirStore
from pymaild.threads import InlineRunner

DOMAINS = ["example.org", "example.net", "παράδειγμα.δοκιμή"]
USERS = {
    "alice@example.org": "alice-secret",
    "bob@example.org": "bob-secret",
    "carol@example.net": "carol-secret",
    "δοκιμή@παράδειγμα.δοκιμή": "utf8-secret",
    "postmaster@example.org": "pm-secret",
}
HOSTNAME = "mx.example.org"
LOOPBACK = "127.0.0.1"
REMOTE = "192.0.2.1"


def cheapHashing(testcase: TestCase) -> None:
    """Make argon2 cheap for the duration of the test (restored afterwards)."""
    passwdModule.configureHashing(memory_cost=256, rounds=1, parallelism=1)
    testcase.addCleanup(passwdModule.configureHashing)


class RecordingQueue:
    """An outbound queue that records what it is given, or fails on request."""

    def __init__(self) -> None:
        self.items: list[tuple[str, list[str], bytes]] = []
        self.ids: list[str] = []
        self.fail: Exception | None = None

    def enqueue(self, sender: str, recipients: list[str], data: Any,
                qid: str) -> defer.Deferred[str]:
        """Record the message (reading a file-like C{data}) and its id, or fail with
        C{self.fail}."""
        if self.fail is not None:
            return defer.fail(self.fail)
        body = data if isinstance(data, bytes) else data.read()
        self.items.append((sender, list(recipients), body))
        self.ids.append(qid)
        return defer.succeed(qid)


class DeferredRunner:
    """A runner whose calls wait until the test releases them (shows PIPELINING order)."""

    def __init__(self) -> None:
        self.calls: list[tuple[defer.Deferred[Any], Callable[[], Any]]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Queue C{f}; it runs when L{release} is called."""
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((d, lambda: f(*args, **kwargs)))
        return d

    def release(self, n: int | None = None) -> int:
        """Run the oldest C{n} queued calls (all when None); return how many ran."""
        ran = 0
        while self.calls and (n is None or ran < n):
            d, f = self.calls.pop(0)
            try:
                result = f()
            except Exception:
                d.errback()
            else:
                d.callback(result)
            ran += 1
        return ran


@implementer(ITLSTransport)
class FakeTLSTransport(StringTransport):
    """A StringTransport that can 'start TLS': it records the call and becomes secure."""

    tlsStarted = False

    def startTLS(self, contextFactory: Any) -> None:
        """Record the call and provide ISSLTransport from now on."""
        self.tlsStarted = True
        self.tlsContext = contextFactory
        directlyProvides(self, ISSLTransport)


class SMTPStack:
    """A complete SMTP server stack over temporary files, driven by a Clock."""

    def __init__(
        self,
        testcase: TestCase,
        role: str = "mx",
        cleartext: str = "tls-or-loopback",
        aliases: str | None = None,
        queue: Any = None,
        tlsContext: Any = None,
        implicitTLS: bool = False,
        runner: Any = None,
        smtp: dict[str, Any] | None = None,
        submission: dict[str, Any] | None = None,
        penalty: AuthPenalty | None = None,
        auth: dict[str, Any] | None = None,
    ) -> None:
        cheapHashing(testcase)
        self.base = os.path.abspath(testcase.mktemp())
        os.makedirs(self.base)
        self.passwdPath = os.path.join(self.base, "passwd")
        self.passwd = PasswdFile(self.passwdPath)
        for address, password in USERS.items():
            self.passwd.add(address, password)
        smtpSection: dict[str, Any] = dict(smtp or {})
        if aliases is not None:
            self.aliasesPath = os.path.join(self.base, "aliases")
            with open(self.aliasesPath, "w", encoding="utf-8") as f:
                f.write(aliases)
            smtpSection["aliases"] = self.aliasesPath
        self.config = configModule.load(None, {
            "server": {"data": self.base, "hostname": HOSTNAME, "domains": DOMAINS},
            "auth": {"passwd": self.passwdPath, "cleartext": cleartext, **(auth or {})},
            "smtp": smtpSection,
            "submission": dict(submission or {}),
        })
        self.clock = task.Clock()
        self.runner = runner if runner is not None else InlineRunner()
        self.store = MaildirStore(os.path.join(self.base, "mail"), HOSTNAME)
        self.directory = Directory(self.passwd, self.config.domains,
                                   self.config.smtp.recipient_delimiter)
        self.queue = queue
        self.avatars = DeliveryAvatars(self.store, self.directory, self.runner, self.config,
                                       queue, clock=self.clock)
        self.realm = MailRealm({IMessageDelivery: self.avatars})
        checker = PasswdChecker(self.passwd, InlineRunner())
        self.portal = Portal(self.realm, [checker, AllowAnonymousAccess()])
        self.gate = AuthGate(self.portal, penalty if penalty is not None else AuthPenalty(),
                             self.clock)
        self.factory = SMTPFactory(self.config, self.gate, self.portal, tlsContext, role,
                                   implicitTLS, self.clock)

    def connect(self, peer: str = REMOTE, tls: bool = False) -> WireClient:
        """A new session from C{peer}; C{tls} gives a transport that supports STARTTLS."""
        proto = self.factory.buildProtocol(IPv4Address("TCP", peer, 40000))
        transport = (FakeTLSTransport if tls else StringTransport)(
            peerAddress=IPv4Address("TCP", peer, 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 25),
        )
        proto.makeConnection(transport)
        return WireClient(proto, transport)

    def messages(self, address: str) -> list[bytes]:
        """The contents of every message in C{address}'s INBOX, oldest first."""
        folder = self.store.account(address).folder("INBOX")
        state = folder.scan()
        out = []
        for info in state.messages:
            with folder.open(info) as f:
                out.append(f.read())
        return out


    def files(self, address: str) -> list[str]:
        """The paths of the message files in C{address}'s INBOX (C{new/} and C{cur/})."""
        root = self.store.account(address).root
        return sorted(os.path.join(root, sub, name) for sub in ("new", "cur")
                      for name in os.listdir(os.path.join(root, sub)))


class WireClient:
    """Talks to an L{SMTPServer} over a StringTransport."""

    def __init__(self, proto: SMTPServer, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport
        self.greeting = self.replies()

    def send(self, data: bytes) -> None:
        """Deliver C{data} to the server as one read."""
        self.proto.dataReceived(data)

    def output(self) -> bytes:
        """Everything written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def replies(self) -> list[bytes]:
        """The complete replies written since the last call (multi-line ones joined by LF)."""
        data = self.output()
        replies: list[bytes] = []
        current: list[bytes] = []
        for line in data.split(b"\r\n")[:-1]:
            current.append(line)
            if line[3:4] != b"-":
                replies.append(b"\n".join(current))
                current = []
        assert not current, f"incomplete reply: {current!r}"
        return replies

    def cmd(self, line: bytes | str) -> bytes:
        """Send one command; return the one reply it got (fails if there is not one)."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        got = self.replies()
        assert len(got) == 1, f"expected one reply to {line!r}, got {got!r}"
        return got[0]

    @property
    def closed(self) -> bool:
        """Whether the server closed the connection."""
        return bool(self.transport.disconnecting)

    def ehlo(self, name: str = "client.example") -> bytes:
        """EHLO; return the reply."""
        return self.cmd(f"EHLO {name}")

    def authPlain(self, user: str, password: str) -> bytes:
        """AUTH PLAIN with an initial response; return the reply."""
        import base64

        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {token}")

    def sendMail(self, sender: str, rcpts: list[str], body: bytes, params: str = "") -> list[bytes]:
        """A transaction: the commands pipelined in one write, the body after C{354}.

        Returns every reply (MAIL, RCPTs, DATA and, when DATA was accepted, the final one).
        """
        lines = [f"MAIL FROM:<{sender}>{params}".encode()]
        lines += [f"RCPT TO:<{r}>".encode() for r in rcpts]
        lines.append(b"DATA")
        self.send(b"\r\n".join(lines) + b"\r\n")
        got = self.replies()
        if got and got[-1].startswith(b"354"):
            self.send(body + b".\r\n")
            got += self.replies()
        return got
