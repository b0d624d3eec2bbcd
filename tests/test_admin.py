"""End-to-end tests of the ``pymaild-admin`` command through L{pymaild.admin.main}."""

from __future__ import annotations

import io
import os
import stat
import sys
import types
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pymaild import admin
from pymaild.auth.passwd import PasswdFile, verifyHash
from tests.test_auth_passwd import SHA512_LINE, fastHashing


class TTYInput(io.StringIO):
    """Standard input that claims to be a terminal."""

    def isatty(self) -> bool:
        """Pretend to be a terminal."""
        return True


class AdminTests(SynchronousTestCase):
    """Each subcommand, its output, its exit status and its errors."""

    def setUp(self) -> None:
        """A fresh data directory (not yet created) and cheap hashing."""
        fastHashing(self)
        self.data = os.path.abspath(self.mktemp())
        self.passwdPath = os.path.join(self.data, "passwd")

    def cli(self, *argv: str, stdin: str | io.StringIO = "") -> tuple[int, str, str]:
        """Run the command; return (status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        inp = stdin if isinstance(stdin, io.StringIO) else io.StringIO(stdin)
        status = admin.main(list(argv), stdin=inp, stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def assertOneLineError(self, err: str, *fragments: str) -> None:
        """C{err} is exactly one line, no traceback, containing C{fragments}."""
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("pymaild-admin: "), err)
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, err)

    def users(self) -> list[str]:
        """The users in the data directory's passwd file."""
        return PasswdFile(self.passwdPath).users()

    def test_addListPasswdDel(self) -> None:
        """A user's whole life: add, list, change password, delete."""
        status, out, err = self.cli(
            "--data",
            self.data,
            "user",
            "add",
            "Alice@Example.COM",
            "--password-stdin",
            stdin="first secret\n",
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "added user alice@example.com\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.passwdPath).st_mode), 0o600)
        pw = PasswdFile(self.passwdPath)
        self.assertTrue(pw.verify("alice@example.com", "first secret"))

        self.cli(
            "--data", self.data, "user", "add", "bob@example.com", "--password-stdin", stdin="b\n"
        )
        self.assertEqual(
            self.cli("--data", self.data, "user", "list"),
            (0, "alice@example.com\nbob@example.com\n", ""),
        )

        status, out, err = self.cli(
            "--data",
            self.data,
            "user",
            "passwd",
            "alice@example.com",
            "--password-stdin",
            stdin="second secret\r\nignored second line\n",
        )
        self.assertEqual((status, out, err), (0, "changed the password of alice@example.com\n", ""))
        self.assertTrue(pw.verify("alice@example.com", "second secret"))
        self.assertFalse(pw.verify("alice@example.com", "first secret"))

        status, out, err = self.cli("--data", self.data, "user", "del", "ALICE@example.com")
        self.assertEqual(status, 0, err)
        self.assertIn("deleted user alice@example.com", out)
        self.assertEqual(self.users(), ["bob@example.com"])

    def test_addExisting(self) -> None:
        """Adding an existing user fails with status 1 and leaves the file alone."""
        self.cli(
            "--data", self.data, "user", "add", "a@example.com", "--password-stdin", stdin="one\n"
        )
        with open(self.passwdPath, "rb") as f:
            before = f.read()
        status, out, err = self.cli(
            "--data", self.data, "user", "add", "A@EXAMPLE.COM", "--password-stdin", stdin="two\n"
        )
        self.assertEqual((status, out), (1, ""))
        self.assertOneLineError(err, "a@example.com", "already exists")
        with open(self.passwdPath, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_unknownUser(self) -> None:
        """passwd and del of an unknown user fail with status 1."""
        self.cli(
            "--data", self.data, "user", "add", "a@example.com", "--password-stdin", stdin="one\n"
        )
        status, _, err = self.cli(
            "--data", self.data, "user", "passwd", "b@example.com", "--password-stdin", stdin="x\n"
        )
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "no user b@example.com")
        status, _, err = self.cli("--data", self.data, "user", "del", "b@example.com")
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "no user b@example.com")

    def test_badAddress(self) -> None:
        """A malformed address fails with status 1 before any password is read."""
        status, _, err = self.cli(
            "--data", self.data, "user", "add", "no-domain", "--password-stdin", stdin="x\n"
        )
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "bad address")
        self.assertFalse(os.path.exists(self.passwdPath))

    def test_emptyPassword(self) -> None:
        """An empty password (or empty input) is refused with status 1."""
        for stdin in ("\n", ""):
            status, _, err = self.cli(
                "--data", self.data, "user", "add", "a@example.com", "--password-stdin", stdin=stdin
            )
            self.assertEqual(status, 1)
            self.assertOneLineError(err, "empty password")
        self.assertEqual(self.users(), [])

    def test_listEmpty(self) -> None:
        """Listing a data directory without a passwd file prints nothing."""
        self.assertEqual(self.cli("--data", self.data, "user", "list"), (0, "", ""))

    def test_hash(self) -> None:
        """hash prints one {ARGON2ID} hash of the password."""
        status, out, err = self.cli("hash", "--password-stdin", stdin="hash me\n")
        self.assertEqual((status, err), (0, ""))
        line = out.rstrip("\n")
        self.assertEqual(out, line + "\n")
        self.assertTrue(line.startswith("{ARGON2ID}$argon2id$v=19$"), line)
        self.assertTrue(verifyHash(line, "hash me"))
        self.assertFalse(verifyHash(line, "hash me\n"))

    def test_terminalPasswordTwice(self) -> None:
        """On a terminal the password is asked twice; a mismatch fails with status 1."""
        answers = iter(["tty pass", "tty pass", "one", "two"])
        prompts: list[str] = []

        def fakeGetpass(prompt: str = "") -> str:
            prompts.append(prompt)
            return next(answers)

        self.patch(admin, "getpass", fakeGetpass)
        status, _, err = self.cli(
            "--data", self.data, "user", "add", "t@example.com", stdin=TTYInput()
        )
        self.assertEqual(status, 0, err)
        self.assertEqual(prompts, ["Password: ", "Retype password: "])
        self.assertTrue(PasswdFile(self.passwdPath).verify("t@example.com", "tty pass"))
        status, _, err = self.cli(
            "--data", self.data, "user", "passwd", "t@example.com", stdin=TTYInput()
        )
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "do not match")
        self.assertTrue(PasswdFile(self.passwdPath).verify("t@example.com", "tty pass"))

    def test_terminalInterrupted(self) -> None:
        """Ctrl-D or Ctrl-C at the prompt fails cleanly."""

        def eof(prompt: str = "") -> str:
            raise EOFError()

        self.patch(admin, "getpass", eof)
        status, _, err = self.cli("hash", stdin=TTYInput())
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "no password")

    def test_noTerminalNeedsPasswordStdin(self) -> None:
        """Without a terminal and without --password-stdin it is a usage error."""
        status, _, err = self.cli(
            "--data", self.data, "user", "add", "a@example.com", stdin="piped\n"
        )
        self.assertEqual(status, 2)
        self.assertOneLineError(err, "--password-stdin")
        self.assertEqual(self.users(), [])

    def test_usageErrors(self) -> None:
        """Bad command lines give status 2 and one line on stderr."""
        for argv in (
            [],
            ["user"],
            ["user", "frobnicate"],
            ["user", "add"],
            ["user", "del"],
            ["user", "list", "extra"],
            ["--data", "x", "--config", "y", "user", "list"],
            ["--bogus", "user", "list"],
            ["hash", "extra"],
        ):
            status, out, err = self.cli(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertOneLineError(err, "error:")

    def test_help(self) -> None:
        """--help prints usage to stdout and exits 0."""
        status, out, err = self.cli("--help")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("usage: pymaild-admin", out)
        status, out, _ = self.cli("user", "add", "--help")
        self.assertEqual(status, 0)
        self.assertIn("--password-stdin", out)

    def test_defaultDataDirectory(self) -> None:
        """Without --data the passwd file is ./pymaild-data/passwd."""
        cwd = os.getcwd()
        os.mkdir(self.data)
        os.chdir(self.data)
        self.addCleanup(os.chdir, cwd)
        status, _, err = self.cli("user", "add", "d@example.com", "--password-stdin", stdin="pw\n")
        self.assertEqual(status, 0, err)
        self.assertEqual(
            PasswdFile(os.path.join(self.data, "pymaild-data", "passwd")).users(),
            ["d@example.com"],
        )

    def test_config(self) -> None:
        """--config uses the configuration's auth.passwd (relative to the file)."""
        os.makedirs(self.data)
        conf = os.path.join(self.data, "pymaild.toml")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(
                '[server]\ndata = "store"\ndomains = ["example.com"]\n'
                '[auth]\npasswd = "users/passwd"\n'
            )
        status, _, err = self.cli(
            "--config", conf, "user", "add", "c@example.com", "--password-stdin", stdin="pw\n"
        )
        self.assertEqual(status, 0, err)
        path = os.path.join(self.data, "users", "passwd")
        self.assertEqual(PasswdFile(path).users(), ["c@example.com"])
        self.assertEqual(self.cli("--config", conf, "user", "list"), (0, "c@example.com\n", ""))

    def test_configDefaultPasswd(self) -> None:
        """Without auth.passwd, --config uses <server.data>/passwd."""
        os.makedirs(self.data)
        conf = os.path.join(self.data, "pymaild.toml")
        with open(conf, "w", encoding="utf-8") as f:
            f.write('[server]\ndata = "store"\ndomains = ["example.com"]\n')
        status, _, err = self.cli(
            "--config", conf, "user", "add", "c@example.com", "--password-stdin", stdin="pw\n"
        )
        self.assertEqual(status, 0, err)
        path = os.path.join(self.data, "store", "passwd")
        self.assertEqual(PasswdFile(path).users(), ["c@example.com"])

    def test_configLoadedLazily(self) -> None:
        """--config calls pymaild.config.load(path) and reads Config.auth.passwd."""
        loaded: list[Any] = []
        fake = types.ModuleType("pymaild.config")

        def load(path: str) -> Any:
            loaded.append(path)
            auth = types.SimpleNamespace(passwd=self.passwdPath)
            return types.SimpleNamespace(auth=auth, data=self.data)

        fake.load = load  # type: ignore[attr-defined]
        import pymaild

        missing = object()
        realModule = sys.modules.get("pymaild.config", missing)
        realAttr = getattr(pymaild, "config", missing)
        sys.modules["pymaild.config"] = fake
        pymaild.config = fake  # type: ignore[attr-defined]

        def restore() -> None:
            if realModule is missing:
                sys.modules.pop("pymaild.config", None)
            else:
                sys.modules["pymaild.config"] = realModule  # type: ignore[assignment]
            if realAttr is missing:
                del pymaild.config  # type: ignore[attr-defined]
            else:
                pymaild.config = realAttr  # type: ignore[attr-defined]

        self.addCleanup(restore)
        status, _, err = self.cli("--config", "/some/file.toml", "user", "list")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(loaded, ["/some/file.toml"])

    def test_badConfig(self) -> None:
        """A missing or invalid configuration file fails with one line, status 1."""
        status, _, err = self.cli("--config", os.path.join(self.data, "nope.toml"), "user", "list")
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "nope.toml")
        os.makedirs(self.data)
        conf = os.path.join(self.data, "bad.toml")
        with open(conf, "w", encoding="utf-8") as f:
            f.write("[server\n")
        status, _, err = self.cli("--config", conf, "user", "list")
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "bad.toml")

    def test_locked(self) -> None:
        """A passwd file locked by someone else fails with status 1, naming the lock."""
        self.cli(
            "--data", self.data, "user", "add", "a@example.com", "--password-stdin", stdin="pw\n"
        )
        with open(self.passwdPath + ".lock", "w") as f:
            f.write("1\n")
        self.patch(PasswdFile, "lockTimeout", 0.1)
        status, _, err = self.cli("--data", self.data, "user", "del", "a@example.com")
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "passwd.lock")
        self.assertEqual(self.users(), ["a@example.com"])

    def test_unwritable(self) -> None:
        """An I/O error (the passwd path is a directory) fails with one line, status 1."""
        os.makedirs(self.passwdPath)
        status, _, err = self.cli("--data", self.data, "user", "list")
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "passwd")

    def test_keepsHandEditedLines(self) -> None:
        """Editing through the command keeps comments and Dovecot fields of other users."""
        os.makedirs(self.data)
        with open(self.passwdPath, "w", encoding="utf-8") as f:
            f.write("# managed by hand\n" + SHA512_LINE + "\n")
        status, _, err = self.cli(
            "--data", self.data, "user", "add", "n@example.com", "--password-stdin", stdin="pw\n"
        )
        self.assertEqual(status, 0, err)
        with open(self.passwdPath, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[:2], ["# managed by hand", SHA512_LINE])
        self.assertTrue(lines[2].startswith("n@example.com:{ARGON2ID}"))


