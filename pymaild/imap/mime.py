"""MIME structure of stored messages: byte ranges, ENVELOPE and BODYSTRUCTURE, cached.

L{parseMessage} reads a whole message (CRLF bytes, as the store's C{Folder.open} gives
it) once and returns a L{ParsedMessage}: a tree of L{Part}s holding the byte offsets of
every part's header and body (so any C{BODY[section]} is a byte range of the file and can
be streamed), plus the ENVELOPE, BODY and BODYSTRUCTURE responses already serialised.
Header values are kept raw (encoded words are passed to the client as they are, as
RFC 3501 asks). L{StructureCache}, keyed by (folder path, message key), keeps a few
hundred complete parses, a byte-bounded set of L{Summary}s (ENVELOPE, BODY,
BODYSTRUCTURE, the header block) in memory, and every summary in the folder's
C{pymaild.cache} file; L{summariseHeader} builds a summary from the header alone
(L{readHeaderBlock}), so a cold ENVELOPE never reads a body. Message content never
changes under a key, so entries never go stale.
"""

from __future__ import annotations

import binascii
import email.header
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pymaild.imap.syntax import Atom, serialiseString
from pymaild.store.cachefile import CACHE_NAME, HEADERS_NAME, CacheFile, Span

_T = TypeVar("_T")

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


@dataclass(slots=True)
class Part:
    """One MIME entity: C{start..bodyStart} is its header, C{bodyStart..end} its body.

    C{block} is the header block as parsing considers it (C{data[start:bodyStart]},
    cut by L{consideredBlock} when longer than L{MAX_HEADER_BLOCK} or what is left of
    L{MAX_ALL_HEADERS}); its fields are split out only when asked for (L{headers},
    L{indexed}): BODYSTRUCTURE needs only the C{Content-*} fields (L{contentFields}),
    which one pattern finds.

    C{hidden} marks a multipart or message nested too deep, or past the part budget,
    to be looked into (it shows as application/octet-stream); C{rest}, when not -1, is
    where the body parts of a multipart that were past the part budget start (they run
    to its end). SEARCH reads those bytes as they are (L{beyondCaps}).
    """

    start: int
    bodyStart: int
    end: int
    block: bytes
    mainType: bytes = b"text"
    subType: bytes = b"plain"
    params: list[tuple[bytes, bytes]] = field(default_factory=list)
    children: list[Part] = field(default_factory=list)
    message: Part | None = None
    lines: int = 0
    isMessage: bool = False
    closedAtEnd: bool = False
    hidden: bool = False
    rest: int = -1
    _headers: list[tuple[bytes, bytes]] | None = field(default=None, repr=False, compare=False)
    _index: dict[bytes, bytes] | None = field(default=None, repr=False, compare=False)
    _content: dict[bytes, bytes] | None = field(default=None, repr=False, compare=False)
    shape: Shape | None = field(default=None, repr=False, compare=False)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header fields as (name, raw value) pairs in order (L{parseHeaders})."""
        headers = self._headers
        if headers is None:
            headers = self._headers = parseHeaders(self.block)
        return headers

    def indexed(self) -> dict[bytes, bytes]:
        """The first raw value of each header field, by lower-case name (built once)."""
        index = self._index
        if index is None:
            index = {}
            for n, v in reversed(self.headers):
                index[n.lower()] = v  # reversed: the first field of a name wins
            self._index = index
        return index

    def contentFields(self) -> dict[bytes, bytes]:
        """The first raw value of each C{Content-*} field whose name is printable ASCII,
        by lower-case name: what L{indexed} holds for those names (built once, without
        splitting the other fields)."""
        content = self._content
        if content is None:
            content = self._content = contentFields(self.block)
        return content

    def rawValue(self, name: bytes) -> bytes | None:
        """The first value of header C{name} (lower case) as it is, folding kept, or
        None."""
        if self._index is None and name.startswith(b"content-"):
            return self.contentFields().get(name)
        return self.indexed().get(name)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header C{name} (case-insensitive), unfolded, or None."""
        value = self.rawValue(name.lower())
        return None if value is None else unfold(value)

    @property
    def isMultipart(self) -> bool:
        """Whether this is a multipart entity with children."""
        return self.mainType.lower() == b"multipart"

    def param(self, name: bytes) -> bytes | None:
        """A Content-Type parameter (case-insensitive name)."""
        lname = name.lower()
        for n, v in self.params:
            if n.lower() == lname:
                return v
        return None


@dataclass
class ParsedMessage:
    """A parsed message: its part tree and the serialised structure responses.

    C{header} is the root header block (with its blank line) when it is at most
    L{HEADER_CACHE_MAX} bytes, else None (a parse kept in the cache holds no more);
    C{headerSize} is its size either way.
    """

    size: int
    root: Part
    envelope: bytes
    body: bytes
    bodystructure: bytes
    header: bytes | None
    headerSize: int

    def section(self, path: tuple[int, ...]) -> Part | None:
        """The part addressed by C{path} (e.g. (1, 2)), or None when it does not exist.

        In a non-multipart entity, part 1 is the entity itself; a message/rfc822 part's
        sub-parts are those of the encapsulated message.
        """
        part = self.root
        for depth, n in enumerate(path):
            if depth and part.isMessage and part.message is not None:
                part = part.message
            if part.isMultipart:
                if n < 1 or n > len(part.children):
                    return None
                part = part.children[n - 1]
            elif n == 1:
                continue
            else:
                return None
        return part


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


def _countLines(data: bytes, start: int, end: int) -> int:
    """The body-fld-lines of C{data[start:end]}: its line ends (a last line without one
    does not count, as in Dovecot)."""
    return data.count(b"\n", start, end)


_TOKEN = re.compile(rb"[!-~]+")


