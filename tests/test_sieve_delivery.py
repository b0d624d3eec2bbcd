"""The Sieve message check at final delivery (L{pymaild.sieve.filter}), over the SMTP
wire of a full stack (L{tests.test_smtp_helpers.SMTPStack}), with scripts stored as
Pigeonhole stores them (L{pymaild.sieve.storage}).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from pymaild.sieve.checker import Limits
from pymaild.sieve.filter import SieveCheck, homeOf
from pymaild.sieve.outgoing import Outgoing
from pymaild.sieve.storage import ScriptStorage
from pymaild.smtp.checks import CheckChain
from pymaild.threads import InlineRunner
from tests.test_smtp_helpers import RecordingQueue, SMTPStack

BODY = (b"From: Sam <s@remote.example>\r\nTo: alice@example.org\r\n"
        b"Subject: [dev] hello\r\nMessage-ID: <m1@remote.example>\r\n\r\nbody\r\n")


class SieveDeliveryTests(TestCase):
    """Scripts decide folders, flags, discards, refusals, redirects and replies."""

    def setUp(self) -> None:
        """A stack whose chain runs the Sieve check with a recording queue."""
        self.queue = RecordingQueue()
        self.stack = SMTPStack(self)
        ids = iter(range(1000))
        self.outgoing = Outgoing(self.queue, lambda: f"Q{next(ids)}", "mx.example.org",
                                 clock=lambda: 1790000000.0)
        self.check = SieveCheck(self.stack.store, InlineRunner(), Limits(),
                                self.outgoing)
        self.stack.avatars.checks = CheckChain([self.check])

    def script(self, account: str, text: bytes, name: str = "main") -> ScriptStorage:
        """Store and activate a script for C{account}."""
        storage = ScriptStorage(homeOf(self.stack.store, account))
        storage.write(name, text)
        storage.activate(name)
        return storage

    def send(self, rcpts: list[str], body: bytes = BODY, sender: str = "s@remote.example"
             ) -> bytes:
        """Send one message over the wire; the reply to DATA."""
        c = self.stack.connect()
        c.ehlo("client.example")
        return c.sendMail(sender, rcpts, body)[-1]

    def files(self, account: str, folder: str) -> list[str]:
        """The file names in a folder's cur/ and new/."""
        acct = self.stack.store.account(account)
        path = acct.root if folder == "INBOX" else os.path.join(acct.root, "." + folder)
        out = []
        for sub in ("cur", "new"):
            try:
                out.extend(os.listdir(os.path.join(path, sub)))
            except FileNotFoundError:
                pass
        return out

    def test_pigeonholeLayout(self) -> None:
        """Scripts are ~/sieve/NAME.sieve, the active one linked from ~/.dovecot.sieve,
        ~ being the directory above the Maildir."""
        storage = self.script("alice@example.org", b"keep;")
        home = os.path.dirname(self.stack.store.account("alice@example.org").root)
        self.assertEqual(os.readlink(os.path.join(home, ".dovecot.sieve")),
                         "sieve/main.sieve")
        self.assertTrue(os.path.isfile(os.path.join(home, "sieve", "main.sieve")))
        self.assertEqual(storage.active(), "main")

    def test_noScript(self) -> None:
        """Without an active script the copy goes to INBOX."""
        self.assertEqual(self.send(["alice@example.org"])[:3], b"250")
        self.assertEqual(len(self.stack.messages("alice@example.org")), 1)

    def test_fileintoCreate(self) -> None:
        """fileinto :create makes the folder and files the copy there."""
        self.script("alice@example.org", b'require ["fileinto", "mailbox"];\n'
                    b'if header :contains "subject" "[dev]" { fileinto :create "Lists/dev"; }')
        self.assertEqual(self.send(["alice@example.org"])[:3], b"250")
        acct = self.stack.store.account("alice@example.org")
        self.assertIn("Lists/dev", acct.listFolders())
        self.assertEqual(len(self.files("alice@example.org", "Lists.dev")), 1)
        self.assertEqual(self.files("alice@example.org", "INBOX"), [])

    def test_fileintoMissingFolder(self) -> None:
        """fileinto without :create into a missing folder lands in INBOX (Dovecot's
        rule without lda_mailbox_autocreate)."""
        self.script("alice@example.org", b'require "fileinto"; fileinto "Nope";')
        self.send(["alice@example.org"])
        self.assertEqual(len(self.files("alice@example.org", "INBOX")), 1)

    def test_flags(self) -> None:
        """imap4flags: system flags in the :2, name, keywords through dovecot-keywords;
        IMAP sees them."""
        self.script("alice@example.org", b'require ["imap4flags"];\n'
                    b'addflag ["\\\\Seen", "\\\\Flagged", "$Work"];')
        self.send(["alice@example.org"])
        box = self.stack.store.account("alice@example.org").folder("INBOX")
        [info] = box.scan().messages
        self.assertEqual(set(info.flags), {"\\Seen", "\\Flagged", "$Work"})
        [name] = self.files("alice@example.org", "INBOX")
        tail = name.partition(":2,")[2]
        self.assertTrue({"F", "S"} <= set(tail), name)

    def test_keywordsFile(self) -> None:
        """A keyword set by a script is allocated a letter in the folder's
        dovecot-keywords (Dovecot's format), and fileinto :flags goes with the copy."""
        self.script("alice@example.org", b'require ["imap4flags", "fileinto", "mailbox"];\n'
                    b'fileinto :create :flags ["$Later", "\\\\Answered"] "Later";')
        self.send(["alice@example.org"])
        acct = self.stack.store.account("alice@example.org")
        with open(os.path.join(acct.root, ".Later", "dovecot-keywords")) as f:
            self.assertIn("$Later", f.read())
        [info] = acct.folder("Later").scan().messages
        self.assertEqual(set(info.flags), {"$Later", "\\Answered"})

    def test_discard(self) -> None:
        """discard stores nothing, and the message is still accepted."""
        self.script("alice@example.org", b"discard;")
        self.assertEqual(self.send(["alice@example.org"])[:3], b"250")
        self.assertEqual(self.stack.messages("alice@example.org"), [])

    def test_perRecipient(self) -> None:
        """Each recipient's own script decides its own copy."""
        self.script("alice@example.org", b"discard;")
        self.send(["alice@example.org", "bob@example.org"])
        self.assertEqual(self.stack.messages("alice@example.org"), [])
        self.assertEqual(len(self.stack.messages("bob@example.org")), 1)

    def test_reject(self) -> None:
        """reject of a one-recipient message is the 550 reply to DATA, with the reason."""
        self.script("alice@example.org", b'require "reject"; reject "Not from you.";')
        self.assertEqual(self.send(["alice@example.org"]), b"550 5.7.1 Not from you.")
        self.assertEqual(self.stack.messages("alice@example.org"), [])

    def test_rejectSeveral(self) -> None:
        """reject with several recipients drops that account's copy and sends the sender
        an MDN with the reason from the null sender; the other recipient gets its copy."""
        self.script("alice@example.org", b'require "reject"; reject "Not wanted here.";')
        self.assertEqual(self.send(["alice@example.org", "bob@example.org"])[:3], b"250")
        self.assertEqual(self.stack.messages("alice@example.org"), [])
        self.assertEqual(len(self.stack.messages("bob@example.org")), 1)
        [(sender, rcpts, data)] = self.queue.items
        self.assertEqual((sender, rcpts), ("", ["s@remote.example"]))
        self.assertIn(b"report-type=disposition-notification", data)
        self.assertIn(b"Not wanted here.", data)
        self.assertIn(b"Disposition: automatic-action/MDN-sent-automatically; deleted", data)
        self.assertIn(b"Subject: Rejected: [dev] hello", data)

    def test_rejectSeveralQueueFails(self) -> None:
        """When the rejection cannot be queued the copy is kept."""
        self.queue.fail = OSError("disk full")
        self.script("alice@example.org", b'require "reject"; reject "no";')
        self.assertEqual(self.send(["alice@example.org", "bob@example.org"])[:3], b"250")
        self.assertEqual(len(self.stack.messages("alice@example.org")), 1)
        self.flushLoggedErrors(OSError)

    def test_brokenScript(self) -> None:
        """An active script that does not compile (written by hand) keeps the copy in
        INBOX unchanged."""
        storage = ScriptStorage(homeOf(self.stack.store, "alice@example.org"))
        storage.write("bad", b"if true {")
        storage.activate("bad")
        self.assertEqual(self.send(["alice@example.org"])[:3], b"250")
        [stored] = self.stack.messages("alice@example.org")
        self.assertTrue(stored.endswith(BODY))

    def test_tooManyActions(self) -> None:
        """10,000 actions stop at the limit; the copy lands in INBOX unchanged."""
        self.script("alice@example.org", b'require "fileinto";\n' + b"".join(
            b'fileinto "f%d";\n' % i for i in range(10000)))
        self.assertEqual(self.send(["alice@example.org"])[:3], b"250")
        [stored] = self.stack.messages("alice@example.org")
        self.assertTrue(stored.endswith(BODY))

    def test_hostileActiveScripts(self) -> None:
        """Active scripts written by hand past every limit (deep nesting, a 1 MB string,
        an include loop) keep each message in INBOX unchanged."""
        storage = ScriptStorage(homeOf(self.stack.store, "alice@example.org"))
        storage.write("loopa", b'require "include"; include "loopb";')
        storage.write("loopb", b'require "include"; include "loopa";')
        scripts = [
            b"if true {" * 1000 + b"discard;" + b"}" * 1000,
            b'require "fileinto"; fileinto "' + b"x" * (1 << 20) + b'";',
            b'require "include"; include "loopa"; discard;',
        ]
        for i, text in enumerate(scripts):
            storage.write(f"s{i}", text)
            storage.activate(f"s{i}")
            self.assertEqual(self.send(["alice@example.org"])[:3], b"250")
            self.assertEqual(len(self.stack.messages("alice@example.org")), i + 1)
        for stored in self.stack.messages("alice@example.org"):
            self.assertTrue(stored.endswith(BODY))

    def test_backtrackingRegex(self) -> None:
        """A catastrophic regex in a script does not stall delivery (RE2)."""
        self.script("alice@example.org", b'require ["regex", "fileinto"];\n'
                    b'if header :regex "subject" "^(a|aa)+$" { fileinto "x"; }')
        body = b"Subject: " + b"\r\n ".join([b"a" * 900] * 40) + b"b\r\n\r\nbody\r\n"
        self.assertEqual(self.send(["alice@example.org"], body)[:3], b"250")
        self.assertEqual(len(self.stack.messages("alice@example.org")), 1)

    def test_redirect(self) -> None:
        """redirect queues the message for the new address under the original sender,
        with Delivered-To of the account on top; no local copy."""
        self.script("alice@example.org", b'redirect "elsewhere@remote.example";')
        self.assertEqual(self.send(["alice@example.org"])[:3], b"250")
        [(sender, rcpts, data)] = self.queue.items
        self.assertEqual((sender, rcpts), ("s@remote.example", ["elsewhere@remote.example"]))
        self.assertTrue(data.startswith(b"Delivered-To: alice@example.org\r\n"))
        self.assertTrue(data.endswith(BODY))
        self.assertEqual(self.stack.messages("alice@example.org"), [])

    def test_redirectLoop(self) -> None:
        """A message that already passed through the account is not redirected again:
        it stays in INBOX."""
        self.script("alice@example.org", b'redirect "elsewhere@remote.example";')
        body = b"Delivered-To: alice@example.org\r\n" + BODY
        self.assertEqual(self.send(["alice@example.org"], body)[:3], b"250")
        self.assertEqual(self.queue.items, [])
        self.assertEqual(len(self.stack.messages("alice@example.org")), 1)

    def test_redirectQueueFails(self) -> None:
        """A redirect the queue refuses leaves the copy in INBOX."""
        self.queue.fail = OSError("disk full")
        self.script("alice@example.org", b'redirect "elsewhere@remote.example";')
        self.assertEqual(self.send(["alice@example.org"])[:3], b"250")
        self.assertEqual(len(self.stack.messages("alice@example.org")), 1)
        self.flushLoggedErrors(OSError)

    def test_vacationOnce(self) -> None:
        """vacation answers the sender once per period, from the null sender, with
        Auto-Submitted and In-Reply-To; the copy is kept."""
        self.script("alice@example.org", b'require "vacation";\n'
                    b'vacation :days 2 :subject "Away" "Back on Monday.";')
        self.send(["alice@example.org"])
        self.send(["alice@example.org"])
        [(sender, rcpts, data)] = self.queue.items
        self.assertEqual((sender, rcpts), ("", ["s@remote.example"]))
        self.assertIn(b"Auto-Submitted: auto-replied", data)
        self.assertIn(b"In-Reply-To: <m1@remote.example>", data)
        self.assertIn(b"Subject: Away\r\n", data)
        self.assertIn(b"\r\n\r\nBack on Monday.\r\n", data)
        self.assertEqual(len(self.stack.messages("alice@example.org")), 2)
        self.outgoing.clock = lambda: 1790000000.0 + 2 * 86400 + 1
        self.send(["alice@example.org"])
        self.assertEqual(len(self.queue.items), 2)

    def test_vacationRules(self) -> None:
        """No vacation reply to list mail, auto-submitted mail, or mail not addressed to
        the user (RFC 3834, RFC 5230)."""
        self.script("alice@example.org", b'require "vacation"; vacation "Away.";')
        self.send(["alice@example.org"], b"List-Id: <x.example>\r\n" + BODY)
        self.send(["alice@example.org"], b"Auto-Submitted: auto-generated\r\n" + BODY)
        self.send(["alice@example.org"], BODY.replace(b"To: alice@example.org",
                                                      b"To: list@remote.example"))
        self.send(["alice@example.org"], BODY, sender="owner-x@remote.example")
        self.assertEqual(self.queue.items, [])


