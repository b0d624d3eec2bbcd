"""Configuration: ``etc/pymaild.toml`` read into frozen dataclasses.

``load(path, overrides)`` is pure apart from reading the file: it creates nothing. Every
error is a ``ConfigError`` whose message names the file, the key and the problem, so
``twistd`` can print one clear line. Keys, defaults and one-line comments are listed in
``etc/pymaild.toml``; a missing key takes the default given here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any

from pymaild.address import canonical, domainToASCII, normaliseDomain
from pymaild.errors import AddressError, ConfigError
from pymaild.quotarules import parseRule

CLEARTEXT_POLICIES = ("tls-only", "tls-or-loopback", "always")
USER_BACKENDS = ("passwd", "postgresql")
SMARTHOST_TLS_POLICIES = ("required", "opportunistic")
POP3_DELETE_MODES = ("expunge", "flag")
SPAM_FAILURE_POLICIES = ("tempfail", "accept")
DMARC_ACTIONS = ("reject", "junk", "accept")
ACME_CHALLENGES = ("http-01", "tls-alpn-01")
MTA_STS_MODES = ("enforce", "testing", "none")
#: The largest METADATA value the IMAP framing can carry (its limit for literals of
#: commands other than APPEND).
METADATA_VALUE_CEILING = 65536


def parseDomainPolicy(entry: str, where: str) -> tuple[str, dict[str, str]]:
    """One C{mailauth.domain_policies} entry: C{(domain, {"reject": action, ...})}.

    @raise ConfigError: naming C{where} when the entry is malformed.
    """
    words = entry.split()
    if not words:
        raise ConfigError(f"{where}: empty entry")
    try:
        domain = normaliseDomain(words[0])
    except AddressError as e:
        raise ConfigError(f"{where}: {words[0]!r}: {e}") from None
    actions: dict[str, str] = {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or key not in ("reject", "quarantine"):
            raise ConfigError(
                f"{where}: {entry!r}: expected reject=ACTION or quarantine=ACTION, got {word!r}")
        _oneOf(f"{where}: {entry!r}: {key}", value, DMARC_ACTIONS)
        actions[key] = value
    return domain, actions


@dataclass(frozen=True)
class ServerConfig:
    """Where the data lives and which names the server answers for."""

    data: str = "./pymaild-data"
    hostname: str = ""
    domains: tuple[str, ...] = ()
    shutdown_grace: int = 30
    log_format: str = "text"
    #: Processes serving the mail listeners (the master and N-1 workers); 0: one per
    #: core the server may run on.
    workers: int = 0


@dataclass(frozen=True)
class ListenConfig:
    """Twisted endpoint strings per listener; an empty tuple disables the listener.

    Endpoints not starting with C{ssl:} on the implicit-TLS listeners (smtps, pop3s,
    imaps) are wrapped in TLS with the server's certificate. C{metrics} serves
    Prometheus' C{/metrics} over plain HTTP: keep it on loopback or a private network.
    C{http} and C{https} serve client autoconfiguration and ACME challenges
    (L{pymaild.web.site}); plain C{tcp:} endpoints of C{https} get TLS added.
    C{lmtp} (off by default) takes LMTP deliveries without AUTH: trusted peers only.
    """

    smtp: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    submission: tuple[str, ...] = ("tcp:2587:interface=127.0.0.1",)
    smtps: tuple[str, ...] = ("tcp:2465:interface=127.0.0.1",)
    pop3: tuple[str, ...] = ("tcp:2110:interface=127.0.0.1",)
    pop3s: tuple[str, ...] = ("tcp:2995:interface=127.0.0.1",)
    imap: tuple[str, ...] = ("tcp:2143:interface=127.0.0.1",)
    imaps: tuple[str, ...] = ("tcp:2993:interface=127.0.0.1",)
    metrics: tuple[str, ...] = ("tcp:2909:interface=127.0.0.1",)
    http: tuple[str, ...] = ("tcp:2080:interface=127.0.0.1",)
    https: tuple[str, ...] = ("tcp:2443:interface=127.0.0.1",)
    managesieve: tuple[str, ...] = ("tcp:24190:interface=127.0.0.1",)
    lmtp: tuple[str, ...] = ()
    auth_http: tuple[str, ...] = ()


@dataclass(frozen=True)
class TLSConfig:
    """Certificate and key (PEM); empty means a self-signed pair under <data>/tls."""

    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class AuthConfig:
    """Users, where cleartext passwords are accepted, and brute-force protection."""

    passwd: str = ""
    cleartext: str = "tls-or-loopback"
    threads: int = 4
    trusted_networks: tuple[str, ...] = ()
    backend: str = "passwd"
    database: str = ""
    database_pool: int = 4
    database_cache_ttl: int = 5


@dataclass(frozen=True)
class LimitsConfig:
    """Connection caps shared by every listener (Dovecot's and Postfix's anchors)."""

    max_connections: int = 1000
    max_connections_per_ip: int = 20
    max_connections_per_user_ip: int = 10
    line_deadline: int = 120
    tls_handshake_timeout: int = 30


@dataclass(frozen=True)
class SMTPConfig:
    """Inbound SMTP (MX role) and the parts submission shares with it."""

    max_message_size: int = 26214400
    max_recipients: int = 100
    recipient_delimiter: str = "+"
    aliases: str = ""


@dataclass(frozen=True)
class SubmissionConfig:
    """Mail submission by the server's own users (587 STARTTLS, 465 TLS)."""

    max_messages_per_hour: int = 500
    check_from_header: bool = True


