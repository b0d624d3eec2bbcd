"""SIGHUP: re-read what can change without a restart, and say in the log what was done.

Python's default for SIGHUP ends the process (status 129), and twistd installs no
handler of its own, so ``kill -HUP`` used to stop the server silently. ``Reloader``
installs a handler that never stops the server. On each HUP it, in the disk pool:

- reads the TLS certificate and key again; a changed certificate is used by every new
  TLS connection at once (open connections keep theirs); unusable files are logged and
  the old certificate stays;
- reads the passwd file again (it is also re-read on every change) and counts users;
- loads the configuration file again and names the keys whose new values need a
  restart, so nothing changes silently; a broken file is logged and nothing changes.

It then writes one log line listing what it did.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from pymaild import config as configModule
from pymaild.errors import PymaildError

log = Logger(namespace="pymaild")


def changedKeys(old: configModule.Config, new: configModule.Config) -> list[str]:
    """The C{section.key} names whose values differ between two configurations."""
    changed = []
    for name in configModule.SECTIONS:
        a, b = getattr(old, name), getattr(new, name)
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                changed.append(f"{name}.{f.name}")
    return changed


class Reloader(service.Service):
    """The SIGHUP handler of one server.

    @param runner: runs the file reads off the reactor thread (the disk pool).
    @param tls: the server's L{pymaild.tls.ServerTLS}.
    @param countUsers: returns the number of users in the (re-read) passwd file.
    @param config: the running configuration.
    @param loadConfig: loads the configuration file again (the same overrides applied).
    """

    def __init__(self, reactor: Any, runner: Any, tls: Any, countUsers: Callable[[], int],
                 config: configModule.Config,
                 loadConfig: Callable[[], configModule.Config]) -> None:
        self.reactor = reactor
        self.runner = runner
        self.tls = tls
        self.countUsers = countUsers
        self.config = config
        self.loadConfig = loadConfig
        self._previous: Any = None

    def startService(self) -> None:
        """Install the handler (only the main thread may; elsewhere there is none)."""
        super().startService()
        try:
            self._previous = signal.signal(signal.SIGHUP, self._signalled)
        except ValueError:
            self._previous = None

    def stopService(self) -> None:
        """Put the previous handler back."""
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _signalled(self, signum: int, frame: Any) -> None:
        """The signal handler: hand the work to the reactor, which hands it to the pool."""
        self.reactor.callFromThread(self.reload)

    def reload(self) -> Any:
        """Re-read everything and log one line; the Deferred fires with that line."""
        d = self.runner.run(self._reread)
        d.addCallback(self._report)
        d.addErrback(lambda f: log.failure("SIGHUP: reload failed", f))
        return d

    def _reread(self) -> list[str]:
        """In the pool: read the files again; return what was done, phrase by phrase."""
        done = []
        try:
            if self.tls.reload():
                done.append(f"new TLS certificate {self.tls.certPath}"
                            f" (SHA-256 {self.tls.fingerprint})")
            else:
                done.append("TLS certificate unchanged")
        except PymaildError as e:
            done.append(f"TLS certificate NOT reloaded, the old one stays: {e}")
        users = self.countUsers()
        done.append(f"{users} user{'' if users == 1 else 's'} in the passwd file")
        if self.config.path is None:
            done.append("no configuration file to read")
            return done
        try:
            fresh = self.loadConfig()
        except PymaildError as e:
            done.append(f"configuration NOT reloaded: {e}")
            return done
        keys = changedKeys(self.config, fresh)
        if keys:
            done.append(f"changed in {self.config.path}, applied at the next restart: "
                        + ", ".join(keys))
        else:
            done.append(f"{self.config.path} unchanged")
        return done

    def _report(self, done: list[str]) -> str:
        """Log what the reload did."""
        line = "SIGHUP: " + "; ".join(done)
        log.info("{line}", line=line)
        return line