class DomainTests(AdminTests):
    """C{user add} for a domain the server does not serve."""

    def test_foreignDomainRefused(self) -> None:
        """With --data, the domains of the users there are the served ones: another
        domain is refused in one line; --force adds it with a warning."""
        self.assertEqual(self.cli("--data", self.data, "user", "add", "postmaster@example.org",
                                  "--password-stdin", stdin="pw\n")[0], 0)
        status, out, err = self.cli("--data", self.data, "user", "add", "carol@other.test",
                                    "--password-stdin", stdin="pw\n")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLineError(err, "other.test", "example.org", "--force")
        self.assertEqual(self.users(), ["postmaster@example.org"])
        status, out, err = self.cli("--data", self.data, "user", "add", "carol@other.test",
                                    "--password-stdin", "--force", stdin="pw\n")
        self.assertEqual(status, 0, err)
        self.assertIn("warning", err)
        self.assertEqual(self.users(), ["postmaster@example.org", "carol@other.test"])

    def test_foreignDomainWithConfig(self) -> None:
        """With --config, server.domains decides."""
        os.makedirs(self.data)
        conf = os.path.join(self.data, "pymaild.toml")
        with open(conf, "w", encoding="utf-8") as f:
            f.write('[server]\ndata = "."\ndomains = ["example.com"]\n')
        status, _, err = self.cli("--config", conf, "user", "add", "c@other.test",
                                  "--password-stdin", stdin="pw\n")
        self.assertEqual(status, 1)
        self.assertOneLineError(err, "other.test", "example.com")
        status, _, err = self.cli("--config", conf, "user", "add", "c@example.com",
                                  "--password-stdin", stdin="pw\n")
        self.assertEqual(status, 0, err)

    def test_rootKeepsTheServersOwner(self) -> None:
        """Run as root, a new passwd file belongs to the data directory's owner."""
        if os.geteuid() != 0:
            self.skipTest("changing owners needs root")
        os.makedirs(self.data)
        os.chown(self.data, 4242, 4243)
        status, _, err = self.cli("--data", self.data, "user", "add", "a@example.org",
                                  "--password-stdin", stdin="pw\n")
        self.assertEqual(status, 0, err)
        st = os.stat(self.passwdPath)
        self.assertEqual((st.st_uid, st.st_gid), (4242, 4243))


