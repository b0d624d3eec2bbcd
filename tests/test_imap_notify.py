"""Changes by other sessions, deliveries and other processes reach a session as untagged
EXISTS / FETCH FLAGS / EXPUNGE only where RFC 3501 §7.4.1 allows it.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.imap import notify
from pymaild.imap.account import IMAPAvatars
from pymaild.imap.notify import FolderWatcher, Registry
from tests.test_imap_helpers import ALICE, IMAPEnv, makeMessage, tagged


class SessionNotificationTests(SynchronousTestCase):
    """Two sessions of one user on the same folder."""

    def setUp(self) -> None:
        """Two sessions with INBOX selected, three messages."""
        self.env = IMAPEnv(self)
        self.env.deliver(*(makeMessage(f"m{i}") for i in range(3)))
        self.a = self.env.selected()
        self.b = self.env.selected()

    def test_flagsReportedAtNoop(self) -> None:
        """A flag change by A reaches B at B's next NOOP as FETCH FLAGS."""
        self.a.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
        out = self.b.cmd("NOOP")
        self.assertIn(b"* 2 FETCH (UID 2 FLAGS (\\Flagged))", out)

    def test_expungeNotDuringFetchStoreSearch(self) -> None:
        """A's EXPUNGE is not reported to B during FETCH, STORE or SEARCH, but at NOOP."""
        self.a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.a.ok("EXPUNGE")
        for cmd in ("FETCH 1:* UID", "STORE 3 +FLAGS.SILENT (\\Seen)", "SEARCH ALL"):
            out = self.b.cmd(cmd)
            self.assertNotIn(b"EXPUNGE", out, cmd)
        out = self.b.cmd("SEARCH ALL")
        self.assertIn(b"* SEARCH 2 3", out)
        out = self.b.cmd("NOOP")
        self.assertIn(b"* 1 EXPUNGE", out)
        self.assertIn(b"* SEARCH 1 2", self.b.cmd("SEARCH ALL"))

    def test_expungeDuringUidCommand(self) -> None:
        """UID FETCH may report EXPUNGE (after its results)."""
        self.a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.a.ok("EXPUNGE")
        out = self.b.cmd("UID FETCH 1:* FLAGS")
        self.assertIn(b"* 1 EXPUNGE", out)

    def test_ghostSkippedByFetch(self) -> None:
        """A message expunged by A but not yet reported to B is left out of B's FETCH."""
        self.a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.a.ok("EXPUNGE")
        self.b.cmd("FETCH 3 UID")  # triggers the rescan, expunge held back
        out = self.b.cmd("FETCH 1:3 BODY.PEEK[TEXT]")
        self.assertNotIn(b"* 1 FETCH", out)
        self.assertIn(b"* 3 FETCH", out)
        self.assertIn(b"OK [EXPUNGEISSUED]", tagged(out, self.b.lastTag))

    def test_appendByOtherSessionGivesExists(self) -> None:
        """A's APPEND to the folder B has open is announced to B."""
        self.a.cmd(b"APPEND INBOX {5}")
        self.a.send(b"hello\r\n")
        self.assertIn(b"* 4 EXISTS", self.b.cmd("NOOP"))

    def test_otherProcessSeenAtNoop(self) -> None:
        """A delivery by another process (no notification) is found by NOOP's rescan."""
        self.env.deliver(makeMessage("late"))
        self.assertIn(b"* 4 EXISTS", self.b.cmd("NOOP"))
        self.assertIn(b"* 4 EXISTS", self.a.cmd("CHECK"))

    def test_fileRemovedByOtherProcess(self) -> None:
        """A file removed by another process becomes EXPUNGE at NOOP."""
        folder = self.env.folder()
        info = folder.scan().messages[1]
        os.unlink(os.path.join(folder.path, info.filename))
        self.assertIn(b"* 2 EXPUNGE", self.b.cmd("NOOP"))

    def test_registryHook(self) -> None:
        """pymaild.imap.notify.mailDelivered is the module-level hook for the tap."""
        self.assertIs(notify.registry.__class__, Registry)
        calls = []

        class View:
            user = ALICE
            folderName = "INBOX"

            def markDirty(self) -> None:
                calls.append(1)

        v = View()
        notify.registry.register(v)
        self.addCleanup(notify.registry.unregister, v)
        notify.mailDelivered(["Alice@Example.org"])
        self.assertEqual(calls, [1])

    def test_logoutUnregisters(self) -> None:
        """Closing the connection removes the session's views from the registry."""
        self.assertEqual(len(self.env.registry.views(ALICE, "INBOX")), 2)
        self.a.lose()
        self.assertEqual(len(self.env.registry.views(ALICE, "INBOX")), 1)
        self.b.ok("CLOSE")
        self.assertEqual(len(self.env.registry.views(ALICE, "INBOX")), 0)


