"""PREVIEW (RFC 8970): a short plain-text preview of a message for FETCH.

The preview comes from the first text part that is not an attachment (text/plain, or
text/html with its markup removed), decoded from its transfer encoding and charset;
quoted lines (C{>}) are skipped, white space runs made one space, and the result cut
to L{MAX_CHARS} characters. At most L{READ_LIMIT} octets of the part are read and
decoded, so a huge part costs no more than a small one. Blocking (reads the message
file): run it in the runner.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from typing import Any

from pymaild.imap.bodystructure import ParsedMessage, Part
from pymaild.imap.mimeheader import decodeQuotedPrintable

MAX_CHARS = 256
"""The longest preview, in characters (RFC 8970 section 3.1)."""
READ_LIMIT = 16384
"""Most octets of the chosen part read and decoded."""

_SPACES = re.compile(r"\s+")
_HIDDEN_HTML = re.compile(r"(?is)<(script|style|head|title)\b.*?(?:</\1\s*>|$)")
_TAG = re.compile(r"(?s)<[^>]*>|<[^>]*$")


def _firstTextPart(root: Part) -> Part | None:
    """The first non-attachment text/plain or text/html part, depth first."""
    stack = [root]
    while stack:
        part = stack.pop()
        if part.hidden:
            continue
        if part.isMultipart:
            stack.extend(reversed(part.children))
            continue
        if part.isMessage:
            continue  # an attached message is not this message's text
        disposition = (part.header(b"content-disposition") or b"").strip().lower()
        if disposition.startswith(b"attachment"):
            continue
        if part.mainType.lower() == b"text" and part.subType.lower() in (b"plain", b"html"):
            return part
    return None


def _decode(raw: bytes, part: Part) -> str:
    enc = (part.header(b"content-transfer-encoding") or b"").strip().lower()
    try:
        if enc == b"base64":
            compact = b"".join(raw.split())
            raw = base64.b64decode(compact[: len(compact) // 4 * 4], validate=False)
        elif enc == b"quoted-printable":
            raw = decodeQuotedPrintable(raw)
    except (binascii.Error, ValueError):
        pass
    charset = (part.param(b"charset") or b"utf-8").decode("ascii", "replace")
    try:
        return raw.decode(charset, "replace")
    except (LookupError, ValueError):
        return raw.decode("utf-8", "replace")


def previewText(folder: Any, info: Any, parsed: ParsedMessage) -> str | None:
    """The preview of a message (None when it has no text part)."""
    part = _firstTextPart(parsed.root)
    if part is None:
        return None
    length = min(part.end - part.bodyStart, READ_LIMIT)
    with folder.open(info) as f:
        f.seek(part.bodyStart)
        raw = f.read(max(0, length))
    text = _decode(raw, part)
    if part.subType.lower() == b"html":
        text = html.unescape(_TAG.sub(" ", _HIDDEN_HTML.sub(" ", text)))
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(">")]
    text = _SPACES.sub(" ", " ".join(lines)).strip()
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:MAX_CHARS].rstrip()
