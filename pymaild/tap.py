"""The composition root: ``twistd pymaild`` options and ``makeService``.

``Options`` only parses. ``makeService(options, reactor=None)`` loads the configuration,
prepares the data directory (certificate, first user), builds the store, the users, the
realm and the portal, and one listener service per configured endpoint, all under one
``MultiService``. This is the only module that names classes from several rooms.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
import urllib.parse
from typing import Any, NoReturn

from twisted.application import service
from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.mail import imap4, pop3, smtp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from pymaild import certificates, limits, listen, logs, runas, shutdown, tls
from pymaild import config as configModule
from pymaild.address import canonical, domainToASCII, normaliseDomain
from pymaild.anvil import (
    Queued,
    RemoteConnectionLimits,
    RemotePenalty,
    RemoteRate,
    RemoteUserIPLimits,
    Shared,
)
from pymaild.auth.checker import PasswdChecker
from pymaild.auth.directory import Directory
from pymaild.auth.passwd import PasswdFile
from pymaild.auth.penalty import AuthGate, AuthPenalty
from pymaild.auth.pgusers import DatabaseService, PostgresAliases, PostgresUsers
from pymaild.auth.quota import Quotas
from pymaild.auth.realm import MailRealm
from pymaild.auth.users import NodeRecord, UserSource
from pymaild.cluster.authhttp import AuthHTTP, Router
from pymaild.cluster.proxyproto import TrustedProxyFactory
from pymaild.errors import ConfigError, NoSuchUser, StartupError
from pymaild.imap.account import IMAPAvatars
from pymaild.imap.idle import IdlePoller
from pymaild.imap.server import IMAPFactory
from pymaild.limits import parseNetworks
from pymaild.listeners import Listener
from pymaild.mailauth.dkimkeys import DKIMKeys
from pymaild.mailauth.dkimverify import DKIMVerifier
from pymaild.mailauth.dmarc import DMARCEvaluator
from pymaild.mailauth.dmarcreports import DMARCRecorder, DMARCReporter
from pymaild.mailauth.dnsrecords import checkRecords, mtaStsPolicy
from pymaild.mailauth.inbound import AuthenticationCheck
from pymaild.mailauth.resolver import DNSResolver, LazyResolver
from pymaild.mailauth.signer import ARCSealer, DKIMSigner, SigningCheck
from pymaild.mailauth.spf import SPFChecker
from pymaild.metrics import Metrics
from pymaild.pop3.mailbox import POP3Avatars
from pymaild.pop3.server import POP3Factory
from pymaild.quotarules import QuotaLimits, applyRules
from pymaild.reload import Reloader, RestartNeeded
from pymaild.sieve.checker import Limits as SieveLimits
from pymaild.sieve.filter import SieveCheck, homeOf
from pymaild.sieve.managesieve import REFUSAL as MANAGESIEVE_REFUSAL
from pymaild.sieve.managesieve import ISieveAccount, ManageSieveFactory, SieveAvatars
from pymaild.sieve.outgoing import Outgoing
from pymaild.smtp import handoff
from pymaild.smtp.aliases import Aliases
from pymaild.smtp.checks import CheckChain, MessageCheck
from pymaild.smtp.dane import DANE, ValidatingResolver
from pymaild.smtp.delivery import DeliveryAvatars
from pymaild.smtp.handoff import HandoffCheck
from pymaild.smtp.lmtp import LMTPFactory
from pymaild.smtp.mtasts import MTASTS, ownPolicy
from pymaild.smtp.mx import makeResolver
from pymaild.smtp.queue import Queue, RouteDeferred
from pymaild.smtp.relay import Relay
from pymaild.smtp.server import SMTPFactory
from pymaild.smtp.srs import SRS, loadSecret
from pymaild.smtp.tlsrpt import HTTPSReports, TLSReporter, TLSResults
from pymaild.spam.check import SpamCheck
from pymaild.spam.counters import COUNTER_FILE, CounterFile, SpamCounters
from pymaild.spam.junk import JUNK, ensureJunk
from pymaild.spam.learn import Learner
from pymaild.spam.rspamd import ClientService, RspamdClient, readPassword
from pymaild.store import MaildirStore
from pymaild.threads import (
    FairRunner,
    PoolService,
    ThreadRunner,
    makePool,
)
from pymaild.tuning import limitMallocArenas, shortenSwitchInterval
from pymaild.web.admin import AdminPages, IWebUser, Sessions
from pymaild.web.autoconfig import ClientSettings, endpointPort
from pymaild.web.backend import MailAdmin
from pymaild.web.site import MailSite, makeSite
from pymaild.workers import SHARED, MergedMetrics, WorkerContext, WorkerPool, defaultCount

log = Logger(namespace="pymaild")

LISTENERS = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "managesieve",
             "http", "https", "lmtp", "auth_http")
#: The listeners that take a PROXY header from cluster.trusted_proxies (nginx).
PROXIED = ("pop3", "imap")
IMPLICIT_TLS = ("smtps", "pop3s", "imaps", "https")


class Options(usage.Options):
    """Command-line options of ``twistd pymaild``; they override the config file."""

    synopsis = "[options]"
    longdesc = (
        "Run the pymaild mail server. With no options it runs on its embedded default: "
        "data in ./pymaild-data, unprivileged ports on 127.0.0.1, a self-signed certificate."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (TOML), e.g. etc/pymaild.toml."],
        ["data", "d", None, "Data directory (mail, passwd, queue, tls)."],
        ["hostname", None, None, "Host name for greetings and Received lines."],
        ["tls-cert", None, None, "TLS certificate chain (PEM)."],
        ["tls-key", None, None, "TLS private key (PEM)."],
        ["cleartext-auth", None, None,
         "Where cleartext logins are allowed: tls-only, tls-or-loopback or always."],
        ["workers", None, None,
         "Processes serving the mail listeners (default: one per core; 1: one process)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["domains"] = []
        self["listen"] = {}
        #: The options as given, for worker processes to parse the same.
        self.argv: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse, keeping the arguments for the worker processes."""
        self.argv = list(sys.argv[1:] if options is None else options)
        #: Where relative paths were resolved (twistd may change directory later).
        self.cwd = os.getcwd()
        super().parseOptions(options)

    def opt_domain(self, name: str) -> None:
        """A local mail domain (repeatable; the first is the primary one)."""
        self["domains"].append(name)

    def _listener(self, name: str, endpoint: str) -> None:
        self["listen"].setdefault(name, []).append(endpoint)

    def opt_smtp(self, ep: str) -> None:
        """Endpoint for inbound SMTP (MX role), e.g. tcp:25 (repeatable; none disables)."""
        self._listener("smtp", ep)

    def opt_submission(self, ep: str) -> None:
        """Endpoint for submission with STARTTLS, e.g. tcp:587 (repeatable; none disables)."""
        self._listener("submission", ep)

    def opt_smtps(self, ep: str) -> None:
        """Endpoint for submission over implicit TLS, e.g. tcp:465 (repeatable; none disables)."""
        self._listener("smtps", ep)

    def opt_pop3(self, ep: str) -> None:
        """Endpoint for POP3 with STLS, e.g. tcp:110 (repeatable; none disables)."""
        self._listener("pop3", ep)

    def opt_pop3s(self, ep: str) -> None:
        """Endpoint for POP3 over implicit TLS, e.g. tcp:995 (repeatable; none disables)."""
        self._listener("pop3s", ep)

    def opt_imap(self, ep: str) -> None:
        """Endpoint for IMAP with STARTTLS, e.g. tcp:143 (repeatable; none disables)."""
        self._listener("imap", ep)

    def opt_imaps(self, ep: str) -> None:
        """Endpoint for IMAP over implicit TLS, e.g. tcp:993 (repeatable; none disables)."""
        self._listener("imaps", ep)

    def opt_metrics(self, ep: str) -> None:
        """Endpoint for Prometheus metrics over HTTP, e.g. tcp:2909:interface=127.0.0.1
        (repeatable; none disables)."""
        self._listener("metrics", ep)

    def opt_http(self, ep: str) -> None:
        """Endpoint for HTTP (ACME challenges, autoconfig), e.g. tcp:80 (repeatable; none
        disables)."""
        self._listener("http", ep)

    def opt_https(self, ep: str) -> None:
        """Endpoint for HTTPS (client autoconfiguration), e.g. tcp:443 (repeatable; none
        disables)."""
        self._listener("https", ep)

    def opt_managesieve(self, ep: str) -> None:
        """Endpoint for ManageSieve with STARTTLS, e.g. tcp:4190 (repeatable; none
        disables)."""
        self._listener("managesieve", ep)

    def opt_auth_http(self, ep: str) -> None:
        """Endpoint for nginx's auth_http requests, e.g. tcp:9143:interface=127.0.0.1
        (repeatable; none disables; off by default)."""
        self._listener("auth_http", ep)

    def opt_lmtp(self, ep: str) -> None:
        """Endpoint for LMTP delivery from trusted peers only, e.g.
        tcp:24:interface=10.0.0.2 (repeatable; none disables; off by default)."""
        self._listener("lmtp", ep)

    def overrides(self) -> dict[str, dict[str, Any]]:
        """The options as config overrides, section by section."""
        result: dict[str, dict[str, Any]] = {"server": {}, "tls": {}, "auth": {}, "listen": {}}
        if self["data"]:
            result["server"]["data"] = self["data"]
        if self["hostname"]:
            result["server"]["hostname"] = self["hostname"]
        if self["domains"]:
            result["server"]["domains"] = list(self["domains"])
        if self["tls-cert"]:
            result["tls"]["cert"] = self["tls-cert"]
        if self["tls-key"]:
            result["tls"]["key"] = self["tls-key"]
        if self["cleartext-auth"]:
            result["auth"]["cleartext"] = self["cleartext-auth"]
        if self["workers"] is not None:
            try:
                result["server"]["workers"] = int(self["workers"])
            except ValueError:
                raise usage.UsageError(f"--workers: not a number: {self['workers']!r}") from None
        for name, eps in self["listen"].items():
            result["listen"][name] = list(eps)
        return result

    def postOptions(self) -> None:
        """Load and check the configuration; a mistake is one line and exit status 1.

        twistd would print its whole usage text before a usage error; a wrong key or
        value in a file is no usage mistake, so it is shown alone.
        """
        try:
            self.config = configModule.load(self["config"], self.overrides())
        except ConfigError as e:
            raise SystemExit(f"pymaild: {e}") from None

    def loadAgain(self) -> configModule.Config:
        """The configuration as the file says now, with the same options applied."""
        return configModule.load(self["config"], self.overrides())


