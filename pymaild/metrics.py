"""The server's Prometheus metrics: one L{Metrics} object the tap builds and passes on.

Every room that has something to count is given the same L{Metrics} (or makes a private
one when none is given, as unit tests do) and calls its methods; nothing is global, so
two servers in one process (tests) keep separate counts. The metrics listener
(C{listen.metrics}, loopback by default) serves C{/metrics} in Prometheus' text format
through prometheus_client's twisted.web resource, rendered in the reactor (collecting is
reading counters: microseconds).

What is counted, by name (all prefixed C{pymaild_}):

- connections: C{connections_total}, C{connections_refused_total} and
  C{sessions_open} per listener; C{tls_sessions_total} per listener and TLS version
  (counted when a session that used TLS ends);
- logins: C{logins_total} per protocol and result (C{success}, C{failure},
  C{abandoned}), C{login_answers_delayed_total} (answers the auth penalty held back);
- mail: C{messages_received_total} per role (a 250 after DATA),
  C{messages_refused_total} per role and reply code, C{delivery_seconds} per role
  (from the end of DATA to the 250: checks, fsyncs, queueing), C{copies_delivered_total}
  (local copies, from SMTP or from the queue), C{messages_queued_total};
- the queue: C{relay_results_total} per result (C{delivered}, C{deferred},
  C{failed}, one per recipient and attempt), C{notices_total} per kind (bounces and
  delay warnings), and, read when scraped, C{queue_messages} and
  C{queue_oldest_age_seconds};
- IMAP: C{imap_command_seconds} per command (from the command line to its tagged
  answer);
- threads: C{threadpool_busy} and C{threadpool_waiting} per pool, read when scraped;
- the spam filter: C{spam_events_total} per event (rspamd's action taken, C{junked},
  C{unchecked}, C{opted out}, C{learned spam}, C{learned ham}, failed learns...), read
  when scraped from the filter's L{pymaild.spam.counters.SpamCounters}.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: IMAP commands get their own label value; anything else is counted as C{other} (a
#: client cannot grow the label set).
IMAP_COMMANDS = frozenset({
    "APPEND", "AUTHENTICATE", "CAPABILITY", "CHECK", "CLOSE", "COPY", "CREATE", "DELETE",
    "ENABLE", "EXAMINE", "EXPUNGE", "FETCH", "ID", "IDLE", "LIST", "LOGIN", "LOGOUT",
    "LSUB", "MOVE", "NAMESPACE", "NOOP", "RENAME", "SEARCH", "SELECT", "STARTTLS",
    "STATUS", "STORE", "SUBSCRIBE", "UID", "UNSELECT", "UNSUBSCRIBE", "UID FETCH",
    "UID SEARCH", "UID STORE", "UID COPY", "UID MOVE", "UID EXPUNGE",
})
LOGIN_RESULTS = ("success", "failure", "abandoned")
RELAY_RESULTS = ("delivered", "deferred", "failed")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0)


class _ReadOnScrape(Collector):
    """Gauges computed when scraped, from callables registered by the tap."""

    def __init__(self) -> None:
        self.queues: list[Callable[[], tuple[int, float | None]]] = []
        self.pools: dict[str, tuple[Any, Callable[[], int] | None]] = {}
        self.clock: Callable[[], float] = time.time
        self.spam: list[Callable[[], dict[str, int]]] = []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Yield the queue and thread-pool gauges and the spam counts as they are now."""
        if self.spam:
            events = CounterMetricFamily("pymaild_spam_events",
                                         "What the spam filter did, by event",
                                         labels=["event"])
            totals: dict[str, int] = {}
            for counts in self.spam:
                for name, n in counts().items():
                    totals[name] = totals.get(name, 0) + n
            for name, n in sorted(totals.items()):
                events.add_metric([name], n)
            yield events
        if self.queues:
            size = GaugeMetricFamily("pymaild_queue_messages",
                                     "Messages in the outbound queue")
            age = GaugeMetricFamily("pymaild_queue_oldest_age_seconds",
                                    "Age of the oldest message in the outbound queue "
                                    "(0 when empty)")
            count = 0
            oldest: float | None = None
            for stats in self.queues:
                n, arrival = stats()
                count += n
                if arrival is not None:
                    oldest = arrival if oldest is None else min(oldest, arrival)
            size.add_metric([], count)
            age.add_metric([], 0.0 if oldest is None else max(0.0, self.clock() - oldest))
            yield size
            yield age
        if self.pools:
            busy = GaugeMetricFamily("pymaild_threadpool_busy",
                                     "Threads of a pool running work now", labels=["pool"])
            waiting = GaugeMetricFamily("pymaild_threadpool_waiting",
                                        "Work waiting for a thread of a pool",
                                        labels=["pool"])
            for name, (pool, more) in sorted(self.pools.items()):
                busy.add_metric([name], len(pool.working))
                waiting.add_metric([name], pool.q.qsize() + (more() if more else 0))
            yield busy
            yield waiting


