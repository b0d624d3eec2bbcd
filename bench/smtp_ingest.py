#!/usr/bin/env python3
"""SMTP ingest benchmark: pymaild's MX role against baselines, in one invocation.

N concurrent SMTP sessions (default 10) send M messages (default 5,000) of S bytes
(default 4 KiB) to local users over 127.0.0.1. Every server stores each message durably
(fsync of the file and of the directory) before it answers 250. Reported per server:
messages per second (wall clock) and the server process's CPU milliseconds per message
(user + system, all threads, read from /proc), plus pymaild's ratios against each
baseline that ran:

- aiosmtpd (if importable) with a Maildir handler that writes tmp/, fsyncs, renames into
  new/ and fsyncs the directory, in a thread pool as pymaild does;
- Postfix (if installed and this script runs as root): a private instance started for
  the run from its own configuration and queue directories under a temporary directory
  (C{postfix -c DIR start}), listening on a free 127.0.0.1 port, delivering to the same
  20 users with C{virtual(8)} into Maildirs. Postfix answers 250 once the queue file is
  fsynced and delivers afterwards (C{virtual(8)} fsyncs each Maildir file); its rate is
  the 250 rate, and its CPU time (the master and all its children, user + system) is
  read after every message has reached its Maildir, so it covers delivery too. An
  already running Postfix can be given with C{--postfix-port} instead (rate only).

- pymaild with its spam check on (C{pymaild+rspamd}, if rspamd is installed): the same
  server with a L{pymaild.spam.check.SpamCheck} against a private rspamd started for the
  run (L{tests.rspamd_support.Rspamd}: loopback, no network checks, Bayes on sqlite), so
  the ratio against plain pymaild is the price of scanning every message; rspamd's own
  CPU per message (its master and workers) is reported beside it.

Two more pymaild variants measure what mail authentication costs, against the plain
pymaild run of the same invocation (C{--no-mailauth} leaves them out):

- C{pymaild-sign}: the submission role (AUTH PLAIN once per session, From a local user
  whose domain has an RSA-2048 and an Ed25519 key), so every message is DKIM-signed
  twice by the signing check before it is stored;
- C{pymaild-verify}: the MX role with the inbound check (SPF of MAIL FROM and HELO, both
  DKIM signatures, DMARC) against a twisted.names DNS server in the server's process;
  the messages come signed by C{sender.example} (signed before timing starts).

With C{--fast-replies}, C{pymaild-nofast} is plain pymaild with every reply written
through C{transport.write} (C{SMTPFactory.fastReplies} off): its ratio against pymaild
is what the replies straight to the socket (L{pymaild.smtp.fastreply}) pay.

With C{--recipients N} every message goes to N different local users (one RCPT each).

Rounds alternate the servers (in a rotating order) and the medians are reported.

Usage::

    python bench/smtp_ingest.py                      # full run
    python bench/smtp_ingest.py --rounds 5           # 5 alternating rounds, medians
    python bench/smtp_ingest.py --messages 500       # quick run
    python bench/smtp_ingest.py --recipients 10      # each message to 10 local users
    python bench/smtp_ingest.py --fast-replies       # with and without replies to the socket
    python bench/smtp_ingest.py --no-baseline        # pymaild only
    python bench/smtp_ingest.py --postfix off        # no Postfix baseline
    python bench/smtp_ingest.py --rspamd off         # no pymaild+rspamd variant

pymaild and aiosmtpd run as subprocesses of this script (C{--serve pymaild|aiosmtpd});
only loopback is used, and everything stops when the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support import cpuSeconds, stopProcess  # noqa: E402

DOMAIN = "bench.example"
USERS = 20
#: Recipients per message (C{--recipients}): distinct users, so each gets a copy.
RECIPIENTS = 1


# ---------------------------------------------------------------------------------------
# Servers (run in a subprocess: --serve NAME)
# ---------------------------------------------------------------------------------------


SENDER_DOMAIN = "sender.example"


def serveChecks(variant: str, keysDir: str, reactor: Any) -> tuple[Any, str]:
    """The check chain and role of a mail authentication variant (and its DNS server)."""
    from pymaild.config import MailAuthConfig, RelayConfig
    from pymaild.mailauth.dkimkeys import DKIMKeys
    from pymaild.mailauth.dkimverify import DKIMVerifier
    from pymaild.mailauth.dmarc import DMARCEvaluator
    from pymaild.mailauth.inbound import AuthenticationCheck
    from pymaild.mailauth.resolver import DNSResolver
    from pymaild.mailauth.signer import DKIMSigner, SigningCheck
    from pymaild.mailauth.spf import SPFChecker
    from pymaild.smtp.checks import CheckChain
    from pymaild.smtp.mx import makeResolver
    from pymaild.threads import ThreadRunner, makePool
    from tests.dnsserver import TXT, ZoneServer, longTXT

    cryptoPool = makePool("pymaild-crypto", 2)
    cryptoPool.start()
    reactor.addSystemEventTrigger("after", "shutdown", cryptoPool.stop)
    crypto = ThreadRunner(reactor, cryptoPool)
    keys = DKIMKeys(keysDir)
    if variant == "pymaild-sign":
        return CheckChain([SigningCheck(DKIMSigner(keys), crypto)]), "submission"
    zone: dict[str, list[Any]] = {
        SENDER_DOMAIN: [TXT("v=spf1 ip4:127.0.0.1 -all")],
        f"_dmarc.{SENDER_DOMAIN}": [TXT("v=DMARC1; p=reject")],
    }
    for key in keys.signingKeys(SENDER_DOMAIN):
        zone[key.dnsName] = [longTXT(key.dnsValue)]
    server = ZoneServer({SENDER_DOMAIN: zone}, reactor=reactor)
    server.start()
    dns = DNSResolver(makeResolver(RelayConfig(dns_servers=(server.address,)), reactor),
                      reactor, timeout=5)
    check = AuthenticationCheck(SPFChecker(dns), DKIMVerifier(dns, crypto),
                                DMARCEvaluator(dns), MailAuthConfig(internal_networks=()),
                                reactor)
    return CheckChain([check]), "mx"


def servePymaild(data: str, variant: str = "pymaild", keysDir: str = "",
                 rspamdURL: str = "", controllerURL: str = "") -> None:
    """Run pymaild's SMTP server (MX role) the way the tap wires it; print the port.

    The mail authentication variants add their check (see L{serveChecks}); with
    C{rspamdURL}, every message passes a spam check against that rspamd."""
    sys.path.insert(0, ROOT)
    from twisted.cred.checkers import AllowAnonymousAccess
    from twisted.cred.portal import Portal
    from twisted.internet import reactor
    from twisted.mail.smtp import IMessageDelivery

    from pymaild import config as configModule
    from pymaild.auth import passwd as passwdModule
    from pymaild.auth.checker import PasswdChecker
    from pymaild.auth.directory import Directory
    from pymaild.auth.passwd import PasswdFile
    from pymaild.auth.penalty import AuthGate, AuthPenalty
    from pymaild.auth.realm import MailRealm
    from pymaild.config import SpamConfig
    from pymaild.smtp.checks import CheckChain
    from pymaild.smtp.delivery import DeliveryAvatars
    from pymaild.smtp.server import SMTPFactory
    from pymaild.spam.check import SpamCheck
    from pymaild.spam.counters import SpamCounters
    from pymaild.spam.junk import ensureJunk
    from pymaild.spam.rspamd import RspamdClient
    from pymaild.store import MaildirStore
    from pymaild.threads import ThreadRunner, makePool

    passwdModule.configureHashing(memory_cost=256, rounds=1, parallelism=1)
    passwdPath = os.path.join(data, "passwd")
    passwd = PasswdFile(passwdPath)
    for i in range(USERS):
        passwd.add(f"user{i}@{DOMAIN}", "bench-password")
    config = configModule.load(None, {
        "server": {"data": data, "hostname": "mx." + DOMAIN, "domains": [DOMAIN]},
        "auth": {"passwd": passwdPath},
        # The signing variant submits thousands of messages as one user: no hourly cap.
        "submission": {"max_messages_per_hour": 0},
    })
    diskPool = makePool("pymaild-disk", 8)
    authPool = makePool("pymaild-auth", 2)
    diskPool.start()
    authPool.start()
    reactor.addSystemEventTrigger("after", "shutdown", diskPool.stop)
    reactor.addSystemEventTrigger("after", "shutdown", authPool.stop)
    disk = ThreadRunner(reactor, diskPool)
    store = MaildirStore(os.path.join(data, "mail"), config.hostname)
    directory = Directory(passwd, config.domains, config.smtp.recipient_delimiter)
    avatars = DeliveryAvatars(store, directory, disk, config, None, clock=reactor)
    role = "mx"
    if variant not in ("pymaild", "pymaild-nofast"):
        avatars.checks, role = serveChecks(variant, keysDir, reactor)
    elif rspamdURL:
        spam = SpamConfig(enabled=True, url=rspamdURL, controller_url=controllerURL)
        client = RspamdClient(reactor, rspamdURL, controllerURL, float(spam.timeout))
        avatars.checks = CheckChain([SpamCheck(client, spam, SpamCounters(),
                                               lambda account: disk.run(ensureJunk, store,
                                                                        account))])
    realm = MailRealm({IMessageDelivery: avatars})
    portal = Portal(realm, [PasswdChecker(passwd, ThreadRunner(reactor, authPool)),
                            AllowAnonymousAccess()])
    gate = AuthGate(portal, AuthPenalty(), reactor)
    factory = SMTPFactory(config, gate, portal, None, role, False, reactor)
    factory.fastReplies = variant != "pymaild-nofast"
    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=128)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()


def serveAiosmtpd(data: str) -> None:
    """Run aiosmtpd with a durable Maildir handler (fsync in a thread pool); print the port."""
    import socket

    from aiosmtpd.controller import Controller

    root = os.path.join(data, "mail")
    counter = itertools.count()
    host = socket.gethostname()

    def store(address: str, content: bytes) -> None:
        local, _, domain = address.lower().rpartition("@")
        md = os.path.join(root, domain, local, "Maildir")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        name = f"{time.time():.6f}.P{os.getpid()}Q{next(counter)}.{host}"
        tmp = os.path.join(md, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(md, "new", name))
        dfd = os.open(os.path.join(md, "new"), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    class MaildirHandler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            content = envelope.original_content or envelope.content
            loop = asyncio.get_running_loop()
            for rcpt in envelope.rcpt_tos:
                await loop.run_in_executor(None, store, rcpt, content)
            return "250 Message accepted for delivery"

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    controller = Controller(MaildirHandler(), hostname="127.0.0.1", port=port,
                            data_size_limit=26214400)
    controller.start()
    print(f"READY {port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


# ---------------------------------------------------------------------------------------
# Load generator
# ---------------------------------------------------------------------------------------


def makeMessage(size: int, n: int, sender: str = "bench@client.example") -> bytes:
    """A message of about C{size} bytes (CRLF lines of 76 characters), dot-stuffed."""
    head = (f"From: {sender}\r\nTo: user{n % USERS}@{DOMAIN}\r\n"
            f"Subject: benchmark message {n}\r\nMessage-ID: <{n}@client.example>\r\n\r\n").encode()
    line = b"x" * 74 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


SIGNED_SET = 100


class Traffic:
    """What the load generator sends for one server variant.

    @ivar sender: the MAIL FROM (and From) address.
    @ivar auth: the AUTH PLAIN argument sent once per session, or None.
    @ivar signed: pre-signed messages used in turn (the verifying variant), or None.
    """

    def __init__(self, variant: str, size: int, keysDir: str) -> None:
        self.sender, self.auth, self.signed = "bench@client.example", None, None
        if variant == "pymaild-sign":
            import base64

            self.sender = f"user0@{DOMAIN}"
            self.auth = base64.b64encode(f"\0{self.sender}\0bench-password".encode())
        elif variant == "pymaild-verify":
            from pymaild.mailauth.dkimkeys import DKIMKeys
            from pymaild.mailauth.signer import DKIMSigner

            self.sender = f"alice@{SENDER_DOMAIN}"
            signer = DKIMSigner(DKIMKeys(keysDir))
            self.signed = [signer.sign(makeMessage(size, n, self.sender))
                           for n in range(SIGNED_SET)]

    def message(self, size: int, n: int) -> bytes:
        """Message C{n}."""
        if self.signed is not None:
            return self.signed[n % len(self.signed)]
        return makeMessage(size, n, self.sender)


async def readReply(reader: asyncio.StreamReader) -> int:
    """Read one (multi-line) reply; return its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def expect(reader: asyncio.StreamReader, code: int, what: str) -> None:
    """Read a reply and check its code."""
    got = await readReply(reader)
    if got != code:
        raise RuntimeError(f"{what}: expected {code}, got {got}")