@dataclass(frozen=True)
class RelayConfig:
    """Outbound delivery to other servers (the queue in <data>/queue and its SMTP client)."""

    smarthost: str = ""
    smarthost_user: str = ""
    smarthost_password_file: str = ""
    smarthost_tls: str = "required"
    smarthost_ca_file: str = ""
    mx_port: int = 25
    dns_servers: tuple[str, ...] = ()
    backoff_min: int = 300
    backoff_max: int = 4000
    max_queue_life: int = 432000
    delay_warning: int = 14400
    concurrency: int = 10
    queue_tick: int = 5
    connect_timeout: int = 30
    command_timeout: int = 300
    mta_sts: bool = True
    mta_sts_ca_file: str = ""
    mta_sts_port: int = 443
    mta_sts_timeout: int = 60
    mta_sts_refresh: int = 86400
    dnssec_resolvers: tuple[str, ...] = ()
    tls_reports: bool = True


@dataclass(frozen=True)
class MailAuthConfig:
    """DKIM signing of submitted mail; SPF, DKIM, DMARC and ARC checks of MX mail.

    C{domain_policies} entries read C{"DOMAIN reject=ACTION quarantine=ACTION"} (either
    part may be left out): what a failing DMARC C{p=reject} or C{p=quarantine} does to
    mail for that local domain instead of C{on_dmarc_reject} / C{on_dmarc_quarantine}.
    """

    sign: bool = True
    verify: bool = True
    internal_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    dns_timeout: int = 10
    on_dmarc_reject: str = "reject"
    on_dmarc_quarantine: str = "junk"
    domain_policies: tuple[str, ...] = ()
    dmarc_reports: bool = True


@dataclass(frozen=True)
class POP3Config:
    """POP3 behaviour."""

    delete: str = "expunge"


@dataclass(frozen=True)
class IMAPConfig:
    """IMAP4 behaviour."""

    max_literal: int = 52428800
    idle_keepalive: int = 120
    metadata_max_size: int = 16384
    metadata_max_entries: int = 500


@dataclass(frozen=True)
class WebConfig:
    """The admin web page (L{pymaild.web.admin})."""

    admin_page: bool = True
    admins: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes behind nginx's mail proxy (docs/cluster.rst)."""

    node: str = ""
    address: str = "127.0.0.1"
    auth_http_secret: str = ""
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class AcmeConfig:
    """Certificates by ACME (L{pymaild.certificates}); off unless C{enabled}."""

    enabled: bool = False
    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    email: str = ""
    names: tuple[str, ...] = ()
    renew_days: int = 30
    check_interval: int = 43200
    retry_interval: int = 3600
    ca_file: str = ""
    challenges: tuple[str, ...] = ("http-01", "tls-alpn-01")


