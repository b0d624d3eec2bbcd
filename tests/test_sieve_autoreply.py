"""The vacation script the web page writes (L{pymaild.sieve.autoreply}), judged by
Pigeonhole's C{sieve-test} as well as by pymaild."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pymaild.sieve import autoreply
from pymaild.sieve.checker import Limits
from pymaild.sieve.storage import ScriptStorage
from tests.sieve_support import Pigeonhole, decide, findSieveTest

MESSAGE = (b"From: s@remote.example\r\nTo: alice@example.org\r\nSubject: [dev] hi\r\n"
           b"Message-ID: <m@remote.example>\r\nList-Id: <dev.example>\r\n\r\nbody\r\n")
PLAIN = MESSAGE.replace(b"List-Id: <dev.example>\r\n", b"")
FILING = b'require "fileinto";\nif header :contains "subject" "[dev]" { fileinto "Dev"; }\n'


class AutoreplyTests(SynchronousTestCase):
    """Turning the vacation reply on and off, and what the script then does."""

    def setUp(self) -> None:
        """A user home with a filing script of their own, active."""
        self.storage = ScriptStorage(os.path.abspath(self.mktemp()))
        self.storage.write("main", FILING)
        self.storage.activate("main")

    def test_onWrapsTheActiveScript(self) -> None:
        """On: the vacation script is active, answers with the subject, text and period
        given, and still runs the user's filing rules (Pigeonhole and pymaild agree);
        off: the user's script is active again and the settings are kept."""
        text = 'Back on Monday.\nUrgent: call "Bob" \\ 555.\nÜmlaut.'
        stored = autoreply.store(self.storage, True, "Away", text, 3, Limits())
        self.assertEqual((stored.enabled, stored.include, stored.days), (True, "main", 3))
        self.assertEqual(self.storage.active(), autoreply.SCRIPT)
        self.assertEqual(autoreply.read(self.storage).message, text)
        script = self.storage.read(autoreply.SCRIPT)
        pigeonhole = Pigeonhole(findSieveTest())
        self.addCleanup(pigeonhole.cleanUp)
        theirs = pigeonhole.decide(script, PLAIN, "s@remote.example", "alice@example.org",
                                   includes={"main": FILING})
        ours = decide(script, PLAIN, "s@remote.example", "alice@example.org",
                      includes={"main": FILING})
        self.assertEqual(theirs, ours)
        self.assertEqual(ours["vacation"]["seconds"], 3 * 86400)
        self.assertEqual(ours["vacation"]["subject"], "Away")
        self.assertEqual(ours["stores"], [("Dev", ())])

        off = autoreply.store(self.storage, False, "Away", text, 3, Limits())
        self.assertFalse(off.enabled)
        self.assertEqual(self.storage.active(), "main")
        self.assertEqual(autoreply.read(self.storage).subject, "Away")
        again = autoreply.store(self.storage, True, "Away", text, 3, Limits())
        self.assertEqual(again.include, "main")

    def test_noScriptBefore(self) -> None:
        """Without an earlier active script the vacation script stands alone, and off
        leaves no script active."""
        self.storage.activate(None)
        autoreply.store(self.storage, True, "", "Away.", 7, Limits())
        self.assertNotIn(b"include :personal", self.storage.read(autoreply.SCRIPT))
        pigeonhole = Pigeonhole(findSieveTest())
        self.addCleanup(pigeonhole.cleanUp)
        verdict = pigeonhole.decide(self.storage.read(autoreply.SCRIPT), PLAIN,
                                    "s@remote.example", "alice@example.org")
        self.assertEqual(verdict["stores"], [("INBOX", ())])
        self.assertIsNotNone(verdict["vacation"])
        autoreply.store(self.storage, False, "", "Away.", 7, Limits())
        self.assertIsNone(self.storage.active())

    def test_badValues(self) -> None:
        """Out-of-bounds values are refused and nothing changes."""
        for args in [("x\ny", "m", 7), ("s", "", 7), ("s", "m", 0), ("s", "m", 400),
                     ("s", "m" * (autoreply.MAX_MESSAGE + 1), 7), ("s" * 201, "m", 7)]:
            self.assertRaises(autoreply.VacationRefused, autoreply.store, self.storage,
                              True, *args, Limits())
        self.assertEqual(self.storage.active(), "main")
        self.assertNotIn(autoreply.SCRIPT, self.storage.names())

    def test_foreignFirstLine(self) -> None:
        """A vacation script edited by hand (no settings line) reads as defaults,
        enabled when active."""
        self.storage.write(autoreply.SCRIPT, b'require "vacation"; vacation "x";\n')
        self.storage.activate(autoreply.SCRIPT)
        self.assertEqual(autoreply.read(self.storage),
                         autoreply.VacationSettings(enabled=True))
