"""A short reference run of every method on one partition; prints a Markdown table.

python benchmarks/reference_table.py [--clients 10] [--rounds 5] [--max-train 200]
"""

from __future__ import annotations

import argparse
import time

from rayfed_bpt.catalog import list_algorithms
from rayfed_bpt.config import load_config
from rayfed_bpt.engine import run_reference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-train", type=int, default=200)
    ap.add_argument("--max-test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="*", default=list_algorithms())
    args = ap.parse_args()
    rows = []
    for name in args.methods:
        cfg = load_config(
            None,
            [
                f"seed={args.seed}",
                f"data.num_clients={args.clients}",
                f"data.max_train_per_client={args.max_train}",
                f"data.max_test_per_client={args.max_test}",
                f"train.rounds={args.rounds}",
                f"algorithm.name={name}",
                f"train.eval_every={args.rounds}",
            ],
        )
        t = time.perf_counter()
        m = run_reference(cfg, log=None)[-1]
        rows.append((name, m, time.perf_counter() - t))
        print(f"{name}: {m['acc_mean']:.3f}", flush=True)
    domains = [k for k in rows[0][1] if k.startswith("domain_acc/")]
    print(
        f"\ndigits4 domain_mix, {args.clients} clients, {args.rounds} rounds, "
        f"<= {args.max_train} train / {args.max_test} test per client, seed {args.seed}\n"
    )
    print(
        "| method | mean acc | std | min | global | "
        + " | ".join(d.split("/")[1] for d in domains)
        + " | seconds |"
    )
    print("|---" * (6 + len(domains)) + "|")
    for name, m, sec in rows:
        print(
            f"| {name} | {m['acc_mean']:.3f} | {m['acc_std']:.3f} | {m['acc_min']:.3f} | "
            f"{m['global_acc']:.3f} | "
            + " | ".join(f"{m[d]:.3f}" for d in domains)
            + f" | {sec:.0f} |"
        )


if __name__ == "__main__":
    main()
