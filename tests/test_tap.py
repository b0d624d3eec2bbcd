"""Tests for pymaild.tap: option parsing and the service tree makeService builds."""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from pymaild import tap
from pymaild.auth.passwd import PasswdFile
from pymaild.errors import StartupError


class OptionsTests(SynchronousTestCase):
    """``twistd pymaild`` options."""

    def test_overrides(self) -> None:
        """Repeatable options collect values; 'none' disables a listener."""
        o = tap.Options()
        o.parseOptions(["--data", "d", "--domain", "a.example", "--domain", "b.example",
                        "--smtp", "tcp:25", "--smtp", "tcp:26", "--imap", "none",
                        "--cleartext-auth", "always"])
        self.assertEqual(o.config.domains, ("a.example", "b.example"))
        self.assertEqual(o.config.listen.smtp, ("tcp:25", "tcp:26"))
        self.assertEqual(o.config.listen.imap, ())
        self.assertEqual(o.config.auth.cleartext, "always")
        self.assertEqual(o.config.data, os.path.abspath("d"))

    def test_badValue(self) -> None:
        """A bad value ends the program with one line naming the key (no usage text)."""
        o = tap.Options()
        e = self.assertRaises(SystemExit, o.parseOptions, ["--cleartext-auth", "never"])
        self.assertIn("auth.cleartext", str(e.code))
        self.assertTrue(str(e.code).startswith("pymaild: "))
        self.assertNotIn("\n", str(e.code))


