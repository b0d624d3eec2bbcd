"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4): searches and sorts that stay
up to date.

C{SEARCH RETURN (UPDATE ...)} answers as usual and then keeps the search (one
L{Update} per tag, at most L{MAX_UPDATES} per session, only while the mailbox stays
selected): whenever the session may send untagged responses and the mailbox changed,
the search runs again and the difference is sent as C{* ESEARCH (TAG "t") [UID]
REMOVEFROM (0 set) ADDTO (0 set)} (position 0: a SEARCH result has no order, as in
Dovecot). Messages about to be reported expunged leave the results first, their
REMOVEFROM sent before the EXPUNGE lines so that sequence numbers still name them.
C{CANCELUPDATE "t" ...} ends updates. PARTIAL and CONTEXT, the section's other return
options, are in L{pymaild.imap.esearch} (CONTEXT is a hint and changes nothing).

C{SORT RETURN (UPDATE)} keeps a L{SortUpdate}: the matching UIDs in sort order and each
one's sort values, so a change sorts only the messages that joined (in the mailbox's
runner, L{mergeSorted}). Its updates carry positions (section 4.3.3 and 4.3.4): one
C{REMOVEFROM (p set ...)} pair per run of neighbours that left, C{p} counted after the
pairs before it, then one C{ADDTO (p set ...)} pair per run that joined, C{p} their place
in the new order; sets are in sort order. The sort values of a message never change,
so no message moves without leaving. A tag whose search or sort is being kept cannot
start another (section 4.3: BAD). Refreshes of one session run one after the other.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet import defer

from pymaild.imap.search import runSearch
from pymaild.imap.sort import sortRows
from pymaild.imap.syntax import compressUids

CAPABILITY = b"CONTEXT=SEARCH"
SORT_CAPABILITY = b"CONTEXT=SORT"
MAX_UPDATES = 10
"""Most updating searches and sorts one session keeps."""


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


class SortUpdate:
    """One kept sort: its tag, whether it answers UIDs, its query and criteria, the
    matching UIDs in sort order and the sort values of each (never changed in place:
    a refresh replaces the dict, so a runner thread may read it)."""

    __slots__ = ("tag", "uid", "query", "criteria", "order", "values")

    def __init__(self, tag: bytes, uid: bool, query: tuple[Any, ...],
                 criteria: Sequence[tuple[bytes, bool]], order: list[int],
                 values: dict[int, list[Any]]) -> None:
        self.tag = tag
        self.uid = uid
        self.query = query
        self.criteria = tuple(criteria)
        self.order = order
        self.values = values


class _Key:
    """A message's place under some sort criteria: its sort values, then its UID (the
    mailbox order breaks ties, RFC 5256), each value compared the other way round
    where its criterion has REVERSE."""

    __slots__ = ("values", "uid", "reverse")

    def __init__(self, values: Sequence[Any], uid: int, reverse: tuple[bool, ...]) -> None:
        self.values = values
        self.uid = uid
        self.reverse = reverse

    def __lt__(self, other: _Key) -> bool:
        for a, b, rev in zip(self.values, other.values, self.reverse, strict=True):
            if a != b:
                return bool(a > b) if rev else bool(a < b)
        return self.uid < other.uid


def mergeSorted(criteria: Sequence[tuple[bytes, bool]], folder: Any, cache: Any,
                base: list[int], values: dict[int, list[Any]],
                messages: Sequence[tuple[int, int, Any]]
                ) -> tuple[list[int], dict[int, list[Any]]]:
    """The UIDs of C{base} (in sort order, their values in C{values}) with C{messages}
    ((seq, uid, info), in sequence order) sorted in, and the values of them all; a
    message that vanished meanwhile stays out (blocking: run it in the runner)."""
    reverse = tuple(r for _k, r in criteria)
    merged = {u: values[u] for u in base}
    added = []
    for vals, _seq, uid in sortRows(criteria, folder, cache, messages):
        merged[uid] = vals
        added.append(_Key(vals, uid, reverse))
    added.sort()

    def keyOf(u: int) -> _Key:
        return _Key(merged[u], u, reverse)

    out: list[int] = []
    i = 0
    for key in added:
        j = bisect.bisect_left(base, key, lo=i, key=keyOf)
        out.extend(base[i:j])
        out.append(key.uid)
        i = j
    out.extend(base[i:])
    return out, merged


def _runs(order: Iterable[int], keep: Callable[[int], bool], idOf: Callable[[int], int],
          before: bool) -> list[tuple[int, list[int]]]:
    """(position, ids) for each run of neighbours in C{order} that C{keep} refuses.
    A position counts what comes before the run, plus one: the kept ones only when the
    pairs are removals (those before are gone by then, C{before} false), everything
    when they are additions (those before are in place by then, C{before} true)."""
    runs: list[tuple[int, list[int]]] = []
    ahead = 0
    inRun = False
    for u in order:
        if keep(u):
            ahead += 1
            inRun = False
        else:
            if inRun:
                runs[-1][1].append(idOf(u))
            else:
                runs.append((ahead + 1, [idOf(u)]))
                inRun = True
            if before:
                ahead += 1
    return runs