class Shape:
    """What a part's C{Content-*} fields make of it, worked out once per distinct set of
    fields (a mailbox repeats a few): its type and parameters, how its body is parsed
    (C{kind}), and its BODY/BODYSTRUCTURE bytes but for the sizes and the children.

    @ivar kind: C{"multipart"}, C{"message"} (an encapsulated message, parsed),
        C{"text"} (shows a line count) or C{"other"}.
    @ivar lines: whether the body's lines are counted (text, message/rfc822 and
        message/global, opaque parts).
    @ivar head: a leaf's C{type subtype params id description encoding}.
    @ivar ext: a leaf's BODYSTRUCTURE extension fields, with the leading space.
    @ivar bodyTail: a multipart's BODY after its parts (C{ SUBTYPE)}).
    @ivar fullTail: a multipart's BODYSTRUCTURE after its parts.
    @ivar hidden: whether a multipart or message was made opaque (not looked into).
    """

    __slots__ = ("main", "sub", "params", "kind", "lines", "boundary", "childDefault",
                 "head", "ext", "bodyTail", "fullTail", "hidden")

    def __init__(self, fields: dict[bytes, bytes], defaultType: bytes, opaque: bool) -> None:
        """The shape of a part with the C{Content-*} C{fields} (L{contentFields}) in a
        context whose default type is C{defaultType}; C{opaque} when it is nested too
        deep (or past the part budget) to be looked into: a multipart or message is
        then an application/octet-stream."""
        def value(name: bytes) -> bytes | None:
            raw = fields.get(name)
            return None if raw is None else unfold(raw)

        main, sub, params = _contentType(value(b"content-type"), defaultType)
        lmain, lsub = main.lower(), sub.lower()
        self.boundary = self.childDefault = None
        self.hidden = opaque and lmain in (b"multipart", b"message")
        if opaque:
            if self.hidden:
                main, sub, params, lmain = b"application", b"octet-stream", [], b"application"
            self.kind = "text" if lmain == b"text" else "other"
            self.lines = True
        elif lmain == b"multipart":
            self.kind = "multipart"
            self.lines = False
            for n, v in params:
                if n.lower() == b"boundary":
                    self.boundary = v
                    break
            self.childDefault = b"message/rfc822" if lsub == b"digest" else b"text/plain"
        elif lmain == b"message":
            enc = (value(b"content-transfer-encoding") or b"7bit").strip().lower()
            rfc822 = lsub in (b"rfc822", b"global")
            self.kind = ("message" if rfc822 and enc in (b"7bit", b"8bit", b"binary")
                         else "other")
            self.lines = rfc822
        else:
            self.kind = "text" if lmain == b"text" else "other"
            self.lines = self.kind == "text"
        self.main, self.sub, self.params = main, sub, params
        q = serialiseString
        if len(fields) == 1 and b"content-type" in fields:
            disposition = language = location = b"NIL"  # the usual case
        else:
            disposition = _dispositionBytes(value(b"content-disposition"))
            language = _languageBytes(value(b"content-language"))
            location = q(value(b"content-location"))
        if self.kind == "multipart":
            self.head = self.ext = b""
            self.bodyTail = b" %s)" % q(sub)
            self.fullTail = b" %s %s %s %s %s)" % (
                q(sub), _paramListBytes(params, memo=False), disposition, language, location)
            return
        self.bodyTail = self.fullTail = b""
        enc = (value(b"content-transfer-encoding") or b"").strip() or b"7bit"
        self.head = b"%s %s %s %s %s %s" % (
            q(main), q(sub), _paramListBytes(params), q(value(b"content-id")),
            q(value(b"content-description")), q(enc))
        self.ext = b" %s %s %s %s" % (q(value(b"content-md5")), disposition, language,
                                      location)


_shapes: dict[tuple[Any, ...], Shape] = {}
_SHAPES_MAX = 4096
_SHAPE_KEY_MAX = 1024


_SIMPLE_MULTIPART = re.compile(
    rb"(multipart)/([!#-'*+.0-9A-Z^_`a-z|~-]+)[ \t]*;[ \t]*(boundary)="
    rb"(?:\"([0-9A-Za-z'+_,./:=? -]*)\"|([0-9A-Za-z'+_,./:=?-]+))",
    re.IGNORECASE)
"""The usual multipart Content-Type (unfolded): C{multipart/sub; boundary=b} with the
boundary a token or quoted, of RFC 2046's boundary characters but parentheses, and no
other parameter."""


def _multipartShape(fields: list[tuple[bytes, bytes]]) -> Shape | None:
    """The L{Shape} of a multipart whose only C{Content-*} field is a Content-Type of
    the usual form (L{_SIMPLE_MULTIPART}), built without the general parameter parsing
    (what L{Shape} makes of it, field for field); None for any other part."""
    if len(fields) != 1 or fields[0][0].lower() != b"content-type":
        return None
    m = _SIMPLE_MULTIPART.fullmatch(unfold(fields[0][1]))
    if m is None:
        return None
    main, sub, name, quoted, token = m.groups()
    boundary = token if quoted is None else quoted
    q = serialiseString
    shape = Shape.__new__(Shape)
    shape.main, shape.sub, shape.params = main, sub, [(name, boundary)]
    shape.kind, shape.lines, shape.boundary = "multipart", False, boundary
    shape.hidden = False
    shape.childDefault = b"message/rfc822" if sub.lower() == b"digest" else b"text/plain"
    shape.head = shape.ext = b""
    shape.bodyTail = b" %s)" % q(sub)
    shape.fullTail = b" %s (%s %s) NIL NIL NIL)" % (q(sub), q(name), q(boundary))
    return shape


