"""Worker processes (L{pymaild.workers}, L{pymaild.worker}, L{pymaild.anvil}) in a real
``twistd -n pymaild --workers 2``.

Which process serves a connection is read from the kernel: the server side of the
connection in C{/proc/net/tcp} and the process whose descriptors hold that socket. So
each test knows it used the master and the worker, and checks what must hold across
them: both serve, a per-IP cap and the login penalty are counted once for both, mail
a worker accepts is relayed by the master's queue at once, SIGHUP and SIGTERM reach the
worker, a killed worker is replaced; with C{--workers 1} there is one process.
"""

from __future__ import annotations

import base64
import glob
import imaplib
import os
import re
import signal
import smtplib
import socket
import socketserver
import ssl
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support import ServerProcess, dataWithUsers
from tests.test_metrics import scrape

USER = "alice@example.org"
PASSWORD = "alice-secret-pw"


def children(pid: int) -> list[int]:
    """The process ids of C{pid}'s children."""
    found: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return found


def _socketInode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the IPv4 TCP socket from C{local} to C{remote}, from /proc/net/tcp."""
    def hexaddr(host: str, port: int) -> str:
        packed = socket.inet_aton(host)
        return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"

    want = (hexaddr(*local), hexaddr(*remote))
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                return int(fields[9])
    return None


def servingProcess(client: socket.socket, pids: list[int]) -> int | None:
    """Which of C{pids} holds the server side of C{client}'s connection (accepted)."""
    inode = _socketInode(client.getpeername(), client.getsockname())
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    return None


