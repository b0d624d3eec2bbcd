"""SMTP fault rows of the reliability catalogue (research/reliability.md §3.5).

- F2 / S30, disk full: C{os.write} or C{os.fsync} fail with ENOSPC (EDQUOT, EIO) under
  the real store; the reply is C{452 4.3.1} (C{451 4.3.0} for other errors), never 250,
  the session keeps working and delivery recovers once space returns. The same on a real
  2 MiB tmpfs under a C{twistd pymaild} subprocess (skipped when mounting is not allowed).
- F4, client gone mid-DATA: over real loopback TCP through the tap's wrapper; nothing
  is stored, C{tmp/} stays empty, the connection count returns to zero.
- F5, slow clients: the idle timeouts (30 s before HELO, 5 minutes per command after)
  and the trickle guard, with the SMTP factory wrapped as the tap wraps it.
- F6, F7: a C{twistd pymaild} subprocess with 5000 idle connections still serves a new
  session at once, and survives 2000 closing together (half by RST); once it runs out
  of descriptors it answers C{421} and closes instead of spinning, and recovers.
- F8, incomplete TLS handshakes on the implicit-TLS ports: the SMTP room's own timeout
  cannot close such a connection; the tap's L{limits.HandshakeTimeoutFactory} does, on
  smtps, pop3s and imaps of a real C{twistd pymaild}.
"""

from __future__ import annotations

import errno
import os
import resource
import smtplib
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild import limits, tls
from pymaild.auth.passwd import PasswdFile
from pymaild.errors import StoreError
from pymaild.smtp.server import SMTPFactory
from pymaild.threads import ThreadRunner, makePool
from tests.support import ServerProcess, cpuSeconds
from tests.test_smtp_helpers import HOSTNAME, SMTPStack, WireClient

BODY = b"Subject: test\r\n\r\nHello.\r\n"
FULL = b"452 4.3.1 Insufficient system storage, try again later"
FAILED = b"451 4.3.0 Error: could not store message, try again later"
TIMEOUT = b"421 4.4.2 mx.example.org Error: timeout exceeded"


