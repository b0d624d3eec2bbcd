"""Worker processes: every core serves the listeners, the master supervises.

With C{--workers N} (C{server.workers}; default: one per core) the twistd process, the
master, binds every listener as alone, then starts N-1 worker processes
(C{python -m pymaild.worker}, L{pymaild.worker}) that inherit the listening sockets of
the mail listeners (SMTP, submission, POP3, IMAP, ManageSieve, LMTP) and accept on them
too, each with the same EMFILE-safe port class and connection wrappers. The master
keeps serving as well, and alone runs what must have one owner: the queue's scheduler
(workers store queue entries durably and notify it), the anvil (L{pymaild.anvil}: the
connection caps, login penalties, per-user limits, hourly sending limits), the HTTP
listeners (their sessions live in memory), ACME, the daily reports and the metrics
listener, whose C{/metrics} merges the workers' counts, labelled C{worker} (0 is the
master).

L{WorkerPool} is the master's service: it spawns the workers after the listeners
are bound and privileges are dropped, relays their log (JSON events on their standard
output, re-published with C{[worker N]} in front), forwards SIGHUP to them after the
master's own reload begins, stops them on SIGTERM (each drains its sessions as the
master does; one still running after the grace period and 10 s more is killed), and
restarts a worker that exits, after a back-off that doubles from 0.5 s to 30 s while
workers die young (within 10 s of their start).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pymaild.anvil import AnvilServer, Shared
from pymaild.metrics import merged

log = Logger(namespace="pymaild")

#: The listeners workers serve too (the others only the master: their state is its own).
SHARED = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "managesieve",
          "lmtp")
#: The first descriptor number of the inherited listening sockets in a worker.
FIRST_LISTENER_FD = 4
#: The worker's end of its anvil connection.
ANVIL_FD = 3
#: Restart back-off: first delay, longest delay, and the age under which a worker's
#: exit doubles the delay.
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
YOUNG = 10.0
#: Bytes of one log line a worker may write (longer ones are cut).
MAX_LINE = 1 << 20


def defaultCount() -> int:
    """The default number of processes: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Lines:
    """Splits a byte stream into lines, bounding what one line may hold."""

    def __init__(self, line: Callable[[bytes], None]) -> None:
        self.line = line
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """Add bytes; complete lines go to C{line}."""
        data = self._buffer + data
        *lines, self._buffer = data.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            lines.append(self._buffer[:MAX_LINE])
            self._buffer = b""
        for one in lines:
            if one.strip():
                self.line(one)

    def flush(self) -> None:
        """Pass on an unfinished last line."""
        rest, self._buffer = self._buffer, b""
        if rest.strip():
            self.line(rest)


class WorkerProcess(protocol.ProcessProtocol):
    """The master's view of one worker process: its log and its end."""

    def __init__(self, pool: WorkerPool, index: int, started: float) -> None:
        self.pool = pool
        self.index = index
        self.started = started
        self.pid: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._out = _Lines(self._event)
        self._err = _Lines(self._stderr)

    def connectionMade(self) -> None:
        """The process runs: note its id."""
        self.pid = getattr(self.transport, "pid", None)

    def outReceived(self, data: bytes) -> None:
        """Log events (one JSON object per line)."""
        self._out.feed(data)

    def errReceived(self, data: bytes) -> None:
        """Anything the worker wrote to its standard error."""
        self._err.feed(data)

    def _event(self, line: bytes) -> None:
        """Re-publish one of the worker's log events, marked with its index."""
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
            if not isinstance(event, dict):
                raise ValueError("not an event")
        except ValueError:
            self._stderr(line)
            return
        event["pymaild_worker"] = self.index
        event["log_format"] = "[worker {pymaild_worker}] " + str(event.get("log_format") or "")
        flattened = event.get("log_flattened")
        if isinstance(flattened, dict):  # a JSON event's fields are formatted from here
            flattened["pymaild_worker!:"] = flattened["pymaild_worker!s:"] = str(self.index)
        globalLogPublisher(event)

    def _stderr(self, line: bytes) -> None:
        """Log a line the worker wrote outside its log."""
        log.warn("[worker {index}] {line}", index=self.index,
                 line=line.decode("utf-8", "replace").rstrip())

    def processEnded(self, reason: Failure) -> None:
        """The worker is gone: tell the pool."""
        self._out.flush()
        self._err.flush()
        self.pool.workerEnded(self, reason)
        self.ended.callback(None)


