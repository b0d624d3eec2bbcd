"""Users' Sieve scripts on disk, stored as Pigeonhole stores them (blocking, pure Python).

A user's home is the directory above their Maildir (C{<data>/mail/<domain>/<local>/}).
Scripts live in C{<home>/sieve/NAME.sieve}; the active one is the symbolic link
C{<home>/.dovecot.sieve} → C{sieve/NAME.sieve}, which is Pigeonhole's default
(C{sieve = file:~/sieve;active=~/.dovecot.sieve}), so Dovecot with a home of
C{<data>/mail/%d/%n} runs the same scripts.

Scripts are replaced atomically (written, fsynced, renamed over); activation replaces the
link atomically too. Compiled scripts are cached per process by (path, inode, size,
mtime) so a delivery compiles a script once, not per message.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

from pymaild.errors import StoreError
from pymaild.files import fsyncDir, writeFileAtomic
from pymaild.sieve.checker import Limits, Script, compileScript

SCRIPT_DIR = "sieve"
ACTIVE_LINK = ".dovecot.sieve"
SUFFIX = ".sieve"
#: Pigeonhole's limit on a script name's length.
MAX_NAME = 255


class ScriptError(StoreError):
    """A script operation that cannot be done (the message says why)."""


class NoSuchScript(ScriptError):
    """The named script does not exist."""


class ActiveScript(ScriptError):
    """The active script cannot be deleted."""


def validName(name: str) -> bool:
    """Whether C{name} can name a script (RFC 5804 section 1.6, Pigeonhole's rules: no
    C{/}, no control characters, not empty, not starting with a dot)."""
    if not name or len(name.encode("utf-8")) > MAX_NAME or name.startswith("."):
        return False
    return not any(c == "/" or ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name)


class ScriptStorage:
    """The scripts of one user.

    @param home: the user's home directory (the parent of their Maildir).
    @param globalDir: the directory of the global scripts C{include :global} names
        (Pigeonhole's C{sieve_global}), or "" for none.
    """

    def __init__(self, home: str, globalDir: str = "") -> None:
        self.home = home
        self.globalDir = globalDir
        self.dir = os.path.join(home, SCRIPT_DIR)
        self.link = os.path.join(home, ACTIVE_LINK)

    def path(self, name: str) -> str:
        """The file of script C{name}.

        @raise ScriptError: the name is not valid.
        """
        if not validName(name):
            raise ScriptError(f"invalid script name {name!r}")
        return os.path.join(self.dir, name + SUFFIX)

    def names(self) -> list[str]:
        """The user's scripts' names, sorted."""
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(e[: -len(SUFFIX)] for e in entries
                      if e.endswith(SUFFIX) and validName(e[: -len(SUFFIX)]))

    def active(self) -> str | None:
        """The active script's name, or None (no link, or a link elsewhere)."""
        try:
            target = os.readlink(self.link)
        except (FileNotFoundError, OSError):
            return None
        head, tail = os.path.split(target)
        if os.path.normpath(os.path.join(self.home, head)) != os.path.normpath(self.dir):
            return None
        if not tail.endswith(SUFFIX):
            return None
        name = tail[: -len(SUFFIX)]
        return name if validName(name) and os.path.exists(self.path(name)) else None

    def read(self, name: str) -> bytes:
        """The script C{name}.

        @raise NoSuchScript: there is none.
        """
        try:
            with open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NoSuchScript(f"no script {name!r}") from None

    def size(self) -> int:
        """The bytes all scripts take."""
        total = 0
        for name in self.names():
            try:
                total += os.stat(self.path(name)).st_size
            except FileNotFoundError:
                pass
        return total

    def write(self, name: str, data: bytes) -> None:
        """Store script C{name} (replacing one of that name), durably."""
        path = self.path(name)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        writeFileAtomic(path, data)

    def delete(self, name: str) -> None:
        """Remove script C{name}.

        @raise NoSuchScript: there is none.
        @raise ActiveScript: it is the active script.
        """
        if self.active() == name:
            raise ActiveScript(f"script {name!r} is active")
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            raise NoSuchScript(f"no script {name!r}") from None
        fsyncDir(self.dir)

    def rename(self, old: str, new: str) -> None:
        """Rename a script (the active one stays active under its new name).

        @raise NoSuchScript: C{old} does not exist.
        @raise ScriptError: C{new} exists already.
        """
        src, dst = self.path(old), self.path(new)
        if not os.path.exists(src):
            raise NoSuchScript(f"no script {old!r}")
        if os.path.exists(dst):
            raise ScriptError(f"script {new!r} exists")
        wasActive = self.active() == old
        os.link(src, dst)
        if wasActive:
            self.activate(new)
        os.unlink(src)
        fsyncDir(self.dir)

    def activate(self, name: str | None) -> None:
        """Make C{name} the active script; None (or C{""}) deactivates.

        @raise NoSuchScript: there is no such script.
        """
        if not name:
            try:
                os.unlink(self.link)
            except FileNotFoundError:
                pass
            fsyncDir(self.home)
            return
        if not os.path.exists(self.path(name)):
            raise NoSuchScript(f"no script {name!r}")
        tmp = f"{self.link}.tmp.{os.getpid()}.{threading.get_ident()}"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(os.path.join(SCRIPT_DIR, name + SUFFIX), tmp)
        os.rename(tmp, self.link)
        fsyncDir(self.home)

    def globalPath(self, name: str) -> str | None:
        """The file of global script C{name}, or None (no global store, bad name)."""
        if not self.globalDir or not validName(name):
            return None
        return os.path.join(self.globalDir, name + SUFFIX)

    def globalNames(self) -> list[str]:
        """The global scripts' names, sorted."""
        if not self.globalDir:
            return []
        try:
            entries = os.listdir(self.globalDir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e[: -len(SUFFIX)] for e in entries
                      if e.endswith(SUFFIX) and validName(e[: -len(SUFFIX)]))

    def loader(self, where: str, name: str) -> bytes | None:
        """An include loader: the user's scripts for C{:personal}, the global store's
        for C{:global}; None when there is no such script."""
        if where == "global":
            path = self.globalPath(name)
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except (FileNotFoundError, IsADirectoryError):
                return None
        if where != "personal" or not validName(name):
            return None
        try:
            return self.read(name)
        except NoSuchScript:
            return None


class CompiledCache:
    """Compiled active scripts by file identity, shared by deliveries (thread-safe).

    @param limits: the limits scripts are compiled with.
    @param size: how many compiled scripts to keep.
    """

    def __init__(self, limits: Limits, size: int = 256) -> None:
        self.limits = limits
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Any, Script]] = OrderedDict()

    def activeScript(self, storage: ScriptStorage) -> Script | None:
        """The user's active script, compiled (None when there is none).

        Included scripts are checked for changes too: the cache key covers every file.

        @raise pymaild.sieve.grammar.SieveSyntaxError: it does not compile (an active
            script uploaded by ManageSieve always did; one written by hand may not).
        """
        name = storage.active()
        if name is None:
            return None
        path = storage.path(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, self._includeStamps(storage))
        with self._lock:
            hit = self._entries.get(path)
            if hit is not None and hit[0] == stamp:
                self._entries.move_to_end(path)
                return hit[1]
        if st.st_size > self.limits.maxScriptSize:
            from pymaild.sieve.grammar import SieveSyntaxError

            raise SieveSyntaxError(1, f"script is larger than {self.limits.maxScriptSize} "
                                      "bytes")
        script = compileScript(storage.read(name), name, storage.loader, self.limits)
        with self._lock:
            self._entries[path] = (stamp, script)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return script

    def _includeStamps(self, storage: ScriptStorage) -> tuple[Any, ...]:
        """The identity of every script in the user's directory and the global store
        (includes may change)."""
        out = []
        paths = [storage.path(n) for n in storage.names()]
        paths += [p for p in map(storage.globalPath, storage.globalNames()) if p]
        for path in paths:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)


__all__ = ["ACTIVE_LINK", "ActiveScript", "CompiledCache", "NoSuchScript", "ScriptError",
           "ScriptStorage", "validName"]