class GlobalScriptsTests(TestCase):
    """C{include :global} reads the configured global store at delivery."""

    def test_globalInclude(self) -> None:
        """A user's script including a global one files as the global one says; a
        changed global script is used by the next delivery."""
        stack = SMTPStack(self)
        globalDir = os.path.abspath(self.mktemp())
        os.makedirs(globalDir)
        with open(os.path.join(globalDir, "site.sieve"), "wb") as f:
            f.write(b'require ["fileinto", "mailbox"]; fileinto :create "Site";\n')
        stack.avatars.checks = CheckChain([SieveCheck(stack.store, InlineRunner(), Limits(),
                                                      globalDir=globalDir)])
        storage = ScriptStorage(homeOf(stack.store, "alice@example.org"))
        storage.write("main", b'require "include"; include :global "site";')
        storage.activate("main")

        def send() -> None:
            c = stack.connect()
            c.ehlo("client.example")
            self.assertEqual(c.sendMail("s@remote.example", ["alice@example.org"],
                                        BODY)[-1][:3], b"250")

        def count(folder: str) -> int:
            root = stack.store.account("alice@example.org").root
            path = os.path.join(root, "." + folder, "new")
            return len(os.listdir(path)) if os.path.isdir(path) else 0

        send()
        self.assertEqual(count("Site"), 1)
        with open(os.path.join(globalDir, "site.sieve"), "wb") as f:
            f.write(b'require ["fileinto", "mailbox"]; fileinto :create "Elsewhere";\n')
        send()
        self.assertEqual((count("Site"), count("Elsewhere")), (1, 1))


