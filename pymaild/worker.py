"""``python -m pymaild.worker SPEC``: one worker process of a master (L{pymaild.workers}).

The master starts it with the listening sockets of the shared listeners and one end of
its anvil connection as inherited descriptors, and C{SPEC}, a JSON object: the worker's
C{index}, the C{anvil} descriptor, the C{listeners} (C{[kind, endpoint description,
descriptor]} each) and C{argv}, the master's C{twistd pymaild} options. The worker
builds the same server from the same configuration (L{pymaild.tap.makeService} with a
L{pymaild.workers.WorkerContext}), accepts on the inherited sockets, writes its log as
JSON lines on its standard output for the master to relay, and stops, draining its
sessions, on SIGTERM or when the master is gone (its anvil connection ends).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger, globalLogBeginner, jsonFileLogObserver

from pymaild.workers import WorkerContext

log = Logger(namespace="pymaild")


class _Factory(protocol.Factory):
    """Hands out the one anvil client of the adopted connection."""

    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        """The anvil client."""
        return self.proto


def main(argv: list[str] | None = None) -> int:
    """Run one worker until it is stopped; the exit status."""
    # A HUP before the reload handler is installed must not end the process (Python's
    # default); what it would reload is read at the start anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from twisted.internet import reactor

    from pymaild import logs, tap
    from pymaild.anvil import AnvilClient

    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    globalLogBeginner.beginLoggingTo(
        [logs.quiet(jsonFileLogObserver(sys.stdout, recordSeparator=""))],
        redirectStandardIO=False)
    options = tap.Options()
    options.parseOptions(spec["argv"])
    sockets = {(kind, description): socket.socket(fileno=fd)
               for kind, description, fd in spec["listeners"]}
    stopping: list[bool] = []

    def masterGone() -> None:
        if not stopping:
            stopping.append(True)
            log.warn("the master process is gone: stopping")
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    context = WorkerContext(int(spec["index"]), None, sockets)
    client = AnvilClient(context.index, os.getpid(), context.render, onLost=masterGone)
    context.anvil = client
    reactor.adoptStreamConnection(  # type: ignore[attr-defined]
        int(spec["anvil"]), socket.AF_UNIX, _Factory(client))
    os.close(int(spec["anvil"]))
    top = tap.makeService(options, reactor, worker=context)
    top.privilegedStartService()
    top.startService()
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", lambda: stopping.append(True))
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", top.stopService)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