def waitFor(predicate: Any, timeout: float = 30.0, what: str = "the condition") -> Any:
    """Poll C{predicate} until it returns something true; that value.

    @raise AssertionError: still false after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Sink(socketserver.ThreadingTCPServer):
    """A loopback SMTP server that keeps the recipients of each message it receives
    (the relay's smarthost)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.received: list[tuple[float, list[str]]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])

    def close(self) -> None:
        """Stop serving."""
        self.shutdown()
        self.server_close()


class _SinkHandler(socketserver.StreamRequestHandler):
    """One SMTP session of the sink: accepts everything."""

    server: Sink

    def handle(self) -> None:
        """Speak enough SMTP for the relay."""
        self.wfile.write(b"220 sink ESMTP\r\n")
        rcpts: list[str] = []
        while True:
            line = self.rfile.readline(10000)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250-sink\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                rcpts = []
                self.wfile.write(b"250 ok\r\n")
            elif verb == b"RCPT":
                rcpts.append(line.split(b"<", 1)[1].split(b">", 1)[0].decode())
                self.wfile.write(b"250 ok\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go\r\n")
                while self.rfile.readline(100000) not in (b".\r\n", b""):
                    pass
                self.server.received.append((time.monotonic(), rcpts))
                self.wfile.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


class WorkersTestBase(SynchronousTestCase):
    """A real server with C{--workers 2} and the helpers to tell its processes apart."""

    config = ""
    workers = 2

    def setUp(self) -> None:
        """Start the server (with C{config} as its configuration file) and wait until
        its worker says it runs."""
        base, data = dataWithUsers(self, {USER: PASSWORD})
        path = os.path.join(base, "pymaild.toml")
        with open(path, "w") as f:
            f.write(self.config)
        self.server = ServerProcess(
            data, "example.org",
            listeners=("smtp", "submission", "imap", "imaps", "metrics"),
            extra=["--config", path], workers=self.workers)
        self.server.start()
        self.addCleanup(self.server.stop)
        assert self.server.proc is not None
        self.master = self.server.proc.pid
        if self.workers > 1:
            self.worker = self.runningWorker()

    def runningWorker(self, other: int | None = None) -> int:
        """The pid of the worker once its log says it runs (not C{other})."""
        def running() -> int | None:
            pids = [int(p) for p in re.findall(r"worker 1 running \(pid (\d+)\)",
                                               self.server.log())]
            pids = [p for p in pids if p != other and p in children(self.master)]
            return pids[-1] if pids else None

        return int(waitFor(running, 60, "the worker to run"))

    def connections(self, port: int, count: int, greeting: bytes
                    ) -> dict[int, list[socket.socket]]:
        """Open connections to C{port} until both processes serve one (at most
        C{count}), each read up to its greeting; the open sockets by serving pid (one
        each: a second one on the same process is closed again, and a connection over
        a cap, waiting for an earlier one's release, is tried again)."""
        byPid: dict[int, list[socket.socket]] = {}
        pids = [self.master, self.worker]
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            self.addCleanup(s.close)
            first = s.recv(1000)
            if not first.startswith(greeting) and b"Too many connections" in first:
                s.close()
                time.sleep(0.1)
                continue
            self.assertTrue(first.startswith(greeting), first)
            pid = waitFor(lambda s=s: servingProcess(s, pids), 10, "the serving process")
            if pid in byPid:
                s.close()
                continue
            byPid[pid] = [s]
            if len(byPid) == 2:
                break
        return byPid

    def bothProcesses(self, port: int, greeting: bytes) -> dict[int, list[socket.socket]]:
        """Connections served by the master and by the worker (several rounds of
        simultaneous connections: the kernel wakes either process)."""
        for _ in range(20):
            byPid = self.connections(port, 100, greeting)
            if len(byPid) == 2:
                return byPid
            for socks in byPid.values():
                for s in socks:
                    s.close()
        self.fail("one process accepted every connection")


class ServingTests(WorkersTestBase):
    """Both processes accept on the shared sockets and count in one C{/metrics}."""

    def test_bothServe(self) -> None:
        """The worker is the master's child; SMTP connections, and IMAP connections over
        implicit TLS, are served by both, and the master's C{/metrics} shows each one's
        count under its C{worker} label."""
        self.assertIn(self.worker, children(self.master))
        byPid = self.bothProcesses(self.server.ports["smtp"], b"220 ")
        self.assertEqual(set(byPid), {self.master, self.worker})
        for socks in byPid.values():
            for s in socks:
                s.sendall(b"QUIT\r\n")
                self.assertTrue(s.recv(1000).startswith(b"221"))
        # Implicit TLS (the TLS layer around the same wrappers, in each process).
        context = ssl._create_unverified_context()
        seen: set[int] = set()
        for _ in range(200):
            raw = socket.create_connection(("127.0.0.1", self.server.ports["imaps"]),
                                           timeout=30)
            with context.wrap_socket(raw) as tls:
                self.assertTrue(tls.recv(1000).startswith(b"* OK"))
                pid = waitFor(lambda t=tls: servingProcess(t, [self.master, self.worker]),
                              10, "the serving process")
                seen.add(pid)
                tls.sendall(b"a LOGOUT\r\n")
                tls.recv(1000)
            if len(seen) == 2:
                break
        self.assertEqual(seen, {self.master, self.worker})
        m = scrape(self.server.ports["metrics"])
        counts = {labels: v for (name, labels), v in m.items()
                  if name == "pymaild_connections_total"}
        self.assertGreater(counts.get((("listener", "smtp"), ("worker", "0")), 0), 0)
        self.assertGreater(counts.get((("listener", "smtp"), ("worker", "1")), 0), 0)


class CapTests(WorkersTestBase):
    """A per-IP cap is one count for every process."""

    config = ("[limits]\nmax_connections_per_ip = 3\nmax_connections_per_user_ip = 1\n"
              "[submission]\nmax_messages_per_hour = 1\n")

    def test_perIPCap(self) -> None:
        """With three connections from 127.0.0.1 open (on whichever process), every
        further one is refused with 421, by the master and by the worker alike; once one
        closes, a new one is admitted."""
        port = self.server.ports["smtp"]
        held = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            self.addCleanup(s.close)
            self.assertTrue(s.recv(1000).startswith(b"220 "))
            held.append(s)
        refused: dict[str | None, float] = {}
        for n in range(1, 301):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            line = s.recv(1000)
            self.assertTrue(line.startswith(b"421 4.7.0"), line)
            s.close()
            if n % 10 == 0:
                m = scrape(self.server.ports["metrics"])
                refused = {dict(labels).get("worker"): v for (name, labels), v in m.items()
                           if name == "pymaild_connections_refused_total"}
                if refused.get("0") and refused.get("1"):
                    break
        self.assertGreater(refused.get("0", 0), 0)
        self.assertGreater(refused.get("1", 0), 0)
        held[0].sendall(b"QUIT\r\n")
        held[0].recv(1000)
        held[0].close()

        def admitted() -> bool:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            try:
                return s.recv(1000).startswith(b"220 ")
            finally:
                s.close()

        waitFor(admitted, 10, "a connection to be admitted again")


    def test_userSessions(self) -> None:
        """One IMAP session per user and address: logged in over the master, a login
        over the worker is refused with [LIMIT] (and the other way round)."""
        byPid = self.bothProcesses(self.server.ports["imap"], b"* OK")
        for first, second in ((self.master, self.worker), (self.worker, self.master)):
            a, b = byPid[first][0], byPid[second][0]
            self.assertIn(b"a1 OK", imapCommand(a, b"a1", f'LOGIN "{USER}" "{PASSWORD}"'))
            self.assertIn(b"b1 NO [LIMIT]",
                          imapCommand(b, b"b1", f'LOGIN "{USER}" "{PASSWORD}"'))
            self.assertIn(b"a2 OK", imapCommand(a, b"a2", "LOGOUT"))
            byPid = self.bothProcesses(self.server.ports["imap"], b"* OK")

    def test_hourlyLimit(self) -> None:
        """One message an hour: sent over one process, the next MAIL FROM over the
        other is answered 450 4.7.1."""
        byPid = self.bothProcesses(self.server.ports["submission"], b"220 ")
        replies = []
        for pid in (self.master, self.worker):
            s = byPid[pid][0]
            s.sendall(b"EHLO client.example\r\n")
            readReply(s)
            plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
            s.sendall(b"AUTH PLAIN " + plain + b"\r\n")
            self.assertTrue(readReply(s).startswith(b"235"))
            s.sendall(f"MAIL FROM:<{USER}>\r\n".encode())
            reply = readReply(s)
            replies.append(reply)
            if reply.startswith(b"250"):
                s.sendall(b"RCPT TO:<" + USER.encode() + b">\r\nDATA\r\n")
                self.assertTrue(readReply(s).startswith(b"250"))
                self.assertTrue(readReply(s).startswith(b"354"))
                s.sendall(f"From: {USER}\r\nSubject: one\r\n\r\nx\r\n.\r\n".encode())
                self.assertTrue(readReply(s).startswith(b"250"))
        self.assertTrue(replies[0].startswith(b"250"), replies)
        self.assertTrue(replies[1].startswith(b"450 4.7.1"), replies)


def imapCommand(s: socket.socket, tag: bytes, command: str) -> bytes:
    """Send an IMAP command; everything read up to its tagged answer."""
    s.sendall(tag + b" " + command.encode() + b"\r\n")
    got = b""
    while not re.search(rb"(^|\r\n)" + tag + rb" [^\r\n]*\r\n", got):
        chunk = s.recv(10000)
        if not chunk:
            break
        got += chunk
    return got


def readReply(s: socket.socket) -> bytes:
    """One SMTP reply (all its lines)."""
    got = b""
    while not re.search(rb"(^|\n)\d{3} [^\n]*\n", got):
        chunk = s.recv(10000)
        if not chunk:
            break
        got += chunk
    return got


class PenaltyTests(WorkersTestBase):
    """A login failure on one process is on record for the other."""

    def test_penaltyAcrossProcesses(self) -> None:
        """A failed IMAP login on the master is answered after 2 s; the next one, on the
        worker, after 4 s (the second failure in a row), and the log says so."""
        byPid = self.bothProcesses(self.server.ports["imap"], b"* OK")
        timings = []
        for pid, tag in ((self.master, b"a1"), (self.worker, b"b1")):
            s = byPid[pid][0]
            start = time.monotonic()
            s.sendall(tag + b' LOGIN "' + USER.encode() + b'" "wrong"\r\n')
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = s.recv(1000)
                if not chunk:
                    break
                answer += chunk
            timings.append(time.monotonic() - start)
            self.assertTrue(answer.startswith(tag + b" NO"), answer)
        self.assertGreaterEqual(timings[0], 1.9)
        self.assertGreaterEqual(timings[1], 3.9)
        log = self.server.log()
        self.assertRegex(log, r"\] authentication failed for alice@example.org from "
                              r"127.0.0.1 \(answer delayed 2 s\)")
        # (A worker's event is formatted from its JSON form: 4.0 for C{{delay:g}}.)
        self.assertRegex(log, r"\[worker 1\] authentication failed for alice@example.org"
                              r" from 127.0.0.1 \(answer delayed 4(?:\.0)? s\)")


class RelayTests(WorkersTestBase):
    """Mail a worker accepts is relayed by the master's queue at once."""

    def setUp(self) -> None:
        """A smarthost sink, and a queue tick far too slow to find the mail alone."""
        self.sink = Sink()
        self.addCleanup(self.sink.close)
        self.config = (f'[relay]\nsmarthost = "127.0.0.1:{self.sink.port}"\n'
                       'smarthost_tls = "opportunistic"\nqueue_tick = 3600\n')
        super().setUp()

    def test_relayedAtOnce(self) -> None:
        """A message submitted over a connection the worker serves reaches the
        smarthost within seconds (the queue's own tick is an hour away); the worker's
        log has the 250 and the master's the relay."""
        byPid = self.bothProcesses(self.server.ports["submission"], b"220 ")
        for socks in byPid.values():
            for s in socks:
                s.close()
        sent = False
        for _ in range(50):
            client = smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30)
            pid = waitFor(lambda c=client: servingProcess(c.sock, [self.master, self.worker]),
                          10, "the serving process")
            if pid != self.worker:
                client.quit()
                continue
            client.login(USER, PASSWORD)
            start = time.monotonic()
            client.sendmail(USER, ["far@remote.example"],
                            f"From: {USER}\r\nTo: far@remote.example\r\nSubject: w\r\n\r\n"
                            "from the worker\r\n".encode())
            client.quit()
            sent = True
            break
        self.assertTrue(sent, "no submission connection reached the worker")
        waitFor(lambda: self.sink.received, 20, "the smarthost to receive the message")
        when, rcpts = self.sink.received[0]
        self.assertEqual(rcpts, ["far@remote.example"])
        self.assertLess(when - start, 15)
        log = self.server.log()
        self.assertRegex(log, r"\[worker 1\] queue \w+: from=<alice@example.org>")
        self.assertNotRegex(log, r"found in the spool by the scan")


