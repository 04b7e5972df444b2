"""Every benchmark runs as documented, in its smallest mode.

Their numbers are printed, never asserted as timings (performance is measured, not
asserted); what is checked is that each script runs to its end on this machine and,
where a number has a meaning beyond speed, that it means it. The GPU scripts run
only where CUDA is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"

# script -> its smallest mode ({tmp}: a scratch folder); the output must contain `expect`
SMALLEST = {
    "data_scale.py": (["--sizes", "200", "--quick", "--work", "{tmp}/data"],
                      "DomainNet estimate (jpeg"),
    "fault_costs.py": (["--quick", "--work", "{tmp}/faults"], "| True |"),
    "headroom.py": (["--quick", "--settings", "domain_mix8", "--seeds", "0"], "| domain_mix8 |"),
    "partition_speed.py": (["--examples", "2000", "--clients", "20"], "20 clients"),
    "prompt_posterior.py": (["--quick", "--seed", "0"], "pfedbayespt, domain_mix8, seed 0"),
    "reference_table.py": (["--clients", "4", "--rounds", "1", "--max-train", "32",
                            "--max-test", "16", "--methods", "fedavg_vpt", "pfedbayespt"],
                           "pfedbayespt"),
    "runtime_speed.py": (["--rows", "20/4/1/1", "--reps", "1", "--work", "{tmp}/speed"],
                         "| 20/4/1/1 |"),
    "scale.py": (["--sizes", "200", "--per-round", "20", "--eval", "50", "--algorithms",
                  "pfedbayespt", "--extrapolate", "2000", "--work", "{tmp}/scale"],
                 "| pfedbayespt | 2,000 (extrapolated) |"),
    "search_budget.py": (["--budget", "4", "--seeds", "0", "--searchers", "random", "--out",
                          "{tmp}/sweeps", "--png", "{tmp}/search_budget.png", "--set",
                          "data.max_train_per_client=32", "data.max_test_per_client=16"],
                         "random"),
    "step_speed.py": (["--batch", "8", "--steps", "2"], "ms/step"),
}
GPU_ONLY = {"gpu_packing.py", "gpu_check.sh", "gpu_vit_check.sh", "vit_gpu.py"}


def test_every_benchmark_has_a_smallest_mode():
    assert {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")} == (
        set(SMALLEST) | GPU_ONLY)


def run_benchmark(name: str, tmp_path: Path) -> str:
    args, expect = SMALLEST[name]
    r = subprocess.run([sys.executable, str(BENCH / name),
                        *(a.format(tmp=tmp_path) for a in args)],
                       capture_output=True, text=True, timeout=1200, cwd=tmp_path,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                            "MPLBACKEND": "Agg"})
    assert r.returncode == 0, f"{name}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert expect in r.stdout, f"{name}:\n{r.stdout[-3000:]}"
    return r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(SMALLEST) - {"scale.py", "data_scale.py"}))
def test_benchmark_runs_in_its_smallest_mode(name, digits4_path, tmp_path):
    run_benchmark(name, tmp_path)


@pytest.mark.slow  # ~1 min: two real runs (one stopped by the fault hook, one --resume)
def test_scale_benchmark_checkpoints_only_what_a_round_trained(tmp_path):
    out = run_benchmark("scale.py", tmp_path)
    [row] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert row["clients"] == 200 and row["eval_clients"] == 50
    # kept Adam state: a round writes its clients' pieces and the global file, no more
    assert 0 < row["trained_state_mb"] <= row["ckpt_mb_round"] <= 2 * row["trained_state_mb"]


@pytest.mark.slow  # ~1.5 min: 2 imports of 200 photos, 2 partitions, 2 one-round runs
def test_data_scale_benchmark_stores_jpeg_small_and_partitions_as_indices(tmp_path):
    out = run_benchmark("data_scale.py", tmp_path)
    rows = {r["pixels"]: r for r in map(json.loads, (ln for ln in out.splitlines()
                                                     if ln.startswith("{")))}
    assert rows["jpeg"]["dataset_over_source"] < 1.2 < rows["raw"]["dataset_over_source"]
    assert all(r["partition_pct"] < 1 for r in rows.values())  # row numbers, not pixels
    assert all(r["read_ms_32"] > 0 and r["step_ms_32"] > 0 for r in rows.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GPU_ONLY))
def test_gpu_benchmarks_need_a_gpu(name):
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"{name} needs a CUDA GPU (the device tool's machine)")
    assert (BENCH / name).exists()
