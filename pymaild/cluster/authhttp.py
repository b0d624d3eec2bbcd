"""The C{auth_http} endpoint of nginx's mail proxy (ngx_mail_auth_http_module).

nginx asks it, before proxying a login, with a C{GET} whose headers carry the login:
C{Auth-Method} (C{plain} or C{login}: the only ones pymaild accepts, as it offers no
challenge-response mechanism), C{Auth-User} and C{Auth-Pass} (percent-escaped by
nginx), C{Auth-Protocol} (C{imap}, C{pop3} or C{smtp}), C{Auth-Login-Attempt} and
C{Client-IP}. L{AuthHTTP} answers, always with status 200 as nginx expects:

- C{Auth-Status: OK}, C{Auth-Server} (an IP address) and C{Auth-Port}: the node that
  owns the mailbox (its IMAP, POP3 or submission port), and C{Auth-User} with the
  canonical address;
- C{Auth-Status: Invalid login or password} after a failed check. The failure is
  recorded in pymaild's per-IP penalty (L{pymaild.auth.penalty.AuthPenalty}, shared
  with the direct listeners) for the C{Client-IP}, and the delay it earns goes back as
  C{Auth-Wait} (whole seconds, at least 1), which makes nginx wait and let the client
  try again. From the 10th attempt of a session on no C{Auth-Wait} is sent, so nginx
  closes the connection (ngx_mail_auth_http_module's documented limit). For SMTP,
  C{Auth-Error-Code: 535 5.7.8};
- a temporary failure (the user database is down) says so, with C{Auth-Wait: 1} and,
  for SMTP, C{Auth-Error-Code: 451 4.3.0}.

Every request must carry the shared secret in C{X-Pymaild-Secret} (nginx:
C{auth_http_header X-Pymaild-Secret ...;}); without it the answer is C{403}. Passwords
never reach a log.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pymaild.auth.penalty import AuthPenalty
from pymaild.auth.users import NodeRecord

log = Logger()

SECRET_HEADER = "X-Pymaild-Secret"
PROTOCOLS = ("imap", "pop3", "smtp")
METHODS = ("plain", "login")
MAX_ATTEMPTS = 10
"""nginx closes the session after an answer without Auth-Wait; from this attempt on
none is sent."""

_PORTS = {"imap": "imap_port", "pop3": "pop3_port", "smtp": "submission_port"}


class Router:
    """Which node serves a user's mailbox, for each protocol (blocking).

    @param users: the user directory; one with an C{owner(address)} method (the
        PostgreSQL one) names each user's node.
    @param here: this node, for users without an owner (and the passwd file).
    """

    def __init__(self, users: Any, here: NodeRecord) -> None:
        self.users = users
        self.here = here

    def route(self, address: str, protocol: str) -> tuple[str, int]:
        """C{(ip, port)} of C{protocol} on the node that owns C{address}."""
        owner = getattr(self.users, "owner", None)
        # Read now: a login right after a move must reach the new owner.
        node = (owner(address, fresh=True) if owner is not None else None) or self.here
        return node.address, int(getattr(node, _PORTS[protocol]))


class AuthHTTP(Resource):
    """The endpoint (see the module docstring).

    @param checker: the server's credentials checker (L{pymaild.auth.checker}).
    @param penalty: the server's per-IP penalty record.
    @param clock: the reactor clock (the penalty's time).
    @param route: C{(address, protocol)} → Deferred firing with C{(ip, port)}.
    @param secret: the shared secret nginx sends.
    """

    isLeaf = True

    def __init__(self, checker: Any, penalty: AuthPenalty, clock: IReactorTime,
                 route: Callable[[str, str], defer.Deferred[tuple[str, int]]],
                 secret: str) -> None:
        super().__init__()
        self.checker = checker
        self.penalty = penalty
        self.clock = clock
        self.route = route
        self.secret = secret.encode("utf-8")

    def render_GET(self, request: Any) -> Any:
        """Check the login nginx forwards and answer in headers."""
        given = request.getHeader(SECRET_HEADER) or ""
        if not self.secret or not hmac.compare_digest(given.encode("utf-8"), self.secret):
            request.setResponseCode(403)
            return b"forbidden\n"

        def header(name: str) -> str:
            return (request.getHeader(name) or "").strip()

        protocol = header("Auth-Protocol").lower()
        method = header("Auth-Method").lower()
        client = header("Client-IP") or "unknown"
        try:
            attempt = int(header("Auth-Login-Attempt") or "1")
        except ValueError:
            attempt = MAX_ATTEMPTS
        if protocol not in PROTOCOLS:
            return self._answer(request, protocol, "Unsupported protocol", None)
        if method not in METHODS:
            return self._answer(request, protocol, "Unsupported authentication method", None,
                                code="504 5.5.4")
        user = unquote_to_bytes(header("Auth-User"))
        password = unquote_to_bytes(header("Auth-Pass"))
        d = defer.maybeDeferred(self.checker.requestAvatarId,
                                UsernamePassword(user, password))

        def verified(address: str) -> Any:
            self.penalty.success(client)
            r = self.route(address, protocol)
            return r.addCallback(lambda where: (address, where))

        def answered(result: tuple[str, tuple[str, int]]) -> None:
            address, (server, port) = result
            log.info("auth_http: {user} ({protocol}) from {client} to {server}:{port}",
                     user=address, protocol=protocol, client=client, server=server,
                     port=port)
            request.setHeader("Auth-Status", "OK")
            request.setHeader("Auth-Server", server)
            request.setHeader("Auth-Port", str(port))
            request.setHeader("Auth-User", address)
            self._finish(request)

        def failed(reason: Any) -> None:
            if reason.check(UnauthorizedLogin):
                delay = self.penalty.failure(client, self.clock.seconds())
                log.info("auth_http: authentication failed for {user} ({protocol}) from"
                         " {client}, attempt {attempt}", user=_printable(user),
                         protocol=protocol, client=client, attempt=attempt)
                wait = max(1, math.ceil(delay)) if attempt < MAX_ATTEMPTS else None
                self._answer(request, protocol, "Invalid login or password", wait,
                             code="535 5.7.8")
                return
            log.warn("auth_http: temporary failure for {user}: {error}",
                     user=_printable(user), error=reason.getErrorMessage())
            self._answer(request, protocol, "Temporary server problem, try again later",
                         1 if attempt < MAX_ATTEMPTS else None, code="451 4.3.0")

        d.addCallback(verified)
        d.addCallbacks(answered, failed)
        d.addErrback(lambda f: log.failure("auth_http answer failed", f))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return NOT_DONE_YET

    def _answer(self, request: Any, protocol: str, status: str, wait: int | None,
                code: str | None = None) -> Any:
        """A refusal: C{Auth-Status}, C{Auth-Wait} when the client may retry, and the
        SMTP reply code for SMTP."""
        request.setHeader("Auth-Status", status)
        if wait is not None:
            request.setHeader("Auth-Wait", str(wait))
        if protocol == "smtp" and code is not None:
            request.setHeader("Auth-Error-Code", code)
        self._finish(request)
        return NOT_DONE_YET

    @staticmethod
    def _finish(request: Any) -> None:
        """End the response (an empty body), unless the client went away."""
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setHeader("Content-Length", "0")
        request.finish()


def _printable(name: bytes) -> str:
    """A user name made safe for a log line."""
    text = name.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)[:80]
