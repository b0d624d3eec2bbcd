"""Client autoconfiguration documents: Thunderbird, Microsoft Autodiscover, Apple.

Pure functions from L{ClientSettings} (the host name clients connect to and the port of
each listener) to the bytes each client family fetches:

- Thunderbird's autoconfig (C{config-v1.1.xml}, the format of Mozilla's ISPDB; fetched
  from C{https://autoconfig.DOMAIN/mail/config-v1.1.xml} and
  C{https://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml});
- Microsoft's Autodiscover in its POX form (the "outlook" response schema 2006a, the
  answer to a POST of C{/autodiscover/autodiscover.xml}), used by Outlook and others;
- an Apple configuration profile (C{.mobileconfig}, a property list with one
  C{com.apple.mail.managed} payload) for iOS and macOS Mail.

Every document names implicit TLS first (RFC 8314: 993, 995, 465) and STARTTLS where the
format can say so; a listener that is disabled is left out. The user name is the whole
address, and the password goes only over TLS (C{password-cleartext} inside TLS is what
Thunderbird calls it).
"""

from __future__ import annotations

import plistlib
import uuid
from dataclasses import dataclass
from xml.etree import ElementTree as ET

#: Autodiscover's namespaces (MS-OXDSCLI).
AUTODISCOVER_REQUEST_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006")
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

#: The largest Autodiscover request body read (a real one is about 400 bytes).
MAX_REQUEST = 16 * 1024


@dataclass(frozen=True)
class ClientSettings:
    """Where clients connect: the host name and each listener's port (None: disabled)."""

    hostname: str
    imaps: int | None = None
    imap: int | None = None
    pop3s: int | None = None
    pop3: int | None = None
    smtps: int | None = None
    submission: int | None = None


def endpointPort(description: str) -> int | None:
    """The port of a Twisted server endpoint string (C{tcp:993:interface=...}), or None
    when it names none (a UNIX socket, say)."""
    parts = description.split(":")
    if len(parts) < 2 or parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        if part.startswith("port="):
            part = part[5:]
        if part.isdigit():
            return int(part)
    return None


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    """Append C{<tag>text</tag>} to C{parent}."""
    e = ET.SubElement(parent, tag)
    e.text = text
    return e


