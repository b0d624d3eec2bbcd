"""Interoperability: Dovecot can open the same tree pymaild writes, and the reverse.

A real Dovecot (L{tests.interop.dovecot_support.Dovecot}: C{dovecot -F} with a
generated configuration) serves IMAP on a free loopback port over a pymaild data
directory: C{mail_location = maildir:<data>/mail/%d/%n/Maildir} with C{separator = /},
passwords from pymaild's own passwd file (so Dovecot also verifies pymaild's ARGON2ID
hashes), a static userdb. Next to it, pymaild's IMAP server runs in the test's reactor
over the same directory (L{PymaildServer}; L{serversOverOneTree} sets both up).

Both directions are checked with imaplib, comparing what each server shows (folders incl.
nested and non-ASCII names, \\Noselect parents, subscriptions, UIDVALIDITY, UIDNEXT, UIDs,
flags, keywords, sizes and contents) and, for what Dovecot wrote, what the pymaild store
API reads directly.

Dovecot refuses mail access as root: when the tests run as root the tree is handed to
C{nobody} (chown) before every Dovecot session and Dovecot runs its processes as that
user; otherwise everything runs as the current user.

Without Dovecot (C{apt-get install dovecot-imapd}) the tests are skipped, except under
CI (C{CI=true}) where a missing Dovecot is a failure.
"""

from __future__ import annotations

import hashlib
import imaplib
import os
import re
import shutil
import tempfile
from typing import Any

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, threads
from twisted.mail import imap4
from twisted.trial.unittest import TestCase

from pymaild import config as configModule
from pymaild.auth.checker import PasswdChecker
from pymaild.auth.passwd import PasswdFile
from pymaild.auth.penalty import AuthGate, AuthPenalty
from pymaild.auth.realm import MailRealm
from pymaild.imap.account import IMAPAvatars
from pymaild.imap.notify import Registry
from pymaild.imap.server import IMAPFactory
from pymaild.imap.summarycache import StructureCache
from pymaild.store import MaildirStore, mutf7
from pymaild.threads import ThreadRunner, makePool
from tests.interop.dovecot_support import Dovecot, findDovecot
from tests.support import missing
from tests.test_imap_helpers import ALICE, ALICE_PW, lowCostHashing, makeMessage

SYSTEM_FLAGS = frozenset(("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"))
LIST_RE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')
FETCH_UID = re.compile(rb"UID (\d+)")
FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


def imapName(name: str) -> str:
    """A folder name as a quoted IMAP mailbox argument (modified UTF-7)."""
    return '"' + mutf7.encode(name) + '"'


class PymaildServer:
    """pymaild's IMAP server in the test's reactor over the data directory C{data}."""

    def __init__(self, testcase: TestCase, data: str) -> None:
        """Create the user (cheap ARGON2ID hash), the store and a listener on port 0."""
        lowCostHashing(testcase)
        self.data = data
        config = configModule.load(None, {
            "server": {"data": data, "hostname": "mx.example.org", "domains": ["example.org"]},
            "auth": {"cleartext": "tls-or-loopback", "passwd": os.path.join(data, "passwd")},
        })
        self.store = MaildirStore(os.path.join(data, "mail"), hostname="mx.example.org")
        passwd = PasswdFile(config.auth.passwd)
        passwd.add(ALICE, ALICE_PW)
        pool = makePool("dovecot-test-disk", 4)
        pool.start()
        testcase.addCleanup(pool.stop)
        runner = ThreadRunner(reactor, pool)
        self.passwd = passwd
        self.avatars = avatars = IMAPAvatars(self.store, runner, config, registry=Registry(),
                                             cache=StructureCache(), watcher=False)
        portal = Portal(MailRealm({imap4.IAccount: avatars}),
                        [PasswdChecker(passwd, runner), AllowAnonymousAccess()])
        factory = IMAPFactory(config=config, gate=AuthGate(portal, AuthPenalty(), reactor),
                              clock=reactor)
        self.listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
        testcase.addCleanup(self.listener.stopListening)
        self.port = self.listener.getHost().port


