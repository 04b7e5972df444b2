"""Ray Tune sweeps: a trial is one whole federated run, driven by a driver actor.

A search-space file (``tune_spaces/*.yaml``) names the metric and mode, the
search algorithm, the scheduler (ASHA with the round as its time axis, or
FIFO), ``num_samples``, per-trial resources, fixed ``base`` overrides and the
``space`` (dotted config keys -> distributions). Each trial reserves a
placement group (bundle 0 for the trial itself and its driver actor, one
bundle per client actor), reports metrics every round, and its actors go
with it when ASHA stops it early. MLflow gets a parent run per sweep and a
child run per trial.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from .config import ExperimentConfig, apply_overrides, load_config, read_yaml
from .errors import ConfigError, RayfedError

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint", "grid")
SEARCHERS = ("random", "grid")
SCHEDULERS = ("asha", "fifo")
SPACE_KEYS = ("name", "metric", "mode", "num_samples", "search", "scheduler", "resources",
              "max_concurrent", "base", "space")
TRIAL_CPU = 0.1  # bundle 0: the trial function and its driver actor mostly wait


@dataclass
class SweepSpace:
    """A parsed, validated search-space file."""

    path: Path
    name: str
    metric: str = "acc_mean"
    mode: str = "max"
    num_samples: int = 4
    search: str = "random"
    scheduler: dict = field(default_factory=lambda: {"name": "asha"})
    resources: dict = field(default_factory=dict)
    max_concurrent: int | None = None
    base: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)


def _err(path: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {msg}")


def load_space(path: str | Path, overrides: list[str] = ()) -> SweepSpace:
    """Read and check a space file; ``overrides`` (dotted) change its ``base``."""
    path = Path(path)
    raw = read_yaml(path, "search-space file (see tune_spaces/)")
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise _err(path, str(unknown), f"unknown key(s); allowed: {list(SPACE_KEYS)}")
    sp = SweepSpace(path=path, name=raw.get("name", path.stem), raw=raw,
                    **{k: raw[k] for k in ("metric", "mode", "num_samples", "search",
                                           "scheduler", "resources", "max_concurrent",
                                           "base", "space") if k in raw})
    if sp.mode not in ("max", "min"):
        raise _err(path, "mode", f"{sp.mode!r}; allowed: ['max', 'min']")
    if sp.search not in SEARCHERS:
        raise _err(path, "search", f"{sp.search!r}; allowed: {list(SEARCHERS)}")
    sched = sp.scheduler.get("name", "asha")
    if sched not in SCHEDULERS:
        raise _err(path, "scheduler.name", f"{sched!r}; allowed: {list(SCHEDULERS)}")
    extra = set(sp.scheduler) - {"name", "grace_period", "reduction_factor"}
    if extra:
        raise _err(path, f"scheduler.{sorted(extra)[0]}",
                   "unknown; allowed: ['name', 'grace_period', 'reduction_factor']")
    bad_res = set(sp.resources) - {"num_actors", "cpus_per_actor", "gpus_per_actor"}
    if bad_res:
        raise _err(path, f"resources.{sorted(bad_res)[0]}",
                   "unknown; allowed: ['num_actors', 'cpus_per_actor', 'gpus_per_actor']")
    if not isinstance(sp.num_samples, int) or sp.num_samples < 1:
        raise _err(path, "num_samples", f"{sp.num_samples!r} must be an integer >= 1")
    for key, dist in sp.space.items():
        if key.startswith("data."):
            raise _err(path, f"space.{key}", "data options cannot be swept: every trial must "
                       "see the same partition (put them in base)")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise _err(path, f"space.{key}", f"{dist!r} is not one distribution; write e.g. "
                       f"{{loguniform: [1e-5, 1e-1]}}; allowed: {list(DISTRIBUTIONS)}")
        kind, args = next(iter(dist.items()))
        if kind in ("uniform", "loguniform", "randint") and (
                not isinstance(args, list) or len(args) != 2):
            raise _err(path, f"space.{key}.{kind}", f"needs [low, high], got {args!r}")
        if kind in ("choice", "grid") and (not isinstance(args, list) or not args):
            raise _err(path, f"space.{key}.{kind}", f"needs a non-empty list, got {args!r}")
    base = dict(sp.base)
    apply_overrides(base, list(overrides))  # dotted overrides on top of base
    sp.base = base
    # Every sampled point must make a valid config: check the corners now.
    from .algorithms import algorithm_options

    for point in _corner_points(sp):
        try:
            cfg = trial_config(sp, point)
            algorithm_options(cfg.algorithm.name, cfg.algorithm.options)
        except ConfigError as e:
            raise ConfigError(f"{path}: a point of the space is not a valid config: {e}") from e
    return sp


def _to_float(v):
    return float(v) if isinstance(v, str) else v


def _corner_points(sp: SweepSpace) -> list[dict]:
    first, last = {}, {}
    for key, dist in sp.space.items():
        kind, args = next(iter(dist.items()))
        if kind in ("choice", "grid"):
            first[key], last[key] = args[0], args[-1]
        elif kind == "randint":
            first[key], last[key] = int(args[0]), int(args[1]) - 1
        else:
            first[key], last[key] = _to_float(args[0]), _to_float(args[1])
    return [first, last]


def trial_config(sp: SweepSpace, point: dict) -> ExperimentConfig:
    """The full config of one trial: base, then the sampled point, then Tune's needs."""
    d: dict = {}
    _merge(d, sp.base)
    for key, value in point.items():
        _set(d, key, value)
    _set(d, "train.eval_every", 1)  # the scheduler needs the metric every round
    for k, v in sp.resources.items():
        _set(d, f"runtime.{k}", v)
    return load_config(None, _overrides_of(d))


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if "." in k:
            _set(dst, k, v)
        elif isinstance(v, dict):
            _merge(dst.setdefault(k, {}), v)
        else:
            dst[k] = v


