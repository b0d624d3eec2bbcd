"""SEARCH (RFC 3501 §6.4.4): key parsing and evaluation against a mailbox view.

L{parseSearch} reads C{[CHARSET x] key...} from a command L{Reader} (so string
arguments may be literals, as Thunderbird sends them for non-ASCII text) into a tree of
tuples. L{runSearch} evaluates it in the disk runner: flags, UIDs, sequence numbers and
sizes come from the view; dates, headers and bodies are read from the stored message
(via the structure cache) only when a key needs them. Strings match case-insensitively
as substrings of header values with encoded words decoded, and of text parts decoded
from their transfer encoding and charset.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import quopri
import re
from typing import Any

from twisted.internet import defer

from pymaild.errors import MessageVanished
from pymaild.imap.mime import ParsedMessage, Part, decodeHeaderText, parseHeaders, unfold
from pymaild.imap.syntax import BadCommand, NoCommand, Reader, SequenceSet

CHARSETS = ("US-ASCII", "UTF-8")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")

_FLAG_KEYS = {
    b"ANSWERED": ("\\Answered", True),
    b"DELETED": ("\\Deleted", True),
    b"DRAFT": ("\\Draft", True),
    b"FLAGGED": ("\\Flagged", True),
    b"SEEN": ("\\Seen", True),
    b"UNANSWERED": ("\\Answered", False),
    b"UNDELETED": ("\\Deleted", False),
    b"UNDRAFT": ("\\Draft", False),
    b"UNFLAGGED": ("\\Flagged", False),
    b"UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {b"BCC": "bcc", b"CC": "cc", b"FROM": "from", b"SUBJECT": "subject", b"TO": "to"}
_DATE_KEYS = {
    b"BEFORE": ("internal", "before"),
    b"ON": ("internal", "on"),
    b"SINCE": ("internal", "since"),
    b"SENTBEFORE": ("sent", "before"),
    b"SENTON": ("sent", "on"),
    b"SENTSINCE": ("sent", "since"),
}
_MONTHS = {m: i + 1 for i, m in enumerate(
    [b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV",
     b"DEC"])}


def parseSearch(r: Reader) -> tuple[str, tuple[Any, ...]]:
    """Parse C{[CHARSET name] key *(SP key)}; returns (charset, AND-tree).

    @raise NoCommand: an unsupported charset (C{[BADCHARSET]}).
    @raise BadCommand: a syntax error.
    """
    charset = "US-ASCII"
    if r.lookingAt(b"CHARSET "):
        r.expect(b"CHARSET")
        r.sp()
        charset = r.astring().decode("ascii", "replace").upper()
        if charset not in CHARSETS:
            raise NoCommand("[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
        r.sp()
    keys = [_key(r, charset)]
    while r.maybeSp():
        keys.append(_key(r, charset))
    r.end()
    return charset, ("and", keys)


def _text(r: Reader, charset: str) -> str:
    raw = r.astring()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadCommand(f"search string is not valid {charset}") from None


def _date(r: Reader) -> datetime.date:
    raw = r.quoted() if r.peek() == 0x22 else r.word()
    parts = raw.split(b"-")
    try:
        day, mon, year = parts
        return datetime.date(int(year), _MONTHS[mon.upper()], int(day))
    except (ValueError, KeyError):
        raise BadCommand(f"bad date {raw.decode('ascii', 'replace')!r}") from None


def _key(r: Reader, charset: str) -> tuple[Any, ...]:
    c = r.peek()
    if c == 0x28:
        r.openParen()
        keys = [_key(r, charset)]
        while r.maybeSp():
            keys.append(_key(r, charset))
        r.closeParen()
        return ("and", keys)
    if c is not None and (0x30 <= c <= 0x39 or c == 0x2A):
        return ("seq", r.seqset())
    word = r.atom().upper()
    if word == b"ALL":
        return ("all",)
    if word in _FLAG_KEYS:
        flag, want = _FLAG_KEYS[word]
        return ("flag", flag, want)
    if word == b"NEW":
        return ("and", [("recent", True), ("flag", "\\Seen", False)])
    if word == b"OLD":
        return ("recent", False)
    if word == b"RECENT":
        return ("recent", True)
    if word in (b"KEYWORD", b"UNKEYWORD"):
        r.sp()
        kw = r.atom().decode("ascii", "replace")
        return ("flag", kw, word == b"KEYWORD")
    if word in (b"LARGER", b"SMALLER"):
        r.sp()
        return ("size", word == b"LARGER", r.number())
    if word == b"UID":
        r.sp()
        return ("uid", r.seqset())
    if word == b"NOT":
        r.sp()
        return ("not", _key(r, charset))
    if word == b"OR":
        r.sp()
        a = _key(r, charset)
        r.sp()
        return ("or", a, _key(r, charset))
    if word in _HEADER_KEYS:
        r.sp()
        return ("header", _HEADER_KEYS[word], _text(r, charset).casefold())
    if word == b"HEADER":
        r.sp()
        name = r.astring().decode("ascii", "replace").lower()
        r.sp()
        return ("header", name, _text(r, charset).casefold())
    if word in (b"BODY", b"TEXT"):
        r.sp()
        return (word.decode().lower(), _text(r, charset).casefold())
    if word in _DATE_KEYS:
        r.sp()
        which, op = _DATE_KEYS[word]
        return ("date", which, op, _date(r))
    raise BadCommand(f"unknown search key {word.decode('ascii', 'replace')}")


class _Candidate:
    """One message under evaluation, loading its content lazily (in the runner thread)."""

    def __init__(self, view: Any, seq: int, uid: int, info: Any, recent: bool) -> None:
        self.view = view
        self.seq = seq
        self.uid = uid
        self.info = info
        self.recent = recent
        self._parsed: ParsedMessage | None = None
        self._data: bytes | None = None
        self._block: bytes | None = None
        self._headers: list[tuple[bytes, bytes]] | None = None

    def parsed(self) -> ParsedMessage:
        if self._parsed is None:
            from pymaild.imap.mailbox import loadParsed

            self._parsed = loadParsed(self.view.cache, self.view.folder, self.info)
        return self._parsed

    def data(self) -> bytes:
        if self._data is None:
            with self.view.folder.open(self.info) as f:
                self._data = f.read()
        return self._data

    def headerBlock(self) -> bytes:
        """The root header block (from the structure cache, or read alone)."""
        if self._block is None:
            from pymaild.imap.mailbox import loadHeaderBlock

            self._block = loadHeaderBlock(self.view.cache, self.view.folder, self.info)
        return self._block

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self._headers is None:
            self._headers = parseHeaders(self.headerBlock())
        return self._headers

    def mayContain(self, needle: str) -> bool:
        """False when no header field (name or decoded value) can contain C{needle}.

        A cheap exact pre-check for the common case, an ASCII needle and a plain ASCII
        header without encoded words: their case folding is plain lower-casing, so the
        unfolded block must contain the needle.
        """
        if not needle.isascii():
            return True
        return not _lacksAny(self.headerBlock(), [needle.encode("ascii")])


def _match(key: tuple[Any, ...], m: _Candidate, n: int, maxUid: int) -> bool:
    op = key[0]
    if op == "and":
        return all(_match(k, m, n, maxUid) for k in key[1])
    if op == "all":
        return True
    if op == "flag":
        has = key[1].lower() in {f.lower() for f in m.info.flags}
        return has == key[2]
    if op == "recent":
        return m.recent == key[1]
    if op == "size":
        return m.info.size > key[2] if key[1] else m.info.size < key[2]
    if op == "uid":
        seqset: SequenceSet = key[1]
        return seqset.contains(m.uid, maxUid)
    if op == "seq":
        return key[1].contains(m.seq, n)
    if op == "not":
        return not _match(key[1], m, n, maxUid)
    if op == "or":
        return _match(key[1], m, n, maxUid) or _match(key[2], m, n, maxUid)
    if op == "header":
        return m.mayContain(key[2]) and _matchHeader(m.headers(), key[1], key[2])
    if op == "body":
        return key[1] in _bodyText(m).casefold()
    if op == "text":
        return ((m.mayContain(key[1]) and _matchHeader(m.headers(), None, key[1]))
                or key[1] in _bodyText(m).casefold())
    if op == "date":
        return _matchDate(m, key[1], key[2], key[3])
    raise ValueError(f"unknown search operation {op}")


def _matchHeader(headers: list[tuple[bytes, bytes]], name: str | None, needle: str) -> bool:
    for hname, value in headers:
        if name is not None and hname.decode("latin-1").lower() != name:
            continue
        if needle in decodeHeaderText(unfold(value)).casefold():
            return True
        if name is None and needle in hname.decode("latin-1").casefold():
            return True
    return False


def _matchDate(m: _Candidate, which: str, op: str, when: datetime.date) -> bool:
    if which == "internal":
        day = datetime.date.fromtimestamp(m.view.folder.internalDate(m.info))
    else:
        value = None
        for hname, v in m.headers():
            if hname.lower() == b"date":
                value = unfold(v).decode("latin-1")
                break
        parsed = email.utils.parsedate_tz(value) if value else None
        if parsed is None:
            return False
        try:
            day = datetime.date(parsed[0], parsed[1], parsed[2])
        except ValueError:
            return False
    if op == "before":
        return day < when
    if op == "on":
        return day == when
    return day >= when


def _decodePart(data: bytes, part: Part) -> str:
    body = data[part.bodyStart : part.end]
    enc = (part.header(b"content-transfer-encoding") or b"").strip().lower()
    try:
        if enc == b"base64":
            body = base64.b64decode(b"".join(body.split()), validate=False)
        elif enc == b"quoted-printable":
            body = quopri.decodestring(body)
    except (binascii.Error, ValueError):
        pass
    charset = (part.param(b"charset") or b"utf-8").decode("ascii", "replace")
    try:
        return body.decode(charset, "replace")
    except LookupError:
        return body.decode("utf-8", "replace")


def _bodyText(m: _Candidate) -> str:
    parsed = m.parsed()
    data = m.data()
    out: list[str] = []

    def walk(part: Part, top: bool) -> None:
        if part.isMultipart:
            for c in part.children:
                walk(c, False)
        elif part.isMessage and part.message is not None:
            out.append(" ".join(decodeHeaderText(unfold(v)) for _, v in part.message.headers))
            walk(part.message, False)
        elif part.mainType.lower() in (b"text", b"message") or top:
            out.append(_decodePart(data, part))

    walk(parsed.root, True)
    return "\n".join(out)


def runSearch(view: Any, query: tuple[Any, ...]) -> defer.Deferred[list[int]]:
    """Evaluate C{query} over the view's messages in the runner; fires with seq numbers."""
    n = len(view.uids)
    maxUid = view.uids[-1] if view.uids else 0
    snapshot = [
        (i + 1, uid, view.infos[uid], uid in view.recent)
        for i, uid in enumerate(view.uids)
        if uid not in view.ghosts
    ]

    needles = _requiredNeedles(query)
    cache, path = view.cache, view.folder.path

    def work() -> list[int]:
        out = []
        peek = cache.peekSummary
        for seq, uid, info, recent in snapshot:
            block = None
            if needles:
                summary = peek((path, info.key))
                if summary is not None:
                    block = summary.header
                    # _lacksAny, inlined: this loop runs for every message.
                    if (block is not None and block.isascii() and b"=?" not in block
                            and b"\n " not in block and b"\n\t" not in block):
                        lowered = block.lower()
                        if any(n not in lowered for n in needles):
                            continue  # a header key cannot match: skip the full evaluation
            m = _Candidate(view, seq, uid, info, recent)
            m._block = block
            try:
                if _match(query, m, n, maxUid):
                    out.append(seq)
            except MessageVanished:
                continue
        return out

    return view.runner.run(work)


def _requiredNeedles(query: tuple[Any, ...]) -> list[bytes]:
    """ASCII strings of header keys every match must satisfy (C{HEADER}, C{SUBJECT}...
    ANDed at the top of the query), for L{_lacksAny}."""
    out: list[bytes] = []
    if query[0] == "and":
        for key in query[1]:
            out += _requiredNeedles(key)
    elif query[0] == "header" and query[2].isascii():
        out.append(query[2].encode("ascii"))
    return out


def _lacksAny(block: bytes, needles: list[bytes]) -> bool:
    """True when the header block surely lacks one of the (case-folded ASCII) needles:
    a plain ASCII block without encoded words, whose case folding is lower-casing."""
    if not block.isascii() or b"=?" in block:
        return False
    if b"\n " in block or b"\n\t" in block:
        block = _FOLD.sub(b"", block)
    lowered = block.lower()
    return any(n not in lowered for n in needles)
