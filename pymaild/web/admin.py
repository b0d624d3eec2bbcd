"""The admin web page, under C{/admin/} on the HTTPS listener only.

Every user can log in with their mail password and change it; the addresses in
C{web.admins} (by default C{postmaster@} of every local domain) also see the users
(add, delete, set a password), the outbound queue (retry, delete) and the certificate
in use. Pages are plain HTML forms rendered by the server; no script runs in them.

Security, as the web expects of an admin page:

- only over HTTPS: the HTTP listener redirects C{/admin/} like every other path, and
  this resource refuses a request that did not come over TLS;
- the login goes through the same L{pymaild.auth.penalty.AuthGate} as IMAP, POP3 and
  SMTP (the same per-IP penalty, counted in the metrics as C{web});
- the session is a random 256-bit id in a cookie that is C{Secure}, C{HttpOnly} and
  C{SameSite=Strict}, limited to C{/admin/}; it ends after an hour without a request,
  or at logout;
- every POST must carry the session's CSRF token (the login form a token bound to a
  cookie of its own), and a POST whose C{Origin} is not this site is refused with 403;
- responses carry C{Content-Security-Policy: default-src 'none'} (inline style and
  same-origin forms only), C{X-Frame-Options: DENY}, C{Cache-Control: no-store} and
  C{Referrer-Policy: same-origin};
- the blocking work (passwd file, queue) runs in a runner, never in the reactor.
"""

from __future__ import annotations

import html
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource
from zope.interface import Interface

from pymaild.web.backend import AdminRefused, MailAdmin

log = Logger(namespace="pymaild.web")

COOKIE = b"pymaild_session"
LOGIN_COOKIE = b"pymaild_login"
PREFIX = b"/admin/"
#: Seconds without a request after which a session ends.
IDLE = 3600.0
#: Most sessions kept at once (the oldest go first).
MAX_SESSIONS = 10000

_HEADERS = {
    b"content-security-policy": b"default-src 'none'; style-src 'unsafe-inline'; "
                                b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    b"x-frame-options": b"DENY",
    b"cache-control": b"no-store",
    b"referrer-policy": b"same-origin",
    b"x-content-type-options": b"nosniff",
}

_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;"
          "text-align:left}form.inline{display:inline}.flash{background:#eef;padding:.5em}"
          ".error{background:#fee;padding:.5em}")


class IWebUser(Interface):
    """The avatar of a web login: the canonical address (the realm gives a C{str})."""


@dataclass
class Session:
    """One logged-in browser."""

    user: str
    admin: bool
    csrf: str
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)


