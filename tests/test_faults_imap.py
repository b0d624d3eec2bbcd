"""IMAP under store faults: durable APPEND (F1), full disk (F2), permission errors
(F3), clients vanishing mid-APPEND (F4) and mailboxes deleted under a session (I9).

Faults are injected by patching C{os} functions the store calls (ENOSPC, EDQUOT,
EACCES), and, where the machine allows mounting (root), on a real 2 MB tmpfs that
really fills up and is really remounted read-only.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pymaild.errors import StoreError
from pymaild.imap import framing
from pymaild.store import folder as folderModule
from tests.test_imap_helpers import ALICE, BOB, BOB_PW, IMAPEnv, Wire, makeMessage, tagged
from tests.test_pop3_helpers import GatedRunner, POP3Env

_REAL_WRITE: Callable[..., int] = os.write
_REAL_FSYNC: Callable[[int], None] = os.fsync
_LEAKS = re.compile(rb"Traceback|Errno|/tmp/|_trial_temp|\.py\b|Maildir")


def assertNoLeak(testcase: SynchronousTestCase, out: bytes) -> None:
    """Fail if a client-visible reply shows a traceback, an errno or a server path."""
    testcase.assertIsNone(_LEAKS.search(out), out)


def enospc(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for os.write: the disk is full."""
    raise OSError(errno.ENOSPC, "No space left on device")


