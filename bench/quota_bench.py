#!/usr/bin/env python3
"""Quota usage benchmark: what a quota check costs once the usage counter is warm.

Builds one account with N messages (default 100,000) spread over F folders (default
20; a quarter of each folder's messages in ``new/``), as the store names them (with
``S=``), then times, in this one run:

- the baseline: counting the whole Maildir from nothing (a fresh
  L{pymaild.store.quota.UsageCounter}, what a counter-less server would do per check);
- a warm check with nothing changed (every directory settled: two stat() calls each);
- a warm check after one delivery into INBOX (its ``new/`` listed again).

It prints each phase's median time and its ratio to the baseline. Directory times are
set into the past so the directories count as settled, as they are on a live server a
few seconds after a change.

Usage: ``python bench/quota_bench.py [--messages N] [--folders F] [--rounds R]
[--keep DIR]``. A script, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pymaild.store import MaildirStore  # noqa: E402
from pymaild.store.quota import UsageCounter  # noqa: E402

USER = "bench@example.org"


def build(base: str, messages: int, folders: int) -> str:
    """The account's Maildir root, filled with C{messages} small files."""
    store = MaildirStore(os.path.join(base, "mail"), hostname="bench.example.org")
    acct = store.account(USER)
    names = ["INBOX"] + [f"Folder{i}" for i in range(1, folders)]
    for name in names[1:]:
        acct.createFolder(name)
    per = messages // len(names)
    n = 0
    for name in names:
        path = acct.root if name == "INBOX" else os.path.join(acct.root, "." + name)
        for i in range(per):
            sub = "new" if i % 4 == 0 else "cur"
            size = 1000 + (n % 5000)
            fn = f"{1700000000 + n}.M{n}P1Q{n}.bench,S={size},W={size}"
            if sub == "cur":
                fn += ":2,S"
            with open(os.path.join(path, sub, fn), "wb") as f:
                f.write(b"x" * 16)
            n += 1
    past = time.time() - 60
    for d, _dirs, _files in os.walk(acct.root):
        os.utime(d, (past, past))
    return str(acct.root)


def timed(f: object, rounds: int) -> float:
    """The median of C{rounds} runs of C{f()}, in seconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        f()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Build, time, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--folders", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", metavar="DIR")
    args = parser.parse_args()
    base = args.keep or tempfile.mkdtemp(prefix="pymaild-quota-bench-")
    try:
        t0 = time.perf_counter()
        root = build(base, args.messages, args.folders)
        print(f"built {args.messages} messages in {args.folders} folders"
              f" in {time.perf_counter() - t0:.1f} s")
        full = timed(lambda: UsageCounter().usage(root), args.rounds)
        warm = UsageCounter()
        usage = warm.usage(root)
        unchanged = timed(lambda: warm.usage(root), args.rounds)
        new = os.path.join(root, "new")
        counter = [0]

        def delivered() -> None:
            counter[0] += 1
            fn = os.path.join(new, f"1800000000.M{counter[0]}P2Q1.bench,S=1234,W=1234")
            with open(fn, "wb") as f:
                f.write(b"y")
            past = time.time() - 60 + counter[0] * 1e-3
            os.utime(new, (past, past))
            warm.usage(root)

        afterDelivery = timed(delivered, args.rounds)
        print(f"usage: {usage.bytes} bytes in {usage.messages} messages")
        print(f"baseline (full count)    {full * 1e3:9.2f} ms  1.00")
        print(f"warm, nothing changed    {unchanged * 1e3:9.2f} ms  {unchanged / full:.4f}")
        print(f"warm, one new delivery   {afterDelivery * 1e3:9.2f} ms"
              f"  {afterDelivery / full:.4f}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
