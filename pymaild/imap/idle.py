"""IDLE, NOTIFY and the unsolicited updates a session sends.

Changes from other sessions and processes reach a session as EXISTS, EXPUNGE and
FETCH FLAGS where RFC 3501 section 7.4.1 allows; IDLE (ends on DONE only) rescans on one
shared timer (L{IdlePoller}, one per factory), in the same second as the other sessions of
the folder so that they share one scan; NOTIFY (L{pymaild.imap.notifyset}) is polled there
too.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from pymaild.errors import NoSuchFolder
from pymaild.imap import notifyset
from pymaild.imap.framing import _DONE, _IDLING
from pymaild.imap.mailbox import MailboxView, heldScans
from pymaild.imap.syntax import Reader

log = Logger()

IDLE_POLL = 30.0
"""While IDLE, rescan the folder this often (covers processes inotify does not see)."""
IDLE_KEEPALIVE = 120
"""Default seconds between two C{* OK Still here} lines during IDLE (Dovecot's
C{imap_idle_notify_interval}); C{imap.idle_keepalive} in the configuration."""


def idleSchedule(keepalive: int) -> tuple[int, int]:
    """The IDLE poll period and the polls between two keepalives for C{keepalive}
    seconds (0: no keepalive): polls come at most L{IDLE_POLL} seconds apart and
    often enough to send a keepalive on time."""
    poll = max(1, int(IDLE_POLL))
    if keepalive <= 0:
        return poll, 0
    period = min(poll, keepalive)
    return period, max(1, -(-keepalive // period))


class IdlePoller:
    """One timer for all the IDLE sessions of a factory, instead of one per session.

    A session due for its periodic rescan sits in the bucket of the whole second it is
    due at; the timer fires at the earliest bucket. Sessions on the same folder are
    given the same phase (the folder path's hash modulo the period) so that their polls
    happen in the same second and share one folder scan (L{pymaild.imap.mailbox.sharedScan}):
    10,000 idle sessions cost neither 10,000 timers nor 10,000 scans per period.

    L{pymaild.imap.server.IMAPFactory} builds one (or is given one to share between
    listeners); its sessions hold it, so no module keeps sessions' polls.
    """

    def __init__(self, clock: Any = None) -> None:
        self.clock = clock  # None: the global reactor
        self.buckets: dict[int, set[IdleMixin]] = {}
        self._timer: Any = None
        self._timerDue: int | None = None
        self._firing = False

    @staticmethod
    def nextDue(now: float, phase: int, period: int) -> int:
        """The first whole second after C{now} (within one period) congruent to C{phase}."""
        base = math.floor(now)
        return base + 1 + (phase - base - 1) % period

    def add(self, session: IdleMixin, due: int) -> None:
        """Poll C{session} (its L{IdleMixin._idleTick}) at second C{due}."""
        self.buckets.setdefault(due, set()).add(session)
        if not self._firing and (self._timerDue is None or due < self._timerDue):
            self._arm(due)

    def remove(self, session: IdleMixin, due: int) -> None:
        """Forget a pending poll; the timer goes when no session is left."""
        bucket = self.buckets.get(due)
        if bucket is not None:
            bucket.discard(session)
            if not bucket:
                del self.buckets[due]
        if not self.buckets and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = self._timerDue = None

    def _clock(self) -> Any:
        if self.clock is not None:
            return self.clock
        from twisted.internet import reactor

        return reactor

    def _arm(self, due: int) -> None:
        clock = self._clock()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timerDue = due
        self._timer = clock.callLater(max(0.0, due - clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = self._timerDue = None
        now = self._clock().seconds()
        self._firing = True  # sessions re-add themselves: arm once, below
        try:
            with heldScans():  # the sessions of one folder share one scan
                for due in sorted(d for d in self.buckets if d <= now + 0.001):
                    for session in self.buckets.pop(due, ()):
                        try:
                            session._idleTick()
                        except Exception:  # noqa: BLE001 - one session must not stop others
                            log.failure("IDLE poll failed")
        finally:
            self._firing = False
        if self.buckets:
            self._arm(min(self.buckets))


class IdleMixin:
    """The unsolicited updates, NOTIFY and IDLE of an IMAP session."""

    __slots__ = ()

    def _reportUpdates(self, allowExpunge: bool) -> defer.Deferred[None]:
        """Rescan the selected folder if it changed and send the untagged updates."""
        view = self.mbox
        if view is None:
            return defer.succeed(None)
        d = view.sync() if view.dirty else defer.succeed(None)

        def report(_: Any) -> None:
            if view is not self.mbox or self._lost:
                return
            lines = view.collectUpdates(allowExpunge)
            if lines:
                self.transport.write(b"".join(line + b"\r\n" for line in lines))

        def failed(f: Failure) -> None:
            if f.check(NoSuchFolder):
                self.sendLine(b"* BYE Selected mailbox was deleted")
                self.state = "logout"
                self.transport.loseConnection()
                return
            log.failure("rescanning a folder failed", f)

        return d.addCallbacks(report, failed)

    def _refreshContexts(self) -> defer.Deferred[None]:
        """Run the updating searches again (CONTEXT=SEARCH) and send what changed."""
        contexts, view = self._contexts, self.mbox
        if contexts is None or not contexts.updates or view is None:
            return defer.succeed(None)

        def send(lines: list[bytes]) -> None:
            if lines and view is self.mbox and not self._lost:
                self.transport.write(b"".join(lines))

        def failed(f: Failure) -> None:
            log.failure("updating a search context failed", f)

        return contexts.refresh(view).addCallbacks(send, failed)

    def expunging(self, pairs: list[tuple[int, int]]) -> list[bytes]:
        """The lines (CRLF-ended) to send before the messages (seq, uid) are reported
        expunged: updating searches lose them first (L{context.Contexts.expunging})."""
        if self._contexts is None or not self._contexts.updates:
            return []
        return self._contexts.expunging(pairs)

    def mailboxChanged(self, view: MailboxView) -> None:
        """Called by the view when its folder changed; during IDLE report at once, and
        with NOTIFY's selected events whenever no command runs."""
        if self._idleTag is not None and view is self.mbox:
            self._idleSync()
        elif self._notifier is not None and view is self.mbox and not self._busy:
            wanted = self._notifier.spec.selectedEvents()
            if wanted is not None and wanted[0]:
                self._pushSelected(allowExpunge=not wanted[1])

    def _pushSelected(self, allowExpunge: bool) -> None:
        """NOTIFY: report the selected mailbox's changes while no command runs; if a
        command starts meanwhile, its end reports them instead."""
        view = self.mbox
        if view is None:
            return
        d = view.sync() if view.dirty else defer.succeed(None)

        def report(_: Any) -> Any:
            if view is not self.mbox or self._lost or self._busy:
                return None
            last = view.uids[-1] if view.uids else 0
            lines = view.collectUpdates(allowExpunge)
            if lines:
                self.transport.write(b"".join(line + b"\r\n" for line in lines))
            if self._wantsNewFetch(view, last):
                self._busy = True  # the FETCH is a command of ours: input waits

                def released(_: Any) -> None:
                    if not self._lost:
                        self._commandDone()

                return self._newMessageFetch(view, last).addBoth(released)
            return self._refreshContexts()

        def failed(f: Failure) -> None:
            if not f.check(NoSuchFolder):
                log.failure("NOTIFY: rescanning the selected folder failed", f)

        d.addCallback(report).addErrback(failed)

    def _wantsNewFetch(self, view: MailboxView, last: int) -> bool:
        """Whether NOTIFY asks for a FETCH of the messages after UID C{last}."""
        notifier = self._notifier
        return (notifier is not None and bool(notifier.spec.selectedFetch())
                and view is self.mbox and bool(view.uids) and view.uids[-1] > last)

    def _newMessageFetch(self, view: MailboxView, last: int) -> defer.Deferred[Any]:
        """NOTIFY's MessageNew (fetch-att): FETCH the messages after UID C{last}."""
        assert self._notifier is not None
        r = Reader([b" %d:* %s" % (last + 1, self._notifier.spec.selectedFetch())])
        r.utf8 = r.utf8Accept = b"UTF8=ACCEPT" in self._enabled
        d = defer.maybeDeferred(self.cmd_FETCH, b"*", r, True)

        def failed(f: Failure) -> None:
            log.failure("NOTIFY: fetching new messages failed", f)

        return d.addErrback(failed)

    def sendNotifications(self, lines: list[bytes]) -> None:
        """NOTIFY's untagged lines (CRLF-ended): now when no command runs (or during
        IDLE), else just before the running command's tagged response."""
        notifier = self._notifier
        if self._lost or notifier is None:
            return
        if not self._busy or self._idleTag is not None:
            self.transport.write(b"".join(lines))
        else:
            notifier.lines.extend(lines)

    def utf8Names(self) -> bool:
        """Whether mailbox names go out in UTF-8 (ENABLE UTF8=ACCEPT)."""
        return b"UTF8=ACCEPT" in self._enabled

    @defer.inlineCallbacks
    def cmd_NOTIFY(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """NOTIFY NONE / NOTIFY SET [STATUS] (filter events) ... (RFC 5465,
        L{notifyset})."""
        spec = notifyset.parseNotify(r)
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        if spec is None:
            return b"NOTIFY completed"
        notifier = notifyset.Notifier(self, spec)
        try:
            lines = yield notifier.start()
        except BaseException:
            notifier.stop()
            raise
        if self._lost:
            notifier.stop()
            return _DONE
        self._notifier = notifier
        if lines:
            self.transport.write(b"".join(lines))
        return b"NOTIFY completed"

    def _idleSync(self) -> None:
        if self._idleSyncing:
            self._idleAgain = True
            return
        self._idleSyncing = True

        def done(_: Any) -> None:
            self._idleSyncing = False
            if self._idleAgain and self._idleTag is not None:
                self._idleAgain = False
                self._idleSync()

        if self.mbox is not None:
            self.mbox.dirty = True
        d = self._reportUpdates(True)
        d.addCallback(lambda _: self._refreshContexts())
        d.addBoth(done)

    # Twisted IMailboxListener: our views call mailboxChanged instead.
    def newMessages(self, exists: Any, recent: Any) -> None:
        """IMailboxListener: rescan at the next allowed point."""
        if self.mbox is not None:
            self.mbox.markDirty()

    def flagsChanged(self, newFlags: Any) -> None:
        """IMailboxListener: rescan at the next allowed point."""
        if self.mbox is not None:
            self.mbox.markDirty()

    def modeChanged(self, writeable: bool) -> None:
        """IMailboxListener: not used (modes do not change)."""

    def cmd_IDLE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """IDLE: push changes until the client sends DONE.

        The command stays running (the session is busy) but holds no Deferred or
        callback chain while it idles: L{_pump} hands the next line to L{_idleEnded}.
        """
        r.end()
        self.sendLine(b"+ idling")
        self._idleTag = tag
        self._idlePolls = 0
        self._startIdleTimer()
        if self.mbox is not None:
            self._idleSync()
        return _IDLING

    def _idleEnded(self, line: bytes | Failure) -> None:
        """End IDLE: DONE answers OK, another line BAD, a failure its error response."""
        tag = self._idleTag
        assert tag is not None
        self._stopIdleTimer()
        self._idleTag = None
        if isinstance(line, Failure):
            d: defer.Deferred[Any] = defer.fail(line)
        elif line.strip().upper() == b"DONE":
            d = defer.succeed(b"IDLE terminated")
        else:
            d = defer.succeed((b"BAD", b"Expected DONE"))
        args = (tag, b"IDLE", False)
        d.addCallbacks(self._commandSucceeded, self._commandFailed,
                       callbackArgs=args, errbackArgs=args)
        d.addErrback(self._finishFailed)

    def _clockObject(self) -> Any:
        if self.clock is not None:
            return self.clock
        from twisted.internet import reactor

        return reactor

    def _startIdleTimer(self) -> None:
        """Schedule the next IDLE rescan, at most L{IDLE_POLL} seconds from now, in the
        same second as the other sessions idling on the same folder."""
        self._stopIdleTimer()
        clock = self._clockObject()
        period, _ = idleSchedule(self._keepalive())
        if self.mbox is not None:
            phase = hash(self.mbox.folder.path) % period
        else:
            phase = (id(self) >> 4) % period
        due = IdlePoller.nextDue(clock.seconds(), phase, period)
        self.idlePoller.add(self, due)
        self._idleTimer = due

    def _keepalive(self) -> int:
        """Seconds between IDLE keepalives (C{imap.idle_keepalive}; 0 is off)."""
        return int(getattr(getattr(self.config, "imap", None), "idle_keepalive",
                           IDLE_KEEPALIVE))

    def _stopIdleTimer(self) -> None:
        if self._idleTimer is not None:
            self.idlePoller.remove(self, self._idleTimer)
        self._idleTimer = None

    def _idleTick(self) -> None:
        self._idleTimer = None
        if self._idleTag is None or self._lost:
            return
        self._idlePolls += 1
        _, every = idleSchedule(self._keepalive())
        if every and self._idlePolls % every == 0:
            self.sendLine(b"* OK Still here")
        if self.mbox is not None:
            self._idleSync()
        if self._notifier is not None:
            self._notifier.poll()
        self._startIdleTimer()
