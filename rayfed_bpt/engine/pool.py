"""Client pools: where the engine's clients train and evaluate, chosen by name.

The round engine talks to a pool through ``train``, ``evaluate`` and ``close``
and never sees how the work is spread; whoever owns the run also calls
``start`` (wait until it can take work) and ``stats`` (where clients ran, memory).
Personal state travels with each call, so any worker can take any client and a
lost task is simply given to another. A pool is one class registered by name
(``runtime.pool``): ``in_process`` (``engine.host``), ``ray_actors``
(``runtime.actor_pool``), or a plugin's with ``@register_pool``. Each is made from
one ``PoolContext`` by ``make_pool`` and resolves ``runtime.group_size`` once.

Torch-free: the driver actor makes its pool (its client actors start) before it
loads torch itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..catalog import pool_class

if TYPE_CHECKING:
    from ..algorithms.client import ClientResult, State
    from ..algorithms.evaluation import ClientEval
    from ..config import ExperimentConfig
    from ..data import PartitionReader


@dataclass
class PoolContext:
    """What any pool is made from: the run's config and partition, where the run writes
    (for messages and fault markers), and on Tune the trial's reserved bundles."""

    cfg: ExperimentConfig
    reader: PartitionReader
    run_dir: str | None = None
    placement_group: Any = None  # a Tune trial's; unset: the pool reserves its own
    bundle_offset: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # filled by make_pool

    @property
    def partition_dir(self) -> str:
        return str(self.reader.root)


class ClientPool(Protocol):
    sizes: dict[int, int]  # training examples per client, as the pool balances them
    group_size: int  # clients per batched pass, resolved once

    def start(self) -> None:
        """Block until the pool can take work (its workers have loaded the backbone)."""

    def train(self, global_state: State, personal: dict[int, State], round: int
              ) -> list[ClientResult]:
        """Train the clients in ``personal`` (id -> its personal state) for one round."""

    def evaluate(self, global_state: State, personal: dict[int, State], round: int,
                 options: dict | None = None, splits: Sequence[str] = ("test",)
                 ) -> list[ClientEval]:
        """Evaluate the clients in ``personal`` on each of ``splits``; ``options`` override
        algorithm options."""

    def stats(self) -> dict:
        """``workers`` (where each ran, which clients), ``memory`` (per worker) and
        ``replaced`` (workers lost and replaced)."""

    def close(self) -> None: ...


def make_pool(ctx: PoolContext, name: str | None = None) -> ClientPool:
    """The pool ``name`` (default: the one ``runtime.pool`` names), made from ``ctx``."""
    from .schedule import train_sizes

    ctx.sizes = train_sizes(ctx.reader, ctx.cfg)
    return pool_class(name or ctx.cfg.runtime.pool)(ctx)
