"""tests.processguard: the check that no test leaves a process running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from tests import processguard
from tests.support import ROOT


def waitFor(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll the callable C{condition} until it is true or C{timeout} seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


class DescendantsTests(SynchronousTestCase):
    """What the guard counts as a process of ours that is still running."""

    def setUp(self) -> None:
        """Only where /proc describes the processes (Linux)."""
        if not os.path.exists(f"/proc/{os.getpid()}/stat"):
            raise self.skipTest("needs /proc (Linux)")

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        """Start C{argv}; it is killed and waited for at the end of the test."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            assert proc.stdout is not None
            proc.stdout.close()

        self.addCleanup(stop)
        return proc

    def test_childSeenWithItsCommandLine(self) -> None:
        """A running child is found with its command line; killed, it is gone."""
        proc = self.spawn("sleep", "60")
        # Right after exec the kernel may show an empty command line for a moment.
        deadline = time.monotonic() + 10
        while processguard.descendants().get(proc.pid) != "sleep 60":
            self.assertLess(time.monotonic(), deadline, processguard.descendants())
            time.sleep(0.05)
        self.assertEqual(processguard.leftOver(grace=0), {proc.pid: "sleep 60"})
        processguard.kill([proc.pid])
        proc.wait(10)
        self.assertNotIn(proc.pid, processguard.descendants())

    def test_earlierProcessesNotCounted(self) -> None:
        """leftOver() ignores the processes that were there before."""
        proc = self.spawn("sleep", "60")
        self.assertEqual(processguard.leftOver([proc.pid], grace=0), {})

    def test_zombieNotCounted(self) -> None:
        """A child that exited but was not waited for runs nothing: it is not counted."""
        proc = self.spawn("true")
        stat = f"/proc/{proc.pid}/stat"

        def zombie() -> bool:
            with open(stat) as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"

        self.assertTrue(waitFor(zombie))
        self.assertNotIn(proc.pid, processguard.descendants())

    def test_exitWithinGraceNotCounted(self) -> None:
        """A process that ends within the grace period is not left over."""
        proc = self.spawn("sleep", "0.3")
        started = time.monotonic()
        self.assertEqual(processguard.leftOver(grace=10), {})
        self.assertLess(time.monotonic() - started, 9)
        proc.wait(10)

    def test_orphanAdopted(self) -> None:
        """As a child subreaper, we still see a process whose parent has exited."""
        self.assertTrue(processguard.enableSubreaper())
        shell = self.spawn("sh", "-c", "sleep 60 & echo $!")
        assert shell.stdout is not None
        orphan = int(shell.stdout.readline())
        shell.wait(10)
        try:
            self.assertEqual(processguard.descendants().get(orphan), "sleep 60")
        finally:
            processguard.kill([orphan])
            os.waitpid(orphan, 0)


class TrialRunTests(SynchronousTestCase):
    """The end-of-run check that tests/__init__.py installs under trial."""

    def test_leftProcessFailsTheRun(self) -> None:
        """A process left running fails the run (status 1), is named, and is killed."""
        code = ("import subprocess, sys\n"
                "from tests import processguard\n"
                "processguard.installForTrial(grace=0.5)\n"
                "p = subprocess.Popen(['sleep', '61'])\n"
                "print(p.pid, flush=True)\n"
                "sys.exit(0)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
        self.assertEqual(done.returncode, 1, done.stderr)
        pid = int(done.stdout.split()[0])
        self.assertIn("left these processes running", done.stderr)
        self.assertIn(f"pid {pid}: sleep 61", done.stderr)
        self.assertTrue(waitFor(lambda: pid not in processguard.descendants()))
        try:  # adopted by this process when it is a child subreaper: reap it
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def test_cleanRunUnchanged(self) -> None:
        """A run that leaves nothing keeps its own exit status."""
        code = ("import subprocess, sys\n"
                "from tests import processguard\n"
                "processguard.installForTrial(grace=0.5)\n"
                "subprocess.run(['true'])\n"
                "sys.exit(0)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
        self.assertEqual((done.returncode, done.stderr), (0, ""))
