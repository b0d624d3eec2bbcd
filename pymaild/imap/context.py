"""CONTEXT=SEARCH (RFC 5267 section 4): searches that stay up to date.

C{SEARCH RETURN (UPDATE ...)} answers as usual and then keeps the search (one
L{Update} per tag, at most L{MAX_UPDATES} per session, only while the mailbox stays
selected): whenever the session may send untagged responses and the mailbox changed,
the search runs again and the difference is sent as C{* ESEARCH (TAG "t") [UID]
REMOVEFROM (0 set) ADDTO (0 set)} (position 0: a SEARCH result has no order, as in
Dovecot). Messages about to be reported expunged leave the results first, their
REMOVEFROM sent before the EXPUNGE lines so that sequence numbers still name them.
C{CANCELUPDATE "t" ...} ends updates. PARTIAL and CONTEXT, the section's other return
options, are in L{pymaild.imap.esearch} (CONTEXT is a hint and changes nothing).

SORT RETURN (UPDATE) is answered without updates and C{* NO [NOUPDATE "t"]} (section
4.3.1 allows refusing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer

from pymaild.imap.search import runSearch
from pymaild.imap.syntax import compressUids

CAPABILITY = b"CONTEXT=SEARCH"
MAX_UPDATES = 10
"""Most updating searches one session keeps."""


class Update:
    """One kept search: its tag, whether it answers UIDs, its query and the UIDs that
    match now."""

    __slots__ = ("tag", "uid", "query", "uids")

    def __init__(self, tag: bytes, uid: bool, query: tuple[Any, ...], uids: set[int]) -> None:
        self.tag = tag
        self.uid = uid
        self.query = query
        self.uids = uids


def _line(update: Update, removed: Sequence[int], added: Sequence[int]) -> bytes:
    """The ESEARCH update line (with CRLF) for sorted ids."""
    out = b'* ESEARCH (TAG "' + update.tag + b'")'
    if update.uid:
        out += b" UID"
    if removed:
        out += b" REMOVEFROM (0 " + compressUids(removed) + b")"
    if added:
        out += b" ADDTO (0 " + compressUids(added) + b")"
    return out + b"\r\n"


class Contexts:
    """The updating searches of one session's selected mailbox."""

    __slots__ = ("updates",)

    def __init__(self) -> None:
        self.updates: dict[bytes, Update] = {}

    def add(self, tag: bytes, uid: bool, query: tuple[Any, ...], uids: Sequence[int]
            ) -> bool:
        """Keep a search; False when the session has L{MAX_UPDATES} already."""
        if len(self.updates) >= MAX_UPDATES and tag not in self.updates:
            return False
        self.updates[tag] = Update(tag, uid, query, set(uids))
        return True

    def cancel(self, tags: Sequence[bytes]) -> list[bytes]:
        """End the updates of C{tags}; returns those that named none (nothing is ended
        then)."""
        unknown = [t for t in tags if t not in self.updates]
        if not unknown:
            for t in tags:
                self.updates.pop(t, None)
        return unknown

    def expunging(self, pairs: Sequence[tuple[int, int]]) -> list[bytes]:
        """The REMOVEFROM lines for messages (seq, uid) about to be reported expunged;
        they leave the kept results."""
        lines = []
        for update in self.updates.values():
            gone = sorted((s, u) for s, u in pairs if u in update.uids)
            if gone:
                update.uids.difference_update(u for _, u in gone)
                ids = [u for _, u in gone] if update.uid else [s for s, _ in gone]
                lines.append(_line(update, sorted(ids), ()))
        return lines

    @defer.inlineCallbacks
    def refresh(self, view: Any) -> Any:
        """Run every kept search again over C{view}; fires with the update lines (the
        kept results then are the new ones)."""
        lines = []
        for update in list(self.updates.values()):
            seqs = yield runSearch(view, update.query)
            uids = view.uids
            now = {uids[s - 1] for s in seqs}
            removed = sorted(update.uids - now)
            added = sorted(now - update.uids)
            update.uids = now
            if not removed and not added:
                continue
            if not update.uid:
                seqOf = view.seqOf
                removed = sorted(seqOf(u) for u in removed if u in view.infos)
                added = sorted(seqOf(u) for u in added)
            if removed or added:
                lines.append(_line(update, removed, added))
        return lines
