"""Stopping gently: on SIGTERM, sessions get a grace period to finish what they do.

twistd calls the application's C{stopService} on SIGTERM and waits for the Deferred it
returns. L{pymaild.tap.ServerService} first stops every listener (no new connections),
then L{drain}s the open sessions, and only then stops the rest (the queue, whose mail
stays on disk, and the thread pools the sessions need until the end):

- every 0.2 s each session whose protocol says it is idle (SMTP between transactions,
  IMAP between commands or in IDLE, POP3 between commands; any HTTP connection) is
  closed with its protocol's goodbye (C{421 4.3.2}, C{* BYE [UNAVAILABLE]}, C{-ERR
  [SYS/TEMP]}); a session in the middle of something (a DATA transfer or its fsync, an
  APPEND, a FETCH) is left to finish it;
- when C{server.shutdown_grace} seconds have passed, the sessions still open are told
  goodbye anyway, and dropped two seconds later if they are still there. An unfinished
  SMTP transaction was never answered 250, so the client sends it again; nothing
  acknowledged is lost.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

log = Logger(namespace="pymaild")

#: Seconds between looks at the open sessions.
TICK = 0.2
#: Seconds a session told goodbye at the deadline has before it is dropped.
ABORT_AFTER = 2.0


def drain(limits: Any, clock: Any, grace: float) -> defer.Deferred[None]:
    """Close the sessions counted by C{limits} as they become idle, all of them after
    C{grace} seconds; fire when none is left."""
    sessions = limits.sessions
    done: defer.Deferred[None] = defer.Deferred()
    if not sessions:
        done.callback(None)
        return done
    log.info("stopping: {n} session(s) open; idle ones are closed now, busy ones get up"
             " to {grace:g} s to finish", n=len(sessions), grace=grace)
    deadline = clock.seconds() + grace
    forced: float | None = None

    def tick() -> None:
        nonlocal forced
        if not sessions:
            if not done.called:
                done.callback(None)
            return
        now = clock.seconds()
        if forced is None and now >= deadline:
            log.info("stopping: grace period over, closing {n} busy session(s)",
                     n=len(sessions))
            forced = now
            for s in list(sessions):
                s.closeIfIdle(force=True)
        elif forced is not None and now >= forced + ABORT_AFTER:
            for s in list(sessions):
                s.abort()
            if not done.called:
                done.callback(None)
            return
        elif forced is None:
            for s in list(sessions):
                s.closeIfIdle()
        clock.callLater(TICK, tick)

    tick()
    return done


__all__ = ["drain"]
