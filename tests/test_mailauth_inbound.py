"""Inbound authentication (SPF, DKIM, DMARC, ARC) against a real DNS server on loopback.

SPF and DKIM verdicts are compared with mailauth's (Node.js), an independent
implementation; the policy is seen over a real SMTP socket (smtplib against the server).
"""

from __future__ import annotations

import os
import smtplib

import dkim
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from pymaild.config import MailAuthConfig, RelayConfig
from pymaild.mailauth.dkimkeys import DKIMKeys
from pymaild.mailauth.dkimverify import DKIMVerifier
from pymaild.mailauth.dmarc import DMARCEvaluator, parseRecord
from pymaild.mailauth.headers import values
from pymaild.mailauth.inbound import AuthenticationCheck, authservId, stripOurResults
from pymaild.mailauth.resolver import DNSResolver
from pymaild.mailauth.signer import DKIMSigner
from pymaild.mailauth.spf import SPFChecker
from pymaild.smtp.checks import CheckChain, Envelope
from pymaild.smtp.mx import makeResolver
from pymaild.threads import InlineRunner, ThreadRunner, makePool
from tests.dnsserver import CNAME, MX, PTR, TXT, A, ZoneServer, longTXT
from tests.mailauth_support import independentVerify, message, requireVerifier
from tests.test_smtp_helpers import HOSTNAME
from tests.test_smtp_integration import LiveServerMixin

SPF_ZONE = {
    "pass.spf.test": [TXT("v=spf1 ip4:127.0.0.0/8 -all")],
    "split.spf.test": [TXT("v=spf1 ip4:12", "7.0.0.1 -all")],
    "inc.spf.test": [TXT("v=spf1 include:pass.spf.test -all")],
    "redir.spf.test": [TXT("v=spf1 redirect=pass.spf.test")],
    "mx.spf.test": [TXT("v=spf1 mx -all"), MX("mail.spf.test")],
    "mail.spf.test": [A("127.0.0.1")],
    "a24.spf.test": [TXT("v=spf1 a:host.spf.test/24 -all")],
    "host.spf.test": [A("127.0.0.77")],
    "exists.spf.test": [TXT("v=spf1 exists:%{i}.bl.spf.test -all")],
    "127.0.0.1.bl.spf.test": [A("127.0.0.2")],
    "fail.spf.test": [TXT("v=spf1 ip4:192.0.2.0/24 -all")],
    "soft.spf.test": [TXT("v=spf1 ~all")],
    "neutral.spf.test": [TXT("v=spf1 ?all")],
    "nospf.spf.test": [TXT("google-site-verification=x")],
    "two.spf.test": [TXT("v=spf1 -all"), TXT("v=spf1 +all")],
    "loop.spf.test": [TXT("v=spf1 include:loop.spf.test -all")],
    "many.spf.test": [TXT("v=spf1 " + " ".join(f"include:i{n}.spf.test" for n in range(11))
                          + " -all")],
    **{f"i{n}.spf.test": [TXT("v=spf1 ?all")] for n in range(11)},
    "void.spf.test": [TXT("v=spf1 a:v1.spf.test a:v2.spf.test a:v3.spf.test -all")],
    "cl.spf.test": [CNAME("cl2.spf.test")],
    "cl2.spf.test": [CNAME("cl.spf.test")],
    "incloop.spf.test": [TXT("v=spf1 include:cl.spf.test -all")],
    "inctemp.spf.test": [TXT("v=spf1 include:temp.spf.test -all")],
    "bad.spf.test": [TXT("v=spf1 foo:bar -all")],
    "huge.spf.test": [longTXT("v=spf1 " + "ip4:192.0.2.1 " * 400 + "-all")],
    "mxmany.spf.test": [TXT("v=spf1 mx -all")] + [MX(f"m{n}.spf.test", n) for n in range(11)],
    "ptr.spf.test": [TXT("v=spf1 ptr:spf.test -all")],
    "xn--bcher-kva.spf.test": [TXT("v=spf1 ip4:127.0.0.1 -all")],
    "rev.spf.test": [A("127.0.0.1")],
    "macro.spf.test": [TXT("v=spf1 exists:%{l}.%{ir}.%{v}.m.%{d2} -all")],
    "user.1.0.0.127.in-addr.m.spf.test": [A("127.0.0.2")],
}

