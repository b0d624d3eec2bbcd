"""The Sieve grammar (RFC 5228 section 8): tokens and the syntax tree (pure).

L{parse} turns a script's bytes into a list of L{Command}s. It knows nothing about which
commands exist (that is L{pymaild.sieve.checker}); it enforces only the grammar and the
structural limits: how deep blocks and tests nest (L{MAX_NESTING}, Pigeonhole's 32), and
nothing else, since the script size is bounded before parsing.

Strings keep their text after quoting is undone (C{\\"} and C{\\\\}; any other escaped
character stands for itself) and after the dot-stuffing of multi-line strings is undone;
encoded characters and variables are left for the checker and the interpreter, which
know whether their extensions were required.

The parser is a hand-written recursive descent over a tokenizer of precompiled regular
expressions, each anchored at the current position and free of nested quantifiers, so
scanning is linear in the script's size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: How deep blocks and tests may nest (Pigeonhole's SIEVE_MAX_BLOCK_NESTING and
#: SIEVE_MAX_TEST_NESTING are both 32).
MAX_NESTING = 32


class SieveSyntaxError(Exception):
    """A script that cannot be compiled: C{line} (1-based) and what is wrong there."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass
class Tag:
    """A tagged argument such as C{:contains} (name without the colon, lower case)."""

    name: str
    line: int


@dataclass
class Number:
    """A number argument, with its K/M/G quantifier applied."""

    value: int
    line: int


@dataclass
class StringList:
    """A string or a string list argument.

    @ivar single: it was written as one string, not in brackets.
    """

    values: list[str]
    line: int
    single: bool = False


Argument = Tag | Number | StringList


@dataclass
class Test:
    """A test: its name (lower case), arguments and, for C{allof}/C{anyof}/C{not},
    the tests inside it.

    @ivar opts: tagged arguments by name (C{True} or their value), set by the checker.
    @ivar pos: positional arguments' values, set by the checker.
    """

    name: str
    args: list[Argument]
    tests: list[Test]
    line: int
    opts: dict[str, Any] = field(default_factory=dict)
    pos: list[Any] = field(default_factory=list)


@dataclass
class Command:
    """A command: name (lower case), arguments, its tests, and its block, if any.

    @ivar opts: tagged arguments by name (C{True} or their value), set by the checker.
    @ivar pos: positional arguments' values, set by the checker.
    """

    name: str
    args: list[Argument]
    tests: list[Test]
    block: list[Command] | None
    line: int
    opts: dict[str, Any] = field(default_factory=dict)
    pos: list[Any] = field(default_factory=list)


_TOKENS = re.compile(
    rb"""
    (?P<ws>[ \t\r\n]+)
  | (?P<hash>\#[^\n]*)
  | (?P<bracket>/\*)
  | (?P<text>text:)
  | (?P<quote>")
  | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+[KkMmGg]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[\[\](){},;])
    """,
    re.VERBOSE,
)
_QUOTED = re.compile(rb'(?:[^"\\]|\\.)*"', re.DOTALL)
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_TEXT_HEAD = re.compile(rb"[ \t]*(?:\#[^\n]*)?\r?\n")
_MULTIPLIERS = {b"k": 1 << 10, b"m": 1 << 20, b"g": 1 << 30}
#: Numbers are unsigned 32 bit in Pigeonhole (sieve_number_t is uint64 but the grammar
#: says at least 2**31; larger ones are refused).
MAX_NUMBER = (1 << 63) - 1


