"""I18NLEVEL=1 against Dovecot 2.3, which advertises it too: over one Maildir tree,
SEARCH with UTF-8 strings that differ from the messages in case, diacritics' encoding,
width or ligatures, and SORT (SUBJECT) of such subjects, answer as Dovecot's do.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import check, serversOverOneTree, session
from tests.test_imap_helpers import ALICE
from tests.test_imap_i18n import SUBJECTS, message

NEEDLES = [("SUBJECT", "ÉTÉ"), ("SUBJECT", "e\u0301te\u0301"), ("SUBJECT", "STRASSE"),
           ("SUBJECT", "straße"), ("SUBJECT", "FULL"), ("SUBJECT", "ｆｕｌｌ"),
           ("SUBJECT", "file"), ("SUBJECT", "ete"), ("BODY", "résumé"), ("BODY", "ça va"),
           ("TEXT", "RÉSUMÉ"), ("SUBJECT", "report"), ("SUBJECT", "ﬁLE"),
           ("SUBJECT", "STRAßE")]


def answers(m: imaplib.IMAP4) -> dict[str, Any]:
    """Each L{NEEDLES} search and SORT (SUBJECT), by sequence number."""
    check(m.select("INBOX"))
    out: dict[str, Any] = {}
    for key, text in NEEDLES:
        m.literal = text.encode()
        out[f"{key} {text}"] = check(m.search("UTF-8", key))
    out["SORT"] = check(m.sort("(SUBJECT)", "UTF-8", "ALL"))
    out["REVERSE SORT"] = check(m.sort("(REVERSE SUBJECT)", "UTF-8", "ALL"))
    return out


class DovecotI18NTests(TestCase):
    """pymaild's i;unicode-casemap answers as Dovecot's."""

    timeout = 180

    @defer.inlineCallbacks
    def test_sameAnswersAsDovecot(self) -> Any:
        """Every search and both sorts give Dovecot's answer; some searches find
        something (the test is not vacuous)."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-i18n-")
        folder = pymaild.store.account(ALICE).folder("INBOX")
        base = time.time() - 86400
        for i, s in enumerate(SUBJECTS):
            folder.append(message(s, "Ça va? Résumé." if i == 2 else "Plain body."), [],
                          base + i)
        dovecot.start()
        theirs = yield session(dovecot.port, answers)
        ours = yield session(pymaild.port, answers)
        self.assertEqual({k: v for k, v in ours.items() if theirs.get(k) != v}, {})
        self.assertEqual(theirs["SUBJECT ÉTÉ"], [b"1"])
