"""Time partitioning: 1,000 clients over 100,000 examples (target: seconds).

Prints the time to compute the assignment (pure numpy) for each partitioner, and
to write a partition (every client's row numbers and the manifest) and, for
comparison, one that copies every client's rows into its own file.

    python benchmarks/partition_speed.py [--examples 100000] [--clients 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from rayfed_bpt.data import PartitionConfig, load_dataset, partition_indices, save_dataset
from rayfed_bpt.data.schema import DatasetInfo, make_table
from rayfed_bpt.data.shards import write_partition


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--write", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, C, D = args.examples, 10, 4
    labels, domains = rng.integers(0, C, n), rng.integers(0, D, n)
    splits = np.where(rng.random(n) < 0.2, "test", "train")
    print(f"{n} examples, {args.clients} clients")
    options = {"dirichlet": {"label_alpha": 0.5}, "k_classes": {"k": 2}}
    for name in ("iid", "dirichlet", "k_classes", "domain", "domain_mix"):
        cfg = PartitionConfig(name, num_clients=args.clients, min_samples=5,
                              **options.get(name, {}))
        t = time.perf_counter()
        partition_indices(cfg, labels, domains, splits == "train", C, D)
        print(f"  assign {name:<11} {time.perf_counter() - t:6.2f} s")
    if not args.write:
        return
    with tempfile.TemporaryDirectory() as tmp:
        info = DatasetInfo(
            "bench", [str(i) for i in range(C)], [f"d{i}" for i in range(D)], (32, 32, 3)
        )
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        path = save_dataset(
            make_table(info, images, labels, domains, splits), info, Path(tmp) / "bench.arrow"
        )
        ds = load_dataset(path)
        cfg = PartitionConfig("domain_mix", num_clients=args.clients, min_samples=5)
        for layout in ("indices", "files"):
            t = time.perf_counter()
            out = write_partition(ds, cfg, Path(tmp) / layout, layout=layout)
            size = sum(p.stat().st_size for p in out.iterdir())
            print(f"  assign + write {args.clients} clients as {layout} (domain_mix, "
                  f"{images.nbytes / 2**20:.0f} MiB of images): {time.perf_counter() - t:6.2f} s"
                  f", {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
