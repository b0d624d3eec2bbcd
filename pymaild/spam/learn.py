"""Teaching rspamd from what users do over IMAP (a L{pymaild.imap.account.CopyObserver}).

A COPY or MOVE (or their UID forms) into Junk from any other folder teaches rspamd spam
(C{/learnspam}); out of Junk into any other folder but Trash teaches ham
(C{/learnham}). Deleting from Junk (EXPUNGE, or a move to Trash, which is how clients
delete) teaches nothing. The work is in the background: the IMAP reply never waits.
Each message is read from the folder it went to (through the disk runner) and sent;
when rspamd cannot be reached or fails (HTTP 5xx), it is tried again after 2, 4, 8...
seconds, at most C{attempts} times in all; rspamd declining it (already learned, too
few words) is final. At most C{concurrency} messages are sent at once and at most
C{maxPending} wait; beyond that new ones are dropped (and counted), so a user moving
100 000 messages cannot grow memory without bound.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from pymaild.errors import StoreError
from pymaild.spam.counters import SpamCounters
from pymaild.spam.junk import JUNK, TRASH
from pymaild.spam.rspamd import RspamdClient, RspamdError

log = Logger()


def readMessage(store: Any, address: str, folder: str, uid: int, maxSize: int) -> bytes | None:
    """The message C{uid} of C{address}'s C{folder} (blocking); None when it is gone or
    larger than C{maxSize}."""
    try:
        box = store.account(address).folder(folder)
        for info in box.scan(claimRecent=False).messages:
            if info.uid == uid:
                if info.size is not None and info.size > maxSize:
                    return None
                data = bytes(box.read(info))
                return data if len(data) <= maxSize else None
    except StoreError:
        return None
    return None


def kindOf(source: str, dest: str) -> str | None:
    """What a copy from C{source} to C{dest} teaches: C{"spam"}, C{"ham"} or None."""
    if dest == JUNK and source != JUNK:
        return "spam"
    if source == JUNK and dest not in (JUNK, TRASH):
        return "ham"
    return None


class Learner(Service):
    """Sends what users move in and out of Junk to rspamd's controller.

    @param client: the L{RspamdClient}.
    @param store: the L{pymaild.store.MaildirStore} the messages are read from.
    @param runner: the disk runner (a L{pymaild.threads.ThreadRunner}).
    @param clock: the reactor (retry delays).
    @param counters: where learned and failed messages are counted.
    @param attempts: tries per message, the first included.
    @param maxSize: larger messages are not sent.
    """

    def __init__(self, client: RspamdClient, store: Any, runner: Any, clock: Any,
                 counters: SpamCounters, attempts: int = 5, maxSize: int = 26214400,
                 concurrency: int = 2, maxPending: int = 1000, firstDelay: float = 2.0) -> None:
        self.client = client
        self.store = store
        self.runner = runner
        self.clock = clock
        self.counters = counters
        self.attempts = attempts
        self.maxSize = maxSize
        self.firstDelay = firstDelay
        self.maxPending = maxPending
        self.semaphore = defer.DeferredSemaphore(concurrency)
        self.pending: set[defer.Deferred[None]] = set()

    def copied(self, address: str, source: str, dest: str, uids: list[int]) -> None:
        """The IMAP hook: queue what the copy teaches, if anything."""
        kind = kindOf(source, dest)
        if kind is None or not self.running:
            return
        for uid in uids:
            if len(self.pending) >= self.maxPending:
                self.counters.add(f"learn {kind} dropped")
                log.warn("spam: too many messages waiting to be learned; {address}'s"
                         " UID {uid} in {dest} is not learned", address=address, uid=uid,
                         dest=dest)
                continue
            d = self.semaphore.run(self._learn, kind, address, dest, uid)
            self.pending.add(d)
            d.addErrback(self._failed)
            d.addBoth(self._forget, d)

    def _forget(self, result: object, d: defer.Deferred[None]) -> None:
        """One learning is over (whatever its outcome): it no longer counts as pending."""
        self.pending.discard(d)

    @staticmethod
    def _failed(reason: Any) -> None:
        """Log an unexpected failure of one learning (a cancelled one is no failure)."""
        if not reason.check(defer.CancelledError):
            log.failure("spam: learning failed", reason)

    @defer.inlineCallbacks
    def _learn(self, kind: str, address: str, folder: str, uid: int) -> Any:
        """Read one message and teach it, retrying while rspamd is unreachable."""
        message = yield self.runner.run(readMessage, self.store, address, folder, uid,
                                        self.maxSize)
        if message is None:
            self.counters.add(f"learn {kind} skipped")
            return
        delay = self.firstDelay
        for attempt in range(1, self.attempts + 1):
            try:
                outcome = yield self.client.learn(kind, message, address)
            except RspamdError as e:
                if not e.retry or attempt == self.attempts or not self.running:
                    self.counters.add(f"learn {kind} failed")
                    log.warn("spam: {address}'s UID {uid} in {folder} not learned as"
                             " {kind} ({why}, attempt {n})", address=address, uid=uid,
                             folder=folder, kind=kind, why=e.reason, n=attempt)
                    return
                yield task.deferLater(self.clock, delay, lambda: None)
                delay *= 2
                continue
            if outcome == "learned":
                self.counters.add(f"learned {kind}")
            else:
                self.counters.add(f"learn {kind} declined")
            log.info("spam: {address}'s UID {uid} in {folder} as {kind}: {outcome}",
                     address=address, uid=uid, folder=folder, kind=kind, outcome=outcome)
            return

    def idle(self) -> defer.Deferred[None]:
        """Fire when nothing is being learned or waiting (for tests and shutdown)."""
        if not self.pending:
            return defer.succeed(None)
        return defer.DeferredList(list(self.pending)).addCallback(lambda _: self.idle())

    def stopService(self) -> defer.Deferred[None]:
        """Stop: waiting retries are given up, requests in flight finish."""
        Service.stopService(self)
        for d in list(self.pending):
            d.cancel()
        return self.idle()


__all__ = ["Learner", "kindOf", "readMessage"]
