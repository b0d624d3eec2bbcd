"""The PostgreSQL user directory (L{pymaild.auth.pgusers}) against a real PostgreSQL.

Each test starts a private server (L{tests.postgres_support.PostgreSQL}). The
behaviour the passwd file has is checked through the same callers: L{PasswdChecker} in
a thread runner,
L{Directory.resolve}, C{pymaild-admin}, and a real C{twistd pymaild} whose users and
aliases are in the database, driven by imaplib and smtplib.
"""

from __future__ import annotations

import imaplib
import io
import os
import poplib
import signal
import smtplib
import time
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from pymaild import admin
from pymaild.auth.checker import PasswdChecker
from pymaild.auth.directory import Directory
from pymaild.auth.passwd import UserExists, verifyHash
from pymaild.auth.pgusers import (
    NodeRecord,
    NoSuchNode,
    PostgresAliases,
    PostgresUsers,
    SchemaMissing,
)
from pymaild.errors import DatabaseUnavailable, NoSuchUser
from pymaild.smtp.delivery import Resolver
from pymaild.threads import ThreadRunner, makePool
from tests.postgres_support import PostgreSQL
from tests.support import ServerProcess, freePort, lowCostHashing
from tests.test_auth_passwd import DOVECOT_TEST123, SHA512_LINE


class PostgresCase(TestCase):
    """A private PostgreSQL for each test (the process guard allows none to outlive
    its test), with the tables created."""

    def setUp(self) -> None:
        """Start PostgreSQL; a directory over it with its tables; cheap hashing."""
        lowCostHashing(self)
        self.pg = PostgreSQL().start()
        self.addCleanup(self.pg.stop)
        self.users = PostgresUsers(self.pg.conninfo, poolSize=2)
        self.addCleanup(self.users.close)
        self.users.initSchema()

    def writeConfig(self, data: str, extra: str = "") -> str:
        """A configuration file naming the database as the user directory."""
        path = os.path.join(os.path.dirname(data), "pymaild.toml")
        with open(path, "w") as f:
            f.write(f'[server]\ndata = "{data}"\ndomains = ["example.org"]\n'
                    f'[auth]\nbackend = "postgresql"\ndatabase = "{self.pg.conninfo}"\n{extra}')
        return path


