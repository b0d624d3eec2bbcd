"""Shared helpers for tests that run a real pymaild: free ports, a twistd subprocess.

Every listener binds 127.0.0.1 only. ``ServerProcess`` starts ``twistd -n pymaild`` with
the repository on ``PYTHONPATH`` and waits until its ports accept connections.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, NoReturn

from twisted.trial.unittest import SkipTest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALICE = "alice@example.org"
ALICE_PW = "correct horse"
BOB = "bob@example.org"
BOB_PW = "hunter2"


def lowCostHashing(testcase: Any) -> None:
    """Make argon2 cheap for the test, restoring the defaults afterwards."""
    from pymaild.auth import passwd as passwdModule

    passwdModule.configureHashing(memory_cost=256, rounds=1, parallelism=1)
    testcase.addCleanup(passwdModule.configureHashing)


def dataWithUsers(testcase: Any, users: dict[str, str]) -> tuple[str, str]:
    """A new base directory and its C{data} directory under the test's temporary
    directory, with C{users} (address → password) in the passwd file, hashed cheaply.

    @return: C{(base, data)}.
    """
    from pymaild.auth.passwd import PasswdFile

    base = os.path.abspath(testcase.mktemp())
    data = os.path.join(base, "data")
    os.makedirs(data)
    lowCostHashing(testcase)
    passwd = PasswdFile(os.path.join(data, "passwd"))
    for address, password in users.items():
        passwd.add(address, password)
    return base, data


def mailFixture(testcase: Any, cleartext: str, section: str,
                values: dict[str, Any]) -> tuple[str, Any, Any, Any]:
    """A data directory with Alice and Bob: (base, config, store, passwd).

    The config serves example.org from mx.example.org with the given cleartext policy,
    plus C{values} for one protocol C{section}.
    """
    from pymaild import config as configModule
    from pymaild.auth.passwd import PasswdFile
    from pymaild.store import MaildirStore

    lowCostHashing(testcase)
    base = os.path.abspath(testcase.mktemp())
    os.makedirs(base)
    config = configModule.load(
        None,
        {
            "server": {"data": base, "hostname": "mx.example.org", "domains": ["example.org"]},
            "auth": {"cleartext": cleartext, "passwd": os.path.join(base, "passwd")},
            section: values,
        },
    )
    store = MaildirStore(os.path.join(base, "mail"), hostname="mx.example.org")
    passwd = PasswdFile(config.auth.passwd)
    passwd.add(ALICE, ALICE_PW)
    passwd.add(BOB, BOB_PW)
    return base, config, store, passwd


_handedOut: set[int] = set()


def freePort() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, never one this test run
    handed out before (the kernel may offer a just-closed port again, and a server
    given the same port for two listeners fails to start)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handedOut:
            _handedOut.add(port)
            return port


def waitForPort(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None,
                host: str = "127.0.0.1") -> None:
    """Block until C{host}:port (default 127.0.0.1) accepts a connection.

    @raise RuntimeError: the process died or the port stayed closed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout}s")


def cpuSeconds(pid: int) -> float:
    """User plus system CPU time of process C{pid} (all its threads), from /proc.

    @raise OSError: the process is gone.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stopProcess(proc: subprocess.Popen[Any], grace: float = 15.0,
                sig: int = signal.SIGTERM) -> None:
    """Stop a child process: C{sig}, then SIGKILL when it has not exited after C{grace}
    seconds. Does nothing to a process that already exited."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


MISSING = "is not installed"
"""The phrase in the reason of every skip for want of a program or library; under CI
C{tests/conftest.py} turns such a skip into a failure, whichever helper raised it."""


def underCI() -> bool:
    """Whether this is a CI run (C{CI=true}), which must have every client installed."""
    return os.environ.get("CI") == "true"


def requireClient(name: str, package: str | None = None) -> str:
    """The path of the external client program C{name}.

    @param package: the Debian package that provides it (default: C{name}), for the
        message.
    @raise SkipTest: it is missing (outside CI).
    @raise AssertionError: it is missing under CI (C{CI=true}): a failure, not a skip.
    """
    path = shutil.which(name)
    if path is None:
        missing(name, f"apt-get install {package or name}")
    assert path is not None
    return path


def missing(name: str, install: str) -> NoReturn:
    """Give up on a test for want of the program or library C{name}.

    @param install: how to install it, for the message (C{apt-get install swaks}).
    @raise SkipTest: outside CI.
    @raise AssertionError: under CI, where a missing program is a failure.
    """
    reason = f"{name} {MISSING} ({install})"
    if underCI():
        raise AssertionError(f"required under CI: {reason}")
    raise SkipTest(reason)


LISTENERS = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "metrics",
             "http", "https", "managesieve")


class ServerProcess:
    """A ``twistd -n pymaild`` subprocess on free loopback ports."""

    def __init__(self, data: str, domain: str = "example.org", extra: list[str] | None = None,
                 listeners: tuple[str, ...] = LISTENERS,
                 twistdArgs: list[str] | None = None, host: str = "127.0.0.1",
                 workers: int | None = 1) -> None:
        """
        @param host: the loopback address every listener binds (127.0.0.1 by default;
            another 127.0.0.0/8 address for a second node on the same machine).
        @param workers: C{--workers}: the processes serving (1 by default: the tests
            of one process's behaviour count its log lines and samples; None: the
            server's own default, one per core).
        """
        self.workers = workers
        self.data = data
        self.host = host
        self.domain = domain
        self.ports = {name: freePort() for name in listeners}
        self.extra = extra or []
        self.twistdArgs = twistdArgs or []
        self.proc: subprocess.Popen | None = None
        self.logPath = data.rstrip("/") + ".log"

    def args(self) -> list[str]:
        """The command line that starts the server."""
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile", self.logPath, *self.twistdArgs, "pymaild",
                "--data", self.data, "--domain", self.domain, "--hostname", "mail." + self.domain]
        if self.workers is not None:
            args += ["--workers", str(self.workers)]
        for name in LISTENERS:
            if name in self.ports:
                args += [f"--{name}", f"tcp:{self.ports[name]}:interface={self.host}"]
            else:
                args += [f"--{name}", "none"]
        return args + self.extra

    def start(self) -> ServerProcess:
        """Start the server and wait until every listener accepts connections."""
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(self.args(), cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for port in self.ports.values():
                waitForPort(port, proc=self.proc, host=self.host)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; log:\n{self.log()}") from None
        return self

    def log(self) -> str:
        """The server's log so far (and anything it wrote to stderr)."""
        text = ""
        if os.path.exists(self.logPath):
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                text = f.read()
        return text

    def kill(self) -> None:
        """SIGKILL the server: no cleanup runs."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM), killing it if it does not stop in time."""
        if self.proc:
            stopProcess(self.proc)
        self._close()

    def _close(self) -> None:
        """Close the pipes of a finished process."""
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()


def setExtraFields(passwdPath: str, address: str, extra: str) -> None:
    """Give C{address}'s line of the passwd file the extra fields C{extra} (Dovecot's
    8th field, e.g. C{"userdb_quota_rule=*:storage=1G"}), as an admin edits it."""
    with open(passwdPath, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        if line.split(":", 1)[0] == address:
            fields = line.split(":", 7)[:7]
            fields += [""] * (7 - len(fields))
            line = ":".join(fields) + ":" + extra
        out.append(line)
    with open(passwdPath, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
