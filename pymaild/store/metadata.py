"""METADATA entries (RFC 5464) of an account: server entries and per-folder entries.

They live in C{pymaild-metadata} in the Maildir root, a file Dovecot leaves alone (its
name starts with no dot, so it is no Maildir++ folder, and Dovecot reads no such file),
one entry a line::

    <folder>\\t<entry>\\t<value in base64>

C{<folder>} is the canonical folder name (C{INBOX}, C{Lists/pymaild}), empty for
server entries; C{<entry>} is the lower-cased entry name (C{/private/comment});
values are bytes of any kind. The file is rewritten whole under its dotlock and
replaced by rename after an fsync (L{pymaild.files.DotLock.replace}), so a
reader sees the old or the new entries, never half a change. Entries follow a renamed
folder (and its children) and go with a deleted one (L{moveFolder}).

Everything here blocks; the server calls it through its disk runner.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable

from pymaild.files import readTabbedLines, updateLocked

#: The file in the Maildir root.
METADATA_NAME = "pymaild-metadata"

#: folder ("" for the server) -> entry -> value
Entries = dict[str, dict[str, bytes]]


def _path(root: str) -> str:
    """The metadata file of the Maildir at C{root}."""
    return os.path.join(root, METADATA_NAME)


def read(root: str) -> Entries:
    """Every entry of the account at C{root} (a missing file: none); malformed lines
    are skipped."""
    out: Entries = {}
    for fields in readTabbedLines(_path(root), 3):
        if not fields[1].startswith(b"/"):
            continue
        try:
            value = base64.b64decode(fields[2], validate=True)
            folder = fields[0].decode("utf-8")
            entry = fields[1].decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            continue
        out.setdefault(folder, {})[entry] = value
    return out


def _serialise(entries: Entries) -> bytes:
    """The file's content for C{entries} (sorted, so equal entries give equal files)."""
    lines = []
    for folder in sorted(entries):
        for entry, value in sorted(entries[folder].items()):
            lines.append(folder.encode("utf-8") + b"\t" + entry.encode("ascii") + b"\t"
                         + base64.b64encode(value) + b"\n")
    return b"".join(lines)


def update(root: str, change: Callable[[Entries], Entries]) -> Entries:
    """Apply C{change} to the current entries under the file's dotlock and write the
    result when it differs; return the entries now in force.

    C{change} may raise to refuse the change (nothing is written then).

    @raise OSError: the file could not be written.
    """
    def pruned(entries: Entries) -> Entries:
        return {k: v for k, v in change(entries).items() if v}

    return updateLocked(_path(root), lambda: read(root), _serialise, pruned)


def moveFolder(root: str, src: str, dst: str | None) -> None:
    """Entries follow folder C{src} and its children to C{dst}; with C{dst} None (the
    folder was deleted) the entries of C{src} itself go (its children still exist)."""
    prefix = src + "/"
    try:
        present = read(root)
    except OSError:
        return
    if not any(n == src or n.startswith(prefix) for n in present):
        return

    def change(cur: Entries) -> Entries:
        out: Entries = {}
        for name, entries in cur.items():
            if name == src or (dst is not None and name.startswith(prefix)):
                if dst is not None:
                    out[dst + name[len(src):]] = entries
            else:
                out[name] = entries
        return out

    update(root, change)


__all__ = ["METADATA_NAME", "Entries", "moveFolder", "read", "update"]
