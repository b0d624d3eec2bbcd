"""Tests for pymaild.config: defaults, the shipped example, overrides and every error."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pymaild import config
from pymaild.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(os.path.dirname(HERE), "etc", "pymaild.toml")


class ConfigTests(SynchronousTestCase):
    """Loading configuration files and overrides."""

    def write(self, text: str) -> str:
        """Write C{text} to a fresh config file and return its path."""
        path = self.mktemp() + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        """With no file the embedded default listens on the unprivileged loopback ports."""
        c = config.load(None)
        self.assertEqual(c.listen.smtp, ("tcp:2525:interface=127.0.0.1",))
        self.assertEqual(c.listen.imaps, ("tcp:2993:interface=127.0.0.1",))
        self.assertEqual(c.data, os.path.abspath("pymaild-data"))
        self.assertEqual(c.auth.passwd, os.path.join(c.data, "passwd"))
        self.assertEqual(c.auth.cleartext, "tls-or-loopback")
        self.assertTrue(c.domains)

    def test_exampleMatchesDefaults(self) -> None:
        """etc/pymaild.toml lists every key, and each value it shows is the default."""
        c = config.load(EXAMPLE)
        d = config.load(None, {"server": {"data": os.path.join(os.path.dirname(EXAMPLE),
                                                                "pymaild-data")}})
        self.assertEqual(c.listen, d.listen)
        self.assertEqual(c.smtp, d.smtp)
        self.assertEqual(c.imap, d.imap)
        self.assertEqual(c.pop3, d.pop3)
        self.assertEqual(c.server, d.server)
        with open(EXAMPLE, encoding="utf-8") as f:
            text = f.read()
        import dataclasses

        for name, cls in config.SECTIONS.items():
            self.assertIn(f"[{name}]", text)
            for fld in dataclasses.fields(cls):
                self.assertIn(f"\n{fld.name} = ", text, f"{name}.{fld.name} missing")

    def test_relativePathsFollowTheFile(self) -> None:
        """Relative paths in a file are relative to the file's directory."""
        path = self.write('[server]\ndata = "d"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
        c = config.load(path)
        base = os.path.dirname(os.path.abspath(path))
        self.assertEqual(c.data, os.path.join(base, "d"))
        self.assertEqual(c.tls.cert, os.path.join(base, "c.pem"))

    def test_overridesWin(self) -> None:
        """Tap options override the file, and 'none' disables a listener."""
        path = self.write('[server]\ndomains = ["a.example"]\n[listen]\nsmtp = ["tcp:25"]\n')
        c = config.load(path, {"server": {"domains": ["B.example"]},
                               "listen": {"smtp": ["none"], "imap": ["tcp:1143"]}})
        self.assertEqual(c.domains, ("b.example",))
        self.assertEqual(c.listen.smtp, ())
        self.assertEqual(c.listen.imap, ("tcp:1143",))

    def assertConfigError(self, text: str, *fragments: str) -> None:
        """Loading C{text} fails with a message naming the file and each fragment."""
        path = self.write(text)
        e = self.assertRaises(ConfigError, config.load, path)
        self.assertIn(path, str(e))
        for fr in fragments:
            self.assertIn(fr, str(e))

    def test_errorsNameFileAndKey(self) -> None:
        """Every kind of mistake names the file, the key and the problem."""
        self.assertConfigError("[server\n", "not valid TOML")
        self.assertConfigError("[bogus]\n", "unknown section [bogus]")
        self.assertConfigError("[smtp]\nmax_size = 1\n", "smtp.max_size")
        self.assertConfigError('[smtp]\nmax_message_size = "big"\n', "smtp.max_message_size",
                               "integer")
        self.assertConfigError("[smtp]\nmax_recipients = -1\n", "negative")
        self.assertConfigError('[auth]\ncleartext = "sometimes"\n', "auth.cleartext")
        self.assertConfigError('[tls]\ncert = "x.pem"\n', "tls.cert and tls.key")
        self.assertConfigError('[server]\ndomains = ["bad domain"]\n', "server.domains")
        self.assertConfigError('[pop3]\ndelete = "shred"\n', "pop3.delete")
        self.assertConfigError("[listen]\nsmtp = [1]\n", "listen.smtp", "list of strings")

    def test_missingFile(self) -> None:
        """A missing file is named in the error."""
        e = self.assertRaises(ConfigError, config.load, "/nonexistent/pymaild.toml")
        self.assertIn("/nonexistent/pymaild.toml: no such file", str(e))

    def test_internationalisedNames(self) -> None:
        """IDNA 2008 domains are kept as U-labels (C{ß} is not C{ss}); a host name or
        domain that is not valid IDNA 2008 is refused naming its key."""
        path = self.write('[server]\nhostname = "mx.straße.de"\n'
                          'domains = ["xn--strae-oqa.de", "Straße.de"]\n')
        c = config.load(path)
        self.assertEqual(c.domains, ("straße.de",))
        self.assertConfigError('[server]\nhostname = "a\u200db.example"\n', "server.hostname",
                               "internationalised")
        self.assertConfigError('[server]\ndomains = ["xn--a.example"]\n', "server.domains")

class HostnameTests(SynchronousTestCase):
    """How the default host name is chosen, and that the choice is reported."""

    def names(self, short: str, fqdn: str) -> None:
        """Make the system's host name C{short} and the resolver's answer C{fqdn}."""
        self.patch(config.socket, "gethostname", lambda: short)
        self.patch(config.socket, "getfqdn", lambda name="": fqdn)

    def test_withoutDot(self) -> None:
        """A dotless host name that the resolver maps to localhost stays the host name
        (it used to become 'localhost'), and a warning says what to set."""
        self.names("box", "localhost")
        c = config.load(None)
        self.assertEqual((c.hostname, c.domains), ("box", ("box",)))
        levels = dict((text.split(":")[0], level) for level, text in c.notes)
        self.assertEqual(levels["Host name 'box'"], "warn")
        self.assertIn("server.hostname", " ".join(text for _, text in c.notes))

    def test_fromResolver(self) -> None:
        """A dotless host name with a fully qualified resolver name uses the latter."""
        self.names("box", "box.example.net")
        c = config.load(None)
        self.assertEqual(c.hostname, "box.example.net")
        self.assertEqual([level for level, _ in c.notes], ["info", "info"])

    def test_givenHostname(self) -> None:
        """A configured host name is used as given, and nothing needs saying about it."""
        self.names("box", "localhost")
        c = config.load(None, {"server": {"hostname": "Mail.Example.ORG",
                                          "domains": ["example.org"]}})
        self.assertEqual((c.hostname, c.notes), ("mail.example.org", ()))


class SpamConfigTests(SynchronousTestCase):
    """The [spam] section."""

    def test_offsets(self) -> None:
        """Offsets parse to floats per normalised domain; the password file follows the
        configuration file's directory."""
        path = self.mktemp() + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write('[spam]\nenabled = true\nthreshold_offsets = ["Example.ORG=2.5",'
                    ' "example.net = -1"]\npassword_file = "rspamd.pw"\n')
        spam = config.load(path).spam
        self.assertTrue(spam.enabled)
        self.assertEqual(spam.offsets(), {"example.org": 2.5, "example.net": -1.0})
        self.assertEqual(spam.password_file,
                         os.path.join(os.path.dirname(os.path.abspath(path)), "rspamd.pw"))

    def test_defaults(self) -> None:
        """Off by default; tempfail for the MX, accept for submission."""
        spam = config.load(None).spam
        self.assertEqual((spam.enabled, spam.mx_failure, spam.submission_failure),
                         (False, "tempfail", "accept"))


class ValidationTests(SynchronousTestCase):
    """Every value is checked when the file is loaded, not when it is first used."""

    def test_badValues(self) -> None:
        """Each bad value is a ConfigError naming the file and the key."""
        cases = [
            ('[relay]\nsmarthost_tls = "yes"\n', "relay.smarthost_tls"),
            ('[relay]\nsmarthost = "host:99999"\n', "relay.smarthost"),
            ('[relay]\nsmarthost_user = "u"\n', "relay.smarthost_user"),
            ('[relay]\nsmarthost = "h"\nsmarthost_user = "u"\n',
             "relay.smarthost_password_file"),
            ('[relay]\ndns_servers = ["dns.example"]\n', "relay.dns_servers"),
            ("[relay]\nbackoff_min = 600\nbackoff_max = 60\n", "relay.backoff_max"),
            ("[relay]\nmx_port = 70000\n", "relay.mx_port"),
            ("[relay]\nmta_sts_port = 0\n", "relay.mta_sts_port"),
            ("[relay]\nmta_sts_port = 70000\n", "relay.mta_sts_port"),
            ("[relay]\nmta_sts_timeout = 0\n", "relay.mta_sts_timeout"),
            ("[relay]\nmta_sts_refresh = -1\n", "relay.mta_sts_refresh"),
            ('[relay]\nmta_sts = "maybe"\n', "relay.mta_sts"),
            ('[relay]\ndnssec_resolvers = ["unbound.local"]\n', "relay.dnssec_resolvers"),
            ('[relay]\ndnssec_resolvers = ["127.0.0.1:x"]\n', "relay.dnssec_resolvers"),
            ('[mtasts]\nmode = "always"\n', "mtasts.mode"),
            ("[mtasts]\nmax_age = 0\n", "mtasts.max_age"),
            ("[mtasts]\nmax_age = 31557601\n", "mtasts.max_age"),
            ('[mtasts]\nmx = ["bad host"]\n', "mtasts.mx"),
            ('[mtasts]\nmx = ["*.*.example.org"]\n', "mtasts.mx"),
            ('[mtasts]\nmx = ["localhost"]\n', "mtasts.mx"),
            ("[relay]\nconcurrency = 0\n", "relay.concurrency"),
            ('[auth]\ntrusted_networks = ["10.0.0.0/33"]\n', "auth.trusted_networks"),
            ("[auth]\nthreads = 0\n", "auth.threads"),
            ('[auth]\nbackend = "ldap"\n', "auth.backend"),
            ('[auth]\nbackend = "postgresql"\n', "auth.database"),
            ("[auth]\ndatabase_pool = 0\n", "auth.database_pool"),
            ("[auth]\ndatabase_cache_ttl = -1\n", "auth.database_cache_ttl"),
            ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
            ("[smtp]\nmax_recipients = 0\n", "smtp.max_recipients"),
            ("[imap]\nmax_literal = 0\n", "imap.max_literal"),
            ("[imap]\nidle_keepalive = -1\n", "imap.idle_keepalive"),
            ('[pop3]\ndelete = "never"\n', "pop3.delete"),
            ('[server]\nhostname = "bad host"\n', "server.hostname"),
            ('[tls]\nkey = "k.pem"\n', "tls.cert"),
            ('[spam]\nmx_failure = "drop"\n', "spam.mx_failure"),
            ('[spam]\nsubmission_failure = "maybe"\n', "spam.submission_failure"),
            ('[spam]\nurl = "https://127.0.0.1:11333"\n', "spam.url"),
            ('[spam]\nurl = "http://127.0.0.1"\n', "spam.url"),
            ('[spam]\ncontroller_url = "http://h:1/path"\n', "spam.controller_url"),
            ("[spam]\ntimeout = 0\n", "spam.timeout"),
            ("[spam]\nlearn_attempts = 0\n", "spam.learn_attempts"),
            ('[spam]\nopt_out = ["nobody"]\n', "spam.opt_out"),
            ('[spam]\nthreshold_offsets = ["example.org"]\n', "spam.threshold_offsets"),
            ('[spam]\nthreshold_offsets = ["example.org=lots"]\n', "spam.threshold_offsets"),
            ('[spam]\nthreshold_offsets = ["=3"]\n', "spam.threshold_offsets"),
            ('[spam]\nthreshold_offsets = ["a b=3"]\n', "spam.threshold_offsets"),
            ("[mailauth]\ndns_timeout = 0\n", "mailauth.dns_timeout"),
            ('[mailauth]\non_dmarc_reject = "bounce"\n', "mailauth.on_dmarc_reject"),
            ('[mailauth]\non_dmarc_quarantine = "x"\n', "mailauth.on_dmarc_quarantine"),
            ('[mailauth]\ndomain_policies = ["a.test reject=maybe"]\n',
             "mailauth.domain_policies"),
            ('[mailauth]\ndomain_policies = ["a.test junk"]\n', "mailauth.domain_policies"),
            ('[acme]\nenabled = true\nchallenges = ["dns-01"]\n', "acme.challenges"),
            ("[acme]\nenabled = true\nchallenges = []\n", "acme.challenges"),
            ('[acme]\nenabled = true\nchallenges = ["tls-alpn-01"]\n[listen]\nhttps = []\n',
             "listen.https"),
            ('[acme]\nenabled = true\nchallenges = ["http-01"]\n[listen]\nhttp = []\n',
             "listen.http"),
            ('[quota]\nrules = ["*:storage=lots"]\n', "quota.rules"),
            ('[quota]\nrules = ["Trash:storage=+10M"]\n', "quota.rules"),
        ]
        for text, key in cases:
            path = self.mktemp() + ".toml"
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            e = self.assertRaises(ConfigError, config.load, path)
            self.assertIn(path, str(e))
            self.assertIn(key, str(e))
