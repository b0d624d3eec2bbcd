"""The IMAP avatar: an C{IAccount} over a store account, with LIST matching.

L{IMAPAvatars} is what the tap registers with the realm for C{imap4.IAccount}: called
with an avatar id (a canonical address) it returns an L{IMAPAccount} and its logout
callable. Every store call runs through the disk runner; methods return Deferreds.
L{MailboxInfo} objects are what LIST shows: mailbox attributes (children, \\Noselect,
SPECIAL-USE), never message flags.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.cred.checkers import ANONYMOUS
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import imap4
from zope.interface import implementer

from pymaild.imap.mailbox import MailboxView
from pymaild.imap.notify import FolderWatcher, Registry
from pymaild.imap.notify import registry as defaultRegistry
from pymaild.imap.summarycache import StructureCache
from pymaild.quotarules import QuotaLimits
from pymaild.store.quota import Usage
from pymaild.threads import runnerFor

log = Logger()

DELIMITER = "/"

# Store handles are immutable (their state lives in the store's per-path caches), so the
# sessions of one user share one Account and one Folder per folder instead of holding
# copies: this is per-connection memory with thousands of idle sessions.
_storeAccounts: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_storeFolders: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def _shared(table: weakref.WeakValueDictionary[str, Any], key: str, obj: Any,
            same: Callable[[Any], bool]) -> Any:
    """The object of C{table} under C{key} when C{same(it)}, else C{obj} (remembered
    there); C{obj} itself when it cannot be weakly referenced."""
    try:
        known = table.get(key)
    except TypeError:  # not hashable / not weak-referenceable: nothing to share
        return obj
    if known is not None and same(known):
        return known
    try:
        table[key] = obj
    except TypeError:
        pass
    return obj


def sharedStoreAccount(acct: Any) -> Any:
    """An equivalent store Account already in use by another session, else C{acct}."""
    return _shared(_storeAccounts, acct.root, acct,
                   lambda k: k.store is acct.store and k.address == acct.address)


def sharedStoreFolder(folder: Any) -> Any:
    """An equivalent store Folder already in use by another session, else C{folder}."""
    return _shared(_storeFolders, folder.path, folder,
                   lambda k: k.account is folder.account and k.name == folder.name)


def _names(names: Iterable[str]) -> tuple[str, ...]:
    """Folder names as a compact tuple of interned strings (shared across sessions)."""
    return tuple(dict.fromkeys(sys.intern(n) for n in names))


@implementer(imap4.IMailboxInfo)
class MailboxInfo:
    """LIST/LSUB attributes of one name (\\HasChildren, \\Noselect, \\Sent...)."""

    def __init__(self, attributes: list[str]) -> None:
        self.attributes = attributes

    def getFlags(self) -> list[str]:
        """The mailbox attributes (not message flags)."""
        return list(self.attributes)

    def getHierarchicalDelimiter(self) -> str:
        """Always C{/}."""
        return DELIMITER


class ListPattern:
    """A LIST pattern: C{*} matches anything, C{%} anything but C{/}.

    C{fullmatch} follows every way the pattern can match at once (a bit per pattern
    position), so it takes time linear in the name. A regular expression would
    backtrack: C{%a%a%a%a%a%a%b} against a long name of C{a}s took exponential time.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        tokens: list[str] = []
        for ch in pattern:
            if ch in "*%" and tokens and tokens[-1] in ("*", "%"):
                tokens[-1] = "*" if "*" in (ch, tokens[-1]) else "%"  # runs collapse
            else:
                tokens.append(ch)
        self._tokens = tokens
        self._size = len(tokens)
        self._minLength = sum(1 for t in tokens if t not in ("*", "%"))
        self._literal: dict[str, int] | None = None
        self._star = self._percent = self._wild = self._start = 0

    def _compile(self) -> None:
        """Build the bit masks (only for patterns short enough to match some name)."""
        literal: dict[str, int] = {}
        for i, t in enumerate(self._tokens):
            if t == "*":
                self._star |= 1 << i
            elif t == "%":
                self._percent |= 1 << i
            else:
                literal[t] = literal.get(t, 0) | 1 << i
        self._wild = self._star | self._percent
        self._start = 1 | (1 & self._wild) << 1
        self._literal = literal

    def fullmatch(self, name: str) -> bool:
        """Whether the whole of C{name} matches."""
        if len(name) < self._minLength:
            return False  # each literal character of the pattern needs one of the name
        if self._literal is None:
            self._compile()
        assert self._literal is not None
        state = self._start
        for ch in name:
            state = ((state & self._literal.get(ch, 0)) << 1) | (state & self._star) | (
                0 if ch == "/" else state & self._percent)
            if not state:
                return False
            state |= (state & self._wild) << 1  # a wildcard may match nothing
        return bool(state >> self._size & 1)