class _Lexer:
    """Splits a script into (kind, value, line) tokens."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.line = 1

    def _advance(self, end: int) -> None:
        """Move to C{end}, counting the lines passed."""
        self.line += self.data.count(b"\n", self.pos, end)
        self.pos = end

    def tokens(self) -> list[tuple[str, object, int]]:
        """Every token, ending with C{("eof", None, line)}."""
        out: list[tuple[str, object, int]] = []
        data = self.data
        n = len(data)
        while self.pos < n:
            m = _TOKENS.match(data, self.pos)
            if m is None:
                ch = data[self.pos : self.pos + 1]
                raise SieveSyntaxError(self.line, f"unexpected character {ch!r}")
            kind = m.lastgroup
            start = self.line
            if kind in ("ws", "hash"):
                self._advance(m.end())
            elif kind == "bracket":
                end = data.find(b"*/", m.end())
                if end < 0:
                    raise SieveSyntaxError(start, "unterminated comment")
                self._advance(end + 2)
            elif kind == "quote":
                q = _QUOTED.match(data, m.end())
                if q is None:
                    raise SieveSyntaxError(start, "unterminated string")
                raw = data[m.end() : q.end() - 1]
                self._advance(q.end())
                out.append(("string", _decode(_ESCAPE.sub(rb"\1", raw), start), start))
            elif kind == "text":
                out.append(("string", self._multiline(m.end(), start), start))
            elif kind == "tag":
                self._advance(m.end())
                out.append(("tag", m.group().decode("ascii")[1:].lower(), start))
            elif kind == "number":
                self._advance(m.end())
                raw = m.group()
                mult = _MULTIPLIERS.get(raw[-1:].lower(), 1)
                digits = raw[:-1] if mult > 1 else raw
                value = int(digits) * mult
                if value > MAX_NUMBER:
                    raise SieveSyntaxError(start, "number too large")
                out.append(("number", value, start))
            elif kind == "ident":
                self._advance(m.end())
                out.append(("ident", m.group().decode("ascii").lower(), start))
            else:
                self._advance(m.end())
                out.append(("punct", m.group().decode("ascii"), start))
        out.append(("eof", None, self.line))
        return out

    def _multiline(self, pos: int, start: int) -> str:
        """The multi-line string after C{text:} at C{pos} (RFC 5228 section 2.4.2)."""
        data = self.data
        head = _TEXT_HEAD.match(data, pos)
        if head is None:
            raise SieveSyntaxError(start, "text: must be followed by a line end")
        self._advance(head.end())
        lines: list[bytes] = []
        while True:
            end = data.find(b"\n", self.pos)
            if end < 0:
                raise SieveSyntaxError(start, "unterminated multi-line string")
            line = data[self.pos : end + 1]
            self._advance(end + 1)
            bare = line.rstrip(b"\r\n")
            if bare == b".":
                break
            if bare.startswith(b"."):
                line = line[1:]
            lines.append(line)
        text = b"".join(lines).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return _decode(text, start)


def _decode(raw: bytes, line: int) -> str:
    """A string's text: scripts are UTF-8 (RFC 5228 section 2.4.2)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SieveSyntaxError(line, "string is not valid UTF-8") from None