def shapeOf(fields: list[tuple[bytes, bytes]], defaultType: bytes,
            opaque: bool = False) -> Shape:
    """The L{Shape} of a part from its C{Content-*} fields in order
    (L{contentFieldList}); memoised by the fields, as they are, when short and not a
    multipart's (whose boundary is, as a rule, its own: the usual form of those is
    read directly, L{_multipartShape})."""
    key = (tuple(fields), defaultType, opaque)
    shape = _shapes.get(key)
    if shape is None and not opaque:
        shape = _multipartShape(fields)
    if shape is None:
        index: dict[bytes, bytes] = {}
        for n, v in fields:
            index.setdefault(n.lower(), v)
        shape = Shape(index, defaultType, opaque)
        if shape.kind != "multipart" and sum(map(len, index.values())) <= _SHAPE_KEY_MAX:
            if len(_shapes) >= _SHAPES_MAX:
                _shapes.clear()
            _shapes[key] = shape
    return shape


_TOKEN = re.compile(rb"[!-~]+")


def _contentType(ctype: bytes | None, defaultType: bytes
                 ) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """(type, subtype, parameters) of an entity from its unfolded Content-Type value
    (None when absent) and the context's default type, as Dovecot reports them."""
    main, sub = defaultType.split(b"/")
    params: list[tuple[bytes, bytes]] = []
    if ctype:
        value, params = parseParams(ctype)
        if b"/" in value:
            m, _, s = value.partition(b"/")
            m, s = m.strip(), s.strip()
            if m and s and _TOKEN.fullmatch(m + s):
                main, sub = m, s
            else:
                main, sub, params = b"text", b"plain", []
        else:
            main, sub, params = b"text", b"plain", []
    if main.lower() == b"text" and not any(n.lower() == b"charset" for n, _ in params):
        params = [*params, (b"charset", b"us-ascii")]  # appended, as Dovecot does
    return main, sub, params


_EMPTY_SHAPE_FIELDS: list[tuple[bytes, bytes]] = []


def _parseEntity(
    data: bytes, start: int, end: int, depth: int, defaultType: bytes, budget: list[int]
) -> Part:
    """The entity C{data[start:end]} and what it holds, parsed; C{budget} is [the
    parts, the header bytes] the parse may still take (L{MAX_PARTS},
    L{MAX_ALL_HEADERS}), spent here."""
    bodyStart = splitHeader(data, start, end)
    block = consideredBlock(data, start, bodyStart, min(MAX_HEADER_BLOCK, budget[1]))
    budget[0] -= 1
    budget[1] -= len(block)
    shape = shapeOf(contentFieldList(block), defaultType,
                    depth >= MAX_DEPTH or budget[0] <= 0)
    part = Part(start, bodyStart, end, block, shape.main, shape.sub, shape.params)
    part.shape = shape
    part.hidden = shape.hidden
    kind = shape.kind
    if kind == "multipart":
        boundary = shape.boundary
        if boundary:
            ranges, part.closedAtEnd = _splitMultipart(data, bodyStart, end, boundary,
                                                       budget[0] + 1)
            childDefault = shape.childDefault
            assert childDefault is not None
            for cs, ce in ranges:
                if budget[0] <= 0:
                    part.rest = cs
                    break
                child = _parseEntity(data, cs, ce, depth + 1, childDefault, budget)
                _claimLineEnd(data, child)
                part.children.append(child)
        if not part.children:
            # RFC 3501 needs at least one part: show an empty text/plain one.
            empty = shapeOf(_EMPTY_SHAPE_FIELDS, b"text/plain")
            part.children.append(Part(bodyStart, bodyStart, bodyStart, b"", empty.main,
                                      empty.sub, empty.params, shape=empty))
        return part
    if kind == "message":
        part.isMessage = True
        part.message = _parseEntity(data, bodyStart, end, depth + 1, b"text/plain", budget)
        part.closedAtEnd = part.message.closedAtEnd
    if shape.lines:
        part.lines = _countLines(data, bodyStart, end)
    return part


def _claimLineEnd(data: bytes, child: Part) -> None:
    """Give C{child} the line end after its nested close delimiter.

    When a body part ends with the close delimiter of a multipart inside it (directly,
    or inside an encapsulated message) and the enclosing delimiter follows on the next
    line, Dovecot counts that line end to the inner part, not to the enclosing
    delimiter (its parser consumes a boundary line with its line end). Do the same, so
    sizes, line counts and section bytes agree.
    """
    if not child.closedAtEnd:
        return
    end = child.end
    extra = 2 if data.startswith(b"\r\n", end) else 1 if data.startswith(b"\n", end) else 0
    if not extra:
        return
    node: Part | None = child
    while node is not None and node.closedAtEnd and node.end == end:
        node.end = end + extra
        if node.isMessage and node.message is not None:
            node.lines = _countLines(data, node.bodyStart, node.end)
            node = node.message
        else:
            node = None
    child.closedAtEnd = False


def _splitMultipart(data: bytes, start: int, end: int, boundary: bytes,
                    limit: int | None = None) -> tuple[list[tuple[int, int]], bool]:
    """Byte ranges of the body parts between the delimiters of C{boundary}, and
    whether the close delimiter is the entity's last line with no line end of its own
    (see L{_claimLineEnd}). With C{limit}, only the first C{limit} ranges are listed
    (the close delimiter is then looked for directly, L{_closedAtEnd}), so a body of
    a million empty parts costs no list of them.

    A delimiter line is C{--boundary} (C{--boundary--} to close) at the start of the
    body or after a line end, then only spaces and tabs to the line end; the CR of the
    line end before it belongs to the delimiter.
    """
    delim = b"--" + boundary
    needle = b"\n" + delim
    size = len(delim)
    ranges: list[tuple[int, int]] = []
    partStart = -1  # where the current body part starts (after a delimiter line)
    pos = start
    while pos < end:
        if pos == start and data.startswith(delim, pos):
            i = lineStart = pos
        else:
            i = data.find(needle, pos, end)
            if i < 0:
                break
            lineStart = i + 1
            if i > start and data[i - 1] == 13:
                i -= 1
        j = lineStart + size
        close = data.startswith(b"--", j)
        if close:
            j += 2
        while j < end and data[j] in (32, 9):
            j += 1
        if j < end and data[j] not in (13, 10):
            pos = lineStart + 1  # the boundary goes on: not a delimiter line
            continue
        if partStart >= 0:
            ranges.append((partStart, max(partStart, i)))
            if limit is not None and len(ranges) >= limit and not close:
                return ranges, _closedAtEnd(data, lineStart, end, delim)
        nl = data.find(b"\n", j, end)
        if close:
            return ranges, nl < 0
        partStart = pos = end if nl < 0 else nl + 1
    if partStart >= 0:
        ranges.append((partStart, max(partStart, end)))
    return ranges, False


