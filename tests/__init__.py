"""Tests for pymaild; run with ``trial tests`` or ``pytest``."""
