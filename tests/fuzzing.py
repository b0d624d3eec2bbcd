"""Protocol fuzzing machinery shared by C{tests/test_fuzz_*.py} and C{bench/fuzz.py} (no tests).

Inputs come from grammars. A small grammar language (L{Lit}, L{Alt}, L{Seq}, L{Rep},
L{Num}, L{Blob}, L{Map}, L{Deep}) describes real command lines of each protocol; every
grammar node yields a hypothesis strategy (L{Node.strategy}, which shrinks towards the
first alternative and short repetitions) and a fast generator over C{random.Random}
(L{Node.generate}, used by the long-running fuzz script). A L{FuzzInput} is a session
variant (not logged in, logged in, mailbox selected, STARTTLS-capable, ...), a list of
command units, byte-level mutations (truncation, byte flips, CR/LF/NUL injection, absurd
numbers and literal sizes, deep parentheses, lines around every length limit, duplicated
segments, STARTTLS/STLS spliced in), the chunk sizes (1-512 octets) the stream is cut
into, and the points after which the auth-penalty clock is advanced (and, for SMTP, the
server clock over the error tarpit's delays).

L{POP3Fuzzer}, L{IMAPFuzzer} and L{SMTPFuzzer} build the room's real factory over a real
L{MaildirStore} in a temporary directory, a real passwd file, L{PasswdChecker},
L{MailRealm}, L{Portal} and L{AuthGate} (on its own L{task.Clock}), with an inline runner
that measures the time spent in disk and hashing work (which production runs in thread
pools). L{Fuzzer.run} feeds one input to a fresh protocol over a C{StringTransport} and
checks the properties, raising L{Violation} (an C{AssertionError}):

* no exception escapes C{dataReceived}, a clock advance or C{connectionLost}, and nothing
  is logged with a failure or at error level;
* the client's view of the dialogue is consistent: every complete command line gets its
  answer, in order, with multi-line replies correctly framed (POP3, SMTP), every tagged
  command exactly one tagged response and a final C{NOOP} still answered (IMAP), unless
  the server closed the connection cleanly (QUIT, LOGOUT, too many errors, BYE); plaintext
  pipelined behind a successful STARTTLS/STLS is the only input allowed to go unanswered;
* no traceback or Python repr text ever reaches the client;
* no single call into the protocol keeps the reactor busy for more than L{SLOW_STEP}
  seconds of wall-clock time (C{time.perf_counter}). Time spent in the runner or in
  garbage collection pauses is not counted, and so that a noisy machine does not fail
  the property, a slow input is run a second time before it counts, and a step only
  counts when its thread also used half the limit in CPU time or waited voluntarily
  (for I/O): a step that was merely preempted by other processes does not.
"""

from __future__ import annotations

import base64
import bisect
import gc
import itertools
import json
import os
import random
import re
import resource
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.mail import imap4, pop3, smtp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pymaild import config as configModule
from pymaild.auth import passwd as passwdModule
from pymaild.auth.checker import PasswdChecker
from pymaild.auth.directory import Directory
from pymaild.auth.passwd import PasswdFile
from pymaild.auth.penalty import AuthGate, AuthPenalty
from pymaild.auth.quota import Quotas
from pymaild.auth.realm import MailRealm
from pymaild.imap.account import IMAPAvatars
from pymaild.imap.notify import Registry
from pymaild.imap.server import IMAPFactory
from pymaild.imap.summarycache import StructureCache
from pymaild.pop3.lines import MAX_LINE as POP3_MAX_LINE
from pymaild.pop3.mailbox import POP3Avatars, SessionRegistry
from pymaild.pop3.server import POP3Factory
from pymaild.quotarules import QuotaLimits
from pymaild.smtp.delivery import DeliveryAvatars
from pymaild.smtp.queue import Queue
from pymaild.smtp.server import SMTPFactory
from pymaild.store import MaildirStore
from pymaild.threads import InlineRunner
from tests.test_pop3_helpers import TLSStringTransport

SLOW_STEP = 0.100
"""Longest a single call into a protocol may keep the reactor busy (seconds)."""

ALICE = "alice@example.org"
ALICE_PW = "correct horse"
BOB = "bob@example.org"
BOB_PW = "hunter2"
LOOPBACK = "127.0.0.1"
REMOTE = "192.0.2.7"
HOSTNAME = "mx.example.org"
TLS_CONTEXT = object()
"""Stands in for a TLS context: the fake TLS transports only record it."""


class Violation(AssertionError):
    """A fuzz property does not hold for an input."""


# -- grammar ------------------------------------------------------------------------------


def _st() -> Any:
    """The hypothesis strategies module (imported lazily: the fuzz script can do without)."""
    from hypothesis import strategies

    return strategies


class Node:
    """A grammar element: chooses a byte string, via hypothesis or via C{random.Random}."""

    _cached: Any = None

    def strategy(self) -> Any:
        """The hypothesis strategy for this element (built once)."""
        if self._cached is None:
            self._cached = self._build()
        return self._cached

    def _build(self) -> Any:
        raise NotImplementedError

    def generate(self, rng: random.Random) -> bytes:
        """A value chosen with C{rng} (the fast path of C{bench/fuzz.py})."""
        raise NotImplementedError


def node(x: Node | bytes) -> Node:
    """C{x} as a grammar node (bytes become a L{Lit})."""
    return x if isinstance(x, Node) else Lit(x)


class Lit(Node):
    """Exactly C{value}."""

    def __init__(self, value: bytes) -> None:
        self.value = value

    def _build(self) -> Any:
        return _st().just(self.value)

    def generate(self, rng: random.Random) -> bytes:
        """The literal value."""
        return self.value


class Alt(Node):
    """One of C{choices}; C{weights} make some likelier (for hypothesis too).

    Choices without a weight (C{weights} shorter than C{choices}) weigh 1.
    """

    def __init__(self, *choices: Node | bytes, weights: Sequence[int] | None = None) -> None:
        self.choices = [node(c) for c in choices]
        self.weights = list(weights or ())[: len(self.choices)]
        self.weights += [1] * (len(self.choices) - len(self.weights))
        self._cum = list(itertools.accumulate(self.weights))

    def _build(self) -> Any:
        pairs = zip(self.choices, self.weights, strict=True)
        expanded = [c.strategy() for c, w in pairs for _ in range(w)]
        return _st().one_of(expanded)

    def generate(self, rng: random.Random) -> bytes:
        """A weighted choice, then its value."""
        i = bisect.bisect_right(self._cum, rng.random() * self._cum[-1])
        return self.choices[min(i, len(self.choices) - 1)].generate(rng)


class Seq(Node):
    """The concatenation of C{parts}."""

    def __init__(self, *parts: Node | bytes) -> None:
        self.parts = [node(p) for p in parts]

    def _build(self) -> Any:
        return _st().tuples(*(p.strategy() for p in self.parts)).map(b"".join)

    def generate(self, rng: random.Random) -> bytes:
        """Each part's value, concatenated."""
        return b"".join(p.generate(rng) for p in self.parts)


def Opt(x: Node | bytes) -> Alt:  # noqa: N802 - grammar constructor
    """C{x} or nothing."""
    return Alt(b"", x)


class Rep(Node):
    """C{lo} to C{hi} repetitions of C{item}, joined by C{sep}."""

    def __init__(self, item: Node | bytes, lo: int, hi: int, sep: bytes = b"") -> None:
        self.item = node(item)
        self.lo, self.hi, self.sep = lo, hi, sep

    def _build(self) -> Any:
        return _st().lists(self.item.strategy(), min_size=self.lo, max_size=self.hi).map(
            self.sep.join
        )

    def generate(self, rng: random.Random) -> bytes:
        """A random number of values, joined."""
        n = rng.randint(self.lo, self.hi)
        return self.sep.join(self.item.generate(rng) for _ in range(n))


