"""A whole federated run in this process: the round engine with the in-process pool.

It is the ground truth the Ray runtime is compared with, what the experiment
suite runs inside each of its Ray tasks, and the baseline of the overhead
benchmark.

    python -m rayfed_bpt.engine.reference --set algorithm.name=fedavg_vpt train.rounds=3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..config import ExperimentConfig, load_config
from ..data import PartitionReader
from ..data.recipe import resolve_partition
from ..errors import RayfedError
from .loop import Engine, evaluated
from .pool import ClientHost, InProcessPool
from .schedule import train_sizes
from .setup import torch_threads
from .state import RoundListener, RunState


def local_engine(cfg: ExperimentConfig, listeners: Sequence[RoundListener] = ()) -> Engine:
    """The engine over an in-process pool for ``cfg`` (the partition made if needed)."""
    reader = PartitionReader(resolve_partition(cfg.data, cfg.seed))
    host = ClientHost(cfg, str(reader.root), reader=reader)
    pool = InProcessPool(host, train_sizes(reader, cfg))
    return Engine(cfg, host.alg, pool, reader.client_ids, reader.info.domain_names, listeners)


class _Log(RoundListener):
    def __init__(self, log: Callable[[str], None], rounds: int):
        self.log, self.rounds = log, rounds

    def on_round(self, state: RunState, m: dict) -> None:
        if "acc_mean" in m:
            self.log(f"round {m['round']:3d}/{self.rounds}  loss {m['train_loss']:.3f}  "
                     f"acc mean {m['acc_mean']:.3f} std {m['acc_std']:.3f} min "
                     f"{m['acc_min']:.3f}  ({m['round_seconds']:.1f}s)")


def run_reference(
    cfg: ExperimentConfig,
    log: Callable[[str], None] | None = print,
    final_evals: dict[str, dict] | None = None,
    on_finish: Callable[..., None] | None = None,
    listeners: Sequence[RoundListener] = (),
    state: RunState | None = None,
) -> list[dict[str, float]]:
    """Run ``cfg`` (from ``state`` if given) in this process; return the evaluated rounds'
    metrics.

    ``final_evals`` maps a name to algorithm options (e.g. ``{"S16": {"eval_samples": 16}}``):
    the trained final state is evaluated again under each, and the last metrics dict gets
    ``"<name>/<metric>"`` entries. Test-time options (S, the mean prompt) are studied this
    way without retraining.
    """
    with torch_threads(cfg.runtime.threads):
        engine = local_engine(cfg, [*listeners, *([_Log(log, cfg.train.rounds)] if log else [])])
        state = engine.run(state if state is not None else engine.initial_state())
        history = evaluated(state.history)
        if final_evals and history:
            for name, options in final_evals.items():
                summary = engine.evaluate(state, options)
                history[-1].update({f"{name}/{k}": v for k, v in summary.items()})
        if on_finish is not None:
            host = engine.pool.host
            on_finish(engine.alg, state.global_state, state.personal,
                      {k: host.client(k) for k in engine.client_ids})
    return history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m rayfed_bpt.engine.reference",
        description="Run one federated experiment in a single process (no Ray) and print "
        "per-round mean/std/min client accuracy.",
    )
    ap.add_argument("--config", help="YAML config file")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="dotted overrides, e.g. algorithm.name=fedavg_vpt train.rounds=3")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        print(f"algorithm {cfg.algorithm.name}, {cfg.data.partitioner} partition of "
              f"{cfg.data.num_clients} clients, seed {cfg.seed}, "
              f"{cfg.runtime.threads} thread(s)")
        run_reference(cfg)
    except RayfedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
