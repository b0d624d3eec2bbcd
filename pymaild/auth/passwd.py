"""The user database: a Dovecot passwd-file, read and written safely.

Each user is one line, in the format Dovecot's ``passwd-file`` driver reads::

    user@domain:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields

Only the first two fields matter to pymaild; the others are optional and are kept
unchanged when the file is rewritten, as are comment lines (``#``), blank lines and
lines pymaild cannot use (a user name without a domain, for example). A password field
without a ``{SCHEME}`` prefix is read as ``CRYPT``, Dovecot's default scheme for
passwd-files.

Schemes:

- New hashes are always ``{ARGON2ID}`` (passlib's argon2 with type ID, in the same
  PHC string Dovecot writes: ``{ARGON2ID}$argon2id$v=19$m=...,t=...,p=...$salt$hash``).
- Verified: ``ARGON2ID``, ``ARGON2I``, ``BLF-CRYPT`` (``$2y$``, ``$2b$``, ``$2a$``),
  ``SHA512-CRYPT``, ``SHA256-CRYPT``, ``MD5-CRYPT`` (and its old alias ``MD5``), and
  ``CRYPT``. As with Dovecot, whose ``CRYPT`` is libc ``crypt(3)``, a ``CRYPT`` field
  may hold any of the crypt formats above or a traditional 13-character DES crypt.
  Dovecot's ``.B64`` and ``.HEX`` encoding suffixes (``{SHA512-CRYPT.B64}...``) are
  decoded first.
- Anything else (``PLAIN``, ``SSHA512``, ``CRAM-MD5``...) never verifies and is
  reported in the log; such users must be given a new password.
- An empty password field never verifies.

Passwords longer than bcrypt's 72-byte limit fail against a ``BLF-CRYPT`` hash (passlib
refuses them rather than truncating). A successful login against any scheme other than
``ARGON2ID`` rewrites that user's line with a fresh ``{ARGON2ID}`` hash.

The file is re-read whenever its inode, size or modification time (in nanoseconds)
changes, so edits made by ``pymaild-admin`` or by hand take effect at the next lookup.
Every write takes the ``<passwd>.lock`` dot-lock (``O_EXCL``, stale after 120 s),
re-reads the file under it, writes a temporary file (mode 0600) in the same directory,
fsyncs it, renames it over the file and fsyncs the directory.

Every method that reads or writes the file, and above all L{PasswdFile.verify}, blocks:
the server calls them through a L{pymaild.threads.Runner}.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from passlib.context import CryptContext
from twisted.logger import Logger

from pymaild.address import canonical
from pymaild.auth.users import NodeRecord
from pymaild.errors import AddressError, LockTimeout, NoSuchUser, PymaildError
from pymaild.files import DotLock, writeFileAtomic

log = Logger()

#: The scheme of every hash pymaild creates.
NEW_SCHEME = "ARGON2ID"

#: The scheme Dovecot assumes for a passwd-file password without a C{{SCHEME}} prefix.
DEFAULT_SCHEME = "CRYPT"

_CRYPT_FAMILY = ("des_crypt", "md5_crypt", "sha256_crypt", "sha512_crypt", "bcrypt")

#: Dovecot scheme name -> the passlib handlers allowed to verify a hash of that scheme.
SCHEMES: dict[str, tuple[str, ...]] = {
    "ARGON2ID": ("argon2",),
    "ARGON2I": ("argon2",),
    "BLF-CRYPT": ("bcrypt",),
    "SHA512-CRYPT": ("sha512_crypt",),
    "SHA256-CRYPT": ("sha256_crypt",),
    "MD5-CRYPT": ("md5_crypt",),
    "MD5": ("md5_crypt",),
    "CRYPT": _CRYPT_FAMILY,
}

# The argon2 variants must also match their scheme name exactly.
_REQUIRED_PREFIX = {"ARGON2ID": "$argon2id$", "ARGON2I": "$argon2i$"}


#: The argon2id cost of new hashes: OWASP's recommended configuration (19 MiB, two
#: passes, one lane). passlib's own default (64 MiB, three passes, four lanes) costs
#: about five times as much CPU per login, which capped logins at about one a second on
#: a two-core machine under load (bench/login_cost.py measures both).
ARGON2_COST = {"memory_cost": 19456, "rounds": 2, "parallelism": 1}


def _makeContext(**argon2Settings: Any) -> CryptContext:
    """A passlib context that hashes with argon2id and verifies every supported scheme."""
    settings = argon2Settings or ARGON2_COST
    options = {f"argon2__{name}": value for name, value in settings.items()}
    return CryptContext(
        schemes=["argon2", "bcrypt", "sha512_crypt", "sha256_crypt", "md5_crypt", "des_crypt"],
        default="argon2",
        argon2__type="ID",
        **options,
    )


_context = _makeContext()


def configureHashing(**argon2Settings: Any) -> None:
    """Set the argon2 parameters for new hashes and for L{dummyVerify}.

    Keyword arguments are passlib argon2 settings (C{memory_cost} in KiB, C{rounds},
    C{parallelism}); with none, L{ARGON2_COST} is restored. Existing hashes carry their
    own parameters and verify either way. The test suite lowers the cost through this
    hook so that it stays fast.
    """
    global _context
    _context = _makeContext(**argon2Settings)


def hashPassword(password: str | bytes) -> str:
    """Hash C{password} for a passwd-file: C{{ARGON2ID}$argon2id$v=19$...}.

    @raise ValueError: the password is empty or unacceptable to passlib (too long).
    """
    if not password:
        raise ValueError("empty password")
    return "{" + NEW_SCHEME + "}" + _context.hash(password)


def dummyVerify() -> bool:
    """Spend the time of a real verification and return C{False}.

    Used for unknown users and unusable hashes, so that they cost as much time as a
    wrong password against a current hash.
    """
    return bool(_context.dummy_verify())


def splitScheme(field: str) -> tuple[str, str]:
    """Split a password field into its upper-cased scheme and the hash text.

    A field without a C{{SCHEME}} prefix has the scheme L{DEFAULT_SCHEME}.
    """
    if field.startswith("{"):
        end = field.find("}")
        if end > 1:
            return field[1:end].upper(), field[end + 1 :]
    return DEFAULT_SCHEME, field


def _decodeHash(encoding: str, text: str) -> str:
    """Undo Dovecot's C{.B64} / C{.HEX} encoding suffix of a hash.

    @raise ValueError: the suffix is unknown or the text does not decode.
    """
    try:
        if encoding == "B64":
            raw = base64.b64decode(text, validate=True)
        elif encoding == "HEX":
            raw = bytes.fromhex(text)
        else:
            raise ValueError(f"unknown encoding .{encoding}")
        return raw.decode("ascii")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ValueError(f"bad .{encoding} hash") from e


def needsRehash(field: str) -> bool:
    """Whether a verified password field should be replaced by a new ARGON2ID hash: it
    has another scheme, or argon2 parameters other than the current ones (so every
    login costs what L{dummyVerify} costs, and a wrong user name cannot be told from a
    wrong password by the time the answer takes)."""
    scheme, text = splitScheme(field)
    if scheme != NEW_SCHEME:
        return True
    try:
        return bool(_context.needs_update(text))
    except ValueError:
        return False


def verifyEntry(entry: Any, password: str | bytes,
                upgrade: Callable[[Any, str | bytes], None]) -> bool:
    """The login check of a user directory: whether C{password} is C{entry}'s (an
    object with a C{password} field, or None for an unknown user, which costs one dummy
    verification); on success C{upgrade(entry, password)} is called when the field is
    due for a new hash (L{needsRehash})."""
    if entry is None:
        return dummyVerify()
    if not verifyHash(entry.password, password):
        return False
    if needsRehash(entry.password):
        upgrade(entry, password)
    return True


def verifyHash(field: str, password: str | bytes) -> bool:
    """Check C{password} against one passwd-file password field.

    Never raises for bad input: an unsupported scheme, a malformed hash or a password
    passlib refuses (bcrypt over 72 bytes, NUL in a crypt password) give C{False}.
    Unusable fields still spend the time of a verification.
    """
    scheme, text = splitScheme(field)
    base, _, encoding = scheme.partition(".")
    handlers = SCHEMES.get(base)
    if handlers is None:
        log.warn("password scheme {scheme} is not supported", scheme=scheme)
        return dummyVerify()
    try:
        if encoding:
            text = _decodeHash(encoding, text)
    except ValueError as e:
        log.warn("unusable {scheme} password hash: {why}", scheme=scheme, why=str(e))
        return dummyVerify()
    handler = _context.identify(text, required=False) if text else None
    if handler not in handlers or not text.startswith(_REQUIRED_PREFIX.get(base, "")):
        if text:
            log.warn("password hash does not match its scheme {scheme}", scheme=scheme)
        return dummyVerify()
    try:
        return bool(_context.handler(handler).verify(password, text))
    except (ValueError, TypeError):
        # passlib refuses the password for this scheme (e.g. bcrypt > 72 bytes) or
        # the hash is malformed beyond identification.
        return False


class UserExists(PymaildError):
    """The passwd file already has a user with that address."""


class PasswdLocked(PymaildError):
    """The passwd file's dot-lock could not be taken in time."""


