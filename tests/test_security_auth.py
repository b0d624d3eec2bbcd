"""Authentication rows of the catalogue (A1-A5) across the IMAP and POP3 rooms, and
the rule that logs never hold a password or an AUTH payload.

Everything runs the real stack: passwd file, PasswdChecker, realm, AuthGate with its
per-IP penalty on a Clock, the protocol over a StringTransport.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.auth.checker import PasswdChecker
from pymaild.auth.passwd import PasswdFile, hashPassword
from pymaild.limits import UserIPLimits
from pymaild.threads import ThreadRunner
from tests.test_imap_helpers import ALICE, ALICE_PW, BOB_PW, IMAPEnv, tagged
from tests.test_pop3_helpers import POP3Env

SECRET = "Sup3r-s3cret pass"
"""A password containing a space, set for Alice in the log tests."""

HOSTILE_USERS = [
    "../alice@example.org", "alice/../../bob@example.org", "..@example.org",
    "alice@../../etc", "alice@example.org/../x", "%u@example.org", "${user}@example.org",
    "alice%bob@example.org", "alice!bob@example.org", "/etc/passwd", "alice",
    "a" * 5000 + "@example.org", "alice@" + "b" * 300 + ".org", "@example.org",
    "alice@@example.org", "\u0430lice@example.org",
]
"""User names that must neither log in nor create or reach any directory."""


def captureLog(testcase: SynchronousTestCase) -> list[LogEvent]:
    """Collect every log event published during the rest of the test."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def plain(user: str, password: str, authz: str = "") -> bytes:
    """A SASL PLAIN response, base64-encoded."""
    return base64.b64encode(f"{authz}\0{user}\0{password}".encode())


def tree(top: str) -> set[str]:
    """Every path under C{top}."""
    found = set()
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            found.add(os.path.join(dirpath, name))
    return found


class LogSecrecyTests(SynchronousTestCase):
    """No log event ever contains a password, its base64, or a SASL payload, for
    failed and successful logins over every mechanism."""

    def forbidden(self, password: str, user: str = ALICE) -> list[str]:
        """The strings that must not appear in any log event."""
        return [password, base64.b64encode(password.encode()).decode(),
                plain(user, password).decode(), plain(user, password, user).decode()]

    def assertClean(self, events: list[LogEvent], password: str) -> None:
        """No event, formatted or as its repr, contains any forbidden string."""
        self.assertTrue(events)
        for event in events:
            texts = [formatEvent(event), repr(event)]
            failure = event.get("log_failure")
            if failure is not None:
                texts.append(failure.getTraceback())
            for text in texts:
                for secret in self.forbidden(password):
                    self.assertNotIn(secret, text)

    def test_imapLoginAndAuthenticate(self) -> None:
        """IMAP LOGIN (quoted and literal) and AUTHENTICATE PLAIN (initial response and
        continuation), each wrong then right."""
        env = IMAPEnv(self)
        env.passwd.setPassword(ALICE, SECRET)
        events = captureLog(self)
        wrong = SECRET + "x"
        c = env.connect()
        c.take()
        c.cmd(f'LOGIN {ALICE} "{wrong}"')
        env.clock.advance(16)
        c.cmd(b"LOGIN " + ALICE.encode() + b" {%d}" % len(wrong))
        c.send(wrong.encode() + b"\r\n")
        env.clock.advance(16)
        c.cmd(b"AUTHENTICATE PLAIN " + plain(ALICE, wrong))
        env.clock.advance(16)
        c.cmd(b"AUTHENTICATE PLAIN")
        c.send(plain(ALICE, wrong) + b"\r\n")
        env.clock.advance(16)
        c.cmd(f'LOGIN {ALICE} "{SECRET}')  # unterminated: BAD
        c.cmd(b'LOGIN ' + ALICE.encode() + b' "' + SECRET.encode() + b'"' + b" x" * 40000)
        out = c.cmd(f'LOGIN {ALICE} "{SECRET}"')
        env.clock.advance(16)  # a penalised client's success waits like a failure
        self.assertIn(b" OK ", out + c.take())
        for way in (b"AUTHENTICATE PLAIN " + plain(ALICE, SECRET), None):
            d = env.connect()
            d.take()
            if way is None:
                d.cmd(b"AUTHENTICATE PLAIN")
                out = d.send(plain(ALICE, SECRET) + b"\r\n")
            else:
                out = d.cmd(way)
            self.assertIn(b" OK ", out)
        texts = [formatEvent(e) for e in events]
        self.assertTrue(any("authentication failed for alice@example.org" in t
                            for t in texts), texts)
        self.assertClean(events, SECRET)
        self.assertClean(events, wrong)

    def test_pop3UserPassAndAuth(self) -> None:
        """POP3 USER/PASS, AUTH PLAIN (both forms) and AUTH LOGIN, wrong then right."""
        env = POP3Env(self)
        env.passwd.setPassword(ALICE, SECRET)
        events = captureLog(self)
        wrong = SECRET + "x"
        b64 = base64.b64encode
        sessions: list[list[bytes]] = []
        for password in (wrong, SECRET):
            sessions += [
                [b"USER " + ALICE.encode(), b"PASS " + password.encode()],
                [b"AUTH PLAIN " + plain(ALICE, password)],
                [b"AUTH PLAIN", plain(ALICE, password)],
                [b"AUTH LOGIN", b64(ALICE.encode()), b64(password.encode())],
                [b"AUTH LOGIN " + b64(ALICE.encode()), b64(password.encode())],
            ]
        answers = []
        for lines in sessions:
            c = env.connect("127.0.0.1")
            c.take()
            out = b""
            for line in lines:
                out += c.cmd(line)
            env.clock.advance(16)
            answers.append(out + c.take())
            c.lose()
        self.assertEqual(sum(b"+OK Logged in" in a for a in answers), 5, answers)
        self.assertClean(events, SECRET)
        self.assertClean(events, wrong)

    def test_checkerErrorsKeepSecrets(self) -> None:
        """When the passwd file cannot be read, the logged failure still holds no
        password."""
        env = IMAPEnv(self)
        env.passwd.setPassword(ALICE, SECRET)
        events = captureLog(self)
        os.unlink(env.passwd.path)
        os.mkdir(env.passwd.path)
        c = env.connect()
        c.take()
        out = c.cmd(f'LOGIN {ALICE} "{SECRET}"')
        self.assertIn(b" NO ", tagged(out, c.lastTag))
        self.assertNotIn(b"Traceback", out)
        self.flushLoggedErrors()
        self.assertClean(events, SECRET)


