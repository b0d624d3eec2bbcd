#!/usr/bin/env python3
"""IMAP benchmark: pymaild against Dovecot on the same corpus, in one invocation.

Generates a corpus of N messages with a fixed seed (default 10,000: plain text, HTML
alternatives, attachments, forwarded message/rfc822, encoded-word subjects; 2 to 50 KB
as the IMAP issue specifies, about 70 % already \\Seen), written straight into a pymaild
Maildir (no fsync: set-up, not delivery) and given UIDs by one pymaild scan. Each
server run gets its own copy of that tree (message files hard-linked, the
C{dovecot-uidlist} and the rest copied: same files, same UIDs), so no run sees another's
indexes or flag changes.

Each server then runs alone, on 127.0.0.1, over TCP with a real LOGIN:

- pymaild: its IMAP server in a subprocess (the pieces the tap wires: MaildirStore, a disk
  thread pool of 8, PasswdChecker, AuthGate, IMAPFactory);
- Dovecot: C{dovecot -F} with a generated configuration (C{maildir:}, C{separator = /},
  passwd-file over pymaild's passwd file, static userdb; as root the tree is given to
  C{nobody} and Dovecot runs as that user).

A small raw-socket client (literals skipped by length, no per-response parsing) times,
per server:

- SELECT INBOX, cold (fresh server, no index or cache) and warm (a new connection);
- UID FETCH 1:* (UID FLAGS);
- FETCH 1:* ENVELOPE, cold then warm;
- FETCH 1:* BODYSTRUCTURE;
- UID SEARCH HEADER Subject <word>;
- FETCH 1:1000 BODY.PEEK[] (MB/s);
- STORE 1:* +FLAGS (\\Flagged);
- the CONDSTORE resync (RFC 7162): the client notes HIGHESTMODSEQ, a second client
  makes 100 flag changes spread over the folder (timed: one STORE each), then a new
  connection SELECTs with CONDSTORE and asks C{UID FETCH 1:* (FLAGS) (CHANGEDSINCE
  <noted>)}: once at once,
  once 3 s later (pymaild knows its own renames and does not re-read C{cur/} for them;
  its one check of the directory, once the store's sync window after the changes is
  over, runs in the disk pool between the two);

and the server CPU seconds used per phase (pymaild's process; Dovecot's C{imap} process of
the session), and the resident set size at the end (pymaild's process; Dovecot's C{imap}
process, and all Dovecot processes together). It prints both servers' figures and the
ratios pymaild/Dovecot (time and CPU: above 1 means pymaild is slower; MB/s: below 1).
Responses are cross-checked (number of FETCH responses, SEARCH hits).

Timings on a shared machine are noisy: C{--repeat N} runs each server N times, in
alternating order, each on a fresh copy of the corpus (cold caches and indexes), and
reports per-phase medians.

Usage: ``python bench/imap_bench.py [--messages N] [--seed S] [--repeat N] [--keep DIR]
[--no-dovecot] [--lf] [--profile FILE] [--only resync]`` (C{--only resync} runs the two
SELECTs and the resync phase alone, for big folders; C{--lf}: the corpus as another MTA
leaves it, LF line ends and names without C{W=}; C{--profile} runs the pymaild server
under cProfile and writes the stats to FILE; C{--keep} reuses a corpus already built
there). This is a script, not a test.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.interop.dovecot_support import Dovecot as DovecotLauncher  # noqa: E402
from tests.interop.dovecot_support import findDovecot  # noqa: E402
from tests.support import cpuSeconds, stopProcess  # noqa: E402

USER = "bench@example.org"
PASSWORD = "bench-password"
HOST = "127.0.0.1"
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray "
         "yankee zulu").split()
BODY_FETCH = 1000


# -- corpus ---------------------------------------------------------------------------


class TextPool:
    """A block of random word lines; L{take} cuts whole lines of about a given size."""

    def __init__(self, rng: random.Random, size: int = 2 << 20) -> None:
        lines = []
        total = 0
        while total < size:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).encode()
            lines.append(line + b"\r\n")
            total += len(line) + 2
        self.block = b"".join(lines)
        self.starts = []
        pos = 0
        for line in lines:
            self.starts.append(pos)
            pos += len(line)

    def take(self, rng: random.Random, size: int) -> bytes:
        """About C{size} bytes of whole CRLF lines from a random place in the block."""
        size = min(size, len(self.block) // 2)
        i = rng.randrange(0, bisect.bisect_left(self.starts, len(self.block) - size))
        a = self.starts[i]
        j = bisect.bisect_left(self.starts, a + size)
        b = self.starts[j] if j < len(self.starts) else len(self.block)
        return self.block[a:b]


def makeMessage(i: int, rng: random.Random, pool: TextPool) -> bytes:
    """Message number C{i} of the corpus (deterministic for a given generator state)."""
    kind = rng.random()
    size = rng.choice([2000, 4000, 8000, 12000, 16000, 24000, 32000, 50000])
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
        return (head + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
                + pool.take(rng, size))
    # Every multipart has a boundary of its own, as mail programs make them.
    bd = b"----=_Part_%d_%08x.%d" % (i, rng.getrandbits(32), 1700000000 + i)
    if kind < 0.75:
        txt = pool.take(rng, size // 2)
        return (head + b'Content-Type: multipart/alternative; boundary="' + bd + b'"\r\n\r\n'
                b"--" + bd + b"\r\nContent-Type: text/plain\r\n\r\n" + txt +
                b"--" + bd + b"\r\nContent-Type: text/html\r\n\r\n<p>" + txt +
                b"</p>\r\n--" + bd + b"--\r\n")
    if kind < 0.92:
        att = rng.randbytes(min(size // 2, 65536))
        b64 = base64.encodebytes(att).replace(b"\n", b"\r\n")
        return (head + b'Content-Type: multipart/mixed; boundary="' + bd + b'"\r\n\r\n'
                b"--" + bd + b"\r\nContent-Type: text/plain\r\n\r\n" + pool.take(rng, 512) +
                b"--" + bd + b"\r\nContent-Type: application/octet-stream; name=data.bin\r\n"
                b"Content-Disposition: attachment; filename=data.bin\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--" + bd + b"--\r\n")
    inner = (b"From: inner@example.org\r\nSubject: forwarded " + str(i).encode() +
             b"\r\n\r\n" + pool.take(rng, size // 2))
    return (head + b'Content-Type: multipart/mixed; boundary="' + bd + b'"\r\n\r\n'
            b"--" + bd + b"\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
            b"--" + bd + b"\r\nContent-Type: message/rfc822\r\n\r\n" + inner +
            b"--" + bd + b"--\r\n")


def buildCorpus(data: str, n: int, seed: int, lf: bool = False) -> tuple[str, int]:
    """Write N messages into the bench user's INBOX under C{data} and give them UIDs;
    with C{lf}, as another MTA delivers them (LF line ends, names with C{S=} and no
    C{W=}).

    Returns (the Maildir path, total octets as written).
    """
    from pymaild.auth.passwd import PasswdFile
    from pymaild.store import MaildirStore
    from pymaild.store.writing import escapeHostname, uniqueName

    store = MaildirStore(os.path.join(data, "mail"), hostname="bench.example")
    pw = PasswdFile(os.path.join(data, "passwd"))
    if not pw.users():
        pw.add(USER, PASSWORD)
    account = store.account(USER)
    rng = random.Random(seed)
    pool = TextPool(rng)
    host = escapeHostname("bench.example")
    total = 0
    for i in range(n):
        msg = makeMessage(i, rng, pool)
        if lf:
            msg = msg.replace(b"\r\n", b"\n")
        total += len(msg)
        name = (f"{uniqueName(host)},S={len(msg)}" if lf
                else f"{uniqueName(host)},S={len(msg)},W={len(msg)}")
        if rng.random() < 0.7:
            path = os.path.join(account.root, "cur", name + ":2,S")
        else:
            path = os.path.join(account.root, "new", name)
        with open(path, "wb") as f:
            f.write(msg)
    state = account.folder("INBOX").scan(claimRecent=True)
    assert len(state.messages) == n, len(state.messages)
    return account.root, total


# -- servers --------------------------------------------------------------------------


def serve(data: str, port: int) -> None:
    """Run pymaild's IMAP on 127.0.0.1:port over C{data} (in this process, until
    SIGTERM)."""
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
    from pymaild.tuning import limitMallocArenas

    cfg = configModule.load(None, {
        "server": {"data": data, "hostname": "bench.example", "domains": ["example.org"]},
        "auth": {"cleartext": "always", "passwd": os.path.join(data, "passwd")},
    })
    limitMallocArenas()  # as the tap does
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
    avatars.service.startService()  # as the tap's application does
    reactor.addSystemEventTrigger("before", "shutdown", disk.stop)
    reactor.addSystemEventTrigger("before", "shutdown", auth.stop)
    reactor.run()


def freePort() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def waitPort(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the port accepts connections (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def procStatus(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of a process."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every descendant of C{pid}."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append((int(entry), comm))
    out = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


class Pymaild:
    """pymaild's IMAP server in a subprocess."""

    name = "pymaild"

    def __init__(self, data: str, profile: str | None) -> None:
        self.port = freePort()
        argv = [sys.executable]
        if profile:
            argv += ["-m", "cProfile", "-o", profile]
        argv += [os.path.abspath(__file__), "--serve", data, str(self.port)]
        self.proc = subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=ROOT))
        waitPort(self.port, self.proc)

    def sessionPid(self) -> int:
        """The process doing the session's work."""
        return self.proc.pid

    def rss(self) -> dict[str, int]:
        """Memory figures (KiB)."""
        st = procStatus(self.proc.pid)
        return {"RSS": st.get("VmRSS", 0), "peak RSS": st.get("VmHWM", 0)}

    def stop(self) -> None:
        """SIGINT (lets cProfile write its file), then wait."""
        stopProcess(self.proc, 60, signal.SIGINT)


