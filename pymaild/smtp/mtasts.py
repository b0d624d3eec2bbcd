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
max_age applies (§5.1); otherwise the domain has no policy, and L{MTASTS.lookup} says
which RFC 8460 result type the failure is, for TLS reports. L{MTASTS.refreshAll}, run by
L{PolicyRefresher} (the tap's timer), checks every cached domain without waiting for
mail, so a policy does not lapse (§10.2). L{Policy.matches} applies
the C{mx:} patterns (§4.1). What the relay does with a policy is in
L{pymaild.smtp.relay}.

For our own domains, L{ownPolicy} makes the policy file the https listener serves and
L{policyId} the C{id} that C{pymaild-admin dns} prints for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from pymaild.config import MTA_STS_MODES
from pymaild.files import writeFileAtomic
from pymaild.periodic import Periodic
from pymaild.smtp import tlsrpt
from pymaild.smtp.httpsclient import Discard, HTTPSError, PinnedEndpoints, resolveAddress
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


class PolicyInvalid(PolicyError):
    """The policy was fetched but is not a valid policy."""


# What a failed fetch is in a TLS report (RFC 8460 §4.3.2.2).
FETCH_ERROR = tlsrpt.STS_POLICY_FETCH_ERROR
POLICY_INVALID = tlsrpt.STS_POLICY_INVALID
WEBPKI_INVALID = tlsrpt.STS_WEBPKI_INVALID


@dataclass(frozen=True)
class Lookup:
    """What L{MTASTS.lookup} found for a domain.

    @ivar policy: the policy that applies, or None.
    @ivar failure: when the domain publishes a valid C{_mta-sts} record but its policy
        could not be fetched, the RFC 8460 result type (L{FETCH_ERROR},
        L{POLICY_INVALID} or L{WEBPKI_INVALID}); else "".
    @ivar detail: why, for that failure.
    """

    policy: Policy | None
    failure: str = ""
    detail: str = ""


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

    @raise PolicyInvalid: the body is not a valid policy (the reason says why).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyInvalid("the policy is not UTF-8 text") from None
    values: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not colon or not _KEY.match(key):
            raise PolicyInvalid(f"not a policy line: {line[:80]!r}")
        if key == "mx":
            pattern = value.rstrip(".").lower()
            if not pattern or " " in pattern:
                raise PolicyInvalid(f"bad mx pattern {value[:80]!r}")
            mx.append(pattern)
        elif key not in values:
            values[key] = value
    if values.get("version") != "STSv1":
        raise PolicyInvalid(f"version is {values.get('version')!r}, not 'STSv1'")
    mode = values.get("mode")
    if mode not in MODES:
        raise PolicyInvalid(f"mode is {mode!r}, not one of {', '.join(MODES)}")
    age = values.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise PolicyInvalid(f"max_age is {age!r}, not a number of seconds")
    if mode != NONE and not mx:
        raise PolicyInvalid("the policy names no mx")
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
            if self.transport is not None:
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
        writeFileAtomic(self._path(policy.domain), json.dumps(policy.toJSON()).encode("utf-8"))

    # -- the lookup -----------------------------------------------------------------------

    async def policy(self, domain: str) -> Policy | None:
        """The policy that applies to mail for C{domain} (an A-label), or None (see
        L{lookup})."""
        return (await self.lookup(domain)).policy

    async def lookup(self, domain: str, refresh: float = 0.0) -> Lookup:
        """The policy that applies to mail for C{domain} (an A-label), and why none
        could be fetched when that failed.

        Never raises: DNS and fetch failures fall back to a fresh cached policy, or to
        no policy, with a log line.

        @param refresh: fetch the policy again, though its id is unchanged, when the
            cached one expires within this many seconds (L{refreshAll}).
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
            return Lookup(cached)
        claims = [r for r in answer.records if isSTSRecord(r)]
        if len(claims) != 1:
            if len(claims) > 1:
                log.info("MTA-STS: {domain} has {n} v=STSv1 records, ignored",
                         domain=domain, n=len(claims))
            return Lookup(cached)
        policyId = parseRecord(claims[0])
        if policyId is None:
            log.info("MTA-STS: the record of {domain} is not valid: {record!r}",
                     domain=domain, record=claims[0][:100])
            return Lookup(cached)
        if cached is not None and cached.id == policyId and \
                cached.fetched + cached.maxAge - now > refresh:
            return Lookup(cached)
        try:
            fresh = await self.fetch(domain, policyId)
        except Exception as e:  # noqa: BLE001 - every fetch failure is handled alike
            why = _describe(e)
            log.warn("MTA-STS policy of {domain} could not be fetched: {why}",
                     domain=domain, why=why)
            return Lookup(cached, _resultType(e), why)
        self._cache[domain] = fresh
        try:
            await self.runner.run(self._writeCache, fresh)
        except OSError as e:
            log.warn("MTA-STS policy of {domain} not cached on disk: {e}", domain=domain, e=e)
        log.info("MTA-STS policy of {domain} (id {id}): {policy}, max_age {age}",
                 domain=domain, id=policyId, policy=fresh.describe(), age=fresh.maxAge)
        return Lookup(fresh)

    async def refreshAll(self, margin: float) -> int:
        """Look at every cached policy's domain (RFC 8461 §10.2: a policy should not
        lapse for a domain mail goes to rarely): a new C{_mta-sts} id is fetched, and a
        policy that expires within C{margin} seconds is fetched again though its id is
        unchanged. A policy that has expired and could not be renewed is forgotten (its
        cache file removed). Returns how many domains were looked at."""
        domains = await self.runner.run(self._cachedDomains)
        for domain in domains:
            result = await self.lookup(domain, refresh=margin)
            cached = self._cache.get(domain)
            if result.policy is None and cached is not None and \
                    not cached.fresh(self.clock()):
                log.info("MTA-STS policy of {domain} expired and not renewed: forgotten",
                         domain=domain)
                self._cache.pop(domain, None)
                await self.runner.run(self._forget, domain)
        return len(domains)

    def _cachedDomains(self) -> list[str]:
        """The domains with a cache file (blocking)."""
        try:
            names = os.listdir(self.cacheDir)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json"))

    def _forget(self, domain: str) -> None:
        """Remove C{domain}'s cache file (blocking)."""
        try:
            os.remove(self._path(domain))
        except FileNotFoundError:
            pass

    def service(self, clock: Any, interval: float) -> Service:
        """A service that runs L{refreshAll} every C{interval} seconds (the first time
        C{interval} seconds after it starts), renewing policies that expire within two
        intervals, so each is fetched again at least once before it lapses."""
        return PolicyRefresher(self, clock, interval)

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
            self.reactor, PinnedEndpoints(self.reactor, address, self.port, creator,
                                           self.timeout))
        url = f"https://{host}{WELL_KNOWN}" if self.port == 443 else \
            f"https://{host}:{self.port}{WELL_KNOWN}"
        response = await agent.request(
            b"GET", url.encode("ascii"),
            Headers({b"User-Agent": [b"pymaild"], b"Accept": [b"text/plain"]}))
        if response.code != 200:
            response.deliverBody(Discard())
            raise PolicyError(f"{url} answered HTTP {response.code} (only 200 is accepted)")
        types = response.headers.getRawHeaders(b"content-type") or [b""]
        media = types[0].split(b";")[0].strip().lower()
        if media != b"text/plain":
            response.deliverBody(Discard())
            raise PolicyError(f"{url} is {media.decode('latin-1') or 'untyped'},"
                              " not text/plain")
        if response.length is not None and isinstance(response.length, int) \
                and response.length > MAX_POLICY_SIZE:
            response.deliverBody(Discard())
            raise PolicyError(f"the policy is larger than {MAX_POLICY_SIZE} bytes")
        finished: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_LimitedBody(finished, MAX_POLICY_SIZE))
        body = await finished
        return parsePolicy(body, domain, policyId, self.clock())

    async def _address(self, host: str) -> str:
        """The first address of C{host} through the resolver (IPv4 first).

        @raise PolicyError: the name has no address.
        """
        try:
            return await resolveAddress(self.dns, host)
        except HTTPSError as e:
            raise PolicyError(str(e)) from None


