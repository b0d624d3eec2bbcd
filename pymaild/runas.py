"""The user the server runs as, and a data directory that user owns and can write.

Started as root with ``twistd --uid/--gid`` (ports below 1024), twistd builds the
application as root and drops privileges only after the listeners are bound. Everything
``makeService`` creates under the data directory is made while acting as the server's
user (effective uid, gid and groups switched, then switched back for binding), so the
files belong to the user that will later write them, whatever order things happen in.

``claimDataDir`` runs as root before that: it creates a missing data directory owned by
the server's user and gives back to that user the few entries the server itself manages
(the directory, ``passwd``, ``queue/``, ``tls/``, ``mail/``) when root made them, for
instance by running ``pymaild-admin`` before the first start. It never follows a symbolic
link and never changes a file with other hard links, so a link planted in the data
directory cannot hand a system file to the mail user.

``checkWritable`` turns a data directory the user cannot write into one line naming the
directory and the user, at start, instead of a ``451`` or ``NO [SERVERBUG]`` later.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from pymaild.errors import ConfigError

log = Logger(namespace="pymaild")

# What the server manages directly under the data directory; queue/ and tls/ are small
# trees the server alone writes, so they are claimed whole.
TOP_LEVEL = ("passwd", "mail")
WHOLE_TREES = ("queue", "tls")


@dataclass(frozen=True)
class ServerUser:
    """The account the server runs as after twistd drops privileges."""

    uid: int
    gid: int
    name: str
    groups: tuple[int, ...]

    def describe(self) -> str:
        """The user as an admin reads it: C{mail (uid 8)}."""
        return f"{self.name} (uid {self.uid})"


def serverUser(twistdOptions: Mapping[str, Any] | None) -> ServerUser | None:
    """The user twistd will switch to, when started as root with C{--uid}.

    C{None} when the process is not root or stays root: then there is nothing to switch.
    The group is C{--gid} or the user's primary group, and the supplementary groups are
    the user's, as twistd's own switch sets them.
    """
    if os.geteuid() != 0 or not twistdOptions:
        return None
    uid = twistdOptions.get("uid")
    gid = twistdOptions.get("gid")
    if uid is None or uid == 0:
        return None
    try:
        entry = pwd.getpwuid(uid)
        name = entry.pw_name
        if gid is None:
            gid = entry.pw_gid
        groups = tuple(os.getgrouplist(name, gid))
    except KeyError:
        name = str(uid)
        if gid is None:
            raise ConfigError(f"--uid {uid}: no such user, and no --gid given") from None
        groups = (gid,)
    return ServerUser(uid=uid, gid=gid, name=name, groups=groups)


def currentUserDescription() -> str:
    """The process's own user, for error messages when no switch happens."""
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


@contextlib.contextmanager
def actingAs(user: ServerUser | None) -> Iterator[None]:
    """Run the body with the effective ids of C{user} (nothing to do for C{None}).

    The real uid stays root, so the original ids come back afterwards for binding.
    """
    if user is None:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups(list(user.groups))
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def _claim(path: str, user: ServerUser) -> None:
    """Give C{path} to C{user} when root owns it; links are never followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid == user.uid or st.st_uid != 0:
        return
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
        log.error("Not changing the owner of {path}: it has other hard links", path=path)
        return
    os.chown(path, user.uid, user.gid, follow_symlinks=False)
    log.info("Gave {path} to {user} (it belonged to root)", path=path, user=user.name)


def claimDataDir(data: str, user: ServerUser) -> None:
    """As root: make C{data} exist and belong to C{user}, with what the server manages.

    @raise ConfigError: the directory cannot be created.
    """
    try:
        if not os.path.lexists(data):
            os.makedirs(os.path.dirname(data) or ".", mode=0o755, exist_ok=True)
            os.mkdir(data, 0o700)
            os.chown(data, user.uid, user.gid, follow_symlinks=False)
            log.info("Made the data directory {data} for {user}", data=data, user=user.name)
            return
        _claim(data, user)
        for name in TOP_LEVEL:
            _claim(os.path.join(data, name), user)
        for name in WHOLE_TREES:
            top = os.path.join(data, name)
            _claim(top, user)
            if os.path.isdir(top) and not os.path.islink(top):
                for root, dirs, files in os.walk(top):
                    for entry in dirs + files:
                        _claim(os.path.join(root, entry), user)
    except OSError as e:
        raise ConfigError(
            f"data directory {data}: cannot prepare it for {user.describe()}: {e.strerror}"
        ) from None


def checkWritable(paths: list[str], who: str) -> None:
    """Check that the effective user can create files in each existing directory.

    A real probe file is made and removed (permission bits alone miss ACLs, read-only
    mounts and ownership by another user).

    @param who: the user as the error message should name it.
    @raise ConfigError: a directory is not writable, naming it and C{who}.
    """
    for path in paths:
        if not os.path.isdir(path):
            continue
        try:
            fd, probe = tempfile.mkstemp(prefix=".pymaild-probe-", dir=path)
        except OSError as e:
            raise ConfigError(
                f"data directory {path} is not writable by {who}: {e.strerror}"
                f" (fix with: chown -R {who.split(' ')[0]} {path})"
            ) from None
        os.close(fd)
        os.unlink(probe)
