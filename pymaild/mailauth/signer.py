"""Outbound DKIM signing (RFC 6376, RFC 8463): the signer object and its message check.

L{DKIMSigner.sign} is blocking CPU work (RSA); it signs a message with every active key
of its From domain (L{pymaild.mailauth.dkimkeys.DKIMKeys}), relaxed/relaxed, over From,
To, Cc, Subject, Date, Message-ID, the reply fields and the MIME fields, with From signed
once more than it occurs (over-signing: no second From can be added). Other code that
generates mail (vacation replies, bounces) calls C{runner.run(signer.sign, message)}.

L{SigningCheck} is the last L{pymaild.smtp.checks.MessageCheck} of the chain: on the
submission role it runs the signer in the CPU runner before the message is queued; on
the MX role it passes the message on unchanged.
"""

from __future__ import annotations

from typing import Any

import dkim
from twisted.internet import defer
from twisted.logger import Logger

from pymaild.mailauth.dkimkeys import DKIMKeys, SigningKey
from pymaild.mailauth.headers import fields, fromDomains
from pymaild.smtp.checks import Envelope
from pymaild.threads import Runner

log = Logger()

SIGNED = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
)


def headersToSign(message: bytes) -> list[bytes]:
    """The C{h=} list: each present field of L{SIGNED} as often as it occurs, From once more."""
    counts: dict[str, int] = {}
    for name, _value in fields(message):
        if name in SIGNED:
            counts[name] = counts.get(name, 0) + 1
    out: list[bytes] = []
    for name in SIGNED:
        n = counts.get(name, 0) + (1 if name == "from" else 0)
        out.extend([name.encode()] * n)
    return out


class DKIMSigner:
    """Signs messages with their From domain's DKIM keys.

    @param keys: the key store.
    """

    def __init__(self, keys: DKIMKeys) -> None:
        self.keys = keys

    def keysFor(self, message: bytes) -> list[SigningKey]:
        """The keys that sign C{message}: those of its single From domain (blocking)."""
        count, domains = fromDomains(message)
        if count != 1 or len(domains) != 1:
            return []
        return self.keys.signingKeys(domains[0])

    def sign(self, message: bytes) -> bytes:
        """C{message} with one C{DKIM-Signature} per key of its From domain on top.

        A message whose From domain has no keys comes back unchanged. Blocking (disk and
        CPU): run it in a runner.
        """
        keys = self.keysFor(message)
        if not keys:
            return message
        include = headersToSign(message)
        signatures = []
        for key in keys:
            signer = dkim.DKIM(message, signature_algorithm=key.algorithm,
                               linesep=b"\r\n")
            signatures.append(signer.sign(
                key.selector.encode(), key.domain.encode(), key.private,
                canonicalize=(b"relaxed", b"relaxed"), include_headers=include))
        return b"".join(signatures) + message


class SigningCheck:
    """The chain's signing step: submitted mail is signed before it is queued.

    @param signer: the L{DKIMSigner}.
    @param runner: where the signing (CPU) runs.
    """

    def __init__(self, signer: DKIMSigner, runner: Runner) -> None:
        self.signer = signer
        self.runner = runner

    def check(self, envelope: Envelope, message: bytes) -> Any:
        """Sign C{message} on the submission role; pass it on elsewhere."""
        if envelope.role != "submission":
            return message
        d: defer.Deferred[bytes] = self.runner.run(self.signer.sign, message)

        def signed(result: bytes) -> bytes:
            added = result.count(b"DKIM-Signature:", 0, len(result) - len(message))
            if added:
                log.info("{id}: DKIM signed ({n} signatures)", id=envelope.id, n=added)
            return result

        return d.addCallback(signed)


class ARCSealer:
    """Adds an ARC set (RFC 8617) to a copy an alias forwards to another domain.

    The seal is made with the RSA key of the first active set of C{domain} (dkimpy
    seals with RSA only) and carries the C{Authentication-Results} our inbound check
    wrote under C{hostname}; a message without one, or a domain without keys, leaves
    unsealed. The next hop can then trust our verdicts even though forwarding broke
    SPF (and a changed message its DKIM).

    @param keys: the key store.
    @param domain: the domain whose key seals (the primary mail domain).
    @param hostname: our authserv-id.
    @param runner: the CPU runner.
    """

    def __init__(self, keys: DKIMKeys, domain: str, hostname: str, runner: Runner) -> None:
        self.keys = keys
        self.domain = domain
        self.hostname = hostname
        self.runner = runner

    def sealNow(self, message: bytes) -> bytes:
        """C{message} with an ARC set on top, or unchanged (blocking: CPU and disk)."""
        rsa = [k for k in self.keys.signingKeys(self.domain) if k.keyType == "rsa"]
        if not rsa:
            return message
        key = rsa[0]
        try:
            headers = dkim.arc_sign(message, key.selector.encode(), key.domain.encode(),
                                    key.private, self.hostname.encode(),
                                    include_headers=headersToSign(message) or [b"from"])
        except dkim.DKIMException as e:
            log.warn("ARC seal not added: {error}", error=str(e))
            return message
        return b"".join(headers) + message

    def seal(self, message: bytes) -> defer.Deferred[bytes]:
        """L{sealNow} in the runner."""
        return self.runner.run(self.sealNow, message)


__all__ = ["ARCSealer", "DKIMSigner", "SigningCheck", "headersToSign"]
