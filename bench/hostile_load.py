#!/usr/bin/env python3
"""Hostile-load probe: does one user's expensive mail slow everybody else down?

A real ``twistd -n pymaild`` (the tap's own wiring: disk pools, fair runner, delivery
pool) runs on free loopback ports. Two probes measure what other users see:

- SELECT: user C{victim} has a 1,000-message INBOX and re-selects it on one logged-in
  IMAP connection, one SELECT after another;
- MX delivery: one SMTP session delivers small messages to C{victim}, one transaction
  (MAIL, RCPT, DATA, 250) after another.

Each probe runs twice in the same invocation: first on a quiet server (the baseline), then
while user C{attacker} runs N sessions (default 8) that each loop over: APPEND a hostile
message (a fresh copy, so no cache helps), FETCH its ENVELOPE and BODYSTRUCTURE, and
SEARCH TEXT for a word no message has (a full scan of every hostile message). The
attackers run in a process of their own (their client work, building 12 MB APPENDs and
reading the answers, would otherwise hold the probes' interpreter lock). The hostile
messages are those of the hostile-input issue: a To: of 100,000 folded addresses (2.9 MB),
a Content-Type with a comment and 1,000,000 parameters, and MIME nested 200 deep.

Printed per probe: samples, p50, p95 and max latency in milliseconds, quiet and under
attack, the ratio of the two p95s, and whether the attacked p95 is under the goal
(200 ms). Also how many attacker rounds completed, so a run where the attack never got
going is visible.

Usage: ``python bench/hostile_load.py [--seconds S] [--attackers N] [--quick]``. This is
a script, not a test; it only uses 127.0.0.1.
"""

from __future__ import annotations

import argparse
import imaplib
import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support import ServerProcess  # noqa: E402

DOMAIN = "example.org"
VICTIM = f"victim@{DOMAIN}"
ATTACKER = f"attacker@{DOMAIN}"
PASSWORD = "probe-password"
GOAL_MS = 200.0


def folded(n: int) -> bytes:
    """A message whose To: holds C{n} addresses, one per folded line."""
    to = b",\r\n ".join(b"user%d@example.com" % i for i in range(n))
    return b"From: a@example.net\r\nSubject: many\r\nTo: " + to + b"\r\n\r\nbody\r\n"


def params(n: int) -> bytes:
    """A message whose Content-Type has a comment and C{n} parameters."""
    plist = b"; ".join(b"p%d=%d" % (i % 97, i) for i in range(n))
    return (b"From: a@example.net\r\nSubject: params\r\nContent-Type: text/plain (c); "
            + plist + b"\r\n\r\nx\r\n")


def nested(depth: int) -> bytes:
    """A message of C{depth} nested multiparts."""
    head = b"From: a@example.net\r\nSubject: nested\r\n"
    opening = b""
    closing = b""
    for i in range(depth):
        opening += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        closing = b"\r\n--b%d--\r\n" % i + closing
    return head + opening + b"Content-Type: text/plain\r\n\r\nleaf\r\n" + closing


def normal(i: int) -> bytes:
    """An ordinary message for the victim's INBOX."""
    return (f"From: friend{i % 17}@example.net\r\nTo: {VICTIM}\r\nSubject: note {i}\r\n"
            f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{i}@probe.example>\r\n"
            f"\r\n" + "hello there, nothing hostile here\r\n" * 20).encode()


def prepare(data: str, victimMessages: int) -> None:
    """Write the passwd file and the victim's INBOX (set-up, no fsync needed)."""
    from pymaild.auth import passwd as passwdModule
    from pymaild.auth.passwd import PasswdFile
    from pymaild.store import MaildirStore

    passwdModule.configureHashing(memory_cost=256, rounds=1, parallelism=1)
    passwd = PasswdFile(os.path.join(data, "passwd"))
    for user in (VICTIM, ATTACKER):
        passwd.add(user, PASSWORD)
    store = MaildirStore(os.path.join(data, "mail"), "mail." + DOMAIN)
    for i in range(victimMessages):
        store.deliver([VICTIM], normal(i))
    store.deliver([ATTACKER], b"From: a@example.net\r\nSubject: seed\r\n\r\nseed\r\n")


