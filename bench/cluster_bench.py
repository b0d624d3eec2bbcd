#!/usr/bin/env python3
"""Cluster benchmark: nginx's mail proxy against direct access, three nodes against one.

Everything runs on loopback, started for the run and stopped after it: a private
PostgreSQL (the shared user directory), three pymaild nodes on 127.0.0.1, 127.0.0.2 and
127.0.0.3 (30 users, 10 owned by each), and nginx's mail proxy in front (the same
helpers as the topology test: L{tests.postgres_support}, L{tests.nginx_support}).

Two measurements, each with its baseline in the same invocation:

- LOGIN+SELECT: N sequential IMAP sessions (connect, LOGIN, SELECT INBOX, LOGOUT),
  straight to the owner node against through nginx (which asks auth_http, then
  connects to the owner with a PROXY header). Reported: milliseconds per session and
  the ratio nginx / direct.
- Ingest: M messages over C concurrent SMTP sessions, all to node a's MX for users
  that a owns (one node), against spread over the three nodes' MX, each for its own
  users (three nodes). Reported: messages per second and the ratio three / one. Every
  message is stored durably (fsync) before its 250, as always.

Usage::

    python bench/cluster_bench.py                    # 200 sessions, 600 messages
    python bench/cluster_bench.py --sessions 50 --messages 300 --concurrency 6
"""

from __future__ import annotations

import argparse
import imaplib
import os
import shutil
import smtplib
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pymaild.auth import passwd as passwdModule  # noqa: E402
from pymaild.auth.pgusers import NodeRecord, PostgresUsers  # noqa: E402
from tests.nginx_support import NginxMail, clusterNode  # noqa: E402
from tests.postgres_support import PostgreSQL  # noqa: E402
from tests.support import ServerProcess, freePort  # noqa: E402

NODES = {"a": "127.0.0.1", "b": "127.0.0.2", "c": "127.0.0.3"}
SECRET = "bench-shared-secret-0123456789"
LISTENERS = ("smtp", "imap")
BODY = b"From: x@remote.example\r\nSubject: bench\r\n\r\n" + b"x" * 4000 + b"\r\n"


class Cluster:
    """PostgreSQL, three nodes and nginx, in a temporary directory."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.pg = PostgreSQL().start()
        self.users = PostgresUsers(self.pg.conninfo, poolSize=1)
        self.users.initSchema()
        self.ports = {n: {k: freePort() for k in (*LISTENERS, "lmtp")} for n in NODES}
        for name, host in NODES.items():
            p = self.ports[name]
            self.users.setNode(NodeRecord(name, host, p["imap"], 110, 587, p["lmtp"]))
        passwdModule.configureHashing(memory_cost=1024, rounds=1, parallelism=1)
        self.owned: dict[str, list[str]] = {n: [] for n in NODES}
        for i in range(30):
            node = "abc"[i % 3]
            address = f"user{i}@example.org"
            self.users.add(address, "pw", node=node)
            self.owned[node].append(address)
        self.authPort = freePort()
        self.servers: dict[str, ServerProcess] = {}
        for name in NODES:
            self._start(name)
        self.nginx = NginxMail(os.path.join(work, "nginx"), f"{self.authPort}/auth",
                               SECRET).start()

    def _start(self, name: str) -> None:
        """Start node C{name}."""
        self.servers[name] = clusterNode(
            self.work, name, NODES[name], self.pg.conninfo, SECRET, self.ports[name],
            LISTENERS, self.authPort if name == "a" else None,
            "[spam]\nenabled = false\n").start()

    def stop(self) -> None:
        """Stop everything."""
        self.nginx.stop()
        for server in self.servers.values():
            server.stop()
        self.users.close()
        self.pg.stop()


class Client(imaplib.IMAP4):
    """imaplib from 127.0.0.9: not the proxies' address (127.0.0.1), which the nodes
    expect a PROXY header from."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        """A socket bound to 127.0.0.9."""
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=("127.0.0.9", 0))


def loginSelect(host: str, port: int, user: str) -> None:
    """One IMAP session: LOGIN, SELECT INBOX, LOGOUT."""
    imap = Client(host, port, timeout=60)
    imap.login(user, "pw")
    imap.select("INBOX")
    imap.logout()


def sessions(cluster: Cluster, n: int, viaNginx: bool) -> float:
    """Milliseconds per LOGIN+SELECT session, over C{n} sessions."""
    users = [(node, u) for node, us in cluster.owned.items() for u in us]
    started = time.perf_counter()
    for i in range(n):
        node, user = users[i % len(users)]
        if viaNginx:
            loginSelect("127.0.0.1", cluster.nginx.ports["imap"], user)
        else:
            loginSelect(NODES[node], cluster.ports[node]["imap"], user)
    return (time.perf_counter() - started) * 1000 / n


def ingest(cluster: Cluster, messages: int, concurrency: int, nodes: list[str]) -> float:
    """Messages per second: C{messages} over C{concurrency} sessions spread over the MX
    of C{nodes}, each message to a user its node owns."""
    per = messages // concurrency
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        node = nodes[k % len(nodes)]
        users = cluster.owned[node]
        try:
            with smtplib.SMTP(NODES[node], cluster.ports[node]["smtp"], timeout=60) as s:
                for i in range(per):
                    s.sendmail("x@remote.example", [users[(k + i) % len(users)]], BODY)
        except BaseException as e:  # noqa: BLE001 - reported after the run
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} session(s) failed: {errors[0]!r}")
    return per * concurrency / elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="pymaild-cluster-bench-")
    cluster = Cluster(work)
    try:
        for node, us in cluster.owned.items():  # first logins create the Maildirs
            for u in us:
                loginSelect(NODES[node], cluster.ports[node]["imap"], u)
        direct, proxied, one, three = [], [], [], []
        for _ in range(args.rounds):
            direct.append(sessions(cluster, args.sessions, False))
            proxied.append(sessions(cluster, args.sessions, True))
            one.append(ingest(cluster, args.messages, args.concurrency, ["a"]))
            three.append(ingest(cluster, args.messages, args.concurrency, ["a", "b", "c"]))
        d, p = sorted(direct)[len(direct) // 2], sorted(proxied)[len(proxied) // 2]
        o, t = sorted(one)[len(one) // 2], sorted(three)[len(three) // 2]
        print(f"LOGIN+SELECT direct      {d:8.2f} ms/session")
        print(f"LOGIN+SELECT via nginx   {p:8.2f} ms/session   ratio nginx/direct {p / d:.2f}")
        print(f"ingest one node          {o:8.1f} msg/s")
        print(f"ingest three nodes       {t:8.1f} msg/s       ratio three/one {t / o:.2f}")
        print(f"(cores: {os.cpu_count()}; medians of {args.rounds} rounds)")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