def _closedAtEnd(data: bytes, pos: int, end: int, delim: bytes) -> bool:
    """What L{_splitMultipart} reports for the first close delimiter line (C{delim},
    then C{--}, then only spaces and tabs) starting after C{pos}, found without listing
    the parts before it: whether that line ends the entity with no line end of its
    own. False when there is none."""
    needle = b"\n" + delim + b"--"
    size = len(needle)
    i = data.find(needle, pos, end)
    while i >= 0:
        j = i + size
        while j < end and data[j] in (32, 9):
            j += 1
        if j >= end or data[j] in (13, 10):
            return data.find(b"\n", j, end) < 0
        i = data.find(needle, i + 1, end)
    return False


# --- ENVELOPE --------------------------------------------------------------------

_ADDR_TOKEN = re.compile(
    rb'\s*+(?:(?P<q>"(?:[^"\\]|\\.)*")|(?P<c>\()|(?P<s>[<>,:;@.])|(?P<a>[^\s"(),:;<>@.\[\]]+|\[[^\]]*\]))',
    re.S,
)
"""One address token after white space (taken whole: no backtracking into it)."""

_SPACE = re.compile(rb"\s*")
_UNESCAPE = re.compile(rb"\\(.)", re.S)


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
            k = _SPACE.match(value, pos).end()
            ch = value[k : k + 1]
            if (ch == b'"' and noQuote) or (ch == b"[" and noBracket):
                pos = k + 1
                continue
        m = _ADDR_TOKEN.match(value, pos)
        if not m:
            k = _SPACE.match(value, pos).end()
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


def rawHeader(part: Part, name: bytes) -> bytes | None:
    """The first value of header C{name} as Dovecot's ENVELOPE takes it: leading white
    space removed, folding and trailing white space kept."""
    v = part.rawValue(name.lower())
    if v is None:
        return None
    v = v.lstrip(b" \t")
    return v.replace(b"\x00", NUL_REPLACEMENT) if b"\x00" in v else v


NUL_REPLACEMENT = "\ufffd".encode()
"""What a NUL in a header value becomes in ENVELOPE (Dovecot: the UTF-8 U+FFFD)."""


def humanString(value: bytes | None) -> bytes:
    """C{value} serialised as Dovecot writes text for people (subject, address names,
    C{imap_append_string_for_humans}): as a quoted string when it has no CR, LF, TAB,
    NUL, quote, backslash, 8-bit byte, leading, trailing or repeated space; otherwise
    as a literal with every run of white space made one space, the ends trimmed and NUL
    made U+FFFD (L{NUL_REPLACEMENT}, as Dovecot's header parser does). None is NIL."""
    if value is None:
        return b"NIL"
    if _PLAIN_HUMAN.fullmatch(value):
        return b'"' + value + b'"'
    text = b" ".join(t for t in re.split(rb"[ \t\r\n]+", value.replace(b"\x00", NUL_REPLACEMENT))
                     if t)
    if not text:
        return b'""'
    return b"{%d}\r\n" % len(text) + text


_PLAIN_HUMAN = re.compile(rb"(?:[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*)?")


def envelope(part: Part) -> list[Any]:
    """The ENVELOPE of a message whose header is in C{part}, as Dovecot gives it.

    Date, In-Reply-To and Message-ID are the raw values (L{rawHeader}); the subject and
    the address lists come already serialised (L{Atom}s): the subject and address names
    as L{humanString}s, the addresses of a list without spaces between them (RFC 3501's
    C{"(" 1*address ")"}). A header present but empty gives an empty string.
    """
    frm = parseAddressList(part.header(b"from"))
    sender = parseAddressList(part.header(b"sender")) or frm
    replyTo = parseAddressList(part.header(b"reply-to")) or frm
    return [
        rawHeader(part, b"date"),
        Atom(humanString(rawHeader(part, b"subject"))),
        Atom(_addressListBytes(frm)),
        Atom(_addressListBytes(sender)),
        Atom(_addressListBytes(replyTo)),
        Atom(_addressListBytes(parseAddressList(part.header(b"to")))),
        Atom(_addressListBytes(parseAddressList(part.header(b"cc")))),
        Atom(_addressListBytes(parseAddressList(part.header(b"bcc")))),
        rawHeader(part, b"in-reply-to"),
        rawHeader(part, b"message-id"),
    ]


def _addressListBytes(addrs: list[Any] | None) -> bytes:
    """An address list as Dovecot writes it: C{((name adl mailbox host)(...))}."""
    if not addrs:
        return b"NIL"
    q = serialiseString
    return b"(" + b"".join([
        b"(%s %s %s %s)" % (humanString(a[0]), q(a[1]), q(a[2]), q(a[3]))
        for a in addrs]) + b")"


_addressMemo: dict[bytes, bytes | None] = {}
_ADDRESS_MEMO_MAX = 8192
_MISSING = object()


def _addressBytes(value: bytes | None) -> bytes | None:
    """The serialised address list of a header value, or None when it has no address.

    Memoised by value: a mailbox repeats the same From, To and Cc values (a list's
    address, the user's own) across thousands of messages.
    """
    if value is None:
        return None
    out = _addressMemo.get(value, _MISSING)
    if out is _MISSING:
        addrs = parseAddressList(value)
        out = _addressListBytes(addrs) if addrs else None
        if len(value) <= 512:
            if len(_addressMemo) >= _ADDRESS_MEMO_MAX:
                _addressMemo.clear()
            _addressMemo[value] = out
    return out  # type: ignore[return-value]


