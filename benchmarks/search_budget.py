"""Searchers at equal cost: random+ASHA vs Optuna TPE+ASHA vs BOHB on one space.

Every sweep gets the same budget in trial-rounds (the space's ``budget`` key stops
it once spent) and the same partition; only the searcher and its seed change. For
each searcher and sweep seed it reads the sweep's anytime curve (best validation
metric vs trial-rounds consumed) and reports the best validation metric reached at
25/50/100 % of the budget, and the test metric of the trial that held it (evaluated
once, from that trial's last checkpoint: reporting, not choosing). Sweeps run seed
by seed, the searchers interleaved, so machine noise hits them alike.

    python benchmarks/search_budget.py                       # docs/sweeps.md's table
    python benchmarks/search_budget.py --budget 12 --seeds 0  # a quick look
    python benchmarks/search_budget.py --reuse                # finish a cut-off run
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SEARCHERS = {"random": "asha", "optuna": "asha", "bohb": "bohb"}  # searcher -> scheduler
FRACTIONS = (0.25, 0.5, 1.0)


def sweep(space: dict, searcher: str, seed: int, budget: int, out: Path,
          overrides: list[str], reuse: bool = False) -> Path:
    """Run one sweep as a user would (the CLI); return its folder.

    With ``reuse``, a sweep that already finished under ``out`` with the same space
    file is read back instead of run again (a sweep cut off midway is run afresh).
    """
    sp = dict(space, search=searcher, seed=seed, budget=budget, num_samples=budget,
              name=f"{space['name']}-{searcher}-s{seed}")
    sp["scheduler"] = {**space.get("scheduler", {}), "name": SEARCHERS[searcher]}
    if searcher == "bohb":
        sp["scheduler"].pop("grace_period", None)
    f = out / f"{sp['name']}.yaml"
    text = yaml.safe_dump(sp, sort_keys=False)
    done = list((out / sp["name"] / "sweeps").glob("*/results/anytime.csv"))
    if reuse and len(done) == 1 and f.exists() and f.read_text() == text:
        print(f"{sp['name']}: reused", flush=True)
        return done[0].parent.parent
    shutil.rmtree(out / sp["name"], ignore_errors=True)  # one sweep per folder
    f.write_text(text)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "tune", "--space", str(f),
                        "--output-dir", str(out / sp["name"]), "--set", *overrides],
                       capture_output=True, text=True,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    if r.returncode != 0:
        raise SystemExit(f"{sp['name']} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    [folder] = list((out / sp["name"] / "sweeps").iterdir())
    print(f"{sp['name']}: {time.perf_counter() - t:.0f}s", flush=True)
    return folder


def at_fractions(folder: Path, budget: int) -> list[tuple[float, str]]:
    """(best validation metric, trial holding it) at each fraction of the budget."""
    rows = list(csv.DictReader(open(folder / "results" / "anytime.csv")))
    out = []
    for frac in FRACTIONS:
        spent = [r for r in rows if int(r["trial_rounds"]) <= math.ceil(frac * budget)]
        best = max(spent, key=lambda r: float(r["metric"]))  # the incumbent then
        out.append((float(best["metric"]), best["trial_id"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default=str(REPO / "tune_spaces" / "pfedbayespt.yaml"))
    ap.add_argument("--budget", type=int, default=20, help="trial-rounds per sweep")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--searchers", nargs="+", default=list(SEARCHERS))
    ap.add_argument("--set", nargs="*", default=[], help="overrides of the space's base")
    ap.add_argument("--out", default="rayfed_runs/search_budget")
    ap.add_argument("--reuse", action="store_true",
                    help="read back sweeps that already finished in --out")
    ap.add_argument("--png", default=str(REPO / "docs" / "figures" / "search_budget.png"))
    args = ap.parse_args()
    from rayfed_bpt.engine import evaluate_run

    space = yaml.safe_load(Path(args.space).read_text())
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list] = {s: [] for s in args.searchers}
    curves: dict[str, list] = {s: [] for s in args.searchers}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for searcher in args.searchers:
            folder = sweep(space, searcher, seed, args.budget, out, args.set, args.reuse)
            points = at_fractions(folder, args.budget)
            tests = {}
            for _, trial in points:
                if trial not in tests:
                    tests[trial] = evaluate_run(folder / "trials" / trial, split="test")
            results[searcher].append([(v, tests[t]["acc_mean"]) for v, t in points])
            rows = list(csv.DictReader(open(folder / "results" / "anytime.csv")))
            curves[searcher].append([(int(r["trial_rounds"]), float(r["best_so_far"]))
                                     for r in rows])
    print(f"\n{len(args.seeds)} sweep seeds x {len(args.searchers)} searchers, budget "
          f"{args.budget} trial-rounds each, {time.perf_counter() - t0:.0f}s in all\n")
    head = " | ".join(f"{int(f * 100)} %: val / test" for f in FRACTIONS)
    print(f"| searcher | {head} |")
    print("|---|" + "---|" * len(FRACTIONS))

    def ms(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{100 * statistics.mean(xs):.1f} ± {100 * sd:.1f}"

    for s, per_seed in results.items():
        cells = [f"{ms([r[i][0] for r in per_seed])} / {ms([r[i][1] for r in per_seed])}"
                 for i in range(len(FRACTIONS))]
        print(f"| {s} | " + " | ".join(cells) + " |")
    _plot(curves, args.budget, Path(args.png))
    print(f"\nwrote {args.png}")


def _plot(curves: dict[str, list], budget: int, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s, runs in curves.items():
        xs = list(range(1, budget + 1))
        per_run = []
        for run in runs:  # best so far at each trial-round count (step function)
            best, ys, i = math.nan, [], 0
            for x in xs:
                while i < len(run) and run[i][0] <= x:
                    best = run[i][1]
                    i += 1
                ys.append(best)
            per_run.append(ys)
        mean = [statistics.mean(v) if not any(math.isnan(u) for u in v) else math.nan
                for v in zip(*per_run)]
        ax.step(xs, mean, where="post", label=f"{s} (mean of {len(runs)} seeds)")
    ax.set_xlabel("trial-rounds consumed")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Searchers at equal budget (tune_spaces/pfedbayespt.yaml)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
