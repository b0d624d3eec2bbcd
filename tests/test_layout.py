"""README's "Layout of the code" names every module and package of C{pymaild/}, so the
map a newcomer reads first matches the tree (a new room is drawn when it lands)."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layoutBlock(text: str) -> str:
    """The literal block of README's "Layout of the code" section."""
    start = text.index("Layout of the code\n")
    end = text.index("\n\n", text.index("::\n\n", start) + 4)
    while text[end + 2:end + 6] == "    ":  # the block goes on after a blank line
        end = text.index("\n\n", end + 2)
    return text[start:end]


def namedIn(block: str) -> set[str]:
    """The C{pymaild/...} paths a layout block names (packages with their slash)."""
    return set(re.findall(r"pymaild/[\w/]*\w(?:\.py|/)?", block))


def rooms(root: str) -> list[str]:
    """The top-level modules (but C{__init__.py}) and packages of C{pymaild/}."""
    base = os.path.join(root, "pymaild")
    out = []
    for name in sorted(os.listdir(base)):
        path = os.path.join(base, name)
        if name.endswith(".py") and name != "__init__.py":
            out.append(f"pymaild/{name}")
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            out.append(f"pymaild/{name}/")
    return out


class LayoutTests(SynchronousTestCase):
    """The drawn layout and the tree agree."""

    def test_everyRoomIsDrawn(self) -> None:
        """Each top-level module and package of C{pymaild/} has a line in the layout."""
        with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
            named = namedIn(layoutBlock(f.read()))
        self.assertEqual([r for r in rooms(ROOT) if r not in named], [])

    def test_everyDrawnPathExists(self) -> None:
        """Each path the layout names is in the tree (a removed or renamed room leaves
        the drawing too)."""
        with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
            named = namedIn(layoutBlock(f.read()))
        self.assertEqual(sorted(p for p in named
                                if not os.path.exists(os.path.join(ROOT, p))), [])

    def test_findsAMissingRoom(self) -> None:
        """A block without a module's line is caught (the check can fail)."""
        block = "pymaild/tap.py  the tap\npymaild/store/  the store\n"
        self.assertIn("pymaild/tap.py", namedIn(block))
        self.assertIn("pymaild/store/", namedIn(block))
        self.assertNotIn("pymaild/limits.py", namedIn(block))
