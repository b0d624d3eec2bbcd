"""The syntax of a message's header fields, and the caps every MIME parse keeps to.

The caps (L{MAX_HEADER_BLOCK}, L{MAX_PARTS} and the rest) bound what one parse of a
hostile message costs. The rest are pure functions over header bytes: splitting a
header from its body, header fields and their folding, C{Content-*} parameters (RFC
2045, RFC 2231 continuations), address lists (RFC 5322, as Dovecot reads them),
header filtering for C{BODY[HEADER.FIELDS]} and encoded-word decoding for SEARCH.
Header values are kept raw (encoded words are passed to the client as they are, as
RFC 3501 asks).
"""

from __future__ import annotations

import binascii
import email.header
import re
from collections.abc import Iterator
from typing import Any

MAX_DEPTH = 20
"""Parts nested deeper than this are treated as opaque application/octet-stream."""

MAX_PARTS = 2000
"""At most this many MIME parts are parsed per message."""

MAX_HEADER_BLOCK = 1 << 20
"""At most this many bytes of one header block (a message's, or a MIME part's) are
looked at for ENVELOPE, BODYSTRUCTURE and SEARCH: the rest of the block is dropped
(L{consideredBlock}). The part's size
and section bytes (C{BODY[HEADER]}, C{BODY[1.MIME]}) stay whole. Dovecot caps a header
block at 10 MiB (C{MESSAGE_HEADER_BLOCK_DEFAULT_MAX_SIZE}); Postfix keeps at most
100 KiB of one header field (C{header_size_limit}): a block of 1 MiB is ten such
fields, far past any real header, and a bounded cost for every parse of it."""

MAX_ALL_HEADERS = 4 << 20
"""At most this many header bytes of all the parts of one message are looked at; past
it, a part's header is cut to what remains (empty: the part has its context's default
type). Dovecot's counterpart is 50 MiB (C{MESSAGE_PARSER_DEFAULT_ALL_HEADERS_MAX_SIZE});
with L{MAX_PARTS} this bounds the memory of one parse, the part headers it keeps
included."""

MAX_ADDRESSES = 1000
"""At most this many addresses (group markers count) are kept per address list of an
ENVELOPE; the rest of the field is not parsed (a group cut short still gets its end
marker). Postfix accepts at most 1000 recipients per message (C{smtpd_recipient_limit})
and parses at most 10240 address tokens of a header (C{header_address_token_limit});
Dovecot has no count cap, only the header block's size."""

MAX_PARAMS = 128
"""At most this many parameters of a Content-Type or Content-Disposition field are
parsed (the pieces between semicolons, broken ones counted); the rest are dropped.
Dovecot's C{RFC2231_MAX_PARAMS} is the same 128 (lib-mail, 2026: "to avoid excessive
CPU usage")."""

MAX_PARAM_BYTES = 16384
"""The parameters kept for a field hold at most this many bytes of names and values:
the first one that would go past it is dropped with all after it. A boundary has at
most 70 characters (RFC 2046) and a file name 255 octets, three times that when
percent-encoded (RFC 2231): 16 KiB keeps any real list whole."""


_FOLD = re.compile(rb"\r?\n(?=[ \t])")


def removeFolds(data: bytes) -> bytes:
    """C{data} with every line end that folding white space follows removed (the white
    space kept): what C{_FOLD.sub(b"", data)} gives.

    When every LF ends a CRLF (a stored message read as IMAP serves it) this is two
    C{bytes.replace} calls, each a short C loop: the regex's look-ahead costs about ten
    times as much on a megabyte of folded addresses, and holds the interpreter lock for
    all of it. A bare LF (where replacing could join pieces the regex keeps apart) takes
    the regex.
    """
    if b"\n" not in data:
        return data
    if data.count(b"\n") != data.count(b"\r\n"):
        return _FOLD.sub(b"", data)
    return data.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")


