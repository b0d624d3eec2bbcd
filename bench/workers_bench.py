#!/usr/bin/env python3
"""Worker processes: a real ``twistd pymaild --workers 2`` against ``--workers 1``.

Both servers are real ``twistd -n pymaild`` processes (SMTP, IMAP and metrics on free
127.0.0.1 ports, 20 users with cheap hashes), started one after the other in the same
run, with rounds alternating their order; medians are reported, with the ratios.

- SMTP ingest, as bench/smtp_ingest.py: N sessions (10) send M messages (5,000) of 4 KiB
  to the 20 local users over the MX listener; every 250 means fsynced. Reported:
  messages per second and the CPU milliseconds per message of the server's processes
  (the master and its workers, user + system, from /proc). Postfix, when installed and
  this script runs as root, is the baseline of issue #19, run as in smtp_ingest.py (a
  private instance delivering with virtual(8); C{apt-get install postfix}).
- connections: then 2,000 SMTP connections (greeting, QUIT) over 10 loops, the cost of
  admitting a connection (in a worker: a round trip to the master's anvil);
- IMAP: after the ingest, S sessions (10) each log in as one user, SELECT INBOX and
  FETCH 1:* (BODY.PEEK[]) R times (3); reported in MB/s of message data and sessions'
  commands per second.

The load generators run in this process (asyncio), on the same cores as the servers:
on a small machine they take a share of the CPU the workers would use.

Usage::

    python bench/workers_bench.py                    # 3 rounds
    python bench/workers_bench.py --messages 1000 --rounds 1
    python bench/workers_bench.py --postfix off
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.smtp_ingest import (  # noqa: E402
    DOMAIN,
    USERS,
    countStored,
    load,
    postfixUnusable,
    runPostfixPrivate,
    treeCpuSeconds,
    warmup,
)
from tests.support import ServerProcess  # noqa: E402

PASSWORD = "bench-password"


def makeData(base: str) -> str:
    """A data directory with the 20 users (cheap argon2 parameters)."""
    from pymaild.auth import passwd as passwdModule
    from pymaild.auth.passwd import PasswdFile

    passwdModule.configureHashing(memory_cost=256, rounds=1, parallelism=1)
    data = os.path.join(base, "data")
    os.makedirs(data)
    passwd = PasswdFile(os.path.join(data, "passwd"))
    for i in range(USERS):
        passwd.add(f"user{i}@{DOMAIN}", PASSWORD)
    return data


async def connectLoop(port: int, counter: Any, total: int) -> None:
    """Connections one after another: greeting, QUIT, until C{total} were made."""
    while next(counter) < total:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        line = await reader.readline()
        if not line.startswith(b"220 "):
            raise RuntimeError(f"greeting: {line!r}")
        writer.write(b"QUIT\r\n")
        await reader.readline()
        writer.close()
        await writer.wait_closed()


async def connectLoad(port: int, total: int, parallel: int) -> float:
    """C{total} SMTP connections over C{parallel} loops; the wall seconds."""
    import itertools

    counter = itertools.count()
    start = time.perf_counter()
    await asyncio.gather(*(connectLoop(port, counter, total) for _ in range(parallel)))
    return time.perf_counter() - start


async def imapSession(port: int, user: str, repeats: int) -> tuple[int, int]:
    """LOGIN, SELECT, then FETCH 1:* BODY.PEEK[] C{repeats} times; (bytes, commands)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    await reader.readline()
    tag = 0
    total = 0
    commands = 0

    async def command(text: str) -> int:
        nonlocal tag, commands
        tag += 1
        t = f"a{tag}".encode()
        writer.write(t + b" " + text.encode() + b"\r\n")
        size = 0
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                n = int(m.group(1))
                await reader.readexactly(n)
                size += n
                continue
            if line.startswith(t + b" "):
                if not line.startswith(t + b" OK"):
                    raise RuntimeError(f"{text}: {line!r}")
                commands += 1
                return size

    await command(f'LOGIN "{user}" "{PASSWORD}"')
    await command("SELECT INBOX")
    for _ in range(repeats):
        total += await command("FETCH 1:* (BODY.PEEK[])")
    await command("LOGOUT")
    writer.close()
    return total, commands


async def imapLoad(port: int, sessions: int, repeats: int) -> tuple[float, int, int]:
    """Run the IMAP sessions at once; (wall seconds, bytes, commands)."""
    start = time.perf_counter()
    results = await asyncio.gather(*(imapSession(port, f"user{i % USERS}@{DOMAIN}", repeats)
                                     for i in range(sessions)))
    return (time.perf_counter() - start, sum(r[0] for r in results),
            sum(r[1] for r in results))


