"""The cluster topology end to end: nginx, PostgreSQL and three pymaild nodes.

Nodes a, b and c listen on 127.0.0.1, 127.0.0.2 and 127.0.0.3; alice's mailbox is on
a, bob's on b, carol's on c (the C{pymaild_users.node} column). nginx's mail proxy asks
node a's auth_http endpoint and connects to the owner with a PROXY header (IMAP, POP3)
or XCLIENT (submission). The clients (imaplib, poplib, smtplib) connect to nginx from
127.0.0.5. Mail sent to any node's MX lands in the owner's Maildir; with node c
stopped, carol's mail waits in the sender node's queue and arrives when c is back.
"""

from __future__ import annotations

import os
import smtplib
import time

from twisted.trial.unittest import TestCase

from pymaild.auth.pgusers import NodeRecord, PostgresUsers
from tests.nginx_support import NginxMail, clusterNode
from tests.postgres_support import PostgreSQL
from tests.support import ServerProcess, freePort, lowCostHashing
from tests.test_cluster_nodes import storedOn, waitFor
from tests.test_cluster_proxy import CLIENT, SECRET, IMAPFrom, POP3From, SMTPFrom

NODES = {"a": "127.0.0.1", "b": "127.0.0.2", "c": "127.0.0.3"}
OWNERS = {"alice": "a", "bob": "b", "carol": "c"}
LISTENERS = ("smtp", "submission", "imap", "pop3")


def message(subject: str) -> bytes:
    """A small message with C{subject}."""
    return f"From: x@remote.example\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


class TopologyCase(TestCase):
    """Three nodes behind nginx, one PostgreSQL (each node's configuration ends with
    L{more})."""

    #: Configuration text every node gets besides the cluster's.
    more = "[relay]\nbackoff_min = 1\nbackoff_max = 1\nqueue_tick = 1\n"

    def setUp(self) -> None:
        """PostgreSQL with the nodes and users, the three nodes, nginx."""
        lowCostHashing(self)
        self.pg = PostgreSQL().start()
        self.addCleanup(self.pg.stop)
        self.users = users = PostgresUsers(self.pg.conninfo, poolSize=1)
        self.addCleanup(users.close)
        users.initSchema()
        self.ports = {n: {name: freePort() for name in (*LISTENERS, "lmtp")} for n in NODES}
        for name, host in NODES.items():
            p = self.ports[name]
            users.setNode(NodeRecord(name, host, p["imap"], p["pop3"], p["submission"],
                                     p["lmtp"]))
        for local, node in OWNERS.items():
            users.add(f"{local}@example.org", f"{local}-pw", node=node)
        self.base = os.path.abspath(self.mktemp())
        self.authPort = freePort()
        self.servers: dict[str, ServerProcess] = {}
        for name in NODES:
            self.start(name)
        self.nginx = NginxMail(os.path.join(self.base, "nginx"), f"{self.authPort}/auth",
                               SECRET).start()
        self.addCleanup(self.nginx.stop)

    def data(self, name: str) -> str:
        """Node C{name}'s data directory."""
        return os.path.join(self.base, name, "data")

    def start(self, name: str) -> ServerProcess:
        """Start node C{name} (again) on its address and ports."""
        server = clusterNode(
            self.base, name, NODES[name], self.pg.conninfo, SECRET, self.ports[name],
            LISTENERS, self.authPort if name == "a" else None, self.more)
        server.start()
        self.addCleanup(server.stop)
        self.servers[name] = server
        return server

    def sendVia(self, node: str, rcpt: str, subject: str) -> None:
        """Send a message to C{rcpt} through node C{node}'s MX."""
        host = NODES[node]
        with smtplib.SMTP(host, self.servers[node].ports["smtp"], timeout=30) as s:
            self.assertEqual(s.sendmail("x@remote.example", [rcpt], message(subject)), {})

    def arrived(self, local: str, count: int) -> bool:
        """Whether C{local}'s owner node holds C{count} messages for it."""
        return len(storedOn(self.data(OWNERS[local]), local)) >= count


class TopologyTests(TopologyCase):
    """Every protocol through nginx, mail through every MX, a node down and back."""

    def test_topology(self) -> None:
        """Mail through any MX reaches the owner; every protocol through nginx reaches
        the owner with the client's address; a stopped node gets its mail later."""
        self.sendVia("b", "alice@example.org", "for alice via b")
        self.sendVia("c", "bob@example.org", "for bob via c")
        self.sendVia("a", "carol@example.org", "for carol via a")
        for local in OWNERS:
            self.assertTrue(waitFor(lambda local=local: self.arrived(local, 1)), local)
            for other in NODES:
                if other != OWNERS[local]:
                    self.assertEqual(storedOn(self.data(other), local), [], (local, other))

        for local, node in OWNERS.items():
            imap = IMAPFrom("127.0.0.1", self.nginx.ports["imap"], timeout=30)
            imap.login(f"{local}@example.org", f"{local}-pw")
            self.assertEqual(imap.select("INBOX"), ("OK", [b"1"]))
            _typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            self.assertIn(f"for {local} via".encode(), data[0][1])
            imap.logout()
            self.assertIn(f"imap: login {local}@example.org from {CLIENT}",
                          self.servers[node].log())

        pop = POP3From("127.0.0.1", self.nginx.ports["pop3"], timeout=30)
        pop.user("bob@example.org")
        pop.pass_("bob-pw")
        self.assertEqual(pop.stat()[0], 1)
        pop.quit()
        self.assertIn(f"pop3: login bob@example.org from {CLIENT}", self.servers["b"].log())

        with SMTPFrom("127.0.0.1", self.nginx.ports["smtp"], timeout=30) as s:
            s.ehlo("client.example")
            s.login("carol@example.org", "carol-pw")
            s.sendmail("carol@example.org", ["alice@example.org"],
                       b"From: carol@example.org\r\nSubject: from carol\r\n\r\nhi\r\n")
        self.assertIn(f"XCLIENT: carol@example.org from {CLIENT}", self.servers["c"].log())
        self.assertTrue(waitFor(lambda: self.arrived("alice", 2)))

        self.servers["c"].stop()
        self.sendVia("a", "carol@example.org", "while c was down")
        log = self.servers["a"].log
        self.assertTrue(waitFor(lambda: "to=<carol@example.org> temporary" in log(), 30))
        self.assertEqual(len(storedOn(self.data("c"), "carol")), 1)
        time.sleep(1)
        self.start("c")
        self.assertTrue(waitFor(lambda: self.arrived("carol", 2)), log()[-2000:])
        imap = IMAPFrom("127.0.0.1", self.nginx.ports["imap"], timeout=30)
        imap.login("carol@example.org", "carol-pw")
        self.assertEqual(imap.select("INBOX"), ("OK", [b"2"]))
        imap.logout()
