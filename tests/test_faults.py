"""Faults, each injected at a chosen round (``runtime.faults``), never by a timer:
a dying client actor, a dying driver actor, Ctrl-C, SIGTERM, an MLflow server that
goes away, and two runs started in the same second."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from _net import free_port, start_mlflow_server
from _runs import small_overrides, strip

from rayfed_bpt.config import load_config
from rayfed_bpt.engine import load_checkpoint, run_reference
from rayfed_bpt.runtime import run_experiment
from rayfed_bpt.runtime.faults import paused, release

CLI = [sys.executable, "-m", "rayfed_bpt.cli", "run"]


def overrides(part, out, *extra):
    return small_overrides(part, out, "runtime.num_actors=2", *extra)


def test_client_actor_dying_mid_round_changes_nothing(part4, tmp_path, local_ray):
    cfg = load_config(None, overrides(part4, tmp_path, "runtime.faults=[actor_exit@2]",
                                      "data.max_train_per_client=96"))
    s = run_experiment(cfg, show_progress=False, log=None)
    assert s["actors_replaced"] == 1  # the fault fired, once; a new actor took over
    assert strip(s["history"]) == strip(run_reference(cfg, log=None))


def test_driver_dying_is_recreated_from_its_checkpoint(part4, tmp_path, local_ray):
    cfg = load_config(None, overrides(part4, tmp_path, "runtime.faults=[driver_exit@2]"))
    lines = []
    s = run_experiment(cfg, show_progress=False, log=lines.append)
    assert s["driver_restarts"] == 1
    assert any("recreating it from the checkpoint of round 2" in x for x in lines)
    assert strip(s["history"]) == strip(run_reference(cfg, log=None))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(s["tracking_uri"])
    run = client.get_run(s["mlflow_run_id"])  # one MLflow run, continued
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "acc_mean")] == [1, 2, 3]


def _wait_paused(run_dir, round, proc, timeout=300):
    deadline = time.time() + timeout
    while not paused(run_dir, round):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "the run never reached its pause"
        time.sleep(0.1)


@pytest.mark.parametrize("sig, code, name", [
    # SIGTERM becomes the same KeyboardInterrupt as Ctrl-C (runtime/signals.py): the
    # default suite stops a run one way, the slow set both (50 s each on 2 cores)
    pytest.param(signal.SIGINT, 130, "Ctrl-C", marks=pytest.mark.slow),
    (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_stops_cleanly_and_says_how_to_resume(sig, code, name, part4, tmp_path):
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "sig"
    # a shell's background job ignores SIGINT and its children inherit that; a user's Ctrl-C
    # reaches a foreground run, so the run starts with the default (exec resets a handler)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(CLI + ["--no-progress", "--set",
                                       *overrides(part4, out, "runtime.run_name=sig",
                                                  "runtime.faults=[pause@1]")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    _wait_paused(run_dir, 1, proc)
    # a second writer of the paused run's folder is refused at once, touching nothing
    before = (run_dir / "checkpoint.safetensors").read_bytes()
    second = subprocess.run(CLI + ["--no-progress", "--resume", str(run_dir)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"is being written by rayfed-bpt pid {proc.pid}" in second.stderr, second.stderr
    assert (run_dir / "checkpoint.safetensors").read_bytes() == before
    t = time.time()
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, output[-3000:]
    assert time.time() - t < 30
    assert "Traceback" not in output and "SIGTERM received" not in output, output[-3000:]
    assert f"stopped by {name} after round 1" in output
    assert f"rayfed-bpt run --resume {run_dir}" in output
    assert load_checkpoint(run_dir)[0].round == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "rayfed_bpt"]
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "KILLED"
    if sig == signal.SIGINT:  # and it resumes to the end
        r = subprocess.run(CLI + ["--no-progress", "--resume", str(run_dir)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert load_checkpoint(run_dir)[0].round == 3


@pytest.mark.slow  # 50 s on 2 cores; keeps the default suite under 15 minutes
def test_mlflow_server_going_away_loses_nothing(part4, tmp_path):
    """The server dies after round 1; round 2 falls back to a store in the run folder; the
    driver then dies after round 2's checkpoint, and its successor goes on in that store
    (the server is still down): one run there, every round, and the last lines name it."""
    server, uri = start_mlflow_server(tmp_path / "mlflow")
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "outage"
    try:
        proc = subprocess.Popen(CLI + ["--no-progress", "--set",
                                       *overrides(part4, out, "runtime.run_name=outage",
                                                  f"tracking.tracking_uri={uri}",
                                                  "runtime.faults=[pause@1,driver_exit@2]")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _wait_paused(run_dir, 1, proc)
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server goes away after round 1
        server.wait()
    t = time.time()
    release(run_dir, 1)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    assert time.time() - t < 120  # seconds of retries, not MLflow's default minutes
    fallback = run_dir / "mlflow-fallback.db"
    assert f"note: the MLflow store {uri} failed at round 2" in output, output[-4000:]
    assert str(fallback) in output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{fallback}")
    [exp] = [e for e in client.search_experiments() if e.name == "rayfed_bpt"]
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    for key in ("acc_mean", "train_loss"):  # every round, the ones the server had too
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3]
    assert "recreating it from the checkpoint of round 2" in output
    assert f"MLflow run {run.info.run_id} in sqlite:///{fallback}" in output
    assert f"browse it: open {uri}" not in output


def test_unreachable_tracking_server_fails_in_seconds_and_writes_nothing(part4, tmp_path):
    out = tmp_path / "runs"
    t = time.time()
    r = subprocess.run(CLI + ["--set", *overrides(part4, out, "tracking.tracking_uri="
                                                  f"http://127.0.0.1:{free_port()}")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot be reached" in r.stderr, r.stderr[-2000:]
    assert time.time() - t < 20 and not out.exists()


@pytest.mark.slow  # 35 s on 2 cores
def test_two_first_runs_started_at_once_get_their_own_folders_and_mlflow_runs(part4,
                                                                                tmp_path):
    """Two runs started in the same second into a new output folder: each its own run
    folder, and both in the MLflow store neither found there (its schema is created once:
    the second waits for the first instead of dying on "duplicate column")."""
    out = tmp_path / "runs"
    procs = [subprocess.Popen(CLI + ["--no-progress", "--set",
                                     *overrides(part4, out, f"train.lr={lr}", "train.rounds=2",
                                                "runtime.num_actors=1")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for lr in (0.01, 0.05)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    folders = sorted(f for f in out.iterdir() if (f / "config.yaml").exists())
    assert len(folders) == 2
    lrs = set()
    for f in folders:
        state, cfg = load_checkpoint(f)
        assert (f / "config.yaml").read_text().count(f"lr: {cfg['train']['lr']}") == 1
        lrs.add(cfg["train"]["lr"])
    assert lrs == {0.01, 0.05}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "rayfed_bpt"]
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f.name for f in folders]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "acc_mean")] == [1, 2]


def test_resume_into_another_tracking_store_replays_every_round(tmp_path):
    """`--resume DIR --set tracking.tracking_uri=NEW`: the old run id is not in the new
    store, so the run is created there with every round so far (no Ray needed)."""
    from mlflow.tracking import MlflowClient

    from rayfed_bpt.tracking import MlflowListener

    def listener(db):
        return MlflowListener(f"sqlite:///{tmp_path / db}", "rayfed_bpt", tmp_path / "art",
                              tmp_path / "run", {"seed": 0}, None, note=print)

    old = listener("old.db")
    run_id = old.start(None)
    history = [{"round": r, "acc_mean": 0.1 * r} for r in (1, 2)]
    for m in history:
        old.tracker.log_metrics(m, step=m["round"])
    assert old.start(run_id, history) == run_id  # same store: reopened, nothing replayed
    new = listener("new.db")
    moved = new.start(run_id, history)
    assert moved != run_id
    client = MlflowClient(f"sqlite:///{tmp_path / 'new.db'}")
    assert [(m.step, m.value) for m in client.get_metric_history(moved, "acc_mean")] == [
        (1, 0.1), (2, 0.2)]
    old_client = MlflowClient(f"sqlite:///{tmp_path / 'old.db'}")
    assert len(old_client.get_metric_history(run_id, "acc_mean")) == 2  # not logged twice


def test_a_sweep_folder_someone_writes_is_refused_to_a_second_writer(tmp_path):
    """One writer per sweep folder too: while another process holds the folder's writer
    lock (here this test, through the same lock the CLI takes), ``tune --resume`` of it
    ends at once with exit 2, the holder named, the folder as it was. (A run folder's:
    test_signal_stops_cleanly_and_says_how_to_resume, with a real paused run.)"""
    from rayfed_bpt.run_folder import one_writer

    command, folder = "tune", tmp_path / "held"
    folder.mkdir()
    (folder / "sweep.yaml").write_text(yaml.safe_dump(
        {"space_path": "x.yaml", "overrides": [], "output_dir": str(tmp_path)}))
    files = sorted(p.name for p in folder.iterdir())
    with one_writer(folder, "tune"):
        r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", command, "--resume",
                            str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"is being written by rayfed-bpt pid {os.getpid()}" in r.stderr
    assert f"rayfed-bpt {command} --resume {folder}" in r.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted([*files, ".writer.lock"])
