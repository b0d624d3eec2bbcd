"""TLS: server context factories, and a self-signed certificate made on first start.

When the configuration names no certificate, ``ensureSelfSigned`` makes an EC P-256 key
and a self-signed certificate (SAN: localhost, the host name, 127.0.0.1, ::1) with the
``cryptography`` package under ``<data>/tls`` and reuses it on later starts.

Client side: ``clientContext`` for opportunistic TLS to MX servers (not verified: MX
certificates rarely match, and a failed handshake is retried in clear anyway), and
``verifyingClientContext`` for a smarthost with required TLS (chain and host name
verified against the system trust store or a configured CA file, ``loadCAFile``).
``namedClientContext`` gives an unverified context a server name to send (SNI): an MX
host with TLSA records must be told the TLSA base domain (RFC 7672 §3.2), and servers
with several certificates pick one by it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLContextFactory
from zope.interface import implementer

from pymaild.errors import ConfigError
from pymaild.files import writeFileAtomic


def ensureSelfSigned(certPath: str, keyPath: str, hostnames: list[str]) -> bool:
    """Create a self-signed certificate and key at the paths unless both exist.

    The key file is written with mode 0600. Returns True when a new pair was made.
    """
    if os.path.exists(certPath) and os.path.exists(keyPath):
        return False
    os.makedirs(os.path.dirname(certPath) or ".", exist_ok=True)
    os.makedirs(os.path.dirname(keyPath) or ".", exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names = list(dict.fromkeys(["localhost", *hostnames]))
    common = names[-1] if hostnames else names[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])
    now = datetime.datetime.now(datetime.UTC)
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyBytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    writeFileAtomic(keyPath, keyBytes, 0o600)
    writeFileAtomic(certPath, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def writeSecret(path: str, data: bytes) -> None:
    """Write a private key (or anything secret) to C{path} atomically, mode 0600."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    writeFileAtomic(path, data, 0o600)


