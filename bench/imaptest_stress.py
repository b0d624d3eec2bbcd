#!/usr/bin/env python3
"""imaptest's stress run: a real ``twistd pymaild`` against Dovecot, in one invocation.

Dovecot's imaptest (github dovecot/imaptest, built against Debian's dovecot-dev; it is
not part of this tree) opens C{--clients} sessions (10) as one user for C{--seconds}
(30) and drives each through its default random state machine: LOGIN, LIST, STATUS,
SELECT, FETCH, STORE, EXPUNGE, APPEND from an mbox, LOGOUT, then again, and checks every
answer against what it tracks of the mailbox (flags, EXISTS, EXPUNGE). It prints the
commands done each second and, at the end, their totals; an answer it finds wrong is an
C{Error:} line.

Both servers run one after the other on 127.0.0.1 over the same data: a passwd file with
one user whose hash is the server's default (argon2id, so a login costs both servers the
same verification) and an empty INBOX.

- pymaild: C{twistd -n pymaild} with its default worker count (one per core), or
  C{--workers N};
- Dovecot: its master with the configuration of C{tests/interop/dovecot_support.py}.

Reported per server: the commands per second (the totals over the run's seconds), the
logins per second, the errors imaptest printed, and the server CPU seconds (all the
server's processes); then the ratios pymaild/Dovecot (above 1: pymaild does more).

Usage::

    python bench/imaptest_stress.py --imaptest PATH/src/imaptest
    python bench/imaptest_stress.py --imaptest PATH --seconds 10 --clients 10 --workers 1

The imaptest binary finds C{libdovecot.so.0} in C{/usr/lib/dovecot} (set here).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.imap_bench import TextPool, makeMessage  # noqa: E402
from bench.smtp_ingest import treeCpuSeconds  # noqa: E402
from tests.interop.dovecot_support import Dovecot, findDovecot  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

DOMAIN = "example.org"
USER = f"stress@{DOMAIN}"
PASSWORD = "stress-password"
MBOX_MESSAGES = 200

_ERROR = re.compile(r"^Error: ", re.M)


def makeData(base: str) -> str:
    """A pymaild data directory with the one user, hashed at the server's default."""
    from pymaild.auth.passwd import PasswdFile

    data = os.path.join(base, "data")
    os.makedirs(os.path.join(data, "mail"))
    PasswdFile(os.path.join(data, "passwd")).add(USER, PASSWORD)
    return data


def makeMbox(path: str, n: int, seed: int = 20261207) -> None:
    """An mbox of C{n} messages of the IMAP bench's corpus, for imaptest's APPENDs."""
    rng = random.Random(seed)
    pool = TextPool(rng)
    with open(path, "wb") as f:
        for i in range(n):
            body = makeMessage(i, rng, pool).replace(b"\r\n", b"\n")
            body = re.sub(rb"(?m)^(>*From )", rb">\1", body)
            f.write(b"From stress@example.org Mon Dec  7 12:00:00 2026\n" + body
                    + (b"" if body.endswith(b"\n") else b"\n") + b"\n")


def totals(output: str) -> dict[str, int]:
    """The C{Totals:} table imaptest prints last: C{{command: count}}."""
    lines = output.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Totals:"):
            names = lines[i + 1].split()
            # Then the state machine's percentages, then the counts.
            for line in lines[i + 2:]:
                words = line.split()
                if words and all(w.isdigit() for w in words):
                    return dict(zip(names, map(int, words), strict=False))
    raise RuntimeError("imaptest printed no totals:\n" + output[-2000:])


def runImaptest(binary: str, port: int, mbox: str, args: argparse.Namespace) -> dict[str, Any]:
    """One imaptest stress run against C{port}; its totals, rates and errors."""
    env = dict(os.environ, LD_LIBRARY_PATH="/usr/lib/dovecot")
    argv = [binary, "host=127.0.0.1", f"port={port}", f"user={USER}", f"pass={PASSWORD}",
            f"mbox={mbox}", f"clients={args.clients}", f"secs={args.seconds}",
            *args.imaptest_args]
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                          timeout=args.seconds + 120)
    wall = time.monotonic() - start
    output = proc.stdout + proc.stderr
    counts = totals(output)
    errors = _ERROR.findall(output)
    return {"ops": sum(counts.values()) / args.seconds,
            "logins": counts.get("Logi", 0) / args.seconds,
            "errors": len(errors), "wall": wall, "counts": counts,
            "firstErrors": [line for line in output.splitlines()
                            if line.startswith("Error: ")][:12]}


