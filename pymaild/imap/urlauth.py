"""URLAUTH (RFC 4467) and URLAUTH=BINARY (RFC 5524): IMAP URLs (RFC 5092) that carry
their own authorisation, so that someone else (another user, a submission server) may
fetch a message or a part of it.

C{GENURLAUTH url INTERNAL} takes a URL "rump" naming a message of the session's user,
C{imap://alice@host/INBOX/;UID=3[/;SECTION=1][;EXPIRE=date-time];URLAUTH=access}, and
answers it with C{:INTERNAL:token} appended: the token is the HMAC-SHA1 of the rump,
as sent, under the mailbox's access key (40 hex digits). C{URLFETCH url} gives what a
URL with a token names, or NIL when anything about it is wrong (a malformed URL,
another server, a mailbox or message that is not there, a wrong, truncated or
forged token, an unknown mechanism, a past EXPIRE, an access that does not admit the
session's user). C{URLFETCH (url BODY / BINARY / BODYPARTSTRUCTURE ...)} (RFC 5524)
gives the part as stored, decoded (as FETCH BINARY, L{pymaild.imap.binary}; a
message/rfc822 or multipart part is given with every leaf decoded, as Dovecot does)
and its BODYSTRUCTURE (for BINARY, with the decoded sizes, as Dovecot gives it).
C{RESETKEY [mailbox]} forgets the access key of a mailbox (of every mailbox without
one), so every URL made with it stops working; the next GENURLAUTH makes a new key.

Access identifiers: C{anonymous} and C{authuser} (any user logged in here) are
honoured, C{user+name} for that user only; C{submit+name} is for a submission server
acting for C{name}, so an IMAP session never fetches it (L{fetch}'s C{submitter} is
for that server). The URL's user and host name this server's user: the host is the
server's host name or one of its mail domains, and a user without a domain takes the
host's (C{imap://alice@example.org/...} is alice@example.org).

Keys live in C{pymaild-urlauth} in the owner's Maildir root (mode 0600; Dovecot reads no
such file), one mailbox a line: C{<folder>\\t<uidvalidity>\\t<key in hex>}; a key is
valid only while the folder has that UIDVALIDITY (a deleted and re-created folder has
another, so old URLs die with the folder). The file is rewritten under its dotlock and
replaced by rename after an fsync (L{pymaild.files.DotLock.replace}). Everything that
reads or writes it, or a message, blocks: the server calls it through the runner.
"""

from __future__ import annotations

import datetime
import hmac
import os
import re
import secrets
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha1
from typing import Any

from pymaild.address import canonical
from pymaild.errors import AddressError, InvalidFolderName, MessageVanished, NoSuchFolder
from pymaild.files import readTabbedLines, updateLocked
from pymaild.imap import binary
from pymaild.imap.bodystructure import structureBytes
from pymaild.imap.catenate import MAX_URL, BadURL, ImapURL, _urlContent, parsePath
from pymaild.imap.mimeparse import parseMessage
from pymaild.imap.syntax import BadCommand, NoCommand, Reader, serialiseString

CAPABILITIES = (b"URLAUTH", b"URLAUTH=BINARY")
KEYS_NAME = "pymaild-urlauth"
"""The access key file in a Maildir root."""
MECHANISM = b"INTERNAL"
"""The one authorisation mechanism (RFC 4467 section 7)."""
KEY_BYTES = 32
"""Length of a mailbox access key."""
MAX_URLS = 100
"""Most URLs in one GENURLAUTH or URLFETCH."""
FETCH_PARAMS = frozenset({b"BODY", b"BINARY", b"BODYPARTSTRUCTURE"})
"""URLFETCH's parameters (RFC 5524 section 4)."""

_URL_RE = re.compile(
    rb"imap://(?P<user>[^@/;:]+)(?:;AUTH=[^@/]*)?@(?P<host>[^/:@]+)(?::(?P<port>[0-9]{1,5}))?"
    rb"(?P<path>/[^?#]*?)(?:;EXPIRE=(?P<expire>[^;/?#]+))?"
    rb";URLAUTH=(?P<access>[^:;/?#]+)(?::(?P<mech>[^:]*):(?P<token>[^:]*))?", re.I)