class PolicyRefresher(Periodic):
    """Runs L{MTASTS.refreshAll} on a timer while the server runs.

    @ivar pending: the run in progress (a Deferred), or None.
    """

    def __init__(self, mtasts: MTASTS, clock: Any, interval: float) -> None:
        super().__init__(self.tick, clock, interval)
        self.mtasts = mtasts
        self.pending: defer.Deferred[Any] | None = None

    def tick(self) -> None:
        """One scheduled run (skipped while the last one is still going)."""
        if self.pending is not None:
            return
        d = defer.Deferred.fromCoroutine(self.mtasts.refreshAll(2 * self.interval))
        self.pending = d

        def finished(result: Any) -> None:
            self.pending = None
            if isinstance(result, Failure):
                log.failure("MTA-STS refresh failed", result)

        d.addBoth(finished)


def _resultType(e: BaseException) -> str:
    """The RFC 8460 result type of a failed fetch: the policy server's certificate
    refused (L{WEBPKI_INVALID}), a body that is no policy (L{POLICY_INVALID}), or any
    other failure (L{FETCH_ERROR})."""
    if isinstance(e, PolicyInvalid):
        return POLICY_INVALID
    if isinstance(e, VerificationError) or (
            isinstance(e, SSL.Error) and "certificate verify failed" in str(e)):
        return WEBPKI_INVALID
    for reason in getattr(e, "reasons", None) or ():
        if _resultType(reason.value) == WEBPKI_INVALID:
            return WEBPKI_INVALID
    return FETCH_ERROR


def _describe(e: BaseException) -> str:
    """A short description of a fetch failure."""
    if isinstance(e, PolicyError):
        return str(e)
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(_describe(r.value) for r in reasons)
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


__all__ = ["ENFORCE", "FETCH_ERROR", "MODES", "MTASTS", "NONE", "POLICY_INVALID", "Lookup",
           "Policy", "PolicyError", "PolicyInvalid", "PolicyRefresher", "TESTING",
           "WEBPKI_INVALID",
           "ownPolicy", "parsePolicy", "parseRecord", "policyId"]