@dataclass(frozen=True)
class SpamConfig:
    """Spam filtering through rspamd's HTTP protocol (off unless C{enabled})."""

    enabled: bool = False
    url: str = "http://127.0.0.1:11333"
    controller_url: str = "http://127.0.0.1:11334"
    password_file: str = ""
    timeout: int = 20
    max_size: int = 26214400
    mx_failure: str = "tempfail"
    submission: bool = True
    submission_failure: str = "accept"
    opt_out: tuple[str, ...] = ()
    threshold_offsets: tuple[str, ...] = ()
    learn: bool = True
    learn_attempts: int = 5

    def offsets(self) -> dict[str, float]:
        """C{threshold_offsets} as domain → offset (validated by L{load})."""
        out: dict[str, float] = {}
        for item in self.threshold_offsets:
            domain, _, value = item.rpartition("=")
            out[normaliseDomain(domain.strip())] = float(value)
        return out


@dataclass(frozen=True)
class SieveConfig:
    """Users' Sieve filters at delivery, with Pigeonhole's limits and defaults."""

    enabled: bool = True
    max_script_size: int = 1048576
    max_actions: int = 32
    max_redirects: int = 4
    max_cpu_time: int = 30
    quota_max_scripts: int = 0
    quota_max_storage: int = 0
    global_dir: str = ""


@dataclass(frozen=True)
class MTASTSConfig:
    """The MTA-STS policy (RFC 8461) the https listener serves for the local domains at
    C{https://mta-sts.DOMAIN/.well-known/mta-sts.txt} (off unless C{serve}).

    C{mx} empty means the server's host name.
    """

    serve: bool = False
    mode: str = "enforce"
    max_age: int = 604800
    mx: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuotaConfig:
    """The default mail quota: Dovecot C{quota_rule} rules (C{"*:storage=1G"},
    C{"*:messages=10000"}); users' passwd-file C{userdb_quota_rule} fields override."""

    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole configuration, with paths made absolute and defaults filled in."""

    path: str | None = None
    notes: tuple[tuple[str, str], ...] = ()
    server: ServerConfig = field(default_factory=ServerConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    mailauth: MailAuthConfig = field(default_factory=MailAuthConfig)
    pop3: POP3Config = field(default_factory=POP3Config)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    web: WebConfig = field(default_factory=WebConfig)
    spam: SpamConfig = field(default_factory=SpamConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    mtasts: MTASTSConfig = field(default_factory=MTASTSConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def data(self) -> str:
        """The absolute data directory."""
        return self.server.data

    @property
    def hostname(self) -> str:
        """The host name used in greetings, Received lines and file names."""
        return self.server.hostname

    @property
    def domains(self) -> tuple[str, ...]:
        """The local mail domains, the first being the primary one."""
        return self.server.domains


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "listen": ListenConfig,
    "tls": TLSConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "smtp": SMTPConfig,
    "submission": SubmissionConfig,
    "relay": RelayConfig,
    "mailauth": MailAuthConfig,
    "pop3": POP3Config,
    "imap": IMAPConfig,
    "acme": AcmeConfig,
    "web": WebConfig,
    "spam": SpamConfig,
    "sieve": SieveConfig,
    "mtasts": MTASTSConfig,
    "quota": QuotaConfig,
    "cluster": ClusterConfig,
}


def _coerce(where: str, value: Any, default: Any) -> Any:
    """Check C{value} against the type of C{default} and convert lists to tuples."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{where}: unsupported value {value!r}")


