"""Moving a user's mailbox to another node of a cluster (``pymaild-admin user move``).

L{moveMailbox} works on the PostgreSQL directory and on two data directories the
command can reach (the source node's and the target node's: local paths, or mounts):

1. The user is marked C{moving}: from then on every node queues mail for the user
   (the queue's router defers it, C{4.2.1}) instead of delivering it.
2. After C{settle} seconds (deliveries that had looked the owner up before the mark
   finish; at least the nodes' directory cache time plus one second, so every node has
   seen the mark), the user's home directory (C{<data>/mail/<domain>/<local>/}: the Maildir
   with its C{dovecot-uidlist}, keywords, subscriptions, folders, and the Sieve scripts
   beside it) is copied to the target, file by file with their times, into a temporary
   directory that is renamed into place. The uidlist comes along, so UIDs and
   UIDVALIDITY stay what the clients know.
3. A second pass copies message files that appeared in the source meanwhile (they get
   new UIDs on the target, after the known ones).
4. The owner becomes the target node, the mark is cleared (queued mail now goes to the
   target over LMTP), and the source copy is renamed C{<local>.moved-<time>}, so the old
   node no longer serves it.

Blocking throughout (a command-line tool).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

from pymaild.address import canonical, splitAddress
from pymaild.errors import PymaildError


class MoveError(PymaildError):
    """The mailbox cannot be moved (the target has one already, the source is missing)."""


def homeDirectory(data: str, address: str) -> str:
    """C{<data>/mail/<domain>/<local>}: the user's home (its Maildir is inside)."""
    local, domain = splitAddress(canonical(address))
    return os.path.join(data, "mail", domain, local)


def _copyMissing(source: str, target: str) -> int:
    """Copy files under C{source} that C{target} lacks (by relative path, message
    files matched by their base name before the flags); the number copied."""
    copied = 0
    for dirpath, _dirs, files in os.walk(source):
        rel = os.path.relpath(dirpath, source)
        into = os.path.join(target, rel)
        if os.path.basename(dirpath) not in ("new", "cur"):
            continue
        os.makedirs(into, exist_ok=True)
        known = set()
        for sub in ("new", "cur"):
            sibling = os.path.join(os.path.dirname(into), sub)
            if os.path.isdir(sibling):
                known |= {n.partition(":")[0] for n in os.listdir(sibling)}
        for name in files:
            if name.partition(":")[0] in known:
                continue
            shutil.copy2(os.path.join(dirpath, name), os.path.join(into, name))
            copied += 1
    return copied


def moveMailbox(users: object, address: str, node: str, source: str, target: str,
                settle: float = 5.0, sleep: Callable[[float], None] = time.sleep,
                now: Callable[[], float] = time.time,
                cacheTTL: float = 0.0) -> tuple[str, int]:
    """Move C{address}'s mailbox from data directory C{source} to C{target} and make
    C{node} its owner (see the module docstring).

    @param cacheTTL: how long the nodes keep directory answers
        (C{auth.database_cache_ttl}): the copy starts no sooner than one second after
        that, so every node has seen the mark (whatever C{settle} says).

    @param users: a L{pymaild.auth.pgusers.PostgresUsers}.
    @return: C{(address, messages copied in the second pass)}.
    @raise MoveError: the source has no mailbox, or the target has one already.
    @raise pymaild.auth.pgusers.NoSuchNode: C{node} is unknown (checked first).
    """
    key = canonical(address)
    users.node(node)  # type: ignore[attr-defined]
    src = homeDirectory(source, key)
    dst = homeDirectory(target, key)
    if os.path.realpath(src) == os.path.realpath(dst):
        raise MoveError(f"source and target are the same directory: {src}")
    if not os.path.isdir(os.path.join(src, "Maildir")):
        raise MoveError(f"no mailbox of {key} under {src}")
    if os.path.exists(dst) and os.listdir(dst):
        raise MoveError(f"the target already has a mailbox of {key}: {dst}")
    users.setMoving(key, True)  # type: ignore[attr-defined]
    try:
        sleep(max(settle, cacheTTL + 1.0 if cacheTTL > 0 else 0.0))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        staging = f"{dst}.moving-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(src, staging, symlinks=True, ignore=shutil.ignore_patterns(
            "*.lock", "tmp"))
        for dirpath, dirs, _files in os.walk(staging):
            if "cur" in dirs and not os.path.isdir(os.path.join(dirpath, "tmp")):
                os.mkdir(os.path.join(dirpath, "tmp"), 0o700)
        if os.path.exists(dst):
            os.rmdir(dst)  # empty (checked above)
        os.rename(staging, dst)
        late = _copyMissing(src, dst)
        users.setOwner(key, node)  # type: ignore[attr-defined]
    finally:
        users.setMoving(key, False)  # type: ignore[attr-defined]
    os.rename(src, f"{src}.moved-{int(now())}")
    return key, late
