"""The durable outbound queue's scheduler: attempts, retries, bounces and delay warnings.

The spool it keeps (files on disk, JSON envelopes) is L{pymaild.smtp.queuespool}; the
``pymaild-admin queue`` commands are L{pymaild.smtp.queueadmin}. L{Queue.enqueue} fires
only once the envelope is in the spool's ``env/``.

The scheduler (L{Queue.service}) ticks every ``relay.queue_tick`` seconds on the injected
clock. Each due message is attempted once at a time: its due recipients are grouped by
domain, one connection per domain (L{pymaild.smtp.relay.Relay}), at most
``relay.concurrency`` at once; recipients in our own domains go to ``localDelivery``.
A temporary failure is retried after ``backoff_min`` seconds, doubling up to
``backoff_max``, until the message is ``max_queue_life`` seconds old; then, or at once on
a permanent failure, the sender gets an RFC 3464 bounce (L{pymaild.smtp.dsn}), queued
here from the null sender. Mail from the null sender is never bounced. A sender whose
mail is still waiting after ``delay_warning`` seconds gets one delay warning.

All disk work runs through the Runner; nothing blocks the reactor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.python.failure import Failure

from pymaild.address import normaliseDomain
from pymaild.config import Config, RelayConfig
from pymaild.errors import AddressError, ConfigError, NoSuchUser, StoreFull
from pymaild.smtp import dsn
from pymaild.smtp.esmtpclient import DELIVERED, LOCAL, PERMANENT, TEMPORARY, Message, Outcome
from pymaild.smtp.queuespool import (
    FAILED,
    HELD,
    PENDING,
    QUEUE_ID,
    Envelope,
    LocalDelivery,
    RecipientState,
    Spool,
    checkAddress,
    newQueueId,
)
from pymaild.smtp.relay import Relay
from pymaild.threads import Runner

log = Logger()


def backoff(config: RelayConfig, attempts: int) -> float:
    """Seconds to wait after the C{attempts}-th failed attempt: C{backoff_min} doubling
    up to C{backoff_max}."""
    exponent = min(max(attempts - 1, 0), 32)
    return float(min(config.backoff_min * (2**exponent), max(config.backoff_max,
                                                               config.backoff_min)))


#: The metrics' name for a relay outcome kind.
_RESULTS = {DELIVERED: "delivered", PERMANENT: "failed", TEMPORARY: "deferred"}


class RouteDeferred(Exception):
    """Raised by a queue's router: the recipient's mail must wait (its mailbox is being
    moved between nodes); a temporary outcome, retried with the usual backoff."""


class Queue:
    """The outbound queue: durable spool plus a scheduler that delivers and bounces.

    @param path: the queue directory (C{<data>/queue}).
    @param runner: runs the blocking disk work.
    @param clock: an C{IReactorTime} for the schedule (the reactor, or a task.Clock in
        tests); queue times (arrival, next try) are C{clock.seconds()}.
    @param config: the whole L{Config} (its C{relay} section and local C{domains} are
        used), or just a L{RelayConfig} (then no domain is local).
    @param hostname: our name (EHLO, Reporting-MTA, MAILER-DAEMON@).
    @param localDelivery: C{localDelivery(recipient, data) -> Deferred}: delivers into
        a local mailbox; used for recipients in our domains, notably bounces to local
        senders. Failing with L{NoSuchUser} is permanent; anything else is retried.
    @param reactor: for outbound connections and DNS (default: C{clock} when it is a
        reactor, else the global reactor).
    @param relay: the delivery agent (default: a L{Relay} over C{config.relay}).
    @param metrics: a L{pymaild.metrics.Metrics} told of every recipient's delivery
        result and every notice (None: not counted).
    @param router: C{router(address) -> (ip, lmtpPort) | None} (blocking, run in the
        runner): for a recipient in our domains whose mailbox another node of a cluster
        owns, that node's LMTP listener; the queue delivers there over LMTP (retried
        with the usual backoff while the node is down). C{None}: every local recipient
        is delivered here.
    """

    def __init__(
        self,
        path: str,
        runner: Runner,
        clock: Any,
        config: Config | RelayConfig,
        hostname: str,
        localDelivery: LocalDelivery,
        reactor: Any = None,
        relay: Any = None,
        metrics: Any = None,
        router: Callable[[str], tuple[str, int] | None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.router = router
        if isinstance(config, RelayConfig):
            self.config = config
            domains: Iterable[str] = ()
        else:
            self.config = config.relay
            domains = config.domains
        if self.config.concurrency < 1:
            raise ConfigError("relay.concurrency: must be at least 1")
        if self.config.queue_tick < 1:
            raise ConfigError("relay.queue_tick: must be at least 1")
        if self.config.backoff_min < 1:
            raise ConfigError("relay.backoff_min: must be at least 1 second")
        self.localDomains = frozenset(domains)
        self.path = path
        self.spool = Spool(path)
        self.runner = runner
        self.clock = clock
        self.hostname = hostname
        self.localDelivery = localDelivery
        if reactor is None:
            if IReactorTCP.providedBy(clock):
                reactor = clock
            else:
                from twisted.internet import reactor as globalReactor

                reactor = globalReactor
        self.relay = relay if relay is not None else Relay(self.config, hostname, reactor, runner)
        self.service = QueueService(self)
        self.running = False
        self._envelopes: dict[str, Envelope] = {}
        self._active: set[str] = set()
        self._locks: dict[str, defer.DeferredLock] = {}
        self._tasks: set[defer.Deferred[Any]] = set()
        self._semaphore = defer.DeferredSemaphore(self.config.concurrency)
        self._kickPending = False
        self._loop: task.LoopingCall | None = None
        #: In a worker process: C{handOff(qid)} tells the master's queue, which
        #: delivers; this queue only stores (its scheduler does not run).
        self.handOff: Callable[[str], Any] | None = None
        #: In a master with workers: each tick also looks for envelopes a worker
        #: queued whose notice was lost.
        self.scanSpool = False

    def stats(self) -> tuple[int, float | None]:
        """C{(messages in the queue, arrival time of the oldest or None)}."""
        envelopes = list(self._envelopes.values())
        if not envelopes:
            return 0, None
        return len(envelopes), min(e.arrival for e in envelopes)

    # -- enqueue -------------------------------------------------------------------------

    def enqueue(
        self, sender: str, recipients: list[str], data: bytes | BinaryIO,
        qid: str | None = None,
    ) -> defer.Deferred[str]:
        """Queue a message; fires with its queue id once message, envelope and
        directories are fsynced.

        C{sender} C{""} is the null sender (bounces are never sent for it). C{data} is
        the complete message with CRLF line ends (a file is read from its start).
        C{qid} is the id to file it under (the SMTP transaction's id, from
        L{newQueueId}, so the 250 reply, the Received header and every log line name
        the queue file); by default a new one.

        @raise AddressError: (as a failed Deferred) an address would break SMTP.
        @raise ValueError: (as a failed Deferred) C{qid} is not a queue id.
        @raise FileExistsError: (as a failed Deferred) C{qid} is already queued.
        @raise StoreFull: (as a failed Deferred) the disk is full.
        """
        try:
            sender = checkAddress(sender, nullAllowed=True)
            rcpts = list(dict.fromkeys(checkAddress(r) for r in recipients))
            if not rcpts:
                raise AddressError("no recipients")
            if qid is not None and not QUEUE_ID.match(qid):
                raise ValueError(f"not a queue id: {qid!r}")
        except (AddressError, ValueError):
            return defer.fail()
        now = self.clock.seconds()
        env = Envelope(
            id=qid if qid is not None else newQueueId(now),
            sender=sender,
            arrival=now,
            recipients=[RecipientState(address=r, nextTry=now) for r in rcpts],
        )
        d = self.runner.run(self.spool.store, env, data)

        def stored(env: Envelope) -> str:
            log.info("queue {qid}: from=<{sender}> size={size} nrcpt={n}",
                     qid=env.id, sender=env.sender, size=env.size, n=len(env.recipients))
            if self.handOff is not None:
                self.handOff(env.id)
                return env.id
            self._envelopes[env.id] = env
            self._kick()
            return env.id

        return d.addCallback(stored)

    def takeUp(self, qid: str) -> defer.Deferred[bool]:
        """Deliver message C{qid}, queued durably by another process (a worker), now;
        fires with whether it was found."""
        if qid in self._envelopes or not QUEUE_ID.match(qid):
            return defer.succeed(qid in self._envelopes)

        def read(env: Envelope | None) -> bool:
            if env is None:
                return False
            if env.id not in self._envelopes:
                self._envelopes[env.id] = env
                self._kick()
            return True

        found: defer.Deferred[bool] = defer.Deferred()

        def answer(result: Any) -> Any:
            if isinstance(result, Failure):
                found.errback(result)
                return None  # reported once, to the caller
            found.callback(result)
            return result

        self._track(self.runner.run(self.spool.read, qid).addCallback(read).addBoth(answer))
        return found

    async def _scan(self) -> None:
        """Take up the envelopes in the spool the scheduler does not know (a worker's
        notice that was lost)."""
        ids = await self.runner.run(self.spool.ids)
        found = 0
        for qid in ids:
            if qid in self._envelopes:
                continue
            try:
                env = await self.runner.run(self.spool.read, qid)
            except (ValueError, UnicodeError):
                continue  # unreadable: the next start quarantines it
            if env is not None and env.id not in self._envelopes:
                self._envelopes[env.id] = env
                found += 1
        if found:
            log.info("queue: {n} message(s) found in the spool by the scan", n=found)

    # -- scheduling ----------------------------------------------------------------------

    def queued(self) -> dict[str, Envelope]:
        """The envelopes the scheduler knows, by id (a snapshot, for tests and tools)."""
        return dict(self._envelopes)

    @property
    def busy(self) -> bool:
        """Whether an attempt or bounce is in progress, or a run is about to start."""
        return bool(self._tasks) or self._kickPending

    def _kick(self) -> None:
        """Run what is due soon (on the next clock turn), when the scheduler runs."""
        if not self.running or self._kickPending:
            return
        self._kickPending = True

        def go() -> None:
            self._kickPending = False
            self.runDue()

        self.clock.callLater(0, go)

    def _track(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Count C{d} as work in progress until it fires (see L{whenIdle})."""
        self._tasks.add(d)

        def done(result: Any) -> None:
            self._tasks.discard(d)
            if isinstance(result, Failure):
                log.failure("queue task failed", result)

        d.addBoth(done)
        return d

    def whenIdle(self) -> defer.Deferred[None]:
        """Fires when no attempt or bounce is in progress (a run scheduled on the clock
        but not started yet does not count; see L{busy})."""

        async def idle() -> None:
            while self._tasks:
                await defer.DeferredList(list(self._tasks), consumeErrors=True)

        return defer.Deferred.fromCoroutine(idle())

    def runDue(self) -> defer.Deferred[None]:
        """Start an attempt for every message with a recipient due now; the Deferred
        fires when those attempts are finished and recorded."""
        if not self.running:
            return defer.succeed(None)
        now = self.clock.seconds()
        started = []
        for qid, env in list(self._envelopes.items()):
            if qid in self._active or not env.due(now):
                continue
            self._active.add(qid)
            started.append(self._track(defer.Deferred.fromCoroutine(self._attempt(qid))))
        return defer.DeferredList(started, consumeErrors=True).addCallback(lambda _: None)

    def _lock(self, qid: str) -> defer.DeferredLock:
        """The per-message lock that orders recording, bouncing and removal."""
        if qid not in self._locks:
            self._locks[qid] = defer.DeferredLock()
        return self._locks[qid]

    def _isLocal(self, address: str) -> bool:
        """Whether C{address} is in one of our own domains."""
        domain = address.rpartition("@")[2]
        try:
            return normaliseDomain(domain) in self.localDomains
        except AddressError:
            return False

    async def _attempt(self, qid: str) -> None:
        """One delivery attempt for the due recipients of one message."""
        try:
            env = await self.runner.run(self.spool.read, qid)
            if env is None:
                self._forget(qid)
                return
            self._envelopes[qid] = env
            due = env.due(self.clock.seconds())
            if not due:
                return
            local = [r.address for r in due if self._isLocal(r.address)]
            owners: dict[tuple[str, int], list[str]] = {}
            waiting: list[str] = []
            if local and self.router is not None:
                routes = await self.runner.run(self._routes, local)
                for rcpt, route in zip(local, routes, strict=True):
                    if isinstance(route, RouteDeferred):
                        waiting.append(rcpt)
                    elif route is not None:
                        owners.setdefault(route, []).append(rcpt)
            if waiting:
                await self._record(env.id, [
                    Outcome(r, TEMPORARY, "4.2.1", "mailbox being moved", LOCAL)
                    for r in waiting])
            elsewhere = {r for rcpts in owners.values() for r in rcpts} | set(waiting)
            byDomain: dict[str, list[str]] = {}
            for r in due:
                if r.address not in local:
                    domain = r.address.rpartition("@")[2].lower()
                    byDomain.setdefault(domain, []).append(r.address)
            message = Message(self.spool.messagePath(qid), env.size, env.eightBit)
            jobs = [
                defer.Deferred.fromCoroutine(self._remoteJob(env, domain, rcpts, message))
                for domain, rcpts in byDomain.items()
            ]
            jobs += [
                defer.Deferred.fromCoroutine(self._ownerJob(env, route, rcpts, message))
                for route, rcpts in owners.items()
            ]
            here = [r for r in local if r not in elsewhere]
            if here:
                jobs.append(defer.Deferred.fromCoroutine(self._localJob(env, here)))
            results = await defer.DeferredList(jobs, consumeErrors=True)
            for ok, value in results:
                if not ok:
                    log.failure("queue {qid}: delivery job failed", value, qid=qid)
            await self._notify(qid)
        finally:
            self._active.discard(qid)

    async def _remoteJob(
        self, env: Envelope, domain: str, rcpts: list[str], message: Message
    ) -> None:
        """Deliver to one remote domain (waiting for a free connection slot)."""
        await self._semaphore.acquire()
        try:
            if not self.running:
                return
            outcomes = await self.relay.deliver(env.sender, rcpts, domain, message)
        finally:
            self._semaphore.release()
        await self._record(env.id, outcomes)

    def _routes(self, addresses: list[str]) -> list[Any]:
        """Each address's route (blocking): C{(ip, port)}, None, or L{RouteDeferred}."""
        assert self.router is not None
        out: list[Any] = []
        for address in addresses:
            try:
                out.append(self.router(address))
            except RouteDeferred as e:
                out.append(e)
        return out

    async def _ownerJob(self, env: Envelope, route: tuple[str, int], rcpts: list[str],
                        message: Message) -> None:
        """Deliver to the node that owns C{rcpts}' mailboxes, over LMTP."""
        await self._semaphore.acquire()
        try:
            if not self.running:
                return
            outcomes = await self.relay.deliverLMTP(env.sender, rcpts, route[0], route[1],
                                                    message)
        finally:
            self._semaphore.release()
        await self._record(env.id, outcomes)

    async def _localJob(self, env: Envelope, rcpts: list[str]) -> None:
        """Deliver to recipients in our own domains through C{localDelivery}."""
        try:
            data = await self.runner.run(self.spool.readMessage, env.id)
        except FileNotFoundError:
            return
        outcomes = []
        for rcpt in rcpts:
            try:
                await self.localDelivery(rcpt, data)
            except NoSuchUser as e:
                outcomes.append(Outcome(rcpt, PERMANENT, "5.1.1",
                                        f"user unknown: {e}", LOCAL))
            except AddressError as e:
                outcomes.append(Outcome(rcpt, PERMANENT, "5.1.3",
                                        f"bad destination mailbox address: {e}", LOCAL))
            except StoreFull as e:
                outcomes.append(Outcome(rcpt, TEMPORARY, "4.2.2", f"mailbox full: {e}", LOCAL))
            except Exception as e:  # noqa: BLE001 - every other failure is retried
                log.warn("queue {qid}: local delivery to {rcpt} failed, will retry: {error!r}",
                         qid=env.id, rcpt=rcpt, error=e)
                outcomes.append(Outcome(rcpt, TEMPORARY, "4.3.0",
                                        f"local delivery failed: {e}", LOCAL))
            else:
                outcomes.append(Outcome(rcpt, DELIVERED, "2.0.0", "delivered to mailbox", LOCAL))
        await self._record(env.id, outcomes)

    def _forget(self, qid: str) -> None:
        """Drop a message that left the queue from memory."""
        self._envelopes.pop(qid, None)
        self._locks.pop(qid, None)

    async def _record(self, qid: str, outcomes: list[Outcome]) -> None:
        """Write the outcomes of an attempt into the envelope (under the locks)."""
        now = self.clock.seconds()
        config = self.config

        def apply(env: Envelope) -> None:
            for o in outcomes:
                r = env.recipient(o.recipient)
                if r is None or r.state not in (PENDING, HELD):
                    continue
                r.attempts += 1
                r.lastAttempt = now
                r.status, r.reply = o.status, o.reply
                r.diagnosticType, r.remoteMta = o.diagnosticType, o.remoteMta
                if o.kind == DELIVERED:
                    r.state = DELIVERED
                elif o.kind == PERMANENT:
                    r.state = FAILED
                elif now - env.arrival >= config.max_queue_life:
                    r.state = FAILED
                    r.status = "4.4.7"
                    r.reply = f"message expired in the queue; last error: {o.reply}"
                    r.diagnosticType = o.diagnosticType
                else:
                    r.nextTry = now + backoff(config, r.attempts)

        for o in outcomes:
            log.info("queue {qid}: to=<{rcpt}> {kind} status={status} relay={relay} {reply}",
                     qid=qid, rcpt=o.recipient, kind=o.kind, status=o.status,
                     relay=o.remoteMta or "local", reply=o.reply)
            if self.metrics is not None:
                self.metrics.relayResult(_RESULTS.get(o.kind, "deferred"))
        async with _locked(self._lock(qid)):
            env = await self.runner.run(self.spool.update, qid, apply)
            if env is None:
                self._forget(qid)
            else:
                self._envelopes[qid] = env

    async def _notify(self, qid: str) -> None:
        """Queue the bounce and delay warning now due for C{qid}; remove it when done."""
        async with _locked(self._lock(qid)):
            env = await self.runner.run(self.spool.read, qid)
            if env is None:
                self._forget(qid)
                return
            self._envelopes[qid] = env
            now = self.clock.seconds()
            failed = [r for r in env.recipients if r.state == FAILED and not r.notified]
            if failed:
                if env.sender:
                    await self._sendNotice(env, failed, dsn.FAILED, now)
                else:
                    log.info("queue {qid}: not bouncing mail from the null sender", qid=qid)
                addresses = {r.address for r in failed}
                env = await self._mark(qid, addresses, "notified")
                if env is None:
                    return
            warning = self.config.delay_warning
            if warning and env.sender and now - env.arrival >= warning:
                late = [
                    r for r in env.recipients
                    if r.state in (PENDING, HELD) and not r.delayWarned and r.attempts > 0
                ]
                if late:
                    await self._sendNotice(env, late, dsn.DELAYED, now)
                    env = await self._mark(qid, {r.address for r in late}, "delayWarned")
                    if env is None:
                        return
            if env.finished():
                await self.runner.run(self.spool.remove, qid)
                log.info("queue {qid}: removed (done)", qid=qid)
                self._forget(qid)

    async def _mark(self, qid: str, addresses: set[str], flag: str) -> Envelope | None:
        """Set the boolean C{flag} on the named recipients, on disk and in memory."""

        def apply(env: Envelope) -> None:
            for r in env.recipients:
                if r.address in addresses:
                    setattr(r, flag, True)

        env = await self.runner.run(self.spool.update, qid, apply)
        if env is None:
            self._forget(qid)
        else:
            self._envelopes[qid] = env
        return env

    async def _sendNotice(
        self, env: Envelope, rcpts: list[RecipientState], action: str, now: float
    ) -> None:
        """Build a DSN about C{rcpts} and queue it from the null sender to the sender."""
        headers = await self.runner.run(self.spool.readHeaders, env.id)
        until = env.arrival + self.config.max_queue_life
        reports = [
            dsn.RecipientReport(
                address=r.address,
                action=action,
                status=r.status or ("5.0.0" if action == dsn.FAILED else "4.0.0"),
                diagnostic=r.reply,
                diagnosticType=r.diagnosticType or LOCAL,
                remoteMta=r.remoteMta,
                lastAttempt=r.lastAttempt or None,
                willRetryUntil=until if action == dsn.DELAYED else None,
            )
            for r in rcpts
        ]
        message = dsn.buildDSN(
            reportingMTA=self.hostname,
            sender=env.sender,
            recipients=reports,
            headers=headers,
            arrival=env.arrival,
            now=now,
            queueId=env.id,
        )
        noticeId = await self.enqueue("", [env.sender], message)
        if self.metrics is not None:
            self.metrics.noticeQueued(action)
        log.info("queue {qid}: {action} notice {notice} queued for <{sender}>",
                 qid=env.id, action=action, notice=noticeId, sender=env.sender)

    # -- service -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the spool (quarantining orphans), finish interrupted bounces, and start
        ticking."""
        envelopes, problems = await self.runner.run(self.spool.loadAll, True)
        for p in problems:
            log.warn("queue: {problem}", problem=p)
        self._envelopes = {**{e.id: e for e in envelopes}, **self._envelopes}
        self.running = True
        log.info("queue: {n} message(s) loaded from {path}", n=len(envelopes), path=self.path)
        for env in envelopes:
            if env.finished() or any(r.state == FAILED and not r.notified
                                     for r in env.recipients):
                self._track(defer.Deferred.fromCoroutine(self._notify(env.id)))
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.config.queue_tick, now=True).addErrback(
            lambda f: log.failure("queue ticker stopped", f)
        )

    def _tick(self) -> defer.Deferred[None]:
        """Notice the flush trigger (then re-read the spool), and run what is due."""
        d = defer.Deferred.fromCoroutine(self._checkFlush())
        if self.scanSpool:
            d.addCallback(lambda _: defer.Deferred.fromCoroutine(self._scan()))
        d.addErrback(lambda f: log.failure("queue tick failed", f))

        def run(_: object) -> None:
            self.runDue()

        d.addCallback(run)
        self._track(d)
        return d

    async def _checkFlush(self) -> None:
        """When C{pymaild-admin queue} touched C{flush}: reload every envelope."""
        if not await self.runner.run(self.spool.takeFlush):
            return
        envelopes, problems = await self.runner.run(self.spool.loadAll, False)
        for p in problems:
            log.warn("queue: {problem}", problem=p)
        loaded = {e.id: e for e in envelopes}
        # Keep what was queued while the spool was being read; a message deleted by
        # the admin command is dropped when its next attempt finds it gone.
        self._envelopes = {**self._envelopes, **loaded}
        log.info("queue: flush requested, {n} message(s) reloaded", n=len(envelopes))

    async def stop(self) -> None:
        """Stop ticking, interrupt deliveries in progress and wait until recorded."""
        self.running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.relay.stop()
        await self.whenIdle()


@contextlib.asynccontextmanager
async def _locked(lock: defer.DeferredLock) -> Any:
    """Hold a DeferredLock inside an C{async with}."""
    await lock.acquire()
    try:
        yield
    finally:
        lock.release()


class QueueService(Service):
    """Starts and stops the queue's scheduler with the application.

    The spool is loaded on the first turn of the clock after C{startService} (so no
    disk work is queued before the reactor runs).
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._call: Any = None
        self._starting: defer.Deferred[None] | None = None
        self._started = False
        self._waiters: list[defer.Deferred[None]] = []

    def startService(self) -> None:
        """Arrange for the spool to be loaded and the scheduler started."""
        Service.startService(self)
        self._call = self.queue.clock.callLater(0, self._begin)

    def _begin(self) -> None:
        """Load the spool and start ticking."""
        self._call = None
        self._starting = defer.Deferred.fromCoroutine(self.queue.start())
        self._starting.addErrback(lambda f: log.failure("queue failed to start", f))
        self._starting.addCallback(self._ready)

    def _ready(self, _: object) -> None:
        """The scheduler runs: wake up L{whenStarted} callers."""
        self._started = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def whenStarted(self) -> defer.Deferred[None]:
        """Fires once the spool is loaded and the scheduler ticks."""
        if self._started:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        """Stop the scheduler; the Deferred fires when deliveries in progress ended."""
        Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None
            return defer.succeed(None)
        starting = self._starting

        async def stop() -> None:
            if starting is not None and not self._started:
                await self.whenStarted()
            await self.queue.stop()

        return defer.Deferred.fromCoroutine(stop())
