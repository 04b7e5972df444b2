"""Hosting clients in one process, and the pool that trains them all right here.

``ClientHost`` is the frozen backbone, the algorithm and an LRU of opened clients
(their rows of the memory-mapped data, cheap to reopen, with labels and cached
features), bounded in count and in bytes. The in-process pool has one; every Ray
client actor wraps one. Both compute through the same code, so they agree.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch

from ..algorithms.base import ClientData, ClientResult, ClientTask, State
from ..algorithms.evaluation import ClientEval, client_eval
from ..config import ExperimentConfig
from ..data import PartitionReader
from .budget import plan
from .pool import PoolContext
from .schedule import resolve_group_size, train_chunks
from .setup import load_backbone, load_client, make_algorithm


class ClientHost:
    """Backbone, algorithm and opened clients of one process."""

    def __init__(self, cfg: ExperimentConfig, partition_dir: str, group_size: int,
                 device: str | None = None, reader: PartitionReader | None = None,
                 memory_budget: int | None = None):
        self.cfg = cfg
        # shard hashes were checked once before any host started; here only sizes
        self.reader = reader or PartitionReader(partition_dir, verify=False)
        self.reader.threads = cfg.runtime.threads  # encoded pixels decode on our own CPUs
        backbone = load_backbone(cfg)
        if device is not None:
            backbone = backbone.to(device)
        self.precision = backbone.set_precision(cfg.train.precision)
        self.alg = make_algorithm(cfg, backbone, self.reader)
        self.budget = None  # on a GPU: the sizes its memory budget gives (engine.budget)
        if memory_budget:
            self.budget = sized(self.alg, memory_budget, cfg.train.batch_size)
            self.alg.eval_chunk = self.budget["eval_chunk"]
        self.group_size = group_size  # resolved once, by the pool
        self.trained: set[int] = set()
        self.capacity = cfg.runtime.client_cache
        self.max_bytes = int(cfg.runtime.client_cache_mb * 2**20)
        self._clients: OrderedDict[int, ClientData] = OrderedDict()
        self._variants: dict[str, object] = {}

    def client(self, k: int) -> ClientData:
        """Client ``k``'s data (and its cached features), opened on first use. The least
        recently used clients are closed while more than ``runtime.client_cache`` are
        open or they hold more than ``runtime.client_cache_mb`` (the one in use stays)."""
        data = self._clients.pop(k, None)
        if data is None:
            data = load_client(self.reader, k, self.cfg)
        self._clients[k] = data
        held = sum(map(client_bytes, self._clients.values()))
        while len(self._clients) > 1 and (len(self._clients) > self.capacity
                                          or held > self.max_bytes):
            held -= client_bytes(self._clients.popitem(last=False)[1])
        return data

    def opened(self) -> list[ClientData]:
        """The clients whose data is open here now (most recently used last)."""
        return list(self._clients.values())

    def train(self, global_state: State, personal: dict[int, State], round: int
              ) -> list[ClientResult]:
        """Train ``personal``'s clients as one batched group: a work unit, which the pool
        cut (once) to at most ``group_size`` clients of similar size."""
        self.trained.update(personal)
        tasks = [ClientTask(k, self.client(k), personal[k], round) for k in personal]
        return self.alg.local_update(global_state, tasks)

    def evaluate(self, global_state: State, personal: dict[int, State], round: int,
                 options: dict | None = None, splits: Sequence[str] = ("test",)
                 ) -> list[ClientEval]:
        alg = self.alg if not options else self._variant(options)
        n = self.reader.info.num_domains
        return [client_eval(alg, global_state, personal[k], data, round, n, split)
                for k in personal for data in [self.client(k)] for split in splits]

    def _variant(self, options: dict):
        key = repr(sorted(options.items()))
        if key not in self._variants:
            self._variants[key] = make_algorithm(self.cfg, self.alg.backbone, self.reader,
                                                 options)
            self._variants[key].eval_chunk = self.alg.eval_chunk
        return self._variants[key]

    def info(self, index: int) -> dict:
        """Where this host runs and which clients it trained (a pool's ``stats``)."""
        return {"index": index, "pid": os.getpid(), "device": str(self.alg.device),
                "threads": torch.get_num_threads(), "group_size": self.group_size,
                "precision": self.precision, "budget": self.budget,
                "clients": sorted(self.trained)}

    def memory(self) -> dict:
        """What hosting clients costs: process RSS, and per open client the bytes it holds
        (labels, cached features) beyond the memory-mapped images."""
        import psutil  # Ray's own dependency

        per_client = [client_bytes(d) for d in self.opened()]
        return {"rss": psutil.Process().memory_info().rss, "open_clients": len(per_client),
                "client_bytes_max": max(per_client, default=0),
                "client_bytes_mean": sum(per_client) / max(1, len(per_client))}


def sized(alg, budget: int, batch_size: int) -> dict:
    """``engine.budget.plan`` for ``alg``'s backbone, from one probe of what an image costs
    (``models.memory``) at the algorithm's prompt length."""
    from ..models.memory import probe

    cost = probe(alg.backbone, getattr(alg.opts, "prompt_len", 0))
    return plan(budget, cost, batch_size, alg.backbone_passes())


def client_bytes(data: ClientData) -> int:
    """What an open client holds in memory: its labels, domains, row numbers and cached
    features (its images stay in the memory-mapped file)."""
    tensors = sum(t.numel() * t.element_size() for t in [*data.labels.values(),
                                                         *data.cache.values()])
    arrays = sum(a.nbytes for a in data.domains.values())
    return tensors + arrays + sum(r.rows.nbytes for r in data.images.values())


class InProcessPool:
    """The pool ``in_process`` (declared in ``catalog``): every client trained in this
    process, one work unit after another — tests, the reference loop, the suite's runs,
    and ``runtime.pool=in_process`` under Ray (the driver actor trains them itself). The
    same work units as the Ray pool, in the same order. On the CPU: group_size auto is 1."""

    def __init__(self, ctx: PoolContext):
        self.sizes = ctx.sizes
        self.group_size = resolve_group_size(ctx.cfg.runtime.group_size, cuda=False)
        self.host = ClientHost(ctx.cfg, ctx.partition_dir, self.group_size, reader=ctx.reader)

    def start(self) -> None:
        pass

    def train(self, global_state, personal, round):
        out = []
        for chunk in train_chunks(list(personal), self.sizes, self.group_size):
            out += self.host.train(global_state, {k: personal[k] for k in chunk}, round)
        return out

    def evaluate(self, global_state, personal, round, options=None, splits=("test",)):
        return self.host.evaluate(global_state, personal, round, options, splits)

    def stats(self) -> dict:
        return {"workers": [self.host.info(0)], "memory": [self.host.memory()], "replaced": 0}

    def close(self) -> None:
        pass
