"""How many client actors fit on a GPU (or in a node's memory) for a config.

Ray's fractional GPUs only schedule: four actors at 0.25 each still crash
with out-of-memory if each needs more than a quarter of the card. This
measures one client actor's real footprint — backbone, algorithm, one local
epoch of a work unit (``runtime.group_size`` clients, the largest, trained as one
batched pass, as the actor would) and their evaluation at the configured batch
size — and turns it into ``runtime.gpus_per_actor`` with a safety margin.
"""

from __future__ import annotations

import math
import time

import torch

from ..algorithms.base import ClientTask
from ..config import ExperimentConfig
from ..data import PartitionReader
from ..data.recipe import resolve_partition
from ..engine.budget import actors_per_gpu
from ..engine.host import sized
from ..engine.schedule import resolve_group_size
from ..engine.setup import load_backbone, load_clients, make_algorithm
from .resources import DEFAULT_GPU_FRACTION, process_rss


def measure_actor(cfg: ExperimentConfig, device: str | None = None, margin: float = 1.3,
                  gpu_gb: float = 80.0) -> dict:
    """One actor's footprint on ``device``, and the sizes the memory budget gives: on a GPU
    its own; on a CPU those a ``gpu_gb`` GPU would give (bytes measured here, at the
    config's precision)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    reader = PartitionReader(resolve_partition(cfg.data, cfg.seed))
    rss0 = process_rss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    backbone = load_backbone(cfg).to(device)
    precision = backbone.set_precision(cfg.train.precision)
    alg = make_algorithm(cfg, backbone, reader)
    gpu_bytes = (torch.cuda.get_device_properties(0).total_memory if device == "cuda"
                 else int(gpu_gb * 1e9))
    share = cfg.runtime.gpu_memory_fraction or cfg.runtime.gpus_per_actor or DEFAULT_GPU_FRACTION
    budget = (int(cfg.runtime.memory_budget_mb * 2**20) if cfg.runtime.memory_budget_mb
              else int(share * gpu_bytes))
    sizes = sized(alg, budget, cfg.train.batch_size)
    group = (sizes["group_size"] if device == "cuda" and cfg.runtime.group_size == "auto"
             else resolve_group_size(cfg.runtime.group_size, device == "cuda"))
    largest = sorted(reader.client_ids, key=lambda c: -reader.entry(c)["num_train"])[:group]
    datas = load_clients(reader, largest, cfg)
    t = time.perf_counter()
    results = alg.local_update(alg.init_global(), [
        ClientTask(k, datas[k], alg.init_personal(k), 0) for k in largest])
    for res in results:
        alg.predict_client(alg.init_global(), res.personal, datas[res.client_id], "test", 0)
    seconds = time.perf_counter() - t
    out = {"device": device, "precision": precision, "gpu_bytes": gpu_bytes, "share": share,
           "sized": sizes, "budget_actors_per_gpu": actors_per_gpu(
               gpu_bytes, sizes, cfg.train.batch_size, sizes["group_size"]),
           "client": largest[0], "group_size": len(largest),
           "num_train": datas[largest[0]].num("train"),
           "local_update_and_eval_seconds": seconds, "rss_bytes": process_rss(),
           "rss_growth_bytes": process_rss() - rss0}
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        total = torch.cuda.get_device_properties(0).total_memory
        per_gpu = max(1, math.floor(0.9 * total / (peak * margin)))
        out.update(cuda_peak_bytes=peak, cuda_total_bytes=total, actors_per_gpu=per_gpu,
                   gpus_per_actor=round(1.0 / per_gpu, 4))
    return out