def patternRegex(pattern: str) -> ListPattern:
    """The matcher for a LIST pattern (see L{ListPattern})."""
    return ListPattern(pattern)


def matchName(regex: ListPattern, name: str) -> bool:
    """Whether C{name} matches; INBOX matches case-insensitively."""
    if regex.fullmatch(name):
        return True
    if name == "INBOX" or name.startswith("INBOX/"):
        return any(regex.fullmatch(v + name[5:]) for v in ("inbox", "Inbox", "INBOX"))
    return False


def listEntries(
    names: dict[str, bool], pattern: str, special: dict[str, str] | None = None
) -> list[tuple[str, MailboxInfo]]:
    """LIST results: C{names} maps every listed name to whether it is selectable.

    Parents implied by deeper names are added as \\Noselect; C{special} maps folder
    names to their SPECIAL-USE attribute.
    """
    candidates: dict[str, bool] = dict(names)
    for name in list(names):
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            candidates.setdefault(DELIMITER.join(parts[:i]), False)
    regex = patternRegex(pattern)
    withChildren = set()
    for name in candidates:
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            withChildren.add(DELIMITER.join(parts[:i]))
    special = special if special is not None else {}
    out = []
    for name in sorted(candidates, key=lambda n: (n != "INBOX", n)):
        if not matchName(regex, name):
            continue
        attrs = []
        if not candidates[name]:
            attrs.append("\\Noselect")
        attrs.append("\\HasChildren" if name in withChildren else "\\HasNoChildren")
        if candidates[name] and name in special:
            attrs.append(special[name])
        out.append((name, MailboxInfo(attrs)))
    return out


def folderTable(acct: Any) -> tuple[dict[str, bool], dict[str, str]]:
    """(name -> selectable, name -> special use) of a store account (blocking)."""
    names = acct.listFolders()
    parents = set()
    for n in names:
        parts = n.split(DELIMITER)
        for i in range(1, len(parts)):
            parents.add(DELIMITER.join(parts[:i]))
    table = {n: (acct.isSelectable(n) if n in parents else True) for n in names}
    return table, acct.specialUse()


class CopyObserver(Protocol):
    """Told of every completed COPY or MOVE (and their UID forms), after the copies exist.

    It must return at once (the IMAP reply does not wait for it) and never raise into
    the session: what it does with the news (e.g. teaching a spam filter) happens in the
    background.
    """

    def copied(self, address: str, source: str, dest: str, uids: list[int]) -> None:
        """C{address} copied messages from folder C{source} into C{dest}, where they now
        have C{uids}."""


