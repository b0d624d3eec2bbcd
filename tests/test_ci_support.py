"""Under CI (C{CI=true}) a test that lacks a program it drives fails instead of skipping.

L{tests.support.requireClient} and L{tests.support.missing} decide it for the helpers;
C{tests/conftest.py} catches, under pytest, any other skip whose reason says something
L{tests.support.MISSING}.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import support
from tests.support import ROOT

_SCRATCH = '''
from twisted.trial.unittest import SkipTest, TestCase


class T(TestCase):
    def test_lacksProgram(self):
        raise SkipTest("frobnicate is not installed (apt-get install frobnicate)")

    def test_otherSkip(self):
        raise SkipTest("root ignores file permissions")
'''


class MissingClientTests(SynchronousTestCase):
    """requireClient() and missing(): a skip outside CI, a failure under it."""

    def setCI(self, value: str | None) -> None:
        """Set C{CI} to C{value} (None: unset) for this test."""
        old = os.environ.get("CI")

        def restore() -> None:
            if old is None:
                os.environ.pop("CI", None)
            else:
                os.environ["CI"] = old

        self.addCleanup(restore)
        if value is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = value

    def test_installedClientFound(self) -> None:
        """An installed program's path is returned, under CI or not."""
        for value in (None, "true"):
            self.setCI(value)
            self.assertTrue(os.access(support.requireClient("sh"), os.X_OK))

    def test_missingClientSkipsOutsideCI(self) -> None:
        """Outside CI a missing program is a skip naming it and its package."""
        self.setCI(None)
        e = self.assertRaises(SkipTest, support.requireClient, "no-such-client-x", "pkg-x")
        self.assertEqual(str(e), "no-such-client-x is not installed (apt-get install pkg-x)")

    def test_missingClientFailsUnderCI(self) -> None:
        """Under CI the same is an AssertionError: the test fails."""
        self.setCI("true")
        e = self.assertRaises(AssertionError, support.requireClient, "no-such-client-x")
        self.assertIn("no-such-client-x is not installed (apt-get install no-such-client-x)",
                      str(e))
        self.assertRaises(AssertionError, support.missing, "lib", "pip install lib")


class ConftestTests(SynchronousTestCase):
    """Under pytest, a skip for a missing program fails under CI whoever raised it."""

    def runPytest(self, ci: bool) -> tuple[int, str]:
        """Run pytest with this repository's conftest on a scratch module of two skips."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        with open(os.path.join(path, "test_scratch.py"), "w") as f:
            f.write(_SCRATCH)
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("CI", None)
        if ci:
            env["CI"] = "true"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                               "tests.conftest", "-p", "no:cacheprovider",
                               os.path.join(path, "test_scratch.py")],
                              cwd=path, env=env, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    def test_skipsOutsideCI(self) -> None:
        """Outside CI both tests skip and the run passes."""
        code, out = self.runPytest(ci=False)
        self.assertEqual(code, 0, out)
        self.assertIn("2 skipped", out)

    def test_missingProgramFailsUnderCI(self) -> None:
        """Under CI the missing program's skip fails the run; the other stays a skip."""
        code, out = self.runPytest(ci=True)
        self.assertEqual(code, 1, out)
        self.assertIn("1 failed, 1 skipped", out)
        self.assertIn("skipped under CI, which must install what the tests use: "
                      "frobnicate is not installed", out)


class CIScriptTests(SynchronousTestCase):
    """.ci/run ends with exactly the README's test command."""

    def test_endsWithReadmeCommand(self) -> None:
        """The last line of .ci/run is the command under 'Run the tests::' in README.rst,
        and the script stops at the first failing command (so pytest's status, 5 for no
        tests collected included, is the script's)."""
        with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
            readme = f.read().splitlines()
        at = readme.index("Run the tests::")
        command = next(line.strip() for line in readme[at + 1:] if line.strip())
        with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
            script = [line for line in f.read().splitlines() if line.strip()]
        self.assertEqual(script[-1], command)
        self.assertIn("pytest", command)
        self.assertIn("set -euo pipefail", script)