def measured(pid: int, binary: str, port: int, mbox: str,
             args: argparse.Namespace) -> dict[str, Any]:
    """L{runImaptest} against C{port}, with the CPU seconds of the server process C{pid}
    and its descendants over the run."""
    before = treeCpuSeconds(pid)
    result = runImaptest(binary, port, mbox, args)
    result["cpu"] = treeCpuSeconds(pid) - before
    return result


def runPymaild(binary: str, mbox: str, args: argparse.Namespace) -> dict[str, Any]:
    """imaptest against a real C{twistd pymaild}."""
    base = tempfile.mkdtemp(prefix="bench-stress-pymaild-", dir=args.tmpdir)
    try:
        data = makeData(base)
        config = os.path.join(base, "pymaild.toml")
        with open(config, "w") as f:  # every session comes from one address, one user
            f.write("[limits]\nmax_connections_per_ip = 1000\n"
                    "max_connections_per_user_ip = 1000\n")
        server = ServerProcess(data, DOMAIN, listeners=("imap",), workers=args.workers,
                               extra=["--cleartext-auth", "always", "--config", config])
        server.start()
        try:
            assert server.proc is not None
            return measured(server.proc.pid, binary, server.ports["imap"], mbox, args)
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def runDovecot(binary: str, dovecot: str, mbox: str, args: argparse.Namespace) -> dict[str, Any]:
    """imaptest against Dovecot over the same kind of data."""
    base = tempfile.mkdtemp(prefix="bench-stress-dovecot-", dir=args.tmpdir)
    os.chmod(base, 0o755)
    try:
        data = makeData(base)
        work = os.path.join(base, "work")
        os.makedirs(work)
        server = Dovecot(dovecot, data, work)
        with open(server.conf, "a") as f:  # as pymaild's limits above
            f.write("protocol imap {\n  mail_max_userip_connections = 1000\n}\n")
        server.start()
        try:
            assert server.proc is not None
            return measured(server.proc.pid, binary, server.port, mbox, args)
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def describe(name: str, r: dict[str, Any]) -> str:
    """One server's line."""
    return (f"{name:8s} {r['ops']:8.1f} cmds/s  {r['logins']:6.1f} logins/s  "
            f"{r['errors']:4d} errors  CPU {r['cpu']:6.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Run both servers and print the figures and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--imaptest", default=os.environ.get("IMAPTEST") or shutil.which("imaptest"),
                    help="the imaptest binary (or $IMAPTEST)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--workers", type=int, default=None,
                    help="pymaild's --workers (default: the server's own, one per core)")
    ap.add_argument("--no-dovecot", action="store_true", help="skip the Dovecot baseline")
    ap.add_argument("imaptest_args", nargs="*",
                    help="more imaptest arguments (no_pipelining, a state list...)")
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args(argv)
    if not args.imaptest:
        ap.error("no imaptest binary: give --imaptest PATH")
    dovecot = None if args.no_dovecot else findDovecot(required=False)
    base = tempfile.mkdtemp(prefix="bench-stress-", dir=args.tmpdir)
    try:
        mbox = os.path.join(base, "append.mbox")
        makeMbox(mbox, MBOX_MESSAGES)
        print(f"imaptest stress: {args.clients} clients, {args.seconds} s, one user;"
              f" load {os.getloadavg()[0]:.2f} at the start", flush=True)
        results = {"pymaild": runPymaild(args.imaptest, mbox, args)}
        print(describe("pymaild", results["pymaild"]), flush=True)
        if dovecot:
            results["dovecot"] = runDovecot(args.imaptest, dovecot, mbox, args)
            print(describe("dovecot", results["dovecot"]), flush=True)
        for name, r in results.items():
            if r["errors"]:
                print(f"{name}: first errors:", *r["firstErrors"], sep="\n  ")
        if "dovecot" in results:
            p, d = results["pymaild"], results["dovecot"]
            cpuPer = (p["cpu"] / max(p["ops"], 1e-9)) / (d["cpu"] / d["ops"])
            print(f"pymaild/Dovecot: cmds/s {p['ops'] / d['ops']:.2f}x, "
                  f"logins/s {p['logins'] / max(d['logins'], 1e-9):.2f}x, "
                  f"CPU per command {cpuPer:.2f}x")
        print(f"load {os.getloadavg()[0]:.2f} at the end")
        print("per command (pymaild | dovecot):")
        for cmd in results["pymaild"]["counts"]:
            other = results.get("dovecot", {}).get("counts", {}).get(cmd, "")
            print(f"  {cmd:5s} {results['pymaild']['counts'][cmd]:7d} | {other}")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