DOMAINS = {
    "spf.test": SPF_ZONE,
    "127.in-addr.arpa": {"1.0.0.127.in-addr.arpa": [PTR("rev.spf.test")]},
    "r.test": {"r.test": [TXT("v=spf1 -all")], "_dmarc.r.test": [TXT("v=DMARC1; p=reject")],
               "big._domainkey.r.test": [longTXT("v=DKIM1; k=rsa; p=" + "MIIB" * 4000)],
               "bad._domainkey.r.test": [TXT("v=DKIM1; k=rsa; p=not*base64")],
               "kx._domainkey.r.test": [TXT("v=DKIM1; k=xyz; p=AAAA")]},
    "q.test": {"q.test": [TXT("v=spf1 -all")], "_dmarc.q.test": [TXT("v=DMARC1; p=quarantine")]},
    "n.test": {"n.test": [TXT("v=spf1 -all")]},
    "t.test": {"t.test": [TXT("v=spf1 -all")]},
    "l.test": {"l.test": [TXT("v=spf1 ip4:127.0.0.1 -all")]},
    "fw.test": {"fw.test": [TXT("v=spf1 ip4:127.0.0.1 -all")]},
}
FAILING = {"temp.spf.test", "_dmarc.t.test", "tmp._domainkey.r.test"}


class MailAuthServerMixin:
    """A test DNS server with the zones above, keys for r.test, l.test and fw.test."""

    def startDNS(self) -> None:
        """Start the DNS server and make the checkers over it."""
        case: TestCase = self  # type: ignore[assignment]
        self.server = ZoneServer(DOMAINS, failing=FAILING)
        self.server.start()
        case.addCleanup(self.server.stop)
        self.dns = DNSResolver(makeResolver(RelayConfig(dns_servers=(self.server.address,)),
                                            reactor), reactor, timeout=5)
        self.keys = DKIMKeys(os.path.abspath(case.mktemp()))
        for domain in ("r.test", "l.test", "fw.test"):
            self.keys.keygen(domain, "s1")
            for key in self.keys.signingKeys(domain):
                self.server.set(key.dnsName, [longTXT(key.dnsValue)])
        self.signer = DKIMSigner(self.keys)

    def rsaSign(self, msg: bytes, domain: str, selector: str = "s1-rsa",
                algorithm: bytes = b"rsa-sha256") -> bytes:
        """C{msg} with one signature by C{domain}'s RSA key under C{selector}."""
        [key] = [k for k in self.keys.signingKeys(domain) if k.keyType == "rsa"]
        header = dkim.DKIM(msg).sign(selector.encode(), domain.encode(), key.private,
                                     canonicalize=(b"relaxed", b"relaxed"),
                                     include_headers=[b"from", b"subject", b"to"])
        if algorithm != b"rsa-sha256":
            header = header.replace(b"a=rsa-sha256", b"a=" + algorithm)
        return header + msg