class MailboxElsewhere(Exception):
    """The user's mailbox lives on another node; C{url} is that node's IMAP URL (the
    server answers the login C{NO [REFERRAL url]}, RFC 2221)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


@implementer(imap4.IAccount, imap4.INamespacePresenter)
class IMAPAccount:
    """One user's mail as IMAP sees it; store work through the disk runner.

    One per session, so kept small: slots, the subscription list as a tuple of interned
    names, the open views as a tuple, store handles shared with the user's other sessions.
    C{cache} is the one of the L{IMAPAvatars} that made it (a new one when None).
    """

    __slots__ = ("store", "runner", "config", "address", "registry", "cache", "watcher",
                 "observer", "quotas", "referral", "_account", "_subscriptions", "_views")

    def __init__(
        self,
        store: Any,
        runner: Any,
        config: Any,
        address: str,
        registry: Registry | None = None,
        cache: StructureCache | None = None,
        watcher: FolderWatcher | None = None,
        observer: CopyObserver | None = None,
        quotas: Any = None,
        referral: Callable[[str], str | None] | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.referral = referral
        self.config = config
        self.address = address
        self.quotas = quotas
        self.registry = registry if registry is not None else defaultRegistry
        self.cache = cache if cache is not None else StructureCache()
        self.watcher = watcher
        self.observer = observer
        self._account: Any = None
        self._subscriptions: tuple[str, ...] = ()
        self._views: tuple[MailboxView, ...] = ()

    # -- store access --------------------------------------------------------------
    def account(self) -> defer.Deferred[Any]:
        """The store account (created on first use, via the runner)."""
        if self._account is not None:
            return defer.succeed(self._account)

        def got(acct: Any) -> Any:
            if self._account is None:
                self._account = sharedStoreAccount(acct)
            return self._account

        return self.runner.run(self.store.account, self.address).addCallback(got)

    def _run(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run C{f(storeAccount, *args)} in the runner."""
        return self.account().addCallback(lambda acct: self.runner.run(f, acct, *args))

    def login(self) -> defer.Deferred[None]:
        """First-login work: the Maildir, the special folders, the subscription cache.

        L{MailboxElsewhere} when another node of the cluster owns the mailbox (nothing
        is made here then)."""

        def work(acct: Any) -> list[str]:
            acct.ensureSpecialFolders()
            return acct.subscriptions()

        def got(subs: list[str]) -> None:
            self._subscriptions = _names(subs)

        def checked(url: str | None) -> Any:
            if url:
                raise MailboxElsewhere(url)
            return self._run(work).addCallback(got)

        if self.referral is None:
            return self._run(work).addCallback(got)
        return self.runner.run(self.referral, self.address).addCallback(checked)

    # -- IAccount ------------------------------------------------------------------
    def addMailbox(self, name: str, mbox: Any = None) -> defer.Deferred[bool]:
        """Create folder C{name} (IAccount)."""
        return self.create(name)

    def create(self, pathspec: str, use: str | None = None) -> defer.Deferred[bool]:
        """Create a folder (IAccount); its missing parents are left implicit. C{use}
        is its special-use attribute (CREATE-SPECIAL-USE); if giving it fails, the
        folder is removed again."""
        name = pathspec.rstrip(DELIMITER) if pathspec.endswith(DELIMITER) else pathspec

        def work(acct: Any) -> bool:
            acct.createFolder(name)
            if use is not None:
                try:
                    acct.setSpecialUse(name, use)
                except BaseException:
                    acct.deleteFolder(name)
                    raise
            return True

        d = self._run(work)
        d.addCallback(lambda r: (self.registry.changed(self.address, name), r)[1])
        d.addCallback(lambda r: (self._listChanged("create", name), r)[1])
        return d

    def _listChanged(self, *event: str) -> None:
        """Tell the NOTIFY sessions of this user (L{Registry.listChanged})."""
        self.registry.listChanged(self.address, event, origin=self)

    def select(self, name: str, rw: bool = True, claimRecent: bool | None = None
               ) -> defer.Deferred[MailboxView]:
        """Open a view of folder C{name} (IAccount); NoSuchFolder when it is missing.
        A read-write view claims \\Recent unless C{claimRecent} is False (an IMAP4rev2
        session has no \\Recent and leaves it to the others)."""
        claim = rw if claimRecent is None else claimRecent and rw

        def work(acct: Any) -> tuple[Any, Any]:
            folder = acct.folder(name)
            return folder, folder.scan(claimRecent=claim)

        def got(result: tuple[Any, Any]) -> MailboxView:
            folder, state = result
            folder = sharedStoreFolder(folder)
            view = MailboxView(self, folder, folder.name, rw, state)
            self._views = (*self._views, view)
            self.registry.register(view)
            self.registry.checkLater(folder, self.runner)  # (a claim moved files)
            if self.watcher is not None:
                self.watcher.watch(folder.path, view.markDirty)
            return view

        return self._run(work).addCallback(got)

    def releaseView(self, view: MailboxView) -> None:
        """Forget a closed view: no more change notifications."""
        self._views = tuple(v for v in self._views if v is not view)
        self.registry.unregister(view)
        if self.watcher is not None:
            # Bound methods compare equal when they bind the same view.
            self.watcher.unwatch(view.folder.path, view.markDirty)

    def delete(self, name: str) -> defer.Deferred[None]:
        """Delete a folder (IAccount)."""
        d = self._run(lambda acct: acct.deleteFolder(name))
        return d.addCallback(lambda _: self._listChanged("delete", name))

    def rename(self, oldname: str, newname: str) -> defer.Deferred[None]:
        """Rename a folder and its children (IAccount)."""

        def work(acct: Any) -> list[str]:
            acct.renameFolder(oldname, newname)
            return acct.subscriptions()

        def done(subs: list[str]) -> None:
            self._subscriptions = _names(subs)
            self._listChanged("rename", oldname, newname)

        return self._run(work).addCallback(done)

    def isSubscribed(self, name: str) -> bool:
        """Whether C{name} is subscribed (IAccount; from the cached list)."""
        return name in self._subscriptions

    def subscribe(self, name: str) -> defer.Deferred[None]:
        """Subscribe to C{name} (IAccount)."""
        d = self._run(lambda acct: acct.subscribe(name))
        return d.addCallback(lambda _: self._setSubscribed(name, True))

    def unsubscribe(self, name: str) -> defer.Deferred[None]:
        """Unsubscribe from C{name} (IAccount)."""
        d = self._run(lambda acct: acct.unsubscribe(name))
        return d.addCallback(lambda _: self._setSubscribed(name, False))

    def _setSubscribed(self, name: str, on: bool) -> None:
        """Update the cached subscription list after (un)subscribing."""
        rest = (n for n in self._subscriptions if n != name)
        self._subscriptions = _names((*rest, name) if on else rest)
        self._listChanged("subscribe" if on else "unsubscribe", name)

    def listMailboxes(self, ref: str, wildcard: str) -> defer.Deferred[list[tuple[str, Any]]]:
        """LIST: (name, L{MailboxInfo}) for folders matching C{ref + wildcard} (IAccount)."""
        pattern = ref + wildcard
        return self._run(folderTable).addCallback(
            lambda result: listEntries(result[0], pattern, result[1])
        )

    def listing(self) -> defer.Deferred[tuple[dict[str, bool], dict[str, str], list[str]]]:
        """(name -> selectable, name -> special use, subscribed names), read in one
        runner call, for LIST-EXTENDED (L{pymaild.imap.listext})."""

        def work(acct: Any) -> tuple[dict[str, bool], dict[str, str], list[str]]:
            table, special = folderTable(acct)
            return table, special, acct.subscriptions()

        def got(result: tuple[dict[str, bool], dict[str, str], list[str]]) -> Any:
            self._subscriptions = _names(result[2])
            return result

        return self._run(work).addCallback(got)

    def listSubscribed(self, ref: str, wildcard: str) -> defer.Deferred[list[tuple[str, Any]]]:
        """LSUB: subscribed names matching the pattern, \\Noselect when missing."""
        pattern = ref + wildcard

        def work(acct: Any) -> tuple[list[str], dict[str, bool], dict[str, str]]:
            table, special = folderTable(acct)
            return acct.subscriptions(), table, special

        def got(result: tuple[list[str], dict[str, bool], dict[str, str]]) -> list[Any]:
            subs, table, special = result
            self._subscriptions = _names(subs)
            existing = {n for n, sel in table.items() if sel}
            regex = patternRegex(pattern)
            out = []
            seen = set()
            for s in sorted(subs, key=lambda n: (n != "INBOX", n)):
                if matchName(regex, s):
                    attrs = [] if s in existing else ["\\Noselect"]
                    if s in special and s in existing:
                        attrs.append(special[s])
                    out.append((s, MailboxInfo(attrs)))
                    seen.add(s)
                elif "%" in pattern:
                    parts = s.split(DELIMITER)
                    for i in range(1, len(parts)):
                        parent = DELIMITER.join(parts[:i])
                        if parent not in seen and matchName(regex, parent):
                            out.append((parent, MailboxInfo(["\\Noselect"])))
                            seen.add(parent)
            return out

        return self._run(work).addCallback(got)

    def quotaReport(self) -> defer.Deferred[Any]:
        """C{(usage, limits)} of the account (limits without any when it has no quotas)."""
        if self.quotas is None:
            return defer.succeed((Usage(), QuotaLimits()))
        return self.runner.run(self.quotas.report, self.address)

    def status(self, name: str) -> defer.Deferred[Any]:
        """A fresh scan of folder C{name} without claiming \\Recent (for STATUS)."""
        return self._run(lambda acct: acct.folder(name).scan(claimRecent=False))

    def append(
        self, name: str, messages: list[tuple[Any, tuple[str, ...], float | None]]
    ) -> defer.Deferred[tuple[int, list[int]]]:
        """Append messages (data, flags, internal date) to folder C{name}, all or none
        (MULTIAPPEND); fires with (uidvalidity, their UIDs).

        NoSuchFolder when the folder is missing (the server answers TRYCREATE).
        """

        def work(acct: Any) -> tuple[int, list[int]]:
            folder = acct.folder(name)
            size = 0
            for data, _flags, _date in messages:
                if hasattr(data, "seek"):
                    data.seek(0, os.SEEK_END)
                    size += data.tell()
                    data.seek(0)
                else:
                    size += len(data)
            if self.quotas is not None:
                self.quotas.check(self.address, size, len(messages))
            uids = folder.appendMany(messages)
            return folder.scan(claimRecent=False).uidvalidity, uids

        def done(result: tuple[int, list[int]]) -> tuple[int, list[int]]:
            self.registry.changed(self.address, name)
            return result

        return self._run(work).addCallback(done)

    def copyTo(
        self, view: MailboxView, uids: list[int], dest: str, move: bool = False
    ) -> defer.Deferred[tuple[int, list[tuple[int, int]]]]:
        """Copy messages of C{view} into folder C{dest}; fires with (uidvalidity, pairs).

        A copy must fit the account's quota (L{pymaild.auth.quota.QuotaExceeded}
        otherwise); the copy of a MOVE (C{move}) need not, as every folder is in the one
        quota root and a move adds nothing to it (Dovecot does not check moves within a
        quota root either).

        The account's L{CopyObserver} hears of the copies before the Deferred fires.
        """
        infos = [view.infos[u] for u in uids]
        src = view.folder
        names: list[str] = []

        def work(acct: Any) -> tuple[int, list[tuple[int, int]]]:
            target = acct.folder(dest)
            names.append(target.name)
            if self.quotas is not None and infos and not move:
                self.quotas.check(self.address, sum(i.size for i in infos), len(infos))
            pairs = src.copy([i.key for i in infos], target) if infos else []
            return target.scan(claimRecent=False).uidvalidity, pairs

        def done(result: tuple[int, list[tuple[int, int]]]) -> Any:
            if result[1]:
                self.registry.changed(self.address, dest)
                if self.observer is not None:
                    try:
                        self.observer.copied(self.address, src.name, names[0],
                                             [d for _, d in result[1]])
                    except Exception:
                        log.failure("the copy observer failed")
            return result

        return self._run(work).addCallback(done)

    # -- INamespacePresenter -------------------------------------------------------
    def getPersonalNamespaces(self) -> list[list[str]]:
        """One personal namespace: empty prefix, C{/} delimiter."""
        return [["", DELIMITER]]

    def getSharedNamespaces(self) -> None:
        """No shared namespaces."""
        return None

    def getOtherNamespaces(self) -> None:
        """No other users' namespaces."""
        return None

    def getUserNamespaces(self) -> None:
        """No other users' namespaces."""
        return None

    def logout(self) -> None:
        """Close every view this account opened (connection gone)."""
        for view in list(self._views):
            view.close()


