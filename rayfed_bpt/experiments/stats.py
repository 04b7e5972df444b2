"""The paired comparisons of a suite's report: per-seed differences, the verdict rule,
and the sentences they give (pFedBayesPT against the best baseline, its ablations, the
oracle's headroom). Plain numpy; checked against hand computations in the tests."""

from __future__ import annotations

import math

import numpy as np

from .suite import ABLATIONS, FLAGSHIP, NAMES, REFERENCES


def final(rec: dict) -> dict:
    return rec["history"][-1]


def mean_std(xs) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None and not math.isnan(x)], float)
    if not len(a):
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def fmt(m: float, s: float = math.nan) -> str:
    """A percentage, with ``± s`` when there was more than one seed."""
    if math.isnan(m):
        return "n/a"
    return f"{m * 100:.1f}" if math.isnan(s) else f"{m * 100:.1f} ± {s * 100:.1f}"


def paired_word(d: np.ndarray) -> str:
    """The verdict rule on paired (per-seed) differences: "beats" only when every seed
    agrees or the mean exceeds 2 standard errors (and there are at least 2 seeds),
    "is behind" symmetrically, "is level with" otherwise."""
    if len(d) < 2:
        return "is level with"
    se = d.std(ddof=1) / math.sqrt(len(d))
    if (d > 0).all() or d.mean() > 2 * se:
        return "beats"
    if (d < 0).all() or d.mean() < -2 * se:
        return "is behind"
    return "is level with"


def paired(a: dict, b: dict) -> np.ndarray:
    """Per-seed differences a - b of the mean client accuracy, on the seeds both ran."""
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
    return np.asarray([a["acc"][a["seeds"].index(s)] - b["acc"][b["seeds"].index(s)]
                       for s in seeds])


def paired_text(d: np.ndarray) -> str:
    spread = f" ± {d.std(ddof=1) * 100:.1f} sd" if len(d) > 1 else ""
    return (f"paired difference {d.mean() * 100:+.1f}{spread} points over {len(d)} seeds "
            f"(higher in {int((d > 0).sum())} of {len(d)})")


def ablation_lines(rows: list[dict]) -> list[str]:
    """pFedBayesPT against each of its ablations in a setting, paired by seed."""
    by = {r["method"]: r for r in rows}
    if FLAGSHIP not in by:
        return []
    return [f"- pFedBayesPT {paired_word(d)} {NAMES[m]}: {paired_text(d)}."
            for m in ABLATIONS if m in by for d in [paired(by[FLAGSHIP], by[m])]]


def verdict(rows: list[dict]) -> str:
    """pFedBayesPT against the best baseline (ablations and references are not
    baselines), paired by seed, by the rule of ``paired_word``."""
    flag = next((r for r in rows if r["method"] == FLAGSHIP), None)
    base = [r for r in rows if r["method"] not in (FLAGSHIP, *ABLATIONS, *REFERENCES)]
    if flag is None or not base:
        return ""
    best = max(base, key=lambda r: r["acc_ms"][0])
    d = paired(flag, best)
    return (f"**pFedBayesPT {paired_word(d)} the best baseline** ({NAMES[best['method']]}): "
            f"{paired_text(d)}.")


def oracle_gap(rows: list[dict]) -> str:
    """The headroom of a setting: the domain oracle minus FedAvg-VPT, paired by seed."""
    by = {r["method"]: r for r in rows}
    if "oracle_domain_vpt" not in by or "fedavg_vpt" not in by:
        return ""
    d = paired(by["oracle_domain_vpt"], by["fedavg_vpt"])
    spread = f" ± {d.std(ddof=1) * 100:.1f}" if len(d) > 1 else ""
    room = ("under 1 point: this setting **cannot show instance-wise gains**"
            if d.mean() < 0.01 else "room for instance-wise prompts")
    return (f"oracle gap (one prompt per known domain − one global prompt) "
            f"{d.mean() * 100:+.1f}{spread} points: {room}")
