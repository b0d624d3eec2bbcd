"""Learning from the Junk folder (L{pymaild.spam.learn}) and the whole filter as the tap
builds it.

L{EndToEndTests} runs C{twistd pymaild} (a subprocess) with C{[spam]} enabled against a
private rspamd: SMTP delivers clean mail to INBOX, spammy mail to Junk and refuses GTUBE;
imaplib moves messages in and out of Junk and rspamd's learned counter follows; a move
to Trash and an expunge teach nothing; the metrics listener and C{pymaild-admin spam
status} report it all.
L{LearnerTests} drives the learner directly against a peer that fails a few times.
"""

from __future__ import annotations

import imaplib
import io
import os
import re
import smtplib
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild import admin
from pymaild.auth.passwd import PasswdFile
from pymaild.spam.counters import COUNTER_FILE, SpamCounters, readSnapshot
from pymaild.spam.junk import JUNK
from pymaild.spam.learn import Learner, kindOf
from pymaild.spam.rspamd import RspamdClient
from pymaild.store import MaildirStore
from pymaild.threads import ThreadRunner, makePool
from tests.rspamd_support import GTUBE, SPAMMY, BadPeerFactory, Rspamd
from tests.support import ServerProcess, lowCostHashing
from tests.test_metrics import scrape

ALICE = "alice@example.org"
ALICE_PW = "correct horse"


def wordy(tag: str, subject: str | None = None) -> bytes:
    """A distinct message with enough words for rspamd's Bayes classifier."""
    words = " ".join(f"{tag}{i} lorem ipsum dolor sit" for i in range(25))
    return (f"From: someone@remote.example\r\nTo: {ALICE}\r\nSubject: {subject or tag}\r\n"
            f"Message-ID: <{tag}@remote.example>\r\n\r\n{words}\r\n").encode()


def waitFor(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll C{predicate} until true (blocking; the server is another process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class EndToEndTests(SynchronousTestCase):
    """The filter in a real server process, with a real rspamd and real clients."""

    def setUp(self) -> None:
        """Start rspamd and C{twistd pymaild} configured to use it."""
        lowCostHashing(self)
        self.rspamd = Rspamd(self.mktemp()).start()
        self.addCleanup(self.rspamd.stop)
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        PasswdFile(os.path.join(self.data, "passwd")).add(ALICE, ALICE_PW)
        self.conf = os.path.join(self.data, "pymaild.toml")
        with open(self.conf, "w") as f:
            f.write(f'[server]\ndata = "{self.data}"\n'
                    f'[spam]\nenabled = true\nurl = "{self.rspamd.url}"\n'
                    f'controller_url = "{self.rspamd.controllerURL}"\ntimeout = 10\n')
        self.server = ServerProcess(self.data, listeners=("smtp", "imap", "metrics"),
                                    extra=["--config", self.conf]).start()
        self.addCleanup(self.server.stop)

    def send(self, data: bytes) -> tuple[int, bytes]:
        """Send C{data} to Alice over the MX port; the reply to DATA."""
        with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30,
                          local_hostname="client.example") as s:
            s.ehlo()
            assert s.mail("someone@remote.example")[0] == 250
            assert s.rcpt(ALICE)[0] == 250
            return s.data(data)

    def imap(self) -> imaplib.IMAP4:
        """A logged-in imaplib session."""
        m = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=30)
        m.login(ALICE, ALICE_PW)
        return m

    @staticmethod
    def uids(m: imaplib.IMAP4, folder: str) -> list[bytes]:
        """The UIDs in C{folder} (selected)."""
        typ, _ = m.select(folder)
        assert typ == "OK", folder
        typ, data = m.uid("SEARCH", "ALL")
        return data[0].split()

    def test_endToEnd(self) -> None:
        """Deliver, learn by MOVE and COPY, teach nothing by deleting, and report."""
        self.assertEqual(self.send(wordy("clean"))[0], 250)
        self.assertEqual(self.send(wordy("spammy", f"cheap {SPAMMY}"))[0], 250)
        self.assertEqual(self.send(wordy("other", f"more {SPAMMY}"))[0], 250)
        code, text = self.send(b"Subject: t\r\n\r\n" + GTUBE + b"\r\n")
        self.assertEqual((code, text), (550, b"5.7.1 Gtube pattern"))
        self.assertEqual(self.rspamd.learned(), 0)
        m = self.imap()
        try:
            [clean] = self.uids(m, "INBOX")
            self.assertEqual(len(self.uids(m, JUNK)), 2)
            # INBOX -> Junk: spam.
            m.select("INBOX")
            typ, _ = m.uid("MOVE", clean, JUNK)
            self.assertEqual(typ, "OK")
            waitFor(lambda: self.rspamd.learned() == 1, what="learnspam")
            # Junk -> another folder (COPY, then MOVE): ham.
            m.create("Saved")
            junk = self.uids(m, JUNK)
            self.assertEqual(len(junk), 3)
            m.select(JUNK)
            typ, _ = m.copy("1", "Saved")  # sequence number 1 is UID junk[0]
            self.assertEqual(typ, "OK")
            waitFor(lambda: self.rspamd.learned() == 2, what="learnham after COPY")
            typ, _ = m.uid("MOVE", junk[1], "Saved")
            self.assertEqual(typ, "OK")
            waitFor(lambda: self.rspamd.learned() == 3, what="learnham after MOVE")
            # Deleting from Junk (to Trash, or expunged) teaches nothing.
            m.create("Trash")
            typ, _ = m.uid("MOVE", junk[2], "Trash")
            self.assertEqual(typ, "OK")
            m.select(JUNK)
            m.uid("STORE", junk[0], "+FLAGS", r"(\Deleted)")
            m.expunge()
            # One more learn after them: once it is counted, they were not.
            m.select("Saved")
            m.uid("COPY", self.uids(m, "Saved")[0], "INBOX")
        finally:
            m.logout()
        time.sleep(1.0)
        self.assertEqual(self.rspamd.learned(), 3)
        samples = scrape(self.server.ports["metrics"])
        events = {dict(labels)["event"]: n for (name, labels), n in samples.items()
                  if name == "pymaild_spam_events_total"}
        self.assertEqual(events, {"add header": 2, "junked": 2, "learned ham": 2,
                                  "learned spam": 1, "no action": 1, "reject": 1})
        self.server.stop()
        snapshot = readSnapshot(os.path.join(self.data, COUNTER_FILE))
        assert snapshot is not None
        counts = snapshot["counts"]
        self.assertEqual((counts["learned spam"], counts["learned ham"]), (1, 2))
        self.assertEqual((counts["no action"], counts["add header"], counts["junked"],
                          counts["reject"]), (1, 2, 2, 1))
        out, err = io.StringIO(), io.StringIO()
        status = admin.main(["--config", self.conf, "spam", "status"], stdout=out,
                            stderr=err)
        report = out.getvalue()
        self.assertEqual(status, 0, report + err.getvalue())
        self.assertIn("spam filter: enabled", report)
        self.assertIn(f"rspamd scanner {self.rspamd.url}: reachable", report)
        self.assertRegex(report, r"reachable, version 3\.\d")
        self.assertRegex(report, r"scanned 4, learned 3")
        self.assertIn("learned ham 2", report)

    def test_statusUnreachable(self) -> None:
        """With rspamd stopped the report says so, and the exit status is 1."""
        self.rspamd.stop()
        out, err = io.StringIO(), io.StringIO()
        status = admin.main(["--config", self.conf, "spam", "status"], stdout=out,
                            stderr=err)
        self.assertEqual(status, 1)
        self.assertRegex(out.getvalue(), re.escape(self.rspamd.url) + ": unreachable")
        self.assertIn("rspamd does not answer", err.getvalue())


