"""cluster/: the recipes parse and agree with pyproject.toml; a real two-node local
cluster runs a submitted run and a sweep that log to a real MLflow tracking server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from _net import free_port, short_tempdir, start_mlflow_server, stop_ray, token_auth_env

from rayfed_bpt.data import PartitionConfig, write_partition

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
BIN = Path(sys.executable).parent


def pinned_ray() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [ray] = [d for d in deps if d.startswith("ray[")]
    return re.search(r"==([\d.]+)", ray).group(1)


def test_recipes_parse_and_match_pyproject():
    version = pinned_ray()
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    lo = tuple(int(x) for x in re.search(r">=([\d.]+)", requires).group(1).split("."))
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.aws.yaml").read_text())
    image = launcher["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{version}-py")
    py = re.search(r"-py(\d)(\d+)", image).groups()
    assert (int(py[0]), int(py[1])) >= lo
    assert any(f"ray[default,tune]=={version}" in c for c in launcher["setup_commands"])
    assert {"head", "gpu_worker"} <= set(launcher["available_node_types"])
    for name in ("raycluster.yaml", "rayjob.yaml"):
        doc = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["rayVersion"] == version
        workers = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
        for c in [workers, spec["headGroupSpec"]["template"]["spec"]["containers"][0]]:
            assert c["image"].startswith(f"rayproject/ray:{version}-py")
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert job["spec"]["entrypoint"].startswith("rayfed-bpt run")
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert {"MLFLOW_TRACKING_URI", "RAYFED_BPT_DATA"} <= set(env["env_vars"])
    assert "*.arrow" in env["excludes"] and "rayfed_runs" in env["excludes"]
    assert os.access(CLUSTER / "submit.sh", os.X_OK)
    # secure by default: token auth everywhere, the launcher's dashboard on loopback
    text = "".join(p.read_text() for p in CLUSTER.rglob("*.yaml"))
    assert "disabled" not in text and text.count('value: "token"') >= 4
    assert "--dashboard-host=127.0.0.1" in " ".join(launcher["head_start_ray_commands"])
    assert all("RAY_AUTH_MODE=token" in c for c in launcher["head_start_ray_commands"][1:]
               + launcher["worker_start_ray_commands"][1:])
    for key in ("RAYFED_BPT_DATA", "MLFLOW_TRACKING_URI", "runtime.output_dir",
                "gpus_per_actor", "ray job logs", "mlflow ui", "ray down"):
        assert key in (CLUSTER / "README.md").read_text(), key


@pytest.fixture
def two_node_cluster(tmp_path):
    env = token_auth_env(tmp_path)  # as the recipes ship: token auth on
    gcs, dash = free_port(), free_port()
    temp = short_tempdir("rc")
    ray = str(BIN / "ray")
    procs = []
    try:
        subprocess.run([ray, "start", "--head", f"--port={gcs}", "--num-cpus=1",
                        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dash}", f"--temp-dir={temp}",
                        "--resources", json.dumps({"site_a": 1}), "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1",
                        "--node-ip-address=127.0.0.1", "--resources",
                        json.dumps({"site_b": 1}), "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=180)
        server, mlflow_uri = start_mlflow_server(tmp_path / "mlflow", env)
        procs.append(server)
        yield {"dashboard": f"http://127.0.0.1:{dash}", "mlflow": mlflow_uri, "env": env}
    finally:
        stop_ray(temp)
        for p in procs:
            os.killpg(p.pid, 9)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # 2 min: `pytest -m slow` (CI runs it after the default suite)
def test_two_node_cluster_run_and_sweep(two_node_cluster, digits4, tmp_path):
    c = two_node_cluster
    part = write_partition(digits4, PartitionConfig("domain_mix", num_clients=4, seed=0),
                           tmp_path / "shared" / "part4")
    env = {**c["env"], "RAY_ADDRESS": c["dashboard"],
           "EXTRA_ENV_JSON": json.dumps({"MLFLOW_TRACKING_URI": c["mlflow"]}),
           "SUBMISSION_ID": "rayfed-cluster-test-run", "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = tmp_path / "shared" / "runs"
    r = subprocess.run(
        [str(CLUSTER / "submit.sh"), "run", "--set", f"data.partition_dir={part}",
         "data.max_train_per_client=48", "data.max_test_per_client=30", "train.rounds=2",
         "train.eval_every=1", "train.fraction=1.0", "algorithm.name=fedavg_vpt",
         "algorithm.options.prompt_len=2", "runtime.num_actors=2",
         "runtime.placement_strategy=STRICT_SPREAD", f"runtime.output_dir={out}",
         "runtime.run_name=cluster-run"],
        env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SUCCEEDED" in r.stdout
    actors = json.loads((out / "cluster-run" / "results" / "actors.json").read_text())
    assert len({a["node_id"] for a in actors}) == 2  # client actors on both nodes

    from mlflow.tracking import MlflowClient

    client = MlflowClient(c["mlflow"])
    [exp] = [e for e in client.search_experiments() if e.name == "rayfed_bpt"]
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "cluster-run"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "acc_mean")] == [1, 2]

    space = tmp_path / "shared" / "two.yaml"
    space.write_text(yaml.safe_dump({
        "name": "two", "metric": "val_acc_mean", "mode": "max", "search": "grid",
        "num_samples": 1, "scheduler": {"name": "fifo"},
        "resources": {"num_actors": 1, "cpus_per_actor": 0.9},
        "base": {"algorithm.name": "fedavg_linear", "train.rounds": 2,
                 "data.partition_dir": str(part), "data.max_train_per_client": 48,
                 "data.max_test_per_client": 30, "train.fraction": 1.0},
        "space": {"train.lr": {"grid": [0.03, 0.01]}}}))
    env["SUBMISSION_ID"] = "rayfed-cluster-test-sweep"
    r = subprocess.run([str(CLUSTER / "submit.sh"), "tune", "--space", str(space),
                        "--output-dir", str(out)], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = client.search_runs([exp.experiment_id])
    children = [x for x in runs if "mlflow.parentRunId" in x.data.tags]
    assert len(children) == 2 and all(x.info.status == "FINISHED" for x in children)
    env["SUBMISSION_ID"] = "rayfed-cluster-test-bad"
    r = subprocess.run([str(CLUSTER / "submit.sh"), "run", "--set", "train.roundz=1"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "FAILED" in r.stdout  # the job's failure is the exit status


@pytest.mark.slow  # 1-2 min: `pytest -m slow`
def test_plugin_method_ships_with_the_job_to_a_two_node_cluster(two_node_cluster, digits4,
                                                                 tmp_path):
    """docs/extending.md's cluster block, as written: the example's module rides with
    `ray job submit --working-dir` (nothing installed on the cluster), `--import` names it,
    and client actors on both nodes train the plugin's method."""
    from test_docs import code_blocks

    [block] = [code for lang, tags, code in code_blocks() if tags == "cluster"]
    part = write_partition(digits4, PartitionConfig("domain_mix", num_clients=4, seed=0),
                           tmp_path / "shared" / "part4")
    out = tmp_path / "shared" / "runs"
    env = {**two_node_cluster["env"], "RAY_ADDRESS": two_node_cluster["dashboard"],
           "PARTITION": str(part), "OUT": str(out), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)  # the module must come with the job, not from here
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    run = out / "fedprox"
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == ["rayfed_fedprox"]
    actors = json.loads((run / "results" / "actors.json").read_text())
    assert len({a["node_id"] for a in actors}) == 2  # client actors on both nodes
    assert (run / "checkpoint.safetensors").exists()