class _Parser:
    """Recursive descent over the tokens of one script."""

    def __init__(self, tokens: list[tuple[str, object, int]]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> tuple[str, object, int]:
        """The next token, not consumed."""
        return self.tokens[self.i]

    def take(self) -> tuple[str, object, int]:
        """The next token, consumed."""
        tok = self.tokens[self.i]
        if tok[0] != "eof":
            self.i += 1
        return tok

    def isPunct(self, char: str) -> bool:
        """Whether the next token is the punctuation C{char}."""
        kind, value, _ = self.peek()
        return kind == "punct" and value == char

    def expect(self, char: str, what: str) -> None:
        """Consume C{char} or fail naming what was expected."""
        kind, value, line = self.take()
        if kind != "punct" or value != char:
            raise SieveSyntaxError(line, f"expected {what}, found {_describe(kind, value)}")

    def commands(self, depth: int, inBlock: bool) -> list[Command]:
        """Commands up to the end of the script (or of the block)."""
        out: list[Command] = []
        while True:
            kind, value, line = self.peek()
            if kind == "eof":
                if inBlock:
                    raise SieveSyntaxError(line, "expected '}', found end of script")
                return out
            if inBlock and kind == "punct" and value == "}":
                return out
            out.append(self.command(depth))

    def command(self, depth: int) -> Command:
        """One command with its arguments and its block or C{;}."""
        kind, value, line = self.take()
        if kind != "ident":
            raise SieveSyntaxError(line, f"expected a command, found {_describe(kind, value)}")
        args, tests = self.arguments(depth)
        block: list[Command] | None = None
        if self.isPunct("{"):
            if depth + 1 > MAX_NESTING:
                raise SieveSyntaxError(line, f"blocks nest deeper than {MAX_NESTING} levels")
            self.take()
            block = self.commands(depth + 1, True)
            self.expect("}", "'}'")
        else:
            self.expect(";", "';' or a block")
        return Command(str(value), args, tests, block, line)

    def arguments(self, depth: int) -> tuple[list[Argument], list[Test]]:
        """Arguments, then one test or a parenthesised test list (RFC 5228 8.2)."""
        args: list[Argument] = []
        while True:
            kind, value, line = self.peek()
            if kind == "tag":
                self.take()
                args.append(Tag(str(value), line))
            elif kind == "number":
                self.take()
                args.append(Number(int(value), line))  # type: ignore[call-overload]
            elif kind == "string":
                self.take()
                args.append(StringList([str(value)], line, single=True))
            elif kind == "punct" and value == "[":
                args.append(self.stringList())
            else:
                break
        tests: list[Test] = []
        kind, value, line = self.peek()
        if kind == "ident":
            tests.append(self.test(depth + 1))
        elif kind == "punct" and value == "(":
            tests = self.testList(depth + 1)
        return args, tests

    def stringList(self) -> StringList:
        """C{[ string *("," string) ]}."""
        _, _, line = self.take()
        values: list[str] = []
        while True:
            kind, value, sline = self.take()
            if kind != "string":
                raise SieveSyntaxError(sline, f"expected a string, found {_describe(kind, value)}")
            values.append(str(value))
            kind, value, sline = self.take()
            if kind == "punct" and value == "]":
                return StringList(values, line)
            if kind != "punct" or value != ",":
                raise SieveSyntaxError(sline,
                                       f"expected ',' or ']', found {_describe(kind, value)}")

    def testList(self, depth: int) -> list[Test]:
        """C{( test *("," test) )}."""
        self.take()
        tests = [self.test(depth)]
        while True:
            kind, value, line = self.take()
            if kind == "punct" and value == ")":
                return tests
            if kind != "punct" or value != ",":
                raise SieveSyntaxError(line, f"expected ',' or ')', found {_describe(kind, value)}")
            tests.append(self.test(depth))

    def test(self, depth: int) -> Test:
        """One test with its arguments."""
        if depth > MAX_NESTING:
            raise SieveSyntaxError(self.peek()[2], f"tests nest deeper than {MAX_NESTING} levels")
        kind, value, line = self.take()
        if kind != "ident":
            raise SieveSyntaxError(line, f"expected a test, found {_describe(kind, value)}")
        args, tests = self.arguments(depth)
        return Test(str(value), args, tests, line)


def _describe(kind: str, value: object) -> str:
    """A token as an error message names it."""
    if kind == "eof":
        return "end of script"
    if kind == "string":
        return "a string"
    if kind == "number":
        return f"number {value}"
    if kind == "tag":
        return f"tag :{value}"
    if kind == "ident":
        return f"identifier {value!r}"
    return f"{value!r}"


def parse(data: bytes) -> list[Command]:
    """The commands of a script.

    @raise SieveSyntaxError: the script does not follow the grammar.
    """
    return _Parser(_Lexer(data).tokens()).commands(0, False)


__all__ = [
    "MAX_NESTING", "Argument", "Command", "Number", "SieveSyntaxError", "StringList", "Tag",
    "Test", "parse",
]
