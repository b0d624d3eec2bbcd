"""The type checker over the rooms that are clean: mypy, strict where the house issue
asks for it (the store and the durable-file helpers, the errors every room raises).

A room joins L{STRICT} (or leaves L{NOT_YET}) once mypy finds nothing in it; a change that
breaks the types of a listed room fails here, as it would in review.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import missing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRICT = ["pymaild/store", "pymaild/files.py", "pymaild/errors.py", "pymaild/tuning.py"]
"""Checked with C{mypy --strict}."""

NOT_YET = ["pymaild/imap/account.py", "pymaild/imap/dispatch.py",
           "pymaild/imap/fetchcmd.py", "pymaild/imap/framing.py", "pymaild/imap/idle.py",
           "pymaild/imap/mailbox.py", "pymaild/imap/mailboxes.py", "pymaild/imap/search.py",
           "pymaild/imap/selected.py", "pymaild/imap/server.py", "pymaild/imap/session.py",
           "pymaild/pop3/lines.py", "pymaild/pop3/sender.py", "pymaild/pop3/server.py",
           "pymaild/smtp/delivery.py", "pymaild/smtp/esmtpclient.py", "pymaild/smtp/mx.py",
           "pymaild/smtp/relay.py", "pymaild/smtp/relaysession.py",
           "pymaild/tap.py", "pymaild/workers.py"]
"""The modules mypy still finds errors in; every other module of C{pymaild/} (a new one
included) is checked with mypy's defaults (the configuration in C{setup.cfg})."""


class MypyTests(SynchronousTestCase):
    """mypy finds no error in the listed rooms."""

    def runMypy(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run mypy with C{args} from the top of the tree (skip if it is missing)."""
        if importlib.util.find_spec("mypy") is None:
            missing("mypy", "pip install mypy")
        if importlib.util.find_spec("mypy_zope") is None:
            missing("mypy-zope (setup.cfg's mypy plugin)", "pip install mypy-zope")
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull,
             *args],
            cwd=ROOT, capture_output=True, text=True, timeout=600)

    def mypy(self, *args: str) -> None:
        """Run mypy with C{args}; fail with its report unless it finds nothing."""
        proc = self.runMypy(*args)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_strictRooms(self) -> None:
        """C{mypy --strict} over L{STRICT} succeeds."""
        self.mypy("--strict", *STRICT)

    def test_wholeTree(self) -> None:
        """C{mypy} over C{pymaild/}, but for L{NOT_YET}, succeeds."""
        exclude = "|".join("^" + re.escape(path) + "$" for path in NOT_YET)
        self.mypy("--exclude", exclude, "pymaild")

    def test_notYetHaveErrors(self) -> None:
        """Each module of L{NOT_YET} exists and still has an error: one mypy has made
        clean leaves the list, so the check covers it from then on."""
        for path in NOT_YET:
            self.assertTrue(os.path.exists(os.path.join(ROOT, path)), path)
        proc = self.runMypy("pymaild")
        failing = {line.split(":", 1)[0] for line in proc.stdout.splitlines()
                   if ": error:" in line}
        self.assertEqual(sorted(set(NOT_YET) - failing), [])
