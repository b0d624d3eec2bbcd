"""Tests for L{pymaild.listen}: EMFILE-safe ports, adoption, and the private Twisted
fields the module relies on (pinned, so a Twisted upgrade that renames one fails here)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, tcp, threads
from twisted.internet import ssl as tssl
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild import listen, tls
from pymaild.limits import SMTP_REFUSAL
from pymaild.listen import (
    FDReservingPort,
    ReserveFD,
    listenWithFDReserve,
    reservingServerFromString,
)
from tests.support import cpuSeconds
from tests.test_limits import RoomFactory, RoomProtocol, _Collector, captureLogs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "emfile_server.py")


def listeningSocket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1:0 and listening, non-blocking (as adopted)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    s.setblocking(False)
    return s


def acceptsAfterConnect(listener: socket.socket) -> bool:
    """Whether C{listener} still accepts: connect a client to it and accept (blocking)."""
    port = listener.getsockname()[1]
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return False
    try:
        listener.settimeout(5)
        conn, _ = listener.accept()
        conn.close()
        return True
    except OSError:
        return False
    finally:
        client.close()


class PrivateFieldTests(SynchronousTestCase):
    """The private C{tcp.Port} fields L{pymaild.listen} uses still exist and mean what
    the module takes them to mean."""

    def test_fieldsExist(self) -> None:
        """Every field named in L{listen.PRIVATE_PORT_FIELDS} is on a fresh C{tcp.Port}
        (or its class), so a rename in Twisted fails here rather than in a worker."""
        port = tcp.Port(0, protocol.ServerFactory(), interface="127.0.0.1")
        for name in listen.PRIVATE_PORT_FIELDS:
            self.assertTrue(hasattr(port, name), f"tcp.Port has no {name}")
        self.assertIsNone(port._preexistingSocket)
        self.assertTrue(port._shouldShutdown)
        self.assertEqual(port._type, "TCP")
        self.assertIsNone(tcp.Port._preexistingSocket)
        self.assertTrue(tcp.Port._shouldShutdown)

    def test_adoptStreamPortUsesThePreexistingSocket(self) -> None:
        """Twisted's own C{adoptStreamPort} still works through C{_preexistingSocket}
        and turns C{_shouldShutdown} off: the hook L{FDReservingPort} imitates."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        self.addCleanup(sock.close)
        port = reactor.adoptStreamPort(sock.fileno(), socket.AF_INET,
                                       protocol.ServerFactory())
        self.addCleanup(port.stopListening)
        self.assertFalse(port._shouldShutdown)
        self.assertEqual(port.getHost().port, sock.getsockname()[1])

    def test_acceptLoopHelpers(self) -> None:
        """The pieces of Twisted's accept loop that L{FDReservingPort.doRead} repeats are
        there: C{numberAccepts} (set by C{startListening}), C{sessionno}, the
        C{transport} class and C{_buildAddr}."""
        port = tcp.Port(0, protocol.ServerFactory(), interface="127.0.0.1")
        port.startListening()
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port.numberAccepts, int)
        self.assertIsInstance(port.sessionno, int)
        self.assertIs(port.transport, tcp.Server)
        addr = port._buildAddr(("127.0.0.1", 25))
        self.assertEqual((addr.host, addr.port), ("127.0.0.1", 25))
        self.assertIsInstance(port._realPortNumber, int)


class _ScriptedSocket:
    """Wraps a real listening socket; C{accept} follows a script of results."""

    def __init__(self, real: socket.socket, script: list[Any]) -> None:
        self._real = real
        self.script = script
        self.accepted: list[_FakeClient] = []

    def accept(self) -> Any:
        """Return or raise the next scripted result; EAGAIN when the script is empty."""
        item = self.script.pop(0) if self.script else OSError(errno.EAGAIN, "again")
        if isinstance(item, OSError):
            raise item
        client = _FakeClient()
        self.accepted.append(client)
        return client, ("127.0.0.1", 50000 + len(self.accepted))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _FakeClient:
    """An accepted client socket that records what was sent and whether it was closed."""

    def __init__(self) -> None:
        self.sent = b""
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        """Accept the mode change."""
        self.blocking = flag

    def send(self, data: bytes) -> int:
        """Record the bytes."""
        self.sent += data
        return len(data)

    def close(self) -> None:
        """Record the close."""
        self.closed = True


