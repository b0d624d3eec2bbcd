"""SMTP TLS reporting (RFC 8460): what outbound TLS did, per destination and day, and the
daily reports to the domains that ask for them.

L{TLSResults.record} is called by the relay for each TLS outcome under a policy (an MTA-STS
policy, validated TLSA records, or none found): a success once a session's TLS is up and
passed the policy's checks, a failure with the RFC's result type (§4.3) when the policy
refused a host. Each result is one JSON line appended (and fsynced) to
C{<dir>/YYYY-MM-DD.jsonl} (UTC day) off the reactor thread, so a restart loses nothing.

L{TLSReporter.runDay} (once a day for every finished day, by L{TLSReporter.service}, or
at once from a test) reads a day's file, and for each destination domain whose
C{_smtp._tls} TXT record (C{v=TLSRPTv1; rua=...}) names C{mailto:} addresses builds the
JSON report (§4.4), gzips it, wraps it in the RFC's MIME form (§5.3: C{multipart/report;
report-type="tlsrpt"}, the C{TLS-Report-Domain} and C{TLS-Report-Submitter} fields, an
C{application/tlsrpt+gzip} part), DKIM-signs it like any outgoing mail and hands it to
the outbound queue. To C{https:} report URIs the gzipped report is POSTed (§3:
C{application/tlsrpt+gzip}) by L{HTTPSReports}, the host's address from the server's
resolver and its certificate verified; a post that fails is kept on disk and tried again
at later runs with exponential backoff for 24 hours after the first attempt (§5.4). A day
whose reports were all queued or posted (or that had nothing to send) is renamed
C{.sent}; one whose DNS lookups failed is tried again at the next run.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import gzip
import json
import os
import time
from collections.abc import Callable
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP as SMTP_POLICY
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from pymaild.files import writeFileAtomic
from pymaild.periodic import Periodic
from pymaild.smtp import httpsclient
from pymaild.threads import Runner

log = Logger()

STS = "sts"
TLSA = "tlsa"
NO_POLICY = "no-policy-found"

# Result types (RFC 8460 §4.3).
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
VALIDATION_FAILURE = "validation-failure"
TLSA_INVALID = "tlsa-invalid"
DNSSEC_INVALID = "dnssec-invalid"
STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
STS_POLICY_INVALID = "sts-policy-invalid"
STS_WEBPKI_INVALID = "sts-webpki-invalid"

SUCCESS = "success"
MAX_LINE = 16384
"""A result line longer than this is skipped when reading (a damaged file)."""


def _day(now: float) -> str:
    """The UTC day of C{now} as C{YYYY-MM-DD}."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


