"""What the entry process checks before Ray starts, beyond the config itself: a run
folder's config (for --resume), the partition (each file's stamp: size, time, first
and last MiB) and the backbone's weights file. No Ray, no torch: a bad input is refused
in about a second, before anything is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..config import ExperimentConfig, apply_overrides, from_dict
from ..data import PartitionReader
from ..data.recipe import resolve_partition
from ..errors import ConfigError
from ..run_folder import RunFolder


def config_of_run(run_dir: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """A run folder's config; ``overrides`` may change ``tracking.*`` only (a run resumed
    elsewhere may log to another store; anything else would change its numbers)."""
    d = RunFolder(run_dir).read_config()
    bad = [o for o in overrides if not o.startswith("tracking.")]
    if bad:
        raise ConfigError(f"--resume continues a run with its own config; only tracking.* may "
                          f"change, not {bad}")
    return from_dict(ExperimentConfig, apply_overrides(d, list(overrides)))


def check_partition(cfg: ExperimentConfig) -> PartitionReader:
    """The partition, its files checked by their stamps, here: a changed or cut file is
    reported in a second, before any actor starts, in time that does not grow with the
    data (``rayfed-bpt data verify`` hashes every byte)."""
    reader = PartitionReader(resolve_partition(cfg.data, cfg.seed))
    cfg.train.check_population(len(reader.training_ids))
    reader.verify_stamps()
    return reader


def backbone_side(cfg: ExperimentConfig) -> int | None:
    """The backbone's input side, known without torch: the built-in's 32, backbone.img_size,
    or the size a timm name ends in (``vit_base_patch16_224`` -> 224); else None."""
    bb = cfg.backbone
    if bb.source == "builtin":
        return 32
    if bb.img_size:
        return bb.img_size
    found = re.search(r"_(\d{2,4})(?:\.|$)", bb.name or "")
    return int(found[1]) if found else None


def input_note(cfg: ExperimentConfig, image_shape: tuple[int, ...]) -> str | None:
    """What happens to the data set's images on their way into the backbone, when their
    size is not its input's (said at the start; nothing is refused)."""
    side = backbone_side(cfg)
    h, w = image_shape[:2]
    if side is None or (h, w) == (side, side):
        return None
    how = "upsampled" if min(h, w) < side else "downsampled"
    return (f"note: the data set's images are {h}x{w} and the backbone takes {side}x{side}: "
            f"every batch is {how} (bilinear) on the device that trains. Import the data "
            f"at --size {side} to store what the backbone sees.")


def check_backbone_file(cfg: ExperimentConfig) -> None:
    """A ``backbone.checkpoint`` that is no weights file is refused here, in a second, not
    by timm in the driver actor: it must be a torch archive (.pth) or a safetensors file
    whose header reads (8 bytes of length, then JSON). Read without torch."""
    bb = cfg.backbone
    if bb.source != "file" or not bb.checkpoint:
        return  # a missing name or checkpoint: create_backbone says which
    path = Path(bb.checkpoint).expanduser()
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
