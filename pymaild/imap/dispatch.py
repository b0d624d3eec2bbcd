"""Running one IMAP command: the command table, state checks, the tagged answer.

Commands run one at a time (pipelined input waits for the tagged response, even when a
handler returns a Deferred, Twisted bug #9282); errors become the protocol's NO/BAD
answers, never a traceback; unsolicited updates go out before the tagged line only where
RFC 3501 section 7.4.1 allows (L{NO_EXPUNGE_DURING}).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from pymaild.auth.quota import QuotaExceeded
from pymaild.errors import (
    DatabaseUnavailable,
    FolderExists,
    InvalidFolderName,
    MessageVanished,
    NoSuchFolder,
    StoreError,
    StoreFull,
)
from pymaild.imap.framing import _DONE, _IDLING, _TAG_RE, IMAP4REV2, REV2_REMOVED, _oneLine
from pymaild.imap.syntax import BadCommand, Literal, NoCommand, Reader

log = Logger()

NO_EXPUNGE_DURING = {b"FETCH", b"STORE", b"SEARCH", b"SORT", b"THREAD"}
_NO_CONTEXT_REFRESH = {b"SEARCH", b"SORT", b"THREAD", b"CANCELUPDATE", b"CAPABILITY",
                       b"LIST", b"LSUB", b"NAMESPACE", b"ID", b"GETQUOTAROOT", b"GETQUOTA",
                       b"GETMETADATA"}
"""Commands after which the updating searches are not run again: they change no
message (the mailbox's changes reach the searches after the next other command)."""


class DispatchMixin:
    """The command table and the run of one command to its tagged answer."""

    __slots__ = ()

    # -- dispatch ------------------------------------------------------------------
    COMMANDS: dict[bytes, tuple[str, tuple[str, ...]]] = {
        b"CAPABILITY": ("cmd_CAPABILITY", ("unauth", "auth", "select")),
        b"NOOP": ("cmd_NOOP", ("unauth", "auth", "select")),
        b"LOGOUT": ("cmd_LOGOUT", ("unauth", "auth", "select")),
        b"ID": ("cmd_ID", ("unauth", "auth", "select")),
        b"STARTTLS": ("cmd_STARTTLS", ("unauth",)),
        b"LOGIN": ("cmd_LOGIN", ("unauth",)),
        b"AUTHENTICATE": ("cmd_AUTHENTICATE", ("unauth",)),
        b"ENABLE": ("cmd_ENABLE", ("auth",)),
        b"NAMESPACE": ("cmd_NAMESPACE", ("auth", "select")),
        b"SELECT": ("cmd_SELECT", ("auth", "select")),
        b"EXAMINE": ("cmd_EXAMINE", ("auth", "select")),
        b"CREATE": ("cmd_CREATE", ("auth", "select")),
        b"DELETE": ("cmd_DELETE", ("auth", "select")),
        b"RENAME": ("cmd_RENAME", ("auth", "select")),
        b"SUBSCRIBE": ("cmd_SUBSCRIBE", ("auth", "select")),
        b"UNSUBSCRIBE": ("cmd_UNSUBSCRIBE", ("auth", "select")),
        b"LIST": ("cmd_LIST", ("auth", "select")),
        b"LSUB": ("cmd_LSUB", ("auth", "select")),
        b"STATUS": ("cmd_STATUS", ("auth", "select")),
        b"APPEND": ("cmd_APPEND", ("auth", "select")),
        b"IDLE": ("cmd_IDLE", ("auth", "select")),
        b"COMPRESS": ("cmd_COMPRESS", ("auth", "select")),
        b"GETQUOTAROOT": ("cmd_GETQUOTAROOT", ("auth", "select")),
        b"GETQUOTA": ("cmd_GETQUOTA", ("auth", "select")),
        b"SETQUOTA": ("cmd_SETQUOTA", ("auth", "select")),
        b"GETMETADATA": ("cmd_GETMETADATA", ("auth", "select")),
        b"SETMETADATA": ("cmd_SETMETADATA", ("auth", "select")),
        b"CHECK": ("cmd_CHECK", ("select",)),
        b"CLOSE": ("cmd_CLOSE", ("select",)),
        b"UNSELECT": ("cmd_UNSELECT", ("select",)),
        b"EXPUNGE": ("cmd_EXPUNGE", ("select",)),
        b"SEARCH": ("cmd_SEARCH", ("select",)),
        b"SORT": ("cmd_SORT", ("select",)),
        b"THREAD": ("cmd_THREAD", ("select",)),
        b"FETCH": ("cmd_FETCH", ("select",)),
        b"STORE": ("cmd_STORE", ("select",)),
        b"COPY": ("cmd_COPY", ("select",)),
        b"MOVE": ("cmd_MOVE", ("select",)),
        b"CANCELUPDATE": ("cmd_CANCELUPDATE", ("select",)),
        b"NOTIFY": ("cmd_NOTIFY", ("auth", "select")),
        b"GENURLAUTH": ("cmd_GENURLAUTH", ("auth", "select")),
        b"URLFETCH": ("cmd_URLFETCH", ("auth", "select")),
        b"RESETKEY": ("cmd_RESETKEY", ("auth", "select")),
    }
    UID_COMMANDS = {b"FETCH", b"STORE", b"SEARCH", b"COPY", b"MOVE", b"EXPUNGE", b"SORT",
                    b"THREAD"}

    def _dispatch(self, parts: list[Any]) -> None:
        literals = [p for p in parts if isinstance(p, Literal)]
        self._cmdBytes = 0
        r = Reader(parts)
        first = parts[0] if isinstance(parts[0], bytes) else b""
        m = _TAG_RE.match(first)
        if not m or first[m.end() : m.end() + 1] != b" ":
            self._releaseLiterals(literals)
            self.sendLine(b"* BAD Missing or invalid tag")
            return
        tag = m.group()
        r.pos = m.end()
        try:
            r.sp()
            name = r.atom().upper()
        except BadCommand:
            self._releaseLiterals(literals)
            self.sendLine(tag + b" BAD Missing command")
            return
        uid = False
        if name == b"UID":
            try:
                r.sp()
                name = r.atom().upper()
            except BadCommand:
                name = b""
            if name not in self.UID_COMMANDS:
                self._releaseLiterals(literals)
                self.sendLine(tag + b" BAD Unknown UID command")
                return
            uid = True
        entry = self.COMMANDS.get(name)
        if entry is None or (name in REV2_REMOVED and IMAP4REV2 in self._enabled):
            self._releaseLiterals(literals)
            self.sendLine(tag + b" BAD Unknown command")
            return
        method, states = entry
        if self.state not in states:
            self._releaseLiterals(literals)
            if self.state == "unauth":
                self.sendLine(tag + b" BAD Log in first")
            else:
                self.sendLine(tag + b" BAD Command not valid in this state")
            return
        r.uidMode = uid
        r.utf8Accept = b"UTF8=ACCEPT" in self._enabled
        r.utf8 = r.utf8Accept or IMAP4REV2 in self._enabled  # RFC 9051 5.1: UTF-8 names
        if self.state == "select":
            r.saved = self._savedResult
        self._busy = True
        self._cmdName = name
        self._cmdUid = uid
        self._cmdStarted = time.monotonic()
        d = defer.maybeDeferred(getattr(self, method), tag, r, uid)
        d.addCallbacks(self._commandSucceeded, self._commandFailed,
                       callbackArgs=(tag, name, uid), errbackArgs=(tag, name, uid))
        d.addBoth(lambda result: (self._releaseLiterals(literals), result)[1])
        d.addErrback(self._finishFailed)

    def _releaseLiterals(self, literals: list[Literal]) -> None:
        for lit in literals:
            if lit in self._pendingLiterals:
                self._pendingLiterals.remove(lit)  # type: ignore[union-attr]
            if lit.file is not None or lit.path is not None:
                runner = self._runner()
                if runner is not None:
                    runner.run(lit.discard).addErrback(lambda f: None)
                else:
                    lit.discard()

    def _commandSucceeded(self, result: Any, tag: bytes, name: bytes, uid: bool) -> Any:
        if result is _DONE:
            self._commandDone()
            return None
        if result is _IDLING:
            return None  # still running: L{_idleEnded} finishes it
        if isinstance(result, tuple):
            status, text = result
        else:
            status, text = b"OK", result or (name + b" completed")
        return self._finish(tag, name, uid, status, text)

    def _commandFailed(self, failure: Failure, tag: bytes, name: bytes, uid: bool) -> Any:
        if self._lost:
            self._commandDone()
            return None
        status, text = self._errorResponse(failure, name)
        return self._finish(tag, name, uid, status, text)

    def _errorResponse(self, failure: Failure, name: bytes) -> tuple[bytes, bytes]:
        e = failure.value
        if isinstance(e, BadCommand):
            return b"BAD", b"Error in IMAP command " + name + b": " + str(e).encode()
        if isinstance(e, NoCommand):
            return b"NO", str(e).encode("utf-8")
        if isinstance(e, (UnauthorizedLogin, UnhandledCredentials)):
            return b"NO", b"[AUTHENTICATIONFAILED] Authentication failed"
        if isinstance(e, NoSuchFolder):
            return b"NO", b"[NONEXISTENT] Mailbox does not exist"
        if isinstance(e, FolderExists):
            return b"NO", b"[ALREADYEXISTS] Mailbox already exists"
        if isinstance(e, InvalidFolderName):
            return b"NO", b"[CANNOT] Invalid mailbox name: " + _oneLine(str(e))
        if isinstance(e, QuotaExceeded):
            return b"NO", b"[OVERQUOTA] Quota exceeded (mailbox for user is full)"
        if isinstance(e, StoreFull):
            return b"NO", b"[OVERQUOTA] Not enough disk space"
        if isinstance(e, MessageVanished):
            return b"NO", b"[EXPUNGEISSUED] Some messages were expunged"
        if isinstance(e, StoreError) and isinstance(e.__cause__, OSError):
            # A system error (EACCES, EROFS, EIO...): its text names server paths, so it
            # goes to the log only; the client may retry later.
            log.error("IMAP command {name} failed: {error}",
                      name=name.decode("ascii", "replace"), error=e)
            return b"NO", b"[UNAVAILABLE] Temporary server failure, try again later"
        if isinstance(e, StoreError):
            return b"NO", b"[CANNOT] " + _oneLine(str(e))
        if isinstance(e, DatabaseUnavailable):
            log.error("IMAP command {name} failed: {error}",
                      name=name.decode("ascii", "replace"), error=e)
            return b"NO", b"[UNAVAILABLE] Temporary server failure, try again later"
        what = f"IMAP command {name.decode('ascii', 'replace')}"
        failures = getattr(self.factory, "failures", None)
        if failures is not None:
            failures.report(failure, what)
        else:
            log.failure("{what} failed", failure, what=what)
        return b"NO", b"[SERVERBUG] Internal error occurred. Refer to server log."

    def _finish(self, tag: bytes, name: bytes, uid: bool, status: bytes, text: bytes) -> Any:
        view = self.mbox
        if self._lost:
            self._commandDone()
            return None
        if view is not None and self.state == "select" and status != b"BAD":
            allow = uid or name not in NO_EXPUNGE_DURING
            last = view.uids[-1] if view.uids else 0
            d = self._reportUpdates(allow)
            if self._notifier is not None:
                d.addCallback(lambda _: self._newMessageFetch(view, last)
                              if self._wantsNewFetch(view, last) else None)
            if name not in _NO_CONTEXT_REFRESH:
                d.addCallback(lambda _: self._refreshContexts())
        else:
            d = defer.succeed(None)

        def send(_: Any) -> None:
            if not self._lost:
                notifier = self._notifier
                if notifier is not None and notifier.lines:
                    held, notifier.lines = notifier.lines, []
                    self.transport.write(b"".join(held))
                self.sendLine(tag + b" " + status + b" " + text)
            metrics = getattr(self.factory, "metrics", None)
            if metrics is not None:
                command = ("UID " if uid else "") + name.decode("ascii", "replace")
                metrics.imapCommand(command, time.monotonic() - self._cmdStarted)
            self._commandDone()

        def failed(f: Failure) -> None:
            log.failure("reporting mailbox updates failed", f)
            send(None)

        return d.addCallbacks(send, failed)

    def _finishFailed(self, failure: Failure) -> None:
        log.failure("IMAP command completion failed", failure)
        self._commandDone()

    def _commandDone(self) -> None:
        self._busy = False
        if self._readPaused and not self._lost:
            self._readPaused = False
            self.transport.resumeProducing()
        self.resetTimeout()
        if not self._pumping:
            self._pump()
