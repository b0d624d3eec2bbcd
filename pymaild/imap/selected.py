"""The IMAP commands of the selected state but FETCH: CLOSE, UNSELECT, EXPUNGE,
SEARCH, SORT, THREAD, STORE, COPY, MOVE, CANCELUPDATE and URLAUTH's GENURLAUTH, URLFETCH
and RESETKEY.

A message sequence number beyond EXISTS in STORE, COPY or MOVE is C{BAD Invalid
messageset} (as Dovecot answers), not silently clipped; UID sets are clipped.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

from twisted.internet import defer

from pymaild.address import canonical
from pymaild.errors import MessageVanished, NoSuchFolder
from pymaild.imap import catenate, condstore, context, esearch, sort, thread, urlauth
from pymaild.imap.framing import IMAP4REV2
from pymaild.imap.mailbox import MailboxView, canonicalFlag, changedFlags, flagListBytes
from pymaild.imap.search import parseSearch, runSearch
from pymaild.imap.syntax import (
    BadCommand,
    NoCommand,
    Reader,
    SavedSet,
    SequenceSet,
    compressUids,
    serialiseString,
)

_STORE_RE = re.compile(rb"^([+-]?)FLAGS(\.SILENT)?$", re.I)


class SelectedMixin:
    """The selected-state commands (FETCH is L{pymaild.imap.fetchcmd.FetchMixin})."""

    __slots__ = ()

    # -- selected ------------------------------------------------------------------
    @defer.inlineCallbacks
    def cmd_CLOSE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """CLOSE: expunge silently (read-write) and leave the selected state."""
        r.end()
        view = self.mbox
        if view is not None and view.readWrite:
            try:
                yield view.expungeDeleted()
            finally:
                self._closeMailbox()
            if self._mode.qresync:  # RFC 7162 3.2.10, as for EXPUNGE
                return b"[HIGHESTMODSEQ %d] Close completed" % max(
                    view.folder.modseqs.highest, 1)
        else:
            self._closeMailbox()
        return b"Close completed"

    def cmd_UNSELECT(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """UNSELECT: leave the selected state without expunging."""
        r.end()
        self._closeMailbox()
        return b"Unselect completed"

    @defer.inlineCallbacks
    def cmd_EXPUNGE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """EXPUNGE, or UID EXPUNGE set (UIDPLUS)."""
        uidSet = None
        if uid:
            r.sp()
            uidSet = r.seqset()
        r.end()
        view = self._view()
        if not view.readWrite:
            raise NoCommand("[READ-ONLY] Mailbox is read-only")
        before = list(view.uids)
        seqs = yield view.expungeDeleted(uidSet)
        if seqs:
            self._sendExpunges(before, seqs)
        if self._mode.qresync:  # RFC 7162 3.2.10: the HIGHESTMODSEQ after the expunge
            return b"[HIGHESTMODSEQ %d] Expunge completed" % max(view.folder.modseqs.highest, 1)
        return b"Expunge completed"

    def _sendExpunges(self, before: list[int], seqs: list[int]) -> None:
        """Report expunged messages: C{* n EXPUNGE} each, or one C{* VANISHED} of their
        UIDs once QRESYNC is on (C{before}: the view's UIDs before the removal)."""
        self.transport.write(b"".join(self.expunging([(s, before[s - 1]) for s in seqs])))
        if self._mode.qresync:
            lines = condstore.vanishedLines(condstore.uidsOfExpunges(before, seqs), False)
            self.transport.write(b"".join(line + b"\r\n" for line in lines))
        else:
            self.transport.write(b"".join(b"* %d EXPUNGE\r\n" % s for s in seqs))

    def _view(self) -> MailboxView:
        if self.mbox is None:
            raise BadCommand("no mailbox selected")
        return self.mbox

    def _savedResult(self, asUids: bool) -> SavedSet:
        """C{$} (SEARCHRES): the saved UIDs, or the sequence numbers of those still in
        the selected mailbox."""
        saved = self._searchResult
        if asUids or self.mbox is None:
            return SavedSet.of(saved)
        uids = self.mbox.uids
        seqs = []
        for u in saved:
            i = bisect.bisect_left(uids, u)
            if i < len(uids) and uids[i] == u:
                seqs.append(i + 1)
        return SavedSet.of(seqs)

    @defer.inlineCallbacks
    def cmd_SEARCH(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SEARCH / UID SEARCH with literals, CHARSET, every RFC 3501 key, WITHIN's
        OLDER/YOUNGER, ESEARCH's RETURN options and SEARCHRES's SAVE and C{$}."""
        r.sp()
        options = esearch.parseReturn(r)
        if options is None and IMAP4REV2 in self._enabled:
            options = esearch.ReturnOptions({b"ALL"})  # RFC 9051 6.4.4: ESEARCH answers
        saving = options is not None and b"SAVE" in options
        self._checkUpdateTag(tag, options is not None and b"UPDATE" in options)
        try:
            _charset, query = parseSearch(r)
            view = self._view()
            seqs = yield runSearch(view, query)
        except Exception:
            if saving:
                self._searchResult = ()  # a failed SAVE leaves $ empty (RFC 5182 2.1)
            raise
        if view is not self.mbox:
            return b"Search completed"
        uids = [view.uids[s - 1] for s in seqs]
        ids = uids if uid else seqs
        modseqTail = b""
        if condstore.queryUsesModseq(query):
            if not self._mode.condstore:
                self._enableCondstore()
            returned = condstore.returnedUids(options, uids)
            if returned:
                modseqOf = view.folder.modseqs.modseq
                modseqTail = b" (MODSEQ %d)" % max(modseqOf(u) for u in returned)
        if options is None:
            self.sendLine(b"* SEARCH" + b"".join(b" %d" % i for i in ids) + modseqTail)
            return b"Search completed"
        if saving:
            self._searchResult = esearch.toSave(options, uids)
        line = esearch.response(tag, uid, options, ids)
        if line is not None:
            if modseqTail:
                line += b" MODSEQ " + modseqTail[9:-1]  # RFC 7162 3.1.5, after the rest
            self.sendLine(line)
        if b"UPDATE" in options:
            if self._contexts is None:
                self._contexts = context.Contexts()
            if not self._contexts.add(tag, uid, query, uids):
                self.sendLine(b'* NO [NOUPDATE "' + tag + b'"] Too many updating searches')
        return b"Search completed"

    @defer.inlineCallbacks
    def cmd_SORT(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """SORT / UID SORT (RFC 5256, with SORT=DISPLAY's keys): the search runs as for
        SEARCH, the sort is made in the mailbox's runner (L{sort.sortedRows});
        RETURN (UPDATE) keeps the sort up to date (CONTEXT=SORT, L{context})."""
        options, criteria, query = sort.parseSort(r)
        view = self._view()
        updating = options is not None and b"UPDATE" in options
        self._checkUpdateTag(tag, updating)
        seqs = yield runSearch(view, query)
        if view is not self.mbox:
            return b"Sort completed"
        uids, infos = view.uids, view.infos
        messages = [(s, uids[s - 1], infos[uids[s - 1]]) for s in seqs]
        rows = yield view.runner.run(sort.sortedRows, criteria, view.folder, view.cache,
                                     messages)
        if view is not self.mbox:
            return b"Sort completed"
        ids = [row[2] if uid else row[1] for row in rows]
        if options is None:
            self.sendLine(b"* SORT" + b"".join(b" %d" % i for i in ids))
            return b"Sort completed"
        self.sendLine(esearch.response(tag, uid, options, ids))  # ESORT
        if updating:  # CONTEXT=SORT (RFC 5267 4.3)
            if self._contexts is None:
                self._contexts = context.Contexts()
            if not self._contexts.addSort(tag, uid, query, criteria, rows):
                self.sendLine(b'* NO [NOUPDATE "' + tag + b'"] Too many updating searches')
        return b"Sort completed"

    def _checkUpdateTag(self, tag: bytes, updating: bool) -> None:
        """RFC 5267 4.3: an UPDATE under the tag of a kept search or sort is BAD."""
        if updating and self._contexts is not None and self._contexts.inUse(tag):
            raise BadCommand("Tag reuse")

    def _urlServer(self) -> tuple[str, tuple[str, ...]]:
        """The host name and mail domains a URL of this server names."""
        return (getattr(self.config, "hostname", "") or "",
                tuple(getattr(self.config, "domains", ()) or ()))

    def _authorisedURL(self, raw: bytes, utf8: bool) -> urlauth.AuthURL:
        """A CATENATE URL with URLAUTH (RFC 4467 section 5): parsed, with its token.

        @raise catenate.BadURL: malformed, another server's, or without a token."""
        hostname, domains = self._urlServer()
        try:
            url = urlauth.parse(raw, hostname, domains, utf8)
        except urlauth.URLError as e:
            raise catenate.BadURL(raw, str(e)) from None
        if url.mechanism is None:
            raise catenate.BadURL(raw, "URLAUTH URL without a token")
        return url

    def _fetchAuthorised(self, url: urlauth.AuthURL) -> bytes:
        """What a URLAUTH URL of a CATENATE names for this user (blocking: runs inside
        L{catenate.assemble}).

        @raise catenate.BadURL: not authorised, or it names nothing."""
        result = urlauth.fetch(self.account.store, url, None, self.account.address)
        if result is None:
            raise catenate.BadURL(url.raw, "URLAUTH URL not valid here")
        data: bytes = result[0][1]
        return data

    @defer.inlineCallbacks
    def cmd_GENURLAUTH(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """GENURLAUTH url mechanism ... (URLAUTH, RFC 4467 6.1): tokens for URLs of the
        user's own mailboxes (L{urlauth})."""
        hostname, domains = self._urlServer()
        urls = []
        for raw, mech in urlauth.parseGenurlauth(r):
            urlauth.checkMechanism(mech)
            try:
                url = urlauth.parse(raw, hostname, domains, r.utf8)
            except urlauth.URLError as e:
                raise catenate.BadURL(raw, str(e)) from None
            if url.mechanism is not None:
                raise catenate.BadURL(raw, "URL has a URLAUTH verifier already")
            if url.owner != canonical(self.account.address):
                raise catenate.BadURL(raw, "URL names another user's mailbox")
            urls.append(url)
        made = yield self.account._run(urlauth.generate, urls)
        self.sendLine(b"* GENURLAUTH " + b" ".join(serialiseString(u) for u in made))
        return b"Genurlauth completed"

    @defer.inlineCallbacks
    def cmd_URLFETCH(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """URLFETCH url / (url params) ... (RFC 4467 6.3, RFC 5524): what authorised
        URLs name, NIL for any other (L{urlauth.fetch})."""
        hostname, domains = self._urlServer()
        requests = []
        for raw, params in urlauth.parseUrlfetch(r):
            try:
                url: urlauth.AuthURL | None = urlauth.parse(raw, hostname, domains, r.utf8)
            except urlauth.URLError:
                url = None
            requests.append((raw, params, url))
        lines = yield self.account.runner.run(urlauth.fetchAll, self.account.store,
                                              requests, self.account.address)
        if not self._lost:
            self.transport.write(b"".join(lines))
        return b"Urlfetch completed"

    @defer.inlineCallbacks
    def cmd_RESETKEY(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """RESETKEY [mailbox [mechanism ...]] (RFC 4467 6.2): forget access keys."""
        name = None
        if not r.atEnd():
            name = self._mailboxArg(r)
            while not r.atEnd():
                r.sp()
                urlauth.checkMechanism(r.atom())
        r.end()
        yield self.account._run(urlauth.resetKeys, name)
        return b"Resetkey completed"

    def cmd_CANCELUPDATE(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """CANCELUPDATE "tag" *(SP "tag") (RFC 5267 4.3.5): end updating searches."""
        tags = []
        while not r.atEnd():
            r.sp()
            tags.append(r.quoted())
        if not tags:
            raise BadCommand("CANCELUPDATE needs a tag")
        unknown = self._contexts.cancel(tags) if self._contexts is not None else tags
        if unknown:
            raise NoCommand("Unknown search query update tag")
        return b"Updates cancelled"

    @defer.inlineCallbacks
    def cmd_THREAD(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """THREAD / UID THREAD (RFC 5256: ORDEREDSUBJECT, REFERENCES), threaded in the
        mailbox's runner (L{thread.threadMessages})."""
        algorithm, query = thread.parseThread(r)
        view = self._view()
        seqs = yield runSearch(view, query)
        if view is not self.mbox:
            return b"Thread completed"
        uids, infos = view.uids, view.infos
        messages = [(s, uids[s - 1], infos[uids[s - 1]]) for s in seqs]
        data = yield view.runner.run(thread.threadMessages, algorithm, view.folder,
                                     view.cache, messages, uid)
        if view is not self.mbox:
            return b"Thread completed"
        self.sendLine(b"* THREAD " + data if data else b"* THREAD")
        return b"Thread completed"

    @staticmethod
    def _checkSeqNumbers(view: MailboxView, seqset: SequenceSet, uid: bool) -> None:
        """Refuse a message sequence set naming a number beyond EXISTS (FETCH, STORE,
        COPY, MOVE; RFC 3501 section 9), as Dovecot does; UID sets are clipped instead.

        @raise BadCommand: C{Invalid messageset} (so also C{n:*} with n past the end,
            and any set at all in an empty mailbox).
        """
        if not uid and not isinstance(seqset, SavedSet) and view.seqNumbersOutOfRange(seqset):
            raise BadCommand("Invalid messageset")

    @defer.inlineCallbacks
    def cmd_STORE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """STORE set [(UNCHANGEDSINCE n)] [+-]FLAGS[.SILENT] (flags), with CONDSTORE's
        C{[MODIFIED]} for the messages changed since n (RFC 7162 3.1.3)."""
        r.sp()
        seqset = r.seqset()
        r.sp()
        unchangedSince = condstore.parseStoreModifier(r)
        item = r.word()
        m = _STORE_RE.match(item)
        if not m:
            raise BadCommand("expected FLAGS, +FLAGS or -FLAGS")
        r.sp()
        flags = r.flagsArgument()
        r.end()
        try:
            for f in flags:
                canonicalFlag(f)
        except ValueError as e:
            raise BadCommand(str(e)) from None
        mode = {b"+": 1, b"-": -1, b"": 0}[m.group(1)]
        silent = bool(m.group(2))
        view = self._view()
        self._checkSeqNumbers(view, seqset, uid)
        if not view.readWrite:
            raise NoCommand("[READ-ONLY] Mailbox is read-only")
        modified: list[int] = []
        if unchangedSince is not None:
            if not self._mode.condstore:
                self._enableCondstore()
            view.dirty = True
            yield self._reportUpdates(False)
            if view is not self.mbox:
                return b"Store completed"
        pairs = view.resolve(seqset, uid)
        if unchangedSince is not None:
            tooNew = set(view.folder.modseqs.changedSince([u for _, u in pairs],
                                                          unchangedSince))
            modified = [s if not uid else u for s, u in pairs if u in tooNew]
            pairs = [p for p in pairs if p[1] not in tooNew]
        before = {u: view.infos[u].flags for _, u in pairs if u in view.infos}
        touched = yield view.storeFlags(pairs, mode, flags)
        if view is self.mbox:
            # Keywords the client has not been told of, before a FETCH uses them: the
            # STORE's own, and another session's that the new flag sets carry.
            out = view.announceFlagsOf((u for _, u in touched), flags if mode >= 0 else ())
            if not silent and len(touched) < len(pairs):
                # Expunged by another session, not yet reported here: answered with the
                # flags the STORE would have given, as Dovecot does (RFC 2180 4.2.1),
                # so the client's view of the message stays whole until its EXPUNGE.
                out += self._ghostFlags(view, pairs, touched, before, mode, flags, uid)
            modseqOf = view.folder.modseqs.modseq if self._mode.condstore else None
            for seq, u in touched:
                changed = before.get(u) is not view.infos[u].flags
                if silent and not (modseqOf is not None and unchangedSince is not None
                                   and changed):
                    continue
                parts = []
                if uid:
                    parts.append(b"UID %d" % u)
                if not silent:
                    parts.append(b"FLAGS " + view.flagsBytes(u))
                if modseqOf is not None:
                    parts.append(b"MODSEQ (%d)" % modseqOf(u))
                out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
            if out:
                self.transport.write(b"".join(out))
        if modified:
            return b"[MODIFIED " + compressUids(sorted(modified)) + b"] Conditional store failed"
        return b"Store completed"

    @staticmethod
    def _ghostFlags(view: MailboxView, pairs: list[tuple[int, int]],
                    touched: list[tuple[int, int]], before: dict[int, frozenset[str]],
                    mode: int, flags: list[str], uid: bool) -> list[bytes]:
        """The C{* n FETCH (FLAGS ...)} lines of a STORE's messages that another session
        expunged meanwhile: their flags as the STORE would have left them."""
        wanted = frozenset(f for f in (canonicalFlag(x) for x in flags) if f is not None)
        done = {u for _, u in touched}
        out = []
        for seq, u in pairs:
            old = before.get(u)
            if u in done or old is None:
                continue
            new = changedFlags(old, mode, wanted)
            prefix = b"UID %d " % u if uid else b""
            out.append(b"* %d FETCH (%sFLAGS %s)\r\n" % (
                seq, prefix, flagListBytes(new, u in view.recent)))
        return out

    @defer.inlineCallbacks
    def _copy(self, r: Reader, uid: bool, move: bool) -> Any:
        r.sp()
        seqset = r.seqset()
        name = self._mailboxArg(r)
        r.end()
        view = self._view()
        self._checkSeqNumbers(view, seqset, uid)
        if move and not view.readWrite:
            raise NoCommand("[READ-ONLY] Mailbox is read-only")
        pairs = view.resolve(seqset, uid)
        uids = [u for _, u in pairs if u not in view.ghosts]
        if len(uids) < len(pairs) and not uid:
            # Part of the set is gone: copy none of it (RFC 9051 6.4.7), as Dovecot.
            raise NoCommand("[EXPUNGEISSUED] Some of the requested messages no longer exist")
        try:
            validity, mapping = yield self.account.copyTo(view, uids, name, move=move)
        except NoSuchFolder:
            raise NoCommand("[TRYCREATE] Mailbox does not exist") from None
        except MessageVanished:
            raise NoCommand("[EXPUNGEISSUED] Some messages were expunged") from None
        code = b""
        if mapping:
            code = b"[COPYUID %d %s %s] " % (
                validity, compressUids(s for s, _ in mapping), compressUids(d for _, d in mapping)
            )
        if not move:
            return code + b"Copy completed"
        if code:
            self.sendLine(b"* OK " + code + b"Moved")
        moved = [s for s, _ in mapping]
        infos = [view.infos[u] for u in moved if u in view.infos]
        folder = view.folder
        if infos:
            yield view.runner.run(folder.expunge, [i.key for i in infos])
            view.notifyOthers()
        before = list(view.uids)
        seqs = view.forget(moved)
        if seqs and view is self.mbox:
            self._sendExpunges(before, seqs)
        return b"Move completed"

    def cmd_COPY(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """COPY / UID COPY with COPYUID."""
        return self._copy(r, uid, move=False)

    def cmd_MOVE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """MOVE / UID MOVE (RFC 6851)."""
        return self._copy(r, uid, move=True)
