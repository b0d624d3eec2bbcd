"""METADATA (RFC 5464): GETMETADATA and SETMETADATA for server entries (mailbox C{""})
and folder entries, in C{/private} and C{/shared}, kept by L{pymaild.store.metadata}.

Entry names are case-insensitive (kept lower-cased), start with C{/private/} or
C{/shared/}, and are printable ASCII without C{*}, C{%}, an empty component or a
trailing C{/} (anything else is BAD). Each account has one set of entries, so
C{/shared} entries are the user's own as C{/private} ones are (no other user sees
them). Limits (C{imap.metadata_max_size}, C{imap.metadata_max_entries}): a value larger
than the limit is C{NO [METADATA MAXSIZE n]}, an entry past the count is
C{NO [METADATA TOOMANY]}; a SETMETADATA is applied whole or not at all. GETMETADATA's
C{MAXSIZE} leaves longer values out and reports the longest with C{[METADATA
LONGENTRIES n]}; C{DEPTH} 0, 1 or infinity adds descendants that exist. An entry asked
for that does not exist is C{NIL} (Dovecot's answer). Values holding a NUL are sent as
literal8 (C{~{n}}), and SETMETADATA takes literal8 values.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer

from pymaild.errors import NoSuchFolder
from pymaild.imap.syntax import BadCommand, NoCommand, Reader, decodeMailbox, encodeMailbox
from pymaild.imap.syntax import serialiseString as _string
from pymaild.store import metadata as store
from pymaild.store.names import normalise

CAPABILITIES = (b"METADATA", b"METADATA-SERVER")

_ENTRY_RE = re.compile(r"^/(private|shared)(/[!-$&-)+-.0-~]+)+$")
_DEPTHS = {b"0": 0, b"1": 1, b"INFINITY": -1}
_MAX_ENTRIES_ASKED = 1000


def checkEntry(raw: bytes) -> str:
    """An entry name, lower-cased.

    @raise BadCommand: not a valid entry name (RFC 5464 section 3.2).
    """
    try:
        name = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        raise BadCommand("entry names are ASCII") from None
    if not _ENTRY_RE.match(name) or "//" in name or name.endswith("/"):
        raise BadCommand("invalid entry name " + name[:60])
    return name


def parseGet(r: Reader) -> tuple[int | None, int, str, list[str]]:
    """C{GETMETADATA [(options)] mailbox entries}: (MAXSIZE or None, depth (-1 for
    infinity), mailbox ("" for the server), entries).

    @raise BadCommand: a syntax error.
    """
    r.sp()
    maxSize: int | None = None
    depth = 0
    if r.peek() == 0x28:
        r.openParen()
        first = True
        while r.peek() != 0x29:
            if not first:
                r.sp()
            first = False
            option = r.atom().upper()
            r.sp()
            if option == b"MAXSIZE":
                maxSize = r.number()
            elif option == b"DEPTH":
                value = r.atom().upper()
                if value not in _DEPTHS:
                    raise BadCommand("DEPTH is 0, 1 or infinity")
                depth = _DEPTHS[value]
            else:
                raise BadCommand("unknown GETMETADATA option")
        r.closeParen()
        r.sp()
    mailbox = decodeMailbox(r.astring(), r.utf8)
    r.sp()
    entries: list[str] = []
    if r.peek() == 0x28:
        r.openParen()
        while r.peek() != 0x29:
            if entries:
                r.sp()
            entries.append(checkEntry(r.astring()))
            if len(entries) > _MAX_ENTRIES_ASKED:
                raise BadCommand("too many entries")
        r.closeParen()
        if not entries:
            raise BadCommand("empty entry list")
    else:
        entries.append(checkEntry(r.astring()))
    r.end()
    return maxSize, depth, mailbox, list(dict.fromkeys(entries))


def parseSet(r: Reader) -> tuple[str, list[tuple[str, bytes | None]]]:
    """C{SETMETADATA mailbox (entry value ...)}: the mailbox and (entry, value or None
    to remove) pairs.

    @raise BadCommand: a syntax error.
    """
    r.sp()
    mailbox = decodeMailbox(r.astring(), r.utf8)
    r.sp()
    r.openParen()
    pairs: list[tuple[str, bytes | None]] = []
    while r.peek() != 0x29:
        if pairs:
            r.sp()
        entry = checkEntry(r.astring())
        r.sp()
        pairs.append((entry, r.nstring()))
        if len(pairs) > _MAX_ENTRIES_ASKED:
            raise BadCommand("too many entries")
    r.closeParen()
    r.end()
    if not pairs:
        raise BadCommand("empty entry list")
    return mailbox, pairs


def select(stored: dict[str, bytes], entries: list[str], depth: int,
           maxSize: int | None) -> tuple[list[tuple[str, bytes | None]], int]:
    """The (entry, value or None) pairs GETMETADATA answers, and the size of the
    longest value MAXSIZE left out (0 if none)."""
    out: dict[str, bytes | None] = {}
    longest = 0
    for entry in entries:
        found = [(entry, stored.get(entry))]
        if depth != 0:
            prefix = entry + "/"
            for name in sorted(stored):
                if name.startswith(prefix) and (depth < 0 or "/" not in name[len(prefix):]):
                    found.append((name, stored[name]))
        for name, value in found:
            if value is not None and maxSize is not None and len(value) > maxSize:
                longest = max(longest, len(value))
                continue
            if value is None and name != entry:
                continue
            out.setdefault(name, value)
    return list(out.items()), longest


def _value(value: bytes | None) -> bytes:
    """One value on the wire: NIL, a quoted string, a literal or a literal8."""
    if value is None:
        return b"NIL"
    if b"\0" in value:
        return b"~{%d}\r\n" % len(value) + value
    if b"\r" in value or b"\n" in value or len(value) > 1000:
        return b"{%d}\r\n" % len(value) + value
    return _string(value)


def metadataLine(mailbox: str, pairs: list[tuple[str, bytes | None]],
                 utf8: bool = False) -> bytes:
    """The C{* METADATA mailbox (entry value ...)} response, with CRLF (C{utf8}: the
    name in UTF-8, after ENABLE UTF8=ACCEPT)."""
    body = b" ".join(name.encode("ascii") + b" " + _value(v) for name, v in pairs)
    return b"* METADATA " + encodeMailbox(mailbox, utf8) + b" (" + body + b")\r\n"


def applySet(current: store.Entries, mailbox: str, pairs: list[tuple[str, bytes | None]],
             maxSize: int, maxEntries: int) -> store.Entries:
    """C{current} with the SETMETADATA C{pairs} applied to C{mailbox}.

    @raise NoCommand: C{[METADATA MAXSIZE n]} a value is too large; C{[METADATA
        TOOMANY]} the account would hold more than C{maxEntries} entries.
    """
    mine = current.setdefault(mailbox, {})
    for entry, value in pairs:
        if value is None:
            mine.pop(entry, None)
            continue
        if len(value) > maxSize:
            raise NoCommand(f"[METADATA MAXSIZE {maxSize}] Entry value too large")
        mine[entry] = value
    if sum(len(v) for v in current.values()) > maxEntries:
        raise NoCommand("[METADATA TOOMANY] Too many entries")
    return current


@defer.inlineCallbacks
def command(server: Any, r: Reader, name: bytes) -> Any:
    """Run GETMETADATA or SETMETADATA for C{server} (an
    L{pymaild.imap.server.IMAPServer}); fire with the tagged OK text.

    @raise BadCommand: a syntax error.
    @raise NoCommand: a limit (see the module docstring).
    @raise NoSuchFolder: the folder does not exist.
    """
    imapConfig = getattr(server.config, "imap", None)
    maxSize = getattr(imapConfig, "metadata_max_size", 16384)
    maxEntries = getattr(imapConfig, "metadata_max_entries", 500)
    account = server.account

    def folderOf(acct: Any, mailbox: str) -> str:
        if mailbox == "":
            return ""
        acct.isSelectable(mailbox)  # NoSuchFolder when it does not exist
        return str(normalise(mailbox))

    if name == b"SETMETADATA":
        mailbox, pairs = parseSet(r)

        def work(acct: Any) -> None:
            folder = folderOf(acct, mailbox)
            store.update(acct.root, lambda cur: applySet(cur, folder, pairs, maxSize,
                                                         maxEntries))

        yield account._run(work)
        # NOTIFY's MailboxMetadataChange / ServerMetadataChange (RFC 5465 5.8, 5.9).
        account.registry.listChanged(account.address, ("metadata", mailbox,
                                                       *(e for e, _ in pairs)),
                                     origin=account)
        return b"Setmetadata completed"
    maxAsked, depth, mailbox, entries = parseGet(r)

    def read(acct: Any) -> dict[str, bytes]:
        folder = folderOf(acct, mailbox)
        return store.read(acct.root).get(folder, {})

    try:
        stored = yield account._run(read)
    except NoSuchFolder:
        raise NoCommand("[NONEXISTENT] Mailbox does not exist") from None
    pairs, longest = select(stored, entries, depth, maxAsked)
    if pairs:
        server.transport.write(metadataLine(mailbox, pairs, r.utf8))
    if longest:
        return b"[METADATA LONGENTRIES %d] Getmetadata completed" % longest
    return b"Getmetadata completed"


__all__ = ["CAPABILITIES", "applySet", "checkEntry", "command", "metadataLine", "parseGet",
           "parseSet", "select"]
