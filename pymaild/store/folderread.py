"""The reading layer of a L{pymaild.store.folder.Folder}: one message's file and dates.

L{FolderReader} finds a message's file from the cached listing (re-reading once when it
moved) and opens or reads it with CRLF line ends, and gives its internal date, save date
and GUID.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from pymaild.errors import (
    MessageVanished,
    NoSuchFolder,
)
from pymaild.store.folderscan import FolderScan
from pymaild.store.info import MessageInfo
from pymaild.store.listing import _isCRLFClean
from pymaild.store.writing import toCRLF

_T = TypeVar("_T")


class FolderReader(FolderScan):
    """Reading one message of a folder: its file, bytes and dates
    (a layer of L{pymaild.store.folder.Folder})."""

    # -- single messages --

    def _locate(self, key: str) -> tuple[str, str] | None:
        """(subdir, file name) of C{key} from the cached listing, or None."""
        lists = self._c.lists
        tail = lists["cur"].get(key)
        if tail is not None:
            return "cur", key + tail
        tail = lists["new"].get(key)
        if tail is not None:
            return "new", key + tail
        return None

    def _withFile(self, info: MessageInfo, op: Callable[[str], _T]) -> _T:
        """Run C{op(path)} on the message's file, finding it again if it was renamed."""
        try:
            return op(os.path.join(self.path, info.filename))
        except FileNotFoundError:
            pass
        c = self._c
        with c.lock:
            for force in (False, True):
                try:
                    self._refresh(force=force)
                except NoSuchFolder:
                    break
                loc = self._locate(info.key)
                if loc is None:
                    continue
                try:
                    return op(os.path.join(self.path, loc[0], loc[1]))
                except FileNotFoundError:
                    continue
        raise MessageVanished(f"message {info.key} vanished from {self.name!r}")

    def internalDate(self, info: MessageInfo) -> float:
        """The message's IMAP INTERNALDATE: its file's mtime.

        @raise MessageVanished: the file is gone.
        """
        return self._withFile(info, lambda p: os.stat(p).st_mtime)

    def messageGuid(self, info: MessageInfo) -> str:
        """The message's GUID as Dovecot's Maildir has it: its uidlist record's C{G}
        field (which a copy carries over from its source), else its base name
        (blocking when the uidlist has to be read again)."""
        c = self._c
        ul = c.uidlist
        if ul is None:
            with c.lock:
                self._refreshUidlist(force=True)
                ul = c.uidlist
        rec = ul.byKey.get(info.key) if ul is not None else None
        guid = rec.extValue("G") if rec is not None else None
        return guid or info.key.split(",", 1)[0]

    def saveDate(self, info: MessageInfo) -> float:
        """When the message was saved to this folder (SAVEDATE, RFC 8514): the seconds
        its unique name starts with (written when delivered, appended or copied here,
        kept by flag changes), else the internal date.

        @raise MessageVanished: the name says nothing and the file is gone.
        """
        head = info.key.split(".", 1)[0]
        if head.isdigit() and len(head) <= 12:
            return float(head)
        return self.internalDate(info)

    def open(self, info: MessageInfo) -> BinaryIO:
        """The message content with CRLF line ends (LF-only foreign files converted).

        @raise MessageVanished: the file is gone.
        """
        def opener(path: str) -> BinaryIO:
            f = open(path, "rb")
            if _isCRLFClean(info.key):
                return f
            with f:
                data = f.read()
            return io.BytesIO(toCRLF(data))
        return self._withFile(info, opener)

    def read(self, info: MessageInfo) -> bytes:
        """The whole message content with CRLF line ends (one C{read} of the file's size).

        @raise MessageVanished: the file is gone.
        """
        if not _isCRLFClean(info.key):
            with self.open(info) as f:
                return f.read()

        def reader(path: str) -> bytes:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                data = os.read(fd, size + 1)  # one more: a file that grew is read whole
                if len(data) <= size:
                    return data
                chunks = [data]
                while True:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)
            finally:
                os.close(fd)
        return self._withFile(info, reader)

    def readPrefix(self, info: MessageInfo, size: int) -> bytes:
        """At most the first C{size} bytes of the content with CRLF line ends (one
        C{pread}, no buffered file object: the cheap way to a message's header).

        @raise MessageVanished: the file is gone.
        """
        if not _isCRLFClean(info.key):
            with self.open(info) as f:
                return f.read(size)

        def reader(path: str) -> bytes:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.pread(fd, size, 0)
            finally:
                os.close(fd)
        return self._withFile(info, reader)

    def openPlain(self, info: MessageInfo) -> BinaryIO | None:
        """The message file at its scanned path when it needs no conversion (its name
        promises CRLF content), else None; then use L{open}.

        One C{open()} and nothing else -- no listing, no lock -- so cheap enough for
        callers that must not block (also None when the file was renamed or removed).
        """
        if not _isCRLFClean(info.key):
            return None
        try:
            return open(os.path.join(self.path, info.filename), "rb")
        except FileNotFoundError:
            return None

    def readSmall(self, info: MessageInfo, limit: int) -> bytes | None:
        """The whole content with CRLF line ends when the file at its scanned path holds
        fewer than C{limit} octets: one C{open()}, one C{read()} and, for a file with LF
        line ends, one conversion -- no listing, no lock, so cheap enough for callers
        that must not block. None for a larger file, or one renamed or removed: then
        use L{open}."""
        try:
            fd = os.open(os.path.join(self.path, info.filename), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            data = os.read(fd, limit)
        finally:
            os.close(fd)
        if len(data) >= limit:
            return None
        return data if _isCRLFClean(info.key) else toCRLF(data)
