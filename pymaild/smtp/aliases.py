"""The aliases file: extra addresses that forward to accounts or other addresses.

Format (``smtp.aliases`` in the configuration; a missing or empty path means no
aliases)::

    # comment
    info@example.org:      alice@example.org, bob@example.org
    abuse:                 postmaster          # every local domain; target in the same domain
    sales@example.org:     alice, partner@elsewhere.example
        , archive@example.org                  # a line starting with white space continues
    @example.net:          alice@example.org   # catch-all: unknown addresses of the domain

A key without a domain applies to every local domain; a target without a domain is in
the domain of the address being looked up. Targets may be local or remote addresses;
pipes (C{|cmd}), files (C{/path}) and C{:include:} are refused with a logged warning.
A malformed line is skipped with a warning, so a typo never stops mail for everyone.

The file is re-read when it changes (its size, modification time or inode), checked on
each lookup: lookups are blocking and run in the disk L{pymaild.threads.Runner}.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.logger import Logger

from pymaild.address import canonical, normaliseDomain
from pymaild.errors import AddressError
from pymaild.files import writeFileAtomic

log = Logger()

_Stamp = tuple[int, int, int, int]


@dataclass(frozen=True)
class AliasTable:
    """One parsed version of the aliases file.

    @ivar exact: canonical C{local@domain} → targets.
    @ivar anyDomain: lower-cased local part → targets (keys written without a domain).
    @ivar catchAll: normalised domain → targets (C{@domain} keys).
    """

    exact: dict[str, tuple[str, ...]] = field(default_factory=dict)
    anyDomain: dict[str, tuple[str, ...]] = field(default_factory=dict)
    catchAll: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.exact) + len(self.anyDomain) + len(self.catchAll)


def _qualify(target: str, domain: str) -> str:
    """C{target} with C{domain} added when it has none."""
    return target if "@" in target else f"{target}@{domain}"


def _checkTarget(target: str) -> str | None:
    """Why C{target} is unusable, or None when it is fine."""
    if target.startswith(("|", "/", ":include:", '"|')):
        return "pipes, files and :include: are not supported"
    probe = target if "@" in target else f"{target}@example.invalid"
    try:
        canonical(probe)
    except AddressError as e:
        return str(e)
    return None


@dataclass(frozen=True)
class Entry:
    """One entry of the file as written: its lines (1-based, inclusive), key and
    targets (not yet checked)."""

    first: int
    last: int
    key: str
    targets: tuple[str, ...]
    colon: bool


def entries(lines: Iterable[str]) -> list[Entry]:
    """The entries of an aliases file's text, continuation lines joined, comments
    dropped."""
    joined: list[tuple[int, int, str]] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if line[0] in " \t" and joined:
            first, _, text = joined[-1]
            joined[-1] = (first, number, text + " " + line.strip())
        else:
            joined.append((number, number, line.strip()))
    out = []
    for first, last, text in joined:
        key, colon, rest = text.partition(":")
        targets = tuple(t.strip() for t in rest.replace(",", " ").split() if t.strip())
        out.append(Entry(first, last, key.strip(), targets, bool(colon)))
    return out


def parseAliases(lines: Iterable[str], source: str = "<aliases>") -> AliasTable:
    """Parse the text of an aliases file; bad entries are logged and skipped."""
    table = AliasTable()
    for entry in entries(lines):
        number, key, colon, targets = entry.first, entry.key, entry.colon, entry.targets
        if not colon or not key or not targets:
            log.warn("{source}:{line}: ignored: expected 'address: target, ...'",
                     source=source, line=number)
            continue
        good = []
        for target in targets:
            problem = _checkTarget(target)
            if problem:
                log.warn("{source}:{line}: target {target!r} ignored: {problem}",
                         source=source, line=number, target=target, problem=problem)
            else:
                good.append(target)
        if not good:
            continue
        try:
            if key.startswith("@"):
                table.catchAll[normaliseDomain(key[1:])] = tuple(good)
            elif "@" in key:
                table.exact[canonical(key)] = tuple(good)
            else:
                canonical(f"{key}@example.invalid")
                table.anyDomain[key.lower()] = tuple(good)
        except AddressError as e:
            log.warn("{source}:{line}: ignored: bad key {key!r}: {problem}",
                     source=source, line=number, key=key, problem=str(e))
    return table


def checkKey(key: str, isLocal: Callable[[str], bool]) -> str:
    """A key as the file will hold it (an address, a bare local part, or C{@domain}),
    its domain one of ours.

    @raise AddressError: it is none of those.
    """
    key = key.strip()
    if key.startswith("@"):
        domain = normaliseDomain(key[1:])
        if not isLocal(domain):
            raise AddressError(f"{domain} is not a local domain")
        return "@" + domain
    if "@" in key:
        address = canonical(key)
        if not isLocal(address.rpartition("@")[2]):
            raise AddressError(f"{address.rpartition('@')[2]} is not a local domain")
        return address
    canonical(f"{key}@example.invalid")
    return key.lower()


class AliasesEditor:
    """Adds and removes entries of the aliases file, keeping every other line as it is
    (comments, order, spacing). The file is replaced atomically (written, fsynced,
    renamed), so the server's L{Aliases} sees the old or the new version, never half.
    Blocking; one editor per file in a process (its lock orders the edits).

    @param path: the file.
    @param isLocal: whether a (normalised) domain is local.
    """

    def __init__(self, path: str, isLocal: Callable[[str], bool]) -> None:
        self.path = path
        self.isLocal = isLocal
        self._lock = threading.Lock()

    def _lines(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return f.read().splitlines(keepends=True)
        except FileNotFoundError:
            return []

    def list(self) -> list[Entry]:
        """The entries, in file order."""
        return [e for e in entries(self._lines()) if e.colon and e.key]

    def add(self, key: str, targets: str) -> str:
        """Add C{key: targets}; return the key as written.

        @raise AddressError: a bad key or target, or the key exists already.
        """
        key = checkKey(key, self.isLocal)
        wanted = [t.strip() for t in targets.replace(",", " ").split() if t.strip()]
        if not wanted:
            raise AddressError("an alias needs at least one target")
        for target in wanted:
            problem = _checkTarget(target)
            if problem:
                raise AddressError(f"target {target!r}: {problem}")
        with self._lock:
            lines = self._lines()
            if any(self._same(e.key, key) for e in entries(lines)):
                raise AddressError(f"an alias {key} exists already")
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(f"{key}: {', '.join(wanted)}\n")
            self._write(lines)
        return key

    def remove(self, key: str) -> str:
        """Remove the entry (all its lines) for C{key}; return the key.

        @raise AddressError: there is no such entry.
        """
        with self._lock:
            lines = self._lines()
            found = [e for e in entries(lines) if e.colon and self._same(e.key, key)]
            if not found:
                raise AddressError(f"no alias {key.strip()}")
            drop = {n for e in found for n in range(e.first, e.last + 1)}
            self._write([line for n, line in enumerate(lines, 1) if n not in drop])
        return found[0].key

    def _same(self, written: str, key: str) -> bool:
        """Whether the file's key C{written} is C{key}."""
        try:
            return checkKey(written, lambda d: True) == checkKey(key, lambda d: True)
        except AddressError:
            return written.strip().lower() == key.strip().lower()

    def _write(self, lines: builtins.list[str]) -> None:
        """Replace the file durably, keeping its permissions."""
        try:
            mode = os.stat(self.path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        writeFileAtomic(self.path, "".join(lines).encode("utf-8"), mode)


class AliasSource(Protocol):
    """What resolution asks of the aliases, from the file (L{Aliases}) or the database
    (L{pymaild.auth.pgusers.PostgresAliases}); every method blocks.

    @ivar path: the file to watch for changes, or C{""} (nothing to watch).
    """

    path: str

    def lookup(self, address: str) -> tuple[str, ...] | None:
        """The targets of canonical C{address} (domain-qualified), or None."""

    def catchAll(self, domain: str) -> tuple[str, ...] | None:
        """The targets for unknown addresses of normalised C{domain}, or None."""

    def sourcesOf(self, address: str, domains: Sequence[str]) -> list[str]:
        """The alias addresses (no catch-alls) that name canonical C{address} among
        their targets, keys without a domain in each of C{domains}."""


class Aliases:
    """The aliases file, re-read whenever it changes on disk. Thread-safe, blocking."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: _Stamp | None = None
        self._table = AliasTable()
        self._reverse: tuple[AliasTable, tuple[str, ...], dict[str, list[str]]] | None = None

    def _stampNow(self) -> _Stamp | None:
        """The file's identity and version, or None when there is no file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def table(self) -> AliasTable:
        """The current table, re-read first if the file changed.

        @raise OSError: the file exists but cannot be read (so that the caller answers
            with a temporary error instead of bouncing mail for aliased addresses).
        """
        if not self.path:
            return self._table
        with self._lock:
            stamp = self._stampNow()
            if stamp == self._stamp:
                return self._table
            if stamp is None:
                if self._stamp is not None:
                    log.info("aliases file {path} removed: no aliases", path=self.path)
                self._table, self._stamp = AliasTable(), None
                return self._table
            with open(self.path, encoding="utf-8", errors="replace") as f:
                table = parseAliases(f, self.path)
            self._table, self._stamp = table, stamp
            log.info("aliases file {path} loaded: {n} entries", path=self.path, n=len(table))
            return table

    def lookup(self, address: str) -> tuple[str, ...] | None:
        """The targets of canonical C{address} (domain-qualified), or None."""
        table = self.table()
        local, _, domain = address.rpartition("@")
        targets = table.exact.get(address)
        if targets is None:
            targets = table.anyDomain.get(local)
        if targets is None:
            return None
        return tuple(_qualify(t, domain) for t in targets)

    def catchAll(self, domain: str) -> tuple[str, ...] | None:
        """The targets for unknown addresses of normalised C{domain}, or None."""
        targets = self.table().catchAll.get(domain)
        if targets is None:
            return None
        return tuple(_qualify(t, domain) for t in targets)

    def sourcesOf(self, address: str, domains: Sequence[str]) -> list[str]:
        """The alias addresses that list canonical C{address} among their targets (one
        step back; catch-alls excluded): exact keys, and keys written without a domain
        in each of C{domains}. A target written with a sub-address tag names the tagged
        address, not the account. Indexed once per version of the file.

        @raise OSError: the file exists but cannot be read.
        """
        table = self.table()
        wanted = tuple(domains)
        with self._lock:
            cached = self._reverse
            if cached is None or cached[0] is not table or cached[1] != wanted:
                index: dict[str, list[str]] = {}
                pairs = [(key, key.rpartition("@")[2], targets)
                         for key, targets in table.exact.items()]
                pairs += [(f"{local}@{d}", d, targets)
                          for local, targets in table.anyDomain.items() for d in wanted]
                for key, domain, targets in pairs:
                    for target in targets:
                        index.setdefault(_canonicalTarget(_qualify(target, domain)),
                                         []).append(key)
                cached = self._reverse = (table, wanted, index)
        return list(dict.fromkeys(cached[2].get(address, ())))


def _canonicalTarget(target: str) -> str:
    """A qualified target in canonical form (as written when it is no address)."""
    try:
        return canonical(target)
    except AddressError:
        return target
