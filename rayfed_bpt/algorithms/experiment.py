"""Setting up one experiment from its config: partition, backbone, algorithm, clients.

Shared by the single-process reference loop and the Ray runtime, so both
start from exactly the same objects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig, ExperimentConfig, TrainConfig
from ..data import PartitionConfig, PartitionReader, ensure_builtin, load_dataset, write_partition
from ..data.dataset import default_data_root
from ..models import PromptedViT, create_backbone
from . import create_algorithm
from .base import Algorithm, ClientData, seed_for


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


def load_backbone(cfg: ExperimentConfig) -> PromptedViT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PromptedViT(
            create_backbone(cfg.backbone.source, cfg.backbone.name, cfg.backbone.checkpoint)
        )


def make_algorithm(
    cfg: ExperimentConfig, backbone: PromptedViT, reader: PartitionReader
) -> Algorithm:
    return create_algorithm(
        cfg.algorithm.name,
        backbone,
        reader.info.num_classes,
        cfg.train,
        cfg.algorithm.options,
        seed=cfg.seed,
        num_clients=reader.num_clients,
    )


def load_clients(
    reader: PartitionReader, client_ids, cfg: ExperimentConfig
) -> dict[int, ClientData]:
    d = cfg.data
    return {
        k: ClientData.from_shard(
            reader.load(k), d.max_train_per_client, d.max_test_per_client, cfg.seed
        )
        for k in client_ids
    }


def sample_clients(num_clients: int, train: TrainConfig, seed: int, round: int) -> list[int]:
    """The clients of ``round``: a seeded choice, independent of any runtime."""
    if train.clients_per_round is not None:
        m = min(train.clients_per_round, num_clients)
    elif train.fraction is not None:
        m = max(1, int(round_half_up(train.fraction * num_clients)))
    else:
        return list(range(num_clients))
    rng = np.random.default_rng(seed_for(seed, "sample", round))
    return sorted(rng.choice(num_clients, m, replace=False).tolist())


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))
