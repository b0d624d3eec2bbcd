"""IMAP command syntax: a reader over an assembled command and the response serialiser.

A command arrives as text pieces and literals (``{n}``/``{n+}``) that the protocol has
already collected; L{Reader} walks them with one method per grammar element of RFC 3501
§9 (atom, astring, quoted, literal, parenthesised list, sequence set). L{SequenceSet}
keeps ranges as they were written, so ``1:4294967295`` costs nothing. L{serialise}
turns nested Python values into IMAP data, choosing quoted strings or literals.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from pymaild.store import mutf7

MAX_DEPTH = 32
"""Maximum nesting depth of parenthesised lists in a command."""

MAX_NUMBER = 4294967295


def boundedInt(digits: bytes) -> int:
    """The value of a run of ASCII digits, saturating at C{10**20}.

    No IMAP number needs more than 20 digits, and Python refuses to convert more than
    4300 (C{ValueError}), so longer numbers only need to be known as out of range.
    """
    digits = digits.lstrip(b"0")
    if len(digits) > 20:
        return 10**20
    return int(digits or b"0")


_PARTIAL_RE = re.compile(rb"<(?P<a>[0-9]+)\.(?P<b>[1-9][0-9]*)>")


def partialRange(text: bytes, pos: int) -> tuple[tuple[int, int] | None, int]:
    """The C{<start.count>} of a FETCH section at C{text[pos:]}, if any, and the position
    after it (RFC 3501 section 6.4.5; BINARY uses the same form).

    @raise BadCommand: a malformed or out-of-range range.
    """
    pm = _PARTIAL_RE.match(text, pos)
    if pm:
        partial = (boundedInt(pm.group("a")), boundedInt(pm.group("b")))
        if partial[0] > 4294967295 or partial[1] > 4294967295:
            raise BadCommand("partial range out of range")
        return partial, pm.end()
    if text[pos : pos + 1] == b"<":
        raise BadCommand("malformed partial range")
    return None, pos


class BadCommand(Exception):
    """The command is syntactically wrong: the client gets a tagged BAD."""


class NoCommand(Exception):
    """The command cannot be carried out: the client gets a tagged NO (text may hold a code)."""


class Literal:
    """A literal of a command: small ones in memory, large APPEND ones in a spool file."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: bytes | None = None
        self.file: IO[bytes] | None = None
        self.path: str | None = None
        self.error: BaseException | None = None
        """Why the literal could not be kept (spooling it failed), or C{None}."""
        self.binary = False
        """Whether it came as a literal8 (C{~{n}}, RFC 3516)."""

    def bytes(self) -> bytes:
        """The literal's content (only for in-memory literals)."""
        if self.data is None:
            raise BadCommand("literal too large for this argument")
        return self.data

    def discard(self) -> None:
        """Close and remove the spool file, if any (blocking: call it via the disk runner)."""
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None


_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x00, 0x20)) | {0x7F}
_ATOM_RE = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f]+')
_ASTRING_RE = re.compile(rb'[^(){ %*"\\\x00-\x1f\x7f]+')
_LIST_MAILBOX_RE = re.compile(rb'[^(){ "\\\x00-\x1f\x7f]+')
_NUMBER_RE = re.compile(rb"\d+")
_SEQ_RE = re.compile(rb"[0-9*:,]+")


