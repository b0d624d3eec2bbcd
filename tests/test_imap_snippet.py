"""The draft preview forms Dovecot offers as PREVIEW=FUZZY and SNIPPET=FUZZY:
C{PREVIEW (FUZZY)} and C{SNIPPET [(FUZZY)]}, answered in the C{(FUZZY "text")} form."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.test_imap_helpers import IMAPEnv, makeMessage, tagged, untagged


class FuzzyPreviewTests(TestCase):
    """The FUZZY forms beside RFC 8970's PREVIEW."""

    def setUp(self) -> None:
        """One message, selected."""
        self.env = IMAPEnv(self)
        self.env.deliver(makeMessage("one", b"Hello   there,\r\n  how are you?\r\n"))
        self.c = self.env.selected()

    def test_forms(self) -> None:
        """Each form gives the same text; the FUZZY ones in parentheses; both draft
        capabilities are advertised."""
        caps = untagged(self.c.ok("CAPABILITY"))[0] + b" "
        self.assertIn(b" PREVIEW=FUZZY ", caps)
        self.assertIn(b" SNIPPET=FUZZY ", caps)
        text = b'"Hello there, how are you?"'
        answers = {
            "PREVIEW": b"PREVIEW " + text,
            "PREVIEW (LAZY)": b"PREVIEW " + text,
            "PREVIEW (FUZZY)": b"PREVIEW (FUZZY " + text + b")",
            "PREVIEW (LAZY=FUZZY)": b"PREVIEW (FUZZY " + text + b")",
            "SNIPPET": b"SNIPPET (FUZZY " + text + b")",
            "SNIPPET (FUZZY)": b"SNIPPET (FUZZY " + text + b")",
            "SNIPPET (LAZY=FUZZY)": b"SNIPPET (FUZZY " + text + b")",
        }
        for item, answer in answers.items():
            out = self.c.ok(f"FETCH 1 ({item})")
            self.assertEqual(untagged(out), [b"* 1 FETCH (" + answer + b")"], item)

    def test_badModifiers(self) -> None:
        """Unknown or mixed modifiers are BAD (Dovecot drops the connection on
        C{PREVIEW (LAZY FUZZY)}); the session stays in sync."""
        for bad in ("PREVIEW (LAZY FUZZY)", "PREVIEW (X)", "SNIPPET (LAZY)",
                    "SNIPPET (FUZZY", "PREVIEW ()"):
            out = self.c.cmd(f"FETCH 1 ({bad})")
            self.assertIn(b" BAD ", tagged(out, self.c.lastTag), bad)
        self.c.ok("NOOP")