def envelopeBytes(part: Part) -> bytes:
    """The serialised ENVELOPE of C{part}: what C{serialise(envelope(part))} gives,
    written straight to bytes (this runs for every message of a cold FETCH ENVELOPE)."""
    q = serialiseString
    frm = _addressBytes(part.header(b"from"))
    sender = _addressBytes(part.header(b"sender")) or frm
    replyTo = _addressBytes(part.header(b"reply-to")) or frm
    return b"(%s %s %s %s %s %s %s %s %s %s)" % (
        q(rawHeader(part, b"date")),
        humanString(rawHeader(part, b"subject")),
        frm or b"NIL",
        sender or b"NIL",
        replyTo or b"NIL",
        _addressBytes(part.header(b"to")) or b"NIL",
        _addressBytes(part.header(b"cc")) or b"NIL",
        _addressBytes(part.header(b"bcc")) or b"NIL",
        q(rawHeader(part, b"in-reply-to")),
        q(rawHeader(part, b"message-id")),
    )


# --- BODY / BODYSTRUCTURE --------------------------------------------------------


_paramMemo: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}
_PARAM_MEMO_MAX = 4096


def _paramListBytes(params: list[tuple[bytes, bytes]], memo: bool = True) -> bytes:
    """The body-fld-param of a parameter list: memoised by the list when C{memo} (not
    for a multipart's, whose boundary is its own) and the list is short."""
    if not params:
        return b"NIL"
    key = tuple(params)
    out = _paramMemo.get(key) if memo else None
    if out is None:
        q = serialiseString
        out = b"(" + b" ".join([b"%s %s" % (q(n), q(v)) for n, v in params]) + b")"
        if memo and sum(len(n) + len(v) for n, v in params) <= 256:
            if len(_paramMemo) >= _PARAM_MEMO_MAX:
                _paramMemo.clear()
            _paramMemo[key] = out
    return out


def _dispositionBytes(d: bytes | None) -> bytes:
    """The body-fld-dsp of an unfolded Content-Disposition value (None when absent)."""
    if not d:
        return b"NIL"
    value, params = parseParams(d)
    if not value:
        return b"NIL"
    return b"(%s %s)" % (serialiseString(value), _paramListBytes(params))


def _languageBytes(lang: bytes | None) -> bytes:
    """The body-fld-lang of an unfolded Content-Language value (None when absent)."""
    if not lang:
        return b"NIL"
    items = [x.strip() for x in lang.split(b",") if x.strip()]
    if not items:
        return b"NIL"
    if len(items) == 1:
        return serialiseString(items[0])
    return b"(" + b" ".join([serialiseString(x) for x in items]) + b")"


def structureBytes(part: Part) -> tuple[bytes, bytes]:
    """The serialised BODY and BODYSTRUCTURE of C{part}, in one walk of the tree, as
    Dovecot writes them (RFC 3501 C{body}: no space between the parts of a multipart).
    """
    shape = part.shape
    if shape is None:
        shape = part.shape = shapeOf(contentFieldList(part.block), b"text/plain")
    if shape.kind == "multipart":
        kids = [structureBytes(c) for c in part.children]
        return (b"(" + b"".join([k[0] for k in kids]) + shape.bodyTail,
                b"(" + b"".join([k[1] for k in kids]) + shape.fullTail)
    head = b"(%s %d" % (shape.head, part.end - part.bodyStart)
    if part.isMessage and part.message is not None:
        env = envelopeBytes(part.message)
        innerBody, innerFull = structureBytes(part.message)
        return (b"%s %s %s %d)" % (head, env, innerBody, part.lines),
                b"%s %s %s %d%s)" % (head, env, innerFull, part.lines, shape.ext))
    if shape.kind == "text":
        return b"%s %d)" % (head, part.lines), b"%s %d%s)" % (head, part.lines, shape.ext)
    return head + b")", head + shape.ext + b")"


def parseMessage(data: bytes, knownEnvelope: bytes | None = None) -> ParsedMessage:
    """Parse a complete message into a L{ParsedMessage}.

    C{knownEnvelope} is the message's serialised ENVELOPE when already known (it
    depends on the header only), to save computing it again.
    """
    root = _parseEntity(data, 0, len(data), 0, b"text/plain", [MAX_PARTS, MAX_ALL_HEADERS])
    body, bodystructure = structureBytes(root)
    return ParsedMessage(
        size=len(data),
        root=root,
        envelope=knownEnvelope if knownEnvelope is not None else envelopeBytes(root),
        body=body,
        bodystructure=bodystructure,
        header=data[: root.bodyStart] if root.bodyStart <= HEADER_CACHE_MAX else None,
        headerSize=root.bodyStart,
    )


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


HEADER_CACHE_MAX = 8192
"""Root header blocks up to this size are kept in a message's L{Summary}."""

_SUMMARY_OVERHEAD = 400
"""Approximate bytes a cached summary costs besides its strings' contents (measured:
the object, bytes headers, the key tuple, the LRU's node and table entry)."""


class Summary:
    """The small, often fetched facts of one message, cheap enough to keep for all.

    Built from the header block alone (L{summariseHeader}: ENVELOPE, the header) or from
    a complete parse (L{summaryOf}: BODY and BODYSTRUCTURE too).

    @ivar envelope: the serialised ENVELOPE.
    @ivar bodyStart: the size of the root header block (with its blank line).
    @ivar header: the root header block, or None when it is over L{HEADER_CACHE_MAX}.
    @ivar body: the serialised BODY, or None until the whole message was parsed.
    @ivar bodystructure: the serialised BODYSTRUCTURE, or None likewise.
    """

    __slots__ = ("envelope", "bodyStart", "header", "body", "bodystructure", "_cost")

    def __init__(self, envelope: bytes, bodyStart: int, header: bytes | None,
                 body: bytes | None = None, bodystructure: bytes | None = None) -> None:
        self.envelope = envelope
        self.bodyStart = bodyStart
        self.header = header
        self.body = body
        self.bodystructure = bodystructure
        self._cost = (_SUMMARY_OVERHEAD + len(envelope) + len(header or b"")
                      + len(body or b"") + len(bodystructure or b""))

    def cost(self) -> int:
        """Approximate memory held, in bytes."""
        return self._cost


