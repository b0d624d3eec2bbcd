"""pytest settings: run from a scratch directory so trial's mktemp() leaves no files here;
fail any test that leaves a process running (L{tests.processguard}), and under CI
(C{CI=true}) any test skipped for want of an installed program."""

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

from tests import processguard  # noqa: E402
from tests.support import MISSING, underCI  # noqa: E402

_BEFORE = pytest.StashKey[set[int]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Keep the checkout importable, then work in a fresh temporary directory; adopt
    orphaned descendants so the process guard sees them."""
    os.chdir(tempfile.mkdtemp(prefix="pymaild-tests-"))
    processguard.enableSubreaper()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, None]:
    """Note the processes alive before the test."""
    item.stash[_BEFORE] = set(processguard.descendants())
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Fail a test whose processes outlive it (then kill them); under CI, fail a test
    skipped because a program it drives is not installed."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if (underCI() and report.skipped and call.excinfo is not None
            and MISSING in str(call.excinfo.value)):
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI, which must install what the tests use: "
                           f"{call.excinfo.value}")
    if report.when != "teardown":
        return
    stray = processguard.leftOver(item.stash.get(_BEFORE, set()))
    if stray:
        processguard.kill(stray)
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} left these processes running (now killed):\n"
                           + processguard.describe(stray))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when any process started during it is still alive (and kill it)."""
    stray = processguard.leftOver()
    if stray:
        processguard.kill(stray)
        sys.stderr.write("\nFAILED: the test session left these processes running "
                         "(now killed):\n" + processguard.describe(stray) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
