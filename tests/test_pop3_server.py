"""POP3 server, wire level: real store, real passwd checker, StringTransport, Clock.

Each class covers one part of the contract: greeting and CAPA, authentication,
message-number checks (Twisted's C{DELE 0} deleted the last message), dot-stuffing
(Twisted's broke at offset 0 and at 16 KiB chunk edges), TOP, UIDL, the UPDATE state
(QUIT commits before C{+OK}; a drop deletes nothing), the IN-USE lock, the C{flag}
delete mode, timeouts, long lines, pipelining and STLS over a TLS-capable transport.
"""

from __future__ import annotations

import base64
import os
import random
import re

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from pymaild.pop3 import server as serverModule
from pymaild.pop3.lines import MAX_LINE
from pymaild.pop3.mailbox import formatUIDL
from pymaild.pop3.sender import TopFilter
from pymaild.pop3.server import IDLE_TIMEOUT, PRE_LOGIN_TIMEOUT
from tests.test_pop3_helpers import (
    ALICE,
    ALICE_PW,
    BOB,
    BOB_PW,
    LOOPBACK,
    REMOTE,
    POP3Env,
    makeMessage,
    readMultiline,
    unstuff,
)

VALID_CAPA = re.compile(
    rb"^(TOP|UIDL|USER|RESP-CODES|AUTH-RESP-CODE|PIPELINING|STLS|SASL( [A-Z0-9_-]+)+"
    rb"|IMPLEMENTATION [\x21-\x7e]+)$"
)


def plain(user: str, password: str, authz: str = "") -> bytes:
    """The base64 SASL PLAIN response."""
    return base64.b64encode(f"{authz}\0{user}\0{password}".encode())


def b64(text: str) -> bytes:
    """Base64 of a UTF-8 string."""
    return base64.b64encode(text.encode())