def _set(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def _overrides_of(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _overrides_of(v, f"{key}.")
        else:
            out.append(f"{key}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                       .replace("\n...", ""))
    return out


def param_space(sp: SweepSpace) -> dict:
    from ray import tune

    out = {}
    for key, dist in sp.space.items():
        kind, args = next(iter(dist.items()))
        if kind == "uniform":
            out[key] = tune.uniform(_to_float(args[0]), _to_float(args[1]))
        elif kind == "loguniform":
            out[key] = tune.loguniform(_to_float(args[0]), _to_float(args[1]))
        elif kind == "randint":
            out[key] = tune.randint(int(args[0]), int(args[1]))
        elif kind == "choice":
            out[key] = tune.choice(args)
        else:
            out[key] = tune.grid_search(args)
    return out


def trial_resources(sp: SweepSpace, cfg: ExperimentConfig):
    from ray import tune

    rt = cfg.runtime
    n = rt.num_actors or 1
    bundle = {"CPU": rt.cpus_per_actor}
    if rt.gpus_per_actor:
        bundle["GPU"] = rt.gpus_per_actor
    return tune.PlacementGroupFactory([{"CPU": TRIAL_CPU}] + [bundle] * n,
                                      strategy=rt.placement_strategy)


def _trial(point: dict, *, space_path: str, base: dict, raw: dict, partition_dir: str,
           tracking_uri: str | None, parent_run_id: str | None, trials_dir: str) -> None:
    """One Tune trial: a driver actor in this trial's placement group, reports per round."""
    import ray
    from ray import tune
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from .runtime.driver import Driver

    sp = SweepSpace(path=Path(space_path), name=raw.get("name", ""), base=base,
                    space=raw.get("space", {}), resources=raw.get("resources", {}))
    cfg = trial_config(sp, point)
    cfg.data.partition_dir = partition_dir
    trial_id = tune.get_context().get_trial_id()
    pg = ray.util.get_current_placement_group()
    driver = ray.remote(Driver).options(
        num_cpus=0, num_gpus=0, max_concurrency=4,
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0),
    ).remote(cfg.to_dict(), partition_dir, str(Path(trials_dir) / trial_id), tracking_uri,
             placement_group=pg, bundle_offset=1, parent_run_id=parent_run_id, paced=True)
    done = driver.run.remote()
    reported = 0
    try:
        while True:
            # blocks until the driver has a new round (or has finished): no polling
            watch = driver.round_metrics.remote(reported, 60.0)
            ready, _ = ray.wait([done, watch], num_returns=1)
            if done in ready:
                ray.get(done)  # raises what the run raised
                for m in ray.get(driver.round_metrics.remote(reported, 0.0), timeout=120):
                    tune.report({k.replace("/", "."): v for k, v in m.items()})
                return
            for m in ray.get(watch):
                tune.report({k.replace("/", "."): v for k, v in m.items()})
                reported += 1
                driver.proceed.remote()  # the scheduler let this trial go on
    finally:
        # Stopped early (or failed): the driver goes, and its client actors with it.
        _close_child_run(driver, tracking_uri)
        ray.kill(driver, no_restart=True)


def _close_child_run(driver, tracking_uri: str | None) -> None:
    """Mark a stopped trial's MLflow run KILLED (a finished one stays FINISHED)."""
    import ray

    if not tracking_uri:
        return
    try:
        run_id = ray.get(driver.mlflow_run_id.remote(), timeout=30)
        if run_id:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri)
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="KILLED")
    except Exception:  # noqa: BLE001 - best effort: the trial is going away anyway
        pass


