"""pymaild.tuning.limitMallocArenas: fixed malloc thresholds give freed memory back."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = """
import os, sys
import pymaild.threads  # the heap as the server's imports (Twisted) leave it
if sys.argv[1] == "fixed":
    from pymaild.tuning import limitMallocArenas
    print(limitMallocArenas(2))
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
big = bytearray(16 << 20)  # mapped; freeing it makes glibc raise its thresholds
del big
base = rss()
blocks, pins = [], []
for i in range(16):
    blocks.append(bytearray(3 << 20))
    pins.append(bytearray(600))  # small heap blocks above each big one
del blocks
print(rss() - base)
"""


class MallocThresholdTests(SynchronousTestCase):
    """Memory freed after a big transient buffer goes back to the system (glibc)."""

    def growth(self, mode: str) -> tuple[list[str], int]:
        """Run the probe in a fresh interpreter; its output lines and the resident
        growth (bytes) left after its 48 MiB of blocks were freed."""
        proc = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                              text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                              timeout=60, check=True)
        lines = proc.stdout.split()
        return lines[:-1], int(lines[-1])

    def setUp(self) -> None:
        """Only where the C library is glibc and /proc gives the resident size."""
        libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
        if not libc or not os.path.exists("/proc/self/statm"):
            raise self.skipTest("not glibc on Linux: no thresholds to fix")

    def test_freedBlocksReturned(self) -> None:
        """With fixed thresholds the 3 MiB blocks are mapped and their memory is gone
        once they are freed; with glibc's moving thresholds they stay resident."""
        out, fixed = self.growth("fixed")
        self.assertEqual(out, ["True"])
        self.assertLess(fixed, 4 << 20)
        _, moving = self.growth("moving")
        self.assertGreater(moving, 16 << 20)
