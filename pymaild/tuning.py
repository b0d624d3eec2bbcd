"""Process tuning: the C library's and CPython's knobs the server turns, in one place.

Neither is needed for correctness; each pays for itself by a figure given in its
docstring. The tap calls both once, before it makes the first thread pool (and a
process of its own calls them again): nothing here runs as a side effect of an import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["limitMallocArenas", "shortenSwitchInterval", "MMAP_THRESHOLD", "TRIM_THRESHOLD",
           "SWITCH_INTERVAL"]


SWITCH_INTERVAL = 0.001
"""How long a thread may hold the interpreter lock while another waits for it, in
seconds (CPython's default is 0.005)."""


def shortenSwitchInterval(seconds: float = SWITCH_INTERVAL) -> float:
    """Let a thread that waits for the interpreter lock have it after C{seconds} (where
    it is longer now); the interval in force afterwards.

    The reactor thread gives the lock up at every poll and system call and must win it
    back each time; while two disk threads parse one user's hostile messages, each of
    those waits lasted up to CPython's 5 ms, and a SELECT or an MX transaction of
    another user needs a dozen of them. C{python bench/hostile_load.py --seconds 20}:
    the other user's SELECT p95 under attack 144 ms at 5 ms, 94 ms at 1 ms; the MX
    delivery's 200 ms and 113 ms (the parsing itself no longer holds the lock for
    longer stretches than this: each step is a C call over at most a megabyte).
    """
    if sys.getswitchinterval() > seconds:
        sys.setswitchinterval(seconds)
    return sys.getswitchinterval()


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
"""glibc's mallopt() parameter numbers (malloc.h)."""

MMAP_THRESHOLD = 2 * 1024 * 1024
"""Blocks of this many bytes or more get their own mapping, returned when freed (above
the size of most messages and of the FETCH response batches, about 1 MiB, and of the
transport's slices of them, whose buffers the heap reuses: mapping each costs page
faults, measured as a third more CPU for FETCH BODY[] at 1 MiB)."""

TRIM_THRESHOLD = 2 * 1024 * 1024
"""Free memory at the top of a malloc heap beyond this is returned to the system."""


def libcMallopt() -> Callable[[int, int], int] | None:
    """The C library's C{mallopt(param, value)}, or None where there is none (musl,
    macOS)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def limitMallocArenas(arenas: int = 2, mmapThreshold: int | None = MMAP_THRESHOLD,
                      trimThreshold: int | None = TRIM_THRESHOLD,
                      mallopt: Callable[[int, int], int] | None = None) -> bool:
    """Cap glibc's malloc arenas at C{arenas} and fix its mmap and trim thresholds for
    this process; True when every setting was accepted.

    glibc gives threads their own arenas (up to eight per core), and each keeps the
    memory freed in it: after the disk pool's threads have read large messages, the
    process would hold several arenas' worth of freed buffers. Two arenas keep the
    resident size down at no measurable cost here. (C{MALLOC_ARENA_MAX=2} in the
    environment sets the same glibc parameter, but only where every way of starting the
    server sets it; this call applies to any start.)

    glibc also raises its mmap threshold to the size of each mapped block freed (up to
    32 MiB), and the trim threshold with it: after the first big transient buffer (the
    7 MB C{dovecot-uidlist} of a 100,000-message folder, read and decoded), every block
    below that size comes from the heap, where it stays resident once freed. Fixed
    thresholds (C{mmapThreshold}, C{trimThreshold}; None leaves one to glibc) turn that
    adjustment off: big blocks are mapped and unmapped, and a heap's free top goes back
    to the system. On the IMAP bench's 100,000-message mailbox this is about 20 MB.

    Elsewhere (musl, macOS) nothing happens and False is returned.

    @param mallopt: the C{mallopt} to call (default: L{libcMallopt}); C{mallopt(param,
        value)} returns non-zero on success, as glibc's does.
    """
    if mallopt is None:
        mallopt = libcMallopt()
        if mallopt is None:
            return False
    done = bool(mallopt(_M_ARENA_MAX, arenas))
    if mmapThreshold is not None:
        done = bool(mallopt(_M_MMAP_THRESHOLD, mmapThreshold)) and done
    if trimThreshold is not None:
        done = bool(mallopt(_M_TRIM_THRESHOLD, trimThreshold)) and done
    return done
