"""IMAP rows of the reliability catalogue (I1-I7, I13-I15, I17, I18) that the room's own
tests did not pin down: hostile literals, nesting, sequence sets, mailbox names that try
to leave the user's Maildir, modified UTF-7 spellings, NUL in strings, tags, per
user/IP caps, mass disconnects, autologout timers, and internal errors kept from clients.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.imap.account import IMAPAccount
from pymaild.limits import UserIPLimits
from pymaild.store import mutf7
from pymaild.store.names import fromDirName
from tests.test_imap_helpers import ALICE, ALICE_PW, IMAPEnv, Wire, makeMessage, tagged, untagged

POSTAUTH = 30 * 60
PREAUTH = 60


def status(out: bytes, tag: bytes) -> bytes:
    """The status word (OK, NO, BAD) of the tagged reply for C{tag}."""
    return tagged(out, tag).split(b" ")[1]


class HostileLiteralTests(SynchronousTestCase):
    """I1-I3: literal sizes are checked before any continuation or allocation."""

    def test_appendHugeSynchronisingLiteral(self) -> None:
        """I1: APPEND {4294967295} and a 20-digit size get NO [TOOBIG] without '+',
        nothing is buffered, and the next command is answered."""
        env = IMAPEnv(self)
        c = env.login()
        for size in (b"4294967295", b"18446744073709551616"):
            out = c.cmd(b"APPEND INBOX {" + size + b"}")
            self.assertIn(b"NO [TOOBIG]", tagged(out, c.lastTag))
            self.assertNotIn(b"+ ", out)
            self.assertIsNone(c.proto._sink)
            self.assertEqual(len(c.proto._inbuf), 0)
            self.assertEqual(status(c.cmd("NOOP"), c.lastTag), b"OK")

    def test_malformedLiteralSizes(self) -> None:
        """I2: {-100}zzz, {abc} and an over-long size are BAD at once; the zero-padded
        {00000000000000000001} is a valid one-octet literal and stays in sync."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.selected()
        started = time.monotonic()
        self.assertEqual(status(c.cmd("SEARCH {-100}zzz"), c.lastTag), b"BAD")
        self.assertEqual(status(c.cmd("SEARCH {-100}"), c.lastTag), b"BAD")
        self.assertEqual(status(c.cmd("SEARCH SUBJECT {abc}"), c.lastTag), b"BAD")
        out = c.cmd("SEARCH SUBJECT {18446744073709551616}")
        self.assertEqual(status(out, c.lastTag), b"BAD")
        self.assertNotIn(b"+ ", out)
        self.assertEqual(c.cmd("SEARCH SUBJECT {00000000000000000001}"),
                         b"+ Ready for literal data\r\n")
        out = c.send(b"a\r\n")
        self.assertIn(b"* SEARCH 1", out)
        self.assertEqual(status(out, c.lastTag), b"OK")
        self.assertEqual(status(c.cmd("NOOP"), c.lastTag), b"OK")
        self.assertLess(time.monotonic() - started, 5)

    def test_oversizedNonSyncLiteralNeverRunsItsBytes(self) -> None:
        """I3: an oversized LITERAL+ literal is answered, then BYE and close; commands
        hidden in its bytes are never run (after login and before it)."""
        env = IMAPEnv(self)
        c = env.login()
        payload = b"x DELETE Trash\r\ny LOGOUT\r\n"
        out = c.send(b"a SELECT {100000+}\r\n" + payload)
        self.assertIn(b"a BAD", out)
        self.assertIn(b"* BYE", out)
        self.assertNotIn(b"x ", out)
        self.assertTrue(c.transport.disconnecting)
        self.assertIn("Trash", env.store.account(ALICE).listFolders())
        pre = env.connect()
        pre.take()
        out = pre.send(b"a LOGIN {9000+}\r\n" + f'b LOGIN {ALICE} "{ALICE_PW}"\r\n'.encode())
        self.assertIn(b"a BAD", out)
        self.assertIn(b"* BYE", out)
        self.assertNotIn(b"b OK", out)
        env.clock.advance(30)
        self.assertNotIn(b"b ", pre.take())
        self.assertNotEqual(pre.proto.state, "auth")
        self.assertIsNone(pre.proto.account)

    def test_appendTooBigNonSyncPayloadNotRun(self) -> None:
        """I3: an oversized LITERAL+ APPEND: NO [TOOBIG], BYE; the message text, which
        looks like commands, is not executed."""
        env = IMAPEnv(self, maxLiteral=1000)
        c = env.login()
        out = c.send(b"a APPEND INBOX {5000+}\r\nb CREATE Injected\r\n" + b"z" * 5000)
        self.assertIn(b"a NO [TOOBIG]", out)
        self.assertNotIn(b"b OK", out)
        self.assertNotIn("Injected", env.store.account(ALICE).listFolders())


