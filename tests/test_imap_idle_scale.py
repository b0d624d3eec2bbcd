"""Many idle sessions per process: shared folder snapshots, shared scans, one IDLE timer.

These are the mechanisms that keep an idle IMAP connection at a few KiB (see
bench/imap_idle_load.py); the tests check that sharing never leaks one session's state
into another's and that every session still learns about every change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pymaild.imap import framing, idle
from pymaild.imap.mailbox import sharedScan
from pymaild.imap.server import IMAPFactory
from tests.test_imap_helpers import IMAPEnv, makeMessage, tagged


class QueueRunner:
    """A runner that runs nothing until L{flush}: work waits as it would for a thread."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Queue C{f(*args, **kwargs)}."""
        d: defer.Deferred[Any] = defer.Deferred()
        self.queue.append((lambda: f(*args, **kwargs), d))
        return d

    def flush(self) -> None:
        """Run the queued work in order and fire its Deferreds."""
        while self.queue:
            f, d = self.queue.pop(0)
            try:
                result = f()
            except Exception:  # noqa: BLE001 - handed to the Deferred
                d.errback()
            else:
                d.callback(result)


class CountingFolder:
    """A store folder that counts its scans."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder
        self.path = folder.path
        self.scans: list[bool] = []

    def scan(self, claimRecent: bool = False) -> Any:
        """Scan the real folder, remembering C{claimRecent}."""
        self.scans.append(claimRecent)
        return self.folder.scan(claimRecent=claimRecent)


class SnapshotTests(SynchronousTestCase):
    """Views showing the same folder state share it; each copies before it diverges."""

    def test_viewsShareTheMessageList(self) -> None:
        """Two sessions on one folder hold the same uid list and info map."""
        env = IMAPEnv(self)
        env.deliver(*(makeMessage(f"m{i}") for i in range(5)))
        a, b = env.selected(), env.selected()
        self.assertIs(a.proto.mbox.uids, b.proto.mbox.uids)
        self.assertIs(a.proto.mbox.infos, b.proto.mbox.infos)

    def test_storeCopiesAndOthersLearnLater(self) -> None:
        """A STORE changes only the storing view; the other sees it at its next sync,
        and afterwards both share one list again."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        a, b = env.selected(), env.selected()
        a.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
        va, vb = a.proto.mbox, b.proto.mbox
        self.assertIn("\\Flagged", va.infos[1].flags)
        self.assertNotIn("\\Flagged", vb.infos[1].flags)
        out = b.ok("NOOP")
        self.assertIn(b"* 1 FETCH (UID 1 FLAGS (\\Flagged", out)
        a.ok("NOOP")
        self.assertIs(va.uids, vb.uids)
        self.assertIs(va.infos, vb.infos)

    def test_flagChangePatchesSnapshot(self) -> None:
        """A scan that differs from the last snapshot in a few flags gets a patched
        copy of it: the uid list is shared, the changed entry is the new one, and the
        views still holding the old snapshot keep the old flags."""
        from pymaild.imap.mailbox import sharedSnapshot

        env = IMAPEnv(self)
        env.deliver(*(makeMessage(f"m{i}") for i in range(16)))
        folder = env.folder()
        msgs = folder.scan().messages
        old = sharedSnapshot(folder.path, msgs)
        folder.setFlags(msgs[3].key, ["\\Flagged"])
        new = sharedSnapshot(folder.path, folder.scan().messages)
        self.assertIsNot(new, old)
        self.assertIs(new.uids, old.uids)
        self.assertEqual(new.infos[msgs[3].uid].flags, {"\\Flagged"})
        self.assertEqual(old.infos[msgs[3].uid].flags, frozenset())
        self.assertEqual(new.infos, {m.uid: m for m in folder.scan().messages})

    def test_expungeKeepsOtherSequenceNumbers(self) -> None:
        """An EXPUNGE in one session leaves the other's numbering alone until it is
        told, then both share the shorter list."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"), makeMessage("c"))
        a, b = env.selected(), env.selected()
        a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertIn(b"* 2 EXPUNGE", a.ok("EXPUNGE"))
        vb = b.proto.mbox
        self.assertEqual(vb.uids, [1, 2, 3])
        out = b.ok("FETCH 3 (UID)")
        self.assertIn(b"* 3 FETCH (UID 3)", out)
        self.assertNotIn(b"EXPUNGE", out)
        self.assertIn(b"* 2 EXPUNGE", b.ok("NOOP"))
        self.assertEqual(vb.uids, [1, 3])
        self.assertNotIn(b"EXPUNGE", a.ok("NOOP"))
        self.assertIs(vb.uids, a.proto.mbox.uids)

    def test_newMailAdoptsSnapshot(self) -> None:
        """New mail is announced to every session, which then share the new list."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        a, b = env.selected(), env.selected()
        env.deliver(makeMessage("b"))
        self.assertIn(b"* 2 EXISTS", a.ok("NOOP"))
        self.assertIn(b"* 2 EXISTS", b.ok("NOOP"))
        self.assertIs(a.proto.mbox.uids, b.proto.mbox.uids)
        self.assertEqual(a.proto.mbox.uids, [1, 2])


