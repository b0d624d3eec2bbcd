"""Compile a Sieve script: grammar, then commands, arguments and extensions (pure).

L{compileScript} parses a script (L{pymaild.sieve.grammar}) and checks it the way
Pigeonhole's compiler does before anything runs: every command and test must exist and
have its extension in C{require}; tagged and positional arguments must have the right
kinds; comparators, relational operators, date parts and regular expressions must be
valid; C{if}/C{elsif}/C{else} must be in order; C{require} must come first. Errors carry
the line, so ManageSieve's PUTSCRIPT and CHECKSCRIPT can name it.

Each command and test node gets its tagged arguments in C{opts} and its positional ones
in C{pos}. With C{encoded-character} required, C{${hex:...}} and C{${unicode:...}} in
strings are decoded here (RFC 5228 section 2.4.2.4).

C{include} (RFC 6609) is resolved at compile time through a loader: each included
script is compiled once; a script that includes itself, directly or not, is refused
(Pigeonhole's rule), as is nesting deeper than L{Limits.includeDepth} or more than
L{Limits.maxIncludes} includes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from pymaild.address import parsePath
from pymaild.errors import AddressError
from pymaild.sieve.grammar import (
    Command,
    Number,
    SieveSyntaxError,
    StringList,
    Tag,
    Test,
    parse,
)

#: Every extension pymaild implements, as CAPABILITY and C{require} name them.
EXTENSIONS = (
    "fileinto", "reject", "ereject", "envelope", "encoded-character", "imap4flags",
    "variables", "copy", "body", "relational", "subaddress", "date", "index", "mailbox",
    "include", "vacation", "vacation-seconds", "regex", "comparator-i;ascii-numeric",
)
COMPARATORS = {"i;octet", "i;ascii-casemap", "i;ascii-numeric"}
RELATIONS = {"gt", "ge", "lt", "le", "eq", "ne"}


@dataclass(frozen=True)
class Limits:
    """Pigeonhole's limits and their documented defaults.

    @ivar maxScriptSize: C{sieve_max_script_size} (1M).
    @ivar maxActions: C{sieve_max_actions} (32).
    @ivar maxRedirects: C{sieve_max_redirects} (4).
    @ivar maxCpuTime: C{sieve_max_cpu_time} in seconds (30s).
    @ivar includeDepth: C{sieve_include_max_nesting_depth} (10).
    @ivar maxIncludes: C{sieve_include_max_includes} (255).
    @ivar maxVariableSize: C{sieve_variables_max_variable_size} (4k).
    @ivar maxScopeSize: C{sieve_variables_max_scope_size} (255).
    """

    maxScriptSize: int = 1 << 20
    maxActions: int = 32
    maxRedirects: int = 4
    maxCpuTime: float = 30.0
    includeDepth: int = 10
    maxIncludes: int = 255
    maxVariableSize: int = 4096
    maxScopeSize: int = 255


#: Argument kinds: C{s} one string, C{l} a string list, C{n} a number.
_MATCH = {
    "is": (None, None), "contains": (None, None), "matches": (None, None),
    "regex": ("regex", None), "count": ("relational", "s"), "value": ("relational", "s"),
}
_COMPARATOR = {"comparator": (None, "s")}
_ADDRESS_PART = {
    "all": (None, None), "localpart": (None, None), "domain": (None, None),
    "user": ("subaddress", None), "detail": ("subaddress", None),
}
_INDEX = {"index": ("index", "n"), "last": ("index", None)}
_GROUPS = {"match": set(_MATCH), "addresspart": set(_ADDRESS_PART)}


@dataclass(frozen=True)
class _Spec:
    """What a command or test takes: its extension, tags and positional kinds."""

    ext: str | None
    tags: dict[str, tuple[str | None, str | None]]
    positional: tuple[str, ...]
    optionalFirst: bool = False


_T = dict[str, tuple[str | None, str | None]]
_Table = Mapping[str, tuple[str | None, str | None]]


def _tags(*groups: _Table) -> _T:
    """Several tag tables merged."""
    out: _T = {}
    for g in groups:
        out.update(g)
    return out


COMMANDS: dict[str, _Spec] = {
    "require": _Spec(None, {}, ("l",)),
    "if": _Spec(None, {}, ()),
    "elsif": _Spec(None, {}, ()),
    "else": _Spec(None, {}, ()),
    "stop": _Spec(None, {}, ()),
    "keep": _Spec(None, {"flags": ("imap4flags", "l")}, ()),
    "discard": _Spec(None, {}, ()),
    "fileinto": _Spec("fileinto", {
        "copy": ("copy", None), "flags": ("imap4flags", "l"), "create": ("mailbox", None),
    }, ("s",)),
    "redirect": _Spec(None, {"copy": ("copy", None)}, ("s",)),
    "reject": _Spec("reject", {}, ("s",)),
    "ereject": _Spec("ereject", {}, ("s",)),
    "setflag": _Spec("imap4flags", {}, ("s", "l"), optionalFirst=True),
    "addflag": _Spec("imap4flags", {}, ("s", "l"), optionalFirst=True),
    "removeflag": _Spec("imap4flags", {}, ("s", "l"), optionalFirst=True),
    "set": _Spec("variables", {
        "lower": (None, None), "upper": (None, None), "lowerfirst": (None, None),
        "upperfirst": (None, None), "quotewildcard": (None, None),
        "quoteregex": ("regex", None), "length": (None, None),
    }, ("s", "s")),
    "vacation": _Spec("vacation", {
        "days": (None, "n"), "seconds": ("vacation-seconds", "n"), "subject": (None, "s"),
        "from": (None, "s"), "addresses": (None, "l"), "mime": (None, None),
        "handle": (None, "s"),
    }, ("s",)),
    "include": _Spec("include", {
        "personal": (None, None), "global": (None, None), "once": (None, None),
        "optional": (None, None),
    }, ("s",)),
    "return": _Spec("include", {}, ()),
    "global": _Spec("include", {}, ("l",)),
}

TESTS: dict[str, _Spec] = {
    "address": _Spec(None, _tags(_ADDRESS_PART, _COMPARATOR, _MATCH, _INDEX), ("l", "l")),
    "envelope": _Spec("envelope", _tags(_ADDRESS_PART, _COMPARATOR, _MATCH), ("l", "l")),
    "header": _Spec(None, _tags(_COMPARATOR, _MATCH, _INDEX), ("l", "l")),
    "exists": _Spec(None, {}, ("l",)),
    "size": _Spec(None, {"over": (None, "n"), "under": (None, "n")}, ()),
    "true": _Spec(None, {}, ()),
    "false": _Spec(None, {}, ()),
    "not": _Spec(None, {}, ()),
    "allof": _Spec(None, {}, ()),
    "anyof": _Spec(None, {}, ()),
    "body": _Spec("body", _tags(_COMPARATOR, _MATCH, {
        "raw": (None, None), "content": (None, "l"), "text": (None, None)}), ("l",)),
    "string": _Spec("variables", _tags(_COMPARATOR, _MATCH), ("l", "l")),
    "hasflag": _Spec("imap4flags", _tags(_COMPARATOR, _MATCH), ("l", "l"),
                     optionalFirst=True),
    "date": _Spec("date", _tags(_COMPARATOR, _MATCH, _INDEX, {
        "zone": (None, "s"), "originalzone": (None, None)}), ("s", "s", "l")),
    "currentdate": _Spec("date", _tags(_COMPARATOR, _MATCH, {"zone": (None, "s")}),
                         ("s", "l")),
    "mailboxexists": _Spec("mailbox", {}, ("l",)),
}

_ENCODED = re.compile(r"\$\{(hex|unicode):([^}]*)\}", re.IGNORECASE)
_HEXWORD = re.compile(r"[0-9A-Fa-f]+")
_ZONE = re.compile(r"[+-][0-9]{4}\Z")
_VARIABLE_REF = "${"
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def decodeEncoded(text: str) -> str:
    """C{text} with its C{${hex:...}} and C{${unicode:...}} decoded; malformed ones are
    left as they are (RFC 5228 section 2.4.2.4)."""

    def one(m: re.Match[str]) -> str:
        words = m.group(2).split()
        if not all(_HEXWORD.fullmatch(w) for w in words):
            return m.group(0)
        if m.group(1).lower() == "hex":
            if any(len(w) > 2 for w in words):
                words = [w[i : i + 2] for w in words for i in range(0, len(w), 2)]
            try:
                return bytes(int(w, 16) for w in words).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return m.group(0)
        out = []
        for w in words:
            cp = int(w, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise ValueError(f"invalid unicode character {w}")
            out.append(chr(cp))
        return "".join(out)

    return _ENCODED.sub(one, text)


@dataclass
class Script:
    """A compiled script.

    @ivar name: the script's name (for logs and include loops).
    @ivar commands: its checked commands.
    @ivar requires: the extensions it requires.
    @ivar includes: (location, name) → the compiled included script.
    """

    name: str
    commands: list[Command]
    requires: set[str]
    includes: dict[tuple[str, str], Script] = field(default_factory=dict)


#: Loads an included script: (location C{"personal"} or C{"global"}, name) → its bytes,
#: or None when there is no such script.
Loader = Callable[[str, str], bytes | None]


class _Checker:
    """Checks one script's tree against the specs and its C{require}s."""

    def __init__(self, requires: set[str]) -> None:
        self.requires = requires

    def need(self, ext: str | None, line: int, what: str) -> None:
        """Fail unless C{ext} (if any) was required."""
        if ext is not None and ext not in self.requires:
            raise SieveSyntaxError(line, f"{what} requires the {ext!r} extension")

    def strings(self, value: StringList) -> list[str]:
        """The values of a string list, encoded characters decoded when required."""
        if "encoded-character" not in self.requires:
            return value.values
        try:
            return [decodeEncoded(v) for v in value.values]
        except ValueError as e:
            raise SieveSyntaxError(value.line, str(e)) from None

    def arguments(self, node: Command | Test, spec: _Spec, what: str) -> None:
        """Fill C{node.opts} and C{node.pos} from its arguments, checking kinds."""
        args = list(node.args)
        i = 0
        seen: dict[str, str] = {}
        positional: list[Any] = []
        while i < len(args):
            arg = args[i]
            i += 1
            if isinstance(arg, Tag):
                if positional:
                    raise SieveSyntaxError(arg.line, f"{what}: tag :{arg.name} after "
                                                     "positional arguments")
                tagSpec = spec.tags.get(arg.name)
                if tagSpec is None:
                    raise SieveSyntaxError(arg.line, f"{what}: unknown tag :{arg.name}")
                ext, kind = tagSpec
                self.need(ext, arg.line, f":{arg.name}")
                group = next((g for g, names in _GROUPS.items() if arg.name in names),
                             arg.name)
                if group in seen:
                    raise SieveSyntaxError(arg.line, f"{what}: :{arg.name} conflicts with "
                                                     f":{seen[group]}")
                seen[group] = arg.name
                if kind is None:
                    value: Any = True
                else:
                    if i >= len(args):
                        raise SieveSyntaxError(arg.line, f":{arg.name} needs an argument")
                    value = self.value(args[i], kind, f":{arg.name}")
                    i += 1
                if group == "match":
                    node.opts["match"] = arg.name
                    if kind is not None:
                        node.opts["relation"] = value
                elif group == "addresspart":
                    node.opts["part"] = arg.name
                else:
                    node.opts[arg.name] = value
            else:
                positional.append(arg)
        kinds = spec.positional
        if spec.optionalFirst and len(positional) == len(kinds) - 1:
            kinds = kinds[1:]
            node.pos.append(None)
        if len(positional) != len(kinds):
            raise SieveSyntaxError(node.line, f"{what} takes {len(kinds)} positional "
                                              f"argument(s), not {len(positional)}")
        for arg, kind in zip(positional, kinds, strict=True):
            node.pos.append(self.value(arg, kind, what))
        self.semantics(node, what)

    def value(self, arg: Any, kind: str, what: str) -> Any:
        """An argument's value when it is of C{kind}."""
        if kind == "n":
            if not isinstance(arg, Number):
                raise SieveSyntaxError(arg.line, f"{what} expects a number")
            return arg.value
        if not isinstance(arg, StringList):
            raise SieveSyntaxError(arg.line, f"{what} expects a string")
        if kind == "s" and not arg.single:
            if len(arg.values) != 1:
                raise SieveSyntaxError(arg.line, f"{what} expects one string, not a list")
        values = self.strings(arg)
        return values[0] if kind == "s" else values

    def semantics(self, node: Command | Test, what: str) -> None:
        """Checks beyond argument kinds: comparators, relations, date parts, regexes."""
        opts = node.opts
        comparator = opts.get("comparator")
        if comparator is not None:
            if comparator not in COMPARATORS:
                raise SieveSyntaxError(node.line, f"unknown comparator {comparator!r}")
            if comparator == "i;ascii-numeric":
                self.need("comparator-i;ascii-numeric", node.line, "i;ascii-numeric")
        match = opts.get("match")
        if match in ("count", "value") and str(opts["relation"]).lower() not in RELATIONS:
            raise SieveSyntaxError(node.line, f"invalid relational operator "
                                              f"{opts['relation']!r}")
        if "relation" in opts:
            opts["relation"] = str(opts["relation"]).lower()
        if match == "regex" and node.pos:
            if comparator == "i;ascii-numeric":
                raise SieveSyntaxError(node.line, "regex cannot use i;ascii-numeric")
            for key in node.pos[-1]:
                if _VARIABLE_REF in key and "variables" in self.requires:
                    continue
                try:
                    compileRegex(key, comparator != "i;octet")
                except re2.error as e:
                    raise SieveSyntaxError(node.line, f"invalid regular expression "
                                                      f"{key!r}: {e}") from None
        if node.name in ("date", "currentdate"):
            zone = opts.get("zone")
            if zone is not None and not _ZONE.match(zone) and _VARIABLE_REF not in zone:
                raise SieveSyntaxError(node.line, f"invalid time zone {zone!r}")
        if node.name == "redirect" and not (_VARIABLE_REF in node.pos[0]
                                            and "variables" in self.requires):
            try:
                path, rest = parsePath(f"<{node.pos[0].strip()}>")
            except AddressError:
                path, rest = None, ""
            if path is None or rest.strip() or not path.domain:
                raise SieveSyntaxError(node.line, f"invalid redirect address "
                                                  f"{node.pos[0]!r}")
        if node.name == "size" and len(opts) != 1:
            raise SieveSyntaxError(node.line, "size needs exactly one of :over and :under")
        if node.name == "set" and not _VARIABLE_NAME.match(node.pos[0]):
            raise SieveSyntaxError(node.line, f"invalid variable name {node.pos[0]!r}")
        if node.name in ("setflag", "addflag", "removeflag", "hasflag") and node.pos[0]:
            self.need("variables", node.line, f"{node.name} with a variable")
        if "index" in opts and opts["index"] < 1:
            raise SieveSyntaxError(node.line, ":index must be at least 1")
        if "last" in opts and "index" not in opts:
            raise SieveSyntaxError(node.line, ":last needs :index")

    def commands(self, commands: list[Command], top: bool) -> None:
        """Check a block's commands in order."""
        previous: str | None = None
        requireAllowed = top
        for cmd in commands:
            spec = COMMANDS.get(cmd.name)
            if spec is None:
                if cmd.name in TESTS:
                    raise SieveSyntaxError(cmd.line, f"{cmd.name!r} is a test, not a command")
                raise SieveSyntaxError(cmd.line, f"unknown command {cmd.name!r}")
            if cmd.name == "require":
                if not requireAllowed:
                    raise SieveSyntaxError(cmd.line, "require must come before other commands")
            else:
                requireAllowed = False
                self.need(spec.ext, cmd.line, cmd.name)
            if cmd.name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise SieveSyntaxError(cmd.line, f"{cmd.name} without a preceding if")
            if cmd.name in ("if", "elsif"):
                if len(cmd.tests) != 1:
                    raise SieveSyntaxError(cmd.line, f"{cmd.name} needs exactly one test")
                if cmd.block is None:
                    raise SieveSyntaxError(cmd.line, f"{cmd.name} needs a block")
            elif cmd.name == "else":
                if cmd.tests or cmd.block is None:
                    raise SieveSyntaxError(cmd.line, "else takes a block and no test")
            else:
                if cmd.tests:
                    raise SieveSyntaxError(cmd.line, f"{cmd.name} takes no test")
                if cmd.block is not None:
                    raise SieveSyntaxError(cmd.line, f"{cmd.name} takes no block")
            if cmd.name != "require":
                self.arguments(cmd, spec, cmd.name)
            for test in cmd.tests:
                self.test(test)
            if cmd.block is not None:
                self.commands(cmd.block, False)
            previous = cmd.name

    def test(self, test: Test) -> None:
        """Check one test and the tests inside it."""
        spec = TESTS.get(test.name)
        if spec is None:
            if test.name in COMMANDS:
                raise SieveSyntaxError(test.line, f"{test.name!r} is a command, not a test")
            raise SieveSyntaxError(test.line, f"unknown test {test.name!r}")
        self.need(spec.ext, test.line, test.name)
        if test.name == "not" and len(test.tests) != 1:
            raise SieveSyntaxError(test.line, "not takes exactly one test")
        if test.name in ("allof", "anyof"):
            if not test.tests:
                raise SieveSyntaxError(test.line, f"{test.name} needs a test list")
        elif test.name != "not" and test.tests:
            raise SieveSyntaxError(test.line, f"{test.name} takes no tests")
        self.arguments(test, spec, test.name)
        for inner in test.tests:
            self.test(inner)


