"""The user directory in PostgreSQL, for several nodes that share their users.

L{PostgresUsers} is a L{pymaild.auth.users.UserSource} over the tables of L{SCHEMA}
(``docs/cluster.rst`` documents them; ``pymaild-admin db init`` creates them):

- C{pymaild_users}: one row per mail user: the canonical address, the password field
  in the passwd file's C{{SCHEME}hash} form (so hashes move between the two backends
  as they are), a Dovecot-style quota rule (stored for the admin; pymaild enforces no
  quota yet), and the name of the node that owns the mailbox.
- C{pymaild_aliases}: alias address → target, one row per target; C{@domain} is the
  domain's catch-all, as in the aliases file. L{PostgresAliases} reads it with the
  interface of L{pymaild.smtp.aliases.Aliases}.
- C{pymaild_nodes}: each node's name, IP address and ports (IMAP, POP3, submission,
  LMTP), where nginx's mail proxy and the other nodes reach it.

Everything here blocks: the server calls it from its thread runners (the same ones that
read the passwd file), through a bounded C{psycopg_pool.ConnectionPool}, so the reactor
never waits on the database. A database that cannot be reached raises
L{pymaild.errors.DatabaseUnavailable}, an L{OSError}: callers answer it as a temporary
failure (C{451 4.3.0} to RCPT, C{NO [UNAVAILABLE]} to IMAP), as an unreadable passwd
file.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.application.service import Service
from twisted.logger import Logger

from pymaild.address import canonical, normaliseDomain
from pymaild.auth.passwd import (
    UserExists,
    hashPassword,
    splitScheme,
    verifyEntry,
)
from pymaild.auth.users import NodeRecord
from pymaild.errors import AddressError, DatabaseUnavailable, NoSuchUser, PymaildError

log = Logger()
T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = """\
CREATE TABLE IF NOT EXISTS pymaild_schema (
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS pymaild_nodes (
    name text PRIMARY KEY,
    address inet NOT NULL,
    imap_port integer NOT NULL DEFAULT 143,
    pop3_port integer NOT NULL DEFAULT 110,
    submission_port integer NOT NULL DEFAULT 587,
    lmtp_port integer NOT NULL DEFAULT 24
);
CREATE TABLE IF NOT EXISTS pymaild_users (
    address text PRIMARY KEY,
    password text NOT NULL,
    quota_rule text NOT NULL DEFAULT '',
    node text REFERENCES pymaild_nodes (name) ON UPDATE CASCADE,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pymaild_aliases (
    address text NOT NULL,
    target text NOT NULL,
    PRIMARY KEY (address, target)
);
CREATE INDEX IF NOT EXISTS pymaild_users_node ON pymaild_users (node);
ALTER TABLE pymaild_users ADD COLUMN IF NOT EXISTS moving boolean NOT NULL DEFAULT false;
"""
"""The tables, created idempotently by L{PostgresUsers.initSchema}."""


class SchemaMissing(DatabaseUnavailable):
    """The database has no pymaild tables (``pymaild-admin db init`` makes them)."""


class NoSuchNode(PymaildError):
    """The name is not in C{pymaild_nodes}."""


@dataclass(frozen=True)
class UserRecord:
    """One row of C{pymaild_users}.

    @ivar address: the canonical address.
    @ivar password: C{{SCHEME}hash}, as in the passwd file.
    @ivar quota_rule: the stored quota rule (Dovecot syntax, e.g. C{*:storage=1G}).
    @ivar node: the owner node's name, or C{None} for "this node" (one-node use).
    """

    address: str
    password: str
    quota_rule: str = ""
    node: str | None = None

    @property
    def scheme(self) -> str:
        """The password scheme, upper-cased."""
        return splitScheme(self.password)[0]

    @property
    def extra(self) -> str:
        """The quota rule as a passwd file's extra field holds it, so quotas read it the
        same way from both directories (L{pymaild.auth.quota.Quotas})."""
        return f"userdb_quota_rule={self.quota_rule}" if self.quota_rule else ""


class AnswerCache:
    """Database answers kept for C{ttl} seconds (thread-safe, bounded).

    A node asks the same questions for every RCPT and every hand-on (is this a user,
    who owns the mailbox, is it being moved, which aliases): the answers are kept a few
    seconds, as Dovecot's C{auth_cache_ttl} does, so a burst of mail for one user costs
    one query. C{ttl} 0 keeps nothing.

    @param ttl: seconds an answer is served.
    @param maxEntries: more than this and the oldest half is dropped.
    @param timer: monotonic seconds (tests pass a fake).
    """

    def __init__(self, ttl: float, maxEntries: int = 50000,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.maxEntries = maxEntries
        self.timer = timer
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._generation = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, fetch: Callable[[], T]) -> T:
        """The answer under C{key}: kept, or C{fetch()}ed (blocking) and kept."""
        if self.ttl <= 0:
            self.misses += 1
            return fetch()
        now = self.timer()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] > now:
                self.hits += 1
                return cast(T, hit[1])
            self.misses += 1
            generation = self._generation
        value = fetch()
        with self._lock:
            # An answer fetched across a forget() may be older than the change.
            if generation == self._generation:
                if len(self._entries) >= self.maxEntries:
                    for old in list(self._entries)[: self.maxEntries // 2]:
                        del self._entries[old]
                self._entries[key] = (now + self.ttl, value)
        return value

    def forget(self) -> None:
        """Drop every kept answer (a change made here, or SIGHUP)."""
        with self._lock:
            self._entries.clear()
            self._generation += 1


@dataclass(frozen=True)
class _UserState:
    """One user's row as one query saw it: the record, the move mark and the owner
    node, so the owner and the mark are never mixed from two moments."""

    record: UserRecord | None
    moving: bool = False
    owner: NodeRecord | None = None


class PostgresUsers:
    """A L{pymaild.auth.users.UserSource} in PostgreSQL (blocking, thread-safe).

    Answers used to route mail (L{lookup}, L{owner}, L{isMoving}, the aliases, the
    nodes) are kept C{cacheTTL} seconds (L{AnswerCache}; C{auth.database_cache_ttl}):
    a change another process makes counts within that time, one made through this
    object (or a SIGHUP, L{forget}) at once. Password checks always read the row.

    @param conninfo: a libpq connection string or URI (C{auth.database}).
    @param poolSize: at most this many connections (C{auth.database_pool}).
    @param timeout: seconds to wait for a connection before L{DatabaseUnavailable}.
    @param cacheTTL: seconds answers are kept (0, the default for tools: none).
    """

    def __init__(self, conninfo: str, poolSize: int = 4, timeout: float = 5.0,
                 cacheTTL: float = 0.0) -> None:
        self.conninfo = conninfo
        self.timeout = timeout
        self.cache = AnswerCache(cacheTTL)
        #: How many statements were sent to the database (for the bench and tests).
        self.queries = 0
        self.pool = ConnectionPool(
            conninfo, min_size=0, max_size=max(1, poolSize), open=False, timeout=timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))},
            # A pooled connection the server dropped (a restart) is noticed and replaced
            # before use, at the cost of one round trip.
            check=ConnectionPool.check_connection, name="pymaild-users")

    def open(self) -> None:
        """Start the pool (connections are made when first needed)."""
        self.pool.open(wait=False)

    def close(self) -> None:
        """Close every connection of the pool."""
        self.pool.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; database trouble becomes L{DatabaseUnavailable}."""
        if self.pool.closed:
            self.open()
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.errors.UndefinedTable as e:
            raise SchemaMissing(f"user database has no pymaild tables ({_first(e)}); run"
                                " pymaild-admin db init") from None
        except PoolTimeout as e:
            raise DatabaseUnavailable(f"user database: no connection: {_first(e)}") from None
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(f"user database: {_first(e)}") from None

    def forget(self) -> str:
        """Drop every kept answer (SIGHUP); a phrase for the log."""
        self.cache.forget()
        return "user database answers forgotten"

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (C{[]} when it returns none)."""
        self.queries += 1
        with self._connection() as conn:
            cur = conn.execute(sql, args)
            return list(cur.fetchall()) if cur.description is not None else []

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """Run one changing statement; how many rows it touched (kept answers are
        dropped: they may be wrong now)."""
        self.queries += 1
        try:
            with self._connection() as conn:
                return conn.execute(sql, args).rowcount
        finally:
            self.cache.forget()

    # schema

    def initSchema(self) -> None:
        """Create the tables (idempotent) and record the schema version."""
        with self._connection() as conn, conn.transaction():
            conn.execute(SCHEMA)
            row = conn.execute("SELECT version FROM pymaild_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO pymaild_schema (version) VALUES (%s)",
                             (SCHEMA_VERSION,))

    def schemaVersion(self) -> int | None:
        """The recorded schema version, or C{None} when the tables are missing."""
        try:
            rows = self._query("SELECT version FROM pymaild_schema")
        except SchemaMissing:
            return None
        return int(rows[0][0]) if rows else None

    # users

    def _state(self, address: str, fresh: bool = False) -> _UserState:
        """C{address}'s row, move mark and owner node in one query (kept for the TTL
        unless C{fresh})."""
        try:
            key = canonical(address)
        except AddressError:
            return _UserState(None)

        def fetch() -> _UserState:
            rows = self._query(
                "SELECT u.address, u.password, u.quota_rule, u.node, u.moving, n.name,"
                " host(n.address), n.imap_port, n.pop3_port, n.submission_port,"
                " n.lmtp_port FROM pymaild_users u LEFT JOIN pymaild_nodes n"
                " ON n.name = u.node WHERE u.address = %s", (key,))
            if not rows:
                return _UserState(None)
            row = rows[0]
            owner = NodeRecord(*row[5:]) if row[5] is not None else None
            return _UserState(UserRecord(*row[:4]), bool(row[4]), owner)

        if fresh:
            return fetch()
        return self.cache.get(("user", key), fetch)

    def lookup(self, address: str) -> UserRecord | None:
        """The row of C{address} (any case, any form), or C{None}."""
        return self._state(address).record

    def users(self) -> list[str]:
        """Every user's address, sorted."""
        return [r[0] for r in self._query("SELECT address FROM pymaild_users ORDER BY address")]

    def verify(self, address: str, password: str | bytes) -> bool:
        """Whether C{password} is C{address}'s; an old-scheme hash is upgraded on success."""
        return verifyEntry(self._state(address, fresh=True).record, password,
                           self._upgrade)

    def _upgrade(self, entry: UserRecord, password: str | bytes) -> None:
        """Store a new hash for C{entry}'s verified password, only if the row still
        holds the old one (a newer password is left alone)."""
        field = hashPassword(password)
        self._write("UPDATE pymaild_users SET password = %s"
                    " WHERE address = %s AND password = %s",
                    (field, entry.address, entry.password))
        log.info("upgraded the password hash of {address} from {scheme}",
                 address=entry.address, scheme=entry.scheme)

    def add(self, address: str, password: str | bytes, node: str | None = None,
            quotaRule: str = "") -> str:
        """Add a user (hash ARGON2ID), optionally owned by C{node}; its address.

        @raise UserExists: the user exists.
        @raise NoSuchNode: C{node} is not a known node.
        """
        key = canonical(address)
        field = hashPassword(password)
        try:
            count = self._write(
                "INSERT INTO pymaild_users (address, password, quota_rule, node)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (address) DO NOTHING",
                (key, field, quotaRule, node))
        except psycopg.errors.ForeignKeyViolation:
            raise NoSuchNode(f"no node {node}") from None
        if not count:
            raise UserExists(f"user {key} already exists")
        return key

    def setPassword(self, address: str, password: str | bytes) -> str:
        """Give C{address} a new password.

        @raise NoSuchUser: no such user.
        """
        key = canonical(address)
        return self._change(key, "UPDATE pymaild_users SET password = %s WHERE address = %s",
                            (hashPassword(password), key))

    def setQuotaRule(self, address: str, rule: str) -> str:
        """Store C{address}'s quota rule.

        @raise NoSuchUser: no such user.
        """
        key = canonical(address)
        return self._change(key, "UPDATE pymaild_users SET quota_rule = %s WHERE address = %s",
                            (rule, key))

    def remove(self, address: str) -> str:
        """Remove C{address}.

        @raise NoSuchUser: no such user.
        """
        key = canonical(address)
        return self._change(key, "DELETE FROM pymaild_users WHERE address = %s", (key,))

    def _change(self, key: str, sql: str, args: tuple[Any, ...]) -> str:
        """Run a statement that must touch C{key}'s row."""
        if not self._write(sql, args):
            raise NoSuchUser(f"no user {key}")
        return key

    # nodes

    def setOwner(self, address: str, node: str | None) -> str:
        """Make C{node} the owner of C{address}'s mailbox.

        @raise NoSuchUser: no such user.
        @raise NoSuchNode: no such node.
        """
        key = canonical(address)
        try:
            return self._change(key, "UPDATE pymaild_users SET node = %s WHERE address = %s",
                                (node, key))
        except psycopg.errors.ForeignKeyViolation:
            raise NoSuchNode(f"no node {node}") from None

    def setMoving(self, address: str, moving: bool) -> str:
        """Mark C{address}'s mailbox as being moved (mail for it waits in the queues).

        @raise NoSuchUser: no such user.
        """
        key = canonical(address)
        return self._change(key, "UPDATE pymaild_users SET moving = %s WHERE address = %s",
                            (moving, key))

    def isMoving(self, address: str) -> bool:
        """Whether C{address}'s mailbox is being moved to another node."""
        return self._state(address).moving

    def owner(self, address: str, fresh: bool = False) -> NodeRecord | None:
        """The node that owns C{address}'s mailbox, or C{None} (no such user, no owner);
        C{fresh}: read now, not a kept answer (where a login goes right after a move)."""
        return self._state(address, fresh).owner

    def route(self, address: str) -> tuple[bool, NodeRecord | None]:
        """C{(being moved, owner node)} of C{address} from one answer (never a mark
        and an owner from two moments)."""
        state = self._state(address)
        return state.moving, state.owner

    def setNode(self, node: NodeRecord) -> None:
        """Add C{node}, or change its address and ports."""
        self._write(
            "INSERT INTO pymaild_nodes (name, address, imap_port, pop3_port, submission_port,"
            " lmtp_port) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET"
            " address = EXCLUDED.address, imap_port = EXCLUDED.imap_port,"
            " pop3_port = EXCLUDED.pop3_port, submission_port = EXCLUDED.submission_port,"
            " lmtp_port = EXCLUDED.lmtp_port",
            (node.name, node.address, node.imap_port, node.pop3_port, node.submission_port,
             node.lmtp_port))

    def node(self, name: str) -> NodeRecord:
        """The node called C{name}.

        @raise NoSuchNode: there is none.
        """
        rows = self._query(
            "SELECT name, host(address), imap_port, pop3_port, submission_port, lmtp_port"
            " FROM pymaild_nodes WHERE name = %s", (name,))
        if not rows:
            raise NoSuchNode(f"no node {name}")
        return NodeRecord(*rows[0])

    def isNodeAddress(self, host: str, other: str = "") -> bool:
        """Whether C{host} (an IP address) is the address of a node in C{pymaild_nodes}
        other than the one named C{other} (a node never hands mail to itself, so its
        own address may be a local MTA's): an LMTP client there is a node of the
        cluster."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ipaddress.ip_address(n.address) == ip for n in self.nodes()
                   if n.name != other)

    def nodes(self) -> list[NodeRecord]:
        """Every node, by name."""
        def fetch() -> tuple[NodeRecord, ...]:
            return tuple(NodeRecord(*r) for r in self._query(
                "SELECT name, host(address), imap_port, pop3_port, submission_port,"
                " lmtp_port FROM pymaild_nodes ORDER BY name"))

        return list(self.cache.get(("nodes",), fetch))

    # aliases

    def addAlias(self, address: str, target: str) -> None:
        """Let mail for C{address} (or C{@domain}) go to C{target} too."""
        self._write("INSERT INTO pymaild_aliases (address, target) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING", (aliasKey(address), target.strip()))

    def removeAlias(self, address: str, target: str) -> None:
        """Remove one target of C{address}."""
        self._write("DELETE FROM pymaild_aliases WHERE address = %s AND target = %s",
                    (aliasKey(address), target.strip()))

    def aliasSources(self, address: str) -> list[str]:
        """The alias keys (no catch-alls) with canonical C{address} as a target: written
        in full, or as its local part alone under a key of the same domain."""
        local, _, domain = address.rpartition("@")
        rows = self.cache.get(("sources", address), lambda: self._query(
            "SELECT DISTINCT address FROM pymaild_aliases WHERE address NOT LIKE '@%%'"
            " AND (lower(target) = %s OR (position('@' in target) = 0"
            " AND lower(target) = %s AND split_part(address, '@', 2) = %s))"
            " ORDER BY address", (address, local, domain)))
        return [r[0] for r in rows]

    def aliasTargets(self, key: str) -> tuple[str, ...] | None:
        """The targets stored under C{key} (an address or C{@domain}), or C{None}."""
        rows = self.cache.get(("targets", key), lambda: self._query(
            "SELECT target FROM pymaild_aliases WHERE address = %s ORDER BY target", (key,)))
        return tuple(r[0] for r in rows) or None


def _first(e: Exception) -> str:
    """The first line of an error's text (libpq's messages run over several)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def aliasKey(address: str) -> str:
    """The stored form of an alias key: a canonical address or C{@domain}.

    @raise AddressError: it is neither.
    """
    text = address.strip()
    if text.startswith("@"):
        return "@" + normaliseDomain(text[1:])
    return canonical(text)


