#!/usr/bin/env python3
"""IMAP idle load: memory per IDLE connection and responsiveness under 10,000 of them.

Starts pymaild's IMAP listener alone in a subprocess (``twistd -n pymaild`` on a temporary
data directory, every other listener disabled, 127.0.0.1 only) with C{RLIMIT_NOFILE}
raised for both processes, then:

1. warms the server up with one complete session (LOGIN, SELECT, FETCH, LOGOUT) and
   reads its resident set size (C{VmRSS} of C{/proc/<pid>/status});
2. opens N connections (default 10,000) from an asyncio client in this process; each one
   LOGINs, SELECTs INBOX and enters IDLE. Connections are spread over source addresses
   127.0.0.2, 127.0.0.3, ... (C{--per-ip} each) and over C{--users} accounts so that
   per-IP and per-user/IP session caps (Dovecot-like defaults of 20 and 10) are never
   hit, and no source address runs short of ephemeral ports;
3. reads the RSS again and reports C{(RSS_after - RSS_before) / N} in KiB per
   connection, plus the server's CPU use over a quiet window while everything idles;
4. times fresh sessions (LOGIN + SELECT + FETCH 1:* (FLAGS)) from 127.0.0.1 while all
   connections idle;
5. delivers one message (through the store, as another process would) to the INBOX of
   C{--push-users} accounts and times how long until every IDLE session of those
   accounts receives C{* n EXISTS}.

Then it closes everything and removes the data directory (unless C{--keep}). The run is
bounded by C{--deadline} seconds; it sends traffic on loopback only.

Connection caps: the script writes a configuration file that raises every cap it finds
(every C{max_*} key of a C{[limits]} section, e.g. C{max_connections},
C{max_connections_per_ip}, C{max_connections_per_user_ip}, and C{max_*} keys about
connections or sessions elsewhere) to at least N plus a margin, and says which keys it
set. With C{--tracemalloc FRAMES} the server traces its allocations and the script lists
the allocation sites that grew per connection (the RSS figures then include tracing).

Reference points measured on this kind of machine: Dovecot spends about 490 KiB per
connection (a process each), 10-23 KiB with idle hibernation. pymaild's goal is at most
20 KiB, aiming at 10.

Usage: ``python bench/imap_idle_load.py [--connections N] [--users U] [--messages M]``;
``--help`` lists the rest. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support import cpuSeconds, stopProcess  # noqa: E402

DOMAIN = "idle.example"
PASSWORD = "idle-bench-password"
HOST = "127.0.0.1"
NOFILE = 65536
_EXISTS = re.compile(rb"^\* (\d+) EXISTS")


# -- helpers -----------------------------------------------------------------------------


def raiseNoFile(limit: int = NOFILE) -> int:
    """Raise this process's descriptor limit towards C{limit}; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, limit)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def readStatus(pid: int, field: str = "VmRSS") -> int:
    """A C{kB} field of C{/proc/<pid>/status} (C{VmRSS}, C{VmHWM}...), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def freePort() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def sourceAddress(index: int) -> str:
    """The client address of source group C{index}: 127.0.0.2, 127.0.0.3, ... 127.0.1.2..."""
    return f"127.{index // 64009 % 256}.{index // 253 % 253}.{index % 253 + 2}"


def userAddress(i: int) -> str:
    """The address of bench account C{i}."""
    return f"u{i:05d}@{DOMAIN}"


def sampleMessage(i: int, user: str) -> bytes:
    """A small CRLF message numbered C{i}."""
    body = (f"Line {n} of message {i}: nothing to see here.\r\n" for n in range(20))
    return (
        f"From: Bench <bench@{DOMAIN}>\r\nTo: {user}\r\nSubject: idle load {i}\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{i}.{time.time()}@{DOMAIN}>\r\n"
        "\r\n" + "".join(body)
    ).encode()


def limitOverrides(minimum: int) -> dict[str, dict[str, int]]:
    """Config keys that look like connection/session caps, raised to at least C{minimum}.

    Looks at every section of L{pymaild.config.SECTIONS}: in a section named C{limits}
    every C{max_*} integer key, elsewhere only C{max_*} keys naming connections,
    sessions or clients.
    """
    from pymaild import config as configModule

    pattern = re.compile(r"^max_.*(conn|session|client|total|per_ip|userip|user_ip)")
    out: dict[str, dict[str, int]] = {}
    for name, cls in configModule.SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            if not f.name.startswith("max_"):
                continue
            if name == "limits" or pattern.search(f.name):
                if value < minimum:
                    out.setdefault(name, {})[f.name] = minimum
    return out


def percentile(values: list[float], p: float) -> float:
    """The C{p}-th percentile (nearest rank) of non-empty C{values}."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


