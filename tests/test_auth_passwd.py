"""Tests for L{pymaild.auth.passwd}: hash schemes, the passwd file, rehash, reload, writes."""

from __future__ import annotations

import os
import stat
import threading
import time
from typing import Any

from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pymaild import files
from pymaild.auth import passwd
from pymaild.auth.passwd import (
    PasswdFile,
    PasswdLocked,
    UserExists,
    hashPassword,
    verifyHash,
)
from pymaild.errors import AddressError, NoSuchUser
from pymaild.files import DotLock

# Hashes written by Dovecot itself, all for the password "test": the vectors of
# Dovecot's own unit test, src/auth/test-password-scheme.c.
DOVECOT_TEST = "test"
DOVECOT_VECTORS = {
    "CRYPT": "{CRYPT}//EsnG9FLTKjo",
    "MD5": "{MD5}$1$wmyrgRuV$kImF6.9MAFQNHe23kq5vI/",
    "MD5-CRYPT": "{MD5-CRYPT}$1$GgvxyNz8$OjZhLh4P.gF1lxYEbLZ3e/",
    "BLF-CRYPT": "{BLF-CRYPT}$2y$05$11ipvo5dR6CwkzwmhwM26OXgzXwhV2PyPuLV.Qi31ILcRcThQpEiW",
    "ARGON2I": "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$f2iuP4aUeNMrgu34fhOkkg"
    "$1XSZZMWlIs0zmE+snlUIcLADO3GXbA2O/hsQmmc317k",
    "ARGON2ID": "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$vBb99oJ12p3WAdYlaMHz1A"
    "$jtFOtbo/sYV9OSlTxDo/nVNq3uArHd5GJSEx0ty85Cc",
}

# Dovecot-generated hashes of "test123" (doveadm pw output kept as test data by
# PostfixAdmin's CryptTest), covering the schemes the vectors above lack.
DOVECOT_TEST123 = "test123"
DOVECOT_VECTORS_123 = {
    "SHA512-CRYPT": "{SHA512-CRYPT}$6$MViNQUSbWyXWL9wZ$63VsBU2a/ZFb9f/dK4EmaXABE9jAcNltR7y6a2tX"
    "LKoV5F5jMezno.2KpmtD3U0FDjfa7A.pkCluVMlZJ.F64.",
    "SHA256-CRYPT": "{SHA256-CRYPT}$5$CFly6wzfn2az3U8j$EhfQPTdjpMGAisfCjCKektLke5GGEmtdLVaCZSmsKw2",
    "CRYPT-BLF": "{CRYPT}$2y$05$ORqzr0AagWr25v3ixHD5QuMXympIoNTbipEFZz6aAmovGNoij2vDO",
    "MD5-CRYPT": "{MD5-CRYPT}$1$AIjpWveQ$2s3eEAbZiqkJhMYUIVR240",
    "no prefix (DES)": "abRcsZmlrrKFA",
    "SHA512-CRYPT.B64": "{SHA512-CRYPT.B64}JDYkR2JwY3NiZXNMWk9DdERXbiRYdXlhdEZTdy9oa3lyUFE0d24w"
    "enpGQTZrSlpTUE9QVWdPcjVRUC40bTRMTjEzdy81aWMvWTdDZllRMWVqSWlhNkd3Q2Z0ZnNjZEFpam9OWjl3OU5tLw==",
    "BLF-CRYPT.B64": "{BLF-CRYPT.B64}JDJ5JDA1JEhlR0lBeGFHR2tNUGxjRWpyeFc0eU9oRjZZZ1NuTWVOTXFx"
    "NWp4bmFwVjUwdGU3c2x2L1VT",
    "SHA256-CRYPT.B64": "{SHA256-CRYPT.B64}JDUkUTZZS1ZzZS5sSVJoLndodCR6TWNOUVFVVkhtTmM1ME1SQk9T"
    "R3BEeGpRY2M1TzJTQ1lkbWhPN1YxeHlD",
}

