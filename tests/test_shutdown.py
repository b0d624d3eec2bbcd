"""SIGTERM with sessions open (L{pymaild.shutdown}): idle ones are told goodbye at once,
busy ones finish first, and the grace period bounds the wait.

Each test runs a real ``twistd -n pymaild`` with raw socket clients, sends it SIGTERM,
and reads what each client gets and what reached the Maildir.
"""

from __future__ import annotations

import os
import signal
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from pymaild.store import MaildirStore
from tests.support import ServerProcess, dataWithUsers

USER = "alice@example.org"
PASSWORD = "alice-secret-pw"


def readUntilClosed(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got


def readLine(sock: socket.socket) -> bytes:
    """One CRLF-terminated line."""
    sock.settimeout(30)
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


class ShutdownTests(SynchronousTestCase):
    """What clients see when the server is stopped."""

    def start(self, grace: int) -> ServerProcess:
        """A server with one user and C{server.shutdown_grace = grace}."""
        base, data = dataWithUsers(self, {USER: PASSWORD})
        config = os.path.join(base, "pymaild.toml")
        with open(config, "w") as f:
            f.write(f"[server]\nshutdown_grace = {grace}\n")
        server = ServerProcess(data, "example.org", listeners=("smtp", "pop3", "imap"),
                               extra=["--config", config])
        server.start()
        self.addCleanup(server.stop)
        self.data = data
        return server

    def connect(self, port: int) -> socket.socket:
        """A connection whose greeting has been read."""
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.addCleanup(s.close)
        readLine(s)
        return s

    def inData(self, server: ServerProcess) -> socket.socket:
        """An SMTP session that has sent DATA for one message to the user and got 354."""
        smtp = self.connect(server.ports["smtp"])
        smtp.sendall(b"EHLO client.example\r\n")
        while not readLine(smtp).startswith(b"250 "):
            pass
        smtp.sendall(f"MAIL FROM:<s@remote.example>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode())
        for _ in range(3):
            readLine(smtp)
        return smtp

    def inbox(self) -> list[bytes]:
        """The messages in the user's INBOX."""
        folder = MaildirStore(os.path.join(self.data, "mail"), "x").account(USER).folder(
            "INBOX")
        out = []
        for info in folder.scan().messages:
            with folder.open(info) as f:
                out.append(f.read())
        return out

    def test_idleSessionsGoodbye(self) -> None:
        """Idle SMTP, POP3 and IMAP (IDLE) sessions get 421, -ERR and BYE at once and
        the server exits long before its grace period."""
        server = self.start(grace=60)
        smtp = self.connect(server.ports["smtp"])
        smtp.sendall(b"EHLO client.example\r\n")
        while not readLine(smtp).startswith(b"250 "):
            pass
        pop = self.connect(server.ports["pop3"])
        pop.sendall(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
        readLine(pop)
        self.assertTrue(readLine(pop).startswith(b"+OK"))
        imap = self.connect(server.ports["imap"])
        imap.sendall(f"a LOGIN {USER} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
        while not readLine(imap).startswith(b"+ "):
            pass
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        self.assertIn(b"421 4.3.2 ", readUntilClosed(smtp))
        self.assertIn(b"-ERR [SYS/TEMP] Server shutting down", readUntilClosed(pop))
        self.assertIn(b"* BYE [UNAVAILABLE] Server shutting down", readUntilClosed(imap))
        # twistd ends by the signal it was stopped with, once the shutdown is done.
        self.assertEqual(server.proc.wait(30), -signal.SIGTERM)
        self.assertLess(time.monotonic() - started, 30)

    def test_busyTransactionFinishes(self) -> None:
        """A message whose DATA is under way when SIGTERM comes is received to the end,
        stored and answered 250; then the session gets 421."""
        server = self.start(grace=60)
        smtp = self.inData(server)
        smtp.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the drain has looked at it several times
        self.assertIsNone(server.proc.poll())
        smtp.sendall(b"second half\r\n.\r\n")
        rest = readUntilClosed(smtp)
        self.assertRegex(rest, rb"^250 2\.0\.0 Ok: queued as \w+\r\n421 4\.3\.2 ")
        # twistd ends by the signal it was stopped with, once the shutdown is done.
        self.assertEqual(server.proc.wait(30), -signal.SIGTERM)
        [stored] = self.inbox()
        self.assertIn(b"first half\r\nsecond half\r\n", stored)

    def test_graceBoundsTheWait(self) -> None:
        """A transfer that never ends is cut at the grace period: 421, nothing stored,
        and the server exits."""
        server = self.start(grace=2)
        smtp = self.inData(server)
        smtp.sendall(b"Subject: never ends\r\n\r\nbody\r\n")
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        self.assertIn(b"421 4.3.2 ", readUntilClosed(smtp))
        # twistd ends by the signal it was stopped with, once the shutdown is done.
        self.assertEqual(server.proc.wait(30), -signal.SIGTERM)
        self.assertGreaterEqual(time.monotonic() - started, 1.5)
        self.assertEqual(self.inbox(), [])

    def test_imapCommandFinishes(self) -> None:
        """An APPEND whose literal is arriving at SIGTERM completes (OK, stored), then
        BYE."""
        server = self.start(grace=60)
        imap = self.connect(server.ports["imap"])
        message = b"Subject: appended\r\n\r\n" + b"x" * 5000 + b"\r\n"
        imap.sendall(f"a LOGIN {USER} {PASSWORD}\r\n".encode())
        self.assertTrue(readLine(imap).startswith(b"a OK"))
        imap.sendall(b"b APPEND INBOX {%d}\r\n" % len(message))
        self.assertTrue(readLine(imap).startswith(b"+"))
        imap.sendall(message[:100])
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        imap.sendall(message[100:] + b"\r\n")
        rest = readUntilClosed(imap)
        self.assertRegex(rest, rb"b OK \[APPENDUID \d+ \d+\][^\r]*\r\n\* BYE \[UNAVAILABLE\]")
        # twistd ends by the signal it was stopped with, once the shutdown is done.
        self.assertEqual(server.proc.wait(30), -signal.SIGTERM)
        self.assertEqual(len(self.inbox()), 1)

