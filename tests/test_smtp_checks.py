"""The message-check chain at the end of DATA (L{pymaild.smtp.checks}).

Each test runs a full SMTP stack (L{tests.test_smtp_helpers.SMTPStack}) with checks that
refuse, change, place or break messages, and looks at the replies, the Maildirs and the
queue.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from pymaild.smtp.checks import CheckChain, Envelope, Placement, SMTPReply
from tests.test_smtp_helpers import LOOPBACK, RecordingQueue, SMTPStack

BODY = b"From: s@remote.example\r\nSubject: hi\r\n\r\nbody\r\n"


class Recorder:
    """A check that records the envelopes it saw, then does what it was told."""

    def __init__(self, action: Any = None) -> None:
        self.seen: list[tuple[Envelope, bytes]] = []
        self.action = action

    def check(self, envelope: Envelope, message: bytes) -> Any:
        """Record, then return C{action(envelope, message)} or the message."""
        self.seen.append((envelope, message))
        if self.action is None:
            return message
        return self.action(envelope, message)


def folderMessages(stack: SMTPStack, address: str, folder: str) -> list[bytes]:
    """The contents of every message in one folder of C{address}."""
    box = stack.store.account(address).folder(folder)
    out = []
    for info in box.scan().messages:
        with box.open(info) as f:
            out.append(f.read())
    return out


class CheckChainTests(TestCase):
    """What checks can do to a message, seen over the SMTP wire."""

    def stack(self, *checks: Any, **kw: Any) -> SMTPStack:
        """An SMTP stack whose avatars run C{checks}."""
        stack = SMTPStack(self, **kw)
        stack.avatars.checks = CheckChain(checks)
        return stack

    def test_envelope(self) -> None:
        """A check sees the transaction's id, sender, recipients, client and HELO."""
        rec = Recorder()
        stack = self.stack(rec)
        c = stack.connect()
        c.ehlo("client.example")
        replies = c.sendMail("s@remote.example", ["alice@example.org", "bob+x@example.org"],
                             BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        [(env, message)] = rec.seen
        self.assertEqual(env.sender, "s@remote.example")
        self.assertEqual(env.local, {"alice@example.org": "alice@example.org",
                                     "bob@example.org": "bob+x@example.org"})
        self.assertEqual((env.role, env.client, env.helo, env.user),
                         ("mx", "192.0.2.1", "client.example", None))
        self.assertIn(env.id.encode(), replies[-1])
        self.assertEqual(message, BODY)

    def test_refuse(self) -> None:
        """An SMTPReply raised by a check is the reply to DATA; nothing is stored."""
        def refuse(env: Envelope, message: bytes) -> bytes:
            raise SMTPReply(550, "5.7.1 Refused by policy")

        later = Recorder()
        stack = self.stack(Recorder(refuse), later)
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertEqual(replies[-1], b"550 5.7.1 Refused by policy")
        self.assertEqual(stack.messages("alice@example.org"), [])
        self.assertEqual(later.seen, [])
        self.assertEqual(c.cmd("NOOP")[:3], b"250")

    def test_refuseAsynchronously(self) -> None:
        """A failed Deferred with an SMTPReply refuses the message too."""
        stack = self.stack(Recorder(
            lambda env, m: defer.fail(SMTPReply(451, "4.7.1 Try again later"))))
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertEqual(replies[-1], b"451 4.7.1 Try again later")
        self.assertEqual(stack.messages("alice@example.org"), [])

    def test_brokenCheck(self) -> None:
        """An unexpected exception becomes 451 4.3.0 and is logged; nothing is stored."""
        def broken(env: Envelope, message: bytes) -> bytes:
            raise ZeroDivisionError("bug")

        stack = self.stack(Recorder(broken))
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertEqual(
            replies[-1], b"451 4.3.0 Temporary failure checking the message, try again later")
        self.assertEqual(stack.messages("alice@example.org"), [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_changeChains(self) -> None:
        """Each check sees the bytes the one before returned; local copies and the
        queued copy get the final bytes."""
        first = Recorder(lambda env, m: b"X-First: 1\r\n" + m)
        second = Recorder(lambda env, m: defer.succeed(b"X-Second: 2\r\n" + m))
        queue = RecordingQueue()
        stack = self.stack(first, second, queue=queue, role="submission",
                           cleartext="always")
        c = stack.connect(LOOPBACK)
        c.ehlo()
        self.assertEqual(c.authPlain("alice@example.org", "alice-secret")[:3], b"235")
        body = b"From: alice@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
        replies = c.sendMail("alice@example.org", ["bob@example.org", "x@remote.example"],
                             body)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(second.seen[0][1], b"X-First: 1\r\n" + body)
        self.assertEqual(second.seen[0][0].user, "alice@example.org")
        [stored] = stack.messages("bob@example.org")
        self.assertTrue(stored.endswith(b"X-Second: 2\r\nX-First: 1\r\n" + body), stored)
        [(_, rcpts, queued)] = queue.items
        self.assertEqual(rcpts, ["x@remote.example"])
        self.assertTrue(queued.endswith(b"X-Second: 2\r\nX-First: 1\r\n" + body), queued)

    def test_placements(self) -> None:
        """A copy placed in an existing folder lands there; one placed in a folder the
        account lacks lands in INBOX; two placements give two copies; none discards."""
        def place(env: Envelope, message: bytes) -> bytes:
            env.placements["alice@example.org"] = [Placement("Junk")]
            env.placements["bob@example.org"] = [Placement("Junk"), Placement()]
            env.placements["carol@example.net"] = []
            return message

        stack = self.stack(Recorder(place))
        stack.store.account("alice@example.org").createFolder("Junk")
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail(
            "s@remote.example",
            ["alice@example.org", "bob@example.org", "carol@example.net"], BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(stack.messages("alice@example.org"), [])
        self.assertEqual(len(folderMessages(stack, "alice@example.org", "Junk")), 1)
        self.assertEqual(len(stack.messages("bob@example.org")), 2)
        self.assertEqual(stack.messages("carol@example.net"), [])

    def test_queueFailureRemovesPlacedCopies(self) -> None:
        """When queueing fails after a copy went to another folder, that copy is
        removed from the folder it went to."""
        def place(env: Envelope, message: bytes) -> bytes:
            env.placements["bob@example.org"] = [Placement("Archive")]
            return message

        queue = RecordingQueue()
        queue.fail = OSError("queue broken")
        stack = self.stack(Recorder(place), queue=queue, role="submission",
                           cleartext="always")
        stack.store.account("bob@example.org").createFolder("Archive")
        c = stack.connect(LOOPBACK)
        c.ehlo()
        c.authPlain("alice@example.org", "alice-secret")
        body = b"From: alice@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
        replies = c.sendMail("alice@example.org", ["bob@example.org", "x@remote.example"],
                             body)
        self.assertEqual(replies[-1][:3], b"451")
        self.assertEqual(folderMessages(stack, "bob@example.org", "Archive"), [])
        self.flushLoggedErrors(OSError)