class SameAnswerTests(SynchronousTestCase):
    """A2: an unknown user and a wrong password are indistinguishable to the client:
    same reply, same penalty delay."""

    def test_imap(self) -> None:
        """Both get the same tagged NO after the same delay."""
        env = IMAPEnv(self)
        replies = []
        for user in (ALICE, "ghost@example.org"):
            c = env.connect("192.0.2.50" if user == ALICE else "192.0.2.51")
            c.take()
            c.proto.cleartextPolicy = "always"
            self.assertEqual(c.cmd(f'LOGIN {user} "wrong"'), b"")
            env.clock.advance(1.9)
            self.assertEqual(c.take(), b"")
            env.clock.advance(0.2)
            replies.append(c.take().replace(c.lastTag, b"TAG"))
        self.assertEqual(replies[0], replies[1])
        self.assertEqual(replies[0], b"TAG NO [AUTHENTICATIONFAILED] Authentication failed\r\n")

    def test_pop3(self) -> None:
        """POP3 USER/PASS: same -ERR after the same delay."""
        env = POP3Env(self)
        replies = []
        for user, host in ((ALICE, "127.0.0.2"), ("ghost@example.org", "127.0.0.3")):
            c = env.connect(host)
            c.take()
            self.assertEqual(c.cmd(b"USER " + user.encode()), b"+OK\r\n")
            self.assertEqual(c.cmd(b"PASS wrong"), b"")
            env.clock.advance(1.9)
            self.assertEqual(c.take(), b"")
            env.clock.advance(0.2)
            replies.append(c.take())
        self.assertEqual(replies, [b"-ERR [AUTH] Authentication failed.\r\n"] * 2)


class NoPlaintextComparisonTests(SynchronousTestCase):
    """A3: pymaild compares no secret itself: only passlib verifies hashes, schemes
    that store the secret (PLAIN, CLEARTEXT, CRAM-MD5) never verify, and no
    challenge-response mechanism (CRAM-MD5, DIGEST-MD5, APOP) is offered."""

    def test_plaintextEquivalentSchemesNeverVerify(self) -> None:
        """Users whose passwd entry holds the password itself cannot log in with it."""
        path = os.path.join(os.path.abspath(self.mktemp()), "passwd")
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            f.write("plain@example.org:{PLAIN}hunter2:::::\n"
                    "clear@example.org:{CLEARTEXT}hunter2:::::\n"
                    "cram@example.org:{CRAM-MD5}hunter2:::::\n"
                    "b64@example.org:{PLAIN.B64}aHVudGVyMg==:::::\n"
                    "good@example.org:" + hashPassword("hunter2") + ":::::\n")
        pw = PasswdFile(path)
        for user in ("plain", "clear", "cram", "b64"):
            self.assertFalse(pw.verify(f"{user}@example.org", "hunter2"), user)
        self.assertTrue(pw.verify("good@example.org", "hunter2"))

    def test_noChallengeResponseOffered(self) -> None:
        """IMAP capabilities and POP3 CAPA list only PLAIN (and LOGIN); CRAM-MD5 and
        APOP are refused."""
        env = IMAPEnv(self)
        c = env.connect()
        greeting = c.take()
        self.assertIn(b"AUTH=PLAIN", greeting)
        self.assertNotIn(b"CRAM", greeting)
        self.assertNotIn(b"DIGEST", greeting)
        self.assertIn(b" NO ", c.cmd("AUTHENTICATE CRAM-MD5"))
        pop = POP3Env(self)
        p = pop.connect("127.0.0.1")
        p.take()
        capa = p.cmd(b"CAPA")
        self.assertIn(b"SASL PLAIN LOGIN\r\n", capa)
        self.assertNotIn(b"CRAM", capa)
        self.assertTrue(p.cmd(b"AUTH CRAM-MD5").startswith(b"-ERR"))
        self.assertTrue(p.cmd(b"APOP " + ALICE.encode() + b" " + b"0" * 32).startswith(b"-ERR"))


