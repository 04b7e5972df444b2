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


def test_a_device_that_fills_during_a_checkpoint_keeps_the_last_one_whole(tmp_path):
    """The device takes half of round 2's checkpoint file, then has no room: one message
    (free space, what the checkpoint needs, the intact round, the resume command), the
    temporary file gone, round 1's checkpoint and every piece it names still read."""
    import torch

    from rayfed_bpt.engine.checkpoint import checkpoint_round, save_checkpoint
    from rayfed_bpt.engine.personal_store import PersonalStore
    from rayfed_bpt.engine.state import RunState
    from rayfed_bpt.errors import RayfedError

    run = tmp_path / "run"
    store = PersonalStore([0, 1])
    store.put(0, {"head": torch.zeros(4)})
    store.put(1, {"head": torch.ones(4)})
    save_checkpoint(run, RunState(1, {"w": torch.arange(8.0)}, store, [{"round": 1}]), {})
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    store.put(1, {"head": torch.full((4,), 2.0)})  # round 2 changes client 1
    state = RunState(2, {"w": torch.arange(8.0) * 2}, store, [{"round": 1}, {"round": 2}])
    with pytest.raises(RayfedError) as e:
        save_checkpoint(run, state, {}, fill_after=0.5)
    msg = str(e.value)
    assert msg.startswith(f"no space left on the device of {run} (No space left on device) "
                          "while writing round 2's checkpoint: ")
    assert "MiB free, the checkpoint needs up to" in msg
    assert f"the checkpoint of round 1 is intact: free space (or move the run folder) and " \
           f"resume with `rayfed-bpt run --resume {run}`" in msg
    assert not list(run.glob(".checkpoint.*"))  # the half-written file is gone
    assert checkpoint_round(run) == 1
    loaded = load_checkpoint(run)[0]
    assert loaded.global_state["w"].equal(torch.arange(8.0))
    assert loaded.personal[1]["head"].equal(torch.ones(4))  # round 1's piece, not round 2's
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert all(after[name] == data for name, data in before.items())  # nothing rewritten


@pytest.mark.slow  # two runs through the CLI, ~40 s
def test_a_run_whose_disk_fills_stops_with_exit_2_and_resumes_to_the_clean_numbers(part4,
                                                                                    tmp_path):
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "full"
    args = overrides(part4, out, "runtime.run_name=full")
    r = subprocess.run(CLI + ["--no-progress", "--set", *args, "runtime.faults=[disk_full@2]"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("rayfed-bpt: error")]
    assert "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert "while writing round 2's checkpoint" in r.stderr
    assert f"resume with `rayfed-bpt run --resume {run_dir}`" in r.stderr
    assert load_checkpoint(run_dir)[0].round == 1
    r = subprocess.run(CLI + ["--no-progress", "--resume", str(run_dir)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    resumed = load_checkpoint(run_dir)[0]
    clean = run_reference(load_config(None, args), log=None)
    assert resumed.round == 3 and strip(resumed.history) == strip(clean)


CRASH = """
import os, signal, sys
import torch
from rayfed_bpt.engine.checkpoint import save_checkpoint
from rayfed_bpt.engine.personal_store import PersonalStore
from rayfed_bpt.engine.state import RunState

run, point = sys.argv[1], sys.argv[2]
store = PersonalStore([0, 1, 2])
for k in range(3):
    store.put(k, {"head": torch.full((4,), float(k))})
save_checkpoint(run, RunState(1, {"w": torch.ones(3)}, store, [{"round": 1}]), {})
store.put(1, {"head": torch.full((4,), 10.0)})  # round 2 changes two clients
store.put(2, {"head": torch.full((4,), 20.0)})
kill = lambda p: os.kill(os.getpid(), signal.SIGKILL) if p == point else None
save_checkpoint(run, RunState(2, {"w": torch.ones(3) * 2}, store,
                              [{"round": 1}, {"round": 2}]), {}, at=kill)
"""


@pytest.mark.slow  # a process killed at each of 5 points, ~15 s
def test_a_kill_at_any_write_point_of_a_checkpoint_leaves_one_that_reads_right(tmp_path):
    """SIGKILL at each point of a checkpoint's write (pieces written, file written, latest
    moved to previous, new latest in place, old pieces collected): what a resume reads is
    round 1's state or round 2's, whole, never a mix; the next checkpoint is written over
    whatever the crash left."""
    import torch

    from rayfed_bpt.engine.checkpoint import WRITE_POINTS, CheckpointWriter, save_checkpoint
    from rayfed_bpt.engine.state import RunState

    for i, point in enumerate(WRITE_POINTS):
        run = tmp_path / point
        r = subprocess.run([sys.executable, "-c", CRASH, str(run), point], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == -signal.SIGKILL, (point, r.stderr[-2000:])
        state = load_checkpoint(run)[0]
        new = i >= WRITE_POINTS.index("latest")  # the new file in place: round 2 is read
        assert state.round == (2 if new else 1), point
        assert state.global_state["w"].equal(torch.ones(3) * state.round), point
        heads = [float(state.personal[k]["head"][0]) for k in range(3)]
        assert heads == ([0.0, 10.0, 20.0] if new else [0.0, 1.0, 2.0]), point
        CheckpointWriter(run, {}, every=1, rounds=3)  # a resumed run's writer
        assert not list(run.glob(".checkpoint.*")), point  # the crash's leftover swept
        state.round += 1
        save_checkpoint(run, RunState(state.round, state.global_state, state.personal,
                                      state.history), {})
        again = load_checkpoint(run)[0]
        assert again.round == state.round and [
            float(again.personal[k]["head"][0]) for k in range(3)] == heads, point
