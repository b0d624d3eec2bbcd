"""The twisted.cred checker for mail users: user name and password against the user directory.

The directory is a L{pymaild.auth.users.UserSource}: the passwd file or PostgreSQL.

Only L{IUsernamePassword} is accepted (SMTP AUTH PLAIN/LOGIN, IMAP LOGIN and
AUTHENTICATE PLAIN, POP3 USER/PASS and AUTH PLAIN). Challenge-response mechanisms
such as APOP and CRAM-MD5 need a plaintext-equivalent secret and are not offered.

The user name arrives as bytes from the protocol; it is decoded as UTF-8 and made
canonical with L{pymaild.address.canonical}, and the canonical address is the avatar
id. Hashing runs through a L{pymaild.threads.Runner} (the server gives the checker a
dedicated, bounded thread pool) so the reactor never waits for argon2. Passwords are
never logged.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from zope.interface import implementer

from pymaild.address import canonical
from pymaild.auth import passwd as _passwd
from pymaild.auth.users import UserSource
from pymaild.threads import Runner


def usernameToAddress(username: bytes | str) -> str:
    """Decode a wire user name (UTF-8) and return it as a canonical address.

    @raise ValueError: the name is not UTF-8 or not an acceptable address
        (L{AddressError} is a L{ValueError}).
    """
    if isinstance(username, bytes):
        username = username.decode("utf-8")
    if not isinstance(username, str):
        raise ValueError("user name must be bytes or text")
    return canonical(username)


@implementer(ICredentialsChecker)
class PasswdChecker:
    """Checks L{IUsernamePassword} credentials against a L{UserSource}.

    C{requestAvatarId} fires with the canonical address (C{str}) or fails with
    L{UnauthorizedLogin}, the same for unknown users, malformed user names and wrong
    passwords. Other failures (the passwd file cannot be read, the database is down)
    are passed on as they are, so that protocols can answer with a temporary error.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwd: UserSource, runner: Runner) -> None:
        self.passwd = passwd
        self.runner = runner

    # Twisted types avatar IDs as bytes; pymaild's are the canonical address, a str,
    # which every realm and protocol of pymaild expects (Twisted itself only passes
    # the ID on).
    def requestAvatarId(self, credentials: Any) -> Deferred[str]:  # type: ignore[override]
        """Verify C{credentials} in the runner; fire with the canonical address."""
        password = credentials.password
        try:
            address = usernameToAddress(credentials.username)
        except ValueError:  # UnicodeDecodeError, AddressError
            # Same cost as a real attempt, so a bad name reveals nothing by timing.
            return self.runner.run(_passwd.dummyVerify).addCallback(self._result, None)
        return self.runner.run(self.passwd.verify, address, password).addCallback(
            self._result, address)

    def _result(self, ok: bool, address: str | None) -> str:
        """Turn the outcome of a verification into an avatar id or a failure."""
        if ok and address is not None:
            return address
        raise UnauthorizedLogin("Invalid credentials")
