"""The spam filter's state for C{pymaild-admin spam status} (a blocking command line).

It asks the configured rspamd directly (C{/ping} on the scanner, C{/stat} on the
controller) and reads the counts the running server last wrote
(L{pymaild.spam.counters.COUNTER_FILE} in the data directory). This runs in the admin
process, never in the server's reactor, so the stdlib's blocking C{urllib} is right here.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from pymaild.config import SpamConfig
from pymaild.spam.counters import COUNTER_FILE, readSnapshot
from pymaild.spam.rspamd import readPassword


def _get(url: str, password: str, timeout: float) -> bytes:
    """GET C{url}; the body (at most 1 MiB).

    @raise OSError: unreachable, or an HTTP error status (C{HTTPError} is an OSError).
    """
    request = urllib.request.Request(url, headers={"User-Agent": "pymaild-admin"})
    if password:
        request.add_header("Password", password)
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return bytes(r.read(1024 * 1024))


def _when(stamp: Any) -> str:
    """A time stamp from the counter file, for people."""
    if not isinstance(stamp, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def statusLines(spam: SpamConfig, data: str, timeout: float = 5.0) -> tuple[list[str], bool]:
    """The report, and whether everything that should answer did."""
    lines = [f"spam filter: {'enabled' if spam.enabled else 'disabled'} (spam.enabled)"]
    ok = True
    try:
        pong = _get(spam.url + "/ping", "", timeout).strip()
        lines.append(f"rspamd scanner {spam.url}: reachable"
                     + ("" if pong == b"pong" else f" (odd /ping reply {pong[:40]!r})"))
    except OSError as e:
        ok = False
        lines.append(f"rspamd scanner {spam.url}: unreachable: {e}")
    try:
        password = readPassword(spam.password_file)
        stat = json.loads(_get(spam.controller_url + "/stat", password, timeout))
        if not isinstance(stat, dict):
            raise ValueError("/stat is not a JSON object")
    except (OSError, ValueError) as e:
        ok = False
        lines.append(f"rspamd controller {spam.controller_url}: unreachable: {e}")
    else:
        lines.append(f"rspamd controller {spam.controller_url}: reachable, version"
                     f" {stat.get('version', '?')}, up {stat.get('uptime', '?')} s")
        lines.append(f"  scanned {stat.get('scanned', '?')}, learned"
                     f" {stat.get('learned', '?')}")
        actions = stat.get("actions")
        if isinstance(actions, dict):
            lines.append("  actions: " + ", ".join(f"{k} {v}" for k, v in actions.items()))
        for statfile in stat.get("statfiles") or []:
            if isinstance(statfile, dict):
                lines.append(f"  {statfile.get('symbol', '?')}: revision"
                             f" {statfile.get('revision', '?')}, {statfile.get('users', '?')}"
                             f" users ({statfile.get('type', '?')})")
    snapshot = readSnapshot(os.path.join(data, COUNTER_FILE))
    if snapshot is None:
        lines.append("pymaild counts: none yet (the server writes them while the filter"
                     " is enabled)")
    else:
        counts = snapshot.get("counts")
        text = ", ".join(f"{k} {v}" for k, v in counts.items()) \
            if isinstance(counts, dict) and counts else "nothing counted"
        lines.append(f"pymaild counts since {_when(snapshot.get('since'))} (written"
                     f" {_when(snapshot.get('written'))}): {text}")
    return lines, ok or not spam.enabled


__all__ = ["statusLines"]
