"""Importing and reading image data at paper scale: N generated photos at 224 px.

For each N (2,000 / 8,000 / 32,000 by default) an image folder of N photo-like JPEG
sources larger than 224 (sides 256..640, quality 85, two domains, ten classes; made
once under --work and reused) is imported with ``rayfed-bpt data prepare image_folder
--size 224``, as raw pixels and as JPEG (the default), on every core and on one
(``--workers 1``: the single-process importer, in the same run), then partitioned
(20 clients, domain_mix; fewer below 1,000 images) and run for one round of the default algorithm.

- img/s/core: images imported per second per decoding process (all cores), and the
  speed-up over one process;
- peak PSS / RSS GB: the largest summed PSS (and RSS) of the import command and every
  process it started, sampled every 0.2 s (RSS counts pages shared by the forked
  workers once per process: an upper bound);
- dataset / source: the dataset file's bytes over the source JPEGs' bytes;
- partition %: the partition folder's bytes over the dataset's;
- start -> round 1: seconds from ``rayfed-bpt run``'s start until round 1 begins (a
  partition made beforehand; every start checks stamps, not hashes);
- decode ms/32: reading a batch of 32 random rows inside a client (JPEG: decoded on
  one thread) against one training step of the built-in backbone on those 32 images
  (normalisation, resize to its 32 px input, forward and backward to the prompt).

The last lines extrapolate DomainNet (586,575 images, 17.5 GB of source JPEG) on 16
cores from the measured per-core rate, bytes per image and partition bytes per image,
and say so.

    python benchmarks/data_scale.py [--sizes 2000,8000,32000] [--work /tmp/rayfed-data-scale]
    python benchmarks/data_scale.py --sizes 200 --quick   # the smallest (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from runtime_speed import ENV, PeakPSS  # noqa: E402

DOMAINS = ("clipart", "real")
CLASSES = tuple(f"class{c:02d}" for c in range(10))
DOMAINNET = {"images": 586_575, "source_gb": 17.5}


def _make_photos(args: tuple[Path, int, int]) -> int:
    """Sources ``first..last-1`` of the folder ``root``: smooth colour waves, edges, noise."""
    from PIL import Image

    root, first, last = args
    total = 0
    for i in range(first, last):
        rng = np.random.default_rng(i)
        w, h = int(rng.integers(256, 640)), int(rng.integers(256, 480))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = 128 + 50 * np.sin(xx[..., None] * rng.uniform(0.004, 0.04, 3).astype(np.float32)
                                + yy[..., None] * rng.uniform(0.004, 0.04, 3).astype(np.float32))
        img[int(h * rng.uniform(0.2, 0.8)):, : int(w * rng.uniform(0.2, 0.8))] *= 0.6
        img += rng.normal(0, 9, img.shape).astype(np.float32)
        f = root / DOMAINS[i % 2] / CLASSES[i // 2 % 10] / f"{i:06d}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(f, quality=85)
        total += f.stat().st_size
    return total


def source_folder(work: Path, n: int) -> tuple[Path, int]:
    """A folder of ``n`` sources (links to the first ``n`` of one generated set), and
    their bytes."""
    full = work / "sources" / "all"
    have = len(list(full.rglob("*.jpg"))) if full.exists() else 0
    if have < n:
        for d in DOMAINS:
            for c in CLASSES:
                (full / d / c).mkdir(parents=True, exist_ok=True)
        step = 500
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_make_photos, [(full, i, min(i + step, n))
                                         for i in range(have, n, step)]))
    folder = work / "sources" / f"n{n}"
    if not folder.exists():
        tmp = folder.with_name(folder.name + ".tmp")
        for i in range(n):
            rel = Path(DOMAINS[i % 2]) / CLASSES[i // 2 % 10] / f"{i:06d}.jpg"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).symlink_to(full / rel)
        tmp.rename(folder)
    size = sum((full / p.relative_to(folder)).stat().st_size for p in folder.rglob("*.jpg"))
    return folder, size


def cli(*args: str, watch: bool = False) -> tuple[str, float, float, float]:
    """Run ``rayfed-bpt ARGS``; (output, seconds, peak PSS GB, peak RSS GB)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rayfed_bpt.cli", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mem = PeakPSS(proc.pid, every=0.2) if watch else None
    out = proc.communicate()[0]
    seconds = time.perf_counter() - t
    pss = mem.stop() if mem else 0.0
    if proc.returncode != 0:
        raise RuntimeError(f"rayfed-bpt {' '.join(args)} failed:\n{out[-3000:]}")
    return out, seconds, pss, (mem.rss / 2**30 if mem else 0.0)


def start_to_round1(work: Path, part: Path) -> float:
    """Seconds from ``rayfed-bpt run``'s start until round 1 begins (1 round, small)."""
    name = f"r{time.time_ns()}"
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayfed_bpt.cli", "run", "--no-progress", "--set",
         f"data.partition_dir={part}", "train.rounds=1", "data.max_train_per_client=32",
         "data.max_test_per_client=8", "tracking.enabled=false",
         f"runtime.output_dir={work / 'runs'}", f"runtime.run_name={name}"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if seen is None and re.match(r"\s*round 1/1", line):
            seen = time.time() - t0
    proc.wait()
    if proc.returncode != 0 or seen is None:
        raise RuntimeError("".join(lines)[-3000:])
    from rayfed_bpt.engine import load_checkpoint

    return seen - load_checkpoint(work / "runs" / name)[0].history[0]["round_seconds"]


