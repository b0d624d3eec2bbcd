"""MTA-STS (RFC 8461) for outbound mail: which MX hosts a destination allows, with TLS.

For a destination domain, L{MTASTS.policy} looks up the C{_mta-sts} TXT record through
the server's asynchronous resolver (the tap gives the checks' L{DNSResolver} of
L{pymaild.mailauth.resolver}), and when it carries an C{id} other than the cached
policy's (or nothing valid is cached) fetches
C{https://mta-sts.DOMAIN/.well-known/mta-sts.txt}:

  - the address of C{mta-sts.DOMAIN} comes from the same resolver (never from
    C{/etc/hosts} or the system's resolver), the connection goes to that address;
  - the server's certificate must chain to the system trust store (or the configured CA
    file) and be valid for C{mta-sts.DOMAIN}; only C{200} is accepted (no redirects),
    with a C{text/plain} media type, at most L{MAX_POLICY_SIZE} bytes, within a
    deadline;
  - a policy that parses (L{parsePolicy}) is cached in memory and on disk, one JSON file
    per domain under the cache directory, for its C{max_age}: a restart keeps it.

When the TXT record is missing or the fetch fails, a cached policy still within its
max_age applies (§5.1); otherwise the domain has no policy. L{Policy.matches} applies
the C{mx:} patterns (§4.1). What the relay does with a policy is in
L{pymaild.smtp.relay}.

For our own domains, L{ownPolicy} makes the policy file the https listener serves and
L{policyId} the C{id} that C{pymaild-admin dns} prints for it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from pymaild.config import MTA_STS_MODES
from pymaild.threads import Runner
from pymaild.tls import verifyingClientContext

log = Logger()

ENFORCE, TESTING, NONE = MTA_STS_MODES
MODES = MTA_STS_MODES

MAX_POLICY_SIZE = 65536
"""Policy bodies longer than this are refused (RFC 8461 §3.3 lets senders limit them)."""
MAX_AGE_LIMIT = 31557600
"""The largest C{max_age} the RFC allows (about a year)."""
WELL_KNOWN = "/.well-known/mta-sts.txt"

_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


class PolicyError(Exception):
    """A policy could not be fetched or does not parse."""


@dataclass(frozen=True)
class Policy:
    """A domain's MTA-STS policy.

    @ivar domain: the destination domain (A-label, lower case).
    @ivar id: the C{id} of the TXT record it was fetched under.
    @ivar mode: L{ENFORCE}, L{TESTING} or L{NONE}.
    @ivar mx: the C{mx:} patterns (lower case).
    @ivar maxAge: seconds the policy may be cached.
    @ivar fetched: when it was fetched (POSIX time).
    """

    domain: str
    id: str
    mode: str
    mx: tuple[str, ...]
    maxAge: int
    fetched: float

    def fresh(self, now: float) -> bool:
        """Whether the policy is still within its max_age at C{now}."""
        return now < self.fetched + self.maxAge

    def matches(self, host: str) -> bool:
        """Whether MX host C{host} matches one of the C{mx:} patterns (RFC 8461 §4.1):
        a name equal to a pattern, or C{*.rest} standing for exactly one more label."""
        name = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                first, _, rest = name.partition(".")
                if first and rest == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False

    def lines(self) -> list[str]:
        """The policy as its lines (a TLS report's C{policy-string})."""
        return ["version: STSv1", f"mode: {self.mode}", *[f"mx: {m}" for m in self.mx],
                f"max_age: {self.maxAge}"]

    def describe(self) -> str:
        """C{"mode enforce, mx: a, b"} for logs and outcomes."""
        return f"mode {self.mode}, mx: {', '.join(self.mx) or '(none)'}"

    def toJSON(self) -> dict[str, Any]:
        """The cache file's content."""
        return {"domain": self.domain, "id": self.id, "mode": self.mode, "mx": list(self.mx),
                "max_age": self.maxAge, "fetched": self.fetched}

    @classmethod
    def fromJSON(cls, data: Any) -> Policy:
        """A policy from L{toJSON}'s output.

        @raise PolicyError: the data is not a cached policy.
        """
        try:
            policy = cls(str(data["domain"]), str(data["id"]), str(data["mode"]),
                         tuple(str(m) for m in data["mx"]), int(data["max_age"]),
                         float(data["fetched"]))
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"bad cache entry: {e}") from None
        if policy.mode not in MODES:
            raise PolicyError(f"bad cache entry: mode {policy.mode!r}")
        return policy


