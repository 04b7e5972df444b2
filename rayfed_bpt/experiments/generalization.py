"""The generalization suite: does a prompt made from the image serve clients that never
trained, and domains no client saw?

Every run holds a quarter of its clients out of training (``data.new_clients``), and
two of the settings also hold one domain out (``data.ood_domains``: leave-one-domain-
out), so one run measures the participating clients, the new ones zero-shot and after
adaptation, and the unseen domain, paired by seed with every other row of its setting.
Each method runs at the learning rate the paper suite's validation tuning chose for it
(its own, or the method it extends); nothing is chosen on a test split. The runs go
through the paper suite's machinery (``runner.execute``: cache, Ray tasks, MLflow);
this module defines the runs and writes their report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .paper import DIGITS8
from .stats import adjusted, fmt, mean_std, paired, paired_test, pval
from .suite import FLAGSHIP, LR_FROM, NAMES, REFERENCES, RunSpec, Setting
from .tables import _plain as plain

#: the deciding rows: the method, its two controls of what the prompt is made from (no
#: Bayesian layer; no x), one global prompt, a personal head, the parameter-matched MLP
#: head, and the domain oracle (a reference: it reads domain labels)
METHODS = (FLAGSHIP, "pfedbayespt_det", "pfedbayespt_nocond", "fedavg_vpt", "fedper_vpt",
           "fedavg_mlp", "oracle_domain_vpt")
#: the rates the paper suite's validation tuning chose (docs/results.md, "Learning-rate
#: tuning": domain_mix8, partition and training seed 100, validation split)
TUNED_LR = {FLAGSHIP: 0.01, "pfedbayespt_det": 0.03, "fedavg_vpt": 0.01, "fedper_vpt": 0.01,
            "fedavg_mlp": 0.01}
#: (column, metric stem): a stem's mean is ``<stem>_mean``; NLL / ECE follow its prefix
METRICS = (("participating", "acc"), ("new, zero-shot", "new_acc"),
           ("new, adapted", "new_acc_adapted"), ("unseen domain, zero-shot", "ood_acc"),
           ("unseen domain, adapted", "ood_acc_adapted"))
SHORT = {"beats": "beats", "is behind": "behind", "is level with": "level"}


@dataclass(frozen=True)
class GenSuite:
    name: str
    settings: tuple[Setting, ...]
    common: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: str
    methods: tuple[str, ...] = METHODS

    def runs(self) -> list[RunSpec]:
        rounds = next(o for o in self.common if o.startswith("train.rounds=")).split("=")[1]
        return [RunSpec("generalization", s.name, m, seed,
                        (*self.common, *s.overrides, f"algorithm.name={m}", f"seed={seed}",
                         f"train.lr={TUNED_LR[LR_FROM.get(m, m)]}",
                         f"train.eval_every={rounds}"))
                for s in self.settings for m in self.methods for seed in self.seeds]


def generalization_suite(quick: bool = False) -> GenSuite:
    """Three settings of 8 clients (6 train, half of them a round; 2 new): domain_mix8
    without rotate, domain_mix8 without colour (each held-out domain one unseen-domain
    client) and image_shift; 5 seeds. ``quick``: the same shape, tiny, one seed."""
    size = (("data.max_train_per_client=32", "data.max_test_per_client=16", "train.rounds=3")
            if quick else ("data.max_train_per_client=128", "data.max_test_per_client=100",
                           "train.rounds=10"))
    common = (*size, "train.local_epochs=1", "train.optimizer_state=keep",
              "train.fraction=0.5", "data.num_clients=8", "data.new_clients=0.25",
              "train.adapt_rounds=1", "data.partitioner=domain_mix", "data.domain_alpha=0.5")
    dm8 = (f"data.dataset={DIGITS8}",)
    settings = tuple(
        Setting(f"lodo_{d}", f"domain_mix8 with {d} held out (an unseen domain) and 2 of 8 "
                "clients new", (*dm8, f"data.ood_domains=[{d}]"), curve_every=0)
        for d in ("rotate", "colour")) + (
        Setting("image_shift_new", "image_shift (digits-4 + per-image shift) with 2 of 8 "
                "clients new", ("data.dataset=digits4+shift",), curve_every=0),)
    budget = ("8 clients a setting, 2 of them new (never trained) and half of the other 6 "
              f"a round; {size[2].split('=')[1]} rounds, at most "
              f"{size[0].split('=')[1]} training and {size[1].split('=')[1]} test examples "
              "per client (an unseen-domain client: as many of its domain's), 1 local "
              "epoch, Adam state kept per client; adaptation: one local update "
              "(`train.adapt_rounds=1`), the method's own. Cut to fit 45 minutes on 2 "
              "cores: 10 rounds and 128 examples (the paper suite: 16 and 256), so the "
              "participating numbers are not the paper tables'.")
    return GenSuite("generalization-quick" if quick else "generalization", settings, common,
                    (0,) if quick else (0, 1, 2, 3, 4), budget)


def per_method(suite: GenSuite, records: list[dict]) -> dict[str, list[dict]]:
    """Setting -> one row per method: per seed (sorted) each metric's final value."""
    out: dict[str, list[dict]] = {}
    for s in suite.settings:
        rows = []
        for m in suite.methods:
            recs = sorted((r for r in records if r["setting"] == s.name and r["method"] == m),
                          key=lambda r: r["seed"])
            if not recs:
                continue
            last = [r["history"][-1] for r in recs]
            row = {"method": m, "seeds": [r["seed"] for r in recs],
                   "params": last[0].get("model_params", math.nan)}
            for _, stem in METRICS:
                for kind in ("acc", "nll", "ece"):
                    key = stem.replace("acc", kind, 1) + "_mean"
                    vals = [f.get(key, math.nan) for f in last]
                    if m in REFERENCES and stem.startswith("ood"):
                        vals = [math.nan] * len(vals)  # its unseen domain's prompt: untrained
                    row[stem.replace("acc", kind, 1)] = vals
            rows.append(row)
        out[s.name] = rows
    return out


