"""Deterministic fault injection (``runtime.faults``), for tests of recovery.

A fault fires at a chosen round, never at a moment a timer picks, and only
once per run: a marker file in ``<run_dir>/.faults/`` (created with O_EXCL, so
exactly one process claims it) survives the process that dies, and the
restarted driver or client actor sees the fault as spent.

- ``driver_exit@K``: the driver actor's process exits after round K's checkpoint;
- ``actor_exit@K``: the client actor that starts the first work of round K exits;
- ``pause@K``: after round K's checkpoint the run waits until ``release(run_dir, K)``
  (a test sends a signal, or stops a server, at exactly that point);
- ``disk_full@K``: the device takes half of round K's checkpoint file, then reports no
  space (``engine.checkpoint``: the run stops, the previous checkpoint intact).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..run_folder import RunFolder

PAUSE_LIMIT_S = 600.0


def _marker(run_dir: str | Path, name: str) -> Path:
    return RunFolder(run_dir).file(RunFolder.FAULTS) / name


def _claim(run_dir: str | Path, name: str) -> bool:
    path = _marker(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def due(faults: list[str], run_dir: str | Path | None, kind: str, round: int) -> bool:
    """True exactly once per run for ``kind@round`` when it is in ``faults``."""
    spec = f"{kind}@{round}"
    return run_dir is not None and spec in faults and _claim(run_dir, spec)


def exit_now() -> None:
    """Die like a killed process: no cleanup, no exception to catch."""
    os._exit(1)


def pause(run_dir: str | Path, round: int) -> None:
    """Mark ``paused@round`` and wait (bounded) until a test releases it."""
    go = _marker(run_dir, f"go@{round}")
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def paused(run_dir: str | Path, round: int) -> bool:
    return _marker(run_dir, f"pause@{round}").exists()


def release(run_dir: str | Path, round: int) -> None:
    path = _marker(run_dir, f"go@{round}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
