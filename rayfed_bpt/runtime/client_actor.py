"""The client actor: one process that trains and evaluates whatever clients it is given.

It wraps a ``ClientHost`` (the frozen backbone loaded once, the algorithm, an
LRU of opened shards) and picks its device and thread count. It holds no
client's personal state between calls and no learning math of its own, so any
actor can take any client and a replaced actor loses nothing.
"""

from __future__ import annotations

import ray

from ..config import ExperimentConfig
from . import faults
from .resources import process_rss


class ClientActor:
    def __init__(self, cfg: ExperimentConfig, partition_dir: str, index: int, threads: int,
                 group_size: int, gpu_memory_fraction: float | None,
                 run_dir: str | None = None):
        # torch is imported here, not with the module: the driver creates client actors
        # before it loads torch itself, so their start-up and its own overlap
        import torch

        from ..engine.host import ClientHost

        torch.set_num_threads(threads)
        self.index = index
        self.cfg = cfg
        self.run_dir = run_dir
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        cuda = bool(self.gpu_ids) and torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.gpu_memory_fraction = gpu_memory_fraction if cuda else None
        if cuda and gpu_memory_fraction:
            # Ray's fractional GPUs only schedule; this caps what torch may allocate.
            torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction)
        self.rss_start = process_rss()
        budget = None
        if cuda:  # what this actor may fill: the configured MiB, else its share of the GPU
            share = gpu_memory_fraction or 1.0
            budget = (int(cfg.runtime.memory_budget_mb * 2**20) if cfg.runtime.memory_budget_mb
                      else int(share * torch.cuda.get_device_properties(0).total_memory))
        self.host = ClientHost(self.cfg, partition_dir, group_size, device=str(self.device),
                               memory_budget=budget)

    def info(self) -> dict:
        node = ray.get_runtime_context().get_node_id()
        return {**self.host.info(self.index), "node_id": node, "gpu_ids": self.gpu_ids}

    def memory(self) -> dict:
        import torch

        cuda = {}
        if self.device.type == "cuda":
            cuda = {"cuda_max_allocated": torch.cuda.max_memory_allocated(),
                    "cuda_total": torch.cuda.get_device_properties(self.device).total_memory,
                    "cuda_memory_fraction": self.gpu_memory_fraction}
        return {**cuda, **self.host.memory(), "rss_start": self.rss_start}

    def train(self, global_state: dict, personal: dict[int, dict], round: int) -> list:
        if faults.due(self.cfg.runtime.faults, self.run_dir, "actor_exit", round + 1):
            faults.exit_now()
        return self.host.train(global_state, personal, round)

    def evaluate(self, global_state: dict, personal: dict[int, dict], round: int,
                 options: dict | None = None, splits: tuple[str, ...] = ("test",)) -> list:
        return self.host.evaluate(global_state, personal, round, options, splits)
