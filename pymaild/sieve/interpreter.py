"""Run a compiled Sieve script over one message: decide its actions (pure, blocking).

L{evaluate} walks the checked tree of L{pymaild.sieve.checker.compileScript} and returns
a L{pymaild.sieve.actions.Result}. It performs nothing: storing, redirecting and
answering are delivery's work. It raises L{SieveRuntimeError} when the script fails at
run time (too many actions or redirects, conflicting actions, an invalid redirect
address, its CPU time used up); the caller then keeps the message in INBOX unchanged.

Work is bounded: every test and command costs a step, and every 64 steps the thread's CPU
time is compared with L{pymaild.sieve.checker.Limits.maxCpuTime}; matching is linear
(RE2), there are no loops in the language as implemented, variables are cut at
C{maxVariableSize}, so the check is reached often enough to stop any script in time.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymaild.address import parsePath
from pymaild.errors import AddressError
from pymaild.sieve.actions import Redirect, Reject, Result, Store, Vacation
from pymaild.sieve.checker import Limits, Script
from pymaild.sieve.grammar import Command, Test
from pymaild.sieve.match import Matcher, asciiLower
from pymaild.sieve.message import MessageView, addresses, partText
from pymaild.store.names import INBOX

#: Pigeonhole's vacation periods (sieve_vacation_min_period, _default_period,
#: _max_period): one day, seven days, and no upper limit (0).
VACATION_MIN = 86400
VACATION_DEFAULT = 7 * 86400
VACATION_MAX = 0

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+)\}")
_WILDCARDS = re.compile(r"([*?\\])")
_REGEX_SPECIALS = re.compile(r"([\\^$.\[\]|()?*+{}])")
_SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
                                         "\\Draft")}


class SieveRuntimeError(Exception):
    """The script failed while running; the message must be kept as it is."""


class _Stop(Exception):
    """C{stop}: end the whole script."""


class _Return(Exception):
    """C{return}: end the current (included) script."""


@dataclass
class SieveEnvelope:
    """The SMTP envelope as the C{envelope} test sees it.

    @ivar sender: the reverse-path without brackets (C{""} for the null sender).
    @ivar recipient: the forward-path that reached this account.
    """

    sender: str
    recipient: str


def normaliseFlags(flags: list[str]) -> list[str]:
    """Space-separated flag strings as a list of distinct flags (system flags in their
    usual case, keywords as written, the first spelling kept)."""
    out: dict[str, str] = {}
    for item in flags:
        for flag in item.split():
            system = _SYSTEM_FLAGS.get(flag.lower())
            if flag.startswith("\\") and system is None:
                continue
            out.setdefault(flag.lower(), system or flag)
    return list(out.values())


class Interpreter:
    """One run of one script over one message.

    @param script: the compiled script.
    @param message: the message.
    @param envelope: its envelope.
    @param limits: the limits (actions, redirects, CPU time, variable sizes).
    @param mailboxExists: folder name → whether the account has it (C{mailboxexists}).
    @param now: the POSIX time C{currentdate} sees.
    @param localZone: the local zone's offset east of UTC in minutes (the date tests'
        default zone).
    @param clock: CPU seconds of the running thread (tests pass a fake).
    """

    def __init__(self, script: Script, message: MessageView, envelope: SieveEnvelope,
                 limits: Limits | None = None,
                 mailboxExists: Callable[[str], bool] | None = None,
                 now: float | None = None, localZone: int | None = None,
                 clock: Callable[[], float] = time.thread_time) -> None:
        self.script = script
        self.message = message
        self.envelope = envelope
        self.limits = limits or Limits()
        self.mailboxExists = mailboxExists or (lambda name: name == INBOX)
        self.now = time.time() if now is None else now
        if localZone is None:
            localZone = -(time.altzone if time.localtime(self.now).tm_isdst > 0
                          else time.timezone) // 60
        self.localZone = localZone
        self.clock = clock
        self.result = Result()
        self.flags: list[str] = []
        self.globals: dict[str, str] = {}
        self.included: set[tuple[str, str]] = set()
        self.steps = 0
        self.deadline = clock() + self.limits.maxCpuTime
        self.redirectCount = 0

    # -- running ------------------------------------------------------------------------

    def run(self) -> Result:
        """Run the script; the decided L{Result}.

        @raise SieveRuntimeError: the script failed (the caller keeps the message).
        """
        try:
            self.runScript(self.script)
        except _Stop:
            pass
        self.result.flags = tuple(self.flags)
        return self.result

    def runScript(self, script: Script) -> None:
        """Run one script of the include tree in a scope of its own."""
        scope = _Scope(self, script)
        try:
            scope.block(script.commands)
        except _Return:
            pass

    def tick(self) -> None:
        """Count one step; every 64, check the CPU time used."""
        self.steps += 1
        if self.steps & 63 == 0 and self.clock() > self.deadline:
            raise SieveRuntimeError(f"CPU time limit of {self.limits.maxCpuTime:g}s "
                                    "exceeded")

    def add(self, action: Store | Redirect | Reject | Vacation) -> None:
        """Add an action to the result, checking the limits and conflicts."""
        result = self.result
        if len(result.actions) >= self.limits.maxActions:
            raise SieveRuntimeError(f"more than {self.limits.maxActions} actions")
        if isinstance(action, Reject):
            if result.reject() is not None:
                raise SieveRuntimeError("duplicate reject action")
            if any(isinstance(a, (Store, Redirect)) for a in result.actions):
                raise SieveRuntimeError("reject conflicts with other actions")
        elif isinstance(action, (Store, Redirect)) and result.reject() is not None:
            raise SieveRuntimeError("reject conflicts with other actions")
        if isinstance(action, Vacation) and result.vacation() is not None:
            raise SieveRuntimeError("duplicate vacation action")
        if isinstance(action, Redirect):
            if action.address in result.redirects():
                return
            self.redirectCount += 1
            if self.redirectCount > self.limits.maxRedirects:
                raise SieveRuntimeError(f"more than {self.limits.maxRedirects} redirects")
        if isinstance(action, Store):
            for i, old in enumerate(result.actions):
                if isinstance(old, Store) and old.folder == action.folder:
                    result.actions[i] = Store(old.folder, tuple(normaliseFlags(
                        [*old.flags, *action.flags])), old.create or action.create)
                    return
        result.actions.append(action)


class _Scope:
    """The local variables of one script in the include tree, and its evaluation."""

    def __init__(self, run: Interpreter, script: Script) -> None:
        self.run = run
        self.script = script
        self.variables: dict[str, str] = {}
        self.globalNames: set[str] = set()
        self.hasVariables = "variables" in script.requires
        self.matchVars: list[str] = []

    # -- variables ----------------------------------------------------------------------

    def lookup(self, name: str) -> str:
        """The value of a variable (C{""} when unset)."""
        if name.isdigit():
            i = int(name)
            return self.matchVars[i] if i < len(self.matchVars) else ""
        name = name.lower()
        if name in self.globalNames:
            return self.run.globals.get(name, "")
        return self.variables.get(name, "")

    def assign(self, name: str, value: str) -> None:
        """Set a variable (cut to the size limit)."""
        limits = self.run.limits
        value = value[: limits.maxVariableSize]
        name = name.lower()
        if name in self.globalNames:
            self.run.globals[name] = value
            return
        if name not in self.variables and len(self.variables) >= limits.maxScopeSize:
            raise SieveRuntimeError(f"more than {limits.maxScopeSize} variables")
        self.variables[name] = value

    def expand(self, text: str) -> str:
        """C{text} with its variable references replaced (RFC 5229 section 3)."""
        if not self.hasVariables or "${" not in text:
            return text
        out = _VARIABLE.sub(lambda m: self.lookup(m.group(1)), text)
        return out[: max(len(text), self.run.limits.maxVariableSize * 4)]

    def strings(self, values: list[str]) -> list[str]:
        """A string list with variables expanded."""
        return [self.expand(v) for v in values]

    # -- commands -----------------------------------------------------------------------

    def block(self, commands: list[Command]) -> None:
        """Run commands in order, with if/elsif/else chains."""
        skipping = False
        for cmd in commands:
            self.run.tick()
            name = cmd.name
            if name == "if":
                skipping = False
            if name in ("if", "elsif", "else"):
                if skipping:
                    continue
                if name == "else" or self.test(cmd.tests[0]):
                    skipping = True
                    assert cmd.block is not None
                    self.block(cmd.block)
                continue
            skipping = False
            self.command(cmd)

    def command(self, cmd: Command) -> None:
        """Run one command that is not part of a conditional."""
        run = self.run
        name = cmd.name
        opts = cmd.opts
        if name == "require":
            return
        if name == "stop":
            raise _Stop()
        if name == "return":
            raise _Return()
        if name == "keep":
            run.add(Store(INBOX, self.flagsFor(opts)))
            run.result.implicitKeep = False
        elif name == "discard":
            run.result.implicitKeep = False
            run.result.discarded = True
        elif name == "fileinto":
            folder = self.expand(cmd.pos[0])
            run.add(Store(folder, self.flagsFor(opts), bool(opts.get("create"))))
            if not opts.get("copy"):
                run.result.implicitKeep = False
        elif name == "redirect":
            address = self.expand(cmd.pos[0]).strip()
            try:
                path, rest = parsePath(f"<{address}>")
            except AddressError:
                raise SieveRuntimeError(f"invalid redirect address {address!r}") from None
            if rest.strip() or path.isNull or not path.domain:
                raise SieveRuntimeError(f"invalid redirect address {address!r}")
            run.add(Redirect(path.address))
            if not opts.get("copy"):
                run.result.implicitKeep = False
        elif name in ("reject", "ereject"):
            run.add(Reject(self.expand(cmd.pos[0]), extended=name == "ereject"))
            run.result.implicitKeep = False
        elif name in ("setflag", "addflag", "removeflag"):
            self.changeFlags(name, cmd.pos[0], self.strings(cmd.pos[1]))
        elif name == "set":
            self.assign(cmd.pos[0], self.modify(self.expand(cmd.pos[1]), opts))
        elif name == "vacation":
            self.vacation(cmd)
        elif name == "include":
            self.include(cmd)
        elif name == "global":
            for var in self.strings(cmd.pos[0]):
                self.globalNames.add(var.lower())

    def flagsFor(self, opts: dict[str, Any]) -> tuple[str, ...]:
        """The flags a keep or fileinto sets: its C{:flags}, else the internal variable."""
        if "flags" in opts:
            return tuple(normaliseFlags(self.strings(opts["flags"])))
        if "imap4flags" in self.script.requires:
            return tuple(self.run.flags)
        return ()

    def changeFlags(self, name: str, variable: str | None, flags: list[str]) -> None:
        """setflag, addflag, removeflag on the internal variable or a named one."""
        if variable is None:
            current = list(self.run.flags)
        else:
            current = normaliseFlags([self.lookup(variable)])
        given = normaliseFlags(flags)
        if name == "setflag":
            new = given
        elif name == "addflag":
            new = normaliseFlags([*current, *given])
        else:
            drop = {f.lower() for f in given}
            new = [f for f in current if f.lower() not in drop]
        if variable is None:
            self.run.flags = new
        else:
            self.assign(variable, " ".join(new))

    def modify(self, value: str, opts: dict[str, Any]) -> str:
        """C{set}'s modifiers, highest precedence first (RFC 5229 section 4)."""
        if opts.get("lower"):
            value = value.lower()
        if opts.get("upper"):
            value = value.upper()
        if opts.get("lowerfirst"):
            value = value[:1].lower() + value[1:]
        if opts.get("upperfirst"):
            value = value[:1].upper() + value[1:]
        if opts.get("quotewildcard"):
            value = _WILDCARDS.sub(r"\\\1", value)
        if opts.get("quoteregex"):
            value = _REGEX_SPECIALS.sub(r"\\\1", value)
        if opts.get("length"):
            value = str(len(value))
        return value

    def vacation(self, cmd: Command) -> None:
        """Add the vacation action (the RFC 3834 checks come at execution)."""
        opts = cmd.opts
        if "seconds" in opts:
            seconds = opts["seconds"]
        elif "days" in opts:
            seconds = opts["days"] * 86400
        else:
            seconds = VACATION_DEFAULT
        seconds = max(seconds, VACATION_MIN)
        if VACATION_MAX:
            seconds = min(seconds, VACATION_MAX)
        reason = self.expand(cmd.pos[0])
        subject = self.expand(opts["subject"]) if "subject" in opts else None
        sender = self.expand(opts["from"]) if "from" in opts else None
        mime = bool(opts.get("mime"))
        if "handle" in opts:
            handle = self.expand(opts["handle"])
        else:
            handle = (reason + (subject if subject is not None else "<default-subject>")
                      + (sender if sender is not None else "<default-from>")
                      + ("<MIME>" if mime else "<NO-MIME>"))
        self.run.add(Vacation(reason, subject, sender,
                              tuple(self.strings(opts.get("addresses", []))), mime,
                              seconds, handle))

    def include(self, cmd: Command) -> None:
        """Run an included script (RFC 6609)."""
        where = "global" if cmd.opts.get("global") else "personal"
        key = (where, cmd.pos[0])
        target = self.script.includes.get(key)
        if target is None:
            return  # :optional and missing
        if cmd.opts.get("once"):
            if key in self.run.included:
                return
        self.run.included.add(key)
        self.run.runScript(target)

    # -- tests --------------------------------------------------------------------------

    def test(self, test: Test) -> bool:
        """Evaluate one test."""
        self.run.tick()
        name = test.name
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(test.tests[0])
        if name == "allof":
            return all(self.test(t) for t in test.tests)
        if name == "anyof":
            return any(self.test(t) for t in test.tests)
        if name == "size":
            if "over" in test.opts:
                return self.run.message.size > test.opts["over"]
            return self.run.message.size < test.opts["under"]
        if name == "exists":
            return all(self.run.message.raw(h) for h in self.strings(test.pos[0]))
        if name == "mailboxexists":
            return all(self.run.mailboxExists(f) for f in self.strings(test.pos[0]))
        matcher = Matcher(test.opts)
        keys = self.strings(test.pos[-1])
        values = self.values(test)
        ok = matcher.any(values, keys)
        if ok and matcher.captured is not None and self.hasVariables:
            self.matchVars = matcher.captured
        return ok

    def indexed(self, test: Test, values: list[str]) -> list[str]:
        """The one value C{:index} (and C{:last}) picks, or all of them."""
        index = test.opts.get("index")
        if index is None:
            return values
        if test.opts.get("last"):
            index = len(values) - index + 1
        return [values[index - 1]] if 1 <= index <= len(values) else []

    def values(self, test: Test) -> list[str]:
        """The values a matching test compares with its keys."""
        name = test.name
        msg = self.run.message
        if name == "header":
            out = []
            for h in self.strings(test.pos[0]):
                out.extend(self.indexed(test, msg.header(h)))
            return out
        if name == "address":
            found = []
            for h in self.strings(test.pos[0]):
                found.extend(addresses(self.indexed(test, msg.raw(h))))
            parts = (self.part(a, test.opts) for a in found)
            return [p for p in parts if p is not None]
        if name == "envelope":
            env = self.run.envelope
            out = []
            for part in self.strings(test.pos[0]):
                part = part.lower()
                if part == "from":
                    value = env.sender
                elif part == "to":
                    value = env.recipient
                else:
                    continue
                if value == "" and test.opts.get("part", "all") == "all":
                    out.append("")
                    continue
                got = self.part(value, test.opts)
                if got is not None:
                    out.append(got)
            return out
        if name == "string":
            values = self.strings(test.pos[0])
            if test.opts.get("match") == "count":
                return [v for v in values if v]
            return values
        if name == "hasflag":
            if test.pos[0] is None:
                return list(self.run.flags)
            return normaliseFlags([self.lookup(v) for v in self.strings(test.pos[0])])
        if name == "body":
            return self.body(test.opts)
        if name == "date":
            out = []
            part = self.expand(test.pos[1]).lower()
            for value in self.indexed(test, msg.header(self.expand(test.pos[0]))):
                got = self.datePart(value, part, test.opts)
                if got is not None:
                    out.append(got)
            return out
        if name == "currentdate":
            zone = self._zone(test.opts.get("zone"))
            got = _datePart(self.run.now, zone, self.expand(test.pos[0]).lower())
            return [] if got is None else [got]
        raise SieveRuntimeError(f"unknown test {name}")

    def part(self, address: str, opts: dict[str, Any]) -> str | None:
        """The address part a test compares (None: the part does not exist)."""
        which = opts.get("part", "all")
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        if which == "all":
            return address
        if which == "domain":
            return domain
        if which == "localpart":
            return local
        user, plus, detail = local.partition("+")
        if which == "user":
            return user
        return detail if plus else None

    def body(self, opts: dict[str, Any]) -> list[str]:
        """The body as the C{body} test's transform presents it (RFC 5173)."""
        msg = self.run.message
        if opts.get("raw"):
            return [msg.bodyBytes.decode("utf-8", "replace")]
        types = [asciiLower(t) for t in self.strings(opts["content"])] if "content" in \
            opts else ["text"]
        out = []
        for part in msg.parsed().walk():
            if part.is_multipart():
                continue
            ctype = asciiLower(part.get_content_type())
            main = ctype.partition("/")[0]
            if any(t == "" or t == ctype or t == main for t in types):
                out.append(partText(part))
        return out

    def _zone(self, zone: str | None) -> int:
        """A C{:zone} argument as minutes east of UTC (the local zone without one)."""
        if zone is None:
            return self.run.localZone
        zone = self.expand(zone)
        sign = -1 if zone.startswith("-") else 1
        return sign * (int(zone[1:3]) * 60 + int(zone[3:5]))

    def datePart(self, value: str, part: str, opts: dict[str, Any]) -> str | None:
        """One date-part of a header's date, in the zone the test asks for."""
        import email.utils

        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        offset = parsed[9] or 0
        stamp = calendar.timegm(parsed[:9]) - offset
        if opts.get("originalzone"):
            zone = offset // 60
        else:
            zone = self._zone(opts.get("zone"))
        return _datePart(stamp, zone, part)