def compileRegex(pattern: str, caseless: bool) -> Any:
    """C{pattern} as a POSIX extended regular expression in RE2 (linear time: no
    backtracking, whatever the pattern).

    @raise re2.error: the pattern is not valid.
    """
    options = re2.Options()
    options.posix_syntax = True
    options.longest_match = True
    options.perl_classes = True
    options.word_boundary = True
    options.case_sensitive = not caseless
    options.dot_nl = True
    options.max_mem = 8 << 20
    options.log_errors = False
    return re2.compile(pattern, options)


def _requires(commands: list[Command]) -> set[str]:
    """The extensions named by the leading C{require} commands."""
    out: set[str] = set()
    for cmd in commands:
        if cmd.name != "require":
            break
        for arg in cmd.args:
            if not isinstance(arg, StringList) or cmd.tests or cmd.block is not None:
                raise SieveSyntaxError(cmd.line, "require takes a string list")
            for name in arg.values:
                if name.lower() not in EXTENSIONS:
                    raise SieveSyntaxError(cmd.line, f"unsupported extension {name!r}")
                out.add(name.lower())
        if len(cmd.args) != 1:
            raise SieveSyntaxError(cmd.line, "require takes one string list")
    if "vacation-seconds" in out:
        out.add("vacation")
    if "ereject" in out:
        out.add("reject")
    return out


