"""Inbound authentication on the MX: SPF, DKIM, DMARC, ARC and Authentication-Results.

L{AuthenticationCheck} is the first L{pymaild.smtp.checks.MessageCheck} of the chain.
For mail arriving on the MX role from a client that did not authenticate it checks, all
at once, SPF of MAIL FROM and of HELO (L{pymaild.mailauth.spf}), every DKIM signature
and the ARC chain (L{pymaild.mailauth.dkimverify}), then DMARC for the From domain
(L{pymaild.mailauth.dmarc}). It removes every C{Authentication-Results} field that
claims our authserv-id (the host name), so no sender can forge one, and adds one field
(RFC 8601) with all the results on top. The results also go to
C{envelope.verdicts["auth"]} (an L{AuthVerdicts}) for the checks after it.

Policy, per recipient domain (C{mailauth.on_dmarc_reject}, C{on_dmarc_quarantine},
C{domain_policies}): DMARC failing under C{p=reject} refuses the message with
C{550 5.7.1} when every recipient's domain says C{reject}; C{junk} places the copies in
the Junk folder; C{accept} only records the result. Mail from
C{mailauth.internal_networks} (loopback by default: mail injected on this host) is not
checked, as OpenDKIM's C{InternalHosts}. A DMARC result that a DNS failure
left undecided is C{451 4.7.5}, never a 5xx. A message with several From fields is
refused (it could carry one domain to DMARC and show another to the reader).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from pymaild.config import parseDomainPolicy
from pymaild.limits import inNetworks, parseNetworks
from pymaild.mailauth.dkimverify import ARCResult, DKIMResult, DKIMVerifier
from pymaild.mailauth.dmarc import DMARCEvaluator, DMARCResult
from pymaild.mailauth.headers import fromDomains, headerBlock
from pymaild.mailauth.spf import SPFChecker, SPFResult
from pymaild.smtp.checks import Envelope, Placement, SMTPReply

log = Logger()

JUNK = "Junk"


@dataclass
class AuthVerdicts:
    """Every result of one message (C{envelope.verdicts["auth"]})."""

    spf: SPFResult
    spfHelo: SPFResult
    dkim: list[DKIMResult]
    arc: ARCResult
    dmarc: DMARCResult
    header: str = ""
    actions: dict[str, str] = field(default_factory=dict)


def _ptext(value: str) -> str:
    """A property value as RFC 8601 allows it (a token, else a quoted string)."""
    if value and re.fullmatch(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authservId(value: bytes) -> str:
    """The authserv-id of an C{Authentication-Results} value (before C{;} or space)."""
    text = value.decode("utf-8", "replace").strip()
    text = re.sub(r"\([^)]*\)", " ", text).strip()
    return re.split(r"[\s;]", text, maxsplit=1)[0].lower() if text else ""


def stripOurResults(message: bytes, hostname: str) -> bytes:
    """C{message} without the C{Authentication-Results} fields carrying C{hostname}."""
    block = headerBlock(message)
    groups: list[list[bytes]] = []
    for line in re.split(rb"(?<=\n)", block):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and groups:
            groups[-1].append(line)
        else:
            groups.append([line])
    kept = []
    for group in groups:
        name, sep, value = b"".join(group).partition(b":")
        if (sep and name.strip().lower() == b"authentication-results"
                and authservId(value) == hostname.lower()):
            continue
        kept.append(b"".join(group))
    if len(kept) == len(groups):
        return message
    return b"".join(kept) + message[len(block):]


def resultsHeader(hostname: str, verdicts: AuthVerdicts) -> str:
    """The C{Authentication-Results} field (with its name and CRLF)."""
    parts = []
    spf = verdicts.spf
    parts.append(f"spf={spf.result} smtp.mailfrom={_ptext(spf.domain or 'unknown')}")
    helo = verdicts.spfHelo
    if helo.domain:
        parts.append(f"spf={helo.result} smtp.helo={_ptext(helo.domain)}")
    if not verdicts.dkim:
        parts.append("dkim=none")
    for d in verdicts.dkim:
        text = f"dkim={d.result}"
        if d.reason and d.result != "pass":
            text += f" ({_comment(d.reason)})"
        if d.domain:
            text += f" header.d={_ptext(d.domain)}"
        if d.selector:
            text += f" header.s={_ptext(d.selector)}"
        if d.algorithm:
            text += f" header.a={_ptext(d.algorithm)}"
        if d.b:
            text += f" header.b={_ptext(d.b)}"
        parts.append(text)
    parts.append(f"arc={verdicts.arc.result}")
    dm = verdicts.dmarc
    text = f"dmarc={dm.result}"
    if dm.published:
        text += f" ({_comment('p=' + dm.published)})"
    if dm.fromDomain:
        text += f" header.from={_ptext(dm.fromDomain)}"
    if dm.published:
        text += f" policy.dmarc={dm.published}"
    parts.append(text)
    return f"Authentication-Results: {hostname};\r\n\t" + ";\r\n\t".join(parts) + "\r\n"


def _comment(text: str) -> str:
    """Text safe inside an RFC 5322 comment, shortened."""
    clean = re.sub(r"[()\\\r\n]", " ", text)
    return clean[:120]


class AuthenticationCheck:
    """The chain's first step on the MX (see the module docstring).

    @param spf: the L{SPFChecker}.
    @param dkim: the L{DKIMVerifier}.
    @param dmarc: the L{DMARCEvaluator}.
    @param config: the C{[mailauth]} section.
    @param reactor: for the deadline of the whole check.
    @param reports: records each DMARC evaluation for the aggregate reports
        (L{pymaild.mailauth.dmarcreports.DMARCRecorder}), or None.
    """

    def __init__(self, spf: SPFChecker, dkim: DKIMVerifier, dmarc: DMARCEvaluator,
                 config: Any, reactor: Any, reports: Any = None) -> None:
        self.reports = reports
        self.spf = spf
        self.dkim = dkim
        self.dmarc = dmarc
        self.deadline = 3.0 * config.dns_timeout + 10
        self.reactor = reactor
        self.configure(config)

    def configure(self, config: Any) -> None:
        """Take the policy keys of a C{[mailauth]} section (at start and on SIGHUP):
        C{on_dmarc_reject}, C{on_dmarc_quarantine}, C{domain_policies},
        C{internal_networks}."""
        self.onReject = config.on_dmarc_reject
        self.onQuarantine = config.on_dmarc_quarantine
        self.internal = parseNetworks(config.internal_networks)
        self.perDomain = dict(parseDomainPolicy(e, "mailauth.domain_policies")
                              for e in config.domain_policies)

    def action(self, account: str, policy: str) -> str:
        """What a DMARC failure under C{policy} does to C{account}'s copy."""
        domain = account.rpartition("@")[2].lower()
        own = self.perDomain.get(domain, {})
        if policy == "reject":
            return own.get("reject", self.onReject)
        if policy == "quarantine":
            return own.get("quarantine", self.onQuarantine)
        return "accept"

    def check(self, envelope: Envelope, message: bytes) -> Any:
        """Verify MX mail from unauthenticated clients; pass anything else on."""
        if envelope.role != "mx" or envelope.user is not None:
            return message
        if inNetworks(envelope.client, self.internal):
            return message
        d = defer.ensureDeferred(self._check(envelope, message))
        d.addTimeout(self.deadline, self.reactor)

        def timedOut(reason: Any) -> Any:
            if reason.check(defer.TimeoutError):
                log.warn("{id}: authentication checks timed out", id=envelope.id)
                raise SMTPReply(451, "4.7.5 Temporary failure checking the sender,"
                                     " try again later")
            return reason

        return d.addErrback(timedOut)

    async def _check(self, envelope: Envelope, message: bytes) -> bytes:
        """Run the checks, apply the policy, return the message with its header."""
        count, domains = fromDomains(message)
        if count > 1:
            raise SMTPReply(550, "5.7.1 A message must have exactly one From field")
        fromDomain = domains[0] if len(domains) == 1 else ""
        spfMail = defer.ensureDeferred(
            self.spf.mailFrom(envelope.client, envelope.sender, envelope.helo))
        spfHelo = defer.ensureDeferred(self.spf.helo(envelope.client, envelope.helo))
        dkimD = self.dkim.verify(message)
        policyD = (defer.ensureDeferred(self.dmarc.policyRecord(fromDomain))
                   if fromDomain else defer.succeed(("ok", None)))
        results = await defer.gatherResults([spfMail, spfHelo, dkimD, policyD],
                                            consumeErrors=True)
        mailResult, heloResult, (dkimResults, arcResult), (status, record) = results
        if not fromDomain:
            dmarc = DMARCResult("permerror" if len(domains) > 1 or count == 0 else "none",
                                ", ".join(domains), reason="no single From domain")
        elif status != "ok":
            dmarc = DMARCResult("temperror", fromDomain, reason="DNS failure")
        elif record is None:
            dmarc = DMARCResult("none", fromDomain, reason="no DMARC record")
        else:
            dmarc = self.dmarc.judge(
                record, fromDomain, (mailResult.result, mailResult.domain),
                [(r.result, r.domain) for r in dkimResults if r.domain])
        verdicts = AuthVerdicts(mailResult, heloResult, dkimResults, arcResult, dmarc)
        envelope.verdicts["auth"] = verdicts
        log.info("{id}: spf={spf} dkim={dkim} arc={arc} dmarc={dmarc} from={domain}",
                 id=envelope.id, spf=mailResult.result,
                 dkim=",".join(r.result for r in dkimResults) or "none",
                 arc=arcResult.result, dmarc=dmarc.result, domain=fromDomain or "-")
        if record is not None and self.reports is not None and dmarc.result in (
                "pass", "fail"):
            disposition = dmarc.policy if dmarc.result == "fail" else "none"
            await self.reports.record(
                envelope.client, fromDomain, record, disposition,
                any(a.startswith("dkim:") for a in dmarc.aligned),
                any(a.startswith("spf:") for a in dmarc.aligned),
                (mailResult.domain, mailResult.result),
                [(r.domain, r.selector, r.result) for r in dkimResults if r.domain])
        if dmarc.result == "temperror":
            raise SMTPReply(451, "4.7.5 Temporary DNS failure checking the sender's"
                                 " DMARC policy, try again later")
        if dmarc.result == "fail" and dmarc.policy in ("reject", "quarantine"):
            actions = {a: self.action(a, dmarc.policy) for a in envelope.local}
            verdicts.actions = actions
            if actions and all(v == "reject" for v in actions.values()):
                raise SMTPReply(550, f"5.7.1 Message refused: {fromDomain}'s DMARC policy"
                                     " rejects mail that fails authentication")
            for account, what in actions.items():
                if what in ("reject", "junk"):
                    envelope.placements[account] = [Placement(JUNK, create=True)]
        header = resultsHeader(envelope.hostname, verdicts)
        verdicts.header = header
        return header.encode("utf-8") + stripOurResults(message, envelope.hostname)


__all__ = ["AuthVerdicts", "AuthenticationCheck", "authservId", "resultsHeader",
           "stripOurResults"]