class GreetingCapaTests(SynchronousTestCase):
    """The greeting and CAPA list only what works, and change with TLS and policy."""

    def capa(self, client) -> list[bytes]:
        """The capability lines of a CAPA reply."""
        status, body = client.multi(b"CAPA")
        self.assertTrue(status.startswith(b"+OK"))
        lines = body.split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        return lines[:-1]

    def test_greetingHasNoAPOPTimestamp(self) -> None:
        """The greeting is +OK without a <msg-id>, so clients never try APOP."""
        env = POP3Env(self)
        greeting = env.connect().take()
        self.assertTrue(greeting.startswith(b"+OK "))
        self.assertTrue(greeting.endswith(b"\r\n"))
        self.assertNotIn(b"<", greeting)
        self.assertNotIn(b">", greeting)

    def test_capaRemotePlaintext(self) -> None:
        """From a remote address without TLS: no USER, no SASL (cleartext refused), and no
        STLS when the transport cannot start TLS; every line is a valid keyword."""
        env = POP3Env(self, tlsContext=object())
        c = env.connect(REMOTE)
        c.take()
        caps = self.capa(c)
        for cap in caps:
            self.assertRegex(cap, VALID_CAPA)
        names = [cap.split()[0] for cap in caps]
        self.assertEqual(
            names, [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                    b"IMPLEMENTATION"])

    def test_capaRemoteBeforeAndAfterTLS(self) -> None:
        """Before STLS a remote client sees STLS but no USER/SASL; after it, USER and
        SASL PLAIN LOGIN but no STLS."""
        env = POP3Env(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        before = self.capa(c)
        self.assertIn(b"STLS", before)
        self.assertNotIn(b"USER", before)
        self.assertFalse([x for x in before if x.startswith(b"SASL")])
        self.assertEqual(c.cmd(b"STLS"), b"+OK Begin TLS negotiation now.\r\n")
        self.assertIs(c.transport.tlsContext, env.factory.tlsContext)
        after = self.capa(c)
        self.assertNotIn(b"STLS", after)
        self.assertIn(b"USER", after)
        self.assertIn(b"SASL PLAIN LOGIN", after)
        for cap in before + after:
            self.assertRegex(cap, VALID_CAPA)

    def test_capaLoopback(self) -> None:
        """From loopback (tls-or-loopback) USER and SASL are offered, and STLS too
        while TLS is available and not yet active."""
        env = POP3Env(self, tlsContext=object())
        c = env.connect(LOOPBACK, tls=True)
        c.take()
        caps = self.capa(c)
        self.assertEqual(
            [cap.split()[0] for cap in caps],
            [b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
             b"SASL", b"STLS", b"IMPLEMENTATION"])

    def test_capaTLSOnlyPolicyFromLoopback(self) -> None:
        """With auth.cleartext = tls-only even loopback gets no USER/SASL before TLS."""
        env = POP3Env(self, cleartext="tls-only", tlsContext=object())
        c = env.connect(LOOPBACK, tls=True)
        c.take()
        caps = self.capa(c)
        self.assertNotIn(b"USER", caps)
        self.assertIn(b"STLS", caps)

    def test_capaImplicitTLS(self) -> None:
        """On the POP3S listener the connection is secure: USER and SASL, no STLS."""
        env = POP3Env(self, tlsContext=object(), implicitTLS=True)
        c = env.connect(REMOTE, tls=True)
        c.take()
        caps = self.capa(c)
        self.assertIn(b"USER", caps)
        self.assertNotIn(b"STLS", caps)

    def test_capaSameAfterLogin(self) -> None:
        """CAPA after login repeats the AUTHORIZATION list (RFC 2449 section 5)."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        before = self.capa(c)
        c.cmd(b"USER " + ALICE.encode())
        self.assertTrue(c.cmd(b"PASS " + ALICE_PW.encode()).startswith(b"+OK"))
        self.assertEqual(self.capa(c), before)

    def test_noJokeCapabilities(self) -> None:
        """Twisted's CELERITY/AUSPEX/POTENCE and PIPELINE never appear."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        caps = b"\n".join(self.capa(c))
        for junk in (b"CELERITY", b"AUSPEX", b"POTENCE", b"PIPELINE\n", b"APOP"):
            self.assertNotIn(junk, caps + b"\n")


class AuthenticationTests(SynchronousTestCase):
    """USER/PASS and AUTH PLAIN/LOGIN, the cleartext policy and the per-IP penalty."""

    def test_userPassFromLoopback(self) -> None:
        """USER/PASS from loopback logs in and the mailbox answers."""
        env = POP3Env(self)
        env.deliver(makeMessage("one", b"hi\r\n"))
        c = env.connect(LOOPBACK)
        c.take()
        self.assertEqual(c.cmd(b"USER " + ALICE.encode()), b"+OK\r\n")
        reply = c.cmd(b"PASS " + ALICE_PW.encode())
        self.assertTrue(reply.startswith(b"+OK Logged in"), reply)
        self.assertEqual(c.cmd(b"STAT")[:6], b"+OK 1 ")

    def test_passwordWithSpaces(self) -> None:
        """PASS takes the rest of the line, spaces included (RFC 1939 section 7)."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        c.cmd(b"USER " + ALICE.encode())
        self.assertTrue(c.cmd(b"PASS correct horse").startswith(b"+OK"))

    def test_cleartextRefusedRemotely(self) -> None:
        """USER, PASS and AUTH PLAIN from a remote plaintext connection get -ERR [AUTH]."""
        env = POP3Env(self)
        c = env.connect(REMOTE)
        c.take()
        err = b"-ERR [AUTH] Plaintext authentication disallowed"
        self.assertTrue(c.cmd(b"USER " + ALICE.encode()).startswith(err))
        self.assertTrue(c.cmd(b"PASS " + ALICE_PW.encode()).startswith(err))
        self.assertTrue(c.cmd(b"AUTH PLAIN " + plain(ALICE, ALICE_PW)).startswith(err))
        self.assertTrue(c.cmd(b"AUTH LOGIN").startswith(err))
        self.assertTrue(c.cmd(b"STAT").startswith(b"-ERR"))

    def test_cleartextAlwaysPolicy(self) -> None:
        """With auth.cleartext = always a remote plaintext login works."""
        env = POP3Env(self, cleartext="always")
        c = env.login(host=REMOTE)
        self.assertTrue(c.cmd(b"STAT").startswith(b"+OK 0 0"))

    def test_passWithoutUser(self) -> None:
        """PASS without USER is an error, not a login attempt."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        self.assertTrue(c.cmd(b"PASS " + ALICE_PW.encode()).startswith(b"-ERR"))
        self.assertTrue(c.cmd(b"STAT").startswith(b"-ERR"))

    def test_wrongPasswordPenalty(self) -> None:
        """A wrong password is answered -ERR [AUTH] only after the per-IP penalty
        (2 s, then 4 s) on the clock; the same for an unknown user."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        c.cmd(b"USER " + ALICE.encode())
        self.assertEqual(c.cmd(b"PASS wrong"), b"")
        env.clock.advance(1.9)
        self.assertEqual(c.take(), b"")
        env.clock.advance(0.2)
        self.assertEqual(c.take(), b"-ERR [AUTH] Authentication failed.\r\n")
        c.cmd(b"USER nobody@example.org")
        self.assertEqual(c.cmd(b"PASS wrong"), b"")
        env.clock.advance(3.9)
        self.assertEqual(c.take(), b"")
        env.clock.advance(0.2)
        self.assertEqual(c.take(), b"-ERR [AUTH] Authentication failed.\r\n")
        c.cmd(b"USER " + ALICE.encode())
        # The right password from a penalised address waits as a third failure would.
        self.assertEqual(c.cmd(b"PASS " + ALICE_PW.encode()), b"")
        env.clock.advance(7.9)
        self.assertEqual(c.take(), b"")
        env.clock.advance(0.2)
        self.assertTrue(c.take().startswith(b"+OK"))

    def test_commandsWaitDuringPenalty(self) -> None:
        """Commands pipelined behind a failing PASS are answered after it, in order."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        c.send(b"USER " + ALICE.encode() + b"\r\nPASS bad\r\nCAPA\r\nNOOP\r\n")
        self.assertEqual(c.take(), b"+OK\r\n")
        env.clock.advance(2)
        out = c.take()
        self.assertTrue(out.startswith(b"-ERR [AUTH] Authentication failed.\r\n+OK Cap"), out)
        self.assertTrue(out.endswith(b".\r\n-ERR Not logged in.\r\n"), out)

    def test_authPlainInitialResponse(self) -> None:
        """AUTH PLAIN with an initial response (RFC 5034) logs in."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        self.assertTrue(c.cmd(b"AUTH PLAIN " + plain(ALICE, ALICE_PW)).startswith(b"+OK Logged"))

    def test_authPlainContinuation(self) -> None:
        """AUTH PLAIN without initial response gets an empty challenge ('+ ')."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        self.assertEqual(c.cmd(b"AUTH PLAIN"), b"+ \r\n")
        self.assertTrue(c.cmd(plain(ALICE, ALICE_PW)).startswith(b"+OK Logged"))

    def test_authPlainAuthzid(self) -> None:
        """An authorization identity equal to the user works; a different one fails."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        self.assertEqual(c.cmd(b"AUTH PLAIN " + plain(ALICE, ALICE_PW, authz=BOB)),
                         b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertTrue(
            c.cmd(b"AUTH PLAIN " + plain(ALICE, ALICE_PW, authz=ALICE)).startswith(b"+OK"))

    def test_authLogin(self) -> None:
        """AUTH LOGIN asks for user name and password (base64 prompts)."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        self.assertEqual(c.cmd(b"AUTH LOGIN"), b"+ VXNlcm5hbWU6\r\n")
        self.assertEqual(c.cmd(b64(ALICE)), b"+ UGFzc3dvcmQ6\r\n")
        self.assertTrue(c.cmd(b64(ALICE_PW)).startswith(b"+OK Logged"))

    def test_authLoginInitialResponse(self) -> None:
        """AUTH LOGIN's initial response is the user name."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        self.assertEqual(c.cmd(b"auth login " + b64(BOB)), b"+ UGFzc3dvcmQ6\r\n")
        self.assertTrue(c.cmd(b64(BOB_PW)).startswith(b"+OK Logged"))

    def test_authCancelAndBadBase64(self) -> None:
        """'*' cancels the exchange; undecodable base64 is rejected; the session goes on."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        c.cmd(b"AUTH PLAIN")
        self.assertEqual(c.cmd(b"*"), b"-ERR Authentication aborted.\r\n")
        c.cmd(b"AUTH LOGIN")
        self.assertEqual(c.cmd(b"!!notbase64!!"), b"-ERR Invalid base64 data.\r\n")
        self.assertEqual(c.cmd(b"AUTH PLAIN %%%"), b"-ERR Invalid base64 data.\r\n")
        self.assertEqual(c.cmd(b"AUTH PLAIN " + b64("no-nuls")),
                         b"-ERR Malformed SASL PLAIN response.\r\n")
        self.assertTrue(c.cmd(b"AUTH PLAIN " + plain(ALICE, ALICE_PW)).startswith(b"+OK"))

    def test_authUnknownMechanismAndList(self) -> None:
        """AUTH CRAM-MD5 is refused; bare AUTH lists PLAIN and LOGIN."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        self.assertEqual(c.cmd(b"AUTH CRAM-MD5"), b"-ERR Unsupported authentication mechanism.\r\n")
        self.assertEqual(c.cmd(b"AUTH"), b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n")
        self.assertEqual(c.cmd(b"AUTH PLAIN a b c"), b"-ERR Wrong number of arguments.\r\n")

    def test_wrongPasswordSASL(self) -> None:
        """A wrong SASL password also waits the penalty and answers -ERR [AUTH]."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        self.assertEqual(c.cmd(b"AUTH PLAIN " + plain(ALICE, "nope")), b"")
        env.clock.advance(2)
        self.assertEqual(c.take(), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_apopNotSupported(self) -> None:
        """APOP is an unknown command."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        self.assertEqual(c.cmd(b"APOP alice@example.org 0123456789abcdef0123456789abcdef"),
                         b"-ERR Unknown command.\r\n")

    def test_noSecondLogin(self) -> None:
        """USER, PASS and AUTH after login are refused and the session is unchanged."""
        env = POP3Env(self)
        env.deliver(makeMessage("one", b"x\r\n"))
        c = env.login()
        self.assertEqual(c.cmd(b"USER " + BOB.encode()), b"-ERR Already logged in.\r\n")
        self.assertEqual(c.cmd(b"PASS " + BOB_PW.encode()), b"-ERR Already logged in.\r\n")
        self.assertEqual(c.cmd(b"AUTH PLAIN " + plain(BOB, BOB_PW)),
                         b"-ERR Already logged in.\r\n")
        self.assertEqual(c.proto.mailbox.address, ALICE)
        self.assertTrue(c.cmd(b"STAT").startswith(b"+OK 1 "))

    def test_transactionCommandsNeedLogin(self) -> None:
        """STAT, LIST, RETR, DELE... before login get -ERR; the connection stays."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        for cmd in (b"STAT", b"LIST", b"UIDL", b"RETR 1", b"TOP 1 0", b"DELE 1", b"NOOP",
                    b"RSET"):
            self.assertEqual(c.cmd(cmd), b"-ERR Not logged in.\r\n")
        self.assertFalse(c.closing)

    def test_anonymousNeverLogsIn(self) -> None:
        """The portal allows anonymous (for SMTP) but the POP3 avatar refuses it."""
        from twisted.cred.checkers import ANONYMOUS

        env = POP3Env(self)
        self.assertRaises(UnauthorizedLogin, env.avatars, ANONYMOUS)

    def test_unexpectedLoginErrorHidden(self) -> None:
        """A login failing for an unexpected reason answers [SYS/TEMP] without the text."""
        env = POP3Env(self)

        def broken(*a, **k):
            return defer.fail(RuntimeError("secret internals /etc/shadow"))

        env.gate.login = broken
        c = env.connect(LOOPBACK)
        c.take()
        c.cmd(b"USER " + ALICE.encode())
        reply = c.cmd(b"PASS " + ALICE_PW.encode())
        self.assertTrue(reply.startswith(b"-ERR [SYS/TEMP]"), reply)
        self.assertNotIn(b"secret", reply)
        self.assertNotIn(b"RuntimeError", reply)
        self.flushLoggedErrors(RuntimeError)


class MessageNumberTests(SynchronousTestCase):
    """Message numbers and argument counts are checked before anything happens."""

    def setUp(self) -> None:
        """Three messages for alice, logged in from loopback."""
        self.env = POP3Env(self)
        self.keys = self.env.deliver(*[makeMessage(f"m{i}", b"body %d\r\n" % i)
                                       for i in range(3)])
        self.client = self.env.login()

    def test_dele0DeletesNothing(self) -> None:
        """DELE 0 is -ERR (Twisted deleted the last message), and QUIT keeps all three."""
        c = self.client
        self.assertEqual(c.cmd(b"DELE 0"), b"-ERR No such message.\r\n")
        self.assertTrue(c.cmd(b"STAT").startswith(b"+OK 3 "))
        self.assertTrue(c.cmd(b"QUIT").startswith(b"+OK"))
        self.assertEqual(len(self.env.scan().messages), 3)

    def test_badNumbers(self) -> None:
        """Zero, negative, out-of-range, signed, non-numeric and huge numbers get -ERR."""
        c = self.client
        bad = [b"0", b"-1", b"4", b"+1", b"1x", b"x", b"1.0", b"99999999999999999999999",
               b"\xd9\xa1", b"0x1"]
        for cmd in (b"DELE", b"LIST", b"UIDL", b"RETR"):
            for arg in bad:
                reply = c.cmd(cmd + b" " + arg)
                self.assertTrue(reply.startswith(b"-ERR "), (cmd, arg, reply))
                self.assertEqual(reply.count(b"\r\n"), 1)
        for arg in bad:
            self.assertTrue(c.cmd(b"TOP " + arg + b" 0").startswith(b"-ERR"))
        for lines in (b"-1", b"x", b"+2"):
            self.assertEqual(c.cmd(b"TOP 1 " + lines), b"-ERR Invalid line count.\r\n")
        self.assertTrue(c.cmd(b"STAT").startswith(b"+OK 3 "))
        self.assertFalse(c.closing)

    def test_wrongArgumentCounts(self) -> None:
        """Too many or too few arguments get -ERR and the connection stays (Twisted
        dropped it for STAT x)."""
        c = self.client
        for cmd in (b"STAT x", b"NOOP x", b"RSET 1", b"LIST 1 2", b"UIDL 1 2", b"RETR",
                    b"RETR 1 2", b"TOP 1", b"TOP 1 2 3", b"DELE", b"DELE 1 2", b"QUIT now",
                    b"CAPA x"):
            self.assertEqual(c.cmd(cmd), b"-ERR Wrong number of arguments.\r\n", cmd)
        self.assertFalse(c.closing)
        self.assertTrue(c.cmd(b"STAT").startswith(b"+OK 3 "))

    def test_unknownAndEmpty(self) -> None:
        """Unknown commands and empty lines get -ERR without echoing the input."""
        c = self.client
        self.assertEqual(c.cmd(b"XYZZY <script>"), b"-ERR Unknown command.\r\n")
        self.assertEqual(c.cmd(b""), b"-ERR Unknown command.\r\n")
        self.assertEqual(c.cmd(b"LAST"), b"-ERR Unknown command.\r\n")
        self.assertEqual(c.cmd(b"noop"), b"+OK\r\n")

    def test_listAndUidlOneIncludeNumber(self) -> None:
        """LIST n and UIDL n answer '+OK n ...'."""
        c = self.client
        state = self.env.scan()
        info = state.messages[1]
        self.assertEqual(c.cmd(b"LIST 2"), b"+OK 2 %d\r\n" % info.size)
        self.assertEqual(c.cmd(b"UIDL 2"),
                         b"+OK 2 " + formatUIDL(info.uid, state.uidvalidity) + b"\r\n")

    def test_deletedLeftOut(self) -> None:
        """Marked messages vanish from STAT, LIST and UIDL; LIST/UIDL/RETR/TOP/DELE of
        them are -ERR; RSET brings them back."""
        c = self.client
        sizes = [m.size for m in self.env.scan().messages]
        self.assertEqual(c.cmd(b"DELE 2"), b"+OK Marked to be deleted.\r\n")
        self.assertEqual(c.cmd(b"STAT"), b"+OK 2 %d\r\n" % (sizes[0] + sizes[2]))
        status, body = c.multi(b"LIST")
        self.assertEqual(body, b"1 %d\r\n3 %d\r\n" % (sizes[0], sizes[2]))
        status, body = c.multi(b"UIDL")
        self.assertEqual([line.split()[0] for line in body.split(b"\r\n")[:-1]], [b"1", b"3"])
        for cmd in (b"LIST 2", b"UIDL 2", b"RETR 2", b"TOP 2 0", b"DELE 2"):
            self.assertEqual(c.cmd(cmd), b"-ERR Message 2 is marked for deletion.\r\n")
        self.assertEqual(c.cmd(b"RSET"), b"+OK 3 messages (%d octets).\r\n" % sum(sizes))
        self.assertEqual(c.cmd(b"LIST 2"), b"+OK 2 %d\r\n" % sizes[1])

    def test_listHeader(self) -> None:
        """Multi-line LIST starts with the count and size and lists every message."""
        c = self.client
        sizes = [m.size for m in self.env.scan().messages]
        status, body = c.multi(b"LIST")
        self.assertEqual(status, b"+OK 3 messages (%d octets)" % sum(sizes))
        self.assertEqual(body, b"".join(b"%d %d\r\n" % (i + 1, s) for i, s in enumerate(sizes)))

    def test_internalErrorHidden(self) -> None:
        """A bug in a command costs one -ERR [SYS/TEMP], no traceback, no disconnect."""
        c = self.client

        def boom():
            raise ZeroDivisionError("internal detail")

        c.proto.mailbox.stat = boom
        reply = c.cmd(b"STAT")
        self.assertEqual(reply, b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n")
        self.assertFalse(c.closing)
        self.assertEqual(c.cmd(b"NOOP"), b"+OK\r\n")
        self.flushLoggedErrors(ZeroDivisionError)


class RetrieveTests(SynchronousTestCase):
    """RETR and TOP: sizes, dot-stuffing across chunk edges, TOP ranges."""

    def retr(self, env: POP3Env, message: bytes, chunkSize: int | None = None,
             command: bytes = b"RETR 1") -> tuple[bytes, bytes, bytes]:
        """Deliver C{message} alone, log in, send C{command}; (status, body, raw wire)."""
        env.deliver(message)
        c = env.login()
        if chunkSize is not None:
            c.proto.chunkSize = chunkSize
        wire = c.cmd(command)
        status, body, rest = readMultiline(wire)
        self.assertEqual(rest, b"")
        return status, body, wire

    def test_listSizeEqualsRetrOctets(self) -> None:
        """LIST's size and RETR's '+OK n octets' equal the unstuffed bytes sent."""
        env = POP3Env(self)
        msgs = [makeMessage("a", b".dot\r\n..two\r\nplain\r\n"),
                makeMessage("b", b"no final newline"),
                makeMessage("c", b"x" * 100000 + b"\r\n.\r\n")]
        env.deliver(*msgs)
        c = env.login()
        for n in (1, 2, 3):
            size = int(c.cmd(b"LIST %d" % n).split()[2])
            status, body, rest = readMultiline(c.cmd(b"RETR %d" % n))
            self.assertEqual(status, b"+OK %d octets" % size)
            expected = size if msgs[n - 1].endswith(b"\r\n") else size + 2
            self.assertEqual(len(body), expected)

    def test_dotAtOffsetZero(self) -> None:
        """A message whose first line is '.' is stuffed: the reply is not cut short."""
        env = POP3Env(self)
        message = b".\r\nSubject: starts with a dot\r\n\r\nbody\r\n"
        status, body, wire = self.retr(env, message)
        self.assertTrue(wire.startswith(b"+OK %d octets\r\n..\r\n" % len(message)))
        self.assertEqual(body, message)

    def test_dotAtOffset16384(self) -> None:
        """A '.' line at offset 16384 (Twisted's chunk edge) is stuffed, with the default
        chunk size and with 16 KiB chunks; nothing after it leaks as a response."""
        for chunkSize in (None, 16384):
            env = POP3Env(self)
            head = makeMessage("edge", b"")
            pad = 16384 - len(head) - 2
            message = head + b"a" * pad + b"\r\n" + b".\r\n+OK injected\r\n" + b"tail\r\n"
            self.assertEqual(message[16384:16387], b".\r\n")
            status, body, wire = self.retr(env, message, chunkSize)
            self.assertEqual(body, message)
            self.assertIn(b"\r\n..\r\n+OK injected", wire)

    def test_dotAtDefaultChunkEdge(self) -> None:
        """A '.' line exactly at the server's own chunk edge is stuffed."""
        env = POP3Env(self)
        head = makeMessage("edge", b"")
        edge = serverModule.CHUNK_SIZE
        message = head + b"b" * (edge - len(head) - 2) + b"\r\n.\r\nafter\r\n"
        self.assertEqual(message[edge : edge + 1], b".")
        status, body, wire = self.retr(env, message)
        self.assertEqual(body, message)

    def test_stuffingRandomChunks(self) -> None:
        """Random messages full of dot lines round-trip for many tiny chunk sizes."""
        rng = random.Random(1939)
        pieces = [b".", b"..", b".x", b"x.", b"\r\n", b"abc", b". ", b"\r\n.\r\n"]
        env = POP3Env(self)
        msgs = []
        for _ in range(6):
            body = b"".join(rng.choice(pieces) for _ in range(300)) + b"\r\n"
            msgs.append(makeMessage("r", body))
        env.deliver(*msgs)
        c = env.login()
        for chunkSize in (1, 2, 3, 7, 64):
            c.proto.chunkSize = chunkSize
            for n, m in enumerate(msgs, 1):
                status, body, rest = readMultiline(c.cmd(b"RETR %d" % n))
                self.assertEqual(rest, b"")
                self.assertEqual(body, m, (chunkSize, n))

    def test_largeMessageStreamsInChunks(self) -> None:
        """A 3 MB message is read in chunks (not at once) and arrives intact."""
        env = POP3Env(self)
        line = b"0123456789" * 7 + b"\r\n"
        message = makeMessage("big", line * 42000 + b".\r\n" + line)
        env.deliver(message)
        c = env.login()
        reads: list[int] = []
        original = c.proto.mailbox.readChunk

        def counting(fp, n):
            reads.append(n)
            return original(fp, n)

        c.proto.mailbox.readChunk = counting
        status, body, rest = readMultiline(c.cmd(b"RETR 1"))
        self.assertEqual(body, message)
        self.assertGreater(len(reads), len(message) // serverModule.CHUNK_SIZE - 1)

    def test_slowClientPausesReads(self) -> None:
        """While the transport pauses the producer no chunk is read; resume finishes."""
        env = POP3Env(self)
        message = makeMessage("big", b"y" * 300000 + b"\r\n")
        env.deliver(message)
        c = env.login()
        c.proto.chunkSize = 1000
        reads: list[int] = []
        original = c.proto.mailbox.readChunk
        box = c.proto.mailbox

        def pausing(fp, n):
            reads.append(n)
            if len(reads) == 3:
                c.proto._sender.pauseProducing()
            return original(fp, n)

        box.readChunk = pausing
        c.send(b"RETR 1\r\nNOOP\r\n")
        self.assertEqual(len(reads), 3)
        self.assertNotIn(b"+OK\r\n", c.transport.value()[-10:])
        c.transport.producer.resumeProducing()
        status, body, rest = readMultiline(c.take())
        self.assertEqual(body, message)
        self.assertEqual(rest, b"+OK\r\n")
        self.assertIsNone(c.transport.producer)

    def test_dropDuringRead(self) -> None:
        """A connection lost while a chunk read is in the pool: the file is closed only
        after that read returns (never under the reading thread), with no error."""
        env = POP3Env(self)
        env.deliver(makeMessage("big", b"q" * 50000 + b"\r\n"))
        c = env.login()
        c.proto.chunkSize = 1000
        env.runner.hold = True
        c.send(b"RETR 1\r\n")
        env.runner.step()  # open + first chunk; the next read is now queued
        sender = c.proto._sender
        fp = sender.fp
        self.assertTrue(sender._reading)
        c.lose()
        self.assertFalse(fp.closed)
        self.assertEqual(len(env.runner.queue), 1)  # only the read: no close beside it
        env.runner.step()  # the in-flight read returns
        env.runner.flush()  # the close it scheduled
        self.assertTrue(fp.closed)
        self.assertIsNone(sender.fp)

    def test_topZero(self) -> None:
        """TOP n 0 gives exactly the header and the blank line."""
        env = POP3Env(self)
        message = makeMessage("top", b"line1\r\n.line2\r\nline3\r\n")
        header = message[: message.index(b"\r\n\r\n") + 4]
        status, body, wire = self.retr(env, message, command=b"TOP 1 0")
        self.assertEqual(status, b"+OK Top of message follows.")
        self.assertEqual(body, header)

    def test_topSomeLines(self) -> None:
        """TOP n 2 gives the header, the blank line and two body lines, stuffed."""
        env = POP3Env(self)
        message = makeMessage("top", b".line1\r\nline2\r\nline3\r\n")
        header = message[: message.index(b"\r\n\r\n") + 4]
        status, body, wire = self.retr(env, message, command=b"TOP 1 2")
        self.assertEqual(body, header + b".line1\r\nline2\r\n")
        self.assertIn(b"\r\n..line1\r\n", wire)

    def test_topMoreThanBody(self) -> None:
        """Asking for more lines than the body has gives the whole message."""
        env = POP3Env(self)
        message = makeMessage("top", b"a\r\nb\r\n")
        status, body, wire = self.retr(env, message, command=b"TOP 1 99999999999999999999")
        self.assertEqual(body, message)

    def test_topTinyChunks(self) -> None:
        """TOP finds the header end and counts lines across 1-byte chunks."""
        env = POP3Env(self)
        message = makeMessage("top", b"\r\n.\r\nthird\r\nfourth\r\n")
        header = message[: message.index(b"\r\n\r\n") + 4]
        status, body, wire = self.retr(env, message, chunkSize=1, command=b"TOP 1 2")
        self.assertEqual(body, header + b"\r\n.\r\n")

    def test_topFilterUnit(self) -> None:
        """TopFilter: no blank line means all header; LF-only input is understood."""
        f = TopFilter(0)
        self.assertEqual(f.feed(b"A: b\r\nC: d\r\n"), b"A: b\r\nC: d\r\n")
        self.assertFalse(f.done)
        f = TopFilter(1)
        self.assertEqual(f.feed(b"A: b\n\nx\ny\n"), b"A: b\n\nx\n")
        self.assertTrue(f.done)
        f = TopFilter(0)
        self.assertEqual(f.feed(b"\r\nbody\r\n"), b"\r\n")
        self.assertTrue(f.done)

    def test_messageRemovedMeanwhile(self) -> None:
        """A message expunged by another session since login gets -ERR on RETR; the
        session goes on."""
        env = POP3Env(self)
        keys = env.deliver(makeMessage("a", b"a\r\n"), makeMessage("b", b"b\r\n"))
        c = env.login()
        env.inbox().expunge([keys[0]])
        reply = c.cmd(b"RETR 1")
        self.assertEqual(reply, b"-ERR Message was removed by another session.\r\n")
        self.assertTrue(c.cmd(b"RETR 2").startswith(b"+OK"))

    def test_readErrorHidden(self) -> None:
        """An I/O error opening a message gives -ERR [SYS/TEMP] without the error text."""
        env = POP3Env(self)
        env.deliver(makeMessage("a", b"a\r\n"))
        c = env.login()
        folder = c.proto.mailbox.folder

        def broken(info):
            raise OSError(5, "Input/output error on /secret/path")

        folder.open = broken
        folder.openPlain = broken  # the inline opens RETR tries first
        folder.readSmall = lambda info, limit: broken(info)
        reply = c.cmd(b"RETR 1")
        self.assertTrue(reply.startswith(b"-ERR [SYS/TEMP]"), reply)
        self.assertNotIn(b"secret", reply)
        self.assertEqual(c.cmd(b"NOOP"), b"+OK\r\n")
        self.flushLoggedErrors(OSError)


class UIDLTests(SynchronousTestCase):
    """UIDLs are what Dovecot's %08Xu%08Xv prints and never change for a message."""

    def uidls(self, env: POP3Env) -> dict[bytes, bytes]:
        """UIDL listing of a fresh session: {uidl: number}; the session then QUITs."""
        c = env.login()
        status, body = c.multi(b"UIDL")
        c.cmd(b"QUIT")
        c.lose()
        result = {}
        for line in body.split(b"\r\n")[:-1]:
            num, uidl = line.split(b" ")
            result[uidl] = num
        return result

    def test_format(self) -> None:
        """The UIDL is the UID and UIDVALIDITY as 8 lower-case hex digits each (what
        Dovecot 2.3 prints for %08Xu%08Xv)."""
        env = POP3Env(self)
        env.deliver(makeMessage("a", b"a\r\n"), makeMessage("b", b"b\r\n"))
        state = env.scan()
        expected = [b"%08x%08x" % (m.uid, state.uidvalidity) for m in state.messages]
        self.assertEqual(list(self.uidls(env)), expected)
        for uidl in expected:
            self.assertRegex(uidl, rb"^[0-9a-f]{16}$")

    def test_stableAcrossSessionsAndIMAP(self) -> None:
        """UIDLs stay the same in a later session, after IMAP moved the messages to cur/
        and marked one \\Seen, and after another message was expunged."""
        env = POP3Env(self)
        keys = env.deliver(*[makeMessage(f"m{i}", b"x\r\n") for i in range(4)])
        first = self.uidls(env)
        self.assertEqual(len(first), 4)
        folder = env.inbox()
        state = folder.scan(claimRecent=True)
        self.assertEqual(len(state.recent), 4)
        folder.setFlags(keys[1], {"\\Seen"})
        self.assertTrue(os.listdir(os.path.join(folder.path, "cur")))
        self.assertEqual(self.uidls(env), first)
        gone = {m.key: m.uid for m in folder.scan().messages}[keys[0]]
        folder.expunge([keys[0]])
        second = self.uidls(env)
        self.assertEqual(set(second), set(first) - {formatUIDL(gone, state.uidvalidity)})
        self.assertEqual(len(second), 3)

    def test_loginLeavesMessagesNew(self) -> None:
        """A POP3 session does not claim \\Recent: the files stay in new/."""
        env = POP3Env(self)
        env.deliver(makeMessage("a", b"a\r\n"))
        self.uidls(env)
        folder = env.inbox()
        self.assertEqual(len(os.listdir(os.path.join(folder.path, "new"))), 1)
        self.assertEqual(len(folder.scan(claimRecent=True).recent), 1)


class UpdateStateTests(SynchronousTestCase):
    """Deletions happen at QUIT, before +OK, and never on a dropped connection."""

    def test_quitCommitsBeforeOK(self) -> None:
        """QUIT's +OK is written only once the expunge ran in the disk Runner."""
        env = POP3Env(self)
        env.deliver(*[makeMessage(f"m{i}", b"x\r\n") for i in range(3)])
        c = env.login()
        status, kept, rest = readMultiline(c.cmd(b"RETR 2"))
        c.cmd(b"DELE 1")
        c.cmd(b"DELE 3")
        env.runner.hold = True
        self.assertEqual(c.cmd(b"QUIT"), b"")
        self.assertEqual(len(env.scan().messages), 3)
        self.assertFalse(c.closing)
        env.runner.flush()
        self.assertEqual(c.take(), b"+OK Logging out, messages deleted.\r\n")
        self.assertTrue(c.closing)
        remaining = env.scan().messages
        self.assertEqual(len(remaining), 1)
        with env.inbox().open(remaining[0]) as f:
            self.assertEqual(f.read(), kept)

    def test_quitWithoutDeletions(self) -> None:
        """QUIT with nothing marked answers +OK and closes."""
        env = POP3Env(self)
        env.deliver(makeMessage("a", b"a\r\n"))
        c = env.login()
        self.assertEqual(c.cmd(b"QUIT"), b"+OK Logging out.\r\n")
        self.assertTrue(c.closing)
        self.assertEqual(len(env.scan().messages), 1)

    def test_quitBeforeLogin(self) -> None:
        """QUIT in AUTHORIZATION just says goodbye."""
        env = POP3Env(self)
        c = env.connect()
        c.take()
        self.assertEqual(c.cmd(b"QUIT"), b"+OK Logging out.\r\n")
        self.assertTrue(c.closing)

    def test_commitFailure(self) -> None:
        """A failing expunge answers -ERR [SYS/TEMP] (no error text) and closes."""
        env = POP3Env(self)
        env.deliver(makeMessage("a", b"a\r\n"))
        c = env.login()
        c.cmd(b"DELE 1")

        def broken(keys):
            raise OSError(28, "No space left on /very/secret")

        c.proto.mailbox.folder.expunge = broken
        reply = c.cmd(b"QUIT")
        self.assertEqual(reply, b"-ERR [SYS/TEMP] Could not delete messages; they are kept.\r\n")
        self.assertTrue(c.closing)
        self.assertEqual(len(env.scan().messages), 1)
        self.flushLoggedErrors(OSError)

    def test_dropWithoutQuitDeletesNothing(self) -> None:
        """DELE then a lost connection: every message is still there and the mailbox
        lock is released."""
        env = POP3Env(self)
        env.deliver(makeMessage("a", b"a\r\n"), makeMessage("b", b"b\r\n"))
        c = env.login()
        c.cmd(b"DELE 1")
        c.cmd(b"DELE 2")
        c.lose()
        self.assertEqual(len(env.scan().messages), 2)
        c2 = env.login()
        self.assertTrue(c2.cmd(b"STAT").startswith(b"+OK 2 "))

    def test_rsetThenQuit(self) -> None:
        """RSET unmarks: QUIT afterwards deletes nothing."""
        env = POP3Env(self)
        env.deliver(makeMessage("a", b"a\r\n"))
        c = env.login()
        c.cmd(b"DELE 1")
        c.cmd(b"RSET")
        c.cmd(b"QUIT")
        self.assertEqual(len(env.scan().messages), 1)

    def test_linesAfterQuitIgnored(self) -> None:
        """Commands pipelined after QUIT are not run."""
        env = POP3Env(self)
        env.deliver(makeMessage("a", b"a\r\n"))
        c = env.login()
        out = c.cmd(b"QUIT\r\nDELE 1\r\nSTAT")
        self.assertEqual(out, b"+OK Logging out.\r\n")


class InUseTests(SynchronousTestCase):
    """A mailbox is in at most one POP3 session of the process at a time."""

    def test_secondLoginInUse(self) -> None:
        """The second login gets -ERR [IN-USE]; after the first QUITs it works."""
        env = POP3Env(self)
        first = env.login()
        second = env.connect(LOOPBACK)
        second.take()
        second.cmd(b"USER " + ALICE.encode())
        self.assertEqual(second.cmd(b"PASS " + ALICE_PW.encode()),
                         b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n")
        self.assertTrue(second.cmd(b"STAT").startswith(b"-ERR Not logged in"))
        third = env.connect(LOOPBACK)
        third.take()
        self.assertTrue(third.cmd(b"AUTH PLAIN " + plain(ALICE, ALICE_PW)).startswith(
            b"-ERR [IN-USE]"))
        self.assertTrue(first.cmd(b"QUIT").startswith(b"+OK"))
        first.lose()
        c = env.login()
        self.assertTrue(c.cmd(b"STAT").startswith(b"+OK"))

    def test_otherUserNotBlocked(self) -> None:
        """Another user's mailbox is unaffected."""
        env = POP3Env(self)
        env.login()
        env.login(BOB, BOB_PW)

    def test_wrongPasswordNotInUse(self) -> None:
        """A wrong password for a mailbox in use reveals nothing: -ERR [AUTH]."""
        env = POP3Env(self)
        env.login()
        c = env.connect(LOOPBACK)
        c.take()
        c.cmd(b"USER " + ALICE.encode())
        c.cmd(b"PASS wrong")
        env.clock.advance(2)
        self.assertEqual(c.take(), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_lockReleasedOnDrop(self) -> None:
        """A dropped session releases the lock."""
        env = POP3Env(self)
        env.login().lose()
        env.login()

    def test_dropDuringLogin(self) -> None:
        """A connection lost while the login is still being checked takes no lock."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        env.runner.hold = True
        c.cmd(b"USER " + ALICE.encode())
        c.cmd(b"PASS " + ALICE_PW.encode())
        c.lose()
        env.runner.flush()
        env.runner.hold = False
        self.assertEqual(c.take(), b"")
        # The abandoned attempt counts as a failure: the next login waits as a second
        # failure would (4 s), and then gets the mailbox (no lock was left behind).
        again = env.connect(LOOPBACK)
        again.take()
        again.cmd(b"USER " + ALICE.encode())
        self.assertEqual(again.cmd(b"PASS " + ALICE_PW.encode()), b"")
        env.clock.advance(3.9)
        self.assertEqual(again.take(), b"")
        env.clock.advance(0.1)
        self.assertTrue(again.take().startswith(b"+OK"))


class FlagModeTests(SynchronousTestCase):
    """pop3.delete = flag: QUIT sets \\Deleted; POP3 hides flagged mail, IMAP keeps it."""

    def test_deleFlagsAndHides(self) -> None:
        """DELE+QUIT leaves the file with \\Deleted; the next session does not see it;
        other UIDLs are unchanged."""
        env = POP3Env(self, delete="flag")
        keys = env.deliver(makeMessage("a", b"a\r\n"), makeMessage("b", b"b\r\n"))
        c = env.login()
        status, before = c.multi(b"UIDL")
        c.cmd(b"DELE 1")
        self.assertTrue(c.cmd(b"QUIT").startswith(b"+OK"))
        c.lose()
        state = env.scan()
        self.assertEqual(sorted(m.key for m in state.messages), sorted(keys))
        flagged = [formatUIDL(m.uid, state.uidvalidity) for m in state.messages
                   if "\\Deleted" in m.flags]
        uidls = [line.split(b" ")[1] for line in before.split(b"\r\n")[:-1]]
        self.assertEqual(flagged, [uidls[0]])
        c = env.login()
        self.assertTrue(c.cmd(b"STAT").startswith(b"+OK 1 "))
        status, after = c.multi(b"UIDL")
        self.assertEqual(after, b"1 " + uidls[1] + b"\r\n")

    def test_flagKeepsOtherFlags(self) -> None:
        """Flags set by IMAP during the session are kept when \\Deleted is added."""
        env = POP3Env(self, delete="flag")
        keys = env.deliver(makeMessage("a", b"a\r\n"))
        c = env.login()
        c.cmd(b"DELE 1")
        env.inbox().setFlags(keys[0], {"\\Seen", "\\Flagged"})
        c.cmd(b"QUIT")
        (info,) = env.scan().messages
        self.assertEqual(set(info.flags), {"\\Seen", "\\Flagged", "\\Deleted"})

    def test_imapDeletedHidden(self) -> None:
        """A message IMAP flagged \\Deleted is invisible to POP3 in flag mode."""
        env = POP3Env(self, delete="flag")
        keys = env.deliver(makeMessage("a", b"a\r\n"), makeMessage("b", b"b\r\n"))
        env.inbox().setFlags(keys[1], {"\\Deleted"})
        c = env.login()
        self.assertTrue(c.cmd(b"STAT").startswith(b"+OK 1 "))


class TimeoutTests(SynchronousTestCase):
    """60 s of silence before login, 10 minutes after."""

    def test_preLoginTimeout(self) -> None:
        """Before login the connection closes after 60 s with a -ERR line."""
        env = POP3Env(self)
        c = env.connect()
        c.take()
        env.clock.advance(PRE_LOGIN_TIMEOUT - 1)
        self.assertFalse(c.closing)
        c.cmd(b"CAPA")
        env.clock.advance(PRE_LOGIN_TIMEOUT - 1)
        self.assertFalse(c.closing)
        env.clock.advance(1)
        self.assertEqual(c.take(), b"-ERR Disconnected for inactivity.\r\n")
        self.assertTrue(c.closing)

    def test_idleTimeoutAfterLogin(self) -> None:
        """After login the limit is 10 minutes (RFC 1939), reset by each command."""
        self.assertEqual(IDLE_TIMEOUT, 600)
        env = POP3Env(self)
        c = env.login()
        env.clock.advance(599)
        self.assertFalse(c.closing)
        self.assertEqual(c.cmd(b"NOOP"), b"+OK\r\n")
        env.clock.advance(599)
        self.assertFalse(c.closing)
        env.clock.advance(1)
        self.assertTrue(c.closing)
        self.assertEqual(c.take(), b"-ERR Disconnected for inactivity.\r\n")

    def test_noTimerAfterLoss(self) -> None:
        """A lost connection leaves no timer on the clock."""
        env = POP3Env(self)
        c = env.login()
        c.lose()
        self.assertEqual(env.clock.getDelayedCalls(), [])


class LineTests(SynchronousTestCase):
    """Lines up to 8190 octets work; longer ones get -ERR and the session stays in sync."""

    def test_longestLineAccepted(self) -> None:
        """A command line of exactly MAX_LINE octets is processed."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        line = b"USER " + b"a" * (MAX_LINE - 5)
        self.assertEqual(len(line), MAX_LINE)
        self.assertEqual(c.cmd(line), b"+OK\r\n")

    def test_tooLongInOneRead(self) -> None:
        """One over-long line in a read with other commands: one -ERR, then the rest."""
        env = POP3Env(self)
        c = env.login()
        c.send(b"NOOP\r\n" + b"X" * (MAX_LINE + 1) + b"\r\nNOOP\r\nSTAT\r\n")
        self.assertEqual(c.take(), b"+OK\r\n-ERR Line too long.\r\n+OK\r\n+OK 0 0\r\n")

    def test_tooLongAcrossReads(self) -> None:
        """A 1 MB line arriving in pieces gives one -ERR when it ends; sync is kept."""
        env = POP3Env(self)
        c = env.login()
        for _ in range(100):
            c.send(b"Y" * 10000)
        self.assertEqual(c.take(), b"")
        self.assertFalse(c.closing)
        c.send(b"tail\r\nNOOP\r\n")
        self.assertEqual(c.take(), b"-ERR Line too long.\r\n+OK\r\n")
        self.assertLess(len(c.proto._buffer), MAX_LINE + 1)

    def test_bareLF(self) -> None:
        """Commands ending in a bare LF are understood."""
        env = POP3Env(self)
        c = env.login()
        c.send(b"NOOP\nSTAT\n")
        self.assertEqual(c.take(), b"+OK\r\n+OK 0 0\r\n")

    def test_tooLongDuringSASL(self) -> None:
        """An over-long SASL response ends the exchange with -ERR."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        c.cmd(b"AUTH PLAIN")
        self.assertEqual(c.cmd(b"A" * (MAX_LINE + 4)), b"-ERR Line too long.\r\n")
        self.assertTrue(c.cmd(b"CAPA").startswith(b"+OK"))


class PipeliningTests(SynchronousTestCase):
    """Pipelined commands are answered in order, also across asynchronous work."""

    def test_wholeSessionInOneWrite(self) -> None:
        """A complete session in one write, with login and disk work held back, is
        answered strictly in order once the work completes."""
        env = POP3Env(self)
        message = makeMessage("p", b"pipelined\r\n")
        env.deliver(message)
        c = env.connect(LOOPBACK)
        c.take()
        env.runner.hold = True
        c.send(b"USER " + ALICE.encode() + b"\r\nPASS " + ALICE_PW.encode()
               + b"\r\nSTAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nSTAT\r\nQUIT\r\n")
        self.assertEqual(c.take(), b"+OK\r\n")
        env.runner.flush()
        out = c.take()
        size = len(message)
        self.assertTrue(out.startswith(b"+OK Logged in, 1 messages (%d octets).\r\n" % size))
        rest = out.split(b"\r\n", 1)[1]
        self.assertTrue(rest.startswith(b"+OK 1 %d\r\n" % size))
        rest = rest.split(b"\r\n", 1)[1]
        status, body, rest = readMultiline(rest)
        self.assertEqual(body, b"1 %d\r\n" % size)
        status, body, rest = readMultiline(rest)
        self.assertEqual(body, message)
        self.assertEqual(rest, b"+OK Marked to be deleted.\r\n+OK 0 0\r\n"
                               b"+OK Logging out, messages deleted.\r\n")
        self.assertEqual(env.scan().messages, [])

    def test_readingPausedWhenQueueFull(self) -> None:
        """Many commands behind a pending one pause reading; draining resumes it."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK)
        c.take()
        env.runner.hold = True
        c.send(b"USER " + ALICE.encode() + b"\r\nPASS " + ALICE_PW.encode() + b"\r\n")
        c.send(b"NOOP\r\n" * 200)
        self.assertEqual(c.transport.producerState, "paused")
        env.runner.flush()
        self.assertEqual(c.transport.producerState, "producing")
        out = c.take()
        self.assertEqual(out.count(b"+OK\r\n"), 201)


class STLSTests(SynchronousTestCase):
    """STLS over a transport that can start TLS; plaintext behind STLS is discarded."""

    def test_injectionDiscarded(self) -> None:
        """'STLS\\r\\nUSER x\\r\\nPASS y\\r\\n' in one read: only STLS is answered, and the
        USER is not remembered afterwards."""
        env = POP3Env(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        c.send(b"STLS\r\nUSER " + ALICE.encode() + b"\r\nPASS " + ALICE_PW.encode() + b"\r\n")
        self.assertEqual(c.take(), b"+OK Begin TLS negotiation now.\r\n")
        self.assertEqual(c.cmd(b"PASS " + ALICE_PW.encode()),
                         b"-ERR No user name given: send USER first.\r\n")
        self.assertEqual(c.cmd(b"STAT"), b"-ERR Not logged in.\r\n")

    def test_partialLineDiscarded(self) -> None:
        """A partial plaintext line behind STLS does not prefix the first TLS line."""
        env = POP3Env(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        c.send(b"STLS\r\nGARB")
        c.take()
        self.assertEqual(c.cmd(b"NOOP"), b"-ERR Not logged in.\r\n")

    def test_stlsQueuedBehindLogin(self) -> None:
        """STLS pipelined behind a pending (failing) login runs after it, drops what was
        behind it, and the next read (TLS) is processed normally."""
        env = POP3Env(self, tlsContext=object())
        c = env.connect(LOOPBACK, tls=True)
        c.take()
        c.send(b"USER " + ALICE.encode() + b"\r\nPASS bad\r\nSTLS\r\nCAPA\r\n")
        self.assertEqual(c.take(), b"+OK\r\n")
        env.clock.advance(2)
        self.assertEqual(c.take(), b"-ERR [AUTH] Authentication failed.\r\n"
                                   b"+OK Begin TLS negotiation now.\r\n")
        self.assertIsNotNone(c.transport.tlsContext)
        self.assertTrue(c.cmd(b"CAPA").startswith(b"+OK Capability"))

    def test_stlsRefused(self) -> None:
        """STLS without a context, twice, or after login is -ERR."""
        env = POP3Env(self)
        c = env.connect(LOOPBACK, tls=True)
        c.take()
        self.assertEqual(c.cmd(b"STLS"), b"-ERR STLS is not available.\r\n")
        env = POP3Env(self, tlsContext=object())
        c = env.connect(LOOPBACK, tls=True)
        c.take()
        c.cmd(b"STLS")
        self.assertEqual(c.cmd(b"STLS"), b"-ERR TLS is already active.\r\n")
        c.cmd(b"USER " + ALICE.encode())
        c.cmd(b"PASS " + ALICE_PW.encode())
        self.assertEqual(c.cmd(b"STLS"), b"-ERR Already logged in.\r\n")

    def test_implicitTLSNoSTLS(self) -> None:
        """On POP3S STLS is refused as TLS is already active."""
        env = POP3Env(self, tlsContext=object(), implicitTLS=True)
        c = env.connect(REMOTE, tls=True)
        c.take()
        self.assertEqual(c.cmd(b"STLS"), b"-ERR TLS is already active.\r\n")
        c.cmd(b"USER " + ALICE.encode())
        self.assertTrue(c.cmd(b"PASS " + ALICE_PW.encode()).startswith(b"+OK"))

    def test_loginAfterSTLSFromRemote(self) -> None:
        """After STLS a remote client may log in with USER/PASS."""
        env = POP3Env(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        c.cmd(b"STLS")
        self.assertEqual(c.cmd(b"USER " + ALICE.encode()), b"+OK\r\n")
        self.assertTrue(c.cmd(b"PASS " + ALICE_PW.encode()).startswith(b"+OK Logged"))


class FactoryTests(SynchronousTestCase):
    """POP3Factory passes its settings to each protocol."""

    def test_buildProtocol(self) -> None:
        """Protocols get the config, gate, context, TLS flag, clock and factory."""
        env = POP3Env(self, tlsContext=object(), implicitTLS=True)
        p = env.factory.buildProtocol(None)
        self.assertIs(p.config, env.config)
        self.assertIs(p.gate, env.gate)
        self.assertIs(p.tlsContext, env.factory.tlsContext)
        self.assertTrue(p.implicitTLS)
        self.assertIs(p.clock, env.clock)
        self.assertIs(p.factory, env.factory)

    def test_unstuffHelper(self) -> None:
        """The test helper undoes stuffing (sanity check for the other tests)."""
        self.assertEqual(unstuff(b"..a\r\nb\r\n"), b".a\r\nb\r\n")
