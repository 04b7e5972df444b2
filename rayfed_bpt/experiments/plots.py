"""The suite report's PNG plots (matplotlib, Agg): curves, per-domain bars, studies,
the headline. Reads the rows ``report`` computes; computes nothing of its own."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from .style import styles
from .suite import FLAGSHIP, NAMES, Suite


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, ax, path: Path, title: str, legend_outside: bool = True) -> None:
    """The common ending of every figure: title, legend, grid, PNG, close."""
    ax.set_title(textwrap.fill(title, 80), fontsize=10 if legend_outside else 9)  # no clipping
    if legend_outside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)


def plot_curves(path: Path, suite: Suite, main: list[dict], setting: str, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    seed = suite.seeds[0]
    look = styles(list(suite.methods))
    for m in suite.methods:
        rec = next((r for r in main if r["setting"] == setting and r["method"] == m
                    and r["seed"] == seed), None)
        if rec is None:
            continue
        ax.plot([h["round"] for h in rec["history"]], [h["acc_mean"] for h in rec["history"]],
                ms=4, lw=2.4 if m == FLAGSHIP else 1.3, label=NAMES[m], **look[m].line())
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(f"mean client test accuracy (seed {seed})")
    ax.grid(alpha=0.3)
    _save(fig, ax, path, title)


def plot_domains(path: Path, rows: list[dict], title: str) -> None:
    plt = _plt()
    doms = list(rows[0]["domains"])
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(7, 2.2 * len(doms)) + 2.5, 4.5))
    look = styles([r["method"] for r in rows])
    for i, r in enumerate(rows):
        xs = np.arange(len(doms)) + (i - (len(rows) - 1) / 2) * width
        ms = [r["domains"][d] for d in doms]
        ax.bar(xs, [m for m, _ in ms], width, yerr=[np.nan_to_num(s) for _, s in ms], capsize=1.5,
               label=NAMES[r["method"]], **look[r["method"]].bar())
    ax.set_xticks(np.arange(len(doms)), doms)
    lo = min(r["domains"][d][0] for r in rows for d in doms if not math.isnan(
        r["domains"][d][0]))
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_ylabel("test accuracy per domain (pooled over clients)")
    _save(fig, ax, path, title)


def plot_study(path: Path, rows: list[dict], title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    xs = np.arange(len(rows))
    ax.errorbar(xs, [r["acc_ms"][0] for r in rows],
                yerr=[np.nan_to_num(r["acc_ms"][1]) for r in rows],
                marker="o", capsize=3, label="mean client acc")
    ax.errorbar(xs, [r["min_ms"][0] for r in rows],
                yerr=[np.nan_to_num(r["min_ms"][1]) for r in rows],
                marker="s", capsize=3, ls="--", label="min client acc")
    ax.set_xticks(xs, [r["value"] + ("*" if r["default"] else "") for r in rows], fontsize=8,
                  rotation=15)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    _save(fig, ax, path, title + "  (* default)", legend_outside=False)


def plot_headline(path: Path, suite: Suite, per: dict[str, dict[str, dict]]) -> None:
    plt = _plt()
    cols = list(per)
    methods = [m for m in suite.methods if any(m in per[s] for s in cols)]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(13, 4.5))
    look = styles(methods)
    for i, m in enumerate(methods):
        xs = np.arange(len(cols)) + (i - (len(methods) - 1) / 2) * width
        ms = [per[s][m]["acc_ms"] if m in per[s] else (math.nan, math.nan) for s in cols]
        ax.bar(xs, [a for a, _ in ms], width, yerr=[np.nan_to_num(b) for _, b in ms], capsize=1.5,
               label=NAMES[m], **look[m].bar())
    ax.set_xticks(np.arange(len(cols)), cols)
    vals = [per[s][m]["acc_ms"][0] for s in cols for m in per[s]]
    ax.set_ylim(max(0.0, min(vals) - 0.05), min(1.0, max(vals) + 0.03))
    ax.set_ylabel("mean client test accuracy")
    _save(fig, ax, path, f"suite {suite.name}: mean ± std over seeds")