class Probe(threading.Thread):
    """Runs C{step} over and over until told to stop, recording each one's latency."""

    def __init__(self, name: str, setup: Callable[[], object],
                 step: Callable[[object], None], teardown: Callable[[object], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.setup = setup
        self.step = step
        self.teardown = teardown
        self.samples: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.recording = threading.Event()

    def run(self) -> None:
        """Connect, then step until stopped (recording only while C{recording} is set)."""
        conn = self.setup()
        try:
            while not self.stopping.is_set():
                t = time.perf_counter()
                try:
                    self.step(conn)
                except Exception as e:  # a probe that failed says so in the report
                    self.errors.append(repr(e))
                    return
                if self.recording.is_set():
                    self.samples.append((time.perf_counter() - t) * 1000)
                time.sleep(0.02)
        finally:
            try:
                self.teardown(conn)
            except Exception:
                pass


def imapLogin(port: int, user: str) -> imaplib.IMAP4:
    """A logged-in IMAP connection (cleartext LOGIN is allowed from loopback)."""
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(user, PASSWORD)
    return c


def selectProbe(port: int) -> Probe:
    """The victim re-selecting INBOX."""
    def step(c: object) -> None:
        typ, _ = c.select("INBOX")  # type: ignore[attr-defined]
        if typ != "OK":
            raise RuntimeError(f"SELECT answered {typ}")

    return Probe("select", lambda: imapLogin(port, VICTIM), step,
                 lambda c: c.logout())  # type: ignore[attr-defined]


def deliveryProbe(port: int) -> Probe:
    """One SMTP session delivering small messages to the victim."""
    counter = iter(range(10**9))

    def setup() -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", port, timeout=60)
        s.ehlo("probe.example")
        return s

    def step(s: object) -> None:
        i = next(counter)
        msg = (f"From: sender@example.net\r\nTo: {VICTIM}\r\nSubject: probe {i}\r\n\r\n"
               "probe\r\n").encode()
        s.sendmail("sender@example.net", [VICTIM], msg)  # type: ignore[attr-defined]

    return Probe("delivery", setup, step, lambda s: s.quit())  # type: ignore[attr-defined]


class Attacker(threading.Thread):
    """One hostile IMAP session: APPEND, FETCH ENVELOPE BODYSTRUCTURE, SEARCH TEXT."""

    def __init__(self, port: int, messages: list[bytes], index: int) -> None:
        super().__init__(name=f"attacker-{index}", daemon=True)
        self.port = port
        self.messages = messages
        self.index = index
        self.rounds = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        """Loop until stopped."""
        c = imapLogin(self.port, ATTACKER)
        try:
            c.select("INBOX")
            n = 0
            while not self.stopping.is_set():
                msg = self.messages[(self.index + n) % len(self.messages)]
                n += 1
                # A unique first line: a fresh file and summary every time.
                fresh = b"X-Round: %d-%d\r\n" % (self.index, n) + msg
                typ, data = c.append("INBOX", "", None, fresh)
                if typ != "OK":
                    raise RuntimeError(f"APPEND answered {typ} {data!r}")
                typ, data = c.select("INBOX")
                count = int(data[0])
                c.fetch(str(count), "(ENVELOPE BODYSTRUCTURE)")
                c.search(None, "TEXT", "zzqxnotpresent")
                self.rounds += 1
        except Exception as e:
            self.errors.append(repr(e))
        finally:
            try:
                c.logout()
            except Exception:
                pass


def attackMain(port: int, messages: list[bytes], count: int,
               stop: multiprocessing.synchronize.Event,
               out: multiprocessing.Queue[object]) -> None:
    """The attackers' process: C{count} L{Attacker} threads until C{stop} is set."""
    attackers = [Attacker(port, messages, i) for i in range(count)]
    for a in attackers:
        a.start()
    stop.wait()
    for a in attackers:
        a.stopping.set()
    for a in attackers:
        a.join(120)
    out.put((sum(a.rounds for a in attackers), [e for a in attackers for e in a.errors]))


class AttackProcess:
    """The attacker sessions, run in a process of their own.

    The probes measure what the server makes them wait: the attackers' own client work
    (imaplib building 12 MB APPENDs and parsing huge answers) holds the GIL of whatever
    process runs it, so it must not share the probes' process.
    """

    def __init__(self, port: int, messages: list[bytes], count: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.stopping = ctx.Event()
        self.results: multiprocessing.Queue[object] = ctx.Queue()
        self.process = ctx.Process(target=attackMain, daemon=True,
                                   args=(port, messages, count, self.stopping, self.results))
        self.result: tuple[int, list[str]] = (0, [])

    def start(self) -> None:
        """Start the attackers' process."""
        self.process.start()

    def stop(self) -> None:
        """Stop the attackers and collect their rounds and errors."""
        self.stopping.set()
        try:
            self.result = self.results.get(timeout=150)  # type: ignore[assignment]
        except Exception:
            self.result = (0, ["the attackers' process gave no result"])
        self.process.join(10)


def summary(samples: list[float]) -> tuple[int, float, float, float]:
    """C{(count, p50, p95, max)} of latencies in milliseconds."""
    if not samples:
        return (0, float("nan"), float("nan"), float("nan"))
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return (len(ordered), statistics.median(ordered), p95, ordered[-1])


def measure(probes: list[Probe], seconds: float) -> dict[str, list[float]]:
    """Record every probe's latencies for C{seconds}; return them by probe name."""
    for p in probes:
        p.samples.clear()
        p.recording.set()
    time.sleep(seconds)
    for p in probes:
        p.recording.clear()
    return {p.name: list(p.samples) for p in probes}


def main() -> None:
    """Run the quiet phase, then the attacked phase, and print the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--attackers", type=int, default=8, help="hostile IMAP sessions")
    ap.add_argument("--victim-messages", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="smaller hostile messages, 8 s phases")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    seconds = 8.0 if args.quick else args.seconds
    hostile = [folded(100_000 // scale), params(1_000_000 // scale), nested(200)]
    base = tempfile.mkdtemp(prefix="pymaild-hostile-")
    data = os.path.join(base, "data")
    os.makedirs(data)
    prepare(data, args.victim_messages)
    server = ServerProcess(data, DOMAIN, listeners=("smtp", "imap"))
    server.start()
    attack: AttackProcess | None = None
    probes: list[Probe] = []
    try:
        probes = [selectProbe(server.ports["imap"]), deliveryProbe(server.ports["smtp"])]
        for p in probes:
            p.start()
        time.sleep(1.0)  # connected and warm
        quiet = measure(probes, seconds)
        attack = AttackProcess(server.ports["imap"], hostile, args.attackers)
        attack.start()
        time.sleep(2.0)  # the attack under way
        loud = measure(probes, seconds)
    finally:
        if attack is not None:
            attack.stop()
        for p in probes:
            p.stopping.set()
        for t in probes:
            t.join(120)
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    sizes = ", ".join(f"{len(m) / 1e6:.1f} MB" for m in hostile)
    print(f"hostile messages: {sizes}; {args.attackers} attacker sessions; "
          f"{seconds:.0f} s per phase; load average {os.getloadavg()[0]:.2f}")
    print(f"{'probe':10} {'phase':8} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    verdicts = []
    for p in probes:
        q = summary(quiet[p.name])
        a = summary(loud[p.name])
        for phase, s in (("quiet", q), ("attacked", a)):
            print(f"{p.name:10} {phase:8} {s[0]:5d} {s[1]:9.1f} {s[2]:9.1f} {s[3]:9.1f}")
        ratio = a[2] / q[2] if q[2] > 0 else float("nan")
        ok = a[2] < GOAL_MS
        verdicts.append(ok)
        print(f"{p.name:10} p95 attacked/quiet = {ratio:.2f}; goal p95 < {GOAL_MS:.0f} ms: "
              f"{'met' if ok else 'NOT met'}")
        if p.errors:
            print(f"{p.name:10} errors: {p.errors[:3]}")
    rounds, errors = attack.result if attack is not None else (0, [])
    print(f"attacker rounds completed: {rounds} "
          f"({rounds / seconds:.2f}/s over the attacked phase and its 2 s lead-in)")
    if errors:
        print(f"attacker errors: {errors[:3]}")
    sys.exit(0 if all(verdicts) else 1)


if __name__ == "__main__":
    main()
