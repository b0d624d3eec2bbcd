"""IMAP greeting, CAPABILITY, LOGIN/AUTHENTICATE policy, STARTTLS and the auth penalty.

Wire-level over StringTransport with the real passwd checker and AuthGate on a Clock.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imap_helpers import (
    ALICE,
    ALICE_PW,
    REMOTE,
    IMAPEnv,
    tagged,
)


def plain(user: str, password: str, authz: str = "") -> bytes:
    """A base64 SASL PLAIN response."""
    return base64.b64encode(f"{authz}\0{user}\0{password}".encode())


def caps(out: bytes) -> set[bytes]:
    """The capability names in a CAPABILITY response or greeting."""
    for line in out.split(b"\r\n"):
        if line.startswith(b"* CAPABILITY "):
            return set(line.split()[2:])
        if b"[CAPABILITY " in line:
            return set(line.split(b"[CAPABILITY ")[1].split(b"]")[0].split())
    raise AssertionError(out)


class CapabilityTests(SynchronousTestCase):
    """What is advertised before and after login, TLS and by policy."""

    def test_greetingListsCapabilities(self) -> None:
        """The greeting is an untagged OK carrying the capability list."""
        env = IMAPEnv(self)
        c = env.connect()
        greeting = c.take()
        self.assertTrue(greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "))
        self.assertIn(b"AUTH=PLAIN", caps(greeting))

    def test_loopbackAllowsPlain(self) -> None:
        """From loopback (tls-or-loopback) AUTH=PLAIN is offered, LOGINDISABLED is not."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        cs = caps(c.cmd("CAPABILITY"))
        self.assertIn(b"AUTH=PLAIN", cs)
        self.assertNotIn(b"LOGINDISABLED", cs)
        for ext in (b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"ENABLE", b"ID",
                    b"LITERAL+", b"SASL-IR", b"CHILDREN", b"SPECIAL-USE"):
            self.assertIn(ext, cs)

    def test_remoteWithoutTLSDisablesLogin(self) -> None:
        """A remote plaintext client sees STARTTLS and LOGINDISABLED, and no AUTH=PLAIN."""
        env = IMAPEnv(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        cs = caps(c.take())
        self.assertIn(b"STARTTLS", cs)
        self.assertIn(b"LOGINDISABLED", cs)
        self.assertNotIn(b"AUTH=PLAIN", cs)

    def test_capabilitiesReevaluatedAfterSTARTTLS(self) -> None:
        """After STARTTLS: no STARTTLS, no LOGINDISABLED, AUTH=PLAIN offered."""
        env = IMAPEnv(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        out = c.cmd("STARTTLS")
        self.assertIn(b"OK", tagged(out, c.lastTag))
        cs = caps(c.cmd("CAPABILITY"))
        self.assertNotIn(b"STARTTLS", cs)
        self.assertNotIn(b"LOGINDISABLED", cs)
        self.assertIn(b"AUTH=PLAIN", cs)

    def test_implicitTLSOffersNoSTARTTLS(self) -> None:
        """On an implicit-TLS listener STARTTLS is not offered and LOGIN is allowed."""
        env = IMAPEnv(self, tlsContext=object(), implicitTLS=True, cleartext="tls-only")
        c = env.connect(REMOTE, tls=True)
        cs = caps(c.take())
        self.assertNotIn(b"STARTTLS", cs)
        self.assertIn(b"AUTH=PLAIN", cs)

    def test_noSTARTTLSWithoutContext(self) -> None:
        """Without a TLS context STARTTLS is neither offered nor accepted."""
        env = IMAPEnv(self)
        c = env.connect(REMOTE, tls=True)
        self.assertNotIn(b"STARTTLS", caps(c.take()))
        self.assertIn(b" NO ", c.cmd("STARTTLS"))

    def test_capabilityAfterLoginDropsAuth(self) -> None:
        """Once logged in, AUTH= and STARTTLS are no longer listed."""
        env = IMAPEnv(self)
        c = env.login()
        cs = caps(c.cmd("CAPABILITY"))
        self.assertNotIn(b"AUTH=PLAIN", cs)
        self.assertIn(b"IDLE", cs)


class LoginTests(SynchronousTestCase):
    """LOGIN and AUTHENTICATE PLAIN."""

    def test_loginSuccess(self) -> None:
        """LOGIN with the right password answers OK with the new capabilities."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        out = c.cmd(f'LOGIN {ALICE} "{ALICE_PW}"')
        self.assertTrue(tagged(out, c.lastTag).startswith(c.lastTag + b" OK [CAPABILITY "))
        self.assertEqual(c.proto.state, "auth")

    def test_loginLiteralPassword(self) -> None:
        """The password may be sent as a literal."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        pw = ALICE_PW.encode()
        self.assertEqual(c.cmd(f"LOGIN {ALICE} {{{len(pw)}}}"), b"+ Ready for literal data\r\n")
        out = c.send(pw + b"\r\n")
        self.assertIn(b" OK ", tagged(out, c.lastTag))

    def test_loginWrongPasswordPenalised(self) -> None:
        """A wrong password answers NO only after the penalty delay."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        self.assertEqual(c.cmd(f'LOGIN {ALICE} "wrong"'), b"")
        env.clock.advance(2.1)
        out = c.take()
        self.assertIn(b"NO [AUTHENTICATIONFAILED]", tagged(out, c.lastTag))
        self.assertEqual(c.proto.state, "unauth")

    def test_commandsWaitDuringPenalty(self) -> None:
        """Commands pipelined behind a failing LOGIN run only after its NO."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        out = c.send(f'a LOGIN {ALICE} "bad"\r\nb NOOP\r\n'.encode())
        self.assertEqual(out, b"")
        env.clock.advance(3)
        out = c.take()
        self.assertLess(out.index(b"a NO"), out.index(b"b OK"))

    def test_loginRefusedRemotelyWithoutTLS(self) -> None:
        """Remote cleartext LOGIN gets NO [PRIVACYREQUIRED]; nothing is verified."""
        env = IMAPEnv(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        out = c.cmd(f'LOGIN {ALICE} "{ALICE_PW}"')
        self.assertIn(b"NO [PRIVACYREQUIRED]", out)
        self.assertEqual(c.proto.state, "unauth")

    def test_loginAfterSTARTTLS(self) -> None:
        """The same remote client can LOGIN after STARTTLS."""
        env = IMAPEnv(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        c.ok("STARTTLS")
        c.ok(f'LOGIN {ALICE} "{ALICE_PW}"')

    def test_authenticatePlainInitialResponse(self) -> None:
        """AUTHENTICATE PLAIN with SASL-IR logs in at once."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        out = c.cmd(b"AUTHENTICATE PLAIN " + plain(ALICE, ALICE_PW))
        self.assertIn(b" OK ", tagged(out, c.lastTag))

    def test_authenticatePlainContinuation(self) -> None:
        """Without an initial response the server sends '+ ' and reads one line."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        self.assertEqual(c.cmd("AUTHENTICATE PLAIN"), b"+ \r\n")
        out = c.send(plain(ALICE, ALICE_PW) + b"\r\n")
        self.assertIn(b" OK ", tagged(out, c.lastTag))

    def test_authenticateCancel(self) -> None:
        """'*' cancels the exchange with BAD."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        c.cmd("AUTHENTICATE PLAIN")
        out = c.send(b"*\r\n")
        self.assertIn(b" BAD ", tagged(out, c.lastTag))
        self.assertIn(b" OK ", c.cmd("NOOP"))

    def test_authenticateBadBase64(self) -> None:
        """Invalid base64 is BAD."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        out = c.cmd("AUTHENTICATE PLAIN %%%")
        self.assertIn(b" BAD ", tagged(out, c.lastTag))

    def test_authenticateProxyRefused(self) -> None:
        """An authorisation id different from the user is refused."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        out = c.cmd(b"AUTHENTICATE PLAIN " + plain(ALICE, ALICE_PW, authz="bob@example.org"))
        self.assertIn(b" NO ", tagged(out, c.lastTag))

    def test_authenticateUnknownMechanism(self) -> None:
        """CRAM-MD5 and friends are not supported."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        self.assertIn(b" NO ", c.cmd("AUTHENTICATE CRAM-MD5"))

    def test_authenticateRemoteRefused(self) -> None:
        """AUTHENTICATE PLAIN is refused remotely without TLS."""
        env = IMAPEnv(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        out = c.cmd(b"AUTHENTICATE PLAIN " + plain(ALICE, ALICE_PW))
        self.assertIn(b"NO [PRIVACYREQUIRED]", out)

    def test_commandsNeedLogin(self) -> None:
        """SELECT before login is BAD, and LOGIN twice is BAD."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        self.assertIn(b" BAD ", c.cmd("SELECT INBOX"))
        c.ok(f'LOGIN {ALICE} "{ALICE_PW}"')
        self.assertIn(b" BAD ", c.cmd(f'LOGIN {ALICE} "{ALICE_PW}"'))

    def test_specialFoldersCreatedAtFirstLogin(self) -> None:
        """The first login creates and subscribes Sent, Drafts, Trash, Junk, Archive."""
        env = IMAPEnv(self)
        c = env.login()
        out = c.cmd('LSUB "" "*"')
        for name in (b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive"):
            self.assertIn(b'"/" "' + name + b'"', out)


class STARTTLSTests(SynchronousTestCase):
    """STARTTLS command injection is closed."""

    def test_pipelinedCommandsDiscarded(self) -> None:
        """Commands sent in the same packet as STARTTLS are discarded, not run."""
        env = IMAPEnv(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        out = c.send(f'a STARTTLS\r\nb LOGIN {ALICE} "{ALICE_PW}"\r\nc NOOP\r\n'.encode())
        self.assertEqual(out, b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(c.proto.state, "unauth")
        self.assertIsNotNone(c.transport.tlsContext)
        self.assertIn(b"d OK", c.send(b"d NOOP\r\n"))

    def test_starttlsTwice(self) -> None:
        """A second STARTTLS is refused."""
        env = IMAPEnv(self, tlsContext=object())
        c = env.connect(REMOTE, tls=True)
        c.take()
        c.ok("STARTTLS")
        self.assertIn(b" BAD ", c.cmd("STARTTLS"))


class UserIPLimitTests(SynchronousTestCase):
    """Sessions per (user, IP) when the factory has a UserIPLimits."""

    def test_limit(self) -> None:
        """The third session of a user from one IP gets NO [LIMIT]; a drop frees a slot."""
        from pymaild.limits import UserIPLimits

        env = IMAPEnv(self)
        env.factory.userIPLimits = UserIPLimits(2)
        a = env.login()
        env.login()
        c = env.connect()
        c.take()
        self.assertIn(b"NO [LIMIT]", c.cmd(f'LOGIN {ALICE} "{ALICE_PW}"'))
        self.assertEqual(c.proto.state, "unauth")
        a.lose()
        c.ok(f'LOGIN {ALICE} "{ALICE_PW}"')