class _CountingReserve(ReserveFD):
    """A ReserveFD that records releases and can be made unable to reserve."""

    def __init__(self, canReserve: bool = True) -> None:
        super().__init__()
        self.canReserve = canReserve
        self.releases = 0

    def reserve(self) -> bool:
        """Reserve unless told the process is out of descriptors."""
        if not self.canReserve:
            return False
        return super().reserve()

    def release(self) -> None:
        """Count and release."""
        if self.available():
            self.releases += 1
        super().release()


class _RecordingFactory(protocol.ServerFactory):
    """Declines every connection but records the addresses it was asked about."""

    def __init__(self) -> None:
        self.addrs: list[Any] = []

    def buildProtocol(self, addr: Any) -> None:
        """Record and decline (the port then closes the socket)."""
        self.addrs.append(addr)
        return None


def _emfile() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


class FDReservingPortTests(SynchronousTestCase):
    """L{FDReservingPort} decisions, driven by a scripted accept()."""

    def makePort(self, script: list[Any], canReserve: bool = True,
                 shedLine: bytes = b"") -> tuple[FDReservingPort, _ScriptedSocket]:
        """A listening port on a memory reactor whose accept() follows C{script}."""
        self.reactor = MemoryReactorClock()
        self.factory = _RecordingFactory()
        self.reserve = _CountingReserve(canReserve)
        self.addCleanup(self.reserve.release)
        port = FDReservingPort(0, self.factory, 5, "127.0.0.1", self.reactor,
                               reserve=self.reserve, shedLine=shedLine)
        port.startListening()
        self.addCleanup(self.stop, port)
        fake = _ScriptedSocket(port.socket, script)
        port.socket = fake  # type: ignore[assignment]
        self.events = captureLogs(self, "pymaild.listen")
        return port, fake

    def stop(self, port: FDReservingPort) -> None:
        """Stop listening (once) and let the memory reactor run the close."""
        if not port.connected or port.disconnecting:
            return
        if isinstance(port.socket, _ScriptedSocket):
            port.socket = port.socket._real
        port.stopListening()
        self.reactor.advance(0)

    def test_shedWithSpare(self) -> None:
        """On EMFILE the spare is released, pending clients get the line and are closed."""
        port, fake = self.makePort([_emfile(), None, None], shedLine=SMTP_REFUSAL)
        self.assertTrue(self.reserve.available())
        port.doRead()
        self.assertEqual(self.reserve.releases, 1)
        self.assertTrue(self.reserve.available())
        self.assertEqual(len(fake.accepted), 2)
        for c in fake.accepted:
            self.assertEqual(c.sent, SMTP_REFUSAL)
            self.assertTrue(c.closed)
        self.assertEqual(self.factory.addrs, [])
        self.assertIn(port, self.reactor.readers)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_shedWithoutLine(self) -> None:
        """Without a shed line the pending clients are just closed."""
        port, fake = self.makePort([_emfile(), None])
        port.doRead()
        self.assertEqual(fake.accepted[0].sent, b"")
        self.assertTrue(fake.accepted[0].closed)

    def test_pauseWithoutSpare(self) -> None:
        """Without a spare the port stops reading for 0.1 s, doubling to 1 s, then resumes."""
        port, fake = self.makePort([_emfile()] * 7, canReserve=False)
        delays = []
        for _ in range(6):
            port.doRead()
            self.assertNotIn(port, self.reactor.readers)
            [call] = self.reactor.getDelayedCalls()
            delays.append(round(call.getTime() - self.reactor.seconds(), 3))
            self.reactor.advance(delays[-1])
            self.assertIn(port, self.reactor.readers)
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        # The resource comes back: a connection is accepted and the back-off resets.
        fake.script[:] = [None]
        port.doRead()
        self.assertEqual(len(self.factory.addrs), 1)
        fake.script[:] = [_emfile()]
        port.doRead()
        [call] = self.reactor.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - self.reactor.seconds(), 0.1)

    def test_spareLostPausesThenRetakes(self) -> None:
        """If the freed slot is taken before accept, the port pauses and retakes the spare."""
        port, fake = self.makePort([_emfile(), _emfile(), None])
        port.doRead()
        self.assertNotIn(port, self.reactor.readers)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(0.1)
        self.assertTrue(self.reserve.available())
        port.doRead()
        self.assertEqual(len(self.factory.addrs), 1)

    def test_reReserveFailurePauses(self) -> None:
        """If the spare cannot be re-opened after shedding, the port pauses."""
        port, fake = self.makePort([_emfile(), None])
        self.reserve.canReserve = False
        port.doRead()
        self.assertTrue(fake.accepted[0].closed)
        self.assertFalse(self.reserve.available())
        self.assertNotIn(port, self.reactor.readers)
        self.reserve.canReserve = True
        self.reactor.advance(0.1)
        self.assertTrue(self.reserve.available())
        self.assertIn(port, self.reactor.readers)

    def test_otherExhaustionErrors(self) -> None:
        """ENFILE, ENOBUFS and ENOMEM are handled like EMFILE (no exception escapes)."""
        for code in (errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            port, fake = self.makePort([OSError(code, "x")] * 3)
            port.doRead()
            self.assertNotIn(port, self.reactor.readers)
            self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_transientErrorsSkipped(self) -> None:
        """ECONNABORTED and EPERM skip one connection and accepting goes on."""
        port, fake = self.makePort(
            [OSError(errno.ECONNABORTED, "x"), OSError(errno.EPERM, "x"), None])
        port.doRead()
        self.assertEqual(len(self.factory.addrs), 1)
        self.assertIn(port, self.reactor.readers)

    def test_logOncePerBurst(self) -> None:
        """A burst of failures logs one warning; the recovery logs one summary."""
        port, fake = self.makePort([])
        for _ in range(3):
            fake.script[:] = [_emfile(), None]
            port.doRead()
            self.assertIn(port, self.reactor.readers)
        self.assertEqual([e["log_level"].name for e in self.events], ["warn"])
        fake.script[:] = [None]
        port.doRead()
        self.assertEqual([e["log_level"].name for e in self.events], ["warn", "info"])
        self.assertEqual(self.events[1]["shed"], 3)
        self.assertEqual(self.events[1]["pauses"], 0)
        fake.script[:] = [_emfile()]
        port.doRead()
        self.assertEqual([e["log_level"].name for e in self.events],
                         ["warn", "info", "warn"])

    def test_stopListeningCancelsResume(self) -> None:
        """Stopping a paused port leaves no resume timer behind."""
        port, fake = self.makePort([_emfile()], canReserve=False)
        port.doRead()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.stop(port)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ReserveFDTests(SynchronousTestCase):
    """L{ReserveFD} holds exactly one descriptor."""

    def test_reserveRelease(self) -> None:
        """reserve opens one descriptor once; release closes it."""
        r = ReserveFD()
        self.addCleanup(r.release)
        self.assertFalse(r.available())
        self.assertTrue(r.reserve())
        fd = r._fd
        self.assertTrue(r.reserve())
        self.assertEqual(r._fd, fd)
        os.fstat(fd)
        r.release()
        self.assertFalse(r.available())
        self.assertRaises(OSError, os.fstat, fd)


class EndpointTests(TestCase):
    """L{reservingServerFromString} and L{listenWithFDReserve}."""

    def test_memoryReactorPassThrough(self) -> None:
        """On a memory reactor listening falls through to its listenTCP (tap tests)."""
        mem = MemoryReactorClock()
        ep = reservingServerFromString(mem, "tcp:2525:interface=127.0.0.1")
        f = protocol.ServerFactory()
        ep.listen(f)
        self.assertEqual(mem.tcpServers[0][:2], (2525, f))
        self.assertEqual(mem.tcpServers[0][3], "127.0.0.1")

    def test_badDescription(self) -> None:
        """A malformed description raises as serverFromString does."""
        self.assertRaises(ValueError, reservingServerFromString, reactor, "tcp:notaport")

    @defer.inlineCallbacks
    def test_realTCP(self) -> Any:
        """On the real reactor a tcp: endpoint listens with an FDReservingPort and serves."""
        room = RoomFactory()
        port = yield listenWithFDReserve(reactor, "tcp:0:interface=127.0.0.1", room)
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, FDReservingPort)
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield endpoints.connectProtocol(ep, _Collector())
        data = yield client.firstData
        self.assertEqual(data, RoomProtocol.greeting)
        self.assertEqual(room.built[0].transport.getPeer().host, "127.0.0.1")
        client.transport.loseConnection()
        yield client.done

    @defer.inlineCallbacks
    def test_realSSL(self) -> Any:
        """An ssl: endpoint gets an FDReservingPort under a TLS wrapper, and serves TLS."""
        base = self.mktemp()
        os.makedirs(base)
        cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
        tls.ensureSelfSigned(cert, key, ["localhost"])
        room = RoomFactory()
        desc = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        port = yield listenWithFDReserve(reactor, desc, room, shedLine=SMTP_REFUSAL)
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, FDReservingPort)
        self.assertIsInstance(port.factory, WrappingFactory)
        self.assertEqual(port.shedLine, b"")
        ctx = tssl.CertificateOptions(raiseMinimumTo=tssl.TLSVersion.TLSv1_2)
        ep = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, ctx)
        client = yield endpoints.connectProtocol(ep, _Collector())
        data = yield client.firstData
        self.assertEqual(data, RoomProtocol.greeting)
        client.transport.loseConnection()
        yield client.done