def parseRecord(text: bytes) -> str | None:
    """The C{id} of an C{_mta-sts} TXT record (RFC 8461 §3.1), or None when the record
    is not a valid C{v=STSv1} record."""
    try:
        value = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    fields = [f.strip() for f in value.split(";")]
    if not fields or fields[0].replace(" ", "") != "v=STSv1":
        return None
    found = None
    for field in fields[1:]:
        if not field:
            continue
        key, eq, val = field.partition("=")
        if not eq:
            return None
        if key.strip() == "id":
            found = val.strip()
    if found is None or not _ID.match(found):
        return None
    return found


def isSTSRecord(text: bytes) -> bool:
    """Whether a TXT record claims to be an MTA-STS record (starts with C{v=STSv1})."""
    return text.lstrip().startswith(b"v=STSv1")


def parsePolicy(body: bytes, domain: str, policyId: str, now: float) -> Policy:
    """A policy from the body of C{mta-sts.txt} (RFC 8461 §3.2).

    Lines end with CRLF or LF; each is C{key: value}; unknown keys are ignored.
    C{version: STSv1}, C{mode} and C{max_age} are required, and at least one C{mx}
    unless the mode is C{none}.

    @raise PolicyError: the body is not a valid policy (the reason says why).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("the policy is not UTF-8 text") from None
    values: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not colon or not _KEY.match(key):
            raise PolicyError(f"not a policy line: {line[:80]!r}")
        if key == "mx":
            pattern = value.rstrip(".").lower()
            if not pattern or " " in pattern:
                raise PolicyError(f"bad mx pattern {value[:80]!r}")
            mx.append(pattern)
        elif key not in values:
            values[key] = value
    if values.get("version") != "STSv1":
        raise PolicyError(f"version is {values.get('version')!r}, not 'STSv1'")
    mode = values.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode is {mode!r}, not one of {', '.join(MODES)}")
    age = values.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise PolicyError(f"max_age is {age!r}, not a number of seconds")
    if mode != NONE and not mx:
        raise PolicyError("the policy names no mx")
    return Policy(domain, policyId, mode, tuple(mx), min(int(age), MAX_AGE_LIMIT), now)


def ownPolicy(mode: str, mx: tuple[str, ...] | list[str], maxAge: int) -> bytes:
    """The policy file pymaild serves for its own domains (CRLF lines, RFC 8461 §3.2)."""
    lines = ["version: STSv1", f"mode: {mode}", *[f"mx: {m.lower()}" for m in mx],
             f"max_age: {maxAge}"]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def policyId(policy: bytes) -> str:
    """The C{id} of the C{_mta-sts} record for C{policy}: 20 hex digits of its SHA-256,
    so the id changes exactly when the policy does."""
    return hashlib.sha256(policy).hexdigest()[:20]


@implementer(IAgentEndpointFactory)
class _PinnedEndpoints:
    """Connects the agent to one address already resolved, with TLS verified for the
    policy host's name."""

    def __init__(self, reactor: Any, address: str, port: int, creator: Any,
                 timeout: float) -> None:
        self.reactor = reactor
        self.address = address
        self.port = port
        self.creator = creator
        self.timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:
        """The TLS endpoint to the resolved address (whatever the URI's host)."""
        cls = TCP6ClientEndpoint if ":" in self.address else TCP4ClientEndpoint
        return wrapClientTLS(self.creator, cls(self.reactor, self.address, self.port,
                                               timeout=self.timeout))


