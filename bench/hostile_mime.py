"""Hostile MIME probe: the cost of ENVELOPE and BODYSTRUCTURE for messages built to be
expensive, as ratios against a baseline measured in the same run.

The baseline is the same parse of an ordinary message (a To: of 10 addresses; a
Content-Type with two parameters). Each hostile message is reported as its CPU time
over the baseline's, with the tracemalloc peak of one parse, and the address lists at
n, 2n and 4n give the scaling ratio (about 2 per doubling when linear; past the caps,
about 1).

Run: ``python bench/hostile_mime.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pymaild.imap import bodystructure, mimeparse, summary  # noqa: E402


def folded(n: int) -> bytes:
    """A message whose To: holds C{n} addresses, one per folded line."""
    to = b",\r\n ".join(b"user%d@example.com" % i for i in range(n))
    return b"From: a@example.org\r\nSubject: s\r\nTo: " + to + b"\r\n\r\nbody\r\n"


def params(n: int) -> bytes:
    """A message whose Content-Type has a comment and C{n} parameters."""
    plist = b"; ".join(b"p%d=%d" % (i % 97, i) for i in range(n))
    return b"From: a@example.org\r\nContent-Type: text/plain (c); " + plist + b"\r\n\r\nx\r\n"


def cpu(fn: Callable[[], Any], repeat: int = 3) -> float:
    """The least CPU time of C{repeat} runs of C{fn}."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return max(best, 1e-6)


def peak(fn: Callable[[], Any]) -> int:
    """The tracemalloc peak of one run of C{fn}, in bytes."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def envelopeOf(msg: bytes) -> bytes:
    """The ENVELOPE of C{msg}, from its header alone (a cold FETCH ENVELOPE)."""
    bodystructure._addressMemo.clear()
    return summary.summariseHeader(summary.readHeaderBlock(lambda n: msg[:n])).envelope


def main() -> None:
    """Measure and print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller messages")
    args = ap.parse_args()
    scale = 4 if args.quick else 1
    base = folded(10)
    baseEnv = cpu(lambda: [envelopeOf(base) for _ in range(100)]) / 100
    print(f"baseline ENVELOPE (10 addresses): {baseEnv * 1e6:.1f} us")
    last = None
    for n in (10_000, 20_000, 40_000, 100_000):
        n //= scale
        msg = folded(n)
        t = cpu(lambda m=msg: envelopeOf(m))
        step = "" if last is None else f"  x{t / last:.2f} vs previous"
        last = t
        mb = peak(lambda m=msg: envelopeOf(m)) / 1e6
        print(f"ENVELOPE {n:>7} addresses ({len(msg) / 1e6:.1f} MB): "
              f"{t / baseEnv:8.0f} x baseline, peak {mb:.1f} MB{step}")
    plain = (b"From: a@example.org\r\nContent-Type: text/plain; charset=utf-8; "
             b"format=flowed\r\n\r\nx\r\n")
    baseBs = cpu(lambda: [mimeparse.parseMessage(plain) for _ in range(100)]) / 100
    print(f"baseline BODYSTRUCTURE (2 parameters): {baseBs * 1e6:.1f} us")
    for n in (400_000, 4_000_000):
        n //= scale
        msg = params(n)
        t = cpu(lambda m=msg: mimeparse.parseMessage(m), repeat=1)
        mb = peak(lambda m=msg: mimeparse.parseMessage(m)) / 1e6
        print(f"BODYSTRUCTURE {n:>8} parameters ({len(msg) / 1e6:.1f} MB): "
              f"{t / baseBs:8.0f} x baseline, peak {mb:.1f} MB")


if __name__ == "__main__":
    main()
