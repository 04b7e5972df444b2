"""Headroom: can a setting show instance-wise prompts winning at all?

Runs FedAvg-VPT (one global prompt) and the domain oracle (`oracle_domain_vpt`: one
prompt per domain, picked by each image's known domain label) on the paper suite's
settings, same partitions, seeds and learning rate, and prints the oracle gap (paired
over seeds). A setting whose gap is under 1 point cannot show an instance-wise method
beating one global prompt: its table says nothing about instance-wise gains.

python benchmarks/headroom.py [--settings domain_mix8 k_classes] [--seeds 0 1 2]
python benchmarks/headroom.py --quick --settings domain_mix8 --seeds 0   # smallest
"""

from __future__ import annotations

import argparse
import statistics
import sys

from rayfed_bpt.config import load_config
from rayfed_bpt.engine import run_reference
from rayfed_bpt.errors import ConfigError
from rayfed_bpt.experiments import paper_suite

PAIR = ("fedavg_vpt", "oracle_domain_vpt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="+", default=["domain_mix8", "k_classes"],
                    help="settings of the suite")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=0.03, help="both methods' rate")
    ap.add_argument("--quick", action="store_true", help="the quick suite's sizes")
    args = ap.parse_args()
    suite = paper_suite(quick=args.quick)
    try:
        settings = [suite.setting(name) for name in args.settings]
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print("| setting | FedAvg-VPT | domain oracle | gap (paired) | headroom |")
    print("|---|---|---|---|---|")
    for setting in settings:
        name = setting.name
        acc: dict[str, list[float]] = {m: [] for m in PAIR}
        for seed in args.seeds:
            for m in PAIR:
                cfg = load_config(None, list(suite._overrides(setting, m, seed, args.lr,
                                                              curves=False)))
                acc[m].append(100 * run_reference(cfg, log=None)[-1]["acc_mean"])
        gaps = [o - f for f, o in zip(*acc.values())]

        def ms(xs: list[float]) -> str:
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            return f"{statistics.mean(xs):.1f} ± {sd:.1f}"

        verdict = ("none (< 1 point): cannot show instance-wise gains"
                   if statistics.mean(gaps) < 1 else "yes")
        print(f"| {name} | {ms(acc[PAIR[0]])} | {ms(acc[PAIR[1]])} | {ms(gaps)} | {verdict} |",
              flush=True)


if __name__ == "__main__":
    main()
