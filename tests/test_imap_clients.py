"""Real clients against a real listener on 127.0.0.1:0: imaplib and imapclient, in the
clear from loopback and over STARTTLS with a self-signed certificate.

The server runs in the reactor with a ThreadRunner for disk and auth work; each client
runs in a thread (deferToThread) so the reactor keeps serving.
"""

from __future__ import annotations

import imaplib
import os
import ssl
from typing import Any

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, threads
from twisted.mail import imap4
from twisted.trial.unittest import TestCase

from pymaild import config as configModule
from pymaild import tls
from pymaild.auth.checker import PasswdChecker
from pymaild.auth.passwd import PasswdFile
from pymaild.auth.penalty import AuthGate, AuthPenalty
from pymaild.auth.quota import Quotas
from pymaild.auth.realm import MailRealm
from pymaild.imap.account import IMAPAvatars
from pymaild.imap.notify import Registry
from pymaild.imap.server import IMAPFactory
from pymaild.imap.summarycache import StructureCache
from pymaild.quotarules import QuotaLimits
from pymaild.store import MaildirStore
from pymaild.threads import ThreadRunner, makePool
from tests.support import missing
from tests.test_imap_helpers import ALICE, ALICE_PW, lowCostHashing, makeMessage


class ClientServer:
    """A listening pymaild IMAP server for one test."""

    def __init__(self, testcase: TestCase, cleartext: str = "tls-or-loopback",
                 quotas: QuotaLimits | None = None, watcher: bool = False) -> None:
        """A server for C{testcase}; with C{quotas}, those are every user's limits;
        with C{watcher}, open folders are watched with inotify."""
        lowCostHashing(testcase)
        self.base = os.path.abspath(testcase.mktemp())
        os.makedirs(self.base)
        self.config = configModule.load(None, {
            "server": {"data": self.base, "hostname": "mx.example.org",
                       "domains": ["example.org"]},
            "auth": {"cleartext": cleartext, "passwd": os.path.join(self.base, "passwd")},
        })
        self.cert = os.path.join(self.base, "tls", "cert.pem")
        self.key = os.path.join(self.base, "tls", "key.pem")
        tls.ensureSelfSigned(self.cert, self.key, ["localhost"])
        ctx = tls.serverContext(self.cert, self.key)
        self.store = MaildirStore(os.path.join(self.base, "mail"), hostname="mx.example.org")
        passwd = PasswdFile(self.config.auth.passwd)
        passwd.add(ALICE, ALICE_PW)
        self.pool = makePool("test-disk", 4)
        self.pool.start()
        testcase.addCleanup(self.pool.stop)
        runner = ThreadRunner(reactor, self.pool)
        self.passwd = passwd
        self.quotas = Quotas(passwd, self.store, quotas) if quotas is not None else None
        avatars = IMAPAvatars(self.store, runner, self.config, registry=Registry(),
                              cache=StructureCache(), watcher=watcher, quotas=self.quotas)
        testcase.addCleanup(avatars.service.stopService)
        portal = Portal(MailRealm({imap4.IAccount: avatars}),
                        [PasswdChecker(passwd, runner), AllowAnonymousAccess()])
        gate = AuthGate(portal, AuthPenalty(), reactor)
        factory = IMAPFactory(config=self.config, gate=gate, tlsContext=ctx,
                              implicitTLS=False, clock=reactor)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.portNumber = self.port.getHost().port

    def sslContext(self) -> ssl.SSLContext:
        """A client context trusting the self-signed certificate."""
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.check_hostname = False
        return ctx