def _pairs(name: bytes, runs: list[tuple[int, list[int]]]) -> bytes:
    return (b" " + name + b" (" + b" ".join(b"%d %s" % (p, compressUids(ids))
                                           for p, ids in runs) + b")")


def sortDiffLine(update: SortUpdate, old: list[int], new: list[int],
                 idOf: Callable[[int], int]) -> bytes | None:
    """The ESEARCH line (with CRLF) taking a client from C{old} to C{new} (UIDs in sort
    order; C{new} is C{old} less some plus some, in the same order), or None when
    they are equal; C{idOf} gives the number the client knows a UID by."""
    newSet, oldSet = set(new), set(old)
    removed = _runs(old, newSet.__contains__, idOf, False)
    added = _runs(new, oldSet.__contains__, idOf, True)
    if not removed and not added:
        return None
    out = b'* ESEARCH (TAG "' + update.tag + b'")'
    if update.uid:
        out += b" UID"
    if removed:
        out += _pairs(b"REMOVEFROM", removed)
    if added:
        out += _pairs(b"ADDTO", added)
    return out + b"\r\n"


def _identity(u: int) -> int:
    return u


class Contexts:
    """The updating searches and sorts of one session's selected mailbox."""

    __slots__ = ("updates", "_lock")

    def __init__(self) -> None:
        self.updates: dict[bytes, Update | SortUpdate] = {}
        self._lock = defer.DeferredLock()

    def inUse(self, tag: bytes) -> bool:
        """Whether C{tag} names a kept search or sort (a new UPDATE under it is BAD)."""
        return tag in self.updates

    def add(self, tag: bytes, uid: bool, query: tuple[Any, ...], uids: Sequence[int]
            ) -> bool:
        """Keep a search; False when the session has L{MAX_UPDATES} already."""
        if len(self.updates) >= MAX_UPDATES and tag not in self.updates:
            return False
        self.updates[tag] = Update(tag, uid, query, set(uids))
        return True

    def addSort(self, tag: bytes, uid: bool, query: tuple[Any, ...],
                criteria: Sequence[tuple[bytes, bool]],
                rows: Sequence[tuple[list[Any], int, int]]) -> bool:
        """Keep a sort whose result is C{rows} ((values, seq, uid) in sort order); False
        when the session has L{MAX_UPDATES} already."""
        if len(self.updates) >= MAX_UPDATES and tag not in self.updates:
            return False
        self.updates[tag] = SortUpdate(tag, uid, query, criteria, [u for _v, _s, u in rows],
                                       {u: v for v, _s, u in rows})
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
            if isinstance(update, SortUpdate):
                seqs = dict((u, s) for s, u in pairs)
                old = update.order
                new = [u for u in old if u not in seqs]
                if len(new) != len(old):
                    line = sortDiffLine(update, old, new,
                                        _identity if update.uid else seqs.__getitem__)
                    update.order = new
                    if line is not None:
                        lines.append(line)
                continue
            gone = sorted((s, u) for s, u in pairs if u in update.uids)
            if gone:
                update.uids.difference_update(u for _, u in gone)
                ids = [u for _, u in gone] if update.uid else [s for s, _ in gone]
                lines.append(_line(update, sorted(ids), ()))
        return lines

    def refresh(self, view: Any) -> defer.Deferred[list[bytes]]:
        """Run every kept search and sort again over C{view}, one refresh at a time;
        fires with the update lines (the kept results then are the new ones)."""
        return self._lock.run(self._refresh, view)

    @defer.inlineCallbacks
    def _refreshSort(self, view: Any, update: SortUpdate) -> Any:
        """Run a kept sort again; fires with its update line or None."""
        seqs = yield runSearch(view, update.query)
        uids, infos = view.uids, view.infos
        now = {uids[s - 1] for s in seqs}
        base = [u for u in update.order if u in now]
        known = set(base)
        joined = sorted(u for u in now if u not in known)
        if joined:
            seqOf = view.seqOf
            messages = [(seqOf(u), u, infos[u]) for u in joined]
            new, values = yield view.runner.run(mergeSorted, update.criteria, view.folder,
                                                view.cache, base, update.values, messages)
            infos = view.infos  # what was reported expunged meanwhile is out
            new = [u for u in new if u in infos]
        elif len(base) == len(update.order):
            return None
        else:
            new, values = base, update.values
        old = update.order
        if update.uid:
            idOf: Callable[[int], int] = _identity
        else:  # (a message gone without a REMOVEFROM has no number left to name it by)
            idOf = view.seqOf
            old = [u for u in old if u in infos]
        line = sortDiffLine(update, old, new, idOf)
        update.order = new
        update.values = {u: values[u] for u in new} if len(values) > len(new) else values
        return line

    @defer.inlineCallbacks
    def _refresh(self, view: Any) -> Any:
        lines = []
        for update in list(self.updates.values()):
            if isinstance(update, SortUpdate):
                line = yield self._refreshSort(view, update)
                if line is not None and self.updates.get(update.tag) is update:
                    lines.append(line)
                continue
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
