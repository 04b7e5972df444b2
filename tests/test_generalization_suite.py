"""The generalization suite: its runs, its statistics (against scipy and a hand-made
Holm), its tables and figure; end to end (reduced) in the slow set."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import ttest_rel

from rayfed_bpt.config import load_config
from rayfed_bpt.experiments.generalization import (
    METHODS,
    TUNED_LR,
    comparisons,
    generalization_suite,
    per_method,
    plot_generalization,
    setting_table,
    verdict_table,
)
from rayfed_bpt.experiments.suite import FLAGSHIP, LR_FROM

STEMS = ("acc", "new_acc", "new_acc_adapted", "ood_acc", "ood_acc_adapted")


def test_every_run_holds_clients_out_and_uses_a_validation_chosen_rate():
    suite = generalization_suite()
    runs = suite.runs()
    assert len(runs) == len(suite.settings) * len(METHODS) * 5
    for r in runs:
        cfg = r.config  # every run's config is a valid one
        assert cfg.data.new_clients == 0.25 and cfg.train.adapt_rounds == 1
        assert cfg.train.lr == TUNED_LR[LR_FROM.get(r.method, r.method)]
        assert cfg.train.eval_every == cfg.train.rounds  # final only
    held = {r.setting: r.config.data.ood_domains for r in runs}
    assert held == {"lodo_rotate": ["rotate"], "lodo_colour": ["colour"],
                    "image_shift_new": None}
    assert load_config(None, list(runs[0].overrides)).train.eval_test  # the test split


def _records(suite, rng):
    """Synthetic finished runs: every method x setting x seed with random final metrics."""
    out = []
    for s in suite.settings:
        for m in suite.methods:
            for seed in suite.seeds:
                last = {"model_params": 100.0}
                for stem in STEMS:
                    for kind in ("acc", "nll", "ece"):
                        last[stem.replace("acc", kind, 1) + "_mean"] = float(rng.uniform())
                out.append({"setting": s.name, "method": m, "seed": seed,
                            "history": [{"acc_mean": 0.0}, last]})
    return out


def test_comparisons_are_scipys_paired_test_with_holm_per_setting_and_metric():
    suite = generalization_suite()
    rng = np.random.default_rng(0)
    per = per_method(suite, _records(suite, rng))
    rows = per["lodo_rotate"]
    tests = comparisons(rows, "new_acc")
    by = {r["method"]: r for r in rows}
    assert set(tests) == set(METHODS) - {FLAGSHIP, "oracle_domain_vpt"}
    ps = {m: ttest_rel(by[FLAGSHIP]["new_acc"], by[m]["new_acc"]).pvalue for m in tests}
    order = sorted(ps, key=ps.get)  # Holm by hand: k-th smallest times (m - k), monotone
    running, adjusted = 0.0, {}
    for k, m in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * ps[m]))
        adjusted[m] = running
    for m, t in tests.items():
        assert t.p == pytest.approx(ps[m]) and t.p_adj == pytest.approx(adjusted[m])
        assert t.mean == pytest.approx(np.mean(by[FLAGSHIP]["new_acc"]) - np.mean(by[m]["new_acc"]))
    # the oracle's unseen-domain prompt was never trained: no number is shown for it
    assert all(math.isnan(x) for x in by["oracle_domain_vpt"]["ood_acc"])
    table = setting_table(rows, has_ood=True)
    oracle_line = next(line for line in table.splitlines() if line.startswith("| Domain oracle"))
    assert oracle_line.count("n/a") == 4  # two unseen-domain accuracies, its NLL and ECE
    assert "unseen domain" not in setting_table(per["image_shift_new"], has_ood=False)
    verdicts = verdict_table(rows, has_ood=True)
    assert len(verdicts.splitlines()) == 2 + len(tests) and "Holm" in verdicts


def test_the_figure_gives_each_method_its_own_style(tmp_path):
    import matplotlib.image as mpimg

    suite = generalization_suite(quick=True)
    per = per_method(suite, _records(suite, np.random.default_rng(1)))
    path = tmp_path / "g.png"
    plot_generalization(path, suite, per)
    assert mpimg.imread(path).shape[1] > 1000  # a panel per setting


@pytest.mark.slow  # ~1 min: the reduced suite end to end, on Ray, with MLflow
def test_the_reduced_generalization_suite_runs_and_reports(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "experiment", "--suite",
                        "generalization", "--quick", "--out", str(tmp_path / "g")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (tmp_path / "g" / "report" / "results.md").read_text()
    assert (tmp_path / "g" / "report" / "figures" / "generalization.png").exists()
    for s in ("lodo_rotate", "lodo_colour", "image_shift_new"):
        assert f"Setting `{s}`" in report
    assert report.count("| pFedBayesPT vs |") == 3 and "new, adapted" in report
    again = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "experiment", "--suite",
                            "generalization", "--quick", "--out", str(tmp_path / "g"),
                            "--no-tracking"], capture_output=True, text=True, timeout=600)
    assert "21 runs: 21 from the cache, 0 to run" in again.stdout + again.stderr


def test_the_section_shares_results_md_with_the_paper_report(tmp_path):
    from rayfed_bpt.experiments.generalization import SECTION, merge_section

    path = tmp_path / "results.md"
    merge_section(path, "gen one\n")  # no paper report yet: the section alone
    assert path.read_text() == SECTION + "\ngen one\n"
    path.write_text("# paper\ntables\n")
    merge_section(path, "gen one\n")
    merge_section(path, "gen two\n")  # replaces its own section, keeps the paper's
    assert path.read_text() == "# paper\ntables\n\n" + SECTION + "\ngen two\n"
