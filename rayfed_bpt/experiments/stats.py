"""The paired comparisons of a suite's report: per-seed differences, the verdict rule,
and the sentences they give (pFedBayesPT against the best baseline, its ablations, the
oracle's headroom). Plain numpy; checked against hand computations in the tests."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from .suite import ABLATIONS, CONTROLS, FLAGSHIP, NAMES, REFERENCES


def final(rec: dict) -> dict:
    return rec["history"][-1]


def tune_metric(rec: dict) -> float:
    """What tuning chooses on: the final validation accuracy (test in records from before
    validation existed)."""
    f = final(rec)
    return f["val_acc_mean"] if "val_acc_mean" in f else f["acc_mean"]


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


ALPHA = 0.05  # a verdict other than "level" needs a Holm-adjusted paired p below this


@dataclass(frozen=True)
class PairedTest:
    """Per-seed differences a - b and what they say: the mean with its 95 % t interval,
    the two-sided paired t-test's p, the exact sign-flip p (with 5 seeds it cannot go
    below 2/32 = 0.0625, which is why the verdict reads the t-test), and ``p_adj``, the
    p after Holm's correction across the comparisons it was made with."""

    d: np.ndarray
    p: float
    p_signflip: float
    ci95: tuple[float, float]
    p_adj: float = math.nan

    @property
    def mean(self) -> float:
        return float(self.d.mean()) if len(self.d) else math.nan

    @property
    def word(self) -> str:
        """"beats" / "is behind" only at an adjusted p below ``ALPHA`` (the unadjusted p
        when the test stands alone); "is level with" otherwise, and always with one seed."""
        p = self.p if math.isnan(self.p_adj) else self.p_adj
        if len(self.d) < 2 or not p < ALPHA:
            return "is level with"
        return "beats" if self.mean > 0 else "is behind"


def paired_test(d) -> PairedTest:
    """The paired t-test (scipy's, on the per-seed differences ``d``: ``ttest_rel(a, b)``
    is ``ttest_1samp(a - b, 0)``) with its 95 % interval, and the sign-flip test."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return PairedTest(d, math.nan, math.nan, (math.nan, math.nan))
    if d.std() == 0:  # identical differences: certain unless all zero (scipy says NaN)
        p, ci = (1.0 if d.mean() == 0 else 0.0), (float(d.mean()),) * 2
    else:
        from scipy.stats import ttest_1samp

        res = ttest_1samp(d, 0.0)
        p, ci = float(res.pvalue), tuple(map(float, res.confidence_interval(0.95)))
    return PairedTest(d, p, signflip_p(d), ci)


def signflip_p(d) -> float:
    """Exact two-sided sign-flip (permutation) p of the mean: the share of the 2^n sign
    patterns whose |mean| is at least the observed one."""
    d = np.asarray(d, dtype=float)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    flipped = np.abs(signs @ d)
    return float(np.mean(flipped >= abs(d.sum()) - 1e-12))


def holm(ps) -> list[float]:
    """Holm's step-down adjustment of p-values (family-wise error), in the given order:
    the k-th smallest p times (m - k + 1), made monotone, capped at 1; NaNs left out."""
    ps = list(ps)
    idx = [i for i in sorted(range(len(ps)), key=lambda i: ps[i]) if not math.isnan(ps[i])]
    out = [math.nan] * len(ps)
    running = 0.0
    for k, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - k) * ps[i]))
        out[i] = running
    return out


def paired_word(d) -> str:
    """The verdict of one comparison standing alone (the unadjusted paired t-test)."""
    return paired_test(d).word


def paired(a: dict, b: dict, key: str = "acc") -> np.ndarray:
    """Per-seed differences a - b of the per-seed values ``key`` (the mean client accuracy
    by default), on the seeds both ran."""
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
    return np.asarray([a[key][a["seeds"].index(s)] - b[key][b["seeds"].index(s)]
                       for s in seeds])


def adjusted(tests: dict[str, PairedTest]) -> dict[str, PairedTest]:
    """The same tests, each with its p Holm-adjusted across all of them (one family)."""
    ps = holm([t.p for t in tests.values()])
    return {m: replace(t, p_adj=p) for (m, t), p in zip(tests.items(), ps)}


def paired_text(t: PairedTest) -> str:
    d = t.d
    spread = f" ± {d.std(ddof=1) * 100:.1f} sd" if len(d) > 1 else ""
    text = (f"paired difference {t.mean * 100:+.1f}{spread} points over {len(d)} seeds "
            f"(higher in {int((d > 0).sum())} of {len(d)}")
    if len(d) < 2:
        return text + ")"
    lo, hi = t.ci95
    adj = "" if math.isnan(t.p_adj) else f", Holm-adjusted {pval(t.p_adj)}"
    return text + f"; 95 % CI [{lo * 100:+.1f}, {hi * 100:+.1f}]; t-test p {pval(t.p)}{adj})"


def pval(p: float) -> str:
    """A p-value as every table and sentence of the report writes it ("p = 0.084")."""
    return "n/a" if math.isnan(p) else "< 0.001" if p < 0.001 else f"= {p:.3f}"


def best_baseline(rows: list[dict]) -> str | None:
    """The baseline with the highest mean accuracy: neither pFedBayesPT, nor one of its
    ablations, nor a reference (the domain oracle)."""
    base = [r for r in rows if r["method"] not in (FLAGSHIP, *ABLATIONS, *REFERENCES)]
    return max(base, key=lambda r: r["acc_ms"][0])["method"] if base else None


def comparisons(rows: list[dict]) -> dict[str, PairedTest]:
    """pFedBayesPT against the best baseline, each control and each ablation present in a
    setting's table, paired by seed, Holm-adjusted together: the table's family."""
    by = {r["method"]: r for r in rows}
    if FLAGSHIP not in by:
        return {}
    others = dict.fromkeys(m for m in (best_baseline(rows), *CONTROLS, *ABLATIONS)
                           if m in by and m != FLAGSHIP)
    return adjusted({m: paired_test(paired(by[FLAGSHIP], by[m])) for m in others})


def ablation_lines(rows: list[dict]) -> list[str]:
    """pFedBayesPT against each control and ablation of a setting (not the best baseline:
    ``verdict`` says that one), with the table's Holm-adjusted p."""
    tests = comparisons(rows)
    best = best_baseline(rows)
    return [f"- pFedBayesPT {t.word} {NAMES[m]}: {paired_text(t)}."
            for m, t in tests.items() if m != best]


