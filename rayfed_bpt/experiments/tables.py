"""The suite report's Markdown tables, from the rows ``report`` computes: one function a
table, each computing nothing a reader could not check against the rows it is given."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .stats import (
    best_baseline,
    final,
    fmt,
    holm,
    mean_std,
    paired,
    paired_test,
    pval,
    tune_metric,
)
from .suite import ABLATIONS, FLAGSHIP, LR_FROM, NAMES, Suite

#: the cost columns beside the scores: (key in a row, title, the metric it comes from)
COSTS = (("nll_ms", "test NLL", "nll_mean"), ("ece_ms", "test ECE", "ece_mean"),
         ("params", "params", "model_params"), ("down", "KB down / round", "comm_bytes_down"),
         ("up", "KB up / round", "comm_bytes_up"),
         ("passes", "backbone passes / test image", "backbone_passes_per_image"))


def cost_cells(r: dict) -> list[str]:
    def num(x: float, scale: float = 1.0, digits: int = 0) -> str:
        return "n/a" if math.isnan(x) else f"{x / scale:,.{digits}f}"

    return [_plain(*r["nll_ms"], 3), _plain(*r["ece_ms"], 3), num(r["params"]),
            num(r["down"], 1e3, 1), num(r["up"], 1e3, 1), num(r["passes"])]


def _plain(m: float, s: float, digits: int) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def setting_table(rows: list[dict], lrs: dict[str, float]) -> str:
    doms = list(rows[0]["domains"]) if rows else []
    best = max(r["acc_ms"][0] for r in rows)
    head = ["method", "lr", "seeds", "mean client acc", "min client acc", "global model acc",
            *doms, *[t for _, t, _ in COSTS], "s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        acc = fmt(*r["acc_ms"])
        if r["acc_ms"][0] == best:
            acc = f"**{acc}**"
        lr = lrs.get(LR_FROM.get(r["method"], r["method"]), math.nan)
        lines.append("| " + " | ".join([
            NAMES[r["method"]], f"{lr:g}", str(len(r["seeds"])), acc, fmt(*r["min_ms"]),
            fmt(*r["global_ms"]),
            *[fmt(*r["domains"][d]) for d in doms], *cost_cells(r),
            f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def headline_table(suite: Suite, per: dict[str, dict[str, dict]]) -> str:
    cols = list(per)
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    best = {s: max(r["acc_ms"][0] for r in per[s].values()) for s in cols if per[s]}
    most = {s: max(len(r["seeds"]) for r in per[s].values()) for s in cols if per[s]}
    for m in suite.methods:
        cells = []
        for s in cols:
            r = per[s].get(m)
            c = fmt(*r["acc_ms"]) if r else "n/a"
            c = f"**{c}**" if r and r["acc_ms"][0] == best[s] else c
            cells.append(c + (f" ({len(r['seeds'])} seeds)" if r and len(r["seeds"]) < most[s]
                              else ""))
        lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tune_table(tune: list[dict], lrs: dict[str, float]) -> str:
    grid = sorted({float(r["value"]) for r in tune})
    acc = {(r["method"], float(r["value"])): tune_metric(r) for r in tune}
    lines = ["| method | " + " | ".join(f"lr {g:g}" for g in grid) + " | chosen |",
             "|---|" + "---|" * (len(grid) + 1)]
    for m in lrs:
        lines.append(f"| {NAMES[m]} | " + " | ".join(
            fmt(acc.get((m, g), math.nan)) for g in grid) + f" | {lrs[m]:g} |")
    return "\n".join(lines)


def study_table(rows: list[dict]) -> str:
    base = next(r for r in rows if r["default"])["acc_ms"][0]
    lines = ["| value | runs | mean client acc | min client acc | vs default |",
             "|---|---|---|---|---|"]
    for r in rows:
        v = f"{r['value']} (default)" if r["default"] else r["value"]
        lines.append(f"| {v} | {r['n']} | {fmt(*r['acc_ms'])} | {fmt(*r['min_ms'])} | "
                     f"{_delta(r['acc_ms'][0] - base)} |")
    return "\n".join(lines)


def _delta(x: float) -> str:
    return f"{0.0 if abs(x) < 5e-4 else x * 100:+.1f}"


DIAGNOSTICS = (("train_w_psi0", "w(psi0)"), ("train_sigma_mean", "sigma"),
               ("train_mix_credit", "entropy credit (nats)"),
               ("train_psi_abs_mean", "mean abs psi"), ("train_mix_spread", "mixing spread"),
               ("train_image_spread", "between-image spread"), ("nll_mean", "test NLL"),
               ("ece_mean", "test ECE"))


def noise_entropy(rec: dict) -> str:
    """H(eps) of a pFedBayesPT run's mixing noise, d_eps log 2 nats (Bernoulli bits): the
    most entropy credit the mixing can earn; n/a for Gaussian noise or none."""
    from ..catalog import algorithm_options, options_of
    from ..config import load_config

    given = load_config(None, [*rec.get("overrides", ()), f"algorithm.name={rec['method']}"]
                        ).algorithm.options
    opts = {**vars(options_of(rec["method"])()), **algorithm_options(rec["method"], given)}
    d = int(opts["d_eps"])
    return f"{d * math.log(2):.2f}" if opts["noise"] == "bernoulli" and d else "n/a"


def diagnostics_table(suite: Suite, main: list[dict], variants: list[dict],
                      all_variants=None) -> str:
    """Is the Bayesian layer acting? Per setting, pFedBayesPT, its ablations and
    each option variant: the last round's diagnostics (sigma also along the curve seed), mean over
    seeds. w(psi0) = 1 means the semi-implicit bound is Gaussian VI in effect."""
    head = ["setting", "run", "mean client acc", "w(psi0)", "sigma",
            "sigma along seed 0's curve", *[t for _, t in DIAGNOSTICS[2:]], "H(eps) (nats)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = [(s.name, NAMES[m], [r for r in main if r["setting"] == s.name
                                  and r["method"] == m])
              for s in suite.settings for m in (FLAGSHIP, *ABLATIONS, "pfedbayespt_det")]
    groups += [(st, v.name, [r for r in variants if r["study"] == v.name
                             and r["setting"] == st])
               for v in (suite.variants if all_variants is None else all_variants)
               for st in v.settings]
    for setting, label, recs in groups:
        if not recs:
            continue
        last = [final(r) for r in recs]
        # a run's history holds its evaluated rounds: only the curve seed has several
        curve = next((r["history"] for r in recs if len(r["history"]) > 1), None)
        path = (" -> ".join(f"{h.get('train_sigma_mean', math.nan):.3f}" for h in curve)
                + f" (rounds {curve[0]['round']}-{curve[-1]['round']})" if curve else "n/a")

        def m(key, rows=last):
            return float(np.mean([x.get(key, math.nan) for x in rows]))

        lines.append("| " + " | ".join([
            setting, label, fmt(m("acc_mean")), f"{m('train_w_psi0'):.3f}",
            f"{m('train_sigma_mean'):.3f}", path,
            *[f"{m(k):.3f}" for k, _ in DIAGNOSTICS[2:]], noise_entropy(recs[0])]) + " |")
    return "\n".join(lines)


def variant_table(suite: Suite, per: dict[str, dict[str, dict]], variants: list[dict],
                  all_variants=None) -> str:
    """Each option variant beside the default pFedBayesPT and the best baseline, per
    setting; the variants' paired comparisons with the default Holm-adjusted together
    (the table's family), the verdict word from the adjusted p."""
    items = []
    for v in suite.variants if all_variants is None else all_variants:
        for setting in v.settings:
            rows = per[setting]
            base = rows[best_baseline(list(rows.values()))]
            recs = sorted((r for r in variants if r["study"] == v.name
                           and r["setting"] == setting), key=lambda r: r["seed"])
            f = [final(r) for r in recs]
            d = rows[FLAGSHIP]
            t = paired_test(paired({"seeds": [r["seed"] for r in recs],
                                    "acc": [x["acc_mean"] for x in f]}, d))
            items.append((setting, v.name, mean_std(x["acc_mean"] for x in f),
                          mean_std(x["acc_min"] for x in f), d, base, t))
    adjusted = holm([t.p for *_, t in items])
    lines = ["| setting | pFedBayesPT | mean client acc | min client acc | vs default | "
             "vs best baseline |", "|---|---|---|---|---|---|"]
    for (setting, name, acc, mn, d, base, t), a in zip(items, adjusted):
        t = replace(t, p_adj=a)
        lines.append(f"| {setting} | default | {fmt(*d['acc_ms'])} | {fmt(*d['min_ms'])} | "
                     f"+0.0 | {_delta(d['acc_ms'][0] - base['acc_ms'][0])} "
                     f"({NAMES[base['method']]}) |")
        lines.append(f"| {setting} | {name} | {fmt(*acc)} | {fmt(*mn)} | "
                     f"{_delta(acc[0] - d['acc_ms'][0])} ({t.word}: higher in "
                     f"{int((t.d > 0).sum())} of {len(t.d)} seeds, p {pval(t.p)}, "
                     f"Holm-adjusted {pval(t.p_adj)}) | "
                     f"{_delta(acc[0] - base['acc_ms'][0])} |")
    return "\n".join(lines)


def personal_table(suite: Suite, table: dict[str, dict[str, float]], chosen: str) -> str:
    sts = suite.personal_settings
    lines = ["| personal part | " + " | ".join(f"{st} (val)" for st in sts) + " | mean |",
             "|---|" + "---|" * (len(sts) + 1)]
    for label, v in table.items():
        cells = [fmt(v.get(st, math.nan)) for st in sts]
        mean = fmt(float(np.mean(list(v.values())))) if v else "n/a"
        name = f"**{label}** (chosen)" if label == chosen else label
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)
