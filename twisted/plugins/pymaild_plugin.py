"""twistd plugin: ``twistd pymaild`` builds the mail server from ``pymaild.tap``."""

from twisted.application.service import ServiceMaker

pymaild = ServiceMaker(
    "pymaild",
    "pymaild.tap",
    "A mail server: SMTP, submission, relay, POP3 and IMAP4 over Maildir++",
    "pymaild",
)
