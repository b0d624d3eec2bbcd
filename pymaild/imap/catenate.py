"""CATENATE (RFC 4469) and URL-PARTIAL (RFC 5550): an APPEND whose message is made of
text literals and IMAP URLs (RFC 5092) naming messages or parts of messages the user
can read on this server, each URL optionally narrowed by C{;PARTIAL=offset[.length]}.

L{parseParts} reads C{CATENATE (TEXT literal / URL url ...)} from the command and
checks each URL's syntax (L{parseUrl}); L{assemble} (blocking, in the account's runner)
reads what the URLs name and writes the message into a spool file. A URL that does not
parse, names another server or user, a folder or message that is not there, a
UIDVALIDITY that is not the folder's, or a section the message does not have is
answered C{NO [BADURL url]}; a result larger than the APPEND limit C{NO [TOOBIG]}.
Nothing is stored then. A URL authorised by URLAUTH (L{pymaild.imap.urlauth}) may name
another user's message: the server parses and reads it through the callables it passes.
"""

from __future__ import annotations

import bisect
import functools
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from pymaild.errors import InvalidFolderName, MessageVanished, NoSuchFolder
from pymaild.imap.fetch import (
    FetchItem,
    _parseSection,
    applyPartial,
    sectionHeaderPart,
    sectionRange,
)
from pymaild.imap.mimeheader import filterHeaders
from pymaild.imap.mimeparse import parseMessage
from pymaild.imap.syntax import BadCommand, Literal, NoCommand, Reader, decodeMailbox

CAPABILITIES = (b"CATENATE", b"URL-PARTIAL")

MAX_PARTS = 256
"""Most parts in one CATENATE."""
MAX_URL = 4096
"""Longest URL accepted."""
SPOOL_IN_MEMORY = 262144
"""A made message up to this size stays in memory; past it, in a spool file."""


class BadURL(NoCommand):
    """A URL of a CATENATE names nothing this user can read (C{NO [BADURL url]})."""

    def __init__(self, url: bytes, reason: str) -> None:
        safe = re.sub(rb"[^\x21-\x5c\x5e-\x7e]", b"", url)[:MAX_URL]  # url-resp-text
        super().__init__(f"[BADURL {safe.decode('ascii')}] {reason}")
        self.url = url


@dataclass(frozen=True)
class ImapURL:
    """A parsed IMAP URL naming one message (or a part of it) of this user."""

    raw: bytes
    mailbox: str
    uidvalidity: int | None
    uid: int
    item: FetchItem
    """The section (C{BODY[...]} without the brackets' label) and the partial range."""


_URL_RE = re.compile(
    rb"(?P<mbox>/[^;?#]*?)(?:;UIDVALIDITY=(?P<uidv>[1-9][0-9]{0,9}))?"
    rb"/;UID=(?P<uid>[1-9][0-9]{0,9})"
    rb"(?:/;SECTION=(?P<section>[^/;?#]*))?"
    rb"(?:/;PARTIAL=(?P<start>[0-9]{1,10})(?:\.(?P<len>[1-9][0-9]{0,9}))?)?",
    re.I)
_URLAUTH_RE = re.compile(rb";URLAUTH=", re.I)
_SERVER_RE = re.compile(rb"imap://(?:(?P<user>[^@/;]*)(?:;AUTH=[^@/]*)?@)?"
                        rb"(?P<host>[^/:@]+)(?::(?P<port>[0-9]{1,5}))?(?P<path>/.*)$", re.I)


def parseUrl(raw: bytes, user: str, hostname: str, utf8: bool = False) -> ImapURL:
    """A CATENATE URL: relative to this server (C{/INBOX;UIDVALIDITY=1/;UID=3/;SECTION=1})
    or absolute with this server's host name and, if any, this user's name.

    @raise BadURL: anything else (RFC 4469 section 5: the server does not fetch from
        elsewhere; URLAUTH-authorised URLs are L{parseParts}'s C{authURL}'s).
    """
    if len(raw) > MAX_URL:
        raise BadURL(raw[:64], "URL too long")
    path = raw
    if raw[:7].lower() == b"imap://":
        m = _SERVER_RE.match(raw)
        if m is None:
            raise BadURL(raw, "Malformed IMAP URL")
        urlUser = m.group("user")
        if m.group("host").decode("ascii", "replace").lower() != hostname.lower() or (
                urlUser is not None
                and urllib.parse.unquote_to_bytes(urlUser).decode("utf-8", "replace").lower()
                != user.lower()):
            raise BadURL(raw, "URL names another server or user")
        path = m.group("path")
    return parsePath(raw, path, utf8)


