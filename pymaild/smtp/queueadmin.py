"""The ``pymaild-admin queue`` commands: list, show, flush, retry, delete, hold, release.

They work on the spool (L{pymaild.smtp.queuespool.Spool}) under its lock, and touch its
flush trigger so the running server's scheduler (L{pymaild.smtp.queue}) re-reads the
envelopes on its next tick.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO

from pymaild.smtp.queuespool import HELD, PENDING, QUEUE_ID, Envelope, Spool

USAGE = """usage: pymaild-admin queue list
       pymaild-admin queue show ID
       pymaild-admin queue flush [ID]
       pymaild-admin queue retry ID
       pymaild-admin queue delete ID
       pymaild-admin queue hold ID
       pymaild-admin queue release ID"""


def _when(t: float) -> str:
    """A local time stamp for listings."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def listQueue(spool: Spool, out: IO[str]) -> int:
    """Print every queued message and the state of each recipient."""
    if not os.path.isdir(spool.envDir):
        print("queue is empty", file=out)
        return 0
    envelopes, problems = spool.envelopes()
    for name, problem in problems:
        print(f"{name}  (unreadable envelope: {problem})", file=out)
    for env in envelopes:
        _printEnvelope(env, out)
    print(f"{len(envelopes)} message(s) in queue", file=out)
    return 0


def _printEnvelope(env: Envelope, out: IO[str]) -> None:
    """One message of L{listQueue}: id, size, arrival, sender, each recipient's state."""
    held = " [held]" if any(r.state == HELD for r in env.recipients) else ""
    print(f"{env.id}  {env.size:>9} bytes  {_when(env.arrival)}  from <{env.sender}>{held}",
          file=out)
    for r in env.recipients:
        due = "now" if r.nextTry <= time.time() else _when(r.nextTry)
        nxt = f"  next {due}" if r.state == PENDING else ""
        reply = f"\n        ({r.reply})" if r.reply else ""
        print(f"    <{r.address}>  {r.state}  attempts {r.attempts}{nxt}{reply}", file=out)


def showMessage(spool: Spool, qid: str, out: IO[str]) -> bool:
    """Print one message's envelope and header section; False when there is none."""
    with spool.locked():
        env = spool.read(qid)
        if env is None:
            return False
        headers = spool.readHeaders(qid)
    _printEnvelope(env, out)
    print("", file=out)
    out.write(headers.decode("utf-8", "replace").replace("\r\n", "\n"))
    return True


def queueCommand(
    path: str, argv: list[str], out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """Run C{pymaild-admin queue ARGV} on the queue at C{path}; returns the exit status.

    Safe while the server runs: every change is made under the queue lock, and the
    C{flush} trigger file makes the scheduler re-read the spool on its next tick.

      - C{list}: messages, recipients, states, attempts, next try, last reply;
      - C{show ID}: one message's envelope and header section;
      - C{flush [ID]}: make pending recipients (of ID, or of all) due now;
      - C{retry ID}: the same as C{flush ID};
      - C{delete ID}: remove the message (no bounce);
      - C{hold ID}: never attempt its pending recipients until released;
      - C{release ID}: make held recipients pending and due now.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    spool = Spool(path)
    if not argv or argv[0] not in ("list", "show", "flush", "retry", "delete", "hold",
                                   "release"):
        print(USAGE, file=err)
        return 2
    command, args = argv[0], argv[1:]
    if command == "retry":
        if len(args) != 1:
            print("pymaild-admin queue: retry needs one queue id", file=err)
            return 2
        command = "flush"
    if command == "list":
        if args:
            print(USAGE, file=err)
            return 2
        return listQueue(spool, out)
    if command != "flush" and len(args) != 1:
        print(f"pymaild-admin queue: {command} needs one queue id", file=err)
        return 2
    if command == "flush" and not args:
        ids = (sorted(n for n in os.listdir(spool.envDir) if QUEUE_ID.match(n))
               if os.path.isdir(spool.envDir) else [])
    elif len(args) == 1:
        ids = [args[0].upper()]
        if not QUEUE_ID.match(ids[0]):
            print(f"pymaild-admin queue: {args[0]!r} is not a queue id", file=err)
            return 2
    else:
        print(USAGE, file=err)
        return 2
    if not os.path.isdir(spool.envDir):
        print(f"pymaild-admin queue: no queue at {path}", file=err)
        return 1 if command != "flush" else 0
    if command == "show":
        if showMessage(spool, ids[0], out):
            return 0
        print(f"pymaild-admin queue: {ids[0]}: no such message", file=err)
        return 1
    now = time.time()
    status = 0
    for qid in ids:
        if command == "delete":
            ok = spool.remove(qid)
        else:
            ok = spool.update(qid, _ADMIN_CHANGES[command](now)) is not None
        if ok:
            print(f"{qid}: {_DONE[command]}", file=out)
        else:
            print(f"pymaild-admin queue: {qid}: no such message", file=err)
            status = 1
    spool.requestFlush()
    return status


def _flush(now: float) -> Callable[[Envelope], None]:
    """Make pending recipients due at once (next try 0: due on any clock)."""

    def change(env: Envelope) -> None:
        for r in env.recipients:
            if r.state == PENDING:
                r.nextTry = 0.0

    return change


def _hold(now: float) -> Callable[[Envelope], None]:
    """Put pending recipients on hold."""

    def change(env: Envelope) -> None:
        for r in env.recipients:
            if r.state == PENDING:
                r.state = HELD

    return change


def _release(now: float) -> Callable[[Envelope], None]:
    """Make held recipients pending and due at once."""

    def change(env: Envelope) -> None:
        for r in env.recipients:
            if r.state == HELD:
                r.state = PENDING
                r.nextTry = 0.0

    return change


_DONE = {"flush": "flushed", "delete": "deleted", "hold": "held", "release": "released"}

_ADMIN_CHANGES: dict[str, Callable[[float], Callable[[Envelope], None]]] = {
    "flush": _flush,
    "hold": _hold,
    "release": _release,
}
