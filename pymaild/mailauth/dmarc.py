"""DMARC (RFC 7489): the policy record, organisational domains and alignment.

Written here: no maintained DMARC library fits Twisted (the Python ones either look DNS
up themselves, synchronously, or come with a mail filter around them). The
organisational domain comes from the public suffix list the C{publicsuffixlist} package
ships (no network). Record discovery asks C{_dmarc.<From domain>}, then
C{_dmarc.<organisational domain>}; the record found gives C{p} (or C{sp} for a
subdomain when it came from the organisational domain), C{adkim}, C{aspf} and C{pct}.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from publicsuffixlist import PublicSuffixList

from pymaild.mailauth.resolver import TEMPERROR, DNSResolver

POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DMARCRecord:
    """The tags of a DMARC record that decide a result."""

    domain: str
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass
class DMARCResult:
    """The outcome for one From domain.

    @ivar result: C{pass}, C{fail}, C{none}, C{temperror} or C{permerror}.
    @ivar policy: the policy to apply (C{none}, C{quarantine}, C{reject}); after
        C{pct} sampling, so C{none} when the message fell outside it.
    @ivar published: the policy as published (for the header's C{policy.published}).
    """

    result: str
    fromDomain: str
    policy: str = "none"
    published: str = ""
    reason: str = ""
    aligned: list[str] = field(default_factory=list)


def parseRecord(text: str, domain: str) -> DMARCRecord | None:
    """A DMARC record from TXT data, or None when it is not one (or not valid).

    An invalid C{p} with a valid C{rua} is read as C{p=none} (§6.6.3); other bad tag
    values take their defaults.
    """
    tags: dict[str, str] = {}
    parts = [p.strip() for p in text.split(";")]
    if not parts or parts[0].replace(" ", "") != "v=DMARC1":
        return None
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", p).lower()
    if sp not in POLICIES:
        sp = p
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DMARCRecord(domain, p, sp, adkim if adkim in ("r", "s") else "r",
                       aspf if aspf in ("r", "s") else "r", max(0, min(100, pct)))


class DMARCEvaluator:
    """Finds a From domain's DMARC record and judges alignment.

    @param dns: the L{DNSResolver}.
    @param rng: for C{pct} sampling.
    """

    def __init__(self, dns: DNSResolver, rng: random.Random | None = None) -> None:
        self.dns = dns
        self.psl = PublicSuffixList()
        self.rng = rng or random.Random()

    def organisational(self, domain: str) -> str:
        """The organisational domain of C{domain} (itself when it is a public suffix)."""
        return self.psl.privatesuffix(domain.lower()) or domain.lower()

    def aligned(self, domain: str, fromDomain: str, mode: str) -> bool:
        """Whether an authenticated C{domain} aligns with C{fromDomain} (C{r} or C{s})."""
        domain, fromDomain = domain.lower().rstrip("."), fromDomain.lower().rstrip(".")
        if mode == "s":
            return domain == fromDomain
        return self.organisational(domain) == self.organisational(fromDomain)

    async def _records(self, name: str) -> tuple[str, list[DMARCRecord]]:
        """C{("ok"|"temperror", records)} at C{_dmarc.<name>}."""
        answer = await self.dns.txt(f"_dmarc.{name}")
        if answer.status == TEMPERROR:
            return TEMPERROR, []
        found = []
        for raw in answer.records:
            record = parseRecord(raw.decode("ascii", "replace"), name)
            if record is not None:
                found.append(record)
        return "ok", found

    async def policyRecord(self, fromDomain: str) -> tuple[str, DMARCRecord | None]:
        """Discover the record (§6.6.3): C{(status, record)}, status C{ok} or temperror."""
        status, records = await self._records(fromDomain)
        if status == TEMPERROR:
            return TEMPERROR, None
        if len(records) == 1:
            return "ok", records[0]
        if records:  # several records: as if none (§6.6.3)
            return "ok", None
        org = self.organisational(fromDomain)
        if org == fromDomain:
            return "ok", None
        status, records = await self._records(org)
        if status == TEMPERROR:
            return TEMPERROR, None
        return "ok", records[0] if len(records) == 1 else None

    def judge(self, record: DMARCRecord, fromDomain: str,
              spf: tuple[str, str], dkim: list[tuple[str, str]]) -> DMARCResult:
        """The result given the SPF C{(result, domain)} and DKIM C{[(result, d)]}.

        A message passes when an aligned identifier passed. When none did but an
        aligned one had a temporary error, the result is temperror (try again later).
        """
        subdomain = record.domain != fromDomain
        published = record.sp if subdomain else record.p
        aligned = []
        temporary = False
        spfResult, spfDomain = spf
        if spfDomain and self.aligned(spfDomain, fromDomain, record.aspf):
            if spfResult == "pass":
                aligned.append(f"spf:{spfDomain}")
            temporary |= spfResult == TEMPERROR
        for result, domain in dkim:
            if self.aligned(domain, fromDomain, record.adkim):
                if result == "pass":
                    aligned.append(f"dkim:{domain}")
                temporary |= result == TEMPERROR
        if aligned:
            return DMARCResult("pass", fromDomain, "none", published, "aligned", aligned)
        if temporary:
            return DMARCResult(TEMPERROR, fromDomain, "none", published,
                               "an aligned identifier had a DNS failure")
        policy = published
        if record.pct < 100 and self.rng.randrange(100) >= record.pct:
            # §6.6.4: outside the sample, the next milder policy applies
            policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
        return DMARCResult("fail", fromDomain, policy, published, "no aligned identifier")


__all__ = ["DMARCEvaluator", "DMARCRecord", "DMARCResult", "parseRecord"]
