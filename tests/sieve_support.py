"""Run Sieve cases through Pigeonhole's C{sieve-test} and through pymaild, and compare.

L{Pigeonhole} writes a private Dovecot configuration (no service runs: C{sieve-test}
is a command-line program that compiles a script and prints the actions it decides for a
message) and parses C{sieve-test}'s report. L{decide} gives pymaild's decision in the
same shape, so a test compares two dictionaries:

    {"error": "compile" | "runtime" | None,
     "stores": [(folder, (flags...))...], "redirects": [...],
     "reject": reason or None, "vacation": {"seconds", "subject", "reason"} or None}

Dovecot refuses mail access as root: as root, C{sieve-test} runs as C{nobody} and the
work directory is handed to that user.

The corpus (C{tests/sieve_corpus/}) is data: C{cases.txt} holds the cases, each a line
C{### name | message | envelope sender | envelope recipient} followed by the script, and
C{messages/} the messages they name.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from pymaild.sieve.checker import SieveSyntaxError, compileScript
from pymaild.sieve.interpreter import SieveEnvelope, SieveRuntimeError, evaluate
from tests.support import missing

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CORPUS = os.path.join(os.path.dirname(__file__), "sieve_corpus")
#: The fixed time the date tests see: the message's own date zone is kept apart.
NOW = 1790000000.0


@dataclass
class Case:
    """One differential case: a script, a message file and an envelope."""

    name: str
    message: str
    sender: str
    recipient: str
    script: bytes


def loadCorpus(path: str = CORPUS) -> list[Case]:
    """Every case of C{cases.txt} under C{path}."""
    cases: list[Case] = []
    head: list[str] | None = None
    lines: list[str] = []

    def flush() -> None:
        if head is not None:
            name, message, sender, recipient = (h.strip() for h in head)
            script = "\n".join(lines).strip("\n") + "\n"
            cases.append(Case(name, message, sender, recipient, script.encode("utf-8")))

    with open(os.path.join(path, "cases.txt"), encoding="utf-8") as f:
        for line in f.read().splitlines():
            if line.startswith("### "):
                flush()
                head = line[4:].split("|")
                lines = []
            elif head is not None:
                lines.append(line)
    flush()
    return cases


def corpusIncludes(path: str = CORPUS, folder: str = "includes") -> dict[str, bytes]:
    """The personal scripts the corpus's C{include} commands name: name → script
    (with C{folder="global"}: the global ones, for C{include :global})."""
    out = {}
    folder = os.path.join(path, folder)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".sieve"):
            with open(os.path.join(folder, name), "rb") as f:
                out[name[: -len(".sieve")]] = f.read()
    return out


def messageBytes(case: Case, path: str = CORPUS) -> bytes:
    """The message a case names, with CRLF line ends."""
    with open(os.path.join(path, "messages", case.message), "rb") as f:
        data = f.read()
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def findSieveTest() -> str:
    """The C{sieve-test} program (skip, or fail under CI, without it)."""
    path = shutil.which("sieve-test")
    if path is None:
        missing("sieve-test", "apt-get install dovecot-sieve")
    assert path is not None
    return path


def _flags(text: str) -> tuple[str, ...]:
    """Flags as the comparison sees them: system flags in lower case, sorted."""
    return tuple(sorted({f.lower() if f.startswith("\\") else f for f in text.split()}))


class Pigeonhole:
    """C{sieve-test} with a configuration of its own in a new directory.

    The directory is made by C{tempfile.mkdtemp} in the system's temporary directory
    (a test's own directory may sit below one that C{nobody} cannot enter); L{cleanUp}
    removes it.
    """

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.work = work = tempfile.mkdtemp(prefix="pymaild-sieve-test-")
        if os.getuid() == 0:
            user = pwd.getpwnam("nobody")
        else:
            user = pwd.getpwuid(os.getuid())
        self.uid, self.gid = user.pw_uid, user.pw_gid
        self.scripts = os.path.join(work, "sieve")
        self.globalDir = os.path.join(work, "global")
        for d in (self.scripts, self.globalDir, os.path.join(work, "Maildir")):
            os.makedirs(d, exist_ok=True)
        self.conf = os.path.join(work, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""\
mail_uid = {self.uid}
mail_gid = {self.gid}
first_valid_uid = 0
first_valid_gid = 0
mail_location = maildir:{work}/Maildir
base_dir = {work}/run
state_dir = {work}/state
log_path = /dev/stderr
plugin {{
  sieve = file:{self.scripts};active={work}/active.sieve
  sieve_global = {self.globalDir}
  sieve_extensions = +vacation-seconds
}}
""")
        self._handOver()

    def cleanUp(self) -> None:
        """Remove the work directory."""
        shutil.rmtree(self.work, ignore_errors=True)

    def _handOver(self) -> None:
        """Give the work tree to the user C{sieve-test} runs as."""
        if os.getuid() != 0:
            return
        for root, _dirs, files in os.walk(self.work):
            os.chown(root, self.uid, self.gid)
            os.chmod(root, 0o755)
            for name in files:
                os.chown(os.path.join(root, name), self.uid, self.gid)

    def decide(self, script: bytes, message: bytes, sender: str, recipient: str,
               includes: dict[str, bytes] | None = None,
               globalIncludes: dict[str, bytes] | None = None) -> dict[str, Any]:
        """What Pigeonhole decides (see the module docstring for the shape)."""
        path = os.path.join(self.work, "case.sieve")
        with open(path, "wb") as f:
            f.write(script)
        for folder, scripts in ((self.scripts, includes), (self.globalDir, globalIncludes)):
            for name, body in (scripts or {}).items():
                with open(os.path.join(folder, name + ".sieve"), "wb") as f:
                    f.write(body)
        return self.decideFile(path, message, sender, recipient)

    def decideFile(self, path: str, message: bytes, sender: str,
                   recipient: str) -> dict[str, Any]:
        """What Pigeonhole decides for the script file at C{path} (under the work
        directory)."""
        mpath = os.path.join(self.work, "case.eml")
        with open(mpath, "wb") as f:
            f.write(message)
        self._handOver()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC"}
        proc = subprocess.run(
            [self.binary, "-c", self.conf, "-f", sender, "-r", recipient,
             "-a", recipient, path, mpath],
            capture_output=True, env=env, timeout=60, check=False)
        return parseReport(proc.stdout.decode("utf-8", "replace"),
                           proc.stderr.decode("utf-8", "replace"), proc.returncode)