def _underPath(fd: int, base: str) -> bool:
    """Whether descriptor C{fd} is a file below C{base} (via /proc/self/fd)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return target.startswith(base + os.sep)


def _maildirFiles(root: str) -> dict[str, list[str]]:
    """Every file under C{root}, grouped by the name of its directory (new, cur, tmp)."""
    found: dict[str, list[str]] = {"new": [], "cur": [], "tmp": []}
    for dirpath, _dirs, files in os.walk(root):
        kind = os.path.basename(dirpath)
        if kind in found:
            found[kind].extend(os.path.join(dirpath, f) for f in files)
    return found


class DiskFullTests(SynchronousTestCase):
    """F2 / S30: write errors while storing never produce 250, and delivery recovers."""

    def setUp(self) -> None:
        """A server stack over real files; the fault switch starts off."""
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc (Linux) to tell the store's descriptors apart")
        self.stack = SMTPStack(self)
        self.base = os.path.realpath(self.stack.base)
        self.fault: int | None = None
        self.faults = 0

    def inject(self, name: str) -> None:
        """Make C{os.<name>} fail with C{self.fault} on files below the stack's base."""
        real: Callable[..., Any] = getattr(os, name)

        def faulty(fd: int, *args: Any) -> Any:
            if self.fault is not None and _underPath(fd, self.base):
                self.faults += 1
                raise OSError(self.fault, os.strerror(self.fault))
            return real(fd, *args)

        self.patch(os, name, faulty)

    def deliverThrough(self, c: WireClient, subject: bytes) -> bytes:
        """One transaction for alice on C{c}; the final reply."""
        body = b"Subject: " + subject + b"\r\n\r\n" + b"x" * 5000 + b"\r\n"
        return c.sendMail("s@remote.example", ["alice@example.org", "bob@example.org"],
                          body)[-1]

    def checkRecovery(self, name: str, code: int, reply: bytes) -> None:
        """Fail C{os.<name>} with C{code}: C{reply}, no 250, nothing left; then recover."""
        self.inject(name)
        c = self.stack.connect()
        c.ehlo()
        self.assertRegex(self.deliverThrough(c, b"before"), rb"^250 2\.0\.0 Ok")
        self.fault = code
        for attempt in (b"during 1", b"during 2"):
            self.assertEqual(self.deliverThrough(c, attempt), reply)
        self.assertGreaterEqual(self.faults, 2)
        self.assertEqual(c.cmd("NOOP"), b"250 2.0.0 Ok")
        other = self.stack.connect()
        self.assertEqual(other.greeting, [b"220 mx.example.org ESMTP pymaild"])
        self.fault = None
        self.assertRegex(self.deliverThrough(c, b"after"), rb"^250 2\.0\.0 Ok")
        for user in ("alice@example.org", "bob@example.org"):
            messages = self.stack.messages(user)
            self.assertEqual(len(messages), 2, user)
            self.assertIn(b"Subject: before\r\n", messages[0])
            self.assertIn(b"Subject: after\r\n", messages[1])
            self.assertTrue(all(m.endswith(b"x" * 5000 + b"\r\n") for m in messages))
        files = _maildirFiles(os.path.join(self.stack.base, "mail"))
        self.assertEqual(files["tmp"], [])
        self.assertEqual(len(files["new"]) + len(files["cur"]), 4)
        self.flushLoggedErrors(StoreError)

    def test_enospcOnWrite(self) -> None:
        """ENOSPC from os.write gives 452 4.3.1 each time; 250 again once space returns."""
        self.checkRecovery("write", errno.ENOSPC, FULL)

    def test_enospcOnFsync(self) -> None:
        """ENOSPC from os.fsync (delayed allocation) also gives 452 4.3.1, never 250."""
        self.checkRecovery("fsync", errno.ENOSPC, FULL)

    def test_edquotOnWrite(self) -> None:
        """A full quota (EDQUOT) is treated as a full disk: 452 4.3.1."""
        self.checkRecovery("write", errno.EDQUOT, FULL)

    def test_eioOnWrite(self) -> None:
        """Another write error (EIO) gives 451 4.3.0 and is logged, no traceback on the wire."""
        self.checkRecovery("write", errno.EIO, FAILED)


