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
import bisect
import datetime
import email.header
import email.utils
import re
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from pymaild.errors import MessageVanished
from pymaild.imap import objectid
from pymaild.imap.bodystructure import ParsedMessage, Part
from pymaild.imap.collation import searchFold
from pymaild.imap.mimeheader import (
    consideredBlock,
    decodeHeaderText,
    decodeQuotedPrintable,
    parseHeaders,
    removeFolds,
    unfold,
)
from pymaild.imap.summary import HEADER_PLAIN, HEADER_PREFIX
from pymaild.imap.syntax import BadCommand, NoCommand, Reader, SequenceSet
from pymaild.store.cachefile import Span

CHARSETS = ("US-ASCII", "UTF-8")

LOAD_BATCH = 1024
"""Messages whose cached summaries SEARCH brings into memory at a time."""

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
    b"SAVEDBEFORE": ("saved", "before"),
    b"SAVEDON": ("saved", "on"),
    b"SAVEDSINCE": ("saved", "since"),
}
_MONTHS = {m: i + 1 for i, m in enumerate(
    [b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV",
     b"DEC"])}


MAX_SEARCH_DEPTH = 100
"""Deepest nesting of NOT, OR and parentheses in one SEARCH.

A client's "any of these 99 senders" filter is an OR chain 99 deep; past that the
command is BAD, as for parentheses, instead of exhausting the parser's (and the
matcher's) recursion.
"""


