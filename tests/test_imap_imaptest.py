"""Wire checks taken from Dovecot's imaptest compliance files, for behaviour those
files found wrong in pymaild (each test names its file)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.test_imap_helpers import IMAPEnv, makeMessage


class ListAtomsTests(SynchronousTestCase):
    """imaptest's atoms: LIST with every atom character in the pattern."""

    def test_patternNotModifiedUtf7(self) -> None:
        """A LIST or LSUB pattern that is not modified UTF-7 (C{&'}) matches nothing and
        is answered OK, as Dovecot does; the session goes on."""
        env = IMAPEnv(self)
        env.deliver(makeMessage("a"))
        c = env.login()
        c.ok("CREATE Folder")
        out = c.ok("LIST \"\" !#$$&'+,-.0123456789:;<=>?@^_`|[}%*")
        self.assertNotIn(b"* LIST", out)
        out = c.ok("LSUB \"\" &'*")
        self.assertNotIn(b"* LSUB", out)
        self.assertIn(b'"Folder"', c.ok('LIST "" F%'))
