"""``pymaild-admin``: manage mail users and hash passwords from the command line.

Usage::

    pymaild-admin [--data DIR | --config FILE] user add ADDRESS [--password-stdin] [--force]
                                                       [--node NODE]
    pymaild-admin [--data DIR | --config FILE] user passwd ADDRESS [--password-stdin]
    pymaild-admin [--data DIR | --config FILE] user del ADDRESS
    pymaild-admin [--data DIR | --config FILE] user list
    pymaild-admin --config FILE user owner ADDRESS NODE
    pymaild-admin --config FILE user move ADDRESS NODE --from DIR --to DIR [--settle S]
    pymaild-admin --config FILE db init
    pymaild-admin --config FILE node set NAME IP [--imap P] [--pop3 P] [--submission P]
                                                 [--lmtp P]
    pymaild-admin --config FILE node list
    pymaild-admin hash [--password-stdin]
    pymaild-admin [--data DIR | --config FILE] queue list|show ID|flush [ID]|retry ID
    pymaild-admin [--data DIR | --config FILE] queue delete ID|hold ID|release ID
    pymaild-admin [--data DIR | --config FILE] status
    pymaild-admin [--data DIR | --config FILE] spam status
    pymaild-admin [--data DIR | --config FILE] dkim keygen DOMAIN [--selector S]
    pymaild-admin [--data DIR | --config FILE] dkim list [DOMAIN]
    pymaild-admin [--data DIR | --config FILE] dkim retire DOMAIN SELECTOR
    pymaild-admin [--data DIR | --config FILE] dns DOMAIN [--check]

The passwd file is C{<data>/passwd} (data directory C{./pymaild-data} by default), or
the C{auth.passwd} of the configuration file given with C{--config}. It is written the
way the server writes it (dot-lock, temporary file, fsync, rename; mode 0600), so it is
safe to run while the server is up; the server picks the change up at the next login.

With C{auth.backend = "postgresql"} in the configuration, the user commands work on
the PostgreSQL user directory instead (docs/cluster.rst): C{db init} creates its tables
(idempotent), C{node set} adds or changes a node (its IP address and ports), C{user add
--node} and C{user owner} name the node that owns a mailbox; C{user move} copies a
mailbox to another node's data directory with its UIDs and makes that node its owner
(L{pymaild.auth.move}).

C{user add} refuses an address in a domain the server does not serve (the domains of
C{--config}, or with C{--data} those of the users already there); C{--force} adds it
with a warning. Run as root, files keep the owner of the data directory, so a server
that runs as its own user can still write them.

Passwords are asked twice on the terminal, or read from the first line of standard
input with C{--password-stdin} (for scripts). C{hash} prints a C{{ARGON2ID}...} hash to
paste into a passwd file by hand.

C{dkim keygen} makes an RSA-2048 and an Ed25519 key for a domain under
C{<data>/dkim/<domain>/<selector>/} (mode 0600) and prints the two DNS records to
publish (selectors C{<selector>-rsa} and C{<selector>-ed25519}); the running server signs
with them from its next message on. C{dkim list} shows the sets, C{dkim retire} stops one.

C{dns} prints, in zone-file syntax, every record the domain needs (MX, SPF, DKIM, DMARC,
MTA-STS, TLS-RPT, SRV, autoconfig) for the configuration's host name; C{--check} looks
them up through C{relay.dns_servers} (or the system resolver) and exits 1 when one is
missing or differs.

Exit status: 0 on success, 1 when the operation failed, 2 for a usage error. Errors
are one line on standard error, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from getpass import getpass
from typing import IO, Any, NoReturn

from pymaild.address import canonical
from pymaild.auth.passwd import PasswdFile, PasswdLocked, UserExists, hashPassword
from pymaild.auth.quota import Quotas, describe
from pymaild.auth.users import UserSource
from pymaild.errors import AddressError, NoSuchUser, PymaildError
from pymaild.quotarules import QuotaLimits, applyRules

PROG = "pymaild-admin"
DEFAULT_DATA = "./pymaild-data"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """The command line is wrong (exit status 2)."""


class AdminError(Exception):
    """The operation could not be done (exit status 1)."""


class _Exit(Exception):
    """argparse wanted to exit (after --help) with this status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        """Report a usage error to L{main}."""
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """Report the wish to exit (after C{--help}) to L{main}."""
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def buildParser() -> argparse.ArgumentParser:
    """The C{pymaild-admin} command line."""
    parser = _Parser(prog=PROG, description="Manage pymaild users and password hashes.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--data",
        metavar="DIR",
        help=f"data directory; the passwd file is DIR/passwd (default {DEFAULT_DATA})",
    )
    where.add_argument(
        "--config", metavar="FILE", help="pymaild configuration file (uses auth.passwd)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    user = commands.add_parser("user", help="add, change, delete or list users")
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    stdinHelp = "read the password from the first line of standard input"
    add = actions.add_parser("add", help="add a user")
    add.add_argument("address", metavar="ADDRESS", help="user@domain")
    add.add_argument("--password-stdin", action="store_true", help=stdinHelp)
    add.add_argument("--force", action="store_true",
                     help="add the user even if the server does not serve its domain")
    pw = actions.add_parser("passwd", help="set a user's password")
    pw.add_argument("address", metavar="ADDRESS", help="user@domain")
    pw.add_argument("--password-stdin", action="store_true", help=stdinHelp)
    delete = actions.add_parser("del", help="delete a user (the mail stays on disk)")
    delete.add_argument("address", metavar="ADDRESS", help="user@domain")
    actions.add_parser("list", help="list users")
    add.add_argument("--node", metavar="NODE",
                     help="the node that owns the mailbox (PostgreSQL directory)")
    owner = actions.add_parser("owner", help="name the node that owns a mailbox"
                               " (PostgreSQL directory)")
    owner.add_argument("address", metavar="ADDRESS", help="user@domain")
    owner.add_argument("node", metavar="NODE", help="a node of 'node list'")
    move = actions.add_parser("move", help="move a mailbox to another node, keeping its"
                              " UIDs (PostgreSQL directory)")
    move.add_argument("address", metavar="ADDRESS", help="user@domain")
    move.add_argument("node", metavar="NODE", help="the node that owns it afterwards")
    move.add_argument("--from", dest="source", metavar="DIR", required=True,
                      help="the data directory of the node that has the mailbox now")
    move.add_argument("--to", dest="target", metavar="DIR", required=True,
                      help="the data directory of NODE")
    move.add_argument("--settle", type=float, default=5.0, metavar="SECONDS",
                      help="wait this long after stopping deliveries (default 5; at"
                           " least auth.database_cache_ttl + 1)")

    db = commands.add_parser("db", help="the PostgreSQL user directory")
    dbActions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    dbActions.add_parser("init", help="create the tables (idempotent)")
    node = commands.add_parser("node", help="the nodes of a cluster (PostgreSQL directory)")
    nodeActions = node.add_subparsers(dest="action", metavar="ACTION", required=True)
    nodeSet = nodeActions.add_parser("set", help="add a node or change its address and ports")
    nodeSet.add_argument("name", metavar="NAME")
    nodeSet.add_argument("ip", metavar="IP", help="the IP address it is reached at")
    for name, port in (("imap", 143), ("pop3", 110), ("submission", 587), ("lmtp", 24)):
        nodeSet.add_argument(f"--{name}", type=int, default=port, metavar="PORT",
                             help=f"its {name} port (default {port})")
    nodeActions.add_parser("list", help="list the nodes")

    hashing = commands.add_parser("hash", help="print an {ARGON2ID} hash of a password")
    hashing.add_argument("--password-stdin", action="store_true", help=stdinHelp)

    commands.add_parser("status", help="listeners, users, queue, certificate, and what"
                                       " the running server says")
    queue = commands.add_parser("queue", help="list or act on the outbound mail queue")
    queue.add_argument("action", choices=("list", "show", "flush", "retry", "delete", "hold",
                                          "release"))
    queue.add_argument("id", metavar="ID", nargs="?", help="queue id (flush: all by default)")
    spam = commands.add_parser("spam", help="the spam filter (rspamd): its state")
    spam.add_argument("action", choices=("status",))
    keys = commands.add_parser("dkim", help="make, list or retire DKIM signing keys")
    keyActions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = keyActions.add_parser("keygen", help="make an RSA and an Ed25519 key for a domain")
    gen.add_argument("domain", metavar="DOMAIN")
    gen.add_argument("--selector", metavar="S", help="name of the key set (default: today)")
    listing = keyActions.add_parser("list", help="list the key sets")
    listing.add_argument("domain", metavar="DOMAIN", nargs="?")
    retire = keyActions.add_parser("retire", help="stop a key set signing")
    retire.add_argument("domain", metavar="DOMAIN")
    retire.add_argument("selector", metavar="SELECTOR")
    records = commands.add_parser("dns", help="print (or check) the DNS records a domain needs")
    records.add_argument("domain", metavar="DOMAIN")
    records.add_argument("--check", action="store_true",
                         help="look the records up and say which are missing or differ")
    return parser


def runSpam(args: argparse.Namespace, stdout: IO[str]) -> None:
    """C{pymaild-admin spam status}: rspamd's reachability, version and statistics, and
    the server's counts (see L{pymaild.spam.status}).

    @raise AdminError: the configuration cannot be loaded, or the filter is enabled
        and rspamd does not answer (after the report is printed).
    """
    from pymaild import config as configModule  # lazy: only this command needs them
    from pymaild.spam.status import statusLines

    try:
        cfg = configModule.load(args.config, {"server": {"data": args.data}}
                                if args.data else None)
    except PymaildError as e:
        raise AdminError(str(e)) from e
    lines, ok = statusLines(cfg.spam, cfg.data)
    stdout.write("".join(line + "\n" for line in lines))
    if not ok:
        raise AdminError("rspamd does not answer")


def runDNS(args: argparse.Namespace, stdout: IO[str]) -> None:
    """C{pymaild-admin dns DOMAIN [--check]}.

    @raise AdminError: a record is missing or differs (with C{--check}).
    """

    from pymaild import config as configModule
    from pymaild.mailauth.dkimkeys import DKIMKeys, asciiDomain
    from pymaild.mailauth.dnsrecords import checkRecords, mtaStsPolicy, recordsFor, zoneText

    try:
        cfg = configModule.load(args.config, {"server": {"data": args.data}}
                                if args.data else None)
    except PymaildError as e:
        raise AdminError(str(e)) from e
    domain = asciiDomain(args.domain)
    keys = DKIMKeys(os.path.join(cfg.data, "dkim")).signingKeys(domain)
    hostname = asciiDomain(cfg.hostname)
    sts = cfg.mtasts
    policy = mtaStsPolicy(hostname, sts.mode, sts.mx, sts.max_age)
    records = recordsFor(domain, hostname, keys, policy)
    if not args.check:
        stdout.write(zoneText(records))
        return
    from twisted.internet import defer, task

    from pymaild.mailauth.resolver import DNSResolver
    from pymaild.smtp.mx import makeResolver

    results: list = []

    async def check(reactor: object) -> None:
        dns = DNSResolver(makeResolver(cfg.relay, reactor), reactor,
                          timeout=float(cfg.mailauth.dns_timeout))
        results.extend(await checkRecords(records, dns))

    try:
        task.react(lambda reactor: defer.ensureDeferred(check(reactor)))
    except SystemExit as e:
        if e.code:
            raise AdminError("the DNS check failed") from None
    bad = 0
    for record, status, detail in results:
        bad += status != "ok"
        note = f" ({detail})" if detail else ""
        stdout.write(f"{status}\t{record.name} {record.type} {record.value}{note}\n")
    if bad:
        raise AdminError(f"{bad} of {len(results)} records are missing or differ")


def dataPath(args: argparse.Namespace) -> str:
    """The data directory named by C{--data} or C{--config} (or the default).

    @raise AdminError: the configuration file cannot be loaded.
    """
    if args.config is None:
        return os.path.abspath(args.data or DEFAULT_DATA)
    from pymaild import config as configModule  # lazy: only --config needs it

    try:
        return configModule.load(args.config).data
    except PymaildError as e:
        raise AdminError(str(e)) from e


def runDKIM(args: argparse.Namespace, stdout: IO[str]) -> None:
    """C{pymaild-admin dkim keygen|list|retire}.

    @raise AdminError: the operation failed (bad selector, set exists, no such set).
    """
    from pymaild.mailauth.dkimkeys import DKIMKeyError, DKIMKeys, zoneTXT

    keys = DKIMKeys(os.path.join(dataPath(args), "dkim"))
    try:
        if args.action == "keygen":
            made = keys.keygen(args.domain, args.selector)
            stdout.write(f"made {len(made)} keys for {made[0].domain}; publish:\n")
            for key in made:
                stdout.write(f"{key.dnsName}. IN TXT {zoneTXT(key.dnsValue)}\n")
        elif args.action == "list":
            domains = [args.domain] if args.domain else keys.domains()
            for domain in domains:
                for name in keys.sets(domain):
                    for key in keys.keysOf(os.path.join(keys.root, domain, name), domain,
                                           name):
                        stdout.write(f"{domain} {key.selector} {key.keyType} active\n")
                for name in keys.sets(domain, retired=True):
                    stdout.write(f"{domain} {name} retired\n")
        elif args.action == "retire":
            keys.retire(args.domain, args.selector)
            stdout.write(f"retired key set {args.selector} of {args.domain}\n")
    except DKIMKeyError as e:
        raise AdminError(str(e)) from e
    except OSError as e:
        raise AdminError(f"{e.filename or keys.root}: {e.strerror or e}") from e


def queuePath(args: argparse.Namespace) -> str:
    """The outbound queue directory, C{<data>/queue}.

    @raise AdminError: the configuration file cannot be loaded.
    """
    if args.config is None:
        return os.path.join(args.data or DEFAULT_DATA, "queue")
    from pymaild import config as configModule  # lazy: only --config needs it

    try:
        return os.path.join(configModule.load(args.config).data, "queue")
    except PymaildError as e:
        raise AdminError(str(e)) from e


def runQueue(args: argparse.Namespace, stdout: IO[str]) -> None:
    """C{pymaild-admin queue ...}: see L{pymaild.smtp.queueadmin.queueCommand}.

    @raise UsageError: a queue id is missing or malformed.
    @raise AdminError: no such message.
    """
    import io

    from pymaild.smtp.queueadmin import queueCommand

    err = io.StringIO()
    argv = [args.action] + ([args.id] if args.id else [])
    status = queueCommand(queuePath(args), argv, stdout, err)
    message = err.getvalue().strip().replace("pymaild-admin queue: ", "")
    if status == EXIT_USAGE:
        raise UsageError(message.splitlines()[0] if message else "bad queue command")
    if status:
        raise AdminError(message or "queue command failed")


def loadConfig(args: argparse.Namespace) -> Any:
    """The server's configuration: C{--config}, or the defaults with C{--data}.

    @raise AdminError: the configuration cannot be loaded.
    """
    from pymaild import config as configModule  # lazy: only some commands need it

    try:
        if args.config is not None:
            return configModule.load(args.config)
        return configModule.load(None, {"server": {"data": args.data or DEFAULT_DATA}})
    except PymaildError as e:
        raise AdminError(str(e)) from e


def passwdPath(args: argparse.Namespace, cfg: Any = None) -> str:
    """The passwd file named by C{--data} or C{--config} (or the default data dir).

    @param cfg: the configuration of C{--config} when it is loaded already.
    @raise AdminError: the configuration file cannot be loaded.
    """
    if args.config is None:
        return os.path.join(args.data or DEFAULT_DATA, "passwd")
    if cfg is None:
        cfg = configOf(args)
    args.loadedConfig = cfg
    auth = getattr(cfg, "auth", None)
    path = getattr(auth, "passwd", None)
    if not path:
        data = getattr(cfg, "data", None) or getattr(getattr(cfg, "server", None), "data", None)
        if not data:
            raise AdminError(f"{args.config} names neither auth.passwd nor a data directory")
        path = os.path.join(data, "passwd")
    return os.fspath(path)


def configOf(args: argparse.Namespace) -> Any:
    """The configuration file of C{--config}, loaded.

    @raise AdminError: it cannot be loaded.
    """
    try:
        from pymaild import config as configModule  # lazy: only --config needs it

        cfg = configModule.load(args.config)
    except PymaildError as e:  # ConfigError names the file and the problem
        raise AdminError(str(e)) from e
    except (OSError, ValueError) as e:
        raise AdminError(f"cannot load configuration {args.config}: {e}") from e
    except ImportError as e:
        raise AdminError(f"configuration support is not available: {e}") from e
    return cfg


def servedDomains(args: argparse.Namespace, passwd: UserSource) -> set[str]:
    """The domains the server receives mail for, as far as this command can know.

    With C{--config}, the configuration's C{server.domains} (or its host name). With
    C{--data} alone the server's C{--domain} options are not known here, so the domains
    of the users already in the passwd file stand for them (the server creates
    C{postmaster@<primary domain>} at its first start).

    @raise AdminError: the configuration file cannot be loaded.
    """
    if args.config is not None:
        from pymaild import config as configModule  # lazy: only --config needs it

        try:
            return set(configModule.load(args.config).domains)
        except PymaildError as e:
            raise AdminError(str(e)) from e
    return {address.rpartition("@")[2] for address in passwd.users()}


def checkDomain(args: argparse.Namespace, passwd: UserSource, address: str,
                stderr: IO[str]) -> None:
    """Refuse a user in a domain the server does not serve, unless C{--force} is given.

    Mail to such a user would be relayed away, never delivered to its mailbox.

    @raise AdminError: the domain is not served and C{--force} is not given.
    """
    domains = servedDomains(args, passwd)
    domain = address.rpartition("@")[2]
    if not domains or domain in domains:
        return
    served = ", ".join(sorted(domains))
    if not args.force:
        raise AdminError(
            f"{domain} is not a domain this server serves ({served}): mail to {address}"
            " would not reach this mailbox; add the domain to server.domains, or use"
            " --force to add the user anyway")
    stderr.write(f"{PROG}: warning: {domain} is not a domain this server serves ({served})\n")


def readPassword(args: argparse.Namespace, stdin: IO[str]) -> str:
    """Read a new password from standard input or, twice, from the terminal.

    @raise UsageError: no terminal and no C{--password-stdin}.
    @raise AdminError: the password is empty or the two entries differ.
    """
    if args.password_stdin:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        if not stdin.isatty():
            raise UsageError("standard input is not a terminal; use --password-stdin")
        try:
            password = getpass("Password: ")
            again = getpass("Retype password: ")
        except (EOFError, KeyboardInterrupt) as e:
            raise AdminError("no password entered") from e
        if password != again:
            raise AdminError("passwords do not match")
    if not password:
        raise AdminError("empty password refused")
    return password


def run(args: argparse.Namespace, stdin: IO[str], stdout: IO[str],
        stderr: IO[str] | None = None) -> None:
    """Carry out the parsed command.

    @raise UsageError: wrong usage found after parsing.
    @raise AdminError: the operation failed.
    """
    if args.command == "hash":
        stdout.write(hashPassword(readPassword(args, stdin)) + "\n")
        return
    if args.command == "queue":
        runQueue(args, stdout)
        return
    if args.command == "status":
        from pymaild import status  # lazy: only status needs TLS and HTTP

        users = userSource(args)
        try:
            status.report(loadConfig(args), stdout, users=users)
        finally:
            closeUsers(users)
        return
    if args.command == "spam":
        runSpam(args, stdout)
        return
    if args.command == "dkim":
        runDKIM(args, stdout)
        return
    if args.command == "dns":
        runDNS(args, stdout)
        return
    if args.command in ("db", "node") or (args.command == "user"
                                          and args.action in ("owner", "move")):
        runDatabase(args, stdout)
        return
    passwd = userSource(args)
    try:
        if getattr(args, "node", None) and not hasattr(passwd, "setOwner"):
            raise AdminError("--node needs the PostgreSQL user directory"
                             " (auth.backend = \"postgresql\")")
        if args.action == "list":
            listUsers(args, passwd, stdout)
        elif args.action == "add":
            address = _address(args.address)
            if passwd.lookup(address) is not None:
                raise AdminError(f"user {address} already exists")
            checkDomain(args, passwd, address, stderr or sys.stderr)
            password = readPassword(args, stdin)
            if getattr(args, "node", None):
                address = passwd.add(address, password, node=args.node)  # type: ignore[call-arg]
            else:
                address = passwd.add(address, password)
            stdout.write(f"added user {address}\n")
        elif args.action == "passwd":
            address = _address(args.address)
            if passwd.lookup(address) is None:
                raise AdminError(f"no user {address}")
            address = passwd.setPassword(address, readPassword(args, stdin))
            stdout.write(f"changed the password of {address}\n")
        elif args.action == "del":
            address = passwd.remove(_address(args.address))
            stdout.write(f"deleted user {address} (its mail is left on disk)\n")
    except (UserExists, NoSuchUser, PasswdLocked) as e:
        raise AdminError(str(e)) from e
    except OSError as e:
        where = e.filename or getattr(passwd, "path", "user database")
        raise AdminError(f"{where}: {e.strerror or e}") from e
    finally:
        closeUsers(passwd)


def userSource(args: argparse.Namespace) -> UserSource:
    """The user directory of C{--config} (passwd file or PostgreSQL) or C{--data}.

    @raise AdminError: the configuration cannot be loaded.
    """
    cfg = configOf(args) if args.config is not None else None
    if cfg is not None and getattr(getattr(cfg, "auth", None), "backend",
                                   "passwd") == "postgresql":
        from pymaild.auth.pgusers import PostgresUsers  # lazy: psycopg

        return PostgresUsers(cfg.auth.database, poolSize=1)
    return PasswdFile(passwdPath(args, cfg))


def closeUsers(users: Any) -> None:
    """Close a database-backed user directory's connections (a file has none)."""
    close = getattr(users, "close", None)
    if close is not None:
        close()


def runDatabase(args: argparse.Namespace, stdout: IO[str]) -> None:
    """C{db init}, C{node set|list} and C{user owner}: the PostgreSQL directory only.

    @raise AdminError: no PostgreSQL directory is configured, or the operation failed.
    """
    from pymaild.auth.pgusers import NodeRecord, NoSuchNode, PostgresUsers

    users = userSource(args)
    if not isinstance(users, PostgresUsers):
        raise AdminError(f"{args.command} needs the PostgreSQL user directory: give --config"
                         " with auth.backend = \"postgresql\"")
    try:
        if args.command == "db":
            users.initSchema()
            stdout.write(f"user database ready (schema version {users.schemaVersion()})\n")
        elif args.command == "node" and args.action == "set":
            import ipaddress

            try:
                ip = str(ipaddress.ip_address(args.ip))
            except ValueError as e:
                raise AdminError(f"bad IP address: {e}") from e
            for name in ("imap", "pop3", "submission", "lmtp"):
                if not 0 < getattr(args, name) < 65536:
                    raise AdminError(f"--{name}: not a port number: {getattr(args, name)}")
            users.setNode(NodeRecord(args.name, ip, args.imap, args.pop3, args.submission,
                                     args.lmtp))
            stdout.write(f"node {args.name} at {ip}\n")
        elif args.command == "node":
            for n in users.nodes():
                stdout.write(f"{n.name} {n.address} imap={n.imap_port} pop3={n.pop3_port}"
                             f" submission={n.submission_port} lmtp={n.lmtp_port}\n")
        elif args.action == "move":
            from pymaild.auth.move import moveMailbox

            address, late = moveMailbox(
                users, _address(args.address), args.node, os.path.abspath(args.source),
                os.path.abspath(args.target), args.settle,
                cacheTTL=float(configOf(args).auth.database_cache_ttl))
            stdout.write(f"moved {address} to node {args.node}"
                         f" ({late} message(s) arrived during the copy)\n")
        else:
            address = users.setOwner(_address(args.address), args.node)
            stdout.write(f"{address} is owned by node {args.node}\n")
    except (NoSuchNode, NoSuchUser) as e:
        raise AdminError(str(e)) from e
    except OSError as e:
        raise AdminError(str(e)) from e
    finally:
        users.close()


def listUsers(args: argparse.Namespace, passwd: UserSource, stdout: IO[str]) -> None:
    """C{user list}: one address a line; a user with a quota gets a second,
    tab-separated column with its usage and limits (L{pymaild.auth.quota.describe}).

    The usage is counted from the Maildir without writing anything there (this tool may
    run as another user than the server).
    """
    cfg = getattr(args, "loadedConfig", None) or loadConfig(args)
    from pymaild.store import MaildirStore  # lazy: only this command needs the store

    store = MaildirStore(os.path.join(cfg.data, "mail"))
    rules = getattr(getattr(cfg, "quota", None), "rules", ())
    quotas = Quotas(passwd, store, applyRules(QuotaLimits(), rules))
    for address in passwd.users():
        line = address
        usage, limits = quotas.report(address, keep=False)
        if not limits.unlimited:
            line += "\t" + describe(usage, limits)
        stdout.write(line + "\n")


def _address(text: str) -> str:
    """Check an address given on the command line (before asking for a password)."""
    try:
        return canonical(text)
    except AddressError as e:
        raise AdminError(f"bad address: {e}") from e


def main(
    argv: Sequence[str] | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run C{pymaild-admin} with C{argv} (default C{sys.argv[1:]}); return the exit status."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            args = buildParser().parse_args(argv)
        run(args, stdin, stdout, stderr)
    except _Exit as e:
        return e.status
    except UsageError as e:
        stderr.write(f"{PROG}: error: {e} (see {PROG} --help)\n")
        return EXIT_USAGE
    except AdminError as e:
        stderr.write(f"{PROG}: {e}\n")
        return EXIT_FAILURE
    except (ValueError, PymaildError) as e:
        stderr.write(f"{PROG}: {e}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        stderr.write(f"{PROG}: interrupted\n")
        return EXIT_FAILURE
    except Exception as e:  # a bug: still one line, no traceback
        stderr.write(f"{PROG}: unexpected error: {e!r}\n")
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
