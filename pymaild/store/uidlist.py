"""Dovecot's C{dovecot-uidlist} (version 3).

The uidlist maps IMAP UIDs to Maildir base names (the file name without C{:2,...}):

    3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1
    25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394
    25017 W2481 :1276533073.M242911P3632.kurkku,S=2460,W=2481

The header is the version, then C{<key><value>} fields: C{V} UIDVALIDITY, C{N} next UID,
C{G} the 128-bit mailbox GUID in hex; other header fields are kept as they are. A record is
a UID, optional extension fields (C{<A-Z><value>}, e.g. C{W<vsize>}) and C{:<base name>}.
Writers hold C{dovecot-uidlist.lock} (L{pymaild.files.DotLock}) and either append whole lines
in place or write a temporary file and rename it over the uidlist. Version 1 files
(Courier's C{courierimapuiddb} format) are read too and rewritten as version 3.
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import Iterable
from typing import NamedTuple

from pymaild.errors import StoreError

__all__ = ["UidRecord", "UidList", "UIDLIST_NAME"]

UIDLIST_NAME = "dovecot-uidlist"
MAX_UID = 2**32 - 2


class UidRecord(NamedTuple):
    """One uidlist line: the UID, extension fields (C{("W1394",)}...) and the base name."""

    uid: int
    key: str
    ext: tuple[str, ...] = ()

    def extValue(self, letter: str) -> str | None:
        """The value of extension field C{letter} (e.g. C{"W"}), or None."""
        for e in self.ext:
            if e.startswith(letter):
                return e[1:]
        return None

    def format(self) -> str:
        """The record as a uidlist line, without the newline."""
        if self.ext:
            return f"{self.uid} {' '.join(self.ext)} :{self.key}"
        return f"{self.uid} :{self.key}"


class UidList:
    """The parsed content of a C{dovecot-uidlist} file."""

    def __init__(self, uidvalidity: int, nextuid: int = 1, guid: str | None = None,
                 hdrExt: list[str] | None = None,
                 records: list[UidRecord] | None = None) -> None:
        """Create a uidlist; records must be sorted by UID."""
        self.version = 3
        self.uidvalidity = uidvalidity
        self.guid = guid or uuid.uuid4().hex
        self.hdrExt: list[str] = list(hdrExt or [])
        self.records: list[UidRecord] = list(records or [])
        self.byKey: dict[str, UidRecord] = {r.key: r for r in self.records}
        self._nextuid = nextuid
        # True when the file should be rewritten (old version, duplicates, bad lines).
        self.needsRewrite = False

    @property
    def nextuid(self) -> int:
        """The next UID to give: the header's N, or one past the highest UID seen."""
        top = self.records[-1].uid + 1 if self.records else 1
        return max(self._nextuid, top, 1)

    @classmethod
    def parse(cls, data: bytes, previous: UidList | None = None) -> UidList:
        """Parse uidlist content (versions 1 and 3); damaged lines are skipped.

        A last line without its newline (a writer still appending) is ignored. Records
        equal to one of C{previous} (the same file read before) are that very record, so
        re-reading a big uidlist after an append does not make a second copy of it.

        @raise ValueError: the header is missing or unusable.
        """
        text = data.decode("utf-8", "surrogateescape")
        lines = text.split("\n")
        lines.pop()  # text after the last newline: empty or an incomplete line
        if not lines:
            raise ValueError("empty uidlist")
        head = lines[0].split()
        if not head or not head[0].isdigit():
            raise ValueError(f"bad uidlist header {lines[0]!r}")
        version = int(head[0])
        uidvalidity = 0
        nextuid = 1
        guid = None
        hdrExt: list[str] = []
        if version == 1:
            if len(head) < 3 or not head[1].isdigit() or not head[2].isdigit():
                raise ValueError(f"bad version 1 uidlist header {lines[0]!r}")
            uidvalidity, nextuid = int(head[1]), int(head[2])
        elif version == 3:
            for fld in head[1:]:
                key, value = fld[:1], fld[1:]
                if key == "V" and value.isdigit():
                    uidvalidity = int(value)
                elif key == "N" and value.isdigit():
                    nextuid = int(value)
                elif key == "G" and value:
                    guid = value
                else:
                    hdrExt.append(fld)
        else:
            raise ValueError(f"unsupported uidlist version {version}")
        if not 0 < uidvalidity < 2**32:
            raise ValueError(f"bad UIDVALIDITY in uidlist header {lines[0]!r}")
        ul = cls(uidvalidity, nextuid, guid, hdrExt)
        ul.needsRewrite = version != 3 or guid is None
        if version == 3 and _fastParse(ul, lines, previous):
            return ul
        prev = 0
        byKey = ul.byKey
        records = ul.records
        v3 = version == 3
        known = (previous if previous is not None else _EMPTY).byKey.get
        for line in lines[1:]:
            num, _, rest = line.partition(" ")
            ext: tuple[str, ...] = ()
            if v3 and rest[:1] == ":" and num.isdigit():
                name = rest[1:]
            elif not line:
                continue
            elif not num.isdigit():
                ul.needsRewrite = True
                continue
            elif v3:
                fields, colon, name = rest.partition(" :")
                if not colon:
                    ul.needsRewrite = True
                    continue
                good = [f for f in fields.split() if "A" <= f[:1] <= "Z"]
                if len(good) != len(fields.split()):
                    ul.needsRewrite = True
                ext = tuple(good)
            else:
                name = rest.rsplit(" ", 1)[-1]
            uid = int(num)
            if uid <= prev or uid > MAX_UID:
                ul.needsRewrite = True
                continue
            if ":" in name:
                name = name.partition(":")[0]
            if not name or "/" in name:
                ul.needsRewrite = True
                continue
            old = byKey.get(name)
            if old is not None:
                # Same file under a newer UID (moved back after an expunge): keep the newer.
                records.remove(old)
                ul.needsRewrite = True
            rec = known(name)
            if rec is None or rec[0] != uid or rec[2] != ext:
                rec = UidRecord(uid, name, ext)
            records.append(rec)
            byKey[name] = rec
            prev = uid
        return ul

    def serialise(self) -> bytes:
        """The whole file as Dovecot writes it (header, then records in UID order)."""
        head = f"3 V{self.uidvalidity} N{self.nextuid} G{self.guid}"
        if self.hdrExt:
            head += " " + " ".join(self.hdrExt)
        out = [head]
        out.extend(r.format() for r in self.records)
        return ("\n".join(out) + "\n").encode("utf-8", "surrogateescape")

    def add(self, key: str, ext: Iterable[str] = ()) -> UidRecord:
        """Give C{key} the next UID and return its record (existing keys keep theirs)."""
        rec = self.byKey.get(key)
        if rec is not None:
            return rec
        uid = self.nextuid
        if uid > MAX_UID:
            raise StoreError("UID space exhausted; the folder needs a new UIDVALIDITY")
        rec = UidRecord(uid, key, tuple(ext))
        self.records.append(rec)
        self.byKey[key] = rec
        self._nextuid = uid + 1
        return rec

    def drop(self, keys: set[str]) -> None:
        """Forget the records of C{keys} (files that are gone); next UID is unchanged."""
        if not keys:
            return
        self._nextuid = self.nextuid
        self.records = [r for r in self.records if r.key not in keys]
        for k in keys:
            self.byKey.pop(k, None)