@dataclass(frozen=True)
class PasswdEntry:
    """One user's line of the passwd file.

    @ivar address: the canonical address (the key of lookups).
    @ivar user: the user field as written in the file.
    @ivar password: the password field, C{{SCHEME}hash}.
    @ivar extra: everything after the seventh field, unparsed.
    """

    address: str
    user: str
    password: str
    uid: str = ""
    gid: str = ""
    gecos: str = ""
    home: str = ""
    shell: str = ""
    extra: str = ""
    lineno: int = 0

    @property
    def scheme(self) -> str:
        """The password scheme, upper-cased (C{CRYPT} when the field has no prefix)."""
        return splitScheme(self.password)[0]


def parseLine(line: str, lineno: int = 0) -> PasswdEntry | None:
    """Parse one line; C{None} for comments, blank lines and unusable user names."""
    text = line.rstrip("\r\n")
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    fields = text.split(":", 7)
    try:
        address = canonical(fields[0])
    except AddressError:
        return None
    fields += [""] * (8 - len(fields))
    password, uid, gid, gecos, home, shell, extra = fields[1:8]
    return PasswdEntry(address, fields[0], password, uid, gid, gecos, home, shell, extra,
                       lineno=lineno)


def _replacePassword(line: str, field: str) -> str:
    """Return C{line} with its password field replaced and every other field kept."""
    user, _, rest = line.rstrip("\r\n").partition(":")
    _old, sep, tail = rest.partition(":")
    return f"{user}:{field}{sep}{tail}"