def progress_callback(metric: str, mode: str, rounds: int):
    """A Tune callback printing one line per finished or stopped trial, with the
    running best (built here so importing this module does not import Ray Tune)."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.best = None

        def _line(self, trial, what: str) -> None:
            r = trial.last_result or {}
            v = r.get(metric)
            done = r.get("round", 0)
            if v is not None and (self.best is None or
                                  (v > self.best if mode == "max" else v < self.best)):
                self.best = v
            status = "stopped early" if what == "done" and done < rounds else what
            shown = f"{v:.4f}" if isinstance(v, float) else v
            best = f"{self.best:.4f}" if self.best is not None else "-"
            print(f"trial {trial.trial_id} {status} after {done} round(s): {metric} "
                  f"{shown}  (best so far {best})", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "FAILED")

    return Progress()


def run_sweep(space_path: str | Path | None = None, overrides: list[str] = (),
              address: str | None = None, resume_dir: str | Path | None = None,
              output_dir: str | Path | None = None) -> dict:
    """Run (or resume) a sweep; write best-config YAML, results CSV and PNGs."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from .data.recipe import resolve_partition
    from .runtime.launch import init_ray
    from .tracking import Tracker, resolve_tracking_uri

    if resume_dir:
        sweep_dir = Path(resume_dir).resolve()
        state = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) \
            if (sweep_dir / "sweep.yaml").exists() else None
        if state is None:
            raise ConfigError(f"{sweep_dir} is not a sweep folder (no sweep.yaml)")
        space_path, overrides = state["space_path"], state["overrides"]
        output_dir = state["output_dir"]  # the same MLflow store and folders as before
    sp = load_space(space_path, list(overrides))
    base_cfg = trial_config(sp, _corner_points(sp)[0])
    out_root = Path(output_dir or base_cfg.runtime.output_dir).resolve()
    if not resume_dir:
        sweep_dir = out_root / "sweeps" / f"{datetime.now():%Y%m%d-%H%M%S}-{sp.name}"
        sweep_dir.mkdir(parents=True, exist_ok=True)
        state = {"space_path": str(Path(space_path).resolve()), "overrides": list(overrides),
                 "output_dir": str(out_root), "parent_run_id": None}
    partition_dir = str(resolve_partition(base_cfg.data, base_cfg.seed))
    uri = resolve_tracking_uri(base_cfg.tracking.tracking_uri, out_root) \
        if base_cfg.tracking.enabled else None
    tracker = None
    if uri:  # the experiment and the parent run exist before any trial starts
        tracker = Tracker(uri, base_cfg.tracking.experiment, out_root / "mlartifacts")
        state["parent_run_id"] = tracker.start(
            f"sweep-{sweep_dir.name}", {"space_file": str(sp.path), **_space_params(sp)},
            run_id=state.get("parent_run_id"))
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(state))
    init_ray(address or base_cfg.runtime.address)
    trainable = tune.with_parameters(
        _trial, space_path=str(sp.path), base=sp.base, raw=sp.raw, partition_dir=partition_dir,
        tracking_uri=uri, parent_run_id=state["parent_run_id"],
        trials_dir=str(sweep_dir / "trials"))
    trainable = tune.with_resources(trainable, trial_resources(sp, base_cfg))
    rounds = base_cfg.train.rounds
    if sp.scheduler.get("name", "asha") == "asha":
        scheduler = ASHAScheduler(time_attr="round", max_t=rounds,
                                  grace_period=sp.scheduler.get("grace_period", 1),
                                  reduction_factor=sp.scheduler.get("reduction_factor", 2))
    else:
        scheduler = FIFOScheduler()
    t0 = time.perf_counter()
    callbacks = [progress_callback(sp.metric, sp.mode, rounds)]
    run_config = tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=0,
                                callbacks=callbacks)
    if resume_dir:
        tuner = tune.Tuner.restore(str(sweep_dir / "tune"), trainable=trainable,
                                   resume_unfinished=True, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space(sp), run_config=run_config,
            tune_config=tune.TuneConfig(metric=sp.metric, mode=sp.mode, scheduler=scheduler,
                                        num_samples=sp.num_samples, reuse_actors=False,
                                        max_concurrent_trials=sp.max_concurrent))
    try:
        results = tuner.fit()
    except Exception as e:  # noqa: BLE001 - Tune wraps everything; say what failed
        if tracker:
            tracker.finish("FAILED")
        raise RayfedError(f"the sweep failed: {e}. Resume it with `rayfed-bpt tune --resume "
                          f"{sweep_dir}`.") from e
    summary = _summarize(sp, results, sweep_dir, rounds)
    summary["wall_seconds"] = time.perf_counter() - t0
    if tracker:
        tracker.log_metrics({f"best_{sp.metric}": summary["best_metric"],
                             "num_trials": summary["num_trials"],
                             "num_stopped_early": summary["num_stopped_early"]}, step=0)
        tracker.log_artifacts(sweep_dir / "results")
        tracker.finish("FINISHED")
    summary.update(sweep_dir=str(sweep_dir), parent_run_id=state["parent_run_id"],
                   tracking_uri=uri)
    return summary


