"""What the spam filter did, counted: for C{pymaild-admin spam status} and for metrics.

L{SpamCounters} is owned by the tap and shared by the check and the learner; its
L{CounterFile} service writes a snapshot to C{<data>/spam-counters.json} (through the
disk runner, atomically) every few seconds when something changed, and at stop, so the
admin command (another process) can show it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task

from pymaild.files import writeFileAtomic

COUNTER_FILE = "spam-counters.json"


class SpamCounters:
    """Named counts (actions taken, scans that failed, messages learned)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.changes = 0
        self.started = time.time()

    def add(self, name: str, n: int = 1) -> None:
        """Count C{n} more of C{name}."""
        self.counts[name] += n
        self.changes += 1

    def snapshot(self) -> dict[str, int]:
        """The counts now, sorted by name."""
        return dict(sorted(self.counts.items()))


def writeSnapshot(path: str, data: dict[str, Any]) -> None:
    """Replace C{path} with C{data} as JSON (blocking; L{writeFileAtomic}, readable by
    C{pymaild-admin spam status} as before)."""
    writeFileAtomic(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), 0o644)


def readSnapshot(path: str) -> dict[str, Any] | None:
    """What L{writeSnapshot} wrote, or None when there is no (readable) file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class CounterFile(Service):
    """Writes L{SpamCounters} to a file when they changed, every C{interval} seconds.

    @param runner: where the blocking write runs (a L{pymaild.threads.ThreadRunner}).
    """

    def __init__(self, counters: SpamCounters, path: str, runner: Any, clock: Any,
                 interval: float = 10.0) -> None:
        self.counters = counters
        self.path = path
        self.runner = runner
        self.clock = clock
        self.interval = interval
        self.written = -1
        self._loop: task.LoopingCall | None = None

    def flush(self) -> defer.Deferred[None]:
        """Write the snapshot now when it changed since the last write."""
        if self.counters.changes == self.written:
            return defer.succeed(None)
        changes = self.counters.changes
        data = {"written": time.time(), "since": self.counters.started,
                "counts": self.counters.snapshot()}
        d = self.runner.run(writeSnapshot, self.path, data)

        def done(_: Any) -> None:
            self.written = changes

        return d.addCallbacks(done, lambda f: None)

    def startService(self) -> None:
        """Start writing periodically."""
        Service.startService(self)
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> defer.Deferred[None]:
        """Stop, writing a last time."""
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.flush()


__all__ = ["COUNTER_FILE", "CounterFile", "SpamCounters", "readSnapshot", "writeSnapshot"]