_MECH_RE = re.compile(rb"[A-Za-z0-9.-]+")
_TOKEN_RE = re.compile(rb"[0-9A-Fa-f]{32,}")


class URLError(Exception):
    """A URL is not one this server can authorise or fetch (its text says why)."""


@dataclass(frozen=True)
class AuthURL:
    """A parsed URLAUTH URL: the rump (what the token signs), who owns the mailbox, what
    it names, who may fetch it, until when, and its verifier (None in a rump)."""

    raw: bytes
    rump: bytes
    owner: str
    message: ImapURL
    access: str
    """C{anonymous}, C{authuser}, C{user} or C{submit}."""
    accessUser: str | None
    expire: float | None
    mechanism: bytes | None
    token: bytes | None


def _user(enc: bytes, host: str, domains: Sequence[str]) -> str:
    """The canonical address an URL's C{enc-user} names (a bare name takes the host as
    its domain when the host is a mail domain).

    @raise URLError: not an address.
    """
    try:
        text = urllib.parse.unquote_to_bytes(enc).decode("utf-8")
    except UnicodeDecodeError:
        raise URLError("Invalid user name in URL") from None
    if "@" not in text:
        if host not in domains:
            raise URLError("URL user has no domain")
        text += "@" + host
    try:
        return canonical(text)
    except AddressError:
        raise URLError("Invalid user name in URL") from None