_Stamp = tuple[int, int, int, int]


class _Snapshot:
    """The parsed contents of the passwd file at one moment."""

    def __init__(self, lines: list[str], stamp: _Stamp | None) -> None:
        self.lines = lines
        self.stamp = stamp
        self.entries: dict[str, PasswdEntry] = {}
        self.lineOf: dict[str, int] = {}
        for index, line in enumerate(lines):
            entry = parseLine(line, index + 1)
            if entry is None:
                if line.strip() and not line.lstrip().startswith("#"):
                    log.warn(
                        "passwd line {lineno}: user name is not an address; ignored",
                        lineno=index + 1,
                    )
                continue
            if entry.address in self.entries:
                log.warn(
                    "passwd line {lineno}: duplicate user {address}; the first one is used",
                    lineno=index + 1,
                    address=entry.address,
                )
                continue
            self.entries[entry.address] = entry
            self.lineOf[entry.address] = index


def _stampOf(st: os.stat_result) -> _Stamp:
    """The identity of one version of a file: device, inode, size, mtime (ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class PasswdFile:
    """A Dovecot passwd-file of mail users; thread-safe, blocking.

    @ivar path: absolute path of the file; it need not exist until the first user is
        added (a missing file is an empty user list).
    """

    lockTimeout = 10.0
    staleLockAge = 120.0

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._stateLock = threading.Lock()
        self._writeLock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    # reading

    def _read(self) -> _Snapshot:
        """Read and parse the file as it is now."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return _Snapshot([], None)
        with f:
            stamp = _stampOf(os.fstat(f.fileno()))
            text = f.read().decode("utf-8", "surrogateescape")
        return _Snapshot(text.splitlines(), stamp)

    def _current(self) -> _Snapshot:
        """The parsed file, re-read if it changed on disk since the last read."""
        try:
            stamp: _Stamp | None = _stampOf(os.stat(self.path))
        except FileNotFoundError:
            stamp = None
        with self._stateLock:
            if self._snapshot is None or self._snapshot.stamp != stamp:
                self._snapshot = self._read()
            return self._snapshot

    def lookup(self, address: str) -> PasswdEntry | None:
        """The entry for C{address} (any case, any form), or C{None}."""
        try:
            key = canonical(address)
        except AddressError:
            return None
        return self._current().entries.get(key)

    def users(self) -> list[str]:
        """Canonical addresses of all users, in file order."""
        return list(self._current().entries)

    # a passwd file is one server's: its mailboxes have no other owner

    def owner(self, address: str, fresh: bool = False) -> NodeRecord | None:
        """No cluster node owns a mailbox of a passwd file: C{None}."""
        return None

    def route(self, address: str) -> tuple[bool, NodeRecord | None]:
        """Never being moved, no owner node: C{(False, None)}."""
        return False, None

    # verifying

    def verify(self, address: str, password: str | bytes) -> bool:
        """Whether C{password} is the password of C{address}.

        Unknown users and malformed addresses cost one dummy verification. On success
        against a scheme other than ARGON2ID, or ARGON2ID with other parameters than
        the current ones, the line is rewritten with a new hash (a failure to rewrite
        is logged and does not fail the login).
        """
        return verifyEntry(self.lookup(address), password, self._upgrade)

    def _upgrade(self, entry: PasswdEntry, password: str | bytes) -> None:
        """Replace C{entry}'s verified hash with an ARGON2ID one of the current cost."""
        try:
            field = hashPassword(password)

            def change(snap: _Snapshot) -> list[str] | None:
                current = snap.entries.get(entry.address)
                if current is None or current.password != entry.password:
                    return None  # changed meanwhile: leave the newer password alone
                lines = list(snap.lines)
                index = snap.lineOf[entry.address]
                lines[index] = _replacePassword(lines[index], field)
                return lines

            self._modify(change)
        except (OSError, PasswdLocked) as e:
            # Expected trouble (read-only directory, lock held): one line, no traceback.
            log.warn(
                "could not upgrade the {scheme} hash of {address}: {error}",
                scheme=entry.scheme,
                address=entry.address,
                error=str(e),
            )
        except Exception:
            log.failure(
                "could not upgrade the {scheme} hash of {address}",
                scheme=entry.scheme,
                address=entry.address,
            )
        else:
            log.info(
                "upgraded the password hash of {address} from {scheme} to {new}"
                " (m={m}, t={t}, p={p})",
                address=entry.address,
                scheme=entry.scheme,
                new=NEW_SCHEME,
                m=_context.to_dict().get("argon2__memory_cost"),
                t=_context.to_dict().get("argon2__rounds"),
                p=_context.to_dict().get("argon2__parallelism"),
            )

    # writing

    def add(self, address: str, password: str | bytes) -> str:
        """Add a user with a new ARGON2ID hash of C{password}; return its address.

        @raise AddressError: the address is malformed.
        @raise UserExists: the user is already in the file.
        @raise ValueError: the password is empty.
        """
        key = canonical(address)
        field = hashPassword(password)

        def change(snap: _Snapshot) -> list[str]:
            if key in snap.entries:
                raise UserExists(f"user {key} already exists")
            return [*snap.lines, f"{key}:{field}:::::"]

        self._modify(change)
        return key

    def setPassword(self, address: str, password: str | bytes) -> str:
        """Give an existing user a new password; return its canonical address.

        The other fields of the line are kept.

        @raise NoSuchUser: the user is not in the file.
        """
        key = canonical(address)
        field = hashPassword(password)

        def change(snap: _Snapshot) -> list[str]:
            if key not in snap.entries:
                raise NoSuchUser(f"no user {key}")
            lines = list(snap.lines)
            index = snap.lineOf[key]
            lines[index] = _replacePassword(lines[index], field)
            return lines

        self._modify(change)
        return key

    def remove(self, address: str) -> str:
        """Remove a user (and any duplicate lines of it); return its address.

        @raise NoSuchUser: the user is not in the file.
        """
        key = canonical(address)

        def change(snap: _Snapshot) -> list[str]:
            if key not in snap.entries:
                raise NoSuchUser(f"no user {key}")
            kept = []
            for line in snap.lines:
                entry = parseLine(line)
                if entry is None or entry.address != key:
                    kept.append(line)
            return kept

        self._modify(change)
        return key

    def _modify(self, change: Callable[[_Snapshot], list[str] | None]) -> None:
        """Apply C{change} to the file under the dot-lock and replace it atomically.

        C{change} gets the file as re-read under the lock and returns the new lines,
        or C{None} to leave the file alone.
        """
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        with self._writeLock, self._dotLock():
            snap = self._read()
            lines = change(snap)
            if lines is None:
                return
            self._replace(lines)
            fresh = self._read()
        with self._stateLock:
            self._snapshot = fresh

    @contextlib.contextmanager
    def _dotLock(self) -> Iterator[None]:
        """Hold the file's dotlock (L{pymaild.files.DotLock}: C{passwd.lock}).

        @raise PasswdLocked: another process held it for the whole C{lockTimeout}.
        """
        lock = DotLock(self.path, staleAfter=self.staleLockAge, timeout=self.lockTimeout)
        try:
            lock.acquire()
        except LockTimeout:
            raise PasswdLocked(
                f"{lock.path} is held by another process"
                f" (remove it if no pymaild-admin or pymaild is writing)"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _replace(self, lines: list[str]) -> None:
        """Write C{lines} to a temporary file and rename it over the passwd file.

        Root editing the server's file keeps its owner; a new file takes the owner of
        its directory (the server's data directory).
        """
        try:
            owner = os.stat(self.path)
        except FileNotFoundError:
            owner = os.stat(os.path.dirname(self.path))
        data = "".join(line.rstrip("\r\n") + "\n" for line in lines)
        writeFileAtomic(self.path, data.encode("utf-8", "surrogateescape"), 0o600, owner)
