"""Store faults from the reliability catalogue: crashes mid-append (F1), concurrent
delivery + IMAP flags + POP3 DELE on one Maildir (F9), foreign files in C{new/} (F10)
and clock steps (F11).

The crash tests run the append in a child process that SIGKILLs itself at an injected
point, then check what a restarted store sees.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from pymaild.errors import MessageVanished
from pymaild.pop3.mailbox import POP3Mailbox, SessionRegistry
from pymaild.store import Folder, FolderState, MaildirStore, writing
from pymaild.threads import InlineRunner

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BOB = "bob@example.com"
MSG = b"From: a@example.com\r\nSubject: crash test\r\n\r\n" + b"0123456789abcdef\r\n" * 4096


class _StoreCase(SynchronousTestCase):
    """A fresh store (and so empty caches) in a scratch directory."""

    def setUp(self) -> None:
        """Create the store and Bob's account."""
        self.dir = tempfile.mkdtemp(prefix="pymaild-faults-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = MaildirStore(os.path.join(self.dir, "mail"), hostname="mx.example")
        self.account = self.store.account(BOB)
        self.inbox = self.account.folder("INBOX")

    def restarted(self, name: str = "INBOX") -> Folder:
        """The folder as a restarted process sees it (a new store: no caches)."""
        store = MaildirStore(self.store.root, hostname="mx.example")
        return store.account(BOB).folder(name)

    def files(self, folder: Folder, sub: str) -> list[str]:
        """The entries of one of the folder's subdirectories."""
        return sorted(os.listdir(os.path.join(folder.path, sub)))


_CRASH_CHILD = r"""
import os, signal, sys
from pymaild.store import MaildirStore
from pymaild.store import folder as folderModule

root, point, flagged, dataPath = sys.argv[1:5]
with open(dataPath, "rb") as f:
    data = f.read()
folder = MaildirStore(root, hostname="mx.example").account("bob@example.com").folder("INBOX")

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point == "write":
    realWrite = os.write
    def halfWrite(fd, chunk):
        realWrite(fd, bytes(chunk)[: len(chunk) // 2])
        die()
    os.write = halfWrite
elif point == "fsync":
    os.fsync = die
elif point == "link":
    os.link = die
    os.rename = die
elif point == "dirsync":
    folderModule.fsyncDir = die
elif point == "uidlist":
    folderModule.Folder._ensureUids = die
folder.append(data, ["\\Seen"] if flagged == "1" else [])
print("append returned")
"""


class CrashDuringAppendTests(_StoreCase):
    """F1: C{kill -9} at any point of an append leaves nothing partial visible, and
    the C{tmp/} leftover is removed at the next start."""

    def crash(self, point: str, flagged: bool) -> None:
        """Append in a child that SIGKILLs itself at C{point}; check the aftermath."""
        dataPath = os.path.join(self.dir, "message")
        with open(dataPath, "wb") as f:
            f.write(MSG)
        proc = subprocess.run(
            [sys.executable, "-c", _CRASH_CHILD, self.store.root, point,
             "1" if flagged else "0", dataPath],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, timeout=60,
        )
        self.assertEqual(proc.returncode, -signal.SIGKILL, proc.stderr.decode())
        self.assertNotIn(b"append returned", proc.stdout)
        folder = self.restarted()
        visible = self.files(folder, "new") + self.files(folder, "cur")
        if point in ("write", "fsync", "link"):
            self.assertEqual(visible, [], point)
        self.assertLessEqual(len(visible), 1)
        state = folder.scan()
        for info in state.messages:
            with folder.open(info) as f:
                self.assertEqual(f.read(), MSG, f"partial message visible after {point}")
        # The next start removes what the dead writer left in tmp/.
        folder.account.store.cleanTmp(atStart=True)
        self.assertEqual(self.files(folder, "tmp"), [])
        uid = folder.append(b"Subject: after\r\n\r\nok\r\n")
        self.assertEqual(folder.scan().messages[-1].uid, uid)

    def test_killedDuringWrite(self) -> None:
        """Killed with half the message written: no message, tmp/ cleaned at start."""
        self.crash("write", flagged=False)

    def test_killedBeforeFsync(self) -> None:
        """Killed between write and fsync: no message visible in new/ or cur/."""
        self.crash("fsync", flagged=True)

    def test_killedBeforeLink(self) -> None:
        """Killed between fsync and the link into new/: no message visible."""
        self.crash("link", flagged=False)

    def test_killedBeforeDirectoryFsync(self) -> None:
        """Killed after the link: the message, if visible, is complete."""
        self.crash("dirsync", flagged=True)

    def test_killedBeforeUidAssigned(self) -> None:
        """Killed before the UID is recorded: the complete message gets a UID at the
        next scan."""
        self.crash("uidlist", flagged=False)
        self.assertEqual(len(self.restarted().scan().messages), 2)


_FLAGGER_CHILD = r"""
import random, sys, time
from pymaild.errors import MessageVanished
from pymaild.store import MaildirStore

folder = MaildirStore(sys.argv[1], hostname="other").account("bob@example.com").folder("INBOX")
rng = random.Random(int(sys.argv[2]))
flips = 0
rounds = 0
deadline = time.monotonic() + 60
# Count only the rounds that found messages: a scan of the still empty INBOX (before
# the first delivery lands) is quick, and 150 of them would race past the deliveries.
while rounds < int(sys.argv[3]) and time.monotonic() < deadline:
    state = folder.scan(claimRecent=rng.random() < 0.5)
    if not state.messages:
        time.sleep(0.001)
        continue
    rounds += 1
    info = rng.choice(state.messages)
    try:
        folder.setFlags(info.key, set(info.flags) ^ {rng.choice(["\\Flagged", "$Work"])})
        flips += 1
    except MessageVanished:
        pass
print(flips)
"""


class ConcurrentMaildirTests(_StoreCase):
    """F9: delivery, IMAP flag changes (in this process and in another one) and POP3
    DELE+QUIT hammering one INBOX lose no message and never reuse a UID."""

    def test_deliveryFlagsAndPop3Dele(self) -> None:
        """Every delivered message that POP3 did not delete survives with one stable UID;
        UIDs are never reused; UIDVALIDITY never changes."""
        rounds = 60
        errors: list[BaseException] = []
        delivered: list[str] = []
        deleted: set[str] = set()
        states: list[FolderState] = []
        lock = threading.Lock()
        done = threading.Event()

        def deliverer() -> None:
            try:
                for i in range(rounds):
                    [key] = self.store.deliver([BOB], b"Subject: m%d\r\n\r\nbody\r\n" % i)
                    with lock:
                        delivered.append(key)
            except BaseException as e:
                errors.append(e)
            finally:
                done.set()

        def imapFlagger(seed: int) -> None:
            rng = random.Random(seed)
            try:
                folder = self.store.account(BOB).folder("INBOX")
                while not done.is_set():
                    state = folder.scan(claimRecent=rng.random() < 0.5)
                    with lock:
                        states.append(state)
                    if state.messages:
                        info = rng.choice(state.messages)
                        try:
                            folder.setFlags(info.key, set(info.flags) ^ {"\\Seen"})
                        except MessageVanished:
                            pass
            except BaseException as e:
                errors.append(e)

        def pop3Deleter() -> None:
            registry = SessionRegistry()
            rng = random.Random(7)
            try:
                while not done.is_set() or rng.random() < 0.5:
                    box = POP3Mailbox(self.store, InlineRunner(), BOB, registry=registry)
                    self.successResultOf(box.open())
                    doomed = [i for i in range(box.count()) if rng.random() < 0.3]
                    for i in doomed:
                        box.deleteMessage(i)
                    keys = {box.entry(i).info.key for i in doomed}
                    self.successResultOf(box.commit())
                    box.close()
                    with lock:
                        deleted.update(keys)
                    time.sleep(0.005)
            except BaseException as e:
                errors.append(e)

        child = subprocess.Popen(
            [sys.executable, "-c", _FLAGGER_CHILD, self.store.root, "3", "150"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
        )
        threads = [threading.Thread(target=deliverer), threading.Thread(target=pop3Deleter)]
        threads += [threading.Thread(target=imapFlagger, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        out, _ = child.communicate(timeout=120)
        self.assertEqual(child.returncode, 0)
        self.assertEqual(errors, [])
        self.assertEqual(len(delivered), rounds)
        self.assertGreater(int(out), 0)  # the other process did change flags
        self.assertTrue(deleted)  # and POP3 did delete some messages
        final = self.restarted().scan()
        self.assertEqual({m.key for m in final.messages}, set(delivered) - deleted)
        uidOf: dict[str, int] = {}
        keyOf: dict[int, str] = {}
        for state in [*states, final]:
            self.assertEqual(state.uidvalidity, final.uidvalidity)
            for m in state.messages:
                self.assertEqual(uidOf.setdefault(m.key, m.uid), m.uid, m.key)
                self.assertEqual(keyOf.setdefault(m.uid, m.key), m.key, m.uid)
        self.assertEqual(len(set(uidOf.values())), len(uidOf))
        self.assertGreaterEqual(final.uidnext, max(uidOf.values(), default=0) + 1)
        for info in final.messages:
            with self.restarted().open(info) as f:
                self.assertTrue(f.read().startswith(b"Subject: m"))


class ForeignFileTests(_StoreCase):
    """F10: files dropped into C{new/} by other programs are tolerated."""

    def drop(self, sub: str, name: str, data: bytes) -> None:
        """Write a file the way a foreign MDA would (no pymaild name, maybe LF only)."""
        with open(os.path.join(self.inbox.path, sub, name), "wb") as f:
            f.write(data)

    def test_foreignNamesGetNewUids(self) -> None:
        """procmail/mutt style names become messages with fresh UIDs; dot files and
        subdirectories are ignored instead of breaking every scan."""
        [key] = self.store.deliver([BOB], b"Subject: ours\r\n\r\nx\r\n")
        first = self.inbox.scan()
        self.drop("new", "msg.AbCd", b"Subject: procmail\n\nhello\n")
        self.drop("new", "1600000000.12345_1.mutt-host", b"Subject: mutt\r\n\r\nhi\r\n")
        self.drop("new", "misplaced:2,S", b"Subject: flagged in new\r\n\r\nx\r\n")
        self.drop("new", ".procmail-tmp", b"half")
        os.mkdir(os.path.join(self.inbox.path, "new", "junkdir"))
        os.mkdir(os.path.join(self.inbox.path, "cur", "otherdir"))
        time.sleep(0.01)
        state = self.inbox.scan(claimRecent=True)
        byKey = {m.key: m for m in state.messages}
        self.assertEqual(set(byKey), {key, "msg.AbCd", "1600000000.12345_1.mutt-host",
                                      "misplaced"})
        self.assertEqual(byKey[key].uid, first.messages[0].uid)
        self.assertEqual(sorted(m.uid for m in state.messages if m.key != key), [2, 3, 4])
        self.assertEqual(byKey["misplaced"].flags, frozenset({"\\Seen"}))
        with self.inbox.open(byKey["msg.AbCd"]) as f:
            self.assertEqual(f.read(), b"Subject: procmail\r\n\r\nhello\r\n")
        self.assertEqual(byKey["msg.AbCd"].size, len(b"Subject: procmail\r\n\r\nhello\r\n"))
        self.assertEqual(self.files(self.inbox, "new"), [".procmail-tmp", "junkdir"])
        again = self.restarted().scan()
        self.assertEqual([(m.uid, m.key) for m in again.messages],
                         [(m.uid, m.key) for m in state.messages])

    def test_reusedNameIsUnexpunged(self) -> None:
        """A file reappearing under an expunged message's name (a restore from backup)
        is treated as Dovecot does, as an unexpunge: it is that message again, under its
        old UID, which no other message ever got; UIDNEXT does not go back."""
        [key] = self.store.deliver([BOB], b"Subject: one\r\n\r\nx\r\n")
        self.store.deliver([BOB], b"Subject: two\r\n\r\nx\r\n")
        state = self.inbox.scan(claimRecent=True)
        oldUid = {m.key: m.uid for m in state.messages}[key]
        self.assertEqual(self.inbox.expunge([key]), [oldUid])
        self.assertEqual(len(self.inbox.scan().messages), 1)
        self.drop("new", key, b"Subject: one\r\n\r\nx\r\n")
        self.store.deliver([BOB], b"Subject: three\r\n\r\nx\r\n")
        time.sleep(0.01)
        again = self.inbox.scan()
        uids = [m.uid for m in again.messages]
        self.assertEqual({m.key: m.uid for m in again.messages}[key], oldUid)
        self.assertEqual(len(set(uids)), 3)
        self.assertEqual(max(uids), state.uidnext)
        self.assertEqual(again.uidnext, state.uidnext + 1)
        self.assertEqual(again.uidvalidity, state.uidvalidity)
        restarted = self.restarted().scan()
        self.assertEqual([(m.uid, m.key) for m in restarted.messages],
                         [(m.uid, m.key) for m in again.messages])


_NAME_CHILD = r"""
import os, time
os.getpid = lambda: 4242
time.time = lambda: 1700000000.25
from pymaild.store.writing import uniqueName
print(uniqueName("mx.example"))
"""


class ClockStepTests(_StoreCase):
    """F11: unique names and INTERNALDATE do not depend on the clock going forward."""

    def test_frozenAndSteppedBackClockKeepsNamesUnique(self) -> None:
        """With the clock frozen, then stepped back an hour, every delivery and append
        still gets its own file; nothing is overwritten."""
        now = [1700000000.0]
        self.patch(time, "time", lambda: now[0])
        keys = []
        for i in range(20):
            if i == 10:
                now[0] -= 3600
            keys += self.store.deliver([BOB], b"Subject: %d\r\n\r\nx\r\n" % i)
            self.inbox.append(b"Subject: a%d\r\n\r\nx\r\n" % i, ["\\Seen"])
        self.assertEqual(len(set(keys)), 20)
        state = self.inbox.scan()
        self.assertEqual(len(state.messages), 40)
        self.assertEqual(len({m.key for m in state.messages}), 40)

    def test_namesUniqueAcrossRestartsWithSamePidAndTime(self) -> None:
        """Two processes with the same pid (a container restart) and the same clock
        reading (a step back) still name their first messages differently."""
        names = set()
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", _NAME_CHILD], cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": ROOT},
                                 capture_output=True, timeout=60, check=True).stdout
            name = out.decode().strip()
            self.assertTrue(name.startswith("1700000000.M250000P4242Q"), name)
            names.add(name)
        self.assertEqual(len(names), 3)

    def test_internalDateStableAcrossClockStepAndFlagChanges(self) -> None:
        """INTERNALDATE (the file mtime) set at append stays the same after the clock
        steps back, flags change, the message moves to cur/ and is copied; a later
        UIDVALIDITY is still larger than an earlier one."""
        date = 1600000000.0
        uid = self.inbox.append(b"Subject: dated\r\n\r\nx\r\n", (), date)
        self.store.deliver([BOB], b"Subject: delivered\r\n\r\nx\r\n")
        state = self.inbox.scan()
        delivered = state.messages[1]
        deliveredDate = self.inbox.internalDate(delivered)
        self.account.createFolder("Old")
        oldValidity = self.account.folder("Old").scan().uidvalidity
        self.patch(time, "time", lambda: deliveredDate - 86400)
        state = self.inbox.scan(claimRecent=True)
        info = {m.uid: m for m in state.messages}[uid]
        info = self.inbox.setFlags(info.key, ["\\Seen", "\\Flagged"])
        self.assertEqual(self.inbox.internalDate(info), date)
        self.account.createFolder("Copy")
        [(_, copied)] = self.inbox.copy([info.key], self.account.folder("Copy"))
        target = self.account.folder("Copy")
        [copy] = [m for m in target.scan().messages if m.uid == copied]
        self.assertEqual(target.internalDate(copy), date)
        [moved] = [m for m in self.inbox.scan().messages if m.key == delivered.key]
        self.assertEqual(self.inbox.internalDate(moved), deliveredDate)
        self.account.deleteFolder("Old")
        self.account.createFolder("Old")
        self.assertGreater(self.account.folder("Old").scan().uidvalidity, oldValidity)

    def test_counterIsPerProcess(self) -> None:
        """Within one process the counter alone separates names made in the same
        microsecond."""
        self.patch(time, "time", lambda: 1700000000.5)
        self.patch(writing, "_uniqueCounter", itertools.count(1))
        names = {writing.uniqueName("h") for _ in range(1000)}
        self.assertEqual(len(names), 1000)
