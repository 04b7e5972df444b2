"""A run killed mid-way resumes from its checkpoint and ends with the uninterrupted metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rayfed_bpt.algorithms.reference import run_reference
from rayfed_bpt.data import PartitionConfig, write_partition
from rayfed_bpt.runtime.checkpoint import load_checkpoint
from rayfed_bpt.runtime.launch import config_of_run

SKIP = {"round_seconds", "comm_bytes_down", "comm_bytes_up"}


def test_kill_then_resume_matches_uninterrupted(digits4, tmp_path):
    part = write_partition(digits4, PartitionConfig("domain_mix", num_clients=4, seed=0),
                           tmp_path / "p4")
    run_dir = tmp_path / "runs" / "r1"
    args = ["--set", f"data.partition_dir={part}", "data.max_train_per_client=64",
            "data.max_test_per_client=40", "train.rounds=4", "train.eval_every=1",
            "train.fraction=0.5", "algorithm.options.prompt_len=2",
            f"runtime.output_dir={tmp_path / 'runs'}", "runtime.run_name=r1",
            "runtime.num_actors=2"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cli = [sys.executable, "-m", "rayfed_bpt.cli", "run", "--no-progress"]
    proc = subprocess.Popen(cli + args, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        ckpt = load_checkpoint(run_dir)
        if ckpt is not None and ckpt["round"] >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be interrupted:\n" + (
        proc.stdout.read() if proc.stdout else "")
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and the local Ray it started
    proc.wait(timeout=60)
    interrupted_at = load_checkpoint(run_dir)["round"]
    assert 2 <= interrupted_at < 4
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)

    r = subprocess.run(cli + ["--resume", str(run_dir)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    final = load_checkpoint(run_dir)
    assert final["round"] == 4 and len(final["history"]) == 4
    reference = run_reference(config_of_run(run_dir), log=None)
    for got, want in zip(final["history"], reference):
        for k in want:
            if k not in SKIP:
                assert got[k] == pytest.approx(want[k], abs=1e-6, nan_ok=True), (got["round"], k)


def test_resume_needs_a_run_folder(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "run", "--resume",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is not a run folder" in r.stderr