class PostgresAliases:
    """The aliases of C{pymaild_aliases}, with the interface of
    L{pymaild.smtp.aliases.Aliases} (blocking: called in the delivery runner).

    A target without a domain is in the domain of the address looked up, as in the
    aliases file.
    """

    path = ""
    """No file to watch: the delivery avatar's resolution cache asks every time."""

    def __init__(self, users: PostgresUsers) -> None:
        self.users = users

    def lookup(self, address: str) -> tuple[str, ...] | None:
        """The targets of canonical C{address}, or None."""
        return self._qualified(self.users.aliasTargets, address, address.rpartition("@")[2])

    def catchAll(self, domain: str) -> tuple[str, ...] | None:
        """The targets for unknown addresses of normalised C{domain}, or None."""
        return self._qualified(self.users.aliasTargets, "@" + domain, domain)

    def sourcesOf(self, address: str, domains: Sequence[str]) -> list[str]:
        """The alias addresses that list canonical C{address} among their targets (one
        step back; catch-alls excluded), as L{pymaild.smtp.aliases.Aliases.sourcesOf}.
        Every stored key has a domain, so C{domains} changes nothing here."""
        return self.users.aliasSources(address)

    @staticmethod
    def _qualified(get: Callable[[str], tuple[str, ...] | None], key: str,
                   domain: str) -> tuple[str, ...] | None:
        """The targets under C{key}, each given C{domain} when it has none."""
        targets = get(key)
        if targets is None:
            return None
        return tuple(t if "@" in t else f"{t}@{domain}" for t in targets)


class DatabaseService(Service):
    """Opens a L{PostgresUsers} pool with the application and closes it on shutdown."""

    def __init__(self, users: PostgresUsers) -> None:
        self.users = users

    def startService(self) -> None:
        """Start the pool (no connection is made before the first query)."""
        Service.startService(self)
        self.users.open()

    def stopService(self) -> None:
        """Close the pool's connections."""
        Service.stopService(self)
        self.users.close()