def parseReport(out: str, err: str, code: int) -> dict[str, Any]:
    """C{sieve-test}'s report as a decision (see the module docstring)."""
    decision: dict[str, Any] = {"error": None, "stores": [], "redirects": [],
                                "reject": None, "vacation": None}
    if "failed to compile" in err or ("parse failed" in err and code != 0):
        decision["error"] = "compile"
        return decision
    if "final result: failed" in err:
        decision["error"] = "runtime"
        if "implicit keep" in err:
            decision["stores"] = [("INBOX", ())]
        return decision
    if code != 0:
        raise AssertionError(f"sieve-test failed ({code}): {err.strip()}")
    stores: dict[str, tuple[str, ...]] = {}
    current: dict[str, Any] | None = None
    inMessage = False
    reason: list[str] = []
    for line in out.splitlines():
        if inMessage:
            if line == "END MESSAGE":
                inMessage = False
                assert current is not None
                current["reason"] = "\n".join(reason)
            else:
                reason.append(line)
            continue
        stripped = line.strip()
        if stripped.startswith("* store message in folder: "):
            folder = stripped[len("* store message in folder: "):]
            stores.setdefault(folder, ())
            current = {"kind": "store", "folder": folder}
        elif stripped.startswith("+ add IMAP flags: ") and current and \
                current.get("kind") == "store":
            stores[current["folder"]] = _flags(stripped[len("+ add IMAP flags: "):])
        elif stripped.startswith("* redirect message to: "):
            decision["redirects"].append(stripped[len("* redirect message to: "):].strip("<>"))
            current = None
        elif stripped.startswith("* reject message with reason: "):
            decision["reject"] = stripped[len("* reject message with reason: "):]
            current = None
        elif stripped.startswith("* send vacation message"):
            current = {"kind": "vacation", "seconds": None, "subject": None}
            decision["vacation"] = current
        elif stripped.startswith("=> ") and current and current.get("kind") == "vacation":
            key, _, value = stripped[3:].partition(":")
            key = key.strip()
            if key in ("seconds", "subject", "from"):
                current[key] = value.strip()
        elif line == "START MESSAGE":
            inMessage = True
            reason = []
    decision["stores"] = sorted(stores.items())
    decision["redirects"] = sorted(set(decision["redirects"]))
    vac = decision["vacation"]
    if vac is not None:
        decision["vacation"] = {"seconds": int(vac["seconds"]), "subject": vac["subject"],
                                "reason": vac.get("reason", "").strip()}
    return decision


def decide(script: bytes, message: bytes, sender: str, recipient: str,
           includes: dict[str, bytes] | None = None,
           globalIncludes: dict[str, bytes] | None = None) -> dict[str, Any]:
    """What pymaild decides, in L{parseReport}'s shape."""
    decision: dict[str, Any] = {"error": None, "stores": [], "redirects": [],
                                "reject": None, "vacation": None}
    stores = {"personal": includes or {}, "global": globalIncludes or {}}
    try:
        compiled = compileScript(script,
                                 loader=lambda where, name: stores[where].get(name))
    except SieveSyntaxError:
        decision["error"] = "compile"
        return decision
    try:
        result = evaluate(compiled, message, SieveEnvelope(sender, recipient), now=NOW,
                          localZone=0)
    except SieveRuntimeError:
        decision["error"] = "runtime"
        decision["stores"] = [("INBOX", ())]
        return decision
    decision["stores"] = sorted((s.folder, _flags(" ".join(s.flags))) for s in result.stores())
    decision["redirects"] = sorted(result.redirects())
    reject = result.reject()
    decision["reject"] = _CONTROL.sub("?", reject.reason) if reject else None
    vac = result.vacation()
    if vac is not None:
        decision["vacation"] = {"seconds": vac.seconds, "subject": vac.subject,
                                "reason": vac.reason.replace("\r\n", "\n").strip()}
    return decision


__all__ = ["CORPUS", "Case", "Pigeonhole", "corpusIncludes", "decide", "findSieveTest",
           "loadCorpus", "messageBytes", "parseReport"]
