"""COMPRESS=DEFLATE (RFC 4978): raw DEFLATE (RFC 1951) both ways once the client asks.

L{DeflateTransport} stands in for the session's transport: every C{write} is deflated
and ends with a sync flush (C{Z_SYNC_FLUSH}), so each response reaches the client
whole as soon as it is written, and a client waiting for a reply never waits on bytes
held back by the compressor. Everything else (producers, peer and host addresses,
closing, the TLS interfaces) is the wrapped transport's.

L{Inflater} decodes the client's stream in bounded steps: a small compressed input can
inflate to gigabytes, so at most L{INFLATE_STEP} octets are produced at a time and the
rest stays compressed until the session has room for it (L{Inflater.more}). A stream
that is not DEFLATE raises L{CompressedDataError}; the session then says BYE
(compressed, as the client's decoder expects) and closes.
"""

from __future__ import annotations

import zlib
from typing import Any

from zope.interface import directlyProvides, providedBy

LEVEL = 6
"""The compression level (zlib's default and Dovecot's C{imap_zlib_compress_level})."""
INFLATE_STEP = 65536
"""Most octets inflated at a time."""


class CompressedDataError(Exception):
    """The client's compressed stream is not valid DEFLATE data."""


class DeflateTransport:
    """A transport proxy that deflates what is written, with a sync flush per write."""

    def __init__(self, transport: Any, level: int = LEVEL) -> None:
        self.transport = transport
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
        directlyProvides(self, providedBy(transport))

    def write(self, data: bytes) -> None:
        """Deflate C{data} and send it, flushed up to its last octet."""
        if not data:
            return
        out = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(out)

    def writeSequence(self, data: Any) -> None:
        """Deflate the pieces as one write."""
        self.write(b"".join(data))

    def __getattr__(self, name: str) -> Any:
        """Everything else is the wrapped transport's."""
        return getattr(self.transport, name)


class Inflater:
    """The client's DEFLATE stream, decoded a bounded step at a time."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(-15)
        self._pending = b""

    def feed(self, data: bytes) -> None:
        """Take compressed input (decoded later by L{more})."""
        self._pending += data

    def pending(self) -> bool:
        """Whether compressed input is waiting to be decoded."""
        return bool(self._pending)

    def more(self) -> bytes:
        """Up to L{INFLATE_STEP} decoded octets (b"" when the input is used up).

        @raise CompressedDataError: the input is not DEFLATE data, or goes on past the
            end of the stream.
        """
        if not self._pending:
            return b""
        if self._inflate.eof:
            raise CompressedDataError("data after the end of the compressed stream")
        try:
            out = self._inflate.decompress(self._pending, INFLATE_STEP)
        except zlib.error as e:
            self._pending = b""
            raise CompressedDataError(str(e)) from None
        self._pending = self._inflate.unconsumed_tail or self._inflate.unused_data
        if self._inflate.eof and self._pending:
            raise CompressedDataError("data after the end of the compressed stream")
        return out
