"""Helpers for tests that start real servers on this machine (loopback only)."""

import socket
import tempfile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tempdir(prefix: str) -> str:
    """Ray's Unix socket paths must stay short: pytest's tmp_path is too long."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")
