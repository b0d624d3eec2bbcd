"""DMARC aggregate reports (RFC 7489 §7.2) of the mail the MX checked.

L{DMARCRecorder.record} is called by the authentication check for each message whose From
domain has a DMARC record: the source IP, the From domain, the policy domain and its
published tags, the disposition applied, and the SPF and DKIM results. Each is one JSON
line in the day's file under C{<data>/dmarc-reports} (L{pymaild.smtp.tlsrpt.DayLog}).

L{DMARCReporter.runDay} (hourly for every finished day, or at once from a test) groups a
day's rows by policy domain, reads that domain's current C{_dmarc} record for its
C{rua=mailto:} addresses, keeps those an external-destination check allows (§7.1: an
address outside the policy domain's organisational domain needs a
C{<policy domain>._report._dmarc.<address domain>} TXT record starting C{v=DMARC1}),
and queues one gzip'd XML report (Appendix C) per address, DKIM-signed, from
C{postmaster@} the first local domain. Rows are counted by (source IP, disposition,
evaluated DKIM and SPF, From domain, results). A C{!size} limit on an address and
C{https:} or other URIs are not honoured (only C{mailto:}; logged).
"""

from __future__ import annotations

import calendar
import email.utils
import gzip
import time
from collections.abc import Callable
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP as SMTP_POLICY
from typing import Any
from xml.etree import ElementTree as ET

from twisted.internet import defer
from twisted.logger import Logger

from pymaild.smtp.tlsrpt import DailyReporter, DayLog
from pymaild.threads import Runner

log = Logger()


class DMARCRecorder(DayLog):
    """Records the DMARC evaluation of each checked message (see the module docstring)."""

    def record(self, ip: str, fromDomain: str, policy: Any, disposition: str,
               dkimAligned: bool, spfAligned: bool, spf: tuple[str, str],
               dkim: list[tuple[str, str, str]]) -> defer.Deferred[None]:
        """Record one message.

        @param policy: the L{pymaild.mailauth.dmarc.DMARCRecord} that applied.
        @param spf: C{(domain, result)} of the MAIL FROM check.
        @param dkim: C{(domain, selector, result)} of each signature.
        """
        return self.append({
            "domain": policy.domain, "ip": ip, "from": fromDomain,
            "published": {"adkim": policy.adkim, "aspf": policy.aspf, "p": policy.p,
                          "sp": policy.sp, "pct": policy.pct},
            "disposition": disposition, "dkimEval": "pass" if dkimAligned else "fail",
            "spfEval": "pass" if spfAligned else "fail",
            "spf": list(spf), "dkim": [list(d) for d in dkim],
        })


def ruaAddresses(record: str) -> list[str] | None:
    """The C{rua} URIs of a DMARC TXT record, or None when it is not C{v=DMARC1}."""
    parts = [p.strip() for p in record.split(";")]
    if not parts or parts[0].replace(" ", "") != "v=DMARC1":
        return None
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        if eq and name.strip().lower() == "rua":
            return [u.strip() for u in value.split(",") if u.strip()]
    return []


def _text(parent: ET.Element, tag: str, value: Any) -> ET.Element:
    """A child element holding C{value} as text."""
    child = ET.SubElement(parent, tag)
    child.text = str(value)
    return child


def buildReport(domain: str, day: str, rows: list[dict[str, Any]], organization: str,
                contact: str, reportId: str) -> bytes:
    """The aggregate report (RFC 7489 Appendix C) of C{domain}'s rows on C{day}."""
    begin = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
    feedback = ET.Element("feedback")
    _text(feedback, "version", "1.0")
    meta = ET.SubElement(feedback, "report_metadata")
    _text(meta, "org_name", organization)
    _text(meta, "email", contact)
    _text(meta, "report_id", reportId)
    dates = ET.SubElement(meta, "date_range")
    _text(dates, "begin", begin)
    _text(dates, "end", begin + 86399)
    published = rows[-1].get("published", {}) if rows else {}
    policy = ET.SubElement(feedback, "policy_published")
    _text(policy, "domain", domain)
    for tag in ("adkim", "aspf", "p", "sp", "pct"):
        _text(policy, tag, published.get(tag, ""))
    counted: dict[str, tuple[int, dict[str, Any]]] = {}
    for row in rows:
        key = repr((row.get("ip"), row.get("disposition"), row.get("dkimEval"),
                    row.get("spfEval"), row.get("from"), row.get("dkim"), row.get("spf")))
        count, _ = counted.get(key, (0, row))
        counted[key] = (count + 1, row)
    for count, row in counted.values():
        record = ET.SubElement(feedback, "record")
        r = ET.SubElement(record, "row")
        _text(r, "source_ip", row.get("ip", ""))
        _text(r, "count", count)
        evaluated = ET.SubElement(r, "policy_evaluated")
        _text(evaluated, "disposition", row.get("disposition", "none"))
        _text(evaluated, "dkim", row.get("dkimEval", "fail"))
        _text(evaluated, "spf", row.get("spfEval", "fail"))
        identifiers = ET.SubElement(record, "identifiers")
        _text(identifiers, "header_from", row.get("from", ""))
        results = ET.SubElement(record, "auth_results")
        for d, selector, result in row.get("dkim", []):
            dkim = ET.SubElement(results, "dkim")
            _text(dkim, "domain", d)
            if selector:
                _text(dkim, "selector", selector)
            _text(dkim, "result", result)
        spfDomain, spfResult = (row.get("spf") or ["", "none"])[:2]
        spf = ET.SubElement(results, "spf")
        _text(spf, "domain", spfDomain)
        _text(spf, "scope", "mfrom")
        _text(spf, "result", spfResult)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(feedback)


