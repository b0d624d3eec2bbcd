"""NOTIFY (RFC 5465): the client names mailboxes and events, and the server tells it of
them without being asked, also while no command runs.

L{parseNotify} reads C{NOTIFY NONE} or C{NOTIFY SET [STATUS] (filter events) ...};
a session's L{Notifier} then listens to the registry (every change to the user's mail
this process sees) and to inotify on the named mailboxes (changes by other processes:
Dovecot, another pymaild, deliveries), and sends:

- for the selected mailbox (filter C{selected}, or C{selected-delayed}, which holds
  expunges back until a command may report them): EXISTS, EXPUNGE and FETCH FLAGS as
  soon as they happen, not only at the end of a command;
- for other mailboxes with MessageNew / MessageExpunge / FlagChange:
  C{* STATUS name (MESSAGES UIDNEXT UIDVALIDITY / MESSAGES / UIDVALIDITY HIGHESTMODSEQ)}
  when those values change (and once at C{NOTIFY SET STATUS});
- MailboxName: C{* LIST} for a mailbox created, deleted (C{\\NonExistent}) or renamed
  (with C{OLDNAME}); SubscriptionChange: C{* LIST} with or without C{\\Subscribed};
- MailboxMetadataChange and ServerMetadataChange: C{* METADATA name (entries)}.

MessageNew's fetch attributes (selected mailbox only; PEEK forms, so that a
notification changes nothing) are sent as a FETCH for each new message after its
EXISTS. AnnotationChange (there is no ANNOTATE) is refused with C{NO [BADEVENT (...)]},
as the RFC asks of events a server does not offer. A session's own mailbox-list and
metadata commands are not echoed back to it. Lines go out at once when no command
runs (or during IDLE), else just before the running command's tagged response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from pymaild.errors import InvalidFolderName, NoSuchFolder
from pymaild.imap.fetch import parseFetchAttributes
from pymaild.imap.status import statusLine
from pymaild.imap.syntax import BadCommand, NoCommand, Reader, decodeMailbox, encodeMailbox

log = Logger()

CAPABILITY = b"NOTIFY"
MESSAGE_EVENTS = frozenset({"MESSAGENEW", "MESSAGEEXPUNGE", "FLAGCHANGE"})
LIST_EVENTS = frozenset({"MAILBOXNAME", "SUBSCRIPTIONCHANGE", "MAILBOXMETADATACHANGE",
                         "SERVERMETADATACHANGE"})
SUPPORTED = MESSAGE_EVENTS | LIST_EVENTS
KNOWN = SUPPORTED | {"ANNOTATIONCHANGE"}
BADEVENT = (b"[BADEVENT (MessageNew MessageExpunge FlagChange MailboxName "
            b"SubscriptionChange MailboxMetadataChange ServerMetadataChange)]")
FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED",
                     "SUBTREE", "MAILBOXES"})
MAX_GROUPS = 64
"""Most event groups in one NOTIFY SET."""
MAX_NAMES = 1000
"""Most mailbox names in one NOTIFY SET, and most mailboxes watched or given a STATUS."""


@dataclass(frozen=True)
class Group:
    """One event group: its filter (upper case), the mailbox names it lists (for
    C{SUBTREE} and C{MAILBOXES}) and its events (upper case; empty for NONE)."""

    filter: str
    names: tuple[str, ...]
    events: frozenset[str]
    fetch: bytes = b""
    """MessageNew's fetch attributes (selected mailbox only), C{(UID FLAGS)}, or empty."""

    def covers(self, name: str, subscribed: Any) -> bool:
        """Whether mailbox C{name} (not the selected one) is in this group."""
        f = self.filter
        if f == "PERSONAL":
            return True
        if f == "INBOXES":
            return name.upper() == "INBOX"
        if f == "SUBSCRIBED":
            return name in subscribed
        if f == "MAILBOXES":
            return any(_same(name, n) for n in self.names)
        if f == "SUBTREE":
            return any(_same(name, n) or name.startswith(n.rstrip("/") + "/")
                       for n in self.names)
        return False