class ImaplibTests(TestCase):
    """Python's imaplib."""

    timeout = 60

    @defer.inlineCallbacks
    def test_plainSession(self) -> None:
        """LOGIN, LIST, SELECT, FETCH, STORE, SEARCH, APPEND, COPY, EXPUNGE, LOGOUT."""
        srv = ClientServer(self)
        srv.store.deliver([ALICE], makeMessage("first", b"Hello there.\r\n"))

        def client() -> dict[str, Any]:
            out: dict[str, Any] = {}
            m = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            try:
                out["caps"] = m.capabilities
                m.login(ALICE, ALICE_PW)
                out["list"] = m.list()[1]
                typ, data = m.select("INBOX")
                out["exists"] = list(data)
                typ, data = m.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY[]<0.4>)")
                out["fetch"] = data
                out["store"] = m.store("1", "+FLAGS", "(\\Flagged)")[1]
                out["search"] = m.search(None, "FLAGGED")[1]
                out["append"] = m.append("INBOX", "(\\Seen)", None,
                                         makeMessage("second", b"More.\r\n"))
                out["copy"] = m.copy("1:2", "Archive")
                m.store("1", "+FLAGS", "(\\Deleted)")
                out["expunge"] = m.expunge()[1]
                out["status"] = m.status("Archive", "(MESSAGES)")[1]
                m.logout()
            finally:
                try:
                    m.shutdown()
                except Exception:  # noqa: BLE001
                    pass
            return out

        out = yield threads.deferToThread(client)
        self.assertIn("AUTH=PLAIN", out["caps"])
        self.assertTrue(any(b"\\Sent" in x for x in out["list"]))
        self.assertEqual(out["exists"], [b"1"])
        self.assertEqual(out["fetch"][0][1], b"Subject: first\r\n\r\n")
        self.assertEqual(out["fetch"][1][1], b"From")
        self.assertIn(b"\\Seen", out["fetch"][0][0])
        self.assertEqual(out["search"], [b"1"])
        self.assertIn(b"APPENDUID", out["append"][1][0])
        self.assertIn(b"COPYUID", out["copy"][1][0])
        self.assertEqual(out["expunge"], [b"1"])
        self.assertIn(b"(MESSAGES 2)", out["status"][0])

    @defer.inlineCallbacks
    def test_starttls(self) -> None:
        """STARTTLS with the self-signed certificate, then LOGIN, under tls-only policy."""
        srv = ClientServer(self, cleartext="tls-only")

        def client() -> tuple[Any, Any]:
            m = imaplib.IMAP4("127.0.0.1", srv.portNumber)
            try:
                before = m.capabilities
                m.starttls(srv.sslContext())
                after = m.capabilities
                m.login(ALICE, ALICE_PW)
                m.select("INBOX")
                m.logout()
                return before, after
            finally:
                try:
                    m.shutdown()
                except Exception:  # noqa: BLE001
                    pass

        before, after = yield threads.deferToThread(client)
        self.assertIn("LOGINDISABLED", before)
        self.assertIn("STARTTLS", before)
        self.assertNotIn("LOGINDISABLED", after)
        self.assertIn("AUTH=PLAIN", after)


