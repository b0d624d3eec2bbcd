"""Where mail for an address goes: the aliases file and the user directory, cached.

L{Resolver} expands an address (blocking: it reads the aliases and the passwd file)
through the aliases (L{pymaild.smtp.aliases}) and L{pymaild.auth.directory.Directory}:
an exact account, C{user+tag}, C{postmaster@} of every domain, catch-alls, aliases that
forward elsewhere. L{ResolutionCache} remembers known recipients, so most RCPTs are
answered without the disk runner while the passwd and aliases files were checked less
than a second ago.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from pymaild.address import canonical
from pymaild.errors import AddressError
from pymaild.smtp.aliases import AliasSource

log = Logger()

#: How deep alias expansion may go before it is taken for a loop.
MAX_ALIAS_DEPTH = 10


@dataclass
class Resolution:
    """Where mail for one address goes.

    @ivar local: canonical addresses of local accounts.
    @ivar remote: addresses in other domains (alias forwarding or relaying).
    """

    local: list[str] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)


class Resolver:
    """Expands an address through the aliases file and the directory (blocking)."""

    def __init__(self, directory: Any, aliases: AliasSource,
                 maxDepth: int = MAX_ALIAS_DEPTH) -> None:
        self.directory = directory
        self.aliases = aliases
        self.maxDepth = maxDepth

    def addressesOf(self, account: str) -> list[str]:
        """Every alias address whose mail reaches C{account} (blocking): the user's own
        addresses besides the account itself, as a vacation reply must know them.

        Walked back from the account through the aliases' C{sourcesOf} (the aliases
        file or the database alike), at most C{maxDepth} steps, and each address found
        is kept only when its resolution (without catch-alls) really reaches the
        account. Keys without a domain count in every local domain; catch-alls do not
        count (they would make every address the user's).

        @raise OSError: the aliases or the user directory cannot be read.
        """
        domains = self.directory.domains
        seen = {account}
        found: list[str] = []
        frontier = [account]
        for _ in range(self.maxDepth):
            step: list[str] = []
            for address in frontier:
                for key in self.aliases.sourcesOf(address, domains):
                    if key not in seen:
                        seen.add(key)
                        step.append(key)
            if not step:
                break
            found += step
            frontier = step
        return [a for a in found if account in self.resolve(a, catchAll=False).local]

    def isLocalDomain(self, domain: str) -> bool:
        """Whether C{domain} is one of ours (pure: no I/O)."""
        return bool(domain) and not domain.startswith("[") and self.directory.isLocalDomain(domain)

    def primaryDomain(self) -> str:
        """The first local domain."""
        return self.directory.domains[0]

    def resolve(self, address: str, catchAll: bool = True) -> Resolution:
        """Where mail to C{address} goes; an empty resolution means unknown.

        @raise OSError: the aliases or passwd file cannot be read.
        """
        out = Resolution()
        self._expand(address, 0, frozenset(), out, catchAll)
        out.local = list(dict.fromkeys(out.local))
        out.remote = list(dict.fromkeys(out.remote))
        return out

    def _untagged(self, key: str) -> str:
        """C{key} without its sub-address tag."""
        local, _, domain = key.rpartition("@")
        cut = [i for i in (local.find(c) for c in self.directory.recipientDelimiter) if i > 0]
        return f"{local[: min(cut)]}@{domain}" if cut else key

    def _expand(
        self, address: str, depth: int, seen: frozenset[str], out: Resolution, catchAll: bool
    ) -> None:
        """Add the destinations of C{address} to C{out}."""
        try:
            key = canonical(address)
        except AddressError:
            local, _, domain = address.rpartition("@")
            if domain and not self.isLocalDomain(domain):
                out.remote.append(address)
            return
        local, _, domain = key.rpartition("@")
        if not self.isLocalDomain(domain):
            out.remote.append(address)
            return
        if depth > self.maxDepth:
            log.warn("alias expansion of {address} too deep (loop?): dropped", address=address)
            return
        if key in seen:
            # An alias that names itself (bob: bob, archive) means the mailbox itself.
            out.local.extend(self.directory.resolve(key))
            return
        seen = seen | {key}
        targets = self.aliases.lookup(key)
        if targets is None:
            base = self._untagged(key)
            if base != key:
                targets = self.aliases.lookup(base)
        if targets is not None:
            for target in targets:
                self._expand(target, depth + 1, seen, out, catchAll)
            return
        passwd = self.directory.passwd
        if self._untagged(key).rpartition("@")[0] == "postmaster":
            primary = f"postmaster@{self.primaryDomain()}"
            if (
                key != primary
                and passwd.lookup(key) is None
                and primary not in seen
                and self.aliases.lookup(primary) is not None
            ):
                self._expand(primary, depth + 1, seen, out, catchAll)
                return
        accounts = self.directory.resolve(key)
        if accounts:
            out.local.extend(accounts)
            return
        if catchAll:
            targets = self.aliases.catchAll(domain)
            for target in targets or ():
                self._expand(target, depth + 1, seen, out, False)


_Stamp = tuple[int, int, int, int] | None


def _fileStamp(path: str | None) -> _Stamp:
    """(inode, size, mtime, ctime) of C{path}; None when it is missing or not set."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ResolutionCache:
    """Remembers where known recipients go, so most RCPTs need no thread or disk.

    L{cached} (reactor thread, no I/O) answers from memory while the last look at the
    passwd and aliases files is less than C{maxAge} seconds old. Otherwise the caller
    uses L{resolve} in the disk runner: it stats both files at most once per C{maxAge}
    (forgetting everything when either changed) and resolves through the L{Resolver}.

    Only recipients that resolved to somewhere are remembered: an account or alias that
    is added works at once, while a removed or changed one keeps its old destination for
    at most C{maxAge} seconds (plus the time a file's mtime takes to move).

    @param resolver: the L{Resolver}.
    @param files: the paths to watch (passwd and aliases files; empty ones are skipped).
    @param timer: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        resolver: Resolver,
        files: Sequence[str | None],
        maxAge: float = 1.0,
        maxEntries: int = 10000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.files = [f for f in files if f]
        self.maxAge = maxAge
        self.maxEntries = maxEntries
        self.timer = timer
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._stamps: list[_Stamp] | None = None
        self._checkedAt = float("-inf")
        self._generation = 0

    def cached(self, address: str) -> Resolution | None:
        """The remembered resolution of C{address} while it is fresh, else None (no I/O)."""
        if self.timer() - self._checkedAt >= self.maxAge:
            return None
        hit = self._entries.get(address)
        if hit is None:
            return None
        return Resolution(local=list(hit[0]), remote=list(hit[1]))

    def _revalidate(self) -> int:
        """Stat the watched files if the last look is stale; return the generation."""
        now = self.timer()
        with self._lock:
            if now - self._checkedAt < self.maxAge:
                return self._generation
        stamps = [_fileStamp(f) for f in self.files]
        with self._lock:
            if stamps != self._stamps:
                self._entries.clear()
                self._stamps = stamps
                self._generation += 1
            self._checkedAt = now
            return self._generation

    def resolve(self, address: str) -> Resolution:
        """Resolve C{address} (blocking) and remember a non-empty result.

        @raise OSError: the aliases or passwd file cannot be read.
        """
        generation = self._revalidate()
        res = self.resolver.resolve(address)
        if res.local or res.remote:
            with self._lock:
                if generation == self._generation:
                    if len(self._entries) >= self.maxEntries:
                        self._entries.clear()
                    self._entries[address] = (tuple(res.local), tuple(res.remote))
        return res


__all__ = ["MAX_ALIAS_DEPTH", "Resolution", "ResolutionCache", "Resolver"]