def decodeQuotedPrintable(data: bytes) -> bytes:
    """A quoted-printable body decoded as RFC 2045 section 6.7 has it, as Dovecot
    decodes it: white space at the end of a line is transport padding and goes (rule
    3), C{=} at the end of a line (white space after it allowed) is a soft line
    break (rule 5), C{=XX} is an octet; a malformed C{=} stays as it is."""
    out = []
    for line in data.splitlines(keepends=True):
        text = line.rstrip(b"\r\n")
        end = line[len(text):]
        text = text.rstrip(b" \t")
        if text.endswith(b"="):
            text, end = text[:-1], b""
        out.append(text)
        out.append(end)
    return binascii.a2b_qp(b"".join(out))


def unfold(value: bytes) -> bytes:
    """Unfold a header value and strip surrounding white space."""
    return removeFolds(value).strip()


def splitHeader(data: bytes, start: int, end: int) -> int:
    """The offset where the body of the entity at C{start} begins (after the blank line:
    the first line end followed by another, C{\\r?\\n\\r?\\n}), never past C{end}."""
    if start >= end:
        return end
    if data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        return start + (2 if data.startswith(b"\r\n", start) else 1)
    crlf = data.find(b"\n\r\n", start, end)  # the usual blank line, found at C speed
    limit = end if crlf < 0 else crlf + 1
    lf = data.find(b"\n\n", start, limit)  # a blank line with a bare LF at or before it
    if lf >= 0:
        return lf + 2
    return end if crlf < 0 else crlf + 3


def consideredBlock(data: bytes, start: int, bodyStart: int,
                    limit: int = MAX_HEADER_BLOCK) -> bytes:
    """The header block C{data[start:bodyStart]} as ENVELOPE, BODYSTRUCTURE and SEARCH
    look at it: its first C{limit} bytes (all of it when shorter). As in Dovecot, the
    field the cut falls in keeps its first bytes (a Content-Type of millions of
    parameters keeps its type and first parameters) and the fields after it are
    dropped."""
    return data[start : min(bodyStart, start + max(limit, 0))]


def parseHeaders(block: bytes) -> list[tuple[bytes, bytes]]:
    """Header fields of a header block as (name, raw value) pairs in order.

    The block is cut into logical lines at each line end (C{\\r?\\n}) not followed by
    folding white space (space or tab); the name is what precedes the first colon,
    stripped; a line without a colon (blank, or garbage) is no field.
    """
    if b"\n " not in block and b"\n\t" not in block:
        lines = block.replace(b"\r\n", b"\n").split(b"\n")  # no folding: every end cuts
    else:
        # Each logical line is joined once from its physical lines (folding: the line
        # end stays in the value): appending to a growing value instead would copy it
        # again for every fold, quadratic in a field folded thousands of times.
        lines = []
        run: list[bytes] = []
        for piece in block.split(b"\n"):
            if run and piece[:1] in b" \t" and piece:
                run.append(piece)
                continue
            if run:
                lines.append(run[0] if len(run) == 1 else b"\n".join(run))
            run = [piece]
        if run:
            lines.append(run[0] if len(run) == 1 else b"\n".join(run))
        for i in range(len(lines) - 1):
            if lines[i][-1:] == b"\r":  # the CR of a cutting CRLF goes with it
                lines[i] = lines[i][:-1]
    out: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip(), value))
    return out


_FIELD_WS = rb"(?:[ \t\r\x0b\x0c]|\n(?=[ \t]))*"
"""White space L{parseHeaders} strips around a name (folding included)."""

_CONTENT_FIELD = re.compile(
    rb"\n(?![ \t])" + _FIELD_WS + rb"(content-[!-9;-~]*)" + _FIELD_WS
    + rb":((?:[^\r\n]+|\r(?!\n)|\r?\n(?=[ \t]))*)",
    re.IGNORECASE)
"""A C{Content-*} field with a printable-ASCII name at the start of a logical line
(after a line end not followed by folding): its name and raw value."""


