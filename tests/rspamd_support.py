"""A private rspamd on loopback ports, for tests and the bench.

L{Rspamd} writes a self-contained configuration under a work directory: a normal worker
and a controller on free 127.0.0.1 ports (the controller trusts loopback, so learning
needs no password), Bayes on the sqlite3 backend in the work directory (no Redis), the
actions C{greylist} 4, C{add header} 6, C{reject} 15, and one rule of our own,
C{PYMAILD_TEST_SPAMMY} (score 8, over the add-header threshold), matching a subject that
holds L{SPAMMY}. No plugin directory is loaded, so none of rspamd's modules that look
things up over DNS or HTTP (RBLs, SPF, DKIM, DMARC, fuzzy, phishing maps, ...) exist;
rspamd's resolver points at a closed loopback port and its public-suffix list is a
three-line file (which also makes it start in a fraction of a second). GTUBE is handled
by rspamd's core. rspamd runs in the foreground (C{-f}); L{Rspamd.stop} ends it.

L{findRspamd} finds the binary; under CI (C{CI=true}) a missing rspamd is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from typing import Any

from twisted.internet import protocol

from tests.support import freePort, missing, stopProcess

SPAMMY = "SPAMMY-TOKEN"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

RULES = """\
rspamd_config:register_symbol({
  name = 'PYMAILD_TEST_SPAMMY',
  score = 8.0,
  callback = function(task)
    local s = task:get_header('Subject')
    if s and s:find('SPAMMY%-TOKEN') then return true end
    return false
  end
})
"""


def findRspamd() -> str:
    """The path of the C{rspamd} binary (skips, or fails under CI, when missing)."""
    for path in ("/usr/bin/rspamd", "/usr/sbin/rspamd"):
        if os.access(path, os.X_OK):
            return path
    missing("rspamd", "apt-get install rspamd")


class Rspamd:
    """One rspamd master with a normal worker and a controller on loopback.

    @param work: a directory of its own (configuration, databases, log).
    @param maxMessage: rspamd's own C{max_message} limit in bytes (None: its default).
    @param actions: the body of rspamd's C{actions} section.
    """

    def __init__(self, work: str, maxMessage: int | None = None,
                 actions: str = "reject = 15; add_header = 6; greylist = 4;") -> None:
        self.binary = findRspamd()
        self.work = os.path.abspath(work)
        os.makedirs(self.work, exist_ok=True)
        self.port = freePort()
        self.controllerPort = freePort()
        while self.controllerPort == self.port:
            self.controllerPort = freePort()
        self.proc: subprocess.Popen[bytes] | None = None
        self.logPath = os.path.join(self.work, "rspamd.log")
        w = self.work
        with open(os.path.join(w, "rules.lua"), "w") as f:
            f.write(RULES)
        with open(os.path.join(w, "tld.dat"), "w") as f:
            f.write("com\norg\nnet\nexample\n")
        limit = f"  max_message = {maxMessage};\n" if maxMessage else ""
        self.conf = os.path.join(w, "rspamd.conf")
        with open(self.conf, "w") as f:
            f.write(f"""\
