"""Tests for L{pymaild.store.maildir}: the Dovecot-compatible Maildir++ store."""

from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from pymaild.errors import (
    FolderExists,
    InvalidFolderName,
    MessageVanished,
    NoSuchFolder,
    StoreError,
    StoreFull,
)
from pymaild.store import (
    Account,
    Folder,
    FolderHasChildren,
    FolderState,
    InvalidFlag,
    MaildirStore,
    MessageInfo,
    TooManyKeywords,
    foldersync,
    listing,
    writing,
)
from pymaild.store.folderscan import COMPACT_MIN
from pymaild.store.uidlist import UidList

MSG = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class StoreTestCase(SynchronousTestCase):
    """Base: a fresh store (and so empty caches) in a scratch directory."""

    def setUp(self) -> None:
        """Create the store and one account."""
        self.dir = tempfile.mkdtemp(prefix="pymaild-store-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = MaildirStore(os.path.join(self.dir, "mail"), hostname="mx.example")
        self.account = self.store.account("Bob@Example.COM")
        self.inbox = self.account.folder("INBOX")

    def restart(self) -> MaildirStore:
        """A new store over the same tree, as after a restart (caches dropped)."""
        return MaildirStore(self.store.root, hostname="mx.example")

    def files(self, folder: Folder, sub: str) -> list[str]:
        """The entries of a folder subdirectory."""
        return sorted(os.listdir(os.path.join(folder.path, sub)))

    def uidlist(self, folder: Folder) -> UidList:
        """The folder's uidlist as on disk."""
        with open(os.path.join(folder.path, "dovecot-uidlist"), "rb") as f:
            return UidList.parse(f.read())

    def age(self, folder: Folder) -> None:
        """Make the folder's directories look older than the sync window."""
        old = time.time() - 60
        for sub in ("cur", "new"):
            os.utime(os.path.join(folder.path, sub), (old, old))


class AccountTests(StoreTestCase):
    """L{MaildirStore.account} finds and creates Maildirs."""

    def test_layout(self) -> None:
        """The Maildir is <root>/<domain>/<local>/Maildir with cur new tmp and a uidlist."""
        expected = os.path.join(self.store.root, "example.com", "bob", "Maildir")
        self.assertEqual(self.account.root, expected)
        self.assertEqual(self.account.address, "bob@example.com")
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(os.path.join(expected, sub)))
        ul = self.uidlist(self.inbox)
        self.assertLess(abs(ul.uidvalidity - time.time()), 5)
        self.assertEqual(ul.nextuid, 1)
        self.assertIsInstance(self.account, Account)

    def test_noTwisted(self) -> None:
        """Importing and using the store never imports Twisted."""
        code = ("import sys, tempfile\n"
                "from pymaild.store import MaildirStore\n"
                "s = MaildirStore(tempfile.mkdtemp())\n"
                "s.deliver(['a@b.example'], b'x\\r\\n')\n"
                "s.account('a@b.example').folder('INBOX').scan()\n"
                "bad = [m for m in sys.modules if m.split('.')[0] == 'twisted']\n"
                "assert not bad, bad\n")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})