class DayLog:
    """Facts appended durably to one JSON-lines file per UTC day (C{YYYY-MM-DD.jsonl}),
    read back once the day is over, then marked C{.sent}. Each item is a JSON object
    with a C{domain} key.

    @param directory: where the day files live (made when first needed).
    @param runner: appends off the reactor thread.
    @param clock: the time now (POSIX seconds).
    """

    def __init__(self, directory: str, runner: Runner,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.runner = runner
        self.clock = clock

    def append(self, item: dict[str, Any]) -> defer.Deferred[None]:
        """Append C{item} to today's file; the Deferred fires once it is on disk (never
        fails: a write error is logged)."""
        line = json.dumps(item, sort_keys=True)
        path = os.path.join(self.directory, f"{_day(self.clock())}.jsonl")
        d = self.runner.run(self._append, path, line)

        def failed(f: Any) -> None:
            log.warn("result for {domain} not recorded in {dir}: {e}",
                     domain=item.get("domain"), dir=self.directory, e=f.getErrorMessage())

        return d.addErrback(failed)

    def _append(self, path: str, line: str) -> None:
        """Append C{line} and fsync (blocking)."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def pendingDays(self, now: float) -> list[str]:
        """The days with results not yet reported, before the day of C{now} (blocking)."""
        today = _day(now)
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n[:-6] for n in names if n.endswith(".jsonl") and n[:-6] < today)

    def read(self, day: str) -> list[dict[str, Any]]:
        """The results of C{day} (blocking); damaged lines are skipped."""
        out = []
        with open(os.path.join(self.directory, f"{day}.jsonl"), encoding="utf-8",
                  errors="replace") as f:
            for line in f:
                if len(line) > MAX_LINE:
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and isinstance(item.get("domain"), str):
                    out.append(item)
        return out

    def done(self, day: str) -> None:
        """Mark C{day} as reported (blocking)."""
        path = os.path.join(self.directory, f"{day}.jsonl")
        os.replace(path, path[:-6] + ".sent")


class TLSResults(DayLog):
    """Records TLS results durably, one file per UTC day (see L{DayLog})."""

    def record(self, domain: str, policyType: str, policyStrings: list[str], mxHost: str,
               result: str, receivingIP: str = "", detail: str = "") -> defer.Deferred[None]:
        """Record one result; the Deferred fires once it is on disk (never fails: a
        write error is logged)."""
        return self.append({
            "domain": domain, "type": policyType, "strings": policyStrings, "mx": mxHost,
            "result": result, "ip": receivingIP, "detail": detail[:300],
        })


def parseTLSRPT(record: bytes) -> list[str] | None:
    """The report URIs of a C{_smtp._tls} TXT record (RFC 8460 §3), or None when it is
    not a C{v=TLSRPTv1} record."""
    try:
        text = record.decode("ascii")
    except UnicodeDecodeError:
        return None
    fields = [f.strip() for f in text.split(";")]
    if not fields or fields[0].replace(" ", "") != "v=TLSRPTv1":
        return None
    for field in fields[1:]:
        key, eq, value = field.partition("=")
        if eq and key.strip() == "rua":
            return [u.strip() for u in value.split(",") if u.strip()]
    return None


def buildReport(domain: str, day: str, results: list[dict[str, Any]], organization: str,
                contact: str, reportId: str) -> dict[str, Any]:
    """The JSON report (RFC 8460 §4.4) of C{domain}'s results on C{day}."""
    policies: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for item in results:
        key = (str(item.get("type", NO_POLICY)), tuple(item.get("strings") or ()))
        entry = policies.setdefault(key, {"ok": 0, "failed": 0, "mx": [], "failures": {}})
        mx = str(item.get("mx", ""))
        if mx and mx not in entry["mx"]:
            entry["mx"].append(mx)
        if item.get("result") == SUCCESS:
            entry["ok"] += 1
            continue
        entry["failed"] += 1
        fkey = (str(item.get("result")), mx, str(item.get("ip", "")))
        entry["failures"][fkey] = entry["failures"].get(fkey, 0) + 1
    out = []
    for (ptype, strings), entry in sorted(policies.items()):
        policy: dict[str, Any] = {"policy-type": ptype, "policy-domain": domain}
        if strings:
            policy["policy-string"] = list(strings)
        if ptype == STS and entry["mx"]:
            policy["mx-host"] = entry["mx"]
        summary: dict[str, Any] = {
            "policy": policy,
            "summary": {"total-successful-session-count": entry["ok"],
                        "total-failure-session-count": entry["failed"]},
        }
        if entry["failures"]:
            details = []
            for (result, mx, ip), count in sorted(entry["failures"].items()):
                detail: dict[str, Any] = {"result-type": result, "failed-session-count": count}
                if mx:
                    detail["receiving-mx-hostname"] = mx
                if ip:
                    detail["receiving-ip"] = ip
                details.append(detail)
            summary["failure-details"] = details
        out.append(summary)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": f"{day}T00:00:00Z",
                       "end-datetime": f"{day}T23:59:59Z"},
        "contact-info": contact,
        "report-id": reportId,
        "policies": out,
    }


def reportBody(report: dict[str, Any]) -> bytes:
    """The report as C{application/tlsrpt+gzip} (RFC 8460 §3): gzipped JSON."""
    return gzip.compress(json.dumps(report, indent=1).encode("utf-8"), mtime=0)


