"""Tests for the store's on-disk formats: uidlist, keywords, flags, subscriptions, names.

Fixtures are written exactly as Dovecot writes these files; what pymaild writes must
parse to the same thing and be byte-identical where Dovecot's format is fixed.
"""

import os
import shutil
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from pymaild.errors import InvalidFolderName
from pymaild.files import DotLock, LockTimeout
from pymaild.store import names, subscriptions
from pymaild.store.flags import (
    InvalidFlag,
    Keywords,
    TooManyKeywords,
    buildName,
    infoLetters,
    normaliseFlags,
    splitName,
)
from pymaild.store.uidlist import UidList

DOVECOT_UIDLIST = (
    b"3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"
    b"25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394\n"
    b"25017 W2481 :1276533073.M242911P3632.kurkku,S=2460,W=2481\n"
    b"25019 G0123456789abcdef0123456789abcdef W77 :1276533080.M1P9.kurkku\n"
    b"25021 :1276533090.M1P9.kurkku,S=10,W=12\n"
)
DOVECOT_KEYWORDS = b"0 $Junk\n1 $NonJunk\n3 Work\n"
DOVECOT_SUBSCRIPTIONS = b"V\t2\n\nINBOX\nArchive\nLists\tTwisted\n&ANw-ber\tAlt\n"


class UidListTests(SynchronousTestCase):
    """L{UidList} reads and writes Dovecot's C{dovecot-uidlist} version 3."""

    def test_parseDovecot(self) -> None:
        """A Dovecot-written uidlist yields its UIDVALIDITY, next UID, GUID and records."""
        ul = UidList.parse(DOVECOT_UIDLIST)
        self.assertEqual(ul.uidvalidity, 1275660208)
        self.assertEqual(ul.nextuid, 25022)
        self.assertEqual(ul.guid, "3085f01b7f11094c501100008c4a11c1")
        self.assertEqual([r.uid for r in ul.records], [25006, 25017, 25019, 25021])
        self.assertEqual(ul.records[0].key, "1276528487.M364837P9451.kurkku,S=1355,W=1394")
        self.assertEqual(ul.records[1].ext, ("W2481",))
        self.assertEqual(ul.records[2].extValue("W"), "77")
        self.assertEqual(ul.records[2].extValue("G"), "0123456789abcdef0123456789abcdef")
        self.assertIs(ul.byKey["1276533090.M1P9.kurkku,S=10,W=12"], ul.records[3])
        self.assertFalse(ul.needsRewrite)

    def test_serialiseIsDovecotFormat(self) -> None:
        """Writing a parsed Dovecot uidlist reproduces it byte for byte."""
        self.assertEqual(UidList.parse(DOVECOT_UIDLIST).serialise(), DOVECOT_UIDLIST)

    def test_roundTrip(self) -> None:
        """A uidlist pymaild builds parses back to the same header and records."""
        ul = UidList(1700000000, guid="00112233445566778899aabbccddeeff")
        ul.add("1.M1P1Q1.h,S=3,W=3")
        ul.add("2.M1P1Q2.h", ["W10"])
        data = ul.serialise()
        self.assertEqual(data, b"3 V1700000000 N3 G00112233445566778899aabbccddeeff\n"
                               b"1 :1.M1P1Q1.h,S=3,W=3\n2 W10 :2.M1P1Q2.h\n")
        again = UidList.parse(data)
        self.assertEqual((again.uidvalidity, again.nextuid, again.guid),
                         (ul.uidvalidity, ul.nextuid, ul.guid))
        self.assertEqual(again.records, ul.records)

    def test_nextUidFromRecords(self) -> None:
        """Lines appended in place (header N stale) still raise the next UID."""
        data = b"3 V5 N2 Gab\n1 :a\n2 :b\n7 :c\n"
        self.assertEqual(UidList.parse(data).nextuid, 8)

    def test_dropKeepsNextUid(self) -> None:
        """Dropping the highest record never lets its UID be given again."""
        ul = UidList.parse(b"3 V5 N3 Gab\n1 :a\n2 :b\n")
        ul.drop({"b"})
        self.assertEqual(ul.nextuid, 3)
        self.assertEqual(ul.add("c").uid, 3)
        self.assertIn(b"N4", ul.serialise())

    def test_partialLastLine(self) -> None:
        """A last line without its newline (a writer mid-append) is ignored."""
        ul = UidList.parse(b"3 V5 N2 Gab\n1 :a\n2 :b")
        self.assertEqual([r.key for r in ul.records], ["a"])

    def test_damagedLines(self) -> None:
        """Bad or unordered lines are skipped, bad extension fields dropped (as Dovecot
        does), and the file marked for rewriting."""
        ul = UidList.parse(b"3 V5 N9 Gab\n1 :a\nxx :b\n3 :c\n2 :d\n4 lower W9 :e\n5 :f/g\n")
        self.assertEqual([r.key for r in ul.records], ["a", "c", "e"])
        self.assertEqual(ul.records[2].ext, ("W9",))
        self.assertTrue(ul.needsRewrite)

    def test_duplicateKey(self) -> None:
        """A file listed twice keeps the newer UID."""
        ul = UidList.parse(b"3 V5 N9 Gab\n1 :a\n2 :a\n")
        self.assertEqual([(r.uid, r.key) for r in ul.records], [(2, "a")])

    def test_version1(self) -> None:
        """Courier/Dovecot 1.0 version 1 files are read, flags part stripped."""
        ul = UidList.parse(b"1 1100000000 4\n1 a.b.c:2,S\n3 d.e.f\n")
        self.assertEqual(ul.uidvalidity, 1100000000)
        self.assertEqual(ul.nextuid, 4)
        self.assertEqual([(r.uid, r.key) for r in ul.records], [(1, "a.b.c"), (3, "d.e.f")])
        self.assertTrue(ul.needsRewrite)

    def test_badHeader(self) -> None:
        """Empty files, unknown versions or a missing UIDVALIDITY raise ValueError."""
        for data in (b"", b"\n", b"2 V1 N1\n", b"3 N5 Gab\n", b"x\n"):
            self.assertRaises(ValueError, UidList.parse, data)


