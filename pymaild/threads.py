"""Run blocking work (disk, password hashing) off the reactor thread.

Every room that touches the disk or hashes a password takes a ``Runner``. The server
uses ``ThreadRunner`` over a bounded pool started and stopped by ``PoolService``;
protocol unit tests pass ``InlineRunner`` so dialogues over ``StringTransport`` stay
deterministic.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class Runner(Protocol):
    """Something that runs a blocking callable and gives its result as a Deferred."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Run C{f(*args, **kwargs)} away from the reactor thread."""


class ThreadRunner:
    """Runs callables in a dedicated bounded thread pool."""

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self.reactor = reactor
        self.pool = pool

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Run C{f} in the pool; the Deferred fires in the reactor thread."""
        return deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)


class InlineRunner:
    """Runs callables at once in the calling thread (tests and command-line tools)."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Run C{f} now and wrap its result or exception in a fired Deferred."""
        return defer.maybeDeferred(f, *args, **kwargs)


class FairRunner:
    """Runs callables in a pool so that no one key (a user) can hold every thread.

    Work is queued per key and started round-robin over the keys that have work
    waiting, with at most C{perKey} callables of one key running at once: one user's
    eight sessions fetching hostile messages take C{perKey} threads and wait among
    themselves, while another user's SELECT starts on a free thread. L{forKey} gives the
    runner a room hands to one user's objects; L{run} queues under a shared key.

    Everything here happens in the reactor thread; only the callables run in the pool.
    """

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool, perKey: int = 2) -> None:
        if perKey < 1:
            raise ValueError("perKey must be at least 1")
        self.reactor = reactor
        self.pool = pool
        self.perKey = perKey
        self._waiting: OrderedDict[Any, deque[tuple[defer.Deferred[Any], Callable[..., Any],
                                                    tuple[Any, ...], dict[str, Any]]]]
        self._waiting = OrderedDict()
        self._running: dict[Any, int] = {}
        self._active = 0

    @property
    def size(self) -> int:
        """How many callables may run at once (the pool's thread count)."""
        return max(1, self.pool.max)

    def forKey(self, key: Any) -> KeyedRunner:
        """A runner whose work is queued under C{key}."""
        return KeyedRunner(self, key)

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Queue C{f} under the shared key."""
        return self.submit(None, f, *args, **kwargs)

    def submit(self, key: Any, f: Callable[..., T], *args: Any,
               **kwargs: Any) -> defer.Deferred[T]:
        """Queue C{f(*args, **kwargs)} under C{key}; the Deferred fires with its result."""
        d: defer.Deferred[T] = defer.Deferred()
        self._waiting.setdefault(key, deque()).append((d, f, args, kwargs))
        self._pump()
        return d

    def pending(self) -> int:
        """How many callables wait for a thread."""
        return sum(len(q) for q in self._waiting.values())

    def _pump(self) -> None:
        """Start waiting work while threads are free, round-robin over the keys."""
        while self._active < self.size:
            for key in self._waiting:
                if self._running.get(key, 0) < self.perKey:
                    break
            else:
                return
            queue = self._waiting.pop(key)
            d, f, args, kwargs = queue.popleft()
            if queue:
                self._waiting[key] = queue  # to the back of the round
            self._active += 1
            self._running[key] = self._running.get(key, 0) + 1
            work = deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)
            work.addBoth(self._finished, key)
            work.chainDeferred(d)

    def _finished(self, result: Any, key: Any) -> Any:
        """A callable of C{key} ended: free its thread and start the next."""
        self._active -= 1
        left = self._running[key] - 1
        if left:
            self._running[key] = left
        else:
            del self._running[key]
        self._pump()
        return result


class KeyedRunner:
    """One key's view of a L{FairRunner}: a L{Runner} for one user's objects."""

    def __init__(self, fair: FairRunner, key: Any) -> None:
        self.fair = fair
        self.key = key

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Queue C{f} under this runner's key."""
        return self.fair.submit(self.key, f, *args, **kwargs)


def runnerFor(runner: Any, key: Any) -> Any:
    """C{runner}'s view for C{key} when it is a L{FairRunner}, else C{runner} itself."""
    forKey = getattr(runner, "forKey", None)
    return forKey(key) if forKey is not None else runner


class PoolService(Service):
    """Starts a thread pool with the application and stops it on shutdown."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        """Start the pool's threads."""
        Service.startService(self)
        self.pool.start()

    def stopService(self) -> None:
        """Stop the pool, waiting for running work to finish."""
        Service.stopService(self)
        self.pool.stop()


def makePool(name: str, size: int) -> ThreadPool:
    """A named thread pool of at most C{size} threads, not yet started."""
    return ThreadPool(minthreads=0, maxthreads=size, name=name)
