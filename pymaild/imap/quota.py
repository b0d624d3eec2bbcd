"""QUOTA (RFC 9208; the RFC 2087 commands Thunderbird sends): GETQUOTAROOT, GETQUOTA
and SETQUOTA, their parsing and their responses.

Every account has one quota root, C{"User quota"} (Dovecot's default name), holding all
its folders. Its resources are STORAGE (in units of 1024 octets, rounded up as
Dovecot does) and MESSAGE, each listed only when the account has a limit for it; an
account without limits has no quota root (C{* QUOTAROOT INBOX} names none). SETQUOTA is
parsed and answered C{NO [NOPERM]}, as Dovecot answers a user who is not a quota admin:
limits are the administrator's (the passwd file and the configuration).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from pymaild.auth.quota import ROOT_NAME
from pymaild.errors import NoSuchFolder
from pymaild.imap.syntax import BadCommand, NoCommand, Reader, decodeMailbox, encodeMailbox

#: The capabilities advertised once the account has quotas.
CAPABILITIES = (b"QUOTA", b"QUOTA=RES-STORAGE", b"QUOTA=RES-MESSAGE")

_ROOT = ROOT_NAME.encode("ascii")


def parseGetQuotaRoot(r: Reader) -> str:
    """C{GETQUOTAROOT mailbox}: the mailbox name.

    @raise BadCommand: a syntax error.
    """
    r.sp()
    name = decodeMailbox(r.astring(), r.utf8)
    r.end()
    return name


def parseGetQuota(r: Reader) -> bytes:
    """C{GETQUOTA root}: the root name as sent.

    @raise BadCommand: a syntax error.
    """
    r.sp()
    root = r.astring()
    r.end()
    return root


def parseSetQuota(r: Reader) -> tuple[bytes, list[tuple[bytes, int]]]:
    """C{SETQUOTA root (resource limit ...)}: the root and its resource limits.

    @raise BadCommand: a syntax error (limits are 63-bit numbers, RFC 9208).
    """
    r.sp()
    root = r.astring()
    r.sp()
    r.openParen()
    limits: list[tuple[bytes, int]] = []
    while r.peek() != 0x29:
        if limits:
            r.sp()
        name = r.atom().upper()
        r.sp()
        digits = r.word()
        if not digits.isdigit() or len(digits) > 19 or int(digits) >= 1 << 63:
            raise BadCommand("expected a resource limit")
        limits.append((name, int(digits)))
    r.closeParen()
    r.end()
    return root, limits


def resources(usage: Any, limits: Any) -> bytes:
    """The parenthesised resource list of a C{* QUOTA} response."""
    items = []
    if limits.storage is not None:
        items.append(b"STORAGE %d %d" % (-(-usage.bytes // 1024), -(-limits.storage // 1024)))
    if limits.messages is not None:
        items.append(b"MESSAGE %d %d" % (usage.messages, limits.messages))
    return b"(" + b" ".join(items) + b")"


def quotaLine(usage: Any, limits: Any) -> bytes:
    """The C{* QUOTA "User quota" (...)} response (without CRLF)."""
    return b"* QUOTA " + encodeMailbox(ROOT_NAME) + b" " + resources(usage, limits)


def quotaRootLines(name: str, usage: Any, limits: Any, utf8: bool = False) -> list[bytes]:
    """The responses to C{GETQUOTAROOT name}: C{* QUOTAROOT}, then C{* QUOTA} when the
    account has a root (C{utf8}: the name in UTF-8, after ENABLE UTF8=ACCEPT)."""
    if limits.unlimited:
        return [b"* QUOTAROOT " + encodeMailbox(name, utf8)]
    return [b"* QUOTAROOT " + encodeMailbox(name, utf8) + b" " + encodeMailbox(ROOT_NAME),
            quotaLine(usage, limits)]


def checkRoot(root: bytes, limits: Any) -> None:
    """Refuse a quota root other than the account's own.

    @raise NoCommand: C{[NONEXISTENT]}, the root does not exist.
    """
    if root != _ROOT or limits.unlimited:
        raise NoCommand("[NONEXISTENT] Quota root does not exist")


@defer.inlineCallbacks
def command(server: Any, r: Reader, name: bytes) -> Any:
    """Run one QUOTA command for C{server} (an L{pymaild.imap.server.IMAPServer}):
    write its untagged responses, fire with the tagged OK text.

    @raise BadCommand: a syntax error.
    @raise NoCommand: an unknown root, SETQUOTA.
    @raise NoSuchFolder: GETQUOTAROOT of a folder that does not exist.
    """
    account = server.account
    if name == b"SETQUOTA":
        parseSetQuota(r)
        raise NoCommand("[NOPERM] Quota can be changed only by the administrator")
    if name == b"GETQUOTA":
        root = parseGetQuota(r)
        usage, limits = yield account.quotaReport()
        checkRoot(root, limits)
        server.sendLine(quotaLine(usage, limits))
        return b"Getquota completed"
    mailbox = parseGetQuotaRoot(r)
    exists = yield account._run(lambda acct: acct.isSelectable(mailbox))
    if not exists:
        raise NoSuchFolder(mailbox)
    usage, limits = yield account.quotaReport()
    server.transport.write(b"".join(
        line + b"\r\n" for line in quotaRootLines(mailbox, usage, limits, r.utf8)))
    return b"Getquotaroot completed"


__all__ = ["command", "CAPABILITIES", "checkRoot", "parseGetQuota", "parseGetQuotaRoot",
           "parseSetQuota", "quotaLine", "quotaRootLines", "resources"]
