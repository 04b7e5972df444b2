"""The single-process reference loop: a whole federated run, no Ray.

It is the ground truth for correctness (the Ray runtime must reproduce its
metrics) and the baseline for the runtime's overhead benchmark.

    python -m rayfed_bpt.algorithms.reference --set algorithm.name=fedavg_vpt train.rounds=3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from ..config import ExperimentConfig, load_config
from ..data import PartitionReader
from ..errors import RayfedError
from .base import ClientTask
from .evaluation import client_eval, summarize, train_loss
from .experiment import (
    load_backbone,
    load_clients,
    make_algorithm,
    resolve_partition,
    sample_clients,
)


def run_reference(
    cfg: ExperimentConfig,
    log: Callable[[str], None] | None = print,
    final_evals: dict[str, dict] | None = None,
    on_finish: Callable[..., None] | None = None,
) -> list[dict[str, float]]:
    """Run ``cfg`` in this process; return one metrics dict per evaluated round.

    ``final_evals`` maps a name to algorithm options (e.g. ``{"S16": {"eval_samples": 16}}``):
    the trained final state is evaluated again under each, and the last metrics dict gets
    ``"<name>/<metric>"`` entries. Test-time options (S, the mean prompt) are studied this
    way without retraining.
    """
    reader = PartitionReader(resolve_partition(cfg.data, cfg.seed))
    backbone = load_backbone(cfg)
    alg = make_algorithm(cfg, backbone, reader)
    clients = load_clients(reader, reader.client_ids, cfg)
    global_state = alg.init_global()
    personal = {k: alg.init_personal(k) for k in clients}
    history = []
    for r in range(cfg.train.rounds):
        t0 = time.perf_counter()
        sampled = sample_clients(reader.num_clients, cfg.train, cfg.seed, r)
        results = alg.local_update(
            global_state, [ClientTask(k, clients[k], personal[k], r) for k in sampled]
        )
        for res in results:
            personal[res.client_id] = res.personal
        global_state = alg.aggregate(global_state, results, r)
        loss = train_loss(results)
        if (r + 1) % cfg.train.eval_every == 0 or r + 1 == cfg.train.rounds:
            evals = [
                client_eval(alg, global_state, personal[k], clients[k], r, reader.info.num_domains)
                for k in reader.client_ids
            ]
            m = {
                "round": r + 1,
                "train_loss": loss,
                **summarize(evals, reader.info.domain_names, alg.has_global_model),
                "round_seconds": time.perf_counter() - t0,
            }
            history.append(m)
            if log:
                log(
                    f"round {r + 1:3d}/{cfg.train.rounds}  loss {loss:.3f}  "
                    f"acc mean {m['acc_mean']:.3f} std {m['acc_std']:.3f} min {m['acc_min']:.3f}"
                    f"  ({m['round_seconds']:.1f}s)"
                )
    if final_evals and history:
        for name, options in final_evals.items():
            variant = replace(
                cfg, algorithm=replace(cfg.algorithm, options={**cfg.algorithm.options, **options})
            )
            alt = make_algorithm(variant, backbone, reader)
            evals = [
                client_eval(alt, global_state, personal[k], clients[k], cfg.train.rounds - 1,
                            reader.info.num_domains)
                for k in reader.client_ids
            ]
            summary = summarize(evals, reader.info.domain_names, alt.has_global_model)
            history[-1].update({f"{name}/{k}": v for k, v in summary.items()})
    if on_finish is not None:
        on_finish(alg, global_state, personal, clients)
    return history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m rayfed_bpt.algorithms.reference",
        description="Run one federated experiment in a single process (no Ray) and print "
        "per-round mean/std/min client accuracy.",
    )
    ap.add_argument("--config", help="YAML config file")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. algorithm.name=fedavg_vpt train.rounds=3",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        if args.threads:
            torch.set_num_threads(args.threads)
        print(
            f"algorithm {cfg.algorithm.name}, {cfg.data.partitioner} partition of "
            f"{cfg.data.num_clients} clients, seed {cfg.seed}"
        )
        run_reference(cfg)
    except RayfedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
