"""The SMTP server's logins: AUTH PLAIN and LOGIN, and XCLIENT from a trusted proxy.

AUTH logs in through L{pymaild.auth.penalty.AuthGate} (per-IP penalty); malformed AUTH
gets C{501 5.5.2}; AUTH payloads and passwords are never logged. XCLIENT (Postfix's, as
nginx's mail proxy sends it) is accepted only from C{cluster.trusted_proxies}: the
session restarts as from the named client (and user, with C{LOGIN}).

L{LoginMixin} is one part of L{pymaild.smtp.server.SMTPServer}.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from pymaild.address import (
    canonical,
)
from pymaild.errors import AddressError
from pymaild.limits import inNetworks, parseIP
from pymaild.smtp.framing import AUTH, COMMAND, MAX_AUTH_LINE, TOO_LONG, SessionPart
from pymaild.smtp.transaction import Transaction

log = Logger()

_LOGIN_USER = base64.b64encode(b"Username:")
_LOGIN_PASS = base64.b64encode(b"Password:")


def _xtextDecode(value: bytes) -> str | None:
    """Decode RFC 3461 xtext (C{+XX} hex escapes); C{None} when it is malformed."""
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c == 0x2B:  # "+"
            pair = value[i + 1:i + 3]
            if len(pair) != 2 or not all(chr(b) in "0123456789ABCDEFabcdef" for b in pair):
                return None
            out.append(int(pair, 16))
            i += 3
            continue
        if c < 0x21 or c > 0x7E or c == 0x3D:
            return None
        out.append(c)
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _b64decode(data: bytes) -> bytes:
    """Strict base64 (C{=} alone is the empty string, RFC 4954).

    @raise ValueError: not base64.
    """
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None


class LoginMixin(SessionPart):
    """AUTH and XCLIENT; see the module docstring."""

    mode: str
    transport: Any
    portal: Any
    gate: Any
    delivery: Any
    session: Any
    hostname: str
    greetingText: bytes
    trustedProxies: tuple[Any, ...]
    authenticated: bool
    authenticatedAs: str | None
    txn: Transaction | None
    _esmtp: bool
    _closing: bool
    _proxyPeer: str
    _helo: tuple[bytes | None, bytes]
    _authMech: bytes | None
    _authUser: bytes | None
    _onLogout: Any

    if TYPE_CHECKING:  # the other parts of the protocol, as the type checker sees them
        def authAllowed(self) -> bool:
            """L{pymaild.smtp.server.SMTPServer.authAllowed}."""

        def _resetSession(self) -> None:
            """L{pymaild.smtp.server.SMTPServer}'s return to the just-greeted state."""

    def _fromProxy(self) -> bool:
        """Whether the connection itself comes from a trusted proxy (XCLIENT allowed)."""
        return bool(self.trustedProxies) and inNetworks(self._proxyPeer, self.trustedProxies)

    def smtp_XCLIENT(self, arg: bytes) -> None:
        """XCLIENT (Postfix's extension, as nginx's mail proxy sends it): a trusted
        proxy names the real client (ADDR) and the user it authenticated (LOGIN).

        The session starts again as from that client: a new C{220} greeting, HELO/EHLO
        and the transaction forgotten, and with LOGIN the user's avatar installed as
        after AUTH (the proxy checked the password through auth_http).
        """
        if not self._fromProxy():
            self.reply(550, "5.7.0 Error: XCLIENT not authorized")
            return
        if self.txn is not None:
            self.reply(503, "5.5.1 Error: XCLIENT not allowed in a mail transaction")
            return
        attrs: dict[str, str] = {}
        for word in arg.split():
            name, eq, value = word.partition(b"=")
            key = name.decode("ascii", "replace").upper()
            if not eq or key not in ("ADDR", "LOGIN", "NAME", "HELO", "PROTO", "PORT",
                                     "DESTADDR", "DESTPORT"):
                self.reply(501, f"5.5.4 Bad XCLIENT attribute {key}")
                return
            decoded = _xtextDecode(value)
            if decoded is None:
                self.reply(501, f"5.5.4 Bad XCLIENT value for {key}")
                return
            if decoded.upper() not in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
                attrs[key] = decoded
        addr = attrs.get("ADDR", "")
        if addr.upper().startswith("IPV6:"):
            addr = addr[5:]
        if addr and parseIP(addr) is None:
            self.reply(501, "5.5.4 Bad XCLIENT ADDR")
            return
        login = attrs.get("LOGIN")
        if login is not None:
            try:
                login = canonical(login)
            except AddressError:
                self.reply(501, "5.5.4 Bad XCLIENT LOGIN")
                return
        self._resetSession()
        if addr:
            self.session.peerHost = addr
            self._helo = (None, addr.encode())
        greeting = [self.hostname.encode() + b" " + self.greetingText]
        if login is None:
            self._send(220, greeting, enhanced=False)
            return
        d = defer.maybeDeferred(self.portal.realm.requestAvatar, login, None,
                                smtp.IMessageDelivery)

        def installed(result: tuple[Any, Any, Callable[[], None]]) -> None:
            _iface, avatar, logout = result
            if self._closing:
                logout()
                return
            self.delivery, self._onLogout = avatar, logout
            self.authenticated = True
            self.authenticatedAs = login
            self.session.user = login
            avatar.session = self.session
            log.info("XCLIENT: {user} from {peer} via proxy {proxy}", user=login,
                     peer=self.session.peerHost, proxy=self._proxyPeer)
            self._send(220, greeting, enhanced=False)

        def failed(reason: Failure) -> None:
            log.failure("XCLIENT login of {user} failed", reason, user=login)
            self.reply(451, "4.3.0 Temporary failure, try again later")

        d.addCallbacks(installed, failed)
        self._wait(d)

    def smtp_AUTH(self, arg: bytes) -> None:
        """AUTH PLAIN / LOGIN, with or without an initial response."""
        if not self._esmtp:
            self.reply(503, "5.5.1 Error: send EHLO first")
            return
        if self.authenticatedAs is not None:
            self.reply(503, "5.5.1 Error: already authenticated")
            return
        if self.txn is not None:
            self.reply(503, "5.5.1 Error: AUTH not allowed during a mail transaction")
            return
        parts = arg.split()
        if not parts or len(parts) > 2:
            self.reply(501, "5.5.2 Syntax: AUTH mechanism [initial-response]")
            return
        if self.gate is None:
            self.reply(454, "4.7.0 Temporary authentication failure")
            return
        if not self.authAllowed():
            self.reply(538, "5.7.11 Encryption required for requested authentication mechanism")
            return
        mech = parts[0].upper()
        if mech not in (b"PLAIN", b"LOGIN"):
            self.reply(504, "5.5.4 Unrecognized authentication type")
            return
        self._authMech = mech
        self._authUser = None
        self.mode = AUTH
        if len(parts) == 1:
            self._send(334, [b"" if mech == b"PLAIN" else _LOGIN_USER], enhanced=False)
            return
        self._authLine(parts[1])

    def _authFail(self, code: int, text: str) -> None:
        """Leave the AUTH exchange with an error reply."""
        self.mode = COMMAND
        self._authMech = None
        self._authUser = None
        self.reply(code, text)

    def _authLine(self, line: Any) -> None:
        """One client response in the AUTH exchange."""
        if line is TOO_LONG or len(line) > MAX_AUTH_LINE:
            self._authFail(500, "5.5.2 Error: line too long")
            return
        line = line.strip(b" \t")
        if line == b"*":
            self._authFail(501, "5.7.0 Authentication aborted")
            return
        try:
            decoded = _b64decode(line)
        except ValueError:
            self._authFail(501, "5.5.2 Error: invalid base64 data")
            return
        if self._authMech == b"LOGIN":
            if self._authUser is None:
                self._authUser = decoded
                self._send(334, [_LOGIN_PASS], enhanced=False)
                return
            user, password = self._authUser, decoded
        else:
            fields = decoded.split(b"\x00")
            if len(fields) != 3 or not fields[1]:
                self._authFail(501, "5.5.2 Error: malformed AUTH PLAIN response")
                return
            authzid, user, password = fields
            if authzid and authzid != user:
                self._authFail(535, "5.7.8 Authentication credentials invalid")
                return
        self._authMech = None
        self._authUser = None
        self._login(user, password)

    def _login(self, user: bytes, password: bytes) -> None:
        """Check the credentials through the gate; block commands until it answers."""
        creds = UsernamePassword(user, password)
        d = self.gate.login(self.session.peerHost, creds, smtp.IMessageDelivery)
        d.addCallbacks(self._authSucceeded, self._authFailed)
        self._wait(d)

    def _authSucceeded(self, result: tuple[Any, Any, Callable[[], None]]) -> None:
        """Install the user's avatar."""
        self.mode = COMMAND
        _iface, avatar, logout = result
        if self._closing:
            logout()
            return
        self._logout()
        self.delivery, self._onLogout = avatar, logout
        self.authenticated = True
        self.authenticatedAs = getattr(avatar, "user", None) or "?"
        self.session.user = self.authenticatedAs
        avatar.session = self.session
        log.info("AUTH ok: {user} from {peer}", user=self.authenticatedAs,
                 peer=self.session.peerHost)
        self.reply(235, "2.7.0 Authentication successful")

    def _authFailed(self, reason: Failure) -> None:
        """Bad credentials → 535; anything else → 454 (logged, without credentials)."""
        if reason.check(defer.CancelledError):
            return
        if reason.check(UnauthorizedLogin):
            self._authFail(535, "5.7.8 Authentication credentials invalid")
            return
        log.error("AUTH from {peer} failed: {error}", peer=self.session.peerHost,
                  error=reason.getErrorMessage())
        self._authFail(454, "4.7.0 Temporary authentication failure")

    def _logout(self) -> None:
        """Log the current avatar out."""
        logout, self._onLogout = self._onLogout, None
        self.delivery = None
        if logout is not None:
            try:
                logout()
            except Exception:
                log.failure("SMTP avatar logout failed")


__all__ = ["LoginMixin"]
