"""Tests for pymaild.logs: Twisted's routine port and DNS lines are left out of the log."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.names import client
from twisted.python import log as legacyLog
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild import logs
from tests.test_relay_support import a, mx, startDNS


class RoutineTests(SynchronousTestCase):
    """Which lines count as routine."""

    def test_routineLines(self) -> None:
        """Port, factory and datagram-protocol lines are routine."""
        for text in ("SMTPFactory (LimitedFactory) starting on 2525",
                     "DNSDatagramProtocol starting on 40211",
                     "(UDP Port 40211 Closed)",
                     "Starting factory <pymaild.limits.LimitedFactory object at 0x7f>",
                     "Stopping protocol <twisted.names.dns.DNSDatagramProtocol object>"):
            self.assertTrue(logs.isRoutine({"log_format": "{t}", "t": text,
                                            "log_level": LogLevel.info}), text)

    def test_keptLines(self) -> None:
        """pymaild's own lines, errors and lines that only resemble routine ones stay."""
        for event in ({"log_format": "imap on 127.0.0.1:2143", "log_level": LogLevel.info},
                      {"log_format": "Starting factory <x>", "log_level": LogLevel.error},
                      {"log_format": "queue: 3 message(s) loaded", "log_level": LogLevel.info},
                      {"log_format": "{a} starting on {b}", "a": "x", "b": "many",
                       "log_level": LogLevel.info}):
            self.assertFalse(logs.isRoutine(event), event)


class DNSQueryTests(TestCase):
    """A real twisted.names lookup against a loopback DNS server leaves no line."""

    @defer.inlineCallbacks
    def test_lookupLeavesNothing(self) -> Any:
        """Every event a query logs is dropped by the filter; a line of ours is kept."""
        port = startDNS(self, {"remote.example": [mx(10, "mx.remote.example")],
                               "mx.remote.example": [a()]})
        seen: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        quiet = logs.quiet(kept.append)
        globalLogPublisher.addObserver(quiet)
        self.addCleanup(globalLogPublisher.removeObserver, quiet)
        resolver = client.Resolver(servers=[("127.0.0.1", port)], reactor=reactor)
        answers, _, _ = yield resolver.lookupMailExchange("remote.example")
        self.assertEqual(len(answers), 1)
        yield resolver.lookupAddress("mx.remote.example")
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        yield d
        Logger(namespace="pymaild").info("relay to remote.example")
        legacyLog.msg("a legacy line that matters")
        self.assertGreaterEqual(len(seen), 6)
        texts = [formatEvent(e) for e in kept]
        self.assertEqual(texts, ["relay to remote.example", "a legacy line that matters"])


class JSONLogTests(SynchronousTestCase):
    """C{server.log_format = "json"}: a real server writes one JSON object per line."""

    def test_jsonLines(self) -> None:
        """Every line parses as JSON; a message's lines carry its id as a field; the
        password of an AUTH never appears."""
        import json
        import os
        import smtplib
        import ssl

        from tests.support import ServerProcess, dataWithUsers

        secret = "json-log-secret-pw"
        base, data = dataWithUsers(self, {"alice@example.org": secret})
        config = os.path.join(base, "pymaild.toml")
        with open(config, "w") as f:
            f.write('[server]\nlog_format = "json"\n')
        server = ServerProcess(data, "example.org", listeners=("smtp", "submission"),
                               extra=["--config", config])
        server.start()
        self.addCleanup(server.stop)
        with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
            s.starttls(context=ssl._create_unverified_context())
            s.login("alice@example.org", secret)
            _, reply = s.docmd("NOOP")
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.sendmail("x@remote.example", ["alice@example.org"], b"Subject: j\r\n\r\nbody\r\n")
            # The 250 of DATA is not returned by sendmail: take the id from the Maildir.
        mailDir = os.path.join(data, "mail")
        received = [open(os.path.join(root, n), "rb").read()
                    for root, _, names in os.walk(mailDir) if root.endswith("new")
                    for n in names]
        [message] = received
        qid = message.split(b" id ", 1)[1].split(b"\r\n", 1)[0].split(b";")[0].decode()
        server.stop()
        with open(server.logPath, encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if line]
        events = [json.loads(line) for line in lines]
        self.assertTrue(events)
        mine = [e for e in events if e.get("id") == qid]
        self.assertGreaterEqual(len(mine), 2, "received and delivered lines")
        for e in mine:
            self.assertIn("log_format", e)
            self.assertIn("log_time", e)
        self.assertNotIn(secret, "\n".join(lines))
