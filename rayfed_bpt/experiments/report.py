"""From run records to what a reader looks at: Markdown tables and PNG plots.

Records are the dicts ``runner.execute`` returns (one per run, with the metric
history). Nothing here trains or talks to Ray: a report can be rebuilt from the
run cache alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from .plots import plot_curves, plot_domains, plot_headline, plot_study
from .stats import (
    ablation_lines,
    final,
    fmt,
    holm,
    mean_std,
    oracle_gap,
    paired,
    paired_test,
    verdict,
)
from .suite import ABLATIONS, FLAGSHIP, LR_FROM, NAMES, REFERENCES, Suite


def tuned_lrs(tune_records: list[dict]) -> dict[str, float]:
    """Each method's learning rate with the best final mean client accuracy on the
    validation split (``val_acc_mean``; records from before validation existed: test),
    ties to the smaller rate."""
    best: dict[str, tuple[float, float]] = {}
    for r in tune_records:
        acc, lr = tune_metric(r), float(r["value"])
        cur = best.get(r["method"])
        if cur is None or acc > cur[0] or (acc == cur[0] and lr < cur[1]):
            best[r["method"]] = (acc, lr)
    return {m: lr for m, (_, lr) in best.items()}


def tune_metric(rec: dict) -> float:
    f = final(rec)
    return f["val_acc_mean"] if "val_acc_mean" in f else f["acc_mean"]


def _by(records: list[dict], *fields: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        out[tuple(r[f] for f in fields)].append(r)
    return out


def domain_names(records: list[dict]) -> list[str]:
    return [k.split("/", 1)[1] for k in final(records[0]) if k.startswith("domain_acc/")]


def setting_rows(suite: Suite, main: list[dict], setting: str) -> list[dict]:
    """Per method: mean/std over seeds of the final metrics, and the per-seed means."""
    groups = _by([r for r in main if r["setting"] == setting], "method")
    rows = []
    for m in suite.methods:
        recs = sorted(groups.get((m,), []), key=lambda r: r["seed"])
        if not recs:
            continue
        f = [final(r) for r in recs]
        rows.append({
            "method": m,
            "seeds": [r["seed"] for r in recs],
            "acc": [x["acc_mean"] for x in f],
            "acc_ms": mean_std(x["acc_mean"] for x in f),
            "min_ms": mean_std(x["acc_min"] for x in f),
            "global_ms": mean_std(x["global_acc"] for x in f),
            "domains": {d: mean_std(x[f"domain_acc/{d}"] for x in f)
                        for d in domain_names(recs)},
            "seconds": float(np.mean([r["seconds"] for r in recs])),
            **costs(f),
        })
    return rows


#: the cost columns beside the scores: (key in a row, title, the metric it comes from)
COSTS = (("nll_ms", "test NLL", "nll_mean"), ("ece_ms", "test ECE", "ece_mean"),
         ("params", "params", "model_params"), ("down", "KB down / round", "comm_bytes_down"),
         ("up", "KB up / round", "comm_bytes_up"),
         ("passes", "backbone passes / test image", "backbone_passes_per_image"))


def costs(finals: list[dict]) -> dict:
    """NLL and ECE (mean, std over seeds), then the run's costs (the same on every seed):
    learned parameters, bytes to and from the round's clients, backbone passes per test
    image. NaN where a record predates them."""
    out = {}
    for key, _, metric in COSTS:
        values = [x.get(metric, math.nan) for x in finals]
        out[key] = mean_std(values) if key.endswith("_ms") else (
            float(np.mean(values)) if values else math.nan)
    return out


def cost_cells(r: dict) -> list[str]:
    def num(x: float, scale: float = 1.0, digits: int = 0) -> str:
        return "n/a" if math.isnan(x) else f"{x / scale:,.{digits}f}"

    return [_plain(*r["nll_ms"], 3), _plain(*r["ece_ms"], 3), num(r["params"]),
            num(r["down"], 1e3, 1), num(r["up"], 1e3, 1), num(r["passes"])]


def _plain(m: float, s: float, digits: int) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def plateau(suite: Suite, main: list[dict], setting: str, rows: list[dict]) -> str:
    """Is the best baseline still rising? Its curve (the first seed, evaluated during
    training) over the last third of the rounds."""
    base = [r for r in rows if r["method"] not in (FLAGSHIP, *ABLATIONS, *REFERENCES)]
    if not base:
        return ""
    best = max(base, key=lambda r: r["acc_ms"][0])["method"]
    seed = suite.seeds_of(suite.setting(setting))[0]
    rec = next((r for r in main if r["setting"] == setting and r["method"] == best
                and r["seed"] == seed), None)
    pts = [(h["round"], h["acc_mean"]) for h in (rec or {}).get("history", [])
           if "acc_mean" in h]
    if len(pts) < 3:
        return ""
    last = pts[-1][0]
    start = min(pts, key=lambda p: abs(p[0] - (last - last // 3)))
    return (f"Plateau check: {NAMES[best]} (seed {seed}) moved "
            f"{(pts[-1][1] - start[1]) * 100:+.1f} points from round {start[0]} to {last}.")


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


def rows_by_setting(suite: Suite, main: list[dict]) -> dict[str, dict[str, dict]]:
    """``setting_rows`` of every setting, by setting then method: computed once per report."""
    return {s.name: {r["method"]: r for r in setting_rows(suite, main, s.name)}
            for s in suite.settings}


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


def study_rows(suite: Suite, main: list[dict], sens: list[dict]) -> dict[str, list[dict]]:
    """Per study: one row per value (default first) with mean/std over the study's seeds."""
    seeds = set(suite.sensitivity_seeds)
    default = {r["seed"]: final(r) for r in main if r["method"] == FLAGSHIP
               and r["setting"] == suite.sensitivity_setting and r["seed"] in seeds}
    out = {}
    for study in suite.studies:
        rows = []
        for i, (label, _) in enumerate(study.values):
            f = (list(default.values()) if i == 0 else
                 [final(r) for r in sens if r["study"] == study.name and r["value"] == label])
            rows.append({"value": label, "default": i == 0, "n": len(f),
                         "acc_ms": mean_std(x["acc_mean"] for x in f),
                         "min_ms": mean_std(x["acc_min"] for x in f)})
        out[study.name] = rows
    flag = [final(r) for r in main if r["method"] == FLAGSHIP
            and r["setting"] == suite.sensitivity_setting]
    rows = []
    for name in [*suite.sample_evals, "S8"]:
        key = "" if name == "S8" else f"{name}/"
        f = [x for x in flag if f"{key}acc_mean" in x]
        rows.append({"value": name, "default": name == "S8", "n": len(f),
                     "acc_ms": mean_std(x[f"{key}acc_mean"] for x in f),
                     "min_ms": mean_std(x[f"{key}acc_min"] for x in f)})
    rows.sort(key=lambda r: -1 if r["value"] == "mean_prompt" else int(r["value"][1:]))  # S<n>
    out["S"] = rows
    return out


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


