"""The IMAP FETCH command.

Exact partial ranges, \\Seen on non-PEEK, cached ENVELOPE/BODYSTRUCTURE; the responses
are rendered in batches (L{pymaild.imap.fetch.FetchPlan}: from the cache in the reactor,
else one disk-runner call per batch) and written in large chunks; big bodies stream from
the file through the disk runner with transport back-pressure.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from pymaild.imap import condstore
from pymaild.imap.fetch import RENDER_LIMIT, FetchItem, FetchPlan, Rendered, parseFetchAttributes
from pymaild.imap.framing import _DONE, _Pusher
from pymaild.imap.mailbox import MailboxView, flagListBytes
from pymaild.imap.syntax import BadCommand, Reader
from pymaild.sendbody import sendRanges

FETCH_BATCH = 256
"""Messages per step of a FETCH that sets \\Seen: the flag is stored for a step's
messages before their responses are rendered."""

def _closeRendered(runner: Any, done: Rendered) -> None:
    """Close the files of rendered responses that will not be sent."""
    for f in done.files:
        runner.run(f.close).addErrback(lambda _: None)


class FetchMixin:
    """FETCH and UID FETCH."""

    __slots__ = ()

    # -- FETCH ---------------------------------------------------------------------
    @defer.inlineCallbacks
    def cmd_FETCH(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """FETCH / UID FETCH."""
        r.sp()
        seqset = r.seqset()
        r.sp()
        attributes, modText = condstore.splitModifiers(r.rest())
        items = parseFetchAttributes(attributes)
        mods = condstore.parseFetchModifiers(modText) if modText is not None else None
        r.end()
        if mods is not None and mods.vanished and not (uid and self._mode.qresync):
            raise BadCommand("VANISHED needs UID FETCH and QRESYNC enabled")
        view = self._view()
        self._checkSeqNumbers(view, seqset, uid)
        if uid and not any(i.kind == "uid" for i in items):
            items.insert(0, FetchItem("uid", label=b"UID"))
        wantsModseq = mods is not None or any(i.kind == "modseq" for i in items)
        if wantsModseq:
            if not self._mode.condstore:
                self._enableCondstore()
            if not any(i.kind == "modseq" for i in items):
                items.append(FetchItem("modseq", label=b"MODSEQ"))
        if wantsModseq:
            # Flag changes not yet reported first (a rescan: another program may have
            # changed messages), so each MODSEQ sent goes with the flags it stands for.
            view.dirty = True
            yield self._reportUpdates(False)
            if view is not self.mbox:
                return b"Fetch completed"
        changed = (view.folder.modseqs.changedAfter(mods.changedSince)
                   if mods is not None else None)
        if changed is not None:
            pairs = condstore.changedPairs(view, seqset, uid, changed)
        else:
            pairs = view.resolve(seqset, uid)
        if mods is not None:
            if mods.vanished:
                lines = condstore.fetchVanished(view, seqset, mods.changedSince)
                self.transport.write(b"".join(line + b"\r\n" for line in lines))
        setSeen = view.readWrite and any(i.kind == "section" and not i.peek for i in items)
        simple = all(i.kind in ("uid", "flags", "size", "modseq") for i in items)
        missing = False
        self.setTimeout(None)
        # BINARY[] without PEEK sets \Seen as BODY[] does (RFC 3516 section 4.2).
        setSeen = setSeen or (view.readWrite and any(i.kind == "binary" and not i.peek
                                                     for i in items))
        try:
            if simple:
                missing = self._fetchSimple(view, pairs, items)
            else:
                missing = yield self._fetchBatches(view, pairs, items, setSeen)
                if missing is None:
                    return _DONE
        finally:
            self.setTimeout(self.POSTAUTH_TIMEOUT)
        if missing and not uid:
            # As Dovecot: what could be sent was, the rest left out, and OK (RFC 2180
            # 4.1.3); the EXPUNGE follows at the next command that may report it.
            return b"[EXPUNGEISSUED] Some messages were already expunged"
        return b"Fetch completed"

    def _fetchSimple(self, view: MailboxView, pairs: list[tuple[int, int]],
                     items: list[FetchItem]) -> bool:
        """UID, FLAGS and RFC822.SIZE only: everything is in the view, no disk work.

        A message another session expunged (not yet reported here) is answered from the
        view too, as Dovecot answers from its index, except when MODSEQ is asked for (the
        mod-sequence log has forgotten it): then it is left out, and the result is
        whether some message was.
        """
        out: list[bytes] = []
        ghosts, infos, recent = view.ghosts, view.infos, view.recent
        kinds = [it.kind for it in items]
        # One %-template per response: "* %d FETCH (UID %d FLAGS %s)\r\n".
        template = b"* %d FETCH (" + b" ".join(
            {"uid": b"UID %d", "flags": b"FLAGS %s", "size": b"RFC822.SIZE %d",
             "modseq": b"MODSEQ (%d)"}[k]
            for k in kinds) + b")\r\n"
        modseqOf = view.folder.modseqs.modseq if "modseq" in kinds else None
        uidFlags = kinds == ["uid", "flags"]
        skipped = False
        for seq, u in pairs:
            if u in ghosts and modseqOf is not None:
                skipped = True
                continue
            info = infos[u]
            if uidFlags:
                out.append(template % (seq, u, flagListBytes(info.flags, u in recent)))
                continue
            values: list[Any] = [seq]
            for kind in kinds:
                if kind == "uid":
                    values.append(u)
                elif kind == "flags":
                    values.append(flagListBytes(info.flags, u in recent))
                elif kind == "modseq":
                    assert modseqOf is not None
                    values.append(modseqOf(u))
                else:
                    values.append(info.size)
            out.append(template % tuple(values))
            if len(out) >= 4096:
                self.transport.write(b"".join(out))
                out = []
        if out:
            self.transport.write(b"".join(out))
        return skipped

    @defer.inlineCallbacks
    def _fetchBatches(self, view: MailboxView, pairs: list[tuple[int, int]],
                      items: list[FetchItem], setSeen: bool) -> Any:
        """Send the FETCH responses of C{pairs}, FETCH_BATCH messages at a time.

        Per batch: one STORE of \\Seen for the messages that lack it (non-PEEK sections),
        then the responses are rendered from the structure cache in the reactor thread
        when everything is cached, else in one disk-runner call, and written in large
        chunks (bodies over INLINE_SECTION streamed) under transport back-pressure.

        Fires with whether some message was missing (expunged), or None when the
        connection or the selected mailbox went away.
        """
        plan = FetchPlan(items)
        hasFlags = any(i.kind == "flags" for i in items)
        folder, cache, runner = view.folder, view.cache, view.runner
        pusher = _Pusher()
        self.transport.registerProducer(pusher, True)
        missing = False
        try:
            # Without \Seen to store first, the whole set is one step, so reading ahead
            # (below) overlaps every run of responses with the sending of the previous.
            step = FETCH_BATCH if setSeen else max(1, len(pairs))
            for start in range(0, len(pairs), step):
                if self._lost or view is not self.mbox:
                    return None
                batch = [p for p in pairs[start : start + step]
                         if p[1] not in view.ghosts]
                if len(batch) < min(step, len(pairs) - start):
                    missing = True
                seen: set[int] = set()
                if setSeen:
                    unseen = [p for p in batch if "\\Seen" not in view.infos[p[1]].flags]
                    if unseen:
                        touched = yield view.storeFlags(unseen, 1, ["\\Seen"])
                        if self._lost or view is not self.mbox:
                            return None
                        seen = {u for _, u in touched}
                        # The new flag sets may carry another session's new keyword.
                        announce = view.announceFlagsOf(seen)
                        if announce:
                            self.transport.write(b"".join(announce))
                        if len(seen) < len(unseen):
                            missing = True
                            gone = {u for _, u in unseen} - seen
                            batch = [p for p in batch if p[1] not in gone]
                work = [(seq, u, view.infos[u],
                         view.flagsBytes(u) if hasFlags or u in seen else None)
                        for seq, u in batch]
                ahead: defer.Deferred[Rendered] | None = None
                pos = 0
                while pos < len(work):
                    if ahead is not None:
                        done, ahead = (yield ahead), None
                        fromDisk = True
                    else:
                        run = work[pos : pos + RENDER_LIMIT]
                        done = plan.render(folder, cache, run, True)
                        fromDisk = done.consumed == 0
                        if fromDisk:
                            done = yield runner.run(plan.render, folder, cache, run, False)
                    pos += done.consumed
                    if done.vanished:
                        missing = True
                        view.dirty = True
                        for u in done.vanished:
                            view.addGhost(u)
                    if pos < len(work) and fromDisk:
                        # Read the next run while this one is sent: disk and socket overlap.
                        ahead = runner.run(plan.render, folder, cache,
                                           work[pos : pos + RENDER_LIMIT], False)
                    ok = yield self._sendSegments(runner, done, pusher)
                    if ok and view is not self.mbox:
                        ok = False  # the mailbox was closed or another one selected
                    if not ok:
                        if ahead is not None:
                            ahead.addCallbacks(lambda r: _closeRendered(runner, r),
                                               lambda _: None)
                        return None
        finally:
            if not self._lost:
                self.transport.unregisterProducer()
        return missing

    @defer.inlineCallbacks
    def _sendSegments(self, runner: Any, done: Rendered, pusher: _Pusher) -> Any:
        """Write rendered responses (streaming file ranges); False when the connection
        went away. Closes the files of the stream ranges."""
        try:
            for seg in done.segments:
                if self._lost or pusher.stopped:
                    return False
                if isinstance(seg, bytes):
                    if seg:
                        self.transport.write(seg)
                else:
                    f, a, b = seg
                    ok = yield self._stream(runner, f, a, b, pusher)
                    if not ok:
                        return False
                yield pusher.wait()
        finally:
            for f in done.files:
                runner.run(f.close).addErrback(lambda _: None)
        return not self._lost

    @defer.inlineCallbacks
    def _stream(self, runner: Any, f: Any, start: int, end: int, pusher: _Pusher) -> Any:
        """Send bytes C{start..end} of C{f} (a literal's content, its length already
        written) through L{pymaild.sendbody}: sendfile on a plain TCP connection, reads
        of 256 KB in the runner through TLS or COMPRESS. The sender is the transport's
        producer meanwhile; the command's pusher is registered again afterwards."""
        yield pusher.wait()
        if self._lost or pusher.stopped:
            return False
        self.transport.unregisterProducer()
        try:
            ok = yield sendRanges(self.transport, f, [(start, end)], runner, prefetch=True)
        finally:
            if not self._lost:
                self.transport.registerProducer(pusher, True)
        return bool(ok) and not self._lost