def reportMessage(report: dict[str, Any], domain: str, submitter: str, sender: str,
                  recipient: str, now: float) -> bytes:
    """The report as a message in RFC 8460 §5.3's form (CRLF line ends)."""
    day = report["date-range"]["start-datetime"][:10]
    start = int(datetime.datetime.fromisoformat(f"{day}T00:00:00+00:00").timestamp())
    end = start + 86399
    filename = f"{submitter}!{domain}!{start}!{end}.json.gz"
    message = MIMEMultipart("report", report_type="tlsrpt")
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = email.utils.formatdate(now)
    message["Message-ID"] = email.utils.make_msgid("tlsrpt", submitter)
    message["Subject"] = (f"Report Domain: {domain} Submitter: {submitter}"
                          f" Report-ID: <{report['report-id']}>")
    message["TLS-Report-Domain"] = domain
    message["TLS-Report-Submitter"] = submitter
    message.attach(MIMEText(
        f"This is an aggregate TLS report (RFC 8460) from {submitter} for {domain},"
        f" {day}.\n", "plain", "utf-8"))
    part = MIMEApplication(reportBody(report), "tlsrpt+gzip")
    part.add_header("Content-Disposition", "attachment", filename=filename)
    message.attach(part)
    return message.as_bytes(policy=SMTP_POLICY)


