"""Certificates by ACME (RFC 8555): obtained, renewed, and given to every TLS listener.

With C{acme.enabled}, L{CertificateManager} (a service the tap adds) makes sure the
server holds a certificate from the configured ACME directory (Let's Encrypt by default)
for the host name and, by default, C{autoconfig.DOMAIN} and C{mta-sts.DOMAIN} of every
local domain:

- at start and every C{acme.check_interval} seconds it looks at the certificate in
  C{<data>/tls/acme.pem}; when there is none, it does not cover the names, or it
  expires within C{acme.renew_days} days, a new one is ordered;
- each name is proven with the first challenge of C{acme.challenges} the ACME server
  offers: http-01, whose key authorisation the HTTP listener (L{pymaild.web.site})
  serves at C{/.well-known/acme-challenge/TOKEN} (port 80 in production), or
  tls-alpn-01 (RFC 8737), answered by every TLS listener (port 443 in production): a
  client offering ALPN C{acme-tls/1} for that name gets a self-signed certificate
  holding the key authorisation's digest in the critical C{acmeIdentifier} extension
  (L{pymaild.tls.ServerTLS}); other clients are not affected;
- the new private key (EC P-256) and the certificate chain are written together to
  C{acme.pem} (mode 0600, written to a temporary file, fsynced and renamed: a crash
  never leaves a key with the wrong certificate), and L{pymaild.tls.ServerTLS} switches
  to it: SMTP, POP3, IMAP and HTTPS connections made from then on get the new
  certificate, without a restart;
- a failed order is logged and tried again after C{acme.retry_interval} seconds; until
  a certificate is obtained the server uses the one it had (self-signed at first).

The account key (RSA 2048, a JWK) and the account's URL live in
C{<data>/tls/acme-account.json} (0600). The ACME protocol runs in the C{acme} package
(certbot's library), which is blocking: every step runs in a thread of its own pool,
never in the reactor; only the challenge answers and the switch happen in the reactor.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from pymaild import tls
from pymaild.errors import ConfigError

log = Logger(namespace="pymaild.acme")

#: id-pe-acmeIdentifier (RFC 8737 section 6.1).
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")

CERT_FILE = "acme.pem"
ACCOUNT_FILE = "acme-account.json"
USER_AGENT = "pymaild"


class ChallengeAnswers:
    """The challenges now pending (thread-safe): http-01 answers by token, tls-alpn-01
    key authorisation digests by name."""

    def __init__(self) -> None:
        self._answers: dict[str, bytes] = {}
        self._alpn: dict[str, bytes] = {}
        self._alpnCertificates: dict[tuple[str, bytes, bytes], x509.Certificate] = {}
        self._lock = threading.Lock()

    def putALPN(self, name: str, keyAuthorization: str) -> None:
        """Answer tls-alpn-01 for C{name} with C{keyAuthorization} from now on."""
        with self._lock:
            self._alpn[name.lower()] = hashlib.sha256(keyAuthorization.encode("ascii")).digest()

    def removeALPN(self, name: str) -> None:
        """Stop answering tls-alpn-01 for C{name}."""
        with self._lock:
            self._alpn.pop(name.lower(), None)
            for k in [k for k in self._alpnCertificates if k[0] == name.lower()]:
                del self._alpnCertificates[k]

    def alpnCertificate(self, name: str, key: Any) -> x509.Certificate | None:
        """The tls-alpn-01 certificate for C{name} made with C{key}, or None when no
        challenge for it is pending (the TLS listeners call this in a handshake)."""
        with self._lock:
            digest = self._alpn.get(name)
            if digest is None:
                return None
            public = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            cached = self._alpnCertificates.get((name, digest, public))
            if cached is None:
                cached = challengeCertificate(name, digest, key)
                self._alpnCertificates[(name, digest, public)] = cached
            return cached

    def put(self, token: str, answer: bytes) -> None:
        """Serve C{answer} for C{token} from now on."""
        with self._lock:
            self._answers[token] = answer

    def remove(self, token: str) -> None:
        """Stop serving C{token}."""
        with self._lock:
            self._answers.pop(token, None)

    def get(self, token: str) -> bytes | None:
        """The answer for C{token}, or None (the HTTP listener calls this)."""
        with self._lock:
            return self._answers.get(token)


def challengeCertificate(name: str, digest: bytes, key: Any) -> x509.Certificate:
    """A self-signed tls-alpn-01 certificate (RFC 8737 section 3): C{name} as its only
    subjectAltName, and the critical acmeIdentifier extension holding C{digest}, the
    SHA-256 of the key authorisation, as a DER OCTET STRING."""
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    algorithm = None if isinstance(key, (ed25519.Ed25519PrivateKey,
                                         ed448.Ed448PrivateKey)) else hashes.SHA256()
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest),
                           critical=True)
            .sign(key, algorithm))


def _tlsALPN01() -> Any:
    """The tls-alpn-01 challenge type for the C{acme} package, registered the first
    time (acme 4 dropped its own; its registry is how a client adds a type)."""
    from acme import challenges

    known = challenges.Challenge.TYPES.get("tls-alpn-01")
    if known is not None:
        return known

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        """The response to tls-alpn-01: an empty object, as for every type."""

        typ = "tls-alpn-01"

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        """tls-alpn-01 (RFC 8737): the validation is the key authorisation."""

        response_cls = TLSALPN01Response
        typ = response_cls.typ

        def validation(self, account_key: Any, **kwargs: Any) -> str:
            """The key authorisation, whose digest the certificate carries."""
            return self.key_authorization(account_key)

    return TLSALPN01


def certificateNames(hostname: str, domains: Sequence[str],
                     configured: Sequence[str] = ()) -> list[str]:
    """The names to order: C{configured}, or the host name and C{autoconfig.} and
    C{mta-sts.} of every domain (lower case, ASCII, without duplicates)."""
    names = list(configured) or [hostname] + [
        f"{prefix}.{d}" for d in domains for prefix in ("autoconfig", "mta-sts")]
    return list(dict.fromkeys(n.lower().rstrip(".") for n in names))


def certificateState(path: str) -> tuple[set[str], datetime.datetime] | None:
    """The DNS names and expiry of the first certificate in C{path}, or None when
    there is no usable file (blocking)."""
    try:
        with open(path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        return None
    cert = certs[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = {n.lower() for n in san.value.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        names = set()
    return names, cert.not_valid_after_utc


def needsRenewal(path: str, names: Sequence[str], renewDays: float,
                 now: datetime.datetime | None = None) -> str | None:
    """Why the certificate in C{path} must be replaced (a sentence), or None (blocking)."""
    state = certificateState(path)
    if state is None:
        return "no certificate yet"
    have, notAfter = state
    missing = sorted(set(names) - have)
    if missing:
        return f"the certificate does not cover {', '.join(missing)}"
    now = now or datetime.datetime.now(datetime.UTC)
    left = notAfter - now
    if left < datetime.timedelta(days=renewDays):
        return f"the certificate expires on {notAfter:%Y-%m-%d %H:%M} UTC"
    return None


class AcmeIssuer:
    """Orders one certificate from an ACME directory (blocking: run it in a thread).

    @param directory: the ACME directory URL.
    @param accountPath: where the account key and URL are kept.
    @param email: contact address for the account ("" = none).
    @param caFile: PEM file trusted for the ACME server's HTTPS ("" = the system's).
    @param answers: where challenge answers are published.
    @param timeout: seconds to wait for the ACME server to validate and issue.
    @param challenges: the challenge types to use, most preferred first.
    """

    def __init__(self, directory: str, accountPath: str, email: str, caFile: str,
                 answers: ChallengeAnswers, timeout: float = 300.0,
                 challenges: Sequence[str] = ("http-01",)) -> None:
        self.directory = directory
        self.accountPath = accountPath
        self.email = email
        self.caFile = caFile
        self.answers = answers
        self.timeout = timeout
        self.challenges = tuple(challenges)

    def _account(self) -> tuple[Any, str | None]:
        """The account key (made and saved the first time) and the account URL."""
        import josepy as jose

        try:
            with open(self.accountPath, encoding="utf-8") as f:
                saved = json.load(f)
            return jose.JWK.json_loads(json.dumps(saved["key"])), saved.get("url")
        except FileNotFoundError:
            pass
        key = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self._saveAccount(key, None)
        return key, None

    def _saveAccount(self, key: Any, url: str | None) -> None:
        data = json.dumps({"key": key.to_json(), "url": url}).encode()
        tls.writeSecret(self.accountPath, data)

    def issue(self, names: Sequence[str]) -> bytes:
        """Order a certificate for C{names}; return the new key and chain as PEM.

        @raise Exception: whatever the ACME exchange raised (the caller logs it).
        """
        from acme import challenges, client, crypto_util, errors, messages

        alpnType = _tlsALPN01()
        key, url = self._account()
        # acme passes verify_ssl to requests, whose verify is a flag or a CA bundle.
        net = client.ClientNetwork(key, user_agent=USER_AGENT,
                                   verify_ssl=self.caFile or True)  # type: ignore[arg-type]
        directory = client.ClientV2.get_directory(self.directory, net)
        acme = client.ClientV2(directory, net)
        if url is None:
            registration = messages.NewRegistration.from_data(
                email=self.email or None, terms_of_service_agreed=True)
            try:
                regr = acme.new_account(registration)
            except errors.ConflictError as e:
                regr = messages.RegistrationResource(uri=e.location,
                                                     body=messages.Registration())
            self._saveAccount(key, regr.uri)
        else:
            regr = messages.RegistrationResource(uri=url, body=messages.Registration())
        net.account = regr

        certKey = ec.generate_private_key(ec.SECP256R1())
        keyPEM = certKey.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
        order = acme.new_order(crypto_util.make_csr(keyPEM, list(names)))
        kinds = {"http-01": challenges.HTTP01, "tls-alpn-01": alpnType}
        tokens: list[str] = []
        alpnNames: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                name = authz.body.identifier.value
                offered = {kind: c for c in authz.body.challenges
                           for kind, cls in kinds.items() if isinstance(c.chall, cls)}
                kind = next((k for k in self.challenges if k in offered), None)
                if kind is None:
                    raise RuntimeError(
                        f"the ACME server offers none of {', '.join(self.challenges)}"
                        f" for {name} (it offers {', '.join(sorted(offered)) or 'neither'})")
                challb = offered[kind]
                response, validation = challb.response_and_validation(key)
                if kind == "http-01":
                    token = challb.chall.encode("token")
                    self.answers.put(token, validation.encode("ascii"))
                    tokens.append(token)
                else:
                    self.answers.putALPN(name, validation)
                    alpnNames.append(name)
                log.info("ACME: answering {kind} for {name}", kind=kind, name=name)
                acme.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.timeout)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                self.answers.remove(token)
            for name in alpnNames:
                self.answers.removeALPN(name)
        return keyPEM + order.fullchain_pem.encode("ascii")


class CertificateManager(Service):
    """Keeps C{<data>/tls/acme.pem} current and the server's TLS on it.

    @param serverTLS: the L{pymaild.tls.ServerTLS} every listener uses.
    @param issuer: an L{AcmeIssuer} (or anything with C{issue(names) -> bytes}).
    @param runner: runs the blocking work (a pool of its own).
    @param clock: the reactor's clock.
    @param path: the certificate file (key and chain).
    @param names: the names the certificate must cover.
    @param renewDays: renew when fewer days than this are left.
    @param checkInterval: seconds between checks.
    @param retryInterval: seconds before trying again after a failure.
    """

    def __init__(self, serverTLS: tls.ServerTLS, issuer: Any, runner: Any, clock: Any,
                 path: str, names: Sequence[str], renewDays: float, checkInterval: float,
                 retryInterval: float) -> None:
        self.setName("acme")
        self.serverTLS = serverTLS
        self.issuer = issuer
        self.runner = runner
        self.clock = clock
        self.path = path
        self.names = list(names)
        self.renewDays = renewDays
        self.checkInterval = checkInterval
        self.retryInterval = retryInterval
        self._call: Any = None
        self._running: defer.Deferred[Any] | None = None
        self.issued = 0
        #: Called after a new certificate is in use (the master tells its workers).
        self.switched: list[Callable[[], Any]] = []

    def startService(self) -> None:
        """Check at once, then on the schedule."""
        super().startService()
        self._schedule(0)

    def stopService(self) -> Any:
        """Stop the schedule; let an order in flight finish (its result is kept)."""
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return None

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self.clock.callLater(delay, self.check)

    def check(self) -> defer.Deferred[Any]:
        """Renew when needed; fire when done (never fails: problems are logged)."""
        if self._call is not None and self._call.active():
            self._call.cancel()  # called early (SIGHUP): the next check comes after this
        self._call = None
        if self._running is not None:
            return self._running
        d = self.runner.run(needsRenewal, self.path, self.names, self.renewDays)

        def decided(reason: str | None) -> Any:
            if reason is None:
                return None
            log.info("ACME: ordering a certificate for {names}: {reason}",
                     names=", ".join(self.names), reason=reason)
            return self.runner.run(self._obtain).addCallback(self._switch)

        def failed(f: Any) -> float:
            log.error("ACME: no certificate obtained ({error}); trying again in {n:g} s",
                      error=f.getErrorMessage() or f.type.__name__, n=self.retryInterval)
            return self.retryInterval

        def again(delay: Any) -> None:
            self._running = None
            self._schedule(delay if isinstance(delay, float) else self.checkInterval)

        d.addCallback(decided).addErrback(failed).addCallback(again)
        self._running = d
        return d

    def _obtain(self) -> str:
        """Order, write key and chain atomically, and switch the listeners to them
        (blocking; the switch is one reference assignment in L{tls.ServerTLS.use})."""
        pem = self.issuer.issue(self.names)
        tls.writeSecret(self.path, pem)
        try:
            self.serverTLS.use(self.path, self.path)
        except ConfigError as e:
            raise RuntimeError(f"the new certificate is unusable: {e}") from None
        state = certificateState(self.path)
        return f"{state[1]:%Y-%m-%d %H:%M}" if state else "?"

    def _switch(self, expiry: str) -> None:
        """Count and log the new certificate."""
        self.issued += 1
        log.info("ACME: new certificate for {names} in use (SHA-256 {fp}, expires {expiry}"
                 " UTC)", names=", ".join(self.names), fp=self.serverTLS.fingerprint,
                 expiry=expiry)
        for call in self.switched:
            call()


__all__ = [
    "AcmeIssuer",
    "CertificateManager",
    "ChallengeAnswers",
    "certificateNames",
    "certificateState",
    "needsRenewal",
]