class Num(Node):
    """A decimal number in C{lo..hi}."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def _build(self) -> Any:
        return _st().integers(self.lo, self.hi).map(lambda n: b"%d" % n)

    def generate(self, rng: random.Random) -> bytes:
        """A random number, as ASCII digits."""
        return b"%d" % rng.randint(self.lo, self.hi)


class Blob(Node):
    """C{lo} to C{hi} octets drawn from C{alphabet}."""

    def __init__(self, alphabet: bytes, lo: int, hi: int) -> None:
        self.alphabet = alphabet
        self.lo, self.hi = lo, hi

    def _build(self) -> Any:
        st = _st()
        return st.lists(st.sampled_from(list(self.alphabet)), min_size=self.lo,
                        max_size=self.hi).map(bytes)

    def generate(self, rng: random.Random) -> bytes:
        """Random octets from the alphabet."""
        return bytes(rng.choices(self.alphabet, k=rng.randint(self.lo, self.hi)))


class Map(Node):
    """C{fn} applied to the value of C{inner} (e.g. base64, literal framing)."""

    def __init__(self, inner: Node | bytes, fn: Callable[[bytes], bytes]) -> None:
        self.inner = node(inner)
        self.fn = fn

    def _build(self) -> Any:
        return self.inner.strategy().map(self.fn)

    def generate(self, rng: random.Random) -> bytes:
        """C{fn} of the inner value."""
        return self.fn(self.inner.generate(rng))


class Deep(Node):
    """C{inner} wrapped in C{lo..hi} levels of C{open}/C{close} (deep nesting)."""

    def __init__(self, open_: bytes, inner: Node | bytes, close: bytes, lo: int, hi: int) -> None:
        self.open, self.close = open_, close
        self.inner = node(inner)
        self.lo, self.hi = lo, hi

    def _wrap(self, depth: int, value: bytes) -> bytes:
        return self.open * depth + value + self.close * depth

    def _build(self) -> Any:
        st = _st()
        return st.tuples(st.integers(self.lo, self.hi), self.inner.strategy()).map(
            lambda t: self._wrap(*t)
        )

    def generate(self, rng: random.Random) -> bytes:
        """The inner value at a random depth."""
        return self._wrap(rng.randint(self.lo, self.hi), self.inner.generate(rng))


def verb(name: bytes) -> Alt:
    """A command verb as clients write it: upper case usually, sometimes lower or mixed."""
    mixed = bytes(c ^ 0x20 if i % 2 and 0x41 <= c <= 0x5A else c for i, c in enumerate(name))
    return Alt(name, name.lower(), mixed, weights=[8, 1, 1])


def b64(data: bytes) -> bytes:
    """Base64 without line breaks."""
    return base64.b64encode(data)


PRINTABLE = bytes(range(0x20, 0x7F))
ALNUM = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
ANY_OCTET = bytes(range(256))
B64_CHARS = ALNUM + b"+/="
HUGE = Alt(b"4294967295", b"4294967296", b"9223372036854775808", b"18446744073709551616",
           b"99999999999999999999999999999999", b"1" + b"0" * 100, b"-1", b"-0", b"+1",
           b"0x10", b"1e3", b"\xd9\xa1", b"\xef\xbc\x91")
"""Numbers no field should take: beyond 32/64 bits, signed, hex, non-ASCII digits."""


# -- mutations ----------------------------------------------------------------------------

MUTATION_KINDS = ("truncate", "flip", "insert", "lineinsert", "delete", "duplicate", "longrun")
COMMON_PAYLOADS = (
    b"\r", b"\n", b"\r\n", b"\x00", b"\r\r\n", b"\n\r", b"\r\n.\r\n", b".\r\n", b"\n.\n",
    b" ", b"\t", b"  ", b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\x1b[2J", b"\x7f",
    b"-1", b"0", b"4294967296", b"18446744073709551616", b"9" * 40,
    b"{-1}\r\n", b"{99999999999}\r\n", b"{4294967296+}\r\n", b"{0}\r\n", b"{5}\r\nhello",
    b"{10+}\r\n", b"{}\r\n", b"{1a}\r\n", b"(" * 300, b")" * 50, b"[", b"]", b"<", b">", b'"',
    b"\\", b"%", b"*", b"=", b"%s%n%x", b"${jndi:x}", b"\r\nQUIT\r\n", b"\r\n\r\n",
    b"9" * 5000, b"{" + b"9" * 5000 + b"}\r\n", b"0" * 5000 + b"1", b"<" + b"9" * 5000 + b".1>",
)
LONG_CHARS = (b"A", b"9", b" ", b"(", b"\xff", b".")


def mutate(data: bytes, mutations: Iterable[tuple[str, int, int]], payloads: Sequence[bytes],
           lengths: Sequence[int]) -> bytes:
    """Apply C{mutations} (kind, position, value) to C{data} in order.

    Positions and values are taken modulo what makes sense, so any integers are valid.
    """
    buf = bytearray(data)
    for kind, pos, value in mutations:
        n = len(buf)
        p = pos % (n + 1)
        if kind == "truncate":
            del buf[p:]
        elif kind == "flip":
            if n:
                buf[pos % n] ^= (value % 255) + 1
        elif kind == "insert":
            buf[p:p] = payloads[value % len(payloads)]
        elif kind == "lineinsert":
            nl = buf.find(b"\n", p)
            q = n if nl < 0 else nl + 1
            buf[q:q] = payloads[value % len(payloads)]
        elif kind == "delete":
            del buf[p : p + value % 32 + 1]
        elif kind == "duplicate":
            buf[p:p] = buf[p : p + value % 512 + 1]
        elif kind == "longrun":
            char = LONG_CHARS[value % len(LONG_CHARS)]
            length = lengths[(value // len(LONG_CHARS)) % len(lengths)]
            buf[p:p] = char * length
        else:
            raise ValueError(f"unknown mutation {kind!r}")
    return bytes(buf)


# -- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzInput:
    """One fuzz case: session variant, command units, mutations and how it is delivered.

    @ivar units: command units as the grammar made them (IMAP units lack their tag).
    @ivar mutations: C{(kind, position, value)} applied to the joined units (not to the
        variant's prefix, e.g. its login).
    @ivar chunks: sizes (1-512) the stream is cut into, used cyclically.
    @ivar settle: used cyclically per chunk: whether the auth-penalty clock (or, for SMTP,
        the server clock over the error tarpit's delay) advances to its next timer after
        that chunk.
    """

    protocol: str
    variant: str
    units: tuple[bytes, ...]
    mutations: tuple[tuple[str, int, int], ...] = ()
    chunks: tuple[int, ...] = (512,)
    settle: tuple[bool, ...] = (False,)

    def toJSON(self) -> dict[str, Any]:
        """A JSON-able form (octets as latin-1 text), for reproducer files."""
        return {
            "protocol": self.protocol,
            "variant": self.variant,
            "units": [u.decode("latin-1") for u in self.units],
            "mutations": [list(m) for m in self.mutations],
            "chunks": list(self.chunks),
            "settle": list(self.settle),
        }

    @classmethod
    def fromJSON(cls, data: dict[str, Any]) -> FuzzInput:
        """The input L{toJSON} described."""
        return cls(
            protocol=data["protocol"],
            variant=data["variant"],
            units=tuple(u.encode("latin-1") for u in data["units"]),
            mutations=tuple((str(k), int(p), int(v)) for k, p, v in data["mutations"]),
            chunks=tuple(int(c) for c in data["chunks"]),
            settle=tuple(bool(s) for s in data["settle"]),
        )


# -- transports, runner, log capture ------------------------------------------------------


@implementer(ISSLTransport)
class SSLStringTransport(StringTransport):
    """A StringTransport that is encrypted from the start (implicit-TLS listeners)."""


_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def usage() -> tuple[float, float, int]:
    """Wall clock, this thread's CPU time, and its voluntary context switches so far.

    A voluntary switch means the thread waited (for the disk, say); being preempted
    by other processes on a busy machine is an involuntary one.
    """
    return time.perf_counter(), time.thread_time(), resource.getrusage(_RUSAGE).ru_nvcsw


class Meter:
    """Adds up (wall, CPU, waits) of work that is not reactor time for a step."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.waits = 0

    def totals(self) -> tuple[float, float, int]:
        """What has been added up so far."""
        return self.wall, self.cpu, self.waits

    def add(self, start: tuple[float, float, int]) -> None:
        """Add the usage since C{start} (a L{usage} snapshot)."""
        end = usage()
        self.wall += end[0] - start[0]
        self.cpu += end[1] - start[1]
        self.waits += end[2] - start[2]


class _GCMeter(Meter):
    """Measures garbage collection pauses (installed in C{gc.callbacks}): they are not
    caused by the input being fed, so step times exclude them."""

    _start: tuple[float, float, int] | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        """Note the start or add up one collection."""
        if phase == "start":
            self._start = usage()
        elif self._start is not None:
            self.add(self._start)
            self._start = None


GC_METER = _GCMeter()
gc.callbacks.append(GC_METER)


class TimedRunner(InlineRunner):
    """L{InlineRunner} that measures the work it runs.

    In the server this work runs in thread pools, so it is not reactor time: the
    harness subtracts C{meter} from what a protocol call took.
    """

    def __init__(self) -> None:
        self.meter = Meter()
        self._depth = 0

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Run C{f} now (as L{InlineRunner} does) and measure it."""
        self._depth += 1
        start = usage() if self._depth == 1 else None
        try:
            return super().run(f, *args, **kwargs)
        finally:
            self._depth -= 1
            if start is not None:
                self.meter.add(start)


class LogCapture:
    """A log observer that keeps events carrying a failure or logged at error level."""

    def __init__(self, allowed: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.allowed = allowed

    def __call__(self, event: dict[str, Any]) -> None:
        """Keep C{event} if it reports an error (and is not a deliberate one)."""
        level = event.get("log_level")
        if (
            event.get("log_failure") is not None
            or event.get("isError")
            or level in (LogLevel.error, LogLevel.critical)
        ):
            if self.allowed is None or not self.allowed(event):
                self.events.append(event)

    def describe(self) -> list[str]:
        """The kept events as text, with tracebacks."""
        out = []
        for event in self.events:
            text = formatEvent(event) or repr(event.get("log_format"))
            failure = event.get("log_failure")
            if isinstance(failure, Failure):
                text += "\n" + failure.getTraceback()
            out.append(text)
        return out


FORBIDDEN = re.compile(
    rb"Traceback|<class '|<[A-Za-z_][\w.]* object at 0x|File \"[^\"]*\", line|"
    rb"\b[A-Z][a-z]+[A-Za-z]*(?:Error|Exception)\b|\bb'[^'\r\n]{0,60}'|\bb\"[^\"\r\n]{0,60}\"|"
    rb"codec can't|object has no attribute|unsupported operand|not subscriptable|"
    rb"\bNone\b|\bself\b"
)
"""Traces of Python internals in a reply: tracebacks, reprs, exception names and texts."""


def leakedText(output: bytes, stream: bytes) -> bytes | None:
    """The first L{FORBIDDEN} match in C{output} that is not an echo of C{stream}."""
    for m in FORBIDDEN.finditer(output):
        if m.group() not in stream:
            start = max(0, m.start() - 60)
            return output[start : m.end() + 60]
    return None


# -- a run --------------------------------------------------------------------------------


@dataclass
class Step:
    """One call into the protocol: what it was, where input and output stood afterwards,
    and its reactor time: wall clock (C{seconds}), CPU, voluntary waits."""

    kind: str
    inEnd: int
    outEnd: int
    seconds: float
    cpu: float = 0.0
    waits: int = 0

    def slow(self) -> bool:
        """Whether the reactor was busy longer than L{SLOW_STEP}.

        The wall clock decides, unless the thread neither used half that time in CPU
        nor waited for anything: then it was only preempted by other processes.
        """
        return self.seconds > SLOW_STEP and (self.cpu > SLOW_STEP / 2 or self.waits > 0)


@dataclass
class Session:
    """One connection under test."""

    proto: Any
    transport: StringTransport
    gateClock: task.Clock
    serverClock: task.Clock


@dataclass
class Record:
    """What one run of an input did, for the property checks."""

    input: FuzzInput
    stream: bytes
    spans: list[tuple[bytes, int, int]]
    fed: int = 0
    output: bytes = b""
    closed: bool = False
    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    extra: bytes = b""

    def emitStep(self, outOffset: int) -> int:
        """The index of the step during which output reached C{outOffset}."""
        ends = [s.outEnd for s in self.steps]
        return bisect.bisect_left(ends, outOffset)

    def slowest(self) -> tuple[float, int]:
        """The longest reactor time of a step, and that step's index."""
        if not self.steps:
            return 0.0, -1
        i = max(range(len(self.steps)), key=lambda k: self.steps[k].seconds)
        return self.steps[i].seconds, i

    def slowStep(self) -> int | None:
        """The index of the longest L{Step.slow} step, or None."""
        slow = [i for i, step in enumerate(self.steps) if step.slow()]
        return max(slow, key=lambda i: self.steps[i].seconds) if slow else None

    def describe(self, limit: int = 3000) -> str:
        """The input stream and the output, shortened, for failure messages."""
        return (f"variant={self.input.variant!r} chunks={self.input.chunks!r} "
                f"settle={self.input.settle!r}\n"
                f"stream ({len(self.stream)} octets, {self.fed} fed): "
                f"{_short(self.stream, limit)}\n"
                f"output ({len(self.output)} octets): {_short(self.output, limit)}")


def _short(data: bytes, limit: int) -> str:
    """C{repr} of C{data}, cut in the middle when longer than C{limit}."""
    if len(data) <= limit:
        return repr(data)
    half = limit // 2
    return f"{data[:half]!r} ...[{len(data) - limit} octets]... {data[-half:]!r}"


class LineWalker:
    """The complete lines of the input as the server splits them, one at a time.

    After a successful STARTTLS/STLS the server drops everything it has buffered, so
    L{restart} begins a fresh split at the first octet of the next read.
    """

    def __init__(self, data: bytes, sep: bytes) -> None:
        self.data = data
        self.sep = sep
        self.pos = 0
        self.index = 0

    def next(self) -> tuple[int, bytes, int] | None:
        """(line number, line without the separator, offset of its last octet), or None."""
        i = self.data.find(self.sep, self.pos)
        if i < 0:
            return None
        line = self.data[self.pos : i]
        self.pos = i + len(self.sep)
        self.index += 1
        return self.index - 1, line, self.pos - 1

    def restart(self, offset: int) -> None:
        """Forget the input before C{offset} (if not passed already)."""
        self.pos = max(self.pos, offset)


class Fuzzer:
    """The real stack of one protocol room, fed fuzz inputs one connection at a time.

    Subclasses give the grammar (C{unit}), the session variants and their prefixes, how
    to build and connect the protocol, and the protocol's view of a consistent dialogue.
    """

    name = ""
    variants: tuple[str, ...] = ()
    unit: Node
    payloads: tuple[bytes, ...] = COMMON_PAYLOADS
    lengths: tuple[int, ...] = (1000,)
    maxUnits = 20
    #: Server-clock timers due within this many seconds are run when the input settles
    #: (the SMTP error tarpit); None: the server clock never moves (idle timeouts).
    shortServerTimer: float | None = None

    def __init__(self, base: str, collect: bool = True) -> None:
        """
        @param base: an empty or missing directory for the store and passwd file.
        @param collect: run a full garbage collection after each input, so that an
            unhandled error in a Deferred is logged (and caught) for the input that
            caused it.
        """
        self.base = os.path.abspath(base)
        os.makedirs(self.base, exist_ok=True)
        self.collect = collect
        self.runner = TimedRunner()
        self.count = 0
        self.config = configModule.load(None, self.configOverrides())
        self.store = MaildirStore(os.path.join(self.base, "mail"), hostname=HOSTNAME)
        self.passwd = PasswdFile(self.config.auth.passwd)
        for address, password in self.users().items():
            self.passwd.add(address, password)
        self.setUp()

    # -- what subclasses provide --------------------------------------------------------

    def configOverrides(self) -> dict[str, Any]:
        """The configuration of the server under test."""
        return {
            "server": {"data": self.base, "hostname": HOSTNAME, "domains": ["example.org"]},
            "auth": {"cleartext": "tls-or-loopback",
                     "passwd": os.path.join(self.base, "passwd")},
        }

    def users(self) -> dict[str, str]:
        """The accounts in the passwd file."""
        return {ALICE: ALICE_PW, BOB: BOB_PW}

    def setUp(self) -> None:
        """Build the room's long-lived parts (avatars, portal)."""

    def prefix(self, variant: str) -> list[bytes]:
        """The unmutated units that put a C{variant} session in its state (a login)."""
        return []

    def connect(self, variant: str) -> Session:
        """A new protocol from the room's factory, connected to a fresh transport."""
        raise NotImplementedError

    def render(self, inp: FuzzInput) -> tuple[bytes, list[tuple[bytes, int, int]]]:
        """The byte stream of C{inp} and the (tag, start, end) of each unmutated unit."""
        prefix = b"".join(self.prefix(inp.variant))
        body = b"".join(inp.units)
        if inp.mutations:
            body = mutate(body, inp.mutations, self.payloads, self.lengths)
        return prefix + body, []

    def prepare(self) -> None:
        """Bring the store back to the state inputs expect (called before each run)."""

    def finish(self, session: Session, record: Record) -> None:
        """After the input: anything the property checks need to send (IMAP's NOOP)."""

    def check(self, record: Record) -> None:
        """Raise L{Violation} unless the dialogue in C{record} is consistent."""
        raise NotImplementedError

    def visible(self, record: Record) -> bytes:
        """The server's own text in the output (message content left out)."""
        return record.output

    def allowedLog(self, event: dict[str, Any]) -> bool:
        """Whether a logged error is deliberate for this room (none are)."""
        return False

    # -- inputs ------------------------------------------------------------------------------

    @classmethod
    def inputs(cls, mutated: bool, variants: Sequence[str] | None = None) -> Any:
        """A hypothesis strategy of L{FuzzInput}s for this protocol."""
        st = _st()
        mutations = (
            st.lists(st.tuples(st.sampled_from(MUTATION_KINDS), st.integers(0, 1 << 20),
                               st.integers(0, 1 << 16)), min_size=1, max_size=4)
            if mutated else st.just([])
        )
        return st.builds(
            FuzzInput,
            protocol=st.just(cls.name),
            variant=st.sampled_from(list(variants or cls.variants)),
            units=st.lists(cls.unit.strategy(), max_size=cls.maxUnits).map(tuple),
            mutations=mutations.map(tuple),
            chunks=st.lists(st.integers(1, 512), min_size=1, max_size=12).map(tuple),
            settle=st.lists(st.booleans(), min_size=1, max_size=8).map(tuple),
        )

    @classmethod
    def randomInput(cls, rng: random.Random, mutateRate: float = 0.6) -> FuzzInput:
        """An input drawn with C{rng} from the same grammar (fast, for the fuzz script)."""
        units = tuple(cls.unit.generate(rng) for _ in range(rng.randint(0, cls.maxUnits)))
        mutations: tuple[tuple[str, int, int], ...] = ()
        if rng.random() < mutateRate:
            mutations = tuple(
                (rng.choice(MUTATION_KINDS), rng.randrange(1 << 20), rng.randrange(1 << 16))
                for _ in range(rng.randint(1, 4))
            )
        chunks = tuple(rng.choice((rng.randint(1, 16), rng.randint(1, 512), 512))
                       for _ in range(rng.randint(1, 12)))
        settle = tuple(rng.random() < 0.3 for _ in range(rng.randint(1, 8)))
        return FuzzInput(cls.name, rng.choice(cls.variants), units, mutations, chunks, settle)

    # -- running ------------------------------------------------------------------------------

    def run(self, inp: FuzzInput) -> Record:
        """Run C{inp} and check every property; a slow input gets a second chance.

        @raise Violation: a property does not hold.
        """
        record = self.execute(inp)
        self.verify(record)
        i = record.slowStep()
        if i is not None:
            again = self.execute(inp)
            self.verify(again)
            i2 = again.slowStep()
            if i2 is not None:
                first, step = record.steps[i], again.steps[i2]
                raise Violation(
                    f"{self.name}: step {i2} ({step.kind}, input up to octet {step.inEnd}) kept "
                    f"the reactor busy {step.seconds * 1000:.0f} ms ({step.cpu * 1000:.0f} ms "
                    f"CPU, {step.waits} waits; first run: step {i}, "
                    f"{first.seconds * 1000:.0f} ms, {first.cpu * 1000:.0f} ms CPU; "
                    f"limit {SLOW_STEP * 1000:.0f} ms)\n" + again.describe()
                )
        return record

    def verify(self, record: Record) -> None:
        """Check the properties of one run.

        @raise Violation: a property does not hold.
        """
        if record.problems:
            raise Violation(f"{self.name}: " + "\n".join(record.problems) + "\n"
                            + record.describe())
        leak = leakedText(self.visible(record), record.stream + record.extra)
        if leak is not None:
            raise Violation(f"{self.name}: internal text reached the client: {leak!r}\n"
                            + record.describe())
        try:
            self.check(record)
        except Violation as e:
            raise Violation(f"{self.name}: {e}\n" + record.describe()) from None

    def execute(self, inp: FuzzInput) -> Record:
        """Feed C{inp} to a fresh connection and record what happened (no checks)."""
        stream, spans = self.render(inp)
        record = Record(inp, stream, spans)
        self.count += 1
        self.prepare()
        capture = LogCapture(self.allowedLog)
        globalLogPublisher.addObserver(capture)
        session: Session | None = None
        try:
            measure = self._measure()
            session = self.connect(inp.variant)
            record.steps.append(Step("connect", 0, session.transport.io.tell(), *measure()))
            self._feedAll(session, record, inp)
            if not record.problems:
                self.finish(session, record)
            record.closed = bool(session.transport.disconnecting)
            record.output = session.transport.value()
        finally:
            if session is not None:
                self._call(session, record, "connectionLost", session.proto.connectionLost,
                           Failure(ConnectionDone()))
            if self.collect:
                gc.collect()
            globalLogPublisher.removeObserver(capture)
        record.problems.extend("logged error: " + text for text in capture.describe())
        return record

    def _call(self, session: Session, record: Record, kind: str, f: Callable[..., Any],
              *args: Any) -> bool:
        """Call into the protocol, timed; an escaping exception becomes a problem."""
        measure = self._measure()
        ok = True
        try:
            f(*args)
        except Exception:  # noqa: BLE001 - this is what the property is about
            ok = False
            record.problems.append(f"exception escaped {kind} (step {len(record.steps)}):\n"
                                   + traceback.format_exc())
        record.steps.append(Step(kind, record.fed, session.transport.io.tell(), *measure()))
        return ok

    def _measure(self) -> Callable[[], tuple[float, float, int]]:
        """Start measuring reactor time; the result gives (wall, CPU, waits) since then,
        without the runner's work and garbage collection pauses."""
        start = usage()
        runner, collector = self.runner.meter.totals(), GC_METER.totals()

        def stop() -> tuple[float, float, int]:
            end = usage()
            r, c = self.runner.meter.totals(), GC_METER.totals()
            return (
                end[0] - start[0] - (r[0] - runner[0]) - (c[0] - collector[0]),
                end[1] - start[1] - (r[1] - runner[1]) - (c[1] - collector[1]),
                end[2] - start[2] - (r[2] - runner[2]) - (c[2] - collector[2]),
            )

        return stop

    def feed(self, session: Session, record: Record, data: bytes, kind: str = "feed") -> bool:
        """Deliver C{data} as one read (as the reactor would: not after a close, and not
        while reading is paused — then the penalty clock runs first)."""
        t = session.transport
        if t.disconnecting:
            return False
        if t.producerState == "paused":
            self.settle(session, record, final=True)
            if t.producerState == "paused" and not t.disconnecting:
                record.problems.append("the server paused reading and never resumed")
                return False
            if t.disconnecting:
                return False
        if kind == "feed":
            record.fed += len(data)
        else:
            record.extra += data
        return self._call(session, record, kind, session.proto.dataReceived, data)

    def settle(self, session: Session, record: Record, final: bool) -> None:
        """Advance the auth-penalty clock (or the server clock, over a short timer) to its
        next timer (all of them if C{final})."""
        for _ in range(10000):
            step = self._nextTimer(session)
            if step is None:
                return
            clock, delay = step
            if not self._call(session, record, "settle", clock.advance, delay):
                return
            if not final:
                return
        record.problems.append("the clocks never ran out of timers")

    def _nextTimer(self, session: Session) -> tuple[task.Clock, float] | None:
        """The auth-penalty clock and the delay to its next timer; else the server clock
        and its next timer's delay when that is at most L{shortServerTimer} (never an
        idle timeout); None when neither clock is to move."""
        clocks = [(session.gateClock, None)]
        if self.shortServerTimer is not None:
            clocks.append((session.serverClock, self.shortServerTimer))
        for clock, horizon in clocks:
            calls = clock.getDelayedCalls()
            if not calls:
                continue
            delay = max(0.0, min(c.getTime() for c in calls) - clock.seconds())
            if horizon is None or delay <= horizon:
                return clock, delay
        return None

    def _feedAll(self, session: Session, record: Record, inp: FuzzInput) -> None:
        """Cut the stream into the input's chunks and deliver them."""
        stream = record.stream
        pos = 0
        k = 0
        while pos < len(stream) and not record.problems:
            size = inp.chunks[k % len(inp.chunks)]
            if not self.feed(session, record, stream[pos : pos + size]):
                break
            pos += size
            if inp.settle[k % len(inp.settle)]:
                self.settle(session, record, final=False)
            k += 1
        if not record.problems:
            self.settle(session, record, final=True)


# -- shared content -----------------------------------------------------------------------

MESSAGES = (
    b"From: Carol <carol@remote.example>\r\nTo: Alice <alice@example.org>\r\n"
    b"Subject: dots\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"Message-ID: <dots@remote.example>\r\n\r\nfirst line\r\n.\r\n..\r\n.hidden\r\n"
    b"+OK not a reply\r\n-ERR neither\r\n* 1 FETCH (FLAGS ())\r\nT1 OK fake\r\nlast\r\n",
    b"From: =?UTF-8?B?w6lsw6h2ZQ==?= <student@remote.example>\r\n"
    b"To: alice@example.org, \"Bob, B.\" <bob@example.org>\r\nCc: undisclosed-recipients:;\r\n"
    b"Subject: multipart\r\n  folded subject line\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\npreamble\r\n--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"caf\xc3\xa9\r\n--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
    b"--inner\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--inner--\r\n--outer\r\n"
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: x@y.example\r\n\r\n"
    b"nested body\r\n--outer--\r\nepilogue\r\n",
    b"Subject: no blank line, all header\r\nX-Long: " + b"y" * 900 + b"\r\n",
    b"From: <>\r\nSubject: " + b"\xff\xfe broken 8bit\r\nContent-Type: multipart/mixed\r\n\r\n"
    b"no boundary parameter\r\n",
)


def topUp(store: MaildirStore, address: str, cap: int = 12) -> None:
    """Give C{address}'s INBOX at least the standard messages and at most C{cap} ones."""
    account = store.account(address)
    try:
        folder = account.folder("INBOX")
    except Exception:  # noqa: BLE001 - a fuzzed RENAME/DELETE may have removed it
        store.deliver([address], MESSAGES[0])
        folder = account.folder("INBOX")
    messages = folder.scan().messages
    if len(messages) > cap:
        folder.expunge([m.key for m in messages[: len(messages) - cap]])
    elif len(messages) < len(MESSAGES):
        for m in MESSAGES:
            store.deliver([address], m)


def freezeHeap() -> Callable[[], None]:
    """Move every object alive now out of the collector's sight (C{gc.freeze}).

    The per-input full collection then costs only as much as the objects made since
    (a few ms instead of 100+ ms with hypothesis loaded). Returns the undo function.
    """
    gc.collect()
    gc.freeze()
    return gc.unfreeze


def cheapHashing() -> Callable[[], None]:
    """Make argon2 cheap (fuzzing logs in a lot); return the function that restores it."""
    passwdModule.configureHashing(memory_cost=256, rounds=1, parallelism=1)
    return passwdModule.configureHashing


def _peer(host: str) -> IPv4Address:
    """A TCP address for C{host}."""
    return IPv4Address("TCP", host, 40000)


def _connect(factory: Any, host: str, transportClass: type, port: int) -> tuple[Any, Any]:
    """Build a protocol from C{factory} and connect it to a new C{transportClass}."""
    proto = factory.buildProtocol(_peer(host))
    transport = transportClass(peerAddress=_peer(host),
                               hostAddress=IPv4Address("TCP", "127.0.0.1", port))
    proto.makeConnection(transport)
    return proto, transport


# -- POP3 ---------------------------------------------------------------------------------

_POP3_USER = Alt(ALICE.encode(), b"ALICE@Example.ORG", BOB.encode(), b"nobody@example.org",
                 b"alice", b"@", b"alice@example.org\x00bob", b"\xc3\xa9l\xc3\xa8ve@example.org",
                 b"\xff\xfe@example.org", b"a" * 300 + b"@example.org", Blob(PRINTABLE, 0, 30))
_POP3_PASS = Alt(ALICE_PW.encode(), BOB_PW.encode(), b"wrong", b"", b" correct horse",
                 Blob(PRINTABLE, 0, 30), b"\x00")
_POP3_PLAIN = Map(Seq(Alt(b"", _POP3_USER), b"\x00", _POP3_USER, b"\x00", _POP3_PASS), b64)
_POP3_SASL_REPLY = Alt(_POP3_PLAIN, Map(_POP3_USER, b64), Map(_POP3_PASS, b64), b"*", b"=", b"",
                       Blob(B64_CHARS, 1, 40), b"!!!!")
_POP3_MSG = Alt(Num(0, 6), HUGE, b"", b"1 ", b" 1", b"01", b"1.5", b"*", weights=[8, 3, 1, 1, 1,
                                                                                1, 1, 1])
_POP3_COMMAND = Alt(
    verb(b"CAPA"), verb(b"NOOP"), verb(b"STAT"), verb(b"RSET"), verb(b"QUIT"),
    Seq(verb(b"LIST"), Opt(Seq(b" ", _POP3_MSG))),
    Seq(verb(b"UIDL"), Opt(Seq(b" ", _POP3_MSG))),
    Seq(verb(b"RETR"), b" ", _POP3_MSG),
    Seq(verb(b"TOP"), b" ", _POP3_MSG, b" ", Alt(Num(0, 4), HUGE, b"")),
    Seq(verb(b"DELE"), b" ", _POP3_MSG),
    Seq(verb(b"USER"), b" ", _POP3_USER),
    Seq(verb(b"PASS"), b" ", _POP3_PASS),
    Seq(verb(b"AUTH"), Opt(Seq(b" ", Alt(b"PLAIN", b"LOGIN", b"plain", b"CRAM-MD5", b"XOAUTH2",
                                         b"APOP")))),
    Seq(verb(b"AUTH"), b" ", Alt(b"PLAIN", b"LOGIN"), b" ", _POP3_SASL_REPLY),
    _POP3_SASL_REPLY,
    verb(b"STLS"),
    Seq(verb(b"APOP"), b" ", _POP3_USER, b" 0123456789abcdef0123456789abcdef"),
    Seq(verb(b"LIST"), b" 1 2"), Seq(verb(b"RETR")), Seq(verb(b"TOP"), b" 1"),
    b"", Blob(PRINTABLE, 1, 30), Blob(ANY_OCTET, 1, 20),
    weights=[3, 3, 3, 2, 1, 4, 3, 4, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1],
)


def _pop3Multiline(line: bytes) -> bool:
    """Whether a +OK answer to command C{line} is a multi-line reply (RFC 1939, 2449)."""
    name, _, rest = line.partition(b" ")
    name = name.upper()
    args = rest.split()
    if name in (b"CAPA", b"RETR", b"TOP"):
        return True
    return name in (b"LIST", b"UIDL", b"AUTH") and not args


class _Cursor:
    """Reads CRLF-terminated lines from a server's output."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def atEnd(self) -> bool:
        """Whether everything has been read."""
        return self.pos >= len(self.data)

    def line(self) -> bytes:
        """The next line without its CRLF.

        @raise Violation: the output ends in a partial line.
        """
        i = self.data.find(b"\r\n", self.pos)
        if i < 0:
            raise Violation(f"output ends inside a line: {self.data[self.pos:][:200]!r}")
        line = self.data[self.pos : i]
        self.pos = i + 2
        return line


class POP3Fuzzer(Fuzzer):
    """The POP3 room: L{pymaild.pop3.server.POP3Factory} over the real stack."""

    name = "pop3"
    variants = ("loopback", "remote-tls", "login", "login-sasl", "pop3s")
    unit = Seq(_POP3_COMMAND, Alt(b"\r\n", b"\n", weights=[12, 1]))
    payloads = COMMON_PAYLOADS + (b"STLS\r\n", b"CAPA\r\n", b"AUTH PLAIN\r\n", b"RETR 1\r\n",
                                  b"TOP 1 0\r\n", b"LIST\r\n", b"DELE 1\r\nQUIT\r\n")
    lengths = (8189, 8190, 8191, 8192, 16400)

    def setUp(self) -> None:
        """POP3 avatars, realm and portal over the store."""
        self.registry = SessionRegistry()
        avatars = POP3Avatars(self.store, self.runner, self.config, registry=self.registry)
        self.portal = Portal(MailRealm({pop3.IMailbox: avatars}),
                             [PasswdChecker(self.passwd, self.runner), AllowAnonymousAccess()])

    def prefix(self, variant: str) -> list[bytes]:
        """USER/PASS or AUTH PLAIN for the logged-in variants."""
        if variant == "login":
            return [b"USER " + ALICE.encode() + b"\r\n", b"PASS " + ALICE_PW.encode() + b"\r\n"]
        if variant == "login-sasl":
            return [b"AUTH PLAIN " + b64(b"\x00" + ALICE.encode() + b"\x00"
                                         + ALICE_PW.encode()) + b"\r\n"]
        return []

    def prepare(self) -> None:
        """Keep alice's INBOX stocked (QUIT after DELE empties it)."""
        topUp(self.store, ALICE)

    def connect(self, variant: str) -> Session:
        """A POP3 connection for C{variant}."""
        gateClock, serverClock = task.Clock(), task.Clock()
        gate = AuthGate(self.portal, AuthPenalty(), gateClock)
        implicit = variant == "pop3s"
        factory = POP3Factory(config=self.config, gate=gate, tlsContext=TLS_CONTEXT,
                              implicitTLS=implicit, clock=serverClock)
        host = REMOTE if variant in ("remote-tls", "pop3s") else LOOPBACK
        transportClass = {"remote-tls": TLSStringTransport, "pop3s": SSLStringTransport}.get(
            variant, StringTransport)
        proto, transport = _connect(factory, host, transportClass, 110)
        return Session(proto, transport, gateClock, serverClock)

    def check(self, record: Record) -> None:
        """Walk the dialogue as a client: one reply per line, multi-line ones framed."""
        cur = _Cursor(record.output)
        greeting = cur.line()
        if not greeting.startswith(b"+OK"):
            raise Violation(f"bad greeting {greeting!r}")
        lines = LineWalker(record.stream[: record.fed], b"\n")
        challenge = False
        last: bytes | None = None
        while (item := lines.next()) is not None:
            i, line, _end = item
            if line.endswith(b"\r"):
                line = line[:-1]
            if cur.atEnd():
                if record.closed:
                    break
                raise Violation(f"no reply to line {i} {line[:200]!r}")
            status = cur.line()
            if not (status == b"+OK" or status.startswith((b"+OK ", b"-ERR ", b"+ "))):
                raise Violation(f"line {i} {line[:100]!r}: malformed reply {status[:200]!r}")
            sasl, challenge = challenge, status.startswith(b"+ ")
            ok = status == b"+OK" or status.startswith(b"+OK ")
            command = b"" if sasl or len(line) > POP3_MAX_LINE else line
            if challenge and not sasl and command.partition(b" ")[0].upper() != b"AUTH":
                raise Violation(f"SASL challenge {status!r} to line {i} {line[:100]!r}")
            if ok and command and _pop3Multiline(command):
                while cur.line() != b".":
                    pass
            if ok and command.partition(b" ")[0].upper() == b"STLS":
                # Plaintext pipelined behind STLS is dropped unseen.
                lines.restart(record.steps[record.emitStep(cur.pos)].inEnd)
            last = command
        if not cur.atEnd():
            raise Violation(f"unexpected output {record.output[cur.pos:][:300]!r}")
        if record.closed and (last is None or last.partition(b" ")[0].upper() != b"QUIT"):
            raise Violation(f"connection closed, but not after QUIT (last line {last!r})")


# -- IMAP ---------------------------------------------------------------------------------

_QCHARS = bytes(c for c in PRINTABLE if c not in b'"\\')


def _literal(data: bytes) -> bytes:
    """An IMAP synchronising literal of C{data}."""
    return b"{%d}\r\n" % len(data) + data


def _literalPlus(data: bytes) -> bytes:
    """An IMAP non-synchronising (LITERAL+) literal of C{data}."""
    return b"{%d+}\r\n" % len(data) + data


def _literal8Plus(data: bytes) -> bytes:
    """A non-synchronising literal8 (RFC 3516, C{~{n+}}) of C{data}."""
    return b"~{%d+}\r\n" % len(data) + data


def _quoted(data: bytes) -> bytes:
    """An IMAP quoted string of C{data} (escaping C{"} and C{\\})."""
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


_I_TEXT = Alt(Blob(ALNUM, 1, 12), Map(Blob(_QCHARS, 0, 20), _quoted), b'""', b"NIL",
              Map(Blob(PRINTABLE, 0, 30), _literal), Map(Blob(ANY_OCTET, 0, 30), _literalPlus),
              b'"a\\"b\\\\c"', b'"unterminated', b"\xc3\xa9t\xc3\xa9",
              weights=[4, 3, 1, 1, 2, 1, 1, 1, 1])
_I_NAME = Alt(b"INBOX", b"inbox", b"Trash", b"Sent", b"Fuzz", b"Fuzz/Sub", b"Fuzz/Sub/Deep",
              b"&AOk-t&AOk-", b'"Sent Items"', b"Archive", b"Junk", b"Drafts")
_I_MAILBOX = Alt(_I_NAME, Map(_I_NAME, _literal), Map(_I_NAME, _literalPlus), Map(_I_NAME, _quoted),
                 b"&", b"&-", b"&Jjo", b"&Jjo-", b"..", b"a..b", b"a.b", b"/lead", b"trail/",
                 b"a//b", b"INBOX/child", b'"with\\"quote"', b"x" * 300, b"\xc3\xa9t\xc3\xa9",
                 b'"tab\there"', b"%", b"*", b'""', b"NIL",
                 weights=[20, 3, 2, 3])
_I_SEQ_NUM = Alt(Num(1, 6), b"*", b"0", HUGE, weights=[8, 3, 1, 2])
_I_SEQ = Alt(Rep(Alt(_I_SEQ_NUM, Seq(_I_SEQ_NUM, b":", _I_SEQ_NUM), weights=[2, 1]), 1, 4,
                 sep=b","),
             b"$", b"1:", b":", b",", b"1,,2", b"1:*:3", b"", b"1" + b",1" * 2000,
             weights=[20, 1, 1, 1, 1, 1, 1, 1, 1])
_I_SECTION = Alt(b"", b"HEADER", b"TEXT", b"MIME", b"HEADER.FIELDS (SUBJECT FROM)",
                 b"HEADER.FIELDS.NOT (DATE Message-ID)", b"1", b"1.2", b"2.1", b"2.MIME",
                 b"3.HEADER", b"3.TEXT", b"1.2.3.4.5.HEADER", b"0", b"4294967296", b"1.0",
                 b"HEADER.FIELDS ()", b"HEADER.FIELDS (" + b"X-Y " * 400 + b"Z)",
                 b"HEADER.FIELDS (SUBJECT", b"BOGUS", b"1.", b".1")
_I_PARTIAL = Alt(b"", Seq(b"<", Num(0, 300), b".", Num(0, 300), b">"), b"<0.0>",
                 b"<4294967296.1>", b"<1.4294967296>", b"<-1.5>", b"<5>", b"<1.2.3>", b"<",
                 weights=[6, 4, 1, 1, 1, 1, 1, 1, 1])
_I_FETCH_ATT = Alt(b"FLAGS", b"UID", b"RFC822.SIZE", b"INTERNALDATE", b"ENVELOPE", b"BODY",
                   b"BODYSTRUCTURE", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT",
                   Seq(Alt(b"BODY[", b"BODY.PEEK[", b"body.peek["), _I_SECTION, b"]", _I_PARTIAL),
                   b"BINARY[1]", b"MODSEQ", b"X-GM-MSGID", b"BODY[", b"FLAGS)",
                   Seq(Alt(b"BINARY[", b"BINARY.PEEK[", b"BINARY.SIZE["),
                       Alt(b"", b"1", b"2", b"1.2", b"3.1", b"0", b"1.TEXT", b"HEADER",
                           b"4294967296"), b"]", _I_PARTIAL),
                   Alt(b"PREVIEW", b"PREVIEW (LAZY)", b"PREVIEW (FUZZY)", b"SNIPPET",
                       b"SNIPPET (LAZY=FUZZY)", b"PREVIEW (LAZY FUZZY)", b"PREVIEW ()",
                       b"SNIPPET (FUZZY"),
                   weights=[3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 10, 1, 1, 1, 1, 1, 4, 2])
_I_FETCH = Alt(b"ALL", b"FAST", b"FULL", _I_FETCH_ATT,
               Seq(b"(", Rep(_I_FETCH_ATT, 0, 5, sep=b" "), b")"),
               Deep(b"(", _I_FETCH_ATT, b")", 2, 400),
               weights=[1, 1, 1, 4, 6, 1])
_I_FLAG = Alt(b"\\Seen", b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Draft", b"\\Recent",
              b"\\*", b"$Forwarded", b"Junk", Seq(b"kw", Num(0, 40)), b"\\Bogus", b"bad]flag",
              b"\\", b"", b"\xc3\xa9", b"a" * 300)
_I_FLAGS = Alt(Seq(b"(", Rep(_I_FLAG, 0, 4, sep=b" "), b")"), _I_FLAG,
               Seq(b"(", Rep(_I_FLAG, 30, 60, sep=b" "), b")"), b"((\\Seen))", b"(",
               weights=[8, 2, 1, 1, 1])
_I_DATE = Alt(b"1-Feb-1994", b"01-Jan-2000", b"7-Jul-2026", b"32-Foo-1999", b'"1-Feb-1994"',
              b"1-Feb-99999", b"29-Feb-2023", b"", b"-1-Jan-2000")
_I_SEARCH_BASIC = Alt(
    b"ALL", b"ANSWERED", b"DELETED", b"FLAGGED", b"NEW", b"OLD", b"RECENT", b"SEEN", b"UNSEEN",
    b"UNDELETED", b"DRAFT", Seq(b"BEFORE ", _I_DATE), Seq(b"SINCE ", _I_DATE),
    Seq(b"ON ", _I_DATE), Seq(b"SENTON ", _I_DATE), Seq(b"SUBJECT ", _I_TEXT),
    Seq(b"FROM ", _I_TEXT), Seq(b"BODY ", _I_TEXT), Seq(b"TEXT ", _I_TEXT),
    Seq(b"HEADER ", _I_TEXT, b" ", _I_TEXT), Seq(b"LARGER ", Alt(Num(0, 5000), HUGE)),
    Seq(b"SMALLER ", Alt(Num(0, 5000), HUGE)), Seq(b"UID ", _I_SEQ), _I_SEQ,
    Seq(b"KEYWORD ", _I_FLAG), Seq(b"UNKEYWORD ", _I_FLAG), b"BOGUSKEY", b"OR", b"NOT",
    b"(", b")", b"LARGER", b"HEADER Subject",
    Seq(Alt(b"OLDER ", b"YOUNGER "), Alt(Num(0, 100000), HUGE, b"-1", b"")),
    Seq(Alt(b"SAVEDBEFORE ", b"SAVEDON ", b"SAVEDSINCE "), _I_DATE), b"SAVEDATESUPPORTED",
    b"$", b"$,1",
)
_I_SEARCH_KEY = Alt(
    _I_SEARCH_BASIC, Seq(b"NOT ", _I_SEARCH_BASIC),
    Seq(b"OR ", _I_SEARCH_BASIC, b" ", _I_SEARCH_BASIC),
    Seq(b"(", Rep(_I_SEARCH_BASIC, 1, 4, sep=b" "), b")"),
    Deep(b"NOT ", _I_SEARCH_BASIC, b"", 2, 500), Deep(b"(", _I_SEARCH_BASIC, b")", 2, 500),
    Deep(b"OR ALL ", _I_SEARCH_BASIC, b"", 2, 300),
    weights=[10, 2, 2, 2, 1, 1, 1],
)
_I_DATETIME = Alt(b'"17-Jul-1996 02:44:25 -0700"', b'" 7-Jul-1996 02:44:25 +0000"',
                  b'"31-Feb-2024 25:61:61 +9999"', b'"garbage"', b'"01-Jan-0001 00:00:00 -2359"',
                  b'"31-Dec-9999 23:59:59 +2359"')
_I_MESSAGE = Alt(Alt(*MESSAGES[:3]), Blob(PRINTABLE, 1, 200), b"x", b"Subject: lf only\n\nbody\n")
_I_USER = Alt(ALICE.encode(), _quoted(ALICE.encode()), _literal(ALICE.encode()), BOB.encode(),
              b"nobody@example.org", _I_TEXT, weights=[6, 2, 2, 1, 1, 2])
_I_PASS = Alt(_quoted(ALICE_PW.encode()), _literal(ALICE_PW.encode()), b"hunter2", b"wrong",
              _I_TEXT, weights=[6, 2, 1, 1, 2])
_I_PLAIN = Map(Seq(Alt(b"", _POP3_USER), b"\x00", Alt(ALICE.encode(), _POP3_USER), b"\x00",
                   Alt(ALICE_PW.encode(), _POP3_PASS)), b64)
_I_RETURN = Alt(b"()", b"(MIN MAX COUNT ALL)", b"(SAVE)", b"(SAVE MIN)", b"(COUNT)", b"(ALL",
                b"(BOGUS)", b"MIN", Deep(b"(", b"MIN", b")", 2, 300),
                # CONTEXT=SEARCH (RFC 5267)
                b"(PARTIAL 1:5)", b"(PARTIAL 5:1 COUNT)", b"(PARTIAL 0:1)", b"(PARTIAL)",
                b"(PARTIAL 1:99999999999)", b"(UPDATE)", b"(UPDATE COUNT)", b"(CONTEXT ALL)")
_I_SORT_KEY = Alt(b"ARRIVAL", b"CC", b"DATE", b"FROM", b"SIZE", b"SUBJECT", b"TO",
                  b"DISPLAYFROM", b"DISPLAYTO", b"REVERSE", b"BOGUS")
_I_SORT = Alt(Seq(b"(", Rep(Seq(Opt(b"REVERSE "), _I_SORT_KEY), 1, 4, sep=b" "), b")"), b"()",
              b"(" + b"SUBJECT " * 1000 + b"DATE)", b"SUBJECT", b"(SUBJECT",
              weights=[10, 1, 1, 1, 1])
_I_CHARSET = Alt(b"UTF-8", b"US-ASCII", b"KOI8-R", b"", weights=[6, 3, 1, 1])
_I_UIDABLE = Alt(
    Seq(verb(b"FETCH"), b" ", _I_SEQ, b" ", _I_FETCH),
    Seq(verb(b"STORE"), b" ", _I_SEQ, b" ",
        Alt(b"FLAGS", b"+FLAGS", b"-FLAGS", b"FLAGS.SILENT", b"+FLAGS.SILENT", b"-FLAGS.SILENT",
            b"XFLAGS", b"+FLAGS.LOUD"), b" ", _I_FLAGS),
    Seq(verb(b"SEARCH"), Opt(Seq(b" CHARSET ", Alt(b"UTF-8", b"US-ASCII", b"X-BOGUS", b"utf-8"))),
        b" ", Rep(_I_SEARCH_KEY, 1, 3, sep=b" ")),
    Seq(verb(b"COPY"), b" ", _I_SEQ, b" ", _I_MAILBOX),
    Seq(verb(b"MOVE"), b" ", _I_SEQ, b" ", _I_MAILBOX),
    Seq(verb(b"EXPUNGE"), Opt(Seq(b" ", _I_SEQ))),
    Seq(verb(b"SEARCH"), b" RETURN ", _I_RETURN, b" ", Rep(_I_SEARCH_KEY, 1, 3, sep=b" ")),
    Seq(verb(b"SORT"), Opt(Seq(b" RETURN ", _I_RETURN)), b" ", _I_SORT, b" ", _I_CHARSET, b" ",
        Rep(_I_SEARCH_KEY, 1, 3, sep=b" ")),
    Seq(verb(b"THREAD"), b" ", Alt(b"REFERENCES", b"ORDEREDSUBJECT", b"references", b"BOGUS",
                                  b"", b"REFS"),
        b" ", _I_CHARSET, b" ", Rep(_I_SEARCH_KEY, 1, 3, sep=b" ")),
    weights=[10, 5, 5, 2, 2, 1, 3, 3, 2],
)
_IMAP_COMMAND = Alt(
    verb(b"CAPABILITY"), verb(b"NOOP"), verb(b"LOGOUT"),
    Seq(verb(b"ID"), b" ", Alt(b"NIL", b'("name" "fuzz" "version" "1")', b"()",
                              Seq(b"(", Rep(Seq(_I_TEXT, b" ", _I_TEXT), 0, 40, sep=b" "), b")"),
                              Deep(b"(", b'"a" "b"', b")", 2, 300))),
    verb(b"STARTTLS"),
    Seq(verb(b"LOGIN"), b" ", _I_USER, b" ", _I_PASS),
    Seq(verb(b"AUTHENTICATE"), b" ", Alt(b"PLAIN", b"plain"),
        Alt(Seq(b" ", _I_PLAIN), Seq(b"\r\n", _I_PLAIN), b"\r\n*", b" =", b"\r\n!!",
            b"\r\n")),
    Seq(verb(b"AUTHENTICATE"), b" ", Alt(b"LOGIN", b"CRAM-MD5", b"XOAUTH2", b""),
        Opt(Seq(b" ", _I_PLAIN))),
    Seq(verb(b"ENABLE"), b" ", Alt(b"CONDSTORE", b"UTF8=ACCEPT", b"QRESYNC IMAP4rev2", b"")),
    verb(b"NAMESPACE"),
    Seq(verb(b"SELECT"), b" ", _I_MAILBOX, Opt(b" (CONDSTORE)")),
    Seq(verb(b"EXAMINE"), b" ", _I_MAILBOX),
    Seq(verb(b"CREATE"), b" ", _I_MAILBOX),
    Seq(verb(b"DELETE"), b" ", _I_MAILBOX),
    Seq(verb(b"RENAME"), b" ", _I_MAILBOX, b" ", _I_MAILBOX),
    Seq(Alt(verb(b"SUBSCRIBE"), verb(b"UNSUBSCRIBE")), b" ", _I_MAILBOX),
    Seq(verb(b"LIST"), b" ", Opt(Alt(b"(SPECIAL-USE) ", b"(SUBSCRIBED) ", b"() ",
                                      b"(SUBSCRIBED RECURSIVEMATCH) ", b"(RECURSIVEMATCH) ",
                                      b"(REMOTE SPECIAL-USE) ", b"(BOGUS) ")),
        Alt(b'""', b"Fuzz/", _I_MAILBOX), b" ", Alt(b"*", b"%", b'""', b"Fuzz/%", b"*/*",
                                                      b"%" * 50, _I_MAILBOX,
                                                      b'("INBOX" "Fuzz/%")', b"()", b'("*"'),
        Opt(Alt(b" RETURN (SPECIAL-USE)", b" RETURN (CHILDREN SUBSCRIBED)", b" RETURN (X)",
                b" RETURN (STATUS (MESSAGES SIZE APPENDLIMIT))", b" RETURN (STATUS ())",
                b" RETURN ()", b" RETURN (STATUS (MESSAGES) STATUS (UNSEEN))"))),
    Seq(verb(b"COMPRESS"), Alt(b" GZIP", b"", b" DEFLATE x", b" (DEFLATE)")),
    Seq(verb(b"LSUB"), b' "" ', Alt(b"*", b"%", _I_MAILBOX)),
    Seq(verb(b"STATUS"), b" ", _I_MAILBOX, b" ",
        Alt(b"(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)", b"(MESSAGES)", b"()",
            b"(BOGUS)", b"(HIGHESTMODSEQ)", b"MESSAGES", b"(" + b"MESSAGES " * 100 + b")",
            b"(SIZE APPENDLIMIT)", b"(SIZE", b"(DELETED DELETED-STORAGE)")),
    Seq(verb(b"APPEND"), b" ", _I_MAILBOX, Opt(Seq(b" ", _I_FLAGS)), Opt(Seq(b" ", _I_DATETIME)),
        b" ", Alt(Map(_I_MESSAGE, _literal), Map(_I_MESSAGE, _literalPlus), b"{0}\r\n",
                  b"{0+}\r\n", b"NIL", b'"quoted message"'),
        Opt(Seq(b" ", Opt(Seq(_I_FLAGS, b" ")), Alt(Map(_I_MESSAGE, _literalPlus),
                                                   Map(_I_MESSAGE, _literal), b"{0+}\r\n",
                                                   b"junk")))),
    Seq(verb(b"IDLE"), b"\r\n", Alt(b"DONE", b"done", b"NOTDONE", b"DONE extra", b" ")),
    Seq(verb(b"APPEND"), b" ", _I_MAILBOX, b" ",
        Alt(Map(_I_MESSAGE, _literal8Plus), Seq(b"UTF8 (", Map(_I_MESSAGE, _literal8Plus), b")"),
            Seq(b"UTF8 ", Map(_I_MESSAGE, _literal8Plus)), b"~{5}\r\n\x00\x01\x02\x03\x04",
            b"UTF8 ()")),
    Seq(Alt(verb(b"GETQUOTAROOT"), verb(b"GETQUOTA")), b" ",
        Alt(_I_MAILBOX, b'"User quota"', b'""', b"", b"(x)")),
    Seq(verb(b"SETQUOTA"), b" ", Alt(b'"User quota"', _I_MAILBOX), b" ",
        Alt(b"(STORAGE 512)", b"()", b"(STORAGE)", b"(STORAGE 99999999999999999999)", b"x")),
    Seq(verb(b"GETMETADATA"), b" ",
        Opt(Alt(b"(MAXSIZE 10) ", b"(DEPTH infinity) ", b"(DEPTH 1 MAXSIZE 1) ",
                b"(DEPTH 2) ", b"(FOO) ", b"() ")),
        Alt(b'""', _I_MAILBOX), b" ",
        Alt(b"/private/comment", b"(/shared/comment /private/x)", b"/bad", b"()", b"*",
            b"/private/" + b"a/" * 300 + b"b", b"(/private/a")),
    Seq(verb(b"SETMETADATA"), b" ", Alt(b'""', _I_MAILBOX), b" ",
        Alt(b'(/private/comment "fuzz")', b"(/private/comment NIL)",
            b'(/shared/x "a" /private/y "b")',
            Seq(b"(/private/bin ", Map(_I_TEXT, _literal8Plus), b")"), b"(/private/x)",
            b'(/bad "x")', b"()", b'(/private/big "' + b"x" * 20000 + b'")',
            Seq(b"(", Rep(Seq(b"/private/k", Num(0, 999), b' "v"'), 30, 60, sep=b" "), b")"))),
    verb(b"CHECK"), verb(b"CLOSE"), verb(b"UNSELECT"),
    _I_UIDABLE,
    Seq(b"UID ", _I_UIDABLE),
    Seq(b"UID ", Alt(b"NOOP", b"", b"LOGIN x y", b"UID FETCH 1 FLAGS")),
    Seq(Blob(ALNUM, 1, 10), Opt(Seq(b" ", Blob(PRINTABLE, 0, 40)))),
    b"", b"FETCH", Blob(ANY_OCTET, 1, 20),
    # NOTIFY (RFC 5465)
    Seq(verb(b"NOTIFY"), b" ", Alt(
        b"NONE", b"SET (SELECTED (MessageNew MessageExpunge))",
        b"SET STATUS (PERSONAL (MessageNew MessageExpunge FlagChange))",
        b"SET (SELECTED-DELAYED (MessageNew (UID BODY.PEEK[HEADER]) MessageExpunge))",
        b"SET (SUBTREE (Fuzz INBOX) (MailboxName SubscriptionChange))",
        b"SET (INBOXES (AnnotationChange))", b"SET (MAILBOXES INBOX (MessageNew (BODY[])))",
        b"SET (BOGUS NONE)", b"SET", b"SET ()", b"NONE x",
        Seq(b"SET ", Rep(b"(MAILBOXES x NONE)", 60, 70, sep=b" ")))),
    Seq(verb(b"CANCELUPDATE"), Alt(b' "t1"', b"", b" t1", b' "a" "b"', b" ()")),
    # CATENATE and URL-PARTIAL (RFC 4469, RFC 5550)
    Seq(verb(b"APPEND"), b" ", _I_MAILBOX, Opt(Seq(b" ", _I_FLAGS)), b" CATENATE (",
        Rep(Alt(Seq(b"TEXT ", Map(_I_MESSAGE, _literalPlus)), b'URL "/INBOX/;UID=1"',
                b'URL "/INBOX;UIDVALIDITY=1/;UID=1/;SECTION=HEADER"',
                b'URL "/INBOX/;UID=1/;SECTION=1.MIME/;PARTIAL=0.10"',
                b'URL "imap://mx.example.org/INBOX/;UID=1"', b'URL "/INBOX/;UID=99"',
                b"URL", b"TEXT", b"BOGUS x", b'URL "/Fuzz/;UID=1/;SECTION=BOGUS"'),
            0, 4, sep=b" "), b")"),
    weights=[2, 3, 1, 2, 1, 3, 3, 1, 1, 1, 5, 2, 2, 2, 2, 2, 4, 1, 1, 3, 5, 2, 2, 2, 1, 2, 1, 1,
             1, 20, 6, 1, 2, 1, 1, 1, 2, 1, 2],
)


class IMAPFuzzer(Fuzzer):
    """The IMAP room: L{pymaild.imap.server.IMAPFactory} over the real stack."""

    name = "imap"
    variants = ("loopback", "remote-tls", "auth", "selected", "examine", "imaps")
    unit = _IMAP_COMMAND
    payloads = COMMON_PAYLOADS + (b"x STARTTLS\r\n", b"DONE\r\n", b"x IDLE\r\n", b"* ",
                                  b"x AUTHENTICATE PLAIN\r\n", b"+ ", b"x FETCH 1:* BODY[]\r\n",
                                  b"x APPEND INBOX {20}\r\n", b"x SELECT INBOX\r\n")
    lengths = (8191, 8192, 8193, 65535, 65536, 65537, 70000)
    maxLiteral = 1000000

    def configOverrides(self) -> dict[str, Any]:
        """The defaults, with APPEND literals capped at 1 MB to keep runs short."""
        overrides = super().configOverrides()
        overrides["imap"] = {"max_literal": self.maxLiteral}
        return overrides

    def setUp(self) -> None:
        """IMAP avatars (no inotify watcher), realm and portal over the store."""
        quotas = Quotas(self.passwd, self.store, QuotaLimits(storage=1 << 20, messages=50))
        avatars = IMAPAvatars(self.store, self.runner, self.config, registry=Registry(),
                              cache=StructureCache(), watcher=False, quotas=quotas)
        self.portal = Portal(MailRealm({imap4.IAccount: avatars}),
                             [PasswdChecker(self.passwd, self.runner), AllowAnonymousAccess()])
        self._standard = {"INBOX"}

    def prefix(self, variant: str) -> list[bytes]:
        """LOGIN, and SELECT/EXAMINE INBOX, for the variants that need them.

        Their tags are long enough that no mutation of the body can forge them.
        """
        login = b'Prefix.Login LOGIN alice@example.org "correct horse"\r\n'
        if variant == "auth":
            return [login]
        if variant == "selected":
            return [login, b"Prefix.Select SELECT INBOX\r\n"]
        if variant == "examine":
            return [login, b"Prefix.Select EXAMINE INBOX\r\n"]
        return []

    def render(self, inp: FuzzInput) -> tuple[bytes, list[tuple[bytes, int, int]]]:
        """Tag each unit C{T<n>}; remember where every tagged command starts and ends."""
        spans: list[tuple[bytes, int, int]] = []
        parts: list[bytes] = []
        pos = 0
        for unit in self.prefix(inp.variant):
            spans.append((unit.split(b" ", 1)[0], pos, pos + len(unit)))
            parts.append(unit)
            pos += len(unit)
        prefix = b"".join(parts)
        body = []
        for n, unit in enumerate(inp.units):
            tag = b"T%d" % n
            line = tag + b" " + unit + b"\r\n"
            spans.append((tag, pos, pos + len(line)))
            body.append(line)
            pos += len(line)
        data = b"".join(body)
        if inp.mutations:
            data = mutate(data, inp.mutations, self.payloads, self.lengths)
            spans = spans[: len(self.prefix(inp.variant))]
        return prefix + data, spans

    def prepare(self) -> None:
        """Keep INBOX stocked; now and then remove the folders inputs created."""
        topUp(self.store, ALICE)
        if self.count % 50 == 0:
            account = self.store.account(ALICE)
            for name in sorted(account.listFolders(), key=lambda n: -n.count("/")):
                if name.upper() != "INBOX":
                    try:
                        account.deleteFolder(name)
                    except Exception:  # noqa: BLE001 - best effort clean-up
                        pass

    def connect(self, variant: str) -> Session:
        """An IMAP connection for C{variant}."""
        gateClock, serverClock = task.Clock(), task.Clock()
        gate = AuthGate(self.portal, AuthPenalty(), gateClock)
        factory = IMAPFactory(config=self.config, gate=gate, tlsContext=TLS_CONTEXT,
                              implicitTLS=variant == "imaps", clock=serverClock,
                              spoolRunner=self.runner)
        host = REMOTE if variant in ("remote-tls", "imaps") else LOOPBACK
        transportClass = {"remote-tls": TLSStringTransport, "imaps": SSLStringTransport}.get(
            variant, StringTransport)
        proto, transport = _connect(factory, host, transportClass, 143)
        return Session(proto, transport, gateClock, serverClock)

    def finish(self, session: Session, record: Record) -> None:
        """Complete whatever the input left open (a literal, a line, IDLE, a SASL
        exchange: anything the server still sends a C{+} continuation for), then NOOP.

        Reads the protocol's literal counter to know how many octets a pending literal
        still needs: that is the client's knowledge, which the harness does not keep.
        """
        proto = session.proto
        for _ in range(8):
            if session.transport.disconnecting or record.problems:
                return
            sink = getattr(proto, "_sink", None)
            if sink is not None and sink.remaining:
                remaining = sink.remaining
                while remaining > 0 and not record.problems:
                    n = min(remaining, 65536)
                    if not self.feed(session, record, b"x" * n, kind="finish"):
                        return
                    remaining -= n
            if not self.feed(session, record, b"\r\n", kind="finish"):
                return
            self.settle(session, record, final=True)
            out = session.transport.value()
            waiting = out.endswith(b"\r\n") and out[out.rfind(b"\r\n", 0, -2) + 2 :][:1] == b"+"
            if (getattr(proto, "_sink", None) is None and getattr(proto, "_parts", None) is None
                    and not getattr(proto, "_inbuf", b"") and not waiting):
                break
        if session.transport.disconnecting or record.problems:
            return
        self.feed(session, record, b"ZZSYNC NOOP\r\n", kind="finish")
        self.settle(session, record, final=True)

    def visible(self, record: Record) -> bytes:
        """The output without literal data (message content stored by earlier inputs)."""
        literals: list[tuple[int, int]] = []
        try:
            _parseIMAP(record.output, literals)
        except Violation:
            return record.output  # check() reports the malformed output
        parts = []
        pos = 0
        for start, end in literals:
            parts.append(record.output[pos:start])
            pos = end
        parts.append(record.output[pos:])
        return b"".join(parts)

    def check(self, record: Record) -> None:
        """Responses well-formed; every tag answered once and in order; NOOP answered."""
        responses = _parseIMAP(record.output)
        if not responses or not responses[0][0] == b"*" or not responses[0][1] == b"OK":
            raise Violation(f"bad greeting {record.output[:200]!r}")
        if b"[SERVERBUG]" in record.output:
            raise Violation("an internal error was reported to the client")
        tagged: list[tuple[bytes, bytes, int]] = []
        everything = record.stream[: record.fed] + record.extra
        for tag, status, text, end in responses:
            if tag in (b"*", b"+"):
                continue
            if status not in (b"OK", b"NO", b"BAD"):
                raise Violation(f"tagged response with status {status!r}: {text[:200]!r}")
            if tag not in everything:
                raise Violation(f"response for a tag the client never sent: {tag[:100]!r}")
            tagged.append((tag, status, end))
        byes = [r for r in responses if r[0] == b"*" and r[1] == b"BYE"]
        if record.closed:
            if not byes:
                raise Violation("connection closed without a BYE")
        else:
            sync = [t for t in tagged if t[0] == b"ZZSYNC"]
            if len(sync) != 1 or sync[0][1] != b"OK" or tagged[-1][0] != b"ZZSYNC":
                raise Violation(f"the final NOOP was not answered exactly once with OK "
                                f"(got {sync!r}; last tagged {tagged[-1:]!r})")
        # Exact accounting ends at a successful STARTTLS: the plaintext behind it is
        # dropped, and what is left of a half-dropped command may even carry a tag.
        spans = {tag: (start, end) for tag, start, end in record.spans}
        tlsIndex = len(tagged)
        for i, (tag, status, _end) in enumerate(tagged):
            span = spans.get(tag)
            if status == b"OK" and span is not None:
                command = record.stream[span[0] + len(tag) + 1 : span[1]]
                if command.strip().upper() == b"STARTTLS":
                    tlsIndex = i
                    break
        positions: dict[bytes, list[int]] = {}
        for i, (tag, _status, _end) in enumerate(tagged[: tlsIndex + 1]):
            positions.setdefault(tag, []).append(i)
        previous = -1
        for tag, start, _end in record.spans:
            if start >= record.fed:
                break
            got = positions.get(tag, [])
            if len(got) > 1:
                raise Violation(f"command {tag!r} got {len(got)} tagged responses")
            if not got:
                if record.closed:
                    break
                raise Violation(f"command {tag!r} got no tagged response")
            if got[0] < previous:
                raise Violation(f"command {tag!r} was answered out of order")
            previous = got[0]
            if got[0] == tlsIndex:
                break


_LIT_END = re.compile(rb"\{(\d+)\}$")


def _parseIMAP(out: bytes, literals: list[tuple[int, int]] | None = None,
               ) -> list[tuple[bytes, bytes, bytes, int]]:
    """Split IMAP server output into responses: (tag or * or +, status, text, end offset).

    Literals announced at the end of an untagged response line (FETCH data) are skipped;
    their (start, end) offsets are appended to C{literals} when given.

    @raise Violation: the output is not a sequence of complete, well-formed responses.
    """
    out_: list[tuple[bytes, bytes, bytes, int]] = []
    pos = 0
    n = len(out)
    while pos < n:
        start = pos
        untagged = out.startswith(b"* ", pos)
        first: bytes | None = None
        while True:
            i = out.find(b"\r\n", pos)
            if i < 0:
                raise Violation(f"output ends inside a response: {out[start:][:200]!r}")
            if first is None:
                first = out[start:i]
            m = _LIT_END.search(out, pos, i) if untagged else None
            if m is None:
                pos = i + 2
                break
            pos = i + 2 + int(m.group(1))
            if literals is not None:
                literals.append((i + 2, pos))
            if pos > n:
                raise Violation(f"literal runs past the end of the output: {first[:200]!r}")
        assert first is not None
        if first.startswith(b"+"):
            if first != b"+" and not first.startswith(b"+ "):
                raise Violation(f"malformed continuation request {first[:200]!r}")
            out_.append((b"+", b"", first[2:], pos))
            continue
        tag, sp, rest = first.partition(b" ")
        status, _, text = rest.partition(b" ")
        if not sp or not tag or not status:
            raise Violation(f"malformed response line {first[:200]!r}")
        out_.append((tag, status.upper() if tag != b"*" else status, text, pos))
    return out_


# -- SMTP ---------------------------------------------------------------------------------

_S_DOMAIN = Alt(b"client.example", b"[192.0.2.1]", b"[IPv6:::1]", b"localhost", b"x" * 300,
                b"\xc3\xa9.example", b"a..b", b"[999.1.1.1]", b"-bad-.example", b"",
                weights=[10, 2, 1, 1, 1, 1, 1, 1, 1, 1])
_S_ADDR = Alt(ALICE.encode(), b"ALICE@EXAMPLE.ORG", b"alice+tag@example.org", BOB.encode(),
              b"postmaster", b"Postmaster@example.org", b"nobody@example.org",
              b"someone@remote.example", b'"quoted local"@example.org',
              b"@relay.example:alice@example.org", b"alice@[127.0.0.1]",
              b"\xce\xb4\xce\xbf\xce\xba@example.org", b"a" * 65 + b"@example.org",
              b"alice@", b"@example.org", b"", b"alice@example.org@example.org",
              b"a@" + b"b" * 300 + b".example", b"alice@example.org.", b"\xff@example.org",
              weights=[8, 1, 2, 3, 1, 1, 2, 3] + [1] * 12)
_S_PATH = Alt(Seq(b"<", _S_ADDR, b">"), _S_ADDR, b"<>", Seq(b"<", _S_ADDR),
              Seq(b"< ", _S_ADDR, b" >"), Seq(b"<<", _S_ADDR, b">>"),
              weights=[12, 2, 2, 1, 1, 1])
_S_MAIL_PARAM = Alt(b"SIZE=100", b"SIZE=99999999999999999999999", b"SIZE=-1", b"SIZE=",
                    b"SIZE", b"BODY=8BITMIME", b"BODY=7BIT", b"BODY=BINARYMIME", b"SMTPUTF8",
                    b"SMTPUTF8=yes", b"AUTH=<>", b"AUTH=alice@example.org", b"RET=FULL",
                    b"ENVID=x", b"X=" + b"y" * 1000, b"=", b"SIZE=1=2")
_S_DATA_LINE = Alt(b"Subject: fuzz", b"", b".", b"..", b".hidden", b"From: x@remote.example",
                   Blob(PRINTABLE, 0, 60), b"8bit \xff\xfe", b"bare\rcr", b"bare\nlf",
                   b"x" * 17000, b"MAIL FROM:<x@remote.example>", b"\x00nul",
                   weights=[3, 3, 1, 1, 1, 2, 5, 1, 1, 1, 1, 1, 1])
_S_USER = Alt(ALICE.encode(), BOB.encode(), b"nobody@example.org", b"", b"\xff",
              weights=[6, 1, 1, 1, 1])
_S_PASS = Alt(ALICE_PW.encode(), b"wrong", b"", weights=[6, 1, 1])
_S_PLAIN = Map(Seq(Alt(b"", _S_USER), b"\x00", _S_USER, b"\x00", _S_PASS), b64)
_SMTP_COMMAND = Alt(
    Seq(Alt(verb(b"EHLO"), verb(b"HELO")), Opt(Seq(b" ", _S_DOMAIN))),
    Seq(verb(b"MAIL"), b" ", Alt(b"FROM:", b"from:", b"FROM: ", b"FROM", b"TO:"), _S_PATH,
        Rep(Seq(b" ", _S_MAIL_PARAM), 0, 3)),
    Seq(verb(b"RCPT"), b" ", Alt(b"TO:", b"to:", b"TO: ", b"FROM:"), _S_PATH,
        Opt(Alt(b" NOTIFY=NEVER", b" ORCPT=rfc822;x@remote.example", b" X"))),
    Seq(verb(b"DATA"), b"\r\n", Rep(Seq(_S_DATA_LINE, b"\r\n"), 0, 8), b"."),
    Seq(verb(b"DATA"), Alt(b" x", b"")),
    Seq(verb(b"AUTH"), b" ", Alt(
        Seq(b"PLAIN ", _S_PLAIN), Seq(b"PLAIN\r\n", _S_PLAIN),
        Seq(b"LOGIN\r\n", Map(_S_USER, b64), b"\r\n", Map(_S_PASS, b64)),
        Seq(b"LOGIN ", Map(_S_USER, b64), b"\r\n", Map(_S_PASS, b64)),
        b"PLAIN\r\n*", b"LOGIN\r\n*", b"CRAM-MD5", b"", b"PLAIN =", b"PLAIN !!!!",
        b"PLAIN " + b"A" * 13000, b"PLAIN a b c", b"XOAUTH2 abc")),
    Seq(verb(b"NOOP"), Opt(b" x")), Seq(verb(b"RSET"), Opt(b" x")),
    Seq(verb(b"VRFY"), Opt(Seq(b" ", _S_ADDR))), Seq(verb(b"EXPN"), b" staff"),
    verb(b"HELP"), b"BDAT 10 LAST", verb(b"STARTTLS"), b"STARTTLS now", verb(b"QUIT"),
    b"", b" ", Blob(PRINTABLE, 1, 30), Blob(ANY_OCTET, 1, 20), b"MAIL FROM:<a@b>\x00x",
    weights=[5, 8, 10, 5, 1, 4, 2, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1],
)


class SMTPFuzzer(Fuzzer):
    """The SMTP room: L{pymaild.smtp.server.SMTPFactory} (MX and submission)."""

    name = "smtp"
    variants = ("mx-remote-tls", "mx-loopback", "mx-ehlo", "submission-auth",
                "submission-remote", "smtps")
    unit = Seq(_SMTP_COMMAND, b"\r\n")
    payloads = COMMON_PAYLOADS + (b"STARTTLS\r\n", b"DATA\r\n", b"\r\n.\r\nRSET\r\n",
                                  b"AUTH LOGIN\r\n", b"RCPT TO:<alice@example.org>\r\n",
                                  b"\r\n.\r\nMAIL FROM:<x@remote.example>\r\n", b"\n.\r\n",
                                  b"\r\n.\n", b"\r.\r\n")
    lengths = (4095, 4096, 4097, 12288, 12289, 16383, 16384, 16385, 16386, 20000)
    #: The error tarpit's delay (L{SMTPFactory}'s default C{errorSleepTime}).
    shortServerTimer = 1.0

    def configOverrides(self) -> dict[str, Any]:
        """Two domains; a small message size limit so SIZE and DATA limits are reached."""
        overrides = super().configOverrides()
        overrides["smtp"] = {"max_message_size": 20000, "max_recipients": 5}
        return overrides

    def setUp(self) -> None:
        """Directory, delivery avatars with the real outbound queue, realm and portal."""
        self.clock = task.Clock()
        directory = Directory(self.passwd, self.config.domains,
                              self.config.smtp.recipient_delimiter)

        def localDelivery(recipient: str, data: bytes) -> defer.Deferred[Any]:
            return self.runner.run(self.store.deliver, directory.resolve(recipient), data)

        self.queue = Queue(os.path.join(self.base, "queue"), self.runner, self.clock,
                           self.config, HOSTNAME, localDelivery)
        avatars = DeliveryAvatars(self.store, directory, self.runner, self.config, self.queue,
                                  clock=self.clock)
        self.portal = Portal(MailRealm({smtp.IMessageDelivery: avatars}),
                             [PasswdChecker(self.passwd, self.runner), AllowAnonymousAccess()])

    def prepare(self) -> None:
        """An hour passes between inputs, so the submission rate limit (per user and
        hour) does not end up refusing every message of a long run."""
        self.clock.advance(3601)

    def prefix(self, variant: str) -> list[bytes]:
        """EHLO (and AUTH for the submission variant)."""
        if variant == "mx-ehlo":
            return [b"EHLO client.example\r\n"]
        if variant == "submission-auth":
            return [b"EHLO client.example\r\n",
                    b"AUTH PLAIN " + b64(b"\x00" + ALICE.encode() + b"\x00" + ALICE_PW.encode())
                    + b"\r\n"]
        return []

    def connect(self, variant: str) -> Session:
        """An SMTP connection for C{variant}."""
        gateClock, serverClock = task.Clock(), task.Clock()
        gate = AuthGate(self.portal, AuthPenalty(), gateClock)
        role = "submission" if variant.startswith("submission") or variant == "smtps" else "mx"
        factory = SMTPFactory(self.config, gate, self.portal, TLS_CONTEXT, role,
                              variant == "smtps", serverClock)
        host = REMOTE if variant in ("mx-remote-tls", "submission-remote", "smtps") else LOOPBACK
        transportClass = {"mx-remote-tls": TLSStringTransport,
                          "submission-remote": TLSStringTransport,
                          "smtps": SSLStringTransport}.get(variant, StringTransport)
        proto, transport = _connect(factory, host, transportClass, 25)
        return Session(proto, transport, gateClock, serverClock)

    def check(self, record: Record) -> None:
        """Walk the dialogue as a client: one reply per command, DATA and AUTH framed."""
        replies = _parseSMTP(record.output)
        if not replies or replies[0][0] != 220:
            raise Violation(f"bad greeting {record.output[:200]!r}")
        r = 1
        mode = "command"
        closedBy: int | None = None
        lines = LineWalker(record.stream[: record.fed], b"\r\n")
        while (item := lines.next()) is not None:
            i, line, _end = item
            if mode == "data" and line != b".":
                continue
            if r >= len(replies):
                if record.closed:
                    break
                raise Violation(f"no reply to line {i} {line[:200]!r} (mode {mode})")
            code, _text, outEnd = replies[r]
            r += 1
            verb = line.strip(b" \t").partition(b" ")[0].upper() if mode == "command" else b""
            expected = {354: b"DATA", 221: b"QUIT", 220: b"STARTTLS"}.get(code)
            if code in (334, 235) and mode != "auth":
                expected = b"AUTH"
            if mode == "data" or (expected is not None and verb != expected):
                if mode != "data" or code in (354, 334, 235, 220, 221):
                    raise Violation(f"reply {code} {_text[:100]!r} to line {i} {line[:100]!r} "
                                    f"(mode {mode})")
            if mode == "data":
                mode = "command"
            elif code == 354:
                mode = "data"
            elif code == 334:
                mode = "auth"
            else:
                if code == 220:
                    # Plaintext pipelined behind STARTTLS is dropped unseen.
                    lines.restart(record.steps[record.emitStep(outEnd)].inEnd)
                mode = "command"
            if code in (221, 421):
                closedBy = code
                break
            if code >= 400 and r < len(replies) and replies[r][0] == 421:
                closedBy = 421
                r += 1
                break
        if r < len(replies):
            raise Violation(f"unexpected replies {replies[r:][:3]!r}")
        if record.closed and closedBy is None:
            raise Violation("connection closed without 221 or 421")
        if closedBy is not None and not record.closed:
            raise Violation(f"{closedBy} sent but the connection stays open")


_SMTP_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)$", re.S)


def _parseSMTP(out: bytes) -> list[tuple[int, bytes, int]]:
    """Split SMTP server output into replies: (code, text of the last line, end offset).

    @raise Violation: a line is not C{ddd-text} / C{ddd text}, or a multi-line reply
        changes its code or is cut short.
    """
    cur = _Cursor(out)
    replies = []
    code: int | None = None
    while not cur.atEnd():
        line = cur.line()
        m = _SMTP_LINE.match(line)
        if m is None:
            raise Violation(f"malformed reply line {line[:200]!r}")
        this = int(m.group(1))
        if code is not None and this != code:
            raise Violation(f"multi-line reply changes code: {code} then {line[:200]!r}")
        if m.group(2) == b"-":
            code = this
            continue
        code = None
        replies.append((this, m.group(3), cur.pos))
    if code is not None:
        raise Violation("output ends inside a multi-line reply")
    return replies


FUZZERS: dict[str, type[Fuzzer]] = {"pop3": POP3Fuzzer, "imap": IMAPFuzzer, "smtp": SMTPFuzzer}


def writeReproducer(directory: str, inp: FuzzInput, error: str, stream: bytes) -> str:
    """Write C{inp} and what went wrong as JSON under C{directory}; return the path."""
    os.makedirs(directory, exist_ok=True)
    data = inp.toJSON()
    data["error"] = error
    data["stream"] = stream.decode("latin-1")
    name = f"{inp.protocol}-{int(time.time() * 1000)}-{os.getpid()}.json"
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    return path


def readReproducer(path: str) -> FuzzInput:
    """The input saved by L{writeReproducer}."""
    with open(path, encoding="utf-8") as f:
        return FuzzInput.fromJSON(json.load(f))


def fuzzSettings() -> Any:
    """The hypothesis settings profile for the fuzz tests.

    C{HYPOTHESIS_PROFILE=fuzz-long} (2 000 examples per test) or C{fuzz-soak} (20 000)
    select longer, randomised runs; otherwise the tests run a fixed, modest set.
    """
    from hypothesis import HealthCheck, settings

    base = settings(database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])
    settings.register_profile("fuzz-long", base, max_examples=2000, derandomize=False)
    settings.register_profile("fuzz-soak", base, max_examples=20000, derandomize=False)
    name = os.environ.get("HYPOTHESIS_PROFILE")
    return settings.get_profile(name) if name else base


