"""A call repeated on a timer while the server runs: what the report senders and the
MTA-STS policy refresh have in common.

Twisted's C{TimerService} calls at once when it starts; these must not (the server is
still starting, and a restart would send or fetch again), so the first call comes one
interval after the start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import task

__all__ = ["Periodic"]


class Periodic(Service):
    """Calls C{call()} every C{interval} seconds of C{clock}, the first time one interval
    after the service starts; a Deferred it returns is waited for before the next call
    (L{twisted.internet.task.LoopingCall}'s rule)."""

    def __init__(self, call: Callable[[], Any], clock: Any, interval: float) -> None:
        self.call = call
        self.clock = clock
        self.interval = interval
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        """Start the timer."""
        super().startService()
        self._loop = task.LoopingCall(self.call)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        """Stop the timer."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()
