"""Kill pymaild with SIGKILL during SMTP deliveries, many rounds; report what survived.

Usage: python bench/crash_soak.py [ROUNDS] (default 100). Every message that got 250
must be complete in the Maildir after every kill; the script exits 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_crash import crashRounds  # noqa: E402


def main() -> int:
    """Run the rounds and print the counts."""
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with tempfile.TemporaryDirectory() as d:
        start = time.monotonic()
        try:
            result = crashRounds(os.path.join(d, "data"), rounds, clients=10)
        except AssertionError as e:
            print(f"FAILED: {e}")
            return 1
        result["seconds"] = round(time.monotonic() - start)
        print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
