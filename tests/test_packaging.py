"""What ``pip install .`` ships: every package of the tree, or the server cannot start."""

from __future__ import annotations

import configparser
import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackagesTests(SynchronousTestCase):
    """setup.cfg's package list matches the source tree."""

    def test_everyPackageListed(self) -> None:
        """Each directory under pymaild/ with an __init__.py is in options.packages (a
        missing one installs a server that fails at start with ModuleNotFoundError)."""
        cfg = configparser.ConfigParser()
        cfg.read(os.path.join(ROOT, "setup.cfg"))
        listed = set(cfg["options"]["packages"].split())
        found = set()
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "pymaild")):
            if "__init__.py" in files and "__pycache__" not in dirpath:
                found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
        self.assertEqual(sorted(found - listed), [])
