"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 sections 3 and 4), and
THREAD=REFS (Dovecot's, from draft-ietf-morg-inthread: no gathering by subject, threads
ordered by their newest message).

L{threadMessages} is blocking (it reads header blocks through the structure cache) and
runs in the mailbox's runner, never in the reactor. Every walk over the tree is a loop,
not a recursion, so a chain of 100,000 replies costs neither the stack nor quadratic
time: a parent link that would need more than L{MAX_ANCESTRY} steps to prove it makes
no loop is not made (the message then starts a thread of its own).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pymaild.errors import MessageVanished
from pymaild.imap.mimeheader import parseHeaders, unfold
from pymaild.imap.search import CHARSETS, parseSearchKeys
from pymaild.imap.sort import _sentDate, baseSubject, sortForm
from pymaild.imap.syntax import BadCommand, NoCommand, Reader

ALGORITHMS = (b"ORDEREDSUBJECT", b"REFERENCES", b"REFS")
"""The threading algorithms offered (C{THREAD=...} capabilities)."""
MAX_ANCESTRY = 10000
"""Most ancestors looked at when checking that a parent link makes no loop."""
MAX_REFERENCES = 1000
"""Most Message-IDs of one References field used (the last ones: the nearest)."""
ANCESTRY_BUDGET = 10_000_000
"""Most ancestor steps of all loop checks of one THREAD command."""

_MSGID = re.compile(rb"<([^<>\s@]+@[^<>\s]+)>")
_WANTED = {b"subject", b"date", b"message-id", b"references", b"in-reply-to"}