_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


def _datePart(stamp: float, zone: int, part: str) -> str | None:
    """A date-part (RFC 5260 section 4.2) of POSIX time C{stamp} in C{zone} minutes."""
    t = time.gmtime(int(stamp) + zone * 60)
    sign = "-" if zone < 0 else "+"
    z = f"{sign}{abs(zone) // 60:02d}{abs(zone) % 60:02d}"
    weekday = (t.tm_wday + 1) % 7
    if part == "year":
        return f"{t.tm_year:04d}"
    if part == "month":
        return f"{t.tm_mon:02d}"
    if part == "day":
        return f"{t.tm_mday:02d}"
    if part == "date":
        return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
    if part == "julian":
        return str((calendar.timegm(t) // 86400) + 40587)
    if part == "hour":
        return f"{t.tm_hour:02d}"
    if part == "minute":
        return f"{t.tm_min:02d}"
    if part == "second":
        return f"{t.tm_sec:02d}"
    if part == "time":
        return f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    if part == "iso8601":
        return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:"
                f"{t.tm_min:02d}:{t.tm_sec:02d}{z[:3]}:{z[3:]}")
    if part == "std11":
        return (f"{_DAYS[weekday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d}"
                f" {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {z}")
    if part == "zone":
        return z
    if part == "weekday":
        return str(weekday)
    return None


def evaluate(script: Script, message: bytes, envelope: SieveEnvelope, **kw: Any) -> Result:
    """Run C{script} over C{message}; the decided L{Result} (see L{Interpreter}).

    @raise SieveRuntimeError: the script failed.
    """
    return Interpreter(script, MessageView(message), envelope, **kw).run()


__all__ = ["Interpreter", "SieveEnvelope", "SieveRuntimeError", "evaluate", "normaliseFlags"]
