"""The admin web page, under C{/admin/} on the HTTPS listener only.

Every user can log in with their mail password, change it, and set a vacation reply
(when Sieve is on: L{pymaild.sieve.autoreply}); the addresses in C{web.admins} (by
default C{postmaster@} of every local domain) also see the users (add, delete, set a
password), the aliases of the aliases file (add, delete; every other line of the file
is kept as written), the outbound queue (retry, delete), each domain's DKIM key sets (make,
retire) and the DNS records it needs (checked through the server's resolver on request),
and the certificate in use. Pages are plain HTML forms rendered by the server; no script
runs in them.

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
#: The actions only admins may take.
ADMIN_ACTIONS = (b"users/", b"queue/", b"dkim/", b"dns/", b"aliases/")

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
    #: The last DNS check of each domain: zone line → (status, detail).
    dnsChecks: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)


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
    @param checkDNS: resolves a list of L{pymaild.mailauth.dnsrecords.Record}s (from the
        reactor, through the server's resolver) into C{(record, status, detail)}
        triples; None: no check button.
    """

    isLeaf = True

    def __init__(self, backend: MailAdmin, runner: Any, gate: Any, sessions: Sessions,
                 title: str, checkDNS: Callable[[list[Any]], Any] | None = None) -> None:
        super().__init__()
        self.checkDNS = checkDNS
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
            b"dkim/new": self._dkimNew,
            b"dkim/retire": self._dkimRetire,
            b"dns/check": self._dnsCheck,
            b"vacation": self._vacation,
            b"aliases/add": self._aliasAdd,
            b"aliases/delete": self._aliasDelete,
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
        if action.startswith(ADMIN_ACTIONS) and not session.admin:
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
        vacation = await self.runner.run(self.backend.vacation, session.user)
        if vacation is not None:
            parts.append(self._vacationSection(session, vacation))
        if session.admin:
            users, queue, cert, domains, aliases = await defer.gatherResults([
                self.runner.run(self.backend.usersWithQuota),
                self.runner.run(self.backend.queue),
                self.runner.run(self.backend.certificate),
                self.runner.run(self.backend.domainInfo),
                self.runner.run(self._aliasesOrError)])
            parts.append(self._usersSection(session, users))
            parts.append(self._aliasesSection(session, *aliases))
            parts.append(self._queueSection(session, queue))
            parts.append(self._domainsSection(session, domains))
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

    def _aliasesOrError(self) -> tuple[str, list[Any], str]:
        """In the runner: the aliases file's entries, or why they cannot be read."""
        try:
            path, found = self.backend.aliases()
        except AdminRefused as e:
            return "", [], str(e)
        return path, found, ""

    def _aliasesSection(self, session: Session, path: str, found: list[Any],
                        error: str) -> str:
        if error:
            return f'<h2>Aliases</h2><p class="error">{_e(error)}</p>'
        if not path:
            return ('<h2>Aliases</h2><p id="aliases-none">No aliases file is configured'
                    " (<code>smtp.aliases</code>).</p>")
        rows = "".join(
            f'<tr class="alias"><td>{_e(e.key)}</td><td>{_e(", ".join(e.targets))}</td><td>'
            + self._form(session, "aliases/delete",
                         f'<input type="hidden" name="key" value="{_e(e.key)}">', "Delete",
                         inline=True, buttonId=f"alias-delete-{e.key}")
            + "</td></tr>" for e in found)
        add = self._form(session, "aliases/add",
                         '<label>Address <input name="key" id="alias-key" required '
                         'placeholder="sales@example.org, sales or @example.org"></label> '
                         '<label>Goes to <input name="targets" id="alias-targets" required '
                         'placeholder="alice, bob@example.org" size="40"></label> ',
                         "Add alias", buttonId="alias-add")
        return (f'<h2>Aliases ({len(found)})</h2><p>In <code>{_e(path)}</code>; a change'
                f' applies to the next message.</p><table id="aliases"><tr><th>Address'
                f"</th><th>Goes to</th><th></th></tr>{rows}</table>{add}")

    def _vacationSection(self, session: Session, v: Any) -> str:
        state = "on" if v.enabled else "off"
        checked = " checked" if v.enabled else ""
        return ('<h2>Vacation message</h2><p id="vacation-state">Your vacation reply is '
                f"<b>{state}</b>.</p>"
                + self._form(
                    session, "vacation",
                    f'<p><label><input type="checkbox" name="enabled" id="vacation-on" '
                    f'value="1"{checked}> Answer mail while I am away</label></p>'
                    f'<p><label>Subject <input name="subject" id="vacation-subject" '
                    f'value="{_e(v.subject)}" size="50"></label></p>'
                    f'<p><label>Message<br><textarea name="message" id="vacation-message" '
                    f'rows="6" cols="60">{_e(v.message)}</textarea></label></p>'
                    f'<p><label>At most one reply per sender every <input name="days" '
                    f'id="vacation-days" value="{v.days}" size="3"> days</label></p>',
                    "Save vacation message", buttonId="vacation-save"))

    def _domainsSection(self, session: Session, domains: list[Any]) -> str:
        out = ["<h2>Domains</h2>"]
        for info in domains:
            d = _e(info.domain)
            hidden = f'<input type="hidden" name="domain" value="{d}">'
            sets = "".join(
                f'<li class="dkim-set">{_e(name)} '
                + self._form(session, "dkim/retire",
                             hidden + f'<input type="hidden" name="selector" value="{_e(name)}">',
                             "Retire", inline=True, buttonId=f"retire-{info.domain}-{name}")
                + "</li>" for name in info.selectors)
            out.append(
                f'<h3 id="domain-{d}">{d}</h3><p>DKIM key sets (each signs with an RSA and '
                f'an Ed25519 key):</p><ul id="dkim-{d}">{sets or "<li>none</li>"}</ul>'
                + self._form(session, "dkim/new",
                             hidden + '<label>Name <input name="selector" placeholder="'
                             'today\'s date"></label> ', "New key set",
                             buttonId=f"dkim-new-{info.domain}"))
            checks = session.dnsChecks.get(info.domain, {})
            rows = []
            for record in info.records:
                status, detail = checks.get(record.zone(), ("", ""))
                rows.append(
                    f'<tr class="record"><td>{_e(record.name)}</td><td>{_e(record.type)}</td>'
                    f"<td><code>{_e(record.value)}</code></td>"
                    f'<td class="check {_e(status)}">{_e(status)}'
                    f"{(' — ' + _e(detail)) if detail else ''}</td></tr>")
            check = ""
            if self.checkDNS is not None:
                check = self._form(session, "dns/check", hidden, "Check the DNS",
                                   buttonId=f"dns-check-{info.domain}")
            out.append(f'<p>DNS records to publish:</p><table id="dns-{d}"><tr><th>Name'
                       f"</th><th>Type</th><th>Value</th><th>Check</th></tr>{''.join(rows)}"
                       f"</table>{check}")
        return "".join(out)

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


    async def _aliasAdd(self, request: Any, session: Session) -> str:
        key = await self.runner.run(self.backend.addAlias, self._field(request, "key"),
                                    self._field(request, "targets"))
        log.info("admin page: {admin} added alias {key}", admin=session.user, key=key)
        return f"Added alias {key}."

    async def _aliasDelete(self, request: Any, session: Session) -> str:
        key = await self.runner.run(self.backend.removeAlias, self._field(request, "key"))
        log.info("admin page: {admin} deleted alias {key}", admin=session.user, key=key)
        return f"Deleted alias {key}."

    async def _vacation(self, request: Any, session: Session) -> str:
        enabled = self._field(request, "enabled") == "1"
        await self.runner.run(self.backend.setVacation, session.user, enabled,
                              self._field(request, "subject"),
                              self._field(request, "message"), self._field(request, "days"))
        log.info("admin page: {user} turned the vacation reply {state}",
                 user=session.user, state="on" if enabled else "off")
        return ("Your vacation reply is on." if enabled else
                "Your vacation reply is off.")

    async def _dkimNew(self, request: Any, session: Session) -> str:
        domain = self._field(request, "domain")
        name = await self.runner.run(self.backend.newDKIMKey, domain,
                                     self._field(request, "selector"))
        log.info("admin page: {admin} made DKIM key set {name} for {domain}",
                 admin=session.user, name=name, domain=domain)
        return (f"Made DKIM key set {name} for {domain}: publish its two records, then"
                " it signs.")

    async def _dkimRetire(self, request: Any, session: Session) -> str:
        domain, name = self._field(request, "domain"), self._field(request, "selector")
        await self.runner.run(self.backend.retireDKIMKey, domain, name)
        log.info("admin page: {admin} retired DKIM key set {name} of {domain}",
                 admin=session.user, name=name, domain=domain)
        return f"Retired DKIM key set {name} of {domain}: it no longer signs."

    async def _dnsCheck(self, request: Any, session: Session) -> str:
        domain = self._field(request, "domain")
        records = await self.runner.run(self.backend.records, domain)
        if self.checkDNS is None:
            raise AdminRefused("no DNS check on this server")
        results = await self.checkDNS(records)
        session.dnsChecks[domain.strip().lower()] = {
            record.zone(): (status, detail) for record, status, detail in results}
        bad = sum(status != "ok" for _r, status, _d in results)
        return (f"DNS of {domain}: all {len(results)} records are right." if not bad else
                f"DNS of {domain}: {bad} of {len(results)} records are missing or differ.")


__all__ = ["AdminPages", "IWebUser", "Session", "Sessions"]
