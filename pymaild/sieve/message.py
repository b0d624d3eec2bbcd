"""The message as Sieve tests see it: header fields, addresses, dates and body (pure).

Header values are unfolded, stripped and RFC 2047-decoded (RFC 5228 section 5.7);
addresses come from the undecoded value through the C{email} package's C{getaddresses}.
At most L{MAX_HEADER} bytes of the header section are looked at (the rest of a hostile
header block is ignored), and the body is parsed once, when a body test first asks.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.header import decode_header, make_header
from email.message import Message

#: How much of the header section the tests look at.
MAX_HEADER = 1 << 20
#: How much of the body the C{body} test looks at (Pigeonhole has no limit; the message
#: size limit bounds it anyway).
MAX_BODY = 16 << 20

_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:(.*)")
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")


class MessageView:
    """One message's bytes, parsed lazily for the tests.

    @param data: the message, CRLF or LF line ends.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        end = data.find(b"\r\n\r\n")
        sep = 4
        lf = data.find(b"\n\n")
        if lf >= 0 and (end < 0 or lf < end):
            end, sep = lf, 2
        if data.startswith(b"\r\n"):
            end, sep = 0, 2
        elif data.startswith(b"\n"):
            end, sep = 0, 1
        if end < 0:
            end, sep = len(data), 0
        self.headerBytes = data[: min(end, MAX_HEADER)]
        self.bodyBytes = data[end + sep :]
        self._fields: list[tuple[str, str]] | None = None
        self._parsed: Message | None = None

    def fields(self) -> list[tuple[str, str]]:
        """(lower-case name, raw unfolded value) of every header field, in order."""
        if self._fields is None:
            out: list[tuple[str, str]] = []
            for line in re.split(rb"\r?\n(?![ \t])", self.headerBytes):
                m = _FIELD.match(line)
                if m is None:
                    continue
                value = _UNFOLD.sub("", m.group(2).decode("utf-8", "replace"))
                out.append((m.group(1).decode("ascii").lower(), value))
            self._fields = out
        return self._fields

    def raw(self, name: str) -> list[str]:
        """The raw values of every field called C{name} (case-insensitive)."""
        name = name.lower()
        return [v for n, v in self.fields() if n == name]

    def header(self, name: str) -> list[str]:
        """The decoded, stripped values of every field called C{name}."""
        return [decodeWords(v).strip(" \t") for v in self.raw(name)]

    def parsed(self) -> Message:
        """The message as the C{email} package parses it (for body tests)."""
        if self._parsed is None:
            self._parsed = email.message_from_bytes(
                self.headerBytes + b"\r\n\r\n" + self.bodyBytes[:MAX_BODY],
                policy=email.policy.compat32)
        return self._parsed


def decodeWords(value: str) -> str:
    """C{value} with its RFC 2047 encoded words decoded (malformed ones kept)."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def addresses(values: list[str]) -> list[str]:
    """The addresses in header values (groups flattened, display names dropped)."""
    out = []
    for _, address in email.utils.getaddresses(values):
        if address:
            out.append(address)
    return out


def partText(part: Message) -> str:
    """A leaf part's content decoded from its transfer encoding and charset."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


__all__ = ["MAX_HEADER", "MessageView", "addresses", "decodeWords", "partText"]