class DailyReporter:
    """Sends, once a day is over, one report per destination domain of a L{DayLog}'s
    items, DKIM-signed, through the outbound queue (TLS-RPT here, DMARC aggregate
    reports in L{pymaild.mailauth.dmarcreports}).

    A subclass says where a domain's reports go (L{destinations}) and what they hold
    (L{message}). A day whose destinations could not be looked up for some domain (a
    DNS temporary error) stays pending and is tried again at the next run.

    @param days: the L{DayLog} to report.
    @param dns: the asynchronous resolver (C{txt(name)} → an answer with C{ok},
        C{status} and C{records}).
    @param queue: the outbound queue (C{enqueue(sender, recipients, data)}).
    @param hostname: this server's name (the submitter).
    @param sender: the reports' From and envelope sender (C{postmaster@} a local domain,
        whose DKIM keys sign them).
    @param signer: DKIM-signs a message (C{sign(bytes) -> bytes}, blocking), or None.
    @param cryptoRunner: runs the signer.
    @param clock: the time now (POSIX seconds).
    """

    #: What the reports are, for the log.
    kind = "report"

    def __init__(self, days: DayLog, dns: Any, queue: Any, hostname: str, sender: str,
                 signer: Any = None, cryptoRunner: Runner | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.days = days
        self.dns = dns
        self.queue = queue
        self.hostname = hostname
        self.sender = sender
        self.signer = signer
        self.cryptoRunner = cryptoRunner
        self.clock = clock
        self._running: defer.Deferred[Any] | None = None

    def service(self, clock: Any, interval: float = 3600.0) -> Service:
        """A service that runs L{runPending} every C{interval} seconds (the first time
        C{interval} seconds after it starts): each finished day is reported at the
        first run after midnight UTC."""
        return ReportTimer(self, clock, interval)

    def tick(self) -> defer.Deferred[Any] | None:
        """One scheduled run (skipped while one is still going)."""
        if self._running is not None:
            return None
        d = defer.Deferred.fromCoroutine(self.runPending())
        self._running = d

        def finished(result: Any) -> None:
            self._running = None
            if hasattr(result, "getErrorMessage"):
                log.failure("{kind} run failed", result, kind=self.kind)

        d.addBoth(finished)
        return d

    async def runPending(self) -> int:
        """Report every finished day not yet reported; the number of reports queued."""
        days = await self.days.runner.run(self.days.pendingDays, self.clock())
        sent = 0
        for day in days:
            sent += await self.runDay(day)
        return sent

    async def runDay(self, day: str) -> int:
        """Report C{day}'s items; the number of reports queued."""
        items = await self.days.runner.run(self.days.read, day)
        byDomain: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            byDomain.setdefault(item["domain"].lower(), []).append(item)
        sent = 0
        retry = False
        for domain, theirs in sorted(byDomain.items()):
            addresses = await self.destinations(domain)
            if addresses is None:
                retry = True
                continue
            reportId = f"{day}.{domain}@{self.hostname}"
            report = self.report(domain, day, theirs, reportId) if addresses else None
            for address in addresses:
                await self.deliver(report, domain, day, address, reportId)
                sent += 1
        if not retry:
            await self.days.runner.run(self.days.done, day)
        return sent

    async def deliver(self, report: Any, domain: str, day: str, address: str,
                      reportId: str) -> None:
        """Send C{report} to C{address}: as a signed message through the queue."""
        data = self.message(report, domain, day, address, reportId)
        if self.signer is not None and self.cryptoRunner is not None:
            data = await self.cryptoRunner.run(self.signer.sign, data)
        qid = await self.queue.enqueue(self.sender, [address], data)
        log.info("{kind} for {domain} ({day}) queued to {address} as {qid}",
                 kind=self.kind, domain=domain, day=day, address=address, qid=qid)

    async def destinations(self, domain: str) -> list[str] | None:
        """The addresses C{domain}'s reports go to; None when that cannot be known now
        (the day is then tried again)."""
        raise NotImplementedError

    def report(self, domain: str, day: str, items: list[dict[str, Any]],
               reportId: str) -> Any:
        """The report of C{domain}'s C{items} of C{day} (made once for all addresses)."""
        raise NotImplementedError

    def message(self, report: Any, domain: str, day: str, address: str,
                reportId: str) -> bytes:
        """The message carrying C{report} to C{address}, with CRLF line ends."""
        raise NotImplementedError


class TLSReporter(DailyReporter):
    """Sends the daily TLS-RPT reports (see the module docstring).

    @param results: the L{TLSResults} to report (the other parameters: L{DailyReporter}).
    """

    kind = "TLS-RPT report"

    def __init__(self, results: TLSResults, dns: Any, queue: Any, hostname: str,
                 sender: str, signer: Any = None, cryptoRunner: Runner | None = None,
                 clock: Callable[[], float] = time.time,
                 https: HTTPSReports | None = None) -> None:
        super().__init__(results, dns, queue, hostname, sender, signer, cryptoRunner, clock)
        self.results = results
        self.https = https

    async def runPending(self) -> int:
        """Retry the https: posts that are due, then report the finished days."""
        if self.https is not None:
            await self.https.retryDue()
        return await super().runPending()

    async def destinations(self, domain: str) -> list[str] | None:
        """The C{mailto:} addresses and C{https:} URIs of the domain's C{_smtp._tls}
        record (C{https:} ones only with an L{HTTPSReports})."""
        answer = await self.dns.txt(f"_smtp._tls.{domain}")
        if answer.status == "temperror":
            log.info("TLS-RPT: _smtp._tls.{domain} not found now, tried again later",
                     domain=domain)
            return None
        uris: list[str] = []
        for record in answer.records if answer.ok else ():
            uris.extend(parseTLSRPT(record) or [])
        out = []
        for uri in uris:
            scheme = uri.partition(":")[0].lower()
            if scheme == "mailto":
                out.append(uri[7:].split("?")[0])
            elif scheme == "https" and self.https is not None:
                out.append(uri)
            else:
                log.info("TLS-RPT: {domain} asks for {uri}: not supported",
                         domain=domain, uri=uri[:200])
        return out

    async def deliver(self, report: Any, domain: str, day: str, address: str,
                      reportId: str) -> None:
        """POST to an C{https:} URI, mail to an address."""
        if address.lower().startswith("https:") and self.https is not None:
            await self.https.send(address, reportBody(report), f"{reportId} ({domain})")
            return
        await super().deliver(report, domain, day, address, reportId)

    def report(self, domain: str, day: str, items: list[dict[str, Any]],
               reportId: str) -> dict[str, Any]:
        """The RFC 8460 JSON report."""
        return buildReport(domain, day, items, self.hostname, self.sender, reportId)

    def message(self, report: Any, domain: str, day: str, address: str,
                reportId: str) -> bytes:
        """The RFC 8460 report message."""
        return reportMessage(report, domain, self.hostname, self.sender, address,
                             self.clock()).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class HTTPSReports:
    """Posts reports to C{https:} URIs (RFC 8460 §3); a post that fails is kept under
    C{directory}, one JSON file each, and tried again by L{retryDue} with exponential
    backoff (C{first}, then twice as long each time) until C{lifetime} seconds after the
    first attempt (§5.4: up to 24 hours), then dropped with a log line.

    @param directory: where failed posts wait (made when first needed).
    @param runner: reads and writes them off the reactor thread.
    @param reactor: for connections and deadlines.
    @param dns: the asynchronous resolver (the report host's address).
    @param trust: the trust root for the report servers (L{pymaild.tls.loadCAFile}'s
        result), or None for the system trust store.
    @param timeout: seconds one post may take.
    @param clock: the time now (POSIX seconds).
    """

    contentType = b"application/tlsrpt+gzip"

    def __init__(self, directory: str, runner: Runner, reactor: Any, dns: Any,
                 trust: Any = None, timeout: float = 60.0, first: float = 600.0,
                 lifetime: float = 86400.0, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.runner = runner
        self.reactor = reactor
        self.dns = dns
        self.trust = trust
        self.timeout = timeout
        self.first = first
        self.lifetime = lifetime
        self.clock = clock

    async def _post(self, url: str, body: bytes, what: str) -> bool:
        """One attempt; whether the server took the report (a 2xx answer)."""
        try:
            code = await httpsclient.post(self.reactor, self.dns, url, body,
                                          self.contentType, self.trust, self.timeout)
        except Exception as e:  # noqa: BLE001 - every failure is retried alike
            why = _describeFailure(e)
        else:
            if 200 <= code < 300:
                log.info("TLS-RPT report {what} posted to {url}", what=what, url=url)
                return True
            why = f"HTTP {code}"
        log.warn("TLS-RPT report {what} not posted to {url}: {why}", what=what, url=url,
                 why=why)
        return False

    async def send(self, url: str, body: bytes, what: str) -> bool:
        """Post C{body} to C{url}; when that fails, keep it for L{retryDue}. Whether it
        was posted now."""
        if await self._post(url, body, what):
            return True
        now = self.clock()
        entry = {"url": url, "what": what, "first": now, "attempts": 1,
                 "next": now + self.first, "body": base64.b64encode(body).decode("ascii")}
        await self.runner.run(self._write, f"{int(now * 1000)}-{os.urandom(4).hex()}", entry)
        return False

    async def retryDue(self) -> int:
        """Try again every kept post that is due; the number posted."""
        now = self.clock()
        posted = 0
        for name, entry in await self.runner.run(self._pending):
            if entry["next"] > now:
                continue
            if await self._post(entry["url"], base64.b64decode(entry["body"]),
                                entry["what"]):
                await self.runner.run(self._remove, name)
                posted += 1
                continue
            delay = self.first * 2 ** entry["attempts"]
            if now + delay > entry["first"] + self.lifetime:
                log.warn("TLS-RPT report {what} to {url} dropped: not posted within"
                         " {hours:g} hours", what=entry["what"], url=entry["url"],
                         hours=self.lifetime / 3600)
                await self.runner.run(self._remove, name)
                continue
            entry.update(attempts=entry["attempts"] + 1, next=now + delay)
            await self.runner.run(self._write, name, entry)
        return posted

    def _path(self, name: str) -> str:
        """The file of the kept post C{name}."""
        return os.path.join(self.directory, f"{name}.json")

    def _write(self, name: str, entry: dict[str, Any]) -> None:
        """Write a kept post atomically and durably (blocking)."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        writeFileAtomic(self._path(name), json.dumps(entry).encode("utf-8"))

    def _remove(self, name: str) -> None:
        """Forget a kept post (blocking)."""
        try:
            os.remove(self._path(name))
        except FileNotFoundError:
            pass

    def _pending(self) -> list[tuple[str, dict[str, Any]]]:
        """The kept posts, oldest first (blocking); unreadable files are skipped."""
        try:
            names = sorted(n[:-5] for n in os.listdir(self.directory) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            try:
                with open(self._path(name), encoding="utf-8") as f:
                    entry = json.load(f)
                if not all(k in entry for k in ("url", "what", "first", "attempts", "next",
                                                "body")):
                    raise ValueError("missing fields")
            except (OSError, ValueError) as e:
                log.warn("TLS-RPT: kept post {name} unreadable, skipped: {e}", name=name, e=e)
                continue
            out.append((name, entry))
        return out


def _describeFailure(e: BaseException) -> str:
    """A short description of a failed post."""
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(_describeFailure(r.value) for r in reasons)
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class ReportTimer(Periodic):
    """Runs a L{DailyReporter} on a timer while the server runs."""

    def __init__(self, reporter: DailyReporter, clock: Any, interval: float) -> None:
        super().__init__(reporter.tick, clock, interval)
        self.reporter = reporter


__all__ = ["DailyReporter", "DayLog", "HTTPSReports", "NO_POLICY", "ReportTimer", "STS",
           "SUCCESS", "TLSA", "TLSReporter", "TLSResults",
           "buildReport", "parseTLSRPT", "reportBody", "reportMessage"]