def verdict(rows: list[dict]) -> str:
    """pFedBayesPT against the best baseline, paired by seed: "beats" only at a
    Holm-adjusted p below ``ALPHA`` (adjusted with the table's other comparisons)."""
    best = best_baseline(rows)
    t = comparisons(rows).get(best) if best else None
    if t is None:
        return ""
    return f"**pFedBayesPT {t.word} the best baseline** ({NAMES[best]}): {paired_text(t)}."


HEADROOM_WORDS = {"oracle_domain_vpt": "one prompt per known domain − one global prompt",
                  "fedper_vpt": "a personal head − one shared head"}


def oracle_gap(rows: list[dict], pair: tuple[str, str] = ("oracle_domain_vpt", "fedavg_vpt")
               ) -> str:
    """The headroom of a setting: its upper reference minus what it extends (the domain
    oracle - FedAvg-VPT; under label skew FedPer-VPT - FedAvg-VPT), paired by seed, with
    its 95 % interval (an estimate of room, not a verdict: not in the Holm family)."""
    by = {r["method"]: r for r in rows}
    top, base = pair
    if top not in by or base not in by:
        return ""
    t = paired_test(paired(by[top], by[base]))
    d = t.d
    spread = f" ± {d.std(ddof=1) * 100:.1f}" if len(d) > 1 else ""
    ci = (f" (95 % CI [{t.ci95[0] * 100:+.1f}, {t.ci95[1] * 100:+.1f}], p {pval(t.p)})"
          if len(d) > 1 else "")
    what = "instance-wise prompts" if top == "oracle_domain_vpt" else "a personal part"
    room = (f"under 1 point: this setting **cannot show gains of {what}**"
            if d.mean() < 0.01 else f"room for {what}")
    words = HEADROOM_WORDS.get(top, f"{NAMES[top]} − {NAMES[base]}")
    name = "oracle gap" if top == "oracle_domain_vpt" else "personal-head gap"
    return f"{name} ({words}) {d.mean() * 100:+.1f}{spread} points{ci}: {room}"
