"""A message's MIME part tree, and its ENVELOPE, BODY and BODYSTRUCTURE as Dovecot writes them.

L{Part} is one MIME entity of a stored message (the byte offsets of its header and
body, its type, its children) and L{ParsedMessage} a whole parse (the part tree and the
serialised responses; L{pymaild.imap.mimeparse.parseMessage} makes it). A part's
C{Content-*} fields make its L{Shape} (its type, how its body is parsed, and its
BODY/BODYSTRUCTURE bytes but for the sizes and the children), worked out once per
distinct set of fields (L{shapeOf}); L{structureBytes} walks a part tree once for both
responses and L{envelopeBytes} writes a header's ENVELOPE straight to bytes
(L{envelope} gives it as a list of values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pymaild.imap.mimeheader import (
    contentFieldList,
    contentFields,
    parseAddressList,
    parseHeaders,
    parseParams,
    unfold,
)
from pymaild.imap.syntax import Atom, serialiseString


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
