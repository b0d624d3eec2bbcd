"""The Prometheus endpoint of a running server (L{pymaild.metrics}).

A real ``twistd -n pymaild`` is driven over SMTP, submission and IMAP by the standard
library's clients; then C{/metrics} is fetched over HTTP and parsed with
prometheus_client's own text-format parser, and the values are checked against what
the session did.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import ssl
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from pymaild.metrics import Metrics
from tests.support import ServerProcess, dataWithUsers, freePort

USER = "alice@example.org"
PASSWORD = "alice-secret-pw"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of C{/metrics} on C{port}: (name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """The value of one sample (0 when it is absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsEndpointTests(SynchronousTestCase):
    """C{/metrics} after a scripted session shows what happened."""

    def setUp(self) -> None:
        """Start a server with one user and a smarthost that refuses connections."""
        base, data = dataWithUsers(self, {USER: PASSWORD})
        config = os.path.join(base, "pymaild.toml")
        with open(config, "w") as f:
            # Nothing listens there: relayed mail stays queued, deferred.
            f.write(f'[relay]\nsmarthost = "127.0.0.1:{freePort()}"\n'
                    'smarthost_tls = "opportunistic"\n')
        self.server = ServerProcess(data, "example.org",
                                    listeners=("smtp", "submission", "imap", "metrics"),
                                    extra=["--config", config])
        self.server.start()
        self.addCleanup(self.server.stop)

    def test_session(self) -> None:
        """Messages received and delivered, logins by result, IMAP command times,
        sessions, TLS versions and the queue are all counted."""
        ports = self.server.ports
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
            s.sendmail("someone@example.net", [USER],
                       b"From: someone@example.net\r\nSubject: hi\r\n\r\nhello\r\n")
            hops = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n" * 50
            with self.assertRaises(smtplib.SMTPDataError) as refused:
                s.sendmail("someone@example.net", [USER], hops + b"Subject: loop\r\n\r\nx\r\n")
        with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as s:
            s.starttls(context=ssl._create_unverified_context())
            s.login(USER, PASSWORD)
            s.sendmail(USER, ["far@remote.example"],
                       f"From: {USER}\r\nSubject: out\r\n\r\nout\r\n".encode())
        c = imaplib.IMAP4("127.0.0.1", ports["imap"])
        c.starttls(ssl_context=ssl._create_unverified_context())
        with self.assertRaises(imaplib.IMAP4.error):
            c.login(USER, "wrong-password")
        c.logout()
        c = imaplib.IMAP4("127.0.0.1", ports["imap"])
        c.starttls(ssl_context=ssl._create_unverified_context())
        c.login(USER, PASSWORD)
        c.select("INBOX")
        c.fetch("1", "(FLAGS)")
        open_ = scrape(ports["metrics"])
        c.logout()
        deadline = time.monotonic() + 30
        while True:
            m = scrape(ports["metrics"])
            if value(m, "pymaild_sessions_open", listener="imap") == 0 or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.1)

        self.assertEqual(value(open_, "pymaild_sessions_open", listener="imap"), 1)
        self.assertEqual(value(m, "pymaild_sessions_open", listener="imap"), 0)
        # One more each: the start-up check that the port accepts connections.
        self.assertEqual(value(m, "pymaild_connections_total", listener="imap"), 3)
        self.assertEqual(value(m, "pymaild_connections_total", listener="smtp"), 2)
        self.assertEqual(value(m, "pymaild_tls_sessions_total", listener="imap",
                               version="TLSv1.3"), 2)
        self.assertEqual(value(m, "pymaild_tls_sessions_total", listener="submission",
                               version="TLSv1.3"), 1)
        self.assertEqual(value(m, "pymaild_messages_received_total", role="mx"), 1)
        self.assertEqual(value(m, "pymaild_messages_received_total", role="submission"), 1)
        self.assertEqual(value(m, "pymaild_copies_delivered_total", source="smtp"), 1)
        self.assertEqual(value(m, "pymaild_messages_queued_total"), 1)
        self.assertEqual(value(m, "pymaild_logins_total", protocol="imap", result="failure"),
                         1)
        self.assertEqual(value(m, "pymaild_logins_total", protocol="imap", result="success"),
                         1)
        self.assertEqual(value(m, "pymaild_logins_total", protocol="smtp", result="success"),
                         1)
        self.assertEqual(value(m, "pymaild_imap_command_seconds_count", command="SELECT"), 1)
        self.assertEqual(value(m, "pymaild_imap_command_seconds_count", command="FETCH"), 1)
        self.assertEqual(value(m, "pymaild_queue_messages"), 1)
        self.assertGreater(value(m, "pymaild_queue_oldest_age_seconds"), 0)
        self.assertEqual(value(m, "pymaild_threadpool_busy", pool="disk"), 0)
        self.assertIn(("pymaild_threadpool_waiting", (("pool", "delivery"),)), m)
        self.assertEqual(refused.exception.smtp_code, 554)
        self.assertEqual(value(m, "pymaild_messages_refused_total", role="mx", code="554"), 1)
        self.assertEqual(value(m, "pymaild_delivery_seconds_count", role="mx"), 2)

    def test_onlyMetrics(self) -> None:
        """The listener serves C{/metrics} and nothing else."""
        port = self.server.ports["metrics"]
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30)
        self.assertEqual(e.exception.code, 404)


class MetricsObjectTests(SynchronousTestCase):
    """The L{Metrics} object on its own."""

    def test_separateRegistries(self) -> None:
        """Two servers in one process count separately."""
        a, b = Metrics(), Metrics()
        a.login("imap", "success")
        self.assertEqual(a.registry.get_sample_value(
            "pymaild_logins_total", {"protocol": "imap", "result": "success"}), 1)
        self.assertIsNone(b.registry.get_sample_value(
            "pymaild_logins_total", {"protocol": "imap", "result": "success"}))

    def test_imapLabelsBounded(self) -> None:
        """A command name a client made up is counted as C{other}."""
        m = Metrics()
        m.imapCommand("XMADEUP", 0.01)
        m.imapCommand("uid fetch", 0.01)
        self.assertEqual(m.registry.get_sample_value(
            "pymaild_imap_command_seconds_count", {"command": "other"}), 1)
        self.assertEqual(m.registry.get_sample_value(
            "pymaild_imap_command_seconds_count", {"command": "UID FETCH"}), 1)
