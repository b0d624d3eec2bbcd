"""FETCH attributes: parsing (RFC 3501 §6.4.5 grammar) and section byte ranges.

L{parseFetchAttributes} turns ``(FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)`` into
L{FetchItem}s. L{sectionRange} maps a body section onto a byte range of the stored
file (C{BODY[]}, C{TEXT}, C{HEADER}, C{MIME}, numbered parts), so the server can stream
it; C{HEADER.FIELDS} needs the header bytes themselves (L{sectionHeaderBlock}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pymaild.imap.mime import ParsedMessage, Part
from pymaild.imap.syntax import BadCommand

SIMPLE = {
    b"UID": "uid",
    b"FLAGS": "flags",
    b"INTERNALDATE": "internaldate",
    b"RFC822.SIZE": "size",
    b"ENVELOPE": "envelope",
    b"BODY": "body",
    b"BODYSTRUCTURE": "bodystructure",
}

MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}


@dataclass
class FetchItem:
    """One requested FETCH attribute.

    C{kind} is one of uid, flags, internaldate, size, envelope, body, bodystructure,
    section. Sections carry the part path, the text specifier (C{""}, HEADER,
    HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME), header field names, whether it is
    a PEEK, the partial range and the label echoed in the response.
    """

    kind: str
    path: tuple[int, ...] = ()
    spec: str = ""
    fields: tuple[bytes, ...] = ()
    peek: bool = True
    partial: tuple[int, int] | None = None
    label: bytes = b""

    def responseLabel(self) -> bytes:
        """The response name, e.g. C{BODY[HEADER]<0>} or C{RFC822.TEXT}."""
        if self.partial is not None:
            return self.label + b"<%d>" % self.partial[0]
        return self.label


_SECTION_RE = re.compile(
    rb"\[(?P<path>(?:[1-9][0-9]*)(?:\.[1-9][0-9]*)*)?(?:(?(path)\.)(?P<spec>HEADER\.FIELDS\.NOT|"
    rb"HEADER\.FIELDS|HEADER|TEXT|MIME))?",
    re.I,
)
_FIELDS_RE = re.compile(rb" ?\((?P<f>[^()\]]*)\)\]", re.I)
_PARTIAL_RE = re.compile(rb"<(?P<a>[0-9]+)\.(?P<b>[1-9][0-9]*)>")
_FIELD_NAME_RE = re.compile(rb'"(?:[^"\\]|\\.)*"|[!-9;-~]+')


def parseFetchAttributes(text: bytes) -> list[FetchItem]:
    """Parse the fetch attribute argument (the rest of the FETCH command).

    @raise BadCommand: unknown attribute or malformed section.
    """
    text = text.strip()
    if not text:
        raise BadCommand("missing FETCH attributes")
    upper = text.upper()
    if upper in MACROS:
        return [FetchItem(SIMPLE[n], label=n) for n in MACROS[upper]]
    if text.startswith(b"("):
        if not text.endswith(b")"):
            raise BadCommand("unbalanced parentheses in FETCH attributes")
        text = text[1:-1].strip()
        if not text:
            raise BadCommand("empty FETCH attribute list")
    items: list[FetchItem] = []
    pos = 0
    while pos < len(text):
        item, pos = _parseOne(text, pos)
        items.append(item)
        if pos < len(text):
            if text[pos : pos + 1] != b" ":
                raise BadCommand("expected a space between FETCH attributes")
            pos += 1
    return items


def _parseOne(text: bytes, pos: int) -> tuple[FetchItem, int]:
    m = re.compile(rb"[A-Za-z0-9.]+").match(text, pos)
    if not m:
        raise BadCommand("malformed FETCH attribute")
    name = m.group().upper()
    pos = m.end()
    if text[pos : pos + 1] == b"[" and name in (b"BODY", b"BODY.PEEK"):
        return _parseSection(text, pos, peek=name == b"BODY.PEEK")
    if name in SIMPLE:
        return FetchItem(SIMPLE[name], label=name), pos
    if name == b"RFC822":
        return FetchItem("section", peek=False, label=b"RFC822"), pos
    if name == b"RFC822.HEADER":
        return FetchItem("section", spec="HEADER", peek=True, label=b"RFC822.HEADER"), pos
    if name == b"RFC822.TEXT":
        return FetchItem("section", spec="TEXT", peek=False, label=b"RFC822.TEXT"), pos
    raise BadCommand(f"unknown FETCH attribute {name.decode('ascii', 'replace')}")


def _parseSection(text: bytes, pos: int, peek: bool) -> tuple[FetchItem, int]:
    m = _SECTION_RE.match(text, pos)
    if not m:
        raise BadCommand("malformed section")
    path = tuple(int(x) for x in m.group("path").split(b".")) if m.group("path") else ()
    spec = (m.group("spec") or b"").upper().decode("ascii")
    if spec == "MIME" and not path:
        raise BadCommand("MIME needs a part number")
    pos = m.end()
    fields: tuple[bytes, ...] = ()
    fieldsText = b""
    if spec.startswith("HEADER.FIELDS"):
        fm = _FIELDS_RE.match(text, pos)
        if not fm:
            raise BadCommand("malformed header field list")
        names = _FIELD_NAME_RE.findall(fm.group("f"))
        if not names:
            raise BadCommand("empty header field list")
        fields = tuple(n.strip(b'"') for n in names)
        fieldsText = b" (" + b" ".join(fields) + b")"
        pos = fm.end()
    else:
        if text[pos : pos + 1] != b"]":
            raise BadCommand("malformed section")
        pos += 1
    partial = None
    pm = _PARTIAL_RE.match(text, pos)
    if pm:
        partial = (int(pm.group("a")), int(pm.group("b")))
        if partial[0] > 4294967295 or partial[1] > 4294967295:
            raise BadCommand("partial range out of range")
        pos = pm.end()
    elif text[pos : pos + 1] == b"<":
        raise BadCommand("malformed partial range")
    pathText = b".".join(b"%d" % n for n in path)
    specText = spec.encode("ascii")
    inner = pathText + (b"." if pathText and specText else b"") + specText + fieldsText
    item = FetchItem(
        "section", path=path, spec=spec, fields=fields, peek=peek, partial=partial,
        label=b"BODY[" + inner + b"]",
    )
    return item, pos


def sectionRange(parsed: ParsedMessage, item: FetchItem) -> tuple[int, int] | None:
    """The byte range (start, end) of a section, or None when the part does not exist.

    Not for HEADER.FIELDS, which filters the header (see L{sectionHeaderBlock}).
    """
    part = parsed.section(item.path) if item.path else parsed.root
    if part is None:
        return None
    spec = item.spec
    if not item.path:
        if spec == "":
            return (0, parsed.size)
        if spec == "HEADER":
            return (part.start, part.bodyStart)
        if spec == "TEXT":
            return (part.bodyStart, part.end)
        return None
    if spec == "":
        return (part.bodyStart, part.end)
    if spec == "MIME":
        return (part.start, part.bodyStart)
    msg = _encapsulated(part)
    if msg is None:
        return None
    if spec == "HEADER":
        return (msg.start, msg.bodyStart)
    if spec == "TEXT":
        return (msg.bodyStart, msg.end)
    return None


def _encapsulated(part: Part) -> Part | None:
    if part.isMessage and part.message is not None:
        return part.message
    return None


def sectionHeaderPart(parsed: ParsedMessage, item: FetchItem) -> Part | None:
    """The entity whose header a HEADER.FIELDS section reads, or None."""
    if not item.path:
        return parsed.root
    part = parsed.section(item.path)
    if part is None:
        return None
    return _encapsulated(part)


def applyPartial(item: FetchItem, start: int, end: int) -> tuple[int, int]:
    """Narrow a byte range to the item's partial C{<origin.count>}."""
    if item.partial is None:
        return start, end
    origin, count = item.partial
    s = min(start + origin, end)
    return s, min(s + count, end)
