"""How much mail an account holds, and the Maildir++ C{maildirsize} file Dovecot reads.

Usage is derived from the Maildir itself, not kept as a running counter: the bytes are
the C{S=} sizes of the message file names (the file's size on disk, which every
pymaild and Dovecot name carries; a name without one is stat()ed), the messages are the
files, over C{cur/} and C{new/} of INBOX and of every C{.folder}, Trash included, as
Dovecot's C{maildir} quota backend counts.

Why derived rather than a counter: a counter (the Maildir++ C{maildirsize} file alone)
is right only while every writer updates it; Dovecot without its quota plugin, a
second pymaild, a hand-deleted file or a crash between a write and its counter line
make it drift, and Maildir++ repairs drift only by a full rescan now and then. A scan
is always right, and L{UsageCounter} makes it cheap: each C{cur/} and C{new/} is listed
again only when its directory changed (inode and modification time in nanoseconds), so
a check after a delivery lists one small C{new/}. A directory changed less than
L{SETTLE} seconds before it was listed is listed again next time, since a second
change within one tick of the file system's clock would not move its modification
time.

For Dovecot (C{quota = maildir}) the result is written to C{maildirsize} in the
Maildir root whenever it differs from what was last written there: the Maildir++ format
(first line the limits, C{<bytes>S,<count>C}; then C{<bytes> <count>}), replaced by
rename, so Dovecot reads the same usage and limits and may append its own lines. No
file is written for an account without limits (Dovecot writes none either).

Everything here blocks (directory listings): the server calls it through a runner.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass

#: The Maildir++ quota file in the Maildir root.
MAILDIRSIZE = "maildirsize"

#: A directory modified less than this many seconds before it was listed is not trusted
#: to show a later change in its modification time.
SETTLE = 2.0

_S_RE = re.compile(r",S=(\d+)")


@dataclass(frozen=True)
class Usage:
    """What an account holds: C{bytes} of message files and C{messages} files."""

    bytes: int = 0
    messages: int = 0


def _sizeOf(dirPath: str, name: str) -> int:
    """The size of one message file: its C{S=} field, else its stat() size (0 if gone)."""
    m = _S_RE.search(name)
    if m is not None:
        return int(m.group(1))
    try:
        return os.stat(os.path.join(dirPath, name)).st_size
    except OSError:
        return 0


def scanDirectory(path: str) -> tuple[int, int]:
    """(bytes, messages) of one C{cur/} or C{new/}; dot files are not messages.

    A missing directory holds nothing.
    """
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    total = count = 0
    for name in names:
        if name.startswith(".") or "\n" in name or "\r" in name:
            continue
        total += _sizeOf(path, name)
        count += 1
    return total, count


def folderDirectories(root: str) -> list[str]:
    """The C{cur/} and C{new/} directories of INBOX (C{root}) and every C{.folder}."""
    folders = [root]
    try:
        with os.scandir(root) as entries:
            for e in entries:
                if e.name.startswith(".") and e.name not in (".", "..") and e.is_dir():
                    folders.append(e.path)
    except FileNotFoundError:
        return []
    return [os.path.join(f, sub) for f in folders for sub in ("cur", "new")]


class UsageCounter:
    """Usage of account Maildirs, each directory listed again only when it changed.

    Thread-safe; one per server (the tap builds it), shared by SMTP, IMAP and the admin
    page. It remembers at most L{MAX_DIRECTORIES} directories (then it forgets all and
    starts over).
    """

    MAX_DIRECTORIES = 100000

    def __init__(self, clock: object = time) -> None:
        """@param clock: gives C{time()} (for L{SETTLE}); the C{time} module by default."""
        self._clock = clock
        self._lock = threading.Lock()
        self._dirs: dict[str, tuple[tuple[int, int], int, int]] = {}
        self._written: dict[str, tuple[str, int, int]] = {}

    def _directory(self, path: str) -> tuple[int, int]:
        """(bytes, messages) of one directory, from the cache when it has not changed."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self._dirs.pop(path, None)
            return 0, 0
        sig = (st.st_ino, st.st_mtime_ns)
        with self._lock:
            hit = self._dirs.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1], hit[2]
        now = self._clock.time()  # type: ignore[attr-defined]
        total, count = scanDirectory(path)
        settled = st.st_mtime_ns / 1e9 < now - SETTLE
        with self._lock:
            if len(self._dirs) >= self.MAX_DIRECTORIES:
                self._dirs.clear()
            if settled:
                self._dirs[path] = (sig, total, count)
            else:
                self._dirs.pop(path, None)
        return total, count

    def usage(self, root: str) -> Usage:
        """The usage of the Maildir at C{root} (blocking)."""
        total = count = 0
        for d in folderDirectories(root):
            b, n = self._directory(d)
            total += b
            count += n
        return Usage(total, count)

    def record(self, root: str, usage: Usage, storage: int | None,
               messages: int | None) -> None:
        """Keep C{maildirsize} in C{root} in step with C{usage} and the limits
        (blocking); nothing is written when both limits are None or nothing changed.

        Errors writing it are swallowed: the file is a courtesy to Dovecot, and pymaild
        never reads it.
        """
        if storage is None and messages is None:
            return
        line = limitsLine(storage, messages)
        state = (line, usage.bytes, usage.messages)
        with self._lock:
            if self._written.get(root) == state:
                return
        try:
            writeMaildirsize(root, line, usage)
        except OSError:
            return
        with self._lock:
            if len(self._written) >= self.MAX_DIRECTORIES:
                self._written.clear()
            self._written[root] = state


def limitsLine(storage: int | None, messages: int | None) -> str:
    """The first line of C{maildirsize}: C{<bytes>S,<count>C}, an unlimited one left
    out (Dovecot's form)."""
    parts = []
    if storage is not None:
        parts.append(f"{storage}S")
    if messages is not None:
        parts.append(f"{messages}C")
    return ",".join(parts)


def writeMaildirsize(root: str, line: str, usage: Usage) -> None:
    """Replace C{root/maildirsize} by the limits line and one usage line (by rename of
    a file in C{tmp/}, so a reader sees the old or the new file, never half of one).

    @raise OSError: the file could not be written.
    """
    tmpDir = os.path.join(root, "tmp")
    tmp = os.path.join(tmpDir, f"{MAILDIRSIZE}.{os.getpid()}.{threading.get_ident()}")
    data = f"{line}\n{usage.bytes} {usage.messages}\n".encode("ascii")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, os.path.join(root, MAILDIRSIZE))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def readMaildirsize(root: str) -> tuple[str, Usage] | None:
    """The limits line and the summed usage lines of C{root/maildirsize}, or None when
    there is no such file or it is malformed (as Maildir++ readers treat it)."""
    try:
        with open(os.path.join(root, MAILDIRSIZE), encoding="ascii") as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if not lines:
        return None
    total = count = 0
    for text in lines[1:]:
        words = text.split()
        if not words:
            continue
        try:
            total += int(words[0])
            count += int(words[1]) if len(words) > 1 else 0
        except ValueError:
            return None
    return lines[0], Usage(total, count)


__all__ = ["MAILDIRSIZE", "Usage", "UsageCounter", "limitsLine", "readMaildirsize",
           "scanDirectory", "writeMaildirsize"]
