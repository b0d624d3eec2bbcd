"""TLS handshakes with clients that offer ALPN (browsers, curl, some mail clients).

Twisted's ALPN callback, with no protocols configured, answers with an empty protocol
and OpenSSL aborts the handshake with an "internal error" alert; pymaild installs its
own (L{pymaild.tls.selectALPN}). Each test shakes hands with a real server.
"""

from __future__ import annotations

import imaplib
import os
import socket
import ssl

from twisted.trial.unittest import SynchronousTestCase

from tests.support import ServerProcess


def client(protocols: list[str]) -> ssl.SSLContext:
    """An unverifying client context that offers C{protocols} over ALPN."""
    c = ssl._create_unverified_context()
    c.set_alpn_protocols(protocols)
    return c


class ALPNTests(SynchronousTestCase):
    """Clients offering ALPN get a handshake on every TLS listener."""

    def setUp(self) -> None:
        """A server with implicit-TLS, STARTTLS and HTTPS listeners."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        self.server = ServerProcess(data, "example.org",
                                    listeners=("imap", "imaps", "pop3s", "smtps", "https"))
        self.server.start()
        self.addCleanup(self.server.stop)

    def handshake(self, port: int, protocols: list[str]) -> str | None:
        """Shake hands on an implicit-TLS port; the protocol the server chose."""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            with client(protocols).wrap_socket(s) as t:
                return t.selected_alpn_protocol()

    def test_implicitTLS(self) -> None:
        """imaps, pop3s and smtps accept a client offering their protocol name and do
        not acknowledge ALPN."""
        ports = self.server.ports
        self.assertIsNone(self.handshake(ports["imaps"], ["imap"]))
        self.assertIsNone(self.handshake(ports["pop3s"], ["pop3"]))
        self.assertIsNone(self.handshake(ports["smtps"], ["smtp"]))

    def test_https(self) -> None:
        """HTTPS picks http/1.1 from a browser's offer, and ignores h2 alone."""
        self.assertEqual(self.handshake(self.server.ports["https"], ["h2", "http/1.1"]),
                         "http/1.1")
        self.assertIsNone(self.handshake(self.server.ports["https"], ["h2"]))

    def test_starttls(self) -> None:
        """STARTTLS with ALPN offered works too."""
        imap = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"])
        imap.starttls(ssl_context=client(["imap"]))
        self.assertEqual(imap.noop()[0], "OK")
        imap.logout()
