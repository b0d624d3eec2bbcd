"""The journal of C{cur/} changes made by pymaild processes, so that the others need not
re-read a big directory to learn of them.

A flag change renames a file inside C{cur/}, which moves the directory's mtime, and
every other process on the tree (the workers of C{--workers}, a second pymaild) would
then read all of C{cur/} again: 100,000 names for one flag. Instead each pymaild process
makes its changes to C{cur/} (renames, moves in from C{new/}, unlinks) while holding
this file's C{flock(LOCK_EX)}, stats the directory before and after, and appends one
record: the directory's signature (inode, mtime) before and after, the names that left
and the names that came. Another process whose listing is at the signature a record
starts from applies the names and moves on to the signature it ends at; when its chain
reaches the directory's current signature, its listing is as current as a reading
would be. Any gap (a change by another program, Dovecot or an MDA, which writes no
record; a record this process cannot place) makes it read the directory as before.
What a record cannot know, a foreign change in the same clock tick, is caught the way
the process's own changes are (L{pymaild.store.foldersync.FolderSync._ownChange}).

Format: a header line C{G<generation>}, then one line per change::

    <ino> <mtime_ns> <ino> <mtime_ns> TAB -<name> ... TAB +<name> ...
    <ino> <mtime_ns> <ino> <mtime_ns> TAB =

The second form (same signature twice) says the writer read the directory at that
signature, found the names its chain of records had given it, and could trust the
reading (its sync window was over): a reader whose chain ends there may trust its
listing too, instead of reading the directory to check it.

Past L{MAX_SIZE} octets the writer replaces the file by an empty one of a new
generation (readers of the old one read the directory once). A plain file without a
leading dot, which Maildir++ code and Dovecot ignore; not fsynced (a lost record only
costs a reading of the directory). Every call blocks on disk I/O: run it in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CHANGES_NAME", "ChangeLog", "Record"]

CHANGES_NAME = "pymaild.changes"
"""The file's name in a folder directory."""

MAX_SIZE = 256 * 1024
"""Octets after which the journal starts over."""

_NOFILE = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS)
Sig = tuple[int, int]
Position = tuple[str, int]


@dataclass(frozen=True)
class Record:
    """One change of C{cur/}: from signature C{pre} to C{post}, C{gone} names left it
    and C{came} names entered it; or, C{verified}, a check of the directory at
    C{post}."""

    pre: Sig
    post: Sig
    gone: tuple[str, ...]
    came: tuple[str, ...]
    verified: bool = False


def _encode(pre: Sig, post: Sig, gone: Iterable[str], came: Iterable[str],
            verified: bool = False) -> bytes | None:
    """One record line, or None when a name cannot be written in one."""
    fields = [f"{pre[0]} {pre[1]} {post[0]} {post[1]}"]
    if verified:
        fields.append("=")
    for op, names in (("-", gone), ("+", came)):
        for n in names:
            if not n or "\t" in n or "\n" in n:
                return None
            fields.append(op + n)
    return ("\t".join(fields) + "\n").encode("utf-8", "surrogateescape")


def _decode(line: bytes) -> Record | None:
    """The record of one line, or None if it is not one."""
    parts = line.decode("utf-8", "surrogateescape").split("\t")
    nums = parts[0].split(" ")
    if len(nums) != 4 or not all(n.isdigit() for n in nums):
        return None
    if parts[1:] == ["="]:
        pre = (int(nums[0]), int(nums[1]))
        return Record(pre, (int(nums[2]), int(nums[3])), (), (), True)
    gone = tuple(p[1:] for p in parts[1:] if p.startswith("-"))
    came = tuple(p[1:] for p in parts[1:] if p.startswith("+"))
    if len(gone) + len(came) != len(parts) - 1:
        return None
    return Record((int(nums[0]), int(nums[1])), (int(nums[2]), int(nums[3])), gone, came)


