"""DKIM (RFC 6376, RFC 8463) and ARC (RFC 8617) verification with dkimpy, off the reactor.

dkimpy verifies synchronously and asks DNS through a C{dnsfunc}. Here the work is split
in three so the reactor never blocks and no thread waits on DNS:

1. in the CPU runner, the signature and seal header fields are parsed (dkimpy's own
   parser) for the key names they need (C{selector._domainkey.domain});
2. on the reactor, those keys are looked up through the asynchronous L{DNSResolver},
   all at once;
3. in the CPU runner, dkimpy verifies each signature and the ARC chain with a
   C{dnsfunc} that answers from step 2's results and never touches the network.

A key that could not be fetched for a DNS failure makes that signature C{temperror}; a
missing or malformed key, a malformed signature, an unknown algorithm or a key over
L{MAX_KEY_BITS} make it C{permerror}; a signature that does not verify is C{fail}. A
body that does not match its signature's hash is C{neutral} ("body hash did not
verify", as the big receivers report it). At most L{MAX_SIGNATURES} signatures are
verified (the rest are C{policy}, ignored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value
from twisted.internet import defer

from pymaild.mailauth.resolver import OK, TEMPERROR, Answer, DNSResolver
from pymaild.threads import Runner

MAX_SIGNATURES = 10
MAX_ARC_KEYS = 20
MAX_KEY_BITS = 8192


@dataclass(frozen=True)
class DKIMResult:
    """The result of one signature.

    @ivar result: C{pass}, C{fail}, C{neutral}, C{policy}, C{temperror}, C{permerror}.
    @ivar b: the first characters of its C{b=} (to tell signatures apart, RFC 6008).
    """

    result: str
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    b: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ARCResult:
    """The ARC chain's validation: C{none}, C{pass} or C{fail}, and how many sets."""

    result: str
    instances: int = 0
    reason: str = ""


def _text(value: Any) -> str:
    """A tag value as text."""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value or "")


def keyNames(message: bytes) -> tuple[list[str], list[str]]:
    """The key names the DKIM signatures and the ARC sets of C{message} need (pure CPU)."""
    parsed = dkim.DKIM(message)
    dkimNames: list[str] = []
    arcNames: list[str] = []
    for name, value in parsed.headers:
        lower = name.lower()
        if lower not in (b"dkim-signature", b"arc-seal", b"arc-message-signature"):
            continue
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            continue
        if b"s" not in tags or b"d" not in tags:
            continue
        key = f"{_text(tags[b's'])}._domainkey.{_text(tags[b'd'])}".lower()
        target = dkimNames if lower == b"dkim-signature" else arcNames
        if key not in target:
            target.append(key)
    return dkimNames[:MAX_SIGNATURES], arcNames[:MAX_ARC_KEYS]


def _dnsfunc(keys: dict[str, Answer]) -> Any:
    """A dkimpy C{dnsfunc} answering from fetched keys (the first TXT record, or None)."""

    def lookup(name: Any, timeout: int = 5) -> bytes | None:
        answer = keys.get(_text(name).rstrip(".").lower())
        if answer is None or not answer.ok:
            return None
        return answer.records[0]

    return lookup


def _keyProblem(name: str, answer: Answer | None) -> DKIMResult | None:
    """The result a key's lookup alone decides (temperror, permerror), or None."""
    if answer is None:
        return DKIMResult("permerror", reason=f"key {name} not fetched")
    if answer.status == TEMPERROR:
        return DKIMResult(TEMPERROR, reason=f"key {name}: DNS failure")
    if answer.status != OK:
        return DKIMResult("permerror", reason=f"no key at {name}")
    try:
        _pk, bits, ktag, _tlsrpt = dkim.evaluate_pk(name.encode(), answer.records[0])
    except Exception as e:  # dkimpy raises several kinds for bad keys
        return DKIMResult("permerror", reason=f"bad key at {name}: {e}")
    if ktag == b"rsa" and bits > MAX_KEY_BITS:
        return DKIMResult("permerror", reason=f"key at {name} too large ({bits} bits)")
    return None