class TmpfsFullTests(SynchronousTestCase):
    """F2 on a real full file system: a 2 MiB tmpfs holds a twistd pymaild's data."""

    def setUp(self) -> None:
        """Mount the tmpfs (skip when not allowed) and start the server on it."""
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                            self.data], check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            self.skipTest(f"cannot mount a tmpfs here: {e}")
        self.addCleanup(self.unmount)
        PasswdFile(os.path.join(self.data, "passwd")).add("alice@example.org", "pw")
        self.server = ServerProcess(self.data, listeners=("smtp",)).start()
        self.addCleanup(self.server.stop)
        self.maildir = os.path.join(self.data, "mail", "example.org", "alice", "Maildir")

    def unmount(self) -> None:
        """Unmount the tmpfs (lazily if something still holds it)."""
        result = subprocess.run(["umount", self.data], capture_output=True, timeout=30)
        if result.returncode:
            subprocess.run(["umount", "-l", self.data], capture_output=True, timeout=30)

    def fill(self) -> str:
        """Fill the file system completely; return the filler's path."""
        path = os.path.join(self.data, "filler")
        chunk = b"\0" * 65536
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    self.assertEqual(e.errno, errno.ENOSPC)
                    break
            while True:
                try:
                    os.write(fd, b"\0" * 512)
                except OSError:
                    break
        finally:
            os.close(fd)
        return path

    def transaction(self, s: smtplib.SMTP, body: bytes) -> tuple[int, bytes]:
        """One transaction for alice; the final (code, text), whatever it is."""
        s.ehlo_or_helo_if_needed()
        s.mail("soak@remote.example")
        s.rcpt("alice@example.org")
        try:
            return s.data(body)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error

    def test_fullDiskNeverAcknowledged(self) -> None:
        """With the disk full every message gets 452 4.3.1 or 451 4.3.0, never 250.

        The session and new sessions keep working; after the filler is removed the
        same session delivers again; no partial file is ever visible and tmp/ is empty.
        """
        big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 300
        with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as s:
            self.assertEqual(self.transaction(s, b"Subject: first\r\n\r\nsmall\r\n")[0], 250)
            filler = self.fill()
            for _ in range(3):
                code, text = self.transaction(s, big)
                self.assertIn((code, text[:5]), [(452, b"4.3.1"), (451, b"4.3.0")], text)
            self.assertEqual(s.noop()[0], 250)
            with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as t:
                self.assertEqual(t.noop()[0], 250)
            os.unlink(filler)
            code, text = self.transaction(s, big)
            self.assertEqual(code, 250, text)
        self.assertIsNone(self.server.proc.poll() if self.server.proc else None)
        stored = [os.path.join(self.maildir, d, f) for d in ("new", "cur")
                  for f in os.listdir(os.path.join(self.maildir, d))]
        self.assertEqual(len(stored), 2)
        contents = sorted(open(p, "rb").read() for p in stored)
        self.assertTrue(any(m.endswith(b"\r\n\r\nsmall\r\n") for m in contents))
        self.assertTrue(any(m.endswith(big[-2000:]) for m in contents))
        self.assertEqual(os.listdir(os.path.join(self.maildir, "tmp")), [])
        self.assertNotIn("Traceback", self.server.log())


class _LiveSMTP:
    """An SMTP listener on 127.0.0.1:0 wrapped as the tap wraps it (limits, disk pool)."""

    def __init__(self, case: TestCase, **limitOptions: Any) -> None:
        pool = makePool("test-faults-disk", 4)
        pool.start()
        case.addCleanup(pool.stop)
        self.stack = SMTPStack(case, runner=ThreadRunner(reactor, pool))
        self.stack.factory = SMTPFactory(self.stack.config, self.stack.gate, self.stack.portal,
                                         None, "mx", False, reactor)
        self.limits = limits.ConnectionLimits()
        self.factory = limits.LimitedFactory(self.stack.factory, self.limits,
                                             limits.SMTP_REFUSAL, reactor, **limitOptions)
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        case.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until every connection was released (the server saw it close)."""
        end = time.monotonic() + timeout
        while self.limits.total and time.monotonic() < end:
            await task.deferLater(reactor, 0.05, lambda: None)


def _rst(sock: socket.socket) -> None:
    """Close C{sock} with a TCP reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class MidDataDisconnectTests(TestCase):
    """F4 / S29 over real TCP: a client that leaves during DATA leaves nothing behind."""

    async def test_nothingStored(self) -> None:
        """Closed (FIN or RST) after part of the body, or before the final dot: no message.

        tmp/ stays empty, the connection count goes back to zero, nothing is logged,
        and the next complete message is stored exactly once.
        """
        live = _LiveSMTP(self)

        def clients() -> list[bytes]:
            seen = []
            for how in ("fin-half", "rst-half", "fin-nodot", "rst-big"):
                sock = socket.create_connection(("127.0.0.1", live.port), timeout=20)
                f = sock.makefile("rb")
                f.readline()
                sock.sendall(b"EHLO c\r\nMAIL FROM:<s@remote.example>\r\n"
                             b"RCPT TO:<alice@example.org>\r\nDATA\r\n")
                while not (line := f.readline()).startswith(b"354"):
                    seen.append(line)
                if how.endswith("half"):
                    sock.sendall(b"Subject: partial\r\n\r\nhalf a mess")
                elif how.endswith("nodot"):
                    sock.sendall(BODY)
                else:
                    sock.sendall(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 2000)
                time.sleep(0.05)
                f.close()
                if how.startswith("rst"):
                    _rst(sock)
                else:
                    sock.close()
            return seen

        seen = await threads.deferToThread(clients)
        self.assertEqual(seen.count(b"250 2.1.5 Ok\r\n"), 4)
        await live.settled()
        self.assertEqual(live.limits.total, 0)
        self.assertEqual(live.stack.messages("alice@example.org"), [])
        files = _maildirFiles(os.path.join(live.stack.base, "mail"))
        self.assertEqual(files, {"new": [], "cur": [], "tmp": []})

        def complete() -> None:
            with smtplib.SMTP("127.0.0.1", live.port, timeout=20) as s:
                s.sendmail("s@remote.example", ["alice@example.org"], BODY)

        await threads.deferToThread(complete)
        await live.settled()
        self.assertEqual(len(live.stack.messages("alice@example.org")), 1)
        self.assertEqual(self.flushLoggedErrors(), [])


