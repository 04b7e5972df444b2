"""How a round's clients are cut into work units, and how many train as one batched pass.

Plain Python (no torch): the Ray pool's driver side imports it before the heavy
modules are loaded, so that client actors start while the driver sets up.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..data import PartitionReader

#: clients trained as one batched pass on a GPU when ``runtime.group_size`` is auto
#: (step_speed: batch 256 runs at ~7x the images/s of batch 32 on an H200)
GPU_GROUP_SIZE = 8


def resolve_group_size(value: int | str, cuda: bool) -> int:
    """``runtime.group_size``: a number, or auto (1 on a CPU, where one client's step is
    already the floor and batching measured 0.6-0.9x; ``GPU_GROUP_SIZE`` on a GPU)."""
    if value == "auto":
        return GPU_GROUP_SIZE if cuda else 1
    return int(value)


def train_sizes(reader: PartitionReader, cfg: ExperimentConfig) -> dict[int, int]:
    """Training examples each client really uses (after the validation carve, then
    ``max_train_per_client``): the work a scheduler balances and the ``num_train`` a report
    shows. Read off the manifest's label counts, as ``ClientData.from_shard`` carves."""
    from ..data.holdout import val_counts

    d = cfg.data
    cap = d.max_train_per_client if d.max_train_per_client is not None else 1 << 62
    out = {}
    for k in reader.client_ids:
        e = reader.entry(k)
        held = int(val_counts(e["label_counts"]["train"], d.val_fraction).sum())
        out[k] = min(e["num_train"] - held, cap)
    return out


def train_chunks(ids: list[int], sizes: dict[int, int], group_size: int) -> list[list[int]]:
    """Work units of a training round, largest first: groups of ``group_size``
    clients of similar size (a batched group steps in lockstep)."""
    order = sorted(ids, key=lambda k: (-sizes[k], k))
    return [order[i : i + group_size] for i in range(0, len(order), group_size)]


def eval_chunks(ids: list[int], sizes: dict[int, int], workers: int) -> list[list[int]]:
    """Work units of an evaluation: about four per worker, largest clients first."""
    order = sorted(ids, key=lambda k: (-sizes[k], k))
    per = max(1, math.ceil(len(order) / (4 * max(1, workers))))
    return [order[i : i + per] for i in range(0, len(order), per)]
