"""POP3 room: the POP3 server (RFC 1939, 2449, 2595, 3206, 5034) over the Maildir++ store.

``pymaild.pop3.server`` holds the protocol (a subclass of Twisted's ``pop3.POP3``) and
``POP3Factory``, over ``pymaild.pop3.lines`` (line framing, the in-order command
queue) and ``pymaild.pop3.sender`` (RETR/TOP streaming); ``pymaild.pop3.mailbox``
holds ``POP3Avatars``, the realm factory that hands out per-session ``pop3.IMailbox``
snapshots of a user's INBOX.
"""
