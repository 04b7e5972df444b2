"""Shared fixtures. Nothing here reaches outside this machine."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from rayfed_bpt.data import load_dataset, save_dataset  # noqa: E402
from rayfed_bpt.data.digits4 import build_digits4  # noqa: E402


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_root")
    os.environ["RAYFED_BPT_DATA"] = str(root)
    return root


@pytest.fixture(scope="session")
def digits4_path(data_root):
    """The real built-in digits-4 dataset, built once per test session."""
    table, info = build_digits4(seed=0)
    return save_dataset(table, info, data_root / "datasets" / "digits4.arrow")


@pytest.fixture(scope="session")
def digits4(digits4_path):
    return load_dataset(digits4_path)


@pytest.fixture(scope="session")
def part4(digits4, tmp_path_factory):
    """Four domain_mix clients of digits-4: the small partition most tests run on
    (read only; a test that alters a partition copies it first)."""
    from rayfed_bpt.data import PartitionConfig, write_partition

    return write_partition(digits4, PartitionConfig("domain_mix", num_clients=4, seed=0),
                           tmp_path_factory.mktemp("p4") / "dm4")


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with 2 CPUs for one test module."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
