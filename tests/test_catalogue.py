"""tests/README.rst maps catalogue rows to tests; this keeps the table from rotting.

Every row must name at least one test, no row may appear twice, and every referenced
``tests.<module>.<Class>.<test_method>`` must import and be a test method of a test
case class. Every row of the catalogue must be present.
"""

from __future__ import annotations

import importlib
import os
import re
import unittest

from twisted.trial.unittest import SynchronousTestCase

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.rst")

REQUIRED = (
    [f"I{n}" for n in range(1, 19)]
    + [f"P{n}" for n in range(1, 11)]
    + [f"A{n}" for n in range(1, 7)]
    + [f"S{n}" for n in range(1, 32)]
    + [f"F{n}" for n in range(1, 12)]
)
"""Every row of the catalogue: S1-S31, I1-I18, P1-P10, A1-A6 and F1-F11."""

_ROW_START = re.compile(r"^\s*\* - (\S+)\s*$")
_BORDER = re.compile(r"^=+( +=+)+\s*$")
_SIMPLE_ROW = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(\s|$)")
_TEST_REF = re.compile(r"(?<![\w.])tests(?:\.[A-Za-z0-9_]+)+")


def parseTables(text: str) -> list[list[tuple[str, list[str]]]]:
    """Per table, the (row id, referenced test ids) of its entries, header rows excluded.

    Two table forms are read. In a C{list-table} an entry starts with a line
    C{* - <id>}; in a simple table (C{====  ====} borders) a body line starting in the
    first column starts an entry and indented lines continue it. Every
    C{tests.<module>.<Class>.<method>} up to the next entry belongs to the entry.
    """
    tables: list[list[tuple[str, list[str]]]] = []
    rows: list[tuple[str, list[str]]] = []
    current: tuple[str, list[str]] | None = None
    mode = ""  # "list", "simple-head", "simple" or "" (prose)
    for line in text.splitlines():
        if line.startswith(".. list-table::"):
            mode, current, rows = "list", None, []
            tables.append(rows)
            continue
        if _BORDER.match(line):
            mode = {"simple-head": "simple", "simple": ""}.get(mode, "simple-head")
            if mode == "simple-head":
                rows = []
                tables.append(rows)
            current = None
            continue
        if mode == "list":
            if line and not line.startswith(" "):
                mode, current = "", None
                continue
            m = _ROW_START.match(line)
            if m:
                current = (m.group(1), [])
                if current[0] != "row":
                    rows.append(current)
                continue
        elif mode == "simple":
            m = _SIMPLE_ROW.match(line)
            if m:
                current = (m.group(1), [])
                rows.append(current)
        if current is not None and mode in ("list", "simple"):
            current[1].extend(_TEST_REF.findall(line))
    return tables


def parseTable(text: str) -> list[tuple[str, list[str]]]:
    """The entries of every table of C{text}, in order (see L{parseTables})."""
    return [row for table in parseTables(text) for row in table]


def resolve(ref: str) -> object:
    """The test method named by C{tests.<module>.<Class>.<method>}.

    @raise LookupError: with the reason, when it does not exist or is not a test.
    """
    parts = ref.split(".")
    if len(parts) != 4:
        raise LookupError(f"{ref}: expected tests.<module>.<Class>.<test_method>")
    moduleName, className, methodName = ".".join(parts[:2]), parts[2], parts[3]
    try:
        module = importlib.import_module(moduleName)
    except ImportError as e:
        raise LookupError(f"{ref}: cannot import {moduleName}: {e}") from None
    cls = getattr(module, className, None)
    if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
        raise LookupError(f"{ref}: {className} is not a test case class of {moduleName}")
    if cls.__module__ != moduleName:
        raise LookupError(f"{ref}: {className} is imported into {moduleName}, not defined")
    method = getattr(cls, methodName, None)
    if not (methodName.startswith("test") and callable(method)):
        raise LookupError(f"{ref}: {methodName} is not a test method of {className}")
    return method


class CatalogueTableTests(SynchronousTestCase):
    """tests/README.rst is complete and every test it names exists."""

    def setUp(self) -> None:
        """Read and parse the tables."""
        with open(README, encoding="utf-8") as f:
            self.tables = parseTables(f.read())
        self.rows = [row for table in self.tables for row in table]

    def test_requiredRowsPresentOnce(self) -> None:
        """Every promised row is in the file, no row twice in one table (a fault row
        may have one table per room), ids look like S1/I6/F2."""
        for table in self.tables:
            ids = [row for row, _ in table]
            self.assertEqual(sorted(set(ids)), sorted(ids), "a row appears twice")
        ids = [row for row, _ in self.rows]
        for row in ids:
            self.assertRegex(row, r"^[A-Z][0-9]+$")
        missing = [row for row in REQUIRED if row not in ids]
        self.assertEqual(missing, [])

    def test_everyRowNamesTests(self) -> None:
        """Each row references at least one test."""
        empty = [row for row, refs in self.rows if not refs]
        self.assertEqual(empty, [])

    def test_everyReferenceExists(self) -> None:
        """Each referenced test imports and is a test method of a TestCase class."""
        problems = []
        for row, refs in self.rows:
            for ref in refs:
                try:
                    resolve(ref)
                except LookupError as e:
                    problems.append(f"{row}: {e}")
        self.assertEqual(problems, [])

    def test_checkerCatchesRot(self) -> None:
        """The checker itself rejects a missing method, class, module and a non-test."""
        for ref in ("tests.test_catalogue.CatalogueTableTests.test_noSuchThing",
                    "tests.test_catalogue.NoSuchClass.test_x",
                    "tests.test_no_such_module.X.test_x",
                    "tests.test_catalogue.CatalogueTableTests.setUp",
                    "tests.test_catalogue.parseTable"):
            self.assertRaises(LookupError, resolve, ref)
        rows = parseTable(".. list-table:: t\n\n   * - row\n     - b\n     - t\n"
                          "   * - Z1\n     - b\n     - ``tests.a.B.test_c``\n"
                          "       ``tests.d.E.test_f``\n\nprose ``tests.x.Y.test_z``\n")
        self.assertEqual(rows, [("Z1", ["tests.a.B.test_c", "tests.d.E.test_f"])])

    def test_simpleTablesReadToo(self) -> None:
        """Rows in the simple-table form (as the SMTP rows were first written) count:
        an id in the first column starts a row, indented lines continue it."""
        rows = parseTable("====  =====  ====\nrow   what   test\n====  =====  ====\n"
                          "S1    a      tests.a.B.test_c\n"
                          "                tests.d.E.test_f\n"
                          "S2    b      tests.g.H.test_i\n"
                          "====  =====  ====\n\nprose tests.x.Y.test_z\n")
        self.assertEqual(rows, [("S1", ["tests.a.B.test_c", "tests.d.E.test_f"]),
                                ("S2", ["tests.g.H.test_i"])])
