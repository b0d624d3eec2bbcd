"""A private nginx mail proxy for tests: a generated configuration on loopback ports.

L{NginxMail} writes an nginx configuration under a work directory that loads Debian's
C{ngx_mail_module} (package C{libnginx-mod-mail}) and proxies IMAP, POP3 and SMTP on
free 127.0.0.1 ports, asking pymaild's C{auth_http} endpoint where each login goes and
sending the shared secret. IMAP and POP3 go to the backends with a PROXY header
(C{proxy_protocol on}), SMTP with XCLIENT. nginx runs in the foreground (C{daemon off})
with its prefix, pid file and logs in the work directory; L{NginxMail.stop} ends it.

L{findNginx} finds the binary and the module; under CI (C{CI=true}) a missing one is a
failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.support import ServerProcess, freePort, missing, stopProcess, waitForPort

MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"


def findNginx() -> str:
    """The nginx binary (the mail module must be installed too)."""
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                     else None)
    if path is None:
        missing("nginx", "apt-get install nginx libnginx-mod-mail")
    if not os.path.exists(MODULE):
        missing("ngx_mail_module", "apt-get install libnginx-mod-mail")
    assert path is not None
    return path


class NginxMail:
    """One nginx mail proxy in front of pymaild.

    @param work: a directory of its own.
    @param authURL: C{host:port/path} of the auth_http endpoint.
    @param secret: the shared secret (C{X-Pymaild-Secret}).
    @ivar ports: C{{"imap": port, "pop3": port, "smtp": port}} on 127.0.0.1.
    """

    def __init__(self, work: str, authURL: str, secret: str) -> None:
        self.binary = findNginx()
        self.work = os.path.abspath(work)
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)
        self.ports = {name: freePort() for name in ("imap", "pop3", "smtp")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = os.path.join(self.work, "nginx.conf")
        user = "user nobody nogroup;\n" if os.getuid() == 0 else ""
        p = self.ports
        with open(self.conf, "w") as f:
            f.write(f"""\
load_module {MODULE};
{user}daemon off;
worker_processes 1;
pid {self.work}/nginx.pid;
error_log {self.work}/logs/error.log info;
events {{ worker_connections 128; }}
mail {{
    server_name mail.example.org;
    auth_http 127.0.0.1:{authURL};
    auth_http_header X-Pymaild-Secret "{secret}";
    proxy_pass_error_message on;
    imap_capabilities IMAP4rev1 LITERAL+ SASL-IR;
    imap_auth plain login;
    pop3_auth plain;
    smtp_auth plain login;
    smtp_capabilities "SIZE 26214400" 8BITMIME PIPELINING;
    server {{ listen 127.0.0.1:{p["imap"]}; protocol imap; proxy on; proxy_protocol on; }}
    server {{ listen 127.0.0.1:{p["pop3"]}; protocol pop3; proxy on; proxy_protocol on; }}
    server {{ listen 127.0.0.1:{p["smtp"]}; protocol smtp; proxy on; xclient on; }}
}}
""")

    def start(self) -> NginxMail:
        """Check the configuration, run nginx, and wait until its ports accept.

        @raise RuntimeError: the configuration is refused or nginx does not start.
        """
        base = [self.binary, "-p", self.work, "-e", f"{self.work}/logs/error.log",
                "-c", self.conf]
        test = subprocess.run([*base, "-t"], capture_output=True, stdin=subprocess.DEVNULL)
        if test.returncode:
            raise RuntimeError(f"nginx -t failed: {test.stderr.decode(errors='replace')}")
        self.proc = subprocess.Popen(base, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for port in self.ports.values():
                waitForPort(port, proc=self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; log:\n{self.log()}") from None
        return self

    def stop(self) -> None:
        """Stop nginx (SIGTERM: fast shutdown) and wait for it."""
        if self.proc is not None:
            stopProcess(self.proc, grace=10)

    def log(self) -> str:
        """The end of nginx's error log, for failure messages."""
        try:
            with open(os.path.join(self.work, "logs", "error.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""


def clusterNode(work: str, name: str, address: str, conninfo: str, secret: str,
                ports: dict[str, int], listeners: tuple[str, ...], authPort: int | None,
                more: str = "") -> ServerProcess:
    """A (not yet started) pymaild node of a test cluster: users in the PostgreSQL at
    C{conninfo}, named C{name} at C{address}, on the given ports, trusting nginx on
    127.0.0.1; with C{authPort}, it also answers nginx's auth_http there. C{more} is
    more configuration text.
    """
    data = os.path.join(work, name, "data")
    os.makedirs(data, exist_ok=True)
    config = os.path.join(work, name, "pymaild.toml")
    with open(config, "w") as f:
        f.write(f'[auth]\nbackend = "postgresql"\ndatabase = "{conninfo}"\n'
                f'[cluster]\nnode = "{name}"\naddress = "{address}"\n'
                f'auth_http_secret = "{secret}"\ntrusted_proxies = ["127.0.0.1"]\n' + more)
    extra = ["--config", config, "--lmtp", f"tcp:{ports['lmtp']}:interface={address}"]
    if authPort is not None:
        extra += ["--auth-http", f"tcp:{authPort}:interface=127.0.0.1"]
    server = ServerProcess(data, listeners=listeners, extra=extra, host=address)
    server.ports = {k: ports[k] for k in listeners}
    return server
