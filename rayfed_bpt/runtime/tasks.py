"""Whole runs as Ray tasks: each config run by the single-process reference loop
(bit-identical to the actor runtime, which tests check) inside one Ray task with one
CPU. On a laptop two runs share two cores; on a cluster the runs spread over every
node. What to run and what to keep is the caller's (the experiment suite's runner).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator

import ray

from ..config import ExperimentConfig


def _run_remote(cfg: ExperimentConfig, final_evals: dict) -> dict:
    """One run in a Ray task, in-process (its threads: runtime.threads, as in every pool)."""
    from ..engine.reference import run_reference

    t = time.perf_counter()
    history = run_reference(cfg, log=None, final_evals=final_evals)
    return {"history": history, "seconds": time.perf_counter() - t}


def run_configs(jobs: list[tuple[Hashable, ExperimentConfig, dict]]
                ) -> Iterator[tuple[Hashable, dict | None, BaseException | None]]:
    """Run each (key, config, final_evals) as a Ray task, submitted in the order given
    (costliest first packs best); yield (key, {"history", "seconds"} or None, the error
    or None) as each finishes: one failed run does not stop the others. The wait wakes
    every 2 s, so Ctrl-C / SIGTERM land between waits."""
    remote = ray.remote(num_cpus=1, max_retries=1)(_run_remote)
    futures = {remote.remote(cfg, final_evals): key for key, cfg, final_evals in jobs}
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1, timeout=2.0)
        if not ready:
            continue
        key = futures.pop(ready[0])
        try:
            yield key, ray.get(ready[0]), None
        except Exception as e:  # noqa: BLE001 - the caller reports it and goes on
            yield key, None, getattr(e, "cause", None) or e