def _expire(text: bytes) -> float:
    """An EXPIRE date-time (RFC 3339, with its offset) as a POSIX time."""
    try:
        when = datetime.datetime.fromisoformat(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise URLError("Invalid EXPIRE in URL") from None
    if when.tzinfo is None:
        raise URLError("EXPIRE without a time zone")
    return when.timestamp()


def parse(raw: bytes, hostname: str, domains: Sequence[str], utf8: bool = False
          ) -> AuthURL:
    """A URLAUTH URL (a rump, or a full URL with its verifier) of this server.

    @raise URLError: malformed, another server's, or an unknown access identifier.
    """
    if len(raw) > MAX_URL:
        raise URLError("URL too long")
    m = _URL_RE.fullmatch(raw)
    if m is None:
        raise URLError("Not an absolute IMAP URL with URLAUTH")
    host = m.group("host").decode("ascii", "replace").lower().rstrip(".")
    local = [d.lower() for d in domains]
    if host != hostname.lower() and host not in local:
        raise URLError("URL names another server")
    owner = _user(m.group("user"), host, local)
    try:
        message = parsePath(raw, m.group("path"), utf8)
    except BadURL:
        raise URLError("URL names no message") from None
    access = m.group("access")
    kind, plus, who = access.partition(b"+")
    kind = kind.lower()
    accessUser = None
    if plus:
        if kind not in (b"user", b"submit") or not who:
            raise URLError("Unknown URLAUTH access identifier")
        accessUser = _user(who, host, local)
    elif kind not in (b"authuser", b"anonymous"):
        raise URLError("Unknown URLAUTH access identifier")
    expire = _expire(m.group("expire")) if m.group("expire") is not None else None
    mech = m.group("mech")
    token = m.group("token")
    if mech is not None:
        if not _MECH_RE.fullmatch(mech):
            raise URLError("Invalid URLAUTH mechanism")
        if not _TOKEN_RE.fullmatch(token or b""):
            raise URLError("Invalid URLAUTH token")
    return AuthURL(raw, raw[: m.end("access")], owner, message, kind.decode("ascii"),
                   accessUser, expire, None if mech is None else mech.upper(),
                   None if token is None else token.lower())


def sign(key: bytes, rump: bytes) -> bytes:
    """The INTERNAL token of C{rump} under C{key}: HMAC-SHA1, in lower-case hex."""
    return hmac.new(key, rump, sha1).hexdigest().encode("ascii")


# -- access keys (blocking) ---------------------------------------------------------

Keys = dict[str, tuple[int, bytes]]
"""folder -> (UIDVALIDITY, key)"""


def _keysPath(root: str) -> str:
    return os.path.join(root, KEYS_NAME)


def readKeys(root: str) -> Keys:
    """The access keys of the Maildir at C{root} (none without a file); malformed lines
    are skipped."""
    out: Keys = {}
    for fields in readTabbedLines(_keysPath(root), 3):
        try:
            out[fields[0].decode("utf-8")] = (int(fields[1]), bytes.fromhex(
                fields[2].decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            continue
    return out


def _updateKeys(root: str, change: Callable[[Keys], Keys]) -> Keys:
    """Apply C{change} to the keys under the file's dotlock; write them when they
    differ (fsynced, then renamed into place); return the keys in force."""
    def serialise(keys: Keys) -> bytes:
        return b"".join(
            b"%s\t%d\t%s\n" % (name.encode("utf-8"), uidv, key.hex().encode("ascii"))
            for name, (uidv, key) in sorted(keys.items()))

    return updateLocked(_keysPath(root), lambda: readKeys(root), serialise, change)


def mailboxKey(acct: Any, mailbox: str, create: bool) -> bytes | None:
    """The access key of C{acct}'s folder C{mailbox}; made (and stored) when it has none
    and C{create}, else None then.

    @raise NoSuchFolder: no such folder.
    @raise InvalidFolderName: not a folder name.
    """
    folder = acct.folder(mailbox)
    uidv = folder.scan().uidvalidity
    known = readKeys(acct.root).get(folder.name)
    if known is not None and known[0] == uidv:
        return known[1]
    if not create:
        return None

    def change(keys: Keys) -> Keys:
        entry = keys.get(folder.name)
        if entry is None or entry[0] != uidv:
            keys[folder.name] = (uidv, secrets.token_bytes(KEY_BYTES))
        return keys

    return _updateKeys(acct.root, change)[folder.name][1]


def resetKeys(acct: Any, mailbox: str | None) -> None:
    """Forget the access key of C{acct}'s folder C{mailbox}, or of all its folders.

    @raise NoSuchFolder: no such folder.
    """
    if mailbox is None:
        if os.path.exists(_keysPath(acct.root)):
            _updateKeys(acct.root, lambda keys: {})
        return
    name = acct.folder(mailbox).name
    _updateKeys(acct.root, lambda keys: {k: v for k, v in keys.items() if k != name})


def generate(acct: Any, urls: Sequence[AuthURL]) -> list[bytes]:
    """The full URLs (rump, C{:INTERNAL:}, token) for C{urls} of C{acct}'s mailboxes
    (blocking).

    @raise BadURL: a URL names a mailbox that does not exist.
    """
    out = []
    for url in urls:
        try:
            key = mailboxKey(acct, url.message.mailbox, True)
        except (NoSuchFolder, InvalidFolderName):
            raise BadURL(url.raw, "Mailbox does not exist") from None
        assert key is not None
        out.append(url.rump + b":" + MECHANISM + b":" + sign(key, url.rump))
    return out


# -- URLFETCH (blocking) ------------------------------------------------------------

def authorised(url: AuthURL, user: str | None, submitter: str | None = None,
               now: float | None = None) -> bool:
    """Whether C{url}'s access identifier, mechanism and EXPIRE let C{user} (a logged-in
    address, lower case) fetch it; C{submitter} is the user a submission server acts
    for (C{submit+}). The token is checked by L{fetch}."""
    if url.mechanism != MECHANISM or url.token is None:
        return False
    if url.expire is not None:
        import time

        if (now if now is not None else time.time()) >= url.expire:
            return False
    if url.access == "anonymous":
        return True
    if url.access == "authuser":
        return user is not None
    if url.access == "user":
        return user is not None and user.lower() == url.accessUser
    return submitter is not None and submitter.lower() == url.accessUser


def _ownerAccount(store: Any, owner: str) -> Any:
    """The store account of C{owner} when its Maildir exists (none is made), else
    None."""
    try:
        _canon, root = store._accountRoot(owner)
    except AddressError:
        return None
    if not os.path.isdir(os.path.join(root, "cur")):
        return None
    return store.account(owner)


def _verified(store: Any, url: AuthURL) -> Any:
    """The owner's store account when C{url}'s token is the one its mailbox key gives,
    else None."""
    acct = _ownerAccount(store, url.owner)
    if acct is None:
        return None
    try:
        key = mailboxKey(acct, url.message.mailbox, False)
    except (NoSuchFolder, InvalidFolderName):
        return None
    if key is None or url.token is None:
        return None
    if not hmac.compare_digest(sign(key, url.rump), url.token):
        return None
    return acct


def _binaryEntity(data: bytes, part: Any) -> tuple[bytes, bytes]:
    """(content, BODYSTRUCTURE) of entity C{part} for BINARY: a leaf decoded; a message
    or multipart with every leaf decoded and their fields as they are. The structure
    is that of the decoded form (its sizes and lines), as Dovecot gives it."""
    keep = binary.converted(data, part, rewrite=False)
    structure = structureBytes(parseMessage(keep).root)[1]
    if part.isMessage and part.message is not None:
        content = binary.converted(data, part.message)
    else:
        content = binary.converted(data, part)[part.bodyStart - part.start:]
    return content, structure


def fetch(store: Any, url: AuthURL, params: frozenset[bytes] | None, user: str | None,
          submitter: str | None = None) -> list[tuple[bytes, Any]] | None:
    """What C{url} gives C{user}: None when it is not authorised or names nothing;
    else, without C{params}, C{[(b"", data)]}; with them, (name, value) pairs in the
    response's order: C{BODYPARTSTRUCTURE} (serialised), then C{BODY} (bytes) or
    C{BINARY} ((bytes, whether a literal8), or None where the part's encoding is
    unknown).
    """
    if not authorised(url, user, submitter):
        return None
    acct = _verified(store, url)
    if acct is None:
        return None
    try:
        if not params:
            return [(b"", _urlContent(acct, url.message))]
        return _extended(acct, url.message, params)
    except (BadURL, NoSuchFolder, InvalidFolderName, MessageVanished):
        return None


def _extended(acct: Any, message: ImapURL, params: frozenset[bytes]
              ) -> list[tuple[bytes, Any]] | None:
    """URLFETCH's parameters for a URL already verified (RFC 5524)."""
    out: list[tuple[bytes, Any]] = []
    item = message.item
    if params == {b"BODY"}:
        return [(b"BODY", _urlContent(acct, message))]
    if item.spec:
        return None  # BINARY and BODYPARTSTRUCTURE name a body part, not HEADER...
    folder = acct.folder(message.mailbox)
    state = folder.scan()
    if message.uidvalidity is not None and message.uidvalidity != state.uidvalidity:
        return None
    info = next((m for m in state.messages if m.uid == message.uid), None)
    if info is None:
        return None
    data = folder.read(info)
    parsed = parseMessage(data)
    part = parsed.section(item.path) if item.path else parsed.root
    if part is None:
        return None
    if b"BINARY" in params:
        try:
            if item.path and not part.children and not part.isMessage:
                body = data[part.bodyStart:part.end]
                content = binary.decode(body, binary._encoding(part))
                keep = data[part.start:part.bodyStart] + content
                structure = structureBytes(parseMessage(keep).root)[1]
            elif item.path:
                content, structure = _binaryEntity(data, part)
            else:
                content = binary.converted(data, parsed.root)
                structure = parseMessage(binary.converted(data, parsed.root,
                                                          rewrite=False)).bodystructure
        except binary.UnknownCTE:
            content, structure = None, None
        value = None
        if content is not None:  # (literal8 or not is decided over the whole part)
            value = (content, binary.literal(content, 0).startswith(b"~"))
            if item.partial is not None:
                a, b = _partial(item.partial, len(content))
                value = (content[a:b], value[1])
        if b"BODYPARTSTRUCTURE" in params:
            out.append((b"BODYPARTSTRUCTURE", structure))
        out.append((b"BINARY", value))
        return out
    structure = structureBytes(part)[1] if item.path else parsed.bodystructure
    out.append((b"BODYPARTSTRUCTURE", structure))
    if b"BODY" in params:
        out.append((b"BODY", _urlContent(acct, message)))
    return out


def _partial(partial: tuple[int, int], size: int) -> tuple[int, int]:
    start = min(partial[0], size)
    return start, min(start + partial[1], size)


# -- the wire -----------------------------------------------------------------------

def parseGenurlauth(r: Reader) -> list[tuple[bytes, bytes]]:
    """C{url mechanism *(SP url SP mechanism)} after GENURLAUTH: (url, mechanism)."""
    pairs = []
    while not r.atEnd():
        r.sp()
        url = r.astring()
        r.sp()
        mech = r.atom()
        pairs.append((url, mech))
        if len(pairs) > MAX_URLS:
            raise BadCommand(f"more than {MAX_URLS} URLs")
    if not pairs:
        raise BadCommand("GENURLAUTH needs a URL and a mechanism")
    return pairs


def parseUrlfetch(r: Reader) -> list[tuple[bytes, frozenset[bytes] | None]]:
    """C{url / (url *(SP param))} ... after URLFETCH (RFC 4467, RFC 5524).

    @raise BadCommand: malformed, an unknown parameter, BODY with BINARY.
    """
    out: list[tuple[bytes, frozenset[bytes] | None]] = []
    while not r.atEnd():
        r.sp()
        if r.peek() == 0x28:
            r.openParen()
            url = r.astring()
            params: set[bytes] = set()
            while r.maybeSp():
                word = r.atom().upper()
                if word not in FETCH_PARAMS:
                    raise BadCommand("unknown URLFETCH parameter")
                params.add(word)
            r.closeParen()
            if {b"BODY", b"BINARY"} <= params:
                raise BadCommand("URLFETCH takes BODY or BINARY, not both")
            out.append((url, frozenset(params)))
        else:
            out.append((r.astring(), None))
        if len(out) > MAX_URLS:
            raise BadCommand(f"more than {MAX_URLS} URLs")
    if not out:
        raise BadCommand("URLFETCH needs a URL")
    return out


def fetchAll(store: Any, requests: Sequence[tuple[bytes, frozenset[bytes] | None,
                                                  AuthURL | None]],
             user: str) -> list[bytes]:
    """The C{* URLFETCH} lines for C{requests} ((url as sent, parameters, parsed URL or
    None when it did not parse)) of the logged-in C{user} (blocking)."""
    return [response(raw, params, None if url is None
                     else fetch(store, url, params, user.lower()))
            for raw, params, url in requests]


def _literal(data: bytes) -> bytes:
    """C{data} as a literal: a literal8 when it holds a NUL (RFC 3516: no other literal
    may)."""
    return (b"~{%d}\r\n" if b"\x00" in data else b"{%d}\r\n") % len(data) + data


def response(raw: bytes, params: frozenset[bytes] | None,
             result: list[tuple[bytes, Any]] | None) -> bytes:
    """The C{* URLFETCH} line (with CRLF) for one URL."""
    out = b"* URLFETCH " + serialiseString(raw) + b" "
    if result is None:
        return out + b"NIL\r\n"
    if params is None:
        return out + _literal(result[0][1]) + b"\r\n"
    items = []
    for name, value in result:
        if value is None:
            items.append(name + b" NIL")
        elif name == b"BODYPARTSTRUCTURE":
            items.append(name + b" " + value)
        elif name == b"BINARY":
            data, eight = value
            items.append(name + b" " + (b"~" if eight else b"") + b"{%d}\r\n" % len(data)
                         + data)
        else:
            items.append(name + b" " + _literal(value))
    return out + b"(" + b" ".join(items) + b")\r\n"


def checkMechanism(mech: bytes) -> None:
    """Refuse a mechanism other than INTERNAL (C{NO}; malformed: BAD)."""
    if not _MECH_RE.fullmatch(mech):
        raise BadCommand("invalid URLAUTH mechanism")
    if mech.upper() != MECHANISM:
        raise NoCommand("Unsupported URLAUTH mechanism")


__all__ = ["CAPABILITIES", "KEYS_NAME", "AuthURL", "URLError", "authorised", "fetch",
           "fetchAll", "generate", "mailboxKey", "parse", "parseGenurlauth", "parseUrlfetch",
           "readKeys", "resetKeys", "response", "sign"]
