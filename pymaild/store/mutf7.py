"""IMAP modified UTF-7 (RFC 3501 section 5.1.3), the encoding of folder names on disk.

Dovecot's default Maildir++ layout stores every folder name component in modified UTF-7:
printable US-ASCII other than C{&} stands for itself, C{&} is written C{&-}, and any other
run of characters is UTF-16BE, base64-encoded with C{,} instead of C{/}, without padding,
between C{&} and C{-}.

L{decode} is strict: it refuses anything L{encode} would not have produced (bytes outside
printable ASCII, unterminated or empty-but-not-C{&-} shifts, bad base64, non-zero padding
bits, encoded printable ASCII, lone surrogates), so a name has exactly one spelling on disk.
Pure Python; no Twisted.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["MUTF7Error", "encode", "decode"]

_B64_CHARS = re.compile(r"[A-Za-z0-9+,]+\Z")


class MUTF7Error(ValueError):
    """The text cannot be encoded to, or is not valid, modified UTF-7."""


def _isDirect(ch: str) -> bool:
    """True when C{ch} is printable US-ASCII (0x20..0x7e), which stands for itself."""
    return "\x20" <= ch <= "\x7e"


def _encodeRun(run: str) -> str:
    """Encode a run of non-direct characters as C{&<modified base64>-}."""
    try:
        raw = run.encode("utf-16-be")
    except UnicodeEncodeError as e:
        raise MUTF7Error(f"cannot encode {run!r}: lone surrogate") from e
    b64 = base64.b64encode(raw).rstrip(b"=").decode("ascii").replace("/", ",")
    return "&" + b64 + "-"


def encode(text: str) -> str:
    """Return C{text} in IMAP modified UTF-7 (an ASCII-only str).

    @raise MUTF7Error: C{text} contains a lone surrogate.
    """
    out: list[str] = []
    run: list[str] = []
    for ch in text:
        if _isDirect(ch):
            if run:
                out.append(_encodeRun("".join(run)))
                run.clear()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append(_encodeRun("".join(run)))
    return "".join(out)


def _decodeRun(segment: str) -> str:
    """Decode the modified base64 between C{&} and C{-}, refusing non-canonical forms."""
    if not _B64_CHARS.match(segment):
        raise MUTF7Error(f"bad character in encoded segment {segment!r}")
    if len(segment) % 4 == 1:
        raise MUTF7Error(f"truncated encoded segment {segment!r}")
    b64 = segment.replace(",", "/")
    try:
        raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise MUTF7Error(f"bad base64 in {segment!r}") from e
    if len(raw) % 2:
        raise MUTF7Error(f"odd number of UTF-16 octets in {segment!r}")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as e:
        raise MUTF7Error(f"bad UTF-16 in {segment!r}") from e
    if any(_isDirect(ch) for ch in text):
        raise MUTF7Error(f"printable ASCII encoded in {segment!r}")
    if _encodeRun(text) != "&" + segment + "-":
        raise MUTF7Error(f"non-canonical encoding {segment!r}")
    return text


def decode(text: str) -> str:
    """Return the Unicode text that C{text}, in modified UTF-7, stands for.

    @raise MUTF7Error: C{text} is not canonical modified UTF-7.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if not _isDirect(ch):
            raise MUTF7Error(f"character {ch!r} outside printable ASCII")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise MUTF7Error(f"unterminated shift in {text!r}")
        if end == i + 1:
            out.append("&")
        else:
            out.append(_decodeRun(text[i + 1:end]))
        i = end + 1
    result = "".join(out)
    # Each run is canonical on its own, but two adjacent runs ("&U,BTFw-&ZeVnLIqe-")
    # are a second spelling of what one run encodes.
    if encode(result) != text:
        raise MUTF7Error(f"non-canonical spelling {text!r} (adjacent encoded runs)")
    return result
