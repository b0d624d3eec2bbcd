#!/usr/bin/env python3
"""The PostgreSQL directory's answer cache: queries and time per recipient, kept or not.

A private PostgreSQL (L{tests.postgres_support}) with U users spread over three nodes
and one alias per ten users. Each recipient then costs what a cluster node's MX does
for it: the resolution at RCPT (aliases, then the user) and the owner lookup before the
hand-on (L{pymaild.tap}'s router: the account, its move mark and its owner node), all
through the same L{PostgresUsers} the server uses. R recipients drawn from a working set
of W addresses (mail arrives for the same people again and again) are resolved twice in
the same run: with C{cacheTTL} 0 (every answer asked, the baseline) and with the
default C{auth.database_cache_ttl}. Reported: statements sent to PostgreSQL and
microseconds per recipient, and the ratios.

Usage::

    python bench/directory_cache.py                   # 2000 recipients over 200 addresses
    python bench/directory_cache.py --recipients 5000 --working-set 50 --users 1000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pymaild.auth.directory import Directory  # noqa: E402
from pymaild.auth.pgusers import NodeRecord, PostgresAliases, PostgresUsers  # noqa: E402
from pymaild.config import AuthConfig  # noqa: E402
from pymaild.smtp.delivery import Resolver  # noqa: E402
from pymaild.tap import _ownerRoute  # noqa: E402
from tests.postgres_support import PostgreSQL  # noqa: E402

NODES = ("a", "b", "c")


def populate(conninfo: str, users: int) -> list[str]:
    """The nodes, C{users} users (a cheap hash: nobody logs in) and their aliases; every
    address mail may be sent to."""
    setup = PostgresUsers(conninfo, poolSize=1)
    setup.initSchema()
    for i, name in enumerate(NODES):
        setup.setNode(NodeRecord(name, f"127.0.0.{i + 1}"))
    field = "{PLAIN}x"
    with setup._connection() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pymaild_users (address, password, node) VALUES (%s, %s, %s)",
            [(f"user{i}@example.org", field, NODES[i % 3]) for i in range(users)])
        cur.executemany(
            "INSERT INTO pymaild_aliases (address, target) VALUES (%s, %s)",
            [(f"alias{i}@example.org", f"user{i}") for i in range(0, users, 10)])
    setup.close()
    return ([f"user{i}@example.org" for i in range(users)]
            + [f"alias{i}@example.org" for i in range(0, users, 10)])


def run(conninfo: str, ttl: float, rcpts: list[str]) -> tuple[int, float]:
    """Resolve and route every recipient as node a does; C{(statements, seconds)}."""
    users = PostgresUsers(conninfo, poolSize=1, cacheTTL=ttl)
    try:
        directory = Directory(users, ["example.org"])
        resolver = Resolver(directory, PostgresAliases(users))
        route = _ownerRoute(users, directory, "a")
        resolver.resolve(rcpts[0])  # the pool's first connection is not measured
        users.cache.forget()
        before = users.queries
        started = time.perf_counter()
        for rcpt in rcpts:
            for account in resolver.resolve(rcpt).local:
                route(account)
        return users.queries - before, time.perf_counter() - started
    finally:
        users.close()


def main() -> None:
    """Parse the arguments, run both rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--recipients", type=int, default=2000)
    parser.add_argument("--working-set", type=int, default=200)
    args = parser.parse_args()
    pg = PostgreSQL().start()
    try:
        addresses = populate(pg.conninfo, args.users)
        rng = random.Random(20)
        working = rng.sample(addresses, min(args.working_set, len(addresses)))
        rcpts = [rng.choice(working) for _ in range(args.recipients)]
        ttl = float(AuthConfig().database_cache_ttl)
        base = run(pg.conninfo, 0.0, rcpts)
        kept = run(pg.conninfo, ttl, rcpts)
    finally:
        pg.stop()
    n = len(rcpts)
    print(f"{n} recipients over {len(working)} addresses ({args.users} users)")
    print(f"{'':24}{'statements':>12}{'per rcpt':>10}{'us/rcpt':>10}")
    for name, (queries, seconds) in (("ttl 0 (baseline)", base),
                                     (f"ttl {ttl:g} s (default)", kept)):
        print(f"{name:24}{queries:>12}{queries / n:>10.2f}{seconds / n * 1e6:>10.0f}")
    print(f"statements saved: {1 - kept[0] / base[0]:.1%}; "
          f"time ratio kept / baseline: {kept[1] / base[1]:.2f}")


if __name__ == "__main__":
    main()