class Metrics:
    """Every counter of one server, in a registry of its own.

    @ivar registry: the C{CollectorRegistry} the metrics listener serves.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._connections = Counter("pymaild_connections", "Connections accepted",
                                    ["listener"], registry=r)
        self._refused = Counter("pymaild_connections_refused",
                                "Connections refused by a connection cap", ["listener"],
                                registry=r)
        self._open = Gauge("pymaild_sessions_open", "Sessions open now", ["listener"],
                           registry=r)
        self._tls = Counter("pymaild_tls_sessions", "Sessions that used TLS, by version",
                            ["listener", "version"], registry=r)
        self._logins = Counter("pymaild_logins", "Login attempts by result",
                               ["protocol", "result"], registry=r)
        self._delayed = Counter("pymaild_login_answers_delayed",
                                "Login answers held back by the auth penalty",
                                ["protocol"], registry=r)
        self._received = Counter("pymaild_messages_received",
                                 "Messages accepted with 250 after DATA", ["role"],
                                 registry=r)
        self._refusedMessages = Counter("pymaild_messages_refused",
                                        "Messages refused after DATA", ["role", "code"],
                                        registry=r)
        self._deliverySeconds = Histogram(
            "pymaild_delivery_seconds", "From the end of DATA to the reply", ["role"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self._copies = Counter("pymaild_copies_delivered",
                               "Copies stored in local mailboxes", ["source"], registry=r)
        self._queued = Counter("pymaild_messages_queued",
                               "Messages put in the outbound queue", registry=r)
        self._relay = Counter("pymaild_relay_results",
                              "Outbound delivery results, one per recipient and attempt",
                              ["result"], registry=r)
        self._notices = Counter("pymaild_notices", "Bounces and delay warnings queued",
                                ["kind"], registry=r)
        self._imap = Histogram("pymaild_imap_command_seconds",
                               "From an IMAP command line to its tagged answer",
                               ["command"], buckets=_LATENCY_BUCKETS, registry=r)
        self._scrape = _ReadOnScrape()
        r.register(self._scrape)

    # -- connections --------------------------------------------------------------------

    def connectionOpened(self, listener: str) -> None:
        """A connection to C{listener} was admitted."""
        self._connections.labels(listener).inc()
        self._open.labels(listener).inc()

    def connectionClosed(self, listener: str, tlsVersion: str | None) -> None:
        """An admitted connection ended; C{tlsVersion} is what it used, if TLS."""
        self._open.labels(listener).dec()
        if tlsVersion:
            self._tls.labels(listener, tlsVersion).inc()

    def connectionRefused(self, listener: str) -> None:
        """A connection to C{listener} was refused by a cap."""
        self._refused.labels(listener).inc()

    # -- logins -------------------------------------------------------------------------

    def login(self, protocol: str, result: str, delayed: bool = False) -> None:
        """A login attempt over C{protocol} ended with C{result} (L{LOGIN_RESULTS});
        C{delayed}: its answer was held back by the penalty."""
        self._logins.labels(protocol, result).inc()
        if delayed:
            self._delayed.labels(protocol).inc()

    # -- mail ---------------------------------------------------------------------------

    def messageAccepted(self, role: str, seconds: float, copies: int, queued: bool) -> None:
        """A message got its 250: C{copies} local copies stored, and queued or not."""
        self._received.labels(role).inc()
        self._deliverySeconds.labels(role).observe(seconds)
        if copies:
            self._copies.labels("smtp").inc(copies)
        if queued:
            self._queued.inc()

    def messageRefused(self, role: str, code: int, seconds: float) -> None:
        """A message was refused after DATA with C{code}."""
        self._refusedMessages.labels(role, str(code)).inc()
        self._deliverySeconds.labels(role).observe(seconds)

    def queueDelivered(self, copies: int) -> None:
        """The queue stored C{copies} local copies (a bounce to a local sender, say)."""
        self._copies.labels("queue").inc(copies)

    def relayResult(self, result: str) -> None:
        """One recipient's delivery attempt from the queue ended (L{RELAY_RESULTS})."""
        self._relay.labels(result).inc()

    def noticeQueued(self, kind: str) -> None:
        """A bounce (C{failed}) or delay warning (C{delayed}) was queued."""
        self._notices.labels(kind).inc()
        self._queued.inc()

    # -- IMAP ---------------------------------------------------------------------------

    def imapCommand(self, command: str, seconds: float) -> None:
        """An IMAP command took C{seconds} to its tagged answer."""
        name = command.upper()
        self._imap.labels(name if name in IMAP_COMMANDS else "other").observe(seconds)

    # -- read when scraped --------------------------------------------------------------

    def watchQueue(self, stats: Callable[[], tuple[int, float | None]]) -> None:
        """Report C{stats() -> (messages, oldest arrival time or None)} when scraped."""
        self._scrape.queues.append(stats)

    def watchPool(self, name: str, pool: Any, pending: Callable[[], int] | None = None) -> None:
        """Report a Twisted C{ThreadPool}'s busy threads and waiting work when scraped;
        C{pending()} adds work waiting in front of the pool (a fair runner's backlog)."""
        self._scrape.pools[name] = (pool, pending)

    def watchSpam(self, counts: Callable[[], dict[str, int]]) -> None:
        """Report the spam filter's C{counts() -> {event: total}} when scraped."""
        self._scrape.spam.append(counts)

    def resource(self) -> Any:
        """The twisted.web resource that serves this registry (for C{/metrics})."""
        from prometheus_client.twisted import MetricsResource

        return MetricsResource(registry=self.registry)


def merged(own: CollectorRegistry, others: dict[str, bytes], label: str = "worker",
           ownValue: str = "0") -> bytes:
    """One text exposition of C{own}'s metrics and of C{others} (C{{label value:
    Prometheus text}}, the workers' own expositions), every sample labelled C{label}
    with the process it comes from (C{ownValue} for C{own}'s), each metric family once.
    """
    from prometheus_client.exposition import generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}

    def add(source: Iterable[Metric], value: str) -> None:
        for family in source:
            into = families.get(family.name)
            if into is None:
                into = families[family.name] = Metric(family.name, family.documentation,
                                                      family.type, family.unit)
            for sample in family.samples:
                into.samples.append(sample._replace(labels={**sample.labels, label: value}))

    add(own.collect(), ownValue)
    for value, text in sorted(others.items()):
        add(text_string_to_metric_families(text.decode("utf-8", "replace")), value)

    class _Families:
        def collect(self) -> Iterator[Metric]:
            return iter(families.values())

    return bytes(generate_latest(_Families()))  # type: ignore[arg-type]


__all__ = ["IMAP_COMMANDS", "LOGIN_RESULTS", "Metrics", "RELAY_RESULTS", "merged"]
