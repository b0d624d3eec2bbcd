"""The IMAP commands of any state and before login: capabilities, NOOP, LOGOUT, ID,
STARTTLS, LOGIN, AUTHENTICATE, and after it ENABLE, COMPRESS and NAMESPACE.

Cleartext LOGIN and AUTHENTICATE PLAIN only where C{pymaild.auth.policy.cleartextAllowed}
says so (otherwise LOGINDISABLED); every login goes through the AuthGate penalty;
capabilities are re-evaluated after TLS.
"""

from __future__ import annotations

import binascii
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import imap4

from pymaild.imap import catenate, collation, context, metadata, notifyset, quota, urlauth
from pymaild.imap.account import MailboxElsewhere
from pymaild.imap.compress import DeflateTransport, Inflater
from pymaild.imap.framing import _DONE, IMAP4REV2
from pymaild.imap.syntax import BadCommand, NoCommand, Reader

log = Logger()

#: Capabilities offered once logged in, besides the base list (COMPRESS and the ones
#: of the account's features: QUOTA, METADATA).
LOGGED_IN_CAPABILITIES = (b"BINARY", b"UTF8=ACCEPT", b"THREAD=REFS", b"PREVIEW=FUZZY",
                          b"SNIPPET=FUZZY", collation.CAPABILITY)


