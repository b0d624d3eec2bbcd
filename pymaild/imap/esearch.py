"""ESEARCH (RFC 4731) and SEARCHRES (RFC 5182): C{SEARCH RETURN (...)}'s options, its
C{* ESEARCH} response, and what C{RETURN (SAVE)} keeps for C{$}.

The saved result is kept by the session as UIDs (so it survives EXPUNGE and needs no
renumbering); L{pymaild.imap.syntax.Reader.seqset} turns C{$} back into UIDs or
sequence numbers for the command at hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pymaild.imap.syntax import BadCommand, Reader, boundedInt, compressUids, optionList

OPTIONS = frozenset({b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE", b"PARTIAL", b"UPDATE",
                     b"CONTEXT"})
"""The search return options understood (PARTIAL, UPDATE and CONTEXT: CONTEXT=SEARCH,
RFC 5267, L{pymaild.imap.context})."""


_RANGE_RE = re.compile(rb"[0-9]{1,20}:[0-9]{1,20}")


class ReturnOptions(frozenset):  # type: ignore[type-arg]
    """The return options of one SEARCH or SORT, with PARTIAL's range (1-based
    positions, low first) in C{partial} (None without PARTIAL)."""

    partial: tuple[int, int] | None = None


def _partialRange(r: Reader) -> tuple[int, int]:
    """C{low:high} after C{PARTIAL SP} (RFC 5267 section 4.4; either order).

    @raise BadCommand: not two positive 32-bit numbers.
    """
    m = r.atom()
    if not _RANGE_RE.fullmatch(m):
        raise BadCommand("expected a partial range low:high")
    a, b = (boundedInt(x) for x in m.split(b":"))
    if not (0 < a <= 4294967295 and 0 < b <= 4294967295):
        raise BadCommand("partial range out of range")
    return (min(a, b), max(a, b))


def parseReturn(r: Reader) -> frozenset[bytes] | None:
    """C{RETURN (options) SP} at the start of SEARCH's arguments, or None without it.

    C{RETURN ()} means C{RETURN (ALL)} (RFC 4731 section 3.1).

    @raise BadCommand: an unknown option or a malformed list.
    """
    if not r.lookingAt(b"RETURN "):
        return None
    r.expect(b"RETURN")
    r.sp()
    partial: list[tuple[int, int]] = []

    def argument(option: bytes, seen: set[bytes]) -> None:
        if option in seen:
            raise BadCommand("return option given twice")
        if option == b"PARTIAL":
            r.sp()
            partial.append(_partialRange(r))

    found = optionList(r, OPTIONS, "SEARCH return", argument)
    r.sp()
    out = ReturnOptions(found or {b"ALL"})
    if partial:
        out.partial = partial[0]
    return out


def response(tag: bytes, uid: bool, options: frozenset[bytes], ids: Sequence[int]
             ) -> bytes | None:
    """The C{* ESEARCH} line (without CRLF) for the matching C{ids} (ascending UIDs or
    sequence numbers; for ESORT, RFC 5267, in sort order: MIN and MAX are then the
    first and last in that order, ALL keeps it), or None when SAVE is the only option
    (RFC 5182 section 2.4: the client asked for nothing to be returned).

    No match leaves out MIN, MAX and ALL, and gives C{COUNT 0}.
    """
    if options == {b"SAVE"}:
        return None
    out = b'* ESEARCH (TAG "' + tag + b'")'
    if uid:
        out += b" UID"
    if ids and b"MIN" in options:
        out += b" MIN %d" % ids[0]
    if ids and b"MAX" in options:
        out += b" MAX %d" % ids[-1]
    if ids and b"ALL" in options:
        out += b" ALL " + compressUids(ids)
    if b"COUNT" in options:
        out += b" COUNT %d" % len(ids)  # after ALL, in Dovecot's order
    partial = getattr(options, "partial", None)
    if partial is not None:
        low, high = partial
        part = ids[low - 1:high]
        out += b" PARTIAL (%d:%d %s)" % (low, high, compressUids(part) if part else b"NIL")
    return out


def toSave(options: frozenset[bytes], uids: Sequence[int]) -> tuple[int, ...]:
    """The UIDs C{RETURN (SAVE ...)} keeps: only the lowest and/or highest when SAVE
    comes with MIN and/or MAX but neither ALL nor COUNT (RFC 5182 section 2.4), else
    all of them."""
    if not uids:
        return ()
    if options & {b"MIN", b"MAX"} and not options & {b"ALL", b"COUNT"}:
        keep = set()
        if b"MIN" in options:
            keep.add(uids[0])
        if b"MAX" in options:
            keep.add(uids[-1])
        return tuple(sorted(keep))
    return tuple(uids)