def _includeNames(commands: list[Command]) -> list[Command]:
    """Every C{include} command of a checked tree, blocks included."""
    out = []
    for cmd in commands:
        if cmd.name == "include":
            out.append(cmd)
        if cmd.block:
            out.extend(_includeNames(cmd.block))
    return out


def compileScript(data: bytes, name: str = "script", loader: Loader | None = None,
                  limits: Limits | None = None) -> Script:
    """Parse and check a script and the scripts it includes.

    @raise SieveSyntaxError: the script (or one it includes) is not valid; for an
        included script the message names it.
    """
    limits = limits or Limits()
    counter = [0]
    return _compile(data, name, "personal", loader, limits, [], counter)


def _compile(data: bytes, name: str, location: str, loader: Loader | None, limits: Limits,
             stack: list[tuple[str, str]], counter: list[int]) -> Script:
    """L{compileScript} for one script of an include tree."""
    if len(data) > limits.maxScriptSize:
        raise SieveSyntaxError(1, f"script is larger than {limits.maxScriptSize} bytes")
    commands = parse(data)
    requires = _requires(commands)
    _Checker(requires).commands(commands, True)
    script = Script(name, commands, requires)
    key = (location, name)
    for cmd in _includeNames(commands):
        target = cmd.pos[0]
        where = "global" if cmd.opts.get("global") else "personal"
        tkey = (where, target)
        if tkey in script.includes:
            continue
        if tkey == key or tkey in stack:
            raise SieveSyntaxError(cmd.line, f"circular include of script {target!r}")
        if len(stack) + 1 >= limits.includeDepth:
            raise SieveSyntaxError(cmd.line, f"include nests deeper than "
                                             f"{limits.includeDepth} levels")
        counter[0] += 1
        if counter[0] > limits.maxIncludes:
            raise SieveSyntaxError(cmd.line, f"more than {limits.maxIncludes} includes")
        body = loader(where, target) if loader is not None else None
        if body is None:
            if cmd.opts.get("optional"):
                continue
            raise SieveSyntaxError(cmd.line, f"included script {target!r} does not exist")
        try:
            script.includes[tkey] = _compile(body, target, where, loader, limits,
                                             [*stack, key], counter)
        except SieveSyntaxError as e:
            if e.message.startswith("in included script"):
                raise SieveSyntaxError(cmd.line, e.message) from None
            raise SieveSyntaxError(cmd.line, f"in included script {target!r}: line "
                                             f"{e.line}: {e.message}") from None
    return script


__all__ = [
    "COMMANDS", "EXTENSIONS", "Limits", "Loader", "Script", "SieveSyntaxError", "TESTS",
    "compileRegex", "compileScript", "decodeEncoded",
]
