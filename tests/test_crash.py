"""Crash safety: SIGKILL during a delivery loop never loses an acknowledged message.

Each round starts ``twistd -n pymaild``, has several SMTP clients deliver numbered
messages, and kills the server with SIGKILL at a random moment. Afterwards every
message that got 250 must be in the Maildir complete, and no incomplete message may be
visible. ``bench/crash_soak.py`` runs the same loop for more rounds.
"""

from __future__ import annotations

import hashlib
import os
import random
import smtplib
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from pymaild.auth.passwd import PasswdFile
from tests.support import ServerProcess

TRAILER = b"-- end of message --\r\n"


def makeMessage(n: int, size: int) -> bytes:
    """Message number C{n} with a body of about C{size} bytes and a checksum header."""
    body = b"".join(b"line %d of message %d\r\n" % (i, n) for i in range(size // 24 + 1))
    body += TRAILER
    digest = hashlib.sha256(body).hexdigest().encode()
    return (b"From: soak@remote.example\r\nTo: alice@example.org\r\n"
            b"Subject: soak %d\r\nX-Digest: %s\r\n\r\n" % (n, digest)) + body


def checkMaildir(maildir: str) -> tuple[set[int], list[str]]:
    """The message numbers stored complete, and the names of any incomplete files."""
    found: set[int] = set()
    broken: list[str] = []
    for sub in ("new", "cur"):
        d = os.path.join(maildir, sub)
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            head, sep, body = raw.partition(b"\r\n\r\n")
            fields = dict(
                line.split(b": ", 1) for line in head.split(b"\r\n") if b": " in line
            )
            ok = (sep and fields.get(b"X-Digest") == hashlib.sha256(body).hexdigest().encode()
                  and body.endswith(TRAILER))
            if ok:
                found.add(int(fields[b"Subject"].split()[1]))
            else:
                broken.append(name)
    return found, broken


def crashRounds(data: str, rounds: int, clients: int = 4, seed: int = 1) -> dict[str, int]:
    """Run C{rounds} kill rounds on the data directory; return counts.

    @raise AssertionError: an acknowledged message is missing or a partial one is visible.
    """
    rng = random.Random(seed)
    os.makedirs(data, exist_ok=True)
    PasswdFile(os.path.join(data, "passwd")).add("alice@example.org", "pw")
    maildir = os.path.join(data, "mail", "example.org", "alice", "Maildir")
    acked: set[int] = set()
    counter = iter(range(10**9))
    lock = threading.Lock()
    attempted = 0
    for _round in range(rounds):
        server = ServerProcess(data, listeners=("smtp",)).start()
        stop = threading.Event()

        def client(server: ServerProcess = server, stop: threading.Event = stop) -> None:
            nonlocal attempted
            try:
                s = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10)
                while not stop.is_set():
                    with lock:
                        n = next(counter)
                        attempted += 1
                    s.sendmail("soak@remote.example", ["alice@example.org"],
                               makeMessage(n, rng.choice((200, 5000, 70000))))
                    with lock:
                        acked.add(n)
            except (OSError, smtplib.SMTPException):
                return

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 0.8))
        server.kill()
        stop.set()
        for t in threads:
            t.join(15)
        found, broken = checkMaildir(maildir)
        missing = acked - found
        if missing or broken:
            raise AssertionError(f"round {_round}: missing {sorted(missing)[:10]}, "
                                 f"partial {broken[:5]}")
    tmpLeft = os.listdir(os.path.join(maildir, "tmp")) if os.path.isdir(maildir) else []
    return {"rounds": rounds, "acked": len(acked), "attempted": attempted,
            "stored": len(checkMaildir(maildir)[0]), "tmp_left": len(tmpLeft)}


class CrashTests(SynchronousTestCase):
    """SIGKILL during deliveries."""

    def test_killDuringDelivery(self) -> None:
        """Over 20 SIGKILL rounds, every 250-acknowledged message is stored complete."""
        data = os.path.abspath(self.mktemp())
        result = crashRounds(data, rounds=20)
        self.assertGreater(result["acked"], 20)
        # A restart cleans what the killed process left in tmp/.
        server = ServerProcess(data, listeners=("smtp",)).start()
        server.stop()
        tmp = os.path.join(data, "mail", "example.org", "alice", "Maildir", "tmp")
        self.assertEqual(os.listdir(tmp), [])