def serversOverOneTree(testcase: TestCase, prefix: str,
                       quota: bool = False) -> tuple[PymaildServer, Dovecot]:
    """pymaild's IMAP server (listening) and a Dovecot (configured, not started) over one
    fresh data directory, all removed at the end of C{testcase}; C{quota} is
    L{Dovecot}'s.

    The directory is made under the system temp dir with C{prefix}, traversable by
    Dovecot's unprivileged user; pymaild's store is its own (no caches shared).

    @raise SkipTest: Dovecot is not installed (under CI: AssertionError instead).
    """
    binary = findDovecot()
    if binary is None:
        missing("Dovecot", "apt-get install dovecot-imapd")
    top = tempfile.mkdtemp(prefix=prefix)
    testcase.addCleanup(shutil.rmtree, top, True)
    os.chmod(top, 0o755)
    data = os.path.join(top, "data")
    os.makedirs(data)
    pymaild = PymaildServer(testcase, data)
    dovecot = Dovecot(binary, data, os.path.join(top, "dovecot"), quota=quota)
    testcase.addCleanup(dovecot.stop)
    return pymaild, dovecot


# -- imaplib helpers (run in threads) ---------------------------------------------------


def connect(port: int) -> imaplib.IMAP4:
    """A logged-in imaplib session with the server on C{port}."""
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    m.login(ALICE, ALICE_PW)
    return m


def session(port: int, work: Any) -> defer.Deferred[Any]:
    """Run C{work(imaplib session)} against the IMAP server on C{port} in a thread,
    logging out afterwards."""
    def run() -> Any:
        m = connect(port)
        try:
            return work(m)
        finally:
            try:
                m.logout()
            except (imaplib.IMAP4.error, OSError):
                pass
    return threads.deferToThread(run)


def check(result: tuple[str, Any]) -> Any:
    """The data of an imaplib result, which must be OK."""
    typ, data = result
    if typ != "OK":
        raise AssertionError(f"server answered {typ} {data!r}")
    return data


def parseList(lines: list[Any]) -> dict[str, frozenset[str]]:
    """LIST/LSUB lines as name -> the child/selectability attributes (lower-cased)."""
    out = {}
    for line in lines:
        if line is None:
            continue
        if isinstance(line, tuple):  # name sent as a literal
            line = line[0].rsplit(b"{", 1)[0] + b'"' + line[1] + b'"'
        m = LIST_RE.match(line)
        assert m is not None, line
        raw = m.group("name").decode("ascii")
        if raw.startswith('"'):
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        attrs = {a.lower() for a in m.group("attrs").decode().split()}
        out[mutf7.decode(raw)] = frozenset(
            attrs & {"\\noselect", "\\haschildren", "\\hasnochildren"})
    return out


def folderSnapshot(m: imaplib.IMAP4, name: str) -> dict[str, Any]:
    """EXAMINE a folder: UIDVALIDITY, UIDNEXT, keywords and uid -> (flags, size, digest)."""
    check(m.select(imapName(name), readonly=True))
    validity = int(m.response("UIDVALIDITY")[1][0])
    uidnext = int(m.response("UIDNEXT")[1][0])
    flagsLine = m.response("FLAGS")[1][0].decode()
    keywords = frozenset(flagsLine.strip("()").split()) - SYSTEM_FLAGS - {"\\Recent"}
    messages: dict[int, list[Any]] = {}
    for item in check(m.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE)")):
        if item is None:
            continue
        uid, flags, size = (FETCH_UID.search(item), FETCH_FLAGS.search(item),
                            FETCH_SIZE.search(item))
        assert uid is not None and flags is not None and size is not None, item
        messages[int(uid.group(1))] = [
            frozenset(flags.group(1).decode().split()) - {"\\Recent"}, int(size.group(1)), None]
    for item in check(m.uid("FETCH", "1:*", "BODY.PEEK[]")):
        if isinstance(item, tuple):
            uid = FETCH_UID.search(item[0])
            assert uid is not None, item
            messages[int(uid.group(1))][2] = hashlib.sha256(item[1]).hexdigest()
    check(m.close())
    return {"uidvalidity": validity, "uidnext": uidnext, "keywords": keywords,
            "messages": {u: tuple(v) for u, v in messages.items()}}