class VacationAliasesTests(TestCase):
    """The user's own addresses, for vacation, include the aliases that reach them."""

    def setUp(self) -> None:
        """A stack with an aliases file giving alice two more addresses."""
        self.queue = RecordingQueue()
        self.stack = SMTPStack(self, aliases="sales@example.org: alice, bob\n"
                                             "ali: alice@example.org\n")
        self.outgoing = Outgoing(self.queue, lambda: "Q1", "mx.example.org",
                                 clock=lambda: 1790000000.0)
        self.stack.avatars.checks = CheckChain([SieveCheck(
            self.stack.store, InlineRunner(), Limits(), self.outgoing,
            addressesOf=self.stack.avatars.resolver.addressesOf)])
        storage = ScriptStorage(homeOf(self.stack.store, "alice@example.org"))
        storage.write("main", b'require "vacation"; vacation "Away.";')
        storage.activate("main")

    def send(self, rcpt: str, body: bytes, sender: str = "s@remote.example") -> None:
        """Deliver one message to C{rcpt}."""
        c = self.stack.connect()
        c.ehlo("client.example")
        self.assertEqual(c.sendMail(sender, [rcpt], body)[-1][:3], b"250")

    def test_ownAddresses(self) -> None:
        """The alias addresses reaching alice are hers (in every local domain for a key
        without one), so mail addressed in To: to an alias of hers is answered; without
        the aliases it would not be (not addressed to her)."""
        resolver = self.stack.avatars.resolver
        self.assertEqual(sorted(resolver.addressesOf("alice@example.org")),
                         sorted(["sales@example.org"] + [f"ali@{d}" for d in
                                                         self.stack.directory.domains]))
        self.assertEqual(resolver.addressesOf("bob@example.org"), ["sales@example.org"])
        toAlias = BODY.replace(b"To: alice@example.org", b"To: ali@example.org")
        self.stack.avatars.checks.checks[0].addressesOf = None
        self.send("alice@example.org", toAlias)
        self.assertEqual(self.queue.items, [])
        self.stack.avatars.checks.checks[0].addressesOf = resolver.addressesOf
        self.send("alice@example.org", toAlias, sender="t@remote.example")
        self.assertEqual(len(self.queue.items), 1)


