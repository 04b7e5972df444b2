"""From run records to what a reader looks at: the rows of each table (mean ± std over
seeds, costs, studies), and results.md assembled section by section from them with its
PNG plots (``tables`` writes the tables, ``plots`` draws).

Records are the dicts ``runner.execute`` returns (one per run, with the metric
history). Nothing here trains or talks to Ray: a report can be rebuilt from the
run cache alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .plots import plot_curves, plot_domains, plot_headline, plot_study
from .stats import ablation_lines, best_baseline, final, mean_std, oracle_gap, tune_metric, verdict
from .suite import FLAGSHIP, NAMES, Suite
from .tables import (
    COSTS,
    diagnostics_table,
    headline_table,
    personal_table,
    setting_table,
    study_table,
    tune_table,
    variant_table,
)


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


def plateau(suite: Suite, main: list[dict], setting: str, rows: list[dict]) -> str:
    """Is the best baseline still rising? Its curve (the first seed, evaluated during
    training) over the last third of the rounds."""
    best = best_baseline(rows)
    if best is None:
        return ""
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


def rows_by_setting(suite: Suite, main: list[dict]) -> dict[str, dict[str, dict]]:
    """``setting_rows`` of every setting, by setting then method: computed once per report."""
    return {s.name: {r["method"]: r for r in setting_rows(suite, main, s.name)}
            for s in suite.settings}


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


def write_report(out: Path, suite: Suite, tune: list[dict], main: list[dict], sens: list[dict],
                 lrs: dict[str, float], info: dict, variants: list[dict] = (),
                 select: list[dict] = ()) -> Path:
    """Write ``out/results.md`` and ``out/figures/*.png``; return the Markdown path."""
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    per = rows_by_setting(suite, main)
    personal, choices = chosen_personal(suite, list(select))
    all_variants = suite.all_variants(personal)
    md = [f"# Experiments: suite `{suite.name}`", "", *_preamble(suite, info),
          *_headline(suite, per, fig_dir), *_settings(suite, per, main, lrs, fig_dir),
          *_diagnostics(suite, main, list(variants), all_variants),
          *_sensitivity(suite, main, sens, fig_dir)]
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
    from .generalization import SECTION  # the generalization suite's section stays

    kept = path.read_text().partition(SECTION) if path.exists() else ("", "", "")
    path.write_text("\n".join(md) + ("\n" + "".join(kept[1:]) if kept[1] else ""))
    return path


def _preamble(suite: Suite, info: dict) -> list[str]:
    """Where the numbers come from: the command, the machine, what a number is, the budget."""
    return [
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
    ]


def _headline(suite: Suite, per: dict[str, dict[str, dict]], fig_dir: Path) -> list[str]:
    """The headline table, each setting's verdict in a line, the rule, the figure."""
    md = ["## Headline: mean client accuracy (%), mean ± std over seeds", "",
          headline_table(suite, per), ""]
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
    plot_headline(fig_dir / "headline.png", suite, per)
    return [*md, "", f"![headline]({fig_dir.name}/headline.png)", ""]


def _settings(suite: Suite, per: dict[str, dict[str, dict]], main: list[dict],
              lrs: dict[str, float], fig_dir: Path) -> list[str]:
    """A section per setting: its table, verdicts, headroom, plateau check, figures."""
    from .suite import config_hash

    md = []
    for s in suite.settings:
        rows = list(per[s.name].values())
        chash = config_hash(sorted({o for r in main if r["setting"] == s.name
                                    for o in r["overrides"] if not o.startswith(
                                        ("algorithm.", "seed=", "train.lr=", "train.eval"))}))
        gap = oracle_gap(rows, s.headroom)
        md += [f"## {s.title}", "",
               f"Setting `{s.name}`, config hash `{chash}`; overrides: "
               f"`{' '.join((*suite.common, *s.overrides))}`.", "",
               setting_table(rows, lrs), "", verdict(rows), "",
               *ablation_lines(rows), *(["", f"Headroom: {gap}."] if gap else []),
               "", plateau(suite, main, s.name, rows), ""]
        plot_curves(fig_dir / f"curves_{s.name}.png", suite, main, s.name, s.title)
        plot_domains(fig_dir / f"domains_{s.name}.png", rows, s.title)
        md += [f"![curves]({fig_dir.name}/curves_{s.name}.png)",
               f"![domains]({fig_dir.name}/domains_{s.name}.png)", ""]
    return md


def _diagnostics(suite: Suite, main: list[dict], variants: list[dict],
                 all_variants) -> list[str]:
    return ["## Is the Bayesian layer acting?", "",
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
            diagnostics_table(suite, main, variants, all_variants), ""]


def _sensitivity(suite: Suite, main: list[dict], sens: list[dict], fig_dir: Path) -> list[str]:
    s_seeds = len(suite.seeds_of(suite.setting(suite.sensitivity_setting)))
    md = ["## Sensitivity of pFedBayesPT", "",
          f"Setting `{suite.sensitivity_setting}`, " + (
              "one option changed at a time from the defaults, seeds "
              f"{', '.join(map(str, suite.sensitivity_seeds))} (the default point is the "
              "main table's run); " if suite.studies else "") +
          "the test-time sample count S is studied on the main runs' trained states, all "
          f"{s_seeds} seeds.", ""]
    titles = {st.name: st.title for st in suite.studies}
    titles["S"] = "Test-time prompt samples S (mean_prompt: noise-free mean prompt)"
    for name, rows in study_rows(suite, main, sens).items():
        fname = "sensitivity_" + "".join(c if c.isalnum() else "_" for c in name) + ".png"
        plot_study(fig_dir / fname, rows, titles[name])
        md += [f"### {titles[name]}", "", study_table(rows), "",
               f"![{name}]({fig_dir.name}/{fname})", ""]
    return md
