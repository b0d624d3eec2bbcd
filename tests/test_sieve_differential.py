"""Differential tests: pymaild's Sieve interpreter against Pigeonhole's C{sieve-test}.

Every case of the corpus (C{tests/sieve_corpus/cases.txt}, one test method each) runs
through both, and the actions each decides must be the same: the folders stored into
with their flags (implicit keep included), the redirect addresses, the reject reason, the
vacation (period, subject, reason), and whether the script failed to compile or failed
at run time (then both keep the message in INBOX). See L{tests.sieve_support}.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.trial.unittest import TestCase

from tests.sieve_support import (
    Case,
    Pigeonhole,
    corpusIncludes,
    decide,
    findSieveTest,
    loadCorpus,
    messageBytes,
)

CASES = loadCorpus()


class CorpusTests(TestCase):
    """The corpus itself."""

    def test_size(self) -> None:
        """The corpus has at least 100 cases, each with a distinct name and a message."""
        self.assertGreaterEqual(len(CASES), 100)
        self.assertEqual(len({c.name for c in CASES}), len(CASES))
        for case in CASES:
            self.assertTrue(messageBytes(case))

    def test_coverage(self) -> None:
        """Every extension pymaild offers that Pigeonhole also has is required somewhere
        in the corpus (ereject is not in Pigeonhole 0.5; it has unit tests instead)."""
        from pymaild.sieve.checker import EXTENSIONS

        text = b"\n".join(c.script for c in CASES).decode()
        for ext in EXTENSIONS:
            if ext == "ereject":
                continue
            self.assertIn(f'"{ext}"', text, ext)


class DifferentialTests(TestCase):
    """One test per corpus case: pymaild decides what Pigeonhole decides."""

    def setUp(self) -> None:
        """Find sieve-test and give it a private configuration."""
        self.pigeonhole = Pigeonhole(findSieveTest())
        self.addCleanup(self.pigeonhole.cleanUp)
        self.includes = corpusIncludes()
        self.globalIncludes = corpusIncludes(folder="global")

    def compare(self, case: Case) -> None:
        """Run C{case} through both and compare the decisions."""
        message = messageBytes(case)
        theirs = self.pigeonhole.decide(case.script, message, case.sender, case.recipient,
                                        self.includes, self.globalIncludes)
        ours = decide(case.script, message, case.sender, case.recipient, self.includes,
                      self.globalIncludes)
        self.assertEqual(ours, theirs, f"case {case.name}")


class StorageTests(TestCase):
    """Pigeonhole runs the scripts pymaild stores, through the same active link."""

    def test_activeLink(self) -> None:
        """A script stored and activated by L{ScriptStorage} is what sieve-test runs
        through C{~/.dovecot.sieve}, with the same decision."""
        import os

        from pymaild.sieve.storage import ScriptStorage

        pigeonhole = Pigeonhole(findSieveTest())
        self.addCleanup(pigeonhole.cleanUp)
        home = os.path.join(pigeonhole.work, "home")
        storage = ScriptStorage(home)
        script = b'require ["fileinto", "imap4flags"];\naddflag "$Linked"; fileinto "Linked";\n'
        storage.write("main", script)
        storage.activate("main")
        link = os.path.join(home, ".dovecot.sieve")
        with open(link, "rb") as f:
            self.assertEqual(f.read(), script)
        case = CASES[0]
        message = messageBytes(case)
        theirs = pigeonhole.decideFile(link, message, case.sender, case.recipient)
        ours = decide(script, message, case.sender, case.recipient)
        self.assertEqual(ours, theirs)
        self.assertEqual(theirs["stores"], [("Linked", ("$Linked",))])


def _method(case: Case) -> Any:
    """A test method for one case."""

    def test(self: DifferentialTests) -> None:
        self.compare(case)

    test.__doc__ = f"Corpus case {case.name!r} ({case.message}): the same actions."
    return test


for _case in CASES:
    setattr(DifferentialTests, "test_" + re.sub(r"\W", "_", _case.name), _method(_case))
del _case