# -- data directory and server ---------------------------------------------------------------


def prepareData(data: str, users: int, messages: int) -> None:
    """Create the passwd file (cheap argon2id hashes) and preload every INBOX."""
    from pymaild.auth import passwd as passwdModule
    from pymaild.store import MaildirStore

    os.makedirs(data, mode=0o700, exist_ok=True)
    # Cheap hashes: the bench measures sessions, not password hashing (verification uses
    # the parameters stored in each hash).
    passwdModule.configureHashing(memory_cost=64, rounds=1, parallelism=1)
    pw = passwdModule.PasswdFile(os.path.join(data, "passwd"))
    addresses = [userAddress(i) for i in range(users)]
    for a in addresses:
        pw.add(a, PASSWORD)
    store = MaildirStore(os.path.join(data, "mail"), "bench.invalid")
    for i in range(messages):
        store.deliver(addresses, sampleMessage(i, "bench"))


def writeConfig(path: str, overrides: dict[str, dict[str, int]]) -> None:
    """Write a TOML config with the given integer keys."""
    lines = []
    for section, values in overrides.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in values.items()]
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


SERVER_MAIN = """
import os
if os.environ.get("PYMAILD_BENCH_TRACEMALLOC"):
    import signal, tracemalloc
    tracemalloc.start(int(os.environ["PYMAILD_BENCH_TRACEMALLOC"]))
    def _dump(signum, frame):
        path = os.environ["PYMAILD_BENCH_SNAPSHOT"]
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.rename(path + ".tmp", path)
    signal.signal(signal.SIGUSR1, _dump)
from twisted.scripts.twistd import run
run()
"""
"""The server process's main: twistd, optionally with tracemalloc snapshots on SIGUSR1."""


def startServer(python: str, tmp: str, port: int, config: str | None,
                traceFrames: int = 0) -> subprocess.Popen:
    """Start C{twistd -n pymaild} with only the IMAP listener on C{port}."""
    data = os.path.join(tmp, "data")
    cmd = [
        python, "-c", SERVER_MAIN,
        "-n", "--pidfile=", "--logfile", os.path.join(tmp, "twistd.log"),
        "pymaild", "--data", data, "--hostname", "bench.invalid", "--domain", DOMAIN,
        "--cleartext-auth", "always",
        "--imap", f"tcp:{port}:interface={HOST}:backlog=1024",
    ]
    for other in ("smtp", "submission", "smtps", "pop3", "pop3s", "imaps"):
        cmd += [f"--{other}", "none"]
    if config:
        cmd += ["--config", config]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if traceFrames:
        env["PYMAILD_BENCH_TRACEMALLOC"] = str(traceFrames)
        env["PYMAILD_BENCH_SNAPSHOT"] = os.path.join(tmp, "snapshot")

    def limits() -> None:
        raiseNoFile(NOFILE)

    with open(os.path.join(tmp, "stderr"), "wb") as err:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, preexec_fn=limits,
                                stdout=subprocess.DEVNULL, stderr=err)


async def snapshot(proc: subprocess.Popen, tmp: str, timeout: float = 120.0) -> Any:
    """Ask a server started with tracemalloc for a snapshot (SIGUSR1) and load it."""
    import tracemalloc

    path = os.path.join(tmp, "snapshot")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    proc.send_signal(signal.SIGUSR1)
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError("no tracemalloc snapshot from the server")
        await asyncio.sleep(0.2)
    return tracemalloc.Snapshot.load(path)


