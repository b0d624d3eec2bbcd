"""The Sender Rewriting Scheme for mail an alias forwards to another domain (pure).

A message from C{user@sender.example} that an alias of ours sends on to
C{carol@elsewhere.example} cannot keep its envelope sender: the next hop's SPF check of
C{sender.example} would fail against our address. It leaves with
C{SRS0=HHHH=TT=sender.example=user@<our primary domain>} instead (the "SRS0" form of
the Shevek scheme that Postfix's postsrsd and Exim use): C{TT} is the day (base32,
mod 1024) and C{HHHH} the first four base64 characters of an HMAC-SHA256 of the day,
domain and local part under a secret of ours. A bounce to that address is accepted
only with a valid hash no older than L{MAX_AGE_DAYS}, and goes back to the original
sender; nobody can use the scheme to relay elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

MAX_AGE_DAYS = 21
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
PREFIX = "srs0="


def loadSecret(path: str) -> bytes:
    """The secret in C{path}, made (32 random bytes, mode 0600) when it does not exist
    (blocking)."""
    try:
        with open(path, "rb") as f:
            secret = f.read()
        if len(secret) >= 16:
            return secret
    except FileNotFoundError:
        pass
    secret = os.urandom(32)
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)  # first writer wins
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    with open(path, "rb") as f:
        return f.read()


class SRS:
    """Rewrites envelope senders into our domain and back.

    @param secret: the HMAC key.
    @param domain: our domain the rewritten addresses are in.
    @param clock: seconds since the epoch (for tests).
    """

    def __init__(self, secret: bytes, domain: str, clock: object = time.time) -> None:
        self.secret = secret
        self.domain = domain.lower()
        self.clock = clock

    def _today(self) -> int:
        return int(self.clock() // 86400)  # type: ignore[operator]

    @staticmethod
    def _stamp(day: int) -> str:
        day %= 1024
        return _BASE32[day >> 5] + _BASE32[day & 31]

    def _hash(self, stamp: str, domain: str, local: str) -> str:
        mac = hmac.new(self.secret, f"{stamp}{domain}{local}".lower().encode("utf-8"),
                       hashlib.sha256).digest()
        return base64.b64encode(mac).decode()[:4].replace("+", "-").replace("/", "_")

    def forward(self, sender: str) -> str:
        """The address C{sender} leaves with (the null sender and our own stay)."""
        local, at, domain = sender.rpartition("@")
        if not at or not local or domain.lower() == self.domain:
            return sender
        stamp = self._stamp(self._today())
        return f"SRS0={self._hash(stamp, domain, local)}={stamp}={domain}={local}@{self.domain}"

    def reverse(self, address: str) -> str | None:
        """The original sender of an SRS0 address of ours, or None (not ours, bad hash,
        too old)."""
        local, at, domain = address.rpartition("@")
        if not at or not local.lower().startswith(PREFIX):
            return None
        parts = local[len(PREFIX):].split("=", 3)
        if len(parts) != 4:
            return None
        given, stamp, origDomain, origLocal = parts
        if len(stamp) != 2 or any(c not in _BASE32 for c in stamp.upper()):
            return None
        # Case-insensitive, as libsrs2: a hop may have lower-cased the local part.
        expected = self._hash(stamp.upper(), origDomain, origLocal)
        if not hmac.compare_digest(given.lower().encode(), expected.lower().encode()):
            return None
        day = (_BASE32.index(stamp.upper()[0]) << 5) | _BASE32.index(stamp.upper()[1])
        age = (self._today() - day) % 1024
        if age > MAX_AGE_DAYS:
            return None
        return f"{origLocal}@{origDomain}"


__all__ = ["SRS", "loadSecret"]
