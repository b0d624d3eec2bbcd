"""Tests for DKIM keys (L{pymaild.mailauth.dkimkeys}), the signer and C{pymaild-admin dkim}.

Every signature is checked by mailauth (Node.js), an implementation independent of dkimpy,
against keys published on the tests' DNS server.
"""

from __future__ import annotations

import io
import os
import stat

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from pymaild import admin
from pymaild.mailauth.dkimkeys import DKIMKeyError, DKIMKeys
from pymaild.mailauth.headers import values
from pymaild.mailauth.signer import DKIMSigner, SigningCheck, headersToSign
from pymaild.smtp.checks import Envelope
from pymaild.threads import InlineRunner
from tests.dnsserver import ZoneServer, longTXT
from tests.mailauth_support import independentVerify, message, requireVerifier


def publish(server: ZoneServer, keys: DKIMKeys, domain: str) -> None:
    """Publish every active key of C{domain} on the test DNS server."""
    for key in keys.signingKeys(domain):
        server.set(key.dnsName, [longTXT(key.dnsValue)])


class KeyStoreTests(TestCase):
    """Key sets on disk: made whole, private, listed, retired."""

    def setUp(self) -> None:
        """A fresh key directory."""
        self.root = os.path.abspath(self.mktemp())
        self.keys = DKIMKeys(self.root)

    def test_keygenMakesTwoPrivateKeys(self) -> None:
        """keygen makes an RSA-2048 and an Ed25519 key, files 0600, directories 0700."""
        made = self.keys.keygen("A.Test", "s1")
        self.assertEqual([(k.selector, k.keyType) for k in made],
                         [("s1-rsa", "rsa"), ("s1-ed25519", "ed25519")])
        base = os.path.join(self.root, "a.test", "s1")
        for name in ("rsa.pem", "ed25519.key"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(base, name)).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(base).st_mode), 0o700)
        from cryptography.hazmat.primitives import serialization

        with open(os.path.join(base, "rsa.pem"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        self.assertEqual(key.key_size, 2048)  # type: ignore[union-attr]

    def test_rotation(self) -> None:
        """Two sets sign at once; a retired set stops signing and its name stays taken."""
        self.keys.keygen("a.test", "old")
        self.keys.keygen("a.test", "new")
        self.assertEqual(len(self.keys.signingKeys("a.test")), 4)
        self.keys.retire("a.test", "old")
        self.assertEqual({k.selector for k in self.keys.signingKeys("a.test")},
                         {"new-rsa", "new-ed25519"})
        self.assertRaises(DKIMKeyError, self.keys.keygen, "a.test", "old")
        self.assertRaises(DKIMKeyError, self.keys.retire, "a.test", "old")

    def test_badSelector(self) -> None:
        """A selector that is no DNS label is refused."""
        for bad in ("a.b", "-x", "retired", "x" * 50, "a_b"):
            self.assertRaises(DKIMKeyError, self.keys.keygen, "a.test", bad)


class AdminTests(TestCase):
    """C{pymaild-admin dkim keygen|list|retire}."""

    def test_commands(self) -> None:
        """keygen prints both records in zone syntax; list and retire work on the set."""
        data = os.path.abspath(self.mktemp())
        out, err = io.StringIO(), io.StringIO()
        status = admin.main(["--data", data, "dkim", "keygen", "a.test", "--selector", "s1"],
                            stdout=out, stderr=err)
        self.assertEqual((status, err.getvalue()), (0, ""))
        text = out.getvalue()
        self.assertIn('s1-rsa._domainkey.a.test. IN TXT ( "v=DKIM1; k=rsa; p=', text)
        self.assertIn('s1-ed25519._domainkey.a.test. IN TXT "v=DKIM1; k=ed25519; p=', text)
        out = io.StringIO()
        admin.main(["--data", data, "dkim", "list"], stdout=out)
        self.assertEqual(out.getvalue(),
                         "a.test s1-rsa rsa active\na.test s1-ed25519 ed25519 active\n")
        out = io.StringIO()
        self.assertEqual(admin.main(["--data", data, "dkim", "retire", "a.test", "s1"],
                                    stdout=out), 0)
        out = io.StringIO()
        admin.main(["--data", data, "dkim", "list", "a.test"], stdout=out)
        self.assertEqual(out.getvalue(), "a.test s1 retired\n")
        err = io.StringIO()
        self.assertEqual(admin.main(["--data", data, "dkim", "retire", "a.test", "s1"],
                                    stdout=out, stderr=err), 1)
        self.assertIn("no active key set", err.getvalue())


class SignerTests(TestCase):
    """Signatures made by L{DKIMSigner}, verified by mailauth."""

    def setUp(self) -> None:
        """Keys for a.test published on a test DNS server."""
        self.node = requireVerifier()
        self.keys = DKIMKeys(os.path.abspath(self.mktemp()))
        self.keys.keygen("a.test", "s1")
        self.server = ZoneServer({"a.test": {}})
        self.server.start()
        self.addCleanup(self.server.stop)
        publish(self.server, self.keys, "a.test")
        self.signer = DKIMSigner(self.keys)

    def test_headerList(self) -> None:
        """h= lists the present fields of the set, each as often as it occurs, From twice."""
        msg = message(extra="Received: x\r\nTo: <carol@c.test>\r\n")
        self.assertEqual(headersToSign(msg), [
            b"from", b"from", b"to", b"to", b"subject", b"date", b"message-id",
            b"mime-version", b"content-type"])

    @defer.inlineCallbacks
    def test_independentlyVerified(self) -> defer.Generator:
        """Both signatures (rsa-sha256, ed25519-sha256, relaxed/relaxed) pass mailauth."""
        signed = self.signer.sign(message())
        fields = values(signed, "dkim-signature")
        self.assertEqual(len(fields), 2)
        for field in fields:
            self.assertIn(b"c=relaxed/relaxed", field)
        verdicts = yield independentVerify(self.node, signed, self.server.port)
        self.assertEqual(sorted((v["domain"], v["selector"], v["algorithm"], v["result"])
                                for v in verdicts["dkim"]), [
            ("a.test", "s1-ed25519", "ed25519-sha256", "pass"),
            ("a.test", "s1-rsa", "rsa-sha256", "pass"),
        ])

    @defer.inlineCallbacks
    def test_overSignedFrom(self) -> defer.Generator:
        """A second From added after signing breaks both signatures."""
        signed = self.signer.sign(message())
        end = signed.index(b"\r\n\r\n")
        forged = signed[:end] + b"\r\nFrom: mallory@evil.test" + signed[end:]
        verdicts = yield independentVerify(self.node, forged, self.server.port)
        self.assertEqual({v["result"] for v in verdicts["dkim"]}, {"fail"})

    @defer.inlineCallbacks
    def test_rotationBothSign(self) -> defer.Generator:
        """With a second set, four signatures are made and all pass."""
        self.keys.keygen("a.test", "s2")
        publish(self.server, self.keys, "a.test")
        signed = self.signer.sign(message())
        verdicts = yield independentVerify(self.node, signed, self.server.port)
        self.assertEqual(len(verdicts["dkim"]), 4)
        self.assertEqual({v["result"] for v in verdicts["dkim"]}, {"pass"})

    def test_otherDomainsUnsigned(self) -> None:
        """A From domain without keys, or two From fields, leaves the message as it was."""
        plain = message(sender="carol@c.test")
        self.assertEqual(self.signer.sign(plain), plain)
        twice = message(extra="From: other@a.test\r\n")
        self.assertEqual(self.signer.sign(twice), twice)

    @defer.inlineCallbacks
    def test_checkSignsSubmissionOnly(self) -> defer.Generator:
        """The chain step signs on the submission role and passes MX mail unchanged."""
        check = SigningCheck(self.signer, InlineRunner())
        msg = message()
        mx = yield defer.maybeDeferred(
            check.check, Envelope(id="1", sender="", local={}, remote=[], role="mx"), msg)
        sub = yield defer.maybeDeferred(
            check.check,
            Envelope(id="2", sender="alice@a.test", local={}, remote=["bob@b.test"],
                     role="submission", user="alice@a.test"), msg)
        self.assertEqual(mx, msg)
        self.assertEqual(len(values(sub, "dkim-signature")), 2)
