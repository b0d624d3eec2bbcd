"""The import direction of DESIGN.md: tap -> smtp|pop3|imap -> auth -> store -> stdlib."""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "pymaild")

# What each room may import from pymaild (besides itself). Base modules are open to all
# rooms except that store imports nothing that pulls in Twisted.
BASE = {"errors", "address", "config", "threads", "wire", "limits", "quotarules"}
ALLOWED = {
    "store": {"errors", "address"},
    "auth": BASE | {"store"},
    "smtp": BASE | {"auth", "store", "tls"},
    "pop3": BASE | {"auth", "store"},
    "imap": BASE | {"auth", "store"},
    "spam": BASE | {"smtp", "store"},
    "mailauth": BASE | {"smtp"},
    "admin": BASE | {"auth", "store", "smtp", "status", "spam", "mailauth"},
    "sieve": BASE | {"auth", "store", "smtp", "tls"},
    "tap": None,
    "errors": set(),
    "address": {"errors"},
    "config": {"errors", "address", "quotarules"},
    "quotarules": set(),
    "threads": set(),
    "wire": set(),
    "limits": set(),
    "tls": {"errors"},
    "runas": {"errors"},
    "listeners": {"errors"},
    "logs": set(),
    "metrics": set(),
    "shutdown": set(),
    "web": BASE | {"auth", "store", "smtp", "tls", "certificates", "mailauth", "sieve"},
    "cluster": BASE | {"auth", "web"},
    "certificates": {"errors", "tls"},
    "status": {"errors", "tls", "certificates", "auth", "smtp", "web", "config"},
    "reload": {"config", "errors"},
    "anvil": set(),
    "workers": {"anvil", "metrics"},
    "worker": {"anvil", "logs", "tap"},
    "__init__": set(),
}


def pymaildImports(path: str) -> set[str]:
    """The pymaild rooms a source file imports (first component after 'pymaild.')."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    rooms = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "pymaild" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


class ImportDirectionTests(SynchronousTestCase):
    """Each room imports only the rooms below it."""

    def test_direction(self) -> None:
        """No module imports a room above its own."""
        problems = []
        for dirpath, _dirs, files in os.walk(PKG):
            for fn in files:
                if not fn.endswith(".py"):
                    continue
                path = os.path.join(dirpath, fn)
                rel = os.path.relpath(path, PKG)
                room = rel.split(os.sep)[0].removesuffix(".py")
                allowed = ALLOWED.get(room, set())
                if allowed is None:
                    continue
                bad = pymaildImports(path) - allowed - {room}
                bad = {b for b in bad if b in ALLOWED}
                if bad:
                    problems.append(f"{rel} imports {sorted(bad)}")
        self.assertEqual(problems, [])

    def test_storeHasNoTwisted(self) -> None:
        """The store is plain Python over os: it never imports Twisted."""
        for dirpath, _dirs, files in os.walk(os.path.join(PKG, "store")):
            for fn in files:
                if fn.endswith(".py"):
                    with open(os.path.join(dirpath, fn), encoding="utf-8") as f:
                        tree = ast.parse(f.read())
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Import):
                            mods = [a.name for a in node.names]
                        elif isinstance(node, ast.ImportFrom):
                            mods = [node.module or ""]
                        else:
                            continue
                        for m in mods:
                            self.assertFalse(m.startswith("twisted"), f"{fn} imports {m}")

    def test_detectsViolation(self) -> None:
        """The checker itself notices an upward import."""
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write("from pymaild.imap import server\nimport pymaild.tap\n")
        self.assertEqual(pymaildImports(path), {"imap", "tap"})