class InotifyTests(TestCase):
    """inotify on cur/ and new/ (Linux): another process's delivery wakes an IDLE session."""

    @defer.inlineCallbacks
    def test_inotifyWakesIdle(self) -> None:
        """A file linked into new/ by 'another process' is pushed to an IDLE session."""
        watcher = FolderWatcher(reactor)
        if not watcher.available:
            raise self.skipTest("inotify is not available here")
        self.addCleanup(watcher.stop)
        env = IMAPEnv(self)
        env.avatars = IMAPAvatars(env.store, env.runner, env.config, registry=env.registry,
                                  cache=env.cache, watcher=watcher)
        env.portal.realm.factories[list(env.portal.realm.factories)[0]] = env.avatars
        c = env.selected()
        c.cmd("IDLE")
        env.deliver(makeMessage("other"))
        out = b""
        for _ in range(50):
            yield task.deferLater(reactor, 0.02, lambda: None)
            out += c.take()
            if b"EXISTS" in out:
                break
        self.assertIn(b"* 1 EXISTS", out)
        c.send(b"DONE\r\n")
        c.lose()


class FolderCheckTests(SynchronousTestCase):
    """L{Registry.checkLater}: the reading of a directory due after this process's own
    changes is made by a timed call in the disk runner, not by a client's command."""

    def setUp(self) -> None:
        """A store folder with two messages, its listing current; a registry with a
        fake clock; directory readings counted."""
        import shutil
        import tempfile

        from pymaild.store import MaildirStore, foldersync, listing
        from pymaild.threads import InlineRunner

        self.listing = listing
        d = tempfile.mkdtemp(prefix="pymaild-check-")
        self.addCleanup(shutil.rmtree, d, True)
        store = MaildirStore(os.path.join(d, "mail"), hostname="mx.example")
        self.folder = store.account("bob@example.com").folder("INBOX")
        for _ in range(2):
            self.folder.append(b"Subject: x\r\n\r\nbody\r\n", ["\\Seen"])
        self.msgs = self.folder.scan(claimRecent=True).messages
        self.clock = task.Clock()
        self.registry = Registry()
        self.registry.startChecks(self.clock)
        self.addCleanup(self.registry.stopChecks)
        self.runner = InlineRunner()
        self.read: list[str] = []
        real = foldersync._dirNames

        def counting(path: str) -> list[str]:
            self.read.append(os.path.basename(path))
            return real(path)

        self.patch(foldersync, "_dirNames", counting)

    def test_checkedWhenDue(self) -> None:
        """After a flag change one call is pending; once the window has passed it
        reads C{cur/}, and the folder has no check pending any more."""
        import time

        self.folder.setFlags(self.msgs[0].key, ["\\Flagged"])
        due = self.folder.checkDue()
        self.assertIsNotNone(due)
        self.registry.checkLater(self.folder, self.runner)
        self.registry.checkLater(self.folder, self.runner)  # (one call per folder)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        time.sleep(self.listing.SYNC_WINDOW + 0.05)
        self.clock.advance(due)
        self.assertIn("cur", self.read)
        self.assertIsNone(self.folder.checkDue())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.read.clear()
        self.folder.scan()
        self.assertNotIn("cur", self.read)  # the scan after it reads nothing

    def test_nothingPending(self) -> None:
        """A folder without own changes gets no call; a stopped registry makes none."""
        self.registry.checkLater(self.folder, self.runner)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.folder.setFlags(self.msgs[0].key, ["\\Flagged"])
        self.registry.stopChecks()
        self.registry.checkLater(self.folder, self.runner)
        self.assertEqual(self.clock.getDelayedCalls(), [])
