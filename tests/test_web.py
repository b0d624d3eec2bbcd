"""The HTTP and HTTPS listeners: client autoconfiguration (L{pymaild.web}).

A real ``twistd -n pymaild`` is asked over HTTP(S) for the documents Thunderbird,
Outlook (Autodiscover POX) and Apple Mail fetch; each is parsed as its client does
(XML, property list) and checked for what the format requires, and the settings it
gives are then used to log in over IMAP and submission, so a wrong port or TLS mode
fails the test.
"""

from __future__ import annotations

import http.client
import imaplib
import plistlib
import smtplib
import socket
import ssl
from xml.etree import ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase

from pymaild.web import autoconfig
from tests.support import ServerProcess, dataWithUsers

USER = "alice@example.org"
PASSWORD = "alice-secret-pw"
HOST = "mail.example.org"
OUT = "{" + autoconfig.OUTLOOK_NS + "}"


def insecure() -> ssl.SSLContext:
    """A client context that accepts the server's self-signed certificate."""
    return ssl._create_unverified_context()


class WebListenerTests(SynchronousTestCase):
    """Autoconfiguration documents from a running server, used for real logins."""

    def setUp(self) -> None:
        """Start a server with one user."""
        base, data = dataWithUsers(self, {USER: PASSWORD})
        self.server = ServerProcess(data, "example.org")
        self.server.start()
        self.addCleanup(self.server.stop)
        self.ports = self.server.ports

    def request(self, method: str, path: str, secure: bool = True, host: str = HOST,
                body: bytes | None = None,
                headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """One request; the response (its body read into C{.data})."""
        if secure:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.ports["https"], context=insecure(), timeout=30)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.ports["http"], timeout=30)
        self.addCleanup(conn.close)
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        response.data = response.read()  # type: ignore[attr-defined]
        return response

    def test_thunderbird(self) -> None:
        """config-v1.1.xml names every listener with its port and TLS mode, and its
        IMAP-over-TLS and submission-over-TLS entries log in."""
        r = self.request("GET", "/.well-known/autoconfig/mail/config-v1.1.xml"
                                "?emailaddress=alice%40example.org")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.getheader("content-type").startswith("application/xml"))
        root = ET.fromstring(r.data)  # type: ignore[attr-defined]
        self.assertEqual((root.tag, root.get("version")), ("clientConfig", "1.1"))
        [provider] = root.findall("emailProvider")
        self.assertEqual(provider.get("id"), "example.org")
        self.assertEqual([d.text for d in provider.findall("domain")], ["example.org"])
        for tag in ("displayName", "displayShortName"):
            self.assertTrue(provider.findtext(tag))
        servers = [(s.tag, s.get("type"), s.findtext("hostname"), int(s.findtext("port")),
                    s.findtext("socketType"), s.findtext("authentication"),
                    s.findtext("username"))
                   for s in provider if s.tag in ("incomingServer", "outgoingServer")]
        p = self.ports
        self.assertEqual(servers, [
            ("incomingServer", "imap", HOST, p["imaps"], "SSL", "password-cleartext",
             "%EMAILADDRESS%"),
            ("incomingServer", "imap", HOST, p["imap"], "STARTTLS", "password-cleartext",
             "%EMAILADDRESS%"),
            ("incomingServer", "pop3", HOST, p["pop3s"], "SSL", "password-cleartext",
             "%EMAILADDRESS%"),
            ("incomingServer", "pop3", HOST, p["pop3"], "STARTTLS", "password-cleartext",
             "%EMAILADDRESS%"),
            ("outgoingServer", "smtp", HOST, p["smtps"], "SSL", "password-cleartext",
             "%EMAILADDRESS%"),
            ("outgoingServer", "smtp", HOST, p["submission"], "STARTTLS",
             "password-cleartext", "%EMAILADDRESS%"),
        ])
        # Use what it says (the host name maps to loopback here).
        imap = imaplib.IMAP4_SSL("127.0.0.1", servers[0][3], ssl_context=insecure())
        imap.login(USER, PASSWORD)
        imap.logout()
        with smtplib.SMTP_SSL("127.0.0.1", servers[4][3], context=insecure()) as s:
            s.login(USER, PASSWORD)

    def test_thunderbirdByHost(self) -> None:
        """http://autoconfig.DOMAIN/mail/config-v1.1.xml answers for DOMAIN; another
        domain gets 404."""
        r = self.request("GET", "/mail/config-v1.1.xml", secure=False,
                         host="autoconfig.example.org")
        self.assertEqual(r.status, 200)
        self.assertEqual(ET.fromstring(r.data).find("emailProvider").get("id"),  # type: ignore
                         "example.org")
        r = self.request("GET", "/mail/config-v1.1.xml", host="autoconfig.other.example")
        self.assertEqual(r.status, 404)
        r = self.request("GET", "/mail/config-v1.1.xml?emailaddress=bob%40other.example")
        self.assertEqual(r.status, 404)

    def test_autodiscover(self) -> None:
        """A POX request gets the outlook 2006a response with IMAP, POP3 and SMTP, the
        address as login name; its IMAP entry logs in."""
        body = (f'<?xml version="1.0" encoding="utf-8"?>'
                f'<Autodiscover xmlns="{autoconfig.AUTODISCOVER_REQUEST_NS}"><Request>'
                f"<EMailAddress>{USER}</EMailAddress><AcceptableResponseSchema>"
                f"{autoconfig.OUTLOOK_NS}</AcceptableResponseSchema></Request>"
                f"</Autodiscover>").encode()
        r = self.request("POST", "/Autodiscover/Autodiscover.xml", body=body,
                         headers={"Content-Type": "text/xml"})
        self.assertEqual(r.status, 200)
        root = ET.fromstring(r.data)  # type: ignore[attr-defined]
        self.assertEqual(root.tag, "{" + autoconfig.AUTODISCOVER_NS + "}Autodiscover")
        account = root.find(f"{OUT}Response/{OUT}Account")
        self.assertEqual(account.findtext(f"{OUT}AccountType"), "email")
        self.assertEqual(account.findtext(f"{OUT}Action"), "settings")
        protocols = [(x.findtext(f"{OUT}Type"), int(x.findtext(f"{OUT}Port")),
                      x.findtext(f"{OUT}SSL"), x.findtext(f"{OUT}Encryption"),
                      x.findtext(f"{OUT}LoginName"), x.findtext(f"{OUT}Server"))
                     for x in account.findall(f"{OUT}Protocol")]
        p = self.ports
        self.assertEqual(protocols, [
            ("IMAP", p["imaps"], "on", None, USER, HOST),
            ("IMAP", p["imap"], None, "TLS", USER, HOST),
            ("POP3", p["pop3s"], "on", None, USER, HOST),
            ("POP3", p["pop3"], None, "TLS", USER, HOST),
            ("SMTP", p["smtps"], "on", None, USER, HOST),
            ("SMTP", p["submission"], None, "TLS", USER, HOST),
        ])
        imap = imaplib.IMAP4("127.0.0.1", protocols[1][1])
        imap.starttls(ssl_context=insecure())
        imap.login(USER, PASSWORD)
        imap.logout()

    def test_autodiscoverBadInput(self) -> None:
        """Not XML, a DOCTYPE (entity expansion), no address, or a foreign domain: 400
        or 404, never a traceback; a GET is 404."""
        r = self.request("POST", "/autodiscover/autodiscover.xml", body=b"<not xml")
        self.assertEqual(r.status, 400)
        bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx">'
                b'<!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;">]><a>&y;</a>')
        r = self.request("POST", "/autodiscover/autodiscover.xml", body=bomb)
        self.assertEqual(r.status, 400)
        r = self.request("POST", "/autodiscover/autodiscover.xml", body=b"<a><b/></a>")
        self.assertEqual(r.status, 400)
        r = self.request("POST", "/autodiscover/autodiscover.xml",
                         body=b"<a><EMailAddress>x@other.example</EMailAddress></a>")
        self.assertEqual(r.status, 404)
        r = self.request("GET", "/autodiscover/autodiscover.xml")
        self.assertEqual(r.status, 404)

    def test_bodyTooLarge(self) -> None:
        """A declared body over the cap gets 413 and the connection closes unread."""
        s = socket.create_connection(("127.0.0.1", self.ports["http"]), timeout=30)
        self.addCleanup(s.close)
        s.sendall(b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 100000000\r\n\r\n" + b"x" * 1000)
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        self.assertTrue(got.startswith(b"HTTP/1.1 413 "), got)

    def test_mobileconfig(self) -> None:
        """The Apple profile is a property list with one com.apple.mail.managed
        payload naming IMAP and submission over TLS."""
        r = self.request("GET", "/apple/mail.mobileconfig?email=alice%40example.org")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("content-type"), "application/x-apple-aspen-config")
        profile = plistlib.loads(r.data)  # type: ignore[attr-defined]
        self.assertEqual(profile["PayloadType"], "Configuration")
        self.assertEqual(profile["PayloadVersion"], 1)
        for key in ("PayloadIdentifier", "PayloadUUID", "PayloadDisplayName"):
            self.assertTrue(profile[key])
        [mail] = profile["PayloadContent"]
        self.assertEqual(mail["PayloadType"], "com.apple.mail.managed")
        self.assertEqual(mail["EmailAccountType"], "EmailTypeIMAP")
        self.assertEqual(mail["EmailAddress"], USER)
        self.assertEqual(
            (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"],
             mail["IncomingMailServerUseSSL"], mail["IncomingMailServerUsername"]),
            (HOST, self.ports["imaps"], True, USER))
        self.assertEqual(
            (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"],
             mail["OutgoingMailServerUseSSL"], mail["OutgoingPasswordSameAsIncomingPassword"]),
            (HOST, self.ports["smtps"], True, True))
        again = plistlib.loads(self.request(
            "GET", "/apple/mail.mobileconfig?email=alice%40example.org").data)  # type: ignore
        self.assertEqual(again["PayloadUUID"], profile["PayloadUUID"])
        r = self.request("GET", "/apple/mail.mobileconfig?email=x%40other.example")
        self.assertEqual(r.status, 404)

    def test_httpRedirects(self) -> None:
        """Plain HTTP sends anything but challenges and autoconfig to HTTPS; HTTPS
        answers 404 for unknown paths."""
        r = self.request("GET", "/some/page?x=1", secure=False, host="mail.example.org")
        self.assertEqual(r.status, 301)
        self.assertEqual(r.getheader("location"),
                         f"https://mail.example.org:{self.ports['https']}/some/page?x=1")
        r = self.request("GET", "/apple/mail.mobileconfig?email=alice%40example.org",
                         secure=False)
        self.assertEqual(r.status, 301)
        self.assertEqual(self.request("GET", "/some/page").status, 404)
        r = self.request("GET", "/.well-known/acme-challenge/unknown", secure=False)
        self.assertEqual(r.status, 404)


class EndpointPortTests(SynchronousTestCase):
    """L{autoconfig.endpointPort} reads the port of an endpoint string."""

    def test_forms(self) -> None:
        """tcp, tcp6, ssl and port= forms give the port; unix gives None."""
        self.assertEqual(autoconfig.endpointPort("tcp:993"), 993)
        self.assertEqual(autoconfig.endpointPort("tcp:2993:interface=127.0.0.1"), 2993)
        self.assertEqual(autoconfig.endpointPort("tcp6:port=143:interface=\\:\\:1"), 143)
        self.assertEqual(autoconfig.endpointPort("ssl:465:privateKey=k.pem"), 465)
        self.assertIsNone(autoconfig.endpointPort("unix:/run/pymaild.sock"))
