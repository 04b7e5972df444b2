"""How wide is pFedBayesPT's learned prompt posterior, against how much prompts vary by image?

Trains one main-suite run (the reference loop) and prints, over every client's test
images: sigma(x) of the explicit layer, the spread of psi across mixing draws, and the
between-image spread of the mean prompt. A narrow posterior next to a wide between-image
spread means instance-wise but nearly deterministic prompts (see docs/results_discussion.md).

python benchmarks/prompt_posterior.py [--setting domain_mix] [--seed 1] [--lr 0.03]
"""

from __future__ import annotations

import argparse

import torch

from rayfed_bpt.config import load_config
from rayfed_bpt.engine import run_reference
from rayfed_bpt.experiments import paper_suite


@torch.no_grad()
def posterior_stats(alg, global_state, clients, draws: int = 16) -> dict[str, float]:
    module = alg.load(global_state, {})
    module.eval()
    e = torch.cat([alg.features(c, "test") for c in clients.values()])
    gen = torch.Generator().manual_seed(0)
    psi = module.generator(e, module.generator.sample_noise((draws, len(e)), gen))
    return {
        "sigma_mean": module.sigma(e).mul(0.5).exp().mean().item(),
        "psi_std_across_mixing_draws": psi.std(0).mean().item(),
        "mean_prompt_std_across_images": psi.mean(0).std(0).mean().item(),
        "mean_prompt_abs": psi.mean(0).abs().mean().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--setting", default="domain_mix")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.03, help="the suite's tuned rate")
    args = ap.parse_args()
    suite = paper_suite()
    spec = next(r for r in suite.main_runs({m: args.lr for m in suite.methods})
                if r.method == "pfedbayespt" and r.setting == args.setting
                and r.seed == args.seed)
    cfg = load_config(None, [*spec.overrides, f"train.eval_every={cfg_rounds(spec)}"])
    out: dict[str, dict[str, float]] = {}

    def at_init_and_end(alg, global_state, personal, clients):
        out["initial"] = posterior_stats(alg, alg.init_global(), clients)
        out["trained"] = posterior_stats(alg, global_state, clients)

    acc = run_reference(cfg, log=None, on_finish=at_init_and_end)[-1]["acc_mean"]
    print(f"pfedbayespt, {args.setting}, seed {args.seed}: mean client acc {acc:.3f}")
    for when, st in out.items():
        print(f"  {when:8s} " + "  ".join(f"{k} {v:.4f}" for k, v in st.items()))


def cfg_rounds(spec) -> int:
    return [int(o.split("=")[1]) for o in spec.overrides if o.startswith("train.rounds=")][-1]


if __name__ == "__main__":
    main()
