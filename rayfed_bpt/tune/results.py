"""A finished sweep's results: the choice (on validation), the chosen trial's test
metrics (evaluated once, here), the table, the anytime curve and the plots."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

from ..config import ExperimentConfig, from_dict
from ..errors import RayfedError
from .space import SweepSpace


def active_point(sp: SweepSpace, point: dict) -> dict:
    """The point's values that act: a conditional key whose condition fails is None."""
    out: dict = {}
    for d in sp.dims:
        ok = all(out.get(k) == v for k, v in d.when.items())
        out[d.key] = point.get(d.key) if ok else None
    return out


def anytime_curve(events: list[tuple[float, str, int, float]], mode: str) -> list[dict]:
    """Best metric found so far vs trial-rounds consumed: ``events`` are (wall time,
    trial, round, metric) of every reported round, in any order."""
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    rows, best = [], None
    for i, (t, trial, rnd, v) in enumerate(sorted(events), start=1):
        if isinstance(v, float) and math.isfinite(v) and (best is None or better(v, best)):
            best = v
        rows.append({"trial_rounds": i, "wall_time": t, "trial_id": trial, "round": rnd,
                     "metric": v, "best_so_far": best})
    return rows


def summarize(sp: SweepSpace, results, sweep_dir: Path, rounds: int) -> dict:
    """Choose the best finished trial by the (validation) metric, evaluate its test split
    once, and write results/: best_config.yaml, results.csv, anytime.csv and PNGs."""
    from ..engine import evaluate_run

    out = sweep_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    rows, curves, events = [], {}, []
    for r in results:
        if r.config is None or ("round" not in (r.metrics or {}) and not r.error):
            continue  # never started (a spent budget stops the sweep before it)
        trial_id = r.metrics.get("trial_id", Path(r.path).name)
        hist = r.metrics_dataframe
        rows.append({"trial_id": trial_id, **active_point(sp, r.config),
                     sp.metric: r.metrics.get(sp.metric), "rounds": r.metrics.get("round", 0),
                     "stopped_early": r.metrics.get("round", 0) < rounds,
                     "error": str(r.error)[:200] if r.error else ""})
        if hist is not None and sp.metric in hist:
            curves[trial_id] = (list(hist["round"]), list(hist[sp.metric]))
            if "wall_time" in hist:
                events += [(float(t), trial_id, int(n), float(v)) for t, n, v in
                           zip(hist["wall_time"], hist["round"], hist[sp.metric])]
    ok = [row for row in rows if isinstance(row[sp.metric], int | float)
          and math.isfinite(row[sp.metric])]
    if not ok:
        raise RayfedError(f"no trial of the sweep reported {sp.metric}; see "
                          f"{sweep_dir / 'tune'} for the trials' errors")
    # The best trial by its last reported metric, among trials that ran every round.
    finished = [row for row in ok if not row["stopped_early"]] or ok
    best = (max if sp.mode == "max" else min)(finished, key=lambda row: row[sp.metric])
    best_point = {k: best[k] for k in sp.keys}
    # The chosen config's test split, evaluated once: nothing above read it.
    best_test = evaluate_run(sweep_dir / "trials" / best["trial_id"], split="test")
    cfg = sp.trial_config(best_point)
    cfg.runtime.run_name = None
    cfg.train.eval_test = True  # a run of the chosen config reports its test metrics
    cfg.train.eval_every = from_dict(ExperimentConfig, sp.base).train.eval_every  # not Tune's 1
    (out / "best_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    anytime = anytime_curve(events, sp.mode)
    if anytime:
        with open(out / "anytime.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(anytime[0]))
            w.writeheader()
            w.writerows(anytime)
    _plots(sp, ok, curves, anytime, out)
    table = format_table(rows, list(rows[0]))
    print(table)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in best_test.items()
                      if k in ("acc_mean", "acc_min") and isinstance(v, float))
    print(f"chosen on {sp.metric} ({best[sp.metric]:.4f}); its test split, evaluated once: "
          f"{shown}")
    return {"best_metric": best[sp.metric], "best_trial": best["trial_id"],
            "best_config_path": str(out / "best_config.yaml"), "best_point": best_point,
            "best_test": best_test, "num_trials": len(rows),
            "num_stopped_early": sum(row["stopped_early"] for row in rows), "rows": rows,
            "anytime": anytime, "table": table}


def format_table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(fmt(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _plots(sp: SweepSpace, rows: list[dict], curves: dict, anytime: list[dict],
           out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if sp.dims:
        fig, axes = plt.subplots(1, len(sp.dims), figsize=(4 * len(sp.dims), 3.5),
                                 squeeze=False)
        for ax, d in zip(axes[0], sp.dims):
            used = [r for r in rows if r[d.key] is not None]
            xs = [r[d.key] for r in used]
            numeric = all(isinstance(x, int | float) for x in xs)
            ax.scatter(xs if numeric else [str(x) for x in xs], [r[sp.metric] for r in used],
                       c=["tab:red" if r["stopped_early"] else "tab:blue" for r in used])
            if d.kind == "loguniform":
                ax.set_xscale("log")
            ax.set_xlabel(d.key.replace("algorithm.options.", ""))
            ax.set_ylabel(sp.metric)
        fig.suptitle(f"{sp.name}: {sp.metric} per trial (red: stopped early)")
        fig.tight_layout()
        fig.savefig(out / "metric_vs_hyperparameters.png", dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for trial_id, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", label=trial_id)
    ax.set_xlabel("round")
    ax.set_ylabel(sp.metric)
    ax.set_title(f"{sp.name}: {sp.metric} vs round, every trial")
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_round.png", dpi=100)
    plt.close(fig)
    if anytime:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.step([a["trial_rounds"] for a in anytime], [a["best_so_far"] for a in anytime],
                where="post")
        ax.set_xlabel("trial-rounds consumed")
        ax.set_ylabel(f"best {sp.metric} so far")
        ax.set_title(f"{sp.name} ({sp.search}): anytime curve")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "anytime.png", dpi=100)
        plt.close(fig)