class ImapclientTests(TestCase):
    """imapclient (the high-level library most Python tools use)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_imapclientSession(self) -> None:
        """STARTTLS, folder ops, IDLE push, MOVE, UID SEARCH with UTF-8, BODYSTRUCTURE."""
        try:
            import imapclient
        except ImportError:
            missing("imapclient", "pip install '.[test]'")
        srv = ClientServer(self)
        srv.store.deliver([ALICE], makeMessage("café", b"Un caf\xc3\xa9.\r\n",
                          extra=b"Content-Type: text/plain; charset=utf-8\r\n"))

        def client() -> dict[str, Any]:
            out: dict[str, Any] = {}
            c = imapclient.IMAPClient("127.0.0.1", port=srv.portNumber, ssl=False)
            try:
                c.starttls(srv.sslContext())
                c.login(ALICE, ALICE_PW)
                out["special"] = c.find_special_folder(b"\\Sent")
                c.create_folder("Projects/2024")
                out["folders"] = [f[2] for f in c.list_folders()]
                c.select_folder("INBOX")
                out["search"] = c.search(["BODY", "café"], charset="UTF-8")
                out["fetch"] = c.fetch(out["search"], ["ENVELOPE", "BODYSTRUCTURE", "FLAGS"])
                c2 = imapclient.IMAPClient("127.0.0.1", port=srv.portNumber, ssl=False)
                c2.starttls(srv.sslContext())
                c2.login(ALICE, ALICE_PW)
                c2.select_folder("INBOX")
                c2.idle()
                c.append("INBOX", makeMessage("pushed"))
                out["idle"] = c2.idle_check(timeout=10)
                c2.idle_done()
                c2.logout()
                out["move"] = c.move([1], "Projects/2024")
                out["after"] = c.search("ALL")
                c.logout()
            finally:
                try:
                    c.shutdown()
                except Exception:  # noqa: BLE001
                    pass
            return out

        out = yield threads.deferToThread(client)
        self.assertEqual(out["special"], "Sent")
        self.assertIn("Projects/2024", out["folders"])
        self.assertEqual(out["search"], [1])
        env = out["fetch"][1][b"ENVELOPE"]
        self.assertEqual(env.subject, "café".encode())
        self.assertIn((2, b"EXISTS"), out["idle"])
        self.assertEqual(out["after"], [2])


class ImapclientCondstoreTests(TestCase):
    """imapclient's CONDSTORE calls (RFC 7162) against the real listener."""

    timeout = 60

    @defer.inlineCallbacks
    def test_condstoreCalls(self) -> None:
        """ENABLE CONDSTORE, select_folder's HIGHESTMODSEQ, fetch with MODSEQ and the
        CHANGEDSINCE modifier, search MODSEQ, and a second client's change seen."""
        try:
            import imapclient
        except ImportError:
            missing("imapclient", "pip install '.[test]'")
        srv = ClientServer(self)
        for s in ("one", "two", "three"):
            srv.store.deliver([ALICE], makeMessage(s))

        def client() -> dict[str, Any]:
            out: dict[str, Any] = {}
            c = imapclient.IMAPClient("127.0.0.1", port=srv.portNumber, ssl=False)
            try:
                c.login(ALICE, ALICE_PW)
                out["caps"] = c.capabilities()
                out["enabled"] = c.enable("CONDSTORE")
                sel = c.select_folder("INBOX")
                h0 = sel[b"HIGHESTMODSEQ"]
                out["h0"] = h0
                out["all"] = c.fetch([1, 2, 3], ["MODSEQ"])
                c.add_flags([2], [imapclient.SEEN])
                out["changed"] = c.fetch([1, 2, 3], ["FLAGS"], modifiers=[f"CHANGEDSINCE {h0}"])
                out["search"] = c.search(["MODSEQ", str(h0 + 1)])
                c2 = imapclient.IMAPClient("127.0.0.1", port=srv.portNumber, ssl=False)
                c2.login(ALICE, ALICE_PW)
                c2.select_folder("INBOX")
                c2.add_flags([3], [imapclient.FLAGGED])
                c2.logout()
                out["h1"] = c.folder_status("INBOX", ["HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"]
                out["changed2"] = c.fetch([1, 2, 3], ["FLAGS"], modifiers=[f"CHANGEDSINCE {h0}"])
                c.logout()
            finally:
                try:
                    c.shutdown()
                except Exception:  # noqa: BLE001
                    pass
            return out

        out = yield threads.deferToThread(client)
        self.assertIn(b"CONDSTORE", out["caps"])
        self.assertEqual(out["enabled"], [b"CONDSTORE"])
        self.assertEqual({v[b"MODSEQ"][0] for v in out["all"].values()}, {out["h0"]})
        self.assertEqual(list(out["changed"]), [2])
        self.assertGreater(out["changed"][2][b"MODSEQ"][0], out["h0"])
        self.assertEqual(out["search"], [2])
        self.assertEqual(sorted(out["changed2"]), [2, 3])
        self.assertEqual(out["h1"], max(v[b"MODSEQ"][0] for v in out["changed2"].values()))