class _LimitedBody(protocol.Protocol):
    """Collects a response body, giving up when it grows past C{limit} bytes."""

    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        """Keep C{data}, or stop at the limit."""
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.finished.errback(PolicyError(f"the policy is larger than {self.limit} bytes"))
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """The body is complete (or the connection broke)."""
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(PolicyError(
                f"the policy body was cut off: {reason.getErrorMessage()}"))


class MTASTS:
    """Finds, fetches and caches destination domains' MTA-STS policies.

    @param dns: the asynchronous resolver (L{pymaild.mailauth.resolver.DNSResolver}).
    @param reactor: for connections and deadlines.
    @param runner: reads and writes the cache files off the reactor thread.
    @param cacheDir: the directory of the cache files (made when first needed).
    @param trust: the trust root for the policy servers and for the MX hosts' TLS
        (L{pymaild.tls.loadCAFile}'s result), or None for the system trust store.
    @param trustName: how L{trust} is named in log lines and outcomes.
    @param port: the HTTPS port of the policy hosts (443; other values are for tests).
    @param timeout: seconds a policy fetch may take in all.
    @param clock: the time now (POSIX seconds).
    """

    def __init__(self, dns: Any, reactor: Any, runner: Runner, cacheDir: str,
                 trust: Any = None, trustName: str = "the system trust store",
                 port: int = 443, timeout: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.dns = dns
        self.reactor = reactor
        self.runner = runner
        self.cacheDir = cacheDir
        self.trust = trust
        self.trustName = trustName
        self.port = port
        self.timeout = timeout
        self.clock = clock
        self._cache: dict[str, Policy | None] = {}

    # -- the cache ------------------------------------------------------------------------

    def _path(self, domain: str) -> str:
        """The cache file of C{domain}."""
        return os.path.join(self.cacheDir, f"{domain}.json")

    async def _cached(self, domain: str) -> Policy | None:
        """The cached policy of C{domain} (memory, else disk), fresh or not."""
        if domain not in self._cache:
            self._cache[domain] = await self.runner.run(self._readCache, domain)
        return self._cache[domain]

    def _readCache(self, domain: str) -> Policy | None:
        """Read C{domain}'s cache file (blocking)."""
        try:
            with open(self._path(domain), encoding="utf-8") as f:
                policy = Policy.fromJSON(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, PolicyError) as e:
            log.warn("MTA-STS cache of {domain} unreadable, ignored: {e}", domain=domain, e=e)
            return None
        return policy if policy.domain == domain else None

    def _writeCache(self, policy: Policy) -> None:
        """Write a policy's cache file atomically (blocking)."""
        os.makedirs(self.cacheDir, mode=0o750, exist_ok=True)
        path = self._path(policy.domain)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(policy.toJSON(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # -- the lookup -----------------------------------------------------------------------

    async def policy(self, domain: str) -> Policy | None:
        """The policy that applies to mail for C{domain} (an A-label), or None.

        Never raises: DNS and fetch failures fall back to a fresh cached policy, or to
        no policy, with a log line.
        """
        domain = domain.rstrip(".").lower()
        now = self.clock()
        cached = await self._cached(domain)
        if cached is not None and not cached.fresh(now):
            cached = None
        answer = await self.dns.txt(f"_mta-sts.{domain}")
        if not answer.ok:
            if answer.status == "temperror":
                log.info("MTA-STS record of {domain} not found ({why})", domain=domain,
                         why=answer.reason)
            return cached
        claims = [r for r in answer.records if isSTSRecord(r)]
        if len(claims) != 1:
            if len(claims) > 1:
                log.info("MTA-STS: {domain} has {n} v=STSv1 records, ignored",
                         domain=domain, n=len(claims))
            return cached
        policyId = parseRecord(claims[0])
        if policyId is None:
            log.info("MTA-STS: the record of {domain} is not valid: {record!r}",
                     domain=domain, record=claims[0][:100])
            return cached
        if cached is not None and cached.id == policyId:
            return cached
        try:
            fresh = await self.fetch(domain, policyId)
        except Exception as e:  # noqa: BLE001 - every fetch failure is handled alike
            log.warn("MTA-STS policy of {domain} could not be fetched: {why}",
                     domain=domain, why=_describe(e))
            return cached
        self._cache[domain] = fresh
        try:
            await self.runner.run(self._writeCache, fresh)
        except OSError as e:
            log.warn("MTA-STS policy of {domain} not cached on disk: {e}", domain=domain, e=e)
        log.info("MTA-STS policy of {domain} (id {id}): {policy}, max_age {age}",
                 domain=domain, id=policyId, policy=fresh.describe(), age=fresh.maxAge)
        return fresh

    async def fetch(self, domain: str, policyId: str) -> Policy:
        """Fetch and parse C{https://mta-sts.DOMAIN/.well-known/mta-sts.txt}.

        @raise PolicyError: or a connection/TLS error, when no valid policy came.
        """
        d = defer.Deferred.fromCoroutine(self._fetch(domain, policyId))
        timer = self.reactor.callLater(self.timeout, d.cancel)
        try:
            return await d
        except Exception:
            # The agent reports a cancelled request in its own wrappers.
            if timer.active():
                raise
            raise PolicyError(f"no policy within {self.timeout:g}s") from None
        finally:
            if timer.active():
                timer.cancel()

    async def _fetch(self, domain: str, policyId: str) -> Policy:
        """The fetch itself (L{fetch} adds the deadline)."""
        host = f"mta-sts.{domain}"
        address = await self._address(host)
        creator = verifyingClientContext(host, self.trust)
        agent = Agent.usingEndpointFactory(
            self.reactor, _PinnedEndpoints(self.reactor, address, self.port, creator,
                                           self.timeout))
        url = f"https://{host}{WELL_KNOWN}" if self.port == 443 else \
            f"https://{host}:{self.port}{WELL_KNOWN}"
        response = await agent.request(
            b"GET", url.encode("ascii"),
            Headers({b"User-Agent": [b"pymaild"], b"Accept": [b"text/plain"]}))
        if response.code != 200:
            response.deliverBody(_Discard())
            raise PolicyError(f"{url} answered HTTP {response.code} (only 200 is accepted)")
        types = response.headers.getRawHeaders(b"content-type") or [b""]
        media = types[0].split(b";")[0].strip().lower()
        if media != b"text/plain":
            response.deliverBody(_Discard())
            raise PolicyError(f"{url} is {media.decode('latin-1') or 'untyped'},"
                              " not text/plain")
        if response.length is not None and isinstance(response.length, int) \
                and response.length > MAX_POLICY_SIZE:
            response.deliverBody(_Discard())
            raise PolicyError(f"the policy is larger than {MAX_POLICY_SIZE} bytes")
        finished: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_LimitedBody(finished, MAX_POLICY_SIZE))
        body = await finished
        return parsePolicy(body, domain, policyId, self.clock())

    async def _address(self, host: str) -> str:
        """The first address of C{host} through the resolver (IPv4 first).

        @raise PolicyError: the name has no address.
        """
        reasons = []
        for lookup in (self.dns.a, self.dns.aaaa):
            answer = await lookup(host)
            if answer.ok:
                return str(ipaddress.ip_address(answer.records[0]))
            reasons.append(answer.reason)
        raise PolicyError(f"{host} has no address ({'; '.join(r for r in reasons if r)})")


class _Discard(protocol.Protocol):
    """Reads a response body nobody wants."""

    def dataReceived(self, data: bytes) -> None:
        """Drop C{data}."""


def _describe(e: BaseException) -> str:
    """A short description of a fetch failure."""
    if isinstance(e, PolicyError):
        return str(e)
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(_describe(r.value) for r in reasons)
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


__all__ = ["ENFORCE", "MODES", "MTASTS", "NONE", "Policy", "PolicyError", "TESTING",
           "ownPolicy", "parsePolicy", "parseRecord", "policyId"]
