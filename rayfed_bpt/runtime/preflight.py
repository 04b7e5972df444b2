"""What the entry process checks and prepares before Ray starts: the output and run
folders, a run folder's config, the partition (every shard's hash, once) and the
backbone's weights file. No Ray, no torch: a bad input is refused in about a second,
before anything is written.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime
from pathlib import Path

import yaml

from ..config import ExperimentConfig, apply_overrides, from_dict
from ..data import PartitionReader
from ..data.recipe import resolve_partition
from ..errors import ConfigError


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


def new_run_dir(cfg: ExperimentConfig) -> Path:
    """The run folder's path (not created yet): the run name, or a time stamp with a
    random suffix, so two runs started in the same second never share a folder."""
    root = usable_folder(Path(cfg.runtime.output_dir), "runtime.output_dir")
    name = cfg.runtime.run_name or (
        f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.algorithm.name}-s{cfg.seed}-{secrets.token_hex(3)}")
    run_dir = root / name
    if run_dir.exists():
        raise ConfigError(f"run folder {run_dir} already exists; resume it with "
                          f"`rayfed-bpt run --resume {run_dir}` or choose another "
                          "runtime.run_name.")
    return run_dir


def create_run_dir(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Make the folder (refusing one made meanwhile) and write its config.yaml."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise ConfigError(f"run folder {run_dir} was created by another run meanwhile; "
                          "choose another runtime.run_name") from None
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_of_run(run_dir: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """A run folder's config; ``overrides`` may change ``tracking.*`` only (a run resumed
    elsewhere may log to another store; anything else would change its numbers)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); pass the folder "
                          "that `rayfed-bpt run` printed.")
    bad = [o for o in overrides if not o.startswith("tracking.")]
    if bad:
        raise ConfigError(f"--resume continues a run with its own config; only tracking.* may "
                          f"change, not {bad}")
    d = yaml.safe_load(path.read_text())
    return from_dict(ExperimentConfig, apply_overrides(d, list(overrides)))


def check_partition(cfg: ExperimentConfig) -> Path:
    """The partition folder, with every shard's hash checked once, here: a corrupt shard
    is reported in seconds, before any actor starts."""
    partition_dir = resolve_partition(cfg.data, cfg.seed)
    reader = PartitionReader(partition_dir)
    cfg.train.check_population(reader.num_clients)
    reader.verify_all()
    return partition_dir


def check_backbone_file(cfg: ExperimentConfig) -> None:
    """A ``backbone.checkpoint`` that is no weights file is refused here, in a second, not
    by timm in the driver actor: it must be a torch archive (.pth) or a safetensors file
    whose header reads (8 bytes of length, then JSON). Read without torch."""
    bb = cfg.backbone
    if bb.source != "file" or not bb.checkpoint:
        return  # a missing name or checkpoint: create_backbone says which
    path = Path(bb.checkpoint)
    if not path.is_file():
        raise ConfigError(f"backbone.checkpoint {path} does not exist or is not a file")
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(b"PK"):  # torch.save's zip archive: timm loads it
            return
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            if not 0 < n <= path.stat().st_size - 8:
                raise ValueError(f"a header of {n} bytes")
            json.loads(f.read(n))
        except ValueError as e:
            raise ConfigError(f"backbone.checkpoint {path} is not a weights file (neither "
                              f"safetensors nor a torch archive: {str(e)[:80]}). Point it at "
                              f"the .safetensors or .pth weights of {bb.name}.") from None
