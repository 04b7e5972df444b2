"""From a run's data options to a partition folder on disk (made once, then reused).

Torch-free on purpose: the ``rayfed-bpt run`` entry process resolves and checks
the partition before Ray starts, and never imports torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..config import DataConfig, PartitionConfig
from .dataset import default_data_root, load_dataset
from .partition import recipe_record
from .prepare import dataset_path
from .shards import made_from, outdated, write_partition


def resolve_partition(data: DataConfig, seed: int) -> Path:
    """The partition folder: the configured one, or one made (once) from the data options."""
    if data.partition_dir:
        return Path(data.partition_dir)
    dataset = dataset_path(data.dataset)
    cfg = data.recipe(seed)
    recipe_record(cfg)  # an unknown partitioner is refused here, before anything is written
    out = partition_folder(dataset, cfg)
    if made_from(out, dataset, cfg):  # made before from this very file: no re-hash
        return out
    # keeps an identical one; replaces what an older version made (a cache of ours)
    return write_partition(load_dataset(dataset), cfg, out, overwrite=outdated(out))


def partition_folder(dataset: Path, cfg: PartitionConfig) -> Path:
    """The one name of a partition folder made from a recipe: ``rayfed-bpt data
    partition`` writes it, ``rayfed-bpt run`` reuses it, ``data show`` finds it. A
    readable prefix, then a short hash of the whole recipe (every option its partitioner
    reads, ``min_samples`` and ``max_draws`` included): recipes that differ anywhere never
    meet in one folder."""
    short = {"domain_alpha": "da", "label_alpha": "la", "k": "k"}
    rec = recipe_record(cfg.recipe(0))
    extra = "".join(f"-{short[k]}{rec[k]}" for k in short if rec.get(k) is not None)
    digest = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:8]
    name = (f"{dataset.stem}-{cfg.partitioner}{extra}-{cfg.num_clients}c-s{rec['seed']}-"
            f"{digest}")
    return default_data_root() / "partitions" / name