_PACKED = struct.Struct("<2sHIIiii")
_PACK_MAGIC = b"S1"


def packSummary(key: str, summary: Summary) -> bytes:
    """A summary as bytes for the on-disk cache, with the message key it belongs to
    (L{unpackSummary} checks it: a record never answers for another message)."""
    k = key.encode("utf-8", "surrogateescape")
    h, b, bs = summary.header, summary.body, summary.bodystructure
    return b"".join((
        _PACKED.pack(_PACK_MAGIC, len(k), summary.bodyStart, len(summary.envelope),
                     -1 if h is None else len(h), -1 if b is None else len(b),
                     -1 if bs is None else len(bs)),
        k, summary.envelope, h or b"", b or b"", bs or b""))


def _packedFields(data: bytes, key: str) -> tuple[int, int, list[int]] | None:
    """(bodyStart, offset of the envelope, [envelope, header, body, bodystructure
    lengths, -1 for None]) of a summary packed by L{packSummary} for message C{key};
    None when the bytes are not one, or another message's."""
    size = _PACKED.size
    if len(data) < size:
        return None
    magic, klen, bodyStart, *lengths = _PACKED.unpack_from(data)
    if (magic != _PACK_MAGIC or lengths[0] < 0 or min(lengths) < -1
            or size + klen + sum(lengths) + lengths.count(-1) != len(data)
            or data[size : size + klen] != key.encode("utf-8", "surrogateescape")):
        return None
    return bodyStart, size + klen, lengths


def unpackSummary(data: bytes, key: str) -> Summary | None:
    """The summary packed by L{packSummary} for message C{key}; None when the bytes are
    not one, or another message's."""
    fields = _packedFields(data, key)
    if fields is None:
        return None
    bodyStart, pos, lengths = fields
    out: list[bytes | None] = []
    for n in lengths:
        if n < 0:
            out.append(None)
        else:
            out.append(data[pos : pos + n])
            pos += n
    envelope, header, body, bodystructure = out
    assert envelope is not None
    return Summary(envelope, bodyStart, header, body, bodystructure)


def unpackHeader(data: bytes, key: str) -> bytes | None:
    """Only the header block of a summary packed by L{packSummary} for message C{key}
    (None when absent, or the bytes are not one, or another message's)."""
    fields = _packedFields(data, key)
    if fields is None or fields[2][1] < 0:
        return None
    _bodyStart, pos, lengths = fields
    start = pos + lengths[0]
    return data[start : start + lengths[1]]


_HEADER_RECORD = struct.Struct("<2sBH")
_HEADER_MAGIC = b"H1"
HEADER_PREFIX = _HEADER_RECORD.size
"""Bytes of a header record (L{packHeaderRecord}) before its message key."""

HEADER_PLAIN = 1
"""Flag (the third byte) of a header record whose block is ASCII and has no C{=?}: each
of its values, unfolded, is its own decoding, and folds case by lower-casing."""


def packHeaderRecord(key: str, block: bytes) -> bytes:
    """A message's root header block as a record for the folder's header file
    (L{HEADERS_NAME}): C{"H1"}, a flags byte (L{HEADER_PLAIN}), the key's length
    (u16, little endian), the message key (UTF-8) and the block."""
    k = key.encode("utf-8", "surrogateescape")
    flags = HEADER_PLAIN if block.isascii() and b"=?" not in block else 0
    return _HEADER_RECORD.pack(_HEADER_MAGIC, flags, len(k)) + k + block


def headerRecordOk(data: bytes, start: int, end: int, key: bytes) -> bool:
    """Whether C{data[start:end]} is a header record (L{packHeaderRecord}) of the
    message whose key, UTF-8 encoded, is C{key}. (Its flags byte is believed as
    L{packHeaderRecord} wrote it: the cache file's crc covers it.)"""
    n = len(key)
    return (end - start >= HEADER_PREFIX + n
            and data.startswith(_HEADER_MAGIC, start)
            and data[start + 3] | data[start + 4] << 8 == n
            and data.startswith(key, start + HEADER_PREFIX))


def unpackHeaderRecord(data: bytes, key: str) -> bytes | None:
    """The header block of a record packed by L{packHeaderRecord} for message C{key};
    None when the bytes are not one, or another message's."""
    k = key.encode("utf-8", "surrogateescape")
    if not headerRecordOk(data, 0, len(data), k):
        return None
    return data[HEADER_PREFIX + len(k):]


def summariseHeader(block: bytes) -> Summary:
    """The L{Summary} of a message from its root header block (with the blank line);
    the ENVELOPE is made from the part of it parsing considers (L{consideredBlock})."""
    part = Part(0, len(block), len(block), consideredBlock(block, 0, len(block)))
    return Summary(envelopeBytes(part), len(block),
                   block if len(block) <= HEADER_CACHE_MAX else None)


def summaryOf(parsed: ParsedMessage) -> Summary:
    """The complete L{Summary} of a parsed message."""
    return Summary(parsed.envelope, parsed.headerSize, parsed.header,
                   parsed.body, parsed.bodystructure)


def readHeaderBlock(readPrefix: Callable[[int], bytes]) -> bytes:
    """A message's root header block (up to and with the blank line; the whole content
    when it has none), from C{readPrefix(n)}, which gives the first C{n} bytes of the
    message (fewer at its end): 4 KiB first, which covers most headers, then four
    times more each time.

    The same split as L{parseMessage} makes, without reading the body.
    """
    size = 4096
    while True:
        data = readPrefix(size)
        end = splitHeader(data, 0, len(data))
        if end < len(data) or len(data) < size:
            return data[:end]
        size *= 4


