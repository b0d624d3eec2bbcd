"""ManageSieve (L{pymaild.sieve.managesieve}) with two real clients over STARTTLS:
sievelib's C{managesieve.Client} and C{sieve-connect} (Debian), and over a raw socket
for what a client library hides (the error's line, literals, limits, sync).

The server runs in the test's reactor on 127.0.0.1:0 with C{auth.cleartext = tls-only},
so a client can only log in after a real STARTTLS with the self-signed certificate,
which each client is told to trust. Each client runs in a thread so the reactor serves.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from typing import Any

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from pymaild import config as configModule
from pymaild import tls
from pymaild.auth.checker import PasswdChecker
from pymaild.auth.passwd import PasswdFile
from pymaild.auth.penalty import AuthGate, AuthPenalty
from pymaild.auth.realm import MailRealm
from pymaild.limits import UserIPLimits
from pymaild.sieve.checker import Limits
from pymaild.sieve.filter import homeOf
from pymaild.sieve.managesieve import ISieveAccount, ManageSieveFactory, SieveAvatars
from pymaild.sieve.storage import ScriptStorage
from pymaild.store import MaildirStore
from pymaild.threads import ThreadRunner, makePool
from tests.support import missing, requireClient
from tests.test_imap_helpers import ALICE, ALICE_PW, lowCostHashing

GOOD = b'require ["fileinto"];\r\nif header :contains "subject" "x" { fileinto "X"; }\r\n'
BAD = b'require ["fileinto"];\r\nkeep;\r\nfrobnicate "x";\r\nkeep;\r\n'


class SieveServer:
    """A listening ManageSieve server for one test."""

    def __init__(self, testcase: TestCase, cleartext: str = "tls-only",
                 sieve: dict[str, Any] | None = None) -> None:
        lowCostHashing(testcase)
        self.base = os.path.abspath(testcase.mktemp())
        os.makedirs(self.base)
        self.config = configModule.load(None, {
            "server": {"data": self.base, "hostname": "mx.example.org",
                       "domains": ["example.org"]},
            "auth": {"cleartext": cleartext, "passwd": os.path.join(self.base, "passwd")},
            "sieve": dict(sieve or {}),
        })
        self.cert = os.path.join(self.base, "tls", "cert.pem")
        self.key = os.path.join(self.base, "tls", "key.pem")
        tls.ensureSelfSigned(self.cert, self.key, ["localhost"])
        ctx = tls.serverContext(self.cert, self.key)
        self.store = MaildirStore(os.path.join(self.base, "mail"), hostname="mx.example.org")
        passwd = PasswdFile(self.config.auth.passwd)
        passwd.add(ALICE, ALICE_PW)
        self.pool = makePool("test-sieve", 4)
        self.pool.start()
        testcase.addCleanup(self.pool.stop)
        runner = ThreadRunner(reactor, self.pool)
        avatars = SieveAvatars(lambda a: homeOf(self.store, a), runner)
        portal = Portal(MailRealm({ISieveAccount: avatars}),
                        [PasswdChecker(passwd, runner), AllowAnonymousAccess()])
        self.penalty = AuthPenalty()
        gate = AuthGate(portal, self.penalty, reactor)
        limits = Limits(maxScriptSize=self.config.sieve.max_script_size)
        factory = ManageSieveFactory(self.config, gate, runner, limits, tlsContext=ctx,
                                     clock=reactor, userIPLimits=UserIPLimits(10))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.portNumber = self.port.getHost().port

    def storage(self) -> ScriptStorage:
        """Alice's script storage on disk."""
        return ScriptStorage(homeOf(self.store, ALICE))


