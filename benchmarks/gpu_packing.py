"""On a GPU machine: four client actors share one GPU at 0.25 each, each on cuda
with its memory capped; then one actor with the whole GPU, for speed.

    python benchmarks/gpu_packing.py PARTITION_DIR OUT_DIR
"""

from __future__ import annotations

import sys

import ray
import torch

from rayfed_bpt.config import load_config
from rayfed_bpt.runtime import run_experiment


def main(partition: str, out: str) -> None:
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else '-'}")
    ray.init(num_cpus=8, num_gpus=1, include_dashboard=False)
    for n, share in ((4, 0.25), (1, 1.0)):
        cfg = load_config(None, [
            f"data.partition_dir={partition}", f"runtime.num_actors={n}",
            f"runtime.gpus_per_actor={share}", "runtime.cpus_per_actor=2",
            "tracking.enabled=false", "train.rounds=3", "train.fraction=1.0",
            "train.eval_every=1", f"runtime.output_dir={out}", f"runtime.run_name=gpu{n}"])
        s = run_experiment(cfg, show_progress="lines", log=print)
        print(f"--- {n} actor(s) x {share} GPU: start-up {s['startup_seconds']:.1f} s, "
              f"round seconds {[round(x, 2) for x in s['round_seconds']]}")
        for a, m in zip(s["actors"], s["actor_memory"]):
            cap = (m.get("cuda_memory_fraction") or 0) * m.get("cuda_total", 0)
            print(f"  actor {a['index']}: pid {a['pid']} device {a['device']} gpu_ids "
                  f"{a['gpu_ids']} clients {a['clients']} cuda max allocated "
                  f"{m.get('cuda_max_allocated', 0) / 2**20:.0f} MiB of a cap of "
                  f"{cap / 2**30:.1f} GiB")
        assert all(a["device"] == "cuda" and a["gpu_ids"] == ["0"] for a in s["actors"])
    print("GPU packing check passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
