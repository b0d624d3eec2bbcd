"""SORT (RFC 5256, SORT=DISPLAY RFC 5957, ESORT RFC 5267) and ESEARCH (RFC 4731)
against Dovecot, the reference: both servers
serve one Maildir tree (L{tests.interop.test_dovecot.serversOverOneTree}) holding
messages built to exercise every sort key (base subjects with Re:/Fwd:/[list] blobs,
(fwd) trailers, [fwd: ...] wrappers and encoded words; dates in other time zones,
missing and unparseable; groups, display names, missing addresses; equal values that
fall back to sequence order), and every criterion, alone, reversed and combined, must
give the same order from both, by sequence number and by UID.

Without Dovecot the tests are skipped, except under CI (C{CI=true}) where a missing
Dovecot is a failure.
"""

from __future__ import annotations

import imaplib
import re
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.test_dovecot import check, serversOverOneTree, session
from tests.test_imap_helpers import ALICE

SUBJECTS = [
    "Hello", "Re: hello", "RE: [list] Hello", "Fwd: Hello (fwd)", "[fwd: Re: hello]",
    "Re: Re:  re: Zebra", "[list] [other] apple", "=?utf-8?q?=C3=A9t=C3=A9?=", "",
    None, "Fw: banana", "  leading spaces", "[blob only]", "Re: [x] Re: Yak",
    "mango (fwd) (fwd)", "Apple", "apple", "re:apple", "Re : odd", "fwd:[y]: kiwi",
]
FROMS = [
    "Carol <carol@remote.example>", "bob@b.example", '"Zed, Jr." <zed@z.example>',
    "=?utf-8?q?=C3=84nne?= <anne@a.example>", "undisclosed-recipients:;",
    "Group: dan@d.example, eve@e.example;", None, "ALPHA@x.example", "alpha@y.example",
    "(Comment Only) frank@f.example",
]
DATES = [
    "Mon, 7 Feb 1994 21:52:25 -0800", "Tue, 8 Feb 1994 05:52:25 +0000",
    "8 Feb 1994 06:00:00 +0100", "not a date", None, "Wed, 31 Dec 1969 23:59:59 -0100",
    "Sun, 01 Jan 2023 00:00:00 +1400", "Sat, 31 Dec 2022 10:00:00 -1000",
]


def message(i: int) -> bytes:
    """Message C{i} of the test folder: its headers cycle through the lists above."""
    lines = []
    frm = FROMS[i % len(FROMS)]
    if frm is not None:
        lines.append(f"From: {frm}")
    to = FROMS[(i * 3 + 1) % len(FROMS)]
    if to is not None:
        lines.append(f"To: {to}")
    if i % 3 == 0:
        lines.append(f"Cc: {FROMS[(i + 5) % len(FROMS)] or 'x@cc.example'}")
    subject = SUBJECTS[i % len(SUBJECTS)]
    if subject is not None:
        lines.append(f"Subject: {subject}")
    date = DATES[i % len(DATES)]
    if date is not None:
        lines.append(f"Date: {date}")
    lines.append(f"Message-ID: <m{i}@sort.example>")
    body = "x" * ((i * 37) % 200)
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


CRITERIA = [
    "SUBJECT", "REVERSE SUBJECT", "FROM", "TO", "CC", "DATE", "REVERSE DATE", "ARRIVAL",
    "SIZE", "REVERSE SIZE", "DISPLAYFROM", "DISPLAYTO", "SUBJECT DATE",
    "SUBJECT REVERSE DATE", "FROM REVERSE SIZE", "CC SUBJECT ARRIVAL",
    "REVERSE ARRIVAL", "DISPLAYFROM REVERSE SUBJECT",
]


def esort(m: imaplib.IMAP4, command: str, options: str, criteria: str) -> Any:
    """An ESORT (RFC 5267) answer without its tag: C{[UID] MIN 3 ...}."""
    args = ["RETURN", f"({options})", f"({criteria})", "UTF-8", "ALL"]
    if command == "UID SORT":
        typ, data = m._simple_command("UID", "SORT", *args)
    else:
        typ, data = m._simple_command("SORT", *args)
    assert typ == "OK", (typ, data)
    typ, data = m._untagged_response(typ, data, "ESEARCH")
    return [re.sub(rb'^\(TAG "[^"]*"\) ?', b"", d) for d in data if d]


def esearch(m: imaplib.IMAP4, command: str, options: str, keys: str) -> Any:
    """An ESEARCH (RFC 4731) answer without its tag."""
    args = ["RETURN", f"({options})", *keys.split()]
    if command == "UID SEARCH":
        typ, data = m._simple_command("UID", "SEARCH", *args)
    else:
        typ, data = m._simple_command("SEARCH", *args)
    assert typ == "OK", (typ, data)
    typ, data = m._untagged_response(typ, data, "ESEARCH")
    return [re.sub(rb'^\(TAG "[^"]*"\) ?', b"", d) for d in data if d]


def sorts(m: imaplib.IMAP4) -> dict[str, Any]:
    """Every criterion's SORT and UID SORT result (and a SORT with search keys)."""
    check(m.select("INBOX"))
    out: dict[str, Any] = {}
    for crit in CRITERIA:
        out[crit] = check(m.sort(f"({crit})", "UTF-8", "ALL"))
        typ, data = m.uid("SORT", f"({crit})", "UTF-8", "ALL")
        out["UID " + crit] = (typ, data)
    for opts in ("MIN MAX COUNT ALL", "MIN", "ALL", "COUNT", ""):
        for crit in ("SUBJECT", "REVERSE DATE", "SIZE"):
            for cmd in ("SORT", "UID SORT"):
                out[f"E{cmd} ({opts}) {crit}"] = esort(m, cmd, opts, crit)
    for opts in ("MIN MAX COUNT ALL", "MIN", "MAX", "ALL", "COUNT", ""):
        for keys in ("ALL", "UNSEEN", "SMALLER 100", "SUBJECT nothing-like-this"):
            for cmd in ("SEARCH", "UID SEARCH"):
                out[f"E{cmd} ({opts}) {keys}"] = esearch(m, cmd, opts, keys)
    out["filtered"] = check(m.sort("(SUBJECT)", "US-ASCII", "UNSEEN", "SMALLER", "150"))
    out["none"] = check(m.sort("(SUBJECT)", "UTF-8", "SUBJECT", '"not in mailbox"'))
    return out


class DovecotSortTests(TestCase):
    """pymaild's SORT orders as Dovecot's does."""

    timeout = 180

    @defer.inlineCallbacks
    def test_sameOrderAsDovecot(self) -> Any:
        """40 messages, 18 criteria lists, SORT and UID SORT, ESORT's and ESEARCH's
        return options, plus two with search keys: pymaild's answers equal Dovecot's."""
        pymaild, dovecot = serversOverOneTree(self, "pymaild-sort-")
        store = pymaild.store
        folder = store.account(ALICE).folder("INBOX")
        base = time.time() - 10 * 86400
        for i in range(40):
            # Internal dates out of delivery order, two of them equal.
            when = base + ((i * 7919) % 40) * 3600 if i != 5 else base
            folder.append(message(i), ["\\Seen"] if i % 4 == 0 else [], when)
        dovecot.start()
        theirs = yield session(dovecot.port, sorts)
        ours = yield session(pymaild.port, sorts)
        self.assertEqual(set(ours), set(theirs))
        for key in theirs:
            self.assertEqual(ours[key], theirs[key], key)
        self.assertNotEqual(theirs["SUBJECT"], theirs["REVERSE SUBJECT"])
        self.assertEqual(len(theirs["SUBJECT"][0].split()), 40)
