"""Tests for pymaild; run with ``trial tests`` or ``pytest``.

Under trial, a run that leaves a process behind fails at its end, naming the processes
(L{tests.processguard}); under pytest, C{tests/conftest.py} checks after every test.
"""

import sys

if "twisted.scripts.trial" in sys.modules and "pytest" not in sys.modules:
    from tests import processguard

    processguard.installForTrial()