class SPFTests(MailAuthServerMixin, TestCase):
    """C{check_host()} results, the RFC's limits, and agreement with mailauth."""

    def setUp(self) -> None:
        """The DNS server and an SPF checker."""
        self.startDNS()
        self.spf = SPFChecker(self.dns)

    def result(self, domain: str) -> defer.Deferred:
        """The MAIL FROM result for C{user@domain} from 127.0.0.1."""
        return defer.ensureDeferred(
            self.spf.mailFrom("127.0.0.1", f"user@{domain}", "client.test"))

    @defer.inlineCallbacks
    def test_results(self) -> defer.Generator:
        """Every mechanism and qualifier gives the RFC's result."""
        expected = {
            "pass.spf.test": "pass", "split.spf.test": "pass", "inc.spf.test": "pass",
            "redir.spf.test": "pass", "mx.spf.test": "pass", "a24.spf.test": "pass",
            "exists.spf.test": "pass", "ptr.spf.test": "pass", "macro.spf.test": "pass",
            "bücher.spf.test": "pass",
            "fail.spf.test": "fail", "soft.spf.test": "softfail",
            "neutral.spf.test": "neutral", "nospf.spf.test": "none",
            "nothing.spf.test": "none",
        }
        got = {}
        for domain in expected:
            got[domain] = (yield self.result(domain)).result
        self.assertEqual(got, expected)

    @defer.inlineCallbacks
    def test_errors(self) -> defer.Generator:
        """Limits and bad records are permerror; a DNS failure is temperror."""
        expected = {
            "two.spf.test": "permerror", "loop.spf.test": "permerror",
            "many.spf.test": "permerror", "void.spf.test": "permerror",
            "incloop.spf.test": "permerror", "bad.spf.test": "permerror",
            "huge.spf.test": "permerror", "mxmany.spf.test": "permerror",
            "temp.spf.test": "temperror", "inctemp.spf.test": "temperror",
        }
        got = {}
        for domain in expected:
            got[domain] = (yield self.result(domain)).result
        self.assertEqual(got, expected)
        many = yield self.result("many.spf.test")
        self.assertIn("10 DNS lookups", many.reason)
        void = yield self.result("void.spf.test")
        self.assertIn("void", void.reason)

    @defer.inlineCallbacks
    def test_heloAndNullSender(self) -> defer.Generator:
        """The null sender is checked as postmaster@HELO; an IP HELO gives none."""
        null = yield defer.ensureDeferred(self.spf.mailFrom("127.0.0.1", "", "pass.spf.test"))
        helo = yield defer.ensureDeferred(self.spf.helo("127.0.0.1", "fail.spf.test"))
        literal = yield defer.ensureDeferred(self.spf.helo("127.0.0.1", "[127.0.0.1]"))
        self.assertEqual((null.result, null.domain), ("pass", "pass.spf.test"))
        self.assertEqual(helo.result, "fail")
        self.assertEqual(literal.result, "none")

    @defer.inlineCallbacks
    def test_matchesMailauth(self) -> defer.Generator:
        """For ordinary records, mailauth (Node.js) gives the same SPF result."""
        node = requireVerifier()
        for domain in ("pass.spf.test", "split.spf.test", "inc.spf.test", "redir.spf.test",
                       "mx.spf.test", "a24.spf.test", "exists.spf.test", "fail.spf.test",
                       "soft.spf.test", "neutral.spf.test", "two.spf.test",
                       "bad.spf.test", "many.spf.test", "temp.spf.test"):
            ours = yield self.result(domain)
            theirs = yield independentVerify(node, message(), self.server.port,
                                             sender=f"user@{domain}", helo="client.test")
            self.assertEqual((domain, ours.result), (domain, theirs["spf"]))


