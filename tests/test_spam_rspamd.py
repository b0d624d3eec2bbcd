"""The rspamd HTTP client (L{pymaild.spam.rspamd}) against a real rspamd and bad peers.

The good paths talk to a private rspamd (L{tests.rspamd_support.Rspamd}) on loopback;
the bad input (garbage, HTTP 500, a reset, silence, an endless body) comes from a tiny
fake HTTP server, and every case must end in one L{RspamdError}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from pymaild.spam.rspamd import RspamdClient, RspamdError, ScanResult
from tests.rspamd_support import GTUBE, SPAMMY, BadPeerFactory, Rspamd

CLEAN = (b"From: a@remote.example\r\nTo: alice@example.org\r\nSubject: lunch\r\n"
         b"Message-ID: <1@remote.example>\r\n\r\nShall we have lunch on Friday?\r\n")

HEADERS = {"From": ["a@remote.example"], "Rcpt": ["alice@example.org"],
           "IP": ["192.0.2.1"], "Helo": ["client.example"], "Queue-Id": ["Q1"]}


def wordy(tag: str) -> bytes:
    """A message with enough words for rspamd's Bayes classifier."""
    words = " ".join(f"{tag}{i} lorem ipsum dolor" for i in range(20))
    return (f"From: a@remote.example\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@remote.example>\r\n\r\n{words}\r\n").encode()


class RealRspamdTests(TestCase):
    """Scanning, learning and statistics with a real rspamd."""

    def setUp(self) -> None:
        """Start rspamd; a client for it."""
        self.rspamd = Rspamd(self.mktemp()).start()
        self.addCleanup(self.rspamd.stop)
        self.client = RspamdClient(reactor, self.rspamd.url, self.rspamd.controllerURL, 10)
        self.addCleanup(self.client.close)

    @defer.inlineCallbacks
    def test_clean(self) -> Any:
        """A plain message gets no action and a score below every threshold."""
        result = yield self.client.check(CLEAN, HEADERS)
        self.assertIsInstance(result, ScanResult)
        self.assertEqual(result.action, "no action")
        self.assertLess(result.score, 4)
        self.assertEqual(result.required, 15.0)

    @defer.inlineCallbacks
    def test_gtube(self) -> Any:
        """GTUBE is rejected, with rspamd's message."""
        message = b"From: a@remote.example\r\nSubject: t\r\n\r\n" + GTUBE + b"\r\n"
        result = yield self.client.check(message, HEADERS)
        self.assertEqual(result.action, "reject")
        self.assertTrue(result.skipped)
        self.assertIn("GTUBE", result.symbols)
        self.assertEqual(result.message, "Gtube pattern")

    @defer.inlineCallbacks
    def test_addHeader(self) -> Any:
        """The test rule's 8 points are over add header (6), under reject (15)."""
        message = f"From: a@remote.example\r\nSubject: {SPAMMY}\r\n\r\nx\r\n".encode()
        result = yield self.client.check(message, HEADERS)
        self.assertEqual((result.action, result.score), ("add header", 8.0))
        self.assertIn("PYMAILD_TEST_SPAMMY", result.symbols)

    @defer.inlineCallbacks
    def test_keepAlive(self) -> Any:
        """Several scans one after another reuse the pool and all succeed."""
        for _ in range(5):
            result = yield self.client.check(CLEAN, HEADERS)
            self.assertEqual(result.action, "no action")
        self.assertEqual(self.rspamd.stat()["scanned"], 5)

    @defer.inlineCallbacks
    def test_learn(self) -> Any:
        """Learning spam grows rspamd's learned counter; the same message again is
        declined for good (no error); too few words is declined too."""
        self.assertEqual(self.rspamd.learned(), 0)
        outcome = yield self.client.learn("spam", wordy("first"))
        self.assertEqual(outcome, "learned")
        self.assertEqual(self.rspamd.learned(), 1)
        again = yield self.client.learn("spam", wordy("first"))
        self.assertIn("already learned", again)
        short = yield self.client.learn("ham", CLEAN)
        self.assertIn("less tokens", short)
        ham = yield self.client.learn("ham", wordy("second"))
        self.assertEqual(ham, "learned")
        self.assertEqual(self.rspamd.learned(), 2)

    @defer.inlineCallbacks
    def test_statAndActions(self) -> Any:
        """C{/stat} gives the version; C{/actions} the thresholds that are set."""
        stat = yield self.client.stat()
        self.assertEqual(stat["version"], "3.4" if stat["version"].startswith("3.4")
                         else stat["version"])
        self.assertIn("learned", stat)
        actions = yield self.client.actions()
        self.assertEqual(actions, {"greylist": 4.0, "add header": 6.0, "reject": 15.0})

    @defer.inlineCallbacks
    def test_stopped(self) -> Any:
        """rspamd stopped: the scan fails with a retryable RspamdError, promptly."""
        self.rspamd.stop()
        error = yield self.assertFailure(self.client.check(CLEAN, HEADERS), RspamdError)
        self.assertTrue(error.retry)

    @defer.inlineCallbacks
    def test_tooLargeForRspamd(self) -> Any:
        """A message over rspamd's own max_message is refused by rspamd: an error."""
        self.rspamd.stop()
        self.rspamd = Rspamd(self.mktemp(), maxMessage=2048).start()
        self.addCleanup(self.rspamd.stop)
        client = RspamdClient(reactor, self.rspamd.url, self.rspamd.controllerURL, 10)
        self.addCleanup(client.close)
        big = CLEAN + b"y" * 10000 + b"\r\n"
        yield self.assertFailure(client.check(big, HEADERS), RspamdError)


class BadPeerTests(TestCase):
    """Every way a peer can misbehave is one RspamdError."""

    @defer.inlineCallbacks
    def fails(self, mode: str, timeout: float = 5) -> Any:
        """Scan against a peer in C{mode}; return the RspamdError."""
        url = BadPeerFactory(mode).listen(self)
        client = RspamdClient(reactor, url, url, timeout, maxResponse=100000)
        self.addCleanup(client.close)
        error = yield self.assertFailure(client.check(CLEAN, HEADERS), RspamdError)
        return error

    @defer.inlineCallbacks
    def test_garbage(self) -> Any:
        """A 200 whose body is not JSON."""
        error = yield self.fails("garbage")
        self.assertIn("not JSON", error.reason)

    @defer.inlineCallbacks
    def test_wrongJSON(self) -> Any:
        """JSON without a known action."""
        error = yield self.fails("json-junk")
        self.assertIn("unknown action", error.reason)

    @defer.inlineCallbacks
    def test_http500(self) -> Any:
        """An HTTP 500 is an error worth retrying."""
        error = yield self.fails("500")
        self.assertIn("HTTP 500", error.reason)
        self.assertTrue(error.retry)

    @defer.inlineCallbacks
    def test_reset(self) -> Any:
        """The connection reset before a reply."""
        error = yield self.fails("reset")
        self.assertTrue(error.retry)

    @defer.inlineCallbacks
    def test_silent(self) -> Any:
        """No reply at all: the deadline ends the request."""
        error = yield self.fails("silent", timeout=0.5)
        self.assertIn("no reply within 0.5 s", error.reason)

    @defer.inlineCallbacks
    def test_endlessBody(self) -> Any:
        """A body longer than the bound is cut off, not collected."""
        error = yield self.fails("huge")
        self.assertIn("longer than 100000 bytes", error.reason)
