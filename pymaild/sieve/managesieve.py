"""ManageSieve (RFC 5804): users upload, check, activate and fetch their Sieve scripts.

Commands: CAPABILITY, STARTTLS, AUTHENTICATE (PLAIN and LOGIN, with or without an
initial response), LOGOUT, NOOP, HAVESPACE, PUTSCRIPT (the script is compiled first: an
invalid one gets C{NO} naming the line), CHECKSCRIPT, SETACTIVE, GETSCRIPT,
DELETESCRIPT, RENAMESCRIPT, LISTSCRIPTS. Scripts go to the user's Pigeonhole-style
storage (L{pymaild.sieve.storage}); disk work runs in the runner, never the reactor.

As the other listeners: passwords only over TLS or from loopback (C{auth.cleartext};
otherwise SASL is empty in CAPABILITY and AUTHENTICATE gets C{NO (ENCRYPT-NEEDED)}),
logins through the L{pymaild.auth.penalty.AuthGate} (failure penalties), the
per-user-and-address session cap (L{pymaild.limits.UserIPLimits}), and the connection
caps of the L{pymaild.limits.LimitedFactory} the tap wraps around the factory. Bytes
pipelined after STARTTLS are dropped. A command line (outside literals) is at most
L{MAX_LINE} bytes; a literal at most the script size limit (a larger one is read and
dropped, then answered C{NO (QUOTA/MAXSIZE)}), so the session stays in sync.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any, cast

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import Interface

from pymaild.auth.policy import cleartextAllowed, isSecure
from pymaild.sieve.checker import EXTENSIONS, Limits, compileScript
from pymaild.sieve.grammar import SieveSyntaxError
from pymaild.sieve.storage import (
    ActiveScript,
    NoSuchScript,
    ScriptError,
    ScriptStorage,
    validName,
)
from pymaild.wire import setNoDelay

log = Logger()

MAX_LINE = 8192
PRE_LOGIN_TIMEOUT = 60
IDLE_TIMEOUT = 1800
#: What a client gets when the connection caps are reached.
REFUSAL = b'BYE (TRYLATER) "Too many connections"\r\n'
_LITERAL = re.compile(rb"\{([0-9]{1,10})(\+?)\}\Z")
_ATOM = re.compile(rb"[A-Za-z0-9_.\-]+")


class ISieveAccount(Interface):
    """The avatar ManageSieve asks the realm for: one user's scripts."""


class SieveAccount:
    """One user's script storage, as a ManageSieve avatar.

    @ivar address: the canonical address.
    @ivar storage: the user's L{ScriptStorage}.
    """

    def __init__(self, address: str, storage: ScriptStorage) -> None:
        self.address = address
        self.storage = storage


class SieveAvatars:
    """Builds L{SieveAccount}s for the realm (blocking work in C{runner}).

    @param homeOf: canonical address → home directory (blocking).
    @param globalDir: the global scripts' directory (C{sieve.global_dir}).
    """

    def __init__(self, homeOf: Callable[[str], str], runner: Any, globalDir: str = "") -> None:
        self.homeOf = homeOf
        self.runner = runner
        self.globalDir = globalDir

    def __call__(self, avatarId: Any) -> defer.Deferred[tuple[SieveAccount, Callable[[], None]]]:
        """The account of C{avatarId} (a canonical address)."""
        address = str(avatarId)
        d = self.runner.run(self.homeOf, address)
        return d.addCallback(lambda home: (
            SieveAccount(address, ScriptStorage(home, self.globalDir)), lambda: None))


class _Reply(Exception):
    """Answer the current command with C{NO}/C{BYE}, a code and a text."""

    def __init__(self, text: str, code: str | None = None, kind: str = "NO") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.kind = kind


class _Skip:
    """A literal too large to keep, being read and dropped."""

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining


def quote(text: str) -> bytes:
    """A string as ManageSieve sends it: quoted, or a literal when it must be."""
    data = text.encode("utf-8")
    if len(data) > 1024 or any(c in data for c in b'\r\n\0"\\'):
        return b"{%d}\r\n" % len(data) + data
    return b'"' + data + b'"'


