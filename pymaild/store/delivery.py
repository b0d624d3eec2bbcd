"""Local delivery of one message to many folders: written once, hard-linked into each.

L{deliverLinked} is what SMTP and LMTP delivery use when several mailboxes (or several
folders of one mailbox) get the very same bytes: the message is written to one C{tmp/}
file and fsynced once, hard-linked into every target folder's C{new/} (a file system
that cannot link there, C{EXDEV} and the like, gets a copy written and fsynced in that
folder's C{tmp/} instead), and every C{new/} is fsynced (coalesced with concurrent
deliveries, the store's L{pymaild.store.writing.DirSyncs}). All or nothing: on a failure the
links made are removed again and the error is raised. A crash leaves either no link or
complete, fsynced files (the C{tmp/} leftovers are swept at start).

This is Dovecot's LMTP behaviour: it saves the first recipient's copy and copies it to
the next ones by hard links (C{maildir_copy_with_hardlinks}); each link is a complete
Maildir message with its own name, so every mailbox still owns its file (expunging it
in one leaves the others), and quotas count it in each mailbox.

Blocking: run it in the disk runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

from pymaild.store import names as _names
from pymaild.store.maildir import MaildirStore


def deliverLinked(store: MaildirStore, targets: Sequence[tuple[str, str]],
                  data: bytes | BinaryIO) -> list[tuple[str, str, str]]:
    """Deliver C{data} to every C{(address, folder)} of C{targets}, writing it once.

    A folder the account does not have gives INBOX (the store's rule,
    L{pymaild.store.account.Account.deliveryFolder}). Two targets that land in the same
    folder get two messages (each its own name), as two deliveries would.

    @return: C{(canonical address, folder the copy went to, key)} for each target, in
        order.
    @raise StoreFull: the disk or a quota is full; nothing was delivered.
    @raise StoreError: another failure; nothing was delivered.
    @raise AddressError: an address is malformed; nothing was delivered.
    """
    resolved: list[tuple[str, str, str]] = []
    for address, folder in targets:
        acct = store.account(address)
        name = acct.deliveryFolder(folder) if folder != _names.INBOX else _names.INBOX
        resolved.append((acct.address, name, acct._path(name)))
    # One link per directory and round: a second target in the same folder needs a
    # second file (its own unique name), so it waits for the next round.
    rounds: list[dict[str, int]] = []
    for index, (_, _, path) in enumerate(resolved):
        for r in rounds:
            if path not in r:
                r[path] = index
                break
        else:
            rounds.append({path: index})
    if len(rounds) > 1 and not isinstance(data, (bytes, bytearray, memoryview)):
        data = data.read()
    keys: list[str] = [""] * len(resolved)
    done: list[tuple[str, str, str]] = []
    try:
        for r in rounds:
            dirs = {str(i): path for path, i in r.items()}
            [key] = set(store._store(dirs, list(dirs), data))
            for i in r.values():
                keys[i] = key
                done.append((resolved[i][0], resolved[i][1], key))
    except BaseException:
        for address, name, key in done:
            try:
                store.account(address).folder(name).expunge([key])
            except Exception:
                pass
        raise
    return [(address, name, keys[i]) for i, (address, name, _) in enumerate(resolved)]


__all__ = ["deliverLinked"]
