"""From measured bytes (``models.memory.probe``) to the sizes a GPU actor works with.

How many clients train as one batched pass (``group_size``), how many images one
evaluation pass takes (``eval_chunk``) and how many actors share a GPU
(``actors_per_gpu``) all follow from one budget in bytes and the cost of an image,
instead of counts chosen once for the 0.8 M-parameter built-in backbone (group 8 x
batch 32 at ViT-B/16 is 18 GiB of activations; a quarter of an 80 GB GPU is 20).
Plain Python: the budget is a number of bytes; what fills it was measured.
"""

from __future__ import annotations

import math

#: the share of a budget the sizes plan to fill (allocator blocks, fragmentation)
HEADROOM = 0.8
#: a CUDA context and allocator per process, beside the tensors
CONTEXT_BYTES = 600 << 20
#: the most clients one batched pass takes, and the most images one evaluation pass
MAX_GROUP = 8
MAX_CHUNK = 256


def _free(budget: int, cost: dict) -> float:
    return HEADROOM * budget - cost["weights_bytes"] - cost["fixed_bytes"]


def group_size(budget: int, cost: dict, batch_size: int) -> int:
    """Clients one batched training pass takes within ``budget`` bytes: each brings
    ``batch_size`` images of ``cost["train_bytes_per_image"]``."""
    fit = _free(budget, cost) / (batch_size * cost["train_bytes_per_image"])
    return int(min(MAX_GROUP, max(1, math.floor(fit))))


def eval_chunk(budget: int, cost: dict, passes_per_image: int) -> int:
    """Images one evaluation pass takes: each goes through the backbone
    ``passes_per_image`` times at once (pFedBayesPT's S prompt samples on a GPU)."""
    fit = _free(budget, cost) / (max(1, passes_per_image) * cost["infer_bytes_per_image"])
    return int(min(MAX_CHUNK, max(1, math.floor(fit))))


def actors_per_gpu(gpu_bytes: int, cost: dict, batch_size: int, group: int) -> int:
    """Actors that fit on a GPU of ``gpu_bytes``, each training ``group`` clients a pass."""
    need = (cost["weights_bytes"] + cost["fixed_bytes"]
            + group * batch_size * cost["train_bytes_per_image"]) / HEADROOM + CONTEXT_BYTES
    return max(1, math.floor(gpu_bytes / need))


def plan(budget: int, cost: dict, batch_size: int, passes_per_image: int) -> dict:
    """Everything sized from ``budget``, with what it was sized from."""
    return {"budget_bytes": int(budget), **cost,
            "group_size": group_size(budget, cost, batch_size),
            "eval_chunk": eval_chunk(budget, cost, passes_per_image)}