class DMARCRecordTests(TestCase):
    """Parsing DMARC records."""

    def test_parse(self) -> None:
        """p, sp, adkim, aspf and pct are read; no p with rua is p=none; else no record."""
        r = parseRecord("v=DMARC1; p=reject; sp=none; adkim=s; pct=50", "a.test")
        assert r is not None
        self.assertEqual((r.p, r.sp, r.adkim, r.aspf, r.pct), ("reject", "none", "s", "r", 50))
        norua = parseRecord("v=DMARC1; p=bogus", "a.test")
        rua = parseRecord("v=DMARC1; rua=mailto:x@a.test", "a.test")
        self.assertIsNone(norua)
        self.assertEqual(rua.p if rua else None, "none")
        self.assertIsNone(parseRecord("v=spf1 -all", "a.test"))

    def test_judge(self) -> None:
        """Alignment (relaxed and strict), sp for subdomains, pct, temperror."""
        evaluator = DMARCEvaluator(DNSResolver(None, reactor))
        record = parseRecord("v=DMARC1; p=reject; sp=quarantine", "a.test")
        strict = parseRecord("v=DMARC1; p=reject; adkim=s; aspf=s", "a.test")
        assert record is not None and strict is not None
        fail = ("fail", "other.test")
        self.assertEqual(evaluator.judge(record, "a.test", ("pass", "mail.a.test"),
                                         []).result, "pass")
        self.assertEqual(evaluator.judge(strict, "a.test", ("pass", "mail.a.test"),
                                         []).result, "fail")
        self.assertEqual(evaluator.judge(record, "x.a.test", fail, []).policy, "quarantine")
        self.assertEqual(evaluator.judge(record, "a.test", ("temperror", "a.test"),
                                         []).result, "temperror")
        sampled = parseRecord("v=DMARC1; p=reject; pct=0", "a.test")
        assert sampled is not None
        self.assertEqual(evaluator.judge(sampled, "a.test", fail, []).policy, "quarantine")

    def test_organisationalDomain(self) -> None:
        """Organisational domains come from the public suffix list."""
        evaluator = DMARCEvaluator(DNSResolver(None, reactor))
        self.assertEqual(evaluator.organisational("mail.example.co.uk"), "example.co.uk")
        self.assertTrue(evaluator.aligned("mail.a.test", "a.test", "r"))
        self.assertFalse(evaluator.aligned("mail.a.test", "a.test", "s"))
        self.assertFalse(evaluator.aligned("a.co.uk", "b.co.uk", "r"))


