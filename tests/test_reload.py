"""SIGHUP applying a changed configuration to a running server (L{pymaild.reload}).

The socket tests run a real ``twistd -n pymaild`` with a configuration file, change the
file, send HUP, and look at what new sessions get and what the log says. The wiring
tests build the service tree the way twistd does and check that each key the reload
claims to apply reaches the objects that use it.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pymaild import config as configModule
from pymaild import tap
from pymaild.mailauth.dkimkeys import DKIMKeys
from pymaild.reload import Reloader, changedKeys, withKeys
from tests.support import ServerProcess, dataWithUsers


def sighupLines(server: ServerProcess, count: int, timeout: float = 30) -> list[str]:
    """Wait until the server's log has C{count} SIGHUP lines; return them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [x for x in server.log().splitlines() if "SIGHUP:" in x]
        if len(lines) >= count:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"no SIGHUP line #{count} in the log:\n{server.log()}")
        time.sleep(0.1)


def ehloSize(port: int) -> int:
    """The SIZE an EHLO to C{port} advertises."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        return int(client.esmtp_features["size"])


class ReloadOverSocketsTests(SynchronousTestCase):
    """kill -HUP with a changed configuration file, seen by new sessions."""

    def writeConfig(self, path: str, size: int, aliases: str, perIP: int,
                    threads: int) -> None:
        """The configuration file with the keys the test changes."""
        with open(path + ".new", "w") as f:
            f.write(f'[smtp]\nmax_message_size = {size}\naliases = "{aliases}"\n'
                    f"[limits]\nmax_connections_per_ip = {perIP}\n"
                    f"[auth]\nthreads = {threads}\n")
        os.replace(path + ".new", path)

    def test_hupAppliesWhatItCanAndNamesTheRest(self) -> None:
        """After HUP new SMTP sessions advertise the new SIZE, an alias from the newly
        named aliases file is accepted and the per-IP cap is the new one; a key that
        needs a restart is named, and named again at the next HUP; a broken file
        changes nothing."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        conf = os.path.join(base, "pymaild.toml")
        aliasesA = os.path.join(base, "aliases-a")
        aliasesB = os.path.join(base, "aliases-b")
        with open(aliasesB, "w") as f:
            f.write("sales: postmaster\n")
        self.writeConfig(conf, 100000, aliasesA, 5, 4)
        server = ServerProcess(os.path.join(base, "data"), listeners=("smtp",),
                               extra=["--config", conf])
        self.addCleanup(server.stop)
        server.start()
        port = server.ports["smtp"]
        self.assertEqual(ehloSize(port), 100000)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail("someone@remote.example")
            self.assertEqual(client.rcpt("sales@example.org")[0], 550)

        self.writeConfig(conf, 200000, aliasesB, 2, 8)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        line = sighupLines(server, 1)[0]
        self.assertIn("1 alias in " + aliasesB, line)
        applied = line.split("applied from ", 1)[1].split(";", 1)[0]
        for key in ("smtp.max_message_size", "smtp.aliases",
                    "limits.max_connections_per_ip"):
            self.assertIn(key, applied)
        self.assertNotIn("auth.threads", applied)
        self.assertIn("applied at the next restart: auth.threads", line)

        self.assertEqual(ehloSize(port), 200000)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail("someone@remote.example")
            self.assertEqual(client.rcpt("sales@example.org")[0], 250)
        # Two sessions from this address are the cap now: the third is turned away.
        held = [socket.create_connection(("127.0.0.1", port), 30) for _ in range(2)]
        try:
            for conn in held:
                self.assertTrue(conn.makefile("rb").readline().startswith(b"220"))
            with socket.create_connection(("127.0.0.1", port), 30) as third:
                self.assertTrue(third.makefile("rb").readline().startswith(b"421"))
        finally:
            for conn in held:
                conn.close()

        server.proc.send_signal(signal.SIGHUP)
        second = sighupLines(server, 2)[1]
        self.assertNotIn("applied from", second)
        self.assertIn("applied at the next restart: auth.threads", second)

        with open(conf, "w") as f:
            f.write("[smtp\nmax_message_size = 5\n")
        server.proc.send_signal(signal.SIGHUP)
        third = sighupLines(server, 3)[2]
        self.assertIn("configuration NOT reloaded", third)
        self.assertIsNone(server.proc.poll())
        self.assertEqual(ehloSize(port), 200000)


class DomainsFromTheFile(ServerProcess):
    """A server whose domains come from its configuration file (no C{--domain})."""

    def args(self) -> list[str]:
        """The command line without the C{--domain} option."""
        args = super().args()
        i = args.index("--domain")
        return args[:i] + args[i + 2:]