class WorkerPool(service.Service):
    """The master's workers: spawned, watched, signalled, restarted.

    @param count: the number of worker processes (the master serves as well).
    @param listeners: the master's L{pymaild.listeners.Listener}s the workers share
        (bound before L{startService}).
    @param argv: the C{twistd pymaild} options, for the workers to build the same
        server from.
    @param shared: the objects the anvil answers from.
    @param grace: the sessions' grace period at shutdown (C{server.shutdown_grace}).
    """

    def __init__(self, reactor: Any, count: int, listeners: list[Any], argv: list[str],
                 shared: Shared, grace: float, executable: str = sys.executable,
                 cwd: str | None = None, mustRead: list[str] | None = None) -> None:
        """
        @param cwd: the directory the options' relative paths were read from.
        @param mustRead: files a worker reads when it starts (the TLS certificate and
            key): when this process, as the user it runs as now, cannot read one, no
            worker is started (it could not start) and the master serves alone.
        """
        self.cwd = cwd
        self.mustRead = list(mustRead or ())
        self.reactor = reactor
        self.count = count
        self.listeners = listeners
        self.argv = argv
        self.shared = shared
        self.grace = grace
        self.executable = executable
        self.processes: dict[int, WorkerProcess] = {}
        #: The anvil connection of each worker that said hello, by index.
        self.anvils: dict[int, AnvilServer] = {}
        self.restarts = 0
        self._delay: dict[int, float] = {}
        self._pending: dict[int, Any] = {}
        self._stopping: defer.Deferred[None] | None = None
        self._previousHUP: Any = None

    # -- starting -----------------------------------------------------------------------

    def startService(self) -> None:
        """Spawn the workers and take over SIGHUP (the reload handler is called too)."""
        super().startService()
        unreadable = [p for p in self.mustRead if p and not os.access(p, os.R_OK)]
        if unreadable:
            log.error("no worker processes: {paths} cannot be read as this user (uid"
                      " {uid}), as workers would have to; the master serves alone (make"
                      " it readable by the server's user or group to use every core)",
                      paths=", ".join(unreadable), uid=os.getuid())
            self.count = 0
            return
        for listener in self.listeners:
            share = getattr(listener.port, "share", None)
            if share is not None:
                share()
        for index in range(1, self.count + 1):
            self.spawn(index)
        try:
            self._previousHUP = signal.signal(signal.SIGHUP, self._hup)
        except ValueError:  # not the main thread (a test): no handler
            self._previousHUP = None
        log.info("{n} worker process(es) started beside the master (pid {pid})",
                 n=self.count, pid=os.getpid())

    def _sockets(self) -> list[tuple[str, str, int]]:
        """C{(kind, description, descriptor)} of every listening socket to share."""
        found = []
        for listener in self.listeners:
            port = listener.port
            fileno = getattr(port, "fileno", None)
            if port is None or fileno is None:
                continue
            try:
                fd = fileno()
            except (OSError, ValueError):
                continue
            if fd >= 0:
                found.append((listener.kind, listener.description, fd))
        return found

    def spawn(self, index: int) -> WorkerProcess | None:
        """Start worker C{index}: its anvil connection, its sockets, its process."""
        self._pending.pop(index, None)
        if not self.running:
            return None
        sockets = self._sockets()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        childFDs: dict[int, Any] = {0: "w", 1: "r", 2: "r", ANVIL_FD: theirs.fileno()}
        shared = []
        for n, (kind, description, fd) in enumerate(sockets):
            childFDs[FIRST_LISTENER_FD + n] = fd
            shared.append([kind, description, FIRST_LISTENER_FD + n])
        spec = json.dumps({"index": index, "anvil": ANVIL_FD, "listeners": shared,
                           "argv": self.argv, "cwd": self.cwd})
        env = dict(os.environ)
        # The worker imports the same pymaild as this process, wherever it came from.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        process = WorkerProcess(self, index, self.reactor.seconds())
        try:
            self.reactor.spawnProcess(
                process, self.executable, [self.executable, "-m", "pymaild.worker", spec],
                env=env, path=self.cwd, childFDs=childFDs)
        except OSError as e:
            ours.close()
            theirs.close()
            log.error("worker {index} could not be started: {e}", index=index, e=e)
            self._restartLater(index, young=True)
            return None
        finally:
            if theirs.fileno() >= 0:
                theirs.close()
        self.processes[index] = process
        anvil = AnvilServer(self.shared, onHello=self._hello, onLost=self._lost)
        self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX,
                                           _OneProtocol(anvil))
        ours.close()
        return process

    def _hello(self, anvil: AnvilServer) -> None:
        """A worker is up and connected to the anvil."""
        self.anvils[anvil.index] = anvil
        log.info("worker {index} running (pid {pid})", index=anvil.index, pid=anvil.pid)

    def _lost(self, anvil: AnvilServer) -> None:
        """A worker's anvil connection ended."""
        if self.anvils.get(anvil.index) is anvil:
            del self.anvils[anvil.index]

    # -- ending and restarting ----------------------------------------------------------

    def workerEnded(self, process: WorkerProcess, reason: Failure) -> None:
        """A worker exited: restart it unless the server is stopping."""
        if self.processes.get(process.index) is process:
            del self.processes[process.index]
        how = _describeExit(reason)
        if self._stopping is not None or not self.running:
            log.info("worker {index} (pid {pid}) stopped: {how}", index=process.index,
                     pid=process.pid, how=how)
            return
        young = self.reactor.seconds() - process.started < YOUNG
        delay = self._restartLater(process.index, young)
        self.restarts += 1
        log.error("worker {index} (pid {pid}) {how}; starting another in {delay:g} s",
                  index=process.index, pid=process.pid, how=how, delay=delay)

    def _restartLater(self, index: int, young: bool) -> float:
        """Schedule worker C{index}'s restart; the delay chosen."""
        delay = self._delay.get(index, BACKOFF_MIN) if young else BACKOFF_MIN
        self._delay[index] = min(delay * 2, BACKOFF_MAX) if young else BACKOFF_MIN
        self._pending[index] = self.reactor.callLater(delay, self.spawn, index)
        return delay

    # -- signals --------------------------------------------------------------------------

    def _hup(self, signum: int, frame: Any) -> None:
        """SIGHUP: the master's reload, and each worker's."""
        previous = self._previousHUP
        if callable(previous):
            previous(signum, frame)
        self.reactor.callFromThread(self.signalAll, "HUP")

    def signalAll(self, name: str) -> list[int]:
        """Send signal C{name} (C{"HUP"}, C{"TERM"}) to every worker; their pids."""
        pids = []
        for process in list(self.processes.values()):
            if name == "HUP" and process.index not in self.anvils:
                continue  # still starting: it reads everything as it starts
            try:
                process.transport.signalProcess(name)  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - it exited meanwhile
                continue
            if process.pid is not None:
                pids.append(process.pid)
        if pids and name == "HUP":
            log.info("SIGHUP forwarded to the workers (pids {pids})",
                     pids=", ".join(map(str, pids)))
        return pids

    def stopService(self) -> defer.Deferred[None]:
        """SIGTERM every worker and wait for them to drain and exit (the same Deferred
        on a second call)."""
        if self._stopping is not None:
            return self._stopping
        super().stopService()
        if self._previousHUP is not None:
            signal.signal(signal.SIGHUP, self._previousHUP)
            self._previousHUP = None
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        ended = [p.ended for p in self.processes.values()]
        self.signalAll("TERM")
        killer = self.reactor.callLater(self.grace + 10.0, self.signalAll, "KILL")
        d: defer.Deferred[Any] = defer.DeferredList(ended, consumeErrors=True)

        def done(_: Any) -> None:
            if killer.active():
                killer.cancel()

        d.addBoth(done)
        self._stopping = d
        return d

    # -- metrics --------------------------------------------------------------------------

    def scrapeAll(self) -> defer.Deferred[dict[str, bytes]]:
        """Every running worker's metrics text, by index (a worker that does not answer
        within 5 s is left out)."""
        asked = {}
        for index, anvil in sorted(self.anvils.items()):
            d = anvil.scrape()
            d.addTimeout(5.0, self.reactor)
            asked[str(index)] = d
        result: dict[str, bytes] = {}

        def one(text: bytes, index: str) -> None:
            result[index] = text

        waits = []
        for index, d in asked.items():
            d.addCallback(one, index)
            d.addErrback(lambda f, i=index: log.warn(
                "metrics: worker {index} did not answer: {why}", index=i,
                why=f.getErrorMessage()))
            waits.append(d)
        return defer.DeferredList(waits).addCallback(lambda _: result)


