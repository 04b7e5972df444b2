"""The validation split (``data.val_fraction``): carved from each client's train rows,
stratified and seeded; sweeps evaluate it with ``train.eval_test`` off, so a run that
chooses hyper-parameters never sees a test row; ``evaluate_run`` reports test once."""

from __future__ import annotations

import json

import _runs
import numpy as np
import pytest
from _runs import strip

from rayfed_bpt.algorithms.base import seed_for
from rayfed_bpt.config import load_config
from rayfed_bpt.data import PartitionConfig, PartitionReader, load_dataset, write_partition
from rayfed_bpt.data.arrow_io import read_table, write_json, write_table
from rayfed_bpt.data.columns import ImageColumn
from rayfed_bpt.data.holdout import carve_val, val_counts
from rayfed_bpt.data.schema import make_table
from rayfed_bpt.engine import CheckpointWriter, evaluate_run, run_reference
from rayfed_bpt.engine.loop import is_timing
from rayfed_bpt.engine.schedule import train_sizes
from rayfed_bpt.engine.setup import load_client
from rayfed_bpt.errors import ConfigError
from rayfed_bpt.run_folder import RunFolder


def small(part, *extra):
    return _runs.small(part, "data.max_train_per_client=48", "data.max_test_per_client=24",
                       "data.val_fraction=0.2", "train.rounds=2", *extra)


def run(cfg, run_dir):
    """``cfg`` in this process, into a run folder as ``rayfed-bpt run`` leaves one."""
    RunFolder(run_dir).create(cfg.to_dict())
    writer = CheckpointWriter(run_dir, cfg.to_dict(), 1, cfg.train.rounds)
    return run_reference(cfg, log=None, listeners=[writer])


