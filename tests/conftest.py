"""pytest settings: run from a scratch directory so trial's mktemp() leaves no files here."""

from __future__ import annotations

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_sessionstart(session: object) -> None:
    """Keep the checkout importable, then work in a fresh temporary directory."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    os.chdir(tempfile.mkdtemp(prefix="pymaild-tests-"))