options {{
  pidfile = "{w}/rspamd.pid";
  dns {{ nameserver = ["127.0.0.1:{freePort()}"]; timeout = 0.1s; retransmits = 0; }}
  hs_cache_dir = "{w}";
  tempdir = "{w}";
  stats_file = "{w}/stats.ucl";
  history_file = "{w}/history";
  url_tld = "{w}/tld.dat";
  local_addrs = [];
{limit}}}
logging {{ type = "file"; filename = "{self.logPath}"; level = "info"; }}
lua = "{w}/rules.lua";
actions {{ {actions} }}
classifier "bayes" {{
  tokenizer {{ name = "osb"; }}
  backend = "sqlite3";
  cache {{ type = "sqlite3"; file = "{w}/learn_cache.sqlite"; }}
  min_tokens = 11;
  min_learns = 1;
  statfile {{ symbol = "BAYES_HAM"; spam = false; path = "{w}/bayes-ham.sqlite"; }}
  statfile {{ symbol = "BAYES_SPAM"; spam = true; path = "{w}/bayes-spam.sqlite"; }}
}}
worker "normal" {{ bind_socket = "127.0.0.1:{self.port}"; count = 1; }}
worker "controller" {{
  bind_socket = "127.0.0.1:{self.controllerPort}";
  count = 1;
  secure_ip = "127.0.0.1";
}}
""")

    @property
    def url(self) -> str:
        """The normal worker's URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def controllerURL(self) -> str:
        """The controller's URL."""
        return f"http://127.0.0.1:{self.controllerPort}"

    def start(self, timeout: float = 30.0) -> Rspamd:
        """Run rspamd and wait until both workers answer C{/ping}.

        @raise RuntimeError: it exited or did not answer in time (its log is attached).
        """
        args = [self.binary, "-f", "-c", self.conf, "--var", f"DBDIR={self.work}",
                "--var", f"RUNDIR={self.work}", "--var", f"LOGDIR={self.work}"]
        if os.getuid() == 0:
            args.append("-i")
        out = open(os.path.join(self.work, "stdout.log"), "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.work)
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rspamd exited with {self.proc.returncode}: {self.log()}")
            if self._pings(self.url) and self._pings(self.controllerURL):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rspamd did not start within {timeout}s: {self.log()}")

    @staticmethod
    def _pings(url: str) -> bool:
        """Whether C{url}/ping answers C{pong}."""
        try:
            with urllib.request.urlopen(url + "/ping", timeout=1) as r:
                return bool(r.read().strip() == b"pong")
        except OSError:
            return False

    def stat(self) -> dict[str, Any]:
        """The controller's C{/stat} (blocking)."""
        with urllib.request.urlopen(self.controllerURL + "/stat", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def learned(self) -> int:
        """How many messages rspamd has learned (C{/stat}'s C{learned})."""
        return int(self.stat()["learned"])

    def stop(self) -> None:
        """End rspamd and its workers (SIGTERM, then SIGKILL) and wait for them."""
        if self.proc is not None:
            stopProcess(self.proc, grace=10)

    def log(self) -> str:
        """The end of rspamd's log, for failure messages."""
        text = ""
        for name in ("stdout.log", "rspamd.log"):
            try:
                with open(os.path.join(self.work, name), errors="replace") as f:
                    text += f.read()[-3000:]
            except OSError:
                pass
        return text


class BadPeer(protocol.Protocol):
    """A fake HTTP server for the bad-input cases only: it reads the request's head
    and answers as L{BadPeerFactory.mode} says (the good paths use the real rspamd)."""

    def connectionMade(self) -> None:
        """Start collecting the request."""
        self.buffer = b""
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        """Answer once the head (and, for C{garbage}, the body) is in."""
        self.buffer += data
        if self.answered or b"\r\n\r\n" not in self.buffer:
            return
        factory: BadPeerFactory = self.factory  # type: ignore[assignment]
        factory.requests += 1
        mode = factory.mode
        if factory.failures is not None:
            if factory.failures <= 0:
                mode = "ok"
            factory.failures -= 1
        self.answered = True
        if mode == "garbage":
            self.reply(200, b"\x00\xffnot json at all{{{")
        elif mode == "json-junk":
            self.reply(200, b'{"action": "explode", "score": "high"}')
        elif mode == "500":
            self.reply(500, b"internal error")
        elif mode == "reset":
            self.transport.abortConnection()  # type: ignore[attr-defined]
        elif mode == "huge":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n")
            self.transport.write(b"{" + b" " * 2000000)
        elif mode == "ok":
            self.reply(200, b'{"success": true}')
        # "silent": never answer

    def reply(self, code: int, body: bytes) -> None:
        """Send a whole HTTP/1.1 response."""
        self.transport.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                             % (code, len(body), body))


class BadPeerFactory(protocol.Factory):
    """Makes L{BadPeer}s; C{mode} is one of garbage, json-junk, 500, reset, huge, silent,
    ok; with C{failures}, only the first that many requests misbehave."""

    protocol = BadPeer

    def __init__(self, mode: str, failures: int | None = None) -> None:
        self.mode = mode
        self.failures = failures
        self.requests = 0

    def listen(self, testcase: Any) -> str:
        """Listen on a free loopback port until the test ends; return the URL."""
        from twisted.internet import reactor

        port = reactor.listenTCP(0, self, interface="127.0.0.1")  # type: ignore[attr-defined]
        testcase.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"


__all__ = ["GTUBE", "SPAMMY", "BadPeerFactory", "Rspamd", "findRspamd"]