def _section(fname: str, name: str, cls: type, raw: Any) -> Any:
    """Build section C{name} of class C{cls} from its TOML table."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{fname}: [{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    defaults = cls()
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{fname}: unknown key {name}.{key} (known: {known})")
        values[key] = _coerce(f"{fname}: {name}.{key}", value, getattr(defaults, key))
    return cls(**values)


def defaultHostname() -> tuple[str, str, str]:
    """The machine's host name, lower-cased, with a log level and a sentence on its origin.

    The kernel's host name is used when it has a dot; otherwise the resolver's fully
    qualified name when that has a dot and is not a C{localhost} name (Debian's
    C{/etc/hosts} often maps the short name to C{localhost}); otherwise the short name
    itself, which is a poor mail domain: then the level is C{warn} and the sentence
    says what to set.
    """
    short = (socket.gethostname() or "").lower().rstrip(".")
    if "." in short:
        return short, "info", f"Host name {short!r}: the system's host name"
    fqdn = (socket.getfqdn() or "").lower().rstrip(".")
    if "." in fqdn and not fqdn.startswith("localhost"):
        return fqdn, "info", (
            f"Host name {fqdn!r}: the resolver's name for the system's host name {short!r}")
    name = short or "localhost"
    return name, "warn", (
        f"Host name {name!r}: the system's host name has no dot and the resolver knows"
        f" no fully qualified name for it (it gives {fqdn or 'nothing'!r}); set"
        " server.hostname (--hostname) and server.domains (--domain) for real mail"
    )


def load(path: str | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read the configuration file at C{path} (or only defaults) and apply C{overrides}.

    C{overrides} maps section to key to value, as the tap options give them; they win
    over the file. Relative paths in the file are relative to the file's directory;
    relative paths given as overrides or defaults are relative to the working directory.

    @raise ConfigError: the file is unreadable, not TOML, or a key is unknown or wrong.
    """
    fname = path or "command line"
    raw: dict[str, Any] = {}
    base = os.getcwd()
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        base = os.path.dirname(os.path.abspath(path))
    for name in raw:
        if name not in SECTIONS:
            raise ConfigError(f"{fname}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
    sections = {n: _section(fname, n, c, raw.get(n, {})) for n, c in SECTIONS.items()}

    def absFile(p: str) -> str:
        return p if not p or os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

    server = sections["server"]
    sections["server"] = dataclasses.replace(server, data=absFile(server.data))
    tls = sections["tls"]
    sections["tls"] = dataclasses.replace(tls, cert=absFile(tls.cert), key=absFile(tls.key))
    auth = sections["auth"]
    sections["auth"] = dataclasses.replace(auth, passwd=absFile(auth.passwd))
    smtp = sections["smtp"]
    sections["smtp"] = dataclasses.replace(smtp, aliases=absFile(smtp.aliases))
    relay = sections["relay"]
    sections["relay"] = dataclasses.replace(
        relay,
        smarthost_password_file=absFile(relay.smarthost_password_file),
        smarthost_ca_file=absFile(relay.smarthost_ca_file),
        mta_sts_ca_file=absFile(relay.mta_sts_ca_file),
    )
    acme = sections["acme"]
    sections["acme"] = dataclasses.replace(acme, ca_file=absFile(acme.ca_file))
    spam = sections["spam"]
    sections["spam"] = dataclasses.replace(spam, password_file=absFile(spam.password_file))
    sieve = sections["sieve"]
    sections["sieve"] = dataclasses.replace(sieve, global_dir=absFile(sieve.global_dir))

    for name, values in (overrides or {}).items():
        cls = SECTIONS[name]
        current = sections[name]
        defaults = cls()
        clean = {}
        for key, value in values.items():
            clean[key] = _coerce(f"option --{key.replace('_', '-')}", value, getattr(defaults, key))
            paths = ("data", "passwd", "cert", "key", "aliases", "smarthost_password_file",
                     "smarthost_ca_file", "password_file", "mta_sts_ca_file")
            if key in paths and clean[key]:
                clean[key] = os.path.abspath(clean[key])
        sections[name] = dataclasses.replace(current, **clean)
    return _finish(fname, Config(path=path, **sections))


def parseHostPort(value: str, defaultPort: int, key: str) -> tuple[str, int]:
    """Split C{host:port}, C{[v6]:port} or C{host} into host and port.

    @raise ConfigError: naming C{key} when the value is malformed.
    """
    v = value.strip()
    host, port = v, str(defaultPort)
    if v.startswith("["):
        end = v.find("]")
        if end == -1:
            raise ConfigError(f"{key}: bad address {value!r}")
        host = v[1:end]
        rest = v[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{key}: bad address {value!r}")
            port = rest[1:]
    elif v.count(":") == 1:
        host, port = v.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: bad host:port {value!r}")
    return host, int(port)


def _checkMTASTS(fname: str, mtasts: MTASTSConfig) -> None:
    """The served MTA-STS policy's mode, max_age and mx patterns.

    @raise ConfigError: naming the key and the file.
    """
    _oneOf(f"{fname}: mtasts.mode", mtasts.mode, MTA_STS_MODES)
    _atLeast(f"{fname}: mtasts.max_age", mtasts.max_age, 1)
    if mtasts.max_age > 31557600:
        raise ConfigError(f"{fname}: mtasts.max_age: at most 31557600 (RFC 8461),"
                          f" got {mtasts.max_age}")
    for pattern in mtasts.mx:
        name = pattern[2:] if pattern.startswith("*.") else pattern
        try:
            normaliseDomain(name)
        except AddressError as e:
            raise ConfigError(f"{fname}: mtasts.mx: {pattern!r}: {e}") from None
        if "." not in name or "*" in name:
            raise ConfigError(f"{fname}: mtasts.mx: {pattern!r} is not a host name or"
                              " *.domain pattern")


def _oneOf(where: str, value: str, allowed: tuple[str, ...]) -> None:
    """Refuse C{value} unless it is one of C{allowed}."""
    if value not in allowed:
        raise ConfigError(f"{where}: must be one of {', '.join(allowed)}, got {value!r}")


def _atLeast(where: str, value: int, least: int) -> None:
    """Refuse an integer below C{least}."""
    if value < least:
        raise ConfigError(f"{where}: must be at least {least}, got {value}")


def _checkValues(fname: str, config: Config) -> None:
    """Validate every value whose type alone does not make it right.

    Everything the server would otherwise find wrong later (in a constructor, at the
    first connection or the first relayed message) is found here, naming the key.
    """
    auth, limits, relay = config.auth, config.limits, config.relay
    _oneOf(f"{fname}: auth.cleartext", auth.cleartext, CLEARTEXT_POLICIES)
    _oneOf(f"{fname}: server.log_format", config.server.log_format, ("text", "json"))
    _atLeast(f"{fname}: auth.threads", auth.threads, 1)
    _atLeast(f"{fname}: server.workers", config.server.workers, 0)
    _oneOf(f"{fname}: auth.backend", auth.backend, USER_BACKENDS)
    _atLeast(f"{fname}: auth.database_pool", auth.database_pool, 1)
    _atLeast(f"{fname}: auth.database_cache_ttl", auth.database_cache_ttl, 0)
    if auth.backend == "postgresql" and not auth.database.strip():
        raise ConfigError(f"{fname}: auth.database: needed with auth.backend = \"postgresql\""
                          " (a libpq connection string)")
    for net in auth.trusted_networks:
        try:
            ipaddress.ip_network(net.strip(), strict=False)
        except ValueError as e:
            raise ConfigError(f"{fname}: auth.trusted_networks: {e}") from None
    for key in ("max_connections", "max_connections_per_ip", "max_connections_per_user_ip",
                "line_deadline"):
        _atLeast(f"{fname}: limits.{key}", getattr(limits, key), 1)
    _atLeast(f"{fname}: smtp.max_message_size", config.smtp.max_message_size, 1)
    _atLeast(f"{fname}: smtp.max_recipients", config.smtp.max_recipients, 1)
    _atLeast(f"{fname}: imap.max_literal", config.imap.max_literal, 1)
    _atLeast(f"{fname}: imap.idle_keepalive", config.imap.idle_keepalive, 0)
    _atLeast(f"{fname}: imap.metadata_max_size", config.imap.metadata_max_size, 1)
    if config.imap.metadata_max_size > METADATA_VALUE_CEILING:
        raise ConfigError(f"{fname}: imap.metadata_max_size: at most"
                          f" {METADATA_VALUE_CEILING} (the largest literal of a command"
                          f" other than APPEND), got {config.imap.metadata_max_size}")
    _atLeast(f"{fname}: imap.metadata_max_entries", config.imap.metadata_max_entries, 0)
    _oneOf(f"{fname}: pop3.delete", config.pop3.delete, POP3_DELETE_MODES)
    _oneOf(f"{fname}: relay.smarthost_tls", relay.smarthost_tls, SMARTHOST_TLS_POLICIES)
    if relay.smarthost:
        parseHostPort(relay.smarthost, 25, f"{fname}: relay.smarthost")
    elif relay.smarthost_user:
        raise ConfigError(f"{fname}: relay.smarthost_user: set, but relay.smarthost is not")
    if relay.smarthost_user and not relay.smarthost_password_file:
        raise ConfigError(
            f"{fname}: relay.smarthost_password_file: needed with relay.smarthost_user")
    for server in relay.dns_servers:
        host, _port = parseHostPort(server, 53, f"{fname}: relay.dns_servers")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"{fname}: relay.dns_servers: {host!r} is not an IP address") from None
    for server in relay.dnssec_resolvers:
        host, _port = parseHostPort(server, 53, f"{fname}: relay.dnssec_resolvers")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"{fname}: relay.dnssec_resolvers: {host!r} is not an IP address") from None
    _atLeast(f"{fname}: relay.mx_port", relay.mx_port, 1)
    if relay.mx_port > 65535:
        raise ConfigError(f"{fname}: relay.mx_port: not a port number: {relay.mx_port}")
    _atLeast(f"{fname}: relay.mta_sts_port", relay.mta_sts_port, 1)
    if relay.mta_sts_port > 65535:
        raise ConfigError(
            f"{fname}: relay.mta_sts_port: not a port number: {relay.mta_sts_port}")
    for key in ("backoff_min", "concurrency", "queue_tick", "mta_sts_timeout"):
        _atLeast(f"{fname}: relay.{key}", getattr(relay, key), 1)
    _atLeast(f"{fname}: relay.mta_sts_refresh", relay.mta_sts_refresh, 0)
    if relay.backoff_max < relay.backoff_min:
        raise ConfigError(
            f"{fname}: relay.backoff_max: {relay.backoff_max} is less than"
            f" relay.backoff_min ({relay.backoff_min})")
    _checkSpam(fname, config.spam)
    _checkCluster(fname, config)
    mailauth = config.mailauth
    _atLeast(f"{fname}: mailauth.dns_timeout", mailauth.dns_timeout, 1)
    _oneOf(f"{fname}: mailauth.on_dmarc_reject", mailauth.on_dmarc_reject, DMARC_ACTIONS)
    _oneOf(f"{fname}: mailauth.on_dmarc_quarantine", mailauth.on_dmarc_quarantine,
           DMARC_ACTIONS)
    for net in mailauth.internal_networks:
        try:
            ipaddress.ip_network(net.strip(), strict=False)
        except ValueError as e:
            raise ConfigError(f"{fname}: mailauth.internal_networks: {e}") from None
    for entry in mailauth.domain_policies:
        parseDomainPolicy(entry, f"{fname}: mailauth.domain_policies")
    for key in ("max_script_size", "max_actions", "max_cpu_time"):
        _atLeast(f"{fname}: sieve.{key}", getattr(config.sieve, key), 1)
    for key in ("max_redirects", "quota_max_scripts", "quota_max_storage"):
        _atLeast(f"{fname}: sieve.{key}", getattr(config.sieve, key), 0)
    _checkMTASTS(fname, config.mtasts)
    for rule in config.quota.rules:
        try:
            parseRule(rule)
        except ValueError as e:
            raise ConfigError(f"{fname}: quota.rules: {e}") from None
    if bool(config.tls.cert) != bool(config.tls.key):
        missing = "tls.key" if config.tls.cert else "tls.cert"
        raise ConfigError(f"{fname}: {missing}: tls.cert and tls.key must be given together")
    for address in config.web.admins:
        try:
            canonical(address)
        except AddressError as e:
            raise ConfigError(f"{fname}: web.admins: {address!r}: {e}") from None
    acme = config.acme
    if acme.enabled:
        if config.tls.cert:
            raise ConfigError(f"{fname}: acme.enabled: the certificate comes from ACME, so"
                              " tls.cert and tls.key must be empty")
        if not acme.directory.startswith("https://"):
            raise ConfigError(f"{fname}: acme.directory: must be an https:// URL,"
                              f" got {acme.directory!r}")
        for key in ("renew_days", "check_interval", "retry_interval"):
            _atLeast(f"{fname}: acme.{key}", getattr(acme, key), 1)
        if not acme.challenges:
            raise ConfigError(f"{fname}: acme.challenges: name at least one of"
                              f" {', '.join(ACME_CHALLENGES)}")
        for kind in acme.challenges:
            _oneOf(f"{fname}: acme.challenges", kind, ACME_CHALLENGES)
        usable = [k for k in acme.challenges
                  if (k == "http-01" and config.listen.http)
                  or (k == "tls-alpn-01" and config.listen.https)]
        if not usable:
            raise ConfigError(
                f"{fname}: acme.enabled: the http-01 challenge needs an http listener"
                " (listen.http), tls-alpn-01 an https one (listen.https); acme.challenges"
                f" names {', '.join(acme.challenges)}")


