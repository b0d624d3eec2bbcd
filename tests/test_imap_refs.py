"""THREAD=REFS: REFERENCES without the gathering by subject, threads ordered by their
newest message (L{pymaild.imap.thread.refs})."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.test_imap_helpers import IMAPEnv, untagged


def _message(msgid: str, subject: str, hour: int, refs: str = "") -> bytes:
    """A small message sent at C{hour} o'clock."""
    head = (f"From: a@example.org\r\nSubject: {subject}\r\nMessage-ID: <{msgid}@x>\r\n"
            f"Date: Mon, 7 Dec 2026 {hour:02d}:00:00 +0000\r\n")
    if refs:
        head += f"References: <{refs}@x>\r\n"
    return (head + "\r\nbody\r\n").encode()


class RefsTests(TestCase):
    """REFS next to REFERENCES over the same messages."""

    def test_noSubjectGatheringNewestLast(self) -> None:
        """A reply by subject only stays a thread of its own, and the thread whose
        newest message is the latest comes last; REFERENCES gathers and orders by the
        first message."""
        env = IMAPEnv(self)
        env.deliver(_message("a", "Plans", 1), _message("b", "Lunch", 2),
                    _message("c", "Re: Plans", 9, refs="a"), _message("d", "Re: Lunch", 3))
        c = env.selected()
        self.assertIn(b" THREAD=REFS", untagged(c.ok("CAPABILITY"))[0])
        self.assertEqual(untagged(c.ok("THREAD REFS UTF-8 ALL")), [b"* THREAD (2)(4)(1 3)"])
        self.assertEqual(untagged(c.ok("THREAD REFERENCES UTF-8 ALL")),
                         [b"* THREAD (1 3)(2 4)"])
        self.assertEqual(untagged(c.ok("UID THREAD REFS UTF-8 SUBJECT Lunch")),
                         [b"* THREAD (2)(4)"])
