"""The uidlist records pymaild writes for copies (with Dovecot's C{G} field, the
message GUID, which keeps a copied or moved message's EMAILID) are read by Dovecot: the
copies keep their UIDs, flags and contents there, and Dovecot's own copies in the
same folder are read back by pymaild, the EMAILIDs of the first ones unchanged.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import check, serversOverOneTree, session
from tests.test_imap_helpers import ALICE, makeMessage


def contents(m: imaplib.IMAP4) -> Any:
    """UID, flags and body of every message of C{Target}."""
    check(m.select("Target"))
    data = check(m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])"))
    return sorted((d[0].split(b" BODY")[0], d[1]) for d in data if isinstance(d, tuple))


class DovecotCopyGuidTests(TestCase):
    """Dovecot and pymaild share the uidlist of copied messages."""

    timeout = 180

    @defer.inlineCallbacks
    def test_copiesReadByBoth(self) -> Any:
        """pymaild COPYs and MOVEs into a folder, Dovecot sees the same messages and
        copies one more in; pymaild then reads all four, the first three's EMAILIDs as
        before."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-objectid-")
        for subject in ("one", "two", "three"):
            pymaild.store.deliver([ALICE], makeMessage(subject))

        def viaPymaild(m: imaplib.IMAP4) -> Any:
            check(m.create("Target"))
            check(m.select("INBOX"))
            check(m.store("1", "+FLAGS", "(\\Flagged)"))
            check(m.copy("1:2", "Target"))
            check(m._simple_command("MOVE", "3", "Target"))
            check(m.select("Target"))
            return check(m.uid("FETCH", "1:*", "(EMAILID)"))

        ours = yield session(pymaild.port, viaPymaild)
        before = yield session(pymaild.port, contents)
        dovecot.start()
        theirs = yield session(dovecot.port, contents)
        self.assertEqual(theirs, before)
        self.assertEqual(len(theirs), 3)

        def viaDovecot(m: imaplib.IMAP4) -> Any:
            check(m.select("Target"))
            check(m.copy("1", "Target"))

        yield session(dovecot.port, viaDovecot)
        dovecot.handOver()

        def emailIds(m: imaplib.IMAP4) -> Any:
            check(m.select("Target"))
            return check(m.uid("FETCH", "1:*", "(EMAILID)"))

        after = yield session(pymaild.port, emailIds)
        first = re.findall(rb"EMAILID \((M[0-9a-f]{24})\)", b" ".join(ours))
        now = re.findall(rb"EMAILID \((M[0-9a-f]{24})\)", b" ".join(after))
        self.assertEqual(now[:3], first)
        self.assertEqual(len(now), 4)
