"""Tests for the aliases file, recipient resolution and the delivery avatar's helpers."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import TestCase

from pymaild.errors import AddressError
from pymaild.smtp.aliases import Aliases, AliasesEditor, parseAliases
from pymaild.smtp.delivery import chainedFile
from tests.test_smtp_helpers import RecordingQueue, SMTPStack

BODY = b"Subject: test\r\n\r\nHello.\r\n"


class ParseAliasesTests(TestCase):
    """The aliases file syntax."""

    def test_syntax(self) -> None:
        """Exact, domainless and catch-all keys, comments and continuation lines."""
        table = parseAliases([
            "# a comment\n",
            "Sales@Example.ORG: alice@example.org,\n",
            "   bob  # continued\n",
            "abuse: postmaster\n",
            "@Example.NET: carol@example.net\n",
            "\n",
        ])
        self.assertEqual(table.exact, {"sales@example.org": ("alice@example.org", "bob")})
        self.assertEqual(table.anyDomain, {"abuse": ("postmaster",)})
        self.assertEqual(table.catchAll, {"example.net": ("carol@example.net",)})

    def test_badEntriesSkipped(self) -> None:
        """Malformed lines, pipes, files and :include: are skipped; good lines still load."""
        table = parseAliases([
            "no colon here\n", "empty:\n", "pipe: |/usr/bin/evil\n", "file: /etc/passwd\n",
            "inc: :include:/x\n", "bad key@: a\n", "mixed: |cmd, alice@example.org\n",
            "fine: bob@example.org\n",
        ])
        self.assertEqual(table.exact, {})
        self.assertEqual(table.anyDomain, {"mixed": ("alice@example.org",),
                                           "fine": ("bob@example.org",)})

    def test_reload(self) -> None:
        """The file is re-read when it changes, and an absent file means no aliases."""
        path = self.mktemp()
        aliases = Aliases(path)
        self.assertIsNone(aliases.lookup("a@example.org"))
        with open(path, "w") as f:
            f.write("a@example.org: b@example.org\n")
        self.assertEqual(aliases.lookup("a@example.org"), ("b@example.org",))
        with open(path, "w") as f:
            f.write("a@example.org: c@example.org, d\n")
        os.utime(path, ns=(1, 1))
        self.assertEqual(aliases.lookup("a@example.org"), ("c@example.org", "d@example.org"))
        os.unlink(path)
        self.assertIsNone(aliases.lookup("a@example.org"))
        self.assertIsNone(Aliases("").lookup("a@example.org"))


class AliasesEditorTests(TestCase):
    """Adding and removing entries keeps the rest of the file as written."""

    TEXT = ("# our aliases\n"
            "info@example.org: alice,   bob   # two people\n"
            "sales@example.org:     alice\n"
            "    , partner@elsewhere.example\n"
            "\n"
            "abuse: postmaster\n")

    def setUp(self) -> None:
        """A file with comments, odd spacing and a continuation line, mode 0640."""
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write(self.TEXT)
        os.chmod(self.path, 0o640)
        self.editor = AliasesEditor(self.path, lambda d: d in ("example.org", "example.net"))

    def read(self) -> str:
        """The file now."""
        with open(self.path) as f:
            return f.read()

    def test_list(self) -> None:
        """Entries come with their keys and targets, continuation lines joined."""
        self.assertEqual([(e.key, e.targets) for e in self.editor.list()], [
            ("info@example.org", ("alice", "bob")),
            ("sales@example.org", ("alice", "partner@elsewhere.example")),
            ("abuse", ("postmaster",))])

    def test_addAndRemove(self) -> None:
        """A new entry is appended; removing one drops all its lines and nothing else;
        the server's reader sees the change; the file keeps its mode."""
        reader = Aliases(self.path)
        self.assertIsNone(reader.lookup("help@example.org"))
        self.assertEqual(self.editor.add("Help@Example.org", "alice, bob@example.org"),
                         "help@example.org")
        self.assertEqual(self.read(), self.TEXT + "help@example.org: alice, bob@example.org\n")
        self.assertEqual(reader.lookup("help@example.org"),
                         ("alice@example.org", "bob@example.org"))
        self.editor.remove("sales@example.org")
        self.assertEqual(self.read(), self.TEXT.replace(
            "sales@example.org:     alice\n    , partner@elsewhere.example\n", "")
            + "help@example.org: alice, bob@example.org\n")
        self.editor.add("@example.net", "alice@example.org")
        self.assertEqual(reader.catchAll("example.net"), ("alice@example.org",))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o640)

    def test_refused(self) -> None:
        """A key outside the local domains, a duplicate, a bad or missing target, or a
        missing entry is refused and the file is unchanged."""
        for key, targets in [("x@remote.example", "alice"), ("INFO@example.org", "bob"),
                             ("abuse", "carol"), ("new@example.org", "|/bin/sh"),
                             ("new@example.org", ""), ("bad key", "alice"),
                             ("@remote.example", "alice")]:
            self.assertRaises(AddressError, self.editor.add, key, targets)
        self.assertRaises(AddressError, self.editor.remove, "nobody@example.org")
        self.assertEqual(self.read(), self.TEXT)


