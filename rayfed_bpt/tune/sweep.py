"""Ray Tune sweeps: a trial is one whole federated run, driven by a driver actor.

Each trial reserves a placement group (bundle 0 for the trial itself and its
driver actor, one bundle per client actor, sized by the same planner as
``rayfed-bpt run``), reports validation metrics every round, and its actors go
with it when the scheduler stops it early. Searchers are Ray Tune's own:
random/grid (``BasicVariantGenerator``), Optuna's TPE (``OptunaSearch``) and
BOHB (``TuneBOHB`` with ``HyperBandForBOHB``). MLflow gets a parent run per
sweep and a child run per trial.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import yaml

from ..errors import ConfigError, RayfedError
from ..run_folder import one_writer
from .space import Dimension, SweepSpace, corner_points, load_space

TRIAL_CPU = 0.1  # bundle 0: the trial function and its driver actor mostly wait


def param_space(sp: SweepSpace) -> dict:
    """Tune's distributions, for the random and grid searchers."""
    from ray import tune

    make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    out = {}
    for d in sp.dims:
        if d.kind in make:
            out[d.key] = make[d.kind](*d.args)
        elif d.kind == "choice":
            out[d.key] = tune.choice(d.args)
        else:
            out[d.key] = tune.grid_search(d.args)
    return out


class OptunaSpace:
    """Optuna's define-by-run space: a conditional key is asked for only when its
    condition holds, so TPE models it only where it acts. (A class, not a closure:
    Tune pickles the searcher into the sweep's checkpoint, for --resume.)"""

    def __init__(self, dims: list[Dimension]):
        self.dims = dims

    def __call__(self, trial) -> None:
        point: dict = {}
        for d in self.dims:
            if any(point.get(k) != v for k, v in d.when.items()):
                continue
            if d.kind in ("uniform", "loguniform"):
                point[d.key] = trial.suggest_float(d.key, *d.args, log=d.kind == "loguniform")
            elif d.kind == "randint":
                point[d.key] = trial.suggest_int(d.key, int(d.args[0]), int(d.args[1]) - 1)
            else:
                point[d.key] = trial.suggest_categorical(d.key, d.args)
        return None


def _configspace(dims: list[Dimension], seed: int):
    """BOHB's ConfigSpace, conditions included."""
    import ConfigSpace as CS

    cs = CS.ConfigurationSpace(seed=seed)
    hps = {}
    for d in dims:
        if d.kind in ("uniform", "loguniform"):
            hp = CS.UniformFloatHyperparameter(d.key, *d.args, log=d.kind == "loguniform")
        elif d.kind == "randint":
            hp = CS.UniformIntegerHyperparameter(d.key, int(d.args[0]), int(d.args[1]) - 1)
        else:
            hp = CS.CategoricalHyperparameter(d.key, d.args)
        hps[d.key] = hp
        cs.add(hp)
    for d in dims:
        for k, v in d.when.items():
            cs.add(CS.EqualsCondition(hps[d.key], hps[k], v))
    return cs


