"""CONDSTORE and QRESYNC (RFC 7162) for the IMAP server: the session's mode, parsing of
the SELECT parameters and the FETCH/STORE modifiers, and the responses they add.

The numbers themselves come from the store (L{pymaild.store.modseq}, whose docstring
says where they come from and how processes share them); this module only speaks the
protocol. A session starts with neither extension on; CONDSTORE is switched on by the
first "CONDSTORE enabling command" (RFC 7162 3.1: ENABLE CONDSTORE, SELECT/EXAMINE
(CONDSTORE), a FETCH of MODSEQ or with CHANGEDSINCE, a STORE with UNCHANGEDSINCE, a
SEARCH with MODSEQ), QRESYNC only by ENABLE QRESYNC (which implies CONDSTORE). From then
on unsolicited FETCH responses carry MODSEQ and, with QRESYNC, expunges are reported as
C{* VANISHED} instead of C{* n EXPUNGE}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pymaild.imap.syntax import BadCommand, Reader, SequenceSet, boundedInt, compressUids

__all__ = [
    "SessionMode", "SelectParams", "QresyncParams", "parseSelectParams", "splitModifiers",
    "parseFetchModifiers", "parseStoreModifier", "parseModseq", "vanishedLines",
    "uidsOfExpunges", "queryUsesModseq", "returnedUids", "changedPairs",
    "selectLines",
    "fetchVanished", "FetchModifiers",
]

_DIGITS = re.compile(rb"\d+")

MAX_MODSEQ = (1 << 63) - 1
"""The largest mod-sequence value (RFC 7162: below 2^63)."""


@dataclass
class SessionMode:
    """What a session has switched on (per connection, kept by the server)."""

    condstore: bool = False
    qresync: bool = False


@dataclass(frozen=True)
class QresyncParams:
    """The C{QRESYNC (uidvalidity modseq [known-uids [seq-match]])} select parameter."""

    uidvalidity: int
    modseq: int
    knownUids: SequenceSet | None
    seqMatch: tuple[SequenceSet, SequenceSet] | None


@dataclass(frozen=True)
class SelectParams:
    """The parsed SELECT/EXAMINE parameter list."""

    condstore: bool = False
    qresync: QresyncParams | None = None


def parseModseq(r: Reader, zeroOK: bool = False) -> int:
    """A mod-sequence value (1 to 2^63-1; 0 too with C{zeroOK}, RFC 7162's valzer).

    @raise BadCommand: not a number, or out of range (C{CHANGEDSINCE 0}, 2^63).
    """
    raw = r._match(_DIGITS, "a mod-sequence")
    n = boundedInt(raw)
    if n > MAX_MODSEQ or (n == 0 and not zeroOK):
        raise BadCommand("Invalid modseq")
    return n


def _uidSet(r: Reader) -> SequenceSet:
    s = r.seqset()
    for a, b in s.ranges:
        if a is None or b is None:
            raise BadCommand("* is not allowed in known UIDs")
    return s


def parseSelectParams(r: Reader) -> SelectParams:
    """The parameter list after a SELECT/EXAMINE mailbox name (the caller saw SP).

    Several parameters may come in one list (eM Client: C{(CONDSTORE QRESYNC (1 2))}).

    @raise BadCommand: an unknown parameter, a parameter given twice, or bad syntax.
    """
    r.openParen()
    condstore = False
    qresync: QresyncParams | None = None
    seen: set[bytes] = set()
    first = True
    while r.peek() != 0x29:
        if not first:
            r.sp()
        first = False
        name = r.atom().upper()
        if name in seen:
            raise BadCommand("select parameter given twice")
        seen.add(name)
        if name == b"CONDSTORE":
            condstore = True
        elif name == b"QRESYNC":
            r.sp()
            r.openParen()
            uidvalidity = r.number()
            if uidvalidity == 0:
                raise BadCommand("UIDVALIDITY must be positive")
            r.sp()
            modseq = parseModseq(r)
            known = None
            match = None
            if r.maybeSp():
                if r.peek() == 0x28:
                    match = _seqMatch(r)
                else:
                    known = _uidSet(r)
                    if r.maybeSp():
                        match = _seqMatch(r)
            r.closeParen()
            qresync = QresyncParams(uidvalidity, modseq, known, match)
        else:
            raise BadCommand("unknown select parameter " + name.decode("ascii", "replace"))
    r.closeParen()
    if not seen:
        raise BadCommand("empty select parameter list")
    return SelectParams(condstore, qresync)


def _seqMatch(r: Reader) -> tuple[SequenceSet, SequenceSet]:
    r.openParen()
    seqs = _uidSet(r)
    r.sp()
    uids = _uidSet(r)
    r.closeParen()
    if len(list(_expand(seqs))) != len(list(_expand(uids))):
        raise BadCommand("sequence match sets differ in size")
    return seqs, uids


def _expand(s: SequenceSet, limit: int = 1 << 20) -> Iterable[int]:
    n = 0
    for a, b in s.ranges:
        assert a is not None and b is not None  # _uidSet refuses *
        lo, hi = min(a, b), max(a, b)
        n += hi - lo + 1
        if n > limit:
            raise BadCommand("sequence match set too large")
        yield from range(lo, hi + 1)


def splitModifiers(text: bytes) -> tuple[bytes, bytes | None]:
    """Split the rest of a FETCH command into the attributes and the modifier list
    (the parenthesised list after them, or None)."""
    text = text.strip()
    depth = 0
    end = None
    if text.startswith(b"("):
        for i, c in enumerate(text):
            if c in b"([":
                depth += 1
            elif c in b")]":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
    else:
        for i, c in enumerate(text):
            if c in b"([":
                depth += 1
            elif c in b")]":
                depth -= 1
            elif c == 0x20 and depth == 0:
                end = i
                break
    if end is None or end >= len(text):
        return text, None
    rest = text[end:]
    if not rest.startswith(b" ("):
        return text, None  # let the attribute parser report what is wrong
    return text[:end], rest[1:]


@dataclass(frozen=True)
class FetchModifiers:
    """C{CHANGEDSINCE n} and C{VANISHED} of a FETCH."""

    changedSince: int | None = None
    vanished: bool = False


def parseFetchModifiers(text: bytes) -> FetchModifiers:
    """Parse C{(CHANGEDSINCE n [VANISHED])} (in any order).

    @raise BadCommand: an unknown modifier, a bad value, VANISHED without CHANGEDSINCE.
    """
    r = Reader([text])
    r.openParen()
    changed: int | None = None
    vanished = False
    first = True
    while r.peek() != 0x29:
        if not first:
            r.sp()
        first = False
        name = r.atom().upper()
        if name == b"CHANGEDSINCE" and changed is None:
            r.sp()
            changed = parseModseq(r)
        elif name == b"VANISHED" and not vanished:
            vanished = True
        else:
            raise BadCommand("unknown FETCH modifier " + name.decode("ascii", "replace"))
    r.closeParen()
    r.end()
    if changed is None:
        raise BadCommand("FETCH modifiers need CHANGEDSINCE")
    return FetchModifiers(changed, vanished)


def parseStoreModifier(r: Reader) -> int | None:
    """C{(UNCHANGEDSINCE n)} after a STORE's set (the caller saw SP and C{(}), or None
    when the next token is not a modifier list."""
    if r.peek() != 0x28:
        return None
    r.openParen()
    name = r.atom().upper()
    if name != b"UNCHANGEDSINCE":
        raise BadCommand("unknown STORE modifier " + name.decode("ascii", "replace"))
    r.sp()
    value = parseModseq(r, zeroOK=True)
    r.closeParen()
    r.sp()
    return value


def vanishedLines(uids: Sequence[int], earlier: bool) -> list[bytes]:
    """C{* VANISHED [(EARLIER)] set} lines for C{uids} (none for no UIDs), split so no
    line grows beyond a few kilobytes."""
    if not uids:
        return []
    head = b"* VANISHED (EARLIER) " if earlier else b"* VANISHED "
    ordered = sorted(uids)
    out = []
    for i in range(0, len(ordered), 2000):
        out.append(head + compressUids(ordered[i : i + 2000]))
    return out


def uidsOfExpunges(before: Sequence[int], seqs: Iterable[int]) -> list[int]:
    """The UIDs behind C{* n EXPUNGE} sequence numbers reported one after another
    (each valid after the previous removals) over the UID list C{before}."""
    uids = list(before)
    out = []
    for s in seqs:
        if 1 <= s <= len(uids):
            out.append(uids.pop(s - 1))
    return out


def queryUsesModseq(key: tuple[object, ...]) -> bool:
    """Whether a parsed SEARCH query (L{pymaild.imap.search.parseSearch}) has a MODSEQ
    key anywhere (then the response carries the highest MODSEQ found, RFC 7162 3.1.5)."""
    op = key[0]
    if op == "modseq":
        return True
    if op == "and":
        return any(queryUsesModseq(k) for k in key[1])  # type: ignore[attr-defined]
    if op == "not":
        return queryUsesModseq(key[1])  # type: ignore[arg-type]
    if op == "or":
        return queryUsesModseq(key[1]) or queryUsesModseq(key[2])  # type: ignore[arg-type]
    return False


def selectLines(view: object, params: SelectParams, qresync: bool) -> list[bytes]:
    """The untagged lines SELECT/EXAMINE adds: C{[HIGHESTMODSEQ]} and, for a QRESYNC
    parameter whose UIDVALIDITY still holds, C{VANISHED (EARLIER)} for the known UIDs
    expunged since its modseq, then a FETCH (UID FLAGS MODSEQ) of every message changed
    since (RFC 7162 3.2.5)."""
    log = view.folder.modseqs  # type: ignore[attr-defined]
    lines = [b"* OK [HIGHESTMODSEQ %d] Highest" % max(log.highest, 1)]
    q = params.qresync
    if q is None or q.uidvalidity != view.uidvalidity:  # type: ignore[attr-defined]
        return lines
    uids: list[int] = view.uids  # type: ignore[attr-defined]
    uidnext: int = view.uidnext  # type: ignore[attr-defined]
    top = max(uidnext - 1, uids[-1] if uids else 0)
    known = q.knownUids
    present = set(uids)
    if known is None:
        candidates: Iterable[int] = range(1, top + 1)
    else:
        candidates = (u for lo, hi in known.merged(top) for u in range(lo, min(hi, top) + 1))
    if qresync:
        lines += vanishedLines(log.vanished(q.modseq, candidates, present), earlier=True)
    changed = log.changedSince(
        uids if known is None else [u for u in uids if known.contains(u, top)], q.modseq)
    seqOf = view.seqOf  # type: ignore[attr-defined]
    flagsBytes = view.flagsBytes  # type: ignore[attr-defined]
    for u in changed:
        lines.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))"
                     % (seqOf(u), u, flagsBytes(u), log.modseq(u)))
    return lines


def changedPairs(view: object, seqset: SequenceSet, uid: bool,
                 changed: set[int]) -> list[tuple[int, int]]:
    """The (seq, uid) pairs C{seqset} names whose UID is in C{changed}: found from the
    changed UIDs when they are few, so the cost is the number of changes."""
    uids: list[int] = view.uids  # type: ignore[attr-defined]
    if len(changed) * 4 >= len(uids):
        pairs = view.resolve(seqset, uid)  # type: ignore[attr-defined]
        return [p for p in pairs if p[1] in changed]
    if not uids:
        return []
    star = uids[-1] if uid else len(uids)
    out = []
    for u in sorted(changed):
        try:
            seq = view.seqOf(u)  # type: ignore[attr-defined]
        except KeyError:
            continue
        if seqset.contains(u if uid else seq, star):
            out.append((seq, u))
    return out


def returnedUids(options: frozenset[bytes] | None, uids: list[int]) -> list[int]:
    """The UIDs whose highest MODSEQ a SEARCH with a MODSEQ key reports: all matches,
    or with ESEARCH's MIN and/or MAX alone, only the messages returned (RFC 7162 3.1.5,
    as Dovecot answers)."""
    if not uids or options is None or {b"ALL", b"COUNT"} & options:
        return uids
    out = []
    if b"MIN" in options:
        out.append(uids[0])
    if b"MAX" in options:
        out.append(uids[-1])
    return out or uids


def fetchVanished(view: object, uidSet: SequenceSet, modseq: int) -> list[bytes]:
    """C{* VANISHED (EARLIER)} for UID FETCH ... (CHANGEDSINCE modseq VANISHED): the
    UIDs of the set expunged since C{modseq} (RFC 7162 3.2.6)."""
    log = view.folder.modseqs  # type: ignore[attr-defined]
    uids: list[int] = view.uids  # type: ignore[attr-defined]
    top = max(view.uidnext - 1, uids[-1] if uids else 0)  # type: ignore[attr-defined]
    present = set(uids)
    if modseq < log.base:
        cand = (u for lo, hi in uidSet.merged(top) for u in range(lo, min(hi, top) + 1))
        return vanishedLines(log.vanished(modseq, cand, present), earlier=True)
    out: list[int] = []
    for lo, hi in uidSet.merged(top):
        out += log.vanishedIn(modseq, lo, hi)
    return vanishedLines(sorted(set(out) - present), earlier=True)