class ManageSieveServer(TimeoutMixin, protocol.Protocol):
    """One ManageSieve connection."""

    transport: interfaces.ITCPTransport  # set by makeConnection, before any use

    def __init__(self, factory: ManageSieveFactory) -> None:
        self.factory = factory
        self.config = factory.config
        self.limits: Limits = factory.limits
        self.buffer = b""
        self.account: SieveAccount | None = None
        self.busy = False
        self.lost = False
        self.tlsStarted = False
        self.discarding = False
        self.skip: _Skip | None = None
        self.sasl: tuple[str, bytes | None] | None = None
        self.pendingLogin: defer.Deferred[Any] | None = None
        self.userIPKey: tuple[str, str] | None = None

    # -- connection -----------------------------------------------------------------------

    def callLater(self, period: float, func: Callable[[], Any]) -> Any:
        """Timeouts run on the factory's clock."""
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        """Greet with the capabilities."""
        setNoDelay(self.transport)
        self.sendCapabilities(b'OK "pymaild ManageSieve ready."')
        self.setTimeout(PRE_LOGIN_TIMEOUT)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Cancel a pending login and release the session slot."""
        self.lost = True
        self.setTimeout(None)
        login, self.pendingLogin = self.pendingLogin, None
        if login is not None:
            login.cancel()
        if self.userIPKey is not None and self.factory.userIPLimits is not None:
            self.factory.userIPLimits.release(*self.userIPKey)
            self.userIPKey = None

    def timeoutConnection(self) -> None:
        """Idle too long."""
        self.transport.write(b'BYE "Disconnected for inactivity."\r\n')
        self.transport.loseConnection()

    @property
    def secure(self) -> bool:
        """Whether the connection is encrypted."""
        return self.factory.implicitTLS or self.tlsStarted or isSecure(self.transport)

    def canStartTLS(self) -> bool:
        """Whether STARTTLS is offered now."""
        return (self.factory.tlsContext is not None and not self.secure
                and interfaces.ITLSTransport.providedBy(self.transport))

    def passwordsAllowed(self) -> bool:
        """Whether AUTHENTICATE PLAIN/LOGIN may be used on this connection."""
        return self.secure or bool(cleartextAllowed(self.config.auth.cleartext,
                                                    self.transport))

    def sendCapabilities(self, final: bytes = b'OK "Capability completed."') -> None:
        """The capability response (RFC 5804 section 1.7)."""
        lines = [b'"IMPLEMENTATION" "pymaild"',
                 b'"SASL" "%s"' % (b"PLAIN LOGIN" if self.passwordsAllowed() else b""),
                 b'"SIEVE" "%s"' % " ".join(EXTENSIONS).encode()]
        if self.canStartTLS():
            lines.append(b'"STARTTLS"')
        lines += [b'"MAXREDIRECTS" "%d"' % self.limits.maxRedirects, b'"VERSION" "1.0"']
        if self.account is not None:
            lines.append(b'"OWNER" ' + quote(self.account.address))
        self.transport.write(b"\r\n".join(lines) + b"\r\n" + final + b"\r\n")

    def reply(self, kind: str, text: str, code: str | None = None) -> None:
        """Send C{OK}, C{NO} or C{BYE} with an optional response code."""
        out = kind.encode()
        if code:
            out += b" (" + code.encode() + b")"
        self.transport.write(out + b" " + quote(text) + b"\r\n")

    # -- framing --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Buffer input and run complete commands one at a time."""
        if self.discarding:
            return
        self.resetTimeout()
        self.buffer += data
        self.pump()
        if self.discarding:
            self.buffer = b""
            self.discarding = False

    def pump(self) -> None:
        """Run the complete commands in the buffer while none is running."""
        while not self.busy and not self.lost and not self.discarding:
            if self.skip is not None:
                n = min(self.skip.remaining, len(self.buffer))
                self.buffer = self.buffer[n:]
                self.skip.remaining -= n
                if self.skip.remaining:
                    return
                self.skip = None
                end = self.buffer.find(b"\n")
                if end < 0:
                    return
                self.buffer = self.buffer[end + 1:]
                self.reply("NO", "Script too large", "QUOTA/MAXSIZE")
                continue
            parsed = self.parse()
            if parsed is None:
                if len(self.buffer) > MAX_LINE + self.limits.maxScriptSize + 64:
                    self.reply("BYE", "Command too long")
                    self.transport.loseConnection()
                    self.lost = True
                return
            if isinstance(parsed, _Reply):
                self.reply(parsed.kind, parsed.text, parsed.code)
                continue
            if isinstance(parsed, str):
                continue
            self.run(parsed)

    def parse(self) -> list[Any] | _Reply | str | None:
        """One command's words (atoms and strings) from the buffer, or None when it is
        not complete; a L{_Reply} for a line that cannot be a command; C{"skip"} when a
        literal over the size limit is to be dropped."""
        buf = self.buffer
        pos = 0
        words: list[Any] = []
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_LINE:
                    self.buffer = b""
                    return _Reply("Line too long")
                return None
            line = buf[pos:end].rstrip(b"\r")
            if len(line) > MAX_LINE:
                self.buffer = buf[end + 1:]
                return _Reply("Line too long")
            i = 0
            literal: int | None = None
            while i < len(line):
                c = line[i:i + 1]
                if c == b" ":
                    i += 1
                elif c == b'"':
                    j = i + 1
                    out = bytearray()
                    while j < len(line) and line[j:j + 1] != b'"':
                        if line[j:j + 1] == b"\\" and j + 1 < len(line):
                            j += 1
                        out += line[j:j + 1]
                        j += 1
                    if j >= len(line):
                        self.buffer = buf[end + 1:]
                        return _Reply("Unterminated string")
                    words.append(bytes(out))
                    i = j + 1
                elif c == b"{":
                    m = _LITERAL.match(line[i:])
                    if m is None:
                        self.buffer = buf[end + 1:]
                        return _Reply("Invalid literal")
                    literal = int(m.group(1))
                    i = len(line)
                else:
                    m = _ATOM.match(line, i)
                    if m is None:
                        self.buffer = buf[end + 1:]
                        return _Reply("Invalid characters in command")
                    words.append(m.group().decode("ascii"))
                    i = m.end()
            pos = end + 1
            if literal is None:
                self.buffer = buf[pos:]
                return words
            if literal > self.limits.maxScriptSize:
                self.buffer = buf[pos:]
                self.skip = _Skip(literal)
                return "skip"
            if len(buf) - pos < literal:
                return None
            words.append(buf[pos:pos + literal])
            pos += literal

    # -- commands -------------------------------------------------------------------------

    def run(self, words: list[Any]) -> None:
        """Run one command; an asynchronous one holds the input until it is done."""
        if self.sasl is not None:
            self.saslStep(words)
            return
        if not words or not isinstance(words[0], str):
            self.reply("NO", "Expected a command")
            return
        name = words[0].upper()
        args = words[1:]
        handler = getattr(self, "cmd_" + name, None)
        if handler is None:
            self.reply("NO", f"Unknown command {name[:40]}")
            return
        authed = name in ("CAPABILITY", "STARTTLS", "AUTHENTICATE", "LOGOUT", "NOOP")
        if not authed and self.account is None:
            self.reply("NO", "Authenticate first")
            return
        try:
            result = handler(*args)
        except TypeError:
            self.reply("NO", f"Wrong arguments for {name}")
            return
        except _Reply as r:
            self.reply(r.kind, r.text, r.code)
            return
        if isinstance(result, defer.Deferred):
            self.busy = True

            def failed(f: Failure) -> None:
                if f.check(_Reply):
                    self.reply(f.value.kind, f.value.text, f.value.code)
                    return
                if f.check(NoSuchScript):
                    self.reply("NO", str(f.value), "NONEXISTENT")
                    return
                if f.check(ActiveScript):
                    self.reply("NO", str(f.value), "ACTIVE")
                    return
                if f.check(ScriptError):
                    self.reply("NO", str(f.value))
                    return
                log.failure("managesieve: {name} failed", f, name=name)
                self.reply("NO", "Temporary failure, try again later", "TRYLATER")

            def done(_: Any) -> None:
                self.busy = False
                if not self.lost:
                    self.pump()

            result.addErrback(failed).addBoth(done)

    @staticmethod
    def text(value: Any) -> str:
        """A string argument as text."""
        if not isinstance(value, bytes):
            raise _Reply("Expected a string")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reply("String is not UTF-8") from None

    def cmd_CAPABILITY(self) -> None:
        """List the capabilities."""
        self.sendCapabilities()

    def cmd_NOOP(self, tag: Any = None) -> None:
        """Nothing (echoing the tag, RFC 5804 section 2.13)."""
        if tag is not None:
            self.transport.write(b"OK (TAG " + quote(self.text(tag)) + b') "Done"\r\n')
        else:
            self.reply("OK", "NOOP completed")

    def cmd_LOGOUT(self) -> None:
        """End the session."""
        self.reply("OK", "Logout completed")
        self.discarding = True
        self.transport.loseConnection()

    def cmd_STARTTLS(self) -> None:
        """Start TLS; then send the capabilities again (RFC 5804 section 2.2)."""
        if not self.canStartTLS():
            raise _Reply("TLS is not available" if not self.secure else "TLS is active")
        self.reply("OK", "Begin TLS negotiation now")
        self.buffer = b""
        self.discarding = True
        cast(interfaces.ITLSTransport, self.transport).startTLS(self.factory.tlsContext)
        self.tlsStarted = True
        self.sendCapabilities()

    def cmd_AUTHENTICATE(self, mechanism: Any, initial: Any = None) -> Any:
        """SASL PLAIN or LOGIN."""
        if self.account is not None:
            raise _Reply("Already authenticated")
        mech = self.text(mechanism).upper()
        if mech not in ("PLAIN", "LOGIN"):
            raise _Reply("Unsupported mechanism")
        if not self.passwordsAllowed():
            raise _Reply("Plaintext authentication disallowed without TLS", "ENCRYPT-NEEDED")
        self.sasl = (mech, None)
        if initial is not None:
            return self.saslStep([initial])
        self.transport.write(b'""\r\n' if mech == "PLAIN" else b'"VXNlcm5hbWU6"\r\n')
        return None

    def saslStep(self, words: list[Any]) -> Any:
        """One client response of the SASL exchange."""
        assert self.sasl is not None
        mech, username = self.sasl
        if len(words) != 1 or not isinstance(words[0], bytes):
            self.sasl = None
            self.reply("NO", "Authentication aborted")
            return None
        if words[0] == b"*":
            self.sasl = None
            self.reply("NO", "Authentication aborted")
            return None
        try:
            data = base64.b64decode(words[0].strip(), validate=True)
        except (binascii.Error, ValueError):
            self.sasl = None
            self.reply("NO", "Invalid base64 data")
            return None
        if mech == "PLAIN":
            self.sasl = None
            parts = data.split(b"\0")
            if len(parts) != 3 or not parts[1] or (parts[0] and parts[0] != parts[1]):
                self.reply("NO", "Authentication failed")
                return None
            return self.login(parts[1], parts[2])
        if username is None:
            self.sasl = (mech, data)
            self.transport.write(b'"UGFzc3dvcmQ6"\r\n')
            return None
        self.sasl = None
        return self.login(username, data)

    def login(self, user: bytes, password: bytes) -> defer.Deferred[None]:
        """Authenticate through the gate (penalties apply)."""
        host = getattr(self.transport.getPeer(), "host", "") or ""
        d = defer.maybeDeferred(self.factory.gate.login, host,
                                UsernamePassword(user, password), ISieveAccount)
        self.pendingLogin = d
        self.busy = True

        def answered(result: Any) -> Any:
            self.pendingLogin = None
            return result

        def ok(result: tuple[Any, SieveAccount, Callable[[], None]]) -> Any:
            _iface, avatar, logout = result
            logout()
            if self.lost:
                return None
            limits = self.factory.userIPLimits
            if limits is None:
                return admitted(avatar, None, True)
            key = (avatar.address, host)
            counted = limits.acquire(*key)
            if isinstance(counted, defer.Deferred):  # counted by the master process
                return counted.addCallback(lambda yes: admitted(avatar, key, yes))
            return admitted(avatar, key, counted)

        def admitted(avatar: SieveAccount, key: tuple[str, str] | None, yes: bool) -> None:
            if key is not None and yes and self.lost:
                self.factory.userIPLimits.release(*key)
                return
            if self.lost:
                return
            if not yes:
                self.reply("NO", "Too many sessions for this user from this address",
                           "TRYLATER")
                return
            self.userIPKey = key
            self.account = avatar
            self.setTimeout(IDLE_TIMEOUT)
            log.info("managesieve: login {user} from {host}", user=avatar.address, host=host)
            self.reply("OK", "Logged in")

        def failed(f: Failure) -> None:
            if self.lost:
                return
            if f.check(UnauthorizedLogin, UnhandledCredentials):
                log.info("managesieve: authentication failed from {host}", host=host)
                self.reply("NO", "Authentication failed")
                return
            log.failure("managesieve: login error", f)
            self.reply("NO", "Temporary failure, try again later", "TRYLATER")

        def done(_: Any) -> None:
            self.busy = False
            if not self.lost:
                self.pump()

        d.addBoth(answered).addCallbacks(ok, failed).addBoth(done)
        return None  # type: ignore[return-value]

    # -- scripts (authenticated) ----------------------------------------------------------

    def storage(self) -> ScriptStorage:
        """The user's script storage."""
        assert self.account is not None
        return self.account.storage

    def blocking(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run C{f} in the runner."""
        return self.factory.runner.run(f, *args)

    def name(self, value: Any) -> str:
        """A script name argument."""
        name = self.text(value)
        if not validName(name):
            raise _Reply("Invalid script name")
        return name

    def checkScript(self, data: bytes) -> None:
        """Compile C{data} (blocking: includes are read); raise a L{_Reply} naming the
        error's line."""
        storage = self.storage()
        try:
            compileScript(data, "script", storage.loader, self.limits)
        except SieveSyntaxError as e:
            raise _Reply(f"line {e.line}: {e.message}") from None

    def quotaProblem(self, name: str, size: int) -> tuple[str, str] | None:
        """(code, text) when storing C{size} bytes as C{name} breaks a limit (blocking)."""
        if size > self.limits.maxScriptSize:
            return "QUOTA/MAXSIZE", "Script too large"
        storage = self.storage()
        names = storage.names()
        maxScripts = self.config.sieve.quota_max_scripts
        if maxScripts and name not in names and len(names) >= maxScripts:
            return "QUOTA/MAXSCRIPTS", "Too many scripts"
        maxStorage = self.config.sieve.quota_max_storage
        if maxStorage:
            used = storage.size()
            if name in names:
                used -= len(storage.read(name))
            if used + size > maxStorage:
                return "QUOTA/MAXSTORAGE", "Not enough space"
        return None

    def cmd_HAVESPACE(self, name: Any, size: Any) -> defer.Deferred[None]:
        """Whether a script of this size fits."""
        script = self.name(name)
        if not isinstance(size, str) or not size.isdigit():
            raise _Reply("Expected a number")

        def answer(problem: tuple[str, str] | None) -> None:
            if problem:
                self.reply("NO", problem[1], problem[0])
            else:
                self.reply("OK", "Putscript would succeed")

        return self.blocking(self.quotaProblem, script, int(size)).addCallback(answer)

    def cmd_PUTSCRIPT(self, name: Any, data: Any) -> defer.Deferred[None]:
        """Check and store a script."""
        script = self.name(name)
        if not isinstance(data, bytes):
            raise _Reply("Expected the script as a string")

        def put() -> None:
            problem = self.quotaProblem(script, len(data))
            if problem:
                raise _Reply(problem[1], problem[0])
            self.checkScript(data)
            self.storage().write(script, data)

        return self.blocking(put).addCallback(lambda _: self.reply("OK", "Putscript completed"))

    def cmd_CHECKSCRIPT(self, data: Any) -> defer.Deferred[None]:
        """Check a script without storing it."""
        if not isinstance(data, bytes):
            raise _Reply("Expected the script as a string")
        if len(data) > self.limits.maxScriptSize:
            raise _Reply("Script too large", "QUOTA/MAXSIZE")
        return self.blocking(self.checkScript, data).addCallback(
            lambda _: self.reply("OK", "Script is valid"))

    def cmd_LISTSCRIPTS(self) -> defer.Deferred[None]:
        """The scripts, the active one marked."""
        storage = self.storage()

        def listing() -> tuple[list[str], str | None]:
            return storage.names(), storage.active()

        def answer(result: tuple[list[str], str | None]) -> None:
            names, active = result
            out = b"".join(quote(n) + (b" ACTIVE" if n == active else b"") + b"\r\n"
                           for n in names)
            self.transport.write(out + b'OK "Listscripts completed."\r\n')

        return self.blocking(listing).addCallback(answer)

    def cmd_SETACTIVE(self, name: Any) -> defer.Deferred[None]:
        """Activate a script (C{""} deactivates)."""
        text = self.text(name)
        script = self.name(name) if text else None
        return self.blocking(self.storage().activate, script).addCallback(
            lambda _: self.reply("OK", "Setactive completed"))

    def cmd_GETSCRIPT(self, name: Any) -> defer.Deferred[None]:
        """A script's text."""
        script = self.name(name)

        def answer(data: bytes) -> None:
            self.transport.write(b"{%d}\r\n" % len(data) + data + b'\r\nOK "Getscript '
                                 b'completed."\r\n')

        return self.blocking(self.storage().read, script).addCallback(answer)

    def cmd_DELETESCRIPT(self, name: Any) -> defer.Deferred[None]:
        """Remove a script that is not active."""
        script = self.name(name)
        return self.blocking(self.storage().delete, script).addCallback(
            lambda _: self.reply("OK", "Deletescript completed"))

    def cmd_RENAMESCRIPT(self, old: Any, new: Any) -> defer.Deferred[None]:
        """Rename a script."""
        src, dst = self.name(old), self.name(new)

        def rename() -> None:
            storage = self.storage()
            if src not in storage.names():
                raise NoSuchScript(f"no script {src!r}")
            if dst in storage.names():
                raise _Reply(f"script {dst!r} exists", "ALREADYEXISTS")
            storage.rename(src, dst)

        return self.blocking(rename).addCallback(
            lambda _: self.reply("OK", "Renamescript completed"))


class ManageSieveFactory(protocol.ServerFactory):
    """Builds L{ManageSieveServer}s for one listener.

    @param runner: where script storage work runs.
    @param userIPLimits: the per user and address session cap, or None.
    """

    noisy = False

    def __init__(self, config: Any, gate: Any, runner: Any, limits: Limits,
                 tlsContext: Any = None, implicitTLS: bool = False, clock: Any = None,
                 userIPLimits: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        self.gate = gate
        self.runner = runner
        self.limits = limits
        self.tlsContext = tlsContext
        self.implicitTLS = implicitTLS
        self.clock = clock
        self.userIPLimits = userIPLimits

    def buildProtocol(self, addr: Any) -> ManageSieveServer:
        """A protocol for one connection."""
        return ManageSieveServer(self)


__all__ = ["ISieveAccount", "ManageSieveFactory", "ManageSieveServer", "REFUSAL",
           "SieveAccount", "SieveAvatars", "quote"]
