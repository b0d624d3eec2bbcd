#!/usr/bin/env python3
"""SMTP ingest benchmark: pymaild's MX role against baselines, in one invocation.

N concurrent SMTP sessions (default 10) send M messages (default 5,000) of S bytes
(default 4 KiB) to local users over 127.0.0.1. Every server stores each message durably
(fsync of the file and of the directory) before it answers 250. Reported per server:
messages per second (wall clock) and the server process's CPU milliseconds per message
(user + system, all threads, read from /proc), plus pymaild's ratios against each
baseline that ran:

- aiosmtpd (if importable) with a Maildir handler that writes tmp/, fsyncs, renames into
  new/ and fsyncs the directory, in a thread pool as pymaild does;
- Postfix, if a running instance is given with C{--postfix-port} (this script does not
  start one; its CPU time is not measured).

Usage::

    python bench/smtp_ingest.py                      # full run
    python bench/smtp_ingest.py --messages 500       # quick run
    python bench/smtp_ingest.py --no-baseline        # pymaild only

The servers run as subprocesses of this script (C{--serve pymaild|aiosmtpd}); only
loopback is used, and everything stops when the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAIN = "bench.example"
USERS = 20


# ---------------------------------------------------------------------------------------
# Servers (run in a subprocess: --serve NAME)
# ---------------------------------------------------------------------------------------


def servePymaild(data: str) -> None:
    """Run pymaild's SMTP server (MX role) the way the tap wires it; print the port."""
    sys.path.insert(0, ROOT)
    from twisted.cred.checkers import AllowAnonymousAccess
    from twisted.cred.portal import Portal
    from twisted.internet import reactor
    from twisted.mail.smtp import IMessageDelivery

    from pymaild import config as configModule
    from pymaild.auth import passwd as passwdModule
    from pymaild.auth.checker import PasswdChecker
    from pymaild.auth.directory import Directory
    from pymaild.auth.passwd import PasswdFile
    from pymaild.auth.penalty import AuthGate, AuthPenalty
    from pymaild.auth.realm import MailRealm
    from pymaild.smtp.delivery import DeliveryAvatars
    from pymaild.smtp.server import SMTPFactory
    from pymaild.store import MaildirStore
    from pymaild.threads import ThreadRunner, makePool

    passwdModule.configureHashing(memory_cost=256, rounds=1, parallelism=1)
    passwdPath = os.path.join(data, "passwd")
    passwd = PasswdFile(passwdPath)
    for i in range(USERS):
        passwd.add(f"user{i}@{DOMAIN}", "bench-password")
    config = configModule.load(None, {
        "server": {"data": data, "hostname": "mx." + DOMAIN, "domains": [DOMAIN]},
        "auth": {"passwd": passwdPath},
    })
    diskPool = makePool("pymaild-disk", 8)
    authPool = makePool("pymaild-auth", 2)
    diskPool.start()
    authPool.start()
    reactor.addSystemEventTrigger("after", "shutdown", diskPool.stop)
    reactor.addSystemEventTrigger("after", "shutdown", authPool.stop)
    disk = ThreadRunner(reactor, diskPool)
    store = MaildirStore(os.path.join(data, "mail"), config.hostname)
    directory = Directory(passwd, config.domains, config.smtp.recipient_delimiter)
    avatars = DeliveryAvatars(store, directory, disk, config, None, clock=reactor)
    realm = MailRealm({IMessageDelivery: avatars})
    portal = Portal(realm, [PasswdChecker(passwd, ThreadRunner(reactor, authPool)),
                            AllowAnonymousAccess()])
    gate = AuthGate(portal, AuthPenalty(), reactor)
    factory = SMTPFactory(config, gate, portal, None, "mx", False, reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=128)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()