async def session(port: int, counter: Any, total: int, size: int, done: list[int],
                  traffic: Traffic | None = None) -> None:
    """One SMTP session sending messages until C{total} have been taken."""
    traffic = traffic or Traffic("pymaild", size, "")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await expect(reader, 220, "greeting")
    writer.write(b"EHLO client.example\r\n")
    await expect(reader, 250, "EHLO")
    if traffic.auth is not None:
        writer.write(b"AUTH PLAIN " + traffic.auth + b"\r\n")
        await expect(reader, 235, "AUTH")
    while True:
        n = next(counter)
        if n >= total:
            break
        writer.write(f"MAIL FROM:<{traffic.sender}>\r\n".encode())
        await expect(reader, 250, "MAIL")
        for k in range(RECIPIENTS):
            writer.write(f"RCPT TO:<user{(n * RECIPIENTS + k) % USERS}@{DOMAIN}>\r\n"
                         .encode())
            await expect(reader, 250, "RCPT")
        writer.write(b"DATA\r\n")
        await expect(reader, 354, "DATA")
        writer.write(traffic.message(size, n) + b".\r\n")
        await expect(reader, 250, "end of data")
        done[0] += 1
    writer.write(b"QUIT\r\n")
    await readReply(reader)
    writer.close()


async def load(port: int, total: int, sessions: int, size: int,
               traffic: Traffic | None = None) -> float:
    """Send C{total} messages over C{sessions} sessions; return the wall time."""
    counter = itertools.count()
    done = [0]
    start = time.perf_counter()
    await asyncio.gather(*(session(port, counter, total, size, done, traffic)
                           for _ in range(sessions)))
    elapsed = time.perf_counter() - start
    if done[0] != total:
        raise RuntimeError(f"only {done[0]} of {total} messages accepted")
    return elapsed