class SharedScanTests(SynchronousTestCase):
    """Scan requests that wait for the same scan share it."""

    def test_waitingRequestsShareOneScan(self) -> None:
        """Three requests made before the scan starts cost one scan; \\Recent goes to
        the first (read-write) one only."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        folder = CountingFolder(env.folder())
        runner = QueueRunner()
        results: dict[int, Any] = {}
        for i, claim in enumerate((True, True, False)):
            sharedScan(runner, folder, claim).addCallback(
                lambda r, i=i: results.__setitem__(i, r))
        runner.flush()
        self.assertEqual(folder.scans, [True])
        self.assertEqual([sorted(results[i].recent) for i in range(3)], [[1], [], []])
        self.assertEqual([[m.uid for m in results[i].messages] for i in range(3)], [[1]] * 3)

    def test_notifiedViewsShareOneScan(self) -> None:
        """A change notification to several IDLE sessions costs one scan of the folder,
        and every session gets the new message."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        sessions = [env.selected() for _ in range(3)]
        for s in sessions:
            s.cmd("IDLE")
            s.take()
        folder = sessions[0].proto.mbox.folder
        scans: list[bool] = []
        realScan = folder.scan

        def countingScan(claimRecent: bool = False) -> Any:
            scans.append(claimRecent)
            return realScan(claimRecent=claimRecent)

        folder.scan = countingScan
        self.addCleanup(delattr, folder, "scan")
        env.deliver(makeMessage("b"))
        env.registry.mailDelivered(["alice@example.org"])
        self.assertEqual(len(scans), 1)
        for s in sessions:
            self.assertIn(b"* 2 EXISTS", s.take())

    def test_startedScanIsNotJoined(self) -> None:
        """A request after the scan started gets a scan of its own."""
        env = IMAPEnv(self)
        folder = CountingFolder(env.folder())
        runner = QueueRunner()
        sharedScan(runner, folder, True)
        runner.flush()
        sharedScan(runner, folder, True)
        runner.flush()
        self.assertEqual(folder.scans, [True, True])

    def test_readWriteDoesNotJoinExamine(self) -> None:
        """A read-write view does not wait on a scan that will not claim \\Recent."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        folder = CountingFolder(env.folder())
        runner = QueueRunner()
        results: list[Any] = []
        sharedScan(runner, folder, False).addCallback(results.append)
        sharedScan(runner, folder, True).addCallback(results.append)
        runner.flush()
        self.assertEqual(folder.scans, [False, True])
        self.assertEqual([sorted(r.recent) for r in results], [[1], [1]])

    def test_failureReachesEveryWaiter(self) -> None:
        """A failed scan fails every request that waited for it."""
        env = IMAPEnv(self)
        folder = CountingFolder(env.folder())

        def broken(claimRecent: bool = False) -> Any:
            raise OSError("disk gone")

        folder.scan = broken  # type: ignore[method-assign]
        runner = QueueRunner()
        failures: list[Any] = []
        for _ in range(3):
            sharedScan(runner, folder, True).addErrback(failures.append)
        runner.flush()
        self.assertEqual([f.check(OSError) for f in failures], [OSError] * 3)


class IdleTimerTests(SynchronousTestCase):
    """IDLE sessions are polled by one timer, those on a folder in the same second."""

    def test_oneTimerForAllIdleSessions(self) -> None:
        """Entering IDLE adds one pending call in all, not one per session; it goes
        when the last session leaves."""
        env = IMAPEnv(self)
        sessions = [env.selected() for _ in range(5)]
        before = len(env.clock.getDelayedCalls())
        for s in sessions:
            self.assertEqual(s.cmd("IDLE"), b"+ idling\r\n")
        self.assertEqual(len(env.clock.getDelayedCalls()), before + 1)
        for s in sessions:
            self.assertIn(s.lastTag + b" OK IDLE terminated", s.send(b"DONE\r\n"))
        self.assertEqual(len(env.clock.getDelayedCalls()), before)

    def test_sessionsOfAFolderPollTogether(self) -> None:
        """Sessions that entered IDLE at different times rescan in the same second,
        each within IDLE_POLL seconds of entering."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        sessions = []
        for _ in range(3):
            s = env.selected()
            s.cmd("IDLE")
            s.take()
            sessions.append(s)
            env.clock.advance(7)
        env.deliver(makeMessage("b"))  # no notification: only the poll finds it
        deliveredAt = env.clock.seconds()
        seen: dict[int, float] = {}
        for _ in range(int(idle.IDLE_POLL) + 1):
            env.clock.advance(1)
            for i, s in enumerate(sessions):
                if b"* 2 EXISTS" in s.take():
                    seen.setdefault(i, env.clock.seconds())
        self.assertEqual(sorted(seen), [0, 1, 2])
        self.assertEqual(len(set(seen.values())), 1)
        self.assertLessEqual(seen[0] - deliveredAt, idle.IDLE_POLL)

    def test_everyBucketFiresOnTime(self) -> None:
        """Sessions due at different seconds are each polled at their second, also
        after an earlier bucket re-armed the timer a whole period ahead."""
        clock = Clock()
        poller = idle.IdlePoller(clock)
        ticks: list[tuple[str, float]] = []

        class Session:
            def __init__(self, name: str, due: int) -> None:
                self.name, self.due = name, due

            def _idleTick(self) -> None:
                ticks.append((self.name, clock.seconds()))
                self.due += 30
                poller.add(self, self.due)  # type: ignore[arg-type]

        for name, due in (("a", 5), ("b", 10), ("c", 29)):
            poller.add(Session(name, due), due)  # type: ignore[arg-type]
        for _ in range(70):
            clock.advance(1)
        self.assertEqual(ticks, [("a", 5), ("b", 10), ("c", 29), ("a", 35), ("b", 40),
                                 ("c", 59), ("a", 65), ("b", 70)])
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_factoryOwnsThePoller(self) -> None:
        """The IDLE sessions of a factory wait in that factory's poller, and only there:
        a second factory over the same clock has its own, empty, and a poller given to a
        factory is the one its sessions use; DONE takes the session out again."""
        env = IMAPEnv(self)
        other = IMAPFactory(config=env.config, gate=env.gate, clock=env.clock)
        shared = idle.IdlePoller(env.clock)
        given = IMAPFactory(config=env.config, gate=env.gate, clock=env.clock,
                            idlePoller=shared)
        self.assertIsNot(other.idlePoller, env.factory.idlePoller)
        self.assertIs(given.idlePoller, shared)
        self.assertIs(given.buildProtocol(None).idlePoller, shared)
        c = env.selected()
        self.assertIs(c.proto.idlePoller, env.factory.idlePoller)
        c.cmd("IDLE")
        self.assertEqual([s for b in env.factory.idlePoller.buckets.values() for s in b],
                         [c.proto])
        self.assertEqual(other.idlePoller.buckets, {})
        self.assertEqual(shared.buckets, {})
        c.send(b"DONE\r\n")
        self.assertEqual(env.factory.idlePoller.buckets, {})

    def test_lostConnectionLeavesNoTimer(self) -> None:
        """A connection dropped while IDLE takes its poll with it."""
        env = IMAPEnv(self)
        c = env.selected()
        before = len(env.clock.getDelayedCalls())
        c.cmd("IDLE")
        c.lose()
        self.assertLess(len(env.clock.getDelayedCalls()), before + 1)

    def test_overlongLineEndsIdle(self) -> None:
        """An over-long line during IDLE ends it with BAD; the session goes on."""
        env = IMAPEnv(self)
        c = env.selected()
        c.cmd("IDLE")
        tag = c.lastTag
        out = c.send(b"x" * (framing.MAX_LINE + 10) + b"\r\n")
        self.assertTrue(tagged(out, tag).startswith(tag + b" BAD"))
        c.ok("NOOP")