def make_search(sp: SweepSpace, rounds: int):
    """(searcher, scheduler, param_space) for the space's ``search`` and ``scheduler``."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandForBOHB
    from ray.tune.search import BasicVariantGenerator

    name = sp.scheduler.get("name", "asha")
    rf = sp.scheduler.get("reduction_factor", 2)
    if name == "asha":
        scheduler = ASHAScheduler(time_attr="round", max_t=rounds, reduction_factor=rf,
                                  grace_period=sp.scheduler.get("grace_period", 1))
    elif name == "bohb":
        scheduler = HyperBandForBOHB(time_attr="round", max_t=rounds, reduction_factor=rf)
    else:
        scheduler = FIFOScheduler()
    if sp.search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(OptunaSpace(sp.dims), metric=sp.metric, mode=sp.mode,
                                sampler=TPESampler(seed=sp.seed))
        return searcher, scheduler, {}
    if sp.search == "bohb":
        from ray.tune.search.bohb import TuneBOHB

        searcher = TuneBOHB(_configspace(sp.dims, sp.seed), metric=sp.metric, mode=sp.mode,
                            seed=sp.seed)
        return searcher, scheduler, {}
    # (max_concurrent here: Tune applies max_concurrent_trials only to model-based ones)
    return (BasicVariantGenerator(random_state=sp.seed, max_concurrent=sp.max_concurrent or 0),
            scheduler, param_space(sp))


def budget_stopper(budget: int):
    """A Tune stopper that ends the whole sweep once ``budget`` trial-rounds were reported
    (trials running then finish the round they are in)."""
    from ray.tune import Stopper

    class Budget(Stopper):
        def __init__(self):
            self.spent = 0

        def __call__(self, trial_id, result) -> bool:
            self.spent += 1
            return False

        def stop_all(self) -> bool:
            return self.spent >= budget

    return Budget()


def trial_resources(sp: SweepSpace, num_clients: int, cluster: dict[str, float]):
    """A trial's bundles, from the planner `rayfed-bpt run` uses: with
    ``max_concurrent`` trials, each plans its client actors within an equal share of the
    cluster (so concurrent trials share the actors fairly, here and on a cluster)."""
    from ray import tune

    from ..runtime.resources import plan_actors

    share = {r: float(cluster.get(r, 0)) / (sp.max_concurrent or 1) for r in ("CPU", "GPU")}
    share["CPU"] -= TRIAL_CPU
    rt = sp.base_config.runtime
    try:
        plan = plan_actors(rt, num_clients, share)
    except RayfedError as e:
        raise ConfigError(f"{sp.path}: one trial's actors do not fit its share of the cluster "
                          f"({share['CPU']:g} CPU, {share['GPU']:g} GPU with max_concurrent="
                          f"{sp.max_concurrent}): {e}") from e
    return tune.PlacementGroupFactory([{"CPU": TRIAL_CPU}] + [plan.bundle()] * plan.num_actors,
                                      strategy=rt.placement_strategy)


def _trial(point: dict, *, sp: SweepSpace, partition_dir: str, tracking_uri: str | None,
           parent_run_id: str | None, trials_dir: str) -> None:
    """One Tune trial: a driver actor in this trial's placement group, reports per round."""
    import ray
    from ray import tune

    from ..run_folder import RunFolder
    from ..runtime.driver_handle import DriverHandle

    cfg = sp.trial_config(point)
    cfg.data.partition_dir = partition_dir
    folder = RunFolder(Path(trials_dir) / tune.get_context().get_trial_id())
    folder.create(cfg.to_dict(), exist_ok=True)  # a run folder like `run`'s
    driver = DriverHandle(cfg, partition_dir, str(folder), tracking_uri,
                          placement_group=ray.util.get_current_placement_group(),
                          parent_run_id=parent_run_id, paced=True)
    done = driver.run()
    version, reported = -1, 0

    def report(m: dict) -> None:
        # wall_time orders every trial's rounds on one axis (the anytime curve)
        tune.report({**{k.replace("/", "."): v for k, v in m.items()}, "wall_time": time.time()})

    try:
        while True:
            # blocks until the driver has news (a round, a status): no polling
            watch = driver.progress(version, reported)
            ready, _ = ray.wait([done, watch], num_returns=1)
            if done in ready:
                ray.get(done)  # raises what the run raised
                for m in ray.get(driver.progress(-1, reported, 0.0), timeout=120)["new_rounds"]:
                    report(m)
                return
            p = ray.get(watch)
            version = p["version"]
            for m in p["new_rounds"]:
                report(m)
                reported += 1
                driver.proceed()  # the scheduler let this trial go on
    finally:
        # Stopped early (or failed): the driver goes, its client actors with it, and its
        # MLflow run, if still RUNNING, is marked KILLED.
        driver.kill(mark=(tracking_uri, driver.mlflow_run_id(30) if tracking_uri else None))


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
            if isinstance(v, float) and math.isfinite(v) and (
                    self.best is None or (v > self.best if mode == "max" else v < self.best)):
                self.best = v
            status = "stopped early" if what == "done" and done < rounds else what
            shown = f"{v:.4f}" if isinstance(v, float) else v
            best = f"{self.best:.4f}" if self.best is not None else "-"
            print(f"trial {trial.trial_id} {status} after {done} round(s): {metric} "
                  f"{shown}  (best so far {best})", flush=True)

        def on_experiment_end(self, trials, **info):
            # A sweep whose budget ends while BOHB still holds a never-started trial
            # otherwise fails in Tune's ResultGrid (Ray 2.60: "Should not access
            # `trial_fs_path` without setting `trial_dir_name`"), losing the finished
            # trials' summary: give such a trial its (empty) folder; summarize skips it.
            for trial in trials:
                if not trial.relative_logdir:
                    trial.init_local_path()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "FAILED")

    return Progress()


def run_sweep(space_path: str | Path | None = None, overrides: list[str] = (),
              address: str | None = None, resume_dir: str | Path | None = None,
              output_dir: str | Path | None = None, plugins: list[str] = ()) -> dict:
    """Run (or resume) a sweep; choose on validation, then evaluate the chosen trial's
    test split once; write best-config YAML, results CSV, anytime curve and PNGs.
    ``plugins`` join the space's ``base.plugins`` (and are kept for a resume). One
    process writes a sweep folder at a time (``run_folder.one_writer``)."""
    with ExitStack() as writer:
        return _sweep(space_path, overrides, address, resume_dir, output_dir, plugins, writer)