def treeCpuSeconds(root: int) -> float:
    """CPU seconds of process C{root}, its live descendants and its reaped children.

    A child that exits between two readings moves from the descendants into C{root}'s
    children times, so differences of this figure count it exactly once.
    """
    children: dict[int, list[int]] = {}
    own: dict[int, float] = {}
    reaped = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        own[pid] = (int(fields[11]) + int(fields[12])) / ticks
        if pid == root:
            reaped = (int(fields[13]) + int(fields[14])) / ticks
    total, stack = reaped, [root]
    while stack:
        pid = stack.pop()
        total += own.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return total


def countStored(data: str) -> int:
    """How many message files are in the new/ directories under C{data}/mail."""
    count = 0
    for dirpath, _dirs, files in os.walk(os.path.join(data, "mail")):
        if os.path.basename(dirpath) == "new":
            count += len(files)
    return count


def warmup(port: int, args: argparse.Namespace, traffic: Traffic | None = None) -> int:
    """Send the warm-up messages (over all sessions, so every worker is started)."""
    count = min(args.warmup, args.messages)
    if count:
        asyncio.run(load(port, count, max(1, min(args.sessions, count)), args.size, traffic))
    return count


def startRspamd(args: argparse.Namespace) -> Any:
    """A private rspamd for the C{pymaild+rspamd} variant, or None (with the reason
    printed) when rspamd is not installed or does not start."""
    from tests.rspamd_support import Rspamd

    try:
        return Rspamd(tempfile.mkdtemp(prefix="bench-rspamd-", dir=args.tmpdir)).start()
    except Exception as e:  # SkipTest (not installed), AssertionError (CI), RuntimeError
        print(f"rspamd: {e}; pymaild+rspamd skipped")
        return None


