"""The log an admin reads: one line per listener, and nothing for routine socket work.

Twisted logs a line whenever a port starts or stops listening and whenever a factory or
datagram protocol starts or stops: four lines per listener at start, and three per DNS
query (twisted.names binds a fresh UDP port for each query, as RFC 5452 advises). None
of them says anything an admin acts on, and under load they bury what does. pymaild
logs its own line per listener (``imap on 127.0.0.1:2143``), so these are dropped.

The filter wraps the observer twistd would use itself (``--logfile``, ``--syslog``,
stdout with ``-n``), installed as the application's ``ILogObserver`` component: the
hook twistd reads for an application's log observer (an admin's ``--logger`` factory
still takes precedence and gets every line).
Building twistd's own observer needs its logger's ``_getLogObserver``: the one place
pymaild reaches into twistd's internals for logging.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    PredicateResult,
    formatEvent,
)

ROUTINE = re.compile(
    r"(?:.+ starting on \d+"
    r"|\(UDP Port \d+ Closed\)"
    r"|(?:Starting|Stopping) (?:factory|protocol) <.*"
    r"|Anvil(?:Server|Client) connection (?:established|lost) \(HOST:.*)\Z",
    re.S,
)


def isRoutine(event: Mapping[str, Any]) -> bool:
    """True for Twisted's routine lines about ports, factories and datagram protocols."""
    if event.get("log_level", LogLevel.info) not in (LogLevel.info, LogLevel.debug):
        return False
    if event.get("log_failure") is not None or event.get("isError"):
        return False
    try:
        text = formatEvent(dict(event))
    except Exception:  # noqa: BLE001 - an unformattable event is not ours to drop
        return False
    return ROUTINE.match(text) is not None


def _predicate(event: Any) -> PredicateResult:
    """The filter's verdict on one event."""
    return PredicateResult.no if isRoutine(event) else PredicateResult.maybe


def quiet(observer: Any) -> FilteringLogObserver:
    """C{observer} without the routine lines."""
    return FilteringLogObserver(observer, [cast(ILogFilterPredicate, _predicate)])


def twistdObserver(twistdOptions: Mapping[str, Any]) -> Any:
    """The observer twistd would build from its own options (a new-style observer)."""
    from twisted.scripts.twistd import _SomeApplicationRunner

    observer = _SomeApplicationRunner.loggerFactory(twistdOptions)._getLogObserver()
    if ILogObserver.providedBy(observer):
        return observer
    return LegacyLogObserverWrapper(observer)


def jsonObserver(twistdOptions: Mapping[str, Any]) -> Any | None:
    """A JSON-lines observer writing where twistd would write text: C{--logfile} (with
    twistd's daily-size rotation, C{twisted.python.logfile.LogFile}) or standard output;
    None with C{--syslog} (syslog takes text only)."""
    from twisted.logger import jsonFileLogObserver
    from twisted.python.logfile import LogFile

    if twistdOptions.get("syslog"):
        return None
    path = twistdOptions.get("logfile")
    if path and path != "-":
        out: Any = LogFile.fromFullPath(path, rotateLength=1_000_000,
                                        maxRotatedFiles=None)
    else:
        import sys

        out = sys.stdout
    return jsonFileLogObserver(out, recordSeparator="")


def installOn(application: Any, twistdOptions: Mapping[str, Any] | None,
              format: str = "text") -> None:
    """Give a twistd application the filtered log observer (once; nothing outside twistd).

    @param format: C{"text"} (twistd's own lines) or C{"json"} (one JSON object per
        line, twisted.logger's event serialisation, for log shippers).
    """
    if twistdOptions is None or not hasattr(application, "setComponent"):
        return
    if application.getComponent(ILogObserver, None) is not None:
        return
    observer = jsonObserver(twistdOptions) if format == "json" else None
    if observer is None:
        observer = twistdObserver(twistdOptions)
    application.setComponent(ILogObserver, quiet(observer))
