"""Replies straight to the socket: the SMTP server's one reach into Twisted's privates.

Twisted's C{transport.write} queues and sends on the reactor's next pass (after two
epoll changes and whatever else is ready). A client waiting for a reply is better served
at once, as asyncio does: L{sendNow} sends a reply on the socket right away when nothing
is queued before it, and L{plainTCP} finds the C{tcp.Connection} where that is safe.
Both read private attributes of C{twisted.internet.tcp.Connection} (L{_TCP_ATTRS}), so
they live here alone; C{tests/test_smtp_fastreply.py} pins those attributes on a real
connection, so a Twisted release that renames them fails there, loudly, and until it
is fixed L{plainTCP} gives None and every reply goes through C{transport.write}.

What it pays (C{bench/smtp_ingest.py --fast-replies}: the pymaild-nofast variant, every
reply through C{transport.write}, against pymaild in the same run; 4 KiB messages,
5 rounds, medians, 2 cores with a load average of 3.4 to 4.7): one session sending
one message after the other (each reply awaited) runs at 0.76x without it (413 against
544 messages per second), the client's wait for each reply being the cost; ten
concurrent sessions see no difference beyond noise (1.01x and 1.12x in two runs), and
the CPU per message is the same either way (1.01x to 1.03x). It is kept for the
latency it saves a client that waits for each reply, which is what SMTP clients do.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper

#: The Twisted TCP transport attributes L{sendNow} relies on.
_TCP_ATTRS = ("TLS", "connected", "disconnecting", "_writeDisconnected", "_tempDataBuffer",
              "dataBuffer", "offset", "socket")


def plainTCP(transport: Any) -> Any:
    """The Twisted TCP connection under C{transport} when replies may bypass its queue.

    Relaying wrappers (L{ProtocolWrapper}s that keep its C{write}, like the connection
    limits' one) are looked through. Anything else (a TLS wrapper, a test transport, a
    Twisted without the attributes L{sendNow} reads) gives None: then every reply goes
    through C{transport.write}.
    """
    for _ in range(8):
        if isinstance(transport, tcp.Connection):
            if all(hasattr(transport, name) for name in _TCP_ATTRS):
                return transport
            return None
        if not (isinstance(transport, ProtocolWrapper)
                and type(transport).write is ProtocolWrapper.write):
            return None
        transport = transport.transport
    return None


def sendNow(conn: Any, data: bytes) -> bytes:
    """Send C{data} on TCP connection C{conn} right away if nothing is queued before it.

    Twisted's C{write} queues and sends on the reactor's next pass (after two epoll
    changes and whatever else is ready). A client waiting for a reply is better served
    at once, as asyncio does. Only on an open connection without TLS whose queue is
    empty (so the order of bytes is kept); a short or failed send leaves the rest to
    C{transport.write}, and Twisted then meets and reports any error itself.

    @return: what is left to write with C{transport.write} (C{b""}: everything went).
    """
    if (conn.TLS or not conn.connected or conn.disconnecting or conn._writeDisconnected
            or conn._tempDataBuffer or conn.offset != len(conn.dataBuffer)):
        return data
    try:
        sent = conn.socket.send(data)
    except OSError:
        return data
    return data[sent:]


__all__ = ["plainTCP", "sendNow"]