def checkVariant(name: str, data: str) -> None:
    """Make sure a mail authentication variant did its work (one stored message)."""
    marks = {"pymaild-sign": [b"DKIM-Signature: v=1; a=rsa-sha256",
                              b"DKIM-Signature: v=1; a=ed25519-sha256"],
             "pymaild-verify": [b"dkim=pass", b"dmarc=pass", b"spf=pass"]}.get(name)
    if not marks:
        return
    for dirpath, _dirs, files in os.walk(os.path.join(data, "mail")):
        if os.path.basename(dirpath) == "new" and files:
            with open(os.path.join(dirpath, files[0]), "rb") as f:
                head = f.read(8192)
            missing = [m for m in marks if m not in head]
            if missing:
                raise RuntimeError(f"{name}: stored message lacks {missing}")
            return


def runServer(name: str, args: argparse.Namespace,
              rspamd: Any = None) -> dict[str, float] | None:
    """Start server C{name} in a subprocess, load it, and return its figures."""
    data = tempfile.mkdtemp(prefix=f"bench-{name.replace('+', '-')}-", dir=args.tmpdir)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = name.split("+")[0]
    traffic = Traffic(base, args.size, args.keys)
    command = [sys.executable, os.path.abspath(__file__), "--serve", base,
               "--data", data, "--keys", args.keys or ""]
    if rspamd is not None:
        command += ["--rspamd-url", rspamd.url, "--rspamd-controller", rspamd.controllerURL]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            print(f"{name}: server did not start ({line.strip()!r})", file=sys.stderr)
            return None
        port = int(line.split()[1])
        warm = warmup(port, args, traffic)
        before = cpuSeconds(proc.pid)
        filterBefore = treeCpuSeconds(rspamd.proc.pid) if rspamd is not None else 0.0
        elapsed = asyncio.run(load(port, args.messages, args.sessions, args.size, traffic))
        cpu = cpuSeconds(proc.pid) - before
        stored = countStored(data) - warm * RECIPIENTS
        if stored != args.messages * RECIPIENTS:
            raise RuntimeError(f"{name}: {stored} messages on disk,"
                               f" expected {args.messages * RECIPIENTS}")
        checkVariant(name, data)
        figures = {"rate": args.messages / elapsed, "cpu_ms": 1000 * cpu / args.messages,
                   "wall": elapsed}
        if rspamd is not None:
            spent = treeCpuSeconds(rspamd.proc.pid) - filterBefore
            figures["rspamd_cpu_ms"] = 1000 * spent / args.messages
        return figures
    finally:
        stopProcess(proc)
        shutil.rmtree(data, ignore_errors=True)