class MakeServiceTests(SynchronousTestCase):
    """The service tree."""

    def test_tree(self) -> None:
        """Each listener becomes a named service; implicit-TLS ones are wrapped in TLS."""
        data = os.path.abspath(self.mktemp())
        o = tap.Options()
        o.parseOptions(["--data", data, "--domain", "example.org",
                        "--pop3", "none", "--imaps", "tcp:0:interface=127.0.0.1"])
        reactor = MemoryReactorClock()
        top = tap.makeService(o, reactor)
        names = sorted(s.name for s in top if s.name)
        self.assertIn("smtp:tcp:2525:interface=127.0.0.1", names)
        self.assertIn("imaps:tcp:0:interface=127.0.0.1", names)
        self.assertFalse([n for n in names if n.startswith("pop3:")])
        imaps = top.getServiceNamed("imaps:tcp:0:interface=127.0.0.1")
        self.assertIsInstance(imaps.factory, TLSMemoryBIOFactory)
        self.assertNotIsInstance(top.getServiceNamed("imap:tcp:2143:interface=127.0.0.1").factory,
                                 TLSMemoryBIOFactory)
        self.assertEqual(PasswdFile(os.path.join(data, "passwd")).users(),
                         ["postmaster@example.org"])
        self.assertTrue(os.path.exists(os.path.join(data, "tls", "key.pem")))
        top.privilegedStartService()
        top.startService()
        self.assertEqual(len(reactor.tcpServers), len(names))
        top.stopService()

    def test_imapListenersShareOnePoller(self) -> None:
        """The imap and imaps listeners' factories share one IDLE poller, so IDLE
        sessions on one folder are scanned once whichever port they came in on."""
        from pymaild.imap.server import IMAPFactory
        o = tap.Options()
        o.parseOptions(["--data", os.path.abspath(self.mktemp()), "--domain", "example.org",
                        "--imaps", "tcp:0:interface=127.0.0.1"])
        top = tap.makeService(o, MemoryReactorClock())

        def imapFactory(name: str) -> IMAPFactory:
            factory = top.getServiceNamed(name).factory
            while not isinstance(factory, IMAPFactory):
                factory = factory.wrappedFactory
            return factory

        plain = imapFactory("imap:tcp:2143:interface=127.0.0.1")
        implicit = imapFactory("imaps:tcp:0:interface=127.0.0.1")
        self.assertIsNot(plain, implicit)
        self.assertIs(plain.idlePoller, implicit.idlePoller)

    def test_internationalisedDomainCertificate(self) -> None:
        """With an IDN domain the self-signed certificate names its IDNA 2008 A-label
        (U-labels cannot go in a certificate) and the SMTP name is the A-label too."""
        from cryptography import x509

        data = os.path.abspath(self.mktemp())
        o = tap.Options()
        o.parseOptions(["--data", data, "--domain", "straße.de", "--hostname", "mx.straße.de"])
        tap.makeService(o, MemoryReactorClock())
        with open(os.path.join(data, "tls", "cert.pem"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        self.assertIn("mx.xn--strae-oqa.de", names)
        self.assertIn("xn--strae-oqa.de", names)
        self.assertEqual(PasswdFile(os.path.join(data, "passwd")).users(),
                         ["postmaster@straße.de"])


class SpamWiringTests(SynchronousTestCase):
    """The spam filter in the service tree (its behaviour: tests/test_spam_*.py)."""

    def build(self, spam: str) -> tuple[str, tap.Options]:
        """Options for a data directory and a config file with the C{[spam]} text."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        conf = os.path.join(data, "pymaild.toml")
        with open(conf, "w") as f:
            f.write(f'[server]\ndata = "{data}"\ndomains = ["example.org"]\n[spam]\n{spam}')
        o = tap.Options()
        o.parseOptions(["--config", conf])
        return data, o

    def avatars(self, top: object) -> object:
        """The SMTP delivery avatars the realm hands out."""
        from twisted.mail import smtp

        smtpService = next(s for s in top if (s.name or "").startswith("smtp:"))  # type: ignore[attr-defined]
        factory = smtpService.factory.wrappedFactory
        return factory.portal.realm.factories[smtp.IMessageDelivery]

    def test_off(self) -> None:
        """Disabled (the default): no spam check in the chain, no learner."""
        from pymaild.spam.check import SpamCheck
        from pymaild.spam.learn import Learner

        _, o = self.build("enabled = false\n")
        top = tap.makeService(o, MemoryReactorClock())
        checks = self.avatars(top).checks.checks  # type: ignore[attr-defined]
        self.assertFalse([c for c in checks if isinstance(c, SpamCheck)])
        self.assertFalse([s for s in top if isinstance(s, Learner)])

    def test_on(self) -> None:
        """Enabled: the chain holds the spam check after the authentication check and
        before Sieve and signing; the learner is a service."""
        from pymaild.mailauth.inbound import AuthenticationCheck
        from pymaild.mailauth.signer import SigningCheck
        from pymaild.sieve.filter import SieveCheck
        from pymaild.spam.check import SpamCheck
        from pymaild.spam.learn import Learner

        _, o = self.build("enabled = true\n")
        top = tap.makeService(o, MemoryReactorClock())
        checks = self.avatars(top).checks.checks  # type: ignore[attr-defined]
        self.assertEqual([type(c) for c in checks],
                         [AuthenticationCheck, SpamCheck, SieveCheck, SigningCheck])
        self.assertEqual(len([s for s in top if isinstance(s, Learner)]), 1)

    def test_missingPasswordFile(self) -> None:
        """A password file that cannot be read: one line naming the key, exit."""
        _, o = self.build('enabled = true\npassword_file = "nowhere.pw"\n')
        e = self.assertRaises(StartupError, tap.makeService, o, MemoryReactorClock())
        self.assertIn("spam.password_file", str(e))
        self.assertIn("nowhere.pw", str(e))


class MTASTSWiringTests(SynchronousTestCase):
    """The relay's MTA-STS policies in the service tree (behaviour: tests/test_mtasts.py)."""

    avatars = SpamWiringTests.avatars

    def relayOf(self, relay: str) -> object:
        """The relay of a server built with the C{[relay]} text."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        conf = os.path.join(data, "pymaild.toml")
        with open(conf, "w") as f:
            f.write(f'[server]\ndata = "{data}"\ndomains = ["example.org"]\n[relay]\n{relay}')
        o = tap.Options()
        o.parseOptions(["--config", conf])
        top = tap.makeService(o, MemoryReactorClock())
        self.data = data
        self.top = top
        return self.avatars(top).queue.relay  # type: ignore[attr-defined]

    def test_onByDefault(self) -> None:
        """By default the relay honours MTA-STS, caching under <data>/mta-sts, trusting
        the system store, on the configured port and deadline."""
        from pymaild.smtp.mtasts import MTASTS

        sts = self.relayOf("mta_sts_port = 8443\nmta_sts_timeout = 7\n").mtasts  # type: ignore[attr-defined]
        self.assertIsInstance(sts, MTASTS)
        self.assertEqual((sts.cacheDir, sts.port, sts.timeout, sts.trust, sts.trustName),
                         (os.path.join(self.data, "mta-sts"), 8443, 7.0, None,
                          "the system trust store"))

    def test_refreshService(self) -> None:
        """A service renews the relay's cached policies every C{mta_sts_refresh}
        seconds; C{0} runs none."""
        from pymaild.smtp.mtasts import PolicyRefresher

        relay = self.relayOf("mta_sts_refresh = 3600\n")
        [refresher] = [s for s in self.top if isinstance(s, PolicyRefresher)]
        self.assertIs(refresher.mtasts, relay.mtasts)  # type: ignore[attr-defined]
        self.assertEqual(refresher.interval, 3600.0)
        self.relayOf("mta_sts_refresh = 0\n")
        self.assertFalse([s for s in self.top if isinstance(s, PolicyRefresher)])

    def test_disabled(self) -> None:
        """C{mta_sts = false}: no policies."""
        self.assertIsNone(self.relayOf("mta_sts = false\n").mtasts)  # type: ignore[attr-defined]

    def test_caFile(self) -> None:
        """A CA file: it is the trust root, named in outcomes."""
        from tests.test_relay_support import LoopbackCA

        ca = LoopbackCA(self)  # type: ignore[arg-type]
        ca.path = os.path.abspath(ca.path)
        sts = self.relayOf(f'mta_sts_ca_file = "{ca.path}"\n').mtasts  # type: ignore[attr-defined]
        self.assertIsNotNone(sts.trust)
        self.assertEqual(sts.trustName, f"the CA file {ca.path}")

    def test_dane(self) -> None:
        """DANE only with C{dnssec_resolvers}, asking those servers."""
        self.assertIsNone(self.relayOf("").dane)  # type: ignore[attr-defined]
        dane = self.relayOf('dnssec_resolvers = ["127.0.0.1:5353", "::1"]\n').dane  # type: ignore[attr-defined]
        self.assertEqual(dane.resolver.servers, [("127.0.0.1", 5353), ("::1", 53)])

    def test_tlsReports(self) -> None:
        """By default the relay records TLS results under <data>/tls-rpt and a reporter
        service runs; C{tls_reports = false}: neither."""
        from pymaild.smtp.tlsrpt import ReportTimer, TLSReporter, TLSResults

        relay = self.relayOf("")
        self.assertIsInstance(relay.tlsResults, TLSResults)  # type: ignore[attr-defined]
        self.assertEqual(relay.tlsResults.directory,  # type: ignore[attr-defined]
                         os.path.join(self.data, "tls-rpt"))
        self.assertIsNone(self.relayOf("tls_reports = false\n").tlsResults)  # type: ignore[attr-defined]
        data = os.path.abspath(self.mktemp())
        o = tap.Options()
        o.parseOptions(["--data", data, "--domain", "example.org"])
        top = tap.makeService(o, MemoryReactorClock())
        [reporter] = [s for s in top if isinstance(s, ReportTimer)
                      and isinstance(s.reporter, TLSReporter)]
        self.assertEqual(reporter.reporter.sender, "postmaster@example.org")
        self.assertIsNotNone(reporter.reporter.signer)
        https = reporter.reporter.https  # type: ignore[attr-defined]
        self.assertEqual(https.directory, os.path.join(data, "tls-rpt", "https"))

    def test_dmarcReports(self) -> None:
        """By default the authentication check records DMARC rows under
        <data>/dmarc-reports and a reporter service runs."""
        from pymaild.mailauth.dmarcreports import DMARCRecorder, DMARCReporter
        from pymaild.mailauth.inbound import AuthenticationCheck
        from pymaild.smtp.tlsrpt import ReportTimer

        data = os.path.abspath(self.mktemp())
        o = tap.Options()
        o.parseOptions(["--data", data, "--domain", "example.org"])
        top = tap.makeService(o, MemoryReactorClock())
        [check] = [c for c in self.avatars(top).checks.checks  # type: ignore[attr-defined]
                   if isinstance(c, AuthenticationCheck)]
        self.assertIsInstance(check.reports, DMARCRecorder)
        self.assertEqual(check.reports.directory, os.path.join(data, "dmarc-reports"))
        [timer] = [s for s in top if isinstance(s, ReportTimer)
                   and isinstance(s.reporter, DMARCReporter)]
        self.assertEqual(timer.reporter.sender, "postmaster@example.org")

    def test_missingCAFile(self) -> None:
        """A CA file that cannot be read: one line naming the key, exit."""
        e = self.assertRaises(StartupError, self.relayOf,
                              'mta_sts_ca_file = "/nonexistent.pem"\n')
        self.assertIn("relay.mta_sts_ca_file", str(e))


class QuotaWiringTests(SynchronousTestCase):
    """One L{pymaild.auth.quota.Quotas} with the configured default serves SMTP and IMAP."""

    def test_shared(self) -> None:
        """The delivery and IMAP avatars hold the same Quotas, its default from
        C{quota.rules}, its limits read from the server's passwd file."""
        from twisted.mail import imap4, smtp

        from pymaild.quotarules import QuotaLimits

        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        conf = os.path.join(data, "pymaild.toml")
        with open(conf, "w") as f:
            f.write(f'[server]\ndata = "{data}"\ndomains = ["example.org"]\n'
                    '[quota]\nrules = ["*:storage=1G", "*:messages=500"]\n')
        o = tap.Options()
        o.parseOptions(["--config", conf])
        top = tap.makeService(o, MemoryReactorClock())
        smtpService = next(s for s in top if (s.name or "").startswith("smtp:"))  # type: ignore[attr-defined]
        realm = smtpService.factory.wrappedFactory.portal.realm
        delivery = realm.factories[smtp.IMessageDelivery]
        imap = realm.factories[imap4.IAccount]
        self.assertIs(delivery.quotas, imap.quotas)
        self.assertEqual(delivery.quotas.default, QuotaLimits(storage=1 << 30, messages=500))
        self.assertEqual(delivery.quotas.passwd.path, os.path.join(data, "passwd"))
