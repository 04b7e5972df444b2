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


class Interrupted(RayfedError):
    """A run stopped on purpose (Ctrl-C: exit 130, SIGTERM: 143), its checkpoint kept."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message, exit_code)
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.args[0]