class StructureCache:
    """A thread-safe cache keyed by (folder path, message key), in three tiers.

    Complete L{ParsedMessage}s (part trees, for numbered sections and body searches) are
    kept in an LRU of at most C{maxEntries}; L{Summary}s (ENVELOPE, BODY, BODYSTRUCTURE,
    the header block) in an LRU bounded by C{maxSummaryBytes}, and, with C{files}, in
    each folder's C{pymaild.cache} file (L{pymaild.store.cachefile}), so a large
    mailbox's summaries cost disk, not memory, and survive a restart. Message content
    never changes under a key: entries never go stale.

    The file tier is used through L{load} (summaries of many messages from their
    folder's file into memory, one read), L{record} (queue a computed summary for the
    file) and L{flush} (write what is queued) -- all blocking, for the disk runner.
    The header blocks are also kept alone, once each, in the folder's header file
    (L{HEADERS_NAME}; L{recordHeader}), which SEARCH reads in bulk (L{headerSpans}).
    """

    def __init__(self, maxEntries: int = 500, maxSummaryBytes: int = 8 << 20,
                 files: bool = True, maxFiles: int = 64) -> None:
        """Keep up to C{maxEntries} complete parses, C{maxSummaryBytes} of summaries in
        memory (about 6,000 messages' complete summaries) and, with C{files}, up to
        C{maxFiles} folder cache files open."""
        self.maxEntries = maxEntries
        self.maxSummaryBytes = maxSummaryBytes
        self.files = files
        self.maxFiles = maxFiles
        self._entries: OrderedDict[tuple[str, str], ParsedMessage] = OrderedDict()
        self._summaries: OrderedDict[tuple[str, str], Summary] = OrderedDict()
        self._summaryBytes = 0
        self._lock = threading.Lock()
        self._fileLock = threading.Lock()
        self._open: OrderedDict[str, CacheFile] = OrderedDict()
        self._queued: dict[str, tuple[Any, list[tuple[int, bytes]]]] = {}
        # The header files (HEADERS_NAME) and the blocks queued for them.
        self._openHeaders: OrderedDict[str, CacheFile] = OrderedDict()
        self._queuedHeaders: dict[str, tuple[Any, list[tuple[int, str, bytes]]]] = {}
        self.hits = 0
        self.misses = 0

    # -- the file tier (blocking) --

    def _fileOf(self, folder: Any, headers: bool = False) -> CacheFile | None:
        """The cache file of C{folder} (with C{headers}, its header file, L{HEADERS_NAME})
        opened on first use, or None without one."""
        if not self.files:
            return None
        validity = folder.knownUidValidity()
        if validity is None:
            return None
        opened = self._openHeaders if headers else self._open
        with self._fileLock:
            cf = opened.get(folder.path)
            if cf is not None and cf.uidValidity != validity:
                opened.pop(folder.path)
                cf.close()
                cf = None
            if cf is None:
                name = HEADERS_NAME if headers else CACHE_NAME
                cf = CacheFile(os.path.join(folder.path, name), validity)
                opened[folder.path] = cf
                while len(opened) > self.maxFiles:
                    _, old = opened.popitem(last=False)
                    old.close()
            else:
                opened.move_to_end(folder.path)
            return cf

    def load(self, folder: Any, infos: Sequence[Any], full: bool = False
             ) -> dict[str, Summary]:
        """Bring the summaries of C{infos} (MessageInfos of C{folder}) that are not in
        memory (with C{full}: not complete there) in from the folder's cache file.

        With C{full}, the file's incomplete summaries (no BODYSTRUCTURE yet) are not
        kept in memory, where the complete ones computed next would replace them: they
        are returned, by message key, for their ENVELOPE."""
        path = folder.path
        summaries = self._summaries
        want = []
        for info in infos:
            s = summaries.get((path, info.key))
            if s is None or (full and s.bodystructure is None):
                want.append(info)
        if not want:
            return {}
        found = self._fromFile(folder, want, unpackSummary)
        partial: dict[str, Summary] = {}
        with self._lock:
            for key, s in found.items():
                if full and s.bodystructure is None:
                    partial[key] = s
                    continue
                old = summaries.get((path, key))
                if old is None or (old.bodystructure is None and s.bodystructure is not None):
                    self._putSummary((path, key), s)
        return partial

    def headersFromFile(self, folder: Any, infos: Sequence[Any]) -> dict[str, bytes]:
        """The root header blocks of C{infos} found in the folder's files, by message
        key, read in one go and not kept in memory (for a pass over a whole folder,
        which would only churn the memory tier): from the header file, else from the
        summaries of the cache file (those are then queued for the header file)."""
        out = self._fromFile(folder, infos, unpackHeaderRecord, headers=True)
        if len(out) < len(infos):
            rest = [i for i in infos if i.key not in out]
            found = self._fromFile(folder, rest, unpackHeader)
            for info in rest:
                block = found.get(info.key)
                if block is not None:
                    self.recordHeader(folder, info, block)
            out.update(found)
        return out

    def headerSpans(self, folder: Any, uids: Sequence[int],
                    keyOf: Callable[[int], str]) -> tuple[list[Span], list[int]] | None:
        """The header records (L{packHeaderRecord}) of the messages C{uids} (ascending,
        distinct) in the folder's header file, read in bulk and checked (crc, and that
        each is the record of the message C{keyOf(uid)} names), as the spans of
        L{CacheFile.readSpans}, and the UIDs without one; None when the folder has no
        header file."""
        cf = self._fileOf(folder, headers=True)
        if cf is None:
            return None

        def accept(uid: int, data: bytes, start: int, end: int) -> bool:
            return headerRecordOk(data, start, end,
                                  keyOf(uid).encode("utf-8", "surrogateescape"))

        return cf.readSpans(uids, accept)

    def recordHeader(self, folder: Any, info: Any, block: bytes) -> None:
        """Queue the root header C{block} of message C{info} for the folder's header file
        (written by L{flush}, unless the file has it already)."""
        if not self.files or len(block) > HEADER_CACHE_MAX:
            return
        with self._fileLock:
            full = self._queueHeaderLocked(folder, info, block) >= 1024
        if full:
            self.flush()

    def _queueHeaderLocked(self, folder: Any, info: Any, block: bytes) -> int:
        """Queue a header block for the folder's header file (the caller holds the file
        lock); the number now queued for that folder."""
        entry = self._queuedHeaders.get(folder.path)
        if entry is None:
            entry = self._queuedHeaders[folder.path] = (folder, [])
        entry[1].append((info.uid, info.key, block))
        return len(entry[1])

    def _fromFile(self, folder: Any, infos: Sequence[Any],
                  unpack: Callable[[bytes, str], _T | None], headers: bool = False
                  ) -> dict[str, _T]:
        """C{unpack(record, key)} of the records of C{infos} in the folder's cache file
        (with C{headers}, its header file) (one read), by message key; records that are
        absent or refused are left out."""
        cf = self._fileOf(folder, headers)
        if cf is None:
            return {}
        found = cf.getMany([i.uid for i in infos])
        out: dict[str, _T] = {}
        for info in infos:
            data = found.get(info.uid)
            if data is not None:
                value = unpack(data, info.key)
                if value is not None:
                    out[info.key] = value
        return out

    def record(self, folder: Any, info: Any, summary: Summary) -> None:
        """Queue C{summary} of message C{info} for the folder's cache file (written by
        L{flush}, or when many are queued)."""
        if not self.files:
            return
        with self._fileLock:
            entry = self._queued.get(folder.path)
            if entry is None:
                entry = self._queued[folder.path] = (folder, [])
            entry[1].append((info.uid, packSummary(info.key, summary)))
            full = len(entry[1]) >= 256
            if summary.header is not None:
                self._queueHeaderLocked(folder, info, summary.header)
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the queued summaries to their folders' cache files."""
        with self._fileLock:
            queued, self._queued = self._queued, {}
            queuedHeaders, self._queuedHeaders = self._queuedHeaders, {}
        for folder, items in queued.values():
            cf = self._fileOf(folder)
            if cf is not None:
                cf.putMany(items)
        for folder, blocks in queuedHeaders.values():
            cf = self._fileOf(folder, headers=True)
            if cf is not None:
                # A header never changes: only the messages the file lacks are written.
                todo = set(cf.missing([uid for uid, _, _ in blocks]))
                if todo:
                    items = {uid: (key, block) for uid, key, block in blocks if uid in todo}
                    cf.putMany([(uid, packHeaderRecord(key, block))
                                for uid, (key, block) in items.items()], trusted=True)

    def compact(self, folder: Any, live: set[int]) -> None:
        """Let the folder's cache file drop the records of messages not in C{live} (UIDs)
        when they are most of it."""
        cf = self._fileOf(folder)
        if cf is not None:
            cf.compact(live)
        cf = self._fileOf(folder, headers=True)
        if cf is not None:
            cf.compact(live)

    def close(self) -> None:
        """Write what is queued and close the open cache files."""
        self.flush()
        with self._fileLock:
            files, self._open = list(self._open.values()), OrderedDict()
            files += self._openHeaders.values()
            self._openHeaders = OrderedDict()
        for cf in files:
            cf.close()

    # -- the memory tiers --

    def get(self, key: tuple[str, str]) -> ParsedMessage | None:
        """The cached complete structure, or None."""
        with self._lock:
            p = self._entries.get(key)
            if p is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return p

    def put(self, key: tuple[str, str], parsed: ParsedMessage) -> None:
        """Remember C{parsed} (and its summary), evicting the least recently used."""
        summary = summaryOf(parsed)
        with self._lock:
            self._entries[key] = parsed
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxEntries:
                self._entries.popitem(last=False)
            self._putSummary(key, summary)

    def summary(self, key: tuple[str, str]) -> Summary | None:
        """The cached summary, or None."""
        with self._lock:
            s = self._summaries.get(key)
            if s is not None:
                self._summaries.move_to_end(key)
            return s

    def peekSummary(self, key: tuple[str, str]) -> Summary | None:
        """The cached summary, or None, without marking it used (no lock: one dict
        lookup, for scans over a whole folder)."""
        return self._summaries.get(key)

    def putSummary(self, key: tuple[str, str], summary: Summary) -> Summary:
        """Remember a summary (a complete one already cached is kept); returns the one
        now cached."""
        with self._lock:
            old = self._summaries.get(key)
            if old is not None and old.bodystructure is not None:
                self._summaries.move_to_end(key)
                return old
            self._putSummary(key, summary)
            return summary

    def putComplete(self, folder: Any, items: Sequence[tuple[Any, Summary]]) -> None:
        """Remember the complete summaries of many messages of C{folder} ((MessageInfo,
        summary) pairs, just computed) in memory and queue them for the folder's cache
        file: what L{putSummary} and L{record} do for each, with one memory lock for
        all."""
        path = folder.path
        with self._lock:
            for info, summary in items:
                self._putSummary((path, info.key), summary)
        for info, summary in items:
            self.record(folder, info, summary)

    def _putSummary(self, key: tuple[str, str], summary: Summary) -> None:
        """Store C{summary} and evict down to the budget (caller holds the lock)."""
        old = self._summaries.pop(key, None)
        if old is not None:
            self._summaryBytes -= old.cost()
        self._summaries[key] = summary
        self._summaryBytes += summary.cost()
        while self._summaryBytes > self.maxSummaryBytes and len(self._summaries) > 1:
            _, evicted = self._summaries.popitem(last=False)
            self._summaryBytes -= evicted.cost()

    def __len__(self) -> int:
        """The number of complete structures cached."""
        return len(self._entries)
