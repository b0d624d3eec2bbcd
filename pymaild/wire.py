"""Wire helpers shared by the SMTP, POP3 and IMAP protocols.

``DotStuffer`` turns stored message bytes into the dot-stuffed, CRLF-terminated form
SMTP DATA and POP3 RETR/TOP send, keeping its state across chunks so that a ``.`` line
at any chunk edge is stuffed (Twisted stuffs per 16 KiB chunk and so lets a message end
early and inject commands or responses).

``TLSGuardMixin`` closes STARTTLS command injection for any ``LineReceiver`` or
``LineOnlyReceiver`` protocol: bytes that arrived in the same read as the command that
starts TLS are plaintext the attacker could have injected, so they are dropped.
"""

from __future__ import annotations

from typing import Any


class DotStuffer:
    """Stateful CRLF normaliser and dot-stuffer for SMTP DATA and POP3 multi-line replies.

    Line ends CRLF, bare LF and bare CR all become CRLF; a line starting with C{.} gets a
    second dot. Feed chunks of any size, then call L{finish} for the terminator.
    """

    def __init__(self) -> None:
        self._atLineStart = True
        self._afterCR = False

    def feed(self, data: bytes) -> bytes:
        """Return the wire form of the next chunk of the message."""
        if self._afterCR and data.startswith(b"\n"):
            data = data[1:]
            self._afterCR = False  # that LF ended the CR's line: a further LF is a new one
        if not data:
            return b""
        if data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r"):
            # Only CRLF line ends (the store's form): stuffing is one replace.
            self._afterCR = False
            out = data.replace(b"\r\n.", b"\r\n..")
            if self._atLineStart and data.startswith(b"."):
                out = b"." + out
            self._atLineStart = data.endswith(b"\n")
            return out
        self._afterCR = data.endswith(b"\r")
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._atLineStart and data.startswith(b"."):
            data = b"." + data
        self._atLineStart = data.endswith(b"\n")
        return data.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        """Return the bytes that end the message: a final CRLF if needed, then C{.CRLF}."""
        tail = b"" if self._atLineStart else b"\r\n"
        self._atLineStart = True
        self._afterCR = False
        return tail + b".\r\n"


def stuffMessage(data: bytes) -> bytes:
    """Dot-stuff a whole message and append the C{.CRLF} terminator."""
    s = DotStuffer()
    return s.feed(data) + s.finish()


class TLSGuardMixin:
    """Drop bytes pipelined behind STARTTLS/STLS (CVE-2011-0411 class).

    Mix in before the Twisted protocol class and call L{startTLSGuarded} instead of
    C{transport.startTLS}. Lines left over from the read that carried the STARTTLS
    command are discarded unseen; TLS records always arrive in a later read.
    """

    _tlsDiscarding = False
    _buffer: bytes

    def startTLSGuarded(self, contextFactory: Any) -> None:
        """Start TLS on the transport and discard whatever plaintext is still buffered."""
        self._tlsDiscarding = True
        self.transport.startTLS(contextFactory)  # type: ignore[attr-defined]
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        """Process a read; afterwards forget any plaintext queued behind STARTTLS."""
        try:
            super().dataReceived(data)  # type: ignore[misc]
        finally:
            if self._tlsDiscarding:
                self._tlsDiscarding = False
                self._buffer = b""

    def lineReceived(self, line: bytes) -> Any:
        """Pass a line on, unless it was pipelined behind STARTTLS."""
        if self._tlsDiscarding:
            return None
        return super().lineReceived(line)  # type: ignore[misc]


def setNoDelay(transport: Any) -> None:
    """Turn off Nagle's algorithm on a TCP transport (or the TCP transport under a TLS
    one); silently nothing for other transports.

    A reply written in several pieces (a streamed message body, then the terminator or
    the tagged response) otherwise waits for the client's delayed ACK, up to 40 ms on
    Linux, before its last small segment leaves.
    """
    for t in (transport, getattr(transport, "transport", None)):
        setter = getattr(t, "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(True)
            except OSError:
                pass
            return
