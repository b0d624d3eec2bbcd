"""Parsing a whole stored message into its MIME part tree.

L{parseMessage} reads a whole message (CRLF bytes, as the store's C{Folder.open} gives
it) once and returns a L{pymaild.imap.bodystructure.ParsedMessage}: a tree of
L{pymaild.imap.bodystructure.Part}s holding the byte offsets of every part's header and
body (so any C{BODY[section]} is a byte range of the file and can be streamed), plus the
ENVELOPE, BODY and BODYSTRUCTURE responses already serialised
(L{pymaild.imap.bodystructure}). Multipart bodies are cut at their boundaries as
Dovecot's parser cuts them, within the caps of L{pymaild.imap.mimeheader}.
"""

from __future__ import annotations

from pymaild.imap.bodystructure import ParsedMessage, Part, envelopeBytes, shapeOf, structureBytes
from pymaild.imap.mimeheader import (
    MAX_ALL_HEADERS,
    MAX_DEPTH,
    MAX_HEADER_BLOCK,
    MAX_PARTS,
    consideredBlock,
    contentFieldList,
    splitHeader,
)
from pymaild.imap.summary import HEADER_CACHE_MAX


def _countLines(data: bytes, start: int, end: int) -> int:
    """The body-fld-lines of C{data[start:end]}: its line ends (a last line without one
    does not count, as in Dovecot)."""
    return data.count(b"\n", start, end)


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