def _pval(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3f}"


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


# ----- the document --------------------------------------------------------------------------
def variant_table(suite: Suite, per: dict[str, dict[str, dict]], variants: list[dict],
                  all_variants=None) -> str:
    """Each option variant beside the default pFedBayesPT and the best baseline, per
    setting; the variants' paired comparisons with the default Holm-adjusted together
    (the table's family), the verdict word from the adjusted p."""
    items = []
    for v in suite.variants if all_variants is None else all_variants:
        for setting in v.settings:
            rows = per[setting]
            base = max((r for m, r in rows.items()
                        if m not in (FLAGSHIP, *ABLATIONS, *REFERENCES)),
                       key=lambda r: r["acc_ms"][0])
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
                     f"{int((t.d > 0).sum())} of {len(t.d)} seeds, p {_pval(t.p)}, "
                     f"Holm-adjusted {_pval(t.p_adj)}) | "
                     f"{_delta(acc[0] - base['acc_ms'][0])} |")
    return "\n".join(lines)


def chosen_personal(suite: Suite, select: list[dict]) -> tuple[str, dict[str, dict[str, float]]]:
    """The personal part validation picks: the highest mean over the personal settings of
    the final validation accuracy (ties to the earlier, simpler choice), and every
    choice's validation accuracy by setting."""
    table: dict[str, dict[str, float]] = {label: {} for label, _ in suite.personal_choices}
    for r in select:
        table.setdefault(r["value"], {})[r["setting"]] = tune_metric(r)
    scored = [(label, float(np.mean(list(v.values())))) for label, v in table.items() if v]
    if not scored:
        return "", table
    best = max(scored, key=lambda x: x[1])[1]
    return next(label for label, score in scored if score == best), table


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


