"""What one node decides for mail it hands to another, in the real cluster topology.

The topology of L{tests.test_cluster_topology} (nginx, PostgreSQL, nodes a, b and c on
127.0.0.1-3 owning alice, bob and carol), with one rspamd that every node's spam filter
asks, and every node's relay pointed at a closed smarthost port with a queue life of two
seconds (so mail for the outside world bounces at once). Checked:

- the MX node scans a message once and files the copy of a user on another node where
  its verdict says (Junk), which the owner honours; the owner runs the user's Sieve
  script; the MX makes no Maildir for users it does not own;
- a bounce for a sender whose mailbox is on another node (a +tag address too) reaches
  the owner node;
- the owner honours a handed-on placement only from a node's address: from any other
  LMTP client the field is removed and the message is scanned as usual.
"""

from __future__ import annotations

import os
import smtplib

from pymaild.sieve.storage import ScriptStorage
from pymaild.smtp.handoff import FIELD
from tests.rspamd_support import SPAMMY, Rspamd
from tests.support import freePort
from tests.test_cluster_nodes import waitFor
from tests.test_cluster_topology import NODES, TopologyCase


def home(data: str, local: str) -> str:
    """C{local@example.org}'s home directory (its Maildir is inside) on a node."""
    return os.path.join(data, "mail", "example.org", local)


def messagesIn(data: str, local: str, folder: str = "INBOX") -> list[bytes]:
    """The messages in C{folder} of C{local@example.org} on a node (C{new/} and C{cur/})."""
    root = os.path.join(home(data, local), "Maildir")
    if folder != "INBOX":
        root = os.path.join(root, "." + folder)
    out = []
    for sub in ("new", "cur"):
        path = os.path.join(root, sub)
        for name in sorted(os.listdir(path)) if os.path.isdir(path) else ():
            with open(os.path.join(path, name), "rb") as f:
                out.append(f.read())
    return out


def mail(subject: str, extra: bytes = b"") -> bytes:
    """A small message from outside with C{subject} (and C{extra} header lines)."""
    return (b"From: x@remote.example\r\nTo: someone@example.org\r\n" + extra
            + f"Subject: {subject}\r\n\r\nhello\r\n".encode())