def _space_params(sp: SweepSpace) -> dict:
    return {"metric": sp.metric, "mode": sp.mode, "num_samples": sp.num_samples,
            "search": sp.search, "scheduler": sp.scheduler, "resources": sp.resources,
            "space": {k.replace(".", "/"): str(v) for k, v in sp.space.items()},
            "base": {k: str(v) for k, v in sp.base.items()}}


def _summarize(sp: SweepSpace, results, sweep_dir: Path, rounds: int) -> dict:
    out = sweep_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    curves = {}
    for r in results:
        if r.metrics is None:
            continue
        trial_id = r.metrics.get("trial_id", Path(r.path).name)
        hist = r.metrics_dataframe
        rows.append({"trial_id": trial_id, **{k: r.config.get(k) for k in sp.space},
                     sp.metric: r.metrics.get(sp.metric), "rounds": r.metrics.get("round", 0),
                     "stopped_early": r.metrics.get("round", 0) < rounds,
                     "error": str(r.error)[:200] if r.error else ""})
        if hist is not None and sp.metric in hist:
            curves[trial_id] = (list(hist["round"]), list(hist[sp.metric]))
    ok = [row for row in rows if isinstance(row[sp.metric], int | float)
          and math.isfinite(row[sp.metric])]
    if not ok:
        raise RayfedError(f"no trial of the sweep reported {sp.metric}; see "
                          f"{sweep_dir / 'tune'} for the trials' errors")
    # The best trial by its last reported metric, among trials that ran every round.
    finished = [row for row in ok if not row["stopped_early"]] or ok
    best = (max if sp.mode == "max" else min)(finished, key=lambda row: row[sp.metric])
    best_cfg = trial_config(sp, {k: best[k] for k in sp.space}).to_dict()
    best_cfg["runtime"]["run_name"] = None
    best_cfg["train"]["eval_every"] = sp.base.get("train", {}).get("eval_every", 1) \
        if isinstance(sp.base.get("train"), dict) else 1
    (out / "best_config.yaml").write_text(yaml.safe_dump(best_cfg, sort_keys=False))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plots(sp, ok, curves, out)
    table = format_table(rows, list(rows[0]))
    print(table)
    return {"best_metric": best[sp.metric], "best_trial": best["trial_id"],
            "best_config_path": str(out / "best_config.yaml"),
            "best_point": {k: best[k] for k in sp.space}, "num_trials": len(rows),
            "num_stopped_early": sum(row["stopped_early"] for row in rows), "rows": rows,
            "table": table}


def format_table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(fmt(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _plots(sp: SweepSpace, rows: list[dict], curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(sp.space)
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
        for ax, key in zip(axes[0], keys):
            xs = [r[key] for r in rows]
            ys = [r[sp.metric] for r in rows]
            numeric = all(isinstance(x, int | float) for x in xs)
            ax.scatter(xs if numeric else [str(x) for x in xs], ys,
                       c=["tab:red" if r["stopped_early"] else "tab:blue" for r in rows])
            if next(iter(sp.space[key])) == "loguniform":
                ax.set_xscale("log")
            ax.set_xlabel(key.replace("algorithm.options.", ""))
            ax.set_ylabel(sp.metric)
        fig.suptitle(f"{sp.name}: {sp.metric} per trial (red: stopped early)")
        fig.tight_layout()
        fig.savefig(out / "metric_vs_hyperparameters.png", dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for trial_id, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", label=trial_id)
    ax.set_xlabel("round")
    ax.set_ylabel(sp.metric)
    ax.set_title(f"{sp.name}: {sp.metric} vs round, every trial")
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_round.png", dpi=100)
    plt.close(fig)


__all__ = ["SweepSpace", "load_space", "run_sweep", "trial_config"]
