"""Setting up one run from its config: threads, backbone, algorithm, client data, sampling.

Shared by every client pool (in-process and Ray actors), so that all of them
start from exactly the same objects and compute exactly the same numbers.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch

from ..algorithms import create_algorithm
from ..algorithms.base import Algorithm, ClientData, seed_for
from ..config import ExperimentConfig, TrainConfig
from ..data import PartitionReader
from ..models import PromptedViT, create_backbone
from ..plugins import import_plugins


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_backbone(cfg: ExperimentConfig) -> PromptedViT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PromptedViT(create_backbone(**asdict(cfg.backbone)))


def make_algorithm(
    cfg: ExperimentConfig,
    backbone: PromptedViT,
    reader: PartitionReader,
    options: dict | None = None,
) -> Algorithm:
    """The run's algorithm (its options validated here, where a run is set up);
    ``options`` overrides some of them (test-time variants: S, the mean prompt). The
    config's plugins are imported first: a config that crossed to this process through
    Ray was not built here, so nothing imported them yet."""
    import_plugins(cfg.plugins)
    return create_algorithm(
        cfg.algorithm.name,
        backbone,
        reader.info.num_classes,
        cfg.train,
        {**cfg.algorithm.options, **(options or {})},
        seed=cfg.seed,
        num_clients=reader.num_clients,
    )


def load_client(reader: PartitionReader, k: int, cfg: ExperimentConfig) -> ClientData:
    d = cfg.data
    return ClientData.from_shard(reader.load(k), d.max_train_per_client, d.max_test_per_client,
                                 cfg.seed, d.val_fraction)


def load_clients(reader: PartitionReader, client_ids, cfg: ExperimentConfig
                 ) -> dict[int, ClientData]:
    return {k: load_client(reader, k, cfg) for k in client_ids}


def round_size(num_clients: int, train: TrainConfig) -> int:
    """How many clients a round samples."""
    if train.clients_per_round is not None:
        return min(train.clients_per_round, num_clients)
    if train.fraction is not None:
        return max(1, int(round_half_up(train.fraction * num_clients)))
    return num_clients


def sample_clients(num_clients: int, train: TrainConfig, seed: int, round: int) -> list[int]:
    """The clients of ``round``: a seeded choice, independent of any runtime."""
    m = round_size(num_clients, train)
    if train.clients_per_round is None and train.fraction is None:
        return list(range(num_clients))
    rng = np.random.default_rng(seed_for(seed, "sample", round))
    return sorted(rng.choice(num_clients, m, replace=False).tolist())


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))