# Generated with passlib and written in Dovecot's format, for "Correct horse 9".
PASSLIB_PASSWORD = "Correct horse 9"
PASSLIB_VECTORS = {
    "ARGON2ID p=2": "{ARGON2ID}$argon2id$v=19$m=1024,t=2,p=2$P2fMuTfmvDemNKb0fg/B+A"
    "$IhRSLagH0LD9HJ5R3JajBmU16UWPghnycnvTheB7cWs",
    "ARGON2I": "{ARGON2I}$argon2i$v=19$m=1024,t=2,p=1$iNGakzKGEOL8XwthTOldiw"
    "$u6Iz2snwvUAWzllm0PuiBtrFRrWEVVMNjiT28YqcbNw",
    "BLF-CRYPT 2b": "{BLF-CRYPT}$2b$04$6vgSSOsx5uuhxU0aTAGwt.2TschNi0EjiPF.s.QUaDAeVA77yQrby",
    "BLF-CRYPT 2y": "{BLF-CRYPT}$2y$04$oYcr8z9tmgMJ6QxMFZYSJeif0mdw4ElbSFfcNN2g74TwCBddBgojy",
    "SHA512-CRYPT": "{SHA512-CRYPT}$6$Y6ot2WKlonQ8y3wm$GyLf7awWslCBPBjHZg.VXG0/qQxVe2C00AXYV"
    "VGBIXeYBIojQYBCSTVNWq4kVWP6qZaggrsRf1B8JDeyUKt991",
    "SHA512-CRYPT rounds": "{SHA512-CRYPT}$6$rounds=10000$rDm6AShJ4XUheW2u$o0ThJTq3itUBS7Gp7RiL"
    "/uLzXzz9zZdJ78obKUDT2PHqUEPvCj.OB6sZFQ4PjU0.LlmHPlpDulyUCSlHpODlf/",
    "sha512-crypt lower-case": "{sha512-crypt}$6$Y6ot2WKlonQ8y3wm$GyLf7awWslCBPBjHZg.VXG0/qQxVe2"
    "C00AXYVVGBIXeYBIojQYBCSTVNWq4kVWP6qZaggrsRf1B8JDeyUKt991",
    "SHA256-CRYPT": "{SHA256-CRYPT}$5$LEsi8/fNI8/jH9v8$z2IEgzv.80LRR1jl8utKektd7dsxdx.YJuTdEeQzf3/",
    "MD5-CRYPT": "{MD5-CRYPT}$1$qbPUdNse$AiCiU47F8KCli2zACNts./",
    "CRYPT (DES)": "{CRYPT}inIBOSo/B7uuY",
    "CRYPT holding SHA512": "{CRYPT}$6$Y6ot2WKlonQ8y3wm$GyLf7awWslCBPBjHZg.VXG0/qQxVe2C00AXYVVG"
    "BIXeYBIojQYBCSTVNWq4kVWP6qZaggrsRf1B8JDeyUKt991",
}

# bcrypt of 72 "x" (the longest password bcrypt takes).
BCRYPT_72X = "{BLF-CRYPT}$2y$04$WTdkKyEsV.clV/5MoEqOiuk8iIS77aUkSkKDWH9/FRbUuWmipg7nK"

SHA512_LINE = (
    "bob@example.com:" + DOVECOT_VECTORS_123["SHA512-CRYPT"] + ":1000:1000:Bob:/home/bob::"
    "userdb_quota_rule=*:storage=1G"
)


def fastHashing(case: SynchronousTestCase) -> None:
    """Make new argon2 hashes cheap for the rest of C{case}; restore the defaults after."""
    passwd.configureHashing(memory_cost=64, rounds=1, parallelism=1)
    case.addCleanup(passwd.configureHashing)