def _shortPath(path: str) -> str:
    """A source path relative to the repository or to site-packages."""
    if path.startswith(ROOT):
        return os.path.relpath(path, ROOT)
    marker = "site-packages" + os.sep
    return path.split(marker, 1)[1] if marker in path else os.path.basename(path)


def allocationReport(before: Any, after: Any, connections: int, top: int) -> str:
    """The allocation sites that grew most between two snapshots, per connection."""
    stats = after.compare_to(before, "traceback")
    lines = [f"top {top} allocation sites by growth (bytes per connection, count per "
             "connection):"]
    total = sum(s.size_diff for s in stats)
    lines.append(f"  traced growth {total / connections:.0f} B per connection")
    for s in stats[:top]:
        frames = " <- ".join(f"{_shortPath(f.filename)}:{f.lineno}"
                             for f in reversed(s.traceback))
        lines.append(f"  {s.size_diff / connections:8.1f} B {s.count_diff / connections:6.2f}  "
                     f"{frames}")
    return "\n".join(lines)


# -- client ------------------------------------------------------------------------------


class IMAPClient(asyncio.Protocol):
    """A minimal IMAP client protocol: tagged commands, continuations, EXISTS watching.

    Lines that arrive while nobody waits are kept (up to the next wait), so a greeting
    that comes before L{expect} is called is not lost; while IDLE nothing waits and only
    the EXISTS count and the time it grew are kept.
    """

    __slots__ = ("transport", "buf", "pending", "waiter", "waitTag", "lost", "exists",
                 "existsAt", "idling")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: list[bytes] = []
        self.waiter: asyncio.Future[tuple[bytes, list[bytes]]] | None = None
        self.waitTag: bytes | None = None
        self.lost = False
        self.exists = -1
        self.existsAt = 0.0
        self.idling = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Split lines, track EXISTS, and hand lines to the current wait."""
        self.buf += data
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                break
            line, self.buf = self.buf[:i].rstrip(b"\r"), self.buf[i + 1:]
            m = _EXISTS.match(line)
            if m:
                n = int(m.group(1))
                if self.idling and n > self.exists >= 0 and not self.existsAt:
                    self.existsAt = time.monotonic()
                self.exists = n
            if not self.idling:
                self.pending.append(line)
        self._check()

    def _check(self) -> None:
        """Resolve the waiter if its line has arrived."""
        w = self.waiter
        if w is None or w.done():
            return
        tag = self.waitTag
        for k, line in enumerate(self.pending):
            if tag is None or (line.startswith(b"+") if tag == b"+"
                               else line.startswith(tag + b" ")):
                before = self.pending[:k]
                del self.pending[: k + 1]
                self.waiter = None
                w.set_result((line, before))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail a pending wait."""
        self.lost = True
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(ConnectionError("connection closed by the server"))

    async def expect(self, tag: bytes | None, timeout: float) -> tuple[bytes, list[bytes]]:
        """Wait for the line of C{tag} (None: any line; C{+}: a continuation); return it
        and the lines before it."""
        fut: asyncio.Future[tuple[bytes, list[bytes]]] = (
            asyncio.get_running_loop().create_future())
        self.waiter, self.waitTag = fut, tag
        self._check()
        if self.lost and not fut.done():
            raise ConnectionError("connection closed by the server")
        return await asyncio.wait_for(fut, timeout)

    async def command(self, tag: bytes, text: bytes, timeout: float) -> list[bytes]:
        """Send C{tag text}; return the untagged lines; raise unless the answer is OK."""
        assert self.transport is not None
        self.transport.write(tag + b" " + text + b"\r\n")
        line, lines = await self.expect(tag, timeout)
        if not line.startswith(tag + b" OK"):
            raise RuntimeError(f"{text.split()[0].decode()} failed: {line[:200]!r}")
        return lines


