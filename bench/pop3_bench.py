#!/usr/bin/env python3
"""POP3 throughput benchmark: pymaild against Dovecot on the same Maildir.

Creates a mailbox of N messages (default 10,000; sizes 1 KiB .. 256 KiB, some with
``.`` lines that need stuffing), starts pymaild's POP3 server in a subprocess on
127.0.0.1 (the same pieces the tap wires: MaildirStore, thread pools, PasswdChecker,
AuthGate, POP3Factory), logs in and times STAT, UIDL, LIST and RETR of every message
(one by one, then pipelined), printing msg/s and MB/s.

When Dovecot is installed (``doveconf`` and the ``pop3`` binary under /usr/lib/dovecot
or /usr/libexec/dovecot), or unpacked with ``--dovecot-root DIR`` (``apt-get download
dovecot-core dovecot-pop3d`` then ``dpkg-deb -x`` each into DIR), the same client runs
the same phases against Dovecot's pop3 on the same Maildir -- pre-authenticated, on
stdin/stdout pipes, since Dovecot refuses to run its pop3 binary on an inetd socket --
and the script prints pymaild/Dovecot time ratios and whether both servers give the
same UIDL listing (they should: both use ``%08Xu%08Xv`` over the same dovecot-uidlist).
Pipes cost less than TCP, so the baseline slightly favours Dovecot; login is not
compared (Dovecot's session is pre-authenticated).

Usage: ``python bench/pop3_bench.py [--messages N] [--window W] [--keep DIR]
[--dovecot-root DIR [--dovecot-tcp]] [--no-dovecot] [--repeat N] [--min-size OCTETS]
[--lf] [--profile FILE]`` (C{--repeat}: each server N times, alternating, medians
reported; C{--dovecot-tcp}: also Dovecot's master serving POP3 on TCP with a real
USER/PASS, the same path as pymaild's, run after the others; C{--lf}: the mailbox
as another MTA leaves it, LF line ends and names without C{W=}; C{--profile}: the
pymaild server under cProfile, stats written to FILE).
Runs in a few minutes on a small machine; this is a script, not a test.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support import cpuSeconds  # noqa: E402

USER = "bench@example.org"
PASSWORD = "bench-password"
HOST = "127.0.0.1"
DOVECOT_POP3 = ("/usr/lib/dovecot/pop3", "/usr/libexec/dovecot/pop3",
                "/usr/local/libexec/dovecot/pop3")


# -- mailbox --------------------------------------------------------------------------


def messageSizes(n: int, rng: random.Random) -> list[int]:
    """Sizes for N messages: mostly small, a quarter medium, a few large."""
    sizes = []
    for _ in range(n):
        r = rng.random()
        if r < 0.70:
            sizes.append(rng.randint(1024, 8192))
        elif r < 0.95:
            sizes.append(rng.randint(8192, 65536))
        else:
            sizes.append(rng.randint(65536, 262144))
    return sizes


_ALPHABET = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def makeMessage(i: int, size: int, rng: random.Random, text: bytes) -> bytes:
    """One CRLF message of about C{size} octets cut from C{text}; every 7th has '.' lines."""
    head = (
        f"From: Sender {i} <sender{i}@remote.example>\r\n"
        f"To: {USER}\r\n"
        f"Subject: bench message {i}\r\n"
        f"Message-ID: <bench-{i}@remote.example>\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n\r\n"
    ).encode()
    lines = [head]
    total = len(head)
    while total < size:
        if i % 7 == 0 and rng.random() < 0.05:
            line = b".\r\n" if rng.random() < 0.5 else b"..dots\r\n"
        else:
            start = rng.randrange(0, len(text) - 80)
            line = text[start : start + rng.randint(20, 76)] + b"\r\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)


def buildMailbox(base: str, n: int, seed: int = 1939,
                 lf: bool = False) -> tuple[str, int]:
    """Create the user (passwd) and N messages in new/; return (Maildir path, octets).

    Files are written straight into C{new/} with Dovecot-style names (no fsync: this is
    set-up, not delivery), then one pymaild scan assigns the UIDs. With C{lf}, the files
    are as another MTA delivers them: LF line ends and a name with C{S=} (the file's
    size) but no C{W=}.
    """
    from pymaild.auth.passwd import PasswdFile
    from pymaild.store import MaildirStore
    from pymaild.store.writing import escapeHostname, uniqueName

    store = MaildirStore(os.path.join(base, "mail"), hostname="bench.example.org")
    PasswdFile(os.path.join(base, "passwd")).add(USER, PASSWORD)
    account = store.account(USER)
    newDir = os.path.join(account.root, "new")
    rng = random.Random(seed)
    total = 0
    # A small pool of distinct bodies, reused, keeps set-up fast.
    text = bytes(rng.choice(_ALPHABET) for _ in range(1 << 16))
    pool = [makeMessage(i, s, rng, text)
            for i, s in enumerate(messageSizes(min(n, 500), rng))]
    host = escapeHostname("bench.example.org")
    for i in range(n):
        data = pool[i % len(pool)]
        if lf:
            data = data.replace(b"\r\n", b"\n")
            name = f"{uniqueName(host)},S={len(data)}"
        else:
            name = f"{uniqueName(host)},S={len(data)},W={len(data)}"
        with open(os.path.join(newDir, name), "wb") as f:
            f.write(data)
        total += len(data)
    state = account.folder("INBOX").scan()
    assert len(state.messages) == n, len(state.messages)
    return account.root, total


# -- pymaild server subprocess ---------------------------------------------------------


def serve(base: str, portFile: str, profile: str | None = None) -> None:
    """Run pymaild's POP3 server on 127.0.0.1:0 until SIGTERM (subprocess mode), under
    cProfile into C{profile} when given."""
    from twisted.cred.checkers import AllowAnonymousAccess
    from twisted.cred.portal import Portal
    from twisted.internet import reactor
    from twisted.mail import pop3

    from pymaild import config as configModule
    from pymaild.auth.checker import PasswdChecker
    from pymaild.auth.passwd import PasswdFile
    from pymaild.auth.penalty import AuthGate, AuthPenalty
    from pymaild.auth.realm import MailRealm
    from pymaild.pop3.mailbox import POP3Avatars
    from pymaild.pop3.server import POP3Factory
    from pymaild.store import MaildirStore
    from pymaild.threads import ThreadRunner, makePool

    config = configModule.load(None, {
        "server": {"data": base, "hostname": "bench.example.org",
                   "domains": ["example.org"]},
        "auth": {"passwd": os.path.join(base, "passwd")},
    })
    store = MaildirStore(os.path.join(base, "mail"), hostname="bench.example.org")
    diskPool = makePool("pymaild-disk", 8)
    authPool = makePool("pymaild-auth", 4)
    diskPool.start()
    authPool.start()
    reactor.addSystemEventTrigger("after", "shutdown", diskPool.stop)
    reactor.addSystemEventTrigger("after", "shutdown", authPool.stop)
    disk = ThreadRunner(reactor, diskPool)
    auth = ThreadRunner(reactor, authPool)
    passwd = PasswdFile(config.auth.passwd)
    realm = MailRealm({pop3.IMailbox: POP3Avatars(store, disk, config)})
    portal = Portal(realm, [PasswdChecker(passwd, auth), AllowAnonymousAccess()])
    gate = AuthGate(portal, AuthPenalty(), reactor)
    factory = POP3Factory(config=config, gate=gate, tlsContext=None, implicitTLS=False,
                          clock=reactor)
    port = reactor.listenTCP(0, factory, interface=HOST)
    with open(portFile + ".tmp", "w") as f:
        f.write(str(port.getHost().port))
    os.replace(portFile + ".tmp", portFile)
    if profile is None:
        reactor.run()
        return
    import cProfile

    prof = cProfile.Profile()
    prof.runcall(reactor.run)
    prof.dump_stats(profile)


def startPymaild(base: str, profile: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start the server subprocess (under cProfile into C{profile} when given); return
    it and its port."""
    portFile = os.path.join(base, "pymaild.port")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    extra = ["--profile", os.path.abspath(profile)] if profile else []
    if os.path.exists(portFile):
        os.unlink(portFile)  # a previous run's
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", base,
                             "--port-file", portFile, *extra], env=env)
    deadline = time.monotonic() + 60
    while not os.path.exists(portFile):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("pymaild server did not start")
        time.sleep(0.05)
    with open(portFile) as f:
        return proc, int(f.read())


