"""Fixtures shared by the IMAP tests (no tests here).

``IMAPEnv`` builds the real stack an IMAP session runs on: a ``MaildirStore`` in a temp
directory, a passwd file with two users, a ``Portal`` with ``PasswdChecker`` behind a
``MailRealm`` serving ``IMAPAvatars``, an ``AuthGate`` on a ``Clock``, an
``InlineRunner`` and an ``IMAPFactory``. ``Wire`` drives one protocol instance over a
``StringTransport`` and returns what the server wrote.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import imap4
from twisted.python.failure import Failure

from pymaild.auth.checker import PasswdChecker
from pymaild.auth.penalty import AuthGate, AuthPenalty
from pymaild.auth.realm import MailRealm
from pymaild.imap.account import IMAPAvatars
from pymaild.imap.notify import Registry
from pymaild.imap.server import IMAPFactory, IMAPServer
from pymaild.imap.summarycache import StructureCache
from pymaild.threads import InlineRunner
from tests.support import ALICE, ALICE_PW, BOB, BOB_PW, lowCostHashing, mailFixture  # noqa: F401
from tests.test_pop3_helpers import TLSStringTransport

LOOPBACK = "127.0.0.1"
REMOTE = "192.0.2.7"


def makeMessage(subject: str = "Hello", body: bytes = b"Body text.\r\n",
                extra: bytes = b"") -> bytes:
    """A small CRLF message with the given subject and body."""
    return (
        b"From: Carol <carol@remote.example>\r\n"
        b"To: Alice <alice@example.org>\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n" + extra
        + b"Message-ID: <" + subject.encode().replace(b" ", b".") + b"@remote.example>\r\n"
        b"\r\n" + body
    )


class Wire:
    """One client connection over a StringTransport."""

    def __init__(self, proto: IMAPServer, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport
        self.counter = 0

    def take(self) -> bytes:
        """What the server wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> bytes:
        """Feed raw bytes and return the server's output."""
        self.proto.dataReceived(data)
        return self.take()

    def cmd(self, line: bytes | str, tag: bytes | None = None) -> bytes:
        """Send one tagged command line (tag generated) and return the output."""
        if isinstance(line, str):
            line = line.encode()
        if tag is None:
            self.counter += 1
            tag = b"t%d" % self.counter
        self.lastTag = tag
        return self.send(tag + b" " + line + b"\r\n")

    def ok(self, line: bytes | str) -> bytes:
        """Send a command and assert that it ended with a tagged OK."""
        out = self.cmd(line)
        assert re.search(rb"(^|\r\n)" + re.escape(self.lastTag) + rb" OK", out), out
        return out

    def lose(self) -> None:
        """Drop the connection."""
        self.proto.connectionLost(Failure(ConnectionDone()))


def tagged(out: bytes, tag: bytes) -> bytes:
    """The tagged response line for C{tag} in C{out} (without CRLF)."""
    for line in out.split(b"\r\n"):
        if line.startswith(tag + b" "):
            return line
    raise AssertionError(f"no tagged line for {tag!r} in {out!r}")


def untagged(out: bytes) -> list[bytes]:
    """The untagged lines of C{out}."""
    return [line for line in out.split(b"\r\n") if line.startswith(b"* ")]


class IMAPEnv:
    """The real IMAP stack over a temporary Maildir tree, for one test."""

    def __init__(
        self,
        testcase: Any,
        cleartext: str = "tls-or-loopback",
        runner: Any = None,
        tlsContext: Any = None,
        implicitTLS: bool = False,
        maxLiteral: int = 52428800,
        imap: dict[str, Any] | None = None,
    ) -> None:
        self.base, self.config, self.store, self.passwd = mailFixture(
            testcase, cleartext, "imap", {"max_literal": maxLiteral, **(imap or {})})
        self.runner = runner if runner is not None else InlineRunner()
        self.clock = Clock()
        self.registry = Registry()
        self.cache = StructureCache()
        self.avatars = IMAPAvatars(self.store, self.runner, self.config,
                                   registry=self.registry, cache=self.cache, watcher=False)
        realm = MailRealm({imap4.IAccount: self.avatars})
        self.portal = Portal(realm, [PasswdChecker(self.passwd, self.runner),
                                     AllowAnonymousAccess()])
        self.gate = AuthGate(self.portal, AuthPenalty(), self.clock)
        self.factory = IMAPFactory(config=self.config, gate=self.gate, tlsContext=tlsContext,
                                   implicitTLS=implicitTLS, clock=self.clock)
        self.clients: list[Wire] = []
        testcase.addCleanup(self.cleanup)

    def cleanup(self) -> None:
        """Drop every client still connected; close the summary cache files."""
        for c in self.clients:
            if not c.proto._lost:
                c.lose()
        self.cache.close()
        self.avatars.cache.close()

    def deliver(self, *messages: bytes, address: str = ALICE, folder: str = "INBOX") -> list[str]:
        """Deliver messages to a user's folder; return their keys."""
        keys: list[str] = []
        for m in messages:
            keys += self.store.deliver([address], m, folder=folder)
        return keys

    def folder(self, name: str = "INBOX", address: str = ALICE) -> Any:
        """A store folder object (independent of any session)."""
        return self.store.account(address).folder(name)

    def connect(self, host: str = LOOPBACK, tls: bool = False) -> Wire:
        """A new connection from C{host}; C{tls} gives a transport that can start TLS."""
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        cls = TLSStringTransport if tls else StringTransport
        transport = cls(peerAddress=IPv4Address("TCP", host, 40000),
                        hostAddress=IPv4Address("TCP", "127.0.0.1", 143))
        proto.makeConnection(transport)
        client = Wire(proto, transport)
        self.clients.append(client)
        return client

    def login(self, user: str = ALICE, password: str = ALICE_PW) -> Wire:
        """A loopback connection logged in with LOGIN."""
        c = self.connect()
        c.take()
        c.ok(f'LOGIN {user} "{password}"')
        return c

    def selected(self, name: str = "INBOX", user: str = ALICE,
                 password: str = ALICE_PW) -> Wire:
        """A logged-in connection with C{name} selected."""
        c = self.login(user, password)
        c.ok(f'SELECT "{name}"')
        return c
