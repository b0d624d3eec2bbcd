"""URLAUTH (RFC 4467) and URLAUTH=BINARY (RFC 5524), L{pymaild.imap.urlauth}: GENURLAUTH,
URLFETCH and RESETKEY on the wire, the RFC's example, the access identifiers, the key
file on disk, and bad input (forged, truncated or expired URLs, unknown mechanisms,
other users' mailboxes); two imaplib users over a real socket."""

from __future__ import annotations

import hmac
import imaplib
import os
import re
import stat
from hashlib import sha1
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.imap import urlauth
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import (
    ALICE,
    ALICE_PW,
    BOB,
    BOB_PW,
    IMAPEnv,
    makeMessage,
    tagged,
    untagged,
)

HOST = "imap://alice@example.org"
MIME = (b"From: Carol <carol@remote.example>\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--b--\r\n")


def generated(out: bytes) -> list[bytes]:
    """The URLs of the C{* GENURLAUTH} line of C{out}."""
    line = [x for x in untagged(out) if x.startswith(b"* GENURLAUTH ")]
    assert len(line) == 1, out
    return [u.strip(b'"') for u in line[0][len(b"* GENURLAUTH "):].split(b" ")]


def fetched(out: bytes) -> bytes | None:
    """The data of the one C{* URLFETCH url data} response of C{out} (None for NIL)."""
    m = re.search(rb"\* URLFETCH \S+ (?:NIL|\{(\d+)\}\r\n)", out)
    assert m is not None, out
    if m.group(1) is None:
        return None
    return out[m.end():m.end() + int(m.group(1))]


