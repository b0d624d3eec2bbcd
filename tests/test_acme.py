"""Certificates by ACME against a real ACME server: Debian's pebble, on loopback.

The test starts pebble-challtestsrv as pebble's DNS (every name resolves to 127.0.0.1)
and pebble with a CA made for the test, pointed at pymaild's HTTP listener for the
http-01 challenge. A real ``twistd -n pymaild`` with C{acme.enabled} then orders a
certificate, and an IMAP client that trusts only pebble's root checks it with full
verification (chain and host name); with a renewal window longer than pebble's
certificates live, the server renews on every check, and the same client sees a new
certificate without the server restarting.
"""

from __future__ import annotations

import datetime
import imaplib
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from pymaild import certificates
from tests.support import (
    ServerProcess,
    dataWithUsers,
    freePort,
    requireClient,
    stopProcess,
    waitForPort,
)

USER = "alice@example.org"
PASSWORD = "alice-secret-pw"
HOST = "mail.example.org"


def makeCA(directory: str) -> tuple[str, str, str]:
    """A CA and a certificate for pebble's own HTTPS (127.0.0.1, localhost); the
    paths of the CA certificate, the server certificate and its key."""
    now = datetime.datetime.now(datetime.UTC)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pymaild test ACME CA")])
    ca = (x509.CertificateBuilder().subject_name(caName).issuer_name(caName)
          .public_key(caKey.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(caKey, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(caName).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(caKey, hashes.SHA256()))
    paths = [os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths[0], paths[1], paths[2]


def peerCertificate(port: int, root: str) -> x509.Certificate:
    """The certificate an IMAP STARTTLS session on C{port} gets, verified against
    C{root} for the host name (fails when it does not verify)."""
    context = ssl.create_default_context(cafile=root)
    imap = imaplib.IMAP4("127.0.0.1", port)
    try:
        imap.host = HOST  # the name STARTTLS sends (SNI) and checks
        imap.starttls(ssl_context=context)
        imap.login(USER, PASSWORD)
        der = imap.sock.getpeercert(binary_form=True)
    finally:
        imap.logout()
    return x509.load_der_x509_certificate(der)


class AcmeTests(SynchronousTestCase):
    """pymaild obtains and renews its certificate from pebble."""

    #: pymaild's listeners in the test.
    listeners = ("smtp", "imap", "http", "https")
    #: More of pymaild's C{[acme]} section.
    acmeExtra = ""
    #: C{--workers}.
    workers = 1

    def setUp(self) -> None:
        """Start pebble's DNS, pebble, and pymaild with ACME on."""
        pebble = requireClient("pebble")
        challtest = requireClient("pebble-challtestsrv", "pebble")
        base, data = dataWithUsers(self, {USER: PASSWORD})
        caPath, certPath, keyPath = makeCA(base)
        self.server = ServerProcess(data, "example.org", listeners=self.listeners,
                                    workers=self.workers)
        # pebble validates http-01 and tls-alpn-01 on these ports (any free one when
        # the listener is off: the challenge then cannot succeed).
        httpPort = self.server.ports.get("http") or freePort()
        dnsPort, acmePort, mgmtPort, chalMgmt = (freePort() for _ in range(4))
        self.mgmtPort = mgmtPort
        self.caPath = caPath
        config = os.path.join(base, "pebble.json")
        with open(config, "w") as f:
            json.dump({"pebble": {
                "listenAddress": f"127.0.0.1:{acmePort}",
                "managementListenAddress": f"127.0.0.1:{mgmtPort}",
                "certificate": certPath, "privateKey": keyPath,
                "httpPort": httpPort,
                "tlsPort": self.server.ports["https"],
                "ocspResponderURL": "", "externalAccountBindingRequired": False,
            }}, f)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        dns = subprocess.Popen(
            [challtest, "-dns01", f"127.0.0.1:{dnsPort}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{chalMgmt}",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(stopProcess, dns)
        waitForPort(chalMgmt, proc=dns)
        acme = subprocess.Popen(
            [pebble, "-config", config, "-dnsserver", f"127.0.0.1:{dnsPort}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(stopProcess, acme)
        waitForPort(acmePort, proc=acme)
        toml = os.path.join(base, "pymaild.toml")
        with open(toml, "w") as f:
            f.write("[acme]\nenabled = true\n"
                    f'directory = "https://127.0.0.1:{acmePort}/dir"\n'
                    f'ca_file = "{caPath}"\nemail = "postmaster@example.org"\n'
                    # Longer than pebble's certificates live: every check renews.
                    "renew_days = 36500\ncheck_interval = 3\nretry_interval = 2\n"
                    + self.acmeExtra)
        self.server.extra = ["--config", toml]
        self.server.start()
        self.addCleanup(self.server.stop)
        self.data = data

    def pebbleRoot(self) -> str:
        """Pebble's root certificate (made at its start), saved to a file."""
        context = ssl.create_default_context(cafile=self.caPath)
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmtPort}/roots/0",
                                    context=context, timeout=30) as r:
            pem = r.read()
        path = os.path.join(os.path.dirname(self.data), "pebble-root.pem")
        with open(path, "wb") as f:
            f.write(pem)
        return path

    def waitForIssued(self, count: int, timeout: float = 90.0) -> None:
        """Wait until the log says C{count} certificates were put in use."""
        deadline = time.monotonic() + timeout
        while self.server.log().count("ACME: new certificate") < count:
            if time.monotonic() > deadline:
                self.fail(f"no certificate number {count}; log:\n{self.server.log()[-4000:]}")
            time.sleep(0.2)

    def test_issueAndRenew(self) -> None:
        """The certificate verifies against pebble's root for the host name and covers
        the autoconfig and mta-sts names; a renewal reaches a new IMAP session without a
        restart; the key file is 0600."""
        self.waitForIssued(1)
        root = self.pebbleRoot()
        first = peerCertificate(self.server.ports["imap"], root)
        names = first.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        self.assertEqual(sorted(names), ["autoconfig.example.org", HOST,
                                         "mta-sts.example.org"])
        pem = os.path.join(self.data, "tls", certificates.CERT_FILE)
        self.assertEqual(os.stat(pem).st_mode & 0o777, 0o600)
        account = os.path.join(self.data, "tls", certificates.ACCOUNT_FILE)
        self.assertEqual(os.stat(account).st_mode & 0o777, 0o600)
        pid = self.server.proc.pid
        issued = self.server.log().count("ACME: new certificate")
        self.waitForIssued(issued + 1)
        second = peerCertificate(self.server.ports["imap"], root)
        self.assertNotEqual(first.serial_number, second.serial_number)
        self.assertEqual(self.server.proc.pid, pid)
        self.assertIsNone(self.server.proc.poll())
        # HTTPS gets it too.
        context = ssl.create_default_context(cafile=root)
        with socket.create_connection(("127.0.0.1", self.server.ports["https"]),
                                      timeout=30) as s:
            with context.wrap_socket(s, server_hostname="autoconfig.example.org") as t:
                self.assertTrue(t.getpeercert())
        self.assertEqual(self.server.log().count("Traceback"), 0)


class WorkersTests(AcmeTests):
    """With a worker process, the certificate the master's ACME obtains reaches the
    worker's sessions too (the master forwards a HUP)."""

    workers = 2

    def test_issueAndRenew(self) -> None:
        """The worker takes up the ACME certificate (the first one, if it started on
        the self-signed certificate, and each renewal); every IMAP session, on either
        process, verifies against pebble's root."""
        self.waitForIssued(2)
        deadline = time.monotonic() + 60
        while True:
            log = self.server.log()
            if "[worker 1] SIGHUP: new TLS certificate" in log:
                break
            if time.monotonic() > deadline:
                self.fail(f"the worker did not take the certificate; log:\n{log[-4000:]}")
            time.sleep(0.2)
        root = self.pebbleRoot()
        for _ in range(20):
            peerCertificate(self.server.ports["imap"], root)
        self.assertIn("[worker 1] imap: login alice@example.org", self.server.log())
        self.assertEqual(self.server.log().count("Traceback"), 0)


class TLSALPNTests(AcmeTests):
    """The same with the tls-alpn-01 challenge only, and no HTTP listener at all: the
    names are proven on the https listener."""

    listeners = ("smtp", "imap", "https")
    acmeExtra = 'challenges = ["tls-alpn-01"]\n'

    def test_issueAndRenew(self) -> None:
        """Every name was proven by tls-alpn-01; the certificate is issued and renewed
        as with http-01."""
        super().test_issueAndRenew()
        log = self.server.log()
        for name in ("autoconfig.example.org", HOST, "mta-sts.example.org"):
            self.assertIn(f"ACME: answering tls-alpn-01 for {name}", log)
        self.assertNotIn("answering http-01", log)


class ChallengeCertificateTests(SynchronousTestCase):
    """The TLS listeners' answer to a tls-alpn-01 validation, over a real socket."""

    def handshake(self, serverTLS: object, name: str, alpn: list[str]
                  ) -> tuple[x509.Certificate, str | None]:
        """The certificate and ALPN protocol a client offering C{alpn} for C{name} gets
        from a TLS server on C{serverTLS}."""
        import threading

        from OpenSSL import SSL

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.addCleanup(listener.close)

        def serve() -> None:
            conn, _ = listener.accept()
            server = SSL.Connection(serverTLS.getContext(), conn)  # type: ignore[attr-defined]
            server.set_accept_state()
            try:
                server.do_handshake()
                server.shutdown()
            except SSL.Error:
                pass
            conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(alpn)
        with socket.create_connection(listener.getsockname(), timeout=30) as s:
            with context.wrap_socket(s, server_hostname=name) as t:
                der = t.getpeercert(binary_form=True)
                chosen = t.selected_alpn_protocol()
        thread.join(30)
        assert der is not None
        return x509.load_der_x509_certificate(der), chosen

    def test_answer(self) -> None:
        """acme-tls/1 for a pending name gets the challenge certificate (the name, the
        critical acmeIdentifier with the digest of the key authorisation); the same
        name without acme-tls/1, or another name, gets the server's certificate."""
        import hashlib

        from pymaild import tls

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        certPath, keyPath = os.path.join(base, "c.pem"), os.path.join(base, "k.pem")
        tls.ensureSelfSigned(certPath, keyPath, ["mail.example.org"])
        serverTLS = tls.ServerTLS(certPath, keyPath)
        answers = certificates.ChallengeAnswers()
        serverTLS.challengeCertificates = answers.alpnCertificate
        answers.putALPN("MTA-STS.example.org", "token.thumbprint")
        cert, chosen = self.handshake(serverTLS, "mta-sts.example.org", ["acme-tls/1"])
        self.assertEqual(chosen, "acme-tls/1")
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        self.assertEqual(names, ["mta-sts.example.org"])
        ext = cert.extensions.get_extension_for_oid(certificates.ACME_IDENTIFIER)
        self.assertTrue(ext.critical)
        self.assertEqual(ext.value.value,
                         b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest())
        plain, chosen = self.handshake(serverTLS, "mta-sts.example.org", ["http/1.1"])
        self.assertEqual(chosen, "http/1.1")
        self.assertRaises(x509.ExtensionNotFound,
                          plain.extensions.get_extension_for_oid, certificates.ACME_IDENTIFIER)
        other, chosen = self.handshake(serverTLS, "autoconfig.example.org", ["acme-tls/1"])
        self.assertIsNone(chosen)
        self.assertEqual(other.serial_number, plain.serial_number)
        answers.removeALPN("mta-sts.example.org")
        after, _ = self.handshake(serverTLS, "mta-sts.example.org", ["acme-tls/1"])
        self.assertEqual(after.serial_number, plain.serial_number)


class AcmeDownTests(SynchronousTestCase):
    """An ACME server that cannot be reached leaves the server running on the
    certificate it has, retrying."""

    def test_unreachable(self) -> None:
        """A failed order is one log line and a retry; IMAP keeps working over TLS."""
        base, data = dataWithUsers(self, {USER: PASSWORD})
        toml = os.path.join(base, "pymaild.toml")
        with open(toml, "w") as f:
            f.write("[acme]\nenabled = true\n"
                    f'directory = "https://127.0.0.1:{freePort()}/dir"\n'
                    "retry_interval = 1\n")
        server = ServerProcess(data, "example.org", listeners=("imap", "http"),
                               extra=["--config", toml])
        server.start()
        self.addCleanup(server.stop)
        deadline = time.monotonic() + 60
        while server.log().count("ACME: no certificate obtained") < 2:
            self.assertLess(time.monotonic(), deadline, server.log()[-3000:])
            time.sleep(0.2)
        imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"])
        imap.starttls(ssl_context=ssl._create_unverified_context())
        imap.login(USER, PASSWORD)
        imap.logout()
        self.assertEqual(server.log().count("Traceback"), 0)


class RenewalRuleTests(SynchronousTestCase):
    """L{certificates.needsRenewal} decides when to order."""

    def test_rules(self) -> None:
        """No file, a missing name, or expiry within the window: renew; else not."""
        from pymaild import tls

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        cert, key = os.path.join(base, "c.pem"), os.path.join(base, "k.pem")
        self.assertEqual(certificates.needsRenewal(cert, ["a.example"], 30),
                         "no certificate yet")
        tls.ensureSelfSigned(cert, key, ["a.example"])  # valid for ten years
        self.assertIsNone(certificates.needsRenewal(cert, ["a.example"], 30))
        self.assertIn("b.example", certificates.needsRenewal(cert, ["a.example",
                                                                     "b.example"], 30))
        self.assertIn("expires", certificates.needsRenewal(cert, ["a.example"], 4000))
        self.assertEqual(certificates.certificateNames("mx.a.example", ["a.example"]),
                         ["mx.a.example", "autoconfig.a.example", "mta-sts.a.example"])
        self.assertEqual(certificates.certificateNames("mx.a.example", ["a.example"],
                                                       ["Only.A.Example."]),
                         ["only.a.example"])