class UsersTests(PostgresCase):
    """The L{pymaild.auth.users.UserSource} methods and the node and alias tables."""

    def test_addLookupVerifyRemove(self) -> None:
        """A user's life: add (canonical), look up, verify, new password, remove."""
        self.assertEqual(self.users.add("Alice@Example.ORG", "pw1"), "alice@example.org")
        entry = self.users.lookup("ALICE@example.org")
        assert entry is not None
        self.assertEqual(entry.address, "alice@example.org")
        self.assertEqual(entry.scheme, "ARGON2ID")
        self.assertTrue(self.users.verify("alice@example.org", "pw1"))
        self.assertFalse(self.users.verify("alice@example.org", "wrong"))
        self.assertFalse(self.users.verify("nobody@example.org", "pw1"))
        self.assertRaises(UserExists, self.users.add, "alice@example.org", "x")
        self.users.setPassword("alice@example.org", "pw2")
        self.assertFalse(self.users.verify("alice@example.org", "pw1"))
        self.assertTrue(self.users.verify("alice@example.org", "pw2"))
        self.assertEqual(self.users.users(), ["alice@example.org"])
        self.users.remove("alice@example.org")
        self.assertIsNone(self.users.lookup("alice@example.org"))
        self.assertRaises(NoSuchUser, self.users.remove, "alice@example.org")
        self.assertRaises(NoSuchUser, self.users.setPassword, "alice@example.org", "x")
        self.assertIsNone(self.users.lookup("not an address"))

    def test_quotaRule(self) -> None:
        """A stored quota rule limits the user as the same rule in a passwd file does."""
        from pymaild.auth.quota import Quotas
        from pymaild.quotarules import QuotaLimits
        from pymaild.store import MaildirStore

        self.users.add("alice@example.org", "pw")
        self.users.setQuotaRule("alice@example.org", "*:messages=10")
        self.users.add("bob@example.org", "pw")
        store = MaildirStore(os.path.abspath(self.mktemp()))
        quotas = Quotas(self.users, store, QuotaLimits())
        self.assertEqual(quotas.report("alice@example.org", keep=False)[1],
                         QuotaLimits(messages=10))
        self.assertTrue(quotas.report("bob@example.org", keep=False)[1].unlimited)

    def test_oldHashUpgraded(self) -> None:
        """A Dovecot SHA512-CRYPT hash copied in verifies and becomes ARGON2ID."""
        address, field = SHA512_LINE.split(":")[0], SHA512_LINE.split(":")[1]
        self.users._write("INSERT INTO pymaild_users (address, password) VALUES (%s, %s)",
                          (address, field))
        self.assertFalse(self.users.verify(address, "wrong"))
        self.assertEqual(self.users.lookup(address).scheme, "SHA512-CRYPT")
        self.assertTrue(self.users.verify(address, DOVECOT_TEST123))
        entry = self.users.lookup(address)
        self.assertEqual(entry.scheme, "ARGON2ID")
        self.assertTrue(verifyHash(entry.password, DOVECOT_TEST123))

    def test_nodesAndOwners(self) -> None:
        """Nodes are added and changed; a user's owner is a known node or none."""
        self.users.setNode(NodeRecord("n1", "127.0.0.2", 1143, 1110, 1587, 1024))
        self.users.setNode(NodeRecord("n2", "127.0.0.3"))
        self.users.add("alice@example.org", "pw", node="n1")
        self.users.add("bob@example.org", "pw")
        self.assertEqual(self.users.owner("alice@example.org"),
                         NodeRecord("n1", "127.0.0.2", 1143, 1110, 1587, 1024))
        self.assertIsNone(self.users.owner("bob@example.org"))
        self.users.setOwner("bob@example.org", "n2")
        self.assertEqual(self.users.owner("bob@example.org").address, "127.0.0.3")
        self.users.setNode(NodeRecord("n2", "127.0.0.4", lmtp_port=2424))
        self.assertEqual(self.users.owner("bob@example.org").lmtp_port, 2424)
        self.assertEqual([n.name for n in self.users.nodes()], ["n1", "n2"])
        self.assertRaises(NoSuchNode, self.users.setOwner, "bob@example.org", "n9")
        self.assertRaises(NoSuchNode, self.users.add, "carol@example.org", "pw", node="n9")
        self.assertRaises(NoSuchNode, self.users.node, "n9")
        self.assertRaises(NoSuchUser, self.users.setOwner, "carol@example.org", "n1")

    def test_aliases(self) -> None:
        """Aliases read through L{PostgresAliases} as through the aliases file."""
        self.users.addAlias("Info@example.org", "alice@example.org")
        self.users.addAlias("info@example.org", "bob")
        self.users.addAlias("@example.net", "alice@example.org")
        aliases = PostgresAliases(self.users)
        self.assertEqual(aliases.lookup("info@example.org"),
                         ("alice@example.org", "bob@example.org"))
        self.assertIsNone(aliases.lookup("sales@example.org"))
        self.assertEqual(aliases.catchAll("example.net"), ("alice@example.org",))
        self.assertIsNone(aliases.catchAll("example.org"))
        self.users.removeAlias("info@example.org", "bob")
        self.assertEqual(aliases.lookup("info@example.org"), ("alice@example.org",))

    def test_addressesOf(self) -> None:
        """The aliases in the database that reach a user are the user's addresses (for
        vacation), through chains of aliases, and a target written without its domain;
        catch-alls and aliases that reach someone else do not count."""
        for address in ("alice@example.org", "bob@example.org"):
            self.users.add(address, "pw")
        self.users.addAlias("info@example.org", "alice@example.org")
        self.users.addAlias("sales@example.org", "info@example.org")
        self.users.addAlias("sales@example.org", "bob")
        self.users.addAlias("ali@example.org", "Alice")
        self.users.addAlias("@example.org", "alice@example.org")
        self.users.addAlias("other@example.org", "bob@example.org")
        aliases = PostgresAliases(self.users)
        self.assertEqual(aliases.sourcesOf("alice@example.org", ["example.org"]),
                         ["ali@example.org", "info@example.org"])
        resolver = Resolver(Directory(self.users, ["example.org"]), aliases)
        self.assertEqual(sorted(resolver.addressesOf("alice@example.org")),
                         ["ali@example.org", "info@example.org", "sales@example.org"])
        self.assertEqual(sorted(resolver.addressesOf("bob@example.org")),
                         ["other@example.org", "sales@example.org"])

    def test_answersKept(self) -> None:
        """A node's directory keeps its answers C{cacheTTL} seconds: a change made
        elsewhere counts once they are older, a forget() (SIGHUP) or a change through
        the same object at once; the owner and the move mark come from one query;
        passwords are always read."""
        now = [1000.0]
        cached = PostgresUsers(self.pg.conninfo, poolSize=1, cacheTTL=5)
        self.addCleanup(cached.close)
        cached.cache.timer = lambda: now[0]
        n1, n2 = NodeRecord("n1", "127.0.0.2"), NodeRecord("n2", "127.0.0.3")
        self.users.setNode(n1)
        self.users.setNode(n2)
        self.users.add("alice@example.org", "pw", node="n1")
        sent = cached.queries
        self.assertEqual(cached.route("alice@example.org"), (False, n1))
        self.assertEqual(cached.owner("Alice@Example.org"), n1)
        self.assertFalse(cached.isMoving("alice@example.org"))
        self.assertEqual(cached.lookup("alice@example.org").node, "n1")
        self.assertIsNone(cached.lookup("bob@example.org"))
        self.assertTrue(cached.isNodeAddress("127.0.0.3"))
        self.assertFalse(cached.isNodeAddress("127.0.0.9"))
        self.assertFalse(cached.isNodeAddress("127.0.0.3", other="n2"))
        self.assertFalse(cached.isNodeAddress("not an address"))
        self.assertEqual(cached.queries - sent, 3)  # alice, bob, the nodes
        self.users.setMoving("alice@example.org", True)
        self.users.setOwner("alice@example.org", "n2")
        self.users.add("bob@example.org", "pw")
        now[0] += 4.9
        self.assertEqual(cached.route("alice@example.org"), (False, n1))
        self.assertIsNone(cached.lookup("bob@example.org"))
        self.assertEqual(cached.queries - sent, 3)
        now[0] += 0.2
        self.assertEqual(cached.route("alice@example.org"), (True, n2))
        self.assertIsNotNone(cached.lookup("bob@example.org"))
        self.users.setMoving("alice@example.org", False)
        self.assertEqual(cached.route("alice@example.org"), (True, n2))
        self.assertEqual(cached.forget(), "user database answers forgotten")
        self.assertEqual(cached.route("alice@example.org"), (False, n2))
        cached.setOwner("alice@example.org", "n1")
        self.assertEqual(cached.owner("alice@example.org"), n1)
        self.users.setOwner("alice@example.org", "n2")
        self.assertEqual(cached.owner("alice@example.org"), n1)
        self.assertEqual(cached.owner("alice@example.org", fresh=True), n2)
        self.users.setPassword("alice@example.org", "new")
        self.assertTrue(cached.verify("alice@example.org", "new"))
        self.assertEqual((cached.cache.hits, cached.cache.misses), (9, 7))

    def test_directoryResolves(self) -> None:
        """L{Directory} over the database: exact, +tag, postmaster, unknown, foreign."""
        self.users.add("alice@example.org", "pw")
        directory = Directory(self.users, ["example.org"])
        self.assertEqual(directory.resolve("Alice+news@example.org"), ["alice@example.org"])
        self.assertEqual(directory.resolve("postmaster"), ["alice@example.org"])
        self.assertEqual(directory.resolve("nobody@example.org"), [])
        self.assertEqual(directory.resolve("alice@elsewhere.example"), [])

    def test_schemaMissing(self) -> None:
        """Before C{db init} every query fails as L{SchemaMissing}, an L{OSError}."""
        self.users._write("DROP TABLE pymaild_users, pymaild_aliases, pymaild_nodes,"
                          " pymaild_schema", ())
        self.assertIsNone(self.users.schemaVersion())
        e = self.assertRaises(SchemaMissing, self.users.lookup, "alice@example.org")
        self.assertIsInstance(e, OSError)
        self.assertIn("db init", str(e))
        self.users.initSchema()
        self.assertEqual(self.users.schemaVersion(), 1)

    def test_databaseDown(self) -> None:
        """A database nobody listens at fails fast as L{DatabaseUnavailable}."""
        users = PostgresUsers(f"host=127.0.0.1 port={freePort()} user=x dbname=x",
                              timeout=1.0)
        self.addCleanup(users.close)
        started = time.monotonic()
        self.assertRaises(DatabaseUnavailable, users.lookup, "alice@example.org")
        self.assertLess(time.monotonic() - started, 10)

    @defer.inlineCallbacks
    def test_checkerInThreads(self) -> Any:
        """L{PasswdChecker} over the database, verifying in a thread pool."""
        self.users.add("alice@example.org", "pw")
        pool = makePool("test-auth", 2)
        pool.start()
        self.addCleanup(pool.stop)
        checker = PasswdChecker(self.users, ThreadRunner(reactor, pool))
        avatar = yield checker.requestAvatarId(UsernamePassword(b"Alice@example.org", b"pw"))
        self.assertEqual(avatar, "alice@example.org")
        for name, pw in ((b"alice@example.org", b"bad"), (b"nobody@example.org", b"pw"),
                         (b"\xff", b"pw")):
            yield self.assertFailure(
                checker.requestAvatarId(UsernamePassword(name, pw)), UnauthorizedLogin)


