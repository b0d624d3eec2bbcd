"""Tests that twistd finds the pymaild plugin and that it points at pymaild.tap."""

from __future__ import annotations

import os

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PluginTests(SynchronousTestCase):
    """The twistd plugin."""

    def test_found(self) -> None:
        """getPlugins(IServiceMaker) yields a 'pymaild' maker whose options are pymaild.tap's."""
        import pymaild.tap

        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("pymaild", makers)
        self.assertIs(makers["pymaild"].options, pymaild.tap.Options)

    def test_noInitFiles(self) -> None:
        """No __init__.py shadows Twisted's package or hides the plugin directory."""
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "plugins", "__init__.py")))