class Raw:
    """A line-level ManageSieve client over a socket (TLS after STARTTLS)."""

    def __init__(self, srv: SieveServer) -> None:
        self.srv = srv
        self.sock: Any = socket.create_connection(("127.0.0.1", srv.portNumber), timeout=20)
        self.file = self.sock.makefile("rb")

    def response(self) -> list[bytes]:
        """Lines up to and including the OK/NO/BYE line (literals read whole)."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("connection closed")
            if line.rstrip().endswith(b"}") and b"{" in line:
                n = int(line.rstrip()[line.rindex(b"{") + 1 : -1].rstrip(b"+"))
                line = line + self.file.read(n) + self.file.readline()
            lines.append(line)
            if line[:2] in (b"OK", b"NO") or line[:3] == b"BYE":
                return lines

    def send(self, data: bytes) -> list[bytes]:
        """Send raw bytes; the response."""
        self.sock.sendall(data)
        return self.response()

    def starttls(self) -> list[bytes]:
        """STARTTLS and the capabilities sent after it."""
        assert self.send(b"STARTTLS\r\n")[-1].startswith(b"OK")
        ctx = ssl.create_default_context(cafile=self.srv.cert)
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        return self.response()

    def login(self) -> list[bytes]:
        """AUTHENTICATE PLAIN with an initial response."""
        import base64

        token = base64.b64encode(f"\0{ALICE}\0{ALICE_PW}".encode())
        return self.send(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class RawTests(TestCase):
    """The wire, where client libraries hide it."""

    timeout = 60

    def setUp(self) -> None:
        """A server."""
        self.srv = SieveServer(self)

    def session(self, body: Any) -> defer.Deferred[Any]:
        """Run C{body(raw)} in a thread with a greeted connection."""
        def run() -> Any:
            raw = Raw(self.srv)
            try:
                raw.greeting = raw.response()  # type: ignore[attr-defined]
                return body(raw)
            finally:
                raw.close()
        return threads.deferToThread(run)

    @defer.inlineCallbacks
    def test_capabilitiesAndTLSOnly(self) -> Any:
        """Before TLS: STARTTLS offered, SASL empty, AUTHENTICATE refused with
        ENCRYPT-NEEDED; after it, PLAIN and LOGIN and the Sieve extensions."""
        def body(raw: Raw) -> Any:
            before = raw.greeting  # type: ignore[attr-defined]
            refused = raw.login()
            after = raw.starttls()
            return before, refused, after, raw.login()

        before, refused, after, ok = yield self.session(body)
        self.assertIn(b'"STARTTLS"\r\n', before)
        self.assertIn(b'"SASL" ""\r\n', before)
        self.assertTrue(refused[-1].startswith(b"NO (ENCRYPT-NEEDED)"), refused)
        self.assertIn(b'"SASL" "PLAIN LOGIN"\r\n', after)
        self.assertNotIn(b'"STARTTLS"\r\n', after)
        sieve = next(line for line in after if line.startswith(b'"SIEVE"'))
        for ext in (b"fileinto", b"vacation", b"imap4flags", b"include", b"regex"):
            self.assertIn(ext, sieve)
        self.assertTrue(ok[-1].startswith(b"OK"), ok)

    @defer.inlineCallbacks
    def test_syntaxErrorLine(self) -> Any:
        """PUTSCRIPT of an invalid script is refused naming the error's line; nothing
        is stored; CHECKSCRIPT says the same."""
        def body(raw: Raw) -> Any:
            raw.starttls()
            raw.login()
            put = raw.send(b'PUTSCRIPT "bad" {%d+}\r\n' % len(BAD) + BAD + b"\r\n")
            check = raw.send(b"CHECKSCRIPT {%d+}\r\n" % len(BAD) + BAD + b"\r\n")
            listed = raw.send(b"LISTSCRIPTS\r\n")
            return put, check, listed

        put, check, listed = yield self.session(body)
        self.assertTrue(put[-1].startswith(b'NO "line 3:'), put)
        self.assertTrue(check[-1].startswith(b'NO "line 3:'), check)
        self.assertEqual(listed, [b'OK "Listscripts completed."\r\n'])
        self.assertEqual(self.srv.storage().names(), [])

    @defer.inlineCallbacks
    def test_tooLargeLiteral(self) -> Any:
        """A literal over sieve.max_script_size is read and dropped: NO (QUOTA/MAXSIZE),
        and the next command is answered in sync."""
        self.srv = SieveServer(self, sieve={"max_script_size": 1000})
        big = b"#" * 5000 + b"\r\nkeep;\r\n"

        def body(raw: Raw) -> Any:
            raw.starttls()
            raw.login()
            put = raw.send(b'PUTSCRIPT "big" {%d+}\r\n' % len(big) + big + b"\r\n")
            return put, raw.send(b"NOOP\r\n")

        put, noop = yield self.session(body)
        self.assertTrue(put[-1].startswith(b"NO (QUOTA/MAXSIZE)"), put)
        self.assertTrue(noop[-1].startswith(b"OK"), noop)

    @defer.inlineCallbacks
    def test_badInput(self) -> Any:
        """Unknown commands, commands before login and garbage get NO; the session
        stays usable."""
        def body(raw: Raw) -> Any:
            return [raw.send(b"FROB\r\n"), raw.send(b'GETSCRIPT "x"\r\n'),
                    raw.send(b"\x01\x02\r\n"), raw.send(b'"unterminated\r\n'),
                    raw.send(b"NOOP \"t1\"\r\n")]

        answers = yield self.session(body)
        for a in answers[:4]:
            self.assertTrue(a[-1].startswith(b"NO"), a)
        self.assertEqual(answers[4][-1], b'OK (TAG "t1") "Done"\r\n')

    @defer.inlineCallbacks
    def test_scriptCommands(self) -> Any:
        """HAVESPACE, PUTSCRIPT, SETACTIVE, RENAMESCRIPT, GETSCRIPT, DELETESCRIPT of the
        active script refused, deactivate, delete."""
        def body(raw: Raw) -> Any:
            raw.starttls()
            raw.login()
            out = [raw.send(b'HAVESPACE "a" 100\r\n'),
                   raw.send(b'PUTSCRIPT "a" {%d+}\r\n' % len(GOOD) + GOOD + b"\r\n"),
                   raw.send(b'SETACTIVE "a"\r\n'),
                   raw.send(b'RENAMESCRIPT "a" "b"\r\n'),
                   raw.send(b"LISTSCRIPTS\r\n"),
                   raw.send(b'GETSCRIPT "b"\r\n'),
                   raw.send(b'DELETESCRIPT "b"\r\n'),
                   raw.send(b'SETACTIVE ""\r\n'),
                   raw.send(b'DELETESCRIPT "b"\r\n'),
                   raw.send(b'GETSCRIPT "b"\r\n')]
            return out

        out = yield self.session(body)
        for i in (0, 1, 2, 3, 4, 5, 7, 8):
            self.assertTrue(out[i][-1].startswith(b"OK"), (i, out[i]))
        self.assertEqual(out[4][0], b'"b" ACTIVE\r\n')
        self.assertEqual(out[5][0], b"{%d}\r\n" % len(GOOD) + GOOD + b"\r\n")
        self.assertTrue(out[6][-1].startswith(b"NO (ACTIVE)"), out[6])
        self.assertTrue(out[9][-1].startswith(b"NO (NONEXISTENT)"), out[9])

    @defer.inlineCallbacks
    def test_penalty(self) -> Any:
        """A wrong password is a failure the auth penalty counts."""
        import base64

        def body(raw: Raw) -> Any:
            raw.starttls()
            token = base64.b64encode(f"\0{ALICE}\0wrong".encode())
            return raw.send(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')

        answer = yield self.session(body)
        self.assertEqual(answer[-1], b'NO "Authentication failed"\r\n')
        self.assertEqual(self.srv.penalty.failures("127.0.0.1", reactor.seconds()), 1)


class SievelibTests(TestCase):
    """sievelib's ManageSieve client over STARTTLS."""

    timeout = 60

    @defer.inlineCallbacks
    def test_session(self) -> Any:
        """Upload, list, activate, fetch, delete; a bad script refused with its line."""
        try:
            from sievelib.managesieve import Client
        except ImportError:
            missing("sievelib", "pip install sievelib")
        srv = SieveServer(self)
        old = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = srv.cert
        self.addCleanup(lambda: os.environ.pop("SSL_CERT_FILE", None) if old is None
                        else os.environ.__setitem__("SSL_CERT_FILE", old))

        def client() -> dict[str, Any]:
            out: dict[str, Any] = {}
            c = Client("localhost", srv.portNumber)
            out["connect"] = c.connect(ALICE, ALICE_PW, starttls=True, authmech="PLAIN")
            out["put"] = c.putscript("main", GOOD.decode())
            out["active"] = c.setactive("main")
            out["list"] = c.listscripts()
            out["get"] = c.getscript("main")
            out["bad"] = c.putscript("bad", BAD.decode())
            out["badmsg"] = c.errmsg
            out["deactivate"] = c.setactive("")
            out["delete"] = c.deletescript("main")
            out["after"] = c.listscripts()
            c.logout()
            return out

        out = yield threads.deferToThread(client)
        self.assertTrue(out["connect"])
        self.assertTrue(out["put"])
        self.assertTrue(out["active"])
        self.assertEqual(out["list"], ("main", []))
        self.assertEqual(out["get"].replace("\r\n", "\n").strip(),
                         GOOD.decode().replace("\r\n", "\n").strip())
        self.assertFalse(out["bad"])
        self.assertIn(b"line 3", out["badmsg"])
        self.assertTrue(out["deactivate"])
        self.assertTrue(out["delete"])
        self.assertEqual(out["after"], (None, []))