class SlowClientTests(SynchronousTestCase):
    """F5: timeouts and the trickle guard, with SMTP wrapped as the tap wraps it."""

    def setUp(self) -> None:
        """The SMTP stack behind a LimitedFactory with the configured line deadline."""
        self.stack = SMTPStack(self)
        self.limits = limits.ConnectionLimits(maxTotal=3, maxPerIP=2)
        self.factory = limits.LimitedFactory(
            self.stack.factory, self.limits, limits.SMTP_REFUSAL, self.stack.clock,
            lineDeadline=float(self.stack.config.limits.line_deadline))

    def connect(self, peer: str = "192.0.2.1") -> tuple[Any, StringTransport]:
        """A connection through the wrapper; returns (wrapper protocol, transport)."""
        addr = IPv4Address("TCP", peer, 40000)
        proto = self.factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport

    def test_rfcMinimumAfterGreeting(self) -> None:
        """After EHLO a client may think for 5 minutes per command (RFC 5321 §4.5.3.2.7)."""
        proto, transport = self.connect()
        proto.dataReceived(b"EHLO client.example\r\n")
        for _ in range(3):
            transport.clear()
            self.stack.clock.advance(299)
            self.assertFalse(transport.disconnecting)
            proto.dataReceived(b"NOOP\r\n")
            self.assertEqual(transport.value(), b"250 2.0.0 Ok\r\n")
        transport.clear()
        self.stack.clock.advance(300.5)
        self.assertEqual(transport.value(), TIMEOUT + b"\r\n")
        self.assertTrue(transport.disconnecting)

    def test_shortPreGreeting(self) -> None:
        """A client that never says HELO/EHLO is dropped after 30 s with 421 4.4.2."""
        proto, transport = self.connect()
        transport.clear()
        self.stack.clock.advance(29.5)
        self.assertFalse(transport.disconnecting)
        self.stack.clock.advance(1)
        self.assertEqual(transport.value(), TIMEOUT + b"\r\n")
        self.assertTrue(transport.disconnecting)

    def test_trickleCutOff(self) -> None:
        """One byte every 10 s resets the SMTP idle timer, but the trickle guard aborts.

        Before the first line the limit is 30 s; after it a partial line may stay
        incomplete for line_deadline (120 s), in command mode and inside DATA alike.
        The slot is released when the connection goes.
        """
        clock = self.stack.clock
        proto, transport = self.connect()
        for byte in b"EHLO slow.example":
            proto.dataReceived(bytes([byte]))
            clock.advance(10)
            if transport.disconnected:
                break
        self.assertTrue(transport.disconnected)
        self.assertLessEqual(clock.seconds(), 40)
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.limits.total, 0)
        for prefix in (b"", b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
                            b"DATA\r\nSubject: slow\r\n\r\n"):
            start = clock.seconds()
            proto, transport = self.connect()
            proto.dataReceived(b"EHLO slow.example\r\n" + prefix)
            for _ in range(100):
                proto.dataReceived(b"x")
                clock.advance(10)
                if transport.disconnected:
                    break
            self.assertTrue(transport.disconnected, prefix)
            self.assertLessEqual(clock.seconds() - start, 130)
            self.assertGreaterEqual(clock.seconds() - start, 120)
            proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.limits.total, 0)
        self.assertEqual(self.stack.messages("alice@example.org"), [])

    def test_capsRefuseWithSMTPReply(self) -> None:
        """Over the per-IP or total cap a client gets 421 4.7.0 and a close, not a greeting."""
        kept = [self.connect() for _ in range(2)]
        for _proto, transport in kept:
            self.assertTrue(transport.value().startswith(b"220 "))
        _proto, refused = self.connect()
        self.assertEqual(refused.value(), limits.SMTP_REFUSAL)
        self.assertTrue(refused.disconnecting)
        _proto, other = self.connect("198.51.100.7")
        self.assertTrue(other.value().startswith(b"220 "))
        _proto, overTotal = self.connect("203.0.113.9")
        self.assertEqual(overTotal.value(), limits.SMTP_REFUSAL)