def countDummies(case: SynchronousTestCase) -> list[int]:
    """Count calls of L{passwd.dummyVerify} (still doing the real work) during C{case}."""
    calls: list[int] = []
    real = passwd.dummyVerify

    def counting() -> bool:
        calls.append(1)
        return real()

    case.patch(passwd, "dummyVerify", counting)
    return calls


def writeFile(path: str, text: str) -> None:
    """Replace C{path} with C{text} the way an editor might (new inode)."""
    tmp = path + ".edit"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class HashSchemeTests(SynchronousTestCase):
    """Each supported scheme, in Dovecot's exact format, verifies right and wrong passwords."""

    def setUp(self) -> None:
        """Cheap new hashes for the tests that make some."""
        fastHashing(self)

    def assertScheme(self, name: str, field: str, password: str) -> None:
        """C{field} accepts C{password} and refuses near misses."""
        self.assertTrue(verifyHash(field, password), f"{name}: right password refused")
        self.assertFalse(verifyHash(field, "x" + password), f"{name}: wrong password taken")
        self.assertFalse(verifyHash(field, password.swapcase()), f"{name}: case ignored")
        if "$" in field:  # DES crypt reads only 8 characters (see test_desTruncates)
            self.assertFalse(verifyHash(field, password + "x"), f"{name}: longer one taken")
        self.assertFalse(verifyHash(field, ""), f"{name}: empty password taken")

    def test_dovecotVectors(self) -> None:
        """Hashes from Dovecot's own test suite verify: CRYPT, MD5, MD5-CRYPT, BLF, ARGON2."""
        for name, field in DOVECOT_VECTORS.items():
            self.assertScheme(name, field, DOVECOT_TEST)

    def test_dovecotGeneratedHashes(self) -> None:
        """doveadm-made SHA512/SHA256-CRYPT, CRYPT with bcrypt, no prefix and .B64 verify."""
        for name, field in DOVECOT_VECTORS_123.items():
            self.assertScheme(name, field, DOVECOT_TEST123)

    def test_passlibHashesInDovecotFormat(self) -> None:
        """passlib-made hashes with Dovecot prefixes ($2b$, rounds=, lower-case scheme) verify."""
        for name, field in PASSLIB_VECTORS.items():
            self.assertScheme(name, field, PASSLIB_PASSWORD)

    def test_desTruncates(self) -> None:
        """DES crypt compares only 8 characters, as libc does (one reason to rehash it)."""
        self.assertTrue(verifyHash("{CRYPT}inIBOSo/B7uuY", "Correct horse 9"))
        self.assertTrue(verifyHash("{CRYPT}inIBOSo/B7uuY", "Correct anything"))
        self.assertFalse(verifyHash("{CRYPT}inIBOSo/B7uuY", "Correcx horse 9"))

    def test_bytesAndUnicodePasswords(self) -> None:
        """A password verifies as text or as its UTF-8 bytes, for new and old hashes."""
        field = hashPassword("pässwörd")
        self.assertTrue(verifyHash(field, "pässwörd"))
        self.assertTrue(verifyHash(field, "pässwörd".encode()))
        self.assertFalse(verifyHash(field, "pässwörd".encode("latin-1")))
        self.assertTrue(verifyHash(DOVECOT_VECTORS_123["SHA512-CRYPT"], b"test123"))

    def test_bcryptOver72Bytes(self) -> None:
        """A password over 72 bytes fails against bcrypt (no truncation, no exception)."""
        self.assertTrue(verifyHash(BCRYPT_72X, "x" * 72))
        self.assertFalse(verifyHash(BCRYPT_72X, "x" * 73))
        self.assertFalse(verifyHash(BCRYPT_72X, "x" * 500))

    def test_unsupportedScheme(self) -> None:
        """PLAIN and other unsupported schemes never verify, at the cost of a dummy hash."""
        calls = countDummies(self)
        self.assertFalse(verifyHash("{PLAIN}test", "test"))
        self.assertFalse(verifyHash("{SSHA512}abcdef", "test"))
        self.assertEqual(len(calls), 2)
        self.flushLoggedErrors()

    def test_schemeMismatch(self) -> None:
        """A hash under the wrong scheme name is refused, even with the right password."""
        argon2i = DOVECOT_VECTORS["ARGON2I"].replace("{ARGON2I}", "{ARGON2ID}")
        self.assertFalse(verifyHash(argon2i, DOVECOT_TEST))
        md5 = DOVECOT_VECTORS["MD5-CRYPT"].replace("{MD5-CRYPT}", "{SHA512-CRYPT}")
        self.assertFalse(verifyHash(md5, DOVECOT_TEST))
        bcrypt = DOVECOT_VECTORS["BLF-CRYPT"].replace("{BLF-CRYPT}", "{MD5-CRYPT}")
        self.assertFalse(verifyHash(bcrypt, DOVECOT_TEST))

    def test_malformedHashes(self) -> None:
        """Garbage, truncated hashes, bad .B64 and an empty field give False, not an error."""
        for field in (
            "",
            "{CRYPT}",
            "{SHA512-CRYPT}$6$",
            "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$!!$!!",
            "{BLF-CRYPT}$2y$05$short",
            "{SHA512-CRYPT.B64}***",
            "{SHA512-CRYPT.XYZ}abc",
            "not a hash at all",
        ):
            self.assertFalse(verifyHash(field, "test"), field)

    def test_passwordsPasslibRefuses(self) -> None:
        """A NUL in a DES-crypt password or a huge password is a failure, not an error."""
        self.assertFalse(verifyHash(DOVECOT_VECTORS["CRYPT"], "te\x00st"))
        self.assertFalse(verifyHash(DOVECOT_VECTORS_123["SHA512-CRYPT"], "y" * 100_000))

    def test_hashPasswordFormat(self) -> None:
        """New hashes are {ARGON2ID} PHC strings that verify and need no rehash."""
        field = hashPassword("secret")
        self.assertTrue(field.startswith("{ARGON2ID}$argon2id$v=19$"), field)
        self.assertTrue(verifyHash(field, "secret"))
        self.assertFalse(passwd.needsRehash(field))
        self.assertNotEqual(field, hashPassword("secret"))

    def test_emptyPasswordRefused(self) -> None:
        """hashPassword refuses an empty password."""
        self.assertRaises(ValueError, hashPassword, "")
        self.assertRaises(ValueError, hashPassword, b"")

    def test_needsRehash(self) -> None:
        """Every scheme but ARGON2ID is due for an upgrade, including ARGON2I and .B64,
        and so is ARGON2ID made with other parameters than the current ones (Dovecot's
        vector: m=65536, t=3); one made with the current parameters is not."""
        for field in [*DOVECOT_VECTORS.values(), *DOVECOT_VECTORS_123.values()]:
            self.assertTrue(passwd.needsRehash(field), field)
        self.assertFalse(passwd.needsRehash(hashPassword("current cost")))

    def test_splitScheme(self) -> None:
        """The scheme is upper-cased; no prefix means CRYPT, Dovecot's passwd-file default."""
        self.assertEqual(passwd.splitScheme("{blf-crypt}$2y$x"), ("BLF-CRYPT", "$2y$x"))
        self.assertEqual(passwd.splitScheme("abRcsZmlrrKFA"), ("CRYPT", "abRcsZmlrrKFA"))
        self.assertEqual(passwd.splitScheme("{}x"), ("CRYPT", "{}x"))