class _WatcherService(Service):
    """Runs the registry's folder checks (L{Registry.checkLater}) while the application
    runs; stops them and the inotify watcher with it."""

    def __init__(self, watcher: FolderWatcher | None, registry: Registry) -> None:
        self.watcher = watcher
        self.registry = registry

    def startService(self) -> None:
        """Start timing the folder checks with the reactor."""
        Service.startService(self)
        from twisted.internet import reactor

        self.registry.startChecks(reactor)

    def stopService(self) -> None:
        """Cancel the folder checks; close the inotify descriptor."""
        Service.stopService(self)
        self.registry.stopChecks()
        if self.watcher is not None:
            self.watcher.stop()


class IMAPAvatars:
    """Realm factory for C{imap4.IAccount}: avatar id → (IMAPAccount, logout).

    C{watcher=True} (the default) watches open folders with inotify where available;
    C{service} stops the watcher and should be added to the application. C{observer}
    (a L{CopyObserver}) hears of every COPY and MOVE of every session. C{quotas} (a
    L{pymaild.auth.quota.Quotas}) limits APPEND and COPY and answers the QUOTA commands
    (None: no quotas). C{referral(address) -> url | None} (blocking; a cluster node
    has one) names the IMAP URL of the node that owns a mailbox stored elsewhere.
    C{cache} (a L{StructureCache}; a new one when None) holds the summaries and parses of
    messages for every session these avatars open: one per server, owned here, never a
    module global that would couple servers built in one process.
    """

    def __init__(
        self,
        store: Any,
        diskRunner: Any,
        config: Any,
        registry: Registry | None = None,
        cache: StructureCache | None = None,
        watcher: FolderWatcher | bool | None = True,
        observer: CopyObserver | None = None,
        quotas: Any = None,
        referral: Callable[[str], str | None] | None = None,
    ) -> None:
        self.observer = observer
        self.quotas = quotas
        self.referral = referral
        self.store = store
        self.runner = diskRunner
        self.config = config
        self.registry = registry if registry is not None else defaultRegistry
        self.cache = cache if cache is not None else StructureCache()
        if watcher is True:
            watcher = FolderWatcher()
        self.watcher: FolderWatcher | None = watcher or None
        self.service = _WatcherService(self.watcher, self.registry)

    def __call__(self, avatarId: Any) -> tuple[IMAPAccount, Callable[[], None]]:
        """Build the avatar for C{avatarId}; anonymous logins are refused."""
        if avatarId is ANONYMOUS or not avatarId:
            raise UnauthorizedLogin("IMAP needs an authenticated user")
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8")
        avatarId = sys.intern(avatarId)  # one string per user, not per session
        account = IMAPAccount(
            self.store, runnerFor(self.runner, avatarId), self.config, avatarId,
            self.registry, self.cache,
            self.watcher, self.observer, self.quotas, self.referral,
        )
        return account, account.logout
