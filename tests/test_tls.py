"""Tests for pymaild.tls: the self-signed certificate and the server context."""

from __future__ import annotations

import os
import stat

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from pymaild import tls
from pymaild.errors import ConfigError


class TLSTests(SynchronousTestCase):
    """Certificates made on first start."""

    def test_selfSigned(self) -> None:
        """A key (0600) and a certificate naming localhost and the host are made once."""
        d = self.mktemp()
        cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        self.assertTrue(tls.ensureSelfSigned(cert, key, ["mail.example.org"]))
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        with open(cert, "rb") as f:
            c = x509.load_pem_x509_certificate(f.read())
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost", "mail.example.org"])
        fp = tls.fingerprint(cert)
        self.assertFalse(tls.ensureSelfSigned(cert, key, ["other"]))
        self.assertEqual(tls.fingerprint(cert), fp)
        self.assertIsNotNone(tls.serverContext(cert, key).getContext())

    def test_badFiles(self) -> None:
        """Missing or mismatched files give a ConfigError naming the file."""
        e = self.assertRaises(ConfigError, tls.serverContext, "/nonexistent.pem", "/k.pem")
        self.assertIn("/nonexistent.pem", str(e))
        d = self.mktemp()
        os.makedirs(d)
        bad = os.path.join(d, "bad.pem")
        with open(bad, "w") as f:
            f.write("not a certificate")
        e = self.assertRaises(ConfigError, tls.serverContext, bad, bad)
        self.assertIn(bad, str(e))
