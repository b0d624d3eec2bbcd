"""Change notification for open IMAP mailboxes.

Sessions register their selected mailbox views in a L{Registry} keyed by (user, folder).
Whatever changes a folder — another IMAP session of this process, an SMTP delivery
(the tap calls L{mailDelivered} after a successful delivery), or another process seen
through inotify (L{FolderWatcher}) — marks the views of that folder dirty; each session
then rescans at the next point RFC 3501 §7.4.1 allows untagged EXISTS/EXPUNGE/FETCH
responses (end of a command, NOOP, CHECK, or at once while IDLE).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.logger import Logger

from pymaild.imap.mailbox import heldScans

log = Logger()


class Watchable(Protocol):
    """What the registry needs from a mailbox view."""

    user: str
    folderName: str

    def markDirty(self) -> None:
        """Note that the folder changed on disk."""


def folderKey(user: str, folder: str) -> tuple[str, str]:
    """The registry key: user lower-cased, INBOX in canonical case."""
    if folder.upper() == "INBOX":
        folder = "INBOX"
    return (user.lower(), folder)


class Registry:
    """Which sessions have which folders open, in this process; and the pending
    checks of folders this process changed (L{checkLater})."""

    def __init__(self) -> None:
        """An empty registry, making no checks until L{startChecks}."""
        self._clock: Any = None
        self._checks: dict[str, Any] = {}
        self._views: dict[tuple[str, str], set[Any]] = {}
        # NOTIFY (RFC 5465): sessions that hear of every change of a user's mail.
        self._watchers: dict[str, set[Any]] = {}

    def watchUser(self, user: str, watcher: Any) -> None:
        """Tell C{watcher} of every change to C{user}'s folders: C{folderChanged(name)}
        and C{listChanged(event, origin)} (L{listChanged})."""
        self._watchers.setdefault(user.lower(), set()).add(watcher)

    def unwatchUser(self, user: str, watcher: Any) -> None:
        """Undo L{watchUser}."""
        watchers = self._watchers.get(user.lower())
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[user.lower()]

    def listChanged(self, user: str, event: tuple[str, ...], origin: Any = None) -> None:
        """C{user}'s folder list changed: C{event} is C{("create", name)},
        C{("delete", name)}, C{("rename", old, new)}, C{("subscribe", name)},
        C{("unsubscribe", name)} or C{("metadata", name)} (C{""}: the server's entries);
        C{origin} is the account whose command made the change."""
        for watcher in list(self._watchers.get(user.lower(), ())):
            try:
                watcher.listChanged(event, origin)
            except Exception:  # noqa: BLE001 - one session's trouble is not the command's
                log.failure("NOTIFY watcher failed")

    def register(self, view: Watchable) -> None:
        """Start telling C{view} about changes to its folder."""
        self._views.setdefault(folderKey(view.user, view.folderName), set()).add(view)

    def unregister(self, view: Watchable) -> None:
        """Stop telling C{view} about changes."""
        key = folderKey(view.user, view.folderName)
        views = self._views.get(key)
        if views is not None:
            views.discard(view)
            if not views:
                del self._views[key]

    def views(self, user: str, folder: str) -> list[Any]:
        """The views currently open on a folder."""
        return list(self._views.get(folderKey(user, folder), ()))

    def changed(self, user: str, folder: str, origin: Any = None) -> None:
        """Folder C{folder} of C{user} changed; tell every view but C{origin}."""
        with heldScans():  # the views' rescans share one scan of the folder
            for view in self.views(user, folder):
                if view is not origin:
                    view.markDirty()
        for watcher in list(self._watchers.get(user.lower(), ())):
            try:
                watcher.folderChanged(folder)
            except Exception:  # noqa: BLE001 - one session's trouble is not the command's
                log.failure("NOTIFY watcher failed")

    def checkLater(self, folder: Any, runner: Any) -> None:
        """After this process changed C{folder} (a store L{pymaild.store.Folder}),
        run its C{settle()} through C{runner} when its C{checkDue()} says, so the
        reading of the directory that follows own changes is not left to the next
        client's command (one pending call per folder directory)."""
        clock = self._clock
        if clock is None or folder.path in self._checks:
            return
        due = folder.checkDue()
        if due is None:
            return
        path = folder.path

        def fire() -> None:
            def again(delay: float | None) -> None:
                self._checks.pop(path, None)
                if delay is not None:
                    self.checkLater(folder, runner)

            def failed(f: Any) -> None:
                self._checks.pop(path, None)
                log.failure("checking a folder after changes failed", f)

            self._checks[path] = None
            runner.run(folder.settle).addCallbacks(again, failed)

        self._checks[path] = clock.callLater(due, fire)

    def startChecks(self, clock: Any) -> None:
        """Make the checks of L{checkLater}, timed by C{clock} (the reactor)."""
        self._clock = clock

    def stopChecks(self) -> None:
        """Cancel the pending checks and make no more (the service is stopping)."""
        self._clock = None
        for call in self._checks.values():
            if call is not None and call.active():
                call.cancel()
        self._checks.clear()

    def mailDelivered(self, addresses: Iterable[str], folder: str = "INBOX") -> None:
        """New mail was delivered to C{folder} of each of C{addresses}."""
        for address in addresses:
            self.changed(address, folder)

    def __len__(self) -> int:
        return sum(len(v) for v in self._views.values())


registry = Registry()
"""The process-wide registry used by default by the IMAP factory and avatars."""


def mailDelivered(addresses: Iterable[str], folder: str = "INBOX") -> None:
    """Hook for the tap/SMTP delivery: wake IMAP sessions that have C{folder} open."""
    registry.mailDelivered(addresses, folder)


class FolderWatcher:
    """inotify watches on the C{cur/} and C{new/} directories of open folders.

    One watch per directory however many sessions use it (reference counted). Where
    inotify is unavailable (not Linux, or the reactor lacks it) L{watch} does nothing
    and sessions rely on the rescan at NOOP, CHECK and IDLE.
    """

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self._inotify: Any = None
        self._failed = False
        self._users: dict[str, list[Callable[[], None]]] = {}

    def _notifier(self) -> Any:
        if self._inotify is None and not self._failed:
            try:
                from twisted.internet import inotify

                self._inotify = inotify.INotify(reactor=self._reactor)
                self._inotify.startReading()
            except Exception as e:  # noqa: BLE001 - no inotify on this platform
                log.info("inotify unavailable ({e}); relying on rescans", e=e)
                self._failed = True
        return self._inotify

    @property
    def available(self) -> bool:
        """Whether inotify watches can be made."""
        return self._notifier() is not None

    def watch(self, folderPath: str, callback: Callable[[], None]) -> None:
        """Call C{callback} whenever a file appears in or leaves C{cur/} or C{new/}."""
        notifier = self._notifier()
        if notifier is None:
            return
        callbacks = self._users.get(folderPath)
        if callbacks is not None:
            callbacks.append(callback)
            return
        callbacks = [callback]
        self._users[folderPath] = callbacks
        from twisted.internet import inotify
        from twisted.python.filepath import FilePath

        mask = (
            inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM
            | inotify.IN_MOVED_TO
        )

        def fire(_ignored: Any, _path: Any, _mask: int) -> None:
            with heldScans():  # the views' rescans share one scan of the folder
                for cb in list(self._users.get(folderPath, ())):
                    try:
                        cb()
                    except Exception:  # noqa: BLE001
                        log.failure("IMAP change callback failed")

        for sub in ("cur", "new"):
            path = os.path.join(folderPath, sub)
            try:
                notifier.watch(FilePath(path), mask=mask, callbacks=[fire])
            except Exception as e:  # noqa: BLE001 - directory vanished, too many watches
                log.info("cannot watch {path}: {e}", path=path, e=e)

    def watchDir(self, path: str, callback: Callable[[], None]) -> bool:
        """Call C{callback} whenever an entry appears in, leaves or is renamed inside
        the directory C{path} itself (a Maildir++ root: folders made, deleted or
        renamed, the subscriptions file replaced); False when it cannot be watched.
        Undo with L{unwatch}."""
        notifier = self._notifier()
        if notifier is None:
            return False
        key = "dir:" + path
        callbacks = self._users.get(key)
        if callbacks is not None:
            callbacks.append(callback)
            return True
        from twisted.internet import inotify
        from twisted.python.filepath import FilePath

        def fire(_ignored: Any, _path: Any, _mask: int) -> None:
            for cb in list(self._users.get(key, ())):
                try:
                    cb()
                except Exception:  # noqa: BLE001
                    log.failure("folder-list change callback failed")

        try:
            notifier.watch(FilePath(path), callbacks=[fire], mask=(
                inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM
                | inotify.IN_MOVED_TO))
        except Exception as e:  # noqa: BLE001 - directory vanished, too many watches
            log.info("cannot watch {path}: {e}", path=path, e=e)
            return False
        self._users[key] = [callback]
        return True

    def unwatch(self, folderPath: str, callback: Callable[[], None]) -> None:
        """Undo one L{watch}; the inotify watch goes when its last user does."""
        callbacks = self._users.get(folderPath)
        if not callbacks:
            return
        try:
            callbacks.remove(callback)
        except ValueError:
            return
        if callbacks:
            return
        del self._users[folderPath]
        if self._inotify is None:
            return
        from twisted.python.filepath import FilePath

        if folderPath.startswith("dir:"):
            try:
                self._inotify.ignore(FilePath(folderPath[4:]))
            except (KeyError, Exception):  # noqa: BLE001 - already gone
                pass
            return
        for sub in ("cur", "new"):
            try:
                self._inotify.ignore(FilePath(os.path.join(folderPath, sub)))
            except (KeyError, Exception):  # noqa: BLE001 - already gone
                pass

    def stop(self) -> None:
        """Close the inotify descriptor."""
        if self._inotify is not None:
            self._inotify.loseConnection()
            self._inotify = None
        self._users.clear()
