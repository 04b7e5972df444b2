"""Errors meant for the person at the keyboard.

The CLI prints a ``RayfedError`` as one message and exits with status 2, with
no traceback: the message itself must say what is wrong and what to do.
"""


class RayfedError(Exception):
    """A user-facing error: bad input, a bad file, a bad option."""


class ConfigError(RayfedError, ValueError):
    """An unknown option or a value out of range."""


class DataError(RayfedError):
    """A missing, unreadable, corrupt or mismatched data file."""
