"""The Sieve message check: each local recipient's active script decides where its copy
goes (the L{pymaild.smtp.checks.MessageCheck} after spam filtering).

For every local account of the message whose mailbox is on this node (one another
node of a cluster owns is left to that node, which runs the script when the copy
arrives over LMTP), in the delivery runner (never the reactor thread): the account's
active script (L{pymaild.sieve.storage}) is compiled (cached) and run over the message
as the checks before it left it (with their verdict header fields). Its result becomes
C{envelope.placements[account]}: one L{Placement} per folder, with the script's flags and
C{:create}; none when it discards.

Mail is never lost to a script: a script that does not compile, fails at run time, or
exceeds a limit leaves the copy in INBOX unchanged, and the reason is logged. So does a
script whose redirect could not be queued.

C{reject}/C{ereject} of a message with one recipient refuses it at the end of DATA
(C{550 5.7.1} with the script's reason); with several recipients that account's copy is
dropped and the sender gets a rejection message (an MDN, RFC 5429 section 2.1.1)
through the queue; when that cannot be queued, the copy is kept.

C{redirect} and C{vacation} go through L{pymaild.sieve.outgoing.Outgoing} (the outbound
queue); without a queue they are logged and the copy is kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from pymaild.sieve.actions import Result
from pymaild.sieve.checker import Limits
from pymaild.sieve.grammar import SieveSyntaxError
from pymaild.sieve.interpreter import Interpreter, SieveEnvelope, SieveRuntimeError
from pymaild.sieve.message import MessageView
from pymaild.sieve.outgoing import Outgoing
from pymaild.sieve.storage import CompiledCache, ScriptStorage
from pymaild.smtp.checks import Envelope, Placement, SMTPReply
from pymaild.store.names import INBOX
from pymaild.threads import Runner

log = Logger()

_REPLY_UNSAFE = re.compile(r"[^\x20-\x7e]+")


def homeOf(store: Any, account: str) -> str:
    """The home directory of C{account}: the directory above its Maildir (blocking)."""
    return os.path.dirname(store.account(account).root)


@dataclass
class Decision:
    """One account's script result, or why there is none."""

    account: str
    result: Result | None
    home: str
    own: list[str]