class DKIMVerifyTests(MailAuthServerMixin, TestCase):
    """Signature results, bad input, and agreement with mailauth."""

    def setUp(self) -> None:
        """The DNS server and a verifier with an inline runner."""
        self.startDNS()
        self.verifier = DKIMVerifier(self.dns, InlineRunner())

    @defer.inlineCallbacks
    def results(self, msg: bytes) -> defer.Generator:
        """The results of every signature of C{msg}."""
        found, _arc = yield self.verifier.verify(msg)
        return [(r.result, r.domain, r.selector) for r in found]

    @defer.inlineCallbacks
    def test_passAndFail(self) -> defer.Generator:
        """Both of pymaild's signatures pass; a changed body or subject fails them."""
        signed = self.signer.sign(message(sender="alice@r.test"))
        self.assertEqual(sorted((yield self.results(signed))), [
            ("pass", "r.test", "s1-ed25519"), ("pass", "r.test", "s1-rsa")])
        body = signed.replace(b"see you.", b"see you!")
        subject = signed.replace(b"Subject: Hello", b"Subject: Hallo")
        self.assertEqual({r[0] for r in (yield self.results(body))}, {"neutral"})
        self.assertEqual({r[0] for r in (yield self.results(subject))}, {"fail"})

    @defer.inlineCallbacks
    def test_keySplitOddly(self) -> defer.Generator:
        """A key whose TXT strings break inside tags and base64 still verifies."""
        [key] = [k for k in self.keys.signingKeys("r.test") if k.keyType == "rsa"]
        value = key.dnsValue
        cuts = [0, 5, 11, 13, 20, 21, 200, len(value)]
        self.server.set("odd._domainkey.r.test", [TXT(*[value[a:b] for a, b in
                                                         zip(cuts, cuts[1:], strict=False)])])
        signed = self.rsaSign(message(sender="alice@r.test"), "r.test", selector="odd")
        self.assertEqual([r[0] for r in (yield self.results(signed))], ["pass"])

    @defer.inlineCallbacks
    def test_badInput(self) -> defer.Generator:
        """Malformed signatures, unknown algorithms, odd keys: permerror; DNS: temperror."""
        plain = message(sender="alice@r.test")
        cases = {
            "malformed": b"DKIM-Signature: v=1; a=rsa-sha256; d=r.test; b=\r\n" + plain,
            "garbage": b"DKIM-Signature: ;;;===;\x00\r\n" + plain,
            "unknown algorithm": self.rsaSign(plain, "r.test", algorithm=b"rsa-sha512"),
            "no key": self.rsaSign(plain, "r.test", selector="nokey"),
            "16 KB key": self.rsaSign(plain, "r.test", selector="big"),
            "bad key": self.rsaSign(plain, "r.test", selector="bad"),
            "unknown key type": self.rsaSign(plain, "r.test", selector="kx"),
        }
        for name, msg in cases.items():
            got = yield self.results(msg)
            self.assertEqual((name, [r[0] for r in got]), (name, ["permerror"]))
        temporary = yield self.results(self.rsaSign(plain, "r.test", selector="tmp"))
        self.assertEqual([r[0] for r in temporary], ["temperror"])

    @defer.inlineCallbacks
    def test_matchesMailauth(self) -> defer.Generator:
        """Signed, forged, forwarded and mailing-list messages: the same DKIM and DMARC
        verdicts as mailauth gives."""
        node = requireVerifier()
        signed = self.signer.sign(message(sender="alice@r.test"))
        listCopy = signed.replace(b"Subject: Hello", b"Subject: [list] Hello").replace(
            b"see you.\r\n", b"see you.\r\n-- \r\nlist footer\r\n")
        cases = {
            "signed": signed,
            "forged": message(sender="alice@r.test"),
            "tampered": signed.replace(b"see you.", b"pay me."),
            "forwarded": b"Received: from fw.test\r\n" + signed,
            "mailing list": listCopy,
            "list resigned": self.rsaSign(listCopy, "l.test"),
            "ed25519 only": self.signer.sign(message(sender="x@r.test")).split(
                b"DKIM-Signature:", 2)[0] + b"DKIM-Signature:" + self.signer.sign(
                message(sender="x@r.test")).split(b"DKIM-Signature:", 2)[2],
        }
        dmarc = DMARCEvaluator(self.dns)
        for name, msg in cases.items():
            ours = yield self.verifier.verify(msg)
            mine = sorted((r.domain, r.selector, r.result) for r in ours[0])
            theirs = yield independentVerify(node, msg, self.server.port,
                                             sender="list@l.test", helo="l.test")
            other = sorted((v["domain"], v["selector"], v["result"]) for v in theirs["dkim"]
                           if v.get("domain"))
            self.assertEqual((name, mine), (name, other))
            _status, record = yield defer.ensureDeferred(dmarc.policyRecord("r.test"))
            judged = dmarc.judge(record, "r.test", ("pass", "l.test"),
                                 [(r.result, r.domain) for r in ours[0]])
            self.assertEqual((name, judged.result), (name, theirs["dmarc"]))

    @defer.inlineCallbacks
    def test_arcChain(self) -> defer.Generator:
        """An ARC set added by a forwarder validates (pass, as mailauth says); a changed
        message after the seal fails (as mailauth says too)."""
        node = requireVerifier()
        signed = self.signer.sign(message(sender="alice@r.test"))
        ar = b"Authentication-Results: fw.test; dkim=pass header.d=r.test\r\n"
        [key] = [k for k in self.keys.signingKeys("fw.test") if k.keyType == "rsa"]
        seal = dkim.arc_sign(ar + signed, key.selector.encode(), b"fw.test", key.private,
                             b"fw.test", include_headers=[b"from", b"to", b"subject"])
        sealed = b"".join(seal) + ar + signed
        _results, arc = yield self.verifier.verify(sealed)
        theirs = yield independentVerify(node, sealed, self.server.port)
        self.assertEqual((arc.result, arc.instances), ("pass", 1))
        self.assertEqual(theirs["arc"], "pass")
        changed = sealed.replace(b"Hi Bob", b"Yo Bob")
        _results, broken = yield self.verifier.verify(changed)
        self.assertEqual(broken.result, "fail")
        theirs = yield independentVerify(node, changed, self.server.port)
        self.assertEqual(theirs["arc"], broken.result)