class QuotaListTests(SynchronousTestCase):
    """C{user list} shows each limited user's usage and limits."""

    def setUp(self) -> None:
        """Cheap hashing and a data directory with two users."""
        fastHashing(self)
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        self.passwdPath = os.path.join(self.data, "passwd")
        pw = PasswdFile(self.passwdPath)
        pw.add("a@example.com", "pw-a")
        pw.add("b@example.com", "pw-b")

    def cli(self, *argv: str) -> tuple[int, str, str]:
        """Run pymaild-admin; return (status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        status = admin.main(list(argv), stdin=io.StringIO(""), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def test_passwdRules(self) -> None:
        """A user with passwd quota rules gets a tab-separated column; others none; the
        Maildir is counted and left unwritten (no maildirsize from the tool)."""
        from pymaild.store import MaildirStore
        from tests.support import setExtraFields

        setExtraFields(self.passwdPath, "a@example.com",
                       "userdb_quota_rule=*:storage=1M userdb_quota_rule2=*:messages=10")
        store = MaildirStore(os.path.join(self.data, "mail"))
        store.deliver(["a@example.com"], b"Subject: x\r\n\r\n" + b"y" * 2046 + b"\r\n")
        status, out, err = self.cli("--data", self.data, "user", "list")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "a@example.com\t2.0 KiB of 1 MiB (0%), 1 of 10 messages (10%)\n"
                              "b@example.com\n")
        root = store.account("a@example.com").root
        self.assertFalse(os.path.exists(os.path.join(root, "maildirsize")))

    def test_configDefault(self) -> None:
        """With --config, C{quota.rules} is everyone's default."""
        conf = os.path.join(self.data, "pymaild.toml")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(f'[server]\ndata = "{self.data}"\n[quota]\nrules = ["*:messages=5"]\n')
        status, out, _ = self.cli("--config", conf, "user", "list")
        self.assertEqual(status, 0)
        self.assertEqual(out, "a@example.com\t0 B, 0 of 5 messages (0%)\n"
                              "b@example.com\t0 B, 0 of 5 messages (0%)\n")
