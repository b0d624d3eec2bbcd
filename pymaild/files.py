"""Durable files: the one place where pymaild writes a whole file, makes a directory
entry durable, or takes a dotlock.

Every room that keeps state on disk (the Maildir store and its caches, the queue, the
passwd and aliases files, Sieve scripts, TLS keys) uses these, so there is one rule for
each: a replaced file is written beside its target, fsynced, renamed over it, and its
directory fsynced; a lock is Dovecot's dotlock, with one rule for when it is stale.

All of it blocks: callers run it in a worker thread (or in C{pymaild-admin}).
"""

from __future__ import annotations

import copy
import itertools
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from pymaild.errors import LockTimeout

T = TypeVar("T")

__all__ = ["fsyncDir", "writeAll", "writeFileAtomic", "DotLock", "LockTimeout", "processGone"]

_counter = itertools.count(1)


def fsyncDir(path: str) -> None:
    """fsync a directory so entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writeAll(fd: int, data: bytes | memoryview) -> None:
    """Write all of C{data} to C{fd}, looping over short writes.

    @raise OSError: the write failed (C{EIO} for a write that wrote nothing).
    """
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(5, "short write")  # EIO
        view = view[n:]


def uniqueSibling(path: str, tag: str) -> str:
    """A name beside C{path} no other writer (thread or process) uses at the same time:
    C{path.TAG.PID.N}."""
    return f"{path}.{tag}.{os.getpid()}.{next(_counter)}"


def writeFileAtomic(path: str, data: bytes, mode: int = 0o600,
                    owner: os.stat_result | None = None) -> None:
    """Replace C{path} with C{data}: write a new file beside it (mode C{mode} exactly,
    whatever the umask), fsync it, rename it over, fsync the directory.

    With C{owner}, the new file gets that file's user and group where they differ from
    ours and we may give them (root editing a file the server owns).

    Readers see the old content or the new, never a part; on an error the target is
    untouched and nothing is left behind.
    """
    tmp = uniqueSibling(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 mode)
    try:
        try:
            os.fchmod(fd, mode)
            if owner is not None and (owner.st_uid, owner.st_gid) != (os.geteuid(),
                                                                     os.getegid()):
                try:
                    os.fchown(fd, owner.st_uid, owner.st_gid)
                except PermissionError:
                    pass
            writeAll(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsyncDir(os.path.dirname(os.path.abspath(path)))


def processGone(pid: int) -> bool:
    """True when no process C{pid} exists on this host (one that exists but is not ours
    to signal still counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class DotLock:
    """A Dovecot-style dotlock: the file C{<path>.lock}, created with C{O_EXCL}.

    The holder writes C{<pid>:<hostname>} into it (unless it will L{replace} the target
    with the lock file's content). A lock is stale, and is taken over, when its mtime is
    older than C{staleAfter} seconds or it names a dead process on this host. Takeover
    renames the stale file aside and checks it is the one judged stale, so two takers
    cannot both win. Use as a context manager.
    """

    def __init__(self, path: str, staleAfter: float = 120.0, timeout: float = 125.0,
                 writePid: bool = True) -> None:
        """Prepare a lock for C{path} (the lock file is C{path + ".lock"})."""
        self.target = path
        self.path = path + ".lock"
        self.staleAfter = staleAfter
        self.timeout = timeout
        self.writePid = writePid
        self.fd: int | None = None

    def acquire(self) -> None:
        """Create the lock file, waiting (and breaking stale locks) up to the timeout.

        @raise LockTimeout: the lock stayed held.
        @raise OSError: the directory is missing or unwritable.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        while True:
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileExistsError:
                if self._breakStale():
                    continue
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"timed out waiting for {self.path}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            self.fd = fd
            if self.writePid:
                try:
                    writeAll(fd, f"{os.getpid()}:{socket.gethostname()}".encode())
                except OSError:
                    self.release()
                    raise
            return

    def _breakStale(self) -> bool:
        """Remove the lock file if it is stale; True when the caller should retry now."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True
        stale = time.time() - st.st_mtime > self.staleAfter
        if not stale:
            try:
                with open(self.path, "rb") as f:
                    content = f.read(256).decode("ascii", "replace")
            except OSError:
                return False
            pid, sep, host = content.partition(":")
            stale = (bool(sep) and pid.isdigit() and host == socket.gethostname()
                     and int(pid) != os.getpid() and processGone(int(pid)))
        if not stale:
            return False
        aside = uniqueSibling(self.path, "stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True
        try:
            st2 = os.lstat(aside)
            if (st2.st_ino, st2.st_mtime_ns) != (st.st_ino, st.st_mtime_ns):
                # We moved someone's fresh lock: put it back unless the name is taken.
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
        finally:
            try:
                os.unlink(aside)
            except OSError:
                pass
        return True

    def release(self) -> None:
        """Remove the lock file (if still held)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.close(fd)
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def replace(self, data: bytes) -> None:
        """Write C{data} into the held lock file, fsync it and rename it over the target.

        This releases the lock (Dovecot's C{file_dotlock_replace}).

        @raise LockTimeout: the lock is not held (a programming error).
        """
        if self.fd is None:
            raise LockTimeout("dotlock not held")
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            writeAll(fd, data)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.rename(self.path, self.target)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(self.path)
            except OSError:
                pass
            raise
        fsyncDir(os.path.dirname(os.path.abspath(self.target)))

    def __enter__(self) -> DotLock:
        """Acquire the lock."""
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        """Release the lock (no-op after L{replace})."""
        self.release()


def readTabbedLines(path: str, fields: int) -> list[list[bytes]]:
    """The lines of a small tab-separated file that have exactly C{fields} fields (other
    lines are skipped as malformed); none when the file does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [parts for parts in (line.split(b"\t") for line in data.split(b"\n"))
            if len(parts) == fields]


def updateLocked(path: str, read: Callable[[], T], serialise: Callable[[T], bytes],
                 change: Callable[[T], T]) -> T:
    """Read, change and write a small file under its L{DotLock}: C{change} gets what
    C{read} gives (a copy of its own) and returns the new content, written (fsynced and
    renamed in) only when it differs; returns the content now in force. C{change} may
    raise to refuse: nothing is written then."""
    lock = DotLock(path, staleAfter=30.0, timeout=120.0, writePid=False)
    lock.acquire()
    try:
        current = read()
        updated = change(copy.deepcopy(current))
        if updated != current:
            lock.replace(serialise(updated))
        return updated
    finally:
        lock.release()
