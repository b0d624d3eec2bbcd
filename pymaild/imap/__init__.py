"""IMAP4rev1 for pymaild: a hardened subclass of Twisted's IMAP4Server over the Maildir store.

Modules: ``server`` (protocol and factory), ``account`` (the IAccount avatar),
``mailbox`` (per-session mailbox views), ``syntax`` (command reader and response
serialiser), ``fetch`` (FETCH attributes), ``mime`` (ENVELOPE/BODYSTRUCTURE and the
structure cache), ``search`` (SEARCH keys) and ``notify`` (change notifications between
sessions, SMTP deliveries and other processes).
"""
