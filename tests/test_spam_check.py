"""The spam check (L{pymaild.spam.check}) in a real SMTP server, with a real rspamd.

Each test runs the SMTP server on a loopback port (the MX or submission role, a real
disk pool) whose check chain holds a L{SpamCheck} talking to a private rspamd
(L{tests.rspamd_support.Rspamd}); smtplib sends from a thread. The failure policies are
also driven by a fake peer that misbehaves (garbage, 500, reset, silence).
"""

from __future__ import annotations

import smtplib
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from pymaild.config import SpamConfig
from pymaild.smtp.checks import CheckChain
from pymaild.spam.check import SpamCheck, actionFor, editHeaders, requestHeaders
from pymaild.spam.counters import SpamCounters
from pymaild.spam.junk import JUNK, ensureJunk
from pymaild.spam.rspamd import RspamdClient
from tests.rspamd_support import GTUBE, SPAMMY, BadPeerFactory, Rspamd
from tests.test_smtp_checks import folderMessages
from tests.test_smtp_helpers import SMTPStack
from tests.test_smtp_integration import LiveServerMixin

ALICE = "alice@example.org"
BOB = "bob@example.org"


def message(subject: str = "lunch", body: bytes = b"Shall we have lunch on Friday?",
            extra: bytes = b"") -> bytes:
    """A small message from a remote sender."""
    return (b"From: someone@remote.example\r\nTo: alice@example.org\r\n"
            b"Subject: " + subject.encode() + b"\r\n" + extra + b"\r\n" + body + b"\r\n")