def reportMessage(xml: bytes, domain: str, submitter: str, sender: str, recipient: str,
                  reportId: str, begin: int, now: float) -> bytes:
    """The report as a message (RFC 7489 §7.2.1.1: gzip'd XML attached)."""
    message = MIMEMultipart()
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = email.utils.formatdate(now)
    message["Message-ID"] = email.utils.make_msgid("dmarc", submitter)
    message["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: {reportId}"
    message.attach(MIMEText(f"This is a DMARC aggregate report from {submitter} for"
                            f" {domain}.\n", "plain", "utf-8"))
    part = MIMEApplication(gzip.compress(xml, mtime=0), "gzip")
    part.add_header("Content-Disposition", "attachment",
                    filename=f"{submitter}!{domain}!{begin}!{begin + 86399}.xml.gz")
    message.attach(part)
    return message.as_bytes(policy=SMTP_POLICY)


class DMARCReporter(DailyReporter):
    """Sends the daily aggregate reports (see the module docstring).

    @param rows: the L{DMARCRecorder}.
    @param organisational: the organisational domain of a name (the other parameters:
        L{pymaild.smtp.tlsrpt.DailyReporter}).
    """

    kind = "DMARC report"

    def __init__(self, rows: DMARCRecorder, dns: Any, organisational: Callable[[str], str],
                 queue: Any, hostname: str, sender: str, signer: Any = None,
                 cryptoRunner: Runner | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(rows, dns, queue, hostname, sender, signer, cryptoRunner, clock)
        self.rows = rows
        self.organisational = organisational

    async def allowed(self, domain: str, uri: str) -> str | None:
        """The address of a C{mailto:} URI when reports for C{domain} may go there
        (§7.1), else None."""
        if not uri.lower().startswith("mailto:"):
            log.info("DMARC report for {domain}: {uri} is not a mailto: URI, skipped",
                     domain=domain, uri=uri)
            return None
        address = uri[7:].split("!")[0].split("?")[0].strip()
        target = address.rpartition("@")[2].lower()
        if not target:
            return None
        if self.organisational(target) == self.organisational(domain):
            return address
        answer = await self.dns.txt(f"{domain}._report._dmarc.{target}")
        if answer.ok and any(r.decode("ascii", "replace").replace(" ", "").startswith(
                "v=DMARC1") for r in answer.records):
            return address
        log.info("DMARC report for {domain}: {target} does not accept its reports"
                 " (no {domain}._report._dmarc.{target} record), skipped",
                 domain=domain, target=target)
        return None

    async def destinations(self, domain: str) -> list[str] | None:
        """The C{rua} addresses of the domain's DMARC record that may take its reports."""
        answer = await self.dns.txt(f"_dmarc.{domain}")
        if answer.status == "temperror":
            return None
        uris: list[str] = []
        for raw in answer.records if answer.ok else ():
            uris.extend(ruaAddresses(raw.decode("ascii", "replace")) or [])
        return [a for a in [await self.allowed(domain, u) for u in uris] if a]

    def report(self, domain: str, day: str, items: list[dict[str, Any]],
               reportId: str) -> bytes:
        """The aggregate report's XML."""
        return buildReport(domain, day, items, self.hostname, self.sender, reportId)

    def message(self, report: Any, domain: str, day: str, address: str,
                reportId: str) -> bytes:
        """The report message (gzip'd XML attached)."""
        begin = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
        return reportMessage(report, domain, self.hostname, self.sender, address,
                             reportId, begin, self.clock())


__all__ = ["DMARCRecorder", "DMARCReporter", "buildReport", "reportMessage", "ruaAddresses"]