def snapshot(port: int) -> dict[str, Any]:
    """Everything one IMAP server shows of the account (read-only; \\Recent ignored)."""
    m = connect(port)
    try:
        folders = parseList(check(m.list('""', "*")))
        subscribed = set(parseList(check(m.lsub('""', "*"))))
        contents = {name: folderSnapshot(m, name) for name, attrs in sorted(folders.items())
                    if "\\noselect" not in attrs}
    finally:
        m.logout()
    return {"folders": folders, "subscribed": subscribed, "contents": contents}


def appendUid(result: tuple[str, Any]) -> tuple[int, int]:
    """(uidvalidity, uid) from an APPEND's APPENDUID response code."""
    text = check(result)[0]
    m = re.search(rb"APPENDUID (\d+) (\d+)", text)
    assert m is not None, text
    return int(m.group(1)), int(m.group(2))


# -- the tests ---------------------------------------------------------------------------


class DovecotInteropTests(TestCase):
    """pymaild and Dovecot serve the same Maildir tree and agree on every detail."""

    timeout = 180

    def setUp(self) -> None:
        """Find Dovecot (skip, or fail under CI); prepare a data directory both servers
        use (under the system temp dir, traversable by Dovecot's unprivileged user)."""
        self.pymaild, self.dovecot = serversOverOneTree(self, "pymaild-dovecot-")
        self.store = self.pymaild.store

    def dovecotSession(self, work: Any) -> defer.Deferred[Any]:
        """Run C{work(imaplib session)} against Dovecot in a thread (tree handed over)."""
        self.dovecot.handOver()
        return session(self.dovecot.port, work)

    def pymaildSession(self, work: Any) -> defer.Deferred[Any]:
        """Run C{work(imaplib session)} against pymaild's IMAP server in a thread."""
        return session(self.pymaild.port, work)

    @defer.inlineCallbacks
    def assertSameView(self) -> Any:
        """Both servers show the same folders, subscriptions and messages."""
        self.dovecot.handOver()
        theirs = yield threads.deferToThread(snapshot, self.dovecot.port)
        ours = yield threads.deferToThread(snapshot, self.pymaild.port)
        self.assertEqual(ours["folders"], theirs["folders"], self.dovecot.log())
        self.assertEqual(ours["subscribed"], theirs["subscribed"])
        self.assertEqual(set(ours["contents"]), set(theirs["contents"]))
        for name in ours["contents"]:
            self.assertEqual(ours["contents"][name], theirs["contents"][name],
                             f"folder {name!r} differs")
        return ours

    @defer.inlineCallbacks
    def test_bothDirections(self) -> Any:
        """What pymaild wrote (store API and IMAP) is what Dovecot shows; what Dovecot
        wrote (APPEND with flags and keywords, CREATE, SUBSCRIBE, STORE, EXPUNGE,
        DELETE) is what the pymaild store and IMAP server show; and pymaild's later
        changes to Dovecot's messages and keywords are again what Dovecot shows."""
        store = self.store
        acct = store.account(ALICE)
        # -- pymaild writes: deliveries (one left in new/), folders, flags, keywords.
        for i in range(4):
            store.deliver([ALICE], makeMessage(f"pymaild-{i}", b"Line one.\r\n.dot\r\n"))
        acct.createFolder("Lists/Twisted")
        acct.createFolder("Grüße/Ärger")
        acct.createFolder("Work")
        acct.subscribe("Lists/Twisted")
        acct.subscribe("Grüße/Ärger")
        inbox = acct.folder("INBOX")
        msgs = inbox.scan(claimRecent=True).messages
        inbox.setFlags(msgs[0].key, {"\\Seen", "$Label1", "Junk"})
        inbox.setFlags(msgs[1].key, {"\\Flagged", "\\Answered"})
        store.deliver([ALICE], makeMessage("still-new"))
        nested = acct.folder("Grüße/Ärger")
        nestedUid = nested.append(makeMessage("nested"), ("\\Draft", "Project-X"))
        self.assertEqual(nestedUid, 1)

        def viaPymaild(m: imaplib.IMAP4) -> dict[str, Any]:
            out = {"append": appendUid(m.append(imapName("Work"), "(\\Seen $Project)", None,
                                                makeMessage("appended-by-pymaild")))}
            check(m.create(imapName("Privat/Straße")))
            check(m.subscribe(imapName("Privat/Straße")))
            check(m.select("INBOX"))
            check(m.store("3", "+FLAGS", "(\\Deleted $Later)"))
            return out

        ours = yield self.pymaildSession(viaPymaild)
        self.dovecot.start()
        view = yield self.assertSameView()
        self.assertEqual(view["contents"]["Work"]["messages"][ours["append"][1]][0],
                         frozenset({"\\Seen", "$Project"}))
        self.assertEqual(view["contents"]["Work"]["uidvalidity"], ours["append"][0])
        inboxView = view["contents"]["INBOX"]
        self.assertEqual(inboxView["uidvalidity"], inbox.scan().uidvalidity)
        self.assertEqual(sorted(inboxView["messages"]), [1, 2, 3, 4, 5])
        self.assertEqual(inboxView["messages"][1][0], frozenset({"\\Seen", "$Label1", "Junk"}))
        self.assertEqual(inboxView["messages"][3][0], frozenset({"\\Deleted", "$Later"}))
        self.assertEqual(inboxView["keywords"], frozenset({"$Label1", "Junk", "$Later"}))
        self.assertEqual(view["folders"]["Grüße"], frozenset({"\\noselect", "\\haschildren"}))
        self.assertIn("Privat/Straße", view["subscribed"])
        self.assertIn("Grüße/Ärger", view["subscribed"])

        # -- Dovecot writes.
        sent = makeMessage("from-dovecot", b"Written by Dovecot.\r\n")

        def viaDovecot(m: imaplib.IMAP4) -> dict[str, Any]:
            out: dict[str, Any] = {}
            out["inboxAppend"] = appendUid(
                m.append("INBOX", "(\\Flagged $Work)", None, sent))
            out["nestedAppend"] = appendUid(
                m.append(imapName("Grüße/Ärger"), "(\\Seen $Label1)", None, sent))
            check(m.create(imapName("Dove/Kid")))
            check(m.create(imapName("Née")))
            check(m.subscribe(imapName("Dove/Kid")))
            check(m.unsubscribe(imapName("Lists/Twisted")))
            check(m.delete(imapName("Work")))
            check(m.rename(imapName("Privat/Straße"), imapName("Privat/Gasse")))
            out["kidAppend"] = appendUid(m.append(imapName("Dove/Kid"), "()", None, sent))
            check(m.select("INBOX"))
            check(m.store("2", "+FLAGS", "(\\Seen Important)"))
            check(m.store("1", "-FLAGS", "(Junk)"))
            check(m.expunge())  # removes UID 3 (\Deleted by pymaild)
            return out

        theirs = yield self.dovecotSession(viaDovecot)
        # The store API reads what Dovecot wrote.
        special = ["Archive", "Drafts", "Junk", "Sent", "Trash"]  # made at pymaild login
        self.assertEqual(acct.listFolders(),
                         ["INBOX", *sorted(["Dove", "Dove/Kid", "Grüße", "Grüße/Ärger", "Lists",
                                            "Lists/Twisted", "Née", "Privat", "Privat/Gasse",
                                            *special])])
        # Dovecot's RENAME leaves subscriptions alone (pymaild's moves them along).
        self.assertEqual(set(acct.subscriptions()),
                         {"Grüße/Ärger", "Privat/Straße", "Dove/Kid", *special})
        state = inbox.scan()
        byUid = {i.uid: i for i in state.messages}
        self.assertEqual(sorted(byUid), [1, 2, 4, 5, theirs["inboxAppend"][1]])
        self.assertEqual(byUid[1].flags, frozenset({"\\Seen", "$Label1"}))
        self.assertEqual(byUid[2].flags,
                         frozenset({"\\Flagged", "\\Answered", "\\Seen", "Important"}))
        dove = byUid[theirs["inboxAppend"][1]]
        self.assertEqual(dove.flags, frozenset({"\\Flagged", "$Work"}))
        self.assertEqual(dove.size, len(sent))
        with inbox.open(dove) as f:
            self.assertEqual(f.read(), sent)
        nestedState = nested.scan()
        self.assertEqual([(i.uid, i.flags) for i in nestedState.messages],
                         [(1, frozenset({"\\Draft", "Project-X"})),
                          (theirs["nestedAppend"][1], frozenset({"\\Seen", "$Label1"}))])
        kid = acct.folder("Dove/Kid").scan()
        self.assertEqual(kid.uidvalidity, theirs["kidAppend"][0])
        self.assertEqual([i.uid for i in kid.messages], [theirs["kidAppend"][1]])
        # pymaild's IMAP server shows exactly what Dovecot shows.
        yield self.assertSameView()

        # -- pymaild changes Dovecot's messages and reuses Dovecot's keywords.
        kidFolder = acct.folder("Dove/Kid")
        kidFolder.setFlags(kid.messages[0].key, {"\\Answered", "$Work", "FromPymaild"})
        inbox.setFlags(dove.key, {"$Work", "Important"})
        inbox.expunge([byUid[4].key])
        nested.append(makeMessage("after-dovecot"), ("$Label1",))
        view = yield self.assertSameView()
        self.assertEqual(view["contents"]["INBOX"]["messages"][theirs["inboxAppend"][1]][0],
                         frozenset({"$Work", "Important"}))
        self.assertNotIn(4, view["contents"]["INBOX"]["messages"])
        self.assertEqual(view["contents"]["Dove/Kid"]["messages"][theirs["kidAppend"][1]][0],
                         frozenset({"\\Answered", "$Work", "FromPymaild"}))
        # -- pymaild changes the folder tree Dovecot has indexed meanwhile.
        acct.createFolder("Later/Made")
        acct.subscribe("Later/Made")
        acct.renameFolder("Née", "Neu/Née")
        acct.deleteFolder("Lists/Twisted")
        acct.unsubscribe("Dove/Kid")
        view = yield self.assertSameView()
        self.assertEqual(set(view["folders"]) - set(special),
                         {"INBOX", "Dove", "Dove/Kid", "Grüße", "Grüße/Ärger", "Later",
                          "Later/Made", "Neu", "Neu/Née", "Privat", "Privat/Gasse"})
        self.assertEqual(view["subscribed"] - set(special),
                         {"Grüße/Ärger", "Privat/Straße", "Later/Made"})
        problems = [line for line in self.dovecot.log().splitlines()
                    if re.search(r"\b(Warning|Error|Panic|Fatal):", line)]
        self.assertEqual(problems, [])

    @defer.inlineCallbacks
    def test_liveSessions(self) -> Any:
        """A pymaild session that has INBOX selected sees Dovecot's APPEND and flag
        change at its next NOOP, and Dovecot sees pymaild's STORE and EXPUNGE at once."""
        self.store.deliver([ALICE], makeMessage("first"))
        self.dovecot.start()

        def work() -> dict[str, Any]:
            out: dict[str, Any] = {}
            ours = connect(self.pymaild.port)
            try:
                check(ours.select("INBOX"))
                self.dovecot.handOver()
                theirs = connect(self.dovecot.port)
                try:
                    check(theirs.select("INBOX"))
                    out["append"] = appendUid(
                        theirs.append("INBOX", "($Dove)", None, makeMessage("second")))
                    check(theirs.store("1", "+FLAGS", "(\\Flagged)"))
                    ours.response("EXISTS")  # forget SELECT's untagged responses
                    ours.response("FETCH")
                    check(ours.noop())
                    out["exists"] = ours.response("EXISTS")[1]
                    out["fetch"] = ours.response("FETCH")[1]
                    check(ours.store("2", "+FLAGS", "(\\Seen \\Deleted)"))
                    check(ours.expunge())
                    self.dovecot.handOver()
                    theirs.response("EXPUNGE")
                    check(theirs.noop())
                    out["theirExpunge"] = theirs.response("EXPUNGE")[1]
                    out["theirFetch"] = check(theirs.uid("FETCH", "1:*", "(UID FLAGS)"))
                finally:
                    theirs.logout()
            finally:
                ours.logout()
            return out

        out = yield threads.deferToThread(work)
        self.assertEqual(out["append"][1], 2)
        self.assertEqual(out["exists"], [b"2"])
        self.assertIn(b"1 (UID 1 FLAGS (\\Flagged \\Recent))", out["fetch"])
        self.assertEqual(out["theirExpunge"], [b"2"])
        self.assertEqual(out["theirFetch"], [b"1 (UID 1 FLAGS (\\Flagged))"])