class SpamCheckTests(LiveServerMixin, TestCase):
    """rspamd's actions, the policies and the options, over SMTP."""

    def setUp(self) -> None:
        """Collect log lines; rspamd is started by L{serve} when a test needs it."""
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.rspamd: Rspamd | None = None

    def lines(self, fragment: str) -> list[str]:
        """The formatted log lines holding C{fragment}."""
        return [line for line in (formatEvent(e) for e in self.events) if fragment in line]

    def serve(self, role: str = "mx", url: str | None = None, actions: str | None = None,
              **spam: Any) -> SMTPStack:
        """An SMTP server whose checks are one SpamCheck with C{spam} options, against
        C{url} or a fresh private rspamd (with C{actions}, when given)."""
        if url is None:
            extra = {"actions": actions} if actions else {}
            self.rspamd = Rspamd(self.mktemp(), **extra).start()
            self.addCleanup(self.rspamd.stop)
            url, controller = self.rspamd.url, self.rspamd.controllerURL
        else:
            controller = url
        stack = self.startServer(role=role)
        config = SpamConfig(enabled=True, url=url, controller_url=controller,
                            **{"timeout": 5, **spam})
        client = RspamdClient(reactor, url, controller, float(config.timeout))
        self.addCleanup(client.close)
        self.counters = SpamCounters()
        runner = stack.avatars.runner
        self.check = SpamCheck(client, config, self.counters,
                               lambda account: runner.run(ensureJunk, stack.store, account))
        stack.avatars.checks = CheckChain([self.check])
        return stack

    def send(self, data: bytes, rcpts: list[str] | None = None,
             login: str | None = None) -> defer.Deferred[Any]:
        """Send C{data} with smtplib; fire with (code, text) of the reply to DATA."""
        def work() -> Any:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example",
                              timeout=30) as s:
                sender = "someone@remote.example"
                if login is not None:
                    s.login(login, {ALICE: "alice-secret"}[login])
                    sender = login
                s.ehlo()
                code, text = s.mail(sender)
                for rcpt in rcpts or [ALICE]:
                    s.rcpt(rcpt)
                code, text = s.data(data)
                return code, text.decode()

        return threads.deferToThread(work)

    # -- rspamd's actions --------------------------------------------------------
    @defer.inlineCallbacks
    def test_gtubeRejected(self) -> Any:
        """GTUBE: 550 5.7.1 with rspamd's message; nothing stored."""
        stack = self.serve()
        code, text = yield self.send(message(body=GTUBE))
        self.assertEqual((code, text), (550, "5.7.1 Gtube pattern"))
        self.assertEqual(stack.messages(ALICE), [])
        self.assertEqual(self.counters.snapshot(), {"reject": 1})

    @defer.inlineCallbacks
    def test_cleanToInbox(self) -> Any:
        """A clean message lands in INBOX with X-Spam-Status: No."""
        stack = self.serve()
        code, _ = yield self.send(message())
        self.assertEqual(code, 250)
        [stored] = stack.messages(ALICE)
        self.assertIn(b"\r\nX-Spam-Status: No, score=", stored)
        self.assertNotIn(b"X-Spam: Yes", stored)
        self.assertEqual(self.rspamd.stat()["scanned"], 1)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_spammyToJunk(self) -> Any:
        """Over the add-header score: delivered into Junk (made, with \\Junk) with the
        X-Spam headers; the forged X-Spam-Status the sender added is gone."""
        stack = self.serve()
        code, _ = yield self.send(message(subject=f"buy {SPAMMY} now",
                                          extra=b"X-Spam-Status: No, forged\r\n"))
        self.assertEqual(code, 250)
        self.assertEqual(stack.messages(ALICE), [])
        account = stack.store.account(ALICE)
        self.assertEqual(account.specialUse().get(JUNK), "\\Junk")
        self.assertIn(JUNK, account.subscriptions())
        [stored] = folderMessages(stack, ALICE, JUNK)
        self.assertIn(b"\r\nX-Spam: Yes\r\n", stored)
        self.assertIn(b"X-Spam-Status: Yes, score=8.00 required=15.00 action=add header",
                      stored)
        self.assertNotIn(b"forged", stored)
        self.assertEqual(self.counters.snapshot(), {"add header": 1, "junked": 1})

    @defer.inlineCallbacks
    def test_rewriteSubject(self) -> Any:
        """rspamd's rewrite subject: into Junk, with the subject rspamd made (already
        RFC 2047-encoded by rspamd for a non-ASCII one)."""
        stack = self.serve(actions="reject = 15; rewrite_subject = 7; add_header = 6;")
        code, _ = yield self.send(message(subject=f"buy {SPAMMY} now"))
        self.assertEqual(code, 250)
        [stored] = folderMessages(stack, ALICE, JUNK)
        self.assertIn(f"\r\nSubject: *** SPAM *** buy {SPAMMY} now\r\n".encode(), stored)
        self.assertEqual(stored.count(b"Subject:"), 1)
        self.assertIn(b"action=rewrite subject", stored)
        code, _ = yield self.send(message(subject=f"caf\u00e9 {SPAMMY}"))
        self.assertEqual(code, 250)
        stored = folderMessages(stack, ALICE, JUNK)[1]
        self.assertIn(b"\r\nSubject: =?UTF-8?Q?=2A=2A=2A_SPAM_=2A=2A=2A_", stored)

    @defer.inlineCallbacks
    def test_optOut(self) -> Any:
        """An opted-out account gets the spammy copy in INBOX, the other one in Junk."""
        stack = self.serve(opt_out=(BOB,))
        code, _ = yield self.send(message(subject=SPAMMY), rcpts=[ALICE, BOB])
        self.assertEqual(code, 250)
        self.assertEqual(len(folderMessages(stack, ALICE, JUNK)), 1)
        self.assertEqual(len(stack.messages(BOB)), 1)
        self.assertEqual(stack.store.account(BOB).deliveryFolder(JUNK), "INBOX")

    @defer.inlineCallbacks
    def test_allOptedOutNotScanned(self) -> Any:
        """When every recipient opted out the message is not even scanned."""
        stack = self.serve(opt_out=(ALICE,))
        code, _ = yield self.send(message(body=GTUBE))
        self.assertEqual(code, 250)
        self.assertEqual(len(stack.messages(ALICE)), 1)
        self.assertEqual(self.rspamd.stat()["scanned"], 0)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_domainOffset(self) -> Any:
        """A domain offset of 5 raises the thresholds: 8 points are no action there."""
        stack = self.serve(threshold_offsets=("example.org=5",))
        code, _ = yield self.send(message(subject=SPAMMY))
        self.assertEqual(code, 250)
        [stored] = stack.messages(ALICE)
        self.assertIn(b"X-Spam-Status: No, score=8.00", stored)

    @defer.inlineCallbacks
    def test_negativeOffsetRejects(self) -> Any:
        """A domain offset of -7 makes 8 points a reject (15 - 7) for that domain."""
        stack = self.serve(threshold_offsets=("example.org=-7",))
        code, text = yield self.send(message(subject=SPAMMY))
        self.assertEqual((code, text), (550, "5.7.1 Message refused as spam"))
        self.assertEqual(stack.messages(ALICE), [])

    @defer.inlineCallbacks
    def test_mixedDomainsMildestWins(self) -> Any:
        """One domain would reject (offset -7), the other tolerates 8 points (offset
        0: add header): the message is accepted, into Junk for both, since neither
        says no action; with the other at +5 (no action) it gets INBOX there."""
        carol = "carol@example.net"
        stack = self.serve(threshold_offsets=("example.org=-7",))
        code, _ = yield self.send(message(subject=SPAMMY), rcpts=[ALICE, carol])
        self.assertEqual(code, 250)
        self.assertEqual(len(folderMessages(stack, ALICE, JUNK)), 1)
        self.assertEqual(len(folderMessages(stack, carol, JUNK)), 1)
        self.check.offsets["example.net"] = 5.0
        code, _ = yield self.send(message(subject=SPAMMY), rcpts=[ALICE, carol])
        self.assertEqual(code, 250)
        self.assertEqual(len(folderMessages(stack, ALICE, JUNK)), 2)
        self.assertEqual(len(stack.messages(carol)), 1)
        self.assertEqual(len(stack.messages(ALICE)), 0)

    @defer.inlineCallbacks
    def test_greylistAndSoftReject(self) -> Any:
        """rspamd's greylist and soft reject actions are 451 4.7.1; nothing stored."""
        stack = self.serve(actions="reject = 15; add_header = 9; greylist = 7;")
        code, text = yield self.send(message(subject=SPAMMY))
        self.assertEqual((code, text), (451, "4.7.1 Try again later"))
        self.assertEqual(stack.messages(ALICE), [])
        self.rspamd.stop()  # type: ignore[union-attr]
        stack = self.serve(actions="reject = 15; soft_reject = 7;")
        code, text = yield self.send(message(subject=SPAMMY))
        self.assertEqual((code, text[:5]), (451, "4.7.1"))
        self.assertEqual(stack.messages(ALICE), [])
        self.assertEqual(self.counters.snapshot(), {"soft reject": 1})

    @defer.inlineCallbacks
    def test_submissionReject(self) -> Any:
        """A user submitting GTUBE: 554 5.7.1 and a warning naming the user."""
        self.serve(role="submission")
        data = b"From: alice@example.org\r\nSubject: x\r\n\r\n" + GTUBE + b"\r\n"
        code, text = yield self.send(data, rcpts=["bob@example.org"], login=ALICE)
        self.assertEqual((code, text), (554, "5.7.1 Gtube pattern"))
        [line] = self.lines("refused as spam")
        self.assertIn("submission by alice@example.org", line)

    @defer.inlineCallbacks
    def test_submissionClean(self) -> Any:
        """A clean submission goes through unchanged (no X-Spam fields)."""
        stack = self.serve(role="submission")
        data = b"From: alice@example.org\r\nSubject: x\r\n\r\nhello bob\r\n"
        code, _ = yield self.send(data, rcpts=["bob@example.org"], login=ALICE)
        self.assertEqual(code, 250)
        [stored] = stack.messages(BOB)
        self.assertNotIn(b"X-Spam", stored)

    # -- failure policies ------------------------------------------------------------
    @defer.inlineCallbacks
    def test_stoppedTempfail(self) -> Any:
        """rspamd stopped mid-test: the MX default policy, 451 4.7.1; nothing stored."""
        stack = self.serve()
        code, _ = yield self.send(message())
        self.assertEqual(code, 250)
        self.rspamd.stop()  # type: ignore[union-attr]
        code, text = yield self.send(message())
        self.assertEqual((code, text), (451, "4.7.1 Spam filter unavailable, try again later"))
        self.assertEqual(len(stack.messages(ALICE)), 1)
        self.assertEqual(len(self.lines("spam filter unavailable")), 1)

    @defer.inlineCallbacks
    def test_stoppedAccept(self) -> Any:
        """rspamd stopped with the accept policy: delivered, X-Spam-Status: unchecked."""
        stack = self.serve(mx_failure="accept")
        self.rspamd.stop()  # type: ignore[union-attr]
        code, _ = yield self.send(message())
        self.assertEqual(code, 250)
        [stored] = stack.messages(ALICE)
        self.assertIn(b"\r\nX-Spam-Status: unchecked\r\n", stored)
        self.assertEqual(self.counters.snapshot(), {"unchecked": 1})

    @defer.inlineCallbacks
    def test_submissionStoppedAccept(self) -> Any:
        """rspamd stopped: submission's default policy sends the message unchanged."""
        stack = self.serve(role="submission")
        self.rspamd.stop()  # type: ignore[union-attr]
        data = b"From: alice@example.org\r\nSubject: x\r\n\r\nhello bob\r\n"
        code, _ = yield self.send(data, rcpts=["bob@example.org"], login=ALICE)
        self.assertEqual(code, 250)
        [stored] = stack.messages(BOB)
        self.assertNotIn(b"X-Spam", stored)
        self.assertEqual(self.counters.snapshot(), {"unchecked": 1})

    @defer.inlineCallbacks
    def test_oversize(self) -> Any:
        """A message over spam.max_size is not sent to rspamd: the policy applies."""
        stack = self.serve(max_size=100, mx_failure="accept")
        code, _ = yield self.send(message(body=b"z" * 500))
        self.assertEqual(code, 250)
        [stored] = stack.messages(ALICE)
        self.assertIn(b"X-Spam-Status: unchecked", stored)
        self.assertEqual(self.rspamd.stat()["scanned"], 0)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_overRspamdLimit(self) -> Any:
        """A message over rspamd's own limit (its max_message): the policy applies."""
        self.rspamd = Rspamd(self.mktemp(), maxMessage=2048).start()
        self.addCleanup(self.rspamd.stop)
        stack = self.startServer()
        client = RspamdClient(reactor, self.rspamd.url, self.rspamd.controllerURL, 5)
        self.addCleanup(client.close)
        check = SpamCheck(client, SpamConfig(enabled=True), SpamCounters(),
                          lambda a: defer.succeed(JUNK))
        stack.avatars.checks = CheckChain([check])
        code, text = yield self.send(message(body=b"z" * 5000))
        self.assertEqual((code, text[:5]), (451, "4.7.1"))
        self.assertEqual(stack.messages(ALICE), [])

    @defer.inlineCallbacks
    def badPeer(self, mode: str, policy: str, **spam: Any) -> Any:
        """Send a message with a misbehaving peer as rspamd; return (code, stack)."""
        url = BadPeerFactory(mode).listen(self)
        stack = self.serve(url=url, mx_failure=policy, **spam)
        code, text = yield self.send(message())
        return code, text, stack

    @defer.inlineCallbacks
    def test_badPeersTempfail(self) -> Any:
        """Garbage, a 500, a reset, an endless reply: each a 451 4.7.1, nothing stored;
        the session is still usable afterwards."""
        for mode in ("garbage", "json-junk", "500", "reset", "huge"):
            code, text, stack = yield self.badPeer(mode, "tempfail")
            self.assertEqual((mode, code, text[:5]), (mode, 451, "4.7.1"))
            self.assertEqual(stack.messages(ALICE), [])

    @defer.inlineCallbacks
    def test_badPeersAccept(self) -> Any:
        """The same with the accept policy: delivered, marked unchecked."""
        for mode in ("garbage", "500", "reset"):
            code, _, stack = yield self.badPeer(mode, "accept")
            self.assertEqual((mode, code), (mode, 250))
            [stored] = stack.messages(ALICE)
            self.assertIn(b"X-Spam-Status: unchecked", stored)

    @defer.inlineCallbacks
    def test_slowPeer(self) -> Any:
        """A peer that never answers: the timeout, then the policy (no hung session)."""
        code, text, _ = yield self.badPeer("silent", "tempfail", timeout=1)
        self.assertEqual((code, text[:5]), (451, "4.7.1"))
        [line] = self.lines("spam filter unavailable")
        self.assertIn("no reply within 1 s", line)


