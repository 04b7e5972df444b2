"""SIGTERM (timeout, Slurm, Kubernetes) stops a run like Ctrl-C.

A KeyboardInterrupt is the one exception Ray's blocking calls let a signal raise
(they re-raise it bare), so SIGTERM raises one too, and which signal it was is
remembered here for the exit status.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

_SIGTERM = {"received": False}


def _raise_terminated(signum, frame):
    _SIGTERM["received"] = True
    raise KeyboardInterrupt()


@contextmanager
def sigterm_as_interrupt():
    """Within: SIGTERM raises KeyboardInterrupt like Ctrl-C; ``stop_signal()`` says which."""
    _SIGTERM["received"] = False
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_signal() -> tuple[int, str]:
    """(exit code, name) of the signal that stopped the work: 143 SIGTERM or 130 Ctrl-C."""
    return (143, "SIGTERM") if _SIGTERM["received"] else (130, "Ctrl-C")
