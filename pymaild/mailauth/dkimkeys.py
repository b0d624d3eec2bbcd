"""DKIM signing keys on disk: made, listed and retired by C{pymaild-admin dkim}.

Layout under the data directory::

    <data>/dkim/<domain>/<set>/rsa.pem         RSA-2048, PKCS#1 PEM       (mode 0600)
    <data>/dkim/<domain>/<set>/ed25519.key     Ed25519 seed, base64 (RFC 8463)
    <data>/dkim/<domain>/retired/<set>/...     a retired set: no longer signs

A key I{set} is what C{keygen --selector S} makes: two keys, published under the DNS
selectors C{S-rsa} and C{S-ed25519} (one key per selector, as RFC 6376 wants). Every
active set of a domain signs, so a new set can be published and start signing while the
old one still does; C{retire} then stops the old one. Directories are mode 0700; a new
file takes the owner of the domain's directory, so keys made by root stay readable by a
server that runs as its own user.
"""

from __future__ import annotations

import base64
import os
import re
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pymaild.address import domainToASCII
from pymaild.errors import AddressError, PymaildError

RSA_FILE = "rsa.pem"
ED25519_FILE = "ed25519.key"
RETIRED = "retired"
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,40}[a-z0-9])?$")


class DKIMKeyError(PymaildError):
    """A DKIM key operation failed (bad selector, set exists, no such set)."""


@dataclass(frozen=True)
class SigningKey:
    """One key that signs: its selector, algorithm and private key as dkimpy takes it.

    @ivar algorithm: C{b"rsa-sha256"} or C{b"ed25519-sha256"}.
    @ivar private: PEM bytes (RSA) or the base64 seed (Ed25519).
    @ivar public: the base64 C{p=} value for DNS.
    """

    domain: str
    selector: str
    algorithm: bytes
    private: bytes
    public: str

    @property
    def keyType(self) -> str:
        """C{rsa} or C{ed25519}, the DNS record's C{k=}."""
        return "rsa" if self.algorithm.startswith(b"rsa") else "ed25519"

    @property
    def dnsName(self) -> str:
        """Where its public key is published."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dnsValue(self) -> str:
        """The TXT record's value."""
        return f"v=DKIM1; k={self.keyType}; p={self.public}"


def zoneTXT(value: str) -> str:
    """C{value} as zone-file TXT data: quoted strings of at most 255 bytes."""
    parts = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    quoted = " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"'
                      for p in parts)
    return quoted if len(parts) == 1 else f"( {quoted} )"


def asciiDomain(domain: str) -> str:
    """C{domain} as lower-case A-labels.

    @raise DKIMKeyError: not a domain name.
    """
    try:
        return domainToASCII(domain.strip().rstrip(".").lower())
    except AddressError as e:
        raise DKIMKeyError(f"bad domain {domain!r}: {e}") from None


