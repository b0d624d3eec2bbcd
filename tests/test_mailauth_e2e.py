"""End to end: two pymaild processes (a.test and b.test) on loopback, DNS from the tests'
server. Alice on a.test submits mail to bob@b.test; a signs and relays it to b's MX; b
checks it. A message forged as from a.test sent straight to b's MX is refused."""

from __future__ import annotations

import glob
import os
import smtplib
import time

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from pymaild.auth import passwd as passwdModule
from pymaild.mailauth.dkimkeys import DKIMKeys
from pymaild.mailauth.headers import values
from tests.dnsserver import MX, TXT, A, ZoneServer, longTXT
from tests.mailauth_support import independentVerify, message, requireVerifier
from tests.support import ServerProcess, lowCostHashing

ALICE_PW = "alice password"


def writeConfig(path: str, dnsAddress: str, mxPort: int) -> None:
    """The settings both servers share: the test DNS server, b's MX port, checks on."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(f'[relay]\ndns_servers = ["{dnsAddress}"]\nmx_port = {mxPort}\n'
                "queue_tick = 1\nbackoff_min = 1\nbackoff_max = 2\n"
                "[mailauth]\ninternal_networks = []\ndns_timeout = 3\n")


class TwoServersTests(TestCase):
    """alice@a.test → bob@b.test through two real servers."""

    def setUp(self) -> None:
        """DNS for a.test and b.test; a with Alice and DKIM keys, b with Bob; both running."""
        lowCostHashing(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        aData, bData = os.path.join(base, "a"), os.path.join(base, "b")
        os.makedirs(aData)
        os.makedirs(bData)
        passwdModule.PasswdFile(os.path.join(aData, "passwd")).add("alice@a.test", ALICE_PW)
        passwdModule.PasswdFile(os.path.join(bData, "passwd")).add("bob@b.test", "bob pw")
        keys = DKIMKeys(os.path.join(aData, "dkim"))
        keys.keygen("a.test", "s1")
        zones = {
            "a.test": {"a.test": [MX("mail.a.test"), TXT("v=spf1 ip4:127.0.0.1 -all")],
                       "mail.a.test": [A("127.0.0.1")],
                       "_dmarc.a.test": [TXT("v=DMARC1; p=reject")]},
            "b.test": {"b.test": [MX("mail.b.test")], "mail.b.test": [A("127.0.0.1")]},
            "n.test": {"n.test": [TXT("v=spf1 -all")]},
        }
        for key in keys.signingKeys("a.test"):
            zones["a.test"][key.dnsName] = [longTXT(key.dnsValue)]
        self.dns = ZoneServer(zones)
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.b = ServerProcess(bData, domain="b.test", listeners=("smtp",))
        config = os.path.join(base, "pymaild.toml")
        writeConfig(config, self.dns.address, self.b.ports["smtp"])
        self.b.extra = ["--config", config]
        self.a = ServerProcess(aData, domain="a.test", listeners=("smtp", "submission"),
                               extra=["--config", config])
        self.b.start()
        self.addCleanup(self.b.stop)
        self.a.start()
        self.addCleanup(self.a.stop)
        self.bobNew = os.path.join(bData, "mail", "b.test", "bob", "Maildir", "new")

    def waitForBob(self, timeout: float = 60) -> bytes:
        """Bob's first message, once it arrived (blocking: run in a thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = glob.glob(os.path.join(self.bobNew, "*"))
            if found:
                with open(found[0], "rb") as f:
                    return f.read()
            time.sleep(0.2)
        raise AssertionError(f"no message for bob; a's log:\n{self.a.log()}\n"
                             f"b's log:\n{self.b.log()}")

    @defer.inlineCallbacks
    def test_signedAndVerified(self) -> defer.Generator:
        """Bob's copy carries dkim=pass spf=pass dmarc=pass from b's authserv-id."""

        def submit() -> None:
            with smtplib.SMTP("127.0.0.1", self.a.ports["submission"], timeout=30) as s:
                s.ehlo("client.a.test")
                s.login("alice@a.test", ALICE_PW)
                s.sendmail("alice@a.test", ["bob@b.test"], message())

        yield threads.deferToThread(submit)
        copy = yield threads.deferToThread(self.waitForBob)
        [results] = values(copy, "authentication-results")
        self.assertTrue(results.startswith(b"mail.b.test;"), results)
        self.assertIn(b"spf=pass smtp.mailfrom=a.test", results)
        self.assertIn(b"dkim=pass header.d=a.test header.s=s1-rsa", results)
        self.assertIn(b"dkim=pass header.d=a.test header.s=s1-ed25519", results)
        self.assertIn(b"dmarc=pass", results)
        # mailauth (Node.js) agrees on the copy as it arrived (its trace fields aside).
        node = requireVerifier()
        theirs = yield independentVerify(node, copy, self.dns.port, sender="alice@a.test",
                                         helo="mail.a.test")
        self.assertEqual(sorted(v["result"] for v in theirs["dkim"]), ["pass", "pass"])
        self.assertEqual((theirs["spf"], theirs["dmarc"]), ("pass", "pass"))

    @defer.inlineCallbacks
    def test_forgedRefused(self) -> defer.Generator:
        """Mail forged as from a.test, straight to b's MX, is refused 550 5.7.1."""

        def forge() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", self.b.ports["smtp"], timeout=30) as s:
                s.ehlo("forger.n.test")
                s.mail("x@n.test")
                s.rcpt("bob@b.test")
                return s.data(message())

        code, text = yield threads.deferToThread(forge)
        self.assertEqual(code, 550)
        self.assertIn(b"5.7.1", text)
        self.assertEqual(glob.glob(os.path.join(self.bobNew, "*")), [])