def comparisons(rows: list[dict], stem: str) -> dict[str, object]:
    """pFedBayesPT minus each other row (references aside) on ``stem``, paired by seed,
    Holm-adjusted across the rows: one family per setting and metric."""
    by = {r["method"]: r for r in rows}
    if FLAGSHIP not in by:
        return {}
    diffs = {m: paired(by[FLAGSHIP], r, stem) for m, r in by.items()
             if m != FLAGSHIP and m not in REFERENCES}
    return adjusted({m: paired_test(d) for m, d in diffs.items()
                     if len(d) and not np.isnan(d).any()})


def _cell(vals: list[float]) -> str:
    return fmt(*mean_std(vals))


def _plain(vals: list[float]) -> str:
    return plain(*mean_std(vals), 3)


def setting_table(rows: list[dict], has_ood: bool) -> str:
    metrics = [c for c in METRICS if has_ood or not c[1].startswith("ood")]
    head = ["method", "lr", "seeds", *[c for c, _ in metrics],
            "gap (participating − new)", "new NLL", "new ECE",
            *(["unseen NLL", "unseen ECE"] if has_ood else []), "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        gap = [a - b for a, b in zip(r["acc"], r["new_acc"])]
        cells = [NAMES[r["method"]], f"{TUNED_LR[LR_FROM.get(r['method'], r['method'])]:g}",
                 str(len(r["seeds"])), *[_cell(r[stem]) for _, stem in metrics], _cell(gap),
                 _plain(r["new_nll"]), _plain(r["new_ece"]),
                 *([_plain(r["ood_nll"]), _plain(r["ood_ece"])] if has_ood else []),
                 f"{r['params']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_table(rows: list[dict], has_ood: bool) -> str:
    """One row per comparison, one column per metric: the paired difference in points,
    the Holm-adjusted p and the word it earns."""
    metrics = [c for c in METRICS if has_ood or not c[1].startswith("ood")]
    tests = {stem: comparisons(rows, stem) for _, stem in metrics}
    others = [r["method"] for r in rows if r["method"] != FLAGSHIP and r["method"] not in
              REFERENCES]
    head = ["pFedBayesPT vs", *[c for c, _ in metrics]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in others:
        cells = []
        for _, stem in metrics:
            t = tests[stem].get(m)
            cells.append("n/a" if t is None else
                         f"{t.mean * 100:+.1f} ({SHORT[t.word]}, p {pval(t.p)}, "
                         f"Holm {pval(t.p_adj)})")
        lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(suite: GenSuite, per: dict[str, list[dict]]) -> list[str]:
    """What the verdict tables add up to, per metric: how many comparisons pFedBayesPT
    wins, loses or draws (Holm-adjusted, per setting and metric)."""
    out = []
    for col, stem in METRICS:
        words = [t.word for s in suite.settings for t in comparisons(per[s.name], stem).values()]
        if words:
            out.append(f"- {col}: beats {words.count('beats')}, behind "
                       f"{words.count('is behind')}, level {words.count('is level with')} of "
                       f"{len(words)} comparisons.")
    return out


def plot_generalization(path: Path, suite: GenSuite, per: dict[str, list[dict]]) -> None:
    """Accuracy on participating vs. new clients (zero-shot), one point per seed, a panel
    per setting: below the diagonal, a method serves new clients worse. A method far below
    the rest (a personal head at its initial value: chance) is drawn on the panel's
    floor with its mean written beside it, so the others keep a readable scale."""
    from .plots import _plt
    from .style import styles

    plt = _plt()
    look = styles(list(suite.methods))
    fig, axes = plt.subplots(1, len(suite.settings), figsize=(5 * len(suite.settings), 4.8))
    for ax, s in zip(np.atleast_1d(axes), suite.settings):
        rows = per[s.name]
        best = max(float(np.mean(r["new_acc"])) for r in rows)
        near = [r for r in rows if np.mean(r["new_acc"]) >= best - 0.3]
        vals = np.concatenate([np.r_[r["acc"], r["new_acc"]] for r in near]) * 100
        lo, hi = vals.min() - 2, vals.max() + 2
        floor = []
        for r in rows:
            x, y = np.asarray(r["acc"]) * 100, np.asarray(r["new_acc"]) * 100
            if r not in near:
                floor.append(f"{NAMES[r['method']]}: new {y.mean():.0f} % (off scale)")
                y = np.full_like(y, lo + 0.6)
            st = look[r["method"]]
            ax.scatter(x, y, color=st.color, marker=st.marker, s=34, label=NAMES[r["method"]],
                       edgecolors="black", linewidths=0.3, clip_on=False)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls=":")
        ax.set_xlim(min(lo, *(np.asarray(r["acc"]).min() * 100 - 1 for r in rows)), hi)
        ax.set_ylim(lo, hi)
        for i, text in enumerate(floor):
            ax.text(0.02, 0.04 + 0.06 * i, text, transform=ax.transAxes, fontsize=7)
        ax.set_title(s.name, fontsize=10)
        ax.set_xlabel("participating clients: mean test acc (%)")
        ax.set_ylabel("new clients, zero-shot: mean test acc (%)")
        ax.grid(alpha=0.3)
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: where the generalization section starts in a results.md: the paper suite's report keeps
#: what follows it when it rewrites the file, and this suite replaces only that
SECTION = "<!-- generalization suite (rayfed-bpt experiment --suite generalization) -->"


def merge_section(path: Path, section: str) -> None:
    """``path`` with its generalization section (from ``SECTION`` on) set to ``section``."""
    head = path.read_text().split(SECTION)[0].rstrip("\n") + "\n\n" if path.exists() else ""
    path.write_text(head + SECTION + "\n" + section)


def write_generalization_report(out: Path, suite: GenSuite, records: list[dict],
                                info: dict) -> Path:
    """The tables, verdicts and budget as the generalization section of ``out/results.md``
    (beside the paper suite's report when it is there), and ``out/figures/
    generalization.png``; return the Markdown path."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    per = per_method(suite, records)
    plot_generalization(out / "figures" / "generalization.png", suite, per)
    md = [f"## Generalization: new clients and unseen domains (suite `{suite.name}`)", "",
          f"Command: `{info['command']}`; {info['runs']} runs, {info['wall_seconds'] / 60:.1f} "
          f"min on {info['machine']}.", "", f"Budget: {suite.budget}", "",
          "Accuracy in percent, mean ± std over seeds "
          f"{', '.join(map(str, suite.seeds))}: **participating** = the clients that trained "
          "(each with its own state), **new** = clients held out of training, zero-shot "
          "(the global state, a personal part at its initial value) and adapted (one local "
          "update of the method's own), **unseen domain** = the held-out domain's client. "
          "Verdicts: pFedBayesPT minus each row, paired by seed, two-sided t-test, "
          "Holm-adjusted across the rows of one setting and metric; \"beats\" / \"behind\" "
          "only below 0.05.", "", *summary_lines(suite, per), "",
          "![generalization](figures/generalization.png)", ""]
    for s in suite.settings:
        has_ood = any("ood_domains" in o for o in s.overrides)
        md += [f"### {s.title}", "", f"Setting `{s.name}`; overrides: "
               f"`{' '.join((*suite.common, *s.overrides))}`.", "",
               setting_table(per[s.name], has_ood), "", verdict_table(per[s.name], has_ood), ""]
    path = out / "results.md"
    merge_section(path, "\n".join(md))
    return path


def run_generalization(quick: bool = False, out: str | Path | None = None,
                       report_dir: str | Path | None = None, address: str | None = None,
                       tracking: bool = True, tracking_uri: str | None = None,
                       command: str = "", log=print) -> Path:
    """Run (what the cache lacks) and report the generalization suite."""
    import os
    import platform

    from .runner import execute, suite_session

    suite = generalization_suite(quick)
    command = command or ("rayfed-bpt experiment --suite generalization"
                          + (" --quick" if quick else ""))
    with suite_session(suite.name, quick, out, report_dir, address, tracking, tracking_uri,
                       command) as ses:
        records = execute(suite.runs(), ses.store, ses.child, ses.parent_id, log)
    history = ses.store.log_invocation(time.perf_counter() - ses.t0, ses.store.written)
    working = [h for h in history if h["computed"] > 0] or history[-1:]
    info = {"command": command, "runs": len(records),
            "wall_seconds": sum(h["wall_seconds"] for h in working),
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})"}
    path = write_generalization_report(ses.report_dir, suite, records, info)
    ses.finish(path, len(records), log)
    return path