class NestingTests(SynchronousTestCase):
    """I4: thousands of parentheses cost a BAD, not memory or time."""

    def test_parenthesesBeforeAndAfterLogin(self) -> None:
        """4000 balanced parentheses, 30000 open ones and a deep SEARCH are BAD, before
        and after login; nothing stays buffered."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        pre = env.connect()
        pre.take()
        post = env.selected()
        for c in (pre, post):
            for line in (b"NOOP " + b"(" * 4000 + b")" * 4000, b"NOOP " + b"(" * 30000):
                self.assertEqual(status(c.cmd(line), c.lastTag), b"BAD")
                self.assertEqual(len(c.proto._inbuf), 0)
            # ID never answers BAD (issue 16), but its parentheses cost nothing either.
            self.assertEqual(status(c.cmd(b"ID " + b"(" * 4000), c.lastTag), b"OK")
            self.assertEqual(len(c.proto._inbuf), 0)
        out = post.cmd(b"SEARCH " + b"(" * 4000 + b"ALL" + b")" * 4000)
        self.assertEqual(status(out, post.lastTag), b"BAD")
        self.assertIn(b"* SEARCH 1", post.cmd(b"SEARCH " + b"(" * 20 + b"ALL" + b")" * 20))

    def test_deepSearchKeys(self) -> None:
        """SEARCH NOT NOT ... ALL 15,000 deep and OR x9000 are BAD naming the limit (they
        were RecursionError: NO [SERVERBUG] and a 125 KB traceback each); nothing is
        logged; an OR chain of 99 senders, as a client's filter sends it, still works."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        post = env.selected()
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for line in (b"SEARCH " + b"NOT " * 15000 + b"ALL",
                     b"SEARCH " + b"OR ALL " * 9000 + b"ALL",
                     b"SEARCH " + b"OR " * 9000 + b"ALL" + b" ALL" * 9000,
                     b"UID SEARCH " + b"NOT (" * 3000 + b"ALL" + b")" * 3000):
            out = post.cmd(line)
            self.assertEqual(status(out, post.lastTag), b"BAD", out[-200:])
            self.assertIn(b"nested too deeply", tagged(out, post.lastTag))
        self.assertEqual([e for e in events if e.get("log_failure")], [])
        chain = b"SEARCH " + b"OR " * 98 + b" ".join(
            b"FROM s%d@example.org" % i for i in range(99))
        out = post.cmd(chain)
        self.assertEqual(status(out, post.lastTag), b"OK", out[-200:])
        self.assertIn(b"* SEARCH 1", post.cmd(b"SEARCH " + b"NOT " * 98 + b"ALL"))

    def test_manyConnectionsBounded(self) -> None:
        """The same abuse on 200 unauthenticated connections leaves no per-connection
        buffer behind and every one stays answerable."""
        env = IMAPEnv(self)
        clients = []
        for _ in range(200):
            c = env.connect()
            c.take()
            self.assertEqual(status(c.cmd(b"NOOP " + b"(" * 5000), c.lastTag), b"BAD")
            clients.append(c)
        for c in clients:
            self.assertEqual(len(c.proto._inbuf), 0)
            self.assertEqual(status(c.cmd("NOOP"), c.lastTag), b"OK")