class HelperTests(TestCase):
    """The pure parts of the check."""

    def test_actionFor(self) -> None:
        """The most severe threshold reached wins."""
        t = {"greylist": 4.0, "add header": 6.0, "reject": 15.0}
        self.assertEqual([actionFor(s, t) for s in (0, 4, 7, 15, 99)],
                         ["no action", "greylist", "add header", "reject", "reject"])

    def test_editHeaders(self) -> None:
        """Forged spam fields (folded too) go, new ones go on top, the subject changes
        (RFC 2047 when not ASCII); the body is untouched."""
        data = (b"X-Spam: Yes\r\nSubject: old\r\nX-Spam-Status: No,\r\n forged\r\n"
                b"To: a@b.example\r\n\r\nX-Spam: in the body\r\n")
        out = editHeaders(data, [b"X-Spam-Status: unchecked"], "nouveau \u00e9t\u00e9")
        self.assertEqual(out, b"X-Spam-Status: unchecked\r\n"
                              b"Subject: =?utf-8?b?bm91dmVhdSDDqXTDqQ==?=\r\n"
                              b"To: a@b.example\r\n\r\nX-Spam: in the body\r\n")

    def test_requestHeaders(self) -> None:
        """The envelope as rspamd's request headers; no header from an empty field."""
        from pymaild.smtp.checks import Envelope

        env = Envelope(id="Q1", sender="", local={ALICE: "Alice+tag@example.org"},
                       remote=["x@remote.example"], client="192.0.2.7", helo="h.example",
                       hostname="mx.example.org", user=ALICE,
                       tls="TLSv1.3 with cipher TLS_AES_256_GCM_SHA384")
        self.assertEqual(requestHeaders(env), {
            "Rcpt": ["Alice+tag@example.org", "x@remote.example"],
            "Deliver-To": [ALICE], "IP": ["192.0.2.7"], "Helo": ["h.example"],
            "User": [ALICE], "Queue-Id": ["Q1"], "MTA-Name": ["mx.example.org"],
            "TLS-Version": ["TLSv1.3"], "TLS-Cipher": ["TLS_AES_256_GCM_SHA384"]})

    def test_authenticationResults(self) -> None:
        """Results a check before left in the verdicts go on top of the scanned copy."""
        from pymaild.smtp.checks import Envelope

        env = Envelope(id="Q1", sender="", local={}, remote=[])
        self.assertEqual(SpamCheck._scanned(env, b"M"), b"M")
        env.verdicts["authentication-results"] = "mx.example.org; spf=pass"
        self.assertEqual(SpamCheck._scanned(env, b"M"),
                         b"Authentication-Results: mx.example.org; spf=pass\r\nM")
