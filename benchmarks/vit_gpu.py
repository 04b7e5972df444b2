"""On a GPU: ViT-B/16 prompt steps at paper scale, and a federated ViT-B run on 4 actors.

1. A prompt-tuning step of a (random-init, or ``--weights``) ViT-B/16 at 224 px with 10
   prompt tokens, at batch 32 and 128, fp32 (TF32) and bf16: images/s and
   ``torch.cuda.max_memory_allocated``; then the batched group pass of 1, 2 and 4
   clients of batch 32 in bf16 (what ``runtime.group_size`` runs).
2. The memory budget of a 0.25 share: bytes an image costs (measured), the group size,
   evaluation chunk and actors per GPU it gives (``engine.budget``).
3. With ``--run``: a 10-client x 2-round pFedBayesPT run with 4 actors x 0.25 GPU on a
   generated 224-px JPEG data set, sampling ``nvidia-smi`` for the share of each
   round the GPU is busy.

    python benchmarks/vit_gpu.py --out gpu_out [--weights vit_b16.safetensors] [--run]

Prints a table; about 4 minutes on an H100 (``benchmarks/gpu_vit_check.sh`` runs it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch


def step_rate(pv, batch: int, precision: str, steps: int = 10) -> tuple[float, float]:
    """(images/s, peak MiB) of forward + backward to the prompt at ``batch``."""
    pv.set_precision(precision)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    prompt = torch.zeros(batch, 10, pv.embed_dim, device="cuda", requires_grad=True)
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            t = time.perf_counter()
        pv(x, prompt).sum().backward()
    torch.cuda.synchronize()
    rate = batch * steps / (time.perf_counter() - t)
    return rate, torch.cuda.max_memory_allocated() / 2**20


class Busy:
    """The GPU's utilisation, sampled every 100 ms by nvidia-smi while a block runs."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True).stdout.split()
            if out:
                self.samples.append((time.time(), float(out[0])))
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> float:
        got = [u for t, u in self.samples if start <= t <= end]
        return sum(got) / len(got) if got else float("nan")


def federated_run(out: Path, weights: Path) -> None:
    import numpy as np
    import ray
    from PIL import Image

    from rayfed_bpt.config import load_config
    from rayfed_bpt.data import prepare
    from rayfed_bpt.engine import load_checkpoint
    from rayfed_bpt.runtime import run_experiment

    rng = np.random.default_rng(0)
    src = out / "src"
    for i in range(600):
        f = src / ["clipart", "real"][i % 2] / f"c{i // 2 % 10}" / f"{i}.jpg"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (280, 320, 3), dtype=np.uint8)).save(f)
    data = prepare("image_folder", path=src, out=out / "d.arrow", size=224, overwrite=True,
                   show=False)
    ray.init(num_cpus=8, num_gpus=1, include_dashboard=False)
    cfg = load_config("domainnet10", [
        f"data.dataset={data}", f"backbone.checkpoint={weights}", "data.num_clients=10",
        "train.rounds=2", "train.fraction=1.0", "train.eval_every=1",
        "runtime.num_actors=4", "runtime.gpus_per_actor=0.25", "runtime.cpus_per_actor=2",
        "tracking.enabled=false", f"runtime.output_dir={out / 'runs'}",
        "runtime.run_name=vit_b_4x025"])
    with Busy() as busy:
        s = run_experiment(cfg, show_progress="lines", log=print)
    history = load_checkpoint(out / "runs" / "vit_b_4x025")[0].history
    end = s["actors_ready_at"]  # round 1 starts when the actors are up
    print("\n| round | train s | eval s | round s | GPU busy % |\n|---|---|---|---|---|")
    for h in history:
        start, end = end, end + h["round_seconds"]
        print(f"| {h['round']} | {h['train_seconds']:.1f} | {h.get('eval_seconds', 0):.1f} | "
              f"{h['round_seconds']:.1f} | {busy.between(start, end):.0f} |")
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_out")
    ap.add_argument("--weights", help="a ViT-B/16 weights file (default: random init, saved)")
    ap.add_argument("--run", action="store_true", help="the 10-client, 4-actor run too")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("vit_gpu.py needs a CUDA GPU")
    import timm
    from safetensors.torch import save_file

    from rayfed_bpt.engine.budget import actors_per_gpu, plan
    from rayfed_bpt.models import PromptedViT, create_backbone
    from rayfed_bpt.models.memory import probe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights) if args.weights else out / "vit_b16_random.safetensors"
    if not weights.exists():
        save_file(timm.create_model("vit_base_patch16_224").state_dict(), weights)
    pv = PromptedViT(create_backbone("file", "vit_base_patch16_224", str(weights))).cuda()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, timm {timm.__version__}")
    print("\n| batch | precision | images/s | max allocated MiB |\n|---|---|---|---|")
    rates = {}
    for batch in (32, 128):
        for precision in ("fp32", "bf16"):
            rates[batch, precision] = step_rate(pv, batch, precision)
            print(f"| {batch} | {precision} | {rates[batch, precision][0]:,.0f} | "
                  f"{rates[batch, precision][1]:,.0f} |")
    print(f"\nbf16 / fp32 at 128: {rates[128, 'bf16'][0] / rates[128, 'fp32'][0]:.2f}x")
    print("\n| group of batch-32 clients | images/s (bf16) | max allocated MiB |\n|---|---|---|")
    for group in (1, 2, 4):
        rate, peak = step_rate(pv, 32 * group, "bf16")
        print(f"| {group} | {rate:,.0f} | {peak:,.0f} |")
    cost = probe(pv, 10)
    total = torch.cuda.get_device_properties(0).total_memory
    sized = plan(int(0.25 * total), cost, 32, 9)
    print(f"\nbudget of a 0.25 share ({0.25 * total / 2**30:.1f} GiB), bf16: "
          f"{cost['train_bytes_per_image'] / 2**20:.1f} MiB an image training, "
          f"{cost['infer_bytes_per_image'] / 2**20:.1f} MiB in a forward (measured) -> "
          f"group {sized['group_size']}, evaluation chunk {sized['eval_chunk']}, "
          f"{actors_per_gpu(total, cost, 32, sized['group_size'])} actors per GPU")
    del pv
    torch.cuda.empty_cache()
    if args.run:
        federated_run(out, weights)


if __name__ == "__main__":
    main()