def edquot(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for os.fsync: the quota is exceeded."""
    raise OSError(errno.EDQUOT, "Disk quota exceeded")


def mountTmpfs(testcase: SynchronousTestCase, path: str, size: str = "2m") -> None:
    """Mount a small tmpfs on C{path} for the test (lazily unmounted afterwards).

    @raise SkipTest: mounting is not possible here (not root, no mount(8), refused).
    """
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        raise SkipTest("mounting a tmpfs needs root")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                               "tmpfs", path], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SkipTest(f"cannot run mount: {e}") from None
    if proc.returncode != 0:
        raise SkipTest(f"cannot mount a tmpfs: {proc.stderr.decode(errors='replace')}")
    testcase.addCleanup(subprocess.run, ["umount", "-l", path], capture_output=True)


def appendCmd(c: Wire, message: bytes, mailbox: str = "INBOX") -> bytes:
    """APPEND C{message} with a synchronising literal; return everything answered."""
    out = c.cmd(b"APPEND " + mailbox.encode() + b" {%d}" % len(message))
    if not out.startswith(b"+ "):
        return out
    return c.send(message + b"\r\n")


def tmpEntries(env: IMAPEnv, address: str = ALICE) -> list[str]:
    """Everything left in the tmp/ directories of an account (INBOX and folders)."""
    root = env.store.account(address).root
    found = []
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) == "tmp":
            found += files
    return found


class AppendDurabilityTests(SynchronousTestCase):
    """F1: the tagged OK of APPEND is written only after the message is on disk."""

    def test_okOnlyAfterFileAndDirectoryFsync(self) -> None:
        """The message file and the directory it was linked into are fsynced before the
        OK [APPENDUID] goes out."""
        env = IMAPEnv(self)
        c = env.login()
        events: list[str] = []
        realFsync = os.fsync

        def fsync(fd: int) -> None:
            events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
            realFsync(fd)

        realWrite = c.transport.write

        def write(data: bytes) -> None:
            if b" OK [APPENDUID" in data:
                events.append("OK")
            realWrite(data)

        self.patch(os, "fsync", fsync)
        self.patch(c.transport, "write", write)
        out = appendCmd(c, makeMessage("durable"))
        self.assertIn(b"OK [APPENDUID", out)
        before = events[: events.index("OK")]
        self.assertIn("file", before)
        self.assertIn("dir", before)

    def test_noOkWhileStoreWorkPending(self) -> None:
        """With the disk work still queued in the runner, no tagged reply is sent; it
        comes once the work ran, and the message is then readable."""
        runner = GatedRunner()
        env = IMAPEnv(self, runner=runner)
        c = env.login()
        msg = makeMessage("queued")
        c.cmd(b"APPEND INBOX {%d}" % len(msg))
        runner.hold = True
        self.assertEqual(c.send(msg + b"\r\n"), b"")
        runner.hold = False
        runner.flush()
        self.assertIn(b"OK [APPENDUID", c.take())
        folder = env.folder()
        with folder.open(folder.scan().messages[0]) as f:
            self.assertEqual(f.read(), msg)


class DiskFullTests(SynchronousTestCase):
    """F2 with injected errors: APPEND says NO [OVERQUOTA], never OK; reads go on; the
    server recovers as soon as space returns."""

    def setUp(self) -> None:
        """Alice has two messages and INBOX selected."""
        self.env = IMAPEnv(self)
        self.messages = [makeMessage("one"), makeMessage("two")]
        self.env.deliver(*self.messages)
        self.c = self.env.selected()

    def checkReadsWork(self) -> None:
        """FETCH, STATUS, LIST, SEARCH and a second SELECT still answer OK."""
        c = self.c
        out = c.ok("FETCH 1:* (UID FLAGS BODY.PEEK[])")
        self.assertIn(self.messages[1], out)
        c.ok("STATUS INBOX (MESSAGES UIDNEXT)")
        c.ok('LIST "" "*"')
        self.assertIn(b"* SEARCH 1 2", c.ok("SEARCH ALL"))
        c.ok("EXAMINE INBOX")
        c.ok("SELECT INBOX")

    def checkRecovered(self) -> None:
        """APPEND works again and stores the complete message."""
        msg = makeMessage("after", b"space is back\r\n")
        out = appendCmd(self.c, msg)
        self.assertIn(b"OK [APPENDUID", out)
        folder = self.env.folder()
        last = folder.scan().messages[-1]
        with folder.open(last) as f:
            self.assertEqual(f.read(), msg)

    def test_writeENOSPC(self) -> None:
        """ENOSPC while writing the message: NO [OVERQUOTA], nothing left in tmp/."""
        self.patch(os, "write", enospc)
        for _ in range(3):
            out = appendCmd(self.c, makeMessage("lost"))
            self.assertIn(b"NO [OVERQUOTA]", tagged(out, self.c.lastTag))
            self.assertNotIn(b" OK ", out)
            assertNoLeak(self, out)
        self.checkReadsWork()
        self.assertEqual(tmpEntries(self.env), [])
        self.assertEqual(len(self.env.folder().scan().messages), 2)
        self.patch(os, "write", _REAL_WRITE)
        self.checkRecovered()

    def test_fsyncEDQUOT(self) -> None:
        """A quota error at fsync: NO [OVERQUOTA] too, and no message appears."""
        self.patch(os, "fsync", edquot)
        out = appendCmd(self.c, makeMessage("lost"))
        self.assertIn(b"NO [OVERQUOTA]", tagged(out, self.c.lastTag))
        self.assertEqual(tmpEntries(self.env), [])
        self.patch(os, "fsync", _REAL_FSYNC)
        self.assertEqual(len(self.env.folder().scan().messages), 2)
        self.checkRecovered()

    def test_spooledLiteralENOSPC(self) -> None:
        """A large literal whose spool file hits ENOSPC half-way: the rest of the
        literal is read and dropped, the answer is NO [OVERQUOTA] (not BYE), the spool
        file is gone and the session carries on."""
        realFdopen = os.fdopen
        writes = [0]

        class FullFile(io.BufferedRandom):
            """A spool file on a disk that fills up after the first write."""

            def write(self, data: Any) -> int:
                writes[0] += 1
                if writes[0] > 1:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().write(data)

        def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if mode == "w+b":
                return FullFile(io.FileIO(fd, "r+"))
            return realFdopen(fd, mode, *args, **kwargs)

        self.patch(os, "fdopen", fdopen)
        msg = makeMessage("huge", b"z" * 1000 + b"\r\n") * 700
        out = self.c.cmd(b"APPEND INBOX {%d}" % len(msg))
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        for i in range(0, len(msg), 65536):
            out += self.c.send(msg[i : i + 65536])
        out += self.c.send(b"\r\n")
        self.assertGreater(writes[0], 1)
        self.assertIn(b"NO [OVERQUOTA]", tagged(out, self.c.lastTag))
        self.assertNotIn(b"BYE", out)
        self.assertFalse(self.c.transport.disconnecting)
        self.assertEqual(tmpEntries(self.env), [])
        self.assertFalse(self.c.proto._pendingLiterals)
        self.checkReadsWork()
        self.patch(os, "fdopen", realFdopen)
        self.checkRecovered()


class RealDiskFullTests(SynchronousTestCase):
    """F2 on a real 2 MB tmpfs that fills up (skipped where mounting is impossible)."""

    def test_fullTmpfs(self) -> None:
        """Appending until the tmpfs is full: every OK'd message is complete on disk,
        the first failure is NO [OVERQUOTA] and so is every later one (small literal or
        spooled), reads keep working, and APPEND works again once space is freed."""
        env = IMAPEnv(self)
        mountTmpfs(self, env.store.root)
        c = env.login()
        c.ok("SELECT INBOX")
        vfs = os.statvfs(env.store.root)
        filler = os.path.join(env.store.root, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, vfs.f_bavail * vfs.f_frsize - 700 * 1024))
        stored: list[bytes] = []
        out = b""
        for i in range(40):
            msg = makeMessage(f"fill {i}", (b"%06d" % i) * 20000 + b"\r\n")
            out = appendCmd(c, msg)
            if b"OK [APPENDUID" not in out:
                break
            stored.append(msg)
        self.assertIn(b"NO [OVERQUOTA]", tagged(out, c.lastTag))
        self.assertGreater(len(stored), 0)
        small = appendCmd(c, makeMessage("still full", b"x" * 150000 + b"\r\n"))
        self.assertIn(b"NO [OVERQUOTA]", tagged(small, c.lastTag))
        big = makeMessage("spooled", b"y" * 600000 + b"\r\n")
        out = appendCmd(c, big)
        self.assertIn(b"NO [OVERQUOTA]", tagged(out, c.lastTag))
        self.assertFalse(c.transport.disconnecting)
        env.store.clearCaches()
        folder = env.folder()
        state = folder.scan()
        self.assertEqual(len(state.messages), len(stored))
        for info, msg in zip(state.messages, stored, strict=True):
            with folder.open(info) as f:
                self.assertEqual(f.read(), msg)
        self.assertEqual(tmpEntries(env), [])
        self.assertIn(stored[0], c.ok("FETCH 1 BODY.PEEK[]"))
        c.ok("NOOP")
        os.unlink(filler)
        out = appendCmd(c, big)
        self.assertIn(b"OK [APPENDUID", out)
        env.store.clearCaches()
        state = env.folder().scan()
        with env.folder().open(state.messages[-1]) as f:
            self.assertEqual(f.read(), big)

    def test_readOnlyFilesystem(self) -> None:
        """F3 with a real EROFS: the tmpfs remounted read-only makes APPEND and STORE
        temporary failures (NO [UNAVAILABLE], no path or errno shown), FETCH still
        works, and everything works again after remounting read-write."""
        env = IMAPEnv(self)
        mountTmpfs(self, env.store.root)
        env.deliver(makeMessage("kept"))
        c = env.selected()
        root = env.store.root
        proc = subprocess.run(["mount", "-o", "remount,ro", root], capture_output=True)
        if proc.returncode != 0:
            raise SkipTest(f"cannot remount read-only: {proc.stderr.decode(errors='replace')}")
        self.addCleanup(subprocess.run, ["mount", "-o", "remount,rw", root],
                        capture_output=True)
        out = appendCmd(c, makeMessage("refused"))
        self.assertIn(b"NO [UNAVAILABLE]", tagged(out, c.lastTag))
        assertNoLeak(self, out)
        out = c.cmd("STORE 1 +FLAGS (\\Flagged)")
        self.assertIn(b"NO [UNAVAILABLE]", tagged(out, c.lastTag))
        assertNoLeak(self, out)
        self.assertIn(b"Subject: kept", c.ok("FETCH 1 BODY.PEEK[]"))
        subprocess.run(["mount", "-o", "remount,rw", root], check=True, capture_output=True)
        self.assertIn(b"OK [APPENDUID", appendCmd(c, makeMessage("welcome back")))
        c.ok("STORE 1 +FLAGS (\\Flagged)")


class PermissionErrorTests(SynchronousTestCase):
    """F3 with injected EACCES on one user's Maildir: that user gets temporary
    failures without paths or tracebacks; other users are unaffected."""

    def deny(self, root: str) -> None:
        """Make every file operation under C{root} fail with EACCES."""

        def guard(real: Callable[..., Any]) -> Callable[..., Any]:
            def call(path: Any, *args: Any, **kwargs: Any) -> Any:
                p = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
                if p.startswith(root):
                    raise PermissionError(errno.EACCES, "Permission denied", p)
                return real(path, *args, **kwargs)

            return call

        for name in ("open", "listdir", "scandir", "stat", "rename", "link", "mkdir",
                     "unlink", "utime"):
            self.patch(os, name, guard(getattr(os, name)))

    def test_deniedUserContained(self) -> None:
        """Bob's APPEND and STORE are NO [UNAVAILABLE], his new login is refused with
        a NO; Alice logs in, reads and appends as usual; nobody sees a traceback."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("bob's"), address=BOB)
        env.deliver(makeMessage("alice's"))
        bob = env.selected(user=BOB, password=BOB_PW)
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.deny(env.store.account(BOB).root)
        outputs = []
        for send in (lambda: appendCmd(bob, makeMessage("no")),
                     lambda: bob.cmd("STORE 1 +FLAGS (\\Seen)"),
                     lambda: bob.cmd("CREATE Nope")):
            outputs.append(send())
            self.assertIn(b"NO [UNAVAILABLE]", tagged(outputs[-1], bob.lastTag))
        env.store.clearCaches()
        late = env.connect()
        late.take()
        outputs.append(late.cmd(f'LOGIN {BOB} "{BOB_PW}"'))
        self.assertIn(b" NO ", tagged(outputs[-1], late.lastTag))
        outputs.append(bob.cmd("FETCH 1 BODY[]"))
        self.assertIn(b" NO ", tagged(outputs[-1], bob.lastTag))
        for out in outputs:
            assertNoLeak(self, out)
        alice = env.selected()
        self.assertIn(b"Subject: alice's", alice.ok("FETCH 1 BODY[]"))
        self.assertIn(b"OK [APPENDUID", appendCmd(alice, makeMessage("fine")))
        logged = [formatEvent(e) for e in events]
        self.assertTrue(any("Permission denied" in t for t in logged), logged)
        self.flushLoggedErrors(PermissionError)

    def test_pop3DeniedUserContained(self) -> None:
        """The same for POP3: Bob's login is -ERR [SYS/TEMP], Alice's session works."""
        env = POP3Env(self)
        env.deliver(makeMessage("bob's"), address=BOB)
        env.deliver(makeMessage("alice's"))
        env.store.account(BOB)
        self.deny(env.store.account(BOB).root)
        env.store.clearCaches()
        c = env.connect("127.0.0.1")
        c.take()
        c.cmd(b"USER " + BOB.encode())
        out = c.cmd(b"PASS " + BOB_PW.encode())
        self.assertEqual(out, b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n")
        alice = env.login()
        self.assertTrue(alice.cmd(b"RETR 1").startswith(b"+OK"))
        self.flushLoggedErrors(StoreError)


class DisconnectMidAppendTests(SynchronousTestCase):
    """F4: a client that vanishes inside an APPEND literal leaves nothing behind."""

    def check(self, env: IMAPEnv, before: Any) -> None:
        """No new message, the same UIDNEXT, no tmp/ or spool file, no pending literal."""
        env.store.clearCaches()
        after = env.folder().scan()
        self.assertEqual(after.messages, before.messages)
        self.assertEqual(after.uidnext, before.uidnext)
        self.assertEqual(tmpEntries(env), [])

    def test_smallLiteral(self) -> None:
        """Half of an in-memory literal, then the connection drops."""
        env = IMAPEnv(self)
        c = env.login()
        before = env.folder().scan()
        msg = makeMessage("cut")
        c.cmd(b"APPEND INBOX {%d}" % len(msg))
        c.send(msg[: len(msg) // 2])
        c.lose()
        self.assertFalse(c.proto._pendingLiterals)
        self.check(env, before)

    def test_spooledLiteral(self) -> None:
        """Most of a literal large enough to be spooled to tmp/, then a drop: the spool
        file is removed."""
        env = IMAPEnv(self)
        c = env.login()
        before = env.folder().scan()
        msg = makeMessage("cut big", b"w" * (framing.SPOOL_THRESHOLD * 3) + b"\r\n")
        c.cmd(b"APPEND INBOX {%d}" % len(msg))
        for i in range(0, len(msg) - 1000, 65536):
            c.send(msg[i : min(i + 65536, len(msg) - 1000)])
        self.assertTrue(tmpEntries(env))  # the spool file exists while the literal comes
        c.lose()
        self.check(env, before)

    def test_literalPlusWithDeferredRunner(self) -> None:
        """A LITERAL+ APPEND cut off while a spool write is still in the disk runner:
        when the write returns, the file is removed and nothing is stored."""
        runner = GatedRunner()
        env = IMAPEnv(self, runner=runner)
        c = env.login()
        before = env.folder().scan()
        msg = makeMessage("cut plus", b"v" * (framing.SPOOL_THRESHOLD * 2) + b"\r\n")
        runner.hold = True
        c.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg[: framing.SPOOL_THRESHOLD + 10])
        self.assertTrue(runner.queue)
        c.lose()
        runner.hold = False
        runner.flush()
        self.check(env, before)


class MailboxDeletedUnderSessionTests(SynchronousTestCase):
    """I9: APPEND to a mailbox being deleted, and DELETE of a mailbox selected
    elsewhere, end cleanly: TRYCREATE or BYE, never an orphan half-made mailbox."""

    def setUp(self) -> None:
        """Alice has a folder Work with one message."""
        self.env = IMAPEnv(self)
        self.account = self.env.store.account(ALICE)
        self.account.createFolder("Work")
        self.env.deliver(makeMessage("work"), folder="Work")
        self.workPath = self.env.folder("Work").path

    def test_deleteOfMailboxSelectedElsewhere(self) -> None:
        """Session A has Work selected; B deletes it; A's next command gets BYE."""
        a = self.env.selected("Work")
        b = self.env.login()
        b.ok("DELETE Work")
        out = a.cmd("NOOP")
        self.assertIn(b"* BYE", out)
        self.assertTrue(a.transport.disconnecting)
        self.assertFalse(os.path.exists(self.workPath))

    def test_appendAfterDelete(self) -> None:
        """APPEND to the deleted mailbox is NO [TRYCREATE] and does not bring it back."""
        a = self.env.login()
        b = self.env.login()
        b.ok("DELETE Work")
        out = appendCmd(a, makeMessage("late"), "Work")
        self.assertIn(b"NO [TRYCREATE]", tagged(out, a.lastTag))
        self.assertFalse(os.path.exists(self.workPath))
        self.assertNotIn("Work", self.account.listFolders())

    def test_appendRacingDelete(self) -> None:
        """The folder is deleted between writing the message to its tmp/ and linking
        it into new/: NO [TRYCREATE], no folder directory comes back, nothing is left
        in any tmp/, the message is nowhere."""
        realWriteTmp = folderModule._writeTmp
        account = self.account

        def writeThenDelete(*args: Any, **kwargs: Any) -> Any:
            result = realWriteTmp(*args, **kwargs)
            account.deleteFolder("Work")
            return result

        self.patch(folderModule, "_writeTmp", writeThenDelete)
        c = self.env.login()
        out = appendCmd(c, makeMessage("raced"), "Work")
        self.assertIn(b"NO [TRYCREATE]", tagged(out, c.lastTag))
        self.assertFalse(os.path.exists(self.workPath))
        self.assertNotIn("Work", account.listFolders())
        self.assertEqual(tmpEntries(self.env), [])
        self.assertEqual(os.listdir(os.path.join(account.root, "tmp")), [])
        self.assertEqual(self.env.folder().scan().messages, [])


class KilledMidAppendTests(SynchronousTestCase):
    """F1 for APPEND: a server killed during a large APPEND leaves no spool file behind
    once it starts again."""

    def test_spoolClaimedAtRestart(self) -> None:
        """SIGKILL while a 6 MB literal is half sent: the spool file in tmp/ is named for
        the dead process, and the next start removes it (it used to stay for 36 h)."""
        import socket as socketModule

        from tests.support import ServerProcess

        data = os.path.abspath(self.mktemp())
        server = ServerProcess(data, listeners=("imap",))
        self.addCleanup(server.stop)
        server.start()
        m = re.search(r"with password (\S+) \(shown once", server.log())
        assert m is not None
        tmp = os.path.join(data, "mail", "example.org", "postmaster", "Maildir", "tmp")
        conn = socketModule.create_connection(("127.0.0.1", server.ports["imap"]), 30)
        self.addCleanup(conn.close)
        reader = conn.makefile("rb")
        reader.readline()
        conn.sendall(b"a LOGIN postmaster@example.org " + m.group(1).encode() + b"\r\n")
        self.assertTrue(reader.readline().startswith(b"a OK"))
        size = 6 * 1024 * 1024
        conn.sendall(b"b APPEND INBOX {%d}\r\n" % size)
        self.assertTrue(reader.readline().startswith(b"+"))
        conn.sendall(b"Subject: big\r\n\r\n" + b"x" * (3 * 1024 * 1024))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not os.listdir(tmp):
            time.sleep(0.05)
        spooled = os.listdir(tmp)
        self.assertEqual(len(spooled), 1)
        assert server.proc is not None
        self.assertIn(f"P{server.proc.pid}Q", spooled[0])
        server.kill()
        self.assertEqual(os.listdir(tmp), spooled)
        server.start()
        self.assertEqual(os.listdir(tmp), [])
        self.assertIn("Removed 1 unfinished files", server.log())
