"""A private PostgreSQL for tests and the bench: initdb and the server in a temp directory.

L{PostgreSQL} runs Debian's PostgreSQL binaries (C{initdb}, C{postgres}) on a free
127.0.0.1 port and a unix socket in its own directory, with trust authentication for
the role C{pymaild} only over loopback, and C{fsync} off (a test database need not
survive a crash). initdb refuses to run as root: under root the cluster belongs to the
C{postgres} system user (the Debian package makes it) and the server runs as that user.
L{PostgreSQL.stop} ends the server (SIGINT: PostgreSQL's fast shutdown) and removes
the directory.

L{findPostgres} finds the binaries; under CI (C{CI=true}) a missing PostgreSQL is a
failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

from tests.support import freePort, missing, stopProcess

ROLE = "pymaild"
DATABASE = "pymaild"


def findPostgres() -> str:
    """The directory of PostgreSQL's server binaries (initdb, postgres)."""
    for binDir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(binDir, "initdb"), os.X_OK):
            return binDir
    missing("postgresql", "apt-get install postgresql")


class PostgreSQL:
    """One private PostgreSQL server.

    @ivar port: its TCP port on 127.0.0.1.
    @ivar conninfo: a libpq connection string for the C{pymaild} database.
    """

    def __init__(self) -> None:
        self.binDir = findPostgres()
        # Not under the test's own directory: the postgres user must reach it.
        self.work = tempfile.mkdtemp(prefix="pymaild-pg-")
        self.data = os.path.join(self.work, "data")
        self.port = freePort()
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: pwd.struct_passwd | None = None
        if os.getuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.work, self.user.pw_uid, self.user.pw_gid)
        os.chmod(self.work, 0o700)
        self.conninfo = (f"host=127.0.0.1 port={self.port} user={ROLE} dbname={DATABASE}"
                         " connect_timeout=5")

    def _run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run a PostgreSQL tool as the cluster's owner; fail with its output."""
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid,
                     "extra_groups": []}
        result = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL,
                                cwd=self.work, **extra, **kwargs)
        if result.returncode:
            raise RuntimeError(f"{args[0]} failed: {result.stdout!r} {result.stderr!r}")
        return result

    def start(self, timeout: float = 60.0) -> PostgreSQL:
        """initdb, start the server, create the C{pymaild} database; wait until ready.

        @raise RuntimeError: a step failed or the server did not answer in time.
        """
        self._run([os.path.join(self.binDir, "initdb"), "-D", self.data, "-U", ROLE,
                   "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        self.launch(timeout)
        self._run([os.path.join(self.binDir, "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", ROLE, "-d", "postgres", "-c", f"CREATE DATABASE {DATABASE}"])
        return self

    def launch(self, timeout: float = 60.0) -> None:
        """Start the server on the existing cluster and wait until it is ready (also
        after L{halt}, to bring it back).

        @raise RuntimeError: it exited or did not answer in time.
        """
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid,
                     "extra_groups": []}
        log = open(os.path.join(self.work, "postgres.log"), "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [os.path.join(self.binDir, "postgres"), "-D", self.data, "-p", str(self.port),
                 "-k", self.work, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=100"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.work, **extra)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log()}")
            ready = subprocess.run(
                [os.path.join(self.binDir, "pg_isready"), "-h", "127.0.0.1", "-p",
                 str(self.port), "-U", ROLE, "-d", "postgres"],
                capture_output=True, stdin=subprocess.DEVNULL)
            if ready.returncode == 0:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"postgres did not start within {timeout}s: {self.log()}")

    def halt(self) -> None:
        """Stop the server (fast shutdown: its clients are disconnected), keeping its
        files for L{launch}."""
        if self.proc is not None:
            stopProcess(self.proc, grace=15, sig=signal.SIGINT)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self.halt()
        shutil.rmtree(self.work, ignore_errors=True)

    def log(self) -> str:
        """The end of the server's log, for failure messages."""
        try:
            with open(os.path.join(self.work, "postgres.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""