class Sessions:
    """The admin page's sessions, in memory (a restart logs everybody out)."""

    def __init__(self, clock: Any, idle: float = IDLE, limit: int = MAX_SESSIONS) -> None:
        self.clock = clock
        self.idle = idle
        self.limit = limit
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def new(self, user: str, admin: bool) -> tuple[str, Session]:
        """Start a session; its id and the session."""
        while len(self._sessions) >= self.limit:
            self._sessions.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        session = Session(user, admin, secrets.token_urlsafe(32), self.clock.seconds())
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session C{sid}, or None (an expired one is forgotten)."""
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self.clock.seconds()
        if now - session.seen > self.idle:
            del self._sessions[sid]
            return None
        session.seen = now
        self._sessions.move_to_end(sid)
        return session

    def end(self, sid: str | None) -> None:
        """End a session (logout)."""
        if sid:
            self._sessions.pop(sid, None)


def _e(text: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(text), quote=True)


class AdminPages(Resource):
    """The C{/admin/} pages (see the module docstring).

    @param backend: the L{MailAdmin} doing the work (blocking).
    @param runner: runs the backend's methods off the reactor.
    @param gate: the server's L{pymaild.auth.penalty.AuthGate}.
    @param sessions: the L{Sessions}.
    @param title: the host name, for the page title.
    """

    isLeaf = True

    def __init__(self, backend: MailAdmin, runner: Any, gate: Any, sessions: Sessions,
                 title: str) -> None:
        super().__init__()
        self.backend = backend
        self.runner = runner
        self.gate = gate
        self.sessions = sessions
        self.title = title
        self.actions: dict[bytes, Callable[[Any, Session], Any]] = {
            b"logout": self._logout,
            b"password": self._ownPassword,
            b"users/add": self._addUser,
            b"users/delete": self._deleteUser,
            b"users/password": self._setPassword,
            b"queue/retry": self._queueRetry,
            b"queue/delete": self._queueDelete,
        }

    # -- dispatch -----------------------------------------------------------------------

    def render(self, request: Any) -> Any:
        """Answer one request under C{/admin/}."""
        for name, value in _HEADERS.items():
            request.setHeader(name, value)
        if not request.isSecure():
            request.setResponseCode(http.FORBIDDEN)
            return b"The admin pages are served over HTTPS only.\n"
        d = defer.ensureDeferred(self._handle(request))

        def failed(f: Any) -> None:
            log.failure("admin page {path} failed", f, path=request.path)
            try:
                request.setResponseCode(http.INTERNAL_SERVER_ERROR)
                request.write(b"Internal error; see the server log.\n")
            except Exception:
                pass

        def finish(_: Any) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.finish()

        d.addErrback(failed).addBoth(finish)
        return server.NOT_DONE_YET

    async def _handle(self, request: Any) -> None:
        path = request.path
        if not path.startswith(PREFIX):
            self._redirect(request, PREFIX)
            return
        action = path[len(PREFIX):].rstrip(b"/")
        sid = (request.getCookie(COOKIE) or b"").decode("ascii", "replace")
        session = self.sessions.get(sid)
        if request.method == b"GET" and action == b"":
            if session is None:
                self._loginPage(request)
            else:
                await self._mainPage(request, session)
            return
        if request.method != b"POST":
            self._plain(request, http.NOT_FOUND, "Not found")
            return
        if not self._sameOrigin(request):
            self._plain(request, http.FORBIDDEN, "Cross-site request refused")
            return
        if action == b"login":
            await self._login(request)
            return
        handler = self.actions.get(action)
        if handler is None:
            self._plain(request, http.NOT_FOUND, "Not found")
            return
        if session is None:
            self._plain(request, http.FORBIDDEN, "Not logged in (or the session ended)")
            return
        if not secrets.compare_digest(self._field(request, "csrf"), session.csrf):
            self._plain(request, http.FORBIDDEN, "Bad or missing form token")
            return
        if action.startswith((b"users/", b"queue/")) and not session.admin:
            self._plain(request, http.FORBIDDEN, "Only admins may do this")
            return
        try:
            note = await handler(request, session)
        except AdminRefused as e:
            session.flash.append(("error", str(e)))
        else:
            if note:
                session.flash.append(("flash", note))
        self._redirect(request, PREFIX)

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _field(request: Any, name: str) -> str:
        values = request.args.get(name.encode(), [b""])
        return values[0].decode("utf-8", "replace") if values else ""

    @staticmethod
    def _sameOrigin(request: Any) -> bool:
        """A POST's C{Origin}, when sent, must be this very site."""
        origin = request.getHeader(b"origin")
        if origin is None:
            return True  # not sent (old clients): the CSRF token still guards
        host = request.getHeader(b"host") or b""
        return bool(host) and origin == b"https://" + host

    @staticmethod
    def _redirect(request: Any, where: bytes) -> None:
        request.setResponseCode(http.SEE_OTHER)
        request.setHeader(b"location", where)

    @staticmethod
    def _plain(request: Any, code: int, text: str) -> None:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.write(text.encode("utf-8") + b"\n")

    def _page(self, request: Any, body: str) -> None:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.write(
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>pymaild on {_e(self.title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>pymaild on {_e(self.title)}</h1>{body}</body></html>".encode())

    @staticmethod
    def _cookie(request: Any, name: bytes, value: str, maxAge: int | None = None) -> None:
        request.addCookie(name, value.encode("ascii"), path=PREFIX, secure=True,
                          httpOnly=True, sameSite="strict",
                          max_age=None if maxAge is None else str(maxAge))

    # -- login --------------------------------------------------------------------------

    def _loginPage(self, request: Any, error: str = "") -> None:
        token = secrets.token_urlsafe(32)
        self._cookie(request, LOGIN_COOKIE, token)
        note = f'<p class="error">{_e(error)}</p>' if error else ""
        self._page(request, f"""{note}<h2>Log in</h2>
<form method="post" action="/admin/login">
<input type="hidden" name="csrf" value="{token}">
<p><label>Address <input name="user" id="user" autocomplete="username" required></label></p>
<p><label>Password <input name="password" id="password" type="password"
 autocomplete="current-password" required></label></p>
<p><button type="submit" id="login">Log in</button></p></form>""")

    async def _login(self, request: Any) -> None:
        cookie = (request.getCookie(LOGIN_COOKIE) or b"").decode("ascii", "replace")
        if not cookie or not secrets.compare_digest(self._field(request, "csrf"), cookie):
            self._plain(request, http.FORBIDDEN, "Bad or missing form token")
            return
        user = self._field(request, "user").strip()
        password = self._field(request, "password")
        peer = request.getClientAddress()
        host = getattr(peer, "host", "")
        try:
            _iface, avatar, logout = await self.gate.login(
                host, UsernamePassword(user.encode("utf-8"), password.encode("utf-8")),
                IWebUser)
        except (UnauthorizedLogin, LoginFailed, UnhandledCredentials):
            request.setResponseCode(http.UNAUTHORIZED)
            self._loginPage(request, "Wrong address or password.")
            return
        logout()
        address = str(avatar)
        sid, _session = self.sessions.new(address, self.backend.isAdmin(address))
        self._cookie(request, COOKIE, sid)
        self._cookie(request, LOGIN_COOKIE, "", maxAge=0)
        log.info("admin page: {user} logged in from {host}", user=address, host=host)
        self._redirect(request, PREFIX)

    async def _logout(self, request: Any, session: Session) -> None:
        self.sessions.end((request.getCookie(COOKIE) or b"").decode("ascii", "replace"))
        self._cookie(request, COOKIE, "", maxAge=0)

    # -- pages --------------------------------------------------------------------------

    def _form(self, session: Session, action: str, fields: str, button: str,
              inline: bool = False, buttonId: str = "") -> str:
        cls = ' class="inline"' if inline else ""
        bid = f' id="{_e(buttonId)}"' if buttonId else ""
        return (f'<form method="post" action="/admin/{action}"{cls}>'
                f'<input type="hidden" name="csrf" value="{session.csrf}">{fields}'
                f"<button type=\"submit\"{bid}>{_e(button)}</button></form>")

    async def _mainPage(self, request: Any, session: Session) -> None:
        flash = "".join(f'<p class="{kind}">{_e(text)}</p>' for kind, text in session.flash)
        session.flash.clear()
        parts = [flash, f"<p>Logged in as <b>{_e(session.user)}</b>"
                        f"{' (admin)' if session.admin else ''}. "
                 + self._form(session, "logout", "", "Log out", inline=True,
                              buttonId="logout") + "</p>",
                 "<h2>Your password</h2>",
                 self._form(session, "password",
                            '<label>Current <input type="password" name="current" '
                            'autocomplete="current-password" required></label> '
                            '<label>New <input type="password" name="new" '
                            'autocomplete="new-password" required></label> ',
                            "Change my password")]
        if session.admin:
            users, queue, cert = await defer.gatherResults([
                self.runner.run(self.backend.usersWithQuota),
                self.runner.run(self.backend.queue),
                self.runner.run(self.backend.certificate)])
            parts.append(self._usersSection(session, users))
            parts.append(self._queueSection(session, queue))
            expiry = (f"{cert.notAfter:%Y-%m-%d %H:%M} UTC" if cert.notAfter else "none")
            parts.append(f"<h2>Certificate</h2><p id=\"certificate\">{_e(cert.path)}: "
                         f"{_e(', '.join(cert.names) or 'no names')}; expires {_e(expiry)}"
                         "</p>")
        self._page(request, "".join(parts))

    def _usersSection(self, session: Session, users: list[tuple[str, str]]) -> str:
        rows = []
        for u, quota in users:
            rows.append(
                f'<tr><td class="user">{_e(u)}</td><td class="quota">{_e(quota)}</td><td>'
                + self._form(session, "users/password",
                             f'<input type="hidden" name="address" value="{_e(u)}">'
                             '<input type="password" name="password" placeholder="new '
                             'password" autocomplete="new-password" required> ',
                             "Set password", inline=True)
                + " " + self._form(session, "users/delete",
                                   f'<input type="hidden" name="address" value="{_e(u)}">',
                                   "Delete", inline=True)
                + "</td></tr>")
        add = self._form(session, "users/add",
                         '<label>Address <input name="address" id="new-address" required>'
                         '</label> <label>Password <input type="password" name="password" '
                         'id="new-password" autocomplete="new-password" required></label> ',
                         "Add user", buttonId="add-user")
        return (f'<h2>Users ({len(users)})</h2><table id="users"><tr><th>Address</th>'
                f"<th>Quota</th><th></th></tr>{''.join(rows)}</table>"
                f"<h3>New user</h3>{add}")

    def _queueSection(self, session: Session, queue: list[Any]) -> str:
        if not queue:
            return '<h2>Queue</h2><p id="queue-empty">The queue is empty.</p>'
        rows = []
        for m in queue:
            rcpts = "<br>".join(
                f"{_e(a)}: {_e(state)}, {n} attempt(s){(' — ' + _e(reply)) if reply else ''}"
                for a, state, n, reply in m.recipients)
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.arrival))
            hidden = f'<input type="hidden" name="id" value="{_e(m.id)}">'
            rows.append(
                f'<tr class="queued" id="q-{_e(m.id)}"><td>{_e(m.id)}</td><td>{_e(when)}</td>'
                f"<td>&lt;{_e(m.sender)}&gt;</td><td>{rcpts}</td><td>"
                + self._form(session, "queue/retry", hidden, "Retry", inline=True,
                             buttonId=f"retry-{m.id}")
                + " " + self._form(session, "queue/delete", hidden, "Delete", inline=True,
                                   buttonId=f"delete-{m.id}")
                + "</td></tr>")
        return (f'<h2>Queue ({len(queue)})</h2><table id="queue"><tr><th>Id</th>'
                f"<th>Arrived</th><th>From</th><th>Recipients</th><th></th></tr>"
                f"{''.join(rows)}</table>")

    # -- actions ------------------------------------------------------------------------

    async def _ownPassword(self, request: Any, session: Session) -> str:
        await self.runner.run(self.backend.changeOwnPassword, session.user,
                              self._field(request, "current"), self._field(request, "new"))
        return "Your password was changed."

    async def _addUser(self, request: Any, session: Session) -> str:
        address = await self.runner.run(self.backend.addUser, self._field(request, "address"),
                                        self._field(request, "password"))
        log.info("admin page: {admin} added user {user}", admin=session.user, user=address)
        return f"Added {address}."

    async def _deleteUser(self, request: Any, session: Session) -> str:
        address = await self.runner.run(self.backend.deleteUser,
                                        self._field(request, "address"), session.user)
        log.info("admin page: {admin} deleted user {user}", admin=session.user, user=address)
        return f"Deleted {address} (the mail stays on disk)."

    async def _setPassword(self, request: Any, session: Session) -> str:
        address = await self.runner.run(self.backend.setPassword,
                                        self._field(request, "address"),
                                        self._field(request, "password"))
        log.info("admin page: {admin} set the password of {user}", admin=session.user,
                 user=address)
        return f"Set the password of {address}."

    async def _queueRetry(self, request: Any, session: Session) -> str:
        qid = self._field(request, "id")
        await self.runner.run(self.backend.queueAction, "retry", qid)
        return f"{qid} will be tried again now."

    async def _queueDelete(self, request: Any, session: Session) -> str:
        qid = self._field(request, "id")
        await self.runner.run(self.backend.queueAction, "delete", qid)
        log.info("admin page: {admin} deleted queued message {id}", admin=session.user,
                 id=qid)
        return f"Deleted {qid} from the queue."


__all__ = ["AdminPages", "IWebUser", "Session", "Sessions"]