class DomainReloadTests(SynchronousTestCase):
    """A domain added to C{server.domains} is served after HUP; a new primary domain
    waits for the restart."""

    def test_addDomain(self) -> None:
        """Mail for a user of the added domain is refused as relaying before HUP and
        accepted after; the autoconfig document answers for the new domain; changing
        the first domain is named for the restart, with the reason."""
        import ssl
        import urllib.request

        base, data = dataWithUsers(self, {"carol@new.example": "carol-secret-pw"})
        conf = os.path.join(base, "pymaild.toml")

        def domains(*names: str) -> None:
            with open(conf + ".new", "w") as f:
                f.write("[server]\ndomains = [" + ", ".join(f'"{n}"' for n in names)
                        + "]\n")
            os.replace(conf + ".new", conf)

        domains("example.org")
        server = DomainsFromTheFile(data, listeners=("smtp", "https"),
                                    extra=["--config", conf])
        self.addCleanup(server.stop)
        server.start()
        port = server.ports["smtp"]

        def rcpt(address: str) -> int:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo("client.example")
                client.mail("someone@remote.example")
                return client.rcpt(address)[0]

        def autoconfig(domain: str) -> int:
            context = ssl._create_unverified_context()
            request = urllib.request.Request(
                f"https://127.0.0.1:{server.ports['https']}/mail/config-v1.1.xml"
                f"?emailaddress=carol@{domain}", headers={"Host": f"autoconfig.{domain}"})
            try:
                with urllib.request.urlopen(request, context=context, timeout=30) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        self.assertEqual(rcpt("carol@new.example"), 554)  # relaying denied
        self.assertEqual(autoconfig("new.example"), 404)
        domains("example.org", "new.example")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        self.assertIn("applied from", sighupLines(server, 1)[0])
        self.assertIn("server.domains", sighupLines(server, 1)[0])
        self.assertEqual(rcpt("carol@new.example"), 250)
        self.assertEqual(autoconfig("new.example"), 200)

        domains("new.example", "example.org")
        server.proc.send_signal(signal.SIGHUP)
        line = sighupLines(server, 2)[1]
        self.assertIn("applied at the next restart: server.domains (the primary domain,"
                      " the first, changed)", line)
        self.assertNotIn("NOT applied", line)
        self.assertEqual(rcpt("carol@new.example"), 250)


class WiringTests(SynchronousTestCase):
    """Each followed key reaches the objects that use it."""

    def build(self, text: str) -> tuple[str, tap.Options, object]:
        """A service tree from a configuration file holding C{text}."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        conf = os.path.join(data, "pymaild.toml")
        self.rewrite(conf, data, text)
        o = tap.Options()
        o.parseOptions(["--config", conf])
        return conf, o, tap.makeService(o, MemoryReactorClock())

    def rewrite(self, conf: str, data: str, text: str) -> None:
        """Write the file: the data directory, one domain, then C{text}."""
        with open(conf, "w") as f:
            f.write(f'[server]\ndata = "{data}"\ndomains = ["example.org"]\n{text}')

    def test_everyFollowedKeyIsApplied(self) -> None:
        """A new value of every followed key is seen by its users; a listener change
        is left for the restart; the running configuration keeps the listener's old
        value."""
        from twisted.mail import smtp

        from pymaild.limits import LimitedFactory
        from pymaild.mailauth.inbound import AuthenticationCheck
        from pymaild.sieve.filter import SieveCheck
        from pymaild.sieve.managesieve import ManageSieveFactory
        from pymaild.spam.check import SpamCheck

        conf, o, top = self.build("[spam]\nenabled = true\n")
        reloader = next(s for s in top if isinstance(s, Reloader))  # type: ignore[attr-defined]
        data = o.config.data
        self.rewrite(conf, data, """
