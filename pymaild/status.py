"""``pymaild-admin status``: what the server is doing, from its data and its metrics.

Read from the data directory and the configuration: the host name and domains, every
listener's endpoints (the cluster's C{lmtp} and C{auth_http} too), the number of users
(in the passwd file or the PostgreSQL directory), the outbound queue (messages, held ones,
the oldest), and the certificate the server uses (which file, its names, expiry and
fingerprint). Then, when the configuration has a metrics listener, the running server
is asked over it (loopback HTTP, two seconds at most): whether it answers, and its open
sessions per listener and messages received since it started. Nothing here changes
anything.
"""

from __future__ import annotations

import datetime
import os
import time
import urllib.error
import urllib.request
from typing import IO, Any

from pymaild import certificates, tls
from pymaild.auth.passwd import PasswdFile
from pymaild.smtp.queuespool import HELD, Spool
from pymaild.web.autoconfig import endpointPort

LISTENERS = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "managesieve",
             "lmtp", "auth_http", "http", "https", "metrics")


def certificateInUse(cfg: Any) -> str:
    """The certificate file the server serves: ACME's once it has one, else the
    configured one, else the self-signed one."""
    acme = os.path.join(cfg.data, "tls", certificates.CERT_FILE)
    if cfg.acme.enabled and os.path.exists(acme):
        return acme
    return cfg.tls.cert or os.path.join(cfg.data, "tls", "cert.pem")


def queueSummary(path: str, now: float) -> str:
    """C{N message(s), H held, oldest AGE} for the queue at C{path}."""
    envelopes, _problems = Spool(path).envelopes()
    if not envelopes:
        return "empty"
    held = sum(1 for e in envelopes if any(r.state == HELD for r in e.recipients))
    oldest = now - min(e.arrival for e in envelopes)
    return f"{len(envelopes)} message(s), {held} held, oldest {_age(oldest)}"


def _age(seconds: float) -> str:
    """A rough age: C{3 d 4 h}, C{2 h 5 min}, C{40 s}."""
    s = int(max(0, seconds))
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min"
    return f"{s} s"


def metricsURL(cfg: Any) -> str | None:
    """The URL of the server's C{/metrics}, from C{listen.metrics}, or None."""
    for desc in cfg.listen.metrics:
        port = endpointPort(desc)
        if port is None:
            continue
        host = "127.0.0.1"
        for part in desc.split(":")[2:]:
            if part.startswith("interface="):
                iface = part[len("interface="):].replace("\\:", ":")
                if iface not in ("", "0.0.0.0", "::"):
                    host = f"[{iface}]" if ":" in iface else iface
        return f"http://{host}:{port}/metrics"
    return None


def askServer(url: str, timeout: float = 2.0) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                      float] | str:
    """The samples the running server reports, or why it could not be asked."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read(4 << 20).decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as e:
        return f"not answering at {url} ({getattr(e, 'reason', e)})"
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def report(cfg: Any, out: IO[str], now: float | None = None, users: Any = None) -> None:
    """Print the status (see the module docstring).

    @param users: the user directory to count (the passwd file of C{cfg} by default; the
        admin command passes the configured one, PostgreSQL included).
    """
    now = time.time() if now is None else now
    out.write(f"host name     {cfg.hostname}\n")
    out.write(f"domains       {', '.join(cfg.domains)}\n")
    out.write(f"data          {cfg.data}\n")
    for name in LISTENERS:
        eps = getattr(cfg.listen, name)
        out.write(f"listen {name:<11}{', '.join(eps) if eps else 'off'}\n")
    source = users if users is not None else PasswdFile(cfg.auth.passwd)
    try:
        count: Any = len(source.users())
    except OSError as e:
        count = f"unreadable ({e.strerror or e})"
    out.write(f"users         {count}\n")
    out.write(f"queue         {queueSummary(os.path.join(cfg.data, 'queue'), now)}\n")
    path = certificateInUse(cfg)
    state = certificates.certificateState(path)
    if state is None:
        out.write(f"certificate   {path}: none yet\n")
    else:
        names, notAfter = state
        left = notAfter - datetime.datetime.fromtimestamp(now, datetime.UTC)
        out.write(f"certificate   {path}\n")
        out.write(f"              names {', '.join(sorted(names)) or '-'}\n")
        out.write(f"              expires {notAfter:%Y-%m-%d %H:%M} UTC"
                  f" ({left.days} days left){' (ACME)' if cfg.acme.enabled else ''}\n")
        out.write(f"              SHA-256 {tls.fingerprint(path)}\n")
    url = metricsURL(cfg)
    if url is None:
        out.write("server        unknown (no metrics listener to ask)\n")
        return
    samples = askServer(url)
    if isinstance(samples, str):
        out.write(f"server        {samples}\n")
        return
    out.write(f"server        running (answered at {url})\n")
    sessions: dict[str, float] = {}
    for (n, labels), v in samples.items():  # summed over worker processes, if labelled
        if n == "pymaild_sessions_open":
            listener = dict(labels).get("listener", "")
            sessions[listener] = sessions.get(listener, 0.0) + v
    listed = ", ".join(f"{k} {int(v)}" for k, v in sorted(sessions.items())) or "none"
    out.write(f"sessions      {listed}\n")
    received = sum(v for (n, _), v in samples.items() if n == "pymaild_messages_received_total")
    out.write(f"received      {int(received)} message(s) since the server started\n")


__all__ = ["askServer", "certificateInUse", "metricsURL", "queueSummary", "report"]