class URLAuthTests(SynchronousTestCase):
    """GENURLAUTH, URLFETCH and RESETKEY between alice and bob."""

    def setUp(self) -> None:
        """Two messages in alice's INBOX; alice and bob logged in."""
        self.env = IMAPEnv(self)
        self.env.deliver(makeMessage("one", b"First body.\r\n"), MIME)
        self.alice = self.env.login()
        self.bob = self.env.login(BOB, BOB_PW)

    def gen(self, rump: str, mechanism: str = "INTERNAL") -> bytes:
        """The URL alice's GENURLAUTH makes of C{rump}."""
        return generated(self.alice.ok(f'GENURLAUTH "{rump}" {mechanism}'))[0]

    def urlfetch(self, c: Any, url: bytes) -> bytes | None:
        """What C{c}'s URLFETCH of C{url} gives (None: NIL); the command is OK."""
        return fetched(c.ok(b'URLFETCH "' + url + b'"'))

    def test_capabilities(self) -> None:
        """URLAUTH and URLAUTH=BINARY are advertised once logged in."""
        caps = untagged(self.alice.ok("CAPABILITY"))[0].split()
        self.assertIn(b"URLAUTH", caps)
        self.assertIn(b"URLAUTH=BINARY", caps)

    def test_rfcExample(self) -> None:
        """RFC 4467 section 9's exchange: GENURLAUTH of a submit+ URL, and of an
        anonymous one for a section, whose token signs the rump: HMAC-SHA1 under the
        mailbox key kept in the key file (mode 0600); URLFETCH gives the part."""
        made = self.gen(f"{HOST}/INBOX/;uid=2/;section=1;urlauth=anonymous")
        rump, _, token = made.rpartition(b":INTERNAL:")
        self.assertEqual(rump, HOST.encode() + b"/INBOX/;uid=2/;section=1;urlauth=anonymous")
        path = os.path.join(self.env.store.account(ALICE).root, urlauth.KEYS_NAME)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        uidv, key = urlauth.readKeys(os.path.dirname(path))["INBOX"]
        self.assertEqual(uidv, self.env.folder().scan().uidvalidity)
        self.assertEqual(token, hmac.new(key, rump, sha1).hexdigest().encode())
        self.assertEqual(self.urlfetch(self.bob, made), b"first part")
        submit = self.gen(f"{HOST}/INBOX/;uid=1;urlauth=submit+alice")
        self.assertRegex(submit, rb":INTERNAL:[0-9a-f]{40}$")
        self.assertEqual(self.gen(f"{HOST}/INBOX/;uid=1;urlauth=submit+alice"), submit)

    def test_access(self) -> None:
        """user+bob is for bob only (not even alice), authuser for any user logged in,
        anonymous too; submit+ never in an IMAP session; a past EXPIRE stops a URL,
        a future one does not; user names and hosts compare in their canonical
        forms."""
        body = self.env.folder().read(self.env.folder().scan().messages[0])
        forBob = self.gen(f"{HOST}/INBOX/;uid=1;urlauth=user+bob")
        self.assertEqual(self.urlfetch(self.bob, forBob), body)
        self.assertIsNone(self.urlfetch(self.alice, forBob))
        anyone = self.gen(f"{HOST}/INBOX/;uid=1;urlauth=authuser")
        self.assertEqual(self.urlfetch(self.bob, anyone), body)
        self.assertEqual(self.urlfetch(self.alice, anyone), body)
        submit = self.gen(f"{HOST}/INBOX/;uid=1;urlauth=submit+bob")
        self.assertIsNone(self.urlfetch(self.bob, submit))
        old = self.gen(f"{HOST}/INBOX/;uid=1;expire=2001-01-01T00:00:00Z;urlauth=authuser")
        self.assertIsNone(self.urlfetch(self.bob, old))
        later = self.gen(f"{HOST}/INBOX/;uid=1;expire=2999-01-01T00:00:00+02:00;"
                         "urlauth=authuser")
        self.assertEqual(self.urlfetch(self.bob, later), body)
        fullUser = self.gen("imap://alice%40example.org@mx.example.org/INBOX/;uid=1;"
                            "urlauth=user+bob%40example.org")
        self.assertEqual(self.urlfetch(self.bob, fullUser), body)
        cased = self.gen("imap://Alice@Example.ORG/INBOX/;uid=1;urlauth=user+Bob")
        self.assertEqual(self.urlfetch(self.bob, cased), body)

    def test_forgedAndBroken(self) -> None:
        """A changed token, a truncated one, another mechanism, a changed rump (another
        UID, another access), another host, a URL naming no message: NIL each, the
        command OK and the session in sync."""
        good = self.gen(f"{HOST}/INBOX/;uid=1;urlauth=authuser")
        rump, _, token = good.rpartition(b":INTERNAL:")
        flipped = token[:-1] + (b"0" if token[-1:] != b"0" else b"1")
        bad = [rump + b":INTERNAL:" + flipped,
               rump + b":INTERNAL:" + token[:32],
               rump + b":INTERNAL:" + token[:31],
               rump + b":INTERNAL:",
               rump,
               rump + b":XYZZY:" + token,
               rump.replace(b";uid=1;", b";uid=2;") + b":INTERNAL:" + token,
               rump.replace(b"authuser", b"anonymous") + b":INTERNAL:" + token,
               good.replace(b"example.org/", b"elsewhere.example/"),
               good.replace(b"alice@", b"bob@"),
               good.replace(b"/INBOX/", b"/Nope/"),
               b"imap://alice@example.org/INBOX;urlauth=authuser:INTERNAL:" + token]
        for url in bad:
            self.assertIsNone(self.urlfetch(self.bob, url), url)
        self.assertIsNotNone(self.urlfetch(self.bob, good))

    def test_genurlauthRefused(self) -> None:
        """GENURLAUTH of an unknown mechanism is NO (a malformed one BAD); of a
        mailbox that does not exist, of bob's mailbox, of a URL with a verifier
        already, of a relative URL, one without URLAUTH or one over 4096 octets: NO
        [BADURL]; without arguments or with more than 100 URLs (URLFETCH too) BAD;
        before login BAD; nothing is generated then."""
        cases = {
            f'GENURLAUTH "{HOST}/INBOX/;uid=1;urlauth=authuser" XYZZY': b" NO ",
            f'GENURLAUTH "{HOST}/INBOX/;uid=1;urlauth=authuser" (X)': b" BAD ",
            f'GENURLAUTH "{HOST}/Nope/;uid=1;urlauth=authuser" INTERNAL': b" NO [BADURL ",
            'GENURLAUTH "imap://bob@example.org/INBOX/;uid=1;urlauth=authuser" INTERNAL':
                b" NO [BADURL ",
            f'GENURLAUTH "{HOST}/INBOX/;uid=1;urlauth=authuser:INTERNAL:'
            + "0" * 40 + '" INTERNAL': b" NO [BADURL ",
            'GENURLAUTH "/INBOX/;uid=1;urlauth=authuser" INTERNAL': b" NO [BADURL ",
            f'GENURLAUTH "{HOST}/INBOX/;uid=1" INTERNAL': b" NO [BADURL ",
            f'GENURLAUTH "{HOST}/INBOX/;uid=1;urlauth=everyone" INTERNAL': b" NO [BADURL ",
            "GENURLAUTH": b" BAD ",
            f'GENURLAUTH "{HOST}/INBOX/;uid=1;urlauth=authuser"': b" BAD ",
        }
        for command, answer in cases.items():
            out = self.alice.cmd(command)
            self.assertIn(answer, tagged(out, self.alice.lastTag), command)
            self.assertNotIn(b"* GENURLAUTH", out)
        long = f'GENURLAUTH "{HOST}/{"x" * 5000}/;uid=1;urlauth=authuser" INTERNAL'
        self.assertIn(b" NO [BADURL ", tagged(self.alice.cmd(long), self.alice.lastTag))
        many = "GENURLAUTH" + f' "{HOST}/INBOX/;uid=1;urlauth=authuser" INTERNAL' * 101
        self.assertIn(b" BAD ", tagged(self.alice.cmd(many), self.alice.lastTag))
        out = self.alice.cmd("URLFETCH" + ' "x"' * 101)
        self.assertIn(b" BAD ", tagged(out, self.alice.lastTag))
        self.assertNotIn(b"* URLFETCH", out)
        out = self.env.connect().send(b"a1 GENURLAUTH x INTERNAL\r\n")
        self.assertIn(b"a1 BAD", out)
        self.alice.ok("NOOP")

    def test_resetkey(self) -> None:
        """RESETKEY INBOX stops alice's INBOX URLs (Sent's stay); bob's RESETKEY of his
        own INBOX (the only INBOX he can name) leaves alice's alone; RESETKEY without
        a mailbox stops them all; new URLs work again; RESETKEY of a mailbox that does
        not exist is NO [NONEXISTENT], of an unknown mechanism NO."""
        self.alice.ok("CREATE Other")
        self.alice.ok(b"APPEND Other {%d+}\r\n" % len(makeMessage("x")) + makeMessage("x"))
        inbox = self.gen(f"{HOST}/INBOX/;uid=1;urlauth=authuser")
        other = self.gen(f"{HOST}/Other/;uid=1;urlauth=authuser")
        self.bob.ok("RESETKEY INBOX")
        self.bob.ok("RESETKEY")
        self.assertIsNotNone(self.urlfetch(self.bob, inbox))
        self.alice.ok("RESETKEY INBOX INTERNAL")
        self.assertIsNone(self.urlfetch(self.bob, inbox))
        self.assertIsNotNone(self.urlfetch(self.bob, other))
        again = self.gen(f"{HOST}/INBOX/;uid=1;urlauth=authuser")
        self.assertNotEqual(again, inbox)
        self.assertIsNotNone(self.urlfetch(self.bob, again))
        self.alice.ok("RESETKEY")
        self.assertIsNone(self.urlfetch(self.bob, other))
        self.assertIsNone(self.urlfetch(self.bob, again))
        out = self.alice.cmd("RESETKEY Nope")
        self.assertIn(b" NO [NONEXISTENT]", tagged(out, self.alice.lastTag))
        out = self.alice.cmd("RESETKEY INBOX XYZZY")
        self.assertIn(b" NO ", tagged(out, self.alice.lastTag))

    def test_recreatedMailbox(self) -> None:
        """A URL of a mailbox that is deleted and made again (another UIDVALIDITY)
        gives NIL, though the new mailbox has a message of that UID."""
        self.alice.ok("CREATE Box")
        message = makeMessage("x")
        self.alice.ok(b"APPEND Box {%d+}\r\n" % len(message) + message)
        url = self.gen(f"{HOST}/Box/;uid=1;urlauth=authuser")
        self.assertEqual(self.urlfetch(self.bob, url), message)
        self.alice.ok("DELETE Box")
        self.alice.ok("CREATE Box")
        self.alice.ok(b"APPEND Box {%d+}\r\n" % len(message) + message)
        self.assertIsNone(self.urlfetch(self.bob, url))

    def test_binary(self) -> None:
        """URLAUTH=BINARY: BINARY decodes the base64 part (a literal8 for its 8-bit
        octets), BODY gives it as stored, BODYPARTSTRUCTURE its structure (the decoded
        size with BINARY), in that order; a partial range narrows BINARY; BODY with
        BINARY, an unknown parameter or an empty list are BAD; a bad URL is NIL."""
        url = self.gen(f"{HOST}/INBOX/;uid=2/;section=2;urlauth=authuser")
        out = self.bob.ok(b'URLFETCH ("' + url + b'" BINARY)')
        self.assertIn(b" (BINARY ~{4}\r\n\x00\x01\x02\xff)\r\n", out)
        out = self.bob.ok(b'URLFETCH ("' + url + b'" BODY BODYPARTSTRUCTURE)')
        self.assertIn(b' (BODYPARTSTRUCTURE ("application" "octet-stream" NIL NIL NIL'
                      b' "base64" 8 NIL NIL NIL NIL) BODY {8}\r\nAAEC/w==)\r\n', out)
        out = self.bob.ok(b'URLFETCH ("' + url + b'" BINARY BODYPARTSTRUCTURE)')
        self.assertIn(b' (BODYPARTSTRUCTURE ("application" "octet-stream" NIL NIL NIL'
                      b' "base64" 4 NIL NIL NIL NIL) BINARY ~{4}\r\n\x00\x01\x02\xff)', out)
        part = self.gen(f"{HOST}/INBOX/;uid=2/;section=2/;partial=1.2;urlauth=authuser")
        self.assertIn(b" (BINARY ~{2}\r\n\x01\x02)\r\n",
                      self.bob.ok(b'URLFETCH ("' + part + b'" BINARY)'))
        for params in (b"BODY BINARY", b"NOPE", b""):
            out = self.bob.cmd(b'URLFETCH ("' + url + b'" ' + params + b")")
            self.assertIn(b" BAD ", tagged(out, self.bob.lastTag), params)
        out = self.bob.ok(b'URLFETCH ("' + url[:-1] + b'x" BINARY)')
        self.assertIn(b" NIL\r\n", out)
        several = self.bob.ok(b'URLFETCH "' + url + b'" ("' + url + b'" BODY)')
        self.assertEqual(several.count(b"* URLFETCH "), 2)


