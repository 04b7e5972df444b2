"""How many client actors fit on a GPU (or in a node's memory) for a config.

Ray's fractional GPUs only schedule: four actors at 0.25 each still crash
with out-of-memory if each needs more than a quarter of the card. This
measures one client actor's real footprint — backbone, algorithm, one
client's local epoch and evaluation at the configured batch size — and turns
it into ``runtime.gpus_per_actor`` with a safety margin.
"""

from __future__ import annotations

import math
import time

import torch

from ..algorithms.base import ClientTask
from ..config import ExperimentConfig
from ..data import PartitionReader
from ..data.recipe import resolve_partition
from ..engine.setup import load_backbone, load_clients, make_algorithm
from .resources import process_rss


def measure_actor(cfg: ExperimentConfig, device: str | None = None, margin: float = 1.3) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    reader = PartitionReader(resolve_partition(cfg.data, cfg.seed))
    rss0 = process_rss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    alg = make_algorithm(cfg, load_backbone(cfg).to(device), reader)
    k = max(reader.client_ids, key=lambda c: reader.entry(c)["num_train"])  # the largest
    data = load_clients(reader, [k], cfg)[k]
    t = time.perf_counter()
    [res] = alg.local_update(alg.init_global(), [ClientTask(k, data, alg.init_personal(k), 0)])
    alg.predict_client(alg.init_global(), res.personal, data, "test", 0)
    seconds = time.perf_counter() - t
    out = {"device": device, "client": k, "num_train": data.num("train"),
           "local_update_and_eval_seconds": seconds, "rss_bytes": process_rss(),
           "rss_growth_bytes": process_rss() - rss0}
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        total = torch.cuda.get_device_properties(0).total_memory
        per_gpu = max(1, math.floor(0.9 * total / (peak * margin)))
        out.update(cuda_peak_bytes=peak, cuda_total_bytes=total, actors_per_gpu=per_gpu,
                   gpus_per_actor=round(1.0 / per_gpu, 4))
    return out