def parseThread(r: Reader) -> tuple[bytes, tuple[Any, ...]]:
    """C{algorithm charset search-keys} after C{THREAD}: (algorithm, query).

    @raise BadCommand: malformed, or an unknown algorithm.
    @raise NoCommand: an unsupported charset (C{[BADCHARSET]}).
    """
    r.sp()
    algorithm = r.atom().upper()
    if algorithm not in ALGORITHMS:
        raise BadCommand("unknown threading algorithm " + algorithm.decode("ascii", "replace"))
    r.sp()
    charset = r.astring().decode("ascii", "replace").upper()
    if charset not in CHARSETS:
        raise NoCommand("[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
    r.sp()
    return algorithm, parseSearchKeys(r, charset)


class _Node:
    """A container of the REFERENCES algorithm: a message, or a dummy (C{number} None)."""

    __slots__ = ("number", "date", "seq", "subject", "reply", "parent", "children")

    def __init__(self) -> None:
        self.number: int | None = None
        self.date = 0.0
        self.seq = 0
        self.subject = b""
        self.reply = False
        self.parent: _Node | None = None
        self.children: list[_Node] = []

    def sortKey(self) -> tuple[float, int]:
        """Sent date, then sequence number; a dummy sorts as its first child."""
        node = self
        while node.number is None and node.children:
            node = node.children[0]
        return node.date, node.seq


class _Message:
    """What threading needs of one message."""

    __slots__ = ("seq", "number", "date", "subject", "reply", "msgid", "refs")

    def __init__(self, seq: int, number: int, date: float, subject: bytes, reply: bool,
                 msgid: bytes | None, refs: list[bytes]) -> None:
        self.seq = seq
        self.number = number
        self.date = date
        self.subject = subject
        self.reply = reply
        self.msgid = msgid
        self.refs = refs


def _ids(value: bytes | None) -> list[bytes]:
    return _MSGID.findall(unfold(value)) if value else []


def readMessage(folder: Any, cache: Any, seq: int, number: int, info: Any) -> _Message:
    """The threading data of one message (blocking).

    @raise MessageVanished: it is gone.
    """
    from pymaild.imap.mailbox import loadHeaderBlock

    fields: dict[bytes, bytes] = {}
    for name, value in parseHeaders(loadHeaderBlock(cache, folder, info)):
        low = name.lower()
        if low in _WANTED and low not in fields:
            fields[low] = value
    base, reply = baseSubject(fields.get(b"subject"))
    ids = _ids(fields.get(b"message-id"))
    refs = _ids(fields.get(b"references"))[-MAX_REFERENCES:]
    if not refs:
        refs = _ids(fields.get(b"in-reply-to"))[:1]
    date = _sentDate(fields.get(b"date"), folder.internalDate(info))
    return _Message(seq, number, date, sortForm(base), reply, ids[0] if ids else None, refs)


def _isAncestor(candidate: _Node, node: _Node, budget: list[int]) -> bool:
    """Whether C{candidate} is C{node} or above it, i.e. whether making C{candidate} a
    child of C{node} would make a loop. A childless candidate is above nothing; past
    L{MAX_ANCESTRY} steps, or once the command's C{budget} of steps is spent, the
    answer is True (the link is not made)."""
    if candidate is node:
        return True
    if not candidate.children:
        return False
    steps = 0
    while node is not None:
        if node is candidate:
            return True
        steps += 1
        budget[0] -= 1
        if steps > MAX_ANCESTRY or budget[0] < 0:
            return True
        node = node.parent  # type: ignore[assignment]
    return False


def _link(parent: _Node, child: _Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _sortTree(roots: list[_Node]) -> None:
    """Sort every set of siblings below C{roots} by sent date (step 6), deepest first."""
    order: list[_Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        node.children.sort(key=_Node.sortKey)


def references(messages: Sequence[_Message]) -> list[_Node]:
    """The threads of the REFERENCES algorithm, as root nodes in order."""
    roots = _linked(messages)
    # (4) sort the roots.
    for r in roots:
        if r.number is None:
            r.children.sort(key=_Node.sortKey)
    roots.sort(key=_Node.sortKey)
    # (5) gather by base subject.
    roots = _gatherSubjects(roots)
    # (6) sort all siblings.
    _sortTree(roots)
    roots.sort(key=_Node.sortKey)
    return roots


def _newest(root: _Node) -> tuple[float, int]:
    """The sent date and sequence number of the newest message of a thread."""
    best = (float("-inf"), 0)
    stack = [root]
    while stack:
        node = stack.pop()
        if node.number is not None:
            best = max(best, (node.date, node.seq))
        stack.extend(node.children)
    return best


def refs(messages: Sequence[_Message]) -> list[_Node]:
    """The threads of Dovecot's REFS algorithm (draft-ietf-morg-inthread): REFERENCES
    without the gathering by subject, siblings by sent date, and the threads ordered
    by their newest message."""
    roots = _linked(messages)
    _sortTree(roots)
    roots.sort(key=_newest)
    return roots


def _linked(messages: Sequence[_Message]) -> list[_Node]:
    """Steps 1 to 3 of REFERENCES: the messages linked by their references, the root
    set, dummies pruned."""
    table: dict[bytes, _Node] = {}
    nodes: list[_Node] = []
    budget = [ANCESTRY_BUDGET]
    for m in messages:
        node: _Node | None = table.get(m.msgid) if m.msgid is not None else None
        if node is None or node.number is not None:
            node = _Node()  # no id, or a duplicate: a unique one
            if m.msgid is not None and m.msgid not in table:
                table[m.msgid] = node
        node.number, node.date, node.seq = m.number, m.date, m.seq
        node.subject, node.reply = m.subject, m.reply
        nodes.append(node)
        # (1A) link the references in a chain, keeping links already made.
        prev: _Node | None = None
        for ref in m.refs:
            refNode = table.get(ref)
            if refNode is None:
                refNode = table[ref] = _Node()
            if (prev is not None and refNode.parent is None
                    and not _isAncestor(refNode, prev, budget)):
                _link(prev, refNode)
            prev = refNode
        # (1B) the last reference is the message's parent. A parent the message had
        # already (from another's truncated References) goes, even when the new link
        # would make a loop and is not made either (as Dovecot does).
        if prev is not None and not _isAncestor(node, prev, budget):
            _link(prev, node)
        elif node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    # (2) the root set; (3) prune dummies.
    roots = [n for n in table.values() if n.parent is None]
    roots += [n for n in nodes if n.parent is None and n not in roots]
    roots = _dedupe(roots)
    return _prune(roots)


def _dedupe(nodes: list[_Node]) -> list[_Node]:
    seen: set[int] = set()
    out = []
    for n in nodes:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out


def _prune(roots: list[_Node]) -> list[_Node]:
    """Step 3: remove dummies, promoting their children (to the top level only when a
    dummy root has one child)."""
    # Below the roots: bottom-up, so a dummy's children are pruned before it is.
    order: list[_Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        kids: list[_Node] = []
        for child in node.children:
            if child.number is None:
                for grandchild in child.children:
                    grandchild.parent = node
                kids.extend(child.children)
            else:
                kids.append(child)
        node.children = kids
    out: list[_Node] = []
    for r in roots:
        if r.number is not None:
            out.append(r)
        elif len(r.children) == 1:
            child = r.children[0]
            child.parent = None
            out.append(child)
        elif r.children:
            out.append(r)
    return out


def _threadSubject(node: _Node) -> tuple[bytes, bool]:
    if node.number is None and node.children:
        return node.children[0].subject, node.children[0].reply
    return node.subject, node.reply


def _gatherSubjects(roots: list[_Node]) -> list[_Node]:
    """Step 5: merge the threads whose base subject is the same."""
    table: dict[bytes, _Node] = {}
    for r in roots:
        subject, _ = _threadSubject(r)
        if not subject:
            continue
        held = table.get(subject)
        if held is None:
            table[subject] = r
        elif held.number is not None and (
                r.number is None or (held.reply and not r.reply)):
            table[subject] = r
    out: list[_Node] = []
    for r in roots:
        subject, reply = _threadSubject(r)
        held = table.get(subject) if subject else None
        if held is None or held is r:
            out.append(r)
            continue
        if held.number is None and r.number is None:
            for child in r.children:
                child.parent = held
            held.children.extend(r.children)
        elif held.number is None:
            r.parent = held
            held.children.append(r)
        elif reply and not held.reply:
            r.parent = held
            held.children.append(r)
        else:
            dummy = _Node()
            dummy.children = [held, r]
            held.parent = r.parent = dummy
            table[subject] = dummy
            i = out.index(held) if held in out else -1
            if i >= 0:
                out[i] = dummy
            else:
                out.append(dummy)
    return out


def orderedSubject(messages: Sequence[_Message]) -> list[_Node]:
    """The threads of ORDEREDSUBJECT: one per base subject, its first message (by sent
    date) the parent of all the others; threads ordered by their first message."""
    ordered = sorted(messages, key=lambda m: (m.subject, m.date, m.seq))
    roots: list[_Node] = []
    current: _Node | None = None
    for m in ordered:
        node = _Node()
        node.number, node.date, node.seq = m.number, m.date, m.seq
        if current is not None and m.subject == current.subject:
            node.parent = current
            current.children.append(node)
            continue
        node.subject = m.subject
        current = node
        roots.append(node)
    roots.sort(key=_Node.sortKey)
    return roots


def render(roots: Sequence[_Node]) -> bytes:
    """The C{* THREAD} response's data: C{(3 6 (4 23)(44 7 96))}, dummies as bare
    parentheses (C{((3)(5))}); built without recursion."""
    out: list[bytes] = []
    # Work items: a node to write, or bytes to emit.
    for root in roots:
        stack: list[Any] = [b")", root, b"("]
        while stack:
            item = stack.pop()
            if isinstance(item, bytes):
                out.append(item)
                continue
            node: _Node = item
            if node.number is not None:
                out.append(b"%d" % node.number)
            kids = node.children
            if not kids:
                continue
            if len(kids) == 1 and node.number is not None:
                stack.append(kids[0])
                stack.append(b" ")
                continue
            if node.number is not None:
                out.append(b" ")
            for child in reversed(kids):
                stack.append(b")")
                stack.append(child)
                stack.append(b"(")
    return b"".join(out)


def threadMessages(algorithm: bytes, folder: Any, cache: Any,
                   messages: Sequence[tuple[int, int, Any]], uid: bool) -> bytes:
    """The threads of C{messages} ((seq, uid, info) in sequence order) rendered, by
    UID or sequence number (blocking: run it in the runner)."""
    data: list[_Message] = []
    for seq, u, info in messages:
        try:
            data.append(readMessage(folder, cache, seq, u if uid else seq, info))
        except MessageVanished:
            continue
    flush = getattr(cache, "flush", None)
    if flush is not None:
        flush()
    if algorithm == b"REFERENCES":
        roots = references(data)
    elif algorithm == b"REFS":
        roots = refs(data)
    else:
        roots = orderedSubject(data)
    return render(roots)
