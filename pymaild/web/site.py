"""The twisted.web sites of the HTTP and HTTPS listeners.

Both are one leaf resource (L{MailSite.render}) that routes by path, so what is served
is one table to read:

================================================  ======  ======  =====================
path                                              HTTP    HTTPS   what
================================================  ======  ======  =====================
C{/.well-known/acme-challenge/TOKEN}              yes     yes     ACME http-01 answers
C{/mail/config-v1.1.xml} (C{autoconfig.DOMAIN})   yes     yes     Thunderbird autoconfig
C{/.well-known/autoconfig/mail/config-v1.1.xml}   yes     yes     the same, on DOMAIN
C{/autodiscover/autodiscover.xml} (POST)          --      yes     Microsoft Autodiscover
C{/apple/mail.mobileconfig?email=ADDRESS}         --      yes     Apple profile
C{/.well-known/mta-sts.txt} (C{mta-sts.DOMAIN})    --      yes     MTA-STS policy
C{/admin/}                                        301     yes     the admin page
anything else                                     301     404     (HTTP: to HTTPS)
================================================  ======  ======  =====================

The MTA-STS policy (RFC 8461 §3.3) is served only when configured (C{[mtasts] serve}),
only over HTTPS and only for the host C{mta-sts.DOMAIN} of one of our domains, as
C{text/plain}; other hosts get 404.

Autoconfiguration answers only for our own domains (any address in them: whether a
user exists is not told, so the documents cannot be used to find accounts). Request bodies
are capped (L{MAX_BODY}); a bigger one closes the connection with 413. Idle
connections close after a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from twisted.web import http, server
from twisted.web.resource import Resource

from pymaild.address import domainToASCII
from pymaild.errors import AddressError
from pymaild.web import autoconfig

#: The largest request body read; beyond it the connection closes with 413.
MAX_BODY = 64 * 1024
#: Seconds an HTTP connection may stay idle.
IDLE_TIMEOUT = 60

_THUNDERBIRD = {b"/mail/config-v1.1.xml", b"/.well-known/autoconfig/mail/config-v1.1.xml"}
_AUTODISCOVER = b"/autodiscover/autodiscover.xml"
_MOBILECONFIG = b"/apple/mail.mobileconfig"
_ACME = b"/.well-known/acme-challenge/"
_MTA_STS = b"/.well-known/mta-sts.txt"


class LimitedRequest(server.Request):
    """A request whose body may not exceed L{MAX_BODY} bytes."""

    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        """Refuse a declared length over the cap before reading any of it."""
        if length is not None and length > MAX_BODY:
            self._refuse()
            super().gotLength(0)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Count the body as it arrives (chunked bodies declare no length)."""
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        """Answer 413 and close the connection: the rest of the body is not read."""
        self._refused = True
        transport = self.channel.transport
        if transport is None:
            return
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n"
                        b"Content-Length: 0\r\n\r\n")
        transport.loseConnection()