def runPostfix(args: argparse.Namespace) -> dict[str, float] | None:
    """Load an already running Postfix on 127.0.0.1:--postfix-port (wall time only)."""
    elapsed = asyncio.run(load(args.postfix_port, args.messages, args.sessions, args.size))
    return {"rate": args.messages / elapsed, "cpu_ms": float("nan"), "wall": elapsed}


POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {pdata}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{domain}
mydomain = {domain}
myorigin = {domain}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{etc}/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = {uid}
alias_maps =
alias_database =
biff = no
maillog_file = {data}/maillog
maillog_file_prefixes = {data}
"""

POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfixProgram() -> str | None:
    """The C{postfix} command, or None when Postfix is not installed."""
    found = shutil.which("postfix")
    if found:
        return found
    return "/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix") else None


def postfixUnusable() -> str | None:
    """Why a private Postfix cannot be started here, or None when it can."""
    if postfixProgram() is None:
        return "not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private instance needs root; pass --postfix-port of a running one"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' user"
    return None


def freePort() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def runPostfixPrivate(args: argparse.Namespace) -> dict[str, float] | None:
    """Start a private Postfix, load it, wait for every delivery, stop it; its figures."""
    program = postfixProgram()
    assert program is not None
    owner = pwd.getpwnam("postfix")
    data = tempfile.mkdtemp(prefix="bench-postfix-", dir=args.tmpdir)
    os.chmod(data, 0o755)
    etc, spool, pdata, mail = (os.path.join(data, d) for d in ("etc", "spool", "pdata", "mail"))
    for d in (etc, spool, pdata, mail):
        os.mkdir(d, 0o755)
    for d in (pdata, mail):
        os.chown(d, owner.pw_uid, owner.pw_gid)
    port = freePort()
    with open(os.path.join(etc, "main.cf"), "w") as f:
        f.write(POSTFIX_MAIN_CF.format(spool=spool, pdata=pdata, mail=mail, etc=etc, data=data,
                                       domain=DOMAIN, uid=owner.pw_uid, gid=owner.pw_gid))
    with open(os.path.join(etc, "master.cf"), "w") as f:
        f.write(POSTFIX_MASTER_CF.format(port=port))
    with open(os.path.join(etc, "vmailbox"), "w") as f:
        for i in range(USERS):
            f.write(f"user{i}@{DOMAIN} {DOMAIN}/user{i}/Maildir/\n")

    def postfix(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([program, "-c", etc, command], capture_output=True, text=True,
                              timeout=60)

    master = 0
    try:
        started = postfix("start")
        if started.returncode != 0:
            print(f"postfix: could not start: {(started.stderr or started.stdout).strip()!r}"
                  f" (see {data}/maillog)", file=sys.stderr)
            return None
        deadline = time.monotonic() + 15
        while True:
            try:
                with open(os.path.join(spool, "pid", "master.pid")) as f:
                    master = int(f.read().strip() or 0)
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    print("postfix: did not start listening", file=sys.stderr)
                    return None
                time.sleep(0.1)
        warm = warmup(port, args) * RECIPIENTS
        waitStored(data, warm, 60)
        before = treeCpuSeconds(master)
        elapsed = asyncio.run(load(port, args.messages, args.sessions, args.size))
        start = time.perf_counter()
        delivered = waitStored(data, warm + args.messages * RECIPIENTS, 300)
        drained = time.perf_counter() - start
        cpu = treeCpuSeconds(master) - before
        if not delivered:
            raise RuntimeError(f"postfix: {countStored(data) - warm} messages delivered,"
                               f" expected {args.messages * RECIPIENTS}")
        return {"rate": args.messages / elapsed, "cpu_ms": 1000 * cpu / args.messages,
                "wall": elapsed, "drain": drained}
    finally:
        postfix("stop")
        deadline = time.monotonic() + 15
        while master and os.path.exists(f"/proc/{master}") and time.monotonic() < deadline:
            time.sleep(0.1)
        if master and os.path.exists(f"/proc/{master}"):
            postfix("abort")
        shutil.rmtree(data, ignore_errors=True)


def waitStored(data: str, count: int, timeout: float) -> bool:
    """Wait until C{count} messages are in the Maildirs under C{data}/mail."""
    deadline = time.monotonic() + timeout
    while countStored(data) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def main(argv: list[str] | None = None) -> int:
    """Parse options and run the benchmark (or serve, in the subprocess)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages to send (5000)")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent sessions (10)")
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes (4096)")
    parser.add_argument("--recipients", type=int, default=1,
                        help="recipients per message, each a different user (1, at most 20)")
    parser.add_argument("--warmup", type=int, default=50, help="messages sent before timing")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the servers this many times; report medians (1)")
    parser.add_argument("--no-baseline", action="store_true", help="run pymaild only")
    parser.add_argument("--postfix", choices=["auto", "off"], default="auto",
                        help="auto: start a private Postfix when installed and root (auto)")
    parser.add_argument("--postfix-port", type=int, default=0,
                        help="port of a running Postfix on 127.0.0.1 to compare against")
    parser.add_argument("--rspamd", choices=["auto", "off"], default="auto",
                        help="auto: also run pymaild+rspamd when rspamd is installed (auto)")
    parser.add_argument("--tmpdir", default=None, help="where the servers store mail")
    parser.add_argument("--no-mailauth", action="store_true",
                        help="leave out the DKIM signing and verifying variants")
    parser.add_argument("--fast-replies", action="store_true",
                        help="also run pymaild-nofast: replies always through"
                             " transport.write (what pymaild.smtp.fastreply pays)")
    parser.add_argument("--serve", choices=["pymaild", "pymaild-sign", "pymaild-verify",
                                            "pymaild-nofast", "aiosmtpd"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--rspamd-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rspamd-controller", default="", help=argparse.SUPPRESS)
    parser.add_argument("--keys", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global RECIPIENTS
    RECIPIENTS = max(1, min(USERS, args.recipients))
    if args.serve and args.serve.startswith("pymaild"):
        servePymaild(args.data, args.serve, args.keys, args.rspamd_url, args.rspamd_controller)
        return 0
    if args.serve == "aiosmtpd":
        serveAiosmtpd(args.data)
        return 0

    print(f"SMTP ingest: {args.messages} messages of {args.size} bytes to {RECIPIENTS} "
          f"recipient(s), {args.sessions} sessions, fsync on, {os.cpu_count()} CPUs, "
          f"{args.rounds} round(s), medians")
    servers = ["pymaild"]
    if args.fast_replies:
        servers.append("pymaild-nofast")
    if not args.no_mailauth:
        from pymaild.mailauth.dkimkeys import DKIMKeys

        args.keys = tempfile.mkdtemp(prefix="bench-dkim-", dir=args.tmpdir)
        for domain in (DOMAIN, SENDER_DOMAIN):
            DKIMKeys(args.keys).keygen(domain, "bench")
        servers += ["pymaild-sign", "pymaild-verify"]
    if not args.no_baseline:
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            print("aiosmtpd: not importable, baseline skipped (pip install aiosmtpd)")
        else:
            servers.append("aiosmtpd")
        if args.postfix_port:
            servers.append("postfix")
        elif args.postfix == "auto":
            problem = postfixUnusable()
            if problem is None:
                servers.append("postfix")
            else:
                print(f"postfix: {problem}; baseline skipped")
    rspamd = startRspamd(args) if args.rspamd == "auto" else None
    if rspamd is not None:
        servers.insert(1, "pymaild+rspamd")
    try:
        return report(args, servers, rspamd)
    finally:
        if rspamd is not None:
            rspamd.stop()
            shutil.rmtree(rspamd.work, ignore_errors=True)


def report(args: argparse.Namespace, servers: list[str], rspamd: Any) -> int:
    """Run the rounds over C{servers} and print the figures and the ratios."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for index in range(max(1, args.rounds)):
        shift = index % len(servers)
        for name in servers[shift:] + servers[:shift]:
            if name == "postfix":
                r = runPostfix(args) if args.postfix_port else runPostfixPrivate(args)
            elif name == "pymaild+rspamd":
                r = runServer(name, args, rspamd)
            else:
                r = runServer(name, args)
            if r is None:
                if name != "postfix":
                    return 1
                print("postfix: baseline dropped", file=sys.stderr)
                servers.remove(name)
                del runs[name]
                continue
            runs[name].append(r)
            print(f"  round {index + 1} {name:14s} {r['rate']:9.1f} msg/s   "
                  f"{r['cpu_ms']:7.3f} CPU ms/msg", flush=True)
    results = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
               for name, rs in runs.items()}
    pymaild = results["pymaild"]
    for name, r in results.items():
        extra = f", then {r['drain']:.2f} s to deliver" if "drain" in r else ""
        if "rspamd_cpu_ms" in r:
            extra += f"; rspamd itself {r['rspamd_cpu_ms']:.3f} CPU ms/msg"
        print(f"{name:14s} {r['rate']:9.1f} msg/s   {r['cpu_ms']:7.3f} CPU ms/msg   "
              f"({r['wall']:.2f} s wall{extra})")
    if "pymaild+rspamd" in results:
        r = results["pymaild+rspamd"]
        print(f"ratio pymaild+rspamd/pymaild: throughput {r['rate'] / pymaild['rate']:.2f}x,"
              f" pymaild CPU per message {r['cpu_ms'] / pymaild['cpu_ms']:.2f}x")
    for name, r in results.items():
        if name in ("pymaild", "pymaild+rspamd"):
            continue
        if name.startswith("pymaild-"):
            print(f"ratio {name}/pymaild: throughput {r['rate'] / pymaild['rate']:.2f}x, "
                  f"CPU per message {r['cpu_ms'] / pymaild['cpu_ms']:.2f}x")
            continue
        cpu = pymaild["cpu_ms"] / r["cpu_ms"] if r["cpu_ms"] == r["cpu_ms"] else float("nan")
        print(f"ratio pymaild/{name}: throughput {pymaild['rate'] / r['rate']:.2f}x, "
              f"CPU per message {cpu:.2f}x")
    if args.keys:
        shutil.rmtree(args.keys, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
