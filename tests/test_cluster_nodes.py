"""Two pymaild nodes sharing a PostgreSQL user directory, mail between them over LMTP.

Node C{a} listens on 127.0.0.1, node C{b} has its LMTP listener on 127.0.0.2; alice's
mailbox belongs to b, bob's to a. Mail for alice sent to a's MX is queued durably on a
and delivered to b over LMTP: at once while b is up, and after b comes back when it was
down (the queue retries every second here).
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from pymaild.auth.pgusers import NodeRecord, PostgresUsers
from tests.postgres_support import PostgreSQL
from tests.support import ROOT, ServerProcess, freePort, lowCostHashing

#: Seconds the nodes keep directory answers (auth.database_cache_ttl).
CACHE_TTL = 2
MESSAGE = b"From: x@remote.example\r\nSubject: to the owner\r\n\r\nhello\r\n"


def maildirNew(data: str, local: str) -> str:
    """The C{new/} directory of C{local@example.org} under a node's data directory."""
    return os.path.join(data, "mail", "example.org", local, "Maildir", "new")


def storedOn(data: str, local: str) -> list[str]:
    """The message files of C{local@example.org}'s INBOX on a node (C{new/} and C{cur/})."""
    names: list[str] = []
    for sub in ("new", "cur"):
        path = os.path.join(os.path.dirname(maildirNew(data, local)), sub)
        if os.path.isdir(path):
            names += os.listdir(path)
    return names


def waitFor(predicate: object, timeout: float = 60.0) -> bool:
    """Poll C{predicate()} until it is true or C{timeout} seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


class NodesCase(TestCase):
    """PostgreSQL, nodes a and b, alice on b and bob on a; node a running."""

    def setUp(self) -> None:
        """PostgreSQL with two nodes and two users; node a started."""
        lowCostHashing(self)
        self.pg = PostgreSQL().start()
        self.addCleanup(self.pg.stop)
        self.users = PostgresUsers(self.pg.conninfo, poolSize=1)
        self.addCleanup(self.users.close)
        self.users.initSchema()
        self.lmtp = {"a": freePort(), "b": freePort()}
        self.hosts = {"a": "127.0.0.1", "b": "127.0.0.2"}
        for name in ("a", "b"):
            self.users.setNode(NodeRecord(name, self.hosts[name], lmtp_port=self.lmtp[name]))
        self.users.add("alice@example.org", "pw", node="b")
        self.users.add("bob@example.org", "pw", node="a")
        base = os.path.abspath(self.mktemp())
        self.data = {n: os.path.join(base, n, "data") for n in ("a", "b")}
        self.servers: dict[str, ServerProcess] = {}
        self.start("a")

    def start(self, name: str, listeners: tuple[str, ...] = ("smtp",)) -> ServerProcess:
        """Start node C{name} (again), with its LMTP listener and C{listeners}."""
        data = self.data[name]
        os.makedirs(data, exist_ok=True)
        config = os.path.join(os.path.dirname(data), "pymaild.toml")
        with open(config, "w") as f:
            f.write(f'[auth]\nbackend = "postgresql"\ndatabase = "{self.pg.conninfo}"\n'
                    f'database_cache_ttl = {CACHE_TTL}\n'
                    f'[cluster]\nnode = "{name}"\n'
                    "[relay]\nbackoff_min = 1\nbackoff_max = 1\nqueue_tick = 1\n")
        server = ServerProcess(data, listeners=listeners, host=self.hosts[name], extra=[
            "--config", config,
            "--lmtp", f"tcp:{self.lmtp[name]}:interface={self.hosts[name]}"]).start()
        self.addCleanup(server.stop)
        self.servers[name] = server
        return server

    def send(self, rcpts: list[str]) -> None:
        """Send L{MESSAGE} to C{rcpts} through node a's MX."""
        with smtplib.SMTP("127.0.0.1", self.servers["a"].ports["smtp"], timeout=30) as s:
            self.assertEqual(s.sendmail("x@remote.example", rcpts, MESSAGE), {})


class TwoNodeTests(NodesCase):
    """Any node's MX takes mail for every user; the owner gets it over LMTP."""

    def test_ownerGetsMail(self) -> None:
        """bob's copy is stored on a; alice's goes to b over LMTP and only there."""
        self.start("b")
        self.send(["alice@example.org", "bob@example.org"])
        self.assertTrue(waitFor(lambda: os.listdir(maildirNew(self.data["b"], "alice"))
                                if os.path.isdir(maildirNew(self.data["b"], "alice"))
                                else False), self.servers["a"].log()[-3000:])
        self.assertEqual(len(os.listdir(maildirNew(self.data["a"], "bob"))), 1)
        self.assertEqual(storedOn(self.data["a"], "alice"), [])
        [name] = os.listdir(maildirNew(self.data["b"], "alice"))
        with open(os.path.join(maildirNew(self.data["b"], "alice"), name), "rb") as f:
            message = f.read()
        self.assertTrue(message.endswith(MESSAGE))
        self.assertIn(b"Delivered-To: alice@example.org", message)

    def test_ownerDownThenBack(self) -> None:
        """With b down the mail waits in a's queue; it arrives once b is back."""
        self.send(["alice@example.org"])
        log = self.servers["a"].log
        self.assertTrue(waitFor(lambda: log().count("to=<alice@example.org> temporary") >= 2,
                                30), log()[-3000:])
        self.assertEqual(len(os.listdir(os.path.join(self.data["a"], "queue", "env"))), 1)
        self.assertFalse(os.path.exists(maildirNew(self.data["b"], "alice")))
        self.start("b")
        self.assertTrue(waitFor(lambda: os.path.isdir(maildirNew(self.data["b"], "alice"))
                                and os.listdir(maildirNew(self.data["b"], "alice"))),
                        self.servers["a"].log()[-3000:])
        self.assertEqual(storedOn(self.data["a"], "alice"), [])
        self.assertTrue(waitFor(lambda: not os.listdir(os.path.join(self.data["a"], "queue",
                                                                    "env"))))


