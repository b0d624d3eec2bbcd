"""Starting pymaild the way an admin does: as root with --uid, under systemd, with HUP.

Each test runs a real ``twistd -n pymaild`` (or ``systemd-analyze`` on the shipped unit)
and checks what the admin sees: who owns the files, one line for a mistake, a server
that survives ``kill -HUP`` and picks up a new certificate, a log with one line per
listener.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pymaild import tls
from tests.support import ROOT, ServerProcess, freePort, stopProcess, waitForPort

UNIT = os.path.join(ROOT, "etc", "pymaild.service")
NOBODY = "nobody"


def twistdCommand(*args: str) -> list[str]:
    """The command line of a foreground twistd with C{args} after C{-n}."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
            "--pidfile=", *args]


def runTwistd(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a twistd that is expected to exit on its own (a startup error)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(twistdCommand(*args), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def needRootAndNobody() -> tuple[int, int]:
    """Skip unless the test runs as root and a C{nobody} user exists; its (uid, gid)."""
    if os.geteuid() != 0:
        raise SkipTest("dropping privileges with --uid needs the tests to run as root")
    try:
        entry = pwd.getpwnam(NOBODY)
    except KeyError:
        raise SkipTest("no 'nobody' user on this machine") from None
    uid, gid = entry.pw_uid, entry.pw_gid

    # As the server does: start as root, drop, then import what it imports later.
    code = ("import os, pymaild.tap; "
            f"os.setgroups([]); os.setgid({gid}); os.setuid({uid}); "
            f"os.listdir({ROOT!r}); import email.parser")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    probe = subprocess.run([sys.executable, "-c", code], cwd="/", env=env,
                           capture_output=True, timeout=60)
    if probe.returncode != 0:
        # A checkout or Python under a private directory (such as /root): after the drop
        # the server could not import its own code. A real install lives in /opt or /usr.
        raise SkipTest(f"{NOBODY} cannot import pymaild from {ROOT} with {sys.executable}"
                       " (a parent directory is private to root)")
    return uid, gid


def openBase(case: SynchronousTestCase) -> str:
    """A directory that any user may traverse (the test's own tmp dir is root-only)."""
    base = tempfile.mkdtemp(prefix="pymaild-deploy-")
    os.chmod(base, 0o755)
    case.addCleanup(shutil.rmtree, base, True)
    return base


def postmasterPassword(log: str) -> str:
    """The first user's password, as the server printed it once."""
    m = re.search(r"with password (\S+) \(shown once", log)
    assert m, log
    return m.group(1)


def waitForLog(server: ServerProcess, needle: str, timeout: float = 30) -> str:
    """Wait until the server's log holds C{needle}; return the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.log()
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in the log:\n{server.log()}")


def oneLine(case: SynchronousTestCase, result: subprocess.CompletedProcess[str],
            *needles: str) -> str:
    """Check a failed start: status 1, one line on stderr holding C{needles}, no noise."""
    case.assertEqual(result.returncode, 1, result.stderr)
    lines = result.stderr.strip().splitlines()
    case.assertEqual(len(lines), 1, result.stderr)
    case.assertTrue(lines[0].startswith("pymaild: "), lines[0])
    for needle in needles:
        case.assertIn(needle, lines[0])
    case.assertNotIn("Traceback", result.stderr + result.stdout)
    case.assertNotIn("Usage:", result.stderr + result.stdout)
    return lines[0]


class RootWithUidTests(SynchronousTestCase):
    """Started as root with --uid/--gid, as a classic init script starts it."""

    def start(self, data: str) -> ServerProcess:
        """A server as root dropping to nobody, with its data in C{data}."""
        server = ServerProcess(data, listeners=("smtp", "imap"),
                               twistdArgs=["--uid", NOBODY, "--gid", str(self.gid)])
        self.addCleanup(server.stop)
        return server.start()

    def setUp(self) -> None:
        """Skip unless root; pick nobody's ids."""
        self.uid, self.gid = needRootAndNobody()

    def assertAllOwned(self, data: str) -> None:
        """Every file and directory under C{data} belongs to nobody."""
        wrong = []
        for root, dirs, files in os.walk(data):
            for name in [*dirs, *files, ""]:
                path = os.path.join(root, name)
                if os.lstat(path).st_uid != self.uid:
                    wrong.append(path)
        self.assertEqual(wrong, [])

    def test_freshDataDirectory(self) -> None:
        """A fresh data directory and all it holds belong to the server's user, and
        RCPT, DATA and an IMAP LOGIN all work (they failed with 451 and SERVERBUG)."""
        data = os.path.join(openBase(self), "data")
        server = self.start(data)
        password = postmasterPassword(server.log())
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.sendmail("bob@remote.example", ["postmaster@example.org"],
                       b"From: bob@remote.example\r\nSubject: hi\r\n\r\nhello\r\n")
        imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
        try:
            self.assertEqual(imap.login("postmaster@example.org", password)[0], "OK")
            self.assertEqual(imap.select("INBOX"), ("OK", [b"1"]))
            imap.create("Archive")
        finally:
            imap.logout()
        self.assertAllOwned(data)
        self.assertIn("Preparing", server.log())

    def test_rootMadeFilesFirst(self) -> None:
        """pymaild-admin run as root before the first start: the server still owns and
        writes what the admin made."""
        from pymaild.admin import main

        data = os.path.join(openBase(self), "data")
        os.makedirs(data)
        with tempfile.TemporaryFile("w+") as stdin:
            stdin.write("secret one\n")
            stdin.seek(0)
            self.assertEqual(main(["--data", data, "user", "add", "alice@example.org",
                                   "--password-stdin"], stdin=stdin), 0)
        self.assertEqual(os.stat(os.path.join(data, "passwd")).st_uid, 0)
        server = self.start(data)
        imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
        try:
            self.assertEqual(imap.login("alice@example.org", "secret one")[0], "OK")
        finally:
            imap.logout()
        self.assertAllOwned(data)

    def test_unwritableDataDirectory(self) -> None:
        """A data directory the server's user cannot write: one line naming it and the
        user, exit status 1."""
        data = os.path.join(openBase(self), "data")
        os.makedirs(data, 0o755)
        os.chown(data, 4242, 4242)
        result = runTwistd(["--uid", NOBODY, "--gid", str(self.gid), "pymaild", "--data", data,
                            "--domain", "example.org", "--smtp", f"tcp:{freePort()}"])
        oneLine(self, result, data, "nobody (uid")


class StartupErrorTests(SynchronousTestCase):
    """Mistakes an admin makes get one line naming the file, the key and the problem."""

    def config(self, text: str) -> str:
        """A configuration file holding C{text}."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def fails(self, *args: str) -> str:
        """Start with C{args} and return the one line it printed."""
        data = os.path.abspath(self.mktemp())
        result = runTwistd(["pymaild", "--data", data, *args])
        return oneLine(self, result)

    def test_configMistakes(self) -> None:
        """Unknown key and section, wrong type, bad TOML, a missing file, a value that
        used to fail late (smarthost_tls), a cert without a key."""
        cases = [
            ("[smtp]\nmax_recipient = 5\n", "smtp.max_recipient"),
            ("[smpt]\n", "[smpt]"),
            ("[smtp]\nmax_recipients = 'many'\n", "smtp.max_recipients"),
            ("[smtp\n", "not valid TOML"),
            ('[relay]\nsmarthost_tls = "yes"\n', "relay.smarthost_tls"),
            ('[tls]\ncert = "cert.pem"\n', "tls.key"),
        ]
        for text, needle in cases:
            path = self.config(text)
            line = self.fails("--config", path)
            self.assertIn(path, line)
            self.assertIn(needle, line)
        missing = os.path.abspath("no-such.toml")
        self.assertIn(missing, self.fails("--config", missing))

    def test_badCertificate(self) -> None:
        """A missing or non-PEM certificate names tls.cert and the file."""
        junk = self.config("not a certificate\n")
        line = self.fails("--tls-cert", "/nonexistent/cert.pem", "--tls-key", junk,
                          "--smtp", "none")
        self.assertIn("tls.cert", line)
        self.assertIn("/nonexistent/cert.pem", line)
        line = self.fails("--tls-cert", junk, "--tls-key", junk, "--smtp", "none")
        self.assertIn("tls.cert", line)
        self.assertIn(junk, line)

    def test_portInUse(self) -> None:
        """A port in use names the listener's key and the endpoint, once."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            endpoint = f"tcp:{port}:interface=127.0.0.1"
            line = self.fails("--domain", "example.org", "--imap", endpoint,
                              *[a for n in ("smtp", "submission", "smtps", "pop3", "pop3s",
                                            "imaps") for a in (f"--{n}", "none")])
        self.assertIn("listen.imap", line)
        self.assertIn(endpoint, line)
        self.assertIn("in use", line)


class ServiceUnitTests(SynchronousTestCase):
    """etc/pymaild.service passes systemd's own checks."""

    def setUp(self) -> None:
        """Skip without systemd-analyze (CI installs systemd)."""
        if shutil.which("systemd-analyze") is None:
            if os.environ.get("CI") == "true":
                self.fail("systemd-analyze is not installed (CI must install systemd)")
            raise SkipTest("systemd-analyze is not installed (apt-get install systemd)")

    def localUnit(self) -> str:
        """The unit with its twistd path pointing at this Python's twistd."""
        with open(UNIT, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("ExecStart=/opt/pymaild/bin/twistd ", text)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise SkipTest(f"no twistd beside {sys.executable}")
        path = os.path.join(os.path.abspath(self.mktemp()), "pymaild.service")
        os.makedirs(os.path.dirname(path))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace("/opt/pymaild/bin/twistd", twistd))
        return path

    def test_verify(self) -> None:
        """systemd-analyze verify finds nothing wrong."""
        unit = self.localUnit()
        result = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True,
                                text=True, timeout=60, cwd=os.path.dirname(unit))
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_security(self) -> None:
        """systemd-analyze security rates the unit below 5 (it was 9.3 UNSAFE)."""
        unit = self.localUnit()
        result = subprocess.run(["systemd-analyze", "security", "--offline=yes", unit],
                                capture_output=True, text=True, timeout=60,
                                cwd=os.path.dirname(unit))
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        self.assertIsNotNone(m, result.stdout + result.stderr)
        assert m is not None
        self.assertLess(float(m.group(1)), 5.0, result.stdout)

    def test_execStartRuns(self) -> None:
        """The unit's ExecStart line, with the shipped config file and the state
        directory systemd would give, starts a server (the data directory is the state
        directory, not one beside the read-only config)."""
        with open(UNIT, encoding="utf-8") as f:
            line = next(x for x in f if x.startswith("ExecStart="))
        args = line.strip().removeprefix("ExecStart=").split()
        self.assertEqual(args[0], "/opt/pymaild/bin/twistd")
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        config = os.path.join(ROOT, "etc", "pymaild.toml")
        args = [a.replace("${STATE_DIRECTORY}", state).replace(
            "/etc/pymaild/pymaild.toml", config) for a in args[1:]]
        port = freePort()
        others = ("submission", "smtps", "pop3", "pop3s", "imap", "imaps")
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                   *args, "--domain", "example.org",
                   "--smtp", f"tcp:{port}:interface=127.0.0.1",
                   *[a for name in others for a in (f"--{name}", "none")]]
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        with open(state + ".log", "wb") as out:
            proc = subprocess.Popen(command, cwd=state, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(stopProcess, proc)
        waitForPort(port, proc=proc)
        self.assertTrue(os.path.exists(os.path.join(state, "passwd")))
        self.assertTrue(os.path.isdir(os.path.join(state, "queue")))
        self.assertFalse(os.path.exists(os.path.join(ROOT, "etc", "pymaild-data")))


class HangUpTests(SynchronousTestCase):
    """kill -HUP re-reads what it can and never stops the server."""

    def test_hupReloadsCertificate(self) -> None:
        """After HUP the server is still up, logs what it did, and new TLS connections
        get the replaced certificate."""
        data = os.path.abspath(self.mktemp())
        server = ServerProcess(data, listeners=("imaps",))
        self.addCleanup(server.stop)
        server.start()
        certPath = os.path.join(data, "tls", "cert.pem")
        keyPath = os.path.join(data, "tls", "key.pem")
        os.unlink(certPath)
        os.unlink(keyPath)
        self.assertTrue(tls.ensureSelfSigned(certPath, keyPath, ["mail.example.org"]))
        fresh = tls.fingerprint(certPath)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        log = waitForLog(server, "SIGHUP:")
        self.assertIn(f"new TLS certificate {certPath}", log)
        self.assertIsNone(server.proc.poll())
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", server.ports["imaps"]), 30) as raw:
            with ctx.wrap_socket(raw) as conn:
                der = conn.getpeercert(binary_form=True)
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        seen = x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256())
        self.assertEqual(seen.hex(":").upper(), fresh)
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        self.assertIsNone(server.proc.poll())