class HandoffTests(TopologyCase):
    """Spam filtering on the MX, Sieve on the owner, bounces to the owner."""

    def setUp(self) -> None:
        """rspamd, then the topology with every node's filter asking it."""
        self.rspamd = Rspamd(self.mktemp()).start()
        self.addCleanup(self.rspamd.stop)
        self.more = (
            "[relay]\nbackoff_min = 1\nbackoff_max = 1\nqueue_tick = 1\n"
            f'max_queue_life = 2\nsmarthost = "127.0.0.1:{freePort()}"\n'
            'smarthost_tls = "opportunistic"\n'
            f'[spam]\nenabled = true\nurl = "{self.rspamd.url}"\n'
            f'controller_url = "{self.rspamd.controllerURL}"\ntimeout = 10\n')
        super().setUp()

    def scanned(self) -> int:
        """How many messages rspamd has scanned."""
        return int(self.rspamd.stat()["scanned"])

    def send(self, node: str, rcpts: list[str], data: bytes) -> None:
        """Send C{data} from outside to C{rcpts} through node C{node}'s MX."""
        with smtplib.SMTP(NODES[node], self.servers[node].ports["smtp"], timeout=30) as s:
            self.assertEqual(s.sendmail("x@remote.example", rcpts, data), {})

    def test_checkedOnceFiledByOwner(self) -> None:
        """Spam through a's MX for alice (on a) and carol (on c) is scanned once, on a,
        and lands in both users' Junk folders, carol's on c without the hand-off field;
        a clean message for bob (on b) is filed by bob's Sieve script on b. Node a
        makes no Maildir for bob or carol. Mail handed on by b comes from b's address."""
        storage = ScriptStorage(home(self.data("b"), "bob"))
        storage.write("main", b'require ["fileinto", "mailbox"];\r\n'
                              b'if header :contains "subject" "sort me"'
                              b' { fileinto :create "Sorted"; }\r\n')
        storage.activate("main")
        before = self.scanned()
        self.send("a", ["alice@example.org", "carol@example.org"], mail(f"{SPAMMY} offer"))
        self.send("a", ["bob@example.org"], mail("sort me"))
        log = self.servers["a"].log
        self.assertTrue(waitFor(lambda: messagesIn(self.data("c"), "carol", "Junk")),
                        self.servers["c"].log()[-3000:])
        self.assertTrue(waitFor(lambda: messagesIn(self.data("b"), "bob", "Sorted")),
                        log()[-3000:])
        [junked] = messagesIn(self.data("c"), "carol", "Junk")
        self.assertIn(b"X-Spam: Yes\r\n", junked)
        self.assertEqual(junked.count(b"X-Spam-Status:"), 1)
        self.assertNotIn(FIELD, junked)
        self.assertEqual(messagesIn(self.data("c"), "carol"), [])
        self.assertEqual(len(messagesIn(self.data("a"), "alice", "Junk")), 1)
        [sorted_] = messagesIn(self.data("b"), "bob", "Sorted")
        self.assertIn(b"X-Spam-Status: No", sorted_)
        self.assertEqual(messagesIn(self.data("b"), "bob"), [])
        self.assertEqual(self.scanned() - before, 2)
        for local in ("bob", "carol"):
            self.assertFalse(os.path.exists(home(self.data("a"), local)), local)
        # Hand-ons leave from the node's own address, the one the owner trusts.
        self.send("b", ["carol@example.org"], mail("via b"))
        self.assertTrue(waitFor(lambda: len(messagesIn(self.data("c"), "carol")) == 1))
        [viaB] = messagesIn(self.data("c"), "carol")
        self.assertIn(b"Received: from mail.example.org ([127.0.0.2])", viaB)
        self.assertFalse(os.path.exists(home(self.data("b"), "carol")))

    def test_bounceToOwner(self) -> None:
        """carol (on c) sends through node a's submission port from her address and
        from a +tag of it; both messages bounce on a (the smarthost is down, the queue
        life two seconds) and both bounces reach carol's INBOX on c."""
        with smtplib.SMTP(NODES["a"], self.servers["a"].ports["submission"],
                          timeout=30) as s:
            s.login("carol@example.org", "carol-pw")
            for sender in ("carol@example.org", "carol+lists@example.org"):
                body = (f"From: {sender}\r\nTo: far@remote.example\r\n"
                        f"Subject: from {sender}\r\n\r\nhi\r\n").encode()
                self.assertEqual(s.sendmail(sender, ["far@remote.example"], body), {})
        self.assertTrue(waitFor(lambda: len(messagesIn(self.data("c"), "carol")) >= 2),
                        self.servers["a"].log()[-3000:])
        bounces = messagesIn(self.data("c"), "carol")
        self.assertEqual(len(bounces), 2)
        for bounce in bounces:
            self.assertIn(b"multipart/report", bounce)
            self.assertIn(b"far@remote.example", bounce)
        self.assertEqual(sorted(b"for <carol+lists@example.org>" in m for m in bounces),
                         [False, True])
        self.assertFalse(os.path.exists(home(self.data("a"), "carol")))

    def lmtp(self, source: str, data: bytes) -> None:
        """Deliver C{data} to carol over node c's LMTP from the address C{source}."""
        with smtplib.LMTP(NODES["c"], self.ports["c"]["lmtp"],
                          source_address=(source, 0)) as s:
            self.assertEqual(s.sendmail("x@remote.example", ["carol@example.org"], data), {})

    def test_trustedNodesOnly(self) -> None:
        """A placement field over LMTP from 127.0.0.9 (no node) or from c's own address
        is removed and not honoured, and the message is scanned; the same field from
        node a's address files the copy in Junk, unscanned (a did that)."""
        extra = FIELD + b': [{"folder":"Junk","create":true}]\r\nX-Spam: Yes\r\n'
        before = self.scanned()
        # 127.0.0.9 is no node; c's own address is no other node (a local MTA's).
        for source in ("127.0.0.9", NODES["c"]):
            self.lmtp(source, mail("forged", extra))
        stored = messagesIn(self.data("c"), "carol")
        self.assertEqual(len(stored), 2)
        for message in stored:
            self.assertNotIn(FIELD, message)
            self.assertNotIn(b"X-Spam: Yes", message)
            self.assertIn(b"X-Spam-Status: No", message)
        self.assertEqual(self.scanned() - before, 2)
        self.assertFalse(os.path.exists(os.path.join(home(self.data("c"), "carol"),
                                                     "Maildir", ".Junk")))
        self.lmtp(NODES["a"], mail("handed", extra))
        [junked] = messagesIn(self.data("c"), "carol", "Junk")
        self.assertIn(b"Subject: handed", junked)
        self.assertNotIn(FIELD, junked)
        self.assertEqual(self.scanned() - before, 2)
        self.assertEqual(len(messagesIn(self.data("c"), "carol")), 2)
