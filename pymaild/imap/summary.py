"""The summary of a message (ENVELOPE, BODY, BODYSTRUCTURE, its header) and its binary records.

A L{Summary} holds the small, often fetched facts of one message; L{summariseHeader}
builds one from the header alone (L{readHeaderBlock}), so a cold ENVELOPE never reads a
body, and L{summaryOf} from a complete parse. L{packSummary} and L{unpackSummary} are
its record in a folder's C{pymaild.cache} file, L{packHeaderRecord} and
L{unpackHeaderRecord} a header block's record in the folder's header file
(L{pymaild.store.cachefile}); every record names the message key it belongs to, so it
never answers for another message.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pymaild.imap.bodystructure import ParsedMessage, Part, envelopeBytes
from pymaild.imap.mimeheader import consideredBlock, splitHeader

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