def parsePath(raw: bytes, path: bytes, utf8: bool = False) -> ImapURL:
    """The message (part) that the path C{path} of URL C{raw} names
    (C{/INBOX;UIDVALIDITY=1/;UID=3/;SECTION=1/;PARTIAL=0.10}).

    @raise BadURL: a malformed path, mailbox name or section.
    """
    m = _URL_RE.fullmatch(path)
    if m is None:
        raise BadURL(raw, "Not an IMAP URL naming a message of this server")
    try:
        mailbox = decodeMailbox(urllib.parse.unquote_to_bytes(m.group("mbox")[1:]), utf8)
    except BadCommand:
        raise BadURL(raw, "Invalid mailbox name in URL") from None
    if not mailbox:
        raise BadURL(raw, "URL names no mailbox")
    section = urllib.parse.unquote_to_bytes(m.group("section") or b"")
    try:
        item, end = _parseSection(b"[" + section + b"]", 0, True)
    except BadCommand:
        raise BadURL(raw, "Invalid section in URL") from None
    if end != len(section) + 2:
        raise BadURL(raw, "Invalid section in URL")
    if m.group("start") is not None:
        start = int(m.group("start"))
        length = int(m.group("len")) if m.group("len") else 1 << 62
        if start > 4294967295:
            raise BadURL(raw, "Partial range out of range")
        item = FetchItem(item.kind, item.path, item.spec, item.fields, True,
                         (start, length), item.label)
    uidv = m.group("uidv")
    return ImapURL(raw, mailbox, int(uidv) if uidv else None, int(m.group("uid")), item)


def parseParts(r: Reader, user: str, hostname: str,
               authURL: Callable[[bytes], Any] | None = None) -> list[Literal | ImapURL | Any]:
    """The parts of C{CATENATE (...)} (the reader is after C{CATENATE}); a URL with
    C{;URLAUTH=} is C{authURL}'s to parse (URLAUTH, RFC 4467: it may name another
    user's message), when given.

    @raise BadCommand: malformed.
    @raise BadURL: a URL that cannot name anything here.
    """
    r.sp()
    r.openParen()
    parts: list[Literal | ImapURL | Any] = []
    while True:
        if len(parts) >= MAX_PARTS:
            raise BadCommand(f"more than {MAX_PARTS} CATENATE parts")
        kind = r.atom().upper()
        r.sp()
        if kind == b"TEXT":
            parts.append(r.literal())
        elif kind == b"URL":
            raw = r.astring()
            if authURL is not None and _URLAUTH_RE.search(raw):
                parts.append(authURL(raw))
            else:
                parts.append(parseUrl(raw, user, hostname, r.utf8))
        else:
            raise BadCommand("expected TEXT or URL")
        if r.peek() == 0x29:
            break
        r.sp()
    r.closeParen()
    return parts


def _urlContent(acct: Any, url: ImapURL) -> bytes:
    """What C{url} names, read from the store (blocking)."""
    try:
        folder = acct.folder(url.mailbox)
        state = folder.scan()
    except (NoSuchFolder, InvalidFolderName):
        raise BadURL(url.raw, "No such mailbox") from None
    if url.uidvalidity is not None and url.uidvalidity != state.uidvalidity:
        raise BadURL(url.raw, "UIDVALIDITY does not match")
    msgs = state.messages
    i = bisect.bisect_left(msgs, url.uid, key=lambda m: m.uid)
    if i >= len(msgs) or msgs[i].uid != url.uid:
        raise BadURL(url.raw, "No such message")
    try:
        with folder.open(msgs[i]) as f:
            data = f.read()
    except MessageVanished:
        raise BadURL(url.raw, "No such message") from None
    item = url.item
    if item.spec.startswith("HEADER.FIELDS"):
        part = sectionHeaderPart(parseMessage(data), item)
        if part is None:
            raise BadURL(url.raw, "No such section")
        block = filterHeaders(data[part.start:part.bodyStart], list(item.fields),
                              item.spec.endswith(".NOT"))
        a, b = applyPartial(item, 0, len(block))
        return block[a:b]
    if not item.path and item.spec == "":
        rng: tuple[int, int] | None = (0, len(data))
    else:
        rng = sectionRange(parseMessage(data), item)
    if rng is None:
        raise BadURL(url.raw, "No such section")
    a, b = applyPartial(item, *rng)
    return data[a:b]


def assemble(acct: Any, dest: str, parts: list[Literal | ImapURL | Any], limit: int,
             spoolDir: str | None, fetchAuth: Callable[[Any], bytes] | None = None
             ) -> IO[bytes]:
    """The message the parts make for an APPEND to C{dest}, in a file positioned at 0
    (blocking); C{fetchAuth} reads what a part of C{authURL}'s (see L{parseParts})
    names, or raises L{BadURL}.

    @raise NoSuchFolder: C{dest} does not exist (checked first: TRYCREATE comes before
        BADURL, as in Dovecot).
    @raise BadURL: a URL names nothing readable.
    @raise NoCommand: C{[TOOBIG]}, the result is larger than C{limit}; or it is empty.
    """
    acct.folder(dest)
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=spoolDir)
    try:
        total = 0
        for part in parts:
            chunks: Iterable[bytes]
            if isinstance(part, ImapURL):
                chunks = [_urlContent(acct, part)]
            elif not isinstance(part, Literal):
                assert fetchAuth is not None
                chunks = [fetchAuth(part)]
            elif part.file is not None:
                part.file.seek(0)
                chunks = iter(functools.partial(part.file.read, 1 << 20), b"")
            else:
                chunks = [part.data or b""]
            for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise NoCommand("[TOOBIG] The catenated message is too large")
                out.write(chunk)
        if total == 0:
            raise NoCommand("Cannot save a zero byte message")
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise
