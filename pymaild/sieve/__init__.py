"""Sieve (RFC 5228 and extensions): compile, check and run users' mail filters.

C{grammar} parses, C{checker} compiles and validates (the extensions, the limits),
C{interpreter} decides a message's actions (C{actions}) without performing them;
delivery carries them out.
"""
