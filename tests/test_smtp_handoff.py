"""The placement field a cluster's MX node hands on with a copy (L{pymaild.smtp.handoff}).

The field's encoding, its removal from a header section (folded, several, none), and
L{HandoffCheck}: honoured only on LMTP from a cluster node, removed everywhere.
The whole path between real nodes is in L{tests.test_cluster_handoff}.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from pymaild.smtp.checks import Envelope, Placement
from pymaild.smtp.handoff import FIELD, HandoffCheck, carried, decode, encode, take

BODY = b"From: x@remote.example\r\nSubject: hi\r\n\r\nbody\r\nX-Pymaild-Placement: no\r\n"


def envelope(role: str = "lmtp", fromNode: bool = True) -> Envelope:
    """An envelope for alice and bob, received with C{role}."""
    return Envelope(id="Q1", sender="x@remote.example",
                    local={"alice@example.org": "alice@example.org",
                           "bob@example.org": "bob@example.org"},
                    remote=[], role=role, client="127.0.0.1", fromNode=fromNode)


class CodecTests(TestCase):
    """Placements to a header line and back."""

    def test_roundTrip(self) -> None:
        """Folders, flags and C{create} survive; the default placement needs no field."""
        placements = [Placement("Junk", create=True), Placement("Archive/2026", ("\\Seen",))]
        line = encode(placements)
        assert line is not None
        self.assertTrue(line.startswith(FIELD + b": ") and line.endswith(b"\r\n"))
        self.assertEqual(decode(line.split(b":", 1)[1].strip()), placements)
        self.assertIsNone(encode([Placement()]))
        self.assertIsNone(encode([Placement("x" * 1000)]))
        self.assertTrue(line.isascii())
        self.assertEqual(decode(encode([Placement("Café")]).split(b": ", 1)[1]),
                         [Placement("Café")])

    def test_garbage(self) -> None:
        """Anything but a list of well-formed copies is no placement."""
        for value in (b"", b"Junk", b"{}", b"[]", b'[{"folder": ""}]', b'[{"folder": 3}]',
                      b'[{"folder": "A", "flags": [1]}]', b'[{"folder": "A", "create": 2}]',
                      b"[" + b'{"folder": "A"},' * 20 + b'{"folder": "A"}]', b"[" * 5000):
            self.assertIsNone(decode(value), value)

    def test_take(self) -> None:
        """Every field in the header section goes, folded lines with it; the body and
        the other fields stay as they were."""
        message = (b"Received: x\r\n\ty\r\n" + FIELD + b': [{"folder":\r\n "Junk"}]\r\n'
                   b"x-pymaild-placement : again\r\n" + BODY)
        stripped, values = take(message)
        self.assertEqual(stripped, b"Received: x\r\n\ty\r\n" + BODY)
        self.assertEqual(values, [b'[{"folder": "Junk"}]', b"again"])
        self.assertEqual(take(BODY), (BODY, []))
        self.assertEqual(carried(message), (stripped, None))  # two fields: none
        one = FIELD + b': [{"folder":"Junk"}]\r\n' + BODY
        self.assertEqual(carried(one), (BODY, [Placement("Junk")]))


class CheckTests(TestCase):
    """L{HandoffCheck} trusts cluster nodes over LMTP only."""

    def checked(self, env: Envelope, message: bytes) -> bytes:
        """Run the check (no Junk maker: the folder is taken as it is)."""
        result = HandoffCheck().check(env, message)
        if isinstance(result, defer.Deferred):
            return self.successResultOf(result)
        return result

    def test_fromNode(self) -> None:
        """From a node over LMTP: every local account's copy goes where it says."""
        env = envelope()
        out = self.checked(env, FIELD + b': [{"folder":"Junk","create":true}]\r\n' + BODY)
        self.assertEqual(out, BODY)
        self.assertEqual(env.placements, {a: [Placement("Junk", create=True)]
                                          for a in env.local})

    def test_notTrusted(self) -> None:
        """From an LMTP client that is no node, or on the MX: removed, not honoured."""
        for env in (envelope(fromNode=False), envelope("mx", False), envelope("mx", True)):
            self.assertEqual(self.checked(env, FIELD + b': [{"folder":"Junk"}]\r\n' + BODY),
                             BODY)
            self.assertEqual(env.placements, {})

    def test_junkMade(self) -> None:
        """A copy for Junk goes where the Junk maker says (INBOX when it cannot)."""
        made = []

        def ensureJunk(account: str) -> defer.Deferred[str]:
            made.append(account)
            return defer.succeed("INBOX" if account.startswith("bob") else "Junk")

        env = envelope()
        d = HandoffCheck(ensureJunk).check(env, FIELD + b': [{"folder":"Junk"}]\r\n' + BODY)
        self.assertEqual(self.successResultOf(d), BODY)
        self.assertEqual(sorted(made), sorted(env.local))
        self.assertEqual(env.placements, {"alice@example.org": [Placement("Junk")],
                                          "bob@example.org": [Placement("INBOX")]})