def _greeting(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """The first line the server sends (b"" when it closes without one)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


class ManyConnectionsTests(SynchronousTestCase):
    """F6, F7 against a real C{twistd pymaild} (loopback trusted, so only totals count)."""

    idle = 5000

    def setUp(self) -> None:
        """Start the server with room for the idle crowd; raise our own descriptor limit."""
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc (Linux)")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.idle + 500
        if soft < want:
            if hard != resource.RLIM_INFINITY and hard < want:
                self.skipTest(f"descriptor limit {hard} is below {want}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        config = os.path.join(self.data, "pymaild.toml")
        with open(config, "w") as f:
            f.write('[auth]\ntrusted_networks = ["127.0.0.0/8"]\n'
                    f"[limits]\nmax_connections = {self.idle * 2}\n")
        PasswdFile(os.path.join(self.data, "passwd")).add("alice@example.org", "pw")
        self.server = ServerProcess(self.data, listeners=("smtp",),
                                    extra=["--config", config]).start()
        self.addCleanup(self.server.stop)
        self.port = self.server.ports["smtp"]
        self.sockets: list[socket.socket] = []
        self.addCleanup(self.closeAll)

    def closeAll(self) -> None:
        """Close every client socket still open."""
        for s in self.sockets:
            s.close()
        self.sockets = []

    def open(self, n: int, batch: int = 40) -> None:
        """Open C{n} idle connections, each greeted with 220, then left silent.

        They are opened in batches smaller than the listen backlog (50), each batch
        waiting for its greetings, so the client never outruns accept() and stalls in
        SYN retransmission.
        """
        for start in range(0, n, batch):
            group = [socket.create_connection(("127.0.0.1", self.port), timeout=10)
                     for _ in range(min(batch, n - start))]
            self.sockets += group
            for s in group:
                self.assertTrue(_greeting(s).startswith(b"220 "))

    def deliver(self, subject: str) -> float:
        """Deliver one message with smtplib; return the seconds it took."""
        start = time.monotonic()
        with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as s:
            s.sendmail("s@remote.example", ["alice@example.org"],
                       f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        return time.monotonic() - start

    def stored(self) -> int:
        """How many messages alice has."""
        md = os.path.join(self.data, "mail", "example.org", "alice", "Maildir")
        return sum(len(os.listdir(os.path.join(md, d))) for d in ("new", "cur"))

    def busySessions(self, n: int) -> list[socket.socket]:
        """C{n} sessions left in the middle of DATA with part of a body sent."""
        busy = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO c\r\nMAIL FROM:<s@remote.example>\r\n"
                      b"RCPT TO:<alice@example.org>\r\nDATA\r\n")
            while not f.readline().startswith(b"354"):
                pass
            s.sendall(b"Subject: never\r\n\r\npartial")
            f.close()
            busy.append(s)
        return busy

    def assertHealthy(self) -> None:
        """The server process runs and its log shows no unhandled error."""
        self.assertIsNone(self.server.proc.poll() if self.server.proc else 0)
        log = self.server.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)

    def test_idleCrowd(self) -> None:
        """F6: with 5000 idle connections open (each greeted), a new client still
        delivers a message within seconds, twice."""
        self.open(self.idle)
        self.assertLess(self.deliver("first"), 5.0)
        self.assertLess(self.deliver("second"), 5.0)
        self.assertEqual(self.stored(), 2)
        self.assertHealthy()

    def test_massClose(self) -> None:
        """F7: 2000 idle sessions and 50 in mid-DATA all close at once (half by RST);
        the server stays up, stores none of the partial messages and keeps serving."""
        self.open(2000)
        self.sockets += self.busySessions(50)
        for i, s in enumerate(self.sockets):
            if i % 2:
                _rst(s)
            else:
                s.close()
        self.sockets = []
        time.sleep(0.5)
        self.assertLess(self.deliver("after"), 5.0)
        self.assertEqual(self.stored(), 1)
        self.assertHealthy()

    def test_descriptorExhaustion(self) -> None:
        """Out of descriptors, new clients get 421 4.7.0 and a close, the CPU stays idle,
        and service resumes when descriptors free up."""
        if not hasattr(resource, "prlimit"):
            self.skipTest("needs resource.prlimit (Linux)")
        assert self.server.proc is not None
        pid = self.server.proc.pid
        open_ = len(os.listdir(f"/proc/{pid}/fd"))
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_ + 30, hard))
        greeted = 0
        answer = b""
        refusedInARow = 0
        # A refusal can come from a descriptor the server holds only for a moment (a
        # directory scan of the queue, say); go on until three refusals in a row show
        # that every descriptor is held by a greeted client.
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            self.sockets.append(s)
            answer = _greeting(s, 2.0)
            if answer.startswith(b"220 "):
                greeted += 1
                refusedInARow = 0
                continue
            self.assertEqual(answer, limits.SMTP_REFUSAL)
            refusedInARow += 1
            if refusedInARow == 3:
                break
        self.assertEqual(answer, limits.SMTP_REFUSAL)
        self.assertEqual(refusedInARow, 3)
        self.assertGreater(greeted, 10)
        # A fixed number of clients, each given all the time it needs: a count in a
        # time window would measure the machine's load, not the server.
        before = cpuSeconds(pid)
        outcomes: dict[bytes, int] = {}
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                got = _greeting(s, 10.0)
                outcomes[got] = outcomes.get(got, 0) + 1
            time.sleep(0.005)
        cpu = cpuSeconds(pid) - before
        # Every client gets an answer: the refusal, or (when a descriptor the server used
        # for a moment, such as a queue directory scan, has just been released) service.
        greeting = b"220 mail.example.org ESMTP pymaild\r\n"
        self.assertLessEqual(set(outcomes), {limits.SMTP_REFUSAL, greeting}, outcomes)
        self.assertGreater(outcomes[limits.SMTP_REFUSAL], 20)
        self.assertGreaterEqual(outcomes[limits.SMTP_REFUSAL], 0.9 * sum(outcomes.values()),
                                outcomes)
        self.assertLess(cpu, 0.5, f"{cpu:.2f} s CPU for 40 clients while out of"
                                  f" descriptors ({outcomes})")
        self.closeAll()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                if _greeting(s, 2.0).startswith(b"220 "):
                    break
            time.sleep(0.1)
        self.assertLess(self.deliver("recovered"), 5.0)
        self.assertEqual(self.stored(), 1)
        log = self.server.log()
        self.assertIn("cannot accept connections: Too many open files", log)
        self.assertIn("accepting connections again", log)


#: The first bytes of a TLS ClientHello: a record header and a handshake header that
#: announce far more than is ever sent.
HALF_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20


def _clientContext() -> ssl.SSLContext:
    """A client TLS context that accepts the server's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class HandshakeTimeoutTests(SynchronousTestCase):
    """F8: an incomplete TLS handshake on port 465 (and 993, 995) does not hold a slot."""

    def stalled(self, deadline: float | None) -> tuple[SMTPStack, limits.ConnectionLimits,
                                                         StringTransport]:
        """An implicit-TLS submission connection that sent half a ClientHello.

        Built as the tap builds it: TLS(deadline(limits(SMTP))), the deadline only when
        C{deadline} is given.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
        tls.ensureSelfSigned(cert, key, [HOSTNAME])
        ctx = tls.serverContext(cert, key)
        stack = SMTPStack(self, tlsContext=ctx, implicitTLS=True, role="submission")
        counts = limits.ConnectionLimits()
        factory: Any = limits.LimitedFactory(stack.factory, counts, limits.SMTP_REFUSAL,
                                             stack.clock)
        if deadline is not None:
            factory = limits.HandshakeTimeoutFactory(factory, stack.clock, deadline)
        tlsFactory = TLSMemoryBIOFactory(ctx, False, factory)
        addr = IPv4Address("TCP", "192.0.2.9", 50000)
        proto = tlsFactory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        proto.dataReceived(HALF_CLIENT_HELLO)
        self.assertEqual(counts.total, 1)
        return stack, counts, transport

    def test_roomTimeoutAloneIsStuck(self) -> None:
        """Without the deadline the SMTP greeting timeout cannot close the connection.

        Its 421 waits in the TLS send buffer for a handshake that never comes, so
        loseConnection does nothing: the slot would be held for ever (Dovecot
        CVE-2014-3430). This is why the tap adds the deadline.
        """
        stack, _counts, transport = self.stalled(None)
        stack.clock.advance(3600)
        self.assertFalse(transport.disconnected)

    def test_deadlineAbortsStalledHandshake(self) -> None:
        """With the default 30 s deadline the connection is aborted at 30 s, not before."""
        stack, _counts, transport = self.stalled(30.0)
        stack.clock.advance(29.9)
        self.assertFalse(transport.disconnected)
        stack.clock.advance(0.2)
        self.assertTrue(transport.disconnected)

    def test_tapWiresDeadline(self) -> None:
        """A real twistd pymaild: half a ClientHello on smtps, pop3s or imaps is dropped
        after limits.tls_handshake_timeout (1 s here); silence too; a client that
        finished its handshake outlives the deadline and is served."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        config = os.path.join(data, "pymaild.toml")
        with open(config, "w") as f:
            f.write("[limits]\ntls_handshake_timeout = 1\n")
        server = ServerProcess(data, listeners=("smtps", "pop3s", "imaps"),
                               extra=["--config", config]).start()
        self.addCleanup(server.stop)
        for name in ("smtps", "pop3s", "imaps"):
            for payload in (HALF_CLIENT_HELLO, b""):
                start = time.monotonic()
                with socket.create_connection(("127.0.0.1", server.ports[name]),
                                              timeout=15) as s:
                    s.sendall(payload)
                    got = _greeting(s, 15.0)
                elapsed = time.monotonic() - start
                self.assertEqual(got, b"", name)
                self.assertGreater(elapsed, 0.8, name)
                self.assertLess(elapsed, 5.0, f"{name}: closed after {elapsed:.1f} s")
        raw = socket.create_connection(("127.0.0.1", server.ports["smtps"]), timeout=15)
        with _clientContext().wrap_socket(raw) as s:
            f = s.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220 "))
            time.sleep(1.5)
            s.sendall(b"EHLO client.example\r\n")
            self.assertTrue(f.readline().startswith(b"250-"))
            f.close()
        self.assertIn("TLS handshake", server.log())