class DeliveryTests(StoreTestCase):
    """L{MaildirStore.deliver}: durable, CRLF, all-or-nothing."""

    def test_deliverAndScan(self) -> None:
        """A delivered message lands in new/, gets UID 1 and reads back as delivered."""
        keys = self.store.deliver(["bob@example.com"], MSG)
        self.assertEqual(len(keys), 1)
        key = keys[0]
        self.assertEqual(self.files(self.inbox, "new"), [key])
        self.assertEqual(self.files(self.inbox, "tmp"), [])
        self.assertTrue(key.endswith(f",S={len(MSG)},W={len(MSG)}"))
        self.assertIn(f"P{os.getpid()}Q", key)
        state = self.inbox.scan()
        self.assertIsInstance(state, FolderState)
        self.assertEqual(state.uidnext, 2)
        [info] = state.messages
        self.assertIsInstance(info, MessageInfo)
        self.assertEqual((info.uid, info.key, info.filename, info.flags, info.size),
                         (1, key, "new/" + key, frozenset(), len(MSG)))
        self.assertEqual(state.recent, frozenset({1}))
        with self.inbox.open(info) as f:
            self.assertEqual(f.read(), MSG)
        st = os.stat(os.path.join(self.inbox.path, "new", key))
        self.assertEqual(st.st_mode & 0o777, 0o600)

    def test_lineEndsNormalised(self) -> None:
        """LF-only input is stored with CRLF; sizes count CRLF."""
        [key] = self.store.deliver(["bob@example.com"], b"Subject: x\n\nline\nlast")
        [info] = self.inbox.scan().messages
        with self.inbox.open(info) as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nline\r\nlast")
        self.assertEqual(info.size, 24)
        self.assertTrue(key.endswith(",S=24,W=24"))

    def test_stream(self) -> None:
        """A binary file is copied in chunks; a CR at a chunk end still pairs with its LF."""
        body = b"x" * (64 * 1024 - 1) + b"\r\n" + b"y\n" * 10
        [key] = self.store.deliver(["bob@example.com"], io.BytesIO(body))
        with open(os.path.join(self.inbox.path, "new", key), "rb") as f:
            self.assertEqual(f.read(), body.replace(b"y\n", b"y\r\n"))

    def test_hostnameEscaped(self) -> None:
        """C{/} and C{:} in the host name are escaped as Dovecot does."""
        store = MaildirStore(self.store.root, hostname="a/b:c")
        [key] = store.deliver(["bob@example.com"], MSG)
        self.assertIn(".a\\057b\\072c,S=", key)
        self.assertNotIn(":", key)

    def test_twoRecipients(self) -> None:
        """One message to two accounts is linked into both; duplicates count once."""
        keys = self.store.deliver(["bob@example.com", "al@example.com", "BOB@example.com"],
                                  MSG)
        self.assertEqual(len(keys), 3)
        al = self.store.account("al@example.com").folder("INBOX")
        self.assertEqual(self.files(self.inbox, "new"), [keys[0]])
        self.assertEqual(self.files(al, "new"), [keys[1]])
        a = os.stat(os.path.join(self.inbox.path, "new", keys[0]))
        b = os.stat(os.path.join(al.path, "new", keys[1]))
        self.assertEqual(a.st_ino, b.st_ino)
        self.assertEqual(a.st_nlink, 2)

    def test_secondRecipientFails(self) -> None:
        """When linking into the second account fails, nothing is left anywhere."""
        al = self.store.account("al@example.com").folder("INBOX")
        real = os.link
        calls = []

        def link(src: str, dst: str) -> None:
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.EACCES, "Permission denied", dst)
            real(src, dst)

        self.patch(os, "link", link)
        self.assertRaises(StoreError, self.store.deliver,
                          ["bob@example.com", "al@example.com"], MSG)
        self.assertEqual(len(calls), 2)
        for folder in (self.inbox, al):
            for sub in ("new", "cur", "tmp"):
                self.assertEqual(self.files(folder, sub), [], (folder, sub))

    def test_secondRecipientReadOnly(self) -> None:
        """A second recipient whose new/ is not a directory makes the delivery fail whole."""
        al = self.store.account("al@example.com").folder("INBOX")
        newDir = os.path.join(al.path, "new")
        os.rmdir(newDir)
        with open(newDir, "wb"):
            pass
        self.assertRaises(StoreError, self.store.deliver,
                          ["bob@example.com", "al@example.com"], MSG)
        for sub in ("new", "cur", "tmp"):
            self.assertEqual(self.files(self.inbox, sub), [])

    def test_diskFull(self) -> None:
        """ENOSPC while writing raises StoreFull and removes the tmp file."""
        def write(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", write)
        self.assertRaises(StoreFull, self.store.deliver, ["bob@example.com"], MSG)
        for sub in ("new", "cur", "tmp"):
            self.assertEqual(self.files(self.inbox, sub), [])

    def test_quotaFull(self) -> None:
        """EDQUOT on fsync is StoreFull as well."""
        def fsync(fd: int) -> None:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

        self.patch(os, "fsync", fsync)
        self.assertRaises(StoreFull, self.store.deliver, ["bob@example.com"], MSG)
        self.assertEqual(self.files(self.inbox, "tmp"), [])
        self.assertEqual(self.files(self.inbox, "new"), [])

    def test_deliverToFolder(self) -> None:
        """Delivery to a folder the recipient has; INBOX for one who does not."""
        self.account.createFolder("Lists")
        keys = self.store.deliver(["bob@example.com", "al@example.com"], MSG, folder="Lists")
        lists = self.account.folder("Lists")
        self.assertEqual(self.files(lists, "new"), [keys[0]])
        al = self.store.account("al@example.com").folder("INBOX")
        self.assertEqual(self.files(al, "new"), [keys[1]])

    def test_tmpNeverScanned(self) -> None:
        """Files in tmp/ (a delivery in progress) and dot files are not messages."""
        with open(os.path.join(self.inbox.path, "tmp", "1.M1P1Q1.x"), "wb") as f:
            f.write(MSG)
        with open(os.path.join(self.inbox.path, "cur", ".hidden"), "wb") as f:
            f.write(MSG)
        self.assertEqual(self.inbox.scan().messages, [])
        self.store.deliver(["bob@example.com"], MSG)
        self.assertEqual(len(self.inbox.scan().messages), 1)


class ScanTests(StoreTestCase):
    """L{Folder.scan}: UIDs, recent, caching."""

    def test_claimRecent(self) -> None:
        """claimRecent moves new/ to cur/ with C{:2,} and reports those UIDs once."""
        k1, = self.store.deliver(["bob@example.com"], MSG)
        k2, = self.store.deliver(["bob@example.com"], MSG)
        state = self.inbox.scan(claimRecent=True)
        self.assertEqual(state.recent, frozenset({1, 2}))
        self.assertEqual(self.files(self.inbox, "new"), [])
        self.assertEqual(self.files(self.inbox, "cur"), sorted([k1 + ":2,", k2 + ":2,"]))
        self.assertEqual([m.filename for m in state.messages], ["cur/" + k1 + ":2,",
                                                                "cur/" + k2 + ":2,"])
        self.assertEqual(self.inbox.scan(claimRecent=True).recent, frozenset())
        self.assertEqual(self.inbox.scan().recent, frozenset())

    def test_uidsInDeliveryOrder(self) -> None:
        """Files found together get UIDs in delivery-time order."""
        keys = [self.store.deliver(["bob@example.com"], MSG)[0] for _ in range(5)]
        state = self.inbox.scan()
        self.assertEqual([m.key for m in state.messages], keys)
        self.assertEqual([m.uid for m in state.messages], [1, 2, 3, 4, 5])

    def test_uidsSurviveRestart(self) -> None:
        """UIDVALIDITY, UIDs and the next UID persist in a new store instance."""
        for _ in range(3):
            self.store.deliver(["bob@example.com"], MSG)
        before = self.inbox.scan(claimRecent=True)
        self.inbox.setFlags(before.messages[1].key, ["\\Seen"])
        store = self.restart()
        folder = store.account("bob@example.com").folder("INBOX")
        after = folder.scan()
        self.assertEqual(after.uidvalidity, before.uidvalidity)
        self.assertEqual([(m.uid, m.key) for m in after.messages],
                         [(m.uid, m.key) for m in before.messages])
        self.assertEqual(after.messages[1].flags, frozenset({"\\Seen"}))
        store.deliver(["bob@example.com"], MSG)
        self.assertEqual(folder.scan().messages[-1].uid, 4)

    def test_uidSurvivesForeignRename(self) -> None:
        """Another program renaming a file for its flags keeps the UID."""
        self.store.deliver(["bob@example.com"], MSG)
        [info] = self.inbox.scan(claimRecent=True).messages
        src = os.path.join(self.inbox.path, info.filename)
        os.rename(src, os.path.join(self.inbox.path, "cur", info.key + ":2,FS"))
        [again] = self.inbox.scan().messages
        self.assertEqual(again.uid, info.uid)
        self.assertEqual(again.flags, frozenset({"\\Flagged", "\\Seen"}))

    def test_vanishedDroppedLazily(self) -> None:
        """Expunged files leave the uidlist only when enough are dead; UIDs never reused."""
        n = COMPACT_MIN * 2
        for _ in range(n):
            self.store.deliver(["bob@example.com"], MSG)
        state = self.inbox.scan()
        keys = [m.key for m in state.messages]
        self.inbox.expunge(keys[:2])
        self.inbox.scan()
        self.assertEqual(len(self.uidlist(self.inbox).records), n)
        self.inbox.expunge(keys[2:COMPACT_MIN + 2])
        state = self.inbox.scan()
        ul = self.uidlist(self.inbox)
        self.assertEqual([r.key for r in ul.records], keys[COMPACT_MIN + 2:])
        self.assertEqual(ul.nextuid, n + 1)
        self.store.deliver(["bob@example.com"], MSG)
        self.assertEqual(self.inbox.scan().messages[-1].uid, n + 1)

    def test_cacheAvoidsListing(self) -> None:
        """An unchanged, settled folder is rescanned without listing its directories."""
        for _ in range(3):
            self.store.deliver(["bob@example.com"], MSG)
        self.inbox.scan()
        self.age(self.inbox)
        first = self.inbox.scan()
        listed: list[str] = []
        real = os.listdir

        def listdir(path: str = ".") -> list[str]:
            listed.append(os.path.basename(path))
            return real(path)

        self.patch(os, "listdir", listdir)
        again = self.inbox.scan()
        self.assertEqual(listed, [])
        self.assertEqual(again.messages, first.messages)
        self.store.deliver(["bob@example.com"], MSG)
        newer = self.inbox.scan()
        self.assertEqual(listed, ["new"])
        self.assertEqual(len(newer.messages), 4)

    def test_recentChangeRelisted(self) -> None:
        """A directory changed within the sync window is listed again even if its mtime
        looks unchanged (a change in the same clock tick)."""
        self.store.deliver(["bob@example.com"], MSG)
        self.inbox.scan()
        newDir = os.path.join(self.inbox.path, "new")
        st = os.stat(newDir)
        self.store.deliver(["bob@example.com"], MSG)
        os.utime(newDir, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertEqual(len(self.inbox.scan().messages), 2)

    def test_concurrentThreads(self) -> None:
        """Threads scanning at once (while mail arrives) give each message one UID."""
        errors: list[BaseException] = []
        states: list[FolderState] = []
        barrier = threading.Barrier(6)

        def scanner() -> None:
            try:
                folder = self.store.account("bob@example.com").folder("INBOX")
                barrier.wait()
                for _ in range(15):
                    states.append(folder.scan())
            except BaseException as e:
                errors.append(e)

        def deliverer() -> None:
            try:
                barrier.wait()
                for _ in range(30):
                    self.store.deliver(["bob@example.com"], MSG)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=scanner) for _ in range(5)]
        threads.append(threading.Thread(target=deliverer))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        final = self.inbox.scan()
        self.assertEqual(len(final.messages), 30)
        self.assertEqual([m.uid for m in final.messages], list(range(1, 31)))
        uidOf = {m.key: m.uid for m in final.messages}
        for state in states:
            for m in state.messages:
                self.assertEqual(uidOf[m.key], m.uid)
        ul = self.uidlist(self.inbox)
        self.assertEqual(len(ul.records), 30)
        self.assertEqual(len({r.key for r in ul.records}), 30)

    def test_concurrentProcesses(self) -> None:
        """Two processes delivering and scanning one folder agree on every UID."""
        code = (
            "import sys\n"
            "from pymaild.store import MaildirStore\n"
            "s = MaildirStore(sys.argv[1], hostname='other')\n"
            "f = s.account('bob@example.com').folder('INBOX')\n"
            "for i in range(25):\n"
            "    s.deliver(['bob@example.com'], b'x\\r\\n')\n"
            "    st = f.scan(claimRecent=(i % 2 == 0))\n"
            "    print(' '.join(f'{m.uid}={m.key}' for m in st.messages))\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, self.store.root],
                                stdout=subprocess.PIPE, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": ROOT})
        mine = []
        for i in range(25):
            self.store.deliver(["bob@example.com"], MSG)
            mine.append(self.inbox.scan(claimRecent=(i % 2 == 1)))
        out, _ = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0)
        final = self.inbox.scan()
        self.assertEqual(len(final.messages), 50)
        uidOf = {m.key: m.uid for m in final.messages}
        self.assertEqual(len(set(uidOf.values())), 50)
        for state in mine:
            for m in state.messages:
                self.assertEqual(uidOf[m.key], m.uid)
        for line in out.decode().splitlines():
            for pair in line.split():
                uid, key = pair.split("=", 1)
                self.assertEqual(uidOf[key], int(uid))

    def test_concurrentAppends(self) -> None:
        """Threads appending at once each get a distinct UID that scan agrees with."""
        results: list[tuple[int, bytes]] = []
        errors: list[BaseException] = []

        def appender(n: int) -> None:
            try:
                folder = self.account.folder("INBOX")
                for i in range(10):
                    body = b"m %d %d\r\n" % (n, i)
                    flags = ["\\Seen", f"kw{n}"] if i % 2 else []
                    results.append((folder.append(body, flags), body))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=appender, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        state = self.inbox.scan()
        self.assertEqual(sorted(u for u, _ in results), list(range(1, 41)))
        byUid = {m.uid: m for m in state.messages}
        for uid, body in results:
            with self.inbox.open(byUid[uid]) as f:
                self.assertEqual(f.read(), body)
        self.assertEqual(len(state.keywords), 4)

    def test_patchedStateMatchesRebuild(self) -> None:
        """After any mix of small changes, the incrementally kept state equals a state
        built from scratch."""
        import random
        rnd = random.Random(4)
        for _ in range(10):
            self.store.deliver(["bob@example.com"], MSG)
        self.inbox.scan()
        for step in range(60):
            state = self.inbox.scan(claimRecent=rnd.random() < 0.3)
            msgs = state.messages
            op = rnd.randrange(5)
            if op == 0 or not msgs:
                self.store.deliver(["bob@example.com"], MSG)
            elif op == 1:
                flags = rnd.sample(["\\Seen", "\\Flagged", "a", "b", "\\Deleted"], 2)
                self.inbox.setFlags(rnd.choice(msgs).key, flags)
            elif op == 2:
                self.inbox.expunge([rnd.choice(msgs).key])
            elif op == 3:
                m = rnd.choice(msgs)
                os.rename(os.path.join(self.inbox.path, m.filename),
                          os.path.join(self.inbox.path, "cur", m.key + ":2,R"))
            else:
                self.inbox.append(MSG, ["\\Answered"] if step % 2 else [])
            kept = self.inbox.scan()
            # A second handle with its own, empty cache sees the disk from scratch.
            other = Folder(self.account, "INBOX", self.inbox.path + "/.")
            other._c.reset()
            fresh = other.scan()
            self.assertEqual(kept.messages, fresh.messages, step)
            self.assertEqual(kept.uidnext, fresh.uidnext)

    def test_uidlistDiskFull(self) -> None:
        """A scan that cannot write the uidlist raises StoreFull and keeps no unsaved UIDs."""
        self.inbox.scan()
        self.store.deliver(["bob@example.com"], MSG)
        self.store.deliver(["bob@example.com"], MSG)
        real = os.write

        def write(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        os.write = write
        try:
            self.assertRaises(StoreFull, self.inbox.scan)
        finally:
            os.write = real
        self.assertEqual(self.uidlist(self.inbox).records, [])
        state = self.inbox.scan()
        self.assertEqual([m.uid for m in state.messages], [1, 2])
        fresh = self.restart().account("bob@example.com").folder("INBOX").scan()
        self.assertEqual(fresh.messages, state.messages)

    def test_folderGone(self) -> None:
        """Scanning a folder deleted meanwhile raises NoSuchFolder."""
        self.account.createFolder("Gone")
        folder = self.account.folder("Gone")
        self.account.deleteFolder("Gone")
        self.assertRaises(NoSuchFolder, folder.scan)


class ForeignFileTests(StoreTestCase):
    """Files and control files written by other programs (Dovecot, other MDAs)."""

    def test_lfOnlyFile(self) -> None:
        """An LF-only file without sizes is served with CRLF and sized accordingly."""
        raw = b"Subject: old\n\nline 1\nline 2\n"
        name = "1500000000.V801I12M34.oldhost"
        with open(os.path.join(self.inbox.path, "cur", name + ":2,S"), "wb") as f:
            f.write(raw)
        [info] = self.inbox.scan().messages
        crlf = raw.replace(b"\n", b"\r\n")
        self.assertEqual(info.size, len(crlf))
        self.assertEqual(info.flags, frozenset({"\\Seen"}))
        with self.inbox.open(info) as f:
            self.assertEqual(f.read(), crlf)
        self.assertEqual(self.inbox.read(info), crlf)
        self.assertEqual(self.inbox.readPrefix(info, 14), crlf[:14])
        self.assertEqual(self.uidlist(self.inbox).byKey[name].ext, (f"W{len(crlf)}",))
        store = self.restart()
        [again] = store.account("bob@example.com").folder("INBOX").scan().messages
        self.assertEqual(again.size, len(crlf))

    def test_dovecotSizes(self) -> None:
        """A Dovecot-delivered LF file (S= raw, W= CRLF size) is served with CRLF."""
        raw = b"a\nb\n"
        name = "1500000000.M1P2.kurkku,S=4,W=6"
        with open(os.path.join(self.inbox.path, "new", name), "wb") as f:
            f.write(raw)
        [info] = self.inbox.scan().messages
        self.assertEqual(info.size, 6)
        with self.inbox.open(info) as f:
            self.assertEqual(f.read(), b"a\r\nb\r\n")

    def test_readSmall(self) -> None:
        """readSmall gives the CRLF content of a small file in one read (an LF file
        converted), and None for a file of the limit's size or more, or one gone."""
        raw = b"Subject: lf\n\nline\r\nbare\rcr\n"
        with open(os.path.join(self.inbox.path, "new", "1500000000.M1P2.other,S=27"),
                  "wb") as f:
            f.write(raw)
        self.store.deliver(["bob@example.com"], b"Subject: crlf\r\n\r\nbody\r\n")
        lf, crlf = self.inbox.scan().messages
        self.assertEqual(self.inbox.readSmall(lf, 100), self.inbox.read(lf))
        self.assertEqual(self.inbox.readSmall(lf, 100),
                         b"Subject: lf\r\n\r\nline\r\nbare\rcr\r\n")
        self.assertEqual(self.inbox.readSmall(crlf, 100), self.inbox.read(crlf))
        self.assertIsNone(self.inbox.readSmall(lf, len(raw)))
        os.unlink(os.path.join(self.inbox.path, lf.filename))
        self.assertIsNone(self.inbox.readSmall(lf, 100))

    def test_toCRLFAsTheRegex(self) -> None:
        """toCRLF gives what the substitution of every C{\\r?\\n} by CRLF gives, for
        any mix of CR, LF and CRLF (it uses bytes.replace, not the regex)."""
        import random
        import re

        rx = re.compile(rb"\r?\n")
        rng = random.Random(2026)
        for _ in range(5000):
            data = bytes(rng.choice(b"\r\na.") for _ in range(rng.randrange(30)))
            self.assertEqual(writing.toCRLF(data), rx.sub(b"\r\n", data), data)

    def test_dovecotFixture(self) -> None:
        """A Maildir as Dovecot leaves it (uidlist, keywords, flags) reads correctly."""
        path = self.inbox.path
        with open(os.path.join(path, "dovecot-uidlist"), "wb") as f:
            f.write(b"3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"
                    b"25006 :1276528487.M364837P9451.kurkku,S=5,W=5\n"
                    b"25017 W2481 :1276533073.M242911P3632.kurkku,S=5,W=5\n"
                    b"25019 :1276533080.M1P9.kurkku,S=5,W=5\n")
        with open(os.path.join(path, "dovecot-keywords"), "wb") as f:
            f.write(b"0 $Junk\n1 $NonJunk\n2 Work\n")
        for name in ("1276528487.M364837P9451.kurkku,S=5,W=5:2,RSa",
                     "1276533073.M242911P3632.kurkku,S=5,W=5:2,PSc"):
            with open(os.path.join(path, "cur", name), "wb") as f:
                f.write(b"x\r\ny\r\n"[:5])
        with open(os.path.join(path, "new", "1276533100.M5P9.kurkku,S=5,W=5"), "wb") as f:
            f.write(b"abcde")
        self.store.clearCaches()
        state = self.inbox.scan()
        self.assertEqual(state.uidvalidity, 1275660208)
        self.assertEqual([m.uid for m in state.messages], [25006, 25017, 25022])
        self.assertEqual(state.messages[0].flags,
                         frozenset({"\\Answered", "\\Seen", "$Junk"}))
        self.assertEqual(state.messages[1].flags, frozenset({"\\Seen", "Work"}))
        self.assertEqual(state.keywords, ("$Junk", "$NonJunk", "Work"))
        self.assertEqual(state.uidnext, 25023)
        self.assertEqual(state.recent, frozenset({25022}))
        with open(os.path.join(path, "dovecot-uidlist"), "rb") as f:
            self.assertTrue(f.read().endswith(b"\n25022 :1276533100.M5P9.kurkku,S=5,W=5\n"))
        info = self.inbox.setFlags(state.messages[1].key, ["Work", "$NonJunk"])
        self.assertEqual(info.filename,
                         "cur/1276533073.M242911P3632.kurkku,S=5,W=5:2,Pbc")


class FlagTests(StoreTestCase):
    """L{Folder.setFlags}: flags and keywords through file names."""

    def setUp(self) -> None:
        """Deliver one message and claim it."""
        super().setUp()
        self.store.deliver(["bob@example.com"], MSG)
        [self.info] = self.inbox.scan(claimRecent=True).messages

    def test_roundTrip(self) -> None:
        """Every system flag and keywords survive the file name and a restart."""
        flags = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Junk",
                 "Work", "\\Recent"]
        info = self.inbox.setFlags(self.info.key, flags)
        self.assertEqual(info.filename, f"cur/{self.info.key}:2,DFRSTab")
        expected = frozenset(flags) - {"\\Recent"}
        self.assertEqual(info.flags, expected)
        self.assertEqual(info.uid, self.info.uid)
        with open(os.path.join(self.inbox.path, "dovecot-keywords"), "rb") as f:
            self.assertEqual(f.read(), b"0 $Junk\n1 Work\n")
        store = self.restart()
        state = store.account("bob@example.com").folder("INBOX").scan()
        self.assertEqual(state.messages[0].flags, expected)
        self.assertEqual(state.keywords, ("$Junk", "Work"))
        info = self.inbox.setFlags(self.info.key, ["work"])
        self.assertEqual(info.filename, f"cur/{self.info.key}:2,b")
        self.assertEqual(info.flags, frozenset({"Work"}))
        info = self.inbox.setFlags(self.info.key, [])
        self.assertEqual(info.filename, f"cur/{self.info.key}:2,")

    def test_otherLettersKept(self) -> None:
        """Letters that are not IMAP flags (P) and unnamed keyword letters are kept."""
        os.rename(os.path.join(self.inbox.path, self.info.filename),
                  os.path.join(self.inbox.path, "cur", self.info.key + ":2,PSz"))
        info = self.inbox.setFlags(self.info.key, ["\\Flagged"])
        self.assertEqual(info.filename, f"cur/{self.info.key}:2,FPz")
        self.assertEqual(info.flags, frozenset({"\\Flagged"}))

    def test_fromNew(self) -> None:
        """Setting flags on a message still in new/ moves it to cur/."""
        [key] = self.store.deliver(["bob@example.com"], MSG)
        self.inbox.scan()
        info = self.inbox.setFlags(key, ["\\Seen"])
        self.assertEqual(info.filename, f"cur/{key}:2,S")
        self.assertNotIn(key, self.files(self.inbox, "new"))

    def test_keywordLimit(self) -> None:
        """26 keywords fit; the 27th raises TooManyKeywords and changes nothing."""
        self.inbox.setFlags(self.info.key, [f"k{i}" for i in range(26)])
        kwPath = os.path.join(self.inbox.path, "dovecot-keywords")
        with open(kwPath, "rb") as f:
            before = f.read()
        self.assertRaises(TooManyKeywords, self.inbox.setFlags, self.info.key, ["k26"])
        self.assertTrue(issubclass(TooManyKeywords, StoreError))
        with open(kwPath, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(len(self.inbox.scan().keywords), 26)
        self.assertEqual(len(self.inbox.scan().messages[0].flags), 26)

    def test_invalidFlag(self) -> None:
        """Unknown system flags and bad keywords raise InvalidFlag."""
        self.assertRaises(InvalidFlag, self.inbox.setFlags, self.info.key, ["\\Bogus"])
        self.assertRaises(InvalidFlag, self.inbox.setFlags, self.info.key, ["a b"])

    def test_vanished(self) -> None:
        """setFlags, open and internalDate of a removed message raise MessageVanished."""
        os.unlink(os.path.join(self.inbox.path, self.info.filename))
        self.assertRaises(MessageVanished, self.inbox.setFlags, self.info.key, ["\\Seen"])
        self.assertRaises(MessageVanished, self.inbox.open, self.info)
        self.assertRaises(MessageVanished, self.inbox.internalDate, self.info)
        self.assertRaises(MessageVanished, self.inbox.read, self.info)
        self.assertRaises(MessageVanished, self.inbox.readPrefix, self.info, 10)

    def test_readAndPrefix(self) -> None:
        """read() gives what open() gives; readPrefix() its first bytes, all of it when
        asked for more, and both find the file again after another process renamed it."""
        self.assertEqual(self.inbox.read(self.info), MSG)
        self.assertEqual(self.inbox.readPrefix(self.info, 5), MSG[:5])
        self.assertEqual(self.inbox.readPrefix(self.info, len(MSG) + 100), MSG)
        os.rename(os.path.join(self.inbox.path, self.info.filename),
                  os.path.join(self.inbox.path, "cur", self.info.key + ":2,F"))
        self.assertEqual(self.inbox.read(self.info), MSG)
        self.assertEqual(self.inbox.readPrefix(self.info, 7), MSG[:7])

    def test_openAfterForeignRename(self) -> None:
        """open() finds the file again when another process changed its flags."""
        os.rename(os.path.join(self.inbox.path, self.info.filename),
                  os.path.join(self.inbox.path, "cur", self.info.key + ":2,T"))
        with self.inbox.open(self.info) as f:
            self.assertEqual(f.read(), MSG)
        info = self.inbox.setFlags(self.info.key, ["\\Seen"])
        self.assertEqual(info.filename, f"cur/{self.info.key}:2,S")

    def test_internalDate(self) -> None:
        """INTERNALDATE is the file's mtime."""
        path = os.path.join(self.inbox.path, self.info.filename)
        os.utime(path, (1000000000, 1000000000))
        self.assertEqual(self.inbox.internalDate(self.info), 1000000000)


class ExpungeAppendCopyTests(StoreTestCase):
    """L{Folder.expunge}, L{Folder.append} and L{Folder.copy}."""

    def test_expunge(self) -> None:
        """Expunge removes files and returns the UIDs actually removed."""
        for _ in range(3):
            self.store.deliver(["bob@example.com"], MSG)
        state = self.inbox.scan(claimRecent=True)
        keys = [m.key for m in state.messages]
        self.assertEqual(self.inbox.expunge([keys[2], keys[0], "nonexistent", keys[0]]),
                         [1, 3])
        self.assertEqual([m.uid for m in self.inbox.scan().messages], [2])
        self.assertEqual(self.inbox.expunge([keys[0]]), [])

    def test_append(self) -> None:
        """Append stores durably, returns the UID, keeps flags and the internal date."""
        uid1 = self.inbox.append(MSG)
        uid2 = self.inbox.append(io.BytesIO(b"a\nb\n"), ["\\Seen", "Todo"],
                                 internaldate=1200000000.0)
        self.assertEqual((uid1, uid2), (1, 2))
        self.assertEqual(len(self.files(self.inbox, "new")), 1)
        self.assertEqual(self.files(self.inbox, "tmp"), [])
        state = self.inbox.scan()
        first, second = state.messages
        self.assertTrue(first.filename.startswith("new/"))
        self.assertTrue(second.filename.startswith("cur/"))
        self.assertTrue(second.filename.endswith(":2,Sa"))
        self.assertEqual(second.flags, frozenset({"\\Seen", "Todo"}))
        self.assertEqual(second.size, 6)
        self.assertEqual(self.inbox.internalDate(second), 1200000000.0)
        with self.inbox.open(second) as f:
            self.assertEqual(f.read(), b"a\r\nb\r\n")

    def test_appendDiskFull(self) -> None:
        """ENOSPC during append raises StoreFull and leaves no file."""
        def write(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", write)
        self.assertRaises(StoreFull, self.inbox.append, MSG, ["\\Seen"])
        for sub in ("new", "cur", "tmp"):
            self.assertEqual(self.files(self.inbox, sub), [])

    def test_appendToMissingFolder(self) -> None:
        """Appending to a deleted folder raises NoSuchFolder."""
        self.account.createFolder("X")
        folder = self.account.folder("X")
        self.account.deleteFolder("X")
        self.assertRaises(NoSuchFolder, folder.append, MSG)

    def test_copy(self) -> None:
        """Copy hard-links with flags, maps keywords to the destination's letters."""
        self.account.createFolder("Dest")
        dest = self.account.folder("Dest")
        dest.append(MSG, ["Other"])
        self.inbox.append(MSG, ["\\Flagged", "Work"], internaldate=1100000000.0)
        self.inbox.append(MSG)
        src = self.inbox.scan().messages
        pairs = self.inbox.copy([m.key for m in src] + ["gone"], dest)
        self.assertEqual(pairs, [(1, 2), (2, 3)])
        state = dest.scan()
        copied = state.messages[1]
        self.assertEqual(copied.flags, frozenset({"\\Flagged", "Work"}))
        self.assertTrue(copied.filename.endswith(":2,Fb"))
        self.assertEqual(dest.internalDate(copied), 1100000000.0)
        self.assertNotEqual(copied.key, src[0].key)
        self.assertEqual(os.stat(os.path.join(dest.path, copied.filename)).st_ino,
                         os.stat(os.path.join(self.inbox.path, src[0].filename)).st_ino)
        self.assertTrue(state.messages[2].filename.startswith("new/"))
        with dest.open(state.messages[2]) as f:
            self.assertEqual(f.read(), MSG)

    def test_copyWithoutLinks(self) -> None:
        """Where hard links are refused (EXDEV), copy writes the bytes instead."""
        self.account.createFolder("Dest")
        dest = self.account.folder("Dest")
        self.inbox.append(MSG, ["\\Seen"], internaldate=1100000000.0)
        [m] = self.inbox.scan().messages
        real = os.link

        def link(src: str, dst: str) -> None:
            if "/cur/" in dst and os.path.basename(os.path.dirname(os.path.dirname(dst))) \
                    == ".Dest" and "/tmp/" in src:
                return real(src, dst)
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        self.patch(os, "link", link)
        self.assertEqual(self.inbox.copy([m.key], dest), [(1, 1)])
        [c] = dest.scan().messages
        self.assertEqual(c.flags, frozenset({"\\Seen"}))
        self.assertEqual(dest.internalDate(c), 1100000000.0)
        with dest.open(c) as f:
            self.assertEqual(f.read(), MSG)
        self.assertEqual(self.files(dest, "tmp"), [])


class FolderTests(StoreTestCase):
    """Creating, listing, deleting and renaming folders."""

    def test_createAndList(self) -> None:
        """Folders are C{.a.b} directories in mUTF-7 with a maildirfolder marker."""
        for name in ("Sent", "Lists/Twisted", "\u00dcber"):
            self.account.createFolder(name)
        self.assertEqual(self.account.listFolders(),
                         ["INBOX", "Lists", "Lists/Twisted", "Sent", "\u00dcber"])
        self.assertTrue(os.path.isfile(
            os.path.join(self.account.root, ".&ANw-ber", "maildirfolder")))
        self.assertTrue(os.path.isdir(os.path.join(self.account.root, ".Lists.Twisted", "cur")))
        self.assertFalse(self.account.isSelectable("Lists"))
        self.assertTrue(self.account.isSelectable("Lists/Twisted"))
        self.assertTrue(self.account.isSelectable("inbox"))
        self.assertTrue(self.account.hasChildren("Lists"))
        self.assertFalse(self.account.hasChildren("Sent"))
        self.assertRaises(NoSuchFolder, self.account.folder, "Lists")
        self.assertRaises(NoSuchFolder, self.account.isSelectable, "Nope")
        self.assertEqual(self.account.folder("\u00dcber").name, "\u00dcber")

    def test_createErrors(self) -> None:
        """Existing names raise FolderExists; bad names InvalidFolderName."""
        self.account.createFolder("A")
        self.assertRaises(FolderExists, self.account.createFolder, "A")
        self.assertRaises(FolderExists, self.account.createFolder, "inbox")
        self.assertRaises(InvalidFolderName, self.account.createFolder, "a.b")
        self.assertRaises(InvalidFolderName, self.account.createFolder, "../x")
        self.assertRaises(InvalidFolderName, self.account.folder, "a//b")

    def test_inboxCaseInsensitive(self) -> None:
        """INBOX in any case is the Maildir root."""
        for name in ("INBOX", "inbox", "Inbox"):
            folder = self.account.folder(name)
            self.assertEqual((folder.name, folder.path), ("INBOX", self.account.root))

    def test_uidvalidityUnique(self) -> None:
        """A folder recreated at once gets a larger UIDVALIDITY (Dovecot's scheme)."""
        self.account.createFolder("X")
        v1 = self.account.folder("X").scan().uidvalidity
        self.account.deleteFolder("X")
        self.account.createFolder("X")
        v2 = self.account.folder("X").scan().uidvalidity
        self.assertGreater(v2, v1)
        with open(os.path.join(self.account.root, "dovecot-uidvalidity")) as f:
            self.assertEqual(f.read(), f"{v2:08x}")
        self.assertTrue(os.path.exists(os.path.join(self.account.root,
                                                    f"dovecot-uidvalidity.{v2:08x}")))

    def test_deleteWithChildren(self) -> None:
        """Deleting a parent removes its directory; it stays listed as non-selectable."""
        self.account.createFolder("a")
        self.account.createFolder("a/b")
        self.account.folder("a").append(MSG)
        self.account.folder("a/b").append(MSG)
        self.account.deleteFolder("a")
        self.assertFalse(os.path.exists(os.path.join(self.account.root, ".a")))
        self.assertEqual(self.account.listFolders(), ["INBOX", "a", "a/b"])
        self.assertFalse(self.account.isSelectable("a"))
        self.assertRaises(NoSuchFolder, self.account.folder, "a")
        self.assertRaises(FolderHasChildren, self.account.deleteFolder, "a")
        self.assertEqual(len(self.account.folder("a/b").scan().messages), 1)
        self.assertEqual(self.files(self.inbox, "tmp"), [])
        self.account.createFolder("a")
        self.assertTrue(self.account.isSelectable("a"))
        self.assertEqual(self.account.folder("a").scan().messages, [])

    def test_deleteErrors(self) -> None:
        """INBOX cannot be deleted; a missing folder raises NoSuchFolder."""
        self.assertRaises(InvalidFolderName, self.account.deleteFolder, "inbox")
        self.assertRaises(NoSuchFolder, self.account.deleteFolder, "missing")

    def test_renameWithChildren(self) -> None:
        """Renaming moves the folder and its children, keeping messages and UIDs."""
        for name in ("a", "a/b", "a/b/c", "ab"):
            self.account.createFolder(name)
        self.account.folder("a/b").append(MSG, ["\\Seen"])
        before = self.account.folder("a/b").scan()
        self.account.subscribe("a/b")
        self.account.subscribe("ab")
        self.account.renameFolder("a", "x/y")
        self.assertEqual(self.account.listFolders(),
                         ["INBOX", "ab", "x", "x/y", "x/y/b", "x/y/b/c"])
        after = self.account.folder("x/y/b").scan()
        self.assertEqual(after.uidvalidity, before.uidvalidity)
        self.assertEqual([(m.uid, m.key, m.flags) for m in after.messages],
                         [(m.uid, m.key, m.flags) for m in before.messages])
        self.assertEqual(self.account.subscriptions(), ["x/y/b", "ab"])
        self.assertRaises(NoSuchFolder, self.account.folder, "a/b")

    def test_renameErrors(self) -> None:
        """Existing targets, renames into oneself and missing sources are refused."""
        for name in ("a", "a/b", "c", "d/b"):
            self.account.createFolder(name)
        self.assertRaises(FolderExists, self.account.renameFolder, "a", "c")
        self.assertRaises(FolderExists, self.account.renameFolder, "a", "d")
        self.assertRaises(FolderExists, self.account.renameFolder, "a", "INBOX")
        self.assertRaises(InvalidFolderName, self.account.renameFolder, "a", "a/x")
        self.assertRaises(NoSuchFolder, self.account.renameFolder, "zz", "yy")
        self.assertRaises(InvalidFolderName, self.account.renameFolder, "a", "b.c")
        self.assertEqual(self.account.listFolders(), ["INBOX", "a", "a/b", "c", "d", "d/b"])

    def test_renameParentOnly(self) -> None:
        """A non-selectable parent can be renamed: its children move."""
        self.account.createFolder("p/q")
        self.account.renameFolder("p", "r")
        self.assertEqual(self.account.listFolders(), ["INBOX", "r", "r/q"])

    def test_renameInbox(self) -> None:
        """Renaming INBOX moves its messages (flags, keywords) and leaves INBOX empty."""
        self.account.createFolder("INBOX/Child")
        self.store.deliver(["bob@example.com"], MSG)
        self.inbox.append(MSG, ["\\Seen", "Work"])
        self.inbox.scan()
        self.account.renameFolder("inbox", "Old")
        old = self.account.folder("Old").scan()
        self.assertEqual(len(old.messages), 2)
        self.assertEqual(old.messages[1].flags, frozenset({"\\Seen", "Work"}))
        self.assertEqual(self.inbox.scan().messages, [])
        self.assertIn("INBOX/Child", self.account.listFolders())
        self.store.deliver(["bob@example.com"], MSG)
        self.assertEqual(self.inbox.scan().messages[0].uid, 3)


class SubscriptionTests(StoreTestCase):
    """Subscriptions in Dovecot's file."""

    def test_subscribe(self) -> None:
        """Subscribe and unsubscribe write Dovecot's version 2 format."""
        self.account.subscribe("inbox")
        self.account.subscribe("Lists/Twisted")
        self.account.subscribe("\u00dcber")
        self.account.subscribe("Lists/Twisted")
        path = os.path.join(self.account.root, "subscriptions")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"V\t2\n\nINBOX\nLists\tTwisted\n&ANw-ber\n")
        self.assertEqual(self.account.subscriptions(), ["INBOX", "Lists/Twisted", "\u00dcber"])
        self.account.unsubscribe("Lists/Twisted")
        self.account.unsubscribe("never")
        self.assertEqual(self.account.subscriptions(), ["INBOX", "\u00dcber"])
        self.assertFalse(os.path.exists(path + ".lock"))
        self.assertRaises(InvalidFolderName, self.account.subscribe, "a.b")

    def test_dovecotFile(self) -> None:
        """A file Dovecot wrote is read, and kept when adding to it."""
        path = os.path.join(self.account.root, "subscriptions")
        with open(path, "wb") as f:
            f.write(b"V\t2\n\nINBOX\nArchive\nLists\tTwisted\n")
        self.assertEqual(self.account.subscriptions(), ["INBOX", "Archive", "Lists/Twisted"])
        self.account.subscribe("Sent")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"V\t2\n\nINBOX\nArchive\nLists\tTwisted\nSent\n")

    def test_specialFolders(self) -> None:
        """ensureSpecialFolders creates and subscribes the five, once; keeps existing."""
        self.account.createFolder("Sent")
        self.account.folder("Sent").append(MSG)
        self.account.ensureSpecialFolders()
        self.assertEqual(self.account.listFolders(),
                         ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"])
        self.assertEqual(self.account.subscriptions(), ["Drafts", "Trash", "Junk", "Archive"])
        self.assertEqual(len(self.account.folder("Sent").scan().messages), 1)
        self.assertEqual(self.account.specialUse()["Trash"], "\\Trash")
        self.account.deleteFolder("Trash")
        self.account.ensureSpecialFolders()
        self.assertNotIn("Trash", self.account.listFolders())


class CleanTmpTests(StoreTestCase):
    """L{MaildirStore.cleanTmp} removes leftovers of dead deliveries."""

    def put(self, folder: Folder, name: str, age: float = 0) -> str:
        """Create a tmp file C{age} seconds old."""
        path = os.path.join(folder.path, "tmp", name)
        with open(path, "wb") as f:
            f.write(b"partial")
        t = time.time() - age
        os.utime(path, (t, t))
        return path

    def test_byAge(self) -> None:
        """Files older than 36 hours go, younger ones stay; maxAge=0 removes all."""
        self.account.createFolder("F")
        folder = self.account.folder("F")
        old = self.put(self.inbox, "1.M1P1Q1.elsewhere", 37 * 3600)
        oldF = self.put(folder, "2.M1P1Q1.elsewhere", 40 * 3600)
        young = self.put(self.inbox, "3.M1P1Q1.elsewhere", 3600)
        self.assertEqual(self.store.cleanTmp(), 2)
        self.assertFalse(os.path.exists(old) or os.path.exists(oldF))
        self.assertTrue(os.path.exists(young))
        self.assertEqual(self.store.cleanTmp(maxAge=0), 1)
        self.assertFalse(os.path.exists(young))

    def test_deadWriter(self) -> None:
        """Our host's files from a dead process go; at start, also our own pid's."""
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        dead = self.put(self.inbox, f"5.M1P{proc.pid}Q1.mx.example")
        mine = self.put(self.inbox, f"5.M1P{os.getpid()}Q2.mx.example")
        other = self.put(self.inbox, f"5.M1P{proc.pid}Q3.otherhost")
        self.assertEqual(self.store.cleanTmp(), 1)
        self.assertFalse(os.path.exists(dead))
        self.assertTrue(os.path.exists(mine) and os.path.exists(other))
        self.assertEqual(self.store.cleanTmp(atStart=True), 1)
        self.assertFalse(os.path.exists(mine))
        self.assertTrue(os.path.exists(other))

    def test_interruptedDelete(self) -> None:
        """A folder directory left in tmp/ by an interrupted deletion is removed."""
        leftover = os.path.join(self.inbox.path, "tmp", "deleted.1.M1P1Q1.mx.example")
        os.makedirs(os.path.join(leftover, "cur"))
        self.assertEqual(self.store.cleanTmp(), 1)
        self.assertFalse(os.path.exists(leftover))

    def test_hostname(self) -> None:
        """The default host name is the machine's."""
        self.assertEqual(MaildirStore(self.dir).hostname, socket.gethostname())


class SyncWindowTests(StoreTestCase):
    """A directory changed twice in one clock tick keeps its mtime: the listing is
    re-read until the tick is surely over (L{listing.FINE_SYNC_WINDOW}, or
    L{listing.SYNC_WINDOW} where the file system has whole seconds only)."""

    def sneakIn(self, folder: object, mtimeNs: int) -> None:
        """Put a message into C{cur/} behind the store's back and give the directory
        the mtime C{mtimeNs}, as a change in the same tick would leave it."""
        cur = os.path.join(folder.path, "cur")  # type: ignore[attr-defined]
        name = f"{time.time_ns()}.M1P1.other,S=10:2,S"
        with open(os.path.join(cur, name), "wb") as f:
            f.write(b"X: y\r\n\r\nhi\r\n")
        os.utime(cur, ns=(mtimeNs, mtimeNs))

    def test_fineTimes(self) -> None:
        """With sub-second times, a change that did not move the mtime is seen within
        the fine window, and the listing is trusted once it has passed."""
        folder = self.inbox
        cur = os.path.join(folder.path, "cur")
        stamp = time.time_ns() // 1000 * 1000 + 1  # not a whole second
        os.utime(cur, ns=(stamp, stamp))
        self.assertEqual(len(folder.scan().messages), 0)
        self.sneakIn(folder, stamp)
        self.assertEqual(len(folder.scan().messages), 1)  # within the window: re-listed
        time.sleep(listing.FINE_SYNC_WINDOW + 0.05)
        self.assertEqual(len(folder.scan().messages), 1)  # trusted from now on
        self.sneakIn(folder, stamp)
        self.assertEqual(len(folder.scan().messages), 1)  # (not seen: mtime unmoved)
        os.utime(cur)  # any real change moves the mtime
        self.assertEqual(len(folder.scan().messages), 2)

    def test_wholeSeconds(self) -> None:
        """With whole-second times the window is SYNC_WINDOW: past the fine window a
        same-second change is still seen."""
        folder = self.inbox
        cur = os.path.join(folder.path, "cur")
        stamp = time.time_ns() // 1_000_000_000 * 1_000_000_000
        os.utime(cur, ns=(stamp, stamp))
        self.assertEqual(len(folder.scan().messages), 0)
        time.sleep(listing.FINE_SYNC_WINDOW + 0.05)
        self.sneakIn(folder, stamp)
        self.assertEqual(len(folder.scan().messages), 1)


class OwnChangeTests(StoreTestCase):
    """A flag change, claim or expunge made by this process patches the cached listing
    of C{cur/}, so the next scan does not re-read the directory; a change another
    program makes is still seen (at once when it moves the mtime, within the sync
    window after the last own change when it does not)."""

    def setUp(self) -> None:
        """An INBOX with three messages, its listing trusted; listings are counted."""
        super().setUp()
        for i in range(3):
            self.inbox.append(b"Subject: %d\r\n\r\nbody\r\n" % i, ["\\Seen"])
        self.age(self.inbox)
        self.msgs = self.inbox.scan(claimRecent=True).messages
        self.listed: list[str] = []
        real = foldersync._dirNames

        def counting(path: str) -> list[str]:
            self.listed.append(os.path.basename(path))
            return real(path)

        self.patch(foldersync, "_dirNames", counting)

    def sneakIn(self, keepMtime: bool) -> str:
        """Another program puts a message into C{cur/}; with C{keepMtime} the
        directory keeps the mtime it had (a change in the same clock tick)."""
        cur = os.path.join(self.inbox.path, "cur")
        before = os.stat(cur).st_mtime_ns
        key = f"{time.time_ns() // 1000}.M1P1Q1.other,S=10"
        with open(os.path.join(cur, key + ":2,F"), "wb") as f:
            f.write(b"X: y\r\n\r\nhi\r\n")
        if keepMtime:
            os.utime(cur, ns=(before, before))
        return key

    def test_ownRenameNotListed(self) -> None:
        """After setFlags the scan reports the new flags without listing C{cur/}."""
        info = self.inbox.scan().messages[1]
        self.inbox.setFlags(info.key, ["\\Seen", "\\Answered"])
        state = self.inbox.scan()
        self.assertEqual(state.messages[1].flags, {"\\Seen", "\\Answered"})
        self.assertNotIn("cur", self.listed)

    def test_ownExpungeNotListed(self) -> None:
        """After an expunge the scan drops the message without listing C{cur/}."""
        info = self.inbox.scan().messages[0]
        self.assertEqual(self.inbox.expunge([info.key]), [info.uid])
        self.assertEqual(len(self.inbox.scan().messages), 2)
        self.assertNotIn("cur", self.listed)

    def test_claimNotListed(self) -> None:
        """Claiming C{new/} moves files into C{cur/}: the next scan does not list
        C{cur/} for it."""
        self.store.deliver(["bob@example.com"], b"Subject: new\r\n\r\nx\r\n")
        state = self.inbox.scan(claimRecent=True)
        self.assertEqual(len(state.recent), 1)
        self.listed.clear()
        state = self.inbox.scan(claimRecent=True)
        self.assertEqual((len(state.messages), len(state.recent)), (4, 0))
        self.assertNotIn("cur", self.listed)

    def test_foreignChangeMovingMtimeSeen(self) -> None:
        """Another program's change after ours moves the mtime again: seen at once."""
        info = self.inbox.scan().messages[1]
        self.inbox.setFlags(info.key, ["\\Flagged"])
        time.sleep(0.01)
        key = self.sneakIn(keepMtime=False)
        self.assertIn(key, [m.key for m in self.inbox.scan().messages])

    def test_staleListingNotPatched(self) -> None:
        """A change another program made before ours (not yet scanned) is not hidden
        by our patched listing: the next scan reads the directory."""
        key = self.sneakIn(keepMtime=False)
        self.inbox.setFlags(self.msgs[1].key, ["\\Flagged"])
        self.assertIn(key, [m.key for m in self.inbox.scan().messages])

    def test_sameTickForeignChangeSeenAfterWindow(self) -> None:
        """A foreign change in the same tick as ours leaves the mtime unmoved: the
        directory is read again once the sync window after our change has passed."""
        info = self.inbox.scan().messages[1]
        self.inbox.setFlags(info.key, ["\\Flagged"])
        key = self.sneakIn(keepMtime=True)
        self.assertNotIn(key, [m.key for m in self.inbox.scan().messages])
        time.sleep(listing.SYNC_WINDOW + 0.05)
        self.assertIn(key, [m.key for m in self.inbox.scan().messages])
        self.assertIn("cur", self.listed)

    def test_steadyChangesBounded(self) -> None:
        """Own changes in a steady stream put the check off at most
        L{foldersync.OWN_CHANGES_MAX} seconds."""
        self.patch(foldersync, "OWN_CHANGES_MAX", 0.3)
        self.patch(listing, "SYNC_WINDOW", 0.3)
        self.patch(listing, "FINE_SYNC_WINDOW", 0.3)
        msgs = self.inbox.scan().messages
        self.inbox.setFlags(msgs[0].key, ["\\Flagged"])
        key = self.sneakIn(keepMtime=True)
        seen = False
        deadline = time.monotonic() + 0.6
        flags: list[str] = []
        while time.monotonic() < deadline and not seen:
            flags = [] if flags else ["\\Flagged"]
            self.inbox.setFlags(msgs[2].key, flags)  # every 50 ms: the window never ends
            time.sleep(0.05)
            seen = key in [m.key for m in self.inbox.scan().messages]
        self.assertTrue(seen)

    def test_checkAfterWindowReusesListing(self) -> None:
        """The reading after the window that finds the names the patched listing
        holds rebuilds nothing: the scan returns the same message objects."""
        built: list[str] = []
        real = foldersync._listMaildir

        def counting(path: str, *args: object, **kw: object) -> dict[str, str]:
            built.append(os.path.basename(path))
            return real(path, *args, **kw)  # type: ignore[arg-type]

        self.patch(foldersync, "_listMaildir", counting)
        self.inbox.setFlags(self.msgs[1].key, ["\\Flagged"])
        before = self.inbox.scan().messages
        time.sleep(listing.SYNC_WINDOW + 0.05)
        after = self.inbox.scan().messages
        self.assertIn("cur", self.listed)
        self.assertNotIn("cur", built)
        self.assertEqual([id(m) for m in after], [id(m) for m in before])

    def test_sameTickForeignRenameSeenAfterWindow(self) -> None:
        """Another program's flag change (a rename: as many names as before) in the
        same tick as ours is seen once the window has passed."""
        self.inbox.setFlags(self.msgs[1].key, ["\\Flagged"])
        cur = os.path.join(self.inbox.path, "cur")
        mtime = os.stat(cur).st_mtime_ns
        old = [n for n in os.listdir(cur) if n.startswith(self.msgs[2].key)][0]
        os.rename(os.path.join(cur, old), os.path.join(cur, self.msgs[2].key + ":2,DS"))
        os.utime(cur, ns=(mtime, mtime))
        time.sleep(listing.SYNC_WINDOW + 0.05)
        self.assertEqual(self.inbox.scan().messages[2].flags, {"\\Seen", "\\Draft"})


class ChangeJournalTests(OwnChangeTests):
    """Changes another pymaild process makes to C{cur/} reach this one through the
    folder's journal (L{pymaild.store.changelog}), without a reading of the directory;
    a gap in it (a foreign change, a journal that is not one) means a reading."""

    SCRIPT = (
        "import sys\n"
        "from pymaild.store import MaildirStore\n"
        "f = MaildirStore(sys.argv[1], hostname='mx.example').account("
        "'bob@example.com').folder('INBOX')\n"
        "st = f.scan()\n"
        "for i in map(int, sys.argv[2:]):\n"
        "    f.setFlags(st.messages[i].key, ['\\\\Seen', '\\\\Answered'])\n"
        "if not sys.argv[2:]:\n"
        "    f.expunge([st.messages[0].key])\n"
        "if f.checkDue() is not None:\n"
        "    import time\n"
        "    time.sleep(f.checkDue() + 0.01)\n"
        "    print(f.settle())\n"
    )

    def other(self, *indexes: int) -> None:
        """Another pymaild process answers the messages at C{indexes} (with none, it
        expunges the first message), then makes its check of the directory once the
        sync window is over (L{Folder.settle})."""
        out = subprocess.run([sys.executable, "-c", self.SCRIPT, self.store.root,
                              *map(str, indexes)], check=True, cwd=ROOT,
                             capture_output=True, text=True).stdout
        self.assertEqual(out, "None\n")  # its check made, none pending

    def test_otherProcessRenamesReplayed(self) -> None:
        """Two flag changes by another process: seen, and C{cur/} not read."""
        self.other(0, 2)
        state = self.inbox.scan()
        self.assertEqual([m.flags for m in state.messages],
                         [{"\\Seen", "\\Answered"}, {"\\Seen"}, {"\\Seen", "\\Answered"}])
        self.assertNotIn("cur", self.listed)
        self.assertGreater(state.highestModseq, 0)

    def test_otherProcessExpungeReplayed(self) -> None:
        """An expunge by another process: seen, and C{cur/} not read."""
        self.other()
        self.assertEqual(len(self.inbox.scan().messages), 2)
        self.assertNotIn("cur", self.listed)

    def test_bothProcessesChain(self) -> None:
        """Our change, then the other process's, then ours: one chain, no reading."""
        self.inbox.setFlags(self.msgs[1].key, ["\\Flagged"])
        self.other(0)
        self.inbox.setFlags(self.msgs[2].key, ["\\Draft"])
        flags = [m.flags for m in self.inbox.scan().messages]
        self.assertEqual(flags, [{"\\Seen", "\\Answered"}, {"\\Flagged"}, {"\\Draft"}])
        self.assertNotIn("cur", self.listed)

    def test_foreignChangeBreaksChain(self) -> None:
        """A change no journal tells of (Dovecot's, say) among them: read, and seen."""
        self.other(0)
        time.sleep(0.01)
        key = self.sneakIn(keepMtime=False)
        keys = [m.key for m in self.inbox.scan().messages]
        self.assertIn(key, keys)
        self.assertIn("cur", self.listed)

    def test_otherProcessCheckTrusted(self) -> None:
        """The other process's check of the directory, recorded in the journal, is
        trusted here too: no reading now, nor once the window has passed."""
        self.other(1)
        self.assertEqual(self.inbox.scan().messages[1].flags, {"\\Seen", "\\Answered"})
        time.sleep(listing.SYNC_WINDOW + 0.05)
        self.inbox.scan()
        self.assertNotIn("cur", self.listed)
        self.assertIsNone(self.inbox.checkDue())

    def test_brokenJournalRead(self) -> None:
        """A journal that is not one: the directory is read, the change seen."""
        self.other(0)
        from pymaild.store.changelog import CHANGES_NAME

        with open(os.path.join(self.inbox.path, CHANGES_NAME), "ab") as f:
            f.write(b"garbage\n")
        self.assertEqual(self.inbox.scan().messages[0].flags, {"\\Seen", "\\Answered"})
        self.assertIn("cur", self.listed)

    def test_changeDuringCheckNotTrusted(self) -> None:
        """A change found by L{Folder.settle}'s reading (made outside the
        folder's lock) is not taken for the listing it checks: the change is seen."""
        self.inbox.setFlags(self.msgs[1].key, ["\\Flagged"])
        time.sleep(listing.SYNC_WINDOW + 0.05)
        real = foldersync._dirNames
        keys: list[str] = []

        def racing(path: str) -> list[str]:
            if not keys:  # in the same tick as the last change: the mtime stays
                keys.append(self.sneakIn(keepMtime=True))
            return real(path)

        self.patch(foldersync, "_dirNames", racing)
        self.assertIsNone(self.inbox.settle())
        self.assertIn(keys[0], [m.key for m in self.inbox.scan().messages])


class TwoStoresTests(StoreTestCase):
    """Two L{MaildirStore} objects over one root in one process share the disk and
    nothing in memory (each owns its folder caches, locks and directory fsyncs), and
    each sees what the other did, as two processes would."""

    def setUp(self) -> None:
        """A second store over the first one's root, with the same account open."""
        super().setUp()
        self.other = MaildirStore(self.store.root, hostname="mx.example")
        self.otherInbox = self.other.account("bob@example.com").folder("INBOX")

    def test_ownState(self) -> None:
        """The two stores' folders for one path have different caches and locks; the
        folders of one store share theirs."""
        self.assertIsNot(self.inbox._c, self.otherInbox._c)
        self.assertIs(self.inbox._c, self.account.folder("INBOX")._c)
        self.assertIsNot(self.store.caches.accountLock(self.account.root),
                         self.other.caches.accountLock(self.account.root))
        self.assertIsNot(self.store.dirSyncs, self.other.dirSyncs)

    def test_eachSeesTheOther(self) -> None:
        """Deliveries, appends, flag changes and expunges made through one store are
        what the other's next scan reports, with the same UIDs."""
        self.store.deliver(["bob@example.com"], MSG)
        self.otherInbox.append(MSG, ["\\Seen"])
        mine, theirs = self.inbox.scan(), self.otherInbox.scan()
        self.assertEqual([(m.uid, m.key, m.flags) for m in mine.messages],
                         [(m.uid, m.key, m.flags) for m in theirs.messages])
        self.assertEqual(len(mine.messages), 2)
        first, second = mine.messages
        self.otherInbox.setFlags(first.key, ["\\Flagged"])
        self.assertEqual(self.inbox.scan().messages[0].flags, {"\\Flagged"})
        self.inbox.expunge([second.key])
        self.assertEqual([m.uid for m in self.otherInbox.scan().messages], [first.uid])
        self.other.account("bob@example.com").createFolder("Work")
        self.assertIn("Work", self.account.listFolders())

    def test_concurrentAppends(self) -> None:
        """Threads appending through both stores at once get distinct UIDs, and both
        stores list every message."""
        folders = [self.inbox, self.otherInbox] * 3
        barrier = threading.Barrier(len(folders))
        uids: list[int] = []
        errors: list[BaseException] = []

        def appender(folder: Folder) -> None:
            try:
                barrier.wait()
                for _ in range(10):
                    uids.append(folder.append(MSG))
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=appender, args=(f,)) for f in folders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(set(uids)), 60)
        for folder in (self.inbox, self.otherInbox):
            self.assertEqual(sorted(m.uid for m in folder.scan().messages), sorted(uids))