class DefaultCostTests(SynchronousTestCase):
    """The real (default) argon2 parameters are used when no test hook is active."""

    def test_defaultParameters(self) -> None:
        """With the defaults, new hashes use OWASP's argon2id cost (19 MiB, 2 passes,
        1 lane), and verify."""
        passwd.configureHashing()
        field = hashPassword("default cost")
        self.assertTrue(field.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"), field)
        self.assertTrue(verifyHash(field, "default cost"))
        self.assertFalse(verifyHash(field, "default cosT"))


class PasswdFileTests(SynchronousTestCase):
    """Reading, adding, changing and removing users in the passwd file."""

    def setUp(self) -> None:
        """A passwd path in a fresh directory, with cheap hashing."""
        fastHashing(self)
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "passwd")
        self.pw = PasswdFile(self.path)

    def read(self) -> str:
        """The file's current text."""
        with open(self.path, encoding="utf-8") as f:
            return f.read()

    def test_missingFileIsEmpty(self) -> None:
        """A passwd file that does not exist yet has no users."""
        self.assertEqual(self.pw.users(), [])
        self.assertIsNone(self.pw.lookup("alice@example.com"))
        self.assertFalse(self.pw.verify("alice@example.com", "x"))

    def test_noClusterOwner(self) -> None:
        """A passwd file's mailboxes are this server's: no owner node, never moving,
        for a user and for an unknown address alike (the L{UserSource} answers the
        tap's cluster routing asks of every user source)."""
        self.pw.add("alice@example.com", "s3cret")
        for address in ("alice@example.com", "nobody@example.com"):
            self.assertIsNone(self.pw.owner(address))
            self.assertIsNone(self.pw.owner(address, fresh=True))
            self.assertEqual(self.pw.route(address), (False, None))

    def test_addCreatesPrivateFile(self) -> None:
        """add writes a canonical line with an {ARGON2ID} hash into a 0600 file."""
        self.assertEqual(self.pw.add("Alice@EXAMPLE.com", "s3cret"), "alice@example.com")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        user, field, rest = self.read().rstrip("\n").split(":", 2)
        self.assertEqual(user, "alice@example.com")
        self.assertTrue(field.startswith("{ARGON2ID}$argon2id$"))
        self.assertEqual(rest, "::::")
        self.assertTrue(self.pw.verify("alice@example.com", "s3cret"))
        self.assertEqual(self.pw.users(), ["alice@example.com"])

    def test_addCreatesDirectory(self) -> None:
        """add creates a missing parent directory."""
        pw = PasswdFile(os.path.join(self.dir, "new", "passwd"))
        pw.add("a@example.com", "pw")
        self.assertEqual(pw.users(), ["a@example.com"])

    def test_addExisting(self) -> None:
        """Adding a user that exists, in any case, fails and changes nothing."""
        self.pw.add("alice@example.com", "one")
        before = self.read()
        self.assertRaises(UserExists, self.pw.add, "ALICE@example.com", "two")
        self.assertEqual(self.read(), before)

    def test_addBadAddress(self) -> None:
        """A malformed address is refused with AddressError."""
        for bad in ("alice", "a/b@example.com", "@example.com", "a@-bad-.com"):
            self.assertRaises(AddressError, self.pw.add, bad, "pw")
        self.assertFalse(os.path.exists(self.path))

    def test_parseFields(self) -> None:
        """All Dovecot fields are read; the extra field may hold colons."""
        writeFile(self.path, SHA512_LINE + "\n")
        entry = self.pw.lookup("BOB@Example.com")
        assert entry is not None
        self.assertEqual(entry.address, "bob@example.com")
        self.assertEqual(entry.scheme, "SHA512-CRYPT")
        self.assertEqual(
            (entry.uid, entry.gid, entry.gecos, entry.home), ("1000", "1000", "Bob", "/home/bob")
        )
        self.assertEqual(entry.shell, "")
        self.assertEqual(entry.extra, "userdb_quota_rule=*:storage=1G")
        self.assertEqual(entry.lineno, 1)

    def test_shortLinesAndOddLines(self) -> None:
        """Two-field lines work; comments, blanks, domainless names and duplicates are skipped."""
        writeFile(
            self.path,
            "# users\n\n"
            f"carol@example.com:{DOVECOT_VECTORS['MD5-CRYPT']}\n"
            "localonly:{PLAIN}x::::::\n"
            f"Carol@example.com:{DOVECOT_VECTORS['CRYPT']}\n"
            "  # indented comment\n",
        )
        self.assertEqual(self.pw.users(), ["carol@example.com"])
        entry = self.pw.lookup("carol@example.com")
        assert entry is not None
        self.assertEqual(entry.password, DOVECOT_VECTORS["MD5-CRYPT"])
        self.assertEqual(entry.lineno, 3)
        self.assertIsNone(self.pw.lookup("localonly"))
        self.assertIsNone(self.pw.lookup("not an address"))

    def test_setPasswordKeepsFields(self) -> None:
        """setPassword replaces only the hash; other fields and lines stay as they were."""
        writeFile(self.path, "# head\n" + SHA512_LINE + "\nzed@example.com:{CRYPT}x\n")
        self.pw.setPassword("bob@example.com", "new pass")
        lines = self.read().splitlines()
        self.assertEqual(lines[0], "# head")
        self.assertEqual(lines[2], "zed@example.com:{CRYPT}x")
        user, field, rest = lines[1].split(":", 2)
        self.assertEqual(user, "bob@example.com")
        self.assertTrue(field.startswith("{ARGON2ID}"))
        self.assertEqual(rest, "1000:1000:Bob:/home/bob::userdb_quota_rule=*:storage=1G")
        self.assertTrue(self.pw.verify("bob@example.com", "new pass"))
        self.assertFalse(self.pw.verify("bob@example.com", DOVECOT_TEST123))

    def test_setPasswordUnknown(self) -> None:
        """setPassword of an unknown user raises NoSuchUser."""
        self.pw.add("a@example.com", "pw")
        self.assertRaises(NoSuchUser, self.pw.setPassword, "b@example.com", "pw")

    def test_remove(self) -> None:
        """remove drops the user's line (and duplicates of it) and keeps everything else."""
        writeFile(
            self.path,
            "# head\n" + SHA512_LINE + "\nzed@example.com:{CRYPT}x\nBob@example.com:{CRYPT}y\n",
        )
        self.assertEqual(self.pw.remove("bob@EXAMPLE.com"), "bob@example.com")
        self.assertEqual(self.read(), "# head\nzed@example.com:{CRYPT}x\n")
        self.assertIsNone(self.pw.lookup("bob@example.com"))
        self.assertRaises(NoSuchUser, self.pw.remove, "bob@example.com")

    def test_verifyWrongPasswordNoDummy(self) -> None:
        """A known user with a wrong password runs the real hash, not the dummy."""
        writeFile(self.path, SHA512_LINE + "\n")
        calls = countDummies(self)
        self.assertFalse(self.pw.verify("bob@example.com", "wrong"))
        self.assertEqual(calls, [])

    def test_verifyUnknownUserTakesDummyPath(self) -> None:
        """Unknown users and malformed names cost one dummy verification each."""
        self.pw.add("alice@example.com", "pw")
        calls = countDummies(self)
        self.assertFalse(self.pw.verify("nobody@example.com", "pw"))
        self.assertEqual(len(calls), 1)
        self.assertFalse(self.pw.verify("no domain", "pw"))
        self.assertEqual(len(calls), 2)

    def test_rehashOnLogin(self) -> None:
        """A login against SHA512-CRYPT rewrites just that line with {ARGON2ID}."""
        writeFile(self.path, "# users\n\n" + SHA512_LINE + "\nzed@example.com:{CRYPT}x\n")
        self.assertTrue(self.pw.verify("bob@example.com", DOVECOT_TEST123))
        lines = self.read().splitlines()
        self.assertEqual(lines[:2], ["# users", ""])
        self.assertEqual(lines[3], "zed@example.com:{CRYPT}x")
        user, field, rest = lines[2].split(":", 2)
        self.assertTrue(field.startswith("{ARGON2ID}$argon2id$"), field)
        self.assertEqual(rest, "1000:1000:Bob:/home/bob::userdb_quota_rule=*:storage=1G")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertTrue(self.pw.verify("bob@example.com", DOVECOT_TEST123))
        self.assertFalse(self.pw.verify("bob@example.com", "wrong"))

    def test_rehashEveryOldScheme(self) -> None:
        """Every scheme but ARGON2ID, and ARGON2ID of another cost, is upgraded on
        login to the current cost; an ARGON2ID line of the current cost is not touched."""
        vectors = [(n, f, DOVECOT_TEST) for n, f in DOVECOT_VECTORS.items()]
        vectors += [(n, f, DOVECOT_TEST123) for n, f in DOVECOT_VECTORS_123.items()]
        vectors.append(("current", hashPassword(DOVECOT_TEST), DOVECOT_TEST))
        for name, field, password in vectors:
            writeFile(self.path, f"u@example.com:{field}:::::\n")
            before = os.stat(self.path)
            self.assertTrue(self.pw.verify("u@example.com", password), name)
            entry = self.pw.lookup("u@example.com")
            assert entry is not None
            if name == "current":
                self.assertEqual(entry.password, field)
                self.assertEqual(os.stat(self.path).st_ino, before.st_ino)
            else:
                self.assertEqual(entry.scheme, "ARGON2ID", name)
                self.assertNotEqual(entry.password, field, name)
                self.assertFalse(passwd.needsRehash(entry.password), name)
                self.assertTrue(verifyHash(entry.password, password), name)

    def test_noRehashOnFailure(self) -> None:
        """A failed login leaves an old-scheme line alone."""
        writeFile(self.path, SHA512_LINE + "\n")
        before = self.read()
        self.assertFalse(self.pw.verify("bob@example.com", "wrong"))
        self.assertEqual(self.read(), before)

    def test_rehashLeavesNewerPasswordAlone(self) -> None:
        """If the password changed between verification and rewrite, the newer one stays."""
        writeFile(self.path, SHA512_LINE + "\n")
        stale = self.pw.lookup("bob@example.com")
        assert stale is not None
        newer = SHA512_LINE.replace(DOVECOT_VECTORS_123["SHA512-CRYPT"], DOVECOT_VECTORS["CRYPT"])
        writeFile(self.path, newer + "\n")
        self.pw._upgrade(stale, DOVECOT_TEST123)
        self.assertEqual(self.read(), newer + "\n")

    def test_rehashFailureDoesNotFailLogin(self) -> None:
        """When the file cannot be rewritten (locked), the login still succeeds."""
        writeFile(self.path, SHA512_LINE + "\n")
        self.pw.lockTimeout = 0.1
        with open(self.path + ".lock", "w") as f:
            f.write("99999\n")
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertTrue(self.pw.verify("bob@example.com", DOVECOT_TEST123))
        self.assertEqual(self.read(), SHA512_LINE + "\n")
        texts = [formatEvent(e) for e in events]
        self.assertTrue(any("could not upgrade" in t and "passwd.lock" in t for t in texts), texts)

    def test_reloadAfterExternalEdit(self) -> None:
        """A user added by replacing the file is seen at the next lookup."""
        self.pw.add("alice@example.com", "pw")
        self.assertIsNone(self.pw.lookup("bob@example.com"))
        writeFile(self.path, self.read() + SHA512_LINE + "\n")
        self.assertIsNotNone(self.pw.lookup("bob@example.com"))
        self.assertEqual(self.pw.users(), ["alice@example.com", "bob@example.com"])

    def test_reloadInPlaceSameSize(self) -> None:
        """An in-place edit of the same size is seen once the mtime (ns) changes."""
        writeFile(self.path, "aaa@example.com:{CRYPT}x\n")
        self.assertEqual(self.pw.users(), ["aaa@example.com"])
        mtime = os.stat(self.path).st_mtime_ns
        with open(self.path, "r+", encoding="utf-8") as f:
            f.write("bbb")
        os.utime(self.path, ns=(mtime + 1000, mtime + 1000))
        self.assertEqual(self.pw.users(), ["bbb@example.com"])

    def test_reloadAfterDelete(self) -> None:
        """A deleted file means no users."""
        self.pw.add("alice@example.com", "pw")
        os.unlink(self.path)
        self.assertEqual(self.pw.users(), [])

    def test_noReadWhenUnchanged(self) -> None:
        """Lookups do not re-read an unchanged file (one stat each)."""
        self.pw.add("alice@example.com", "pw")
        reads: list[int] = []
        real = self.pw._read

        def counting() -> Any:
            reads.append(1)
            return real()

        self.pw._read = counting  # type: ignore[method-assign]
        for _ in range(5):
            self.assertIsNotNone(self.pw.lookup("alice@example.com"))
        self.assertEqual(reads, [])

    def test_atomicWriteKeepsCommentsAndBytes(self) -> None:
        """A write keeps comments, blank lines and undecodable bytes; leaves no temp files."""
        raw = b"# caf\xe9 (latin-1 comment)\n\n# another\n" + SHA512_LINE.encode() + b"\n"
        with open(self.path, "wb") as f:
            f.write(raw)
        os.chmod(self.path, 0o644)
        self.pw.add("new@example.com", "pw")
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(raw), data)
        self.assertTrue(data[len(raw) :].startswith(b"new@example.com:{ARGON2ID}"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(sorted(os.listdir(self.dir)), ["passwd"])

    def test_failedWriteLeavesFileAlone(self) -> None:
        """If the rename fails, the old file is intact and no temp or lock file is left."""
        writeFile(self.path, SHA512_LINE + "\n")

        def failingRename(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(files.os, "rename", failingRename)
        self.assertRaises(OSError, self.pw.add, "new@example.com", "pw")
        self.assertEqual(self.read(), SHA512_LINE + "\n")
        self.assertEqual(sorted(os.listdir(self.dir)), ["passwd"])

    def test_lockHeldTimesOut(self) -> None:
        """A fresh lock held by someone else makes writes fail with PasswdLocked."""
        self.pw.add("a@example.com", "pw")
        self.pw.lockTimeout = 0.2
        with open(self.path + ".lock", "w") as f:
            f.write("1\n")
        started = time.monotonic()
        self.assertRaises(PasswdLocked, self.pw.add, "b@example.com", "pw")
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        self.assertEqual(self.pw.users(), ["a@example.com"])

    def test_staleLockBroken(self) -> None:
        """A lock file older than 120 s is removed and the write goes ahead."""
        lock = self.path + ".lock"
        with open(lock, "w") as f:
            f.write("1\n")
        old = time.time() - 200
        os.utime(lock, (old, old))
        self.pw.add("a@example.com", "pw")
        self.assertEqual(self.pw.users(), ["a@example.com"])
        self.assertFalse(os.path.exists(lock))

    def test_lockWaitsForRelease(self) -> None:
        """A write waits for a lock released by another thread, then proceeds."""
        lock = DotLock(self.path)
        lock.acquire()
        timer = threading.Timer(0.2, lock.release)
        timer.start()
        self.addCleanup(timer.join)
        self.pw.add("a@example.com", "pw")
        self.assertEqual(self.pw.users(), ["a@example.com"])

    def test_concurrentWritersLoseNothing(self) -> None:
        """Two PasswdFile objects on one file adding users from threads keep every user."""
        other = PasswdFile(self.path)
        errors: list[BaseException] = []

        def adder(pw: PasswdFile, prefix: str) -> None:
            try:
                for i in range(5):
                    pw.add(f"{prefix}{i}@example.com", "pw")
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=adder, args=(self.pw, "a")),
            threading.Thread(target=adder, args=(other, "b")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(self.pw.users()), 10)
