"""SORT (RFC 5256) with SORT=DISPLAY (RFC 5957): the sort criteria, the base subject,
and ordering the messages a search found.

L{sortedRows} is blocking (it reads header blocks through the structure cache) and
runs in the mailbox's runner, never in the reactor. Each message's sort values are
computed once; the order is made by stable sorts from the last criterion to the first,
so equal messages stay in ascending sequence order (the RFC's final tie-break) and
C{REVERSE} turns one criterion around without touching the others.
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Sequence
from typing import Any

from pymaild.errors import MessageVanished
from pymaild.imap import esearch
from pymaild.imap.collation import sortKey
from pymaild.imap.mimeheader import decodeHeaderText, parseAddressList, parseHeaders, unfold
from pymaild.imap.search import CHARSETS, parseSearchKeys
from pymaild.imap.syntax import BadCommand, NoCommand, Reader

KEYS = frozenset({b"ARRIVAL", b"CC", b"DATE", b"FROM", b"SIZE", b"SUBJECT", b"TO",
                  b"DISPLAYFROM", b"DISPLAYTO"})
"""The sort keys understood."""
MAX_CRITERIA = 32
"""Most sort criteria in one command (there are nine keys; more only costs)."""

_HEADERS = {b"CC": b"cc", b"FROM": b"from", b"TO": b"to", b"DISPLAYFROM": b"from",
            b"DISPLAYTO": b"to", b"SUBJECT": b"subject", b"DATE": b"date"}

_SPACES = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)
_LEADER = re.compile(r"^(?:(?:\[[^\[\]]*\][ \t]*)*(?:re|fwd?)[ \t]*(?:\[[^\[\]]*\][ \t]*)?:"
                     r"|[ \t]+)", re.I)
_BLOB = re.compile(r"^\[[^\[\]]*\][ \t]*")


def parseSort(r: Reader) -> tuple[frozenset[bytes] | None, list[tuple[bytes, bool]],
                                   tuple[Any, ...]]:
    """C{[RETURN (options)] (criteria) charset search-keys} after C{SORT}: (ESORT return
    options or None, [(key, reverse)], query).

    @raise BadCommand: malformed, an unknown key or return option (SAVE included: a
        sorted result is not saved), more than L{MAX_CRITERIA} criteria.
    @raise NoCommand: an unsupported charset (C{[BADCHARSET]}).
    """
    r.sp()
    options = esearch.parseReturn(r)
    if options is not None and b"SAVE" in options:
        raise BadCommand("SAVE is not a SORT return option here")
    r.openParen()
    criteria: list[tuple[bytes, bool]] = []
    while True:
        word = r.atom().upper()
        reverse = False
        if word == b"REVERSE":
            reverse = True
            r.sp()
            word = r.atom().upper()
        if word not in KEYS:
            raise BadCommand("unknown sort key " + word.decode("ascii", "replace"))
        criteria.append((word, reverse))
        if len(criteria) > MAX_CRITERIA:
            raise BadCommand(f"more than {MAX_CRITERIA} sort criteria")
        if not r.maybeSp():
            break
    r.closeParen()
    r.sp()
    charset = r.astring().decode("ascii", "replace").upper()
    if charset not in CHARSETS:
        raise NoCommand("[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
    r.sp()
    return options, criteria, parseSearchKeys(r, charset)


def baseSubject(raw: bytes | None) -> tuple[str, bool]:
    """The base subject (RFC 5256 section 2.1) of a Subject value, and whether the
    message looks like a reply or forward (text was removed by steps 2, 3 or 6).

    Encoded words are decoded and white space runs made one space first.
    """
    if raw is None:
        return "", False
    s = _SPACES.sub(" ", decodeHeaderText(unfold(raw)))
    replyOrForward = False
    while True:
        while True:  # (2) trailers: "(fwd)" and white space
            m = _TRAILER.search(s)
            if m is None:
                break
            if m.group() != " " and m.group() != "\t":
                replyOrForward = True
            s = s[: m.start()]
        while True:  # (3), (4), repeated (5)
            changed = False
            m = _LEADER.match(s)
            if m is not None and m.end():
                if m.group().strip():
                    replyOrForward = True
                s = s[m.end():]
                changed = True
            m = _BLOB.match(s)
            if m is not None and s[m.end():].strip():
                s = s[m.end():]
                changed = True
            if not changed:
                break
        if s[:5].lower() == "[fwd:" and s.endswith("]"):  # (6)
            s = s[5:-1]
            replyOrForward = True
            continue
        return s, replyOrForward


def sortForm(text: str) -> bytes:
    """C{text} as SORT compares it: its i;unicode-casemap key (RFC 5051, I18NLEVEL=1;
    L{pymaild.imap.collation.sortKey}) in UTF-8 octets.

    For ASCII this is RFC 5256's i;ascii-casemap; beyond it, as Dovecot does (its
    decomposed titlecase), an accented letter sorts beside its base letter (C{"été"}
    next to C{"ete"}) instead of after every ASCII subject.
    """
    return sortKey(text)


def _firstAddress(value: bytes | None) -> tuple[Any, ...] | None:
    """The first address of a list; a group's start counts, its name as the mailbox
    (as Dovecot sorts C{undisclosed-recipients:;} under U)."""
    for addr in parseAddressList(value, 16) or ():
        if addr[2] is not None:
            return addr
    return None


def _mailbox(value: bytes | None) -> bytes:
    addr = _firstAddress(value)
    if addr is None:
        return b""
    return sortForm(addr[2].decode("utf-8", "replace"))


def _display(value: bytes | None) -> bytes:
    """RFC 5957: the first address's display name, else its addr-spec (compared as
    i;unicode-casemap, RFC 5051: decomposed and case-mapped, L{sortForm})."""
    addr = _firstAddress(value)
    if addr is None:
        return b""
    name, _route, mailbox, host = addr
    if host is None:
        return sortForm(mailbox.decode("utf-8", "replace"))  # a group: its name
    if name:
        text = _SPACES.sub(" ", decodeHeaderText(name)).strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1]
        if text:
            return sortForm(text)
    return sortForm((mailbox + b"@" + host).decode("utf-8", "replace"))


def _sentDate(value: bytes | None, internal: float) -> float:
    if value:
        parsed = email.utils.parsedate_tz(unfold(value).decode("latin-1").strip())
        # A year before 1970 counts as unparseable, as for Dovecot (whose dates are
        # POSIX times): the internal date stands in, as for a missing Date.
        if parsed is not None and parsed[0] >= 1970:
            try:
                return float(email.utils.mktime_tz(parsed))
            except (OverflowError, ValueError):
                pass
    return internal


def sortValues(criteria: Sequence[tuple[bytes, bool]], folder: Any, cache: Any,
               info: Any) -> list[Any]:
    """The sort values of one message for C{criteria} (blocking: may read its header).

    @raise MessageVanished: the message is gone.
    """
    from pymaild.imap.mailbox import loadHeaderBlock

    wanted = {_HEADERS[k] for k, _ in criteria if k in _HEADERS}
    fields: dict[bytes, bytes] = {}
    if wanted:
        for name, value in parseHeaders(loadHeaderBlock(cache, folder, info)):
            low = name.lower()
            if low in wanted and low not in fields:
                fields[low] = value
    internal: float | None = None
    out: list[Any] = []
    for key, _reverse in criteria:
        if key == b"SIZE":
            out.append(info.size)
        elif key in (b"ARRIVAL", b"DATE"):
            if internal is None:
                internal = folder.internalDate(info)
            out.append(internal if key == b"ARRIVAL" else _sentDate(fields.get(b"date"),
                                                                    internal))
        elif key == b"SUBJECT":
            out.append(sortForm(baseSubject(fields.get(b"subject"))[0]))
        elif key in (b"FROM", b"TO", b"CC"):
            out.append(_mailbox(fields.get(_HEADERS[key])))
        else:
            out.append(_display(fields.get(_HEADERS[key])))
    return out


def sortRows(criteria: Sequence[tuple[bytes, bool]], folder: Any, cache: Any,
             messages: Sequence[tuple[int, int, Any]]) -> list[tuple[list[Any], int, int]]:
    """The rows (sort values, seq, uid) of C{messages} ((seq, uid, info), in sequence
    order), messages that vanished meanwhile left out, in sequence order (blocking:
    run it in the runner)."""
    rows: list[tuple[list[Any], int, int]] = []
    for seq, uid, info in messages:
        try:
            rows.append((sortValues(criteria, folder, cache, info), seq, uid))
        except MessageVanished:
            continue
    flush = getattr(cache, "flush", None)
    if flush is not None:
        flush()  # summaries computed on the way, for the cache file
    return rows


def _criterion(i: int, row: tuple[list[Any], int, int]) -> Any:
    """The sort key of C{row} (a L{sortRows} row) for criterion C{i}."""
    return row[0][i]


def sortedRows(criteria: Sequence[tuple[bytes, bool]], folder: Any, cache: Any,
               messages: Sequence[tuple[int, int, Any]]) -> list[tuple[list[Any], int, int]]:
    """L{sortRows} of C{messages} in the order C{criteria} ask for (blocking: run it in
    the runner). Stable sorts from the last criterion to the first, so equal messages
    stay in ascending sequence order and C{REVERSE} turns one criterion around."""
    rows = sortRows(criteria, folder, cache, messages)
    for i in range(len(criteria) - 1, -1, -1):
        rows.sort(key=functools.partial(_criterion, i), reverse=criteria[i][1])
    return rows

