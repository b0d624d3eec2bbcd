"""Interoperability tests that drive real mail clients against a real pymaild."""
