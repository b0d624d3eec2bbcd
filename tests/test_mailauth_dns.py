"""C{pymaild-admin dns DOMAIN [--check]}, the check run as a real process against the
tests' DNS server."""

from __future__ import annotations

import io
import os
import sys

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

from pymaild import admin
from pymaild.mailauth.dkimkeys import DKIMKeys
from pymaild.mailauth.dnsrecords import mtaStsPolicy
from tests.dnsserver import MX, TXT, A, ZoneServer, longTXT
from tests.support import ROOT


def writeConfig(base: str, dnsAddress: str = "") -> str:
    """A configuration for a.test on mx.a.test; returns its path."""
    path = os.path.join(base, "pymaild.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f'[server]\ndata = "{base}/data"\nhostname = "mx.a.test"\n'
                f'domains = ["a.test"]\n[relay]\ndns_servers = ["{dnsAddress}"]\n'
                "[mailauth]\ndns_timeout = 3\n" if dnsAddress else
                f'[server]\ndata = "{base}/data"\nhostname = "mx.a.test"\n')
    return path


class PrintTests(TestCase):
    """The records, in zone-file syntax."""

    def test_records(self) -> None:
        """MX, SPF, each DKIM selector, DMARC, MTA-STS, TLS-RPT, SRV and autoconfig."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        DKIMKeys(os.path.join(base, "data", "dkim")).keygen("a.test", "s1")
        out = io.StringIO()
        self.assertEqual(admin.main(["--config", writeConfig(base), "dns", "a.test"],
                                    stdout=out), 0)
        text = out.getvalue()
        for line in (
            "a.test.\t3600\tIN\tMX\t10 mx.a.test.",
            'a.test.\t3600\tIN\tTXT\t"v=spf1 mx -all"',
            "s1-rsa._domainkey.a.test.\t3600\tIN\tTXT\t( \"v=DKIM1; k=rsa; p=",
            's1-ed25519._domainkey.a.test.\t3600\tIN\tTXT\t"v=DKIM1; k=ed25519; p=',
            '_dmarc.a.test.\t3600\tIN\tTXT\t"v=DMARC1; p=reject;',
            '_mta-sts.a.test.\t3600\tIN\tTXT\t"v=STSv1; id=',
            "; mode: enforce", "; mx: mx.a.test",
            '_smtp._tls.a.test.\t3600\tIN\tTXT\t"v=TLSRPTv1; rua=mailto:postmaster@a.test"',
            "_submissions._tcp.a.test.\t3600\tIN\tSRV\t0 1 465 mx.a.test.",
            "_imaps._tcp.a.test.\t3600\tIN\tSRV\t0 1 993 mx.a.test.",
            "_pop3s._tcp.a.test.\t3600\tIN\tSRV\t0 1 995 mx.a.test.",
            "autoconfig.a.test.\t3600\tIN\tCNAME\tmx.a.test.",
        ):
            self.assertIn(line, text)
        self.assertIn("max_age: 604800", mtaStsPolicy("mx.a.test"))


class CheckTests(TestCase):
    """C{--check} over the configured DNS server."""

    @defer.inlineCallbacks
    def test_check(self) -> defer.Generator:
        """Published records are ok; a missing one and a different one are named; exit 1."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        keys = DKIMKeys(os.path.join(base, "data", "dkim"))
        keys.keygen("a.test", "s1")
        zone = {
            "a.test": [MX("mx.a.test"), TXT("v=spf1 ip4:192.0.2.1 -all")],
            "mx.a.test": [A("127.0.0.1")],
            "_dmarc.a.test": [TXT("v=DMARC1;p=reject;  rua=mailto:postmaster@a.test")],
        }
        for key in keys.signingKeys("a.test"):
            zone[key.dnsName] = [longTXT(key.dnsValue)]
        server = ZoneServer({"a.test": zone})
        server.start()
        self.addCleanup(server.stop)
        config = writeConfig(base, server.address)
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-c", "from pymaild.admin import main; raise SystemExit(main())",
                             "--config", config, "dns", "a.test", "--check"],
            env={**os.environ, "PYTHONPATH": ROOT}, path=ROOT)
        lines = out.decode().splitlines()
        status = {(ln.split("\t")[1].split()[0], ln.split("\t")[1].split()[1]):
                  ln.split("\t")[0] for ln in lines}
        self.assertEqual(code, 1, err.decode())
        self.assertEqual(status[("a.test.", "MX")], "ok")
        self.assertEqual(status[("a.test.", "TXT")], "differs")
        self.assertEqual(status[("s1-rsa._domainkey.a.test.", "TXT")], "ok")
        self.assertEqual(status[("s1-ed25519._domainkey.a.test.", "TXT")], "ok")
        self.assertEqual(status[("_dmarc.a.test.", "TXT")], "ok")
        self.assertEqual(status[("_mta-sts.a.test.", "TXT")], "missing")
        self.assertEqual(status[("_imaps._tcp.a.test.", "SRV")], "missing")
        self.assertEqual(status[("autoconfig.a.test.", "CNAME")], "missing")
        self.assertIn(b"records are missing or differ", err)