[listen]
imap = ["tcp:3143:interface=127.0.0.1"]
[smtp]
max_message_size = 12345
[auth]
trusted_networks = ["10.0.0.0/8"]
cleartext = "tls-only"
[limits]
max_connections = 77
max_connections_per_user_ip = 3
line_deadline = 9
[submission]
max_messages_per_hour = 7
check_from_header = false
[relay]
backoff_min = 11
[spam]
enabled = true
opt_out = ["bob@example.org"]
threshold_offsets = ["example.org=2.5"]
mx_failure = "accept"
[mailauth]
domain_policies = ["example.org reject=junk"]
[sieve]
max_actions = 5
[imap]
idle_keepalive = 60
[pop3]
delete = "flag"
[web]
admins = ["boss@example.org"]
""")
        done = reloader.applyConfig(o.loadAgain())
        self.assertIn("applied at the next restart: listen.imap", "; ".join(done))
        self.assertEqual(reloader.config.listen.imap, o.config.listen.imap)
        self.assertEqual(reloader.config.smtp.max_message_size, 12345)

        smtpService = next(s for s in top if (s.name or "").startswith("smtp:"))  # type: ignore[attr-defined]
        limited = smtpService.factory
        self.assertIsInstance(limited, LimitedFactory)
        self.assertEqual(limited.lineDeadline, 9.0)
        self.assertEqual(limited.limits.maxTotal, 77)
        self.assertEqual(len(limited.limits.trusted), 1)
        protocol = limited.wrappedFactory.buildProtocol(("127.0.0.1", 1))
        self.assertEqual(protocol.maxMessageSize, 12345)
        self.assertEqual(protocol.cleartextPolicy, "tls-only")
        realm = limited.wrappedFactory.portal.realm
        delivery = realm.factories[smtp.IMessageDelivery]
        self.assertEqual((delivery.maxPerHour, delivery.checkFromHeader), (7, False))
        self.assertEqual(len(delivery.trustedNetworks), 1)
        self.assertEqual(delivery.queue.config.backoff_min, 11)
        checks = delivery.checks.checks
        spam = next(c for c in checks if isinstance(c, SpamCheck))
        self.assertTrue(spam.optedOut("bob@example.org"))
        self.assertEqual(spam.offsets, {"example.org": 2.5})
        self.assertEqual(spam.config.mx_failure, "accept")
        auth = next(c for c in checks if isinstance(c, AuthenticationCheck))
        self.assertEqual(auth.action("x@example.org", "reject"), "junk")
        sieve = next(c for c in checks if isinstance(c, SieveCheck))
        self.assertEqual(sieve.limits.maxActions, 5)
        self.assertEqual(sieve.cache.limits.maxActions, 5)
        sieveService = next(s for s in top if (s.name or "").startswith("managesieve:"))  # type: ignore[attr-defined]
        manage = sieveService.factory.wrappedFactory
        self.assertIsInstance(manage, ManageSieveFactory)
        self.assertEqual(manage.limits.maxActions, 5)
        imapService = next(s for s in top if (s.name or "").startswith("imap:"))  # type: ignore[attr-defined]
        imapProtocol = imapService.factory.wrappedFactory.buildProtocol(("127.0.0.1", 1))
        self.assertEqual(imapProtocol.config.imap.idle_keepalive, 60)
        from twisted.mail import pop3

        self.assertEqual(realm.factories[pop3.IMailbox].config.pop3.delete, "flag")
        httpsService = next(s for s in top if (s.name or "").startswith("https:"))  # type: ignore[attr-defined]
        del httpsService
        penalty = limited.wrappedFactory.gate.penalty
        self.assertEqual(len(penalty.trusted), 1)

    def test_followUnknownKey(self) -> None:
        """Following a key the configuration does not have is a programming error."""
        _, _, top = self.build("")
        reloader = next(s for s in top if isinstance(s, Reloader))  # type: ignore[attr-defined]
        self.assertRaises(ValueError, reloader.follow, ["smtp.no_such_key"], print, "x")

    def test_withKeys(self) -> None:
        """Only the named keys are taken from the new configuration."""
        old = configModule.Config()
        new = configModule.load(None, {"smtp": {"max_recipients": 5},
                                       "auth": {"threads": 9}})
        mixed = withKeys(old, new, ["smtp.max_recipients"])
        self.assertEqual(mixed.smtp.max_recipients, 5)
        self.assertEqual(mixed.auth.threads, old.auth.threads)
        self.assertEqual(changedKeys(old, mixed), ["smtp.max_recipients"])


class DKIMRereadTests(SynchronousTestCase):
    """The DKIM keys are read again on HUP."""

    def test_replacedInPlace(self) -> None:
        """A key file replaced inside its set (which the directory stamp does not see)
        is used after L{DKIMKeys.forget}."""
        keys = DKIMKeys(os.path.abspath(self.mktemp()))
        keys.keygen("example.org", "s1")
        before = {k.selector: k.public for k in keys.signingKeys("example.org")}
        other = DKIMKeys(os.path.abspath(self.mktemp()))
        other.keygen("example.org", "s1")
        setDir = os.path.join(keys.root, "example.org", "s1")
        for name in os.listdir(setDir):
            with open(os.path.join(other.root, "example.org", "s1", name), "rb") as src:
                fresh = src.read()
            with open(os.path.join(setDir, name), "wb") as dst:
                dst.write(fresh)
        self.assertEqual({k.selector: k.public for k in keys.signingKeys("example.org")},
                         before)
        self.assertEqual(tap.rereadDKIM(keys), "2 DKIM keys for 1 domain")
        after = {k.selector: k.public for k in keys.signingKeys("example.org")}
        self.assertEqual(after, {k.selector: k.public
                                 for k in other.signingKeys("example.org")})
        self.assertNotEqual(after, before)
