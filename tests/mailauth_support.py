"""Helpers for the mail authentication tests: the independent verifier, test messages.

The independent verifier is the C{mailauth} package for Node.js (C{tests/js}, installed
there by C{npm install}), run as C{tests/js/verify.js} against the tests' DNS server: it
shares no code with dkimpy, which pymaild signs and verifies with, and checks DKIM (RSA
and Ed25519), SPF, DMARC and ARC.
"""

from __future__ import annotations

import json
import os
import shutil

from twisted.internet import defer, protocol

from tests.support import missing

HERE = os.path.dirname(os.path.abspath(__file__))
JS = os.path.join(HERE, "js")
VERIFIER = os.path.join(JS, "verify.js")


def requireVerifier() -> str:
    """The node interpreter, once the mailauth package is installed in C{tests/js}.

    @raise SkipTest: it is missing (outside CI; under CI a failure).
    """
    node = shutil.which("node")
    if node is None:
        missing("node", "apt-get install nodejs npm")
    assert node is not None
    if not os.path.isdir(os.path.join(JS, "node_modules", "mailauth")):
        missing("mailauth (Node.js)", "npm install --prefix tests/js")
    return node


@defer.inlineCallbacks
def independentVerify(node: str, message: bytes, dnsPort: int, ip: str = "127.0.0.1",
                      helo: str = "localhost", sender: str = "",
                      mta: str = "verifier.test") -> defer.Generator:
    """mailauth's verdicts on C{message} as a dictionary (see C{tests/js/verify.js})."""
    from twisted.internet import reactor

    proto = _Feeder(message)
    done: defer.Deferred[tuple[bytes, bytes, int]] = defer.Deferred()
    proto.done = done
    reactor.spawnProcess(proto, node,
                         [node, VERIFIER, str(dnsPort), ip, helo, sender, mta],
                         env=dict(os.environ), path=JS)
    out, err, code = yield done
    if code:
        raise AssertionError(f"the verifier failed ({code}): {err.decode()}")
    return json.loads(out.decode())


class _Feeder(protocol.ProcessProtocol):
    """Writes the message to the verifier's standard input and collects its output."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred | None = None

    def connectionMade(self) -> None:
        """Send the message and close standard input."""
        self.transport.write(self.message)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        """Keep standard output."""
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        """Keep standard error."""
        self.err.append(data)

    def processEnded(self, reason: object) -> None:
        """Report what the verifier said."""
        code = getattr(getattr(reason, "value", None), "exitCode", 1) or 0
        assert self.done is not None
        self.done.callback((b"".join(self.out), b"".join(self.err), code))


def message(sender: str = "alice@a.test", to: str = "bob@b.test",
            subject: str = "Hello", body: str = "Hi Bob,\r\n\r\nsee you.\r\n",
            extra: str = "") -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    return (
        f"From: Alice <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        "Date: Mon, 07 Dec 2026 09:00:00 +0000\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@a.test>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n{extra}\r\n{body}"
    ).encode()


__all__ = ["independentVerify", "message", "requireVerifier"]