def _same(a: str, b: str) -> bool:
    """Mailbox names equal (INBOX in any case)."""
    return a == b or (a.upper() == "INBOX" and b.upper() == "INBOX")


@dataclass(frozen=True)
class Spec:
    """What one NOTIFY SET asked for."""

    groups: tuple[Group, ...]
    status: bool

    def selectedEvents(self) -> tuple[frozenset[str], bool] | None:
        """The events of the selected mailbox and whether expunges wait for a command
        (C{selected-delayed}); None without such a group."""
        for g in self.groups:
            if g.filter in ("SELECTED", "SELECTED-DELAYED"):
                return g.events, g.filter == "SELECTED-DELAYED"
        return None

    def selectedFetch(self) -> bytes:
        """The fetch attributes to send for each new message of the selected mailbox
        (empty: none)."""
        for g in self.groups:
            if g.filter in ("SELECTED", "SELECTED-DELAYED"):
                return g.fetch
        return b""

    def eventsFor(self, name: str, subscribed: Any) -> frozenset[str]:
        """The events asked for mailbox C{name} (not selected): the first group that
        covers it decides (RFC 5465 section 6: groups are tried in order)."""
        for g in self.groups:
            if g.filter not in ("SELECTED", "SELECTED-DELAYED") and g.covers(name,
                                                                             subscribed):
                return g.events
        return frozenset()


def _mailboxes(r: Reader) -> tuple[str, ...]:
    """C{one-or-more-mailbox}: a mailbox or a parenthesised list of them."""
    names: list[str] = []
    if r.peek() == 0x28:
        r.openParen()
        while True:
            names.append(decodeMailbox(r.astring(), r.utf8))
            if r.peek() == 0x29:
                break
            r.sp()
        r.closeParen()
    else:
        names.append(decodeMailbox(r.astring(), r.utf8))
    return tuple(names)


def parseNotify(r: Reader) -> Spec | None:
    """The arguments of NOTIFY: None for C{NONE}, else the L{Spec}.

    @raise BadCommand: malformed; a filter twice; an event twice; fetch attributes
        outside the selected group; too many groups or names.
    @raise NoCommand: C{[BADEVENT (...)]} for an event this server does not offer.
    """
    r.sp()
    word = r.atom().upper()
    if word == b"NONE":
        r.end()
        return None
    if word != b"SET":
        raise BadCommand("expected NOTIFY NONE or NOTIFY SET")
    r.sp()
    status = False
    if r.lookingAt(b"STATUS "):
        r.expect(b"STATUS")
        r.sp()
        status = True
    groups: list[Group] = []
    names = 0
    unsupported = False
    while True:
        if len(groups) >= MAX_GROUPS:
            raise BadCommand(f"more than {MAX_GROUPS} event groups")
        r.openParen()
        filt = r.atom().upper().decode("ascii", "replace")
        if filt not in FILTERS:
            raise BadCommand("unknown mailbox filter " + filt)
        listed: tuple[str, ...] = ()
        fetch = b""
        if filt in ("SUBTREE", "MAILBOXES"):
            r.sp()
            listed = _mailboxes(r)
            names += len(listed)
            if names > MAX_NAMES:
                raise BadCommand(f"more than {MAX_NAMES} mailboxes")
        if any(g.filter == filt and filt not in ("SUBTREE", "MAILBOXES") for g in groups) \
                or (filt in ("SELECTED", "SELECTED-DELAYED")
                    and any(g.filter in ("SELECTED", "SELECTED-DELAYED") for g in groups)):
            raise BadCommand("mailbox filter given twice")
        r.sp()
        events: set[str] = set()
        if r.lookingAt(b"NONE"):
            r.expect(b"NONE")
        else:
            r.openParen()
            while True:
                event = r.atom().upper().decode("ascii", "replace")
                if event not in KNOWN:
                    raise BadCommand("unknown event " + event)
                if event in events:
                    raise BadCommand("event given twice")
                if event not in SUPPORTED:
                    unsupported = True
                events.add(event)
                if event == "MESSAGENEW" and r.lookingAt(b" ("):
                    # MessageNew (fetch-att ...): only for the selected mailbox (BAD
                    # elsewhere, RFC 5465 section 5.2).
                    if filt not in ("SELECTED", "SELECTED-DELAYED"):
                        raise BadCommand("fetch attributes only for the selected mailbox")
                    r.sp()
                    fetch = r.parenthesised()
                    items = parseFetchAttributes(fetch)  # BAD for what FETCH refuses
                    if any(not i.peek for i in items if i.kind in ("section", "binary")):
                        # A notification must not change the message: only PEEK forms.
                        raise BadCommand("MessageNew fetch attributes must not set \\Seen")
                if r.peek() == 0x29:
                    break
                r.sp()
            r.closeParen()
        if events & {"FLAGCHANGE", "ANNOTATIONCHANGE"} and filt in (
                "SELECTED", "SELECTED-DELAYED") and not {"MESSAGENEW",
                                                         "MESSAGEEXPUNGE"} <= events:
            # RFC 5465 section 5: FlagChange without MessageNew and MessageExpunge
            # could not be reported for the selected mailbox.
            raise BadCommand("FlagChange needs MessageNew and MessageExpunge")
        r.closeParen()
        groups.append(Group(filt, listed, frozenset(events), fetch))
        if r.atEnd():
            break
        r.sp()
    if unsupported:
        raise NoCommand(BADEVENT.decode() + " Event not supported")
    return Spec(tuple(groups), status)


