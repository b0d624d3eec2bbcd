"""A client for rspamd's HTTP protocol, on the reactor (twisted.web's C{Agent}).

rspamd's normal worker scans (C{POST /checkv2}: the message as the body, the envelope
in request headers built by L{pymaild.spam.check.requestHeaders}); its controller
learns (C{POST /learnspam}, C{/learnham}) and reports (C{GET /stat}, C{/actions},
C{/ping}). Connections are kept
alive in one pool; every request has a deadline, and a response body is read up to a
bound. Whatever goes wrong (refused or reset connection, the deadline, an HTTP error
status, a body that is not rspamd's JSON, a body too long) fails the Deferred with one
L{RspamdError} whose C{reason} says which, so the caller applies its policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

MAX_RESPONSE = 1024 * 1024
"""The longest response body read from rspamd (its scan results are a few kB)."""

ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")
"""rspamd's actions, from the mildest to the most severe."""

LEARN_KINDS = ("spam", "ham")


class RspamdError(Exception):
    """rspamd could not give an answer; C{reason} says why (for logs and counters).

    @ivar retry: whether trying again later may help (down, slow, HTTP 5xx) rather
        than not (a refusal of this very message).
    """

    def __init__(self, reason: str, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


@dataclass(frozen=True)
class ScanResult:
    """rspamd's verdict on one message.

    @ivar action: one of L{ACTIONS}.
    @ivar score: the message's score.
    @ivar required: the score of the reject action.
    @ivar message: rspamd's text for the SMTP reply (C{messages.smtp_message}), or "".
    @ivar subject: the rewritten subject (action C{rewrite subject}), or None.
    @ivar symbols: the names of the symbols that matched.
    @ivar skipped: rspamd stopped early (a forced action such as GTUBE's).
    """

    action: str
    score: float
    required: float
    message: str = ""
    subject: str | None = None
    symbols: tuple[str, ...] = ()
    skipped: bool = False

    @classmethod
    def fromJSON(cls, body: bytes) -> ScanResult:
        """Parse a C{/checkv2} reply.

        @raise RspamdError: it is not a JSON object with a known action and a score.
        """
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise RspamdError("reply is not JSON") from None
        if not isinstance(data, dict):
            raise RspamdError("reply is not a JSON object")
        action, score = data.get("action"), data.get("score")
        if action not in ACTIONS:
            raise RspamdError(f"reply has an unknown action {str(action)[:40]!r}")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise RspamdError("reply has no score")
        required = data.get("required_score", 0.0)
        if isinstance(required, bool) or not isinstance(required, (int, float)):
            required = 0.0
        messages = data.get("messages")
        text = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
        subject = data.get("subject")
        symbols = data.get("symbols")
        names = tuple(sorted(symbols)) if isinstance(symbols, dict) else ()
        return cls(
            action=action, score=float(score), required=float(required),
            message=text if isinstance(text, str) else "",
            subject=subject if isinstance(subject, str) else None,
            symbols=names, skipped=data.get("is_skipped") is True,
        )


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory, written in one go (no cooperator rounds as
    C{FileBodyProducer} would take)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        """Write the whole body."""
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        """Nothing to pause: everything was written."""

    def resumeProducing(self) -> None:
        """Nothing to resume."""

    def stopProducing(self) -> None:
        """Nothing to stop."""


@dataclass
class _Collected:
    """What L{_BoundedBody} read."""

    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class _BoundedBody(protocol.Protocol):
    """Collects a response body up to C{limit} bytes; more aborts the connection."""

    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.got = _Collected()
        self.tooLong = False

    def dataReceived(self, data: bytes) -> None:
        """Keep C{data}, or give up when the body grows past the limit."""
        if self.tooLong:
            return
        self.got.size += len(data)
        if self.got.size > self.limit:
            self.tooLong = True
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.got.parts.append(data)

    def abort(self) -> None:
        """Stop reading (the request was cancelled): the connection is closed."""
        self.tooLong = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Fire C{finished} with the body, or with the reason it is incomplete."""
        if self.finished.called:
            return
        if self.tooLong:
            self.finished.errback(RspamdError(f"reply longer than {self.limit} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.got.parts))
        else:
            self.finished.errback(RspamdError(f"reply cut short: {reason.getErrorMessage()}"))


class RspamdClient:
    """Talks to one rspamd (a normal worker and a controller) over HTTP.

    @param reactor: the reactor (connections and deadlines).
    @param url: the normal worker, C{http://host:port}.
    @param controllerURL: the controller, C{http://host:port}.
    @param timeout: seconds a request may take, reply included.
    @param password: the controller's password (its C{Password} header), or "".
    @param maxResponse: the longest reply body read.
    """

    def __init__(self, reactor: Any, url: str, controllerURL: str, timeout: float,
                 password: str = "", maxResponse: int = MAX_RESPONSE) -> None:
        self.reactor = reactor
        self.url = url.rstrip("/")
        self.controllerURL = controllerURL.rstrip("/")
        self.timeout = timeout
        self.password = password
        self.maxResponse = maxResponse
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 8
        self.pool.retryAutomatically = False
        self.agent = Agent(reactor, pool=self.pool)

    def _request(self, method: bytes, url: str, headers: Mapping[str, Sequence[str]],
                 body: bytes | None) -> defer.Deferred[tuple[int, bytes, bytes]]:
        """Send one request; fire with (status, reason phrase, body)."""
        sent = Headers({k.encode(): [v.encode("utf-8") for v in vs] for k, vs in headers.items()})
        sent.setRawHeaders(b"User-Agent", [b"pymaild"])
        producer = cast(IBodyProducer, _BytesProducer(body)) if body is not None else None
        requested = self.agent.request(method, url.encode("ascii"), sent, producer)

        def got(response: Any) -> defer.Deferred[tuple[int, bytes, bytes]]:
            reader: list[_BoundedBody] = []
            finished: defer.Deferred[bytes] = defer.Deferred(lambda _: reader[0].abort())
            reader.append(_BoundedBody(finished, self.maxResponse))
            response.deliverBody(reader[0])
            return finished.addCallback(lambda data: (response.code, response.phrase, data))

        d = requested.addCallback(got)

        def failed(reason: Failure) -> Failure:
            if reason.check(RspamdError):
                return reason
            raise RspamdError(_describe(reason))

        def late(result: Any, timeout: float) -> Any:
            return Failure(RspamdError(f"no reply within {timeout:g} s"))

        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=late)
        return d.addErrback(failed)

    def check(self, message: bytes,
              headers: Mapping[str, Sequence[str]]) -> defer.Deferred[ScanResult]:
        """Scan C{message} (C{/checkv2}) with the envelope C{headers}; fire with the
        L{ScanResult}.

        @raise RspamdError: (in the Deferred) no usable answer.
        """
        d = self._request(b"POST", self.url + "/checkv2", headers, message)

        def parse(reply: tuple[int, bytes, bytes]) -> ScanResult:
            code, phrase, body = reply
            if code != 200:
                raise RspamdError(f"HTTP {code} {_text(phrase)}", retry=code >= 500)
            return ScanResult.fromJSON(body)

        return d.addCallback(parse)

    def learn(self, kind: str, message: bytes, owner: str = "") -> defer.Deferred[str]:
        """Teach rspamd that C{message} is C{kind} (C{"spam"} or C{"ham"}), for the
        mailbox of C{owner} (its C{Deliver-To}, for rspamd's per-user Bayes).

        Fires with C{"learned"}, or with rspamd's reason when it declines for good
        (already learned as that kind, too few words); fails with L{RspamdError}
        (C{retry} set when rspamd was unreachable or broken).
        """
        if kind not in LEARN_KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        headers = {"Password": [self.password]} if self.password else {}
        if owner:
            headers["Deliver-To"] = [owner]
        d = self._request(b"POST", f"{self.controllerURL}/learn{kind}", headers, message)

        def parse(reply: tuple[int, bytes, bytes]) -> str:
            code, phrase, body = reply
            if code == 200:
                return "learned"
            if code == 204 or (code == 404 and b"already learned" in phrase):
                return _text(phrase) or f"HTTP {code}"
            raise RspamdError(f"HTTP {code} {_text(phrase)}", retry=code >= 500)

        return d.addCallback(parse)

    def _getJSON(self, path: str) -> defer.Deferred[Any]:
        """GET a controller page and parse its JSON."""
        headers = {"Password": [self.password]} if self.password else {}
        d = self._request(b"GET", self.controllerURL + path, headers, None)

        def parse(reply: tuple[int, bytes, bytes]) -> Any:
            code, phrase, body = reply
            if code != 200:
                raise RspamdError(f"HTTP {code} {_text(phrase)}", retry=code >= 500)
            try:
                return json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise RspamdError("reply is not JSON") from None

        return d.addCallback(parse)

    def stat(self) -> defer.Deferred[dict[str, Any]]:
        """The controller's C{/stat}: version, scanned and learned counts, actions."""
        def check(data: Any) -> dict[str, Any]:
            if not isinstance(data, dict):
                raise RspamdError("/stat reply is not a JSON object")
            return data

        return self._getJSON("/stat").addCallback(check)

    def actions(self) -> defer.Deferred[dict[str, float]]:
        """The score thresholds of the actions that have one (controller C{/actions})."""
        def parse(data: Any) -> dict[str, float]:
            out: dict[str, float] = {}
            if not isinstance(data, list):
                raise RspamdError("/actions reply is not a JSON list")
            for item in data:
                if not isinstance(item, dict):
                    continue
                name, value = item.get("action"), item.get("value")
                if name in ACTIONS and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    out[name] = float(value)
            return out

        return self._getJSON("/actions").addCallback(parse)

    def close(self) -> defer.Deferred[None]:
        """Close the kept-alive connections."""
        return self.pool.closeCachedConnections()


class ClientService(Service):
    """Closes an L{RspamdClient}'s kept-alive connections when the server stops."""

    def __init__(self, client: RspamdClient) -> None:
        self.client = client

    def stopService(self) -> defer.Deferred[None]:
        """Close the connections."""
        Service.stopService(self)
        return self.client.close()


def readPassword(path: str) -> str:
    """The first line of the controller password file C{path} ("" for no path).

    @raise OSError: the file cannot be read.
    """
    if not path:
        return ""
    with open(path, encoding="utf-8") as f:
        return f.readline().strip()


def _text(phrase: bytes) -> str:
    """An HTTP reason phrase as text for a log line (bounded)."""
    return phrase.decode("utf-8", "replace")[:200]


def _describe(reason: Failure) -> str:
    """A short description of a connection failure (refused, reset, ...)."""
    value = reason.value
    inner = getattr(value, "reasons", None)
    if inner:
        return "; ".join(_describe(r) for r in inner)
    return f"{type(value).__name__}: {reason.getErrorMessage()}"[:300]


__all__ = ["ACTIONS", "ClientService", "RspamdClient", "RspamdError", "ScanResult",
           "readPassword"]
