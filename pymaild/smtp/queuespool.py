"""The outbound queue's spool: the files on disk and the durable envelope records.

On disk (``<data>/queue``)::

    msg/<id>         the message, CRLF line ends, exactly as it will be sent
    env/<id>         the JSON envelope: sender, arrival time, size, and per recipient
                     its state (pending | held | delivered | failed), attempts, next try
                     time, last reply, and whether a bounce / delay warning was sent
    tmp/             files being written
    quarantine/      orphans and unreadable envelopes found at start (logged)
    lock             flock(2) lock file serialising envelope read-modify-write between
                     the server and ``pymaild-admin``
    flush            trigger file: ``pymaild-admin queue ...`` touches it, the scheduler
                     removes it on its next tick, re-reads every envelope and runs what
                     is due

Every file is written to ``tmp/``, fsynced, renamed into place, and the directory is
fsynced. A message is queued when its envelope is in ``env/``. No pickle: envelopes are
JSON and are checked field by field. The scheduler that reads and writes them is
L{pymaild.smtp.queue}; the admin commands are L{pymaild.smtp.queueadmin}.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.logger import Logger

from pymaild.errors import AddressError, StoreFull
from pymaild.files import fsyncDir
from pymaild.smtp import dsn
from pymaild.smtp.esmtpclient import DELIVERED

log = Logger()

PENDING = "pending"
HELD = "held"
FAILED = "failed"
STATES = (PENDING, HELD, DELIVERED, FAILED)

QUEUE_ID = re.compile(r"^[0-9A-F]{16,40}$")
_BAD_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")
MAX_ADDRESS = 512
TMP_MAX_AGE = 3600.0
"""Files in C{tmp/} older than this (seconds) are removed when the queue starts."""

LocalDelivery = Callable[[str, bytes], defer.Deferred[Any]]


# ---------------------------------------------------------------------------------------
# Envelopes


@dataclass
class RecipientState:
    """Where one recipient of a queued message stands.

    @ivar state: C{pending} (will be tried), C{held} (never tried until released),
        C{delivered}, or C{failed} (a bounce is or was due).
    @ivar notified: for a failed recipient, the bounce has been queued (or none is due
        because the sender is C{<>}).
    @ivar delayWarned: a delay warning has been queued for this recipient.
    """

    address: str
    state: str = PENDING
    status: str = ""
    reply: str = ""
    diagnosticType: str = ""
    remoteMta: str = ""
    attempts: int = 0
    nextTry: float = 0.0
    lastAttempt: float = 0.0
    delayWarned: bool = False
    notified: bool = False


@dataclass
class Envelope:
    """A queued message's envelope and per-recipient delivery state."""

    id: str
    sender: str
    arrival: float
    recipients: list[RecipientState]
    size: int = 0
    eightBit: bool = False
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def toJSON(self) -> bytes:
        """The envelope as UTF-8 JSON."""
        d = asdict(self)
        d.pop("extra")
        d.update(self.extra)
        return json.dumps(d, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")

    @classmethod
    def fromJSON(cls, data: bytes) -> Envelope:
        """Parse and check an envelope.

        @raise ValueError: not JSON, or a field is missing or has the wrong type.
        """
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("envelope is not a JSON object")
        qid = _typed(raw, "id", str)
        if not QUEUE_ID.match(qid):
            raise ValueError(f"bad queue id {qid!r}")
        rcpts = raw.get("recipients")
        if not isinstance(rcpts, list) or not rcpts:
            raise ValueError("envelope has no recipients")
        recipients = []
        for r in rcpts:
            if not isinstance(r, dict):
                raise ValueError("recipient entry is not an object")
            state = _typed(r, "state", str)
            if state not in STATES:
                raise ValueError(f"unknown recipient state {state!r}")
            recipients.append(
                RecipientState(
                    address=_typed(r, "address", str),
                    state=state,
                    status=_typed(r, "status", str),
                    reply=_typed(r, "reply", str),
                    diagnosticType=_typed(r, "diagnosticType", str),
                    remoteMta=_typed(r, "remoteMta", str),
                    attempts=_typed(r, "attempts", int),
                    nextTry=float(_typed(r, "nextTry", (int, float))),
                    lastAttempt=float(_typed(r, "lastAttempt", (int, float))),
                    delayWarned=_typed(r, "delayWarned", bool),
                    notified=_typed(r, "notified", bool),
                )
            )
        known = {"id", "sender", "arrival", "recipients", "size", "eightBit", "version"}
        return cls(
            id=qid,
            sender=_typed(raw, "sender", str),
            arrival=float(_typed(raw, "arrival", (int, float))),
            recipients=recipients,
            size=_typed(raw, "size", int),
            eightBit=_typed(raw, "eightBit", bool),
            version=_typed(raw, "version", int),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def recipient(self, address: str) -> RecipientState | None:
        """The state of C{address}, if it is a recipient."""
        for r in self.recipients:
            if r.address == address:
                return r
        return None

    def due(self, now: float) -> list[RecipientState]:
        """Pending recipients whose next try time has come."""
        return [r for r in self.recipients if r.state == PENDING and r.nextTry <= now]

    def finished(self) -> bool:
        """Nothing is left to do: every recipient delivered, or failed and notified."""
        return all(
            r.state == DELIVERED or (r.state == FAILED and r.notified) for r in self.recipients
        )


def _typed(raw: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """C{raw[key]}, checked to be of C{kind} (bool is not accepted as an int)."""
    if key not in raw:
        raise ValueError(f"envelope field {key!r} missing")
    value = raw[key]
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"envelope field {key!r} has the wrong type")
    if not isinstance(value, kind):
        raise ValueError(f"envelope field {key!r} has the wrong type")
    return value


def checkAddress(address: str, nullAllowed: bool = False) -> str:
    """Check an envelope address before it is queued (C{""} is the null sender).

    @raise AddressError: control characters, spaces outside quotes, angle brackets, no
        C{@}, or too long; these could break the SMTP command line.
    """
    if not isinstance(address, str):
        raise AddressError("address must be text")
    if address in ("", "<>"):
        if nullAllowed:
            return ""
        raise AddressError("empty recipient address")
    if len(address.encode("utf-8")) > MAX_ADDRESS or "@" not in address:
        raise AddressError(f"unusable address {address!r}")
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise AddressError(f"unusable address {address!r}")
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', "", local) + "@" + domain
    if _BAD_ADDRESS.search(outside) or re.search(r"[\x00-\x1f\x7f]", address):
        raise AddressError(f"unusable address {address!r}")
    return address


def newQueueId(now: float) -> str:
    """A fresh queue id: milliseconds since the epoch, then randomness, in hex (22
    upper-case hex digits). Every message's one id: the SMTP server's transactions take
    theirs from here too."""
    return f"{int(max(now, 0) * 1000):012X}{secrets.token_hex(5).upper()}"


# ---------------------------------------------------------------------------------------
# The spool directory (blocking; the server calls it through a Runner)


def _matchOwner(path: str, reference: str) -> None:
    """When running as root (C{pymaild-admin} by hand), give C{path} the owner of
    C{reference} (the queue directory), so the server can still read and replace it."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        st = os.stat(reference)
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def _storeFull(e: OSError) -> Exception:
    """ENOSPC/EDQUOT become L{StoreFull} (temporary); other errors pass unchanged."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"queue disk full: {e.strerror}")
    return e


class Spool:
    """The queue directory. Synchronous and thread-safe: the server uses it through a
    Runner; C{pymaild-admin queue} uses it directly, while the server runs.

    Envelope changes happen under an C{flock} on C{lock}, so the server and the admin
    command never overwrite each other's changes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.msgDir = os.path.join(path, "msg")
        self.envDir = os.path.join(path, "env")
        self.tmpDir = os.path.join(path, "tmp")
        self.quarantineDir = os.path.join(path, "quarantine")
        self.lockPath = os.path.join(path, "lock")
        self.flushPath = os.path.join(path, "flush")

    def ensure(self) -> None:
        """Create the directories if missing."""
        for d in (self.msgDir, self.envDir, self.tmpDir, self.quarantineDir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the queue lock (a new open file description each time, so threads of
        one process exclude each other as well as other processes)."""
        fd = os.open(self.lockPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        _matchOwner(self.lockPath, self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def messagePath(self, qid: str) -> str:
        """Where the message of C{qid} lives."""
        return os.path.join(self.msgDir, qid)

    def _writeFile(self, path: str, write: Callable[[BinaryIO], Any]) -> Any:
        """Create C{path} exclusively, fill it with C{write(f)}, fsync and close it."""
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        _matchOwner(path, self.path)
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        return result

    def store(self, env: Envelope, data: bytes | BinaryIO) -> Envelope:
        """Write a new message and its envelope durably; returns the envelope with the
        message's size and 8-bit flag filled in.

        @raise StoreFull: the disk is full (nothing is left behind).
        """
        self.ensure()
        tmpMsg = os.path.join(self.tmpDir, env.id + ".msg")
        tmpEnv = os.path.join(self.tmpDir, env.id + ".env")
        msgPath = self.messagePath(env.id)
        renamed = False
        try:
            size, eightBit = self._writeFile(tmpMsg, lambda f: _copy(data, f))
            env.size = size
            env.eightBit = eightBit
            self._writeFile(tmpEnv, lambda f: f.write(env.toJSON()))
            with self.locked():
                if os.path.lexists(msgPath) or os.path.lexists(
                        os.path.join(self.envDir, env.id)):
                    raise FileExistsError(errno.EEXIST, "queue id already in use", env.id)
                os.rename(tmpMsg, msgPath)
                renamed = True
                os.rename(tmpEnv, os.path.join(self.envDir, env.id))
            fsyncDir(self.msgDir)
            fsyncDir(self.envDir)
        except OSError as e:
            for p in (tmpMsg, tmpEnv) + ((msgPath,) if renamed else ()):
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise _storeFull(e) from e
        return env

    def read(self, qid: str) -> Envelope | None:
        """The envelope of C{qid}, or None when it is gone."""
        try:
            with open(os.path.join(self.envDir, qid), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return Envelope.fromJSON(data)

    def envelopes(self) -> tuple[list[Envelope], list[tuple[str, str]]]:
        """Every queued envelope, read under the lock, in id order, and the
        C{(id, problem)} of each one that could not be read (blocking). A missing queue
        directory is an empty queue."""
        if not os.path.isdir(self.envDir):
            return [], []
        found: list[Envelope] = []
        problems: list[tuple[str, str]] = []
        with self.locked():
            for name in sorted(n for n in os.listdir(self.envDir) if QUEUE_ID.match(n)):
                try:
                    env = self.read(name)
                except (ValueError, UnicodeError) as e:
                    problems.append((name, str(e)))
                    continue
                if env is not None:
                    found.append(env)
        return found, problems

    def write(self, env: Envelope) -> None:
        """Replace an envelope durably (call with the lock held)."""
        tmp = os.path.join(self.tmpDir, f"{env.id}.env.{secrets.token_hex(4)}")
        try:
            self._writeFile(tmp, lambda f: f.write(env.toJSON()))
            os.rename(tmp, os.path.join(self.envDir, env.id))
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _storeFull(e) from e
        fsyncDir(self.envDir)

    def update(self, qid: str, change: Callable[[Envelope], Any]) -> Envelope | None:
        """Under the lock: read C{qid}'s envelope, apply C{change} to it, write it back.

        Returns the new envelope, or None when the message is no longer queued.
        """
        with self.locked():
            env = self.read(qid)
            if env is None:
                return None
            change(env)
            self.write(env)
            return env

    def remove(self, qid: str) -> bool:
        """Remove a message: envelope first, then the message file. False if absent."""
        with self.locked():
            found = False
            for directory in (self.envDir, self.msgDir):
                try:
                    os.unlink(os.path.join(directory, qid))
                    found = True
                except FileNotFoundError:
                    continue
                fsyncDir(directory)
            return found

    def _quarantine(self, path: str, suffix: str) -> str:
        """Move C{path} into C{quarantine/}; returns the new path."""
        base = os.path.join(self.quarantineDir, os.path.basename(path) + suffix)
        target, n = base, 0
        while os.path.exists(target):
            n += 1
            target = f"{base}.{n}"
        os.rename(path, target)
        return target

    def loadAll(self, startup: bool = False) -> tuple[list[Envelope], list[str]]:
        """Read every envelope; returns them and a list of problems to log.

        Under the lock, so no enqueue is half-way (its two renames happen under the
        lock). An envelope without its message, a message without its envelope, an
        unreadable envelope and stray names are moved to C{quarantine/}. At start-up,
        files in C{tmp/} older than an hour are removed.
        """
        self.ensure()
        problems: list[str] = []
        envelopes: list[Envelope] = []
        with self.locked():
            envNames = set(os.listdir(self.envDir))
            msgNames = set(os.listdir(self.msgDir))
            for name in sorted(envNames | msgNames):
                envPath = os.path.join(self.envDir, name)
                msgPath = os.path.join(self.msgDir, name)
                if not QUEUE_ID.match(name):
                    for p in (envPath, msgPath):
                        if os.path.lexists(p):
                            problems.append(f"stray file {p} moved to"
                                            f" {self._quarantine(p, '.stray')}")
                    continue
                if name not in msgNames:
                    where = self._quarantine(envPath, ".env")
                    problems.append(f"queue {name}: envelope without message moved to {where}")
                    continue
                if name not in envNames:
                    where = self._quarantine(msgPath, ".msg")
                    problems.append(f"queue {name}: message without envelope moved to {where}")
                    continue
                try:
                    env = self.read(name)
                    if env is None or env.id != name:
                        raise ValueError("envelope id does not match its file name")
                except (ValueError, UnicodeError, OSError) as e:
                    a = self._quarantine(envPath, ".env")
                    b = self._quarantine(msgPath, ".msg")
                    problems.append(f"queue {name}: unreadable envelope ({e}); moved to {a}, {b}")
                    continue
                envelopes.append(env)
            if problems:
                fsyncDir(self.envDir)
                fsyncDir(self.msgDir)
        if startup:
            cutoff = time.time() - TMP_MAX_AGE
            for name in os.listdir(self.tmpDir):
                p = os.path.join(self.tmpDir, name)
                with contextlib.suppress(OSError):
                    if os.lstat(p).st_mtime < cutoff:
                        os.unlink(p)
                        problems.append(f"removed stale temporary file {p}")
        return envelopes, problems

    def readMessage(self, qid: str) -> bytes:
        """The whole message of C{qid}."""
        with open(self.messagePath(qid), "rb") as f:
            return f.read()

    def readHeaders(self, qid: str) -> bytes:
        """The header block of C{qid}'s message (for a DSN); empty when it is gone."""
        try:
            with open(self.messagePath(qid), "rb") as f:
                return dsn.originalHeaders(f.read(dsn.HEADER_LIMIT + 4))
        except FileNotFoundError:
            return b""

    def ids(self) -> list[str]:
        """The ids of every envelope in the spool now, in id order (blocking)."""
        try:
            names = os.listdir(self.envDir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if QUEUE_ID.match(n))

    def requestFlush(self) -> None:
        """Touch the trigger file the scheduler looks for on each tick."""
        fd = os.open(self.flushPath, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        _matchOwner(self.flushPath, self.path)

    def takeFlush(self) -> bool:
        """Remove the trigger file; True when it was there."""
        try:
            os.unlink(self.flushPath)
        except FileNotFoundError:
            return False
        return True


def _copy(data: bytes | BinaryIO, f: BinaryIO) -> tuple[int, bool]:
    """Copy the message into C{f}; returns its size and whether it has 8-bit bytes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        chunk = bytes(data)
        f.write(chunk)
        return len(chunk), not chunk.isascii()
    if hasattr(data, "seekable") and data.seekable():
        data.seek(0)
    size, eightBit = 0, False
    while True:
        chunk = data.read(65536)
        if not chunk:
            return size, eightBit
        f.write(chunk)
        size += len(chunk)
        eightBit = eightBit or not chunk.isascii()


# ---------------------------------------------------------------------------------------
# The queue and its scheduler