class Reader:
    """Walks a command given as alternating text pieces and L{Literal}s.

    Every method consumes one grammar element and raises L{BadCommand} when the input
    does not match.
    """

    saved: Callable[[bool], SequenceSet] | None = None
    """Gives C{$} (the saved search result) as UIDs (True) or sequence numbers."""
    uidMode = False
    """Whether the command is a UID command (then C{$} is a set of UIDs)."""
    utf8 = False
    """Whether mailbox names are UTF-8 (ENABLE UTF8=ACCEPT or IMAP4rev2)."""
    utf8Accept = False
    """Whether UTF8=ACCEPT is enabled (no SEARCH CHARSET, APPEND's UTF8 form)."""
    """Whether the session ENABLEd UTF8=ACCEPT (RFC 6855): mailbox names are UTF-8."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = [p for p in parts if not (isinstance(p, bytes) and p == b"")] or [b""]
        self.index = 0
        self.pos = 0
        self.depth = 0

    # -- low level -----------------------------------------------------------------
    def _text(self) -> bytes | None:
        """The current text piece, or None when the next item is a literal or the end."""
        while self.index < len(self.parts):
            p = self.parts[self.index]
            if isinstance(p, Literal):
                return None
            if self.pos < len(p):
                return p
            self.index += 1
            self.pos = 0
        return None

    def atEnd(self) -> bool:
        """Whether the whole command has been consumed."""
        return self._text() is None and self.index >= len(self.parts)

    def peek(self) -> int | None:
        """The next byte (as int), or None at a literal or the end."""
        t = self._text()
        if t is None:
            return None
        return t[self.pos]

    def atLiteral(self) -> bool:
        """Whether the next item is a literal."""
        return (
            self._text() is None
            and self.index < len(self.parts)
            and isinstance(self.parts[self.index], Literal)
        )

    def end(self) -> None:
        """Require the end of the command."""
        if not self.atEnd():
            raise BadCommand("unexpected extra arguments")

    def sp(self) -> None:
        """Require one space."""
        if self.peek() != 0x20:
            raise BadCommand("expected a space")
        self.pos += 1

    def maybeSp(self) -> bool:
        """Consume a space if there is one."""
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def expect(self, token: bytes) -> None:
        """Require the exact (case-insensitive) text C{token}."""
        t = self._text()
        if t is None or t[self.pos : self.pos + len(token)].upper() != token.upper():
            raise BadCommand(f"expected {token.decode()}")
        self.pos += len(token)

    def lookingAt(self, token: bytes) -> bool:
        """Whether the next text starts with C{token} (case-insensitive)."""
        t = self._text()
        return t is not None and t[self.pos : self.pos + len(token)].upper() == token.upper()

    def _match(self, regex: re.Pattern[bytes], what: str) -> bytes:
        t = self._text()
        if t is None:
            raise BadCommand(f"expected {what}")
        m = regex.match(t, self.pos)
        if not m:
            raise BadCommand(f"expected {what}")
        self.pos = m.end()
        return m.group()

    # -- grammar elements ----------------------------------------------------------
    def atom(self) -> bytes:
        """An atom."""
        return self._match(_ATOM_RE, "an atom")

    def word(self) -> bytes:
        """Anything up to the next space, parenthesis or end (flags, dates, labels)."""
        return self._match(re.compile(rb"[^ ()\x00-\x1f\x7f]+"), "an argument")

    def number(self) -> int:
        """A number (at most 32 bits)."""
        n = boundedInt(self._match(_NUMBER_RE, "a number"))
        if n > MAX_NUMBER:
            raise BadCommand("number out of range")
        return n

    def quoted(self) -> bytes:
        """A quoted string with \\\\ and \\" escapes; NUL is refused (RFC 3501 CHAR)."""
        t = self._text()
        if t is None or t[self.pos] != 0x22:
            raise BadCommand("expected a quoted string")
        out = bytearray()
        i = self.pos + 1
        while i < len(t):
            c = t[i]
            if c == 0x22:
                self.pos = i + 1
                return bytes(out)
            if c == 0x00:
                raise BadCommand("NUL in quoted string")
            if c == 0x5C:
                i += 1
                if i >= len(t) or t[i] not in (0x22, 0x5C):
                    raise BadCommand("bad escape in quoted string")
                c = t[i]
            out.append(c)
            i += 1
        raise BadCommand("unterminated quoted string")

    def literal(self) -> Literal:
        """A literal."""
        if not self.atLiteral():
            raise BadCommand("expected a literal")
        lit = self.parts[self.index]
        self.index += 1
        self.pos = 0
        return lit

    def string(self) -> bytes:
        """A quoted string or a literal."""
        if self.atLiteral():
            return self.literal().bytes()
        return self.quoted()

    def astring(self) -> bytes:
        """An atom (with ]), quoted string or literal."""
        if self.atLiteral():
            return self.literal().bytes()
        if self.peek() == 0x22:
            return self.quoted()
        return self._match(_ASTRING_RE, "a string")

    def nstring(self) -> bytes | None:
        """A string or NIL."""
        if self.lookingAt(b"NIL") and not self._followedByAtomChar(3):
            self.pos += 3
            return None
        return self.string()

    def listMailbox(self) -> bytes:
        """A LIST pattern: like astring but with % and * allowed."""
        if self.atLiteral():
            return self.literal().bytes()
        if self.peek() == 0x22:
            return self.quoted()
        return self._match(_LIST_MAILBOX_RE, "a mailbox pattern")

    def _followedByAtomChar(self, n: int) -> bool:
        t = self._text()
        return t is not None and self.pos + n < len(t) and t[self.pos + n] not in _ATOM_SPECIALS

    def enter(self, what: str, limit: int = MAX_DEPTH) -> None:
        """Count one level of nesting (a parenthesis, a SEARCH NOT or OR) against C{limit}.

        Every nested construct of a command counts on one counter, so no mix of them
        can recurse deeper than the limit.

        @raise BadCommand: the command nests deeper than C{limit}.
        """
        self.depth += 1
        if self.depth > limit:
            raise BadCommand(f"{what} nested too deeply (at most {limit} levels)")

    def leave(self) -> None:
        """Close a level counted by L{enter}."""
        self.depth -= 1

    def openParen(self) -> None:
        """Consume C{(} and track the nesting depth."""
        if self.peek() != 0x28:
            raise BadCommand("expected (")
        self.enter("parentheses")
        self.pos += 1

    def closeParen(self) -> None:
        """Consume C{)}."""
        if self.peek() != 0x29:
            raise BadCommand("expected )")
        self.leave()
        self.pos += 1

    def flagList(self) -> list[str]:
        """A parenthesised list of flags (system flags and keywords)."""
        self.openParen()
        flags: list[str] = []
        while self.peek() != 0x29:
            if flags:
                self.sp()
            flags.append(self.flag())
        self.closeParen()
        return flags

    def flag(self) -> str:
        """One flag: C{\\Atom} or a keyword atom."""
        prefix = b""
        if self.peek() == 0x5C:
            self.pos += 1
            prefix = b"\\"
        try:
            return (prefix + self.atom()).decode("ascii")
        except UnicodeDecodeError:
            raise BadCommand("flags must be ASCII") from None

    def flagsArgument(self) -> list[str]:
        """Flags for STORE: a parenthesised list or flags separated by spaces."""
        if self.peek() == 0x28:
            return self.flagList()
        flags = [self.flag()]
        while self.maybeSp():
            flags.append(self.flag())
        return flags

    def seqset(self) -> SequenceSet:
        """A sequence set (numbers, ranges, C{*}), or C{$}: the saved search result
        (SEARCHRES, RFC 5182), in the command's terms (UIDs for a UID command)."""
        if self.peek() == 0x24:
            return self.savedResult(self.uidMode)
        return SequenceSet.parse(self._match(_SEQ_RE, "a sequence set"))

    def savedResult(self, asUids: bool) -> SequenceSet:
        """C{$} as a set of UIDs or of sequence numbers.

        @raise BadCommand: there is no saved result here (no mailbox selected).
        """
        t = self._text()
        if t is None or t[self.pos : self.pos + 1] != b"$":
            raise BadCommand("expected $")
        if self._followedByAtomChar(1):
            raise BadCommand("$ cannot be combined with other numbers")
        if self.saved is None:
            raise BadCommand("no search result to refer to")
        self.pos += 1
        return self.saved(asUids)

    def rest(self) -> bytes:
        """All remaining text of the current piece (used by FETCH attribute parsing)."""
        t = self._text()
        if t is None:
            return b""
        r = t[self.pos :]
        self.pos = len(t)
        return r

    def parenthesised(self) -> bytes:
        """The raw text of a balanced parenthesised list at this point (no literal or
        quoted parenthesis inside), e.g. C{(UID BODY.PEEK[HEADER.FIELDS (FROM)])}.

        @raise BadCommand: no list here, or it is not closed in this text piece.
        """
        t = self._text()
        if t is None or t[self.pos:self.pos + 1] != b"(":
            raise BadCommand("expected a parenthesised list")
        depth = 0
        for i in range(self.pos, len(t)):
            c = t[i]
            if c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1
                if depth == 0:
                    out = t[self.pos:i + 1]
                    self.pos = i + 1
                    return out
            elif c == 0x22:
                break
        raise BadCommand("unterminated parenthesised list")

    def skipRestForError(self) -> None:
        """Consume everything (used after errors)."""
        self.index = len(self.parts)