def _checkURL(where: str, value: str) -> None:
    """Refuse anything but an C{http://host:port} URL (rspamd speaks plain HTTP)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{where}: bad URL {value!r}: {e}") from None
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.username:
        raise ConfigError(f"{where}: expected http://host:port, got {value!r}")
    if port is None:
        raise ConfigError(f"{where}: the URL needs a port, got {value!r}")


def _checkCluster(fname: str, config: Config) -> None:
    """Validate the [cluster] section and the auth_http listener's needs."""
    cluster = config.cluster
    try:
        ipaddress.ip_address(cluster.address)
    except ValueError:
        raise ConfigError(f"{fname}: cluster.address: not an IP address:"
                          f" {cluster.address!r}") from None
    for net in cluster.trusted_proxies:
        try:
            ipaddress.ip_network(net.strip(), strict=False)
        except ValueError as e:
            raise ConfigError(f"{fname}: cluster.trusted_proxies: {e}") from None
    if cluster.node and config.auth.backend != "postgresql":
        raise ConfigError(f"{fname}: cluster.node: a node of a cluster needs the shared"
                          " user directory (auth.backend = \"postgresql\")")
    listening = [e for e in config.listen.auth_http if e.strip().lower() != "none"]
    if listening and len(cluster.auth_http_secret) < 16:
        raise ConfigError(f"{fname}: cluster.auth_http_secret: listen.auth_http needs a"
                          " shared secret of at least 16 characters")


