"""pymaild's exceptions, shared by every room; protocols translate them into replies."""


class PymaildError(Exception):
    """Base class of every error pymaild raises on purpose."""


class ConfigError(PymaildError):
    """A configuration file or option is wrong; the message names the file, key and problem."""


class AddressError(PymaildError, ValueError):
    """A mail address or domain is not acceptable (syntax, source route, percent hack...)."""


class StoreError(PymaildError):
    """The mail store could not complete an operation."""


class NoSuchFolder(StoreError):
    """The named folder does not exist."""


class FolderExists(StoreError):
    """A folder of that name already exists."""


class InvalidFolderName(StoreError, ValueError):
    """The folder name is unusable: it could escape the tree or clash with Maildir++."""


class StoreFull(StoreError):
    """The disk (or a quota) is full; the write was undone and can be retried later."""


class LockTimeout(StoreError):
    """A dotlock stayed held by someone else (not stale) for longer than the timeout."""


class MessageVanished(StoreError):
    """A message file disappeared underneath us (expunged by another process)."""


class DatabaseUnavailable(PymaildError, OSError):
    """The user database cannot be reached or failed: a temporary failure (the client
    is told to try again later; the log gets one line, not a traceback)."""


class NoSuchUser(PymaildError):
    """The address names no local user."""


class StartupError(PymaildError):
    """The server cannot start (a port in use, a data directory it cannot write).

    The message is one line an admin can act on; twistd shows it instead of a traceback.
    """
