"""POP3 over real sockets on 127.0.0.1:0: Python's poplib (plain, STLS, POP3S) and a raw
TLS client proving that plaintext pipelined behind STLS is never executed.

The server runs in the test's reactor with a real ThreadRunner (disk and hashing in a
thread pool), the real gate on the reactor clock, and a self-signed certificate from
C{pymaild.tls.ensureSelfSigned}. Blocking clients run in threads (C{deferToThread}).
"""

from __future__ import annotations

import poplib
import socket
import ssl
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from pymaild.pop3.server import CHUNK_SIZE
from tests.test_pop3_helpers import ALICE, ALICE_PW, LoopbackServer, makeMessage

HOST = "127.0.0.1"


def insecureContext() -> ssl.SSLContext:
    """A client context that accepts any certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def readLine(sock: Any) -> bytes:
    """Read one CRLF line from a socket, byte by byte (never past the line)."""
    data = b""
    while not data.endswith(b"\r\n"):
        b = sock.recv(1)
        if not b:
            raise ConnectionError(f"closed after {data!r}")
        data += b
    return data


def fill(n: int) -> bytes:
    """C{n} octets of short CRLF lines (at least 2 octets)."""
    assert n >= 2
    out = []
    while n:
        size = min(n, 100)
        if n - size == 1:
            size -= 1
        out.append(b"x" * (size - 2) + b"\r\n")
        n -= size
    return b"".join(out)


def dotsAt(head: bytes, offsets: tuple[int, ...]) -> bytes:
    """C{head} followed by short lines such that a '.' line starts at each offset."""
    data = bytearray(head)
    for off in offsets:
        data += fill(off - len(data))
        data += b".\r\n"
    return bytes(data)


def retrBytes(lines: list[bytes]) -> bytes:
    """The message poplib returned (lines already unstuffed), with CRLF line ends."""
    return b"".join(line + b"\r\n" for line in lines)


class LoopbackTests(TestCase):
    """POP3 through real TCP and TLS on loopback."""

    def setUp(self) -> Any:
        """Start a POP3 listener (STLS) and a POP3S listener on 127.0.0.1:0."""
        self.server = LoopbackServer(self)
        self.store = self.server.store
        self.cert = self.server.cert
        self.port = self.server.port
        self.sport = self.server.sport
        self.factory = self.server.factory

    def deliver(self, *messages: bytes) -> None:
        """Put messages in alice's INBOX."""
        self.server.deliver(*messages)

    def inboxCount(self) -> int:
        """Messages in alice's INBOX now."""
        return self.server.inboxCount()

    @defer.inlineCallbacks
    def test_poplibPlainFromLoopback(self) -> Any:
        """poplib over plain TCP from loopback: CAPA, USER/PASS, STAT, LIST, UIDL, RETR
        (a message with '.' lines at 16 KiB and 64 KiB edges), TOP, DELE and QUIT."""
        big = dotsAt(makeMessage("edges", b""), (16384, CHUNK_SIZE, 2 * CHUNK_SIZE))
        big += fill(CHUNK_SIZE)
        small = makeMessage("small", b".leading dot\r\nend\r\n")
        for edge in (16384, CHUNK_SIZE, 2 * CHUNK_SIZE):
            self.assertEqual(big[edge - 2:edge + 3], b"\r\n.\r\n")
        self.deliver(small, big)

        def client() -> dict[str, Any]:
            c = poplib.POP3(HOST, self.port, timeout=30)
            out: dict[str, Any] = {"welcome": c.getwelcome(), "capa": c.capa()}
            c.user(ALICE)
            c.pass_(ALICE_PW)
            out["stat"] = c.stat()
            out["list"] = c.list()[1]
            out["uidl"] = c.uidl()[1]
            out["retr"] = [retrBytes(c.retr(i)[1]) for i in (1, 2)]
            out["top"] = retrBytes(c.top(1, 0)[1])
            c.dele(1)
            out["quit"] = c.quit()
            return out

        out = yield threads.deferToThread(client)
        self.assertNotIn(b"<", out["welcome"])
        self.assertIn("USER", out["capa"])
        self.assertIn("PIPELINING", out["capa"])
        self.assertEqual(out["stat"], (2, len(small) + len(big)))
        self.assertEqual(out["list"], [b"1 %d" % len(small), b"2 %d" % len(big)])
        self.assertEqual(len(out["uidl"]), 2)
        self.assertEqual(out["retr"], [small, big])
        self.assertEqual(out["top"], small[: small.index(b"\r\n\r\n") + 4])
        self.assertTrue(out["quit"].startswith(b"+OK"))
        yield defer.DeferredList(self.factory.lost)
        self.assertEqual(self.inboxCount(), 1)

    @defer.inlineCallbacks
    def test_poplibSTLS(self) -> Any:
        """poplib.stls() with the server's certificate as CA: CAPA offers STLS before and
        not after; login and RETR work inside TLS."""
        message = makeMessage("tls", b"over tls\r\n.\r\n")
        self.deliver(message)

        def client() -> dict[str, Any]:
            ctx = ssl.create_default_context(cafile=self.cert)
            c = poplib.POP3(HOST, self.port, timeout=30)
            out: dict[str, Any] = {"before": c.capa()}
            c.stls(ctx)
            out["after"] = c.capa()
            out["cipher"] = c.sock.cipher()
            c.user(ALICE)
            c.pass_(ALICE_PW)
            out["retr"] = retrBytes(c.retr(1)[1])
            c.quit()
            return out

        out = yield threads.deferToThread(client)
        self.assertIn("STLS", out["before"])
        self.assertNotIn("STLS", out["after"])
        self.assertIn("SASL", out["after"])
        self.assertIsNotNone(out["cipher"])
        self.assertEqual(out["retr"], message)

    @defer.inlineCallbacks
    def test_poplibPOP3S(self) -> Any:
        """POP3 over implicit TLS (the POP3S listener): no STLS offered; login works; a
        4 MB message with a '.' line at every 64 KiB edge arrives intact."""
        line = b"0123456789" * 10 + b"\r\n"
        parts = [makeMessage("huge", b"")]
        size = len(parts[0])
        while size < 4 * 1024 * 1024:
            parts.append(line)
            size += len(line)
        huge = b"".join(parts) + b".\r\n..\r\n"
        self.deliver(huge)

        def client() -> dict[str, Any]:
            c = poplib.POP3_SSL(HOST, self.sport, context=insecureContext(), timeout=60)
            out: dict[str, Any] = {"capa": c.capa()}
            c.user(ALICE)
            c.pass_(ALICE_PW)
            out["retr"] = retrBytes(c.retr(1)[1])
            c.quit()
            return out

        out = yield threads.deferToThread(client)
        self.assertNotIn("STLS", out["capa"])
        self.assertIn("USER", out["capa"])
        self.assertEqual(len(out["retr"]), len(huge))
        self.assertEqual(out["retr"], huge)

    @defer.inlineCallbacks
    def test_stlsInjectionOverRealTLS(self) -> Any:
        """'STLS\\r\\nSTAT\\r\\n' in one plaintext write: the server answers STLS, the
        STAT is never dispatched, and the first reply inside TLS is the one to CAPA."""

        def client() -> dict[str, Any]:
            raw = socket.create_connection((HOST, self.port), timeout=30)
            out: dict[str, Any] = {"greeting": readLine(raw)}
            raw.sendall(b"STLS\r\nSTAT\r\n")
            out["stls"] = readLine(raw)
            tls = insecureContext().wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b"CAPA\r\n")
            out["first"] = readLine(tls)
            capa = []
            while True:
                line = readLine(tls)
                if line == b".\r\n":
                    break
                capa.append(line)
            out["capa"] = capa
            tls.sendall(b"QUIT\r\n")
            out["quit"] = readLine(tls)
            tls.close()
            return out

        out = yield threads.deferToThread(client)
        self.assertEqual(out["stls"], b"+OK Begin TLS negotiation now.\r\n")
        self.assertEqual(out["first"], b"+OK Capability list follows\r\n")
        self.assertNotIn(b"STLS\r\n", out["capa"])
        self.assertEqual(out["quit"], b"+OK Logging out.\r\n")
        self.assertEqual(self.factory.commands, [b"STLS", b"CAPA", b"QUIT"])

    @defer.inlineCallbacks
    def test_injectedUserForgotten(self) -> Any:
        """A USER pipelined behind STLS is not remembered: PASS inside TLS is refused."""

        def client() -> bytes:
            raw = socket.create_connection((HOST, self.port), timeout=30)
            readLine(raw)
            raw.sendall(b"STLS\r\nUSER " + ALICE.encode() + b"\r\n")
            readLine(raw)
            tls = insecureContext().wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b"PASS " + ALICE_PW.encode() + b"\r\n")
            reply = readLine(tls)
            tls.close()
            return reply

        reply = yield threads.deferToThread(client)
        self.assertEqual(reply, b"-ERR No user name given: send USER first.\r\n")
        self.assertNotIn(b"USER", self.factory.commands)

    @defer.inlineCallbacks
    def test_dropWithoutQuitOverTCP(self) -> Any:
        """A client that DELEs and disconnects without QUIT deletes nothing, and the
        mailbox can be opened again at once."""
        self.deliver(makeMessage("keep", b"keep me\r\n"))

        def dropper() -> None:
            c = poplib.POP3(HOST, self.port, timeout=30)
            c.user(ALICE)
            c.pass_(ALICE_PW)
            c.dele(1)
            c.sock.close()

        yield threads.deferToThread(dropper)
        yield defer.DeferredList(self.factory.lost)
        self.assertEqual(self.inboxCount(), 1)

        def again() -> tuple[int, int]:
            c = poplib.POP3(HOST, self.port, timeout=30)
            c.user(ALICE)
            c.pass_(ALICE_PW)
            stat = c.stat()
            c.quit()
            return stat

        stat = yield threads.deferToThread(again)
        self.assertEqual(stat[0], 1)
