"""QUOTA (RFC 9208, with the RFC 2087 commands Thunderbird sends) on the wire, and
APPEND/COPY/MOVE against the quota (L{pymaild.imap.quota})."""

from __future__ import annotations

import imaplib
import re
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from pymaild.auth.quota import Quotas
from pymaild.quotarules import QuotaLimits
from tests.support import missing, setExtraFields
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


def _literal(data: bytes) -> bytes:
    """An APPEND literal header for C{data}."""
    return b"{%d+}\r\n" % len(data) + data


class QuotaWireTests(TestCase):
    """The commands and answers, as Thunderbird and RFC 9208 exchange them."""

    def setUp(self) -> None:
        """Alice limited to 10 KiB and 3 messages (passwd extra fields); Bob unlimited."""
        self.env = IMAPEnv(self)
        setExtraFields(self.env.passwd.path, ALICE,
                       "userdb_quota_rule=*:storage=10 userdb_quota_rule2=*:messages=3")
        self.quotas = Quotas(self.env.passwd, self.env.store)
        self.env.avatars.quotas = self.quotas

    def test_capabilities(self) -> None:
        """QUOTA, QUOTA=RES-STORAGE and QUOTA=RES-MESSAGE after login, not before."""
        c = self.env.connect()
        greeting = c.take()
        self.assertNotIn(b"QUOTA", greeting)
        out = c.ok(f'LOGIN {ALICE} "{ALICE_PW}"')
        self.assertIn(b" QUOTA ", out)
        line = untagged(c.ok("CAPABILITY"))[0] + b" "
        for cap in (b" QUOTA ", b" QUOTA=RES-STORAGE ", b" QUOTA=RES-MESSAGE "):
            self.assertIn(cap, line)

    def test_thunderbirdGetQuotaRoot(self) -> None:
        """Thunderbird's C{getquotaroot "INBOX"} after SELECT: the root and its usage
        (STORAGE in KiB, rounded up as Dovecot does) and limits."""
        self.env.deliver(makeMessage("one", b"x" * 3000 + b"\r\n"))
        used = self.quotas.usage(ALICE)
        c = self.env.selected()
        out = c.cmd(b'getquotaroot "INBOX"', tag=b"5")
        self.assertEqual(untagged(out), [
            b'* QUOTAROOT "INBOX" "User quota"',
            b'* QUOTA "User quota" (STORAGE %d 10 MESSAGE 1 3)' % -(-used.bytes // 1024),
        ])
        self.assertEqual(tagged(out, b"5"), b"5 OK Getquotaroot completed")

    def test_getQuota(self) -> None:
        """GETQUOTA of the root; any other root does not exist."""
        c = self.env.login()
        out = c.ok('GETQUOTA "User quota"')
        self.assertEqual(untagged(out), [b'* QUOTA "User quota" (STORAGE 0 10 MESSAGE 0 3)'])
        out = c.cmd('GETQUOTA ""')
        self.assertIn(b"NO [NONEXISTENT]", tagged(out, c.lastTag))
        out = c.cmd("GETQUOTA")
        self.assertIn(b" BAD ", tagged(out, c.lastTag))
        c.ok("NOOP")

    def test_otherFolders(self) -> None:
        """Every folder is in the one root; a missing folder is NONEXISTENT."""
        c = self.env.login()
        c.ok("CREATE Stuff")
        out = c.ok("GETQUOTAROOT Stuff")
        self.assertIn(b'* QUOTAROOT "Stuff" "User quota"', out)
        out = c.cmd("GETQUOTAROOT Missing")
        self.assertIn(b"NO [NONEXISTENT]", tagged(out, c.lastTag))
        self.assertNotIn(b"* QUOTA", out)

    def test_unlimitedUser(self) -> None:
        """A user without limits has no quota root (RFC 9208 section 4.2.2)."""
        c = self.env.login(BOB, BOB_PW)
        out = c.ok("GETQUOTAROOT INBOX")
        self.assertEqual(untagged(out), [b'* QUOTAROOT "INBOX"'])
        out = c.cmd('GETQUOTA "User quota"')
        self.assertIn(b"NO [NONEXISTENT]", tagged(out, c.lastTag))

    def test_setQuotaRefused(self) -> None:
        """SETQUOTA is parsed and answered NO (limits are the administrator's); bad
        syntax is BAD; the session stays in sync."""
        c = self.env.login()
        out = c.cmd('SETQUOTA "User quota" (STORAGE 512)')
        self.assertIn(b"NO [NOPERM]", tagged(out, c.lastTag))
        out = c.cmd('SETQUOTA "User quota" ()')
        self.assertIn(b"NO [NOPERM]", tagged(out, c.lastTag))
        for bad in ('SETQUOTA "User quota" (STORAGE)', 'SETQUOTA "User quota" STORAGE 5',
                    'SETQUOTA "User quota" (STORAGE 99999999999999999999)',
                    'SETQUOTA "User quota" (STORAGE -1)'):
            out = c.cmd(bad)
            self.assertIn(b" BAD ", tagged(out, c.lastTag), bad)
        out = c.ok('GETQUOTA "User quota"')
        self.assertIn(b"(STORAGE 0 10 MESSAGE 0 3)", out)

    def test_appendOverQuota(self) -> None:
        """APPEND that would pass the storage limit: C{NO [OVERQUOTA]}, nothing
        stored; a MULTIAPPEND that does not fit as a whole stores none."""
        c = self.env.login()
        big = makeMessage("big", b"y" * 11000 + b"\r\n")
        out = c.send(b"a1 APPEND INBOX " + _literal(big) + b"\r\n")
        self.assertIn(b"a1 NO [OVERQUOTA]", out)
        small = makeMessage("small")
        out = c.send(b"a2 APPEND INBOX " + _literal(small) + b" " + _literal(small) + b" "
                     + _literal(small) + b" " + _literal(small) + b"\r\n")
        self.assertIn(b"a2 NO [OVERQUOTA]", out)
        self.assertEqual(self.quotas.usage(ALICE).messages, 0)
        out = c.send(b"a3 APPEND INBOX " + _literal(small) + b"\r\n")
        self.assertIn(b"a3 OK [APPENDUID", out)
        c.ok("NOOP")

    def test_copyAndMove(self) -> None:
        """COPY past the message limit is C{NO [OVERQUOTA]} and copies nothing; MOVE
        within the one root adds nothing and succeeds at the limit."""
        self.env.deliver(makeMessage("one"), makeMessage("two"))
        c = self.env.selected()
        out = c.cmd("COPY 1:2 Archive")
        self.assertIn(b"NO [OVERQUOTA]", tagged(out, c.lastTag))
        out = c.ok("STATUS Archive (MESSAGES)")
        self.assertIn(b"(MESSAGES 0)", out)
        c.ok("COPY 1 Archive")
        self.assertEqual(self.quotas.usage(ALICE).messages, 3)
        out = c.ok("MOVE 2 Archive")
        self.assertIn(b"* 2 EXPUNGE", out)
        self.assertEqual(self.quotas.usage(ALICE).messages, 3)
        out = c.send(b"a9 APPEND INBOX " + _literal(makeMessage("four")) + b"\r\n")
        self.assertIn(b"a9 NO [OVERQUOTA] Quota exceeded", out)

    def test_noQuotasNoCommands(self) -> None:
        """A server built without quotas neither advertises QUOTA nor knows its
        commands."""
        self.env.avatars.quotas = None
        c = self.env.login()
        self.assertNotIn(b"QUOTA", c.ok("CAPABILITY"))
        out = c.cmd("GETQUOTAROOT INBOX")
        self.assertIn(b" BAD ", tagged(out, c.lastTag))


class QuotaClientTests(TestCase):
    """imaplib and imapclient over a real listener."""

    timeout = 60

    @defer.inlineCallbacks
    def test_imaplib(self) -> None:
        """imaplib's getquotaroot and getquota read the answers; an APPEND over quota
        fails with OVERQUOTA."""
        srv = ClientServer(self, quotas=QuotaLimits(storage=4096, messages=10))
        srv.store.deliver([ALICE], makeMessage("first", b"z" * 1500 + b"\r\n"))

        def client() -> dict[str, Any]:
            m = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            try:
                m.login(ALICE, ALICE_PW)
                out = {"caps": m.capability()[1][0].split(), "root": m.getquotaroot("INBOX"),
                       "quota": m.getquota('"User quota"')}
                out["append"] = m.append("INBOX", None, None,
                                         makeMessage("big", b"q" * 5000 + b"\r\n"))
            finally:
                m.logout()
            return out

        out = yield threads.deferToThread(client)
        self.assertIn(b"QUOTA", out["caps"])
        typ, (roots, quotas) = out["root"]
        self.assertEqual(typ, "OK")
        self.assertEqual(roots, [b'"INBOX" "User quota"'])
        self.assertEqual(quotas, [b'"User quota" (STORAGE 2 4 MESSAGE 1 10)'])
        self.assertEqual(out["quota"], ("OK", [b'"User quota" (STORAGE 2 4 MESSAGE 1 10)']))
        typ, data = out["append"]
        self.assertEqual(typ, "NO")
        self.assertIn(b"[OVERQUOTA]", data[0])

    @defer.inlineCallbacks
    def test_imapclient(self) -> None:
        """imapclient's get_quota_root and get_quota parse the answers into Quota
        tuples."""
        try:
            import imapclient
        except ImportError:
            missing("imapclient", "pip install '.[test]'")
        srv = ClientServer(self, quotas=QuotaLimits(storage=1 << 20))
        srv.store.deliver([ALICE], makeMessage("first", b"z" * 3000 + b"\r\n"))

        def client() -> Any:
            c = imapclient.IMAPClient("127.0.0.1", port=srv.portNumber, ssl=False)
            try:
                c.login(ALICE, ALICE_PW)
                return c.get_quota_root("INBOX"), c.get_quota("INBOX")
            finally:
                c.logout()

        (roots, quotas), direct = yield threads.deferToThread(client)
        used = -(-srv.quotas.usage(ALICE).bytes // 1024)
        self.assertEqual(roots.mailbox, "INBOX")
        self.assertEqual(roots.quota_roots, ["User quota"])
        self.assertEqual([(q.quota_root, q.resource, q.usage, q.limit) for q in quotas],
                         [("User quota", "STORAGE", used, 1024)])
        self.assertEqual(used, 4)
        self.assertEqual(direct, quotas)


class DeletedStatusTests(TestCase):
    """STATUS DELETED and DELETED-STORAGE (RFC 9208 section 4.2)."""

    def test_deletedItems(self) -> None:
        """The count and the KiB (rounded up) of the messages flagged \\Deleted, also
        in LIST-STATUS."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("one", b"a" * 3000 + b"\r\n"), makeMessage("two"),
                    makeMessage("three", b"c" * 100 + b"\r\n"))
        c = env.selected()
        out = c.ok("FETCH 1:3 RFC822.SIZE")
        sizes = [int(n) for n in re.findall(rb"RFC822\.SIZE (\d+)", out)]
        self.assertIn(b"(DELETED 0 DELETED-STORAGE 0)",
                      c.ok("STATUS INBOX (DELETED DELETED-STORAGE)"))
        c.ok("STORE 1,3 +FLAGS (\\Deleted)")
        expected = -(-(sizes[0] + sizes[2]) // 1024)
        self.assertIn(b"(DELETED 2 DELETED-STORAGE %d)" % expected,
                      c.ok("STATUS INBOX (DELETED DELETED-STORAGE)"))
        out = c.ok('LIST "" INBOX RETURN (STATUS (DELETED))')
        self.assertIn(b'* STATUS "INBOX" (DELETED 2)', out)
        c.ok("EXPUNGE")
        self.assertIn(b"(DELETED 0 DELETED-STORAGE 0)",
                      c.ok("STATUS INBOX (DELETED DELETED-STORAGE)"))