class AdminTests(PostgresCase):
    """C{pymaild-admin} on the PostgreSQL directory, through a configuration file."""

    def cli(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        """Run the command; return (status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        status = admin.main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def test_initNodesUsers(self) -> None:
        """db init, node set/list, user add --node, user owner, list, passwd, del."""
        self.users._write("DROP TABLE pymaild_users, pymaild_aliases, pymaild_nodes,"
                          " pymaild_schema", ())
        config = self.writeConfig(os.path.abspath(self.mktemp()))
        status, out, err = self.cli("--config", config, "user", "list")
        self.assertEqual(status, 1)
        self.assertIn("db init", err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertEqual(self.cli("--config", config, "db", "init")[:2],
                         (0, "user database ready (schema version 1)\n"))
        self.assertEqual(self.cli("--config", config, "db", "init")[0], 0)
        self.assertEqual(
            self.cli("--config", config, "node", "set", "n1", "127.0.0.2", "--lmtp", "2424"),
            (0, "node n1 at 127.0.0.2\n", ""))
        self.assertEqual(self.cli("--config", config, "node", "set", "n2", "not-ip")[0], 1)
        status, out, err = self.cli("--config", config, "user", "add", "alice@example.org",
                                    "--node", "n1", "--password-stdin", stdin="pw\n")
        self.assertEqual((status, out), (0, "added user alice@example.org\n"), err)
        status, out, err = self.cli("--config", config, "user", "add", "bob@example.org",
                                    "--node", "n9", "--password-stdin", stdin="pw\n")
        self.assertEqual(status, 1)
        self.assertIn("no node n9", err)
        self.assertEqual(self.cli("--config", config, "user", "list")[1], "alice@example.org\n")
        self.assertEqual(self.users.owner("alice@example.org").lmtp_port, 2424)
        self.assertTrue(self.users.verify("alice@example.org", "pw"))
        self.cli("--config", config, "node", "set", "n2", "127.0.0.3")
        self.assertEqual(self.cli("--config", config, "user", "owner", "alice@example.org",
                                  "n2")[0], 0)
        self.assertEqual(self.users.owner("alice@example.org").name, "n2")
        status, out, _ = self.cli("--config", config, "node", "list")
        self.assertEqual(out.splitlines()[1],
                         "n2 127.0.0.3 imap=143 pop3=110 submission=587 lmtp=24")
        self.assertEqual(self.cli("--config", config, "user", "passwd", "alice@example.org",
                                  "--password-stdin", stdin="new\n")[0], 0)
        self.assertTrue(self.users.verify("alice@example.org", "new"))
        self.assertEqual(self.cli("--config", config, "user", "del", "alice@example.org")[0], 0)
        self.assertEqual(self.users.users(), [])

    def test_passwdBackendRefusesDatabaseCommands(self) -> None:
        """Without the PostgreSQL directory, db and node commands say what is needed."""
        data = os.path.abspath(self.mktemp())
        status, _out, err = self.cli("--data", data, "db", "init")
        self.assertEqual(status, 1)
        self.assertIn('auth.backend = "postgresql"', err)
        status, _out, err = self.cli("--data", data, "user", "add", "a@example.org",
                                     "--node", "n1", "--password-stdin", stdin="pw\n")
        self.assertEqual(status, 1)
        self.assertIn("--node needs", err)


class ServerTests(PostgresCase):
    """A real C{twistd pymaild} whose users and aliases are in PostgreSQL."""

    def test_loginAndDelivery(self) -> None:
        """IMAP LOGIN checks the database's hash; SMTP delivers to a database user and
        through a database alias; an unknown user is refused; no postmaster is made."""
        self.users.add("alice@example.org", "wonderland")
        self.users.add("bob@example.org", "builder")
        self.users.addAlias("info@example.org", "alice")
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        server = ServerProcess(data, listeners=("smtp", "imap"),
                               extra=["--config", self.writeConfig(data)]).start()
        self.addCleanup(server.stop)
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            for rcpt in ("alice@example.org", "info@example.org"):
                s.sendmail("x@remote.example", [rcpt], b"Subject: pg\r\n\r\nhello\r\n")
            s.mail("x@remote.example")
            self.assertEqual(s.rcpt("nobody@example.org")[0], 550)
        imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
        self.assertRaises(imaplib.IMAP4.error, imap.login, "alice@example.org", "wrong")
        imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
        imap.login("alice@example.org", "wonderland")
        typ, data = imap.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"2"]))
        imap.logout()
        self.assertEqual(self.users.users(), ["alice@example.org", "bob@example.org"])

    def test_answersKeptUntilHUP(self) -> None:
        """With C{auth.database_cache_ttl} an hour, a user removed from the database is
        still known to the running server; after SIGHUP it is not."""
        self.users.add("alice@example.org", "wonderland")
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        server = ServerProcess(data, listeners=("smtp",), extra=[
            "--config", self.writeConfig(data, "database_cache_ttl = 3600\n")]).start()
        self.addCleanup(server.stop)

        def rcpt() -> int:
            """RCPT TO alice's answer code."""
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
                s.ehlo("client.example")
                s.mail("x@remote.example")
                return int(s.rcpt("alice@example.org")[0])

        self.assertEqual(rcpt(), 250)
        self.users.remove("alice@example.org")
        self.assertEqual(rcpt(), 250)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "user database answers forgotten" not in server.log():
            self.assertLess(time.monotonic(), deadline, server.log()[-2000:])
            time.sleep(0.1)
        self.assertEqual(rcpt(), 550)

    def test_databaseDownIsTemporary(self) -> None:
        """With the database stopped, RCPT gets a 4xx and LOGIN a NO [UNAVAILABLE], not
        a crash or a traceback; LOGIN works again once the database is back."""
        self.users.add("alice@example.org", "wonderland")
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        server = ServerProcess(data, listeners=("smtp", "imap", "pop3", "submission"),
                               extra=["--config", self.writeConfig(data)]).start()
        self.addCleanup(server.stop)
        self.pg.halt()
        try:
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60) as s:
                s.ehlo("client.example")
                s.mail("x@remote.example")
                code, _msg = s.rcpt("alice@example.org")
                self.assertTrue(400 <= code < 500, code)
            imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=60)
            e = self.assertRaises(imaplib.IMAP4.error, imap.login, "alice@example.org",
                                  "wonderland")
            self.assertIn("[UNAVAILABLE]", str(e))
            pop = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=60)
            pop.user("alice@example.org")
            e = self.assertRaises(poplib.error_proto, pop.pass_, "wonderland")
            self.assertIn(b"[SYS/TEMP]", e.args[0])
            with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=60) as s:
                s.ehlo("client.example")
                e = self.assertRaises(smtplib.SMTPAuthenticationError, s.login,
                                      "alice@example.org", "wonderland")
                self.assertEqual(e.smtp_code, 454)
        finally:
            self.pg.launch()
        # The pool reconnects with a backoff (a second or a few): poll until it has.
        deadline = time.monotonic() + 30
        while True:
            imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
            try:
                imap.login("alice@example.org", "wonderland")
                break
            except imaplib.IMAP4.error as e:
                self.assertIn("[UNAVAILABLE]", str(e))
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        imap.logout()
        self.assertNotIn("Traceback", server.log())
