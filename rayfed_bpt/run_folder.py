"""A run's folder: its name, creation, config and where each of its files goes.

The one owner of the layout every other module writes into or reads from:

    <runtime.output_dir>/<run name>/
        config.yaml                      the run's config (what --resume reads)
        checkpoint.safetensors           the latest checkpoint (engine.checkpoint)
        checkpoint.prev.safetensors      the one before
        personal/                        clients' personal states the checkpoints refer to
        results/                         clients.csv, plots, config, workers (every pool)
        mlflow-fallback.json             the store the run moved to after an outage
        mlflow-fallback.db, mlartifacts-fallback/
        .faults/                         injected faults' markers (tests)

A run name is one folder name inside ``runtime.output_dir`` (``config.RuntimeConfig``
refuses ``/``, ``..`` and control characters); unset, a time stamp with the
algorithm, seed and a random suffix, so two runs started in one second never share a
folder. Ground floor: no torch, no Ray.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

import yaml

from .errors import ConfigError


class RunFolder:
    CONFIG = "config.yaml"
    CHECKPOINT = "checkpoint.safetensors"
    PREVIOUS = "checkpoint.prev.safetensors"
    PERSONAL = "personal"
    LEGACY = "checkpoint.pt"  # an older rayfed-bpt's pickle: refused, never read
    RESULTS = "results"
    FALLBACK = "mlflow-fallback.json"
    FAULTS = ".faults"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def fallback_db(self) -> Path:
        return self.path / "mlflow-fallback.db"

    @property
    def fallback_artifacts(self) -> Path:
        return self.path / "mlartifacts-fallback"

    @classmethod
    def choose(cls, output_dir: str | Path, run_name: str | None, label: str) -> RunFolder:
        """A new run's folder (not created yet) under ``output_dir``, which must be usable:
        ``run_name``, or a time stamp, ``label`` and a random suffix."""
        root = usable_folder(Path(output_dir), "runtime.output_dir")
        name = run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{label}-{secrets.token_hex(3)}"
        folder = cls(root / name)
        if folder.path.exists():
            raise ConfigError(f"run folder {folder} already exists; resume it with "
                              f"`rayfed-bpt run --resume {folder}` or choose another "
                              "runtime.run_name.")
        return folder

    def create(self, config: dict, exist_ok: bool = False) -> None:
        """Make the folder (refusing one made meanwhile, unless ``exist_ok``) and write its
        config."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir(exist_ok=exist_ok)
        except FileExistsError:
            raise ConfigError(f"run folder {self} was created by another run meanwhile; "
                              "choose another runtime.run_name") from None
        self.write_config(config)

    def write_config(self, config: dict, path: Path | None = None) -> None:
        (path or self.file(self.CONFIG)).write_text(yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        """The run's config mapping, or a ConfigError when this is no run folder."""
        path = self.file(self.CONFIG)
        if not path.exists():
            raise ConfigError(f"{self} is not a run folder (no {self.CONFIG}); pass the folder "
                              "that `rayfed-bpt run` printed.")
        return yaml.safe_load(path.read_text())


def usable_folder(path: Path, what: str) -> Path:
    """``path`` resolved, or a ConfigError when it could not be created and written."""
    path = path.resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder. Choose another "
                          "runtime.output_dir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} is not writable. Choose another "
                          "runtime.output_dir.")
    return path