def _xml(root: ET.Element) -> bytes:
    """The document as UTF-8 bytes with an XML declaration."""
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def thunderbird(settings: ClientSettings, domain: str) -> bytes:
    """Thunderbird's C{config-v1.1.xml} for the addresses of C{domain}."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    _text(provider, "domain", domain)
    _text(provider, "displayName", f"{domain} mail")
    _text(provider, "displayShortName", domain)
    servers = [
        ("incomingServer", "imap", settings.imaps, "SSL"),
        ("incomingServer", "imap", settings.imap, "STARTTLS"),
        ("incomingServer", "pop3", settings.pop3s, "SSL"),
        ("incomingServer", "pop3", settings.pop3, "STARTTLS"),
        ("outgoingServer", "smtp", settings.smtps, "SSL"),
        ("outgoingServer", "smtp", settings.submission, "STARTTLS"),
    ]
    for tag, kind, port, socketType in servers:
        if port is None:
            continue
        server = ET.SubElement(provider, tag, type=kind)
        _text(server, "hostname", settings.hostname)
        _text(server, "port", str(port))
        _text(server, "socketType", socketType)
        _text(server, "authentication", "password-cleartext")
        _text(server, "username", "%EMAILADDRESS%")
    return _xml(root)


class BadRequest(ValueError):
    """An Autodiscover request that cannot be answered (not XML, no address)."""


def autodiscoverAddress(body: bytes) -> str:
    """The C{EMailAddress} of an Autodiscover POX request.

    @raise BadRequest: the body is too large, not XML, has a DOCTYPE (no entities are
        ever expanded), or names no address.
    """
    if len(body) > MAX_REQUEST:
        raise BadRequest("request too large")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise BadRequest("DOCTYPE not allowed")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise BadRequest(f"not XML: {e}") from None
    for element in root.iter():
        if (element.tag.rpartition("}")[2] == "EMailAddress" and element.text
                and element.text.strip()):
            return element.text.strip()
    raise BadRequest("no EMailAddress")


def autodiscover(settings: ClientSettings, address: str) -> bytes:
    """The POX Autodiscover response for C{address} (IMAP and SMTP over TLS)."""
    ET.register_namespace("", AUTODISCOVER_NS)
    root = ET.Element(f"{{{AUTODISCOVER_NS}}}Autodiscover")
    response = ET.SubElement(root, f"{{{OUTLOOK_NS}}}Response")
    account = ET.SubElement(response, f"{{{OUTLOOK_NS}}}Account")
    _text(account, f"{{{OUTLOOK_NS}}}AccountType", "email")
    _text(account, f"{{{OUTLOOK_NS}}}Action", "settings")
    incoming = [("IMAP", settings.imaps, "on"), ("IMAP", settings.imap, "tls"),
                ("POP3", settings.pop3s, "on"), ("POP3", settings.pop3, "tls")]
    outgoing = [("SMTP", settings.smtps, "on"), ("SMTP", settings.submission, "tls")]
    for kind, port, tls in incoming + outgoing:
        if port is None:
            continue
        p = ET.SubElement(account, f"{{{OUTLOOK_NS}}}Protocol")
        _text(p, f"{{{OUTLOOK_NS}}}Type", kind)
        _text(p, f"{{{OUTLOOK_NS}}}Server", settings.hostname)
        _text(p, f"{{{OUTLOOK_NS}}}Port", str(port))
        _text(p, f"{{{OUTLOOK_NS}}}DomainRequired", "off")
        _text(p, f"{{{OUTLOOK_NS}}}LoginName", address)
        _text(p, f"{{{OUTLOOK_NS}}}SPA", "off")
        if tls == "on":
            _text(p, f"{{{OUTLOOK_NS}}}SSL", "on")
        else:
            _text(p, f"{{{OUTLOOK_NS}}}Encryption", "TLS")
        _text(p, f"{{{OUTLOOK_NS}}}AuthRequired", "on")
        if kind == "SMTP":
            _text(p, f"{{{OUTLOOK_NS}}}UsePOPAuth", "on")
            _text(p, f"{{{OUTLOOK_NS}}}SMTPLast", "off")
    return _xml(root)


def mobileconfig(settings: ClientSettings, address: str) -> bytes | None:
    """An Apple configuration profile with one IMAP account for C{address}, or None
    when IMAP or submission is not offered over TLS in a way the profile can say."""
    inPort, inSSL = ((settings.imaps, True) if settings.imaps is not None
                     else (settings.imap, False))
    outPort, outSSL = ((settings.smtps, True) if settings.smtps is not None
                       else (settings.submission, False))
    if inPort is None or outPort is None:
        return None
    domain = address.rpartition("@")[2]
    ident = ".".join(reversed(domain.split("."))) + ".pymaild"
    # Stable identifiers: installing the profile again replaces it.
    account = uuid.uuid5(uuid.NAMESPACE_URL, f"pymaild:mail:{address}")
    profile = uuid.uuid5(uuid.NAMESPACE_URL, f"pymaild:profile:{address}")
    payload = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.mail.{account}",
        "PayloadUUID": str(account).upper(),
        "PayloadDisplayName": f"Mail ({address})",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": address,
        "IncomingMailServerHostName": settings.hostname,
        "IncomingMailServerPortNumber": inPort,
        "IncomingMailServerUseSSL": inSSL,
        "IncomingMailServerUsername": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": settings.hostname,
        "OutgoingMailServerPortNumber": outPort,
        "OutgoingMailServerUseSSL": outSSL,
        "OutgoingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    top = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.profile.{profile}",
        "PayloadUUID": str(profile).upper(),
        "PayloadDisplayName": f"{domain} mail",
        "PayloadDescription": f"Mail settings for {address}",
        "PayloadContent": [payload],
    }
    return plistlib.dumps(top, fmt=plistlib.FMT_XML)


__all__ = [
    "BadRequest",
    "ClientSettings",
    "autodiscover",
    "autodiscoverAddress",
    "endpointPort",
    "mobileconfig",
    "thunderbird",
]