class HeaderTests(TestCase):
    """Authentication-Results fields that claim our authserv-id are removed."""

    def test_strip(self) -> None:
        """Ours (folded, any case) go; others stay; the body is untouched."""
        msg = (b"Authentication-Results: MX.example.org;\r\n\tdkim=pass\r\n"
               b"Authentication-Results: other.test; spf=pass\r\n"
               b"authentication-results: mx.example.org (comment); dmarc=pass\r\n"
               b"Subject: x\r\n\r\nAuthentication-Results: mx.example.org; body\r\n")
        self.assertEqual(stripOurResults(msg, "mx.example.org"),
                         b"Authentication-Results: other.test; spf=pass\r\n"
                         b"Subject: x\r\n\r\nAuthentication-Results: mx.example.org; body\r\n")
        self.assertEqual(authservId(b" mx.example.org 1; none"), "mx.example.org")


class PolicyTests(MailAuthServerMixin, LiveServerMixin, TestCase):
    """The check in a live SMTP server: headers, 550, Junk, 451."""

    def setUp(self) -> None:
        """DNS, an MX listener whose chain runs the authentication check."""
        self.startDNS()
        self.stack = self.startServer(role="mx")
        pool = makePool("test-crypto", 2)
        pool.start()
        self.addCleanup(pool.stop)
        config = MailAuthConfig(internal_networks=(), dns_timeout=5,
                                domain_policies=("example.net reject=junk",))
        self.check = AuthenticationCheck(
            SPFChecker(self.dns), DKIMVerifier(self.dns, ThreadRunner(reactor, pool)),
            DMARCEvaluator(self.dns), config, reactor)
        self.stack.avatars.checks = CheckChain([self.check])

    def send(self, sender: str, msg: bytes, rcpt: str = "alice@example.org") -> defer.Deferred:
        """Send over smtplib in a thread: C{(code, text)} of the DATA reply."""

        def work() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                              timeout=30) as s:
                s.ehlo("client.test")
                s.mail(sender)
                s.rcpt(rcpt)
                return s.data(msg)

        return threads.deferToThread(work)

    @defer.inlineCallbacks
    def test_signedPasses(self) -> defer.Generator:
        """A signed message is delivered with dkim=pass and dmarc=pass in one field."""
        msg = self.signer.sign(message(sender="alice@r.test")).replace(
            b"\r\n\r\n", b"\r\nAuthentication-Results: mx.example.org; dmarc=pass\r\n\r\n", 1)
        code, _text = yield self.send("alice@r.test", msg)
        self.assertEqual(code, 250)
        [stored] = self.stack.messages("alice@example.org")
        fields = values(stored, "authentication-results")
        self.assertEqual(len(fields), 1)
        self.assertTrue(fields[0].startswith(HOSTNAME.encode() + b";"))
        self.assertIn(b"dkim=pass header.d=r.test", fields[0])
        self.assertIn(b"dmarc=pass", fields[0])
        self.assertIn(b"spf=fail smtp.mailfrom=r.test", fields[0])

    @defer.inlineCallbacks
    def test_forgedRejected(self) -> defer.Generator:
        """Unsigned mail from a p=reject domain failing SPF is refused 550 5.7.1."""
        code, text = yield self.send("alice@r.test", message(sender="alice@r.test"))
        self.assertEqual(code, 550)
        self.assertIn(b"5.7.1", text)
        self.assertEqual(self.stack.messages("alice@example.org"), [])

    @defer.inlineCallbacks
    def test_quarantineToJunk(self) -> defer.Generator:
        """A p=quarantine failure goes to the Junk folder."""
        code, _text = yield self.send("bob@q.test", message(sender="bob@q.test"))
        self.assertEqual(code, 250)
        self.assertEqual(self.stack.messages("alice@example.org"), [])
        box = self.stack.store.account("alice@example.org").folder("Junk")
        self.assertEqual(len(box.scan().messages), 1)

    @defer.inlineCallbacks
    def test_dnsFailureIsTemporary(self) -> defer.Generator:
        """A DMARC lookup that fails is 451 4.7.5, never 5xx."""
        code, text = yield self.send("x@t.test", message(sender="x@t.test"))
        self.assertEqual(code, 451)
        self.assertIn(b"4.7.5", text)

    @defer.inlineCallbacks
    def test_twoFromRefused(self) -> defer.Generator:
        """Two From fields are refused."""
        code, _text = yield self.send(
            "x@n.test", message(sender="x@n.test", extra="From: y@r.test\r\n"))
        self.assertEqual(code, 550)

    @defer.inlineCallbacks
    def test_skipped(self) -> defer.Generator:
        """Submission, authenticated users and internal networks are not checked."""
        msg = message(sender="alice@r.test")
        for env in (Envelope(id="1", sender="", local={}, remote=[], role="submission"),
                    Envelope(id="2", sender="", local={}, remote=[], role="mx", user="a@b"),):
            self.assertEqual((yield defer.maybeDeferred(self.check.check, env, msg)), msg)
        internal = AuthenticationCheck(self.check.spf, self.check.dkim, self.check.dmarc,
                                       MailAuthConfig(), reactor)
        env = Envelope(id="3", sender="", local={}, remote=[], role="mx", client="127.0.0.1")
        self.assertEqual((yield defer.maybeDeferred(internal.check, env, msg)), msg)

    @defer.inlineCallbacks
    def test_badInputKeepsSession(self) -> defer.Generator:
        """A malformed signature from a looping-SPF domain, then a 16 KB key from a
        void-lookup one: both answered 250 in one session, with permerror results."""
        seen: list[Envelope] = []

        class Recorder:
            """Records the envelope (and the verdicts the check left in it)."""

            def check(self, envelope: Envelope, msg: bytes) -> bytes:
                seen.append(envelope)
                return msg

        self.stack.avatars.checks = CheckChain([self.check, Recorder()])
        bad = b"DKIM-Signature: v=1; a=rsa-sha256; d=r.test; s=s1-rsa; b=;;;\r\n" + message(
            sender="x@loop.spf.test")
        big = self.rsaSign(message(sender="y@void.spf.test"), "r.test", selector="big")

        def work() -> list[tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                              timeout=30) as s:
                s.ehlo("client.test")
                out = []
                for sender, msg in (("x@loop.spf.test", bad), ("y@void.spf.test", big)):
                    s.mail(sender)
                    s.rcpt("alice@example.org")
                    out.append(s.data(msg))
                out.append(s.noop())
                return out

        replies = yield threads.deferToThread(work)
        self.assertEqual([code for code, _ in replies], [250, 250, 250])
        first, second = (values(m, "authentication-results")[0]
                         for m in self.stack.messages("alice@example.org"))
        stored = {b"loop" in f: f for f in (first, second)}
        self.assertIn(b"spf=permerror smtp.mailfrom=loop.spf.test", stored[True])
        self.assertIn(b"dkim=permerror", stored[True])
        self.assertIn(b"spf=permerror smtp.mailfrom=void.spf.test", stored[False])
        self.assertIn(b"dkim=permerror", stored[False])
        verdicts = [e.verdicts["auth"] for e in seen]
        self.assertEqual([v.spf.result for v in verdicts], ["permerror", "permerror"])
        self.assertEqual([v.dmarc.result for v in verdicts], ["none", "none"])