class SignedAndRewrittenTests(TestCase):
    """With the mail-authentication pieces the tap gives it, a redirect leaves under an
    SRS sender and a vacation reply is DKIM-signed."""

    def setUp(self) -> None:
        """A Sieve check whose outgoing mail gets a real SRS and a real DKIM signer."""
        import dkim  # noqa: F401 - dkimpy, a dependency of the signer

        from pymaild.mailauth.dkimkeys import DKIMKeys
        from pymaild.mailauth.signer import DKIMSigner
        from pymaild.smtp.srs import SRS

        self.queue = RecordingQueue()
        self.stack = SMTPStack(self)
        keys = DKIMKeys(os.path.join(self.stack.base, "dkim"))
        self.published = {f"{k.dnsName}.".encode(): k.dnsValue.encode()
                          for k in keys.keygen("example.org", "s1")}
        self.srs = SRS(b"k" * 32, "example.org")
        ids = iter(range(1000))
        outgoing = Outgoing(self.queue, lambda: f"Q{next(ids)}", "mx.example.org",
                            clock=lambda: 1790000000.0, srs=self.srs,
                            signer=DKIMSigner(keys), runner=InlineRunner())
        self.stack.avatars.checks = CheckChain(
            [SieveCheck(self.stack.store, InlineRunner(), Limits(), outgoing)])

    def deliver(self, script: bytes) -> None:
        """Activate C{script} for alice and deliver BODY to her over SMTP."""
        storage = ScriptStorage(homeOf(self.stack.store, "alice@example.org"))
        storage.write("main", script)
        storage.activate("main")
        c = self.stack.connect()
        c.ehlo()
        self.assertEqual(c.sendMail("s@remote.example", ["alice@example.org"], BODY)[-1][:3],
                         b"250")

    def test_redirectSRS(self) -> None:
        """The redirected copy's envelope sender is an SRS0 address of ours that
        reverses to the original sender."""
        self.deliver(b'redirect "elsewhere@remote.example";')
        [(sender, rcpts, _data)] = self.queue.items
        self.assertTrue(sender.startswith("SRS0=") and sender.endswith("@example.org"),
                        sender)
        self.assertEqual(self.srs.reverse(sender), "s@remote.example")

    def test_vacationSigned(self) -> None:
        """The vacation reply from alice carries DKIM signatures that verify against
        the published keys (rsa and ed25519)."""
        import dkim

        self.deliver(b'require "vacation";\nvacation :subject "Away" "Back soon.";')
        [(sender, _rcpts, data)] = self.queue.items
        self.assertEqual(sender, "")
        self.assertEqual(data.count(b"DKIM-Signature:"), 2)

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            return self.published.get(name, b"")

        d = dkim.DKIM(data)
        self.assertTrue(all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(2)))