class LogTests(SynchronousTestCase):
    """What the log says at start."""

    def test_oneLinePerListener(self) -> None:
        """Each listener is one line naming it and its address; none of Twisted's
        per-factory or per-port lines are left."""
        data = os.path.abspath(self.mktemp())
        server = ServerProcess(data)
        self.addCleanup(server.stop)
        server.start()
        log = waitForLog(server, "queue:")
        for name, port in server.ports.items():
            lines = [x for x in log.splitlines() if f" {name} on 127.0.0.1:{port}" in x]
            self.assertEqual(len(lines), 1, log)
        self.assertNotIn("Starting factory", log)
        self.assertNotIn("starting on", log)


class PenaltyOverSocketsTests(SynchronousTestCase):
    """The auth penalty as a client on a real socket sees it."""

    def test_penalisedAnswersWaitAndAbandonsCount(self) -> None:
        """After a failure, the right password is not answered within 1.5 s either (it
        used to come at once, so hanging up early told right from wrong); a client that
        hangs up before its answer is counted."""
        data = os.path.abspath(self.mktemp())
        server = ServerProcess(data, listeners=("imap",))
        self.addCleanup(server.stop)
        server.start()
        password = postmasterPassword(server.log())
        port = server.ports["imap"]

        def attempt(secret: str, wait: float) -> bytes:
            with socket.create_connection(("127.0.0.1", port), 30) as conn:
                reader = conn.makefile("rb")
                reader.readline()
                conn.sendall(b"a LOGIN postmaster@example.org " + secret.encode() + b"\r\n")
                conn.settimeout(wait)
                try:
                    return reader.readline()
                except TimeoutError:
                    return b""

        self.assertTrue(attempt("wrong", 30).startswith(b"a NO"))
        self.assertEqual(attempt(password, 1.5), b"")
        waitForLog(server, "authentication abandoned by 127.0.0.1")
        self.assertTrue(attempt(password, 60).startswith(b"a OK"))
