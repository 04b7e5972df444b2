"""From a run's data options to a partition folder on disk (made once, then reused).

Torch-free on purpose: the ``rayfed-bpt run`` entry process resolves and checks
the partition before Ray starts, and never imports torch.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .dataset import default_data_root, load_dataset
from .partition import PartitionConfig
from .prepare import ensure_builtin
from .shards import write_partition


def resolve_partition(data: DataConfig, seed: int) -> Path:
    """The partition folder: the configured one, or one made (once) from the data options."""
    if data.partition_dir:
        return Path(data.partition_dir)
    dataset = Path(data.dataset) if data.dataset else ensure_builtin()
    pseed = seed if data.partition_seed is None else data.partition_seed
    cfg = PartitionConfig(
        data.partitioner,
        num_clients=data.num_clients,
        seed=pseed,
        alpha=data.alpha,
        beta=data.beta,
        label_alpha=data.label_alpha,
        k=data.k,
        min_samples=data.min_samples,
    )
    out = partition_folder(dataset, cfg)
    return write_partition(load_dataset(dataset), cfg, out)  # keeps an identical one


def partition_folder(dataset: Path, cfg: PartitionConfig) -> Path:
    """The one name of a partition folder made from a recipe: ``rayfed-bpt data
    partition`` writes it, ``rayfed-bpt run`` reuses it, ``data show`` finds it."""
    extra = {
        "dirichlet": f"-a{cfg.alpha}",
        "domain_mix": f"-b{cfg.beta}" + (f"-la{cfg.label_alpha}" if cfg.label_alpha else ""),
        "k_classes": f"-k{cfg.k}",
    }.get(cfg.partitioner, "")
    name = f"{dataset.stem}-{cfg.partitioner}{extra}-{cfg.num_clients}c-s{cfg.seed}"
    return default_data_root() / "partitions" / name
