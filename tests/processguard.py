"""No test may leave a process behind: find, name and end the test run's stray descendants.

A test that starts a server (C{twistd pymaild}, Dovecot, a helper script) must stop it. The
guard makes the test process a child subreaper (Linux C{PR_SET_CHILD_SUBREAPER}), so even a
process that double-forks or whose parent died stays among its descendants instead of
going to init, and reads the process tree from C{/proc}. Zombies (exited, not yet waited
for) are not counted: they run nothing and hold no port.

C{tests/conftest.py} checks after every pytest test and at the end of the session;
C{tests/__init__.py} checks at the end of a trial run. A leak is reported with each
process's pid and command line, then the processes are killed so later tests start clean.
Where there is no C{/proc} the guard sees nothing and stays silent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Iterable

PR_SET_CHILD_SUBREAPER = 36
"""prctl() option number (linux/prctl.h)."""

GRACE = 10.0
"""Seconds a new descendant may take to exit after its test (a SIGTERMed server that is
still writing its last log lines, Dovecot's workers after their master) before it counts
as left behind."""


def enableSubreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; True when it worked."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        prctl = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of process C{pid} from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0].decode(), int(fields[1])


def commandLine(pid: int) -> str:
    """Process C{pid}'s command line, or its name in brackets when it has none."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
        if raw:
            return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/comm", "rb") as f:
            return "[" + f.read().strip().decode(errors="replace") + "]"
    except OSError:
        return "[gone]"


def descendants(root: int | None = None) -> dict[int, str]:
    """The live (not zombie) descendants of process C{root} (default: this process),
    pid to command line; empty where there is no /proc."""
    if root is None:
        root = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None:
            continue
        states[int(entry)] = stat[0]
        children.setdefault(stat[1], []).append(int(entry))
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if states.get(pid) != "Z":
            found[pid] = commandLine(pid)
    return {pid: found[pid] for pid in sorted(found)}


def leftOver(before: Iterable[int] = (), grace: float = GRACE) -> dict[int, str]:
    """Descendants not in C{before} that are still alive after up to C{grace} seconds."""
    known = set(before)
    deadline = time.monotonic() + grace
    while True:
        new = {pid: cmd for pid, cmd in descendants().items() if pid not in known}
        if not new or time.monotonic() >= deadline:
            return new
        time.sleep(0.05)


def kill(processes: Iterable[int]) -> None:
    """SIGKILL each process (those already gone are ignored)."""
    for pid in processes:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def describe(processes: dict[int, str]) -> str:
    """One line per process: pid and command line."""
    return "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in processes.items())


def installForTrial(grace: float = GRACE) -> None:
    """At the end of a trial run, fail it (exit status 1) naming any process the tests left
    running (still alive C{grace} seconds after the end), after killing those processes."""
    import atexit

    if not enableSubreaper():
        return

    def check() -> None:
        """The end-of-run check."""
        stray = leftOver(grace=grace)
        if not stray:
            return
        kill(stray)
        sys.stdout.flush()
        sys.stderr.write("\nFAILED: the tests left these processes running (now killed):\n"
                         + describe(stray) + "\n")
        sys.stderr.flush()
        os._exit(1)

    atexit.register(check)
