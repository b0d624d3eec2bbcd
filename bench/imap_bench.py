#!/usr/bin/env python3
"""IMAP benchmark: pymaild against Dovecot on the same Maildir.

Generates a corpus of N messages with a fixed seed (default 5,000: plain text, HTML
alternatives, attachments, forwarded message/rfc822, encoded-word subjects; 1 KiB to
512 KiB), starts pymaild's IMAP server in a subprocess on 127.0.0.1 (the pieces the tap
wires: MaildirStore, a disk thread pool, PasswdChecker, AuthGate, IMAPFactory) and times,
with imaplib:

- SELECT INBOX
- UID FETCH 1:* (UID FLAGS)
- FETCH 1:* ENVELOPE           (cold structure cache, then warm)
- FETCH 1:* BODYSTRUCTURE
- UID SEARCH HEADER Subject <word>
- BODY.PEEK[] of every message (MB/s)

When Dovecot's ``imap`` binary is installed (/usr/lib/dovecot/imap or
/usr/libexec/dovecot/imap) the same phases run against it on a copy of the same
Maildir — started pre-authenticated per connection, inetd style, behind a loopback
socket — and the script prints pymaild/Dovecot time ratios (below 1 means pymaild is
faster).

Usage: ``python bench/imap_bench.py [--messages N] [--seed S] [--keep DIR]``.
This is a script, not a test.
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

USER = "bench@example.org"
PASSWORD = "bench-password"
HOST = "127.0.0.1"
DOVECOT_IMAP = ("/usr/lib/dovecot/imap", "/usr/libexec/dovecot/imap",
                "/usr/local/libexec/dovecot/imap")
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray "
         "yankee zulu").split()


# -- corpus ---------------------------------------------------------------------------


def _text(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12)))
        lines.append(line.encode())
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def makeMessage(i: int, rng: random.Random) -> bytes:
    """Message number C{i} of the corpus (deterministic for a given generator state)."""
    kind = rng.random()
    size = rng.choice([1024, 2048, 4096, 8192, 16384, 65536, 262144, 524288])
    subj = f"{rng.choice(WORDS)} {rng.choice(WORDS)} report {i}"
    if i % 7 == 0:
        subj = "=?utf-8?q?Gr=C3=BC=C3=9Fe_" + rng.choice(WORDS) + "?="
    head = (
        f"From: {rng.choice(WORDS).title()} <{rng.choice(WORDS)}@example.net>\r\n"
        f"To: Bench <{USER}>, {rng.choice(WORDS)}@example.com\r\n"
        f"Subject: {subj}\r\n"
        f"Date: Mon, {1 + i % 28} Feb 2024 10:{i % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{i}.{rng.randrange(10**9)}@bench.example>\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()
    if kind < 0.5:
        return head + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + _text(rng, size)
    if kind < 0.75:
        txt = _text(rng, size // 2)
        return (head + b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
                b"--alt\r\nContent-Type: text/plain\r\n\r\n" + txt +
                b"--alt\r\nContent-Type: text/html\r\n\r\n<p>" + txt + b"</p>\r\n--alt--\r\n")
    if kind < 0.92:
        att = rng.randbytes(min(size // 2, 65536))
        b64 = base64.encodebytes(att).replace(b"\n", b"\r\n")
        return (head + b'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
                b"--mix\r\nContent-Type: text/plain\r\n\r\n" + _text(rng, 512) +
                b"--mix\r\nContent-Type: application/octet-stream; name=data.bin\r\n"
                b"Content-Disposition: attachment; filename=data.bin\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--mix--\r\n")
    inner = (b"From: inner@example.org\r\nSubject: forwarded " + str(i).encode() +
             b"\r\n\r\n" + _text(rng, size // 2))
    return (head + b'Content-Type: multipart/mixed; boundary="fw"\r\n\r\n'
            b"--fw\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
            b"--fw\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--fw--\r\n")


def buildCorpus(data: str, n: int, seed: int) -> int:
    """Deliver N messages into the bench user's INBOX under C{data}; return total bytes."""
    from pymaild.auth.passwd import PasswdFile
    from pymaild.store import MaildirStore

    store = MaildirStore(os.path.join(data, "mail"), hostname="bench.example")
    pw = PasswdFile(os.path.join(data, "passwd"))
    if not pw.users():
        pw.add(USER, PASSWORD)
    rng = random.Random(seed)
    total = 0
    for i in range(n):
        msg = makeMessage(i, rng)
        total += len(msg)
        store.deliver([USER], msg)
    store.account(USER).folder("INBOX").scan(claimRecent=True)
    return total


# -- servers --------------------------------------------------------------------------


