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
    extra = (
        f"-a{data.alpha}"
        if cfg.partitioner == "dirichlet"
        else (
            f"-b{data.beta}" + (f"-la{data.label_alpha}" if data.label_alpha else "")
            if cfg.partitioner == "domain_mix"
            else f"-k{data.k}"
            if cfg.partitioner == "k_classes"
            else ""
        )
    )
    out = (
        default_data_root()
        / "partitions"
        / (f"{dataset.stem}-{cfg.partitioner}{extra}-{cfg.num_clients}c-s{pseed}")
    )
    return write_partition(load_dataset(dataset), cfg, out)  # keeps an identical one