class UsernameCanonicalisationTests(SynchronousTestCase):
    """A5: user names are canonicalised once; spelling variants are one user (one
    Maildir, one per-user cap); hostile names log in nowhere and create nothing."""

    def test_spellingsAreOneAccount(self) -> None:
        """ALICE@EXAMPLE.ORG and a trailing-dot domain log in to Alice's Maildir; the
        per user/IP cap counts them as one user."""
        env = IMAPEnv(self)
        env.factory.userIPLimits = UserIPLimits(2)
        first = env.login()
        root = first.proto.account.address
        c = env.connect()
        c.take()
        c.ok(f'LOGIN "ALICE@Example.ORG." "{ALICE_PW}"')
        self.assertEqual(c.proto.account.address, root)
        d = env.connect()
        d.take()
        self.assertIn(b"NO [LIMIT]", d.cmd(f'LOGIN "Alice@EXAMPLE.org" "{ALICE_PW}"'))
        self.assertEqual(os.listdir(os.path.join(env.store.root, "example.org")), ["alice"])

    def test_hostileNamesRefusedEverywhere(self) -> None:
        """Path tricks, template syntax, percent hacks, look-alikes and absurd lengths
        fail like a wrong password over IMAP and POP3 and create no directory."""
        env = IMAPEnv(self)
        env.store.account(ALICE)
        before = tree(os.path.dirname(env.base))
        for i, user in enumerate(HOSTILE_USERS):
            c = env.connect(f"192.0.2.{i + 1}")
            c.take()
            c.proto.cleartextPolicy = "always"
            out = c.cmd(b"LOGIN {%d}" % len(user.encode()))
            if out.startswith(b"+ "):
                out = c.send(user.encode() + b' "' + ALICE_PW.encode() + b'"\r\n')
            env.clock.advance(60)
            out += c.take()
            self.assertIn(tagged(out, c.lastTag).split(b" ")[1], (b"NO", b"BAD"), user)
            self.assertEqual(c.proto.state, "unauth", user)
        pop = POP3Env(self)
        for user in HOSTILE_USERS:
            p = pop.connect("127.0.0.1")
            p.take()
            p.cmd(b"USER " + user.encode()[:8000])
            p.cmd(b"PASS " + BOB_PW.encode())
            pop.clock.advance(60)
            self.assertNotIn(b"+OK Logged", p.take(), user)
        after = tree(os.path.dirname(env.base))
        self.assertEqual(after - before, set())
        self.assertEqual(os.listdir(pop.store.root) if os.path.isdir(pop.store.root) else [],
                         [])

    def test_nulInLiteralUserName(self) -> None:
        """A NUL smuggled in a literal user name does not log in."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        user = ALICE.encode() + b"\x00admin"
        c.cmd(b"LOGIN {%d}" % len(user))
        out = c.send(user + b' "' + ALICE_PW.encode() + b'"\r\n')
        env.clock.advance(60)
        out += c.take()
        self.assertIn(b" NO ", tagged(out, c.lastTag))
        self.assertEqual(c.proto.state, "unauth")


class HashingOffReactorTests(TestCase):
    """A6: password hashing never runs in the reactor thread."""

    def setUp(self) -> None:
        """A started two-thread pool, stopped after the test."""
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="test-auth-a6")
        self.pool.start()
        self.addCleanup(self.pool.stop)

    @defer.inlineCallbacks
    def test_imapLoginHashesInPool(self) -> Any:
        """An IMAP LOGIN over the real stack with a thread-pool checker: the hash is
        verified in a pool thread, never in the reactor thread, and the reply comes
        only once the pool is done."""
        env = IMAPEnv(self)
        env.gate.clock = reactor
        threads: list[threading.Thread] = []
        realVerify = env.passwd.verify

        def verify(address: str, password: str | bytes) -> bool:
            threads.append(threading.current_thread())
            return realVerify(address, password)

        self.patch(env.passwd, "verify", verify)
        checker = PasswdChecker(env.passwd, ThreadRunner(reactor, self.pool))
        env.portal.checkers = {}
        env.portal.registerChecker(checker)
        c = env.connect()
        c.take()
        self.assertEqual(c.cmd(f'LOGIN {ALICE} "{ALICE_PW}"'), b"")  # reactor not blocked
        for _ in range(200):
            if c.transport.value():
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertIn(b" OK ", c.take())
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())
