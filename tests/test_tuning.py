"""pymaild.tuning: the process-level knobs (malloc arenas and thresholds, the switch
interval).

What pymaild does is ask the C library for a cap on malloc arenas and for fixed mmap
and trim thresholds, and report whether each setting was accepted; how many arenas glibc
then makes depends on the machine (cores, scheduling), so it is not asserted here (what
the fixed thresholds give back is measured in C{tests/test_tuning_malloc.py}).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pymaild import tap, tuning
from pymaild.tuning import MMAP_THRESHOLD, TRIM_THRESHOLD, limitMallocArenas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
"""glibc's parameter numbers, from malloc.h (written out again on purpose)."""


class FakeMallopt:
    """Records mallopt() calls; refuses the parameters in C{refuse}."""

    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[int, int]] = []
        self.refuse = refuse

    def __call__(self, param: int, value: int) -> int:
        """Record the call; 1 (accepted) or 0 (refused), as glibc answers."""
        self.calls.append((param, value))
        return 0 if param in self.refuse else 1


class MallocTuningTests(SynchronousTestCase):
    """limitMallocArenas() asks for the arena cap and the thresholds."""

    def test_settings(self) -> None:
        """By default: two arenas, and both thresholds fixed at 2 MiB; True."""
        mallopt = FakeMallopt()
        self.assertTrue(limitMallocArenas(mallopt=mallopt))
        self.assertEqual(mallopt.calls, [(M_ARENA_MAX, 2),
                                         (M_MMAP_THRESHOLD, 2 * 1024 * 1024),
                                         (M_TRIM_THRESHOLD, 2 * 1024 * 1024)])
        self.assertEqual((MMAP_THRESHOLD, TRIM_THRESHOLD), (2 << 20, 2 << 20))

    def test_givenValues(self) -> None:
        """The arena count is passed through; a threshold of None is left to glibc."""
        mallopt = FakeMallopt()
        self.assertTrue(limitMallocArenas(4, None, 1 << 20, mallopt=mallopt))
        self.assertEqual(mallopt.calls, [(M_ARENA_MAX, 4), (M_TRIM_THRESHOLD, 1 << 20)])

    def test_refusalReported(self) -> None:
        """Any refused setting makes the result False; the others are still made."""
        for refused in (M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD):
            mallopt = FakeMallopt(refuse=(refused,))
            self.assertFalse(limitMallocArenas(mallopt=mallopt))
            self.assertEqual(len(mallopt.calls), 3)

    def test_noMallopt(self) -> None:
        """Without a C library mallopt (musl, macOS) nothing is done: False."""
        self.patch(tuning, "libcMallopt", lambda: None)
        self.assertFalse(limitMallocArenas())

    def test_glibcAccepts(self) -> None:
        """Under glibc the real mallopt accepts every setting (in a fresh interpreter,
        so the test process keeps its own malloc)."""
        libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
        if not libc:
            raise self.skipTest("not glibc: no mallopt to call")
        code = ("from pymaild.tuning import libcMallopt, limitMallocArenas\n"
                "print(libcMallopt() is not None, limitMallocArenas())\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
        self.assertEqual((done.returncode, done.stdout.split()), (0, ["True", "True"]),
                         done.stderr)


class ServerTuningTests(SynchronousTestCase):
    """The server does the tuning before its thread pools exist."""

    def test_makeServiceTunes(self) -> None:
        """makeService calls limitMallocArenas() with its defaults, once, before it
        makes the first thread pool."""
        events: list[str] = []
        self.patch(tap, "limitMallocArenas", lambda *a, **k: events.append(f"tune{a}{k}"))
        realMakePool = tap.makePool

        def makePool(name: str, size: int) -> object:
            events.append(f"pool {name}")
            return realMakePool(name, size)

        self.patch(tap, "makePool", makePool)
        o = tap.Options()
        o.parseOptions(["--data", os.path.abspath(self.mktemp()), "--domain", "example.org"])
        tap.makeService(o, MemoryReactorClock())
        self.assertEqual(events[0], "tune(){}")
        self.assertEqual(events.count("tune(){}"), 1)
        self.assertTrue(events[1].startswith("pool "))


class SwitchIntervalTests(SynchronousTestCase):
    """The interpreter lock changes hands after at most SWITCH_INTERVAL."""

    def setUp(self) -> None:
        """Put the process's interval back after each test."""
        self.addCleanup(sys.setswitchinterval, sys.getswitchinterval())

    def test_shortens(self) -> None:
        """From CPython's 5 ms default to 1 ms."""
        sys.setswitchinterval(0.005)
        self.assertAlmostEqual(tuning.shortenSwitchInterval(), tuning.SWITCH_INTERVAL)
        self.assertAlmostEqual(sys.getswitchinterval(), 0.001)

    def test_neverLengthens(self) -> None:
        """An interval already shorter (set by whoever embeds the server) stays."""
        sys.setswitchinterval(0.0002)
        self.assertAlmostEqual(tuning.shortenSwitchInterval(), 0.0002)

    def test_makeServiceShortens(self) -> None:
        """makeService leaves the process with the short interval."""
        sys.setswitchinterval(0.005)
        o = tap.Options()
        o.parseOptions(["--data", os.path.abspath(self.mktemp()), "--domain", "example.org"])
        tap.makeService(o, MemoryReactorClock())
        self.assertLessEqual(sys.getswitchinterval(), tuning.SWITCH_INTERVAL + 1e-9)