def stopProcess(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM the process and return its CPU seconds (user + system)."""
    proc.send_signal(signal.SIGTERM)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_utime + usage.ru_stime


# -- Dovecot baseline ------------------------------------------------------------------


def findDovecot(root: str | None) -> tuple[str, str, dict[str, str]] | None:
    """(pop3 binary, doveconf binary, extra environment) of an installed Dovecot, or of
    one unpacked under C{root} (e.g. C{dpkg-deb -x dovecot-core*.deb root}); or None."""
    if root:
        pop3 = os.path.join(root, "usr/lib/dovecot/pop3")
        doveconf = os.path.join(root, "usr/bin/doveconf")
        env = {"LD_LIBRARY_PATH": os.path.join(root, "usr/lib/dovecot")}
        if os.access(pop3, os.X_OK) and os.access(doveconf, os.X_OK):
            return pop3, doveconf, env
        return None
    doveconf = shutil.which("doveconf")
    for path in DOVECOT_POP3:
        if os.access(path, os.X_OK) and doveconf:
            return path, doveconf, {}
    return None


class DovecotPipe:
    """Dovecot's pre-authenticated pop3 on stdin/stdout pipes (it refuses to run on a
    socket from inetd), configuration passed by C{doveconf -e}.

    Dovecot refuses mail access as root: when the bench runs as root, the tree is given
    to C{nobody} and Dovecot drops to that user.
    """

    def __init__(self, found: tuple[str, str, dict[str, str]], maildir: str,
                 base: str) -> None:
        pop3, doveconf, extraEnv = found
        self.conf = os.path.join(base, "dovecot", "dovecot.conf")
        os.makedirs(os.path.join(base, "dovecot", "run"), exist_ok=True)
        home = os.path.dirname(maildir)
        lines = [
            f"mail_location = maildir:{maildir}",
            "pop3_uidl_format = %08Xu%08Xv",
            f"log_path = {os.path.join(base, 'dovecot', 'dovecot.log')}",
            f"base_dir = {os.path.join(base, 'dovecot', 'run')}",
            "ssl = no",
        ]
        if os.getuid() == 0:
            import grp
            import pwd

            user = pwd.getpwnam("nobody")
            group = grp.getgrgid(user.pw_gid).gr_name
            lines += [f"default_login_user = {user.pw_name}",
                      f"default_internal_user = {user.pw_name}",
                      f"default_internal_group = {group}",
                      f"mail_uid = {user.pw_name}", f"mail_gid = {group}"]
            self.owner = (user.pw_uid, user.pw_gid)
            os.chmod(base, 0o755)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.argv = [doveconf, "-c", self.conf, "-e", pop3]
        self.env = dict(os.environ, USER=USER, HOME=home, MAIL=f"maildir:{maildir}",
                        **extraEnv)
        self.cpu = 0.0
        self.base = base

    owner: tuple[int, int] | None = None

    def prepare(self) -> None:
        """Give the tree to Dovecot's user (when running as root; again before each
        run, since a pymaild run in between may have replaced files)."""
        if self.owner is None:
            return
        for top in (os.path.join(self.base, "mail"), os.path.join(self.base, "dovecot")):
            for d, _dirs, files in os.walk(top):
                for name in [d] + [os.path.join(d, f) for f in files]:
                    os.lchown(name, *self.owner)

    def connect(self) -> Client:
        """Start one pop3 process and return a client on its pipes."""
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=self.env, bufsize=0)
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin.fileno(), proc.stdout.fileno()

        def send(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(stdin, view):]

        def close() -> None:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            _pid, _status, usage = os.wait4(proc.pid, 0)
            proc.returncode = 0
            proc.stdout.close()
            self.cpu += usage.ru_utime + usage.ru_stime

        return Client(lambda: os.read(stdout, 1 << 20), send, close)


class DovecotTCP:
    """Dovecot's master serving POP3 on a loopback port (pop3-login and pop3 from the
    unpacked packages, the master and the rest as installed), with a real USER/PASS
    against pymaild's passwd file: the same path as pymaild's, TCP and login included.

    It builds on the IMAP interop launcher's configuration (L{tests.interop.
    dovecot_support}), with POP3 in place of IMAP.
    """

    def __init__(self, root: str, base: str) -> None:
        from tests.interop.dovecot_support import Dovecot as Launcher

        master = shutil.which("dovecot") or os.path.join(root, "usr/sbin/dovecot")
        self.launcher = Launcher(master, base, os.path.join(base, "dovecot-tcp"))
        libexec = os.path.join(root, "usr/lib/dovecot")
        with open(self.launcher.conf) as f:
            conf = f.read()
        head, _, rest = conf.partition("service imap-login {")
        rest = rest.split("service anvil {", 1)[1]
        conf = (head.replace("protocols = imap", "protocols = pop3")
                + "pop3_uidl_format = %08Xu%08Xv\n"
                + "service pop3-login {\n  chroot =\n"
                + f"  executable = {libexec}/pop3-login\n"
                + "  inet_listener pop3 {\n    address = 127.0.0.1\n"
                + f"    port = {self.launcher.port}\n  }}\n"
                + "  inet_listener pop3s {\n    port = 0\n  }\n}\n"
                + f"service pop3 {{\n  executable = {libexec}/pop3\n}}\n"
                + "service anvil {" + rest)
        with open(self.launcher.conf, "w") as f:
            f.write(conf)
        self.port = self.launcher.port
        self.cpu = 0.0

    def serverCpu(self) -> float:
        """CPU seconds of every Dovecot process so far (the session's pop3 and
        pop3-login, the master, auth...)."""
        total = 0.0
        assert self.launcher.proc is not None
        todo = [self.launcher.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                total += cpuSeconds(pid)
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
            except OSError:
                pass
        return total


# -- client ----------------------------------------------------------------------------


class Client:
    """A minimal, fast POP3 client over a byte stream (a TCP socket or pipes)."""

    def __init__(self, recv: Any, send: Any, close: Any) -> None:
        self.recv = recv
        self.send = send
        self._close = close
        self.buf = bytearray()
        self.wire = 0

    @classmethod
    def tcp(cls, port: int) -> Client:
        """Connect to 127.0.0.1:port."""
        sock = socket.create_connection((HOST, port), timeout=120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(lambda: sock.recv(1 << 20), sock.sendall, sock.close)

    def _fill(self) -> None:
        """Read more bytes from the socket."""
        data = self.recv()
        if not data:
            raise ConnectionError("server closed the connection")
        self.wire += len(data)
        self.buf += data

    def line(self) -> bytes:
        """One response line (without CRLF)."""
        while True:
            i = self.buf.find(b"\r\n")
            if i != -1:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            self._fill()

    def multi(self) -> tuple[bytes, int]:
        """A multi-line response: (status line, body length on the wire)."""
        status = self.line()
        if not status.startswith(b"+OK"):
            raise RuntimeError(f"server said {status!r}")
        start = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                del self.buf[:3]
                return status, 0
            i = self.buf.find(b"\r\n.\r\n", start)
            if i != -1:
                del self.buf[: i + 5]
                return status, i + 2
            start = max(0, len(self.buf) - 4)
            self._fill()

    def cmd(self, line: bytes) -> bytes:
        """Send a command, return its one-line reply."""
        self.send(line + b"\r\n")
        return self.line()

    def close(self) -> None:
        """QUIT and close."""
        try:
            self.cmd(b"QUIT")
        finally:
            self._close()


def timed(f: Any) -> tuple[float, Any]:
    """Run C{f()} and return (seconds, result)."""
    t = time.perf_counter()
    r = f()
    return time.perf_counter() - t, r


def runClient(connect: Any, n: int, window: int, preauth: bool,
              minSize: int = 0, serverCpu: Any = None) -> dict[str, Any]:
    """Connect, log in (unless pre-authenticated: no greeting either) and time every
    phase; the RETR phases take the messages of at least C{minSize} octets. With
    C{serverCpu} (the server's CPU seconds so far), the RETR phases' CPU is noted."""
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    c = connect()
    if not preauth:
        greeting = c.line()
        if not greeting.startswith(b"+OK"):
            raise RuntimeError(f"greeting {greeting!r}")
        assert c.cmd(b"USER " + USER.encode()).startswith(b"+OK")
        reply = c.cmd(b"PASS " + PASSWORD.encode())
        assert reply.startswith(b"+OK"), reply
    res["login"] = time.perf_counter() - t0
    res["stat"], stat = timed(lambda: c.cmd(b"STAT"))
    count, octets = (int(x) for x in stat.split()[1:3])
    assert count == n, stat
    res["octets"] = octets

    def listing(cmd: bytes) -> list[bytes]:
        c.send(cmd + b"\r\n")
        status = c.line()
        assert status.startswith(b"+OK"), status
        lines = []
        while True:
            line = c.line()
            if line == b".":
                return lines
            lines.append(line)

    res["uidl"], uidls = timed(lambda: listing(b"UIDL"))
    res["list"], sizes = timed(lambda: listing(b"LIST"))
    assert len(uidls) == n and len(sizes) == n
    res["uidls"] = uidls
    picks = [int(num) for num, size in (line.split() for line in sizes)
             if int(size) >= minSize]
    res["retrCount"] = len(picks)

    def retrAll(pipeline: int) -> int:
        body = 0
        sent = 0
        for i in range(len(picks)):
            while sent < min(len(picks), i + 1 + pipeline):
                c.send(b"RETR %d\r\n" % picks[sent])
                sent += 1
            status, size = c.multi()
            body += size
        return body

    before = c.wire
    cpu0 = serverCpu() if serverCpu else 0.0
    res["retr"], body = timed(lambda: retrAll(0))
    res["retrWire"] = c.wire - before
    if serverCpu:
        res["retrCpu"] = serverCpu() - cpu0
    assert minSize or body >= octets, (body, octets)
    if window > 1:
        before = c.wire
        cpu0 = serverCpu() if serverCpu else 0.0
        res["retrPipe"], _ = timed(lambda: retrAll(window - 1))
        res["retrPipeWire"] = c.wire - before
        if serverCpu:
            res["retrPipeCpu"] = serverCpu() - cpu0
    c.close()
    return res


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-figure medians of several runs of one server (other values from the first)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            values = sorted(r[key] for r in runs)
            out[key] = values[len(values) // 2]
    return out


def report(name: str, r: dict[str, Any], n: int, window: int) -> None:
    """Print one server's figures."""
    mb = r["retrWire"] / 1e6
    count = r["retrCount"]
    print(f"\n{name}")
    print(f"  login            {r['login'] * 1000:9.1f} ms")
    print(f"  STAT             {r['stat'] * 1000:9.1f} ms")
    print(f"  UIDL ({n} lines) {r['uidl'] * 1000:9.1f} ms")
    print(f"  LIST ({n} lines) {r['list'] * 1000:9.1f} ms")
    print(f"  RETR x{count}      {r['retr']:9.2f} s  {count / r['retr']:9.0f} msg/s"
          f"  {mb / r['retr']:7.1f} MB/s")
    if "retrPipe" in r:
        print(f"  RETR pipelined ({window}) {r['retrPipe']:6.2f} s  {count / r['retrPipe']:9.0f}"
              f" msg/s  {r['retrPipeWire'] / 1e6 / r['retrPipe']:7.1f} MB/s")
    if "cpu" in r:
        print(f"  server CPU       {r['cpu']:9.2f} s (after start-up)")
    for key, label in (("retrCpu", "RETR one by one"), ("retrPipeCpu", "RETR pipelined")):
        if key in r:
            print(f"  server CPU, {label} {r[key] * 1e6 / count:7.0f} us/message")


def main() -> None:
    """Parse arguments, build the mailbox, run both servers, print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--window", type=int, default=16,
                   help="RETR commands in flight for the pipelined pass (1 = skip it)")
    p.add_argument("--keep", metavar="DIR", help="build the mailbox in DIR and keep it")
    p.add_argument("--no-dovecot", action="store_true", help="skip the Dovecot baseline")
    p.add_argument("--dovecot-root", metavar="DIR",
                   help="use a Dovecot unpacked under DIR (dpkg-deb -x of dovecot-core and"
                        " dovecot-pop3d) instead of an installed one")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each server N times, alternating, and report medians")
    p.add_argument("--dovecot-tcp", action="store_true",
                   help="with --dovecot-root, also run Dovecot's master serving POP3 over"
                        " TCP with a real login (pop3-login and pop3 from DIR)")
    p.add_argument("--min-size", type=int, default=0, metavar="OCTETS",
                   help="RETR only the messages of at least OCTETS (LIST sizes)")
    p.add_argument("--lf", action="store_true",
                   help="a mailbox as another MTA delivers it: LF line ends, no W= in names")
    p.add_argument("--profile", metavar="FILE",
                   help="run the pymaild server under cProfile and write the stats to FILE")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port_file, args.profile)
        return

    base = args.keep or tempfile.mkdtemp(prefix="pop3bench-")
    os.makedirs(base, exist_ok=True)
    n = args.messages
    try:
        t, (maildir, octets) = timed(lambda: buildMailbox(base, n, lf=args.lf))
        print(f"mailbox: {n} messages, {octets / 1e6:.1f} MB in {maildir} (built in {t:.1f} s)")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs,"
              f" max RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB")

        found = None if args.no_dovecot else findDovecot(args.dovecot_root)
        dove = DovecotPipe(found, maildir, base) if found is not None else None
        oursRuns: list[dict[str, Any]] = []
        theirsRuns: list[dict[str, Any]] = []
        for _ in range(args.repeat):
            proc, port = startPymaild(base, args.profile)
            startup = cpuSeconds(proc.pid)
            try:
                run = runClient(lambda p=port: Client.tcp(p), n, args.window, preauth=False,
                                minSize=args.min_size,
                                serverCpu=lambda pid=proc.pid: cpuSeconds(pid))
            finally:
                cpu = stopProcess(proc) - startup
            run["cpu"] = cpu
            oursRuns.append(run)
            if dove is not None:
                dove.cpu = 0.0
                dove.prepare()
                run = runClient(dove.connect, n, args.window, preauth=True,
                                minSize=args.min_size)
                run["cpu"] = dove.cpu
                theirsRuns.append(run)
        tcpRuns: list[dict[str, Any]] = []
        if found is not None and args.dovecot_root and args.dovecot_tcp:
            for _ in range(args.repeat):
                dt = DovecotTCP(args.dovecot_root, base)
                dt.launcher.start()
                try:
                    c0 = dt.serverCpu()
                    run = runClient(lambda p=dt.port: Client.tcp(p), n, args.window,
                                    preauth=False, minSize=args.min_size,
                                    serverCpu=dt.serverCpu)
                    run["cpu"] = dt.serverCpu() - c0
                finally:
                    dt.launcher.stop()
                tcpRuns.append(run)
        ours = medians(oursRuns)
        report("pymaild (subprocess, thread pools as in the tap)", ours, n, args.window)
        if found is None or dove is None:
            print("\nDovecot: not installed (no doveconf and pop3 binary in "
                  f"{', '.join(DOVECOT_POP3)}; see --dovecot-root); no baseline.")
            return
        binary = found[0]
        theirs = medians(theirsRuns)
        report(f"Dovecot {binary} (pre-authenticated, on pipes)", theirs, n, args.window)
        if tcpRuns:
            tcp = medians(tcpRuns)
            report("Dovecot over TCP (master, pop3-login, pop3; USER/PASS)", tcp, n,
                   args.window)
            print("\nratio pymaild / Dovecot over TCP (time; > 1 means pymaild is slower)")
            for key, label in (("retr", "RETR one by one"), ("retrPipe", "RETR pipelined"),
                               ("retrCpu", "server CPU, RETR one by one"),
                               ("retrPipeCpu", "server CPU, RETR pipelined")):
                if key in ours and key in tcp and tcp[key] > 0:
                    print(f"  {ours[key] / tcp[key]:6.2f}  {label}")
        for r in (ours, theirs):
            r["open"] = r["login"] + r["stat"]
        print("\nratio pymaild / Dovecot (time; > 1 means pymaild is slower)")
        labels = {"open": "login+STAT (mailbox open; pymaild also checks the password)",
                  "uidl": "UIDL", "list": "LIST", "retr": "RETR one by one",
                  "retrPipe": "RETR pipelined", "cpu": "server CPU"}
        for key, label in labels.items():
            if key in ours and key in theirs and theirs[key] > 0:
                print(f"  {ours[key] / theirs[key]:6.2f}  {label}")
        same = ours["uidls"] == theirs["uidls"]
        print(f"\nUIDL listings identical: {'yes' if same else 'NO'}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