class DotLockTests(SynchronousTestCase):
    """L{DotLock} is an O_EXCL dotlock with stale-lock takeover."""

    def setUp(self) -> None:
        """Make a scratch directory."""
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.target = os.path.join(self.dir, "dovecot-uidlist")

    def test_exclusive(self) -> None:
        """A held lock makes a second locker time out; released, it can be taken."""
        first = DotLock(self.target)
        first.acquire()
        with open(self.target + ".lock") as f:
            self.assertEqual(f.read().split(":")[0], str(os.getpid()))
        self.assertRaises(LockTimeout, DotLock(self.target, timeout=0.05).acquire)
        first.release()
        self.assertFalse(os.path.exists(self.target + ".lock"))
        with DotLock(self.target, timeout=0.05):
            self.assertTrue(os.path.exists(self.target + ".lock"))

    def test_staleByAge(self) -> None:
        """A lock file older than the stale time is taken over."""
        path = self.target + ".lock"
        with open(path, "w") as f:
            f.write("1:elsewhere")
        old = time.time() - 121
        os.utime(path, (old, old))
        with DotLock(self.target, timeout=0.5):
            with open(path) as f:
                self.assertTrue(f.read().startswith(f"{os.getpid()}:"))

    def test_staleByDeadPid(self) -> None:
        """A fresh lock naming a dead process on this host is taken over at once."""
        import socket
        import subprocess
        import sys
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        with open(self.target + ".lock", "w") as f:
            f.write(f"{proc.pid}:{socket.gethostname()}")
        with DotLock(self.target, timeout=0.5):
            pass

    def test_replace(self) -> None:
        """replace() puts the new content in place by renaming the lock file."""
        with open(self.target, "wb") as f:
            f.write(b"old")
        lock = DotLock(self.target, writePid=False)
        lock.acquire()
        lock.replace(b"new")
        with open(self.target, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertFalse(os.path.exists(self.target + ".lock"))
        lock.release()


class KeywordsTests(SynchronousTestCase):
    """L{Keywords} reads and writes C{dovecot-keywords}."""

    def test_parseDovecot(self) -> None:
        """Dovecot's C{<index> <name>} lines map to letters, holes allowed."""
        kw = Keywords.parse(DOVECOT_KEYWORDS)
        self.assertEqual(kw.letterOf("$Junk"), "a")
        self.assertEqual(kw.letterOf("$nonjunk"), "b")
        self.assertEqual(kw.letterOf("work"), "d")
        self.assertIsNone(kw.nameOf("c"))
        self.assertEqual(kw.names(), ("$Junk", "$NonJunk", "Work"))
        self.assertEqual(kw.flagsOf("Sadz"), frozenset({"\\Seen", "$Junk", "Work"}))

    def test_serialiseIsDovecotFormat(self) -> None:
        """Writing reproduces Dovecot's file byte for byte."""
        self.assertEqual(Keywords.parse(DOVECOT_KEYWORDS).serialise(), DOVECOT_KEYWORDS)

    def test_allocateFillsHoles(self) -> None:
        """New keywords take the first free slot; known ones keep theirs."""
        kw = Keywords.parse(DOVECOT_KEYWORDS)
        self.assertEqual(kw.allocate("Todo"), "c")
        self.assertEqual(kw.allocate("$JUNK"), "a")
        self.assertEqual(kw.allocate("Later"), "e")
        self.assertEqual(Keywords.parse(kw.serialise()).slots, kw.slots)

    def test_limit(self) -> None:
        """The 27th keyword raises TooManyKeywords."""
        kw = Keywords()
        for i in range(26):
            self.assertEqual(kw.allocate(f"k{i}"), chr(ord("a") + i))
        self.assertRaises(TooManyKeywords, kw.allocate, "k26")

    def test_badLines(self) -> None:
        """Lines without a number, a name, or with an index over 25 are skipped."""
        kw = Keywords.parse(b"x y\n5\n26 big\n2 ok\n")
        self.assertEqual(kw.names(), ("ok",))


class FlagTests(SynchronousTestCase):
    """File-name flag letters and IMAP flag names."""

    def test_splitName(self) -> None:
        """The key is the name up to C{:}; the info follows."""
        self.assertEqual(splitName("1.M2.h,S=3:2,FS"), ("1.M2.h,S=3", "2,FS"))
        self.assertEqual(splitName("1.M2.h"), ("1.M2.h", None))
        self.assertEqual(infoLetters("2,FS"), "FS")
        self.assertEqual(infoLetters("1,xyz"), "")
        self.assertEqual(infoLetters(None), "")

    def test_buildNameSorted(self) -> None:
        """Letters are deduplicated and sorted in ASCII order."""
        self.assertEqual(buildName("k", "zSaDFPS"), "k:2,DFPSaz")
        self.assertEqual(buildName("k", ""), "k:2,")

    def test_normaliseFlags(self) -> None:
        """System flags match case-insensitively, \\Recent is dropped, keywords kept."""
        letters, kws = normaliseFlags(["\\SEEN", "\\answered", "\\Recent", "$Junk", "$junk"])
        self.assertEqual(letters, frozenset("SR"))
        self.assertEqual(kws, ("$Junk",))

    def test_badFlags(self) -> None:
        """Unknown system flags, non-atoms and a bare string raise InvalidFlag."""
        for bad in (["\\Bogus"], ["two words"], ["a(b"], ["caf\u00e9"], [""], "\\Seen"):
            self.assertRaises(InvalidFlag, normaliseFlags, bad)


class SubscriptionsFormatTests(SynchronousTestCase):
    """The C{subscriptions} file in Dovecot's version 2 format."""

    def test_parseDovecot(self) -> None:
        """Levels separated by TAB, modified UTF-7 decoded."""
        self.assertEqual(subscriptions.parse(DOVECOT_SUBSCRIPTIONS),
                         ["INBOX", "Archive", "Lists/Twisted", "\u00dcber/Alt"])

    def test_serialiseIsDovecotFormat(self) -> None:
        """Writing the parsed names reproduces Dovecot's file byte for byte."""
        names_ = subscriptions.parse(DOVECOT_SUBSCRIPTIONS)
        self.assertEqual(subscriptions.serialise(names_), DOVECOT_SUBSCRIPTIONS)

    def test_tabEscapes(self) -> None:
        """Dovecot's \\x01 escapes are undone."""
        data = b"V\t2\n\na\x01tb\x011\nc\n"
        self.assertEqual(subscriptions.parse(data), ["a\tb\x01", "c"])

    def test_version1(self) -> None:
        """A file without header lists storage names with the Maildir++ separator."""
        self.assertEqual(subscriptions.parse(b"INBOX\nLists.Twisted\nSent\n\ninbox\n"),
                         ["INBOX", "Lists/Twisted", "Sent"])

    def test_empty(self) -> None:
        """An empty file or just the header means no subscriptions."""
        self.assertEqual(subscriptions.parse(b""), [])
        self.assertEqual(subscriptions.parse(subscriptions.VERSION2_HEADER), [])
        self.assertEqual(subscriptions.serialise([]), b"V\t2\n\n")


# (name, canonical name or None for invalid, on-disk directory or reason fragment)
NAME_TABLE = [
    ("INBOX", "INBOX", None),
    ("inbox", "INBOX", None),
    ("InBoX/Sub", "INBOX/Sub", ".INBOX.Sub"),
    ("Sent", "Sent", ".Sent"),
    ("Lists/Twisted", "Lists/Twisted", ".Lists.Twisted"),
    ("\u00dcber & Co", "\u00dcber & Co", ".&ANw-ber &- Co"),
    ("\u53f0\u5317/\u65e5\u672c\u8a9e", "\u53f0\u5317/\u65e5\u672c\u8a9e", ".&U,BTFw-.&ZeVnLIqe-"),
    ("~peter", "~peter", ".~peter"),
    ("a b", "a b", ".a b"),
    ("", None, "empty"),
    ("/a", None, "starts or ends"),
    ("a/", None, "starts or ends"),
    ("a//b", None, "empty hierarchy"),
    ("a.b", None, "'.'"),
    ("..", None, "'.'"),
    ("a/../b", None, "'.'"),
    (".hidden", None, "'.'"),
    ("a\\b", None, "backslash"),
    ("a\x00b", None, "control"),
    ("a\nb", None, "control"),
    ("a\x7fb", None, "control"),
    ("a*", None, "wildcard"),
    ("a%b", None, "wildcard"),
    ("x" * 255, None, "too long"),
    ("\u00e9" * 100, None, "too long"),
    ("x" * 254, "x" * 254, "." + "x" * 254),
    ("a\ud800", None, "surrogate"),
]


class NameTests(SynchronousTestCase):
    """Folder name validation and the Maildir++ directory names."""

    def test_table(self) -> None:
        """Each name is accepted with its canonical form and directory, or refused."""
        for name, canon, extra in NAME_TABLE:
            if canon is None:
                with self.assertRaises(InvalidFolderName, msg=repr(name)) as cm:
                    names.normalise(name)
                self.assertIn(extra, str(cm.exception), repr(name))
            else:
                self.assertEqual(names.normalise(name), canon, repr(name))
                if extra is not None:
                    self.assertEqual(names.toDirName(canon), extra)
                    self.assertEqual(names.fromDirName(extra), canon)

    def test_notText(self) -> None:
        """Non-str names are refused."""
        self.assertRaises(InvalidFolderName, names.normalise, b"INBOX")
        self.assertRaises(InvalidFolderName, names.normalise, None)

    def test_fromDirNameIgnores(self) -> None:
        """Entries that are not canonical folder directories map to None."""
        for entry in ("cur", ".", "..", ".a..b", ".a.", ".&AGE-", ".INBOX", ".&Jjo", ".a*"):
            self.assertIsNone(names.fromDirName(entry), entry)

    def test_parents(self) -> None:
        """parents() lists the ancestors, outermost first."""
        self.assertEqual(names.parents("a/b/c"), ["a", "a/b"])
        self.assertEqual(names.parents("a"), [])
