"""FETCH attributes: parsing (RFC 3501 §6.4.5 grammar) and section byte ranges.

L{parseFetchAttributes} turns ``(FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)`` into
L{FetchItem}s. L{sectionRange} maps a body section onto a byte range of the stored
file (C{BODY[]}, C{TEXT}, C{HEADER}, C{MIME}, numbered parts), so the server can stream
it; C{HEADER.FIELDS} needs the header bytes themselves (L{sectionHeaderBlock}).

L{FetchPlan} renders the responses of a run of messages at once -- from the structure
cache alone in the reactor thread, or with the disk in one runner call per batch -- so a
FETCH over thousands of messages costs a few thread round trips and large writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pymaild.errors import MessageVanished
from pymaild.imap import binary, objectid, preview
from pymaild.imap.bodystructure import ParsedMessage, Part
from pymaild.imap.mimeheader import filterHeaders
from pymaild.imap.mimeparse import parseMessage
from pymaild.imap.summary import Summary, summaryOf
from pymaild.imap.summarycache import StructureCache
from pymaild.imap.syntax import BadCommand, boundedInt, partialRange, serialiseString

SIMPLE = {
    b"UID": "uid",
    b"FLAGS": "flags",
    b"INTERNALDATE": "internaldate",
    b"RFC822.SIZE": "size",
    b"ENVELOPE": "envelope",
    b"BODY": "body",
    b"BODYSTRUCTURE": "bodystructure",
    b"SAVEDATE": "savedate",
    b"EMAILID": "emailid",
    b"THREADID": "threadid",
    b"MODSEQ": "modseq",
}

MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}


@dataclass
class FetchItem:
    """One requested FETCH attribute.

    C{kind} is one of uid, flags, internaldate, savedate, emailid, threadid, modseq,
    preview,
    size, envelope, body, bodystructure, section. Sections carry the part path, the text
    specifier (C{""}, HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME), header
    field names, whether it is a PEEK, the partial range and the label echoed in the
    response.

    BINARY items (RFC 3516, L{pymaild.imap.binary}) have the kinds binary and
    binarysize, with a part path, PEEK and the partial range as sections have.
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
    if name in (b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"):
        return binary.parse(text, pos, name, FetchItem)
    if name in (b"PREVIEW", b"SNIPPET"):
        # PREVIEW (RFC 8970), with the LAZY modifier (a preview is always computed);
        # and the draft forms Dovecot offers as PREVIEW=FUZZY and SNIPPET=FUZZY:
        # PREVIEW (FUZZY), SNIPPET [(FUZZY)], with LAZY=FUZZY for FUZZY, answered
        # C{PREVIEW (FUZZY "text")} / C{SNIPPET (FUZZY "text")}.
        modifiers: list[bytes] = []
        if text[pos : pos + 2] == b" (":
            end = text.find(b")", pos)
            if end < 0:
                raise BadCommand("unterminated PREVIEW modifier")
            modifiers = text[pos + 2 : end].upper().split()
            if not modifiers:
                raise BadCommand(f"empty {name.decode()} modifier list")
            pos = end + 1
        fuzzy = name == b"SNIPPET" or modifiers in ([b"FUZZY"], [b"LAZY=FUZZY"])
        if modifiers not in ([], [b"LAZY"], [b"FUZZY"], [b"LAZY=FUZZY"]) or (
                name == b"SNIPPET" and modifiers == [b"LAZY"]):
            raise BadCommand(f"unknown {name.decode()} modifier")
        return FetchItem("preview", spec="FUZZY" if fuzzy else "", label=name), pos
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
    path = tuple(boundedInt(x) for x in m.group("path").split(b".")) if m.group("path") else ()
    if any(n > 4294967295 for n in path):
        raise BadCommand("section part number out of range")
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
    partial, pos = partialRange(text, pos)
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
        # HEADER or TEXT of a part that is no message/rfc822: empty, as in Dovecot.
        return (part.bodyStart, part.bodyStart) if spec in ("HEADER", "TEXT") else None
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


# -- rendering FETCH responses in batches ---------------------------------------------

INLINE_SECTION = 262144
"""Sections up to this size are read whole into a response; larger ones are streamed."""
RENDER_LIMIT = 256
"""At most this many messages' responses are rendered per call (per disk round trip)."""
BATCH_BYTES = 1 << 20
"""A batch stops after the message that brings its inline section bytes past this."""

Segment = bytes | tuple[Any, int, int]
"""Response output: bytes to send, or C{(file, start, end)}: bytes of a file to stream."""


_mailboxModule: Any = None


def _mailbox() -> Any:
    """L{pymaild.imap.mailbox}, imported on first use (it imports Twisted, which
    rendering does not need) and then kept: an import statement per message costs."""
    global _mailboxModule
    if _mailboxModule is None:
        from pymaild.imap import mailbox

        _mailboxModule = mailbox
    return _mailboxModule


class NeedsDisk(Exception):
    """Raised while rendering from memory only: this message needs the disk."""


@dataclass
class Rendered:
    """The output of L{FetchPlan.render} for a run of messages.

    @ivar segments: bytes and stream ranges to send, in order.
    @ivar consumed: how many messages of the run were handled (rendered or vanished).
    @ivar vanished: UIDs of messages whose file is gone (nothing was rendered for them).
    @ivar files: open files the stream ranges read from (close them when sent).
    """

    segments: list[Segment]
    consumed: int
    vanished: list[int]
    files: list[Any]


class FetchPlan:
    """What the items of one FETCH command need, worked out once; L{render} builds the
    responses of a run of messages from the structure cache and, when allowed, the disk.

    Rendering is pure (no Twisted): the server calls it in the reactor thread with
    C{memoryOnly=True} (everything cached) and otherwise in its disk runner.
    """

    def __init__(self, items: list[FetchItem]) -> None:
        """Prepare for C{items}."""
        self.items = items
        self.sections = [i for i in items if i.kind == "section"]
        self.needDate = any(i.kind in ("internaldate", "savedate", "emailid") for i in items)
        self.needFull = any(i.kind in ("body", "bodystructure") for i in items)
        self.binaries = [i for i in items if i.kind in ("binary", "binarysize")]
        self.needParsed = any(s.path for s in self.sections) or any(
            i.kind in ("preview", "binary", "binarysize") for i in items)
        self.needSummary = self.needFull or any(
            i.kind == "envelope" or (i.kind == "section" and not i.path and i.spec)
            for i in items)

    def render(self, folder: Any, cache: StructureCache,
               work: list[tuple[int, int, Any, bytes | None]],
               memoryOnly: bool, limit: int = RENDER_LIMIT) -> Rendered:
        """Render the responses for C{work}: (seq, uid, MessageInfo, flag list bytes or
        None) per message; the flags are sent for the FLAGS item, or after the other
        items when the item list has no FLAGS (a \\Seen set by this FETCH).

        Stops after C{limit} messages, after C{BATCH_BYTES} of section data, or
        (C{memoryOnly}) at the first message that needs the disk. With the disk, the
        summaries the run needs are read from the folder's cache file first (one read),
        and the ones computed are written there at the end.
        """
        work = work[:limit]
        if memoryOnly:
            return self._render(folder, cache, work, True, {})
        partial = {}
        if self.needSummary:
            partial = cache.load(folder, [w[2] for w in work], self.needFull)
        try:
            if self.needFull:
                self._complete(folder, cache, work, partial)
            return self._render(folder, cache, work, False, partial)
        finally:
            cache.flush()

    def _complete(self, folder: Any, cache: StructureCache,
                  work: list[tuple[int, int, Any, bytes | None]],
                  partial: dict[str, Any]) -> None:
        """Parse, in one pass, the messages of C{work} whose complete summary (BODY,
        BODYSTRUCTURE) is neither in memory nor in the cache file, and cache the
        summaries together (L{StructureCache.putComplete}). A message that vanished is
        left for L{_one} to report."""
        path = folder.path
        peek = cache.peekSummary
        done: list[tuple[Any, Any]] = []
        for _seq, _uid, info, _flags in work:
            known = peek((path, info.key))
            if known is not None and known.bodystructure is not None:
                continue
            known = known or partial.get(info.key)
            try:
                data = folder.read(info)
            except MessageVanished:
                continue
            parsed = parseMessage(data, None if known is None else known.envelope)
            done.append((info, summaryOf(parsed)))
        cache.putComplete(folder, done)

    def _render(self, folder: Any, cache: StructureCache,
                work: list[tuple[int, int, Any, bytes | None]],
                memoryOnly: bool, partial: dict[str, Any]) -> Rendered:
        """Render C{work}; C{partial} holds incomplete summaries read from the cache
        file (by message key), whose ENVELOPE a complete one computed here reuses."""
        out: list[Segment] = []
        pending: list[bytes] = []
        vanished: list[int] = []
        files: list[Any] = []
        budget = 0
        consumed = 0
        for seq, uid, info, flags in work:
            try:
                parts, used, f = self._one(folder, cache, seq, uid, info, flags, memoryOnly,
                                           partial)
            except NeedsDisk:
                break
            except MessageVanished:
                vanished.append(uid)
                consumed += 1
                continue
            except BaseException:
                for opened in files:
                    opened.close()
                raise
            consumed += 1
            for p in parts:
                if isinstance(p, bytes):
                    pending.append(p)
                else:
                    out.append(b"".join(pending))
                    pending = []
                    out.append(p)
            if f is not None:
                files.append(f)
            budget += used
            if budget >= BATCH_BYTES:
                break
        if pending:
            out.append(b"".join(pending))
        return Rendered(out, consumed, vanished, files)

    def _one(self, folder: Any, cache: StructureCache, seq: int, uid: int, info: Any,
             flags: bytes | None, memoryOnly: bool,
             partial: dict[str, Any]) -> tuple[list[Segment], int, Any]:
        """One message's response segments, the section bytes read, and the file left
        open for streaming (or None)."""
        key = (folder.path, info.key)
        summary = None
        if self.needSummary:
            summary = cache.summary(key)
            if summary is None or (self.needFull and summary.bodystructure is None):
                if memoryOnly:
                    raise NeedsDisk()
                summary = _mailbox().loadSummary(cache, folder, info, self.needFull, False,
                                                 summary or partial.get(info.key))
        if memoryOnly and (self.needDate or self.needParsed or self.binaries):
            raise NeedsDisk()
        f = None
        try:
            values: list[Any] = []
            used = 0
            parsed = (_mailbox().loadParsed(cache, folder, info) if self.needParsed
                      else None)
            if self.sections:
                for s in self.sections:
                    value, f = self._section(folder, cache, info, s, summary, parsed, f,
                                             memoryOnly)
                    if isinstance(value, bytes):
                        used += len(value)
                    values.append(value)
            chunks: list[Segment] = []
            buf = [b"* %d FETCH (" % seq]
            vals = iter(values)
            first = True
            streaming = False
            for it in self.items:
                if not first:
                    buf.append(b" ")
                first = False
                kind = it.kind
                if kind == "uid":
                    buf.append(b"UID %d" % uid)
                elif kind == "flags":
                    buf.append(b"FLAGS " + (flags or b"()"))
                elif kind == "size":
                    buf.append(b"RFC822.SIZE %d" % info.size)
                elif kind == "internaldate":
                    date = folder.internalDate(info)
                    buf.append(b'INTERNALDATE "' + _mailbox().formatInternalDate(date) + b'"')
                elif kind == "savedate":
                    date = folder.saveDate(info)
                    buf.append(b'SAVEDATE "' + _mailbox().formatInternalDate(date) + b'"')
                elif kind == "emailid":
                    buf.append(b"EMAILID (" + objectid.emailId(folder.messageGuid(info)) + b")")
                elif kind == "threadid":
                    buf.append(b"THREADID NIL")
                elif kind == "modseq":
                    buf.append(b"MODSEQ (%d)" % folder.modseqs.modseq(uid))
                elif kind == "preview":
                    assert parsed is not None
                    text = preview.previewText(folder, info, parsed)
                    if it.spec == "FUZZY":
                        buf.append(it.label + b" (FUZZY " + serialiseString(text) + b")")
                    else:
                        buf.append(b"PREVIEW " + serialiseString(text))
                elif kind == "envelope":
                    assert summary is not None
                    buf.append(b"ENVELOPE " + summary.envelope)
                elif kind == "body":
                    assert summary is not None and summary.body is not None  # needFull
                    buf.append(b"BODY " + summary.body)
                elif kind == "bodystructure":
                    assert summary is not None and summary.bodystructure is not None
                    buf.append(b"BODYSTRUCTURE " + summary.bodystructure)
                elif kind in ("binary", "binarysize"):
                    data = binary.content(folder, info, parsed, it)
                    if kind == "binarysize":
                        buf.append(it.label + b" %d" % len(data))
                    else:
                        a, b = applyPartial(it, 0, len(data))
                        used += b - a
                        buf.append(it.responseLabel() + b" " + binary.literal(data, b - a))
                        buf.append(data[a:b])
                else:
                    value = next(vals)
                    label = it.responseLabel() + b" "
                    if value is None:
                        buf.append(label + b"NIL")
                    elif isinstance(value, bytes):
                        buf.append(label + b"{%d}\r\n" % len(value))
                        buf.append(value)
                    else:
                        a, b = value
                        buf.append(label + b"{%d}\r\n" % (b - a))
                        chunks.append(b"".join(buf))
                        chunks.append((f, a, b))
                        buf = []
                        streaming = True
            if flags is not None and not any(i.kind == "flags" for i in self.items):
                buf.append(b" FLAGS " + flags)
            buf.append(b")\r\n")
            chunks.append(b"".join(buf))
            if not streaming and f is not None:
                f.close()
                f = None
            return chunks, used, f
        except BaseException:
            if f is not None:
                f.close()
            raise

    def _section(self, folder: Any, cache: StructureCache, info: Any, s: FetchItem,
                 summary: Summary | None,
                 parsed: ParsedMessage | None, f: Any,
                 memoryOnly: bool) -> tuple[bytes | tuple[int, int] | None, Any]:
        """One section's value: bytes, a (start, end) range to stream, or None (NIL);
        and the message's open file (opened here when first needed)."""

        def opened() -> Any:
            if memoryOnly:
                raise NeedsDisk()
            return f if f is not None else folder.open(info)

        if s.spec.startswith("HEADER.FIELDS"):
            if s.path:
                assert parsed is not None
                part = sectionHeaderPart(parsed, s)
                if part is None:
                    return None, f
                if part is parsed.root and parsed.header is not None:
                    block = parsed.header
                else:
                    f = opened()
                    f.seek(part.start)
                    block = f.read(part.bodyStart - part.start)
            elif summary is not None and summary.header is not None:
                block = summary.header
            else:
                if memoryOnly:
                    raise NeedsDisk()
                block = _mailbox().readHeader(folder, info)
            data = filterHeaders(block, list(s.fields), s.spec.endswith(".NOT"))
            a, b = applyPartial(s, 0, len(data))
            return data[a:b], f
        if not s.path and s.spec == "HEADER" and summary is not None \
                and summary.header is not None:
            a, b = applyPartial(s, 0, len(summary.header))
            return summary.header[a:b], f
        if not s.path and s.spec == "" and f is None and info.size <= INLINE_SECTION:
            # BODY[] of a message small enough to send whole: one read of the file (no
            # buffered file object, seeks or tell), the literal's length taken from it.
            if memoryOnly:
                raise NeedsDisk()
            data = folder.read(info)
            a, b = applyPartial(s, 0, len(data))
            return data[a:b], f
        f = opened()
        f.seek(0, 2)
        total = f.tell()
        if s.path:
            assert parsed is not None
            rng = sectionRange(parsed, s)
        elif s.spec == "":
            rng = (0, total)
        elif s.spec == "HEADER":
            assert summary is not None  # a HEADER or TEXT section asks for one
            rng = (0, summary.bodyStart)
        else:  # TEXT
            assert summary is not None
            rng = (summary.bodyStart, total)
        if rng is None:
            return None, f
        a, b = applyPartial(s, rng[0], min(rng[1], total))
        if b - a <= INLINE_SECTION:
            f.seek(a)
            return f.read(b - a), f
        return (a, b), f
