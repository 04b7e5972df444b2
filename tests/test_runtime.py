"""The Ray runtime on a real local Ray: equivalence with the reference loop, MLflow,
fractional-GPU packing. (Faults: test_faults.py.)"""

from __future__ import annotations

import pytest
import ray
from _runs import strip

from rayfed_bpt.catalog import pool_names
from rayfed_bpt.config import load_config
from rayfed_bpt.engine import run_reference
from rayfed_bpt.runtime import run_experiment


def cfg_for(part4, tmp_path, *extra):
    return load_config(None, [
        f"data.partition_dir={part4}", "data.max_train_per_client=64",
        "data.max_test_per_client=40", "train.rounds=2", "algorithm.options.prompt_len=2",
        "train.fraction=1.0", "train.eval_every=1",
        f"runtime.output_dir={tmp_path}", *extra])


def assert_same(a, b):
    """Bit-identical: the same engine and the same thread count in every pool."""
    assert strip(a) == strip(b)


@pytest.mark.parametrize("pool", pool_names())
def test_every_pool_equals_reference(pool, part4, tmp_path, local_ray):
    """Every registered client pool, chosen by name, gives the in-process reference's
    numbers (ray_actors: dynamic scheduling, any of 3 actors takes any client)."""
    cfg = cfg_for(part4, tmp_path, f"runtime.pool={pool}", "runtime.num_actors=3",
                  "runtime.cpus_per_actor=0.5", "train.clients_per_round=3")
    summary = run_experiment(cfg, show_progress=False, log=None)
    trained = [k for a in summary["actors"] for k in a["clients"]]
    assert len(summary["actors"]) == (3 if pool == "ray_actors" else 1)
    assert set(trained) <= {0, 1, 2, 3} and len(set(trained)) >= 3
    assert_same(summary["history"], run_reference(cfg, log=None))


@pytest.mark.parametrize("num_actors, extra", [
    pytest.param(1, [], marks=pytest.mark.slow),
    (2, ["runtime.schedule=pinned", "runtime.group_size=2"]),  # pinned; batched pairs
])
def test_ray_equals_reference(num_actors, extra, part4, tmp_path, local_ray):
    cfg = cfg_for(part4, tmp_path, f"runtime.num_actors={num_actors}",
                  "runtime.cpus_per_actor=0.5", "train.clients_per_round=3", *extra)
    summary = run_experiment(cfg, show_progress=False, log=None)
    assert len(summary["actors"]) == num_actors
    trained = [k for a in summary["actors"] for k in a["clients"]]
    assert set(trained) <= {0, 1, 2, 3} and len(set(trained)) >= 3
    if "runtime.schedule=pinned" in extra:  # each client on its owner, k % N, only
        assert all(k % num_actors == a["index"] for a in summary["actors"]
                   for k in a["clients"])
    assert_same(summary["history"], run_reference(cfg, log=None))


def test_mlflow_run_has_params_metrics_and_artifacts(part4, tmp_path, local_ray):
    from mlflow.tracking import MlflowClient

    cfg = cfg_for(part4, tmp_path, "algorithm.name=fedper_vpt", "runtime.num_actors=2")
    s = run_experiment(cfg, show_progress=False, log=None)
    assert s["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(s["tracking_uri"])
    run = client.get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["algorithm.name"] == "fedper_vpt"
    assert run.data.params["train.rounds"] == "2"
    for key in ("acc_mean", "acc_min", "comm_bytes_up", "round_seconds", "domain_acc.mnistm"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [1, 2], key
    up = client.get_metric_history(run.info.run_id, "comm_bytes_up")[0].value
    assert up == 4 * (2 * 128) * 4  # 4 clients each send a float32 prompt of 2 x 128
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"clients.csv", "accuracy_vs_round.png", "domain_accuracy.png",
            "config.yaml"} <= names
    csv = (tmp_path / s["run_dir"] / "results" / "clients.csv").read_text().splitlines()
    assert csv[0].startswith("client_id,num_train,num_test,accuracy") and len(csv) == 5


@pytest.mark.slow  # 24 s on 2 cores; keeps the default suite well under 15 minutes
def test_fractional_gpus_pack_four_to_a_gpu(part4, tmp_path):
    """A logical GPU: four actors asking 0.25 share GPU 0 and run on the CPU (no CUDA)."""
    ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        cfg = cfg_for(part4, tmp_path, "runtime.num_actors=4", "runtime.cpus_per_actor=0.5",
                      "runtime.gpus_per_actor=0.25", "train.rounds=1",
                      "algorithm.name=fedavg_vpt")
        s = run_experiment(cfg, show_progress=False, log=None)
        assert [a["gpu_ids"] for a in s["actors"]] == [["0"]] * 4
        assert {a["device"] for a in s["actors"]} == {"cpu"}
        from rayfed_bpt.config import RuntimeConfig
        from rayfed_bpt.runtime.resources import plan_actors

        # a fifth 0.25 share does not fit: a clear error, not an actor pending forever
        with pytest.raises(Exception, match="do not fit the cluster"):
            plan_actors(RuntimeConfig(num_actors=5, cpus_per_actor=0.25, gpus_per_actor=0.25),
                        10, ray.cluster_resources())
        auto = plan_actors(RuntimeConfig(cpus_per_actor=0.25), 10, ray.cluster_resources())
        assert (auto.num_actors, auto.num_gpus) == (4, 0.25)  # sized by the one GPU
    finally:
        ray.shutdown()


def test_gpu_request_without_gpus_is_an_error_not_a_hang(part4, tmp_path, local_ray):
    cfg = cfg_for(part4, tmp_path, "runtime.gpus_per_actor=0.5")
    with pytest.raises(Exception, match="has no GPU"):
        run_experiment(cfg, show_progress=False, log=None)
