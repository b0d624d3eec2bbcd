"""The local copies of a message: quotas, then every copy stored, all or nothing.

L{LocalCopiesMixin} is the blocking part of L{pymaild.smtp.delivery.DeliveryAvatars}
that runs in the disk runner once the message checks are done: each account's quota
must have room for its copies (L{LocalCopiesMixin.checkQuotas}); copies with the same
bytes are written once and hard-linked into every folder they go to
(L{pymaild.store.delivery.deliverLinked}); a copy with IMAP flags is appended on its
own; when one fails, the copies already stored are removed again.

L{chainedFile} reads several byte strings as one file without joining them (the
trace header and a big message body).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, BinaryIO

from twisted.logger import Logger

from pymaild.auth.quota import QuotaExceeded
from pymaild.errors import FolderExists, InvalidFolderName
from pymaild.smtp.checks import Placement, SMTPReply
from pymaild.store.delivery import deliverLinked
from pymaild.store.names import INBOX

log = Logger()

#: Messages up to this size are handed to the store as one joined byte string (one
#: copy, and the store can write it in one call); bigger ones as a chained file.
JOIN_LIMIT = 1 << 20


def quotaReply(problem: QuotaExceeded, address: str) -> SMTPReply:
    """The SMTP reply for a recipient over quota: permanent when the message can never
    fit (larger than the whole quota), temporary otherwise (mail may be deleted)."""
    if problem.tooBig:
        return SMTPReply(552, f"5.2.2 <{address}>: Message is larger than the mailbox quota")
    return SMTPReply(452, f"4.2.2 <{address}>: Mailbox full (quota exceeded)")


class _ChainReader(io.RawIOBase):
    """A read-only binary file over several byte strings, without joining them."""

    def __init__(self, parts: Sequence[bytes]) -> None:
        self._parts = [memoryview(p) for p in parts if p]
        self._index = 0
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Copy the next bytes into C{buffer}; 0 at the end."""
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target) and self._index < len(self._parts):
            part = self._parts[self._index]
            n = min(len(target) - filled, len(part) - self._offset)
            target[filled : filled + n] = part[self._offset : self._offset + n]
            filled += n
            self._offset += n
            if self._offset >= len(part):
                self._index += 1
                self._offset = 0
        return filled


def chainedFile(*parts: bytes) -> BinaryIO:
    """A binary file object reading C{parts} one after the other."""
    return io.BufferedReader(_ChainReader(parts), 65536)  # type: ignore[return-value]


class LocalCopiesMixin:
    """Quota checks and the stores of the local copies (blocking: the disk runner).

    @ivar store: the L{pymaild.store.MaildirStore}.
    @ivar quotas: a L{pymaild.auth.quota.Quotas}, or None.
    """

    store: Any
    quotas: Any

    def quotaProblem(self, accounts: list[str], size: int, address: str) -> None:
        """Refuse RCPT C{address} when one of its C{accounts} has no room for a
        message of C{size} bytes (blocking: the usage is counted).

        @raise SMTPReply: C{552 5.2.2} when the message is larger than an account's
            whole quota, C{452 4.2.2} when it is over quota (or would be).
        """
        for account in accounts:
            problem = self.quotas.isFull(account, size)
            if problem is not None:
                log.info("RCPT <{address}> refused: {why}", address=address, why=str(problem))
                raise quotaReply(problem, address)

    def checkQuotas(self, copies: list[tuple[str, bytes, list[Placement]]],
                    body: bytes) -> None:
        """Refuse the message when one account's copies do not fit its quota
        (blocking).

        @raise SMTPReply: as L{quotaProblem}.
        """
        if self.quotas is None:
            return
        for account, header, placements in copies:
            if placements:
                size = (len(header) + len(body)) * len(placements)
                try:
                    self.quotas.check(account, size, len(placements))
                except QuotaExceeded as e:
                    log.info("message refused for {account}: {why}", account=account,
                             why=str(e))
                    raise quotaReply(e, account) from None

    def storeCopies(
        self, copies: list[tuple[str, bytes, list[Placement]]], body: bytes
    ) -> list[tuple[str, str, str]]:
        """Deliver each account's copies (its header + C{body}, one per placement), all
        or nothing (blocking), once every account's quota has room for them.

        Copies with the same bytes (the same trace header: one account's several
        folders, or every account when the header is shared, L{Delivery.traceHeader})
        are written once and hard-linked into each folder
        (L{pymaild.store.delivery.deliverLinked}); a copy with IMAP flags (Sieve's
        imap4flags) is appended on its own.

        @return: C{(account, folder, key)} for every stored copy (the folder it really
            went to: INBOX when the account has no such folder).
        @raise StoreFull: the disk or a quota is full (nothing is left behind).
        @raise SMTPReply: an account's quota has no room (L{checkQuotas}); nothing was
            stored.
        """
        self.checkQuotas(copies, body)
        done: list[tuple[str, str, str]] = []
        small = len(body) <= JOIN_LIMIT
        linked: dict[bytes, list[tuple[str, str]]] = {}
        try:
            for account, header, placements in copies:
                for placement in placements:
                    folder = placement.folder
                    if folder != INBOX and placement.create:
                        self.createFolder(self.store.account(account), folder)
                    if not placement.flags:
                        linked.setdefault(header, []).append((account, folder))
                        continue
                    data = header + body if small else chainedFile(header, body)
                    if folder != INBOX:
                        folder = self.store.account(account).deliveryFolder(folder)
                    keys = self.store.deliver([account], data, folder, placement.flags)
                    done.extend((account, folder, k) for k in keys)
            for header, targets in linked.items():
                data = header + body if small else chainedFile(header, body)
                done.extend(deliverLinked(self.store, targets, data))
        except BaseException:
            self.removeCopies(done)
            raise
        return done

    def createFolder(self, acct: Any, folder: str) -> None:
        """Create C{folder} in C{acct} unless it exists (blocking); a name the store
        refuses is left alone (the copy goes to INBOX). Not subscribed, as Dovecot's
        default (C{lda_mailbox_autosubscribe = no})."""
        try:
            acct.createFolder(folder)
        except (FolderExists, InvalidFolderName):
            pass

    def removeCopies(self, keys: list[tuple[str, str, str]]) -> None:
        """Remove copies stored by L{storeCopies} (blocking)."""
        for account, folder, key in keys:
            try:
                self.store.account(account).folder(folder).expunge([key])
            except Exception:
                log.failure("could not remove {key} of {account}", key=key, account=account)


__all__ = ["JOIN_LIMIT", "LocalCopiesMixin", "chainedFile", "quotaReply"]