# --- EMFILE: a real server subprocess with a lowered RLIMIT_NOFILE --------------------------



def _greeted(s: socket.socket, timeout: float) -> bytes | None:
    """What the server first sends on C{s}: bytes, b"" on close, None if it stays silent."""
    s.settimeout(timeout)
    try:
        return s.recv(100)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


class EMFILETests(SynchronousTestCase):
    """A server whose descriptors run out neither spins nor stays broken."""

    capacity = 20

    def setUp(self) -> None:
        """Skip without /proc; remember client sockets for cleanup."""
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc (Linux)")
        self.clients: list[socket.socket] = []
        self.addCleanup(self.closeClients)

    def closeClients(self) -> None:
        """Close every client socket still open."""
        for s in self.clients:
            s.close()
        self.clients = []

    def startServer(self, mode: str) -> tuple[subprocess.Popen[bytes], int, str]:
        """Start tests/emfile_server.py in C{mode}; return it, its port, its log path."""
        logPath = self.mktemp()
        log = open(logPath, "wb")
        self.addCleanup(log.close)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, HELPER, mode, str(self.capacity)],
                                stdout=subprocess.PIPE, stderr=log, env=env)

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()

        self.addCleanup(stop)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            proc.wait(10)
            with open(logPath) as f:
                self.fail(f"server did not start: {line!r} {f.read()}")
        return proc, int(line.split()[1]), logPath

    def connect(self, port: int) -> socket.socket:
        """A new client connection to the server."""
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.clients.append(s)
        return s

    def saturate(self, port: int) -> tuple[int, bytes | None]:
        """Open connections until one is not greeted; return (greeted count, its answer)."""
        for _ in range(self.capacity * 2):
            s = self.connect(port)
            answer = _greeted(s, 1.0)
            if answer != b"hello\r\n":
                return len(self.clients) - 1, answer
        self.fail("the server never ran out of descriptors")

    def keepTrying(self, port: int, seconds: float) -> dict[str, int]:
        """Clients keep connecting for C{seconds}; count what each attempt saw."""
        outcomes: dict[str, int] = {}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    answer = _greeted(s, 0.2)
                    key = "silent" if answer is None else repr(answer)
            except OSError as e:
                key = type(e).__name__
            outcomes[key] = outcomes.get(key, 0) + 1
            time.sleep(0.005)
        return outcomes

    def recover(self, port: int) -> float:
        """After the held clients close, time until a new client is greeted again."""
        self.closeClients()
        start = time.monotonic()
        while time.monotonic() - start < 10:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if _greeted(s, 2.0) == b"hello\r\n":
                    return time.monotonic() - start
            time.sleep(0.05)
        self.fail("the server did not serve new connections after clients closed")

    def runScenario(self, mode: str) -> tuple[float, dict[str, int], bytes | None, str]:
        """Saturate, measure CPU over 2 s of retries, recover; return the observations."""
        proc, port, logPath = self.startServer(mode)
        served, answer = self.saturate(port)
        self.assertGreaterEqual(served, self.capacity // 2)
        self.assertLessEqual(served, self.capacity + 5)
        before = cpuSeconds(proc.pid)
        outcomes = self.keepTrying(port, 2.0)
        cpu = cpuSeconds(proc.pid) - before
        if mode != "twisted-lost-spare":
            self.recover(port)
        proc.terminate()
        proc.wait(10)
        with open(logPath) as f:
            logText = f.read()
        return cpu, outcomes, answer, logText

    def test_reserveShedsCheaply(self) -> None:
        """With the spare: refused clients get the shed line and a close, CPU stays low."""
        cpu, outcomes, answer, logText = self.runScenario("reserve")
        self.assertEqual(answer, b"busy\r\n")
        self.assertEqual(list(outcomes), ["b'busy\\r\\n'"], outcomes)
        self.assertGreater(outcomes["b'busy\\r\\n'"], 20)
        self.assertLess(cpu, 0.5, f"server used {cpu:.2f} s CPU in 2 s ({outcomes})")
        self.assertEqual(logText.count("cannot accept connections: Too many open files"), 1)
        self.assertEqual(logText.count("accepting connections again"), 1)

    def test_pauseBacksOffCheaply(self) -> None:
        """Without the spare: accepting pauses (clients wait), CPU stays low, then recovers."""
        cpu, outcomes, answer, logText = self.runScenario("pause")
        self.assertIsNone(answer)
        self.assertNotIn("b'hello\\r\\n'", outcomes)
        self.assertLess(cpu, 0.5, f"server used {cpu:.2f} s CPU in 2 s ({outcomes})")
        self.assertEqual(logText.count("cannot accept connections: Too many open files"), 1)
        self.assertIn("accepting connections again", logText)

    def test_controlTwistedSpins(self) -> None:
        """Control: Twisted's own port without its spare busy-loops in the same harness."""
        cpu, outcomes, answer, logText = self.runScenario("twisted-lost-spare")
        self.assertIsNone(answer)
        self.assertIn("Could not accept new connection (EMFILE)", logText)
        self.assertGreater(cpu, 0.5, f"expected a busy loop, server used {cpu:.2f} s")


class PortPrivateFieldsTests(TestCase):
    """_preexistingSocket and _shouldShutdown of tcp.Port, pinned by what they do: there
    is no public way to have a tcp.Port subclass accept on a socket another process bound,
    nor to stop a port without shutting down a socket other processes accept on."""

    timeout = 30

    @defer.inlineCallbacks
    def test_adoptedSocket(self) -> Any:
        """A port given C{adopt} accepts on that very socket, and stopping it leaves the
        socket working for the process that still holds it (no shutdown)."""
        original = listeningSocket()
        self.addCleanup(original.close)
        port = FDReservingPort(0, protocol.Factory.forProtocol(protocol.Protocol),
                               interface="127.0.0.1", reactor=reactor,
                               adopt=original.dup())
        port.startListening()
        self.assertEqual(port.getHost().port, original.getsockname()[1])
        self.assertFalse(port._shouldShutdown)
        yield port.stopListening()
        ok = yield threads.deferToThread(acceptsAfterConnect, original)
        self.assertTrue(ok)

    @defer.inlineCallbacks
    def test_shareKeepsSocketForOthers(self) -> Any:
        """share() stops the port without shutting its socket down (a copy of it still
        accepts); without share(), Twisted shuts it down for every holder."""
        for shared in (True, False):
            port = FDReservingPort(0, protocol.Factory.forProtocol(protocol.Protocol),
                                   interface="127.0.0.1", reactor=reactor)
            port.startListening()
            other = port.socket.dup()
            self.addCleanup(other.close)
            if shared:
                port.share()
            yield port.stopListening()
            ok = yield threads.deferToThread(acceptsAfterConnect, other)
            self.assertEqual(ok, shared)