class ResolverTests(TestCase):
    """Recipient resolution through aliases and the directory."""

    def setUp(self) -> None:
        """Build the server stack and a client session for each test."""
        self.stack = SMTPStack(self, aliases=(
            "team@example.org: alice@example.org, bob, friend@remote.example\n"
            "nested@example.org: team@example.org, carol@example.net\n"
            "loop1@example.org: loop2@example.org\n"
            "loop2@example.org: loop1@example.org, alice@example.org\n"
            "bob@example.org: bob@example.org, archive@example.net\n"
            "archive@example.net: carol@example.net\n"
            "postmaster@example.org: bob@example.org\n"
            "@example.net: alice@example.org\n"
        ))
        self.resolve = self.stack.avatars.resolver.resolve

    def test_nested(self) -> None:
        """Aliases expand recursively; local accounts and remote addresses are separated."""
        res = self.resolve("nested@example.org")
        self.assertEqual(res.local, ["alice@example.org", "bob@example.org", "carol@example.net"])
        self.assertEqual(res.remote, ["friend@remote.example"])

    def test_loop(self) -> None:
        """A loop ends at the address seen twice; what else the aliases name is kept."""
        self.assertEqual(self.resolve("loop1@example.org").local, ["alice@example.org"])

    def test_selfReference(self) -> None:
        """An alias naming itself means the mailbox itself plus the other targets."""
        self.assertEqual(self.resolve("bob@example.org").local,
                         ["bob@example.org", "carol@example.net"])

    def test_tagged(self) -> None:
        """A +tag address uses the untagged alias; accounts are found with their tag."""
        # bob's own alias adds his archive (carol).
        self.assertEqual(self.resolve("team+x@example.org").local,
                         ["alice@example.org", "bob@example.org", "carol@example.net"])
        self.assertEqual(self.resolve("alice+x@example.org").local, ["alice@example.org"])

    def test_catchAllOnlyForUnknown(self) -> None:
        """The catch-all takes unknown addresses only; existing accounts keep their mail."""
        self.assertEqual(self.resolve("anything@example.net").local, ["alice@example.org"])
        self.assertEqual(self.resolve("carol@example.net").local, ["carol@example.net"])
        self.assertEqual(self.resolve("anything@example.net", catchAll=False).local, [])

    def test_postmaster(self) -> None:
        """postmaster of any domain follows the primary domain's postmaster alias."""
        expected = ["bob@example.org", "carol@example.net"]  # bob, plus his archive alias
        self.assertEqual(self.resolve("postmaster@example.org").local, expected)
        self.assertEqual(self.resolve("postmaster@παράδειγμα.δοκιμή").local, expected)

    def test_unknown(self) -> None:
        """Unknown local addresses resolve to nothing."""
        res = self.resolve("nobody@example.org")
        self.assertEqual((res.local, res.remote), ([], []))


class AliasDeliveryTests(TestCase):
    """Aliases over the wire."""

    def test_aliasDelivery(self) -> None:
        """Mail to an alias reaches each account once, even when also addressed directly."""
        stack = SMTPStack(self, aliases="team@example.org: alice@example.org, bob@example.org\n")
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["team@example.org", "alice@example.org"], BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        [a] = stack.messages("alice@example.org")
        [b] = stack.messages("bob@example.org")
        self.assertEqual(a, b)
        self.assertEqual(os.stat(stack.files("alice@example.org")[0]).st_ino,
                         os.stat(stack.files("bob@example.org")[0]).st_ino)
        self.assertNotIn(b"Delivered-To", a)

    def test_aliasToOneAccount(self) -> None:
        """An alias reaching one account: its copy names the RCPT address that did."""
        stack = SMTPStack(self, aliases="sales@example.org: alice@example.org\n")
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["sales@example.org", "alice@example.org"],
                             BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        [a] = stack.messages("alice@example.org")
        self.assertIn(b"Delivered-To: alice@example.org\r\n", a)
        self.assertIn(b"for <sales@example.org>", a)

    def test_forwardToQueue(self) -> None:
        """An alias forwarding elsewhere hands the message to the queue, even anonymously."""
        queue = RecordingQueue()
        stack = SMTPStack(self, queue=queue, aliases="fwd@example.org: me@remote.example\n")
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["fwd@example.org"], BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(queue.items[0][:2], ("s@remote.example", ["me@remote.example"]))

    def test_forwardWithoutQueue(self) -> None:
        """Without a queue a forward-only alias gets 550 5.7.1."""
        stack = SMTPStack(self, aliases="fwd@example.org: me@remote.example\n")
        c = stack.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<s@remote.example>")
        self.assertEqual(c.cmd("RCPT TO:<fwd@example.org>"),
                         b"550 5.7.1 <fwd@example.org>: Forwarding not configured")

    def test_reloadBetweenSessions(self) -> None:
        """An alias added to the file works for the next RCPT without a restart."""
        stack = SMTPStack(self, aliases="")
        c = stack.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<s@remote.example>")
        self.assertRegex(c.cmd("RCPT TO:<new@example.org>"), rb"^550 5\.1\.1 ")
        with open(stack.aliasesPath, "w") as f:
            f.write("new@example.org: alice@example.org\n")
        self.assertEqual(c.cmd("RCPT TO:<new@example.org>"), b"250 2.1.5 Ok")