def contentFields(block: bytes) -> dict[bytes, bytes]:
    """The first raw value of each C{Content-*} field of a header block whose name is
    printable ASCII, by lower-case name: for those names, what L{parseHeaders} gives."""
    out: dict[bytes, bytes] = {}
    for name, value in contentFieldList(block):
        out.setdefault(name.lower(), value)
    return out


def contentFieldList(block: bytes) -> list[tuple[bytes, bytes]]:
    """The C{Content-*} fields of a header block as (name, raw value) pairs in order
    (at least those whose name is printable ASCII; see L{contentFields}).

    A first line that does not start with white space starts a logical line as a line
    end not followed by folding does; a first line that does is still a field for
    L{parseHeaders} (nothing precedes it to fold into), so a block starting with white
    space takes that slower path.
    """
    if block[:1] in b" \t" and block:
        return [(n, v) for n, v in parseHeaders(block) if n[:8].lower() == b"content-"]
    return _CONTENT_FIELD.findall(b"\n" + block)


def parseParams(text: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split a C{type/subtype; a=b; c="d"} value into the value and its parameters.

    Only the first L{MAX_PARAMS} pieces after the value are parsed, and the parameters
    kept hold at most L{MAX_PARAM_BYTES} of names and values (the first that would go
    past it is dropped with the rest), so a field of millions of parameters costs what
    its first few do.
    """
    items = _splitSemicolons(text, MAX_PARAMS + 1)
    value = items[0].strip() if items else b""
    params: list[tuple[bytes, bytes]] = []
    for item in items[1:]:
        name, sep, v = item.partition(b"=")
        name = name.strip()
        if not sep or not name:
            continue
        v = v.strip()
        if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
            v = v[1:-1]
            if b"\\" in v:
                v = _QUOTED_PAIR.sub(rb"\1", v)
        params.append((name, v))
    if b"*" in text:
        params = mergeContinuations(params)
    return value, _withinBytes(params)


def _withinBytes(params: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The first parameters of C{params} whose names and values hold at most
    L{MAX_PARAM_BYTES} together."""
    total = 0
    for i, (n, v) in enumerate(params):
        total += len(n) + len(v)
        if total > MAX_PARAM_BYTES:
            return params[:i]
    return params


_QUOTED_PAIR = re.compile(rb"\\(.)")
_CONTINUATION = re.compile(rb"(?P<name>[^*]+)\*(?P<n>[0-9]+)(?P<ext>\*?)")


def mergeContinuations(params: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Join RFC 2231 continuations (C{name*0*=..; name*1=..}) into one parameter, as
    Dovecot does: the values are concatenated in segment order as they are (no
    decoding), the name is C{name*} when the first segment is extended, else C{name};
    joined parameters follow the others, in order of first appearance."""
    if not any(b"*" in n for n, _ in params):
        return params
    plain: list[tuple[bytes, bytes]] = []
    groups: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    for n, v in params:
        m = _CONTINUATION.fullmatch(n)
        if m is None:
            plain.append((n, v))
            continue
        groups.setdefault(m.group("name").lower(), []).append(
            (int(m.group("n")), bool(m.group("ext")), v))
    names = {m.group("name").lower(): m.group("name")
             for m in (_CONTINUATION.fullmatch(n) for n, _ in params) if m is not None}
    for key, segments in groups.items():
        segments.sort(key=lambda seg: seg[0])
        name = names[key] + (b"*" if segments[0][1] else b"")
        plain.append((name, b"".join(v for _, _, v in segments)))
    return plain


_QUOTED_OR_SEMICOLON = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*"?|;')
"""A quoted string (to its closing quote or the end) or a semicolon outside one."""


def _splitSemicolons(text: bytes, limit: int | None = None) -> list[bytes]:
    """A parameter list cut at the semicolons outside quoted strings and comments,
    comments dropped (quoted strings and escapes kept as they are); with C{limit}, only
    the first C{limit} pieces, found without looking further."""
    if b"(" not in text:
        if b'"' not in text:
            # no quotes or comments: the loop below would do this
            return text.split(b";") if limit is None else text.split(b";", limit)[:limit]
        if (b"\\" not in text and (limit is None or text.count(b'"') <= 4 * limit)
                and b";" not in b"".join(text.split(b'"')[1::2])):
            # no semicolon inside the quoted strings either
            return text.split(b";") if limit is None else text.split(b";", limit)[:limit]
        out = []  # without comments nothing is dropped: cut at the bare semicolons
        last = 0
        for m in _QUOTED_OR_SEMICOLON.finditer(text):
            at = m.start()
            if text[at] == 0x3B:
                out.append(text[last:at])
                last = at + 1
                if limit is not None and len(out) >= limit:
                    return out
        out.append(text[last:])
        return out
    return splitSemicolonsByChar(text, limit)


def splitSemicolonsByChar(text: bytes, limit: int | None = None) -> list[bytes]:
    """What L{_splitSemicolons} gives, one character at a time: the way for lists with
    comments, and the reference its faster ways are held to. With C{limit}, the first
    C{limit} pieces: the characters after them are not looked at."""
    out = []
    cur = bytearray()
    inQuote = False
    esc = False
    depth = 0
    for c in text:
        if esc:
            cur.append(c)
            esc = False
        elif c == 0x5C and inQuote:
            cur.append(c)
            esc = True
        elif c == 0x22 and depth == 0:
            inQuote = not inQuote
            cur.append(c)
        elif c == 0x28 and not inQuote:
            depth += 1
        elif c == 0x29 and not inQuote and depth:
            depth -= 1
        elif depth:
            continue
        elif c == 0x3B and not inQuote:
            out.append(bytes(cur))
            if limit is not None and len(out) >= limit:
                return out
            cur = bytearray()
        else:
            cur.append(c)
    out.append(bytes(cur))
    return out


# --- ENVELOPE --------------------------------------------------------------------

_ADDR_TOKEN = re.compile(
    rb'\s*+(?:(?P<q>"(?:[^"\\]|\\.)*")|(?P<c>\()|(?P<s>[<>,:;@.])|(?P<a>[^\s"(),:;<>@.\[\]]+|\[[^\]]*\]))',
    re.S,
)
"""One address token after white space (taken whole: no backtracking into it)."""

_SPACE = re.compile(rb"\s*")
_UNESCAPE = re.compile(rb"\\(.)", re.S)


def _afterSpace(value: bytes, pos: int) -> int:
    """The position after the white space (if any) at C{pos} of C{value}."""
    m = _SPACE.match(value, pos)
    assert m is not None  # \s* matches everywhere
    return m.end()


def _tokens(value: bytes) -> Iterator[tuple[str, bytes]]:
    """The tokens of an address-list value, in order, as they are asked for: (kind,
    text) with kind C{word} (an atom, a domain literal or a quoted string unquoted),
    C{special} (one of C{<>,:;@.}) or C{comment} (its text, nesting kept). A character
    no token starts with is skipped.

    Linear in the value: a quoted string or domain literal that never closes is looked
    for once (no later one closes either: a later quote is the escaped second half of
    a pair the failed scan went through, so a scan from it runs to the end the same
    way; no C{]} follows a C{[} that found none), and a comment's scan ends where its
    token does.
    """
    pos = 0
    n = len(value)
    noQuote = noBracket = False  # an unclosed '"' or '[' was met: none closes later
    while pos < n:
        if noQuote or noBracket:
            k = _afterSpace(value, pos)
            ch = value[k : k + 1]
            if (ch == b'"' and noQuote) or (ch == b"[" and noBracket):
                pos = k + 1
                continue
        m = _ADDR_TOKEN.match(value, pos)
        if not m:
            k = _afterSpace(value, pos)
            ch = value[k : k + 1]
            if ch == b'"':
                noQuote = True
            elif ch == b"[":
                noBracket = True
            pos = k + 1  # the white space cannot start a token either
            continue
        if m.group("c") is not None:
            depth = 0
            i = m.start("c")
            j = i
            while j < n:
                ch = value[j : j + 1]
                if ch == b"\\":
                    j += 2
                    continue
                if ch == b"(":
                    depth += 1
                elif ch == b")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            yield ("comment", value[i + 1 : j])
            pos = j + 1
            continue
        if m.group("q") is not None:
            yield ("word", _UNESCAPE.sub(rb"\1", m.group("q")[1:-1]))
        elif m.group("s") is not None:
            yield ("special", m.group("s"))
        else:
            yield ("word", m.group("a"))
        pos = m.end()


_SIMPLE_ADDRESS = re.compile(
    rb"[ \t]*+(?:(?P<phrase>(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]++[ \t]*+)*+)"
    rb"<(?P<lm>[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]++)@(?P<hm>[A-Za-z0-9.-]++)>"
    rb"|(?P<l>[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]++)@(?P<h>[A-Za-z0-9.-]++))[ \t]*+(?:,|\Z)"
)
"""One address of the common forms, its comma included. Every repetition is
possessive: the words of a phrase and the white space between them cannot trade
characters, so a long phrase or run of spaces that ends in no address fails in one
pass instead of trying every way to split it."""


def _simpleAddressList(value: bytes, limit: int = MAX_ADDRESSES) -> list[Any] | None:
    """The common forms C{a@b} and C{Some Name <a@b>}, comma-separated, parsed fast;
    None when anything else appears (quotes, comments, groups, routes, folding, dots in
    a name...), for the full tokenizer. Gives exactly what the tokenizer would (for the
    first C{limit} addresses, where it stops: what follows them cannot change them)."""
    out: list[Any] = []
    pos = 0
    n = len(value)
    while pos < n:
        if len(out) >= limit:
            return out
        m = _SIMPLE_ADDRESS.match(value, pos)
        if m is None or m.end() == pos:
            return None
        local, host = m.group("lm", "hm")
        if local is not None:
            phrase = m.group("phrase")
            name = b" ".join(phrase.split()) if phrase else b""
            addr = (name or None, None, local, host)
        else:
            local, host = m.group("l", "h")
            addr = (None, None, local, host)
        if (local[0] == 0x2E or local[-1] == 0x2E or host[0] == 0x2E or host[-1] == 0x2E
                or b".." in local or b".." in host):
            return None  # empty dot-atoms: the tokenizer decides
        out.append(addr)
        pos = m.end()
        if pos == n and value.endswith(b","):
            return None
    return out or None


def parseAddressList(value: bytes | None, limit: int = MAX_ADDRESSES) -> list[Any] | None:
    """ENVELOPE address structures for an address-list header, or None.

    Each address is C{(name, adl, mailbox, host)}; groups become a start marker
    C{(NIL NIL name NIL)} and an end marker C{(NIL NIL NIL NIL)} as RFC 3501 describes.
    At most C{limit} of them are given (L{MAX_ADDRESSES}), and a group's end marker
    after them: the value is parsed no further, and a group then open is closed.
    Linear in the part of the value parsed.
    """
    if value is None:
        return None
    simple = _simpleAddressList(value, limit)
    if simple is not None:
        return simple
    out: list[Any] = []
    inGroup = False
    cur: list[tuple[str, bytes]] = []
    angle = 0  # how many more '<' than '>' cur holds, kept as it grows

    def flush() -> None:
        nonlocal angle
        if cur:
            addr = _address(cur)
            if addr is not None:
                out.append(addr)
        cur.clear()
        angle = 0

    for kind, t in _tokens(value):
        if len(out) >= limit:
            break
        if kind == "special" and t == b"," and angle <= 0:
            flush()
        elif kind == "special" and t == b":" and not inGroup and angle <= 0:
            name = b" ".join(w for k, w in cur if k == "word")
            cur.clear()
            angle = 0
            out.append((None, None, name, None))
            inGroup = True
        elif kind == "special" and t == b";" and inGroup and angle <= 0:
            flush()
            out.append((None, None, None, None))
            inGroup = False
        else:
            cur.append((kind, t))
            if kind == "special":
                if t == b"<":
                    angle += 1
                elif t == b">":
                    angle -= 1
    if len(out) < limit:
        flush()
    if inGroup:
        out.append((None, None, None, None))
    return out or None


MISSING_MAILBOX = b"MISSING_MAILBOX"
"""The mailbox Dovecot reports for an address without a local part (C{@}, C{<>})."""

MISSING_DOMAIN = b"MISSING_DOMAIN"
"""The host Dovecot reports for an address without a domain: a NIL host would mark a
group (RFC 3501 7.4.2), so an address needs one."""


def _joinAddr(toks: list[tuple[str, bytes]]) -> tuple[bytes | None, bytes, bytes]:
    """(source route, mailbox, host) of an addr-spec's tokens, with Dovecot's
    placeholders for a missing mailbox or host."""
    parts = [t for k, t in toks if k != "comment"]
    route = None
    if b":" in parts:  # obsolete source route (@a,@b:) -- RFC 3501's adl
        colon = parts.index(b":")
        route = b"".join(parts[:colon]) or None
        parts = parts[colon + 1 :]
    text = b"".join(parts)
    local, sep, host = text.rpartition(b"@")
    if not sep:
        local, host = text, b""
    return route, local or MISSING_MAILBOX, host or MISSING_DOMAIN


def _address(toks: list[tuple[str, bytes]]) -> tuple[Any, ...] | None:
    """One address (name, adl, mailbox, host) from its tokens, or None when empty."""
    if not any(k != "comment" for k, _ in toks):
        return None
    if any(k == "special" and t == b"<" for k, t in toks):
        lt = next(i for i, (k, t) in enumerate(toks) if k == "special" and t == b"<")
        try:
            gt = next(
                i for i, (k, t) in enumerate(toks) if i > lt and k == "special" and t == b">"
            )
        except StopIteration:
            gt = len(toks)
        phrase = [t for k, t in toks[:lt] if k in ("word", "special") and t not in (b"<",)]
        name = b" ".join(phrase).replace(b" . ", b".") if phrase else None
        if name is None:
            comments = [t for k, t in toks[:lt] if k == "comment"]
            name = comments[0] if comments else None
        route, mailbox, host = _joinAddr(toks[lt + 1 : gt])
        return (name, route, mailbox, host)
    route, mailbox, host = _joinAddr(toks)
    # A comment names the address only after the addr-spec (C{a@b (Name)}).
    last = max(i for i, (k, _) in enumerate(toks) if k != "comment")
    comments = [t for k, t in toks[last + 1 :] if k == "comment"]
    name = comments[-1].strip() if comments and comments[-1].strip() else None
    return (name, route, mailbox, host)


def filterHeaders(block: bytes, names: list[bytes], negate: bool) -> bytes:
    """The header fields of C{block} named (or, with C{negate}, not named) in C{names}.

    Fields keep their order and folding; the result ends with the blank line.
    """
    wanted = {n.lower() for n in names}
    out = []
    for line in re.split(rb"(?<=\n)(?![ \t])", block):
        if not line.strip():
            continue
        name = line.split(b":", 1)[0].strip().lower()
        if (name in wanted) != negate:
            out.append(line if line.endswith(b"\n") else line + b"\r\n")
    return b"".join(out) + b"\r\n"


def decodeHeaderText(value: bytes) -> str:
    """A header value with encoded words decoded, for SEARCH matching."""
    text = value.decode("utf-8", "replace")
    if b"=?" not in value:
        return text  # no encoded word: what decode_header would return
    try:
        pieces = email.header.decode_header(text)
    except Exception:  # noqa: BLE001 - malformed encoded words: match the raw text
        return text
    out = []
    for chunk, charset in pieces:
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            try:
                out.append(chunk.decode(charset or "utf-8", "replace"))
            except (LookupError, ValueError):  # unknown charset, or a codec that raises
                out.append(chunk.decode("utf-8", "replace"))
    return "".join(out)