def _fail(message: str) -> NoReturn:
    """Give up building the server: raise a L{StartupError} with one clear line.

    L{makeService} raises rather than exits, so a caller (a test, a worker process)
    decides what a failure means; under twistd the hook of L{showStartupErrors} prints
    the line alone on stderr (logging has not begun) and the exit status is 1.
    """
    raise StartupError(message)


def showStartupErrors() -> None:
    """Make a L{StartupError} that escapes twistd one line on stderr, not a traceback.

    Listeners bind after C{makeService} returns, inside twistd; a port in use raises
    there. twistd removes its pid file and, when daemonised, passes the message to the
    parent; this hook shapes what a foreground run prints.
    """
    previous = sys.excepthook
    if getattr(previous, "pymaild", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if isinstance(value, StartupError):
            # twistd has sent sys.stderr to the log by now; the admin's terminal is
            # the original one (the log has the line from the listener already).
            stream = sys.__stderr__ or sys.stderr
            stream.write(f"pymaild: {value}\n")
            stream.flush()
        else:
            previous(kind, value, tb)

    hook.pymaild = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def prepareData(cfg: configModule.Config, who: str) -> tuple[str, str]:
    """Create the data directory layout and the certificate; return (cert, key) paths.

    @param who: the user the server runs as, for the error message.
    @raise ConfigError: the data directory is not writable by that user.
    """
    dirs = [os.path.join(cfg.data, sub) for sub in ("", "mail", "queue", "tls")]
    for path in dirs:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except PermissionError as e:
            raise ConfigError(
                f"data directory {e.filename}: cannot be created by {who}: {e.strerror}"
            ) from None
    runas.checkWritable(dirs, who)
    cert, key = cfg.tls.cert, cfg.tls.key
    if not cert:
        cert = os.path.join(cfg.data, "tls", "cert.pem")
        key = os.path.join(cfg.data, "tls", "key.pem")
        names = [domainToASCII(n) for n in (cfg.hostname, *cfg.domains)]
        if tls.ensureSelfSigned(cert, key, names):
            log.info("Made a self-signed certificate {cert}", cert=cert)
    return cert, key


def makeUserSource(cfg: configModule.Config) -> UserSource:
    """The user directory C{auth.backend} names: the passwd file or PostgreSQL."""
    if cfg.auth.backend == "postgresql":
        return PostgresUsers(cfg.auth.database, cfg.auth.database_pool,
                             cacheTTL=float(cfg.auth.database_cache_ttl))
    return PasswdFile(cfg.auth.passwd)


def ensureFirstUser(passwd: PasswdFile, cfg: configModule.Config) -> str | None:
    """When no user exists, add ``postmaster@<primary domain>`` and return its password."""
    if passwd.users():
        return None
    address = f"postmaster@{cfg.domains[0]}"
    password = secrets.token_urlsafe(12)
    passwd.add(address, password)
    return password


class ServerService(service.MultiService):
    """The whole server; under twistd it also gives the application its log filter.

    Stopping (SIGTERM) goes in order: the listeners, then the sessions get their grace
    period (L{pymaild.shutdown}), then everything else.
    """

    def __init__(self, twistdOptions: Any = None) -> None:
        super().__init__()
        self.twistdOptions = twistdOptions
        self.connectionLimits: limits.ConnectionLimits | None = None
        self.grace = 0.0
        self.clock: Any = None
        self.logFormat = "text"
        #: The worker processes (L{pymaild.workers.WorkerPool}) of a master, if any.
        self.workers: Any = None

    def stopService(self) -> defer.Deferred[Any]:
        """Stop listening, drain the sessions, then stop the rest; workers are told to
        stop at once (they drain their own sessions meanwhile)."""
        workers = (defer.maybeDeferred(self.workers.stopService)
                   if self.workers is not None else None)
        listening = [defer.maybeDeferred(s.stopService) for s in self
                     if isinstance(s, Listener)]
        d: defer.Deferred[Any] = defer.DeferredList(listening, consumeErrors=True)
        if self.connectionLimits is not None:
            connLimits = self.connectionLimits
            d.addCallback(lambda _: shutdown.drain(connLimits, self.clock, self.grace))
        if workers is not None:
            d.addCallback(lambda _: workers)
        d.addCallback(lambda _: service.MultiService.stopService(self))
        return d

    def setServiceParent(self, parent: Any) -> None:
        """Join the application, installing the filtered log observer on it first."""
        logs.installOn(parent, self.twistdOptions, self.logFormat)
        super().setServiceParent(parent)


def _quiet(factory: Any) -> Any:
    """C{factory} with Twisted's per-factory start and stop lines turned off."""
    factory.noisy = False
    return factory


def processCount(cfg: configModule.Config, reactor: Any) -> int:
    """How many processes serve the mail listeners (C{server.workers}, 0: the cores);
    one on a reactor that cannot start processes (a test's memory reactor)."""
    from twisted.internet.interfaces import IReactorProcess

    if not IReactorProcess.providedBy(reactor):
        return 1
    return cfg.server.workers or defaultCount()


def makeService(options: Options, reactor: Any = None,
                worker: WorkerContext | None = None) -> service.MultiService:
    """Build the whole server from parsed options.

    @param worker: when the server is a worker process of a master
        (L{pymaild.worker}), what it inherited; the server is then built with the
        master's limits (L{pymaild.anvil}), its listeners on the inherited sockets,
        and without what only the master runs (the queue's scheduler, the HTTP and
        metrics listeners, ACME, the reports, the first user, the tmp/ clean-up).
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    cfg: configModule.Config = options.config
    twistdOptions = getattr(options, "parent", None)
    showStartupErrors()
    for level, note in cfg.notes:
        log.emit(LogLevel.levelWithName(level), "{note}", note=note)
    try:
        user = runas.serverUser(twistdOptions)
        who = user.describe() if user else runas.currentUserDescription()
        if user is not None:
            runas.claimDataDir(cfg.data, user)
            log.info("Preparing {data} as {user}", data=cfg.data, user=who)
        with runas.actingAs(user):
            certPath, keyPath = prepareData(cfg, who)
            passwd = makeUserSource(cfg)
            # A shared directory's users are made with pymaild-admin, not by each node.
            password = (ensureFirstUser(passwd, cfg)
                        if isinstance(passwd, PasswdFile) and worker is None else None)
            store = MaildirStore(os.path.join(cfg.data, "mail"), cfg.hostname)
            # Before any listener opens: what a killed predecessor left in tmp/ goes away
            # (the master's job: a worker's siblings may be writing there already).
            removed = store.cleanTmp(atStart=True) if worker is None else 0
            srsSecret = loadSecret(os.path.join(cfg.data, "srs.key"))
        # As root when started so: a configured key may be readable by root only.
        serverTLS = tls.ServerTLS(certPath, keyPath)
        acmePath = os.path.join(cfg.data, "tls", certificates.CERT_FILE)
        if cfg.acme.enabled and certificates.certificateState(acmePath) is not None:
            try:
                serverTLS.use(acmePath, acmePath)
                certPath = acmePath
            except ConfigError as e:
                log.warn("ACME certificate {path} unusable, a new one will be ordered: {e}",
                         path=acmePath, e=e)
    except ConfigError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e.filename or cfg.data}: {e.strerror} (running as {who})")
    if worker is None:
        log.info("TLS certificate {cert} SHA-256 {fp}", cert=certPath,
                 fp=serverTLS.fingerprint)
    if removed:
        log.info("Removed {n} unfinished files from Maildir tmp/ directories", n=removed)
    if password is not None:
        log.warn(
            "No user existed: created {address} with password {password} "
            "(shown once; change it with pymaild-admin user passwd)",
            address=f"postmaster@{cfg.domains[0]}",
            password=password,
        )

    top = ServerService(twistdOptions)
    top.logFormat = cfg.server.log_format
    aliases = None
    if isinstance(passwd, PostgresUsers):
        DatabaseService(passwd).setServiceParent(top)
        aliases = PostgresAliases(passwd)
    limitMallocArenas()
    shortenSwitchInterval()
    # Mailbox work (IMAP, POP3) shares one pool fairly between users; deliveries and
    # the queue have their own, so no client's FETCH holds up an incoming message.
    diskPool = makePool("pymaild-disk", 8)
    deliveryPool = makePool("pymaild-delivery", 4)
    authPool = makePool("pymaild-auth", cfg.auth.threads)
    # Signing and verifying (RSA, Ed25519, hashing the body): CPU work, bounded apart.
    cryptoPool = makePool("pymaild-crypto", 2)
    for pool in (diskPool, deliveryPool, authPool, cryptoPool):
        PoolService(pool).setServiceParent(top)
    diskRunner = FairRunner(reactor, diskPool, perKey=2)
    deliveryRunner = ThreadRunner(reactor, deliveryPool)
    authRunner = ThreadRunner(reactor, authPool)
    cryptoRunner = ThreadRunner(reactor, cryptoPool)
    metrics = Metrics()
    if worker is not None:
        worker.metrics = metrics
    metrics.watchPool("disk", diskPool, diskRunner.pending)
    metrics.watchPool("delivery", deliveryPool)
    metrics.watchPool("auth", authPool)
    # One resolver for the relay's MX lookups and the authentication checks.
    resolver = LazyResolver(lambda: makeResolver(cfg.relay, reactor))
    dns = DNSResolver(resolver, reactor, timeout=float(cfg.mailauth.dns_timeout))

    directory = Directory(passwd, cfg.domains, cfg.smtp.recipient_delimiter)
    # TLS-RPT: the relay records each TLS result under <data>/tls-rpt.
    tlsResults = (TLSResults(os.path.join(cfg.data, "tls-rpt"), deliveryRunner)
                  if cfg.relay.tls_reports else None)
    route = _ownerRoute(passwd, directory, cfg.cluster.node)
    mtasts = _makeMTASTS(cfg, dns, reactor, deliveryRunner)
    if mtasts is not None and cfg.relay.mta_sts_refresh and worker is None:
        # Cached policies are renewed before they lapse (RFC 8461 §10.2): the master's
        # timer (the cache directory is shared by every process).
        mtasts.service(reactor, float(cfg.relay.mta_sts_refresh)).setServiceParent(top)
    queue = _makeQueue(cfg, store, directory, deliveryRunner, reactor,
                       top if worker is None else service.MultiService(), metrics,
                       Relay(cfg.relay, cfg.hostname, reactor, deliveryRunner, resolver=resolver,
                             mtasts=mtasts,
                             dane=_makeDANE(cfg, reactor), tlsResults=tlsResults),
                       router=route)
    if worker is None:
        metrics.watchQueue(queue.stats)
    else:
        # The master's queue delivers what this worker queues (its scan finds a lost
        # notice).
        anvilClient = worker.anvil
        queue.handOff = lambda qid: anvilClient.tell(Queued, qid=qid)
    if route is not None:
        # The owner trusts what this node decided because the LMTP comes from here.
        queue.relay.lmtpSource = cfg.cluster.address
    spamChecks, learner = _makeSpamFilter(cfg, store, deliveryRunner, reactor, top, metrics,
                                          counterFile=worker is None)
    dkimKeys = DKIMKeys(os.path.join(cfg.data, "dkim"))
    signer = DKIMSigner(dkimKeys)
    if tlsResults is not None:
        # The daily reports, signed like any outgoing mail, through the queue.
        # https: report URIs get a POST, verified like the MTA-STS policy servers.
        https = HTTPSReports(os.path.join(cfg.data, "tls-rpt", "https"), deliveryRunner,
                             reactor, dns, mtasts.trust if mtasts is not None else None,
                             float(cfg.relay.mta_sts_timeout))
        reporter = TLSReporter(tlsResults, dns, queue, domainToASCII(cfg.hostname),
                               f"postmaster@{cfg.domains[0]}",
                               signer if cfg.mailauth.sign else None, cryptoRunner,
                               https=https)
        if worker is None:
            reporter.service(reactor).setServiceParent(top)
    # Alias forwarding: SRS for the envelope sender, an ARC seal over our verdicts.
    srs = SRS(srsSecret, cfg.domains[0])
    sealer = ARCSealer(dkimKeys, cfg.domains[0], cfg.hostname, cryptoRunner)
    quotas = Quotas(passwd, store, applyRules(QuotaLimits(), cfg.quota.rules))
    imapAvatars = IMAPAvatars(store, diskRunner, cfg, observer=learner, quotas=quotas,
                              referral=_ownerURL(passwd, cfg.cluster.node))
    imapAvatars.service.setServiceParent(top)
    deliveryAvatars = DeliveryAvatars(store, directory, deliveryRunner, cfg, queue,
                                      aliases=aliases, metrics=metrics, srs=srs,
                                      forwardSealer=sealer.seal, quotas=quotas)
    deliveryAvatars.delivered = imapAvatars.registry.mailDelivered
    if route is not None:
        ownerRoute = route
        def elsewhere(accounts: list[str]) -> list[str]:
            away = []
            for account in accounts:
                try:
                    if ownerRoute(account) is not None:
                        away.append(account)
                except RouteDeferred:
                    away.append(account)  # being moved: it waits in the queue
            return away

        deliveryAvatars.elsewhere = elsewhere
        clusterUsers, here = passwd, cfg.cluster.node
        deliveryAvatars.isNode = lambda host: clusterUsers.isNodeAddress(  # type: ignore[union-attr]
            host, other=here)
    # The message checks, in their order: inbound authentication (SPF, DKIM, DMARC),
    # spam filtering, then each recipient's Sieve script, then outbound signing.
    filters: list[MessageCheck] = list(spamChecks)
    sieveLimits = sieveLimitsOf(cfg)
    if cfg.sieve.enabled:
        outgoing = Outgoing(queue, deliveryAvatars.newId, cfg.hostname, srs=srs,
                            signer=signer if cfg.mailauth.sign else None,
                            runner=cryptoRunner)
        sieveCheck = SieveCheck(store, deliveryRunner, sieveLimits, outgoing,
                                addressesOf=lambda a: deliveryAvatars.resolver.addressesOf(a),
                                globalDir=cfg.sieve.global_dir)
        filters.append(sieveCheck)
    dmarcReports = None
    if cfg.mailauth.verify and cfg.mailauth.dmarc_reports:
        # DMARC aggregate reports: rows per day under <data>/dmarc-reports, sent daily.
        dmarcReports = DMARCRecorder(os.path.join(cfg.data, "dmarc-reports"), deliveryRunner)
        reports = DMARCReporter(dmarcReports, dns, DMARCEvaluator(dns).organisational,
                                queue, domainToASCII(cfg.hostname),
                                f"postmaster@{cfg.domains[0]}",
                                signer if cfg.mailauth.sign else None, cryptoRunner)
        if worker is None:
            reports.service(reactor).setServiceParent(top)
    # A cluster node first takes the placement a node's MX handed on (or drops a forged one).
    handoffs = [HandoffCheck(lambda account: deliveryRunner.run(ensureJunk, store, account),
                             JUNK)] if route is not None else []
    deliveryAvatars.checks = makeChecks(cfg, dns, signer, cryptoRunner, reactor, filters,
                                        dmarcReports, first=handoffs)
    pop3Avatars = POP3Avatars(store, diskRunner, cfg)
    realm = MailRealm(
        {
            pop3.IMailbox: pop3Avatars,
            imap4.IAccount: imapAvatars,
            smtp.IMessageDelivery: deliveryAvatars,
            IWebUser: lambda avatarId: (str(avatarId), lambda: None),
            ISieveAccount: SieveAvatars(lambda address: homeOf(store, address), diskRunner,
                                        cfg.sieve.global_dir),
        }
    )
    checker = PasswdChecker(passwd, authRunner)
    portal = Portal(realm, [checker, AllowAnonymousAccess()])
    reloader = Reloader(reactor, deliveryRunner, serverTLS, lambda: len(passwd.users()),
                        cfg, options.loadAgain)
    reloader.setServiceParent(top)
    reloader.reread(lambda: rereadAliases(deliveryAvatars.aliases))
    reloader.reread(lambda: rereadDKIM(dkimKeys))
    if isinstance(passwd, PostgresUsers):
        users = passwd
        reloader.reread(users.forget)
        reloader.follow(["auth.database_cache_ttl"],
                        lambda c: setattr(users.cache, "ttl", float(c.auth.database_cache_ttl)),
                        "the user database cache")
    connLimits: Any = limits.ConnectionLimits(
        maxTotal=cfg.limits.max_connections,
        maxPerIP=cfg.limits.max_connections_per_ip,
        trusted=cfg.auth.trusted_networks,
    )
    userIPLimits: Any = limits.UserIPLimits(cfg.limits.max_connections_per_user_ip)
    penalty: Any = AuthPenalty(trusted=cfg.auth.trusted_networks)
    sharedState = Shared(connLimits, userIPLimits, penalty, deliveryAvatars,
                         lambda qid: queue.takeUp(qid), reactor)
    if worker is not None:
        # The master counts for every process (the anvil).
        connLimits = RemoteConnectionLimits(worker.anvil)
        userIPLimits = RemoteUserIPLimits(worker.anvil)
        penalty = RemotePenalty(worker.anvil, penalty)
        deliveryAvatars.remoteRate = RemoteRate(worker.anvil)
    top.connectionLimits, top.clock = connLimits, reactor
    top.grace = float(cfg.server.shutdown_grace)
    gate = AuthGate(portal, penalty, reactor, metrics)

    settings = _clientSettings(cfg)
    httpsPort = next((p for p in map(endpointPort, cfg.listen.https) if p), None)
    domains = [domainToASCII(d).lower() for d in cfg.domains]
    # The MTA-STS policy the https listener serves for mta-sts.DOMAIN (when configured).
    ownSTS = None
    if cfg.mtasts.serve:
        ownSTS = ownPolicy(cfg.mtasts.mode, cfg.mtasts.mx or (domainToASCII(cfg.hostname),),
                           cfg.mtasts.max_age)
    answers = certificates.ChallengeAnswers()
    acmeManager = None
    if cfg.acme.enabled and worker is None:
        acmeManager = _certificateManager(cfg, serverTLS, answers, acmePath, reactor, top)
    adminPages = None
    backend = None
    if cfg.web.admin_page:
        backend = MailAdmin(passwd, os.path.join(cfg.data, "queue"),
                            lambda: serverTLS.certPath, domains,
                            [canonical(a) for a in adminsOf(cfg)], dkim=dkimKeys,
                            hostname=domainToASCII(cfg.hostname),
                            homeOf=(lambda address: homeOf(store, address))
                            if cfg.sieve.enabled else None, sieveLimits=sieveLimits,
                            aliasesPath=lambda: deliveryAvatars.aliases.path,
                            sieveGlobalDir=cfg.sieve.global_dir,
                            stsPolicy=mtaStsPolicy(domainToASCII(cfg.hostname),
                                                   cfg.mtasts.mode, cfg.mtasts.mx,
                                                   cfg.mtasts.max_age),
                            quotas=quotas)
        adminPages = AdminPages(
            backend, deliveryRunner, gate, Sessions(reactor), cfg.hostname,
            checkDNS=lambda records: defer.ensureDeferred(checkRecords(records, dns)))
        reloader.follow(["web.admins"],
                        lambda c: backend.setAdmins(canonical(a) for a in adminsOf(c)),
                        "the admin page")

    sites: list[MailSite] = []

    def site(resource: MailSite) -> MailSite:
        sites.append(resource)
        return resource

    idlePoller = IdlePoller(reactor)  # imap and imaps sessions on a folder scan it once
    factories = {
        "smtp": lambda implicit: SMTPFactory(
            config=cfg, gate=gate, portal=portal, tlsContext=serverTLS, role="mx",
            implicitTLS=implicit, clock=reactor),
        "submission": lambda implicit: SMTPFactory(
            config=cfg, gate=gate, portal=portal, tlsContext=serverTLS, role="submission",
            implicitTLS=implicit, clock=reactor),
        "pop3": lambda implicit: POP3Factory(
            config=cfg, gate=gate, tlsContext=serverTLS, implicitTLS=implicit, clock=reactor),
        "imap": lambda implicit: IMAPFactory(
            config=cfg, gate=gate, tlsContext=serverTLS, implicitTLS=implicit, clock=reactor,
            spoolRunner=diskRunner, userIPLimits=userIPLimits, metrics=metrics,
            idlePoller=idlePoller),
        "managesieve": lambda implicit: ManageSieveFactory(
            cfg, gate, diskRunner, sieveLimits, tlsContext=serverTLS, implicitTLS=implicit,
            clock=reactor, userIPLimits=userIPLimits),
        "lmtp": lambda implicit: LMTPFactory(config=cfg, portal=portal, clock=reactor),
        "auth_http": lambda implicit: makeSite(_authHTTP(cfg, passwd, checker, gate.penalty,
                                                         deliveryRunner, reactor)),
        "http": lambda implicit: makeSite(site(MailSite(settings, domains, implicit,
                                                        httpsPort, answers.get, adminPages,
                                                        ownSTS))),
    }
    kinds = {"smtps": "submission", "pop3s": "pop3", "imaps": "imap", "https": "http"}
    refusals = {"smtp": limits.SMTP_REFUSAL, "submission": limits.SMTP_REFUSAL,
                "lmtp": limits.SMTP_REFUSAL, "auth_http": limits.HTTP_REFUSAL,
                "pop3": limits.POP3_REFUSAL, "imap": limits.IMAP_REFUSAL,
                "managesieve": MANAGESIEVE_REFUSAL, "http": limits.HTTP_REFUSAL}
    built: list[Any] = []
    limited: list[limits.LimitedFactory] = []
    sharedListeners: list[Listener] = []
    for name in LISTENERS:
        kind = kinds.get(name, name)
        if worker is not None and name not in SHARED:
            continue
        for desc in getattr(cfg.listen, name):
            adopt = None
            if worker is not None:
                adopt = worker.sockets.get((name, desc))
                if adopt is None:  # not a socket the master could pass (unix:, say)
                    continue
            implicit = name in IMPLICIT_TLS
            inner = factories[kind](implicit)
            built.append(inner)
            limitedFactory = limits.LimitedFactory(
                _quiet(inner), connLimits, refusals[kind], reactor,
                lineDeadline=float(cfg.limits.line_deadline), metrics=metrics, listener=name,
            )
            limited.append(limitedFactory)
            factory: Any = _quiet(limitedFactory)
            if name in PROXIED and cfg.cluster.trusted_proxies:
                # Outside the caps: they count the client the PROXY header names.
                factory = _quiet(TrustedProxyFactory(factory, cfg.cluster.trusted_proxies,
                                                     reactor))
            if implicit and cfg.limits.tls_handshake_timeout:
                # Directly inside the TLS layer: a stalled handshake is aborted (F8).
                factory = _quiet(limits.HandshakeTimeoutFactory(
                    factory, reactor, float(cfg.limits.tls_handshake_timeout)))
            if implicit and not desc.startswith("ssl:"):
                factory = _quiet(TLSMemoryBIOFactory(serverTLS, False, factory))
            try:
                endpoint = listen.reservingServerFromString(
                    reactor, desc, shedLine=b"" if implicit else refusals[kind], adopt=adopt)
            except (ValueError, TypeError, KeyError) as e:
                _fail(f"{cfg.path or 'options'}: listen.{name}: bad endpoint {desc!r}: {e}")
            listener = Listener(name, desc, endpoint, factory)
            listener.setServiceParent(top)
            if name in SHARED:
                sharedListeners.append(listener)
    processes = processCount(cfg, reactor) if worker is None else 1
    pool = None
    if processes > 1:
        # Last, so that it starts once the listeners are bound (and stops first).
        queue.scanSpool = True
        pool = WorkerPool(reactor, processes - 1, sharedListeners, options.argv,
                          sharedState, float(cfg.server.shutdown_grace),
                          cwd=getattr(options, "cwd", None),
                          mustRead=[certPath, keyPath])
        pool.setServiceParent(top)
        top.workers = pool
        if acmeManager is not None:  # the workers take the new certificate on HUP
            workerPool = pool
            acmeManager.switched.append(lambda: workerPool.signalAll("HUP"))
    if worker is not None and cfg.acme.enabled:
        reloader.reread(lambda: takeACMECertificate(serverTLS, acmePath))
    if worker is None:
        _httpListeners(cfg, reactor, top, "metrics", _metricsSite(metrics, pool))
    sessionConfig = [f for f in built if hasattr(f, "config")]
    sessionConfig += [imapAvatars, pop3Avatars]
    followConfig(reloader, LiveParts(
        sessionConfig=sessionConfig, connLimits=connLimits, userIPLimits=userIPLimits,
        limited=limited, penalty=gate.penalty, delivery=deliveryAvatars, queue=queue,
        spam=spamChecks[0] if spamChecks else None, learner=learner,
        authentication=next((c for c in deliveryAvatars.checks.checks
                             if isinstance(c, AuthenticationCheck)), None),
        sieve=sieveCheck if cfg.sieve.enabled else None,
        manageSieve=[f for f in built if isinstance(f, ManageSieveFactory)],
        directory=directory, sites=sites, backend=backend, acme=acmeManager,
        aliasesFile=aliases is None))
    return top


def takeACMECertificate(serverTLS: tls.ServerTLS, path: str) -> str:
    """On HUP in a worker, in the pool: use the master's ACME certificate when the
    worker started before there was one; a phrase for the log."""
    if serverTLS.certPath == path or certificates.certificateState(path) is None:
        return "ACME certificate as before"
    try:
        serverTLS.use(path, path)
    except ConfigError as e:
        return f"ACME certificate NOT taken up: {e}"
    return f"ACME certificate {path} taken up (SHA-256 {serverTLS.fingerprint})"


def adminsOf(cfg: configModule.Config) -> tuple[str, ...]:
    """Who may use the admin page: C{web.admins}, or C{postmaster@} of every domain."""
    return cfg.web.admins or tuple(f"postmaster@{d}" for d in cfg.domains)


def rereadAliases(aliases: Aliases) -> str:
    """On HUP, in the pool: read the aliases file again; a phrase for the log."""
    if not aliases.path:
        return "no aliases file"
    try:
        count = len(aliases.table())
    except OSError as e:
        return f"aliases file {aliases.path} NOT read, the old table stays: {e.strerror}"
    return f"{count} alias{'' if count == 1 else 'es'} in {aliases.path}"


def rereadDKIM(keys: DKIMKeys) -> str:
    """On HUP, in the pool: forget the cached DKIM keys and read them again."""
    keys.forget()
    domains = keys.domains()
    count = sum(len(keys.signingKeys(d)) for d in domains)
    return (f"{count} DKIM key{'' if count == 1 else 's'} for {len(domains)}"
            f" domain{'' if len(domains) == 1 else 's'}")


@dataclasses.dataclass
class LiveParts:
    """The objects of a running server that take new configuration values on HUP."""

    sessionConfig: list[Any]
    connLimits: limits.ConnectionLimits
    userIPLimits: limits.UserIPLimits
    limited: list[limits.LimitedFactory]
    penalty: AuthPenalty
    delivery: DeliveryAvatars
    queue: Queue
    spam: Any
    learner: Learner | None
    authentication: AuthenticationCheck | None
    sieve: SieveCheck | None
    manageSieve: list[Any]
    directory: Directory
    sites: list[MailSite]
    backend: MailAdmin | None
    acme: certificates.CertificateManager | None
    #: Whether the aliases come from C{smtp.aliases} (not from the user database).
    aliasesFile: bool


#: Keys read from the configuration when a session, a login or a transaction starts,
#: by the protocol factories and the POP3/IMAP avatar factories.
SESSION_KEYS = ("smtp.max_message_size", "smtp.max_recipients", "auth.cleartext",
                "imap.max_literal", "imap.idle_keepalive", "pop3.delete",
                "sieve.quota_max_scripts", "sieve.quota_max_storage")


def followConfig(reloader: Reloader, parts: LiveParts) -> None:
    """Register what SIGHUP applies to a running server, key by key (the rest needs a
    restart: listeners, the data directory, pools, resolvers, the relay's smarthost,
    which checks run)."""
    def sessions(c: configModule.Config) -> None:
        for holder in parts.sessionConfig:
            holder.config = c

    def connections(c: configModule.Config) -> None:
        parts.connLimits.maxTotal = c.limits.max_connections
        parts.connLimits.maxPerIP = c.limits.max_connections_per_ip
        parts.userIPLimits.maxPerUserIP = c.limits.max_connections_per_user_ip
        for factory in parts.limited:
            factory.lineDeadline = float(c.limits.line_deadline)

    def trusted(c: configModule.Config) -> None:
        networks = parseNetworks(c.auth.trusted_networks)
        parts.connLimits.trusted = networks
        parts.penalty.trusted = networks
        parts.delivery.trustedNetworks = networks

    def submission(c: configModule.Config) -> None:
        parts.delivery.maxPerHour = c.submission.max_messages_per_hour
        parts.delivery.checkFromHeader = c.submission.check_from_header

    def aliasesPath(c: configModule.Config) -> None:
        parts.delivery.useAliases(Aliases(c.smtp.aliases))

    def queue(c: configModule.Config) -> None:
        parts.queue.config = c.relay

    def domains(c: configModule.Config) -> None:
        new = [normaliseDomain(d) for d in c.domains]
        if not new or new[0] != parts.directory.domains[0]:
            raise RestartNeeded("the primary domain, the first, changed")
        parts.directory.setDomains(new)
        parts.queue.localDomains = frozenset(new)
        ascii_ = [domainToASCII(d).lower() for d in new]
        for site in parts.sites:
            site.domains = frozenset(ascii_)
        if parts.backend is not None:
            parts.backend.domains = frozenset(ascii_)
            parts.backend.setAdmins(canonical(a) for a in adminsOf(c))
        if parts.acme is not None:
            parts.acme.names = certificates.certificateNames(
                domainToASCII(c.hostname), ascii_, c.acme.names)
            parts.acme.check()

    reloader.follow(["server.domains", "acme.names"], domains, "the local domains")
    reloader.follow(SESSION_KEYS, sessions, "new sessions")
    reloader.follow(["limits.max_connections", "limits.max_connections_per_ip",
                     "limits.max_connections_per_user_ip", "limits.line_deadline"],
                    connections, "the connection limits")
    reloader.follow(["auth.trusted_networks"], trusted, "the trusted networks")
    reloader.follow(["submission.max_messages_per_hour", "submission.check_from_header"],
                    submission, "submission")
    if parts.aliasesFile:
        reloader.follow(["smtp.aliases"], aliasesPath, "the aliases")
    reloader.follow(["relay.backoff_min", "relay.backoff_max", "relay.max_queue_life",
                     "relay.delay_warning"], queue, "the queue")
    if parts.spam is not None:
        spam, learner = parts.spam, parts.learner

        def spamPolicy(c: configModule.Config) -> None:
            spam.configure(c.spam)
            if learner is not None:
                learner.maxSize = c.spam.max_size

        reloader.follow(["spam.submission", "spam.submission_failure", "spam.mx_failure",
                         "spam.max_size", "spam.opt_out", "spam.threshold_offsets"],
                        spamPolicy, "the spam filter")
    if parts.authentication is not None:
        authentication = parts.authentication
        reloader.follow(["mailauth.on_dmarc_reject", "mailauth.on_dmarc_quarantine",
                         "mailauth.domain_policies", "mailauth.internal_networks"],
                        lambda c: authentication.configure(c.mailauth),
                        "the authentication checks")
    if parts.sieve is not None or parts.manageSieve:
        sieve = parts.sieve

        def sieveLimits(c: configModule.Config) -> None:
            new = sieveLimitsOf(c)
            if sieve is not None:
                sieve.setLimits(new)
            for factory in parts.manageSieve:
                factory.limits = new

        reloader.follow(["sieve.max_script_size", "sieve.max_actions",
                         "sieve.max_redirects", "sieve.max_cpu_time"],
                        sieveLimits, "Sieve")
def _authHTTP(cfg: configModule.Config, users: UserSource, checker: PasswdChecker,
              penalty: AuthPenalty, runner: ThreadRunner, reactor: Any) -> AuthHTTP:
    """The auth_http endpoint: this node's own ports for users without an owner node."""
    def port(name: str, default: int) -> int:
        return next((p for p in map(endpointPort, getattr(cfg.listen, name)) if p), default)

    here = NodeRecord("local", cfg.cluster.address, port("imap", 143), port("pop3", 110),
                      port("submission", 587), port("lmtp", 24))
    router = Router(users, here)
    return AuthHTTP(checker, penalty, reactor,
                    lambda address, protocol: runner.run(router.route, address, protocol),
                    cfg.cluster.auth_http_secret)


def _certificateManager(cfg: configModule.Config, serverTLS: tls.ServerTLS,
                        answers: certificates.ChallengeAnswers, path: str, reactor: Any,
                        top: service.MultiService) -> certificates.CertificateManager:
    """The ACME service, with a thread of its own for the blocking ACME exchange."""
    acme = cfg.acme
    pool = makePool("pymaild-acme", 1)
    PoolService(pool).setServiceParent(top)
    issuer = certificates.AcmeIssuer(
        acme.directory, os.path.join(cfg.data, "tls", certificates.ACCOUNT_FILE),
        acme.email, acme.ca_file, answers, challenges=acme.challenges)
    if "tls-alpn-01" in acme.challenges:
        serverTLS.challengeCertificates = answers.alpnCertificate
    names = certificates.certificateNames(
        domainToASCII(cfg.hostname), [domainToASCII(d) for d in cfg.domains], acme.names)
    manager = certificates.CertificateManager(
        serverTLS, issuer, ThreadRunner(reactor, pool), reactor, path, names,
        acme.renew_days, float(acme.check_interval), float(acme.retry_interval),
    )
    manager.setServiceParent(top)
    return manager


def _clientSettings(cfg: configModule.Config) -> ClientSettings:
    """Where clients connect, for the autoconfig documents: the host name and the port
    of each mail listener's first endpoint."""
    def port(name: str) -> int | None:
        for desc in getattr(cfg.listen, name):
            p = endpointPort(desc)
            if p:
                return p
        return None

    return ClientSettings(
        hostname=domainToASCII(cfg.hostname), imaps=port("imaps"), imap=port("imap"),
        pop3s=port("pop3s"), pop3=port("pop3"), smtps=port("smtps"),
        submission=port("submission"))


def _metricsSite(metrics: Metrics, pool: WorkerPool | None = None) -> Any:
    """The metrics listener's site: C{/metrics}, nothing else, no access log; with
    workers, their samples too (labelled by process)."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    root = Resource()
    root.putChild(b"metrics", metrics.resource() if pool is None
                  else MergedMetrics(metrics.registry, pool))
    site = Site(root)
    site.log = lambda request: None  # type: ignore[method-assign]
    return _quiet(site)


def _httpListeners(cfg: configModule.Config, reactor: Any, top: service.MultiService,
                   name: str, site: Any) -> None:
    """A listener service for each endpoint of C{listen.<name>}, serving C{site}."""
    from twisted.internet import endpoints

    for desc in getattr(cfg.listen, name):
        try:
            endpoint = endpoints.serverFromString(reactor, desc)
        except (ValueError, TypeError, KeyError) as e:
            _fail(f"{cfg.path or 'options'}: listen.{name}: bad endpoint {desc!r}: {e}")
        Listener(name, desc, endpoint, site).setServiceParent(top)


def _makeSpamFilter(cfg: configModule.Config, store: MaildirStore, runner: ThreadRunner,
                    reactor: Any, top: service.MultiService, metrics: Metrics,
                    counterFile: bool = True,
                    ) -> tuple[list[MessageCheck], Learner | None]:
    """The rspamd check for the check chain and the IMAP learner (C{[spam]}), with their
    services added to the application; nothing when the filter is off."""
    spam = cfg.spam
    if not spam.enabled:
        return [], None
    try:
        password = readPassword(spam.password_file)
    except OSError as e:
        _fail(f"{cfg.path or 'options'}: spam.password_file: {e.filename}: {e.strerror}")
    client = RspamdClient(reactor, spam.url, spam.controller_url, float(spam.timeout),
                          password)
    counters = SpamCounters()
    metrics.watchSpam(counters.snapshot)
    if counterFile:  # one process writes the file (a worker's counts are its metrics)
        CounterFile(counters, os.path.join(cfg.data, COUNTER_FILE), runner,
                    reactor).setServiceParent(top)
    ClientService(client).setServiceParent(top)
    check = SpamCheck(client, spam, counters,
                      lambda account: runner.run(ensureJunk, store, account))
    learner = None
    if spam.learn:
        learner = Learner(client, store, runner, reactor, counters,
                          attempts=spam.learn_attempts, maxSize=spam.max_size)
        learner.setServiceParent(top)
    log.info("Spam filter: rspamd at {url} (learning: {learn})", url=spam.url,
             learn="on" if learner else "off")
    return [check], learner


def _makeDANE(cfg: configModule.Config, reactor: Any) -> DANE | None:
    """DANE over C{relay.dnssec_resolvers}, or None when none is configured."""
    servers = [configModule.parseHostPort(s, 53, "relay.dnssec_resolvers")
               for s in cfg.relay.dnssec_resolvers]
    if not servers:
        return None
    return DANE(ValidatingResolver(servers, reactor, float(cfg.mailauth.dns_timeout)))


def _makeMTASTS(cfg: configModule.Config, dns: DNSResolver, reactor: Any,
                runner: Any) -> MTASTS | None:
    """The relay's MTA-STS policies (cached under C{<data>/mta-sts}), or None when
    C{relay.mta_sts} is off."""
    relay = cfg.relay
    if not relay.mta_sts:
        return None
    caFile = relay.mta_sts_ca_file
    try:
        trust = tls.loadCAFile(caFile, "relay.mta_sts_ca_file") if caFile else None
    except ConfigError as e:
        _fail(str(e))
    return MTASTS(dns, reactor, runner, os.path.join(cfg.data, "mta-sts"), trust=trust,
                  trustName=f"the CA file {caFile}" if caFile else "the system trust store",
                  port=relay.mta_sts_port, timeout=float(relay.mta_sts_timeout))


def makeChecks(cfg: configModule.Config, dns: DNSResolver, signer: DKIMSigner,
               cryptoRunner: ThreadRunner, reactor: Any,
               middle: list[MessageCheck] | None = None,
               dmarcReports: DMARCRecorder | None = None,
               first: list[MessageCheck] | None = None) -> CheckChain:
    """The message checks, in their order: C{first} (a cluster node's hand-off check),
    inbound authentication, then the filters (C{middle}: spam, then Sieve), signing
    last.

    @param dns: the checks' resolver (over the relay's twisted.names resolver).
    @param signer: the DKIM signer (also for mail the server makes itself).
    @param dmarcReports: records the DMARC evaluations for aggregate reports, or None.
    """
    checks: list[Any] = list(first or ())
    if cfg.mailauth.verify:
        checks.append(AuthenticationCheck(
            SPFChecker(dns), DKIMVerifier(dns, cryptoRunner), DMARCEvaluator(dns),
            cfg.mailauth, reactor, reports=dmarcReports))
    checks.extend(middle or ())
    if cfg.mailauth.sign:
        checks.append(SigningCheck(signer, cryptoRunner))
    return CheckChain(checks)


def sieveLimitsOf(cfg: configModule.Config) -> SieveLimits:
    """The Sieve limits of the configuration."""
    return SieveLimits(
        maxScriptSize=cfg.sieve.max_script_size, maxActions=cfg.sieve.max_actions,
        maxRedirects=cfg.sieve.max_redirects, maxCpuTime=float(cfg.sieve.max_cpu_time))


def _ownerRoute(users: UserSource, directory: Directory, node: str) -> Any:
    """C{route(address) -> (ip, lmtpPort) | None} (blocking): where mail for a mailbox
    another node owns goes (the address resolved to its account first: a +tag, the
    postmaster of any domain); None when this server is no cluster node."""
    if not node:
        return None

    def route(address: str) -> tuple[str, int] | None:
        accounts = directory.resolve(address)
        if not accounts:
            return None
        account = accounts[0]
        moving, owner = users.route(account)
        if moving:
            raise RouteDeferred(account)
        if owner is None or owner.name == node:
            return None
        return owner.address, owner.lmtp_port

    return route


def _ownerURL(users: UserSource, node: str) -> Any:
    """C{referral(address) -> url | None} (blocking): the IMAP URL (RFC 2221 login
    referral) of the node that owns a mailbox this node does not; None when this
    server is no cluster node."""
    if not node:
        return None

    def referral(address: str) -> str | None:
        # Read now, as for nginx's auth_http: a login right after a move must be
        # referred to the new owner, not to what the directory cache still holds.
        owner = users.owner(address, fresh=True)
        if owner is None or owner.name == node:
            return None
        host = f"[{owner.address}]" if ":" in owner.address else owner.address
        user = urllib.parse.quote(address, safe="!$'()*+,&=~-._")
        return f"imap://{user}@{host}:{owner.imap_port}/"

    return referral


def _makeQueue(cfg: configModule.Config, store: MaildirStore, directory: Directory,
               runner: ThreadRunner, reactor: Any, top: service.MultiService,
               metrics: Metrics, relay: Relay | None = None, router: Any = None) -> Queue:
    """The outbound queue, with its scheduler added to the application.

    Bounces and delay warnings for local senders are delivered into their INBOX; a
    sender that is not (or no longer) a local user is a permanent failure.
    """

    def deliverLocal(recipient: str, data: bytes) -> list[str]:
        accounts = directory.resolve(recipient)
        if not accounts:
            raise NoSuchUser(recipient)
        # A copy queued for another node whose mailbox is here now: into INBOX, without
        # the placement it was handed on with.
        data = handoff.take(data)[0]
        keys = store.deliver(accounts, data)
        metrics.queueDelivered(len(keys))
        return keys

    def localDelivery(recipient: str, data: bytes) -> Any:
        return runner.run(deliverLocal, recipient, data)

    queue = Queue(
        os.path.join(cfg.data, "queue"), runner, reactor, cfg, cfg.hostname, localDelivery,
        metrics=metrics, relay=relay, router=router,
    )
    queue.service.setServiceParent(top)
    return queue
