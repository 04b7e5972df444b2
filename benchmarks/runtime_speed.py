"""rayfed-bpt's Ray runtime beside Flower 1.42 and the no-framework limit, one machine.

The workload of shared/peers/flower: FedAvg-VPT on the frozen ViT d6/w128/p4
(our built-in backbone has that shape), 10 prompt tokens, batch 32, S local
steps per client (a client holds 32*S training examples, one local epoch), M
clients, K per round, R rounds, evaluation after the last round only. Each row
runs rayfed-bpt (`rayfed-bpt run` on an iid partition of a synthetic Arrow data
set, written before timing), reference-mp (2 worker processes x 1 thread, no
framework) and Flower's `flwr run`, interleaved, ``--reps`` times; medians.

- s/round: steady rounds (2..R), without the final evaluation;
- non-round s: the whole command's wall time minus R steady rounds (imports,
  Ray, actors, the final evaluation, teardown);
- peak PSS: the largest sum of PSS over the launched process and all its
  descendants (Ray's processes included), sampled every 0.5 s.

``--skew`` adds dynamic vs pinned scheduling on a partition with unequal
client sizes (digits-4, domain_mix, Dirichlet): s/round of each.

    python benchmarks/runtime_speed.py --flower-python $VENV/bin/python \\
        --flower-dir /tmp/flower-peer [--reps 2] [--rows 100/10/5/5,500/50/3/2] [--skew]

Without ``--flower-python`` only rayfed-bpt runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROWS = "100/10/5/5,500/50/3/2,1000/100/2/1"
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
       "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


class PeakPSS:
    """Peak of the summed PSS of a process and its descendants (``rss``: of their RSS,
    which counts a page shared by forked processes once in each)."""

    def __init__(self, pid: int, every: float = 0.5):
        self.root, self.every, self.peak, self.rss = psutil.Process(pid), every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = rss = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    m = p.memory_full_info()
                    total, rss = total + m.pss, rss + m.rss
                except psutil.Error:
                    pass
            self.peak, self.rss = max(self.peak, total), max(self.rss, rss)
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def synthetic_partition(root: Path, m: int, s: int) -> Path:
    """M iid clients of 32*S training and 2 test images each (10 smooth class prototypes x
    contrast + noise, as the Flower workload), written once."""
    from rayfed_bpt.data import DatasetInfo, PartitionConfig, load_dataset, write_partition
    from rayfed_bpt.data.dataset import save_dataset
    from rayfed_bpt.data.schema import make_table

    out = root / "partitions" / f"synthetic-M{m}-S{s}"
    if (out / "manifest.json").exists():
        return out
    rng = np.random.default_rng(2024)
    n_train, n_test = m * 32 * s, m * 2
    n = n_train + n_test
    protos = rng.uniform(0, 255, (10, 8, 8, 3)).repeat(4, 1).repeat(4, 2)
    y = rng.integers(0, 10, n)
    x = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(0, n, 20_000):  # in slices: 10,000 clients' floats would be ~16 GB
        j = min(n, i + 20_000)
        x[i:j] = np.clip(protos[y[i:j]] * rng.uniform(0.5, 1.5, (j - i, 1, 1, 1))
                         + rng.normal(0, 60, (j - i, 32, 32, 3)), 0, 255)
    info = DatasetInfo("synthetic", [str(c) for c in range(10)], ["synthetic"], (32, 32, 3))
    table = make_table(info, x, y, np.zeros(n, np.int64),
                       np.array(["train"] * n_train + ["test"] * n_test))
    path = save_dataset(table, info, root / "datasets" / f"synthetic-M{m}-S{s}.arrow")
    return write_partition(load_dataset(path), PartitionConfig("iid", num_clients=m,
                                                               min_samples=0), out)


def run_rayfed(part: Path, m: int, k: int, r: int, s: int, out: Path, *extra: str) -> dict:
    name = f"M{m}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "rayfed_bpt.cli", "run", "--no-progress", "--set",
           f"data.partition_dir={part}", "algorithm.name=fedavg_vpt",
           "algorithm.options.prompt_len=10", "train.batch_size=32", "train.local_epochs=1",
           f"train.clients_per_round={k}", f"train.rounds={r}", f"train.eval_every={r}",
           "tracking.enabled=false", f"runtime.output_dir={out}", f"runtime.run_name={name}",
           "runtime.num_actors=2", *extra]
    if s:
        cmd.append(f"data.max_train_per_client={32 * s}")
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    mem = PeakPSS(proc.pid)
    log = proc.communicate()[0]
    total = time.time() - t0
    pss = mem.stop()
    if proc.returncode != 0:
        raise RuntimeError(log[-3000:])
    from rayfed_bpt.engine import load_checkpoint

    history = load_checkpoint(out / name)[0].history
    train = [h["round_seconds"] - h.get("eval_seconds", 0.0) for h in history]
    steady = statistics.mean(train[1:]) if len(train) > 1 else train[0]
    return {"total": total, "steady": steady, "non_round": total - r * steady, "pss": pss,
            "round1": train[0]}


def run_flower(py: str, folder: Path, mode: str, m: int, k: int, r: int, s: int,
               out: Path) -> dict:
    res = out / f"{mode}-M{m}-{time.time_ns()}.json"
    cmd = [py, str(folder / "flower_bench.py"), "--mode", mode, "--clients", str(m),
           "--per-round", str(k), "--rounds", str(r), "--local-steps", str(s), "--poll", "0.5",
           "--out", str(res), "--workdir", str(out / res.stem)]
    subprocess.run(cmd, env=ENV, cwd=folder, capture_output=True, text=True, timeout=1800,
                   check=True)
    d = json.loads(res.read_text())
    return {"total": d["total_s"], "steady": d["per_round_s"],
            "non_round": d["total_s"] - r * d["per_round_s"], "pss": d["peak_pss_mib"] / 1024}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(x[key] for x in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=ROWS, help="M/K/R/S,... (default: the issue's three)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--flower-python", help="python of the Flower venv (shared/peers/flower)")
    ap.add_argument("--flower-dir", help="a writable copy of shared/peers/flower")
    ap.add_argument("--skew", action="store_true", help="dynamic vs pinned scheduling")
    ap.add_argument("--work", default="/tmp/rayfed_speed", help="data, runs and logs")
    a = ap.parse_args()
    work = Path(a.work)
    os.environ["RAYFED_BPT_DATA"] = ENV["RAYFED_BPT_DATA"] = str(work / "data")
    systems = ["rayfed-bpt"] + (["reference-mp", "flwr-run"] if a.flower_python else [])
    table = []
    for row in a.rows.split(","):
        m, k, r, s = (int(v) for v in row.split("/"))
        part = synthetic_partition(work / "data", m, s)
        runs: dict[str, list[dict]] = {name: [] for name in systems}
        for rep in range(a.reps):
            for name in systems:  # interleaved: machine drift hits every system alike
                if name == "rayfed-bpt":
                    x = run_rayfed(part, m, k, r, 0, work / "runs")
                else:
                    x = run_flower(a.flower_python, Path(a.flower_dir), name, m, k, r, s,
                                   work / "flower")
                runs[name].append(x)
                print(f"{row} rep {rep + 1} {name}: " + json.dumps(
                    {key: round(v, 2) for key, v in x.items()}), flush=True)
        table.append((row, runs))
    print("\n| M/K/R/S | " + " | ".join(f"{n} s/round" for n in systems)
          + " | rayfed / ref-mp s/round | non-round s (" + " / ".join(systems)
          + ") | peak PSS GB (" + " / ".join(systems) + ") |")
    print("|---" * (len(systems) + 4) + "|")
    for row, runs in table:
        steady = [median(runs[n], "steady") for n in systems]
        ratio = f"{steady[0] / steady[1]:.2f}x" if len(steady) > 1 else "-"
        print(f"| {row} | " + " | ".join(f"{v:.2f}" for v in steady) + f" | {ratio} | "
              + " / ".join(f"{median(runs[n], 'non_round'):.1f}" for n in systems) + " | "
              + " / ".join(f"{median(runs[n], 'pss'):.2f}" for n in systems) + " |")
    if a.skew:
        skew(work, a.reps)


def skew(work: Path, reps: int) -> None:
    """FedAvg-VPT on digits-4 domain_mix with unequal client sizes: dynamic vs pinned."""
    from rayfed_bpt.config import load_config
    from rayfed_bpt.data.recipe import resolve_partition

    cfg = load_config(None, ["data.num_clients=40"])
    part = resolve_partition(cfg.data, 0)
    sizes = [e["num_train"] for e in json.loads((part / "manifest.json").read_text())["clients"]]
    print(f"\nskewed partition: 40 clients, train sizes {min(sizes)}..{max(sizes)} "
          f"(median {statistics.median(sizes):.0f}); 20 per round, 4 rounds, all local data")
    out = {"dynamic": [], "pinned": []}
    for _ in range(reps):
        for mode in out:
            out[mode].append(run_rayfed(part, 40, 20, 4, 0, work / "runs",
                                        f"runtime.schedule={mode}", "data.max_test_per_client=2"))
    for mode, runs in out.items():
        print(f"{mode:8s} s/round {median(runs, 'steady'):.2f}")
    ratio = median(out["dynamic"], "steady") / median(out["pinned"], "steady")
    print(f"dynamic / pinned: {ratio:.2f}x")


if __name__ == "__main__":
    main()