class SequenceSetTests(SynchronousTestCase):
    """I5: sequence sets are never expanded and answers stay bounded."""

    def test_repeatedNumbers(self) -> None:
        """FETCH 1,1,1,... (30000 times) answers each message once, quickly."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        c = env.selected()
        started = time.monotonic()
        out = c.cmd(b"FETCH " + b"1," * 30000 + b"2 (UID)")
        self.assertEqual(untagged(out), [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 2)"])
        self.assertLess(time.monotonic() - started, 5)

    def test_extremeRanges(self) -> None:
        """UID ranges beyond every UID give an empty OK; 0 and 2^32 are BAD; a
        sequence number beyond EXISTS is BAD too (never clipped), 1:* is not."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.selected()
        out = c.cmd("UID FETCH 4294967294:4294967295 (FLAGS)")
        self.assertEqual((untagged(out), status(out, c.lastTag)), ([], b"OK"))
        for bad in ("FETCH 0 (UID)", "UID FETCH 0:5 (UID)", "FETCH 4294967296 (UID)",
                    "STORE 1:4294967296 +FLAGS (\\Seen)", "FETCH 1:-1 (UID)",
                    "FETCH 5 (UID)", "FETCH 1:4294967295 (UID)"):
            out = c.cmd(bad)
            self.assertEqual(status(out, c.lastTag), b"BAD", bad)
            self.assertEqual(untagged(out), [], bad)
        self.assertEqual(untagged(c.cmd("FETCH 1:* (UID)")), [b"* 1 FETCH (UID 1)"])

    def test_sequenceBeyondExists(self) -> None:
        """I5: FETCH, STORE, COPY and MOVE naming a sequence number past EXISTS answer
        Dovecot's C{BAD Error in IMAP command X: Invalid messageset} and touch nothing.

        C{*} is the last message: C{2:*}, C{*:2} and C{*} are valid, C{3:*} (3 past the
        end) is not, nor is a valid number listed with one past the end. The UID forms
        clip, SEARCH treats the set as a key matching nothing, and an expunged message
        not yet reported still counts in EXISTS.
        """
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"), makeMessage("b"))
        c = env.selected()
        for cmd in ("FETCH 3 (UID)", "FETCH 3:* (FLAGS)", "FETCH 1,3 (UID)",
                    "FETCH 2:4 (UID)", "STORE 1:3 +FLAGS (\\Flagged)",
                    "COPY 1,3 Trash", "MOVE 2:3 Trash"):
            verb = cmd.split(" ")[0].encode()
            out = c.cmd(cmd)
            self.assertEqual(out, c.lastTag + b" BAD Error in IMAP command " + verb
                             + b": Invalid messageset\r\n", cmd)
        self.assertEqual([m.flags for m in env.folder().scan().messages], [frozenset()] * 2)
        self.assertEqual(env.folder("Trash").scan().messages, [])
        for cmd, lines in (("FETCH 2:* (UID)", [b"* 2 FETCH (UID 2)"]),
                           ("FETCH *:2 (UID)", [b"* 2 FETCH (UID 2)"]),
                           ("FETCH * (UID)", [b"* 2 FETCH (UID 2)"]),
                           ("UID FETCH 2:9 (FLAGS)", [b"* 2 FETCH (UID 2 FLAGS (\\Recent))"]),
                           ("SEARCH 3", [b"* SEARCH"]),
                           ("SEARCH 1:5", [b"* SEARCH 1 2"])):
            out = c.cmd(cmd)
            self.assertEqual((untagged(out), status(out, c.lastTag)), (lines, b"OK"), cmd)
        out = c.cmd("UID STORE 2:9 +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(status(out, c.lastTag), b"OK")
        self.assertEqual(status(c.cmd("UID COPY 2:9 Trash"), c.lastTag), b"OK")
        self.assertEqual(len(env.folder("Trash").scan().messages), 1)
        folder = env.folder()
        info = folder.scan().messages[1]
        folder.expunge([info.key])
        out = c.cmd("FETCH 2 (BODY.PEEK[])")
        self.assertIn(b" OK [EXPUNGEISSUED]", tagged(out, c.lastTag))
        self.assertEqual(status(c.cmd("FETCH 3 (UID)"), c.lastTag), b"BAD")

    def test_emptyMailbox(self) -> None:
        """I5: in an empty mailbox every message sequence set is BAD, C{*} and C{1:*} too
        (as Dovecot answers); the UID forms answer OK with nothing, SEARCH matches none."""
        env = IMAPEnv(self)
        c = env.selected()
        for cmd in ("FETCH 1 (FLAGS)", "FETCH 1:* (FLAGS)", "FETCH * (UID)",
                    "STORE 1:* +FLAGS (\\Seen)", "COPY * Trash", "MOVE 1:* Trash"):
            out = c.cmd(cmd)
            self.assertEqual(status(out, c.lastTag), b"BAD", cmd)
            self.assertIn(b"Invalid messageset", out)
        for cmd in ("UID FETCH 1:* (FLAGS)", "UID STORE 1:* +FLAGS (\\Seen)",
                    "UID COPY 1:* Trash", "UID MOVE 1:* Trash"):
            out = c.cmd(cmd)
            self.assertEqual((untagged(out), status(out, c.lastTag)), ([], b"OK"), cmd)
        out = c.cmd("SEARCH 1:*")
        self.assertEqual((untagged(out), status(out, c.lastTag)), ([b"* SEARCH"], b"OK"))


ESCAPES = [
    "../x", "..", "../../../../etc/passwd", "INBOX/../../etc", "/etc/passwd", "/",
    "foo/../bar", "a/./b", ".hidden", "a/.b", "a..b", "a//b", "x\\..\\y",
    "a%", "a*", "%", "*", "a" * 300, "a/" * 150 + "a", "\u00e4" * 200,
]
"""Mailbox names that must never reach a path (sent quoted, as modified UTF-7)."""

RAW_ESCAPES = [b'"a\x00b"', b'"a\x01b"', b'"a\x7fb"', b'"\xff\xfe"', b"{3}\r\na\x00b",
               b"{5}\r\n../..", b"{4}\r\n/etc"]
"""Names with bytes that are not even valid IMAP text (quoted strings and literals)."""


class MailboxEscapeTests(SynchronousTestCase):
    """I6: no mailbox name reaches a path outside the user's Maildir, whatever command
    carries it."""

    def tree(self, top: str) -> set[str]:
        """Every path under C{top}."""
        found = set()
        for dirpath, dirs, files in os.walk(top):
            for name in dirs + files:
                found.add(os.path.join(dirpath, name))
        return found

    def send(self, c: Wire, template: bytes, raw: bytes) -> bytes:
        """Send a command with C{raw} (a quoted name or a literal) in place of C{%s};
        an APPEND gets a five-octet message after it."""
        isAppend = template.startswith(b"APPEND")
        suffix = b" {5}" if isAppend else b""
        head, _, tail = template.partition(b"%s")
        if raw.startswith(b"{"):
            size, _, rest = raw.partition(b"\r\n")
            out = c.cmd(head + size)
            if not out.startswith(b"+ "):
                return out
            out = c.send(rest + tail + suffix + b"\r\n")
        else:
            out = c.cmd(head + raw + tail + suffix)
        if isAppend and out.startswith(b"+ "):
            out = c.send(b"hello\r\n")
        return out

    def test_everyCommandRefusesEscapes(self) -> None:
        """CREATE, DELETE, RENAME (either side), SELECT, EXAMINE, STATUS, APPEND, COPY,
        MOVE, SUBSCRIBE, UNSUBSCRIBE answer NO or BAD for every hostile name; nothing
        appears on disk outside the Maildir's own folders."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.selected()
        top = os.path.dirname(env.base)
        root = env.store.account(ALICE).root
        before = self.tree(top)
        templates = [b"CREATE %s", b"DELETE %s", b"RENAME %s Trash", b"RENAME Trash %s",
                     b"RENAME INBOX %s", b"SELECT %s", b"EXAMINE %s",
                     b"STATUS %s (MESSAGES)", b"APPEND %s", b"COPY 1 %s", b"MOVE 1 %s",
                     b"UID COPY 1 %s", b"SUBSCRIBE %s", b"UNSUBSCRIBE %s"]
        names = [b'"' + mutf7.encode(n).replace("\\", "\\\\").encode() + b'"'
                 for n in ESCAPES] + RAW_ESCAPES
        for template in templates:
            for raw in names:
                if c.proto.state != "select":
                    c.ok("SELECT INBOX")
                out = self.send(c, template, raw)
                word = status(out, c.lastTag)
                self.assertIn(word, (b"NO", b"BAD"), (template, raw, out))
                self.assertFalse(c.transport.disconnecting, (template, raw))
        for path in self.tree(top) - before:
            rel = os.path.relpath(path, root)
            self.assertFalse(rel.startswith(".."), path)
            first = rel.split(os.sep)[0]
            if first.startswith("."):
                self.assertIsNotNone(fromDirName(first), path)
        self.assertEqual(len(env.folder().scan().messages), 1)
        subs = env.store.account(ALICE).subscriptions()
        self.assertFalse([s for s in subs if ".." in s or s.startswith("/")], subs)

    def test_acceptedNamesMapInsideTheMaildir(self) -> None:
        """Odd but valid names (a tilde, spaces, an ampersand, non-ASCII, deep
        hierarchies, 255 octets on disk) are folders directly inside the Maildir."""
        env = IMAPEnv(self)
        c = env.login()
        root = env.store.account(ALICE).root
        names = ["~other/INBOX", " lead", "a b", "&", "-", "\u00dcber/\u65e5\u672c",
                 "x/" * 60 + "x", "y" * 254]
        for name in names:
            c.ok(b'CREATE "' + mutf7.encode(name).encode() + b'"')
            path = env.folder(name).path
            self.assertEqual(os.path.dirname(path), root, name)
            self.assertEqual(os.path.realpath(path), os.path.join(os.path.realpath(root),
                                                                   os.path.basename(path)))
        self.assertIn(b"NO [CANNOT]", c.cmd('CREATE "' + "y" * 255 + '"'))

    def test_listPatternsStayInside(self) -> None:
        """LIST and LSUB with references and patterns that climb out return only the
        user's own folders."""
        env = IMAPEnv(self)
        c = env.login()
        c.ok("CREATE Projects/Secret")
        own = set(env.store.account(ALICE).listFolders()) | {"Projects"}
        for ref, pattern in (("../", "*"), ("", "../*"), ("/", "*"), ("/etc/", "%"),
                             ("~bob/", "*"), ("..", "%"), ("", "*/../*"), ("", "%/%/%")):
            for cmd in ("LIST", "LSUB"):
                out = c.cmd(f'{cmd} "{ref}" "{pattern}"')
                self.assertIn(status(out, c.lastTag), (b"OK", b"NO"), out)
                for line in untagged(out):
                    name = re.search(rb'"/" "?(.*?)"?$', line)
                    assert name is not None, line
                    self.assertIn(mutf7.decode(name.group(1).decode()), own, line)


class ModifiedUTF7Tests(SynchronousTestCase):
    """I7: only canonical modified UTF-7 names are accepted, so no two spellings reach
    one directory; valid names round-trip."""

    INVALID = [b"&", b"&Jjo", b"&Jjo!", b"&U,BTFw-&ZeVnLIqe-", b"&AGE-", b"&AC4-",
               b"&AOQ", b"&AOQA-", b"&2D3", b"&2D0-", b"tiet&AOQAZA-", b"&&x&&",
               b"p\xe4\xe4", b"&ZeVnLIqe"]
    VALID = {b"&-": "&", b"&-&-x&-&-": "&&x&&", b"tiet&AOQ-j&AOQ-": "tiet\u00e4j\u00e4",
             b"~peter/mail/&U,BTFw-/&ZeVnLIqe-": "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e",
             b"&2D3cAQ-": "\U0001f401", b"&2,,f,A-": "\U0010fffc", b"&,,8-": "\uffff",
             b"&2ADcAA-": "\U00010000", b"&2ADcEA-": "\U00010010"}

    def test_invalidSpellingsRefused(self) -> None:
        """CREATE and SELECT of a non-canonical or broken spelling are NO [CANNOT];
        nothing is created."""
        env = IMAPEnv(self)
        c = env.login()
        before = env.store.account(ALICE).listFolders()
        for raw in self.INVALID:
            for cmd in (b"CREATE", b"SELECT"):
                out = c.cmd(cmd + b' "' + raw + b'"')
                self.assertIn(b"NO [CANNOT]", tagged(out, c.lastTag), (cmd, raw))
        self.assertEqual(env.store.account(ALICE).listFolders(), before)

    def test_oneDirectoryOneSpelling(self) -> None:
        """"a" can be created; "&AGE-" (encoded "a") is refused instead of opening it."""
        env = IMAPEnv(self)
        c = env.login()
        c.ok('CREATE "a"')
        self.assertIn(b"NO [CANNOT]", c.cmd('SELECT "&AGE-"'))
        self.assertIn(b"NO [CANNOT]", c.cmd('DELETE "&AGE-"'))
        self.assertIn("a", env.store.account(ALICE).listFolders())

    def test_validSpellingsRoundTrip(self) -> None:
        """Valid names (astral characters included) are created, listed under the same
        spelling and selectable."""
        env = IMAPEnv(self)
        c = env.login()
        for raw, text in self.VALID.items():
            c.ok(b'CREATE "' + raw + b'"')
            self.assertIn(text, env.store.account(ALICE).listFolders())
            self.assertIn(b'"/" "' + raw + b'"', c.ok(b'LIST "" "' + raw + b'"'))
            c.ok(b'SELECT "' + raw + b'"')


class NulTests(SynchronousTestCase):
    """I13: NUL inside a quoted string is BAD, whatever the command."""

    def test_nulInQuotedStrings(self) -> None:
        """LOGIN, SELECT, SEARCH and STATUS with a NUL in a quoted argument are BAD;
        the session goes on."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        pre = env.connect()
        pre.take()
        out = pre.send(b'a LOGIN "alice\x00@example.org" "x"\r\n')
        self.assertEqual(status(out, b"a"), b"BAD")
        out = pre.send(b'b LOGIN "' + ALICE.encode() + b'" "correct\x00horse"\r\n')
        self.assertEqual(status(out, b"b"), b"BAD")
        c = env.selected()
        for line in (b'SELECT "IN\x00BOX"', b'SEARCH SUBJECT "a\x00"', b'STATUS "\x00" (UIDNEXT)',
                     b'APPEND "INBOX\x00"', b'SEARCH HEADER "X\x00" "y"'):
            self.assertEqual(status(c.cmd(line), c.lastTag), b"BAD", line)
        self.assertEqual(status(c.cmd("NOOP"), c.lastTag), b"OK")


class TagTests(SynchronousTestCase):
    """I15: pipelined commands run in order, reused tags are answered per command,
    invalid tags are BAD."""

    def test_invalidTags(self) -> None:
        """Tags with *, +, (, {, %, ", \\ or a control character get an untagged BAD."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        for tag in (b"*", b"+", b"(", b"a(", b"a*", b"a{", b"%", b'"a"', b"a\\", b"a\x01"):
            out = c.send(tag + b" NOOP\r\n")
            self.assertEqual(out, b"* BAD Missing or invalid tag\r\n", tag)
        self.assertEqual(c.send(b"ok NOOP\r\n"), b"ok OK NOOP completed\r\n")

    def test_reusedTagsInPipeline(self) -> None:
        """The same tag used for several pipelined commands gets one answer per command,
        in order."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.login()
        out = c.send(b"t SELECT INBOX\r\nt FETCH 1 (UID)\r\nt NOOP\r\nt FROB\r\nt NOOP\r\n")
        lines = [line for line in out.split(b"\r\n") if line.startswith(b"t ")]
        self.assertEqual([line.split(b" ")[1] for line in lines],
                         [b"OK", b"OK", b"OK", b"BAD", b"OK"])
        self.assertLess(out.index(b"* 1 FETCH"), out.index(lines[1]))


class UserIPCapTests(SynchronousTestCase):
    """I14: with the default cap, the eleventh session of one user from one IP is
    refused; other IPs are not affected."""

    def test_eleventhSessionRefused(self) -> None:
        """Ten logins succeed, the eleventh gets NO [LIMIT] and stays unauthenticated;
        the same user from another address still logs in."""
        env = IMAPEnv(self)
        env.factory.userIPLimits = UserIPLimits()
        for _ in range(10):
            env.login()
        c = env.connect()
        c.take()
        self.assertIn(b"NO [LIMIT]", c.cmd(f'LOGIN {ALICE} "{ALICE_PW}"'))
        self.assertEqual(c.proto.state, "unauth")
        other = env.connect("10.9.8.7")
        other.take()
        other.proto.cleartextPolicy = "always"
        self.assertEqual(status(other.cmd(f'LOGIN {ALICE} "{ALICE_PW}"'), other.lastTag),
                         b"OK")


class AutologoutTests(SynchronousTestCase):
    """I18: an authenticated session may idle at least 30 minutes; before login the
    limit is much shorter."""

    def test_authenticatedIdleAtLeast30Minutes(self) -> None:
        """Logged in (and selected), 29:59 of silence keeps the session; 30:01 ends it
        with BYE. Each command restarts the clock."""
        env = IMAPEnv(self)
        c = env.selected()
        env.clock.advance(POSTAUTH - 1)
        self.assertFalse(c.transport.disconnecting)
        c.ok("NOOP")
        env.clock.advance(POSTAUTH - 1)
        self.assertFalse(c.transport.disconnecting)
        env.clock.advance(2)
        self.assertIn(b"* BYE", c.take())
        self.assertTrue(c.transport.disconnecting)

    def test_idleCommandAtLeast30Minutes(self) -> None:
        """A client in IDLE is kept for 29 minutes (clients re-issue IDLE by then)."""
        env = IMAPEnv(self)
        c = env.selected()
        c.cmd("IDLE")
        env.clock.advance(29 * 60)
        self.assertFalse(c.transport.disconnecting)
        self.assertIn(b"OK IDLE", c.send(b"DONE\r\n"))

    def test_preLoginShorter(self) -> None:
        """Before login 60 s of silence ends the connection."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        env.clock.advance(PREAUTH - 1)
        self.assertFalse(c.transport.disconnecting)
        env.clock.advance(2)
        self.assertTrue(c.transport.disconnecting)


class InternalErrorTests(SynchronousTestCase):
    """No traceback or exception text ever reaches a client."""

    def test_bugBecomesServerbug(self) -> None:
        """An unexpected exception in a command is NO [SERVERBUG] with a fixed text
        (the detail goes to the log), and the session stays usable."""
        env = IMAPEnv(self)
        c = env.login()
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def broken(account: IMAPAccount, name: str) -> Any:
            raise ZeroDivisionError("secret internal detail /srv/mail")

        self.patch(IMAPAccount, "status", broken)
        out = c.cmd("STATUS INBOX (MESSAGES)")
        self.assertEqual(tagged(out, c.lastTag),
                         c.lastTag + b" NO [SERVERBUG] Internal error occurred. "
                                     b"Refer to server log.")
        self.assertNotIn(b"secret", out)
        self.assertNotIn(b"Traceback", out)
        self.assertEqual(status(c.cmd("NOOP"), c.lastTag), b"OK")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class _Client(protocol.Protocol):
    """A raw IMAP client that logs in, selects INBOX and waits."""

    def __init__(self) -> None:
        self.data = b""
        self.ready: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        """Send the whole session at once."""
        assert self.transport is not None
        self.transport.write(f'a LOGIN {ALICE} "{ALICE_PW}"\r\nb SELECT INBOX\r\n'
                             "c IDLE\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        """Fire C{ready} once IDLE is running."""
        self.data += data
        if b"+ idling" in self.data and not self.ready.called:
            self.ready.callback(None)


class MassDisconnectTests(TestCase):
    """I17: many sessions vanishing at the same moment do not hurt the server."""

    timeout = 60

    @defer.inlineCallbacks
    def test_hundredSessionsAbortAtOnce(self) -> Any:
        """100 real sessions, logged in, selected and IDLE, are aborted in one go; no
        error is logged, every view is released, and a new session is served."""
        env = IMAPEnv(self)
        env.factory.clock = reactor
        env.gate.clock = reactor
        env.deliver(makeMessage("a"))
        errors: list[LogEvent] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_failure") is not None or event.get("isError"):
                errors.append(event)

        port = reactor.listenTCP(0, env.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        clients = []
        for _ in range(100):
            client = _Client()
            yield endpoints.connectProtocol(ep, client)
            clients.append(client)
        yield defer.gatherResults([c.ready for c in clients])
        self.assertEqual(len(env.registry.views(ALICE, "INBOX")), 100)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for c in clients:
            c.transport.abortConnection()
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(env.registry.views(ALICE, "INBOX"), [])
        fresh = _Client()
        yield endpoints.connectProtocol(ep, fresh)
        yield fresh.ready
        self.assertIn(b"a OK", fresh.data)
        fresh.transport.loseConnection()
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(errors, [])
