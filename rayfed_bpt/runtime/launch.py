"""The entry point's side of a run: Ray, the run folder, the driver actor, progress.

``run_experiment`` is what ``rayfed-bpt run`` calls, locally or under
``ray job submit``: it resolves the data and the tracking store, starts (or
joins) Ray, creates the driver actor, shows a progress bar while the driver
works, and returns its summary.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import ray
import yaml
from ray.exceptions import RayTaskError

from ..algorithms.experiment import resolve_partition
from ..config import ExperimentConfig, from_dict
from ..errors import ConfigError, RayfedError
from ..tracking import resolve_tracking_uri, ui_command
from .driver import Driver


def init_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True)


def new_run_dir(cfg: ExperimentConfig) -> Path:
    root = Path(cfg.runtime.output_dir).resolve()
    name = cfg.runtime.run_name or (
        f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.algorithm.name}-s{cfg.seed}")
    run_dir = root / name
    if (run_dir / "checkpoint.pt").exists():
        raise ConfigError(f"run folder {run_dir} already holds a run; resume it with "
                          f"`rayfed-bpt run --resume {run_dir}` or choose another "
                          "runtime.run_name.")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return run_dir


def config_of_run(run_dir: str | Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); pass the folder "
                          "that `rayfed-bpt run` printed.")
    return from_dict(ExperimentConfig, yaml.safe_load(path.read_text()))


def _unwrap(e: RayTaskError) -> Exception:
    cause = getattr(e, "cause", None)
    if isinstance(cause, RayfedError):
        return RayfedError(str(cause))
    return RayfedError(f"the run failed: {cause!r}" if cause else str(e))


def _describe(m: dict) -> str:
    parts = [f"loss {m['train_loss']:.3f}"] if "train_loss" in m else []
    if "acc_mean" in m:
        parts.append(f"acc mean {m['acc_mean']:.3f} min {m['acc_min']:.3f}")
    return "  ".join(parts)


def run_experiment(cfg: ExperimentConfig, resume_dir: str | Path | None = None,
                   show_progress: bool | str = True, log=print) -> dict:
    """Run ``cfg`` on Ray (a new run, or continue ``resume_dir``); return the summary.

    ``show_progress``: True (a bar), "lines" (a line per round: for job logs), False.
    """
    started_at = time.time()
    run_dir = Path(resume_dir).resolve() if resume_dir else new_run_dir(cfg)
    partition_dir = resolve_partition(cfg.data, cfg.seed)
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.runtime.output_dir) \
        if cfg.tracking.enabled else None
    t0 = time.perf_counter()
    init_ray(cfg.runtime.address)
    driver = ray.remote(Driver).options(num_cpus=0, num_gpus=0, max_concurrency=2).remote(
        cfg.to_dict(), str(partition_dir), str(run_dir), uri, resume=resume_dir is not None)
    done = driver.run.remote()
    bar = None
    if show_progress is True:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.rounds, unit="round", desc=cfg.algorithm.name,
                   dynamic_ncols=True)
    shown = 0
    try:
        while True:
            ready, _ = ray.wait([done], timeout=1.0)
            try:
                p = ray.get(driver.progress.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - the driver is gone; `done` says why
                p = None
            if bar is not None and p is not None:
                if p["round"] > shown:
                    bar.update(p["round"] - shown)
                    shown = p["round"]
                m = p.get("metrics") or {}
                post = {"status": p["status"]}
                if "acc_mean" in m:
                    post.update(acc=f"{m['acc_mean']:.3f}", min=f"{m['acc_min']:.3f}")
                if "train_loss" in m:
                    post["loss"] = f"{m['train_loss']:.3f}"
                bar.set_postfix(post)
            if show_progress == "lines" and p is not None and p["round"] > shown:
                shown = p["round"]
                print(f"round {shown}/{cfg.train.rounds}  {_describe(p['metrics'])}", flush=True)
            if ready:
                break
        summary = ray.get(done)
    except RayTaskError as e:
        raise _unwrap(e) from None
    finally:
        if bar is not None:
            bar.close()
    summary["wall_seconds"] = time.perf_counter() - t0
    # data, Ray, the driver and every client actor ready: what a user waits before round 1
    summary["startup_seconds"] = summary["actors_ready_at"] - started_at
    if log:
        last = summary["history"][-1] if summary["history"] else {}
        if last:
            log(f"final: mean client acc {last['acc_mean']:.4f} (std {last['acc_std']:.4f}, "
                f"min {last['acc_min']:.4f}), global acc {last['global_acc']:.4f}")
        log(f"run folder: {run_dir}")
        if uri:
            log(f"MLflow run {summary['mlflow_run_id']} in {uri}\n  browse it: {ui_command(uri)}")
    return summary