def _sweep(space_path, overrides, address, resume_dir, output_dir, plugins,
           writer: ExitStack) -> dict:
    import ray
    from ray import tune

    from ..data import PartitionReader
    from ..data.recipe import resolve_partition
    from ..runtime.launch import init_ray
    from ..tracking import Tracker, resolve_tracking_uri
    from .results import summarize

    if resume_dir:
        sweep_dir, state = _sweep_state(resume_dir)
        writer.enter_context(one_writer(sweep_dir, "tune"))
        space_path, overrides = state["space_path"], state["overrides"]
        plugins = [*state.get("plugins", []), *plugins]
        output_dir = state["output_dir"]  # the same MLflow store and folders as before
    sp = load_space(space_path, list(overrides), list(plugins))
    base_cfg = sp.base_config
    out_root = Path(output_dir or base_cfg.runtime.output_dir).resolve()
    partition_dir = str(resolve_partition(base_cfg.data, base_cfg.seed))
    num_clients = len(PartitionReader(partition_dir, verify=False).training_ids)
    for point in corner_points(sp):  # every trial samples from this partition
        sp.trial_config(point).train.check_population(num_clients)
    if not resume_dir:
        sweep_dir = out_root / "sweeps" / f"{datetime.now():%Y%m%d-%H%M%S}-{sp.name}"
        sweep_dir.mkdir(parents=True, exist_ok=True)
        writer.enter_context(one_writer(sweep_dir, "tune"))
        state = {"space_path": str(Path(space_path).resolve()), "overrides": list(overrides),
                 "plugins": list(plugins), "output_dir": str(out_root), "parent_run_id": None}
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
        _trial, sp=sp, partition_dir=partition_dir, tracking_uri=uri,
        parent_run_id=state["parent_run_id"], trials_dir=str(sweep_dir / "trials"))
    trainable = tune.with_resources(trainable,
                                    trial_resources(sp, num_clients, ray.cluster_resources()))
    rounds = base_cfg.train.rounds
    searcher, scheduler, space = make_search(sp, rounds)
    t0 = time.perf_counter()
    callbacks = [progress_callback(sp.metric, sp.mode, rounds)]
    run_config = tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=0,
                                callbacks=callbacks,
                                stop=budget_stopper(sp.budget) if sp.budget else None)
    if resume_dir:
        tuner = tune.Tuner.restore(str(sweep_dir / "tune"), trainable=trainable,
                                   resume_unfinished=True, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space, run_config=run_config,
            tune_config=tune.TuneConfig(metric=sp.metric, mode=sp.mode, scheduler=scheduler,
                                        search_alg=searcher, num_samples=sp.num_samples,
                                        reuse_actors=False,
                                        max_concurrent_trials=sp.max_concurrent))
    try:
        results = tuner.fit()
    except Exception as e:  # noqa: BLE001 - Tune wraps everything; say what failed
        if tracker:
            tracker.finish("FAILED")
        raise RayfedError(f"the sweep failed: {e}. Resume it with `rayfed-bpt tune --resume "
                          f"{sweep_dir}`.") from e
    summary = summarize(sp, results, sweep_dir, rounds)
    summary["wall_seconds"] = time.perf_counter() - t0
    if tracker:
        _log_summary(tracker, sp, summary, sweep_dir)
    summary.update(sweep_dir=str(sweep_dir), parent_run_id=state["parent_run_id"],
                   tracking_uri=uri)
    return summary


def _sweep_state(resume_dir: str | Path) -> tuple[Path, dict]:
    """A sweep folder to resume and what its first start recorded (sweep.yaml)."""
    sweep_dir = Path(resume_dir).resolve()
    state = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) \
        if (sweep_dir / "sweep.yaml").exists() else None
    if state is None:
        raise ConfigError(f"{sweep_dir} is not a sweep folder (no sweep.yaml)")
    return sweep_dir, state


def _log_summary(tracker, sp: SweepSpace, summary: dict, sweep_dir: Path) -> None:
    """The parent run's ending: the best validation metric, the chosen trial's test
    metrics, counts, the results folder."""
    tracker.log_metrics({f"best_{sp.metric}": summary["best_metric"],
                         **{f"best_test_{k}": v for k, v in summary["best_test"].items()
                            if isinstance(v, float)},
                         "num_trials": summary["num_trials"],
                         "num_stopped_early": summary["num_stopped_early"]}, step=0)
    tracker.log_artifacts(sweep_dir / "results")
    tracker.finish("FINISHED")


def _space_params(sp: SweepSpace) -> dict:
    return {"metric": sp.metric, "mode": sp.mode, "num_samples": sp.num_samples,
            "search": sp.search, "seed": sp.seed, "budget": sp.budget,
            "scheduler": sp.scheduler,
            "resources": sp.resources,
            "space": {d.key.replace(".", "/"): f"{d.kind} {d.args} {d.when or ''}".strip()
                      for d in sp.dims},
            "base": {k: str(v) for k, v in sp.base.items()}}
