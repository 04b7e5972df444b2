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
        .writer.lock                     held by the one process that writes the run

A run name is one folder name inside ``runtime.output_dir`` (``config.RuntimeConfig``
refuses ``/``, ``..`` and control characters); unset, a time stamp with the
algorithm, seed and a random suffix, so two runs started in one second never share a
folder. Ground floor: no torch, no Ray.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
        limit = os.pathconf(nearest_existing(root), "PC_NAME_MAX")
        if len(name.encode()) > limit:
            raise ConfigError(f"runtime.run_name is {len(name.encode())} bytes; this file "
                              f"system takes folder names of at most {limit}. Choose a "
                              "shorter runtime.run_name.")
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


def nearest_existing(path: Path) -> Path:
    """``path`` or the closest of its parents that exists (where a new folder would go)."""
    return next(p for p in (path, *path.parents) if p.exists())


def usable_folder(path: Path, what: str) -> Path:
    """``path`` resolved, or a ConfigError when it could not be created and written."""
    broken = next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()),
                  None)
    if broken is not None:
        raise ConfigError(f"{what} {path}: {broken} is a link to {os.readlink(broken)}, which "
                          "does not exist. Fix the link or choose another folder.")
    path = path.resolve()
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder. Choose another "
                          "runtime.output_dir.")
    try:  # (os.access says yes to root on a read-only file system: try it, leave nothing)
        os.rmdir(tempfile.mkdtemp(prefix=".rayfed-probe-", dir=existing))
    except OSError as e:
        raise ConfigError(f"{what} {path}: nothing can be created in {existing} "
                          f"({e.strerror}). Choose another runtime.output_dir.") from None
    return path


WRITER_LOCK = ".writer.lock"


@contextmanager
def one_writer(folder: str | Path, command: str) -> Iterator[None]:
    """Hold ``folder``'s writer lock while the body runs: a second process that would
    write the same run or sweep folder (``command``: run or tune; two ``--resume`` of one
    run started at once) is refused at once, before it touches anything, with who holds
    it. An advisory
    ``flock``: the kernel releases it when the holder exits, however it exits, so a
    crashed run never leaves a stale lock (on NFS, Linux emulates it with POSIX locks)."""
    path = Path(folder) / WRITER_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        what = "run folder" if command == "run" else "sweep folder"
        raise ConfigError(
            f"{what} {folder} is being written by {holder}: two writers would interleave "
            "one checkpoint and one MLflow run. Wait for it to end, or stop it (Ctrl-C) and "
            f"`rayfed-bpt {command} --resume {folder}`.") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"rayfed-bpt pid {os.getpid()} on {socket.gethostname()} since "
                      f"{datetime.now():%Y-%m-%d %H:%M:%S}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