@dataclass(frozen=True)
class SequenceSet:
    """A sequence or UID set kept as ranges; C{None} stands for C{*}.

    Nothing is ever expanded into a list: membership and iteration work on the ranges.
    """

    ranges: tuple[tuple[int | None, int | None], ...]

    @classmethod
    def parse(cls, text: bytes) -> SequenceSet:
        """Parse C{1,3:5,7:*}.

        @raise BadCommand: malformed set or zero.
        """
        ranges = []
        for item in text.split(b","):
            if not item:
                raise BadCommand("empty element in sequence set")
            lo, sep, hi = item.partition(b":")
            a = cls._num(lo)
            b = cls._num(hi) if sep else a
            ranges.append((a, b))
        return cls(tuple(ranges))

    @staticmethod
    def _num(t: bytes) -> int | None:
        if t == b"*":
            return None
        if not t.isdigit():
            raise BadCommand(f"bad number {t.decode('ascii', 'replace')!r} in sequence set")
        n = boundedInt(t)
        if n == 0 or n > MAX_NUMBER:
            raise BadCommand("sequence number out of range")
        return n

    def resolved(self, star: int) -> list[tuple[int, int]]:
        """Ranges as ordered (low, high) pairs with C{*} replaced by C{star}."""
        out = []
        for a, b in self.ranges:
            x = star if a is None else a
            y = star if b is None else b
            out.append((min(x, y), max(x, y)))
        return out

    def merged(self, star: int) -> list[tuple[int, int]]:
        """L{resolved} ranges sorted and merged: disjoint, ascending (cached per C{star}).

        A 64 KiB command holds some 30,000 ranges; walking them for every message (or
        every message for each of them) made one command cost minutes on a big mailbox.
        """
        cached = self.__dict__.get("_merged")
        if cached is not None and cached[0] == star:
            return cached[1]
        out: list[tuple[int, int]] = []
        for lo, hi in sorted(self.resolved(star)):
            if out and lo <= out[-1][1] + 1:
                if hi > out[-1][1]:
                    out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        object.__setattr__(self, "_merged", (star, out))
        return out

    def __contains__(self, item: object) -> bool:
        raise TypeError("use contains(n, star)")

    def contains(self, n: int, star: int) -> bool:
        """Whether C{n} is in the set when C{*} means C{star}."""
        ranges = self.merged(star)
        i = bisect.bisect_right(ranges, (n, MAX_NUMBER + 1)) - 1
        return i >= 0 and ranges[i][1] >= n

    def __str__(self) -> str:
        parts = []
        for a, b in self.ranges:
            x = "*" if a is None else str(a)
            y = "*" if b is None else str(b)
            parts.append(x if a == b else f"{x}:{y}")
        return ",".join(parts)