def examples(n: int) -> int:
    """C{n}, or the selected profile's example count when C{HYPOTHESIS_PROFILE} is set."""
    if os.environ.get("HYPOTHESIS_PROFILE"):
        return int(fuzzSettings().max_examples)
    return n


def derandomize() -> bool:
    """Whether examples are fixed (the default) or random (a named profile)."""
    if os.environ.get("HYPOTHESIS_PROFILE"):
        return bool(fuzzSettings().derandomize)
    return True


def fuzzCase(n: int) -> Any:
    """The hypothesis settings of a property test of C{n} examples: the fuzz profile
    (L{fuzzSettings}), no deadline, fixed examples unless a profile is chosen."""
    from hypothesis import settings

    return settings(fuzzSettings(), max_examples=examples(n), deadline=None,
                    derandomize=derandomize())


class FuzzCase(SynchronousTestCase):
    """Base of the per-protocol fuzz test cases: a fuzzer of C{fuzzerClass} over a
    fresh store, cheap password hashing and a frozen heap for each test."""

    fuzzerClass: Any = None

    def setUp(self) -> None:
        """A fuzzer over a fresh store, cheap password hashing, a frozen heap."""
        self.addCleanup(cheapHashing())
        self.fuzzer = self.fuzzerClass(self.mktemp())
        self.addCleanup(freezeHeap())
