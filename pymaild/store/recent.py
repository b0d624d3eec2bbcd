"""\\Recent marks of messages stored straight into C{cur/}, shared by every process.

RFC 3501 gives \\Recent to exactly one session: the first to see the message. For a
file of C{new/} the claiming scan's rename into C{cur/} decides (one process wins it).
A message APPENDed or COPYed with flags goes straight into C{cur/}, so its mark is kept
in the folder's L{RECENT_NAME} file instead (Dovecot keeps its marks in its index):
one key per line, appended under the file's C{flock(LOCK_EX)} by the process that
stored the message, and read and emptied under the same lock by the next claiming scan,
whichever process makes it, so the mark reaches exactly one session.

A plain file without a leading dot beside C{dovecot-uidlist}, which Maildir++ code and
Dovecot ignore. Not fsynced: \\Recent is advisory, and a mark lost in a crash only
costs a flag. A folder that only ever gets APPENDs (Sent) is never claimed: past
L{MAX_MARKS} octets the marks are dropped. A tree where the file cannot be written
keeps no marks. Every call blocks on disk I/O: run it in a thread, never in the reactor.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable

__all__ = ["RECENT_NAME", "addMarks", "takeMarks", "peekMarks"]

RECENT_NAME = "pymaild.recent"
"""The file's name in a folder directory."""

MAX_MARKS = 1 << 20
"""Octets of marks kept at most (about 15,000 keys)."""

_NOFILE = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS)


def _parse(data: bytes) -> set[str]:
    """The keys of the complete lines of C{data}."""
    end = data.rfind(b"\n")
    if end < 0:
        return set()
    return {k for k in data[:end].decode("utf-8", "surrogateescape").split("\n") if k}


def addMarks(folderPath: str, keys: Iterable[str]) -> None:
    """Mark the messages C{keys} (just stored into C{cur/}) as recent."""
    text = "".join(f"{k}\n" for k in keys if "\n" not in k)
    if not text:
        return
    try:
        fd = os.open(os.path.join(folderPath, RECENT_NAME),
                     os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
    except OSError as e:
        if e.errno in _NOFILE:
            return
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size > MAX_MARKS:
            os.ftruncate(fd, 0)
        try:
            os.write(fd, text.encode("utf-8", "surrogateescape"))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
    finally:
        os.close(fd)


def _openMarks(folderPath: str, flags: int) -> int | None:
    """The marks file opened with C{flags}, or None when it holds none (one stat)."""
    path = os.path.join(folderPath, RECENT_NAME)
    try:
        if os.stat(path).st_size == 0:
            return None
        return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno in _NOFILE:
            return None
        raise


def takeMarks(folderPath: str) -> set[str]:
    """The marked keys, the file emptied: the caller's session is the one that gets
    them. Costs one stat when there are none."""
    fd = _openMarks(folderPath, os.O_RDWR)
    if fd is None:
        return set()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = _readAll(fd)
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    return _parse(data)


def peekMarks(folderPath: str) -> set[str]:
    """The marked keys, left in place (what a scan that does not claim reports)."""
    fd = _openMarks(folderPath, os.O_RDONLY)
    if fd is None:
        return set()
    try:
        return _parse(_readAll(fd))
    finally:
        os.close(fd)


def _readAll(fd: int) -> bytes:
    """The whole file from its start."""
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
