"""Does pFedBayesPT's Bayesian part act? Its per-round diagnostics, for one suite run.

Trains one main-suite run (the reference loop) and prints, per round, the diagnostics
every run logs to MLflow: the weight of psi_0 inside the SIVI log-mean-exp (near 1: no
entropy credit, Gaussian VI in effect), sigma of the explicit layer beside |psi|, the
spread of psi across mixing draws beside its spread across images, the train NLL and
KL estimate, and the test NLL / ECE beside accuracy.

python benchmarks/prompt_posterior.py [--setting domain_mix8] [--seed 1] [--lr 0.03]
python benchmarks/prompt_posterior.py --quick --seed 0    # smallest: the quick suite's sizes
"""

from __future__ import annotations

import argparse
import sys

from rayfed_bpt.config import load_config
from rayfed_bpt.engine import run_reference
from rayfed_bpt.errors import ConfigError
from rayfed_bpt.experiments import paper_suite

SHOWN = ("train_w_psi0", "train_sigma_mean", "train_psi_abs_mean", "train_mix_spread",
         "train_image_spread", "train_nll", "train_kl", "acc_mean", "nll_mean", "ece_mean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--setting", default="domain_mix8", help="a setting of the suite")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.03, help="the suite's tuned rate")
    ap.add_argument("--set", nargs="*", default=[], help="more overrides, e.g. "
                    "algorithm.options.init_logvar=0")
    ap.add_argument("--quick", action="store_true", help="the quick suite's sizes")
    args = ap.parse_args()
    suite = paper_suite(quick=args.quick)
    try:
        suite.setting(args.setting)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    runs = [r for r in suite.main_runs({m: args.lr for m in suite.methods})
            if r.method == "pfedbayespt" and r.setting == args.setting]
    spec = next((r for r in runs if r.seed == args.seed), None)
    if spec is None:
        sys.exit(f"error: the suite runs pfedbayespt on {args.setting} with seeds "
                 f"{sorted(r.seed for r in runs)}, not {args.seed}")
    cfg = load_config(None, [*spec.overrides, *args.set])
    cfg.train.eval_every = 1  # test NLL / ECE every round too
    history = run_reference(cfg, log=None)
    print(f"pfedbayespt, {args.setting}, seed {args.seed}")
    print("round  " + "  ".join(k.removeprefix("train_") for k in SHOWN))
    for m in history:
        print(f"{m['round']:5d}  " + "  ".join(f"{m.get(k, float('nan')):.4f}" for k in SHOWN))


if __name__ == "__main__":
    main()
