"""The vacation message a user sets on the web page, kept as a Sieve script.

The page does not invent a store of its own: the settings become the script
C{pymaild-vacation} in the user's Pigeonhole script directory (L{ScriptStorage}), so
Sieve at delivery answers the mail, ManageSieve clients see the script, and Dovecot runs
it too. The settings travel in the script's first line, a comment holding JSON, so the
page reads back exactly what it wrote::

    # pymaild-vacation {"subject": "Away", "message": "...", "days": 7, "include": "main"}
    require ["vacation", "include"];
    vacation :days 7 :subject "Away" "...";
    include :personal "main";

Turning it on activates that script. If the user had another active script, the
vacation script includes it after the vacation action (the way webmail vacation rules
sit at the top of a script), so their filing rules keep working; turning it off makes
that script active again. Turning it off with no earlier script leaves no active script.
Blocking (disk): run these in a runner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pymaild.errors import PymaildError
from pymaild.sieve.checker import Limits, compileScript
from pymaild.sieve.grammar import SieveSyntaxError
from pymaild.sieve.storage import NoSuchScript, ScriptStorage

SCRIPT = "pymaild-vacation"
MARK = "# pymaild-vacation "
#: Longest reply text the page accepts.
MAX_MESSAGE = 16384
MAX_SUBJECT = 200
#: Days between two replies to the same sender (RFC 5230 :days), as the page allows.
MIN_DAYS, MAX_DAYS = 1, 365


class VacationRefused(PymaildError):
    """Settings that cannot be stored (the message says why)."""


@dataclass(frozen=True)
class VacationSettings:
    """A user's vacation message.

    @ivar enabled: whether the vacation script is the active one.
    @ivar include: the script it runs after the reply (the one active before), or "".
    """

    enabled: bool = False
    subject: str = ""
    message: str = ""
    days: int = 7
    include: str = ""


def _quote(text: str) -> str:
    """A Sieve quoted string (RFC 5228 section 2.4.2)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def scriptText(settings: VacationSettings) -> bytes:
    """The script for C{settings}."""
    meta = {"subject": settings.subject, "message": settings.message,
            "days": settings.days, "include": settings.include}
    needs = ["vacation"] + (["include"] if settings.include else [])
    lines = [MARK + json.dumps(meta, ensure_ascii=True),
             "require [" + ", ".join(_quote(n) for n in needs) + "];",
             f"vacation :days {settings.days}"
             + (f" :subject {_quote(settings.subject)}" if settings.subject else "")
             + f" {_quote(settings.message)};"]
    if settings.include:
        lines.append(f"include :personal {_quote(settings.include)};")
    return ("\n".join(lines) + "\n").encode("utf-8")


def read(storage: ScriptStorage) -> VacationSettings:
    """The user's settings (defaults when the page never stored any)."""
    try:
        first = storage.read(SCRIPT).split(b"\n", 1)[0].decode("utf-8", "replace")
    except NoSuchScript:
        return VacationSettings()
    try:
        meta = json.loads(first[len(MARK):]) if first.startswith(MARK) else {}
    except ValueError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    return VacationSettings(
        enabled=storage.active() == SCRIPT, subject=str(meta.get("subject", "")),
        message=str(meta.get("message", "")), days=_days(meta.get("days", 7)),
        include=str(meta.get("include", "")))


def _days(value: object) -> int:
    try:
        return min(max(int(value), MIN_DAYS), MAX_DAYS)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 7


def store(storage: ScriptStorage, enabled: bool, subject: str, message: str, days: int,
          limits: Limits) -> VacationSettings:
    """Store new settings and turn the reply on or off; return what is stored.

    @raise VacationRefused: a value is out of bounds, or the script would not compile.
    """
    subject = subject.strip()
    message = message.replace("\r\n", "\n").strip("\n")
    if len(subject) > MAX_SUBJECT or any(c in subject for c in "\r\n\0"):
        raise VacationRefused(f"the subject must be one line of at most {MAX_SUBJECT}"
                              " characters")
    if "\0" in message or len(message) > MAX_MESSAGE:
        raise VacationRefused(f"the message must be text of at most {MAX_MESSAGE}"
                              " characters")
    if enabled and not message:
        raise VacationRefused("a vacation reply needs a message")
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise VacationRefused(f"days must be between {MIN_DAYS} and {MAX_DAYS}")
    before = read(storage)
    active = storage.active()
    include = before.include if active in (None, SCRIPT) else active or ""
    if include and include not in storage.names():
        include = ""
    settings = VacationSettings(enabled, subject, message, days, include)
    data = scriptText(settings)
    try:
        compileScript(data, SCRIPT, storage.loader, limits)
    except SieveSyntaxError as e:
        raise VacationRefused(f"the vacation script would not compile: {e}") from None
    storage.write(SCRIPT, data)
    if enabled:
        storage.activate(SCRIPT)
    elif active == SCRIPT:
        storage.activate(include or None)
    return read(storage)


__all__ = ["SCRIPT", "VacationRefused", "VacationSettings", "read", "scriptText", "store"]