def verifyAll(message: bytes, keys: dict[str, Answer]) -> tuple[list[DKIMResult], ARCResult]:
    """Verify every DKIM signature and the ARC chain from fetched keys (CPU, no I/O)."""
    dnsfunc = _dnsfunc(keys)
    parsed = dkim.DKIM(message, minkey=1024)
    count = sum(1 for name, _ in parsed.headers if name.lower() == b"dkim-signature")
    results: list[DKIMResult] = []
    for index in range(count):
        if index >= MAX_SIGNATURES:
            results.append(DKIMResult("policy", reason="too many signatures"))
            continue
        results.append(_verifyOne(message, index, keys, dnsfunc))
    return results, _verifyARC(message, keys, dnsfunc)


def _verifyOne(message: bytes, index: int, keys: dict[str, Answer],
               dnsfunc: Any) -> DKIMResult:
    """The result of signature C{index}."""
    verifier = dkim.DKIM(message, minkey=1024)
    try:
        prepared = verifier.verify_headerprep(index)
    except dkim.DKIMException as e:
        return DKIMResult("permerror", reason=f"malformed signature: {e}")
    except Exception as e:  # dkimpy's parsers raise more than DKIMException
        return DKIMResult("permerror", reason=f"malformed signature: {e!r}")
    if not prepared:
        return DKIMResult("permerror", reason="malformed signature")
    sig, include, sigheaders = prepared
    domain, selector = _text(sig.get(b"d")), _text(sig.get(b"s"))
    algorithm = _text(sig.get(b"a"))
    b = re.sub(r"\s+", "", _text(sig.get(b"b")))[:8]

    def result(value: str, reason: str = "") -> DKIMResult:
        return DKIMResult(value, domain.lower(), selector, algorithm, b, reason)

    name = f"{selector}._domainkey.{domain}".lower()
    problem = _keyProblem(name, keys.get(name))
    if problem is not None:
        return result(problem.result, problem.reason)
    try:
        ok = verifier.verify_sig(sig, include, sigheaders[index], dnsfunc)
    except dkim.ValidationError as e:
        if "body hash" in str(e):
            return result("neutral", "body hash did not verify")
        return result("permerror", str(e))
    except dkim.DKIMException as e:
        return result("permerror", str(e))
    except Exception as e:  # a key or signature dkimpy cannot handle
        return result("permerror", f"cannot verify: {e!r}")
    return result("pass") if ok else result("fail", "signature did not verify")


def _verifyARC(message: bytes, keys: dict[str, Answer], dnsfunc: Any) -> ARCResult:
    """The ARC chain's validation."""
    arc = dkim.ARC(message, minkey=1024)
    seals = [v for n, v in arc.headers if n.lower() == b"arc-seal"]
    if not seals:
        return ARCResult("none")
    try:
        cv, _results, reason = arc.verify(dnsfunc=dnsfunc)
    except Exception as e:  # malformed ARC sets
        return ARCResult("fail", len(seals), f"malformed ARC set: {e}")
    value = _text(cv).lower()
    if value not in ("pass", "fail", "none"):
        value = "fail"
    if value == "fail" and any(a.status == TEMPERROR for a in keys.values()):
        reason = "DNS failure fetching a key"
    return ARCResult(value, len(seals), _text(reason))


class DKIMVerifier:
    """Verifies a message's DKIM signatures and ARC chain (see the module docstring).

    @param dns: the L{DNSResolver}.
    @param runner: the CPU runner.
    """

    def __init__(self, dns: DNSResolver, runner: Runner) -> None:
        self.dns = dns
        self.runner = runner

    @defer.inlineCallbacks
    def verify(self, message: bytes) -> Any:
        """Fire with C{(list of DKIMResult, ARCResult)}."""
        dkimNames, arcNames = yield self.runner.run(keyNames, message)
        names = list(dict.fromkeys(dkimNames + arcNames))
        answers = yield defer.gatherResults([self.dns.txt(n) for n in names])
        keys = dict(zip(names, answers, strict=True))
        result = yield self.runner.run(verifyAll, message, keys)
        return result


__all__ = ["ARCResult", "DKIMResult", "DKIMVerifier", "keyNames", "verifyAll"]