class SocketTests(TestCase):
    """Two users with imaplib over a real listener."""

    timeout = 60

    @defer.inlineCallbacks
    def test_bobFetchesAlicesURL(self) -> None:
        """alice makes a user+bob URL; bob fetches it in his own session; after
        alice's RESETKEY he gets NIL."""
        commands = dict(imaplib.Commands)
        for name in ("GENURLAUTH", "URLFETCH", "RESETKEY"):
            commands[name] = ("AUTH", "SELECTED")
        self.patch(imaplib, "Commands", commands)
        srv = ClientServer(self)
        srv.passwd.add(BOB, BOB_PW)
        message = makeMessage("shared", b"For bob.\r\n")
        srv.store.deliver([ALICE], message)

        def client() -> Any:
            a = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            b = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            try:
                a.login(ALICE, ALICE_PW)
                b.login(BOB, BOB_PW)
                typ, data = a._simple_command(
                    "GENURLAUTH", '"imap://alice@example.org/INBOX/;uid=1;urlauth=user+bob"',
                    "INTERNAL")
                assert typ == "OK", (typ, data)
                url = a.untagged_responses.pop("GENURLAUTH")[0].strip(b'"')
                b._simple_command("URLFETCH", '"' + url.decode() + '"')
                first = b.untagged_responses.pop("URLFETCH")
                a._simple_command("RESETKEY")
                b._simple_command("URLFETCH", '"' + url.decode() + '"')
                second = b.untagged_responses.pop("URLFETCH")
                return typ, first, second
            finally:
                a.logout()
                b.logout()

        typ, first, second = yield threads.deferToThread(client)
        self.assertEqual(typ, "OK")
        self.assertEqual(first[0][1], message)
        self.assertTrue(second[0].endswith(b" NIL"), second)


