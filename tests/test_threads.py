"""pymaild.threads: process-level tuning of the threads that do blocking work."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = """
import ctypes, ctypes.util, sys, threading
from pymaild.threads import limitMallocArenas
if sys.argv[1] == "cap":
    print(limitMallocArenas(2))
keep = []
def work():
    keep.append([bytes(1000 + i) for i in range(2000)])
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


class MallocArenaTests(SynchronousTestCase):
    """The disk pool's threads share a capped number of malloc arenas (glibc)."""

    def arenas(self, mode: str) -> tuple[str, int]:
        """Run the probe in a fresh interpreter; its output and the arenas glibc used."""
        proc = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                              text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                              timeout=60, check=True)
        return proc.stdout, len(re.findall(r"^Arena \d+:", proc.stderr, re.M))

    def setUp(self) -> None:
        """Only where the C library is glibc (its malloc_stats names the arenas)."""
        libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
        if not libc:
            raise self.skipTest("not glibc: no arenas to cap")

    def test_capped(self) -> None:
        """With the cap, six allocating threads use at most two arenas; without it
        they get arenas of their own."""
        out, capped = self.arenas("cap")
        self.assertEqual(out.strip(), "True")
        self.assertLessEqual(capped, 2)
        _, free = self.arenas("free")
        self.assertGreater(free, 2)
