"""A private Dovecot IMAP server over a pymaild data directory, for tests and the bench.

L{Dovecot} writes a configuration that serves the pymaild tree C{<data>} as it is:
C{mail_location = maildir:<data>/mail/%d/%n/Maildir} with C{separator = /}, passwords
from pymaild's own passwd file C{<data>/passwd} (so Dovecot also verifies pymaild's
ARGON2ID hashes), a static userdb, IMAP on a free loopback port, no TLS, and every run,
state and log file under a work directory of its own. It runs C{dovecot -F -c <conf>} and
stops it with SIGTERM.

Dovecot refuses mail access as root: when we run as root, Dovecot's processes run as
C{nobody} and L{Dovecot.handOver} gives the tree to that user (call it again after pymaild,
as root, has written there); otherwise everything runs as the current user.

L{findDovecot} finds the installed binary; under CI (C{CI=true}) a missing Dovecot is an
error rather than a reason to skip.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess

from tests.support import freePort, stopProcess, waitForPort

DOVECOT_PATHS = ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot")
IMAP_BINARIES = ("/usr/lib/dovecot/imap", "/usr/libexec/dovecot/imap",
                 "/usr/local/libexec/dovecot/imap")


def findDovecot(required: bool | None = None) -> str | None:
    """The C{dovecot} master binary when Dovecot's IMAP server is installed, else None.

    @param required: whether a missing Dovecot is an error (AssertionError) rather than
        None; by default it is exactly under CI (C{CI=true}), the same rule as
        L{tests.support.requireClient}.
    """
    path = shutil.which("dovecot")
    if path is None:
        path = next((p for p in DOVECOT_PATHS if os.access(p, os.X_OK)), None)
    if path is not None and not any(os.access(p, os.X_OK) for p in IMAP_BINARIES):
        path = None
    if required is None:
        required = os.environ.get("CI") == "true"
    if path is None and required:
        raise AssertionError("Dovecot is required under CI (apt-get install dovecot-imapd)")
    return path


class Dovecot:
    """A Dovecot master process serving IMAP on a loopback port over a pymaild tree.

    Construction only writes the configuration; L{start} runs the master and L{stop}
    ends it (and with it every Dovecot process).
    """

    def __init__(self, binary: str, data: str, work: str, quota: bool = False) -> None:
        """Write the configuration for the pymaild data directory C{data}; state, sockets
        and logs go under C{work}.

        With C{quota}, the userdb is pymaild's passwd file too (so its extra fields,
        C{userdb_quota_rule=...}, reach Dovecot) and the quota plugins run with
        C{quota = maildir:User quota} (the Maildir++ C{maildirsize} backend).
        """
        self.binary = binary
        self.data = data
        self.port = freePort()
        self.proc: subprocess.Popen[bytes] | None = None
        self.logPath = os.path.join(work, "dovecot.log")
        for sub in ("run", "state"):
            os.makedirs(os.path.join(work, sub), exist_ok=True)
        if os.getuid() == 0:
            user = pwd.getpwnam("nobody")
        else:
            user = pwd.getpwuid(os.getuid())
        self.uid, self.gid = user.pw_uid, user.pw_gid
        group = grp.getgrgid(self.gid).gr_name
        self.conf = os.path.join(work, "dovecot.conf")
        mail = os.path.join(data, "mail")
        with open(self.conf, "w") as f:
            f.write(f"""\
protocols = imap
listen = 127.0.0.1
base_dir = {work}/run
state_dir = {work}/state
log_path = {self.logPath}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{mail}/%d/%n/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {os.path.join(data, "passwd")}
}}
{self._userdb(data, mail, quota)}
first_valid_uid = {self.uid}
first_valid_gid = {self.gid}
default_internal_user = {user.pw_name}
default_internal_group = {group}
default_login_user = {user.pw_name}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
""")

    def _userdb(self, data: str, mail: str, quota: bool) -> str:
        """The userdb section (and, with C{quota}, the quota plugin settings)."""
        if not quota:
            return f"""userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={mail}/%d/%n
}}"""
        return f"""userdb {{
  driver = passwd-file
  args = username_format=%u {os.path.join(data, "passwd")}
  default_fields = uid={self.uid} gid={self.gid} home={mail}/%d/%n
}}
mail_plugins = $mail_plugins quota
protocol imap {{
  mail_plugins = $mail_plugins imap_quota
}}
plugin {{
  quota = maildir:User quota
}}"""

    def handOver(self) -> None:
        """Give the whole tree to Dovecot's mail user (needed only when running as root,
        after pymaild, as root, created files there)."""
        if os.getuid() != 0:
            return
        for d, _dirs, files in os.walk(self.data):
            for name in [d, *(os.path.join(d, f) for f in files)]:
                os.lchown(name, self.uid, self.gid)

    def start(self) -> None:
        """Hand the tree over, start the master in the foreground and wait until IMAP
        accepts connections.

        @raise AssertionError: Dovecot did not start (its stderr and log are in the
            message).
        """
        self.handOver()
        self.proc = subprocess.Popen([self.binary, "-F", "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            waitForPort(self.port, timeout=60, proc=self.proc)
        except RuntimeError as e:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self.stop()
            raise AssertionError(f"Dovecot did not start: {e}\n{err}\n{self.log()}") from None

    def stop(self) -> None:
        """Stop the master with SIGTERM (it stops every child); kill it if it has not
        exited after 30 s. Does nothing when it is not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stopProcess(proc, 30)
        if proc.stderr:
            proc.stderr.close()

    def log(self) -> str:
        """Dovecot's log so far ("" before it wrote any)."""
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""
