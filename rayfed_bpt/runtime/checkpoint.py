"""Atomic checkpoints: the whole run state after a round, in one file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import RayfedError

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: str | Path, payload: dict) -> Path:
    """Write ``payload`` to ``run_dir/checkpoint.pt`` via a temporary file and a rename,
    so a crash mid-write leaves the previous checkpoint intact."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", suffix=".tmp", dir=run_dir)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, run_dir / CHECKPOINT)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return run_dir / CHECKPOINT


def load_checkpoint(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise RayfedError(f"checkpoint {path} cannot be read ({e}); it is corrupt. Start a new "
                          "run, or restore the file from a backup.") from e