def scrambled_copy(src, dst):
    """Partition ``src`` (part4's recipe) written again as copies of its rows, whose test
    rows are then garbage (random labels, black images), its manifest's shard hashes and
    test label counts rewritten to match."""
    dataset = load_dataset(json.loads((src / "manifest.json").read_text())["dataset"]["path"])
    write_partition(dataset, PartitionConfig("domain_mix", num_clients=4, seed=0), dst,
                    layout="files")
    manifest = json.loads((dst / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    for e in manifest["clients"]:
        table, info = read_table(dst / e["file"])
        n = e["num_train"]
        images = ImageColumn(table.column("image"), info).take(np.arange(table.num_rows))
        labels = table.column("label").to_numpy().copy()
        images[n:] = 0
        labels[n:] = rng.integers(0, info.num_classes, len(labels) - n)
        new = make_table(info, images, labels, table.column("domain").to_numpy().copy(),
                         np.array(table.column("split").to_pylist()),
                         table.column("id").to_numpy().copy())
        e["sha256"] = write_table(new, dst / e["file"])
        e.pop("edges")  # no stamp: a run start hashes these shards in full
        e["label_counts"]["test"] = np.bincount(labels[n:], minlength=info.num_classes).tolist()
    write_json(manifest, dst / "manifest.json")
    return dst


def test_carve_is_disjoint_stratified_seeded_and_per_client(part4):
    reader = PartitionReader(part4)
    for k in reader.client_ids:
        shard = reader.load(k)
        y = shard.labels("train")
        seed = seed_for(0, "val", k)
        keep, val = carve_val(y, 0.2, seed)
        assert len(np.intersect1d(keep, val)) == 0 and len(keep) + len(val) == len(y)
        assert not set(shard.ids("train")[val]) & set(shard.ids("test"))  # test untouched
        n, v = np.bincount(y, minlength=10), np.bincount(y[val], minlength=10)
        assert np.all(np.abs(v - 0.2 * n) <= 1), (k, n, v)
        again = carve_val(y, 0.2, seed)
        assert np.array_equal(again[0], keep) and np.array_equal(again[1], val)
        assert not np.array_equal(carve_val(y, 0.2, seed_for(0, "val", k + 1))[1], val)
        data = load_client(reader, k, small(part4, "data.max_train_per_client=null",
                                            "data.max_test_per_client=null"))
        assert data.labels["val"].tolist() == y[val].tolist()
        assert data.labels["train"].tolist() == y[keep].tolist()
    # tiny clients: one val example from two, never the whole train split
    assert val_counts([2], 0.05).tolist() == [1] and val_counts([1], 0.5).tolist() == [0]
    assert val_counts([1, 1], 0.6).sum() == 1 and val_counts([5, 7], 0.0).sum() == 0


@pytest.mark.parametrize("extra", [[], ["data.max_train_per_client=null"]])
def test_train_sizes_agree_with_the_opened_data(part4, extra):
    cfg = small(part4, *extra)
    reader = PartitionReader(part4)
    opened = {k: load_client(reader, k, cfg) for k in reader.client_ids}
    assert train_sizes(reader, cfg) == {k: d.num("train") for k, d in opened.items()}
    cap = cfg.data.max_test_per_client
    assert all(0 < d.num("val") <= cap and d.num("test") <= cap for d in opened.values())


def test_config_checks_val_fraction_and_eval_test():
    for bad in ("0.9", "-0.1"):
        with pytest.raises(ConfigError, match="data.val_fraction"):
            load_config(None, [f"data.val_fraction={bad}"])
    with pytest.raises(ConfigError, match="train.eval_test.*data.val_fraction"):
        load_config(None, ["train.eval_test=false"])
    cfg = load_config(None, ["train.eval_test=false", "data.val_fraction=0.1"])
    assert not cfg.train.eval_test and cfg.data.val_fraction == 0.1


@pytest.mark.slow  # ~30 s (three runs): `pytest -m slow`, which CI runs after the default suite
def test_val_only_run_never_reads_test_rows_and_evaluate_run_reports_test(part4, tmp_path):
    garbage = scrambled_copy(part4, tmp_path / "scrambled")
    val_only = run(small(part4, "train.eval_test=false"), tmp_path / "a")
    assert strip(val_only) == strip(run(small(garbage, "train.eval_test=false"),
                                        tmp_path / "b"))
    assert len(val_only) == 2
    assert all("val_acc_mean" in m and "acc_mean" not in m for m in val_only)
    assert "val_domain_acc/mnist" in val_only[-1]
    both = run(small(part4), tmp_path / "c")  # eval_test on: the same run, test added
    assert [{k: v for k, v in m.items() if k.startswith("val_")} for m in strip(both)] == \
        [{k: v for k, v in m.items() if k.startswith("val_")} for m in strip(val_only)]
    last = {k: v for k, v in both[-1].items() if not is_timing(k)
            and not k.startswith(("val_", "train_"))  # evaluation only, not training's
            and k not in ("comm_bytes_down", "comm_bytes_up")}
    assert "acc_mean" in last
    assert strip([evaluate_run(tmp_path / "c")]) == strip([last])
    assert strip([evaluate_run(tmp_path / "a", "test")]) == strip([last])  # forced test
    assert evaluate_run(tmp_path / "a", "val")["val_acc_mean"] == val_only[-1]["val_acc_mean"]
    # the scramble is real: the garbage copy's test split scores differently
    assert evaluate_run(tmp_path / "b")["acc_mean"] != last["acc_mean"]


@pytest.mark.slow
def test_ray_pool_evaluates_validation_like_the_reference_and_logs_it(part4, tmp_path,
                                                                      local_ray):
    from mlflow.tracking import MlflowClient

    from rayfed_bpt.runtime import run_experiment

    cfg = small(part4, "train.eval_test=false", "runtime.num_actors=2",
                "runtime.cpus_per_actor=0.5", f"runtime.output_dir={tmp_path}")
    s = run_experiment(cfg, show_progress=False, log=None)
    assert strip(s["history"]) == strip(run_reference(cfg, log=None))
    client = MlflowClient(s["tracking_uri"])
    steps = [m.step for m in client.get_metric_history(s["mlflow_run_id"], "val_acc_mean")]
    assert steps == [1, 2]
    assert client.get_metric_history(s["mlflow_run_id"], "acc_mean") == []