def _fastParse(ul: UidList, lines: list[str], previous: UidList | None = None) -> bool:
    """Parse records of the common form C{<uid> :<name>} quickly.

    Returns False (leaving C{ul} untouched) when any line needs the careful parser:
    extension fields, a name with C{:} or C{/} or a leading space, UIDs out of order.
    A record equal to one of C{previous} is taken from it.
    """
    body = lines[1:]
    text = "\n".join(body)
    if "/" in text or text.count(":") != len(body):
        return False
    records = []
    prev = 0
    new = tuple.__new__  # UidRecord(uid, name) without the NamedTuple's Python __new__
    known = (previous if previous is not None else _EMPTY).byKey.get
    for line in body:
        num, sep, name = line.partition(" :")
        if not sep or not name or name[0] == " " or not num.isascii() or not num.isdigit():
            return False
        uid = int(num)
        if uid <= prev or uid > MAX_UID:
            return False
        old = known(name)
        if old is not None and old[0] == uid and not old[2]:
            records.append(old)
        else:
            records.append(new(UidRecord, (uid, name, ())))
        prev = uid
    byKey = {r.key: r for r in records}
    if len(byKey) != len(records):
        return False
    ul.records = records
    ul.byKey = byKey
    return True


_EMPTY = UidList(1)
"""A uidlist with no records: what a first read knows of its folder."""


def isDiskFull(e: OSError) -> bool:
    """True when C{e} means the disk or a quota is full."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT)
