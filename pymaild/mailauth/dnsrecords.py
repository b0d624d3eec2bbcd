"""The DNS records a pymaild domain needs, in zone-file syntax, and a check of them.

C{pymaild-admin dns DOMAIN} prints L{recordsFor}: MX, SPF (C{v=spf1 mx -all}), each
active DKIM selector, DMARC, MTA-STS (the C{_mta-sts} TXT record, the C{mta-sts} host
and, as comments, the policy file it points to), TLS-RPT, the SRV records of RFC 6186 and
RFC 8314 (implicit TLS first) and C{autoconfig}. With C{--check}, L{checkRecords}
resolves each through the configured DNS servers and says which are missing or differ.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pymaild.mailauth.dkimkeys import SigningKey, zoneTXT
from pymaild.mailauth.resolver import DNSResolver
from pymaild.smtp.mtasts import ownPolicy, policyId

# (service, port, priority): RFC 8314 §5.1 prefers implicit TLS, so it comes first.
SERVICES = (
    ("_submissions._tcp", 465, 0), ("_imaps._tcp", 993, 0), ("_pop3s._tcp", 995, 0),
    ("_submission._tcp", 587, 10), ("_imap._tcp", 143, 10), ("_pop3._tcp", 110, 10),
)
MTA_STS_MAX_AGE = 604800


@dataclass(frozen=True)
class Record:
    """One record: owner name, type and value as in a zone file (names end in a dot)."""

    name: str
    type: str
    value: str
    comment: str = ""

    def zone(self) -> str:
        """The zone-file line(s)."""
        value = zoneTXT(self.value) if self.type == "TXT" else self.value
        line = f"{self.name}\t3600\tIN\t{self.type}\t{value}"
        if self.comment:
            return "\n".join(f"; {c}" for c in self.comment.splitlines()) + "\n" + line
        return line


def mtaStsPolicy(hostname: str, mode: str = "enforce", mx: tuple[str, ...] = (),
                 maxAge: int = MTA_STS_MAX_AGE) -> str:
    """The MTA-STS policy file (RFC 8461 §3.2) the C{_mta-sts} record points to: the
    one the https listener serves (C{[mtasts]}; C{mx} empty means C{hostname})."""
    return ownPolicy(mode, mx or (hostname,), maxAge).decode("ascii")


def recordsFor(domain: str, hostname: str, keys: Iterable[SigningKey],
               policy: str | None = None) -> list[Record]:
    """Every record C{domain} served by C{hostname} needs.

    @param policy: the MTA-STS policy served (L{mtaStsPolicy}); the record's id is made
        from it, so the id changes when the policy does.
    """
    d, h = f"{domain}.", f"{hostname}."
    out = [
        Record(d, "MX", f"10 {h}"),
        Record(d, "TXT", "v=spf1 mx -all"),
    ]
    for key in keys:
        out.append(Record(f"{key.dnsName}.", "TXT", key.dnsValue))
    out.append(Record(f"_dmarc.{d}", "TXT", f"v=DMARC1; p=reject; rua=mailto:postmaster@{domain}"))
    if policy is None:
        policy = mtaStsPolicy(hostname)
    out.append(Record(
        f"_mta-sts.{d}", "TXT", f"v=STSv1; id={policyId(policy.encode('ascii'))}",
        comment=f"served at https://mta-sts.{domain}/.well-known/mta-sts.txt:\n"
                + policy.replace("\r\n", "\n").rstrip("\n")))
    out.append(Record(f"mta-sts.{d}", "CNAME", h))
    out.append(Record(f"_smtp._tls.{d}", "TXT", f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"))
    for service, port, priority in SERVICES:
        out.append(Record(f"{service}.{d}", "SRV", f"{priority} 1 {port} {h}"))
    out.append(Record(f"autoconfig.{d}", "CNAME", h))
    return out


def zoneText(records: Iterable[Record]) -> str:
    """The records as a zone-file fragment."""
    return "\n".join(r.zone() for r in records) + "\n"


def _norm(text: str) -> str:
    """A TXT value compared loosely (spaces around C{;} and case of tags do not matter)."""
    return re.sub(r"\s*;\s*", ";", text.strip().rstrip(";")).lower()


async def checkRecord(record: Record, dns: DNSResolver) -> tuple[str, str]:
    """C{("ok"|"missing"|"differs"|"error", detail)} for one record."""
    name = record.name.rstrip(".")
    if record.type == "TXT":
        answer = await dns.txt(name)
        if answer.status == "temperror":
            return "error", answer.reason
        texts = [r.decode("utf-8", "replace") for r in answer.records]
        prefix = record.value.split(";")[0].split()[0].lower()
        same = [t for t in texts if t.lower().startswith(prefix)]
        if not same:
            return "missing", f"no {prefix} record"
        if any(_norm(t) == _norm(record.value) for t in same):
            return "ok", ""
        if record.value.startswith("v=STSv1"):
            return "ok", f"id differs ({same[0]})"  # any id will do
        return "differs", f"found {same[0]!r}"
    if record.type == "MX":
        answer = await dns.mx(name)
        if answer.status == "temperror":
            return "error", answer.reason
        hosts = {host for _pref, host in answer.records}
        want = record.value.split()[1].rstrip(".").lower()
        if not hosts:
            return "missing", "no MX record"
        return ("ok", "") if want in hosts else ("differs", f"found {sorted(hosts)}")
    if record.type == "SRV":
        answer = await dns.srv(name)
        if answer.status == "temperror":
            return "error", answer.reason
        if not answer.records:
            return "missing", "no SRV record"
        _prio, _weight, port, target = record.value.split()
        found = {(p, t) for _pr, _w, p, t in answer.records}
        if (int(port), target.rstrip(".").lower()) in found:
            return "ok", ""
        return "differs", f"found {sorted(found)}"
    # CNAME: the name must lead to the host's addresses
    target = record.value.rstrip(".")
    mine, theirs = await dns.a(name), await dns.a(target)
    if mine.status == "temperror":
        return "error", mine.reason
    if not mine.ok:
        return "missing", "does not resolve"
    if theirs.ok and set(mine.records) != set(theirs.records):
        return "differs", (f"resolves to {sorted(mine.records)},"
                           f" {target} to {sorted(theirs.records)}")
    return "ok", ""


async def checkRecords(records: list[Record], dns: DNSResolver) -> list[tuple[Record, str, str]]:
    """L{checkRecord} for each record, in order."""
    out = []
    for record in records:
        status, detail = await checkRecord(record, dns)
        out.append((record, status, detail))
    return out


__all__ = ["Record", "checkRecords", "mtaStsPolicy", "recordsFor", "zoneText"]