def serve(data: str, port: int) -> None:
    """Run pymaild's IMAP on 127.0.0.1:port over C{data} (in this process, forever)."""
    from twisted.cred.portal import Portal
    from twisted.internet import reactor
    from twisted.mail import imap4

    from pymaild import config as configModule
    from pymaild.auth.checker import PasswdChecker
    from pymaild.auth.passwd import PasswdFile
    from pymaild.auth.penalty import AuthGate, AuthPenalty
    from pymaild.auth.realm import MailRealm
    from pymaild.imap.account import IMAPAvatars
    from pymaild.imap.server import IMAPFactory
    from pymaild.store import MaildirStore
    from pymaild.threads import ThreadRunner, makePool

    cfg = configModule.load(None, {
        "server": {"data": data, "hostname": "bench.example", "domains": ["example.org"]},
        "auth": {"cleartext": "always", "passwd": os.path.join(data, "passwd")},
    })
    disk = makePool("bench-disk", 8)
    auth = makePool("bench-auth", 2)
    disk.start()
    auth.start()
    store = MaildirStore(os.path.join(data, "mail"), hostname="bench.example")
    avatars = IMAPAvatars(store, ThreadRunner(reactor, disk), cfg, watcher=False)
    portal = Portal(MailRealm({imap4.IAccount: avatars}),
                    [PasswdChecker(PasswdFile(cfg.auth.passwd), ThreadRunner(reactor, auth))])
    gate = AuthGate(portal, AuthPenalty(), reactor)
    reactor.listenTCP(port, IMAPFactory(config=cfg, gate=gate, clock=reactor),
                      interface=HOST)
    reactor.addSystemEventTrigger("before", "shutdown", disk.stop)
    reactor.addSystemEventTrigger("before", "shutdown", auth.stop)
    reactor.run()


def freePort() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def waitPort(port: int, timeout: float = 30.0) -> None:
    """Wait until the port accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


class DovecotInetd:
    """Accept loopback connections and run Dovecot's imap binary per connection."""

    def __init__(self, binary: str, maildir: str, home: str) -> None:
        self.binary = binary
        self.maildir = maildir
        self.home = home
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conf = os.path.join(home, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"mail_location = maildir:{maildir}\n"
                    "namespace inbox {\n  inbox = yes\n  separator = /\n}\n"
                    f"base_dir = {home}/run\nlog_path = {home}/dovecot.log\n")
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            env = dict(os.environ, USER=USER, HOME=self.home)
            subprocess.Popen([self.binary, "-c", self.conf], stdin=conn.fileno(),
                             stdout=conn.fileno(), env=env)
            conn.close()

    def close(self) -> None:
        """Stop accepting."""
        self.sock.close()


# -- client phases --------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of C{fn()}."""
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def runPhases(port: int, preauth: bool, n: int) -> dict[str, float]:
    """Run every phase against a server; return seconds per phase (and MB/s)."""
    m = imaplib.IMAP4(HOST, port)
    if not preauth:
        m.login(USER, PASSWORD)
    res: dict[str, float] = {}
    res["SELECT"], _ = timed(lambda: m.select("INBOX"))
    res["UID FETCH 1:* (UID FLAGS)"], _ = timed(lambda: m.uid("FETCH", "1:*", "(UID FLAGS)"))
    res["FETCH 1:* ENVELOPE (cold)"], _ = timed(lambda: m.fetch("1:*", "ENVELOPE"))
    res["FETCH 1:* ENVELOPE (warm)"], _ = timed(lambda: m.fetch("1:*", "ENVELOPE"))
    res["FETCH 1:* BODYSTRUCTURE"], _ = timed(lambda: m.fetch("1:*", "BODYSTRUCTURE"))
    res["UID SEARCH HEADER Subject"], _ = timed(
        lambda: m.uid("SEARCH", None, "HEADER", "Subject", "zulu"))
    total = 0

    def bodies() -> None:
        nonlocal total
        step = 200
        for a in range(1, n + 1, step):
            typ, data = m.fetch(f"{a}:{min(n, a + step - 1)}", "BODY.PEEK[]")
            for item in data:
                if isinstance(item, tuple):
                    total += len(item[1])

    res["BODY[] all"], _ = timed(bodies)
    res["BODY[] MB/s"] = total / 1e6 / res["BODY[] all"]
    m.logout()
    return res


def main() -> None:
    """Parse options, build the corpus, run both servers, print the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--keep", help="use/keep the data directory here")
    ap.add_argument("--serve", nargs=2, metavar=("DATA", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    data = args.keep or tempfile.mkdtemp(prefix="imap-bench-")
    os.makedirs(data, exist_ok=True)
    try:
        t, size = timed(lambda: buildCorpus(data, args.messages, args.seed))
        print(f"corpus: {args.messages} messages, {size / 1e6:.1f} MB, built in {t:.1f}s")
        port = freePort()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", data, str(port)],
                                env=dict(os.environ, PYTHONPATH=ROOT))
        try:
            waitPort(port)
            ours = runPhases(port, False, args.messages)
        finally:
            proc.terminate()
            proc.wait(10)
        theirs = None
        binary = next((b for b in DOVECOT_IMAP if os.path.exists(b)), None)
        if binary:
            from pymaild.store import MaildirStore

            src = MaildirStore(os.path.join(data, "mail"), "x").account(USER).root
            home = os.path.join(data, "dovecot-home")
            copy = os.path.join(home, "Maildir")
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(src, copy)
            inetd = DovecotInetd(binary, copy, home)
            try:
                theirs = runPhases(inetd.port, True, args.messages)
            finally:
                inetd.close()
        print(f"{'phase':34} {'pymaild':>10} {'dovecot':>10} {'ratio':>7}")
        for k, v in ours.items():
            d = theirs.get(k) if theirs else None
            unit = "" if "MB/s" in k else "s"
            ratio = f"{v / d:7.2f}" if d else "      -"
            dv = f"{d:9.3f}{unit}" if d else "         -"
            print(f"{k:34} {v:9.3f}{unit} {dv} {ratio}")
        if not binary:
            print("(Dovecot's imap binary not found: no ratios)")
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
