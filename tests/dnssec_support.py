"""A DNSSEC-signed test zone and a validating resolver (Debian's unbound) on loopback.

L{SignedZone} writes a zone file, makes a key with C{ldns-keygen} and signs the zone with
C{ldns-signzone} (package ldnsutils). L{Unbound} runs C{unbound -d} on a free port of
127.0.0.1 with a generated configuration:

  - the signed zone is loaded as an C{auth-zone} used for upstream answers only (the
    twisted.names test server cannot serve RRSIG and NSEC records), and its key is
    unbound's only trust anchor, so unbound validates every answer from it and sets the
    AD bit only for those that validate;
  - unsigned zones are C{stub-zone}s pointing at the tests' twisted.names server
    (L{tests.dnsserver.ZoneServer}): answers from there are insecure (no AD bit);
  - the special-use C{test.} name is taken out of unbound's default local zones.

This module holds no tests.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from tests.support import freePort, requireClient, stopProcess


class SignedZone:
    """A zone signed with a fresh ECDSA P-256 key.

    @param base: the directory for the zone and key files.
    @param origin: the zone's name (C{example.test}).
    @param lines: the zone's records as zone-file lines (relative to the origin).
    """

    def __init__(self, base: str, origin: str, lines: list[str]) -> None:
        self.base = base
        self.origin = origin
        self.lines = lines
        self.keygen = requireClient("ldns-keygen", "ldnsutils")
        self.signzone = requireClient("ldns-signzone", "ldnsutils")
        os.makedirs(base, exist_ok=True)
        self.key = subprocess.run(
            [self.keygen, "-a", "ECDSAP256SHA256", "-k", origin], cwd=base, check=True,
            capture_output=True, text=True).stdout.strip()
        self.anchor = os.path.join(base, f"{self.key}.ds")
        self.path = os.path.join(base, f"{origin}.zone")
        self.sign()

    def sign(self) -> None:
        """Write the zone file and sign it (C{<zone>.signed})."""
        with open(self.path, "w", encoding="ascii") as f:
            f.write(f"$ORIGIN {self.origin}.\n$TTL 60\n"
                    f"@ IN SOA ns.{self.origin}. hostmaster.{self.origin}. 1 60 60 600 60\n"
                    f"@ IN NS ns.{self.origin}.\nns IN A 127.0.0.1\n")
            f.write("\n".join(self.lines) + "\n")
        subprocess.run([self.signzone, "-n", self.path, self.key], cwd=self.base, check=True,
                       capture_output=True)

    @property
    def signed(self) -> str:
        """The signed zone file."""
        return self.path + ".signed"

    def tamper(self, owner: str, rtype: str, value: str) -> None:
        """Change the data of C{owner}'s C{rtype} record in the signed file, keeping its
        signature: a validator finds the answer bogus."""
        with open(self.signed, encoding="ascii") as f:
            lines = f.read().splitlines()
        out = []
        for line in lines:
            fields = line.split()
            if len(fields) >= 5 and fields[0] == owner and fields[3] == rtype:
                line = "\t".join(fields[:4] + [value])
            out.append(line)
        with open(self.signed, "w", encoding="ascii") as f:
            f.write("\n".join(out) + "\n")


class Unbound:
    """A validating unbound on 127.0.0.1 (see the module docstring).

    @param base: its working directory.
    @param signed: the signed zones it serves to itself and trusts.
    @param stubs: unsigned zone name → the C{address@port} of the server for it.
    """

    def __init__(self, base: str, signed: list[SignedZone],
                 stubs: dict[str, str] | None = None) -> None:
        self.binary = requireClient("unbound")
        self.base = base
        self.signed = signed
        self.stubs = stubs or {}
        self.port = freePort()
        self.proc: subprocess.Popen[bytes] | None = None
        self.logPath = os.path.join(base, "unbound.log")
        self.conf = os.path.join(base, "unbound.conf")

    def config(self) -> str:
        """The configuration file's text."""
        lines = [
            "server:", "  interface: 127.0.0.1", f"  port: {self.port}", "  do-ip6: no",
            "  do-daemonize: no", "  use-syslog: no", f'  logfile: "{self.logPath}"',
            '  chroot: ""', '  username: ""', f'  directory: "{self.base}"', '  pidfile: ""',
            "  access-control: 127.0.0.0/8 allow", "  do-not-query-localhost: no",
            '  module-config: "validator iterator"', "  verbosity: 1",
            '  local-zone: "test." nodefault', "  val-log-level: 2",
            "  cache-max-ttl: 0", "  cache-max-negative-ttl: 0",
        ]
        lines += [f'  trust-anchor-file: "{z.anchor}"' for z in self.signed]
        lines += [f'  domain-insecure: "{name}"' for name in self.stubs]
        for z in self.signed:
            lines += ["auth-zone:", f'  name: "{z.origin}"', f'  zonefile: "{z.signed}"',
                      "  for-downstream: no", "  for-upstream: yes", "  fallback-enabled: no"]
        for name, address in self.stubs.items():
            lines += ["stub-zone:", f'  name: "{name}"', f"  stub-addr: {address}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> Unbound:
        """Run unbound and wait until it serves.

        @raise RuntimeError: it exited or did not start in time (its log is attached).
        """
        with open(self.conf, "w", encoding="utf-8") as f:
            f.write(self.config())
        checkconf = self.binary + "-checkconf"
        if os.path.exists(checkconf):
            check = subprocess.run([checkconf, self.conf], capture_output=True, text=True)
            if check.returncode:
                raise RuntimeError(f"unbound-checkconf: {check.stdout}{check.stderr}")
        self.proc = subprocess.Popen([self.binary, "-d", "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, cwd=self.base)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited with {self.proc.returncode}: {self.log()}")
            if "start of service" in self.log():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"unbound did not start within {timeout}s: {self.log()}")

    @property
    def address(self) -> str:
        """C{127.0.0.1:port}, as C{relay.dnssec_resolvers} takes it."""
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        """Its log so far."""
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        if self.proc is not None:
            stopProcess(self.proc)


def start(case: Any, zone: SignedZone, stubs: dict[str, str] | None = None) -> Unbound:
    """An L{Unbound} for C{zone} (and C{stubs}) under the test's temporary directory,
    stopped when the test ends."""
    unbound = Unbound(os.path.abspath(case.mktemp()), [zone], stubs)
    os.makedirs(unbound.base)
    unbound.start()
    case.addCleanup(unbound.stop)
    return unbound
