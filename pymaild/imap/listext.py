"""LIST with LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819) and SPECIAL-USE's
selection and return options (RFC 6154): parsing the command and choosing the
responses.

The folder table, special-use attributes and subscriptions are read in one runner call
(L{pymaild.imap.account.IMAPAccount.listing}); everything here is pure and runs in the
reactor.

Selection options C{SUBSCRIBED}, C{REMOTE} (there are no remote mailboxes, so it
changes nothing), C{RECURSIVEMATCH} (only with C{SUBSCRIBED}, the one option whose
descendants it can report) and C{SPECIAL-USE} are ANDed; return options are
C{SUBSCRIBED}, C{CHILDREN}, C{SPECIAL-USE} and C{STATUS (items)}. Unknown options of
either kind are BAD, as RFC 5258 section 3 requires for selection options (and Dovecot
answers for both). Several patterns (C{LIST "" ("INBOX" "Drafts")}) give each name once.
Where RFC 5258 leaves a choice, the answers are Dovecot's (tests/interop compares them):
children attributes in LIST-EXTENDED only with C{RETURN (CHILDREN)}, C{CHILDINFO} as an
atom, and C{RECURSIVEMATCH} as described at L{listEntries}.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pymaild.imap import status
from pymaild.imap.account import DELIMITER, matchName, patternRegex
from pymaild.imap.syntax import BadCommand, Reader, encodeMailbox, optionList

SELECT_OPTIONS = frozenset({b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"})
"""LIST selection options understood."""
RETURN_OPTIONS = frozenset({b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE", b"STATUS"})
"""LIST return options understood."""
MAX_PATTERNS = 100
"""Most patterns in one LIST (each is matched against every folder name)."""


@dataclass
class ListRequest:
    """A parsed LIST command.

    @ivar extended: whether any LIST-EXTENDED syntax was used (selection options,
        several patterns or return options); only then do responses carry
        C{\\NonExistent}, C{\\Subscribed} and C{CHILDINFO}.
    """

    ref: str = ""
    patterns: list[str] = field(default_factory=list)
    selection: set[bytes] = field(default_factory=set)
    returns: set[bytes] = field(default_factory=set)
    statusItems: list[bytes] = field(default_factory=list)
    extended: bool = False
    rev2: bool = False
    """An IMAP4rev2 session (RFC 9051 6.3.9): children attributes always, and
    C{\\NonExistent} for a name that is only a parent, as LIST-EXTENDED has them."""


@dataclass
class ListEntry:
    """One C{* LIST} response (and whether a C{* STATUS} may follow it)."""

    name: str
    attributes: list[str]
    childInfo: bool = False
    selectable: bool = False

    def line(self, utf8: bool = False) -> bytes:
        """The response without CRLF (the name in UTF-8 with C{utf8})."""
        out = (b"* LIST (" + " ".join(self.attributes).encode("ascii") + b') "/" '
               + encodeMailbox(self.name, utf8))
        if self.childInfo:
            out += b' (CHILDINFO ("SUBSCRIBED"))'  # the tag as an atom, as Dovecot has it
        return out


def _options(r: Reader, allowed: frozenset[bytes], what: str,
             req: ListRequest | None = None) -> set[bytes]:
    """A parenthesised list of option atoms (C{STATUS (items)} when C{req} is given)."""

    def statusItems(opt: bytes, seen: set[bytes]) -> None:
        if opt == b"STATUS" and req is not None:
            if opt in seen:
                raise BadCommand("STATUS given twice")
            r.sp()
            req.statusItems = status.parseItems(r)

    return optionList(r, allowed, f"LIST {what}", statusItems)


def parseList(r: Reader, decode: object) -> ListRequest:
    """The arguments of LIST after the command name; C{decode} turns a raw mailbox or
    pattern into a name (modified UTF-7).

    @raise BadCommand: malformed, an unknown option, RECURSIVEMATCH without
        SUBSCRIBED, too many patterns.
    """
    req = ListRequest()
    r.sp()
    if r.peek() == 0x28:
        req.extended = True
        req.selection = _options(r, SELECT_OPTIONS, "selection")
        if b"RECURSIVEMATCH" in req.selection and b"SUBSCRIBED" not in req.selection:
            raise BadCommand("RECURSIVEMATCH needs the SUBSCRIBED selection option")
        r.sp()
    req.ref = decode(r.astring())  # type: ignore[operator]
    r.sp()
    if r.peek() == 0x28:
        req.extended = True
        r.openParen()
        while True:
            req.patterns.append(decode(r.listMailbox()))  # type: ignore[operator]
            if len(req.patterns) > MAX_PATTERNS:
                raise BadCommand(f"more than {MAX_PATTERNS} LIST patterns")
            if not r.maybeSp():
                break
        r.closeParen()
    else:
        req.patterns.append(decode(r.listMailbox()))  # type: ignore[operator]
    if r.maybeSp():
        r.expect(b"RETURN")
        r.sp()
        req.extended = True
        req.returns = _options(r, RETURN_OPTIONS, "return", req)
    r.end()
    return req


def _ancestors(name: str) -> Iterable[str]:
    parts = name.split(DELIMITER)
    for i in range(1, len(parts)):
        yield DELIMITER.join(parts[:i])


def listEntries(req: ListRequest, table: dict[str, bool], special: dict[str, str],
                subscriptions: Iterable[str]) -> list[ListEntry]:
    """The LIST responses for C{req}, in order (INBOX first, then by name).

    @param table: every folder name to whether it is selectable.
    @param special: folder names to their SPECIAL-USE attribute.
    @param subscriptions: the subscribed names (they need not exist).
    """
    subs = set(subscriptions)
    # Names that exist or are implied by a deeper existing name (\Noselect parents).
    tree: dict[str, bool] = dict(table)
    for name in table:
        for parent in _ancestors(name):
            tree.setdefault(parent, False)
    withChildren = {p for name in tree for p in _ancestors(name)}
    bySubscribed = b"SUBSCRIBED" in req.selection
    bySpecial = b"SPECIAL-USE" in req.selection
    recursive = b"RECURSIVEMATCH" in req.selection
    showSubscribed = req.extended and (bySubscribed or b"SUBSCRIBED" in req.returns)
    # Children attributes: always in a plain LIST (CHILDREN), in LIST-EXTENDED only
    # when RETURN (CHILDREN) asks for them, as Dovecot does (RFC 5258 allows both).
    showChildren = req.rev2 or not req.extended or b"CHILDREN" in req.returns

    def satisfies(name: str) -> bool:
        if bySubscribed and name not in subs:
            return False
        if bySpecial and not (tree.get(name) and name in special):
            return False
        return bySubscribed or bySpecial or name in tree

    candidates = set(tree)
    if bySubscribed:
        candidates |= subs
    regexes = [patternRegex(req.ref + p) for p in req.patterns if req.ref + p]

    def listed(name: str) -> bool:
        return any(matchName(rx, name) for rx in regexes)

    # RECURSIVEMATCH (as Dovecot reads RFC 5258 section 3.5): a name that satisfies the
    # criteria carries CHILDINFO when a descendant does too; one that does not is
    # listed, with CHILDINFO, only for a satisfying descendant the patterns leave out.
    below: set[str] = set()
    hidden: set[str] = set()
    if recursive:
        for name in candidates:
            if satisfies(name):
                shown = listed(name)
                for parent in _ancestors(name):
                    below.add(parent)
                    if not shown:
                        hidden.add(parent)
        candidates |= hidden
    entries: list[ListEntry] = []
    for name in sorted(candidates, key=lambda n: (n != "INBOX", n)):
        if not listed(name):
            continue
        if satisfies(name):
            childInfo = name in below
        elif name in hidden:
            childInfo = True
        else:
            continue
        exists = name in tree
        attrs: list[str] = []
        if not table.get(name):
            # Implied parents (the store's unselectable names: no folder, only folders
            # below) and subscribed names without a folder: in LIST-EXTENDED terms they
            # do not exist, which implies \Noselect.
            attrs.append("\\NonExistent" if req.extended or req.rev2 else "\\Noselect")
        if showChildren and name in withChildren:
            attrs.append("\\HasChildren")
        elif showChildren and exists:
            attrs.append("\\HasNoChildren")
        if table.get(name) and name in special:
            attrs.append(special[name])
        if showSubscribed and name in subs:
            attrs.append("\\Subscribed")
        entries.append(ListEntry(name, attrs, childInfo=childInfo,
                                 selectable=bool(table.get(name))))
    return entries