def _rsaPublic(pem: bytes) -> str:
    """The base64 SubjectPublicKeyInfo of a PEM RSA private key."""
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def _edPublic(seed: bytes) -> str:
    """The base64 raw public key of a base64 Ed25519 seed."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed))
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


class DKIMKeys:
    """The DKIM key sets under C{<data>/dkim}.

    @param root: the C{dkim} directory (C{<data>/dkim}).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._cache: dict[str, tuple[int, list[SigningKey]]] = {}

    def _domainDir(self, domain: str) -> str:
        return os.path.join(self.root, asciiDomain(domain))

    def _makeDir(self, path: str) -> None:
        """Create C{path} (mode 0700) with the owner of its parent."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        self._makeDir(parent)
        os.mkdir(path, 0o700)
        self._chownLike(path, parent)

    @staticmethod
    def _chownLike(path: str, like: str) -> None:
        """Give C{path} the owner of C{like} (only root can, and only root needs to)."""
        owner = os.stat(like)
        if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
            os.chown(path, owner.st_uid, owner.st_gid)

    def _write(self, path: str, data: bytes) -> None:
        """Write a private key file, mode 0600, durably."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._chownLike(path, os.path.dirname(path))

    def keygen(self, domain: str, selector: str | None = None) -> list[SigningKey]:
        """Make an RSA-2048 and an Ed25519 key for C{domain} as set C{selector}.

        @param selector: the set's name (default: today's date, C{YYYYMMDD}).
        @raise DKIMKeyError: bad selector, or a set of that name exists (active or retired).
        """
        selector = (selector or time.strftime("%Y%m%d", time.gmtime())).lower()
        if not _SELECTOR.match(selector) or selector == RETIRED:
            raise DKIMKeyError(f"bad selector {selector!r}: letters, digits and '-', at most 42")
        base = self._domainDir(domain)
        target = os.path.join(base, selector)
        if os.path.exists(target) or os.path.exists(os.path.join(base, RETIRED, selector)):
            raise DKIMKeyError(f"a key set {selector!r} exists for {asciiDomain(domain)}")
        rsaKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = rsaKey.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption())
        seed = base64.b64encode(ed25519.Ed25519PrivateKey.generate().private_bytes_raw())
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self._makeDir(base)
        temporary = os.path.join(base, f".new-{selector}")
        os.mkdir(temporary, 0o700)
        self._chownLike(temporary, base)
        self._write(os.path.join(temporary, RSA_FILE), pem)
        self._write(os.path.join(temporary, ED25519_FILE), seed + b"\n")
        os.rename(temporary, target)  # the set appears whole or not at all
        return self.keysOf(target, asciiDomain(domain), selector)

    def retire(self, domain: str, selector: str) -> None:
        """Stop set C{selector} of C{domain} signing (its files move to C{retired/}).

        @raise DKIMKeyError: no such active set.
        """
        base = self._domainDir(domain)
        source = os.path.join(base, selector.lower())
        if selector.lower() == RETIRED or not os.path.isdir(source):
            raise DKIMKeyError(f"no active key set {selector!r} for {asciiDomain(domain)}")
        self._makeDir(os.path.join(base, RETIRED))
        os.rename(source, os.path.join(base, RETIRED, selector.lower()))

    def domains(self) -> list[str]:
        """The domains that have key directories."""
        try:
            return sorted(n for n in os.listdir(self.root)
                          if os.path.isdir(os.path.join(self.root, n)))
        except FileNotFoundError:
            return []

    def sets(self, domain: str, retired: bool = False) -> list[str]:
        """The names of the domain's active (or retired) key sets, sorted."""
        base = self._domainDir(domain)
        if retired:
            base = os.path.join(base, RETIRED)
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n != RETIRED and not n.startswith(".")
                      and os.path.isdir(os.path.join(base, n)))

    @staticmethod
    def keysOf(path: str, domain: str, name: str) -> list[SigningKey]:
        """The two keys of the set at C{path} (one may be missing if removed by hand)."""
        keys = []
        rsaPath = os.path.join(path, RSA_FILE)
        if os.path.exists(rsaPath):
            with open(rsaPath, "rb") as f:
                pem = f.read()
            keys.append(SigningKey(domain, f"{name}-rsa", b"rsa-sha256", pem, _rsaPublic(pem)))
        edPath = os.path.join(path, ED25519_FILE)
        if os.path.exists(edPath):
            with open(edPath, "rb") as f:
                seed = f.read().strip()
            keys.append(SigningKey(domain, f"{name}-ed25519", b"ed25519-sha256", seed,
                                   _edPublic(seed)))
        return keys

    def forget(self) -> None:
        """Drop the cached keys: the next use reads them from disk (SIGHUP)."""
        self._cache = {}

    def signingKeys(self, domain: str) -> list[SigningKey]:
        """Every key of the domain's active sets (cached until the directory changes).

        Blocking (disk): call it off the reactor thread.
        """
        try:
            domain = asciiDomain(domain)
        except DKIMKeyError:
            return []
        base = os.path.join(self.root, domain)
        try:
            stamp = os.stat(base).st_mtime_ns
        except FileNotFoundError:
            return []
        cached = self._cache.get(domain)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys = []
        for name in self.sets(domain):
            keys.extend(self.keysOf(os.path.join(base, name), domain, name))
        self._cache[domain] = (stamp, keys)
        return keys


__all__ = ["DKIMKeyError", "DKIMKeys", "SigningKey", "asciiDomain", "zoneTXT"]
