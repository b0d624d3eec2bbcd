"""BINARY (RFC 3516): FETCH BINARY[part], BINARY.PEEK[part] and BINARY.SIZE[part].

A part's content comes back with its Content-Transfer-Encoding undone: base64 and
quoted-printable are decoded (leniently, as Dovecot does: characters outside the
base64 alphabet are skipped, a truncated last group is dropped), 7bit, 8bit, binary
and no encoding at all are the bytes as stored. Any other encoding (x-uuencode, a
misspelling) is C{NO [UNKNOWN-CTE]}. C{BINARY[]} is the whole message with every part
decoded and its encoding field made C{binary}, as Dovecot sends it; a multipart or
message/rfc822 part is its body as stored (their encoding can only be an identity one);
a part that does not exist is empty (Dovecot's answer). Data holding a NUL or an 8-bit
byte is sent as a literal8 (C{~{n}}), anything else as an ordinary literal.

APPEND takes a literal8 (C{~{n}}); content the store would alter (a bare LF, which it
writes as CRLF) is refused with C{NO [UNKNOWN-CTE]} (RFC 3516 section 4.3).

Decoding reads the part into memory in the disk thread; its size is bounded by the
largest message the server stores.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from typing import Any

from pymaild.imap.mimeheader import decodeQuotedPrintable
from pymaild.imap.mimeparse import parseMessage
from pymaild.imap.syntax import BadCommand, NoCommand, boundedInt, partialRange

_SECTION_RE = re.compile(rb"\[(?P<path>[1-9][0-9]*(?:\.[1-9][0-9]*)*)?\]")
_BINARY = re.compile(rb"[\x00\x80-\xff]")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]+")
_TOKEN = re.compile(rb"[^\s;(]*")
_CTE_FIELD = re.compile(rb"^Content-Transfer-Encoding[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*",
                        re.IGNORECASE | re.MULTILINE)

IDENTITY = (b"", b"7bit", b"8bit", b"binary")


class UnknownCTE(NoCommand):
    """The part's Content-Transfer-Encoding is one the server cannot decode."""

    def __init__(self, encoding: bytes) -> None:
        super().__init__("[UNKNOWN-CTE] Unknown Content-Transfer-Encoding "
                         + encoding[:40].decode("ascii", "replace"))


def parse(text: bytes, pos: int, name: bytes, itemClass: Any) -> tuple[Any, int]:
    """One C{BINARY[...]}, C{BINARY.PEEK[...]} or C{BINARY.SIZE[...]} attribute at
    C{pos} (the C{[}); returns an item of C{itemClass} (L{pymaild.imap.fetch.FetchItem})
    and the position after it.

    @raise BadCommand: a malformed section, a text specifier (only part numbers are
        allowed), or a partial range on BINARY.SIZE.
    """
    m = _SECTION_RE.match(text, pos)
    if m is None:
        raise BadCommand("malformed BINARY section (only part numbers are allowed)")
    raw = m.group("path")
    path = tuple(boundedInt(x) for x in raw.split(b".")) if raw else ()
    if any(n > 4294967295 for n in path):
        raise BadCommand("section part number out of range")
    pos = m.end()
    inner = b".".join(b"%d" % n for n in path)
    if name == b"BINARY.SIZE":
        if text[pos : pos + 1] == b"<":
            raise BadCommand("BINARY.SIZE takes no partial range")
        return itemClass("binarysize", path=path, label=b"BINARY.SIZE[" + inner + b"]"), pos
    partial, pos = partialRange(text, pos)
    item = itemClass("binary", path=path, peek=name == b"BINARY.PEEK", partial=partial,
                     label=b"BINARY[" + inner + b"]")
    return item, pos


def decodeBase64(data: bytes) -> bytes:
    """base64 decoded leniently: foreign characters and padding skipped, a truncated
    last group dropped."""
    clean = _NOT_BASE64.sub(b"", data)
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    clean += b"=" * (-len(clean) % 4)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:  # pragma: no cover (the cleaned text always decodes)
        return b""


def decode(body: bytes, encoding: bytes) -> bytes:
    """C{body} with the transfer encoding C{encoding} (any case, C{b""} for none)
    undone.

    @raise UnknownCTE: an encoding other than base64, quoted-printable or an identity.
    """
    m = _TOKEN.match(encoding.strip())
    enc = (m.group() if m else b"").lower()
    if enc in IDENTITY:
        return body
    if enc == b"base64":
        return decodeBase64(body)
    if enc == b"quoted-printable":
        return decodeQuotedPrintable(body)
    raise UnknownCTE(encoding.strip())