class Dovecot(DovecotLauncher):
    """Dovecot's master serving IMAP over a copy of the corpus tree (the shared launcher
    of L{tests.interop.dovecot_support}, started at once), with the bench's process and
    memory figures."""

    name = "dovecot"

    def __init__(self, binary: str, data: str, work: str) -> None:
        super().__init__(binary, data, work)
        self.start()
        assert self.proc is not None
        self.masterPid = self.proc.pid

    def imapPids(self) -> list[int]:
        """The pids of Dovecot's C{imap} (mail) processes."""
        return [p for p, comm in descendants(self.masterPid) if comm == "imap"]

    def sessionPid(self) -> int:
        """The newest imap process (the current session's)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pids = self.imapPids()
            if pids:
                return max(pids)
            time.sleep(0.01)
        raise RuntimeError("no Dovecot imap process found")

    def rss(self) -> dict[str, int]:
        """Memory figures (KiB): the session's imap process, and all processes."""
        session = procStatus(self.sessionPid())
        total = sum(procStatus(p).get("VmRSS", 0)
                    for p in [self.masterPid, *(p for p, _ in descendants(self.masterPid))])
        return {"RSS": session.get("VmRSS", 0), "peak RSS": session.get("VmHWM", 0),
                "RSS all processes": total}


# -- client ----------------------------------------------------------------------------

