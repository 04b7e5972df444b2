"""What an algorithm sees of a client: its examples, one round's task and its result.

Seeds too: every random draw of a client comes from a generator seeded by
``seed_for(seed, purpose, round, client)``, so results do not depend on which process
trains which client or in which order.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..data import ImageRows
from ..data.holdout import carve_val
from ..models import PromptedViT, normalize

State = dict[str, torch.Tensor]


def seed_for(*parts: object) -> int:
    """A stable 63-bit seed from any parts (ints, strings): same parts, same seed."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(*parts))


@dataclass
class ClientData:
    """One client's examples: its images where they are stored (rows of the memory-mapped
    dataset, read per batch), labels, domains, and cached features."""

    client_id: int
    images: dict[str, ImageRows]
    labels: dict[str, torch.Tensor]
    domains: dict[str, np.ndarray]
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    _ahead: tuple | None = field(default=None, repr=False)  # (key, Future): a read ahead

    def num(self, split: str) -> int:
        return len(self.labels[split])

    @classmethod
    def from_shard(
        cls, shard, max_train: int | None = None, max_test: int | None = None, seed: int = 0,
        val_fraction: float = 0.0,
    ) -> ClientData:
        """A client's splits from its shard. With ``val_fraction`` a "val" split is carved
        from the train rows first (``carve_val``, seeded by run seed and client), then the
        caps apply: ``max_train`` to what train keeps, ``max_test`` to val and test."""
        rows: dict[str, tuple[str, np.ndarray | None, int | None]] = {
            "train": ("train", None, max_train), "test": ("test", None, max_test)}
        if val_fraction > 0:
            keep, val = carve_val(shard.labels("train"), val_fraction,
                                  seed_for(seed, "val", shard.client_id))
            rows["train"] = ("train", keep, max_train)
            rows["val"] = ("train", val, max_test)
        images, labels, domains = {}, {}, {}
        for split, (part, idx, cap) in rows.items():
            x, y, d = shard.images(part), shard.labels(part), shard.domains(part)
            n = len(y) if idx is None else len(idx)
            if cap is not None and n > cap:
                rng = np.random.default_rng(seed_for(seed, "subsample", shard.client_id, split))
                pick = np.sort(rng.choice(n, cap, replace=False))
                idx = pick if idx is None else idx[pick]
            if idx is not None:
                x, y, d = x.select(idx), y[idx], d[idx]
            images[split] = x
            labels[split] = torch.as_tensor(np.asarray(y, np.int64))
            domains[split] = np.asarray(d)
        return cls(shard.client_id, images, labels, domains)

    def x(self, split: str, idx, backbone: PromptedViT) -> torch.Tensor:
        """Normalized float images for ``idx``, read (and decoded) for this batch only (or
        already, by ``prefetch``), moved as uint8 (pinned, asynchronously, to a GPU) and
        resized and normalized on the backbone's device."""
        key = (split, np.asarray(idx).tobytes())
        if self._ahead is not None and self._ahead[0] == key:
            images = self._ahead[1].result()
        else:
            images = self.images[split].take(idx)
        self._ahead = None
        images = torch.from_numpy(images)  # a fresh array from take(): no copy
        if backbone.device.type == "cuda":
            images = images.pin_memory().to(backbone.device, non_blocking=True)
        return normalize(images, backbone.vit)

    def prefetch(self, split: str, idx) -> None:
        """Read (decode) the batch ``idx`` in a thread while the current step trains; the
        next ``x`` of exactly that batch takes it."""
        self._ahead = ((split, np.asarray(idx).tobytes()),
                       _reader().submit(self.images[split].take, idx))

    def reads_ahead(self, backbone: PromptedViT) -> bool:
        """Worth it where reading a batch costs (encoded pixels) or a GPU waits on it."""
        return backbone.device.type == "cuda" or any(
            r.column.info.pixels != "raw" for r in self.images.values())

    def y(self, split: str, idx) -> torch.Tensor:
        return self.labels[split][idx]


_READER: list[ThreadPoolExecutor] = []


def _reader() -> ThreadPoolExecutor:
    """This process's one read-ahead thread."""
    if not _READER:
        _READER.append(ThreadPoolExecutor(1, thread_name_prefix="read-ahead"))
    return _READER[0]


@dataclass
class Phase:
    """Part of a client's local training: these params, this many epochs; its metrics
    get ``prefix``."""

    params: list[nn.Parameter]
    epochs: int
    prefix: str = ""


@dataclass
class ClientTask:
    """What a client needs for one local update."""

    client_id: int
    data: ClientData
    personal: State
    round: int


@dataclass
class ClientResult:
    client_id: int
    num_samples: int
    update: State  # what travels to the server
    personal: State  # what stays with the client
    metrics: dict[str, float]