def runPymaild(workers: int, args: argparse.Namespace) -> dict[str, float]:
    """Start C{twistd pymaild --workers N}, load it over SMTP then IMAP; its figures."""
    base = tempfile.mkdtemp(prefix=f"bench-workers{workers}-", dir=args.tmpdir)
    data = makeData(base)
    config = os.path.join(base, "pymaild.toml")
    with open(config, "w") as f:  # the load comes from one address
        f.write("[limits]\nmax_connections_per_ip = 1000\nmax_connections_per_user_ip = 1000\n")
    server = ServerProcess(data, DOMAIN, listeners=("smtp", "imap", "metrics"),
                           workers=workers,
                           extra=["--cleartext-auth", "always", "--config", config])
    server.start()
    try:
        assert server.proc is not None
        if workers > 1:
            deadline = time.monotonic() + 60
            while server.log().count("running (pid") < workers - 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not start")
                time.sleep(0.1)
        port = server.ports["smtp"]
        warm = warmup(port, args)
        before = treeCpuSeconds(server.proc.pid)
        clientBefore = time.process_time()
        elapsed = asyncio.run(load(port, args.messages, args.sessions, args.size))
        clientCPU = time.process_time() - clientBefore
        cpu = treeCpuSeconds(server.proc.pid) - before
        stored = countStored(data) - warm
        if stored != args.messages:
            raise RuntimeError(f"{stored} messages on disk, expected {args.messages}")
        figures = {"rate": args.messages / elapsed, "cpu_ms": 1000 * cpu / args.messages,
                   # The load generator's own share of the cores, per message.
                   "client_cpu_ms": 1000 * clientCPU / args.messages,
                   "busy_cores": (cpu + clientCPU) / elapsed}
        if args.connections:
            # Each connection is admitted by the connection caps: in a worker, one
            # round trip to the master's anvil.
            figures["conn_rate"] = args.connections / asyncio.run(
                connectLoad(port, args.connections, args.sessions))
        if args.imap_sessions:
            asyncio.run(imapLoad(server.ports["imap"], args.imap_sessions, 1))  # warm
            wall, size, commands = asyncio.run(
                imapLoad(server.ports["imap"], args.imap_sessions, args.imap_repeats))
            figures["imap_mbs"] = size / wall / 1e6
            figures["imap_cmds"] = commands / wall
        return figures
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def describe(r: dict[str, float]) -> str:
    """The connection and IMAP figures of a run, if measured."""
    text = ""
    if "client_cpu_ms" in r:
        text += (f" (client {r['client_cpu_ms']:.3f} ms/msg;"
                 f" {r['busy_cores']:.2f} cores busy)")
    if "conn_rate" in r:
        text += f"   {r['conn_rate']:7.1f} conn/s"
    if "imap_mbs" in r:
        text += f"   IMAP {r['imap_mbs']:7.2f} MB/s {r['imap_cmds']:6.1f} cmd/s"
    return text


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the rounds, print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages to send (5000)")
    parser.add_argument("--sessions", type=int, default=10, help="SMTP sessions (10)")
    parser.add_argument("--size", type=int, default=4096, help="message size (4096)")
    parser.add_argument("--warmup", type=int, default=50, help="messages sent before timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--workers", type=int, default=2, help="the multi-process run (2)")
    parser.add_argument("--connections", type=int, default=2000,
                        help="SMTP connections (greeting, QUIT) after the ingest (2000)")
    parser.add_argument("--imap-sessions", type=int, default=10,
                        help="IMAP sessions after the ingest (10; 0: none)")
    parser.add_argument("--imap-repeats", type=int, default=3,
                        help="FETCH 1:* BODY.PEEK[] per IMAP session (3)")
    parser.add_argument("--postfix", choices=["auto", "off"], default="auto",
                        help="the Postfix baseline (auto: when installed and root)")
    parser.add_argument("--tmpdir", default=None, help="where the servers store mail")
    args = parser.parse_args(argv)
    names = ["workers=1", f"workers={args.workers}"]
    if args.postfix == "auto":
        why = postfixUnusable()
        if why is None:
            names.append("postfix")
        else:
            print(f"postfix: {why}; no Postfix baseline")
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    print(f"load: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores", flush=True)
    for index in range(max(1, args.rounds)):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            if name == "postfix":
                r: Any = runPostfixPrivate(args)
                if r is None:
                    continue
            else:
                r = runPymaild(int(name.split("=")[1]), args)
            runs[name].append(r)
            extra = describe(r)
            print(f"  round {index + 1} {name:10s} {r['rate']:8.1f} msg/s "
                  f"{r['cpu_ms']:7.3f} CPU ms/msg{extra}", flush=True)
    results = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for n, rs in runs.items() if rs}
    print(f"medians of {args.rounds} round(s), {args.messages} messages of {args.size} B over"
          f" {args.sessions} sessions; load after: {os.getloadavg()[0]:.2f}")
    for name, r in results.items():
        extra = describe(r)
        print(f"{name:10s} {r['rate']:8.1f} msg/s {r['cpu_ms']:7.3f} CPU ms/msg{extra}")
    one, many = results["workers=1"], results[f"workers={args.workers}"]
    print(f"ratio workers={args.workers}/workers=1: ingest {many['rate'] / one['rate']:.2f}x,"
          f" CPU per message {many['cpu_ms'] / one['cpu_ms']:.2f}x", end="")
    if "conn_rate" in one:
        print(f", connections/s {many['conn_rate'] / one['conn_rate']:.2f}x", end="")
    if "imap_mbs" in one:
        print(f", IMAP MB/s {many['imap_mbs'] / one['imap_mbs']:.2f}x", end="")
    print()
    if "postfix" in results:
        p = results["postfix"]
        for name in names[:2]:
            print(f"ratio {name}/postfix: ingest {results[name]['rate'] / p['rate']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
