"""Ray Tune sweeps: a real 4-trial ASHA sweep, MLflow parent/children, best config, resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _net import short_tempdir, stop_ray

from rayfed_bpt.errors import ConfigError
from rayfed_bpt.tune import load_space

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "tune_spaces" / "smoke.yaml"
CLI = [sys.executable, "-m", "rayfed_bpt.cli"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.mark.parametrize("name", ["pfedbayespt", "baselines", "linear", "smoke", "population"])
def test_shipped_spaces_are_valid(name):
    sp = load_space(REPO / "tune_spaces" / f"{name}.yaml")
    assert sp.metric == "val_acc_mean" and sp.dims
    cfg = sp.base_config  # trials choose on validation and never evaluate the test split
    assert cfg.data.val_fraction > 0 and cfg.train.eval_test is False


@pytest.mark.parametrize("text, msg", [
    ("space: {train.lr: {gaussian: [0, 1]}}", r"space.train.lr: .*allowed: \['uniform'"),
    ("space: {train.lr: {loguniform: [1]}}", r"space.train.lr.loguniform: needs \[low, high\]"),
    ("metric: acc_mean\nsheduler: {name: asha}", r"\['sheduler'\]: unknown key\(s\)"),
    ("scheduler: {name: hyperband}", r"scheduler.name: 'hyperband'; allowed: \['asha', 'fifo', "),
    ("search: bohb", "write search: bohb with scheduler: {name: bohb}"),
    ("metric: acc_mean", "'acc_mean' is a test-split metric: a sweep chooses on validation"),
    ("space: {train.lr: {grid: [0.1, 0.2]}}", "grid values need search: grid"),
    ("space: {train.lr: {choice: [0.1], when: {train.batch_size: 8}}}",
     "space.train.lr.when: train.batch_size must be a swept key listed above it"),
    ("search: bayes", r"search: 'bayes'; allowed"),
    ("space: {train.lrr: {choice: [0.1]}}", r"unknown config key\(s\) \['train.lrr'\]"),
    ("space: {data.label_alpha: {choice: [0.1]}}", "data options cannot be swept"),
    ("space: {algorithm.options.beta: {choice: [-1.0]}}",
     r"beta must lie in \[0, 1e\+06\], got -1.0"),
])
def test_bad_space_files_name_file_and_key(tmp_path, text, msg):
    f = tmp_path / "bad.yaml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError, match=msg) as e:
        sp = load_space(f)
        # option ranges are checked when an algorithm is built from a point
        from rayfed_bpt.algorithms import create_algorithm
        from rayfed_bpt.models import PromptedViT, create_backbone
        cfg = sp.trial_config({d.key: d.args[0] for d in sp.dims})
        create_algorithm(cfg.algorithm.name, PromptedViT(create_backbone()), 10, cfg.train,
                         cfg.algorithm.options)
    assert "bad.yaml" in str(e.value) or "must lie in" in str(e.value)


def test_bad_space_fails_before_ray(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("space: {train.lr: {gaussian: [0, 1]}}\n")
    r = subprocess.run(CLI + ["tune", "--space", str(f)], capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert r.returncode == 2 and "bad.yaml: space.train.lr" in r.stderr
    assert "Started a local Ray" not in r.stderr


@pytest.mark.slow  # 90 s: `pytest -m slow` (CI runs it after the default suite)
def test_smoke_sweep_asha_mlflow_and_best_config(tmp_path):
    r = subprocess.run(CLI + ["tune", "--space", str(SMOKE), "--output-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [s for s in r.stdout.splitlines() if s.startswith("trial ")]
    assert len(lines) == 4 and all("best so far" in s for s in lines)
    [sweep] = list((tmp_path / "sweeps").iterdir())
    rows = list(csv.DictReader(open(sweep / "results" / "results.csv")))
    assert len(rows) == 4
    assert any(row["stopped_early"] == "True" for row in rows)  # hopeless lr: cut at rung 1
    assert {"metric_vs_round.png", "metric_vs_hyperparameters.png", "best_config.yaml",
            "anytime.png", "anytime.csv"} <= {
        p.name for p in (sweep / "results").iterdir()}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "rayfed_bpt"]
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    children = [x for x in runs if "mlflow.parentRunId" in x.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert parents[0].data.metrics["best_val_acc_mean"] > 0.5
    assert parents[0].data.metrics["best_test_acc_mean"] > 0.5  # the chosen trial, once
    assert not any("acc_mean" in c.data.metrics for c in children)  # no trial saw test
    lengths = sorted(len(client.get_metric_history(c.info.run_id, "val_acc_mean"))
                     for c in children)
    assert lengths[-1] == 3 and lengths[0] < 3  # per-round metrics; early stops are shorter
    assert {c.data.params["train.lr"] for c in children} == {"0.03", "0.02", "1e-07", "2e-07"}
    assert {"best_config.yaml", "anytime.png", "anytime.csv"} <= {
        a.path for a in client.list_artifacts(parents[0].info.run_id)}
    anytime = list(csv.DictReader(open(sweep / "results" / "anytime.csv")))
    assert len(anytime) == sum(sum(lengths) for lengths in [lengths])  # every trial-round
    best = [float(a["best_so_far"]) for a in anytime]
    assert best == sorted(best) and best[-1] == max(float(a["metric"]) for a in anytime)

    best = yaml.safe_load((sweep / "results" / "best_config.yaml").read_text())
    assert best["train"]["lr"] == 0.03
    best["runtime"]["output_dir"] = str(tmp_path / "rerun")
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(best))
    r = subprocess.run(CLI + ["run", "--no-progress", "--config", str(tmp_path / "best.yaml")],
                       capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "final: mean client acc" in r.stdout


@pytest.mark.slow  # 110 s: `pytest -m slow` (CI runs it after the default suite)
def test_interrupted_sweep_resumes_and_completes(tmp_path):
    temp = short_tempdir("rt")  # this sweep's own Ray, stopped alone when it is killed
    proc = subprocess.Popen(CLI + ["tune", "--space", str(SMOKE), "--output-dir",
                                   str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**ENV, "RAY_TMPDIR": temp}, start_new_session=True)
    seen = 0
    deadline = time.time() + 600
    for line in proc.stdout:  # wait for the first trials to end, then pull the plug
        seen += line.startswith("trial ")
        if seen >= 2 or time.time() > deadline:
            break
    assert seen >= 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    stop_ray(temp)
    [sweep] = list((tmp_path / "sweeps").iterdir())
    assert not (sweep / "results" / "results.csv").exists()
    r = subprocess.run(CLI + ["tune", "--resume", str(sweep)], capture_output=True, text=True,
                       timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "results" / "results.csv")))
    assert len(rows) == 4 and not any(row["error"] for row in rows)


CONDITIONAL = """
search: {search}
seed: 3
num_samples: {n}
max_concurrent: 1
scheduler: {{name: {scheduler}, reduction_factor: 2}}
resources: {{num_actors: 1, cpus_per_actor: 0.9, gpus_per_actor: 0}}
base:
  algorithm.name: fedavg_linear
  train.rounds: 2
  train.fraction: 1.0
  data.num_clients: 4
  data.max_train_per_client: 48
  data.max_test_per_client: 24