class LearnerTests(TestCase):
    """Retries, limits and what each copy teaches."""

    def setUp(self) -> None:
        """A store with one message in Alice's Junk, a disk pool."""
        base = os.path.abspath(self.mktemp())
        self.store = MaildirStore(os.path.join(base, "mail"), hostname="mx.example.org")
        account = self.store.account(ALICE)
        account.createFolder(JUNK)
        self.store.deliver([ALICE], wordy("one"), JUNK)
        pool = makePool("test-learn", 2)
        pool.start()
        self.addCleanup(pool.stop)
        self.runner = ThreadRunner(reactor, pool)

    def learner(self, factory: BadPeerFactory, attempts: int = 5) -> Learner:
        """A running learner whose rspamd is C{factory}'s peer."""
        url = factory.listen(self)
        client = RspamdClient(reactor, url, url, 5)
        self.addCleanup(client.close)
        learner = Learner(client, self.store, self.runner, reactor, SpamCounters(),
                          attempts=attempts, firstDelay=0.05)
        learner.startService()
        self.addCleanup(learner.stopService)
        return learner

    def test_kinds(self) -> None:
        """Into Junk is spam, out of Junk is ham, to Trash or within Junk nothing."""
        self.assertEqual(kindOf("INBOX", JUNK), "spam")
        self.assertEqual(kindOf("a/b", JUNK), "spam")
        self.assertEqual(kindOf(JUNK, "INBOX"), "ham")
        self.assertEqual(kindOf(JUNK, "Saved"), "ham")
        self.assertIsNone(kindOf(JUNK, "Trash"))
        self.assertIsNone(kindOf(JUNK, JUNK))
        self.assertIsNone(kindOf("INBOX", "Saved"))

    @defer.inlineCallbacks
    def test_retried(self) -> Any:
        """Two HTTP 500s, then success: three requests, one learned message."""
        factory = BadPeerFactory("500", failures=2)
        learner = self.learner(factory)
        learner.copied(ALICE, "INBOX", JUNK, [1])
        yield learner.idle()
        self.assertEqual(factory.requests, 3)
        self.assertEqual(learner.counters.snapshot(), {"learned spam": 1})

    @defer.inlineCallbacks
    def test_attemptsBounded(self) -> Any:
        """rspamd always failing: exactly C{attempts} requests, then given up."""
        factory = BadPeerFactory("reset")
        learner = self.learner(factory, attempts=3)
        learner.copied(ALICE, "INBOX", JUNK, [1])
        yield learner.idle()
        self.assertEqual(factory.requests, 3)
        self.assertEqual(learner.counters.snapshot(), {"learn spam failed": 1})

    @defer.inlineCallbacks
    def test_goneMessage(self) -> Any:
        """A UID that is not there (moved away again) is skipped without a request."""
        factory = BadPeerFactory("ok")
        learner = self.learner(factory)
        learner.copied(ALICE, "INBOX", JUNK, [99])
        yield learner.idle()
        self.assertEqual(factory.requests, 0)
        self.assertEqual(learner.counters.snapshot(), {"learn spam skipped": 1})

    @defer.inlineCallbacks
    def test_stopGivesUpRetries(self) -> Any:
        """Stopping the service cancels a retry that is waiting."""
        factory = BadPeerFactory("500")
        learner = self.learner(factory, attempts=100)
        learner.firstDelay = 30
        learner.copied(ALICE, "INBOX", JUNK, [1])
        while factory.requests < 1:
            yield task.deferLater(reactor, 0.02, lambda: None)
        yield learner.stopService()
        self.assertEqual(learner.pending, set())
        self.assertEqual(factory.requests, 1)
