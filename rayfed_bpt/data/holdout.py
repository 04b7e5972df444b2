"""A client's validation split: a stratified, seeded share of its train rows.

Sweeps choose hyper-parameters on it, never on the test split. How many rows
each label gives up depends on the label counts alone, so the torch-free
scheduler reads a client's train size off the manifest (``engine.schedule.
train_sizes``) and agrees with the opened data by construction; which rows go
is a seeded draw, so every process that opens the client carves the same ones.
"""

from __future__ import annotations

import numpy as np


def val_counts(label_counts, fraction: float) -> np.ndarray:
    """Validation rows per label: round(fraction * n) of each label's n (half up); at
    least one in all when the client has two or more train rows; never all of them."""
    n = np.asarray(label_counts, dtype=np.int64)
    if fraction <= 0:
        return np.zeros_like(n)
    v = np.floor(fraction * n + 0.5).astype(np.int64)
    total = int(n.sum())
    if total >= 2 and v.sum() == 0:
        v[int(np.argmax(n))] = 1  # the most common label gives one
    if total and v.sum() >= total:
        v[int(np.argmax(v))] -= 1  # the train split keeps at least one row
    return v


def carve_val(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of one client's train split, each sorted: per label,
    ``val_counts`` rows drawn without replacement by a generator seeded with ``seed``."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), v, replace=False)
              for c, v in enumerate(val_counts(counts, fraction)) if v]
    val = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    keep = np.ones(len(labels), bool)
    keep[val] = False
    return np.flatnonzero(keep), val