def write_report(out: Path, suite: Suite, tune: list[dict], main: list[dict], sens: list[dict],
                 lrs: dict[str, float], info: dict, variants: list[dict] = (),
                 select: list[dict] = ()) -> Path:
    """Write ``out/results.md`` and ``out/figures/*.png``; return the Markdown path."""
    from .suite import config_hash

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    per = rows_by_setting(suite, main)
    rel = fig_dir.relative_to(out)
    personal, choices = chosen_personal(suite, list(select))
    all_variants = suite.all_variants(personal)
    md = [f"# Experiments: suite `{suite.name}`", ""]
    md += [
        f"Produced by `{info['command']}` (suite hash `{info['suite_hash']}`, the hash of "
        f"every run's resolved config) on {info['machine']}: **{info['wall_seconds'] / 60:.1f} "
        f"min** wall time for the invocation(s) that computed its {info['runs']} runs "
        f"({info['invocations']}); {info['run_seconds'] / 60:.1f} min of single-core run time "
        "in all.",
        "",
        "Every number is the accuracy on each client's own test split with its own state, "
        "in percent: **mean client acc** is the mean over clients (then mean ± std over "
        f"seeds {', '.join(map(str, suite.seeds))}, or the first of them where a row says "
        "fewer), **min client acc** the worst client, "
        "per-domain columns pool all clients' test examples of that domain, **global model "
        "acc** the shared model on the pooled test set (n/a for methods with personal state). "
        "Same partitions, backbone (`rfbpt_vit_digits`, frozen), rounds and local epochs for "
        "every method; each method at its tuned learning rate (pFedBayesPT's ablations at "
        "pFedBayesPT's, the domain oracle at FedAvg-VPT's).",
        "",
        "Budget (2 CPU cores, one core per run): " + info["budget"],
        "",
        "## Headline: mean client accuracy (%), mean ± std over seeds",
        "",
        headline_table(suite, per),
        "",
    ]
    for s in suite.settings:
        rows = list(per[s.name].values())
        gap = oracle_gap(rows, s.headroom)
        md.append(f"- {s.name}: {verdict(rows)}" + (f" Headroom: {gap}." if gap else ""))
    md += ["", "Verdict rule: in each setting pFedBayesPT is compared, paired by seed, with "
           "the best baseline and with each control and ablation it runs beside; each "
           "comparison's two-sided paired t-test p is Holm-adjusted across that setting's "
           "comparisons, and *beats* (or *is behind*) needs an adjusted p below 0.05, "
           "otherwise *is level with* (one seed is always level). The sign-flip test is "
           "not used for the verdict: with 5 seeds its smallest two-sided p is 2/32 = 0.0625. "
           "The domain oracle reads each image's domain label, which no client has at test "
           "time: an upper reference for instance-wise prompts, not a baseline; under label "
           "skew the headroom is the personal head's gap (FedPer-VPT − FedAvg-VPT). Cost "
           "columns: test NLL and ECE (15 bins), learned parameters (shared and personal), "
           "kilobytes sent to and from the round's clients, and frozen-backbone passes per "
           "test image (the feature pass e(x) included)."]
    md += ["", f"![headline]({rel}/headline.png)", ""]
    plot_headline(fig_dir / "headline.png", suite, per)
    for s in suite.settings:
        rows = list(per[s.name].values())
        chash = config_hash(sorted({o for r in main if r["setting"] == s.name
                                    for o in r["overrides"] if not o.startswith(
                                        ("algorithm.", "seed=", "train.lr=", "train.eval"))}))
        md += [f"## {s.title}", "",
               f"Setting `{s.name}`, config hash `{chash}`; overrides: "
               f"`{' '.join((*suite.common, *s.overrides))}`.", "",
               setting_table(rows, lrs), "", verdict(rows), "",
               *ablation_lines(rows),
               *(["", f"Headroom: {oracle_gap(rows, s.headroom)}."]
                 if oracle_gap(rows, s.headroom) else []),
               "", plateau(suite, main, s.name, rows), ""]
        plot_curves(fig_dir / f"curves_{s.name}.png", suite, main, s.name, s.title)
        plot_domains(fig_dir / f"domains_{s.name}.png", rows, s.title)
        md += [f"![curves]({rel}/curves_{s.name}.png)",
               f"![domains]({rel}/domains_{s.name}.png)", ""]
    md += ["## Is the Bayesian layer acting?", "",
           "Training diagnostics of the last round, mean over seeds (sigma also along the "
           "first seed's curve, at its evaluated rounds) "
           "(MLflow has them per round for every run): **w(psi0)**, the weight of the draw "
           "itself in the bound's log-mean-exp: 1 means the other J draws get no weight (the "
           "bound is Gaussian VI's less log(J+1), no entropy credit for the mixing); 1/(J+1) "
           "= 0.2 when all draws coincide (d_eps = 0: exactly Gaussian VI); in between, the "
           "mixing earns credit; **sigma**, the explicit layer's mean std (initialised at "
           "0.135 = exp(-4/2)); "
           "**mixing spread**, how far psi moves across noise draws for one image, against "
           "the **between-image spread**; test NLL and ECE at the end (n/a in the "
           "diagnostics of methods without them).", "",
           diagnostics_table(suite, main, list(variants), all_variants), ""]
    s_seeds = len(suite.seeds_of(suite.setting(suite.sensitivity_setting)))
    md += ["## Sensitivity of pFedBayesPT", "",
           f"Setting `{suite.sensitivity_setting}`, " + (
               "one option changed at a time from the defaults, seeds "
               f"{', '.join(map(str, suite.sensitivity_seeds))} (the default point is the "
               "main table's run); " if suite.studies else "") +
           "the test-time sample count S is studied on the main runs' trained states, all "
           f"{s_seeds} seeds.", ""]
    studies = study_rows(suite, main, sens)
    titles = {st.name: st.title for st in suite.studies}
    titles["S"] = "Test-time prompt samples S (mean_prompt: noise-free mean prompt)"
    for name, rows in studies.items():
        fname = "sensitivity_" + "".join(c if c.isalnum() else "_" for c in name) + ".png"
        plot_study(fig_dir / fname, rows, titles[name])
        md += [f"### {titles[name]}", "", study_table(rows), "", f"![{name}]({rel}/{fname})", ""]
    if suite.personal_choices:
        md += ["## pFedBayesPT's personal part, chosen on validation", "",
               f"pFedBayesPT at its tuned rate with each personal part, on the validation "
               f"split of partition and training seed {suite.tune_seed} (which no table uses) "
               f"of {', '.join(f'`{st}`' for st in suite.personal_settings)}; the highest mean "
               "is run on every seed below as the variant `personal: <choice>`.", "",
               personal_table(suite, choices, personal), ""]
    if all_variants:
        md += ["## pFedBayesPT options beside the default", "",
               *[f"- **{v.name}**: {v.title}" for v in all_variants], "",
               "The variant's seeds (paired with the default on those), otherwise the main "
               "table's runs; each verdict's paired t-test p is Holm-adjusted across this "
               "table's comparisons with the default.",
               "", variant_table(suite, per, list(variants), all_variants), ""]
    md += ["## Learning-rate tuning", "",
           f"Final mean client accuracy (%) on each client's **validation** split (a "
           f"stratified {suite.tune_val_fraction:g} of its training examples; the test split "
           f"is never evaluated) on setting `{suite.tune_setting}` with partition and training "
           f"seed {suite.tune_seed}, which no table uses. The domain oracle and the ablations "
           "run at the rate of the method they refer to.", "",
           tune_table(tune, lrs), ""]
    if info.get("notes"):
        md += ["## Notes", "", info["notes"], ""]
    path = out / "results.md"
    path.write_text("\n".join(md))
    return path