class SignalTests(WorkersTestBase):
    """SIGHUP and SIGTERM reach the worker; a killed worker is replaced."""

    def test_hup(self) -> None:
        """After C{kill -HUP} of the master, both processes log their reload line."""
        assert self.server.proc is not None
        self.server.proc.send_signal(signal.SIGHUP)
        log = waitFor(lambda: (lambda t: t if "[worker 1] SIGHUP:" in t else None)(
            self.server.log()), 30, "the worker's reload line")
        self.assertRegex(log, r"\] SIGHUP: TLS certificate")
        self.assertIn("SIGHUP forwarded to the workers", log)
        self.assertIn(self.worker, children(self.master))

    def test_term(self) -> None:
        """C{kill -TERM} of the master drains an idle IMAP session on the worker (it
        gets its BYE), and master and worker both exit."""
        byPid = self.bothProcesses(self.server.ports["imap"], b"* OK")
        onWorker = byPid[self.worker][0]
        assert self.server.proc is not None
        self.server.proc.send_signal(signal.SIGTERM)
        bye = onWorker.recv(1000)
        self.assertIn(b"* BYE", bye)
        # twistd re-raises the signal once stopped, as it does alone.
        self.assertEqual(self.server.proc.wait(60), -signal.SIGTERM)
        waitFor(lambda: not os.path.exists(f"/proc/{self.worker}") or
                open(f"/proc/{self.worker}/stat").read().split(") ")[1][0] == "Z", 30,
                "the worker to exit")
        self.assertIn("worker 1 (pid", self.server.log())

    def test_killedWorkerReplaced(self) -> None:
        """A worker killed with SIGKILL is logged and replaced by a new one, which
        serves."""
        os.kill(self.worker, signal.SIGKILL)
        replacement = self.runningWorker(other=self.worker)
        self.assertNotEqual(replacement, self.worker)
        self.assertRegex(self.server.log(), rf"worker 1 \(pid {self.worker}\) was killed "
                                            r"by SIGKILL; starting another in [\d.]+ s")
        self.worker = replacement
        byPid = self.bothProcesses(self.server.ports["smtp"], b"220 ")
        self.assertIn(replacement, byPid)


class OneProcessTests(WorkersTestBase):
    """C{--workers 1} is one process, as before workers existed."""

    workers = 1

    def test_oneProcess(self) -> None:
        """The master starts no child, serves, and its metrics have no worker label."""
        with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as s:
            s.ehlo("client.example")
        self.assertEqual(children(self.master), [])
        m = scrape(self.server.ports["metrics"])
        self.assertGreater(m.get(("pymaild_connections_total", (("listener", "smtp"),)), 0),
                           0)
        self.assertFalse([k for k in m if "worker" in dict(k[1])])
        self.assertNotRegex(self.server.log(), r"\[worker \d|worker process")
        with imaplib.IMAP4("127.0.0.1", self.server.ports["imap"]) as c:
            c.noop()
