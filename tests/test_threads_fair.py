"""Tests for pymaild.threads.FairRunner: one user cannot hold every disk thread."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from pymaild.threads import FairRunner, InlineRunner, makePool, runnerFor


class FairRunnerTests(TestCase):
    """Real threads in a real pool, driven from the reactor."""

    def setUp(self) -> None:
        """A started pool of two threads and an event that holds the slow jobs."""
        self.pool = makePool("test-fair", 2)
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.release = threading.Event()
        self.addCleanup(self.release.set)
        self.fair = FairRunner(reactor, self.pool, perKey=1)

    def slow(self) -> str:
        """A job that blocks until the test releases it."""
        self.release.wait(30)
        return "slow"

    @defer.inlineCallbacks
    def test_otherUserNotHeldUp(self) -> Any:
        """Ten blocked jobs of one user leave a thread for another user's job, which
        finishes while the first user's jobs still wait."""
        alice = runnerFor(self.fair, "alice@example.org")
        held = [alice.run(self.slow) for _ in range(10)]
        self.assertEqual(self.fair.pending(), 9)
        result = yield runnerFor(self.fair, "bob@example.org").run(lambda: "bob")
        self.assertEqual(result, "bob")
        self.assertFalse(any(d.called for d in held))
        self.release.set()
        results = yield defer.gatherResults(held)
        self.assertEqual(results, ["slow"] * 10)
        self.assertEqual(self.fair.pending(), 0)

    @defer.inlineCallbacks
    def test_roundRobin(self) -> Any:
        """Keys with waiting work take turns: order of starts alternates between users."""
        fair = FairRunner(reactor, self.pool, perKey=2)
        order: list[str] = []
        lock = threading.Lock()

        def job(name: str) -> None:
            with lock:
                order.append(name)

        gate = [fair.submit("blocker", self.slow), fair.submit("blocker", self.slow)]
        work = [fair.submit("a", job, "a") for _ in range(3)]
        work += [fair.submit("b", job, "b") for _ in range(3)]
        self.release.set()
        yield defer.gatherResults(gate + work)
        self.assertEqual(sorted(order), ["a", "a", "a", "b", "b", "b"])
        self.assertNotEqual(order[:3], ["a", "a", "a"])

    @defer.inlineCallbacks
    def test_errorsPassThrough(self) -> Any:
        """An exception in a job fails its Deferred and frees its thread."""
        def boom() -> None:
            raise ValueError("boom")

        yield self.assertFailure(self.fair.submit("k", boom), ValueError)
        self.assertEqual((yield self.fair.submit("k", lambda: 5)), 5)

    def test_plainRunnerUnchanged(self) -> None:
        """runnerFor leaves a runner without keys as it is."""
        inline = InlineRunner()
        self.assertIs(runnerFor(inline, "alice"), inline)