space:
  train.lr: {{loguniform: [1.0e-3, 0.1]}}
  train.batch_size: {{choice: [16, 32]}}
  train.weight_decay: {{uniform: [0.0, 0.01], when: {{train.batch_size: 32}}}}
"""


def _space(tmp_path, search="random", scheduler="asha", n=3):
    f = tmp_path / f"{search}.yaml"
    f.write_text(CONDITIONAL.format(search=search, scheduler=scheduler, n=n))
    return load_space(f)


def test_optuna_asks_a_conditional_key_only_where_it_acts(tmp_path):
    import optuna

    from rayfed_bpt.tune.sweep import OptunaSpace

    sp = _space(tmp_path, "optuna")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(30):
        t = study.ask()
        OptunaSpace(sp.dims)(t)
        p = t.params
        assert ("train.weight_decay" in p) == (p["train.batch_size"] == 32)
        assert 1e-3 <= p["train.lr"] <= 0.1
        study.tell(t, p["train.lr"])


def test_bohb_space_carries_the_condition(tmp_path):
    from rayfed_bpt.tune.sweep import _configspace

    sp = _space(tmp_path, "bohb", "bohb")
    cs = _configspace(sp.dims, seed=0)
    for c in cs.sample_configuration(40):
        d = dict(c)
        assert ("train.weight_decay" in d) == (d["train.batch_size"] == 32)


def test_random_and_grid_points_drop_keys_whose_condition_fails(tmp_path):
    from rayfed_bpt.tune.results import active_point

    sp = _space(tmp_path)
    point = {"train.lr": 0.01, "train.batch_size": 16, "train.weight_decay": 0.005}
    assert active_point(sp, point)["train.weight_decay"] is None
    assert sp.trial_config(active_point(sp, point)).train.weight_decay == 0.0  # the base's
    point["train.batch_size"] = 32
    assert sp.trial_config(active_point(sp, point)).train.weight_decay == 0.005


def test_anytime_curve_is_the_running_best_in_time_order():
    import random

    from rayfed_bpt.tune.results import anytime_curve

    rng = random.Random(0)
    events = [(rng.random(), f"t{i % 3}", i, rng.random()) for i in range(50)]
    for mode, pick in (("max", max), ("min", min)):
        rows = anytime_curve(events, mode)
        by_time = sorted(events)
        assert [r["trial_rounds"] for r in rows] == list(range(1, 51))
        for i, r in enumerate(rows):  # brute force: the best of everything reported so far
            assert r["best_so_far"] == pick(v for *_, v in by_time[: i + 1])


def test_trial_bundles_come_from_the_run_planner(tmp_path):
    from rayfed_bpt.tune.sweep import TRIAL_CPU, trial_resources

    sp = _space(tmp_path)
    sp.base_config.runtime.num_actors = None
    sp.max_concurrent = 2  # two trials share 4 CPUs: each plans its actors within 2
    pgf = trial_resources(sp, 10, {"CPU": 4.0})
    assert pgf.bundles == [{"CPU": TRIAL_CPU}, {"CPU": 0.9}, {"CPU": 0.9}]  # 2 x 0.9 + 0.1
    sp.base_config.runtime.gpus_per_actor = None  # unset: the planner's GPU share, as in run
    pgf = trial_resources(sp, 10, {"CPU": 8.0, "GPU": 2.0})
    assert pgf.bundles[1] == {"CPU": 0.9, "GPU": 0.25}
    with pytest.raises(ConfigError, match="do not fit its share"):
        sp.base_config.runtime.num_actors = 3
        trial_resources(sp, 10, {"CPU": 4.0})


@pytest.mark.slow  # ~70 s each: `pytest -m slow`
@pytest.mark.parametrize("search, scheduler", [("random", "asha"), ("optuna", "asha"),
                                               ("bohb", "bohb")])
def test_each_searcher_runs_a_small_sweep(tmp_path, search, scheduler):
    sp = _space(tmp_path, search, scheduler, n=3)
    r = subprocess.run(CLI + ["tune", "--space", str(sp.path), "--output-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [sweep] = list((tmp_path / "sweeps").iterdir())
    rows = list(csv.DictReader(open(sweep / "results" / "results.csv")))
    assert len(rows) == 3 and not any(row["error"] for row in rows)
    for row in rows:  # the condition held in every searcher's points
        assert (row["train.weight_decay"] == "") == (row["train.batch_size"] == "16")
    assert "its test split, evaluated once" in r.stdout
    assert (sweep / "results" / "anytime.png").stat().st_size > 5_000


@pytest.mark.slow  # ~90 s each: `pytest -m slow`
@pytest.mark.parametrize("search, scheduler", [("optuna", "asha"), ("bohb", "bohb")])
def test_model_based_sweep_resumes_after_a_kill(tmp_path, search, scheduler):
    """The searcher's state (Optuna's study, BOHB's model) is in the sweep's checkpoint:
    a killed sweep resumed with --resume finishes every trial."""
    sp = _space(tmp_path, search, scheduler, n=3)
    temp = short_tempdir("rt")  # this sweep's own Ray, stopped alone when it is killed
    proc = subprocess.Popen(CLI + ["tune", "--space", str(sp.path), "--output-dir",
                                   str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**ENV, "RAY_TMPDIR": temp}, start_new_session=True)
    for line in proc.stdout:  # the first trial has ended: pull the plug
        if line.startswith("trial "):
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    stop_ray(temp)
    [sweep] = list((tmp_path / "sweeps").iterdir())
    r = subprocess.run(CLI + ["tune", "--resume", str(sweep)], capture_output=True, text=True,
                       timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "results" / "results.csv")))
    assert len(rows) == 3 and not any(row["error"] for row in rows)


@pytest.mark.parametrize("search, scheduler, kind", [
    ("random", "asha", "BasicVariantGenerator"), ("optuna", "asha", "OptunaSearch"),
    ("bohb", "bohb", "TuneBOHB")])
def test_each_searcher_is_ray_tunes_own_and_keeps_the_concurrency_limit(tmp_path, search,
                                                                      scheduler, kind):
    from rayfed_bpt.tune.sweep import make_search

    sp = _space(tmp_path, search, scheduler)
    searcher, sched, space = make_search(sp, rounds=2)
    assert type(searcher).__name__ == kind
    assert type(sched).__name__ == ("HyperBandForBOHB" if search == "bohb"
                                    else "AsyncHyperBandScheduler")
    assert (space != {}) == (search == "random")  # model-based ones carry their own space
    if search == "random":  # Tune applies max_concurrent_trials to model-based ones only
        assert searcher.max_concurrent == sp.max_concurrent == 1


def test_a_never_started_trial_gets_its_folder_when_the_sweep_ends(tmp_path):
    """A spent budget can stop a sweep while BOHB still holds a suggested, never-started
    trial; Tune's ResultGrid then failed on that trial's missing folder (seen on 2 of 3
    BOHB seeds of benchmarks/search_budget.py). The progress callback gives it one at the
    experiment's end, and ``summarize`` skips it."""
    import ray
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial
    from ray.tune.registry import register_trainable

    from rayfed_bpt.tune.sweep import progress_callback

    temp = short_tempdir("rfnever")
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=temp)
    try:
        register_trainable("never_started", lambda config: None)
        trial = Trial("never_started", config={"train.lr": 0.01}, stub=False,
                      storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="x"))
        with pytest.raises(Exception, match="trial_dir_name"):
            _ = trial.path  # what ResultGrid touches
        progress_callback("val_acc_mean", "max", 3).on_experiment_end([trial])
        assert trial.relative_logdir and Path(trial.path).name == trial.relative_logdir
    finally:
        ray.shutdown()
        stop_ray(temp)