def content(folder: Any, info: Any, parsed: Any, item: Any) -> bytes:
    """The decoded content BINARY C{item} asks for in message C{info} (before any
    partial range); a part that does not exist is empty, as in Dovecot (blocking:
    reads the file).

    @raise UnknownCTE: the part's encoding (for C{BINARY[]}, any part's) cannot be
        decoded.
    """
    data = folder.read(info)
    if not item.path:
        return converted(data, parsed.root)
    part = parsed.section(item.path)
    if part is None:
        return b""
    body = data[part.bodyStart : part.end]
    if part.children or part.isMessage:
        return body
    return decode(body, _encoding(part))


def _encoding(part: Any) -> bytes:
    """The part's Content-Transfer-Encoding field (C{b""} without one)."""
    return bytes(part.contentFields().get(b"content-transfer-encoding", b""))


def converted(data: bytes, part: Any, rewrite: bool = True) -> bytes:
    """Entity C{part} of C{data} with every leaf part decoded and its
    Content-Transfer-Encoding field made C{binary} (what Dovecot sends for
    C{BINARY[]}); the boundaries, preambles and epilogues are kept as they are. With
    C{rewrite} false the fields stay as they are (what URLAUTH=BINARY's
    BODYPARTSTRUCTURE describes, L{pymaild.imap.urlauth}).

    @raise UnknownCTE: a part's encoding cannot be decoded.
    """
    header = data[part.start : part.bodyStart]
    if part.children:
        out = [header]
        pos = part.bodyStart
        for child in part.children:
            out.append(data[pos : child.start])
            out.append(converted(data, child, rewrite))
            pos = child.end
        out.append(data[pos : part.end])
        return b"".join(out)
    if part.isMessage and part.message is not None:
        msg = part.message
        return (header + data[part.bodyStart : msg.start] + converted(data, msg, rewrite)
                + data[msg.end : part.end])
    body = data[part.bodyStart : part.end]
    decoded = decode(body, _encoding(part))
    if decoded is not body and rewrite:
        header = _CTE_FIELD.sub(b"Content-Transfer-Encoding: binary\r\n", header, count=1)
    return header + decoded


def storable(data: Any) -> bool:
    """Whether a literal8 APPEND's C{data} (bytes or a spool file) survives the
    store unchanged: the store writes every line end as CRLF, so a bare LF would be
    altered (RFC 3516 section 4.3 then asks for C{NO [UNKNOWN-CTE]}). NUL and every
    other byte are kept. Blocking for a file (it is read through)."""
    if not hasattr(data, "read"):
        return bool(data.count(b"\n") == data.count(b"\r\n"))
    data.seek(0)
    last = b""
    while True:
        chunk = data.read(1 << 20)
        if not chunk:
            break
        if chunk.startswith(b"\n") and last != b"\r":
            data.seek(0)
            return False
        if chunk.count(b"\n") != chunk.count(b"\r\n") + (1 if chunk.startswith(b"\n") else 0):
            data.seek(0)
            return False
        last = chunk[-1:]
    data.seek(0)
    return True


def storableForm(data: bytes) -> bytes | None:
    """C{data} (a literal8 message) with each leaf part whose body holds a bare LF or
    CR re-encoded in base64 (its Content-Transfer-Encoding field made C{base64}), so
    that the CRLF-only store keeps it and BINARY gives the same octets back; None
    when something else (a header, a boundary line, a preamble) has bare line ends.
    Blocking (parses the message)."""
    parsed = parseMessage(data)
    out: list[bytes] = []
    pos = 0

    def leaves(part: Any) -> Iterator[Any]:
        if part.children:
            for child in part.children:
                yield from leaves(child)
        elif part.isMessage and part.message is not None:
            yield from leaves(part.message)
        else:
            yield part

    for part in leaves(parsed.root):
        body = data[part.bodyStart:part.end]
        if body.count(b"\n") == body.count(b"\r\n") and body.count(b"\r") == body.count(
                b"\r\n"):
            continue
        header = data[part.start:part.bodyStart]
        if _CTE_FIELD.search(header):
            header = _CTE_FIELD.sub(b"Content-Transfer-Encoding: base64\r\n", header,
                                    count=1)
        elif header.endswith(b"\r\n\r\n"):
            header = header[:-2] + b"Content-Transfer-Encoding: base64\r\n\r\n"
        else:
            return None
        out += [data[pos:part.start], header,
                base64.encodebytes(body).replace(b"\n", b"\r\n")]
        pos = part.end
    out.append(data[pos:])
    result = b"".join(out)
    return result if storable(result) else None


def literal(content: bytes, size: int) -> bytes:
    """The literal prefix for C{size} bytes of C{content} (a partial range of it, or
    all): C{~{n}} (literal8) when the content holds a NUL (RFC 3516 requires it then)
    or any 8-bit byte (Dovecot's choice, made over the whole content as Dovecot
    does, and followed here)."""
    return (b"~{%d}\r\n" if _BINARY.search(content) else b"{%d}\r\n") % size


__all__ = ["UnknownCTE", "content", "converted", "decode", "decodeBase64", "literal", "parse",
           "storable"]
