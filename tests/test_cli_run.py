"""`rayfed-bpt run`: help, and bad configs rejected before Ray starts."""

import subprocess
import sys
import time

import pytest


def cli(*args):
    return subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_run_help():
    r = cli("run", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout and "--set" in r.stdout


@pytest.mark.parametrize("args, msg", [
    (["--set", "train.roundz=3"], "unknown config key(s) ['train.roundz']"),
    (["--set", "runtime.placement_strategy=RANDOM"], "allowed: ['PACK', 'SPREAD'"),
    (["--config", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
])
def test_bad_config_fails_fast_before_ray(args, msg):
    t = time.time()
    r = cli("run", *args)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    assert "Started a local Ray" not in r.stderr
    assert time.time() - t < 5  # no torch in the entry process: it answers at once


@pytest.mark.parametrize("option, msg", [
    ("algorithm.name=fedprox", "unknown algorithm.name 'fedprox'"),
    ("algorithm.options.noise=uniform", "noise='uniform'; allowed: ['bernoulli'"),
])
def test_bad_algorithm_options_fail_before_any_file(option, msg, digits4, tmp_path):
    """Algorithm options live beside their torch code: the driver actor checks them as it
    sets the run up, before a run folder, an MLflow run or a client actor's work exists."""
    from rayfed_bpt.data import PartitionConfig, write_partition

    part = write_partition(digits4, PartitionConfig("iid", num_clients=3), tmp_path / "p3")
    r = cli("run", "--set", f"data.partition_dir={part}", option,
            f"runtime.output_dir={tmp_path / 'runs'}")
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


def test_size_actors_measures_one_client_actor(digits4, tmp_path):
    from rayfed_bpt.data import PartitionConfig, write_partition

    part = write_partition(digits4, PartitionConfig("iid", num_clients=3), tmp_path / "p3")
    r = cli("size-actors", "--set", f"data.partition_dir={part}", "data.max_train_per_client=40",
            "data.max_test_per_client=20", "algorithm.options.prompt_len=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "one client actor (pfedbayespt, batch 32, a work unit of 1 client(s)" in r.stdout
    assert "GiB" in r.stdout
    assert "no GPU here" in r.stdout
