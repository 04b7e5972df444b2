"""`ray job submit` against a real head started with `ray start --head`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _net import free_port, short_tempdir, stop_ray, token_auth_env

from rayfed_bpt.data import PartitionConfig, write_partition

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def ray_head(tmp_path):
    if shutil.which(RAY) is None:
        pytest.skip("the ray command is not installed")
    env = token_auth_env(tmp_path)  # as the recipes ship: token auth on
    gcs, dash = free_port(), free_port()
    temp = short_tempdir("rt")
    subprocess.run([RAY, "start", "--head", f"--port={gcs}", "--num-cpus=2",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    f"--temp-dir={temp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop_ray(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _submit(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """``ray job submit``, again while the head says its job agent is not up yet (a
    freshly started head on a busy machine answers 500 "No available agent")."""
    deadline = time.time() + 180
    while True:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in r.stderr or time.time() > deadline:
            return r
        time.sleep(2)


def test_job_submit_runs_and_logs_to_mlflow(ray_head, digits4, tmp_path):
    address, env = ray_head
    part = write_partition(digits4, PartitionConfig("domain_mix", num_clients=3, seed=0),
                           tmp_path / "shared" / "part3")  # shards outside the working dir
    out = tmp_path / "runs"
    cmd = [RAY, "job", "submit", f"--address={address}", f"--working-dir={REPO}",
           "--submission-id=rayfed-test-job",
           "--runtime-env-json", json.dumps({"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}),
           "--", "rayfed-bpt", "run", "--no-progress", "--set",
           f"data.partition_dir={part}", "data.max_train_per_client=48",
           "data.max_test_per_client=30", "train.rounds=2", "train.eval_every=1",
           "algorithm.name=fedavg_vpt",
           "algorithm.options.prompt_len=2", f"runtime.output_dir={out}",
           "runtime.run_name=job1"]
    stranger = {**env, "RAY_AUTH_TOKEN": "not-the-token"}
    r = subprocess.run(cmd[:4] + ["--submission-id=stranger", "--", "echo", "pwned"],
                       env=stranger, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "pwned" not in r.stdout  # the job API wants the token
    t = time.time()
    r = _submit(cmd, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr)
    assert time.time() - t < 600
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "rayfed_bpt"]
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "job1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "acc_mean")] == [1, 2]
    assert (out / "job1" / "checkpoint.safetensors").exists()
