"""neomutt, driven in tmux, reading and flagging a message over IMAP with CONDSTORE and
QRESYNC on (``imap_condstore``, ``imap_qresync``; QRESYNC in neomutt needs its header
cache, which the test gives it).

The server runs in the test's reactor (``ClientServer``); neomutt runs in a private tmux
server (its own socket, killed at the end) with a generated muttrc, logs in over the
loopback in the clear (the server's ``tls-or-loopback`` policy) and logs its IMAP traffic
(``-d 5``), which shows the ENABLE and the QRESYNC SELECT it sent. Debian's neomutt is
built without zlib, so ``imap_deflate`` does not exist there: COMPRESS is proven by the
Mail::IMAPClient and interimap tests instead.

Without neomutt or tmux the tests are skipped, except under CI (``CI=true``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task, utils
from twisted.trial.unittest import TestCase

from tests.support import requireClient
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, makeMessage


class NeomuttTests(TestCase):
    """Read a message (\\Seen) and flag it (\\Flagged) in neomutt; the server keeps both,
    and a second start resynchronises from neomutt's cache by CHANGEDSINCE/VANISHED."""

    timeout = 120

    def setUp(self) -> None:
        """Find neomutt and tmux (skip, or fail under CI), start the server."""
        self.neomutt = requireClient("neomutt")
        self.tmux = requireClient("tmux")
        self.srv = ClientServer(self, cleartext="tls-or-loopback")
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.home, "hcache"))
        # A short directory of its own for the socket (a UNIX socket path is at most
        # 107 bytes; the test's temporary directory is longer).
        sockDir = tempfile.mkdtemp(prefix="nm")
        self.addCleanup(shutil.rmtree, sockDir, True)
        self.socket = os.path.join(sockDir, "s")
        self.log = os.path.join(self.home, "neomutt.log")
        self.rc = os.path.join(self.home, "muttrc")
        url = f"imap://{ALICE.replace('@', '%40')}@127.0.0.1:{self.srv.portNumber}/"
        with open(self.rc, "w") as f:
            f.write(
                f'set folder="{url}"\nset spoolfile="+INBOX"\n'
                f'set imap_user="{ALICE}"\nset imap_pass="{ALICE_PW}"\n'
                "set ssl_starttls=no\nset ssl_force_tls=no\n"
                "set imap_condstore=yes\nset imap_qresync=yes\n"
                f'set header_cache="{os.path.join(self.home, "hcache")}"\n'
                "set mail_check=1\nset timeout=1\nset confirmappend=no\n"
                "set quit=yes\nset move=no\nset mark_old=no\nset sort=date\n"
                'set pager_stop=yes\nset wait_key=no\nset mailcap_path="/dev/null"\n'
            )
        self.addCleanup(self.killTmux)

    def env(self) -> dict[str, str]:
        """A clean environment for tmux and neomutt (no user configuration)."""
        return {"HOME": self.home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "TERM": "xterm", "LANG": "C.UTF-8"}

    def tmuxRun(self, *args: str) -> defer.Deferred[bytes]:
        """Run one tmux command on the private server."""
        return utils.getProcessOutput(self.tmux, ["-S", self.socket, *args],
                                      env=self.env(), errortoo=True)

    @defer.inlineCallbacks
    def killTmux(self) -> Any:
        """Stop the private tmux server (and neomutt in it)."""
        if os.path.exists(self.socket):
            yield utils.getProcessOutputAndValue(self.tmux, ["-S", self.socket, "kill-server"],
                                                 env=self.env())
        # Wait until no neomutt of ours is left (the process guard checks): the tmux
        # server goes first, and neomutt, hung up on, may still be closing its IMAP
        # connection for a moment after.
        for _ in range(100):
            if not os.path.exists(self.socket) and not self.neomuttRunning():
                break
            yield task.deferLater(reactor, 0.1, lambda: None)

    def neomuttRunning(self) -> bool:
        """Whether a process started with this test's muttrc is still alive."""
        mark = self.rc.encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if mark in f.read():
                        return True
            except OSError:
                continue
        return False

    @defer.inlineCallbacks
    def screen(self) -> Any:
        """The visible text of neomutt's window."""
        out = yield self.tmuxRun("capture-pane", "-p", "-t", "mutt")
        return out

    @defer.inlineCallbacks
    def waitFor(self, pattern: bytes, what: str, timeout: float = 20.0) -> Any:
        """Poll the window until C{pattern} shows; fail with the screen if it never does."""
        deadline = time.monotonic() + timeout
        text = b""
        while time.monotonic() < deadline:
            text = yield self.screen()
            if re.search(pattern, text):
                return text
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.fail(f"{what}: {pattern!r} never appeared:\n{text.decode(errors='replace')}")

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Start neomutt in a new detached tmux session and wait for the index."""
        yield self.tmuxRun("new-session", "-d", "-s", "mutt", "-x", "160", "-y", "40",
                           f"{self.neomutt} -n -F {self.rc} -d 5 -l {self.log}")
        yield self.waitFor(rb"hello-one", "the index")

    @defer.inlineCallbacks
    def keys(self, *keys: str) -> Any:
        """Type keys into neomutt."""
        yield self.tmuxRun("send-keys", "-t", "mutt", *keys)

    def flagsOf(self, subject: str) -> frozenset[str]:
        """The flags the server has for the message with C{subject}."""
        f = self.srv.store.account(ALICE).folder("INBOX")
        for info in f.scan().messages:
            if b"Subject: " + subject.encode() in f.read(info):
                return info.flags
        raise AssertionError(f"no message {subject}")

    def traffic(self) -> bytes:
        """neomutt's debug log (all its log files: it numbers them per start)."""
        out = b""
        for name in sorted(os.listdir(self.home)):
            if name.startswith("neomutt.log"):
                with open(os.path.join(self.home, name), "rb") as f:
                    out += f.read()
        return out

    @defer.inlineCallbacks
    def test_readAndFlag(self) -> None:
        """Open the message (neomutt sets \\Seen), flag it (F), sync ($) and quit; the
        server has both flags. A second start asks only for the changes since its
        MODSEQ and gets the flags with their MODSEQ."""
        self.srv.store.deliver([ALICE], makeMessage("hello-one", b"Body one.\r\n"))
        yield self.start()
        yield self.keys("Enter")
        yield self.waitFor(rb"Body one\.", "the pager")
        yield self.keys("q")
        yield self.waitFor(rb"hello-one", "back in the index")
        yield self.keys("F")
        yield self.keys("$")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if {"\\Seen", "\\Flagged"} <= self.flagsOf("hello-one"):
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(self.flagsOf("hello-one"), frozenset({"\\Seen", "\\Flagged"}))
        yield self.keys("q")
        yield self.killTmux()
        log = self.traffic()
        self.assertRegex(log, rb"ENABLE (CONDSTORE QRESYNC|QRESYNC|CONDSTORE)")
        # The second start knows the mailbox from its header cache: it asks only for
        # what changed since the MODSEQ it kept (neomutt's QRESYNC: SELECT (CONDSTORE),
        # then UID FETCH of the cached UIDs with CHANGEDSINCE and VANISHED).
        self.srv.store.deliver([ALICE], makeMessage("hello-two", b"Body two.\r\n"))
        yield self.start()
        text = yield self.waitFor(rb"hello-two", "the new message")
        log = self.traffic()
        self.assertIn(b'SELECT "INBOX" (CONDSTORE)', log)
        self.assertRegex(log, rb"UID FETCH 1:1 \(FLAGS\) \(CHANGEDSINCE \d+ VANISHED\)")
        self.assertRegex(log, rb"< \* 1 FETCH \(UID 1 FLAGS \(\\Flagged \\Seen\) "
                              rb"MODSEQ \(\d+\)\)")
        self.assertIn(b"hello-one", text)
        yield self.keys("q")
