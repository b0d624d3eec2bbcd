"""pytest settings: run from a scratch directory so trial's mktemp() leaves no files here;
under CI (C{CI=true}) fail any test skipped for want of an installed program."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Generator
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support import MISSING, underCI  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    """Work in a fresh temporary directory (the checkout stays importable)."""
    os.chdir(tempfile.mkdtemp(prefix="pymaild-tests-"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Under CI, fail a test skipped because a program it drives is not installed."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if (underCI() and report.skipped and call.excinfo is not None
            and MISSING in str(call.excinfo.value)):
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI, which must install what the tests use: "
                           f"{call.excinfo.value}")