class _OneProtocol(protocol.Factory):
    """A factory handing out one protocol instance (an adopted connection's)."""

    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        """The protocol."""
        return self.proto


def _describeExit(reason: Failure) -> str:
    """C{exited with status 1}, C{was killed by signal 9}, C{exited normally}."""
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    code = getattr(value, "exitCode", None)
    if code:
        return f"exited with status {code}"
    return "exited normally"


class MergedMetrics(Resource):
    """C{/metrics} of a master with workers: its own samples and every worker's, each
    labelled C{worker} (0: the master)."""

    isLeaf = True

    def __init__(self, registry: Any, pool: WorkerPool) -> None:
        super().__init__()
        self.registry = registry
        self.pool = pool

    def render_GET(self, request: Any) -> Any:
        """Ask the workers, then answer with everything."""
        def answer(others: dict[str, bytes]) -> None:
            body = merged(self.registry, others)
            request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
            request.write(body)
            request.finish()

        def failed(reason: Failure) -> None:
            log.failure("metrics: merging the workers' metrics failed", reason)
            request.setResponseCode(500)
            request.finish()

        self.pool.scrapeAll().addCallback(answer).addErrback(failed)
        return NOT_DONE_YET



class WorkerContext:
    """What makes a server a worker: its index, the anvil, the inherited sockets.

    @ivar sockets: the listening socket of each shared listener, by C{(kind,
        description)}.
    @ivar metrics: the worker's L{pymaild.metrics.Metrics}, set by the tap (the
        master scrapes it over the anvil).
    """

    def __init__(self, index: int, anvil: Any, sockets: dict[tuple[str, str], socket.socket]
                 ) -> None:
        self.index = index
        self.anvil = anvil
        self.sockets = sockets
        self.metrics: Any = None

    def render(self) -> bytes:
        """This worker's metrics in Prometheus' text format."""
        from prometheus_client.exposition import generate_latest

        if self.metrics is None:
            return b""
        return bytes(generate_latest(self.metrics.registry))

__all__ = ["SHARED", "MergedMetrics", "WorkerContext", "WorkerPool", "defaultCount"]