class SessionMixin:
    """Capabilities, the session commands and login."""

    __slots__ = ()

    # -- capabilities --------------------------------------------------------------
    def listCapabilities(self) -> list[bytes]:
        """The capabilities for the current state of the connection."""
        caps = [b"IMAP4rev1", b"IMAP4rev2", b"SASL-IR", b"LOGIN-REFERRALS", b"LITERAL+",
                b"ID", b"ENABLE", b"IDLE",
                b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"CHILDREN", b"SPECIAL-USE",
                b"STATUS=SIZE", b"APPENDLIMIT=%d" % self.maxLiteral, b"LIST-EXTENDED",
                b"LIST-STATUS", b"ESEARCH", b"SEARCHRES", b"WITHIN", b"MULTIAPPEND",
                b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES",
                b"SAVEDATE", b"OBJECTID", b"PREVIEW", b"CREATE-SPECIAL-USE", b"CONDSTORE",
                b"QRESYNC", context.CAPABILITY, context.SORT_CAPABILITY, notifyset.CAPABILITY]
        if self.state != "unauth":
            caps.append(b"COMPRESS=DEFLATE")
            caps.extend(LOGGED_IN_CAPABILITIES)
            if getattr(self.account, "quotas", None) is not None:
                caps.extend(quota.CAPABILITIES)
            caps.extend(metadata.CAPABILITIES)
            caps.extend(catenate.CAPABILITIES)
            caps.extend(urlauth.CAPABILITIES)
        if self.state == "unauth":
            if self.ctx is not None and self.canStartTLS and not self.isTLS():
                caps.append(b"STARTTLS")
            if self.cleartextOK():
                caps.append(b"AUTH=PLAIN")
            else:
                caps.append(b"LOGINDISABLED")
        return caps

    def capabilities(self) -> dict[bytes, Any]:
        """The capabilities as the base class's dict form."""
        out: dict[bytes, Any] = {}
        for c in self.listCapabilities()[1:]:
            name, sep, value = c.partition(b"=")
            if sep:
                values = out.get(name)
                if values is None:
                    out[name] = [value]  # (also after a bare SORT before SORT=DISPLAY)
                else:
                    values.append(value)
            else:
                out[name] = None
        return out

    # -- any state -----------------------------------------------------------------
    def cmd_CAPABILITY(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """CAPABILITY."""
        r.end()
        self.sendLine(b"* CAPABILITY " + b" ".join(self.listCapabilities()))
        return b"Capability completed"

    def cmd_NOOP(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """NOOP: also rescans the selected folder (and, with NOTIFY, looks for
        folder-list changes by other processes)."""
        r.end()
        if self.mbox is not None:
            self.mbox.dirty = True
        if self._notifier is not None:
            self._notifier.poll()
        return b"NOOP completed"

    def cmd_CHECK(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """CHECK: everything is already on disk; rescans the folder."""
        r.end()
        if self.mbox is not None:
            self.mbox.dirty = True
        return b"Check completed"

    def cmd_LOGOUT(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """LOGOUT."""
        r.end()
        self.sendLine(b"* BYE Logging out")
        self.sendLine(tag + b" OK Logout completed")
        self.state = "logout"
        self.transport.loseConnection()
        return _DONE

    def cmd_ID(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """ID (RFC 2971): answer with our name, whatever the client sent.

        The client's fields are only informational, and a BAD here makes some clients
        give up on the server (issue 16), so a malformed, deeply nested or over-long
        field list is answered the same way as a good one; the whole command, literals
        included, was already read, so the session stays in sync.
        """
        r.skipRestForError()
        self.sendLine(b'* ID ("name" "pymaild" "vendor" "pymaild")')
        return b"ID completed"

    # -- not authenticated ---------------------------------------------------------
    def cmd_STARTTLS(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """STARTTLS: discard anything pipelined behind it."""
        r.end()
        if self.isTLS():
            raise BadCommand("TLS is already active")
        if self.ctx is None or not self.canStartTLS:
            raise NoCommand("TLS not available")
        self.sendLine(tag + b" OK Begin TLS negotiation now")
        self._inbuf.clear()
        self._abortAssembly()
        self.transport.startTLS(self.ctx)
        self.startedTLS = True
        self._inbuf.clear()
        return _DONE

    def _peerHost(self) -> str:
        try:
            return getattr(self.transport.getPeer(), "host", "") or ""
        except Exception:  # noqa: BLE001
            return ""

    @defer.inlineCallbacks
    def _login(self, credentials: Any) -> Any:
        # Kept so that a client leaving before the answer cancels it (the gate counts
        # an abandoned attempt as a failure).
        self._pendingLogin = self.gate.login(self._peerHost(), credentials, imap4.IAccount)
        try:
            result = yield self._pendingLogin
        finally:
            self._pendingLogin = None
        iface, avatar, logout = result
        if self.userIPLimits is not None:
            key = (avatar.address, self._peerHost())
            counted = self.userIPLimits.acquire(*key)
            if isinstance(counted, defer.Deferred):  # counted by the master process
                counted = yield counted
                if counted and self._lost:
                    self.userIPLimits.release(*key)
                    counted = False
            if not counted:
                logout()
                raise NoCommand("[LIMIT] Too many sessions for this user from this address")
            self._userIPKey = key
        self.account = avatar
        self._onLogout = logout
        try:
            yield avatar.login()
        except MailboxElsewhere as e:
            self.account = None
            self._onLogout = None
            logout()
            log.info("imap: login {user} from {host} referred to {url}",
                     user=avatar.address, host=self._peerHost(), url=e.url)
            # RFC 2221 section 4.1: the client may log in there.
            raise NoCommand(f"[REFERRAL {e.url}] This mailbox is on another server") from None
        except Exception:
            self.account = None
            self._onLogout = None
            logout()
            raise
        self.state = "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        log.info("imap: login {user} from {host}", user=avatar.address, host=self._peerHost())
        return b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in"

    def cmd_LOGIN(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """LOGIN user password (only where cleartext passwords are allowed)."""
        r.sp()
        user = r.astring()
        r.sp()
        password = r.astring()
        r.end()
        if not self.cleartextOK():
            raise NoCommand("[PRIVACYREQUIRED] Plaintext authentication disallowed on "
                            "non-secure connections")
        return self._login(UsernamePassword(user, password))

    @defer.inlineCallbacks
    def cmd_AUTHENTICATE(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """AUTHENTICATE PLAIN, with or without an initial response (SASL-IR)."""
        r.sp()
        mech = r.atom().upper()
        initial = None
        if r.maybeSp():
            initial = r.word()
        r.end()
        if mech != b"PLAIN":
            raise NoCommand("Unsupported authentication mechanism")
        if not self.cleartextOK():
            raise NoCommand("[PRIVACYREQUIRED] Plaintext authentication disallowed on "
                            "non-secure connections")
        if initial is None:
            self.sendLine(b"+ ")
            self._lineWaiter = defer.Deferred()
            self._pump()
            initial = yield self._lineWaiter
        if initial.strip() == b"*":
            raise BadCommand("Authentication cancelled")
        if initial == b"=":
            decoded = b""
        else:
            try:
                decoded = binascii.a2b_base64(initial.strip(), strict_mode=True)
            except (binascii.Error, ValueError):
                raise BadCommand("Invalid base64 data") from None
        fields = decoded.split(b"\0")
        if len(fields) != 3:
            raise BadCommand("Invalid PLAIN response")
        authz, authc, password = fields
        if authz and authz != authc:
            raise NoCommand("[AUTHORIZATIONFAILED] Proxy authentication is not supported")
        result = yield self._login(UsernamePassword(authc, password))
        return result

    # -- authenticated -------------------------------------------------------------
    def cmd_ENABLE(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """ENABLE: CONDSTORE and QRESYNC (which implies CONDSTORE), UTF8=ACCEPT
        (RFC 6855) and IMAP4rev2 (RFC 9051) can be enabled; other names are ignored."""
        r.sp()
        names = [r.atom().upper()]
        while r.maybeSp():
            names.append(r.atom().upper())
        r.end()
        enabled = []
        for name in dict.fromkeys(names):
            if name == b"CONDSTORE" and not self._mode.condstore:
                self._enableCondstore()
                enabled.append(name)
            elif name == b"QRESYNC" and not self._mode.qresync:
                self._mode.qresync = True
                self._enableCondstore()
                enabled.append(name)
        if b"UTF8=ACCEPT" in names and b"UTF8=ACCEPT" not in self._enabled:
            self._enabled = self._enabled | {b"UTF8=ACCEPT"}
            enabled.append(b"UTF8=ACCEPT")
        if IMAP4REV2 in names and IMAP4REV2 not in self._enabled:
            # RFC 9051 (Appendix E): no \Recent, no UNSEEN code, LIST in the SELECT
            # answer, ESEARCH for SEARCH, OK [CLOSED], UTF-8 mailbox names.
            self._enabled = self._enabled | {IMAP4REV2}
            enabled.append(b"IMAP4rev2")
        self.sendLine(b"* ENABLED" + b"".join(b" " + n for n in enabled))
        return b"Enabled"

    def cmd_COMPRESS(self, tag: bytes, r: Reader, uid: bool) -> Any:
        """COMPRESS DEFLATE (RFC 4978): from after this command's CRLF, both directions
        are DEFLATE streams (L{pymaild.imap.compress}); input already buffered behind
        the command is the start of the client's compressed stream."""
        r.sp()
        mechanism = r.atom().upper()
        r.end()
        if self._inflater is not None:
            raise NoCommand("[COMPRESSIONACTIVE] DEFLATE is active already")
        if mechanism != b"DEFLATE":
            raise BadCommand("unknown compression mechanism")
        self.sendLine(tag + b" OK DEFLATE active")
        rest = bytes(self._inbuf)
        self._inbuf.clear()
        decodeLines = getattr(self.transport, "decodeLines", None)
        if decodeLines is not None:
            self._lineTrack = decodeLines()  # the trickle guard watches inflated lines
        self._inflater = Inflater()
        self._inflater.feed(rest)
        self.transport = DeflateTransport(self.transport)
        return _DONE

    def cmd_NAMESPACE(self, tag: bytes, r: Reader, uid: bool) -> bytes:
        """NAMESPACE: one personal namespace, empty prefix, C{/}."""
        r.end()
        self.sendLine(b'* NAMESPACE (("" "/")) NIL NIL')
        return b"Namespace completed"