def decode_vs_step(dataset: Path, batch: int = 32, reps: int = 20) -> tuple[float, float]:
    """(ms to read a batch of ``batch`` random rows, ms of one training step on them)."""
    import torch

    from rayfed_bpt.data import load_dataset
    from rayfed_bpt.models import PromptedViT, create_backbone, normalize

    torch.set_num_threads(1)
    ds = load_dataset(dataset, verify=False)
    rng = np.random.default_rng(0)
    picks = [np.sort(rng.choice(len(ds), batch, replace=False)) for _ in range(reps)]
    t = time.perf_counter()
    images = [ds.image_column.take(p) for p in picks]
    read_ms = (time.perf_counter() - t) / reps * 1e3
    torch.manual_seed(0)
    pv = PromptedViT(create_backbone())
    prompt = torch.zeros(batch, 8, pv.embed_dim, requires_grad=True)
    for i, x in enumerate(images):
        if i == 3:
            t = time.perf_counter()
        pv(normalize(x, pv.vit), prompt).sum().backward()
    return read_ms, (time.perf_counter() - t) / (reps - 3) * 1e3


def measure(work: Path, n: int, quick: bool) -> list[dict]:
    folder, source_bytes = source_folder(work, n)
    rows = []
    for pixels in ("jpeg", "raw"):
        out = work / "datasets" / f"n{n}-{pixels}.arrow"
        common = ["data", "prepare", "image_folder", "--source", str(folder), "--size", "224",
                  "--pixels", pixels, "--out", str(out), "--overwrite"]
        _, seconds, pss, rss = cli(*common, watch=True)
        workers = os.cpu_count() or 1
        single = by_ray = None
        if not quick:
            single = cli(*common, "--workers", "1")[1]
            if pixels == "jpeg":  # the same import as Ray tasks (a local Ray it starts)
                by_ray = cli(*common, "--ray")[1]
        t = time.perf_counter()
        part = work / "partitions" / f"n{n}-{pixels}"
        clients = max(2, min(20, n // 50))
        cli("data", "partition", "--dataset", str(out), "--num-clients", str(clients), "--out",
            str(part), "--overwrite")
        part_s = time.perf_counter() - t
        part_bytes = sum(p.stat().st_size for p in part.iterdir())
        read_ms, step_ms = decode_vs_step(out)
        rows.append({
            "images": n, "pixels": pixels, "import_s": seconds,
            "img_per_s": n / seconds, "img_per_s_core": n / seconds / workers,
            "speedup": (single / seconds) if single else None, "ray_s": by_ray,
            "peak_pss_gb": pss, "peak_rss_gb": rss,
            "dataset_mb": out.stat().st_size / 2**20, "source_mb": source_bytes / 2**20,
            "dataset_over_source": out.stat().st_size / source_bytes,
            "partition_kb": part_bytes / 2**10, "partition_s": part_s,
            "partition_pct": 100 * part_bytes / out.stat().st_size,
            "start_to_round1_s": start_to_round1(work, part),
            "read_ms_32": read_ms, "step_ms_32": step_ms})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2000,8000,32000")
    ap.add_argument("--work", default="/tmp/rayfed-data-scale")
    ap.add_argument("--quick", action="store_true", help="no single-process import")
    args = ap.parse_args()
    work = Path(args.work)
    rows = [r for n in map(int, args.sizes.split(",")) for r in measure(work, n, args.quick)]
    print(f"\n{os.cpu_count()} cores here\n")
    print("| images | pixels | import s | as Ray tasks s | img/s/core | speed-up vs 1 process "
          "| peak PSS GB (RSS) | dataset / source | partition % | start -> round 1 s | "
          "read ms/32 | step ms/32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        ray = f"{r['ray_s']:.1f}" if r["ray_s"] else "-"
        print(f"| {r['images']:,} | {r['pixels']} | {r['import_s']:.1f} | {ray} | "
              f"{r['img_per_s_core']:.0f} | {speed} | {r['peak_pss_gb']:.2f} "
              f"({r['peak_rss_gb']:.2f}) | {r['dataset_over_source']:.2f} | "
              f"{r['partition_pct']:.3f} | {r['start_to_round1_s']:.1f} | "
              f"{r['read_ms_32']:.1f} | {r['step_ms_32']:.0f} |")
    jpeg = max((r for r in rows if r["pixels"] == "jpeg"), key=lambda r: r["images"])
    raw = max((r for r in rows if r["pixels"] == "raw"), key=lambda r: r["images"])
    n, k = DOMAINNET["images"], jpeg["images"]
    print(f"\nDomainNet estimate (jpeg, extrapolated from {k:,} generated images, not "
          f"measured): {n:,} images decoded on 16 cores at {jpeg['img_per_s_core']:.0f} img/s "
          f"per core: {n / (16 * jpeg['img_per_s_core']) / 60:.0f} min (plus reading "
          f"{DOMAINNET['source_gb']} GB of source and one serial copy of the result); dataset "
          f"{n * jpeg['dataset_mb'] * 2**20 / k / 1e9:.1f} GB at these photos' "
          f"{jpeg['dataset_mb'] * 2**10 / k:.1f} KiB an image ({jpeg['dataset_over_source']:.2f}"
          f" of their source; real photos differ); a partition "
          f"{n * jpeg['partition_kb'] * 1024 / k / 1e6:.1f} MB; peak import memory as "
          f"measured (flat in N). Raw: {n * raw['dataset_mb'] * 2**20 / raw['images'] / 1e9:.1f}"
          " GB, its serial copy bound by the disk.")

if __name__ == "__main__":
    main()
