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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

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


class PostgresUsers:
    """A L{pymaild.auth.users.UserSource} in PostgreSQL (blocking, thread-safe).

    @param conninfo: a libpq connection string or URI (C{auth.database}).
    @param poolSize: at most this many connections (C{auth.database_pool}).
    @param timeout: seconds to wait for a connection before L{DatabaseUnavailable}.
    """

    def __init__(self, conninfo: str, poolSize: int = 4, timeout: float = 5.0) -> None:
        self.conninfo = conninfo
        self.timeout = timeout
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

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (C{[]} when it returns none)."""
        with self._connection() as conn:
            cur = conn.execute(sql, args)
            return list(cur.fetchall()) if cur.description is not None else []

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """Run one changing statement; how many rows it touched."""
        with self._connection() as conn:
            return conn.execute(sql, args).rowcount

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

    def lookup(self, address: str) -> UserRecord | None:
        """The row of C{address} (any case, any form), or C{None}."""
        try:
            key = canonical(address)
        except AddressError:
            return None
        rows = self._query(
            "SELECT address, password, quota_rule, node FROM pymaild_users"
            " WHERE address = %s", (key,))
        return UserRecord(*rows[0]) if rows else None

    def users(self) -> list[str]:
        """Every user's address, sorted."""
        return [r[0] for r in self._query("SELECT address FROM pymaild_users ORDER BY address")]

    def verify(self, address: str, password: str | bytes) -> bool:
        """Whether C{password} is C{address}'s; an old-scheme hash is upgraded on success."""
        return verifyEntry(self.lookup(address), password, self._upgrade)

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
        try:
            key = canonical(address)
        except AddressError:
            return False
        rows = self._query("SELECT moving FROM pymaild_users WHERE address = %s", (key,))
        return bool(rows and rows[0][0])

    def owner(self, address: str) -> NodeRecord | None:
        """The node that owns C{address}'s mailbox, or C{None} (no such user, no owner)."""
        try:
            key = canonical(address)
        except AddressError:
            return None
        rows = self._query(
            "SELECT n.name, host(n.address), n.imap_port, n.pop3_port, n.submission_port,"
            " n.lmtp_port FROM pymaild_users u JOIN pymaild_nodes n ON n.name = u.node"
            " WHERE u.address = %s", (key,))
        return NodeRecord(*rows[0]) if rows else None

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

    def isNodeAddress(self, host: str) -> bool:
        """Whether C{host} (an IP address) is the address of a node in C{pymaild_nodes}:
        an LMTP client there is a node of the cluster."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ipaddress.ip_address(n.address) == ip for n in self.nodes())

    def nodes(self) -> list[NodeRecord]:
        """Every node, by name."""
        return [NodeRecord(*r) for r in self._query(
            "SELECT name, host(address), imap_port, pop3_port, submission_port, lmtp_port"
            " FROM pymaild_nodes ORDER BY name")]

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
        rows = self._query(
            "SELECT DISTINCT address FROM pymaild_aliases WHERE address NOT LIKE '@%%'"
            " AND (lower(target) = %s OR (position('@' in target) = 0"
            " AND lower(target) = %s AND split_part(address, '@', 2) = %s))"
            " ORDER BY address", (address, local, domain))
        return [r[0] for r in rows]

    def aliasTargets(self, key: str) -> tuple[str, ...] | None:
        """The targets stored under C{key} (an address or C{@domain}), or C{None}."""
        rows = self._query("SELECT target FROM pymaild_aliases WHERE address = %s"
                           " ORDER BY target", (key,))
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
