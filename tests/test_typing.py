"""The type checker over the rooms that are clean: mypy, strict where the house issue
asks for it (the store and the durable-file helpers, the errors every room raises).

A room joins L{STRICT} (or L{CHECKED}) once mypy finds nothing in it; a change that
breaks the types of a listed room fails here, as it would in review.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import missing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRICT = ["pymaild/store", "pymaild/files.py", "pymaild/errors.py", "pymaild/tuning.py"]
"""Checked with C{mypy --strict}."""

CHECKED = ["pymaild/auth", "pymaild/mailauth", "pymaild/spam", "pymaild/address.py",
           "pymaild/config.py",
           "pymaild/metrics.py", "pymaild/periodic.py", "pymaild/quotarules.py",
           "pymaild/reload.py", "pymaild/runas.py", "pymaild/shutdown.py",
           "pymaild/status.py", "pymaild/threads.py",
           # smtp/ but for the relay and its DANE and HTTPS clients (not clean yet)
           "pymaild/smtp/__init__.py", "pymaild/smtp/aliases.py", "pymaild/smtp/checks.py",
           "pymaild/smtp/copies.py", "pymaild/smtp/delivery.py", "pymaild/smtp/dsn.py",
           "pymaild/smtp/fastreply.py", "pymaild/smtp/framing.py",
           "pymaild/smtp/handoff.py", "pymaild/smtp/lmtp.py", "pymaild/smtp/login.py",
           "pymaild/smtp/mtasts.py", "pymaild/smtp/queue.py", "pymaild/smtp/replies.py",
           "pymaild/smtp/resolver.py", "pymaild/smtp/server.py", "pymaild/smtp/spool.py",
           "pymaild/smtp/srs.py", "pymaild/smtp/tlsrpt.py", "pymaild/smtp/transaction.py"]
"""Checked with mypy's defaults (the configuration in C{setup.cfg})."""


class MypyTests(SynchronousTestCase):
    """mypy finds no error in the listed rooms."""

    def mypy(self, *args: str) -> None:
        """Run mypy with C{args} from the top of the tree; fail with its report."""
        if importlib.util.find_spec("mypy") is None:
            missing("mypy", "pip install mypy")
        proc = subprocess.run(
            [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull,
             *args],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_strictRooms(self) -> None:
        """C{mypy --strict} over L{STRICT} succeeds."""
        self.mypy("--strict", *STRICT)

    def test_checkedRooms(self) -> None:
        """C{mypy} over L{CHECKED} succeeds."""
        self.mypy(*CHECKED)
