"""The import direction of DESIGN.md: tap -> smtp|pop3|imap -> auth -> store -> stdlib."""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "pymaild")

# What each room may import from pymaild (besides itself). Base modules are open to all
# rooms except that store imports nothing that pulls in Twisted.
BASE = {"errors", "address", "config", "threads", "wire", "limits", "quotarules", "files",
        "periodic", "sendbody"}
ALLOWED = {
    "store": {"errors", "address", "files"},
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
    "tuning": set(),
    "periodic": set(),
    "wire": set(),
    "sendbody": set(),
    "limits": set(),
    "tls": {"errors", "files"},
    "files": {"errors"},
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
    "worker": {"anvil", "logs", "tap", "workers"},
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


def moduleGraph() -> dict[str, set[str]]:
    """Every pymaild module and the pymaild modules it imports, at any level of the file
    (function-level imports included: they close a circle all the same).

    C{from P import name} counts as importing the module C{P.name} when that is a module,
    else C{P}; a module's own packages are left out (Python imports them first anyway).
    """
    modules: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(PKG):
        for fn in files:
            if fn.endswith(".py"):
                path = os.path.join(dirpath, fn)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                modules[rel.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in modules else node.module)
        graph[mod] = {d for d in deps
                      if d in modules and d != mod and not mod.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The import circles of C{graph}: its strongly connected components of more than
    one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        onStack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    onStack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in onStack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        onStack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


KNOWN_CYCLES = [frozenset({"pymaild.imap.account", "pymaild.imap.mailbox",
                           "pymaild.imap.notify", "pymaild.imap.search"})]
"""Circles to break (the house issue); none may be added, and one broken leaves here."""


class ImportCycleTests(SynchronousTestCase):
    """No import circle inside a room, beyond the known ones being broken."""

    def test_noNewCycles(self) -> None:
        """The module graph has exactly the known circles."""
        self.assertEqual(sorted(map(sorted, cycles(moduleGraph()))),
                         sorted(map(sorted, KNOWN_CYCLES)))

    def test_findsCycles(self) -> None:
        """The finder sees a circle of three, a self-contained pair, and no circle in a
        chain."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"},
                 "f": {"e"}, "g": {"d"}}
        self.assertEqual(sorted(map(sorted, cycles(graph))), [["a", "b", "c"], ["e", "f"]])