def statusItems(events: frozenset[str]) -> list[bytes]:
    """The STATUS items that tell a client of C{events} in a mailbox it has not
    selected (RFC 5465 section 5.2 to 5.4)."""
    items: list[bytes] = []
    if "MESSAGENEW" in events or "MESSAGEEXPUNGE" in events:
        items.append(b"MESSAGES")
    if "MESSAGENEW" in events:
        items += [b"UIDNEXT", b"UIDVALIDITY"]
    if "FLAGCHANGE" in events:
        if b"UIDVALIDITY" not in items:
            items.append(b"UIDVALIDITY")
        items.append(b"HIGHESTMODSEQ")
    return items


def _listLine(name: str, attrs: bytes, utf8: bool, extra: bytes = b"") -> bytes:
    """A C{* LIST} line (with CRLF)."""
    return b"* LIST (" + attrs + b') "/" ' + encodeMailbox(name, utf8) + extra + b"\r\n"


class Notifier:
    """The NOTIFY state of one session: what it asked for, what it last told."""

    def __init__(self, session: Any, spec: Spec) -> None:
        self.session = session
        self.spec = spec
        self.account = session.account
        self.registry = session.account.registry
        self.watcher = getattr(session.account, "watcher", None)
        self.sent: dict[str, bytes] = {}  # mailbox -> the last STATUS values told
        self.pending: set[str] = set()
        self.lines: list[bytes] = []
        self.watched: list[tuple[str, Any]] = []
        self.checking = False
        # The folder list and subscriptions as last seen, to find the changes other
        # processes make (L{poll}); None until the first look.
        self.names: set[str] | None = None
        self.subscribed: set[str] | None = None
        self.listSig: Any = None
        self.listTrusted = False
        self.polling = False
        self.again = False

    # -- life ----------------------------------------------------------------------
    @defer.inlineCallbacks
    def start(self) -> Any:
        """Listen for changes; with STATUS, fire with the first STATUS lines."""
        self.registry.watchUser(self.account.address, self)
        names = yield self._watchedNames()
        if self.watcher is not None:
            paths = yield self.account._run(_paths, names)
            for name, path in paths:
                cb = _Callback(self.folderChanged, name)
                self.watcher.watch(path, cb)
                self.watched.append((path, cb))
        if self._wantsList():
            yield self._pollList()
            if self.watcher is not None:
                # Folders made, deleted or renamed by other processes: at once where
                # inotify sees the Maildir root, else at the next poll.
                root = yield self.account._run(lambda acct: acct.root)
                if self.watcher.watchDir(root, self.poll):
                    self.watched.append(("dir:" + root, self.poll))
        lines = yield self._statusLines(names, initial=True)
        return lines if self.spec.status else []

    def stop(self) -> None:
        """Stop listening."""
        self.registry.unwatchUser(self.account.address, self)
        if self.watcher is not None:
            for path, cb in self.watched:
                self.watcher.unwatch(path, cb)
        self.watched = []

    # -- what is watched -------------------------------------------------------------
    def _selectedName(self) -> str | None:
        view = self.session.mbox
        return view.folderName if view is not None else None

    def _watchedNames(self) -> defer.Deferred[list[str]]:
        """The existing mailboxes (not the selected one) with message events."""
        subscribed = self.account._subscriptions
        spec, selected = self.spec, self._selectedName()

        def work(acct: Any) -> list[str]:
            out = []
            for name in acct.listFolders():
                if selected is not None and _same(name, selected):
                    continue
                if spec.eventsFor(name, subscribed) & MESSAGE_EVENTS:
                    out.append(name)
                    if len(out) >= MAX_NAMES:
                        break
            return out

        return self.account._run(work)

    # -- events ----------------------------------------------------------------------
    def folderChanged(self, folder: str) -> None:
        """The registry or inotify: C{folder}'s messages changed."""
        selected = self._selectedName()
        if selected is not None and _same(folder, selected):
            return  # the selected view hears of it and reports (mailboxChanged)
        if self.spec.eventsFor(folder, self.account._subscriptions) & MESSAGE_EVENTS:
            self.pending.add(folder)
            self._check()

    def listChanged(self, event: tuple[str, ...], origin: Any) -> None:
        """The registry (or L{poll}): the folder list, a subscription or metadata
        changed."""
        kind, name = event[0], event[1]
        self._noteListEvent(event)
        if origin is self.account:
            return
        utf8 = self.session.utf8Names()
        subscribed = self.account._subscriptions
        if kind == "metadata":
            entries = b" ".join(e.encode("ascii") for e in event[2:])
            wanted = "SERVERMETADATACHANGE" if name == "" else "MAILBOXMETADATACHANGE"
            if name == "" and any(wanted in g.events for g in self.spec.groups) or (
                    name != "" and wanted in self.spec.eventsFor(name, subscribed)):
                self._send([b"* METADATA " + encodeMailbox(name, utf8) + b" (" + entries
                            + b")\r\n"])
            return
        target = event[2] if kind == "rename" else name
        events = self.spec.eventsFor(target, subscribed)
        if kind in ("create", "delete", "rename") and "MAILBOXNAME" in events:
            if kind == "create":
                line = _listLine(name, b"", utf8)
            elif kind == "delete":
                line = _listLine(name, b"\\NonExistent", utf8)
            else:
                line = _listLine(target, b"", utf8, b' ("OLDNAME" ('
                                 + encodeMailbox(name, utf8) + b"))")
            self._send([line])
        elif kind in ("subscribe", "unsubscribe") and "SUBSCRIPTIONCHANGE" in events:
            self._send([_listLine(name, b"\\Subscribed" if kind == "subscribe" else b"",
                                  utf8)])

    # -- changes by other processes ----------------------------------------------------
    def _wantsList(self) -> bool:
        """Whether a group asks for MailboxName or SubscriptionChange."""
        return any(g.events & {"MAILBOXNAME", "SUBSCRIPTIONCHANGE"} for g in self.spec.groups)

    def _noteListEvent(self, event: tuple[str, ...]) -> None:
        """Keep the last-seen list in step with an event this process told of, so that
        L{poll} does not report it again."""
        names, subs = self.names, self.subscribed
        if names is None or subs is None:
            return
        kind, name = event[0], event[1]
        if kind == "create":
            names.add(name)
        elif kind == "delete":
            names.discard(name)
        elif kind == "rename":
            new = event[2]
            for n in [n for n in names if n == name or n.startswith(name + "/")]:
                names.discard(n)
                names.add(new + n[len(name):])
        elif kind == "subscribe":
            subs.add(name)
        elif kind == "unsubscribe":
            subs.discard(name)

    def poll(self) -> None:
        """Look for mailboxes created, deleted or renamed and subscriptions changed by
        other processes (a second pymaild, Dovecot, an administrator), which the
        registry does not hear of: cheap (two stats) while the Maildir root's mtime
        and the subscriptions file stay as they were. Called where sessions poll
        (IDLE's periodic rescan, NOOP)."""
        if self.polling:
            self.again = True  # (a change while looking: look once more after)
            return
        if not self._wantsList():
            return
        self._pollList().addErrback(
            lambda f: log.failure("NOTIFY: looking at the folder list failed", f))

    def _pollList(self) -> defer.Deferred[None]:
        """Read the folder list and subscriptions if they may have changed; report
        the differences (none the first time)."""
        self.polling = True
        known, trusted = self.listSig, self.listTrusted

        def work(acct: Any) -> tuple[Any, bool, set[str], set[str]] | None:
            sig, ok = acct.listSignature()
            if sig == known and trusted:
                return None
            return sig, ok, set(acct.listFolders()), set(acct.subscriptions())

        def got(result: tuple[Any, bool, set[str], set[str]] | None) -> None:
            self.polling = False
            if result is None:
                return
            self.listSig, self.listTrusted, names, subs = result
            oldNames, oldSubs = self.names, self.subscribed
            self.names, self.subscribed = set(names), set(subs)
            if oldNames is None or oldSubs is None:
                return
            # Another process's rename looks like a deletion and a creation here.
            events = [("delete", n) for n in sorted(oldNames - names)]
            events += [("create", n) for n in sorted(names - oldNames)]
            events += [("unsubscribe", n) for n in sorted(oldSubs - subs)]
            events += [("subscribe", n) for n in sorted(subs - oldSubs)]
            for event in events:
                self.listChanged(event, None)

        def more(result: None) -> None:
            if self.again:
                self.again = False
                self.poll()

        def failed(f: Any) -> Any:
            self.polling = False
            return f

        return self.account._run(work).addCallbacks(got, failed).addCallback(more)

    # -- STATUS ----------------------------------------------------------------------
    def _check(self) -> None:
        """Compute the STATUS of the pending mailboxes (one at a time per session)."""
        if self.checking or not self.pending:
            return
        self.checking = True
        names, self.pending = sorted(self.pending), set()

        def done(lines: list[bytes]) -> None:
            self.checking = False
            self._send(lines)
            self._check()

        def failed(f: Any) -> None:
            self.checking = False
            log.failure("NOTIFY status failed", f)

        self._statusLines(names, initial=False).addCallbacks(done, failed)

    def _statusLines(self, names: list[str], initial: bool) -> defer.Deferred[list[bytes]]:
        """The STATUS lines of C{names} whose values changed since last told (all of
        them when C{initial}); the values are remembered."""
        subscribed = self.account._subscriptions
        wanted = [(n, statusItems(self.spec.eventsFor(n, subscribed))) for n in names]
        wanted = [(n, items) for n, items in wanted if items]
        if not wanted:
            return defer.succeed([])

        def work(acct: Any) -> list[tuple[str, list[bytes], Any]]:
            out = []
            for name, items in wanted:
                try:
                    out.append((name, items, acct.folder(name).scan(claimRecent=False)))
                except (NoSuchFolder, InvalidFolderName):
                    continue
            return out

        def render(states: list[tuple[str, list[bytes], Any]]) -> list[bytes]:
            utf8 = self.session.utf8Names()
            lines = []
            for name, items, state in states:
                line = statusLine(name, state, items, 0, utf8)
                if initial or self.sent.get(name) != line:
                    self.sent[name] = line
                    lines.append(line + b"\r\n")
            return lines

        return self.account._run(work).addCallback(render)

    def _send(self, lines: list[bytes]) -> None:
        if lines:
            self.session.sendNotifications(lines)


class _Callback:
    """C{f(name)} as an inotify callback without arguments."""

    __slots__ = ("f", "name")

    def __init__(self, f: Any, name: str) -> None:
        self.f, self.name = f, name

    def __call__(self) -> None:
        self.f(self.name)


def _paths(acct: Any, names: list[str]) -> list[tuple[str, str]]:
    """(name, directory) of the folders C{names} (blocking)."""
    out = []
    for name in names:
        try:
            out.append((name, acct.folder(name).path))
        except (NoSuchFolder, InvalidFolderName):
            continue
    return out