@dataclass(frozen=True)
class SavedSet(SequenceSet):
    """C{$} resolved for a command: numbers the server chose, so never out of range."""

    @classmethod
    def of(cls, numbers: Iterable[int]) -> SavedSet:
        """The set of C{numbers} (ascending) as ranges."""
        ranges: list[tuple[int | None, int | None]] = []
        for n in numbers:
            if ranges and ranges[-1][1] == n - 1:
                ranges[-1] = (ranges[-1][0], n)
            else:
                ranges.append((n, n))
        return cls(tuple(ranges))


def compressUids(uids: Iterable[int]) -> bytes:
    """A compact sequence set for sorted-or-not UIDs, e.g. C{1:3,7} (order kept as given)."""
    out: list[str] = []
    start = prev = None
    for u in uids:
        if start is None:
            start = prev = u
        elif u == prev + 1:  # type: ignore[operator]
            prev = u
        else:
            out.append(str(start) if start == prev else f"{start}:{prev}")
            start = prev = u
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out).encode("ascii")


class Atom(bytes):
    """Bytes that L{serialise} writes as they are (atoms, flags, numbers)."""


NIL = None

_QUOTABLE = re.compile(rb'[\x20-\x7e]*')


_stringMemo: dict[bytes, bytes] = {}
_STRING_MEMO_MAX = 16384
_STRING_MEMO_LEN = 64


def serialiseString(value: bytes | str | None) -> bytes:
    """A quoted string when possible, else a literal; None becomes NIL.

    Short values are memoised: structure responses repeat the same few strings
    (C{"text"}, C{"plain"}, C{"charset"}, boundaries, domains) for every message.
    """
    if value is None:
        return b"NIL"
    if type(value) is not bytes:
        value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    out = _stringMemo.get(value)
    if out is not None:
        return out
    if len(value) < 1024 and _QUOTABLE.fullmatch(value):
        quoted = value
        if b"\\" in value or b'"' in value:
            quoted = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        out = b'"' + quoted + b'"'
    else:
        out = b"{%d}\r\n" % len(value) + value
    if len(value) <= _STRING_MEMO_LEN:
        if len(_stringMemo) >= _STRING_MEMO_MAX:
            _stringMemo.clear()
        _stringMemo[value] = out
    return out