_LITERAL = re.compile(rb"\{(\d+)\}$")


class Client:
    """A minimal, fast IMAP client: one command at a time, literals skipped by length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.n = 0
        self.readLine()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def readLine(self) -> bytes:
        """One line (without CRLF)."""
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            self._fill()

    def command(self, text: str) -> dict[str, Any]:
        """Send one command and read to its tagged response.

        Returns the tagged line, the octets received, the number of untagged C{FETCH}
        responses, the literal octets and the C{* SEARCH} lines.
        """
        self.n += 1
        tag = b"b%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        buf = self.buf
        pos = 0
        received = len(buf)
        fetches = 0
        literal = 0
        searches: list[bytes] = []
        tagPrefix = tag + b" "
        while True:
            nl = buf.find(b"\r\n", pos)
            while nl < 0:
                if pos > (1 << 22):
                    del buf[:pos]
                    pos = 0
                before = len(buf)
                self._fill()
                received += len(buf) - before
                nl = buf.find(b"\r\n", pos)
            line = bytes(buf[pos:nl])
            pos = nl + 2
            if line.startswith(b"* "):
                if line.find(b" FETCH ", 2, 24) > 0:
                    fetches += 1
                elif line.startswith(b"* SEARCH") or line.startswith(b"* STATUS"):
                    searches.append(line)
            elif line.startswith(tagPrefix):
                del buf[:pos]
                if not line.startswith(tagPrefix + b"OK"):
                    raise RuntimeError(f"{text!r}: {line!r}")
                return {"tagged": line, "octets": received - len(buf), "fetches": fetches,
                        "literal": literal, "search": b"".join(searches)}
            if line.endswith(b"}"):
                m = _LITERAL.search(line)
                if m:
                    size = int(m.group(1))
                    literal += size
                    while len(buf) < pos + size:
                        before = len(buf)
                        self._fill()
                        received += len(buf) - before
                    pos += size

    def close(self) -> None:
        """LOGOUT and close."""
        try:
            self.command("LOGOUT")
        except (ConnectionError, RuntimeError):
            pass
        self.sock.close()


# -- phases ----------------------------------------------------------------------------


def runPhases(server: Any, n: int, only: str | None = None
              ) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """Run every phase (with C{only="resync"}: the cold SELECT and the resync phase);
    return (seconds per phase, server CPU per phase, checks)."""
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    checks: dict[str, Any] = {}

    def phase(label: str, client: Client, pid: int, text: str) -> dict[str, Any]:
        c0 = cpuSeconds(pid)
        t0 = time.perf_counter()
        r = client.command(text)
        wall[label] = time.perf_counter() - t0
        cpu[label] = cpuSeconds(pid) - c0
        return r

    first = Client(server.port)
    first.command(f"LOGIN {USER} {PASSWORD}")
    pid = server.sessionPid()
    phase("SELECT (cold)", first, pid, "SELECT INBOX")
    first.close()

    c = Client(server.port)
    c.command(f"LOGIN {USER} {PASSWORD}")
    pid = server.sessionPid()
    phase("SELECT (warm)", c, pid, "SELECT INBOX")
    if only == "resync":
        resync(c, server, n, phase, checks, wall, cpu)
        checks["memory"] = server.rss()
        c.close()
        return wall, cpu, checks
    r = phase("UID FETCH 1:* (UID FLAGS)", c, pid, "UID FETCH 1:* (UID FLAGS)")
    checks["flags fetches"] = r["fetches"]
    r = phase("FETCH 1:* ENVELOPE (cold)", c, pid, "FETCH 1:* ENVELOPE")
    checks["envelope fetches"] = r["fetches"]
    phase("FETCH 1:* ENVELOPE (warm)", c, pid, "FETCH 1:* ENVELOPE")
    r = phase("FETCH 1:* BODYSTRUCTURE", c, pid, "FETCH 1:* BODYSTRUCTURE")
    checks["bodystructure fetches"] = r["fetches"]
    r = phase("UID SEARCH HEADER Subject", c, pid, "UID SEARCH HEADER Subject zulu")
    checks["search hits"] = len(r["search"].split()) - 2
    count = min(n, BODY_FETCH)
    r = phase(f"FETCH 1:{count} BODY.PEEK[]", c, pid, f"FETCH 1:{count} BODY.PEEK[]")
    checks["body octets"] = r["literal"]
    wall["BODY[] MB/s"] = r["octets"] / 1e6 / wall[f"FETCH 1:{count} BODY.PEEK[]"]
    r = phase("STORE 1:* +FLAGS (\\Flagged)", c, pid, "STORE 1:* +FLAGS (\\Flagged)")
    checks["store fetches"] = r["fetches"]
    resync(c, server, n, phase, checks, wall, cpu)
    checks["memory"] = server.rss()
    c.close()
    return wall, cpu, checks


RESYNC_CHANGES = 100
"""Flag changes another client makes before the resync phase asks for them."""


def resync(c: Client, server: Any, n: int, phase: Callable[..., dict[str, Any]],
           checks: dict[str, Any], wall: dict[str, float], cpu: dict[str, float]) -> None:
    """The CONDSTORE/QRESYNC resync phase: a client that knows HIGHESTMODSEQ asks for
    what changed (C{UID FETCH 1:* (FLAGS) (CHANGEDSINCE h)}) after another client made
    L{RESYNC_CHANGES} flag changes spread over the folder (timed too, into C{wall}
    and C{cpu})."""
    r = c.command("STATUS INBOX (HIGHESTMODSEQ)")
    m = re.search(rb"HIGHESTMODSEQ (\d+)", r["search"])
    if m is None:
        raise RuntimeError(f"no HIGHESTMODSEQ in {r['search']!r}")
    known = int(m.group(1))
    w = Client(server.port)
    w.command(f"LOGIN {USER} {PASSWORD}")
    wpid = server.sessionPid()
    w.command("SELECT INBOX")
    step = max(1, n // RESYNC_CHANGES)
    c0 = cpuSeconds(wpid)
    t0 = time.perf_counter()
    for i in range(RESYNC_CHANGES):
        w.command(f"STORE {1 + (i * step) % n} +FLAGS.SILENT (\\Answered)")
    label = f"{RESYNC_CHANGES} STOREs, one message each"
    wall[label] = time.perf_counter() - t0
    cpu[label] = cpuSeconds(wpid) - c0
    w.close()
    # Once at once (within or just past the store's sync window after the changes),
    # once as a client coming back later would (the check of cur/ made meanwhile).
    for label, pause in (("at once", 0.0), ("3 s later", 3.0)):
        time.sleep(pause)
        rc = Client(server.port)
        rc.command(f"LOGIN {USER} {PASSWORD}")
        pid = server.sessionPid()
        rc.command("ENABLE CONDSTORE")
        phase(f"SELECT (CONDSTORE) {label}", rc, pid, "SELECT INBOX (CONDSTORE)")
        r = phase(f"resync CHANGEDSINCE, {label}", rc, pid,
                  f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known})")
        checks[f"resync fetches ({label})"] = r["fetches"]
        rc.close()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of C{fn()}."""
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def copyCorpus(src: str, dst: str) -> None:
    """A private copy of a corpus directory for one server run: message files are
    hard-linked (servers only rename them), everything else (uidlist, keywords, passwd)
    is copied, so one run's indexes, flag changes and appends never reach another."""

    def copy(s: str, d: str) -> None:
        if os.path.basename(os.path.dirname(s)) in ("cur", "new"):
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