def fingerprint(certPath: str) -> str:
    """The SHA-256 fingerprint of the certificate, as colon-separated hex."""
    with open(certPath, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _readPEM(key: str, path: str) -> bytes:
    """The bytes of the PEM file configured as C{key}.

    @raise ConfigError: naming the key and the file.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None


def serverContext(certPath: str, keyPath: str) -> ssl.CertificateOptions:
    """A server TLS context factory (TLS 1.2 or newer) from PEM files.

    @raise ConfigError: a file is missing or does not hold a matching cert and key;
        the message names C{tls.cert} or C{tls.key} and the file.
    """
    return _loadPair(certPath, keyPath)[0]


def _loadPair(certPath: str, keyPath: str) -> tuple[ssl.CertificateOptions, str]:
    """The context factory of L{serverContext} and the SHA-256 fingerprint of the very
    certificate it holds (one read of each file)."""
    options, fp, _ = _loadPairAndKey(certPath, keyPath)
    return options, fp


def _loadPairAndKey(certPath: str, keyPath: str) -> tuple[ssl.CertificateOptions, str, Any]:
    """L{_loadPair}, and the private key (a C{cryptography} key)."""
    certPEM = _readPEM("tls.cert", certPath)
    keyPEM = _readPEM("tls.key", keyPath)
    try:
        certs = x509.load_pem_x509_certificates(certPEM)
    except ValueError:
        raise ConfigError(f"tls.cert: {certPath} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(keyPEM, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"tls.key: {keyPath} holds no unencrypted PEM private key ({e})") from None
    if certs[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigError(f"tls.key: {keyPath} does not belong to tls.cert {certPath}")
    try:
        # Twisted types these as pyOpenSSL's objects, which pyOpenSSL itself now
        # deprecates; its context takes the cryptography objects given here.
        options = ssl.CertificateOptions(
            privateKey=key,  # type: ignore[arg-type]
            certificate=certs[0],  # type: ignore[arg-type]
            extraCertChain=certs[1:] or None,  # type: ignore[arg-type]
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
    except Exception as e:  # noqa: BLE001 - pyOpenSSL raises a variety of types
        raise ConfigError(f"tls.cert: {certPath}: not a usable certificate: {e}") from None
    # Twisted's own ALPN callback answers a client that offers ALPN (curl, browsers,
    # some mail clients offer "imap") with an empty protocol when the listener names
    # none, which OpenSSL turns into an "internal error" alert: no handshake at all.
    # Ours accepts HTTP/1.1 when offered (the https listener) and otherwise does not
    # acknowledge ALPN, as Dovecot and Postfix do.
    options.getContext().set_alpn_select_callback(selectALPN)
    return options, certs[0].fingerprint(hashes.SHA256()).hex(":").upper(), key


def selectALPN(connection: Any, offered: list[bytes]) -> Any:
    """The server's ALPN choice: C{http/1.1} when offered, else no protocol (the
    handshake goes on without ALPN)."""
    from OpenSSL.SSL import NO_OVERLAPPING_PROTOCOLS

    return b"http/1.1" if b"http/1.1" in offered else NO_OVERLAPPING_PROTOCOLS


#: The ALPN protocol of ACME's tls-alpn-01 challenge (RFC 8737).
ACME_TLS_ALPN = b"acme-tls/1"

#: C{(name, key) -> certificate or None}: the tls-alpn-01 challenge certificate for a
#: name, made with C{key} (the server's own key, so the handshake's signature
#: algorithm, already chosen when ALPN is decided, still fits).
ChallengeCertificates = Callable[[str, Any], "x509.Certificate | None"]


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """The server's TLS context factory, which a reload swaps without a restart.

    Every listener and STARTTLS holds this one object; each new TLS connection asks it
    for a context (C{getContext}), so connections made after L{reload} use the new
    certificate while those already open keep theirs.
    """

    def __init__(self, certPath: str, keyPath: str) -> None:
        self.certPath = certPath
        self.keyPath = keyPath
        #: Answers ACME tls-alpn-01 challenges when set (L{pymaild.certificates}).
        self.challengeCertificates: ChallengeCertificates | None = None
        self._current, self.fingerprint, self._key = self._load(certPath, keyPath)

    def _load(self, certPath: str, keyPath: str) -> tuple[ssl.CertificateOptions, str, Any]:
        """Read a pair; its context chooses ALPN with L{selectALPN} or, for a pending
        tls-alpn-01 challenge, answers it."""
        options, fp, key = _loadPairAndKey(certPath, keyPath)
        options.getContext().set_alpn_select_callback(self._selectALPN)
        return options, fp, key

    def _selectALPN(self, connection: Any, offered: list[bytes]) -> Any:
        """A client offering C{acme-tls/1} for a name with a pending challenge gets the
        challenge certificate and that protocol (RFC 8737 section 3); anyone else
        L{selectALPN}'s choice and the server's certificate."""
        if ACME_TLS_ALPN in offered and self.challengeCertificates is not None:
            name = connection.get_servername()
            if name:
                cert = self.challengeCertificates(
                    name.decode("ascii", "replace").lower(), self._key)
                if cert is not None:
                    connection.use_certificate(cert)
                    return ACME_TLS_ALPN
        return selectALPN(connection, offered)

    def getContext(self) -> Any:
        """The current OpenSSL context (the interface Twisted's TLS layer asks for)."""
        return self._current.getContext()

    def use(self, certPath: str, keyPath: str) -> None:
        """Switch to another certificate and key (blocking: reads the files; may run
        in a thread, the switch being one assignment). Later reloads read these paths.

        @raise ConfigError: the files are unusable (nothing changes).
        """
        fresh, fp, key = self._load(certPath, keyPath)
        self._current, self.fingerprint, self._key = fresh, fp, key
        self.certPath, self.keyPath = certPath, keyPath

    def reload(self) -> bool:
        """Read the certificate and key again; True when the certificate changed.

        @raise ConfigError: the files are now unusable (the old context stays).
        """
        fresh, fp, key = self._load(self.certPath, self.keyPath)
        if fp == self.fingerprint:
            return False
        self._current, self.fingerprint, self._key = fresh, fp, key
        return True


def clientContext() -> ssl.CertificateOptions:
    """A client context for opportunistic TLS to other mail servers (no verification)."""
    return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


@implementer(IOpenSSLClientConnectionCreator)
class _NamedClient:
    """Client connections of C{options} that send C{hostname} as the server name."""

    def __init__(self, options: Any, hostname: bytes) -> None:
        self.options = options
        self.hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        """A connection of the options' context, with SNI set."""
        create = getattr(self.options, "clientConnectionForTLS", None)
        if create is not None:
            connection = create(tlsProtocol)
        else:  # an old-style context factory (getContext only)
            connection = SSL.Connection(self.options.getContext(), None)
        connection.set_tlsext_host_name(self.hostname)
        return connection


def namedClientContext(hostname: str, options: Any = None) -> Any:
    """A client connection creator that sends C{hostname} (a DNS name as its A-label;
    a name that is not ASCII is not sent) in the TLS server name extension, and
    otherwise is C{options} (by default L{clientContext}: no verification). An IP
    address is never sent (RFC 6066 §3): C{options} itself is returned."""
    if options is None:
        options = clientContext()
    name = hostname.rstrip(".")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return options
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        return options
    return _NamedClient(options, raw)


def loadCAFile(caFile: str, key: str = "relay.smarthost_ca_file") -> Any:
    """A trust root holding every certificate in the PEM file C{caFile} (blocking).

    @raise ConfigError: naming C{key}, when the file is unreadable or holds no
        certificate.
    """
    try:
        with open(caFile, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {caFile}: {e.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(pem)
        roots = [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
                 for c in certs]
    except Exception as e:  # noqa: BLE001 - parsers raise a variety of types
        raise ConfigError(f"{key}: {caFile} holds no usable PEM certificate: {e}") from None
    return ssl.trustRootFromCertificates(roots)


def verifyingClientContext(hostname: str, trustRoot: Any = None) -> Any:
    """A client connection creator that verifies the server (TLS 1.2 or newer).

    The server's certificate must chain to C{trustRoot} (L{loadCAFile}'s result, or
    the system trust store when None: C{platformTrust}) and be valid for C{hostname}
    (a DNS name, checked as its A-label, or an IP address).
    """
    return ssl.optionsForClientTLS(
        hostname,
        trustRoot if trustRoot is not None else ssl.platformTrust(),
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
    )