class ChangeLog:
    """The journal of one folder directory."""

    def __init__(self, folderPath: str) -> None:
        """The journal of the folder at C{folderPath} (nothing is read yet)."""
        self.path = os.path.join(folderPath, CHANGES_NAME)

    def _header(self, fd: int) -> str | None:
        """The generation named by the header line, or None."""
        head = os.pread(fd, 64, 0)
        end = head.find(b"\n")
        if end < 2 or not head.startswith(b"G"):
            return None
        return head[1:end].decode("ascii", "replace")

    def position(self) -> Position | None:
        """Where the journal ends now, starting one if there is none (None: it
        cannot be written)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno not in _NOFILE:
                raise
            fd = -1
        if fd >= 0:
            try:
                gen = self._header(fd)
                if gen is not None:
                    return gen, os.fstat(fd).st_size
            finally:
                os.close(fd)
        writer = self.lock()
        try:
            return writer.position()
        finally:
            writer.close()

    def read(self, pos: Position | None) -> tuple[list[Record], Position] | None:
        """The records after C{pos} and the new position; None when they cannot be
        known (no journal, another generation, a line that is not a record)."""
        if pos is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno in _NOFILE:
                return None
            raise
        try:
            if self._header(fd) != pos[0]:
                return None
            size = os.fstat(fd).st_size
            if size < pos[1]:
                return None
            data = os.pread(fd, size - pos[1], pos[1]) if size > pos[1] else b""
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1  # a line still being written waits for next time
        records = []
        for line in data[:end].split(b"\n")[:-1]:
            rec = _decode(line)
            if rec is None:
                return None
            records.append(rec)
        return records, (pos[0], pos[1] + end)

    def lock(self) -> Writer:
        """The journal, locked for a change of C{cur/} (see L{Writer})."""
        return Writer(self)


class Writer:
    """A held lock on the journal: stat C{cur/}, change it, L{append}, L{close}.

    Where the journal cannot be opened (a read-only tree) nothing is written, and
    other processes read the directory as they would without a journal.
    """

    def __init__(self, log: ChangeLog) -> None:
        """Open and lock the journal (making it when there is none)."""
        self.log = log
        self.fd: int | None = None
        try:
            fd = os.open(log.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except OSError as e:
            if e.errno in _NOFILE:
                return
            raise
        for _ in range(16):
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(log.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # replaced by a writer that started it over: take the new one
            fd = os.open(log.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        else:
            os.close(fd)
            return
        self.fd = fd
        size = os.fstat(fd).st_size
        if (log._header(fd) is None or size > MAX_SIZE
                or os.pread(fd, 1, size - 1) != b"\n"):  # (a torn last line)
            self._startOver()

    def _startOver(self) -> None:
        """Replace the journal by an empty one of a new generation (still locked)."""
        assert self.fd is not None
        tmp = self.log.path + ".new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        os.write(fd, b"G" + secrets.token_hex(8).encode() + b"\n")
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, self.log.path)
        os.close(self.fd)
        self.fd = fd

    def position(self) -> Position | None:
        """Where the journal ends (nothing can be appended by others meanwhile)."""
        if self.fd is None:
            return None
        gen = self.log._header(self.fd)
        return None if gen is None else (gen, os.fstat(self.fd).st_size)

    def records(self, pos: Position | None) -> tuple[list[Record], Position] | None:
        """L{ChangeLog.read}, while the lock is held."""
        return self.log.read(pos) if self.fd is not None else None

    def append(self, pre: Sig, post: Sig, gone: Iterable[str], came: Iterable[str],
               verified: bool = False) -> bool:
        """Record a change (or a check: C{verified}); False when it could not be (then
        readers see a gap)."""
        if self.fd is None:
            return False
        line = _encode(pre, post, gone, came, verified)
        if line is None:
            return False
        size = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            if os.write(self.fd, line) == len(line):
                return True
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        os.ftruncate(self.fd, size)  # no torn line left behind
        return False

    def close(self) -> None:
        """Release the lock."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