def warmCorpus(data: str) -> None:
    """Read every file of a corpus copy once, so each server starts with the messages in
    the page cache: the copies share their message files (hard links), and without
    this whichever server ran first after the kernel dropped them would read them from
    disk for the other."""
    for top, _dirs, files in os.walk(data):
        for name in files:
            with open(os.path.join(top, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def combine(runs: list[tuple[dict[str, float], dict[str, float], dict[str, Any]]]
            ) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """Per-phase medians of several runs of one server (checks from the first run)."""
    wall = {k: median([r[0][k] for r in runs]) for k in runs[0][0]}
    cpu = {k: median([r[1][k] for r in runs]) for k in runs[0][1]}
    checks = dict(runs[0][2])
    checks["memory"] = {k: int(median([r[2]["memory"][k] for r in runs]))
                        for k in runs[0][2]["memory"]}
    return wall, cpu, checks


def main() -> None:
    """Parse options, build the corpus, run both servers, print the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each server this many times (alternating, each on a fresh"
                         " copy of the corpus) and report medians")
    ap.add_argument("--keep", help="build the corpus in DIR and keep it")
    ap.add_argument("--no-dovecot", action="store_true", help="skip the Dovecot baseline")
    ap.add_argument("--lf", action="store_true",
                    help="a corpus as another MTA delivers it: LF line ends, no W= in names")
    ap.add_argument("--profile", help="run the pymaild server under cProfile into FILE")
    ap.add_argument("--only", choices=["resync"],
                    help="run only the cold and warm SELECT and the named phase")
    ap.add_argument("--serve", nargs=2, metavar=("DATA", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    top = args.keep or tempfile.mkdtemp(prefix="imap-bench-")
    os.makedirs(top, exist_ok=True)
    os.chmod(top, 0o755)
    corpus = os.path.join(top, "corpus")
    try:
        if not os.path.exists(os.path.join(corpus, "passwd")):
            shutil.rmtree(corpus, ignore_errors=True)
            t, (_maildir, size) = timed(lambda: buildCorpus(corpus, args.messages, args.seed,
                                                               args.lf))
            print(f"corpus: {args.messages} messages, {size / 1e6:.1f} MB, built in {t:.1f}s")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs,"
              f" load {os.getloadavg()[0]:.1f}; {args.repeat} run(s) per server")
        # Directories changed within pymaild's sync window (0.1 s; SYNC_WINDOW, 2 s, on
        # whole-second file systems) are re-listed on every scan (a change in the same
        # clock tick would not move their mtime): let the fresh corpus age past that, as
        # a mailbox at rest has.
        time.sleep(2.5)
        binary = None if args.no_dovecot else findDovecot(required=False)
        runs: dict[str, list[Any]] = {"pymaild": [], "dovecot": []}
        for i in range(args.repeat):
            order = ["pymaild", "dovecot"] if i % 2 == 0 else ["dovecot", "pymaild"]
            for name in order:
                if name == "dovecot" and not binary:
                    continue
                run = os.path.join(top, f"run-{name}")
                shutil.rmtree(run, ignore_errors=True)
                copyCorpus(corpus, os.path.join(run, "data"))
                warmCorpus(os.path.join(run, "data"))
                server: Any
                if name == "pymaild":
                    server = Pymaild(os.path.join(run, "data"), args.profile)
                else:
                    assert binary is not None
                    server = Dovecot(binary, os.path.join(run, "data"),
                                     os.path.join(run, "work"))
                try:
                    runs[name].append(runPhases(server, args.messages, args.only))
                finally:
                    server.stop()
                    shutil.rmtree(run, ignore_errors=True)
        report({name: combine(r) for name, r in runs.items() if r})
        print(f"(load average now {os.getloadavg()[0]:.1f})")
        if not binary:
            print("(no Dovecot baseline: " + ("--no-dovecot)" if args.no_dovecot else
                                              "not installed; apt-get install dovecot-imapd)"))
    finally:
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)


def report(results: dict[str, tuple[dict[str, float], dict[str, float], dict[str, Any]]]
           ) -> None:
    """Print the figures of each server and the ratios."""
    ours = results["pymaild"]
    theirs = results.get("dovecot")
    print(f"\n{'phase':30} {'pymaild':>9} {'dovecot':>9} {'ratio':>6}"
          f" | {'CPU ours':>8} {'CPU dove':>8} {'ratio':>6}")
    for k, v in ours[0].items():
        rate = "MB/s" in k
        d = theirs[0].get(k) if theirs else None
        co = ours[1].get(k)
        cd = theirs[1].get(k) if theirs else None
        unit = "" if rate else "s"
        line = f"{k:30} {v:8.3f}{unit or ' '} "
        line += f"{d:8.3f}{unit or ' '} {v / d:6.2f}" if d else f"{'-':>9} {'-':>6}"
        if co is not None:
            line += f" | {co:7.2f}s "
            line += f"{cd:7.2f}s {co / cd:6.2f}" if cd else f"{'-':>8} {'-':>6}"
        print(line)
    for key in ("RSS", "peak RSS", "RSS all processes"):
        a = ours[2]["memory"].get(key)
        b = theirs[2]["memory"].get(key) if theirs else None
        text = f"{key:30} {a / 1024:7.1f}MB" if a else f"{key:30} {'-':>9}"
        text += f" {b / 1024:7.1f}MB" if b else ""
        text += f" {a / b:6.2f}" if a and b else ""
        print(text)
    if theirs:
        for k, v in ours[2].items():
            if k != "memory" and theirs[2].get(k) != v:
                print(f"MISMATCH {k}: pymaild {v} dovecot {theirs[2].get(k)}")


if __name__ == "__main__":
    main()
