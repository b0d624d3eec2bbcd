"""SIGHUP: re-read what can change without a restart, apply it, and log what was done.

Python's default for SIGHUP ends the process (status 129), and twistd installs no
handler of its own, so ``kill -HUP`` used to stop the server silently. ``Reloader``
installs a handler that never stops the server. On each HUP it, in the disk pool:

- reads the TLS certificate and key again; a changed certificate is used by every new
  TLS connection at once (open connections keep theirs); unusable files are logged and
  the old certificate stays;
- reads the passwd file again (it is also re-read on every change) and counts users;
- loads the configuration file again; a broken file is logged and nothing changes.

Then, in the reactor thread, each changed key that an object of the running server
follows (L{Reloader.follow}) is applied: the followers get the running configuration
with those keys replaced, and new sessions, deliveries and queue runs use the new
values (open sessions keep the values they started with). A changed key that nothing
follows (a listener's endpoint, the data directory, a pool's size) is named in the log
as applied at the next restart, and the running configuration keeps its old value, so
each later HUP names it again until then.

Last, in the pool again, it runs every other re-read the tap registered
(L{Reloader.reread}: the aliases file the configuration now names, the DKIM keys), each
giving one phrase for the log.

It then writes one log line listing what it did.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Iterable
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


def withKeys(running: configModule.Config, fresh: configModule.Config,
             keys: Iterable[str]) -> configModule.Config:
    """C{running} with the C{section.key} values of C{keys} taken from C{fresh}."""
    sections: dict[str, dict[str, Any]] = {}
    for key in keys:
        name, _, field = key.partition(".")
        sections.setdefault(name, {})[field] = getattr(getattr(fresh, name), field)
    return dataclasses.replace(running, **{
        name: dataclasses.replace(getattr(running, name), **values)
        for name, values in sections.items()})


@dataclasses.dataclass(frozen=True)
class Follower:
    """Something of the running server that takes new values of some keys.

    @ivar keys: the C{section.key} names it applies; every user of each key must be
        covered by some follower, or the key must not be claimed.
    @ivar apply: called in the reactor thread with the new running configuration.
    @ivar name: what it is, for the log when applying fails.
    """

    keys: frozenset[str]
    apply: Callable[[configModule.Config], None]
    name: str


class RestartNeeded(PymaildError):
    """Raised by a follower for a change it cannot apply while running (the message
    says why): the keys are reported as applied at the next restart."""


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
        self.followers: list[Follower] = []
        self.rereads: list[Callable[[], str]] = []

    def follow(self, keys: Iterable[str], apply: Callable[[configModule.Config], None],
               name: str) -> None:
        """Have C{apply} called with the new configuration when one of C{keys} changes.

        @raise ValueError: a key is not a key of the configuration.
        """
        wanted = frozenset(keys)
        for key in wanted:
            section, _, field = key.partition(".")
            if section not in configModule.SECTIONS or field not in {
                    f.name for f in dataclasses.fields(getattr(self.config, section))}:
                raise ValueError(f"no configuration key {key!r}")
        self.followers.append(Follower(wanted, apply, name))

    def reread(self, step: Callable[[], str]) -> None:
        """Run C{step} in the pool on every HUP; the phrase it returns goes in the log
        line (it may raise L{PymaildError}: its message is logged instead)."""
        self.rereads.append(step)

    def followed(self) -> frozenset[str]:
        """Every key some follower applies."""
        return frozenset().union(*(f.keys for f in self.followers))

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
        """Re-read everything, apply what can be applied, and log one line; the
        Deferred fires with that line."""
        d = self.runner.run(self._reread)
        d.addCallback(self._apply)
        d.addCallback(lambda done: self.runner.run(self._rereadMore, done))
        d.addCallback(self._report)
        d.addErrback(lambda f: log.failure("SIGHUP: reload failed", f))
        return d

    def _reread(self) -> tuple[list[str], configModule.Config | None]:
        """In the pool: read the files again; return what was done, phrase by phrase,
        and the configuration file as it is now (None: not read)."""
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
            return done, None
        try:
            fresh = self.loadConfig()
        except PymaildError as e:
            done.append(f"configuration NOT reloaded: {e}")
            return done, None
        return done, fresh

    def _rereadMore(self, done: list[str]) -> list[str]:
        """In the pool, after the new configuration is applied (an aliases file it
        names is the one read): the re-reads the tap registered."""
        for step in self.rereads:
            try:
                done.append(step())
            except PymaildError as e:
                done.append(str(e))
        return done

    def _apply(self, result: tuple[list[str], configModule.Config | None]) -> list[str]:
        """In the reactor thread: apply the configuration read in the pool, if any."""
        done, fresh = result
        if fresh is not None:
            done.extend(self.applyConfig(fresh))
        return done

    def applyConfig(self, fresh: configModule.Config) -> list[str]:
        """Hand the keys that changed in C{fresh} to their followers (reactor thread);
        return what was done, phrase by phrase."""
        done: list[str] = []
        keys = changedKeys(self.config, fresh)
        if not keys:
            done.append(f"{self.config.path} unchanged")
            return done
        followed = self.followed()
        live = [k for k in keys if k in followed]
        later = [k for k in keys if k not in followed]
        running = withKeys(self.config, fresh, live)
        failed: list[str] = []
        for follower in self.followers:
            if follower.keys.isdisjoint(live):
                continue
            try:
                follower.apply(running)
            except RestartNeeded as e:
                waiting = [k for k in live if k in follower.keys]
                failed.extend(waiting)
                later.extend(f"{k} ({e})" for k in waiting)
                continue
            except Exception:
                log.failure("SIGHUP: applying the new configuration to {name} failed",
                            name=follower.name)
                failed.extend(k for k in live if k in follower.keys)
        applied = [k for k in live if k not in failed]
        self.config = withKeys(self.config, fresh, applied)
        if applied:
            done.append("applied from " + f"{self.config.path}: " + ", ".join(applied))
        broken = [k for k in failed if not any(w.startswith(k + " (") for w in later)]
        if broken:
            done.append("NOT applied (see the error above): " + ", ".join(broken))
        if later:
            done.append(f"changed in {self.config.path}, applied at the next restart: "
                        + ", ".join(later))
        return done

    def _report(self, done: list[str]) -> str:
        """Log what the reload did."""
        line = "SIGHUP: " + "; ".join(done)
        log.info("{line}", line=line)
        return line
