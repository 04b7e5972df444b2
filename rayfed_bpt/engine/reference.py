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
from pathlib import Path

from ..config import ExperimentConfig, from_dict, load_config
from ..data import PartitionReader
from ..data.recipe import resolve_partition
from ..errors import ConfigError, RayfedError
from ..plugins import import_plugins
from ..progress import round_line
from ..run_folder import RunFolder
from .checkpoint import load_checkpoint
from .loop import Engine, evaluated
from .pool import PoolContext, make_pool
from .setup import torch_threads
from .state import RoundListener, RunState


def local_engine(cfg: ExperimentConfig, listeners: Sequence[RoundListener] = ()) -> Engine:
    """The engine over an in-process pool for ``cfg`` (the partition made if needed)."""
    import_plugins(cfg.plugins)  # a config from a Ray task: its partitioner may be a plugin
    reader = PartitionReader(resolve_partition(cfg.data, cfg.seed))
    cfg.train.check_population(len(reader.training_ids))
    pool = make_pool(PoolContext(cfg, reader), "in_process")
    return Engine(cfg, pool.host.alg, pool, reader.training_ids, reader.info.domain_names,
                  listeners, new_clients=reader.new_clients, ood_clients=reader.ood_clients)


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, float]:
    """Evaluate a finished run once on ``split``: every client's personal state with the
    global state of the run's latest checkpoint, in this process; the metrics a round
    reports (``round`` and test keys unprefixed, validation ones ``val_``).

    Sweeps choose a config on validation with ``train.eval_test`` off, then report the
    chosen trial's test metrics this way, once: ``split`` is evaluated whatever the run's
    config says. Same config, state and round as the last round: the same numbers. A run
    stopped early (a scheduler's decision) is evaluated at its last checkpoint; ``round``
    says which."""
    run_dir = Path(run_dir)
    cfg = from_dict(ExperimentConfig, RunFolder(run_dir).read_config())
    if split not in ("test", "val"):
        raise ConfigError(f"split={split!r}; allowed: test, val")
    if split == "val" and cfg.data.val_fraction == 0:
        raise ConfigError(f"{run_dir} holds out no validation split (data.val_fraction is 0)")
    found = load_checkpoint(run_dir)
    if found is None:
        raise RayfedError(f"{run_dir} has no checkpoint to evaluate")
    state = found[0]
    with torch_threads(cfg.runtime.threads):
        return {"round": state.round, **local_engine(cfg).evaluate(state, splits=(split,))}


class _Log(RoundListener):
    def __init__(self, log: Callable[[str], None], rounds: int):
        self.log, self.rounds = log, rounds

    def on_round(self, state: RunState, m: dict) -> None:
        self.log(round_line(m, self.rounds))


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
