"""The client actor: hosts several virtual clients' shards and personal state.

It loads the frozen backbone once, memory-maps the shards of its clients,
and trains or evaluates them in turn through the algorithm interface. It
holds no learning math of its own.
"""

from __future__ import annotations

import os

import ray
import torch

from ..algorithms.base import ClientTask, State
from ..algorithms.evaluation import ClientEval, client_eval
from ..algorithms.experiment import load_backbone, load_clients, make_algorithm
from ..config import ExperimentConfig, from_dict
from ..data import PartitionReader
from .resources import process_rss


class ClientActor:
    def __init__(self, cfg: dict, partition_dir: str, client_ids: list[int], index: int,
                 threads: int, gpu_memory_fraction: float | None):
        torch.set_num_threads(threads)
        self.index = index
        self.cfg = from_dict(ExperimentConfig, cfg)
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        cuda = bool(self.gpu_ids) and torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.gpu_memory_fraction = gpu_memory_fraction if cuda else None
        if cuda and gpu_memory_fraction:
            # Ray's fractional GPUs only schedule; this caps what torch may allocate.
            torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction)
        self.rss_before_clients = process_rss()
        reader = PartitionReader(partition_dir)
        self.num_domains = reader.info.num_domains
        self.alg = make_algorithm(self.cfg, load_backbone(self.cfg).to(self.device), reader)
        self.clients = load_clients(reader, client_ids, self.cfg)
        self.personal: dict[int, State] = {k: self.alg.init_personal(k) for k in client_ids}
        self.rss_after_clients = process_rss()

    def info(self) -> dict:
        node = ray.get_runtime_context().get_node_id()
        return {"index": self.index, "pid": os.getpid(), "node_id": node,
                "gpu_ids": self.gpu_ids, "device": str(self.device),
                "threads": torch.get_num_threads(), "clients": sorted(self.clients)}

    def memory(self) -> dict:
        """What hosting the clients costs: process RSS, and per client the bytes of
        its tensors (labels, cached features, personal state) beyond the mapped data."""
        per_client = []
        for k, d in self.clients.items():
            tensors = [*d.labels.values(), *d.cache.values(), *self.personal[k].values()]
            per_client.append(sum(t.numel() * t.element_size() for t in tensors))
        cuda = {}
        if self.device.type == "cuda":
            cuda = {"cuda_max_allocated": torch.cuda.max_memory_allocated(),
                    "cuda_total": torch.cuda.get_device_properties(self.device).total_memory,
                    "cuda_memory_fraction": self.gpu_memory_fraction}
        return {**cuda, "rss": process_rss(), "rss_before_clients": self.rss_before_clients,
                "rss_after_clients": self.rss_after_clients,
                "num_clients": len(self.clients), "client_bytes_max": max(per_client),
                "client_bytes_mean": sum(per_client) / len(per_client)}

    def set_personal(self, states: dict[int, State]) -> None:
        """Restore personal state (after a restart, or on resume)."""
        for k, s in states.items():
            self.personal[k] = s

    def train(self, global_state: State, client_ids: list[int], round: int):
        tasks = [ClientTask(k, self.clients[k], self.personal[k], round) for k in client_ids]
        results = self.alg.local_update(global_state, tasks)
        for r in results:
            self.personal[r.client_id] = r.personal
        return results

    def evaluate(self, global_state: State, round: int) -> list[ClientEval]:
        return [client_eval(self.alg, global_state, self.personal[k], self.clients[k], round,
                            self.num_domains) for k in sorted(self.clients)]
