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

from rayfed_bpt.errors import ConfigError
from rayfed_bpt.tune import load_space

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "tune_spaces" / "smoke.yaml"
CLI = [sys.executable, "-m", "rayfed_bpt.cli"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.mark.parametrize("name", ["pfedbayespt", "baselines", "linear", "smoke"])
def test_shipped_spaces_are_valid(name):
    sp = load_space(REPO / "tune_spaces" / f"{name}.yaml")
    assert sp.metric == "acc_mean" and sp.space


@pytest.mark.parametrize("text, msg", [
    ("space: {train.lr: {gaussian: [0, 1]}}", r"space.train.lr: .*allowed: \['uniform'"),
    ("space: {train.lr: {loguniform: [1]}}", r"space.train.lr.loguniform: needs \[low, high\]"),
    ("metric: acc_mean\nsheduler: {name: asha}", r"\['sheduler'\]: unknown key\(s\)"),
    ("scheduler: {name: hyperband}", r"scheduler.name: 'hyperband'; allowed: \['asha', 'fifo'\]"),
    ("search: bayes", r"search: 'bayes'; allowed"),
    ("space: {train.lrr: {choice: [0.1]}}", r"unknown config key\(s\) \['train.lrr'\]"),
    ("space: {data.alpha: {choice: [0.1]}}", "data options cannot be swept"),
    ("space: {algorithm.options.beta: {choice: [-1.0]}}", r"beta=-1.0 must lie in"),
])
def test_bad_space_files_name_file_and_key(tmp_path, text, msg):
    f = tmp_path / "bad.yaml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError, match=msg) as e:
        sp = load_space(f)
        # option ranges are checked when an algorithm is built from a point
        from rayfed_bpt.algorithms import create_algorithm
        from rayfed_bpt.models import PromptedViT, create_backbone
        from rayfed_bpt.tune import trial_config

        cfg = trial_config(sp, {k: next(iter(v.values()))[0] for k, v in sp.space.items()})
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
    assert {"metric_vs_round.png", "metric_vs_hyperparameters.png", "best_config.yaml"} <= {
        p.name for p in (sweep / "results").iterdir()}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "rayfed_bpt"]
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    children = [x for x in runs if "mlflow.parentRunId" in x.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert parents[0].data.metrics["best_acc_mean"] > 0.5
    lengths = sorted(len(client.get_metric_history(c.info.run_id, "acc_mean")) for c in children)
    assert lengths[-1] == 3 and lengths[0] < 3  # per-round metrics; early stops are shorter
    assert {c.data.params["train.lr"] for c in children} == {"0.03", "0.02", "1e-07", "2e-07"}
    assert "best_config.yaml" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}

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
    proc = subprocess.Popen(CLI + ["tune", "--space", str(SMOKE), "--output-dir",
                                   str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV,
                            start_new_session=True)
    seen = 0
    deadline = time.time() + 600
    for line in proc.stdout:  # wait for the first trials to end, then pull the plug
        seen += line.startswith("trial ")
        if seen >= 2 or time.time() > deadline:
            break
    assert seen >= 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
    [sweep] = list((tmp_path / "sweeps").iterdir())
    assert not (sweep / "results" / "results.csv").exists()
    r = subprocess.run(CLI + ["tune", "--resume", str(sweep)], capture_output=True, text=True,
                       timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "results" / "results.csv")))
    assert len(rows) == 4 and not any(row["error"] for row in rows)