def serveAiosmtpd(data: str) -> None:
    """Run aiosmtpd with a durable Maildir handler (fsync in a thread pool); print the port."""
    import socket

    from aiosmtpd.controller import Controller

    root = os.path.join(data, "mail")
    counter = itertools.count()
    host = socket.gethostname()

    def store(address: str, content: bytes) -> None:
        local, _, domain = address.lower().rpartition("@")
        md = os.path.join(root, domain, local, "Maildir")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        name = f"{time.time():.6f}.P{os.getpid()}Q{next(counter)}.{host}"
        tmp = os.path.join(md, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(md, "new", name))
        dfd = os.open(os.path.join(md, "new"), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    class MaildirHandler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            content = envelope.original_content or envelope.content
            loop = asyncio.get_running_loop()
            for rcpt in envelope.rcpt_tos:
                await loop.run_in_executor(None, store, rcpt, content)
            return "250 Message accepted for delivery"

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    controller = Controller(MaildirHandler(), hostname="127.0.0.1", port=port,
                            data_size_limit=26214400)
    controller.start()
    print(f"READY {port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


# ---------------------------------------------------------------------------------------
# Load generator
# ---------------------------------------------------------------------------------------


def makeMessage(size: int, n: int) -> bytes:
    """A message of about C{size} bytes (CRLF lines of 76 characters), dot-stuffed."""
    head = (f"From: bench@client.example\r\nTo: user{n % USERS}@{DOMAIN}\r\n"
            f"Subject: benchmark message {n}\r\nMessage-ID: <{n}@client.example>\r\n\r\n").encode()
    line = b"x" * 74 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


async def readReply(reader: asyncio.StreamReader) -> int:
    """Read one (multi-line) reply; return its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def expect(reader: asyncio.StreamReader, code: int, what: str) -> None:
    """Read a reply and check its code."""
    got = await readReply(reader)
    if got != code:
        raise RuntimeError(f"{what}: expected {code}, got {got}")


async def session(port: int, counter: Any, total: int, size: int, done: list[int]) -> None:
    """One SMTP session sending messages until C{total} have been taken."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await expect(reader, 220, "greeting")
    writer.write(b"EHLO client.example\r\n")
    await expect(reader, 250, "EHLO")
    while True:
        n = next(counter)
        if n >= total:
            break
        writer.write(b"MAIL FROM:<bench@client.example>\r\n")
        await expect(reader, 250, "MAIL")
        writer.write(f"RCPT TO:<user{n % USERS}@{DOMAIN}>\r\n".encode())
        await expect(reader, 250, "RCPT")
        writer.write(b"DATA\r\n")
        await expect(reader, 354, "DATA")
        writer.write(makeMessage(size, n) + b".\r\n")
        await expect(reader, 250, "end of data")
        done[0] += 1
    writer.write(b"QUIT\r\n")
    await readReply(reader)
    writer.close()


async def load(port: int, total: int, sessions: int, size: int) -> float:
    """Send C{total} messages over C{sessions} sessions; return the wall time."""
    counter = itertools.count()
    done = [0]
    start = time.perf_counter()
    await asyncio.gather(*(session(port, counter, total, size, done) for _ in range(sessions)))
    elapsed = time.perf_counter() - start
    if done[0] != total:
        raise RuntimeError(f"only {done[0]} of {total} messages accepted")
    return elapsed


def cpuSeconds(pid: int) -> float:
    """User + system CPU time of process C{pid} (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def countStored(data: str) -> int:
    """How many message files are in the new/ directories under C{data}/mail."""
    count = 0
    for dirpath, _dirs, files in os.walk(os.path.join(data, "mail")):
        if os.path.basename(dirpath) == "new":
            count += len(files)
    return count


def runServer(name: str, args: argparse.Namespace) -> dict[str, float] | None:
    """Start server C{name} in a subprocess, load it, and return its figures."""
    data = tempfile.mkdtemp(prefix=f"bench-{name}-", dir=args.tmpdir)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", name,
                             "--data", data], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            print(f"{name}: server did not start ({line.strip()!r})", file=sys.stderr)
            return None
        port = int(line.split()[1])
        if args.warmup:
            asyncio.run(load(port, min(args.warmup, args.messages), 2, args.size))
        before = cpuSeconds(proc.pid)
        elapsed = asyncio.run(load(port, args.messages, args.sessions, args.size))
        cpu = cpuSeconds(proc.pid) - before
        stored = countStored(data) - (min(args.warmup, args.messages) if args.warmup else 0)
        if stored != args.messages:
            raise RuntimeError(f"{name}: {stored} messages on disk, expected {args.messages}")
        return {"rate": args.messages / elapsed, "cpu_ms": 1000 * cpu / args.messages,
                "wall": elapsed}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(data, ignore_errors=True)


def runPostfix(args: argparse.Namespace) -> dict[str, float] | None:
    """Load an already running Postfix on 127.0.0.1:--postfix-port (wall time only)."""
    elapsed = asyncio.run(load(args.postfix_port, args.messages, args.sessions, args.size))
    return {"rate": args.messages / elapsed, "cpu_ms": float("nan"), "wall": elapsed}


def main(argv: list[str] | None = None) -> int:
    """Parse options and run the benchmark (or serve, in the subprocess)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages to send (5000)")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent sessions (10)")
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes (4096)")
    parser.add_argument("--warmup", type=int, default=50, help="messages sent before timing")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the servers this many times; report medians (1)")
    parser.add_argument("--no-baseline", action="store_true", help="run pymaild only")
    parser.add_argument("--postfix-port", type=int, default=0,
                        help="port of a running Postfix on 127.0.0.1 to compare against")
    parser.add_argument("--tmpdir", default=None, help="where the servers store mail")
    parser.add_argument("--serve", choices=["pymaild", "aiosmtpd"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "pymaild":
        servePymaild(args.data)
        return 0
    if args.serve == "aiosmtpd":
        serveAiosmtpd(args.data)
        return 0

    print(f"SMTP ingest: {args.messages} messages of {args.size} bytes, {args.sessions} "
          f"sessions, fsync on, {os.cpu_count()} CPUs, {args.rounds} round(s), medians")
    servers = ["pymaild"]
    if not args.no_baseline:
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            print("aiosmtpd: not importable, baseline skipped (pip install aiosmtpd)")
        else:
            servers.append("aiosmtpd")
        if args.postfix_port:
            servers.append("postfix")
        elif shutil.which("postfix") or os.path.exists("/usr/sbin/postfix"):
            print("postfix: installed; pass --postfix-port of a running instance to compare")
        else:
            print("postfix: not installed, baseline skipped")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for _ in range(max(1, args.rounds)):
        for name in servers:
            r = runPostfix(args) if name == "postfix" else runServer(name, args)
            if r is None:
                return 1
            runs[name].append(r)
    results = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
               for name, rs in runs.items()}
    pymaild = results["pymaild"]
    for name, r in results.items():
        print(f"{name:9s} {r['rate']:9.1f} msg/s   {r['cpu_ms']:7.3f} CPU ms/msg   "
              f"({r['wall']:.2f} s wall)")
    for name, r in results.items():
        if name == "pymaild":
            continue
        cpu = pymaild["cpu_ms"] / r["cpu_ms"] if r["cpu_ms"] == r["cpu_ms"] else float("nan")
        print(f"ratio pymaild/{name}: throughput {pymaild['rate'] / r['rate']:.2f}x, "
              f"CPU per message {cpu:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