class MoveTests(NodesCase):
    """C{pymaild-admin user move}: UIDs and UIDVALIDITY stay; nothing is lost."""

    def uids(self, node: str) -> tuple[bytes, bytes]:
        """bob's (UIDVALIDITY, UIDs of INBOX) over IMAP on C{node}; on a, UID 1 is
        flagged as well."""
        server = self.servers[node]
        imap = imaplib.IMAP4(self.hosts[node], server.ports["imap"], timeout=30)
        imap.login("bob@example.org", "pw")
        imap.select("INBOX")
        validity = imap.response("UIDVALIDITY")[1][0]
        _typ, data = imap.uid("SEARCH", "ALL")
        if node == "a":
            imap.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
        imap.logout()
        return validity, data[0]

    def test_move(self) -> None:
        """bob moves from a to b while mail arrives: afterwards b serves his mailbox
        with the same UIDVALIDITY and UIDs (and flags), and every message is there; the
        move waits out the nodes' directory cache (its time plus a second)."""
        self.servers["a"].stop()
        for name in ("a", "b"):
            self.start(name, ("smtp", "imap"))
        for _ in range(3):
            self.send(["bob@example.org"])
        self.assertTrue(waitFor(lambda: len(storedOn(self.data["a"], "bob")) == 3))
        before = self.uids("a")
        self.assertEqual(before[1], b"1 2 3")
        config = self.servers["a"].extra[1]
        env = dict(os.environ, PYTHONPATH=ROOT)
        started = time.monotonic()
        move = subprocess.Popen(
            [sys.executable, "-m", "pymaild.admin", "--config", config, "user", "move",
             "bob@example.org", "b", "--from", self.data["a"], "--to", self.data["b"],
             "--settle", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            cwd=ROOT)
        self.assertTrue(waitFor(lambda: self.users.isMoving("bob@example.org"), 30))
        self.send(["bob@example.org"])  # during the move: waits in a's queue
        out, err = move.communicate(timeout=60)
        self.assertEqual(move.returncode, 0, err)
        # However short --settle is, the copy waited until every node's kept answers
        # had seen the mark.
        self.assertGreaterEqual(time.monotonic() - started, CACHE_TTL + 1)
        self.assertIn(b"moved bob@example.org to node b", out)
        self.assertEqual(self.users.owner("bob@example.org").name, "b")
        self.assertFalse(self.users.isMoving("bob@example.org"))
        self.send(["bob@example.org"])  # after the move: straight to b
        self.assertTrue(waitFor(lambda: len(storedOn(self.data["b"], "bob")) == 5),
                        self.servers["a"].log()[-2000:])
        after = self.uids("b")
        self.assertEqual(after[0], before[0])
        self.assertEqual(after[1], b"1 2 3 4 5")
        imap = imaplib.IMAP4(self.hosts["b"], self.servers["b"].ports["imap"], timeout=30)
        imap.login("bob@example.org", "pw")
        imap.select("INBOX")
        _typ, data = imap.uid("FETCH", "1", "(FLAGS)")
        self.assertIn(b"\\Flagged", data[0])
        imap.logout()
        self.assertEqual(storedOn(self.data["a"], "bob"), [])


class ReferralTests(NodesCase):
    """LOGIN-REFERRALS (RFC 2221): a login on a node that does not own the mailbox."""

    def test_loginReferral(self) -> None:
        """alice (owned by b) logging in on a gets C{NO [REFERRAL imap://...]} naming b's
        IMAP address and port, and nothing of hers is made on a; bob (owned by a) logs
        in; LOGIN-REFERRALS is advertised."""
        self.users.setNode(NodeRecord("b", self.hosts["b"], imap_port=10143,
                                      lmtp_port=self.lmtp["b"]))
        self.servers["a"].stop()
        server = self.start("a", listeners=("imap",))
        with imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30) as imap:
            self.assertIn("LOGIN-REFERRALS", imap.capabilities)
            with self.assertRaises(imaplib.IMAP4.error) as caught:
                imap.login("alice@example.org", "pw")
            self.assertEqual(
                caught.exception.args[0].decode(),
                "[REFERRAL imap://alice%40example.org@127.0.0.2:10143/] "
                "This mailbox is on another server")
            self.assertEqual(imap.noop()[0], "OK")
            self.assertFalse(os.path.exists(os.path.dirname(maildirNew(self.data["a"],
                                                                      "alice"))))
        with imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30) as imap:
            self.assertEqual(imap.login("bob@example.org", "pw")[0], "OK")