class CatenateTests(SynchronousTestCase):
    """CATENATE with URLAUTH URLs (RFC 4467 section 5, RFC 4469): a part of another
    user's message, when the URL admits the appending user."""

    def setUp(self) -> None:
        """alice has two messages; alice and bob are logged in."""
        self.env = IMAPEnv(self)
        self.env.deliver(makeMessage("one", b"First body.\r\n"), MIME)
        self.alice = self.env.login()
        self.bob = self.env.login(BOB, BOB_PW)

    def test_bobCatenatesAlicesPart(self) -> None:
        """bob's APPEND of TEXT and alice's user+bob URL of a section stores them in
        his INBOX; the same URL for carol, a forged one or a rump is NO [BADURL] and
        stores nothing."""
        out = self.alice.ok(f'GENURLAUTH "{HOST}/INBOX/;uid=2/;section=1;urlauth=user+bob"'
                            " INTERNAL")
        url = generated(out)[0]
        head = b"Subject: forwarded\r\n\r\n"
        out = self.bob.ok(b"APPEND INBOX CATENATE (TEXT {%d+}\r\n" % len(head) + head
                          + b' URL "' + url + b'")')
        self.assertIn(b"[APPENDUID ", out)
        folder = self.env.folder(address=BOB)
        messages = folder.scan().messages
        self.assertEqual(folder.read(messages[-1]), head + b"first part")
        forCarol = generated(self.alice.ok(
            f'GENURLAUTH "{HOST}/INBOX/;uid=2/;section=1;urlauth=user+carol" INTERNAL'))[0]
        for bad in (forCarol, url[:-1] + (b"0" if url[-1:] != b"0" else b"1"),
                    url.rpartition(b":INTERNAL:")[0]):
            out = self.bob.cmd(b'APPEND INBOX CATENATE (URL "' + bad + b'")')
            self.assertIn(b" NO [BADURL ", tagged(out, self.bob.lastTag), bad)
        self.assertEqual(len(folder.scan().messages), len(messages))
