"""The avatar and mailbox views provide Twisted's IMAP interfaces and behave through them."""

from __future__ import annotations

import io

from twisted.cred.checkers import ANONYMOUS
from twisted.cred.error import UnauthorizedLogin
from twisted.mail import imap4
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pymaild.imap.mailbox import MailboxView, Message
from pymaild.imap.syntax import SequenceSet
from tests.test_imap_helpers import ALICE, IMAPEnv, makeMessage


class InterfaceTests(SynchronousTestCase):
    """IAccount, IMailbox, ISearchableMailbox, IMessageCopier, ICloseableMailbox, IMessage."""

    def setUp(self) -> None:
        """An avatar for Alice with two messages in INBOX."""
        self.env = IMAPEnv(self)
        self.env.deliver(makeMessage("one"), makeMessage("two"))
        self.account, self.logout = self.env.avatars(ALICE)
        self.successResultOf(self.account.login())

    def view(self, name: str = "INBOX") -> MailboxView:
        """Select a folder through IAccount.select."""
        return self.successResultOf(self.account.select(name, True))

    def test_anonymousRefused(self) -> None:
        """The avatar factory refuses the anonymous avatar id."""
        self.assertRaises(UnauthorizedLogin, self.env.avatars, ANONYMOUS)

    def test_provides(self) -> None:
        """verifyObject passes for every interface claimed."""
        verifyObject(imap4.IAccount, self.account)
        v = self.view()
        for iface in (imap4.IMailbox, imap4.ISearchableMailbox, imap4.IMessageCopier,
                      imap4.ICloseableMailbox):
            verifyObject(iface, v)
        pairs = self.successResultOf(v.fetch(SequenceSet.parse(b"1"), False))
        verifyObject(imap4.IMessage, pairs[0][1])
        verifyObject(imap4.IMessageFile, pairs[0][1])

    def test_fetchStoreSearchThroughInterface(self) -> None:
        """fetch gives IMessages with str headers; store and search answer by sequence."""
        v = self.view()
        pairs = self.successResultOf(v.fetch("1:*", False))
        self.assertEqual([s for s, _ in pairs], [1, 2])
        msg: Message = pairs[1][1]
        self.assertEqual(msg.getHeaders(False, "subject"), {"subject": "two"})
        self.assertEqual(msg.getBodyFile().read(), b"Body text.\r\n")
        self.assertEqual(msg.open().read(), makeMessage("two"))
        result = self.successResultOf(v.store("2", ["\\Flagged"], 1, False))
        self.assertIn("\\Flagged", result[2])
        self.assertEqual(self.successResultOf(v.search(b"FLAGGED", False)), [2])

    def test_addMessageAndCopy(self) -> None:
        """addMessage appends; IMessageCopier.copy hard-links into another view."""
        v = self.view()
        uid = self.successResultOf(v.addMessage(io.BytesIO(makeMessage("three")), ["\\Seen"]))
        self.assertEqual(uid, 3)
        trash = self.view("Trash")
        msg = self.successResultOf(v.fetch("1", False))[0][1]
        newUid = self.successResultOf(trash.copy(msg))
        self.assertEqual(newUid, 1)
        self.assertEqual(len(self.env.folder("Trash").scan().messages), 1)

    def test_listMailboxesGivesAttributes(self) -> None:
        """listMailboxes returns IMailboxInfo objects with attributes, not message flags."""
        entries = self.successResultOf(self.account.listMailboxes("", "*"))
        names = dict(entries)
        self.assertIn("\\Sent", names["Sent"].getFlags())
        self.assertEqual(names["INBOX"].getHierarchicalDelimiter(), "/")

    def test_logoutClosesViews(self) -> None:
        """The realm's logout closes the account's views and unregisters them."""
        self.view()
        self.assertEqual(len(self.env.registry.views(ALICE, "INBOX")), 1)
        self.logout()
        self.assertEqual(len(self.env.registry.views(ALICE, "INBOX")), 0)
