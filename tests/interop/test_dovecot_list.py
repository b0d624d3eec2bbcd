"""LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819) against Dovecot, the reference:
both servers serve one Maildir tree with RFC 5258's example mailboxes and
subscriptions (one of them to a mailbox that does not exist, one to a name below a
missing parent) plus an implied parent, and every selection and return option, alone
and combined, with one or several patterns, must list the same names with the same
attributes and the same STATUS. SPECIAL-USE attributes are left out of the comparison:
the test's Dovecot has no special-use configuration.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import serversOverOneTree, session
from tests.test_imap_helpers import ALICE, makeMessage

FOLDERS = ["Fruit", "Fruit/Apple", "Fruit/Banana", "Tofu", "Vegetable",
           "Vegetable/Broccoli", "Vegetable/Corn", "Deep/Er/Est"]
SUBSCRIBED = ["INBOX", "Fruit/Banana", "Fruit/Peach", "Vegetable", "Vegetable/Broccoli",
              "Nuts/Pecan", "Deep/Er/Est"]
COMMANDS = [
    '"" "*"', '"" "%"', '(SUBSCRIBED) "" "*"', '(SUBSCRIBED) "" "%"',
    '(SUBSCRIBED RECURSIVEMATCH) "" "%"', '(SUBSCRIBED RECURSIVEMATCH) "" "*"',
    '(SUBSCRIBED RECURSIVEMATCH) "" "Deep/%"', '"" "%" RETURN (SUBSCRIBED)',
    '"" "*" RETURN (CHILDREN)', '"" "%" RETURN (SUBSCRIBED CHILDREN)',
    '"" ("INBOX" "Tofu" "Fruit/%")', '(REMOTE) "" "*"', '"Fruit/" "%"',
    '"" "%" RETURN (STATUS (MESSAGES UNSEEN UIDNEXT))', '"" "*" RETURN (STATUS (SIZE))',
    '(SUBSCRIBED) "" "*" RETURN (STATUS (MESSAGES))', '"" "Deep/%"', '"" ("%" "*/%")',
]
_SPECIAL = re.compile(rb" ?\\(?:Sent|Drafts|Trash|Junk|Archive)\b")
_QUOTED_ATOM = re.compile(rb'(^\* LIST \([^)]*\) "/" |^\* STATUS )"([A-Za-z0-9/]+)"( |$)')


def listings(m: imaplib.IMAP4) -> dict[str, Any]:
    """The LIST and STATUS lines each command gives, special-use attributes removed."""
    out: dict[str, Any] = {}
    for command in COMMANDS:
        tag = m._command("LIST", command)
        lines = []
        while True:
            line = m._get_line()
            if line.startswith(tag):
                assert b" OK " in line, (command, line)
                break
            line = _SPECIAL.sub(b"", line).replace(b"( ", b"(")
            line = _QUOTED_ATOM.sub(rb"\1\2\3", line)
            # Attribute and STATUS item order are free: compare them sorted.
            line = re.sub(rb"^(\* LIST \()([^)]*)", lambda m: m.group(1) + b" ".join(
                sorted(m.group(2).split())), line)
            line = re.sub(rb"^(\* STATUS \S+ \()([^)]*)", lambda m: m.group(1) + b" ".join(
                sorted(re.findall(rb"[A-Z]+ \d+", m.group(2)))), line)
            lines.append(line)
        # A LIST line and the STATUS after it are one entry; entries in name order
        # (Dovecot lists in directory order).
        entries: list[list[bytes]] = []
        for line in lines:
            if line.startswith(b"* STATUS ") and entries:
                entries[-1].append(line)
            else:
                entries.append([line])
        out[command] = sorted(entries, key=lambda e: re.sub(rb".*\) ", b"", e[0]))
    return out


class DovecotListTests(TestCase):
    """pymaild's LIST-EXTENDED and LIST-STATUS answers are Dovecot's."""

    timeout = 180
    maxDiff = None

    @defer.inlineCallbacks
    def test_sameListsAsDovecot(self) -> Any:
        """18 LIST commands: the same lines from both servers."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-list-")
        acct = pymaild.store.account(ALICE)
        acct.ensureSpecialFolders()
        for name in FOLDERS:
            acct.createFolder(name)
        for name in SUBSCRIBED:
            acct.subscribe(name)
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            if name in acct.listFolders():
                acct.unsubscribe(name)
        pymaild.store.deliver([ALICE], makeMessage("a"))
        pymaild.store.deliver([ALICE], makeMessage("b"), folder="Fruit/Apple")
        dovecot.start()
        theirs = yield session(dovecot.port, listings)
        ours = yield session(pymaild.port, listings)
        differ = {c: (ours[c], theirs[c]) for c in COMMANDS if ours[c] != theirs[c]}
        self.assertEqual(differ, {})