class MailSite(Resource):
    """The one resource of a web listener (see the module docstring).

    @param settings: where clients connect (for the autoconfig documents).
    @param domains: our mail domains (ASCII, lower case).
    @param secure: whether this is the HTTPS listener.
    @param httpsPort: the HTTPS listener's port (for the HTTP redirect), or None.
    @param challenges: C{challenges(token) -> bytes | None}, the ACME http-01 key
        authorisations now pending.
    @param admin: the resource of C{/admin/} (L{pymaild.web.admin}; HTTPS only).
    @param mtaSts: the MTA-STS policy file to serve (L{pymaild.smtp.mtasts.ownPolicy}),
        or None to serve none.
    """

    isLeaf = True

    def __init__(self, settings: autoconfig.ClientSettings, domains: list[str],
                 secure: bool, httpsPort: int | None,
                 challenges: Callable[[str], bytes | None] | None = None,
                 admin: Resource | None = None, mtaSts: bytes | None = None) -> None:
        super().__init__()
        self.mtaSts = mtaSts
        self.admin = admin
        self.settings = settings
        self.domains = frozenset(domains)
        self.secure = secure
        self.httpsPort = httpsPort
        self.challenges = challenges

    def render(self, request: Any) -> bytes:
        """Route the request by its path."""
        path = request.path.lower()
        if self.secure and self.admin is not None and (
                path == b"/admin" or path.startswith(b"/admin/")):
            return self.admin.render(request)
        if path.startswith(_ACME):
            return self._acme(request)
        if path in _THUNDERBIRD and request.method in (b"GET", b"HEAD"):
            return self._thunderbird(request)
        if self.secure and path == _AUTODISCOVER and request.method == b"POST":
            return self._autodiscover(request)
        if self.secure and path == _MOBILECONFIG and request.method in (b"GET", b"HEAD"):
            return self._mobileconfig(request)
        if self.secure and path == _MTA_STS and request.method in (b"GET", b"HEAD"):
            return self._mtaSts(request)
        if not self.secure and self.httpsPort is not None:
            return self._redirect(request)
        return self._status(request, http.NOT_FOUND, b"Not found\n")

    # -- answers ------------------------------------------------------------------------

    def _status(self, request: Any, code: int, body: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return body

    def _acme(self, request: Any) -> bytes:
        token = request.path[len(_ACME):].decode("ascii", "replace")
        answer = self.challenges(token) if self.challenges is not None else None
        if answer is None:
            return self._status(request, http.NOT_FOUND, b"No such challenge\n")
        request.setHeader(b"content-type", b"application/octet-stream")
        return answer

    def _redirect(self, request: Any) -> bytes:
        host = (request.getRequestHostname() or b"").decode("ascii", "replace")
        host = host if host else self.settings.hostname
        port = "" if self.httpsPort == 443 else f":{self.httpsPort}"
        target = f"https://{host}{port}{quote(request.uri.decode('latin-1'), safe='/?=&%:@+')}"
        request.setResponseCode(http.MOVED_PERMANENTLY)
        request.setHeader(b"location", target.encode("ascii", "replace"))
        return b""

    def _ourDomain(self, name: str) -> str | None:
        """C{name} as one of our domains (ASCII), or None."""
        try:
            ascii_ = domainToASCII(name.strip().rstrip(".")).lower()
        except (AddressError, UnicodeError, ValueError):
            return None
        return ascii_ if ascii_ in self.domains else None

    def _address(self, raw: str) -> str | None:
        """C{raw} when it is an address in one of our domains, else None."""
        local, at, domain = raw.strip().rpartition("@")
        if not at or not local or len(raw) > 320 or any(c in local for c in " <>\"\r\n"):
            return None
        ours = self._ourDomain(domain)
        return f"{local}@{ours}" if ours else None

    def _thunderbird(self, request: Any) -> bytes:
        domain = None
        raw = request.args.get(b"emailaddress", [b""])[0].decode("utf-8", "replace")
        if raw:
            address = self._address(raw)
            domain = address.rpartition("@")[2] if address else None
        else:
            host = (request.getRequestHostname() or b"").decode("ascii", "replace").lower()
            domain = self._ourDomain(host.removeprefix("autoconfig."))
        if domain is None:
            return self._status(request, http.NOT_FOUND, b"Not a domain of this server\n")
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        return autoconfig.thunderbird(self.settings, domain)

    def _autodiscover(self, request: Any) -> bytes:
        try:
            raw = autoconfig.autodiscoverAddress(request.content.read(autoconfig.MAX_REQUEST + 1))
        except autoconfig.BadRequest as e:
            return self._status(request, http.BAD_REQUEST, f"{e}\n".encode())
        address = self._address(raw)
        if address is None:
            return self._status(request, http.NOT_FOUND, b"Not a domain of this server\n")
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        return autoconfig.autodiscover(self.settings, address)

    def _mtaSts(self, request: Any) -> bytes:
        host = (request.getRequestHostname() or b"").decode("ascii", "replace").lower()
        if self.mtaSts is None or not host.startswith("mta-sts.") or \
                self._ourDomain(host.removeprefix("mta-sts.")) is None:
            return self._status(request, http.NOT_FOUND, b"No MTA-STS policy here\n")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        return self.mtaSts

    def _mobileconfig(self, request: Any) -> bytes:
        raw = request.args.get(b"email", [b""])[0].decode("utf-8", "replace")
        address = self._address(raw)
        if address is None:
            return self._status(request, http.NOT_FOUND, b"Not a domain of this server\n")
        profile = autoconfig.mobileconfig(self.settings, address)
        if profile is None:
            return self._status(request, http.NOT_FOUND, b"IMAP or submission is off\n")
        request.setHeader(b"content-type", b"application/x-apple-aspen-config")
        request.setHeader(b"content-disposition",
                          b'attachment; filename="mail.mobileconfig"')
        return profile


def makeSite(resource: Resource) -> server.Site:
    """A quiet C{Site} over C{resource} with the body cap and the idle timeout."""
    site = server.Site(resource, timeout=IDLE_TIMEOUT)
    site.requestFactory = LimitedRequest  # type: ignore[assignment]
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


__all__ = ["IDLE_TIMEOUT", "LimitedRequest", "MAX_BODY", "MailSite", "makeSite"]