def parseSearch(r: Reader) -> tuple[str, tuple[Any, ...]]:
    """Parse C{[CHARSET name] key *(SP key)}; returns (charset, AND-tree).

    @raise NoCommand: an unsupported charset (C{[BADCHARSET]}).
    @raise BadCommand: a syntax error.
    """
    charset = "US-ASCII"
    if r.lookingAt(b"CHARSET "):
        if r.utf8Accept:
            # RFC 6855 section 3: after ENABLE UTF8=ACCEPT a charset is a client error.
            raise BadCommand("SEARCH CHARSET is not allowed after ENABLE UTF8=ACCEPT")
        r.expect(b"CHARSET")
        r.sp()
        charset = r.astring().decode("ascii", "replace").upper()
        if charset not in CHARSETS:
            raise NoCommand("[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
        r.sp()
    return charset, parseSearchKeys(r, charset)


def parseSearchKeys(r: Reader, charset: str) -> tuple[Any, ...]:
    """Parse C{key *(SP key)} to the end of the command (SORT and THREAD, whose charset
    is not introduced by C{CHARSET}); returns the AND-tree.

    @raise BadCommand: a syntax error.
    """
    keys = [_key(r, charset)]
    while r.maybeSp():
        keys.append(_key(r, charset))
    r.end()
    return ("and", keys)


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
    if c == 0x24:
        return ("uid", r.savedResult(True))  # $ (SEARCHRES): the saved UIDs
    word = r.atom().upper()
    if word in (b"ALL", b"SAVEDATESUPPORTED"):
        return ("all",)  # every folder has save dates (SAVEDATE, RFC 8514)
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
        r.enter("SEARCH keys", MAX_SEARCH_DEPTH)
        key = ("not", _key(r, charset))
        r.leave()
        return key
    if word == b"OR":
        r.sp()
        r.enter("SEARCH keys", MAX_SEARCH_DEPTH)
        a = _key(r, charset)
        r.sp()
        key = ("or", a, _key(r, charset))
        r.leave()
        return key
    if word in _HEADER_KEYS:
        r.sp()
        return ("header", _HEADER_KEYS[word], searchFold(_text(r, charset)))
    if word == b"HEADER":
        r.sp()
        name = r.astring().decode("ascii", "replace").lower()
        r.sp()
        return ("header", name, searchFold(_text(r, charset)))
    if word in (b"BODY", b"TEXT"):
        r.sp()
        return (word.decode().lower(), searchFold(_text(r, charset)))
    if word in (b"EMAILID", b"THREADID"):
        # OBJECTID (RFC 8474): THREADID is NIL for every message, so it matches none.
        r.sp()
        value = r.atom()
        if not objectid.isObjectId(value):
            raise BadCommand("not an objectid")
        return ("emailid", value) if word == b"EMAILID" else ("not", ("all",))
    if word == b"MODSEQ":
        # CONDSTORE (RFC 7162 3.1.5): MODSEQ ["entry-name" entry-type] mod-sequence;
        # pymaild keeps one mod-sequence per message, so the entry only has to parse.
        from pymaild.imap.condstore import parseModseq

        r.sp()
        if r.peek() == 0x22:
            r.quoted()
            r.sp()
            if r.atom().lower() not in (b"priv", b"shared", b"all"):
                raise BadCommand("MODSEQ entry type must be priv, shared or all")
            r.sp()
        return ("modseq", parseModseq(r, zeroOK=True))
    if word in (b"OLDER", b"YOUNGER"):
        # WITHIN (RFC 5032): the internal date against now, to the second.
        r.sp()
        interval = r.number()
        if interval == 0:
            raise BadCommand(f"{word.decode()} needs an interval of at least 1 second")
        return ("within", word == b"OLDER", time.time() - interval)
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
        """The root header block (from the structure cache, or read alone), as far as
        SEARCH looks at it: at most L{pymaild.imap.mimeheader.MAX_HEADER_BLOCK} bytes
        (L{consideredBlock})."""
        if self._block is None:
            from pymaild.imap.mailbox import loadHeaderBlock

            block = loadHeaderBlock(self.view.cache, self.view.folder, self.info)
            self._block = consideredBlock(block, 0, len(block))
        return self._block

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self._headers is None:
            self._headers = parseHeaders(self.headerBlock())
        return self._headers


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
    if op == "hkey":
        return key[1].matches(m.headerBlock())
    if op == "header":
        return HeaderKey(key[1], key[2], folded=True).matches(m.headerBlock())
    if op == "body":
        return key[1] in searchFold(_bodyText(m))
    if op == "text":
        return ((_headerMayContain(m.headerBlock(), key[1])
                 and _matchHeader(m.headers(), None, key[1]))
                or key[1] in searchFold(_bodyText(m)))
    if op == "date":
        return _matchDate(m, key[1], key[2], key[3])
    if op == "emailid":
        return objectid.emailId(m.view.folder.messageGuid(m.info)) == key[1]
    if op == "modseq":
        return m.view.folder.modseqs.modseq(m.uid) >= key[1]
    if op == "within":
        # OLDER n: at least n seconds old; YOUNGER n: less (so OLDER is NOT YOUNGER).
        older = m.view.folder.internalDate(m.info) <= key[2]
        return older == key[1]
    raise ValueError(f"unknown search operation {op}")


def _matchHeader(headers: list[tuple[bytes, bytes]], name: str | None, needle: str) -> bool:
    for hname, value in headers:
        if name is not None and hname.decode("latin-1").lower() != name:
            continue
        if needle in searchFold(decodeWords(unfold(value))):
            return True
        if name is None and needle in searchFold(hname.decode("latin-1")):
            return True
    return False


def _headerMayContain(block: bytes, needle: str) -> bool:
    """False when no field name or decoded value of the header C{block} can contain
    the case-folded C{needle} (for C{TEXT}): the block is plain ASCII without encoded
    words, so its case folding is lower-casing, and neither the block (holding every
    name) nor the block unfolded (holding every unfolded value) has the needle."""
    if not block.isascii() or b"=?" in block:
        return True
    if not needle.isascii():
        return False
    raw = needle.lower().encode("ascii")  # (the needle is a casemap key: upper case)
    lowered = block.lower()
    if raw in lowered:
        return True
    return (b"\n " in block or b"\n\t" in block) and raw in removeFolds(lowered)


def _matchDate(m: _Candidate, which: str, op: str, when: datetime.date) -> bool:
    if which == "internal":
        day = datetime.date.fromtimestamp(m.view.folder.internalDate(m.info))
    elif which == "saved":
        day = datetime.date.fromtimestamp(m.view.folder.saveDate(m.info))
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
            body = decodeQuotedPrintable(body)
    except (binascii.Error, ValueError):
        pass
    charset = (part.param(b"charset") or b"utf-8").decode("ascii", "replace")
    try:
        return body.decode(charset, "replace")
    except (LookupError, ValueError):  # unknown charset, or a codec that raises
        return body.decode("utf-8", "replace")


def beyondCaps(data: bytes, start: int, end: int) -> str:
    """The text SEARCH matches in C{data[start:end]}, bytes the parse did not look into
    (nested past L{pymaild.imap.mimeheader.MAX_DEPTH}, or past
    L{pymaild.imap.mimeheader.MAX_PARTS}): the raw bytes as UTF-8, headers, delimiters
    and any transfer encoding as they are."""
    return data[start:end].decode("utf-8", "replace")


def _bodyText(m: _Candidate) -> str:
    """The text SEARCH BODY and TEXT match in the message's body: the decoded text
    parts, the headers of encapsulated messages, and the raw bytes of what lies past
    the parse's depth and part caps (L{beyondCaps}), so no part is out of reach."""
    parsed = m.parsed()
    data = m.data()
    out: list[str] = []

    def walk(part: Part, top: bool) -> None:
        if part.hidden:
            out.append(beyondCaps(data, part.bodyStart, part.end))
        elif part.isMultipart:
            for c in part.children:
                walk(c, False)
            if part.rest >= 0:
                out.append(beyondCaps(data, part.rest, part.end))
        elif part.isMessage and part.message is not None:
            out.append(" ".join(decodeWords(unfold(v)) for _, v in part.message.headers))
            walk(part.message, False)
        elif part.mainType.lower() in (b"text", b"message") or top:
            out.append(_decodePart(data, part))

    walk(parsed.root, True)
    return "\n".join(out)


def runSearch(view: Any, query: tuple[Any, ...]) -> defer.Deferred[list[int]]:
    """Evaluate C{query} over the view's messages in the runner; fires with seq numbers.

    Header keys (L{HeaderKey}) ANDed at the top of the query are tried first on the
    message's header block, so a message whose cached header cannot match costs no
    message file access and no parse; the rest of the query runs only for the messages
    that pass. When there are such keys and the structure cache keeps header files
    (C{headerSpans}), the header blocks are read from the folder's header file
    L{BULK_BATCH} messages at a time and searched in bulk (L{spanMatches}); the
    messages it lacks are then evaluated as below, and their header blocks queued for
    it.

    Otherwise, when the cache keeps summaries in a file too (C{headersFromFile},
    C{flush}), the messages whose summary is in memory go first, the others' header
    blocks are read from the files L{LOAD_BATCH} at a time (without filling the memory
    tier). Either way, what was computed on the way is written back at the end.
    """
    n = len(view.uids)
    maxUid = view.uids[-1] if view.uids else 0
    compiled = compileQuery(query)
    required, rest = _splitRequired(compiled)
    readsHeader = _readsHeader(compiled)
    cache, folder = view.cache, view.folder
    path = folder.path

    # A structure cache with a file tier (C{headersFromFile}) holds only some summaries
    # in memory: evaluate the messages whose summary is there first, then read the
    # others' from the file a batch at a time, leaving the memory tier alone.
    load = getattr(cache, "headersFromFile", None) if readsHeader else None
    flush = getattr(cache, "flush", None)
    spansOf = getattr(cache, "headerSpans", None) if required else None
    keep = getattr(cache, "recordHeader", None)

    def evaluate(batch: list[tuple[int, int, Any, bool]], out: list[int],
                 deferMissing: bool, fromFile: Any = None,
                 remember: bool = False) -> list[tuple[int, int, Any, bool]]:
        """Append the matching seqs of C{batch} to C{out}; with C{deferMissing},
        return the messages whose summary is not in memory, unevaluated; with
        C{remember}, queue the header blocks found in memory for the header file."""
        missing: list[tuple[int, int, Any, bool]] = []
        peek = cache.peekSummary
        for item in batch:
            seq, uid, info, recent = item
            block = None
            if readsHeader:
                summary = peek((path, info.key))
                if summary is not None:
                    block = summary.header
                    if remember and block is not None and keep is not None:
                        keep(folder, info, block)
                elif fromFile is not None:
                    block = fromFile(info.key)
                elif deferMissing:
                    missing.append(item)
                    continue
                if block is not None and required:
                    ok = True
                    for hkey in required:
                        if not hkey.matches(block):
                            ok = False
                            break
                    if not ok:
                        continue  # a header key fails: no need to look further
                    if rest is None:
                        out.append(seq)
                        continue
            m = _Candidate(view, seq, uid, info, recent)
            m._block = block
            try:
                if _match(compiled if block is None or not required else rest, m, n, maxUid):
                    out.append(seq)
            except MessageVanished:
                continue
        return missing

    def evaluateAll(snapshot: list[tuple[int, int, Any, bool]], out: list[int],
                    remember: bool) -> None:
        """Evaluate C{snapshot} into C{out}: in memory first, then from the files."""
        if load is None:
            evaluate(snapshot, out, False)
            return
        missing = evaluate(snapshot, out, True, remember=remember)
        for start in range(0, len(missing), LOAD_BATCH):
            batch = missing[start : start + LOAD_BATCH]
            found = load(folder, [item[2] for item in batch])
            evaluate(batch, out, False, found.get)
        if missing:
            out.sort()

    if spansOf is not None:
        # The view may change in the reactor meanwhile: copies (at C speed).
        uids = list(view.uids)
        infos = dict(view.infos)
        recent = view.recent
        ghosts = frozenset(view.ghosts)

        def bulkWork() -> list[int]:
            out: list[int] = []
            try:
                wanted = [u for u in uids if u not in ghosts] if ghosts else uids
                missing = _bulkSearch(view, spansOf, wanted, uids, infos, recent, required,
                                      rest, out)
                if missing:
                    evaluateAll([(bisect.bisect_left(uids, u) + 1, u, infos[u], u in recent)
                                 for u in missing], out, True)
                out.sort()
                return out
            finally:
                if flush is not None:
                    flush()  # header blocks and summaries computed on the way

        return view.runner.run(bulkWork)

    infos, recent, ghosts = view.infos, view.recent, view.ghosts
    snapshot = [
        (seq, uid, infos[uid], uid in recent)
        for seq, uid in enumerate(view.uids, 1)
        if uid not in ghosts
    ]

    def work() -> list[int]:
        out: list[int] = []
        try:
            evaluateAll(snapshot, out, False)
            return out
        finally:
            if flush is not None:
                flush()  # summaries computed from message files, for the cache file

    return view.runner.run(work)


BULK_BATCH = 16384
"""Messages whose header records SEARCH reads from a header file at a time."""


def _bulkSearch(view: Any, spansOf: Any, wanted: list[int], uids: list[int],
                infos: dict[int, Any], recent: Any, required: list[HeaderKey],
                rest: tuple[Any, ...] | None, out: list[int]) -> list[int]:
    """Evaluate the messages C{wanted} (UIDs, ascending) whose header block the
    folder's header file has, appending the matching seqs (positions in C{uids}, from
    1) to C{out} in no particular order; return the UIDs it lacks, unevaluated."""
    folder = view.folder
    n = len(uids)
    maxUid = uids[-1] if uids else 0
    missing: list[int] = []

    def keyOf(uid: int) -> str:
        return str(infos[uid].key)

    for start in range(0, len(wanted), BULK_BATCH):
        batch = wanted[start : start + BULK_BATCH]
        got = spansOf(folder, batch, keyOf)
        if got is None:  # no header file: every message the other way
            missing.extend(wanted[start:])
            break
        spans, lacking = got
        missing.extend(lacking)
        for span in spans:
            for uid, block in spanMatches(span, required):
                seq = bisect.bisect_left(uids, uid) + 1
                if rest is None:
                    out.append(seq)
                    continue
                m = _Candidate(view, seq, uid, infos[uid], uid in recent)
                m._block = block
                try:
                    if _match(rest, m, n, maxUid):
                        out.append(seq)
                except MessageVanished:
                    continue
    missing.sort()
    return missing


def spanMatches(span: Span, keys: list[HeaderKey]) -> list[tuple[int, bytes]]:
    """(UID, header block) of the header records (L{packHeaderRecord}) of C{span} whose
    block every key of C{keys} (at least one) matches, in the span's order.

    A key L{HeaderKey.bulk} can search for in the whole span at once goes first: its
    needle is looked for in the span lower-cased, and a plain record (L{HEADER_PLAIN})
    matches exactly when an occurrence lies in the value of a field of the key's name
    (L{_inField}); a plain record without an occurrence cannot match. The other
    records, and the other keys, are tried one record at a time (L{HeaderKey.matches}).
    """
    data, starts, ends, spanUids = span.data, span.starts, span.ends, span.uids
    first = next((k for k in keys if k.bulk), None)
    count = len(starts)

    def blockOf(i: int) -> bytes:
        s = starts[i]
        return data[s + HEADER_PREFIX + (data[s + 3] | data[s + 4] << 8) : ends[i]]

    out: list[tuple[int, bytes]] = []
    if first is None:
        for i in range(count):
            block = blockOf(i)
            if all(k.matches(block) for k in keys):
                out.append((spanUids[i], block))
        return out
    others = [k for k in keys if k is not first]
    # Each record's flags byte, gathered in C; the records without HEADER_PLAIN.
    plain = bytes(map(data.__getitem__, map((2).__add__, starts))).translate(_PLAIN_ONLY)
    hits: list[int] = []
    needle = first.asciiNeedle
    if needle is not None:
        low = data.lower()
        find = low.find
        size = len(needle)
        name = first.nameBytes
        bisectRight = bisect.bisect_right
        pos = find(needle, starts[0]) if count else -1
        while pos >= 0:
            i = bisectRight(starts, pos) - 1
            if not plain[i] or pos + size > ends[i]:
                # A record tried in full below, or an occurrence running out of the
                # record (none later can be in it): on to the next record.
                if i + 1 >= count:
                    break
                pos = find(needle, starts[i + 1])
                continue
            s = starts[i]
            blockStart = s + HEADER_PREFIX + (data[s + 3] | data[s + 4] << 8)
            if pos >= blockStart and _inField(low, blockStart, pos, name):
                hits.append(i)
                if i + 1 >= count:
                    break
                pos = find(needle, starts[i + 1])
            else:
                pos = find(needle, pos + 1)
    candidates = hits
    i = plain.find(0)
    if i >= 0:
        candidates = hits + [i]
        while (i := plain.find(0, i + 1)) >= 0:
            candidates.append(i)
        if hits:
            candidates.sort()
    for i in candidates:
        block = blockOf(i)
        if not plain[i] and not first.matches(block):
            continue
        if all(k.matches(block) for k in others):
            out.append((spanUids[i], block))
    return out


_PLAIN_ONLY = bytes(b & HEADER_PLAIN for b in range(256))
"""A C{bytes.translate} table keeping only the L{HEADER_PLAIN} bit of a flags byte."""


def _inField(low: bytes, blockStart: int, pos: int, name: bytes) -> bool:
    """Whether position C{pos} of the lower-cased ASCII header block starting at
    C{blockStart} in C{low} lies in the value of a field named C{name} (lower case), as
    C{parseHeaders} cuts fields: the logical line holding it (starting after the last
    line end before it not followed by folding white space) has a colon before C{pos},
    and the text before its first colon, stripped, is C{name}."""
    ls = low.rfind(b"\n", blockStart, pos)
    while ls >= 0 and low[ls + 1] in (0x20, 0x09):
        ls = low.rfind(b"\n", blockStart, ls)
    ls = blockStart if ls < 0 else ls + 1
    colon = low.find(b":", ls, pos)
    return colon >= 0 and low[ls:colon].strip() == name


# --- header keys ----------------------------------------------------------------------


def compileQuery(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """C{key} (a L{parseSearch} tree) with every C{("header", name, needle)} replaced by
    C{("hkey", HeaderKey(name, needle))}, so the key's patterns are looked up once per
    search, not once per message."""
    op = key[0]
    if op == "header":
        return ("hkey", HeaderKey(key[1], key[2], folded=True))
    if op == "and":
        return ("and", [compileQuery(k) for k in key[1]])
    if op == "not":
        return ("not", compileQuery(key[1]))
    if op == "or":
        return ("or", compileQuery(key[1]), compileQuery(key[2]))
    return key


def _splitRequired(key: tuple[Any, ...]) -> tuple[list[HeaderKey], tuple[Any, ...] | None]:
    """The header keys every match must satisfy (those ANDed at the top of the compiled
    query C{key}), and the rest of the query (None when nothing else is asked)."""
    required: list[HeaderKey] = []
    others: list[tuple[Any, ...]] = []

    def walk(k: tuple[Any, ...]) -> None:
        if k[0] == "and":
            for sub in k[1]:
                walk(sub)
        elif k[0] == "hkey":
            required.append(k[1])
        else:
            others.append(k)

    walk(key)
    return required, (("and", others) if others else None)


def _readsHeader(key: tuple[Any, ...]) -> bool:
    """Whether evaluating the compiled query C{key} may read a message's header."""
    op = key[0]
    if op == "and":
        return any(_readsHeader(k) for k in key[1])
    if op == "not":
        return _readsHeader(key[1])
    if op == "or":
        return _readsHeader(key[1]) or _readsHeader(key[2])
    return op in ("hkey", "header", "text") or (op == "date" and key[1] == "sent")


class HeaderKey:
    """A compiled C{HEADER name string} key (and SUBJECT, FROM, TO, CC, BCC): whether a
    header block has a field C{name} whose value, unfolded and with encoded words
    decoded, contains C{needle} -- what C{parseHeaders} and C{decodeHeaderText} with
    case folding give, found faster:

      - an ASCII block without encoded words is its own decoding: it is refused at once
        when the needle is beyond ASCII, or (for a needle without white space, which
        no fold can split) not in the lower-cased block; else the named fields of the
        lower-cased block are searched as bytes;
      - otherwise only the fields named C{name} (L{fieldExtractor}) are decoded and
        searched, each by L{valueContains}.

    @ivar name: the field name, lower case.
    @ivar needle: the case-folded search string.
    @ivar asciiNeedle: C{needle} as bytes when it is ASCII, else None.
    @ivar spaced: whether the needle holds a space or tab (so it may span a fold).
    @ivar nameBytes: C{name} as bytes when it is plain (L{_PLAIN_NAME}), else None.
    @ivar bulk: whether L{spanMatches} may search for this key in bulk: a plain name,
        and a needle beyond ASCII (no plain record can match it) or a non-empty ASCII
        one without white space (what C{bytes.strip} removes: no unfolding or
        stripping changes an occurrence of it).
    """

    __slots__ = ("name", "needle", "asciiNeedle", "spaced", "fields", "nameBytes", "bulk",
                 "address")

    def __init__(self, name: str, needle: str, folded: bool = False) -> None:
        """A key for field C{name} (lower case) and C{needle}: search text, or with
        C{folded} its casemap key already (L{searchFold}, as L{parseSearch} gives it;
        folding a key again could change it: C{ﬁ}'s key C{fi} would become C{FI})."""
        self.name = name
        if not folded:
            needle = searchFold(needle)
        self.needle = needle
        # The needle is a casemap key; plain ASCII blocks are compared lower-cased.
        self.asciiNeedle = needle.lower().encode("ascii") if needle.isascii() else None
        self.spaced = " " in needle or "\t" in needle
        self.fields = fieldExtractor(name)
        plainName = name == name.lower() and _PLAIN_NAME.fullmatch(name) is not None
        self.nameBytes = name.encode("ascii") if plainName else None
        # An address field is also searched as its addresses without comments or
        # quoting (as Dovecot does), which matters only for a needle that spans more
        # than one atom: a comment cannot sit inside an atom.
        self.address = name in ADDRESS_FIELDS and any(c in _ADDRESS_SPECIALS for c in needle)
        self.bulk = plainName and not self.address and (
            self.asciiNeedle is None
            or (self.asciiNeedle != b"" and self.asciiNeedle.split() == [self.asciiNeedle]))

    def matches(self, block: bytes) -> bool:
        """Whether a field C{name} of the header C{block} contains the needle, as
        written or (an address field) in its addresses' plain form."""
        if self._literal(block):
            return True
        return self.address and any(
            self.needle in plainAddresses(value) for value in self.fields(block)
            if any(c in value for c in b'("\\'))

    def _literal(self, block: bytes) -> bool:
        """Whether a field C{name} of C{block} contains the needle as written."""
        needle = self.asciiNeedle
        if block.isascii():
            if needle is None:
                if b"=?" not in block:
                    return False  # every value is plain ASCII: no non-ASCII text in it
            else:
                lowered = block.lower()
                if needle in lowered or self.spaced:
                    if b"=?" not in block:
                        # Every value is plain ASCII, its own decoding, folded by
                        # lower-casing: the lowered block's fields are what to search.
                        for value in self.fields(lowered):
                            if needle in unfold(value):
                                return True
                        return False
                elif b"=?" not in block:
                    # Unfolding only removes line breaks before white space, so a
                    # needle without white space is in the block if in any value.
                    return False
        for value in self.fields(block):
            if valueContains(value, self.needle, needle):
                return True
        return False


ADDRESS_FIELDS = frozenset({"from", "to", "cc", "bcc", "sender", "reply-to"})
"""Fields whose addresses FROM, TO, CC, BCC and HEADER also search without comments."""
_ADDRESS_SPECIALS = frozenset('()<>[]:;@\\,." \t')
"""Characters outside an atom (RFC 5322 3.2.3)."""


def plainAddresses(value: bytes) -> str:
    """The address list of a raw field value as C{name <local@domain>, ...} with the
    comments and quoting gone, case-folded (what an address search also looks in)."""
    text = decodeWords(unfold(value))
    out = []
    for name, addr in email.utils.getaddresses([text]):
        name = name.strip()
        if name.startswith("(") and name.endswith(")"):
            name = ""  # getaddresses makes a lone comment the display name
        out.append(f"{name} <{addr}>" if name else addr)
    return searchFold(", ".join(out))


def valueContains(value: bytes, needle: str, asciiNeedle: bytes | None) -> bool:
    """Whether the raw header field C{value} contains C{needle} (case-folded text;
    C{asciiNeedle} is it as bytes when it is ASCII, else None) once unfolded, decoded
    (L{decodeWords}) and case-folded.

    A plain ASCII value without C{=?} is its own decoding and folds by lower-casing,
    so it is compared as bytes, and never contains a needle beyond ASCII.
    """
    value = unfold(value)
    if value.isascii() and b"=?" not in value:
        return asciiNeedle is not None and asciiNeedle in value.lower()
    return needle in searchFold(decodeWords(value))


_WS = rb"(?:[ \t\r\x0b\x0c]|\n(?=[ \t]))*"
"""White space that may surround a field name within one logical line (what
C{bytes.strip} removes; a line break only when folding follows)."""

_VALUE = rb"((?:[^\r\n]+|\r(?!\n)|\r?\n(?=[ \t]))*)"
"""A field value: the rest of the logical line (folding included)."""

_PLAIN_NAME = re.compile(r"[!-9;-~]+")
"""Field names L{fieldExtractor} finds with a pattern: printable ASCII without a colon
or space (other names go through L{parseHeaders})."""

_extractors: dict[str, Callable[[bytes], list[bytes]]] = {}
_EXTRACTORS_MAX = 64


def fieldExtractor(name: str) -> Callable[[bytes], list[bytes]]:
    """A function giving the raw values of every field C{name} (lower case) of a header
    block, in order: the values C{parseHeaders} gives for the fields whose name,
    decoded as Latin-1 and lower-cased, is C{name}.

    For a plain name (L{_PLAIN_NAME}, lower case) two compiled case-insensitive
    patterns find the fields where a logical line starts -- the block's start, or a line
    end not followed by folding -- with white space around the name before the colon,
    as C{parseHeaders} strips it; other names (none, or with spaces, colons, upper case
    or beyond ASCII) filter L{parseHeaders}' fields. Memoised (a few dozen names).
    """
    extractor = _extractors.get(name)
    if extractor is not None:
        return extractor
    if name == name.lower() and _PLAIN_NAME.fullmatch(name):
        field = re.escape(name.encode("ascii")) + _WS + rb":" + _VALUE
        first = re.compile(_WS + field, re.IGNORECASE).match
        others = re.compile(rb"\n(?![ \t])" + _WS + field, re.IGNORECASE).findall

        def extractor(block: bytes) -> list[bytes]:
            if block[:1] not in b" \t":
                # A line end before a first line that does not start with white space
                # starts a logical line there, as the block's start does.
                return others(b"\n" + block)
            m = first(block)
            if m is None:
                return others(block)
            return [m.group(1), *others(block)]
    else:

        def extractor(block: bytes) -> list[bytes]:
            return [v for n, v in parseHeaders(block) if n.decode("latin-1").lower() == name]

    if len(_extractors) >= _EXTRACTORS_MAX:
        _extractors.clear()
    _extractors[name] = extractor
    return extractor


def headerFields(block: bytes, name: str) -> list[bytes]:
    """The raw values of every field C{name} (lower case) of the header C{block}, as
    L{parseHeaders} gives them (see L{fieldExtractor})."""
    return fieldExtractor(name)(block)


# --- RFC 2047 encoded words -----------------------------------------------------------

_ECRE = email.header.ecre
"""The encoded-word pattern of C{email.header.decode_header}, so words are found where
it finds them."""

_SPLITLINES = re.compile(rb"[\n\r\x0b\x0c\x1c-\x1e]")
"""ASCII characters at which C{str.splitlines} breaks a line."""

_ONE_WORD = re.compile(
    r"=\?([^?\n\r\x0b\x0c\x1c-\x1e]*)\?([qQbB])\?([^?\n\r\x0b\x0c\x1c-\x1e]*)\?=")
"""A value that is one encoded word and nothing else, on one line: L{_ECRE} finds just
this word in it (its text has no C{?}, so the word ends at the first C{?=})."""

_HEX_PAIRS = {
    (a + b).encode("ascii"): bytes([int(a + b, 16)])
    for a in "0123456789abcdefABCDEF"
    for b in "0123456789abcdefABCDEF"
}


def _qDecode(text: str) -> bytes:
    """The octets of RFC 2047 Q-encoded text (ASCII, on one line), as
    C{email.quoprimime.header_decode} gives them: C{_} is a space, C{=XX} (hex digits)
    an octet, anything else itself."""
    raw = text.encode("ascii")
    if b"=" not in raw:
        return raw.replace(b"_", b" ")
    if b"==" not in raw and raw[-1:] != b"=":
        # binascii agrees but for "==" (it makes "=") and a final "=" (it drops it).
        return binascii.a2b_qp(raw, header=True)
    pieces = raw.replace(b"_", b" ").split(b"=")
    out = [pieces[0]]
    for piece in pieces[1:]:
        octet = _HEX_PAIRS.get(piece[:2])
        if octet is None:
            out.append(b"=")
            out.append(piece)
        else:
            out.append(octet)
            out.append(piece[2:])
    return b"".join(out)


def _wordOctets(encoded: str, encoding: str) -> bytes | None:
    """The octets of one encoded word's text (C{encoding} C{q} or C{b}, any case), as
    C{email.header.decode_header} takes them; None when Base64 does not decode."""
    if encoding in "qQ":
        return _qDecode(encoded)
    pad = len(encoded) % 4
    if pad:
        encoded += "==="[: 4 - pad]  # decode_header adds the missing padding
    if not encoded:
        return b""
    try:
        return binascii.a2b_base64(encoded.encode("ascii"))
    except binascii.Error:
        return None


def _decodeChunk(chunk: bytes, charset: str | None) -> str:
    """Decoded octets of a run of encoded words in C{charset}; octets in an unknown or
    unusable charset are read as UTF-8."""
    try:
        return chunk.decode(charset or "utf-8", "replace")
    except (LookupError, ValueError):  # unknown, not a text codec, or one that fails
        return chunk.decode("utf-8", "replace")


def _decodeOther(value: bytes) -> str:
    """C{decodeHeaderText(value)}; the value as it is where that fails (a charset whose
    codec raises, such as C{idna})."""
    try:
        return decodeHeaderText(value)
    except ValueError:
        return value.decode("utf-8", "replace")


def decodeWords(value: bytes) -> str:
    """An unfolded header value with its RFC 2047 encoded words decoded: the text
    C{decodeHeaderText} gives, without its cost in the common case.

    A value without C{=?} is its UTF-8 text. An ASCII value on one line is decoded here
    as C{email.header.decode_header} (which C{decodeHeaderText} uses) does it: the same
    encoded-word pattern; the leading white space dropped; white space between two
    encoded words dropped; the octets of adjacent words in the same charset joined
    before decoding; a Base64 word given its missing padding, and one that does not
    decode leaves the whole value as it is. Anything else (8-bit text, line breaks)
    goes to C{decodeHeaderText}.

    Where C{decodeHeaderText} fails (a charset whose codec raises, such as C{idna}),
    this gives the text as for an unknown charset (or, via C{decodeHeaderText}, the
    value as it is) rather than raising.
    """
    if b"=?" not in value:
        return value.decode("utf-8", "replace")
    if not value.isascii():
        return _decodeOther(value)
    text = value.decode("ascii")
    one = _ONE_WORD.fullmatch(text)
    if one is not None:  # the common case: the value is one encoded word
        octets = _wordOctets(one.group(3), one.group(2))
        return text if octets is None else _decodeChunk(octets, one.group(1).lower())
    if _SPLITLINES.search(value):
        return _decodeOther(value)
    parts = _ECRE.split(text)
    if len(parts) == 1:
        return text  # no complete encoded word
    # (text, encoding, charset) words, as decode_header lists them.
    words: list[tuple[str, str | None, str | None]] = []
    head = parts[0].lstrip()
    if head:
        words.append((head, None, None))
    for i in range(1, len(parts), 4):
        words.append((parts[i + 2], parts[i + 1].lower(), parts[i].lower()))
        if parts[i + 3]:
            words.append((parts[i + 3], None, None))
    drop = [n - 1 for n in range(2, len(words))
            if words[n][1] and words[n - 2][1] and words[n - 1][0].isspace()]
    if drop:  # one pass: deleting each would move the rest of the list each time
        dropped = set(drop)
        words = [w for n, w in enumerate(words) if n not in dropped]
    # Runs of octets in one charset, each kept as its pieces and joined once (joining
    # as it grows would copy the run again for each of thousands of words).
    chunks: list[tuple[list[bytes], str | None]] = []
    last: list[bytes] | None = None
    lastCharset: str | None = None
    for word, encoding, charset in words:
        if encoding is None:
            octets = word.encode("ascii")
        else:
            decoded = _wordOctets(word, encoding)
            if decoded is None:
                return text  # decode_header refuses the value: match it as it is
            octets = decoded
        if last is None:
            last, lastCharset = [octets], charset
        elif charset != lastCharset:
            chunks.append((last, lastCharset))
            last, lastCharset = [octets], charset
        elif lastCharset is None:
            last.append(b" ")
            last.append(octets)
        else:
            last.append(octets)
    assert last is not None
    chunks.append((last, lastCharset))
    return "".join([_decodeChunk(b"".join(chunk), charset) for chunk, charset in chunks])
