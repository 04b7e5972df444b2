"""The `rayfed-bpt data` commands end to end, as a person runs them."""

import json
import os
import subprocess
import sys

import pytest


def cli(*args, env_root, check=True):
    env = {**os.environ, "RAYFED_BPT_DATA": str(env_root)}
    r = subprocess.run(
        [sys.executable, "-m", "rayfed_bpt.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.mark.parametrize(
    "cmd", [[], ["data"], ["data", "prepare"], ["data", "partition"], ["data", "show"],
            ["data", "verify"]]
)
def test_help_everywhere(cmd, tmp_path):
    r = cli(*cmd, "--help", env_root=tmp_path)
    assert "usage: rayfed-bpt" in r.stdout


def test_prepare_partition_show(tmp_path, monkeypatch):
    root = tmp_path / "root"
    r = cli("data", "prepare", env_root=root)
    assert "16,797 examples" in r.stdout
    assert (root / "datasets" / "digits4.arrow").exists()
    r = cli(
        "data", "partition", "--partitioner", "domain_mix", "--num-clients", "20", env_root=root
    )
    part = root / "partitions" / "digits4-domain_mix-da0.5-20c-s0-6f64fe4c"  # the one namer
    assert str(part) in r.stdout
    manifest = json.loads((part / "manifest.json").read_text())
    assert len(manifest["clients"]) == 20 and manifest["layout"] == "indices"
    assert sorted(p.name for p in part.iterdir()) == ["manifest.json", "rows.arrow"]
    r = cli("data", "verify", str(part), env_root=root)
    assert "every hash matches" in r.stdout and "layout indices" in r.stdout
    r = cli("data", "verify", str(root / "datasets" / "digits4.arrow"), env_root=root)
    assert "dataset" in r.stdout and "every hash matches" in r.stdout
    r = cli("data", "show", str(part), env_root=root)
    assert "train examples per client" in r.stdout
    png = part / "partition.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # no argument: the partition a default `rayfed-bpt run` uses (made by the same namer)
    r = cli("data", "show", env_root=root)
    assert "train examples per client" in r.stdout
    from rayfed_bpt.config import ExperimentConfig
    from rayfed_bpt.data.recipe import resolve_partition

    monkeypatch.setenv("RAYFED_BPT_DATA", str(root))
    used_by_run = resolve_partition(ExperimentConfig().data, 0)  # exists: only named here
    assert f"wrote {used_by_run / 'partition.png'}" in r.stdout


@pytest.mark.parametrize(
    "args, msg",
    [
        (["data", "partition", "--label-alpha", "0", "--partitioner", "dirichlet"],
         "label_alpha must be > 0"),
        (["data", "partition", "--num-clients", "100000"], "clients but only"),
        (["data", "prepare", "image_folder", "--source", "/no/such/dir"], "does not exist"),
        (["data", "prepare", "cifar10"], "needs --source PATH"),
        (["data", "show", "/no/such/partition"], "no manifest.json"),
    ],
)
def test_bad_input_is_one_clear_line(args, msg, tmp_path, digits4_path):
    root = digits4_path.parent.parent
    r = cli(*args, env_root=root, check=False)
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr


def test_unknown_partitioner_is_rejected_before_anything_is_written(tmp_path):
    r = cli("data", "partition", "--partitioner", "nope", env_root=tmp_path, check=False)
    assert r.returncode == 2 and "unknown partitioner 'nope'" in r.stderr
    assert "domain_mix" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "partitions").exists()
