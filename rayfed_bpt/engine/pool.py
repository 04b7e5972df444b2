"""Client pools: where the engine's clients train and evaluate.

The round engine talks to a pool through three calls — ``train``,
``evaluate``, ``close`` — and never sees how the work is spread. Personal
state travels with each call (it is small: prompts, heads), so any worker can
take any client and a lost task is simply given to another.

``ClientHost`` is what hosts clients in one process: the frozen backbone, the
algorithm and an LRU of opened client shards (memory-mapped, cheap to reopen)
with their cached features. The in-process pool has one; every Ray client
actor wraps one. Both compute through the same code, so they agree.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from ..algorithms.base import ClientData, ClientResult, ClientTask, State
from ..algorithms.evaluation import ClientEval, client_eval
from ..config import ExperimentConfig
from ..data import PartitionReader
from .schedule import resolve_group_size, train_chunks
from .setup import load_backbone, load_client, make_algorithm


class ClientPool(Protocol):
    def train(self, global_state: State, personal: dict[int, State], round: int
              ) -> list[ClientResult]:
        """Train the clients in ``personal`` (id -> its personal state) for one round."""

    def evaluate(self, global_state: State, personal: dict[int, State], round: int,
                 options: dict | None = None, splits: Sequence[str] = ("test",)
                 ) -> list[ClientEval]:
        """Evaluate the clients in ``personal`` on each of ``splits``; ``options`` override
        algorithm options."""

    def close(self) -> None: ...


class ClientHost:
    """Backbone, algorithm and opened clients of one process."""

    def __init__(self, cfg: ExperimentConfig, partition_dir: str, device: str | None = None,
                 reader: PartitionReader | None = None):
        self.cfg = cfg
        # shard hashes were checked once before any host started; here only sizes
        self.reader = reader or PartitionReader(partition_dir, verify=False)
        backbone = load_backbone(cfg)
        if device is not None:
            backbone = backbone.to(device)
        self.alg = make_algorithm(cfg, backbone, self.reader)
        self.group_size = resolve_group_size(cfg.runtime.group_size,
                                             backbone.device.type == "cuda")
        self.capacity = cfg.runtime.client_cache
        self._clients: OrderedDict[int, ClientData] = OrderedDict()
        self._variants: dict[str, object] = {}

    def client(self, k: int) -> ClientData:
        """Client ``k``'s data (and its cached features), opened on first use."""
        data = self._clients.pop(k, None)
        if data is None:
            data = load_client(self.reader, k, self.cfg)
        self._clients[k] = data
        while len(self._clients) > self.capacity:
            self._clients.popitem(last=False)
        return data

    def opened(self) -> list[ClientData]:
        """The clients whose data is open here now (most recently used last)."""
        return list(self._clients.values())

    def train(self, global_state: State, personal: dict[int, State], round: int
              ) -> list[ClientResult]:
        tasks = [ClientTask(k, self.client(k), personal[k], round) for k in personal]
        out: list[ClientResult] = []
        for i in range(0, len(tasks), self.group_size):
            out += self.alg.local_update(global_state, tasks[i : i + self.group_size])
        return out

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
        return self._variants[key]


class InProcessPool:
    """Every client trained here, one work unit after another: tests, the reference loop,
    the experiment suite's runs. The same work units as the Ray pool, in the same order."""

    def __init__(self, host: ClientHost, sizes: dict[int, int]):
        self.host = host
        self.sizes = sizes

    def train(self, global_state, personal, round):
        out = []
        for chunk in train_chunks(list(personal), self.sizes, self.host.group_size):
            out += self.host.train(global_state, {k: personal[k] for k in chunk}, round)
        return out

    def evaluate(self, global_state, personal, round, options=None, splits=("test",)):
        return self.host.evaluate(global_state, personal, round, options, splits)

    def close(self) -> None:
        pass