class SieveConnectTests(TestCase):
    """sieve-connect (Perl) over STARTTLS."""

    timeout = 120

    def setUp(self) -> None:
        """Find sieve-connect and start the server."""
        self.binary = requireClient("sieve-connect")
        self.srv = SieveServer(self)
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)

    def sieveConnect(self, *args: str) -> defer.Deferred[subprocess.CompletedProcess[bytes]]:
        """Run sieve-connect with C{args} in a thread (password on standard input)."""
        cmd = [self.binary, "--server", "localhost", "--port", str(self.srv.portNumber),
               "--user", ALICE, "--passwordfd", "0", "--tlscafile", self.srv.cert,
               "--authmech", "PLAIN", *args]
        return threads.deferToThread(subprocess.run, cmd, input=ALICE_PW.encode() + b"\n",
                                     capture_output=True, timeout=60, check=False,
                                     cwd=self.work)

    @defer.inlineCallbacks
    def test_session(self) -> Any:
        """Upload, list, activate, download, delete; a bad script refused with its line."""
        good = os.path.join(self.work, "good.sieve")
        bad = os.path.join(self.work, "bad.sieve")
        with open(good, "wb") as f:
            f.write(GOOD)
        with open(bad, "wb") as f:
            f.write(BAD)
        up = yield self.sieveConnect("--upload", "--localsieve", good, "--remotesieve", "main")
        self.assertEqual(up.returncode, 0, up.stderr)
        act = yield self.sieveConnect("--activate", "--remotesieve", "main")
        self.assertEqual(act.returncode, 0, act.stderr)
        listed = yield self.sieveConnect("--list")
        self.assertIn(b"main", listed.stdout)
        self.assertIn(b"ACTIVE", listed.stdout.upper())
        self.assertEqual(self.srv.storage().active(), "main")
        down = os.path.join(self.work, "down.sieve")
        got = yield self.sieveConnect("--download", "--remotesieve", "main", "--localsieve", down)
        self.assertEqual(got.returncode, 0, got.stderr)
        with open(down, "rb") as f:
            self.assertEqual(f.read().replace(b"\r\n", b"\n"), GOOD.replace(b"\r\n", b"\n"))
        refused = yield self.sieveConnect("--upload", "--localsieve", bad, "--remotesieve", "bad")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(b"line 3", refused.stdout + refused.stderr)
        yield self.sieveConnect("--deactivate")
        gone = yield self.sieveConnect("--delete", "--remotesieve", "main")
        self.assertEqual(gone.returncode, 0, gone.stderr)
        self.assertEqual(self.srv.storage().names(), [])