async def openSession(port: int, source: str, user: str, timeout: float,
                      idle: bool) -> IMAPClient:
    """Connect from C{source}, LOGIN, SELECT INBOX and (if C{idle}) enter IDLE."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(IMAPClient, HOST, port, local_addr=(source, 0)), timeout)
    greeting, _ = await client.expect(None, timeout)
    if not greeting.startswith(b"* OK"):
        raise RuntimeError(f"greeting: {greeting[:200]!r}")
    await client.command(b"a", b'LOGIN "%s" "%s"' % (user.encode(), PASSWORD.encode()),
                         timeout)
    lines = await client.command(b"b", b"SELECT INBOX", timeout)
    for line in lines:
        m = _EXISTS.match(line)
        if m:
            client.exists = int(m.group(1))
    if idle:
        assert client.transport is not None
        client.transport.write(b"c IDLE\r\n")
        await client.expect(b"+", timeout)
        client.idling = True
        client.pending.clear()
    return client


# -- the run -------------------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    """What the run measured (printed, and written as JSON with C{--json})."""

    connections: int = 0
    opened: int = 0
    failed: int = 0
    users: int = 0
    messagesPerInbox: int = 0
    rssBeforeKiB: int = 0
    rssAfterKiB: int = 0
    hwmKiB: int = 0
    kibPerConnection: float = 0.0
    openSeconds: float = 0.0
    idleCpuPercent: float = 0.0
    freshLatencyMs: list[float] = dataclasses.field(default_factory=list)
    pushTargets: int = 0
    pushReceived: int = 0
    pushLatencyMs: list[float] = dataclasses.field(default_factory=list)
    deliverMs: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)


async def freshSession(port: int, user: str, timeout: float) -> float:
    """LOGIN + SELECT + FETCH 1:* (FLAGS) on a new connection; seconds it took."""
    t0 = time.monotonic()
    client = await openSession(port, HOST, user, timeout, idle=False)
    lines = await client.command(b"d", b"FETCH 1:* (FLAGS)", timeout)
    elapsed = time.monotonic() - t0
    if not any(b"FETCH" in line for line in lines):
        raise RuntimeError("FETCH returned no messages")
    with contextlib.suppress(Exception):
        await client.command(b"z", b"LOGOUT", timeout)
    assert client.transport is not None
    client.transport.close()
    return elapsed


async def run(args: argparse.Namespace, proc: subprocess.Popen, port: int,
              res: Results, log: Callable[[str], None]) -> None:
    """The measured part: warm-up, N idle sessions, fresh sessions, push."""
    pid = proc.pid
    # Wait for the listener.
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            await freshSession(port, userAddress(0), 10)
            break
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
    await freshSession(port, userAddress(0), 10)
    await asyncio.sleep(1.0)
    before = await snapshot(proc, args.tmp) if args.tracemalloc else None
    res.rssBeforeKiB = readStatus(pid)
    log(f"server pid {pid}: RSS after startup + one session {res.rssBeforeKiB} KiB")

    clients: list[IMAPClient | None] = [None] * args.connections
    sem = asyncio.Semaphore(args.parallel)
    errors: dict[str, int] = {}
    t0 = time.monotonic()
    progress = [0]

    async def one(i: int) -> None:
        async with sem:
            source = sourceAddress(i // args.per_ip)
            user = userAddress(i % args.users)
            try:
                clients[i] = await openSession(port, source, user, args.timeout, idle=True)
            except Exception as e:  # noqa: BLE001 - counted and reported
                key = f"{type(e).__name__}: {e}"[:160]
                errors[key] = errors.get(key, 0) + 1
            progress[0] += 1
            if progress[0] % 1000 == 0:
                log(f"  {progress[0]} sessions attempted, {time.monotonic() - t0:.1f} s, "
                    f"RSS {readStatus(pid)} KiB")

    await asyncio.gather(*(one(i) for i in range(args.connections)))
    res.openSeconds = time.monotonic() - t0
    live = [c for c in clients if c is not None and not c.lost]
    res.opened = len(live)
    res.failed = args.connections - res.opened
    for k, v in sorted(errors.items(), key=lambda kv: -kv[1]):
        res.errors.append(f"{v} x {k}")
    log(f"{res.opened} of {args.connections} sessions IDLE after {res.openSeconds:.1f} s"
        + (f"; failures: {'; '.join(res.errors[:5])}" if res.errors else ""))
    if not live:
        raise RuntimeError("no session could be opened")

    await asyncio.sleep(args.settle)
    c0 = cpuSeconds(pid)
    w0 = time.monotonic()
    while time.monotonic() - w0 < args.quiet:
        await asyncio.sleep(min(10.0, args.quiet - (time.monotonic() - w0)))
        log(f"  idle {time.monotonic() - w0:.0f} s: RSS {readStatus(pid)} KiB")
    res.idleCpuPercent = 100 * (cpuSeconds(pid) - c0) / (time.monotonic() - w0)
    res.rssAfterKiB = readStatus(pid)
    res.hwmKiB = readStatus(pid, "VmHWM")
    res.kibPerConnection = (res.rssAfterKiB - res.rssBeforeKiB) / res.opened
    if args.tracemalloc:
        log(allocationReport(before, await snapshot(proc, args.tmp), res.opened,
                             args.tracemalloc_top))
    log(f"RSS with {res.opened} IDLE sessions: {res.rssAfterKiB} KiB "
        f"(+{res.rssAfterKiB - res.rssBeforeKiB} KiB) = {res.kibPerConnection:.2f} KiB per "
        f"connection; server CPU while idle {res.idleCpuPercent:.1f}%")

    for _ in range(args.fresh):
        res.freshLatencyMs.append(1000 * await freshSession(port, userAddress(0),
                                                            args.timeout))
    log("fresh session LOGIN+SELECT+FETCH 1:* (FLAGS) under load: "
        + ", ".join(f"{x:.1f}" for x in res.freshLatencyMs) + " ms")

    # Push: one delivery to the INBOX of the first --push-users accounts.
    targetUsers = {i % args.users for i in range(min(args.push_users, args.users))}
    targets = [c for i, c in enumerate(clients)
               if c is not None and not c.lost and i % args.users in targetUsers]
    for c in targets:
        c.existsAt = 0.0
    res.pushTargets = len(targets)
    from pymaild.store import MaildirStore

    store = MaildirStore(os.path.join(args.tmp, "data", "mail"), "bench-push.invalid")
    recipients = [userAddress(u) for u in sorted(targetUsers)]
    loop = asyncio.get_running_loop()
    p0 = time.monotonic()
    await loop.run_in_executor(None, store.deliver, recipients, sampleMessage(-1, "push"))
    res.deliverMs = 1000 * (time.monotonic() - p0)
    end = time.monotonic() + args.push_wait
    while time.monotonic() < end:
        if all(c.existsAt or c.lost for c in targets):
            break
        await asyncio.sleep(0.05)
    got = [c.existsAt - p0 for c in targets if c.existsAt]
    res.pushReceived = len(got)
    res.pushLatencyMs = sorted(1000 * x for x in got)
    if got:
        log(f"EXISTS pushed to {len(got)} of {len(targets)} IDLE sessions of "
            f"{len(recipients)} account(s): median {percentile(res.pushLatencyMs, 50):.1f} ms,"
            f" max {res.pushLatencyMs[-1]:.1f} ms after the delivery started "
            f"(delivery itself {res.deliverMs:.1f} ms)")
    else:
        log(f"no EXISTS reached the {len(targets)} IDLE sessions within {args.push_wait} s")

    for c in clients:
        if c is not None and c.transport is not None:
            c.transport.abort()
    await asyncio.sleep(0.5)


def summary(res: Results) -> str:
    """The closing lines of the report."""
    fresh = res.freshLatencyMs
    lines = [
        "",
        "== pymaild IMAP idle load ==",
        f"connections IDLE        {res.opened} of {res.connections} "
        f"({res.users} accounts, {res.messagesPerInbox} messages per INBOX)",
        f"RSS before / after      {res.rssBeforeKiB} KiB / {res.rssAfterKiB} KiB "
        f"(peak {res.hwmKiB} KiB)",
        f"per connection          {res.kibPerConnection:.2f} KiB",
        f"open + LOGIN + IDLE     {res.openSeconds:.1f} s for all",
        f"server CPU while idle   {res.idleCpuPercent:.1f}%",
    ]
    if fresh:
        lines.append(f"fresh session latency   median {statistics.median(fresh):.1f} ms, "
                     f"max {max(fresh):.1f} ms (LOGIN+SELECT+FETCH 1:* (FLAGS), n={len(fresh)})")
    if res.pushLatencyMs:
        lines.append(f"EXISTS push latency     {res.pushReceived}/{res.pushTargets} sessions; "
                     f"median {percentile(res.pushLatencyMs, 50):.1f} ms, "
                     f"p95 {percentile(res.pushLatencyMs, 95):.1f} ms, "
                     f"max {res.pushLatencyMs[-1]:.1f} ms")
    else:
        lines.append(f"EXISTS push latency     0/{res.pushTargets} sessions notified")
    if res.errors:
        lines.append("failures                " + "; ".join(res.errors[:5]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the bench, print the report; exit status 1 on failure."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", "-n", type=int, default=10000,
                    help="IDLE connections to hold (default 10000)")
    ap.add_argument("--users", type=int, default=100, help="accounts used (default 100)")
    ap.add_argument("--messages", type=int, default=20,
                    help="messages preloaded in each INBOX (default 20)")
    ap.add_argument("--per-ip", type=int, default=20,
                    help="connections per source address (default 20)")
    ap.add_argument("--parallel", type=int, default=64,
                    help="sessions being opened at once (default 64)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="per-step timeout in seconds (default 60)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to wait after the last IDLE before measuring")
    ap.add_argument("--quiet", type=float, default=30.0,
                    help="seconds over which idle CPU is measured (default 30: one IDLE "
                         "rescan period)")
    ap.add_argument("--fresh", type=int, default=10, help="fresh sessions timed (default 10)")
    ap.add_argument("--push-users", type=int, default=2,
                    help="accounts that receive the pushed message (default 2)")
    ap.add_argument("--push-wait", type=float, default=45.0,
                    help="seconds to wait for EXISTS (default 45; covers the 30 s rescan)")
    ap.add_argument("--deadline", type=float, default=1200.0,
                    help="abort the whole run after this many seconds (default 1200)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for the server (default: this one)")
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                    help="diagnosis: trace the server's allocations (this many frames) and "
                         "list the sites that grew (RSS figures then include the tracing)")
    ap.add_argument("--tracemalloc-top", type=int, default=25,
                    help="allocation sites listed with --tracemalloc (default 25)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if args.per_ip > args.users:
        ap.error("--per-ip must not exceed --users (keeps one session per user and address)")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    nofile = raiseNoFile(NOFILE)
    if nofile < args.connections + 100:
        log(f"warning: descriptor limit {nofile} is below {args.connections + 100}")
    args.tmp = tempfile.mkdtemp(prefix="pymaild-idle-")
    res = Results(connections=args.connections, users=args.users,
                  messagesPerInbox=args.messages)
    proc = None
    status = 1
    try:
        t = time.monotonic()
        prepareData(os.path.join(args.tmp, "data"), args.users, args.messages)
        log(f"data in {args.tmp}: {args.users} accounts x {args.messages} messages "
            f"({time.monotonic() - t:.1f} s)")
        overrides = limitOverrides(args.connections + 100)
        config = None
        if overrides:
            config = os.path.join(args.tmp, "bench.toml")
            writeConfig(config, overrides)
            log(f"raised connection caps in {config}: {overrides}")
        port = freePort()
        proc = startServer(args.python, args.tmp, port, config, args.tracemalloc)
        asyncio.run(asyncio.wait_for(run(args, proc, port, res, log), args.deadline))
        print(summary(res), flush=True)
        status = 0 if res.opened == args.connections and res.pushReceived == res.pushTargets \
            else 1
    except Exception as e:  # noqa: BLE001 - report and clean up
        log(f"bench failed: {type(e).__name__}: {e}")
        print(summary(res), flush=True)
    finally:
        if proc is not None:
            stopProcess(proc)
            errPath = os.path.join(args.tmp, "stderr")
            if proc.returncode not in (0, -signal.SIGTERM) and os.path.exists(errPath):
                with open(errPath, "rb") as f:
                    tail = f.read()[-2000:].decode("utf-8", "replace")
                if tail.strip():
                    log("server stderr:\n" + tail)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dataclasses.asdict(res), f, indent=2)
        if args.keep:
            log(f"kept {args.tmp}")
        else:
            shutil.rmtree(args.tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