def _checkSpam(fname: str, spam: SpamConfig) -> None:
    """Validate the [spam] section."""
    _oneOf(f"{fname}: spam.mx_failure", spam.mx_failure, SPAM_FAILURE_POLICIES)
    _oneOf(f"{fname}: spam.submission_failure", spam.submission_failure,
           SPAM_FAILURE_POLICIES)
    _checkURL(f"{fname}: spam.url", spam.url)
    _checkURL(f"{fname}: spam.controller_url", spam.controller_url)
    _atLeast(f"{fname}: spam.timeout", spam.timeout, 1)
    _atLeast(f"{fname}: spam.max_size", spam.max_size, 1)
    _atLeast(f"{fname}: spam.learn_attempts", spam.learn_attempts, 1)
    for address in spam.opt_out:
        if address.count("@") != 1 or address.startswith("@") or address.endswith("@"):
            raise ConfigError(f"{fname}: spam.opt_out: not an address: {address!r}")
    for item in spam.threshold_offsets:
        domain, sep, value = item.rpartition("=")
        try:
            offset = float(value)
        except ValueError:
            offset = float("nan")
        if not sep or not domain.strip() or offset != offset or abs(offset) == float("inf"):
            raise ConfigError(
                f"{fname}: spam.threshold_offsets: expected \"domain=number\", got {item!r}")
        try:
            normaliseDomain(domain.strip())
        except AddressError as e:
            raise ConfigError(f"{fname}: spam.threshold_offsets: {e}") from None