class ChainedFileTests(TestCase):
    """chainedFile reads several byte strings as one file without joining them."""

    def test_read(self) -> None:
        """Whole and piecewise reads give the concatenation."""
        self.assertEqual(chainedFile(b"ab", b"", b"cde").read(), b"abcde")
        f = chainedFile(b"ab", b"cde")
        self.assertEqual([f.read(3), f.read(3), f.read(3)], [b"abc", b"de", b""])


class LoopTests(TestCase):
    """Mail loops are stopped by counting Received headers."""

    def test_tooManyHops(self) -> None:
        """50 Received headers get 554 5.4.6 and nothing is stored; 49 are accepted."""
        stack = SMTPStack(self)
        c = stack.connect()
        c.ehlo()
        hop = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        replies = c.sendMail("s@remote.example", ["alice@example.org"], hop * 50 + BODY)
        self.assertEqual(replies[-1], b"554 5.4.6 Too many hops, mail loop suspected")
        self.assertEqual(stack.messages("alice@example.org"), [])
        replies = c.sendMail("s@remote.example", ["alice@example.org"], hop * 49 + BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")


class LineMessageTests(TestCase):
    """Messages that only implement Twisted's IMessage.lineReceived still get every line."""

    def test_lineOnlyMessage(self) -> None:
        """The server splits bulk DATA into lines for an IMessage without dataReceived."""
        from twisted.internet import defer

        stack = SMTPStack(self)
        lines: list[bytes] = []

        class LineOnly:
            def lineReceived(self, line: bytes) -> None:
                lines.append(line)

            def eomReceived(self) -> defer.Deferred[str]:
                return defer.succeed("LINEONLY")

            def connectionLost(self) -> None:
                pass

        c = stack.connect()
        c.ehlo()
        c.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
        c.replies()
        c.proto.txn.message = LineOnly()
        c.send(b"Subject: x\r\n\r\none\r\n..two\r\nthree\r\n.\r\n")
        self.assertEqual(c.replies(), [b"250 2.0.0 Ok: queued as LINEONLY"])
        self.assertEqual(lines, [b"Subject: x", b"", b"one", b".two", b"three"])


class DeliveredHookTests(TestCase):
    """In-process IMAP sessions are told of an SMTP delivery directly (no inotify)."""

    def connect(self, hooked: bool) -> tuple[SMTPStack, Any, Any]:
        """An SMTP stack delivering into an IMAP stack's tree (inotify off), its
        avatars' C{delivered} given the IMAP registry when C{hooked}, and an IMAP
        session IDLE in Alice's INBOX."""
        from tests.test_imap_helpers import IMAPEnv

        env = IMAPEnv(self)
        stack = SMTPStack(self)
        stack.avatars.store = env.store
        if hooked:
            stack.avatars.delivered = env.registry.mailDelivered
        imap = env.selected()
        self.assertEqual(imap.cmd("IDLE"), b"+ idling\r\n")
        return stack, env, imap

    def test_idleSessionHearsAtOnce(self) -> None:
        """A message for Alice and Bob: Alice's IDLE session gets EXISTS with the 250,
        before any rescan timer ran."""
        stack, env, imap = self.connect(hooked=True)
        calls: list[tuple[list[str], str]] = []
        hook = stack.avatars.delivered

        def record(accounts: list[str], folder: str) -> None:
            calls.append((accounts, folder))
            hook(accounts, folder)

        stack.avatars.delivered = record
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org", "bob@example.org"],
                             BODY)
        self.assertRegex(replies[-1], rb"^250 2\.0\.0 ")
        self.assertEqual(calls, [(["alice@example.org", "bob@example.org"], "INBOX")])
        self.assertIn(b"* 1 EXISTS", imap.take())
        imap.send(b"DONE\r\n")

    def test_withoutHookOnlyThePoll(self) -> None:
        """Without the hook (and without inotify) the session waits for its poll: the
        hook is what made the difference above."""
        stack, env, imap = self.connect(hooked=False)
        c = stack.connect()
        c.ehlo()
        c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertNotIn(b"EXISTS", imap.take())
        imap.send(b"DONE\r\n")

    def test_notToldOfFailure(self) -> None:
        """A message that could not be stored is not announced."""
        from pymaild.errors import StoreError

        stack, env, imap = self.connect(hooked=True)
        calls: list[Any] = []
        stack.avatars.delivered = lambda accounts, folder: calls.append(accounts)

        def write(targets: object, order: object, data: object) -> list[str]:
            raise StoreError("EIO")

        env.store._store = write  # type: ignore[method-assign]
        c = stack.connect()
        c.ehlo()
        replies = c.sendMail("s@remote.example", ["alice@example.org"], BODY)
        self.assertRegex(replies[-1], rb"^451 ")
        self.assertEqual(calls, [])
        self.flushLoggedErrors(StoreError)