def serialise(value: Any) -> bytes:
    """Serialise nested lists/tuples of bytes, str, int, L{Atom} and None."""
    out: list[bytes] = []
    _serialiseInto(value, out)
    return b"".join(out)


def _serialiseInto(value: Any, out: list[bytes]) -> None:
    """Append the serialisation of C{value} to C{out} (recursive, no generators: this
    runs for every ENVELOPE and BODYSTRUCTURE)."""
    t = type(value)
    if value is None:
        out.append(b"NIL")
    elif t is bytes:
        out.append(serialiseString(value))
    elif t is list or t is tuple:
        if not value:
            out.append(b"()")
            return
        out.append(b"(")
        for v in value:
            _serialiseInto(v, out)
            out.append(b" ")
        out[-1] = b")"
    elif isinstance(value, Atom):
        out.append(bytes(value))
    elif isinstance(value, (bytes, str)):
        out.append(serialiseString(value))
    elif isinstance(value, bool):
        raise TypeError("bool in IMAP data")
    elif isinstance(value, int):
        out.append(b"%d" % value)
    elif isinstance(value, (list, tuple)):
        _serialiseInto(list(value), out)
    else:
        raise TypeError(f"cannot serialise {type(value).__name__}")


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def encodeMailbox(name: str, utf8: bool = False) -> bytes:
    """A folder name as IMAP shows it: modified UTF-7 (or, with C{utf8}, for a
    session that ENABLEd UTF8=ACCEPT, UTF-8), quoted or literal."""
    if utf8:
        raw = name.encode("utf-8")
        if _CONTROL.search(raw) is None and len(raw) < 1024:
            # RFC 6855 section 3: a quoted string may carry UTF-8 once it is enabled.
            return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return serialiseString(raw)
    return serialiseString(mutf7.encode(name).encode("ascii"))


def decodeUTF8Name(raw: bytes) -> str:
    """A mailbox name (or pattern) sent in UTF-8 after ENABLE UTF8=ACCEPT (RFC 6855).

    @raise NoCommand: not valid UTF-8, or control characters in it.
    """
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NoCommand("[CANNOT] Mailbox name is not valid UTF-8") from None
    if any(c < " " or "\x7f" <= c < "\xa0" for c in name):
        raise NoCommand("[CANNOT] Control characters in mailbox name")
    return name


def decodeMailbox(raw: bytes, utf8: bool = False) -> str:
    """Decode a mailbox name from modified UTF-7 (with C{utf8}: UTF-8, see
    L{decodeUTF8Name}); INBOX is case-insensitive.

    Decoding is strict (L{pymaild.store.mutf7.decode}): only the one canonical spelling
    of a name is accepted, so two spellings never reach one folder. Twisted's codec
    accepted a lone C{&}, unterminated shifts and encoded ASCII (C{&AGE-} for C{a}).

    @raise NoCommand: the name is not valid modified UTF-7 (or UTF-8).
    """
    if utf8:
        name = decodeUTF8Name(raw)
    else:
        try:
            name = mutf7.decode(raw.decode("ascii"))
        except UnicodeDecodeError:
            raise NoCommand("[CANNOT] Mailbox name is not valid modified UTF-7: "
                            "8-bit characters") from None
        except mutf7.MUTF7Error as e:
            raise NoCommand(
                f"[CANNOT] Mailbox name is not valid modified UTF-7: {e}") from None
    if name.upper() == "INBOX":
        return "INBOX"
    if name[:6].upper() == "INBOX/":
        return "INBOX" + name[5:]
    return name


def optionList(r: Reader, allowed: frozenset[bytes], what: str,
               after: Callable[[bytes, set[bytes]], None] | None = None) -> set[bytes]:
    """A parenthesised list of option atoms, each one of C{allowed} (upper-cased);
    C{after(option, seen)} runs after each, to read an option's own argument.

    @param what: names the list in the error, e.g. C{"LIST return"}.
    @raise BadCommand: an unknown option or a malformed list.
    """
    r.openParen()
    found: set[bytes] = set()
    while r.peek() != 0x29:
        if found:
            r.sp()
        opt = r.atom().upper()
        if opt not in allowed:
            raise BadCommand(f"unknown {what} option " + opt.decode("ascii", "replace"))
        if after is not None:
            after(opt, found)
        found.add(opt)
    r.closeParen()
    return found