def _finish(fname: str, config: Config) -> Config:
    """Fill derived defaults (host name, domains, passwd path) and validate values."""
    server = config.server
    notes: list[tuple[str, str]] = []
    hostname = server.hostname
    if not hostname:
        hostname, level, how = defaultHostname()
        notes.append((level, how))
    try:
        hostname = normaliseDomain(hostname)
    except AddressError as e:
        raise ConfigError(f"{fname}: server.hostname: {e}") from None
    try:
        domains = tuple(dict.fromkeys(normaliseDomain(d) for d in server.domains))
    except AddressError as e:
        raise ConfigError(f"{fname}: server.domains: {e}") from None
    if not domains:
        domains = (hostname,)
        notes.append(("info", f"Mail domain {hostname!r}: the host name, as no"
                              " server.domains (--domain) is given"))
    try:
        domainToASCII(hostname)
    except AddressError as e:
        raise ConfigError(f"{fname}: server.hostname: {e}") from None
    server = dataclasses.replace(server, hostname=hostname, domains=domains)
    _checkValues(fname, config)
    auth = config.auth
    passwd = auth.passwd or os.path.join(server.data, "passwd")
    auth = dataclasses.replace(auth, passwd=passwd)
    listen = config.listen
    for f in dataclasses.fields(listen):
        eps = tuple(e for e in getattr(listen, f.name) if e.strip().lower() != "none")
        listen = dataclasses.replace(listen, **{f.name: eps})
    return dataclasses.replace(
        config, server=server, auth=auth, listen=listen, notes=tuple(notes))
