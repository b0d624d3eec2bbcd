#!/usr/bin/env python3
"""What a login's password check costs: pymaild's argon2id default against passlib's.

Hashes one password with each cost (pymaild's ``ARGON2_COST``, OWASP's recommended
19 MiB / 2 passes / 1 lane, and passlib's own default, 64 MiB / 3 passes / 4 lanes,
which pymaild used before), then verifies it from as many threads as the server's
auth pool has (``auth.threads``, 4 by default) for a fixed time each, and prints
verifications per second, CPU seconds per verification and the ratio between the two
in the same run. A login costs one verification; this is the ceiling the check puts on
logins per second, whatever the protocol.

Usage: ``python bench/login_cost.py [--seconds S] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pymaild.auth import passwd  # noqa: E402

PASSLIB_DEFAULT = {"memory_cost": 65536, "rounds": 3, "parallelism": 4}


def cpu() -> float:
    """CPU seconds of this process so far (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(settings: dict[str, int], seconds: float, threads: int) -> tuple[float, float]:
    """Verifications per second and CPU seconds per verification under C{settings}."""
    passwd.configureHashing(**settings)
    field = passwd.hashPassword("correct horse battery staple")
    count = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < stop:
            assert passwd.verifyHash(field, "correct horse battery staple")
            with lock:
                count[0] += 1

    startCPU, start = cpu(), time.monotonic()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed, used = time.monotonic() - start, cpu() - startCPU
    return count[0] / elapsed, used / max(count[0], 1)


def main() -> None:
    """Measure both costs and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for name, settings in (("pymaild default", passwd.ARGON2_COST),
                           ("passlib default", PASSLIB_DEFAULT)):
        rate, perLogin = measure(settings, args.seconds, args.threads)
        rows.append((name, settings, rate, perLogin))
        print(f"{name:16} m={settings['memory_cost']} t={settings['rounds']}"
              f" p={settings['parallelism']}: {rate:7.1f} verifications/s,"
              f" {perLogin * 1000:6.1f} ms CPU each", flush=True)
    print(f"ratio: pymaild's default checks {rows[0][2] / rows[1][2]:.1f}x as many"
          f" logins per second ({os.cpu_count()} cores, {args.threads} threads,"
          f" load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
