"""Does pFedBayesPT's Bayesian part act? Its per-round diagnostics, for one suite run.

Trains one main-suite run (the reference loop) and prints, per round, the diagnostics
every run logs to MLflow: the weight of psi_0 inside the SIVI log-mean-exp (near 1: no
entropy credit, Gaussian VI in effect), sigma of the explicit layer beside |psi|, the
spread of psi across mixing draws beside its spread across images, the train NLL and
KL estimate, and the test NLL / ECE beside accuracy.

python benchmarks/prompt_posterior.py [--setting domain_mix] [--seed 1] [--lr 0.03]
"""

from __future__ import annotations

import argparse

from rayfed_bpt.config import load_config
from rayfed_bpt.engine import run_reference
from rayfed_bpt.experiments import paper_suite

SHOWN = ("train_w_psi0", "train_sigma_mean", "train_psi_abs_mean", "train_mix_spread",
         "train_image_spread", "train_nll", "train_kl", "acc_mean", "nll_mean", "ece_mean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--setting", default="domain_mix")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.03, help="the suite's tuned rate")
    ap.add_argument("--set", nargs="*", default=[], help="more overrides, e.g. "
                    "algorithm.options.init_logvar=0")
    args = ap.parse_args()
    suite = paper_suite()
    spec = next(r for r in suite.main_runs({m: args.lr for m in suite.methods})
                if r.method == "pfedbayespt" and r.setting == args.setting
                and r.seed == args.seed)
    cfg = load_config(None, [*spec.overrides, *args.set])
    cfg.train.eval_every = 1  # test NLL / ECE every round too
    history = run_reference(cfg, log=None)
    print(f"pfedbayespt, {args.setting}, seed {args.seed}")
    print("round  " + "  ".join(k.removeprefix("train_") for k in SHOWN))
    for m in history:
        print(f"{m['round']:5d}  " + "  ".join(f"{m.get(k, float('nan')):.4f}" for k in SHOWN))


if __name__ == "__main__":
    main()