class SieveCheck:
    """Runs each local recipient's active Sieve script (see the module docstring).

    @param store: the L{pymaild.store.MaildirStore}.
    @param runner: where scripts run (a thread pool: compiling and running are CPU and
        disk work).
    @param limits: the script limits.
    @param outgoing: sends redirects and vacation replies, or None (then those actions
        are logged and the copy is kept).
    """

    def __init__(self, store: Any, runner: Runner, limits: Limits | None = None,
                 outgoing: Outgoing | None = None,
                 addressesOf: Callable[[str], list[str]] | None = None,
                 globalDir: str = "") -> None:
        self.globalDir = globalDir
        self.store = store
        self.runner = runner
        self.addressesOf = addressesOf
        self.outgoing = outgoing
        self.setLimits(limits or Limits())

    def setLimits(self, limits: Limits) -> None:
        """Run scripts under new limits from now on (SIGHUP); scripts compiled under the
        old ones are compiled again."""
        self.limits = limits
        self.cache = CompiledCache(limits)

    def check(self, envelope: Envelope, message: bytes) -> defer.Deferred[bytes]:
        """Decide every local account's placements; fire with the message unchanged."""
        if not set(envelope.local) - envelope.away:
            return defer.succeed(message)
        return self.runner.run(self.decide, envelope, message).addCallback(
            self.apply, envelope, message)

    # -- blocking -------------------------------------------------------------------------

    def _addressesOf(self, account: str) -> list[str]:
        """The account's other addresses (its aliases), or none when they cannot be
        read (the reply is then judged by the account and the RCPT address alone)."""
        if self.addressesOf is None:
            return []
        try:
            return self.addressesOf(account)
        except OSError as e:
            log.warn("aliases of {account} unknown ({error})", account=account, error=e)
            return []

    def decide(self, envelope: Envelope, message: bytes) -> list[Decision]:
        """Run every local account's active script (blocking)."""
        view = MessageView(message)
        out = []
        for account, rcpt in envelope.local.items():
            if account in envelope.away:
                continue  # its owner node runs its script, where the script is
            result = None
            home = ""
            try:
                home = homeOf(self.store, account)
                script = self.cache.activeScript(ScriptStorage(home, self.globalDir))
                if script is not None:
                    acct = self.store.account(account)

                    def exists(name: str, acct: Any = acct) -> bool:
                        return name == INBOX or acct.deliveryFolder(name) != INBOX

                    result = Interpreter(script, view, SieveEnvelope(envelope.sender, rcpt),
                                         self.limits, mailboxExists=exists).run()
            except SieveSyntaxError as e:
                log.warn("{id}: sieve script of {account} does not compile ({error}): "
                         "kept in INBOX", id=envelope.id, account=account, error=str(e))
            except SieveRuntimeError as e:
                log.warn("{id}: sieve script of {account} failed ({error}): kept in INBOX",
                         id=envelope.id, account=account, error=str(e))
            except Exception:
                log.failure("{id}: sieve script of {account} broke: kept in INBOX",
                            id=envelope.id, account=account)
            out.append(Decision(account, result, home, [rcpt, *self._addressesOf(account)]))
        return out

    # -- in the reactor -------------------------------------------------------------------

    def apply(self, decisions: list[Decision], envelope: Envelope,
              message: bytes) -> defer.Deferred[bytes]:
        """Turn the results into placements, a refusal, redirects and replies."""
        work = []
        for decision in decisions:
            result = decision.result
            if result is None:
                continue
            account = decision.account
            reject = result.reject()
            if reject is not None:
                if len(envelope.local) == 1 and not envelope.remote:
                    reason = _REPLY_UNSAFE.sub(" ", reject.reason).strip()[:400] or \
                        "Message rejected"
                    log.info("{id}: rejected by the sieve script of {account}",
                             id=envelope.id, account=account)
                    return defer.fail(SMTPReply(550, f"5.7.1 {reason}"))
                work.append(self.rejectOne(account, envelope, reject.reason, message))
                continue
            work.append(self.placeAndSend(decision, envelope, message))
        d = defer.gatherResults(work, consumeErrors=True) if work else defer.succeed(None)
        return d.addCallback(lambda _: message)

    def rejectOne(self, account: str, envelope: Envelope, reason: str,
                  message: bytes) -> defer.Deferred[None]:
        """Reject one recipient's copy of a message with several: no copy, and a
        rejection message to the sender (none to the null sender, RFC 5429 2.1.1); the
        copy is kept when the rejection cannot be queued."""
        if not envelope.sender:
            log.info("{id}: rejected by the sieve script of {account} (null sender: "
                     "discarded)", id=envelope.id, account=account)
            envelope.placements[account] = []
            return defer.succeed(None)
        if self.outgoing is None:
            log.warn("{id}: sieve reject of {account} without a queue: kept",
                     id=envelope.id, account=account)
            return defer.succeed(None)
        d = self.outgoing.reject(account, envelope.sender, reason, message)

        def sent(_: Any) -> None:
            log.info("{id}: rejected by the sieve script of {account}", id=envelope.id,
                     account=account)
            envelope.placements[account] = []

        def failed(f: Failure) -> None:
            log.failure("{id}: sieve rejection of {account} not queued: kept", f,
                        id=envelope.id, account=account)

        return d.addCallbacks(sent, failed)

    def placeAndSend(self, decision: Decision, envelope: Envelope,
                     message: bytes) -> defer.Deferred[None]:
        """Send one account's redirects and vacation, then set its placements (INBOX
        again when a redirect could not be sent)."""
        result = decision.result
        assert result is not None
        account = decision.account
        placements = [Placement(s.folder, s.flags, s.create) for s in result.stores()]
        sends: list[defer.Deferred[Any]] = []
        keepAnyway = False
        redirects = result.redirects()
        if redirects:
            if self.outgoing is None:
                log.warn("{id}: sieve redirect of {account} without a queue: kept",
                         id=envelope.id, account=account)
                keepAnyway = True
            elif Outgoing.isLoop(message, account):
                log.warn("{id}: sieve redirect of {account}: mail loop (Delivered-To seen):"
                         " kept", id=envelope.id, account=account)
                keepAnyway = True
            else:
                for address in redirects:
                    sends.append(self.outgoing.redirect(account, envelope.sender, address,
                                                        message))

        def redirected(outcomes: list[tuple[bool, Any]]) -> None:
            keep = keepAnyway
            for ok, value in outcomes:
                if not ok:
                    log.failure("{id}: sieve redirect of {account} not queued: kept",
                                value, id=envelope.id, account=account)
                    keep = True
            if keep and not any(p.folder == INBOX for p in placements):
                placements.append(Placement())
            envelope.placements[account] = placements

        steps = [defer.DeferredList(sends, consumeErrors=True).addCallback(redirected)]
        if result.vacation() is not None and self.outgoing is not None:
            vacation = self.sendVacation(decision, envelope, message)
            vacation.addErrback(lambda f: log.failure(
                "{id}: vacation reply of {account} failed", f, id=envelope.id,
                account=account))
            steps.append(vacation)
        return defer.gatherResults(steps).addCallback(lambda _: None)

    def sendVacation(self, decision: Decision, envelope: Envelope,
                     message: bytes) -> defer.Deferred[Any]:
        """Reply to the sender when RFC 3834 and the period allow."""
        outgoing = self.outgoing
        vacation = decision.result.vacation() if decision.result else None
        assert outgoing is not None and vacation is not None
        why = outgoing.vacationRefusal(vacation, decision.account, envelope.sender,
                                       MessageView(message), decision.own)
        if why is not None:
            log.info("{id}: no vacation reply for {account}: {why}", id=envelope.id,
                     account=decision.account, why=why)
            return defer.succeed(None)
        d = self.runner.run(outgoing.vacationDue, decision.home, envelope.sender,
                            vacation.handle, vacation.seconds)

        def due(yes: bool) -> Any:
            if not yes:
                log.info("{id}: vacation reply of {account} to {sender} already sent",
                         id=envelope.id, account=decision.account, sender=envelope.sender)
                return None
            return outgoing.vacation(vacation, decision.account, envelope.sender, message)

        return d.addCallback(due)


__all__ = ["SieveCheck", "homeOf"]
