"""IMAP extensions of issue 16 at the wire level: the RFCs' examples, bad input (the
RFC's answer, then a command proving the session is still in sync), and what each
extension adds to CAPABILITY."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imap_helpers import IMAPEnv, tagged


class IdTests(SynchronousTestCase):
    """ID (RFC 2971) answers with the server's fields and OK, never BAD."""

    CASES = (
        b'ID ("name" "sodr" "version" "19.34" "vendor" "Pink Floyd Music Limited")',
        b"ID NIL",
        b"ID",
        b"ID ",
        b'ID ("name")',
        b'ID ("name" "x" "os"',
        b"ID (((((((((",
        b"ID " + b"(" * 5000,
        b'ID ("k" "v" ' * 40 + b")",
        b"ID garbage \x01\x7f",
        b'ID ("' + b"x" * 60000 + b'" NIL)',
    )

    def _check(self, c: object) -> None:
        for line in self.CASES:
            out = c.cmd(line)  # type: ignore[attr-defined]
            tag = c.lastTag  # type: ignore[attr-defined]
            self.assertIn(b'* ID ("name" "pymaild"', out, line[:40])
            self.assertTrue(tagged(out, tag).startswith(tag + b" OK "), (line[:40], out))
            self.assertIn(b" OK ", c.cmd("NOOP"))  # type: ignore[attr-defined]

    def test_beforeLogin(self) -> None:
        """Every form, good or bad, before login: untagged ID, tagged OK, still in sync."""
        env = IMAPEnv(self)
        c = env.connect()
        c.take()
        self._check(c)

    def test_afterLogin(self) -> None:
        """The same in the authenticated and selected states."""
        env = IMAPEnv(self)
        self._check(env.login())
        self._check(env.selected())

    def test_literals(self) -> None:
        """Fields sent as literals (synchronising and LITERAL+) are read to the end of the
        command; nothing of them is taken for a new command."""
        env = IMAPEnv(self)
        c = env.login()
        out = c.send(b"a ID ({4}\r\n")
        self.assertIn(b"+ ", out)
        out = c.send(b"name {9+}\r\nb NOOP\r\n)\r\nc NOOP\r\n")
        self.assertIn(b"a OK", out)
        self.assertNotIn(b"b OK", out)
        self.assertIn(b"c OK", out)
