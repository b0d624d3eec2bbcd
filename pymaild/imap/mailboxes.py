"""The IMAP commands on mailboxes by name: SELECT/EXAMINE, CREATE, DELETE, RENAME,
(UN)SUBSCRIBE, LIST, LSUB, STATUS, the QUOTA and METADATA commands, and APPEND (with
MULTIAPPEND and CATENATE).
"""

from __future__ import annotations

import datetime
import errno
import os
import re
from typing import Any

from twisted.internet import defer

from pymaild.errors import NoSuchFolder, StoreError, StoreFull
from pymaild.imap import binary, catenate, condstore, listext, metadata, objectid, quota, status
from pymaild.imap.framing import _DONE, IMAP4REV2, _oneLine
from pymaild.imap.mailbox import canonicalFlag
from pymaild.imap.syntax import (
    BadCommand,
    Literal,
    NoCommand,
    Reader,
    compressUids,
    decodeMailbox,
    decodeUTF8Name,
    encodeMailbox,
)

_DATE_TIME_RE = re.compile(
    rb"^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$"
)
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


def parseDateTime(raw: bytes) -> float:
    """An APPEND date-time (C{"17-Jul-1996 02:44:25 -0700"}) as a POSIX time.

    @raise BadCommand: malformed.
    """
    m = _DATE_TIME_RE.match(raw)
    if not m:
        raise BadCommand("bad date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        month = _MONTHS.index(mon.decode().lower()) + 1
        offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
        if sign == b"-":
            offset = -offset
        dt = datetime.datetime(
            int(year), month, int(day), int(hh), int(mm), int(ss),
            tzinfo=datetime.timezone(offset),
        )
    except ValueError:
        raise BadCommand("bad date-time") from None
    return dt.timestamp()


SPECIAL_USES = ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")
"""The special uses CREATE can give (\\All and \\Flagged name virtual mailboxes, which
the store does not have)."""


def specialUseParameter(r: Reader) -> str | None:
    """CREATE's C{(USE (attributes))} parameter: the one attribute, or None for none.

    @raise BadCommand: malformed, or another parameter.
    @raise NoCommand: C{[USEATTR]}: an attribute the store cannot give, or several.
    """
    r.openParen()
    r.expect(b"USE")
    r.sp()
    r.openParen()
    uses: list[str] = []
    while r.peek() != 0x29:
        if uses:
            r.sp()
        if r.peek() != 0x5C:
            raise BadCommand("expected a special-use attribute")
        uses.append(r.flag())
    r.closeParen()
    r.closeParen()
    if not uses:
        return None
    known = {u.lower(): u for u in SPECIAL_USES}
    if len(uses) > 1:
        raise NoCommand("[USEATTR] A mailbox can have only one special use here")
    use = known.get(uses[0].lower())
    if use is None:
        raise NoCommand("[USEATTR] Special use not supported: " + _oneLine(uses[0]).decode())
    return use


def _decodePattern(raw: bytes, utf8: bool = False) -> str:
    if utf8:
        return decodeUTF8Name(raw)
    import twisted.mail.imap4  # noqa: F401  (registers the imap4-utf-7 codec)

    try:
        return raw.decode("imap4-utf-7")
    except (UnicodeDecodeError, ValueError):
        # Not modified UTF-7: no mailbox name can match it (Dovecot answers OK with no
        # match; imaptest's atoms). A NUL, which no name holds, makes sure none does.
        return "\x00" + raw.decode("latin-1")


class MailboxesMixin:
    """Mailbox management and APPEND."""

    __slots__ = ()

    def _enableCondstore(self) -> None:
        """Switch CONDSTORE on (RFC 7162 3.1: by the first CONDSTORE enabling command)."""
        self._mode.condstore = True
        if self.mbox is not None:
            self.mbox.modseqMode = 2 if self._mode.qresync else 1
            # RFC 7162 3.1: enabled with a mailbox selected, tell its HIGHESTMODSEQ.
            self.sendLine(b"* OK [HIGHESTMODSEQ %d] Highest"
                          % max(self.mbox.folder.modseqs.highest, 1))

    def _closeMailbox(self) -> None:
        self._searchResult = ()
        self._contexts = None  # updates end with the mailbox (RFC 5267 4.2)
        if self.mbox is not None:
            self.mbox.close()
            self.mbox = None
        if self.state == "select":
            self.state = "auth"

    @defer.inlineCallbacks
    def _select(self, tag: bytes, r: Reader, rw: bool) -> Any:
        r.sp()
        name = decodeMailbox(r.astring(), r.utf8)
        params = condstore.SelectParams()
        if r.maybeSp():
            params = condstore.parseSelectParams(r)
            if params.qresync is not None and not self._mode.qresync:
                raise BadCommand("QRESYNC is not enabled")
        r.end()
        rev2 = IMAP4REV2 in self._enabled
        if self.mbox is not None and (self._mode.qresync or rev2):
            # RFC 7162 3.2.11; RFC 9051 6.3.2
            self.sendLine(b"* OK [CLOSED] Previous mailbox closed")
        self._closeMailbox()
        if params.condstore:
            self._mode.condstore = True
        try:
            if IMAP4REV2 in self._enabled:
                view = yield self.account.select(name, rw, claimRecent=False)
            else:
                view = yield self.account.select(name, rw)
        except NoSuchFolder:
            raise NoCommand("[NONEXISTENT] Mailbox does not exist") from None
        if self._lost:
            view.close()
            return _DONE
        view.listener = self
        view.modseqMode = (2 if self._mode.qresync else 1) if self._mode.condstore else 0
        if rev2:
            view.noRecent, view.recent = True, frozenset()
            listLine = yield self._selectedListLine(view.folderName, r.utf8)
            if self._lost:
                view.close()
                return _DONE
        self.mbox = view
        self.state = "select"
        lines = [
            b"* FLAGS (" + " ".join(view.messageFlags()).encode("utf-8") + b")",
            b"* OK [PERMANENTFLAGS (" + (
                " ".join(view.permanentFlags()).encode("utf-8") if rw else b""
            ) + b")] " + (b"Flags permitted" if rw else b"Read-only mailbox"),
            b"* %d EXISTS" % view.count(),
        ]
        if rev2:
            lines.append(listLine)  # RFC 9051 6.3.2: a LIST response, no RECENT/UNSEEN
        else:
            lines.append(b"* %d RECENT" % len(view.recent))
            unseen = view.firstUnseen()
            if unseen is not None:
                lines.append(b"* OK [UNSEEN %d] First unseen" % unseen)
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid" % view.uidvalidity)
        lines.append(b"* OK [UIDNEXT %d] Predicted next UID" % view.uidnext)
        if view.guid:
            lines.append(b"* OK [MAILBOXID (" + objectid.mailboxId(view.guid) + b")] Ok")
        lines += condstore.selectLines(view, params, self._mode.qresync)
        self.transport.write(b"".join(line + b"\r\n" for line in lines))
        return (b"[READ-WRITE] Select completed" if rw else b"[READ-ONLY] Examine completed")

    @defer.inlineCallbacks
    def _selectedListLine(self, name: str, utf8: bool) -> Any:
        """The C{* LIST} line of mailbox C{name} with its attributes, as LIST answers
        (IMAP4rev2's SELECT includes it)."""
        table, special, subs = yield self.account.listing()
        req = listext.ListRequest(patterns=[name], rev2=True)
        for entry in listext.listEntries(req, table, special, subs):
            if entry.name == name:
                return entry.line(utf8)
        return b'* LIST () "/" ' + encodeMailbox(name, utf8)

    def cmd_SELECT(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SELECT mailbox."""
        return self._select(tag, r, True)

    def cmd_EXAMINE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """EXAMINE mailbox (read-only)."""
        return self._select(tag, r, False)

    def _mailboxArg(self, r: Reader) -> str:
        r.sp()
        return decodeMailbox(r.astring(), r.utf8)

    @defer.inlineCallbacks
    def cmd_CREATE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """CREATE mailbox [(USE (attribute))] (CREATE-SPECIAL-USE, RFC 6154)."""
        name = self._mailboxArg(r)
        use = None
        if r.maybeSp():
            use = specialUseParameter(r)
        r.end()
        if name.rstrip("/") == "INBOX":
            raise NoCommand("[ALREADYEXISTS] Mailbox already exists")
        yield self.account.create(name, use)
        try:
            state = yield self.account.status(name.rstrip("/"))
        except NoSuchFolder:
            return b"Create completed"  # deleted at once by someone else
        return b"[MAILBOXID (" + objectid.mailboxId(state.guid) + b")] Create completed"

    @defer.inlineCallbacks
    def cmd_DELETE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """DELETE mailbox."""
        name = self._mailboxArg(r)
        r.end()
        if name == "INBOX":
            raise NoCommand("[CANNOT] INBOX cannot be deleted")
        if self.mbox is not None and self.mbox.folderName == name:
            raise NoCommand("[CANNOT] Cannot delete the selected mailbox")
        yield self.account.delete(name)
        return b"Delete completed"

    @defer.inlineCallbacks
    def cmd_RENAME(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """RENAME old new."""
        old = self._mailboxArg(r)
        new = self._mailboxArg(r)
        r.end()
        if new == "INBOX":
            raise NoCommand("[ALREADYEXISTS] Cannot rename to INBOX")
        yield self.account.rename(old, new)
        return b"Rename completed"

    @defer.inlineCallbacks
    def cmd_SUBSCRIBE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SUBSCRIBE mailbox."""
        name = self._mailboxArg(r)
        r.end()
        yield self.account.subscribe(name)
        return b"Subscribe completed"

    @defer.inlineCallbacks
    def cmd_UNSUBSCRIBE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """UNSUBSCRIBE mailbox."""
        name = self._mailboxArg(r)
        r.end()
        yield self.account.unsubscribe(name)
        return b"Unsubscribe completed"

    @defer.inlineCallbacks
    def cmd_LIST(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """LIST, with LIST-EXTENDED, LIST-STATUS and SPECIAL-USE (L{listext})."""
        req = listext.parseList(r, lambda raw: _decodePattern(raw, r.utf8))
        req.rev2 = IMAP4REV2 in self._enabled
        self._checkRev2Status(req.statusItems)
        if req.patterns == [""] and not req.selection:
            self.sendLine(b'* LIST (\\Noselect) "/" ""')
            return b"List completed"
        table, special, subs = yield self.account.listing()
        entries = listext.listEntries(req, table, special, subs)
        for entry in entries:
            if self._lost:
                return _DONE
            self.sendLine(entry.line(r.utf8))
            if req.statusItems and entry.selectable:
                try:
                    state = yield self.account.status(entry.name)
                except NoSuchFolder:
                    continue  # deleted meanwhile: no STATUS for it (RFC 5819)
                self.sendLine(status.statusLine(entry.name, state, req.statusItems,
                                                self.maxLiteral, r.utf8))
        return b"List completed"

    @defer.inlineCallbacks
    def cmd_LSUB(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """LSUB reference pattern."""
        r.sp()
        ref = _decodePattern(r.astring(), r.utf8)
        r.sp()
        pattern = _decodePattern(r.listMailbox(), r.utf8)
        r.end()
        if pattern == "":
            self.sendLine(b'* LSUB (\\Noselect) "/" ""')
            return b"Lsub completed"
        entries = yield self.account.listSubscribed(ref, pattern)
        out = [
            b"* LSUB (" + " ".join(info.getFlags()).encode() + b') "/" '
            + encodeMailbox(name, r.utf8)
            for name, info in entries
        ]
        if out:
            self.transport.write(b"".join(line + b"\r\n" for line in out))
        return b"Lsub completed"

    @defer.inlineCallbacks
    def cmd_STATUS(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """STATUS mailbox (items), with SIZE (RFC 8438) and APPENDLIMIT (RFC 7889)."""
        name = self._mailboxArg(r)
        r.sp()
        items = status.parseItems(r)
        r.end()
        self._checkRev2Status(items)
        state = yield self.account.status(name)
        self.sendLine(status.statusLine(name, state, items, self.maxLiteral, r.utf8))
        return b"Status completed"

    def _checkRev2Status(self, items: Any) -> None:
        """RFC 9051 has no RECENT status item: BAD once IMAP4rev2 is on."""
        if items and b"RECENT" in items and IMAP4REV2 in self._enabled:
            raise BadCommand("unknown STATUS item RECENT (not in IMAP4rev2)")

    def _quotaCommand(self, r: Reader, name: bytes) -> Any:
        """The QUOTA commands (L{pymaild.imap.quota}); unknown without quotas."""
        if getattr(self.account, "quotas", None) is None:
            raise BadCommand("Unknown command")
        return quota.command(self, r, name)

    def cmd_GETQUOTAROOT(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """GETQUOTAROOT mailbox (RFC 9208)."""
        return self._quotaCommand(r, b"GETQUOTAROOT")

    def cmd_GETQUOTA(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """GETQUOTA root (RFC 9208)."""
        return self._quotaCommand(r, b"GETQUOTA")

    def cmd_SETQUOTA(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SETQUOTA root (limits): parsed, then refused (RFC 9208)."""
        return self._quotaCommand(r, b"SETQUOTA")

    def cmd_GETMETADATA(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """GETMETADATA [(options)] mailbox entries (RFC 5464)."""
        return metadata.command(self, r, b"GETMETADATA")

    def cmd_SETMETADATA(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SETMETADATA mailbox (entry value ...) (RFC 5464)."""
        return metadata.command(self, r, b"SETMETADATA")

    @defer.inlineCallbacks
    def cmd_APPEND(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """APPEND mailbox [(flags)] [date-time] literal, with MULTIAPPEND (RFC 3502):
        more C{[(flags)] [date-time] literal} may follow, and all are stored or none.
        A message may be C{CATENATE (TEXT literal / URL url ...)} (RFC 4469,
        L{catenate})."""
        name = self._mailboxArg(r)
        messages: list[tuple[Any, tuple[str, ...], float | None]] = []
        literals: list[Literal] = []
        made: dict[int, list[Any]] = {}  # message index -> its CATENATE parts
        binaryMessages: list[int] = []  # indexes of messages sent as literal8
        while True:
            r.sp()
            flags: list[str] = []
            date = None
            if r.peek() == 0x28:
                flags = r.flagList()
                r.sp()
            if r.peek() == 0x22:
                date = parseDateTime(r.quoted())
                r.sp()
            if r.lookingAt(b"UTF8 "):
                # RFC 6855 section 4: UTF8 (literal8), a message with UTF-8 headers.
                if not r.utf8Accept:
                    raise BadCommand("UTF8 needs ENABLE UTF8=ACCEPT")
                r.expect(b"UTF8")
                r.sp()
                r.openParen()
                lit = r.literal()
                r.closeParen()
            elif r.lookingAt(b"CATENATE "):
                r.expect(b"CATENATE")
                parts = catenate.parseParts(r, self.account.address,
                                            getattr(self.config, "hostname", "") or "",
                                            lambda raw: self._authorisedURL(raw, r.utf8))
                made[len(messages)] = parts
                literals += [p for p in parts if isinstance(p, Literal)]
                lit = None
            else:
                lit = r.literal()
            try:
                stored = tuple(f for f in (canonicalFlag(x) for x in flags) if f is not None)
            except ValueError as e:
                raise BadCommand(str(e)) from None
            if lit is None:
                messages.append((None, stored, date))
            else:
                messages.append((lit.data if lit.file is None else lit.file, stored, date))
                literals.append(lit)
                if lit.binary:
                    binaryMessages.append(len(messages) - 1)
            if r.atEnd():
                break
        for lit in literals:
            if lit.size == 0 and not made:
                raise NoCommand("Cannot save a zero byte message")
            if lit.error is not None:
                e = lit.error
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreFull(f"spooling the message: {e.strerror}") from e
                raise StoreError(f"spooling the message: {e}") from e
        binaries = [lit for lit in literals if lit.binary]
        if binaries:
            def check() -> dict[int, bytes] | None:
                # A literal8 message whose parts hold bare line ends is stored with
                # those parts base64-encoded (BINARY[] gives the same octets back);
                # other literal8 data must be storable as it is.
                out = {}
                for i in binaryMessages:
                    data = messages[i][0]
                    if not binary.storable(data):
                        raw = data if isinstance(data, bytes) else data.read()
                        form = binary.storableForm(raw)
                        if form is None:
                            return None
                        out[i] = form
                inMessages = {id(messages[i][0]) for i in binaryMessages}
                for lit in binaries:
                    data = lit.data if lit.file is None else lit.file
                    if id(data) not in inMessages and not binary.storable(data):
                        return None
                return out

            forms = yield self._runner().run(check)
            if forms is None:
                raise NoCommand("[UNKNOWN-CTE] Binary content with bare line feeds cannot"
                                " be stored; send it base64-encoded")
            for i, form in forms.items():
                messages[i] = (form, *messages[i][1:])
        files: list[Any] = []
        try:
            for i, parts in made.items():
                # The message made of the parts, in the account's runner; NoSuchFolder
                # for a missing folder before any URL is read.
                f = yield self.account._run(catenate.assemble, name, parts,
                                            self.maxLiteral, self._spoolDir(),
                                            self._fetchAuthorised)
                files.append(f)
                messages[i] = (f, *messages[i][1:])
            validity, uids = yield self.account.append(name, messages)
        except NoSuchFolder:
            raise NoCommand("[TRYCREATE] Mailbox does not exist") from None
        finally:
            if files:
                yield self._runner().run(lambda: [f.close() for f in files])
        return b"[APPENDUID %d %s] Append completed" % (validity, compressUids(uids))

    def _spoolDir(self) -> str | None:
        """The account's C{tmp/} directory, where large literals are spooled."""
        root = getattr(getattr(self.account, "_account", None), "root", None)
        return os.path.join(root, "tmp") if root else None
