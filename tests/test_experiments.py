"""The experiment suite: its design (fair comparisons), run keys, the run cache on a real
local Ray, the report's statistics against hand computations, and the CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from _net import short_tempdir, stop_ray
from scipy.stats import ttest_1samp, ttest_rel

from rayfed_bpt.cli import main as cli_main
from rayfed_bpt.config import load_config
from rayfed_bpt.engine import run_reference
from rayfed_bpt.errors import RayfedError
from rayfed_bpt.experiments import paper_suite
from rayfed_bpt.experiments.paper import _studies
from rayfed_bpt.experiments.report import (
    chosen_personal,
    rows_by_setting,
    setting_rows,
    study_rows,
    tuned_lrs,
    write_report,
)
from rayfed_bpt.experiments.runner import execute
from rayfed_bpt.experiments.stats import (
    ablation_lines,
    comparisons,
    holm,
    mean_std,
    oracle_gap,
    paired_test,
    paired_word,
    verdict,
)
from rayfed_bpt.experiments.store import RunStore
from rayfed_bpt.experiments.suite import (
    FLAGSHIP,
    LR_FROM,
    METHODS,
    RunSpec,
    run_key,
)
from rayfed_bpt.experiments.tables import COSTS, diagnostics_table, headline_table

LRS = {m: 0.01 * (i + 1) for i, m in enumerate(METHODS) if m not in LR_FROM}


def _ovr(spec: RunSpec) -> dict[str, str]:
    d: dict[str, str] = {}
    for o in spec.overrides:
        k, v = o.split("=", 1)
        d[k] = v  # the last one wins, as in load_config
    return d


@pytest.mark.parametrize("quick", [False, True])
def test_paper_suite_compares_methods_fairly(quick):
    s = paper_suite(quick)
    main = s.main_runs(LRS)
    assert len(main) == sum(len(s.seeds_of(st, m)) for st in s.settings
                            for m in s.methods_of(st))
    for setting in s.settings:
        # a setting that runs a subset still has the method, its baseline and its headroom
        assert {FLAGSHIP, "fedavg_vpt", *setting.headroom} <= set(s.methods_of(setting))
        for m in setting.side_methods:  # cheaper rows: the first of the setting's seeds
            assert m not in (FLAGSHIP, "fedavg_vpt", "oracle_domain_vpt")
            assert s.seeds_of(setting)[: len(s.seeds_of(setting, m))] == s.seeds_of(setting, m)
        for seed in s.seeds_of(setting):
            runs = [_ovr(r) for r in main if r.setting == setting.name and r.seed == seed]
            assert sorted(r["algorithm.name"] for r in runs) == sorted(
                m for m in s.methods_of(setting) if seed in s.seeds_of(setting, m))
            # everything but the method, its learning rate and the eval schedule is shared
            shared = [{k: v for k, v in r.items() if k not in
                       ("algorithm.name", "train.lr", "train.eval_every")} for r in runs]
            assert all(x == shared[0] for x in shared)
            for r in runs:
                m = r["algorithm.name"]
                assert float(r["train.lr"]) == LRS[LR_FROM.get(m, m)]
    # tuning never uses a seed the tables report
    assert all(r.seed == s.tune_seed not in s.seeds for r in s.tune_runs())
    assert {r.method for r in s.tune_runs()} == set(METHODS) - set(LR_FROM)
    for r in s.tune_runs():  # chosen on validation: the test split is not even evaluated
        cfg = r.config
        assert cfg.data.val_fraction > 0 and not cfg.train.eval_test
    # a sensitivity run is the main flagship run of its seed plus exactly its study's options
    sens = s.sensitivity_runs(LRS)
    for r in sens:
        base = next(m for m in main if m.method == FLAGSHIP and m.seed == r.seed
                    and m.setting == s.sensitivity_setting)
        extra = {k: v for k, v in _ovr(r).items() if _ovr(base).get(k) != v}
        extra.pop("train.eval_every", None)
        assert extra and all(k.startswith("algorithm.options.") for k in extra)
    variants = s.variant_runs(LRS, "both")  # the options plus the chosen personal part
    assert {r.study for r in variants} == {v.name for v in s.variants} | {"personal: both"}
    for r in variants:  # an option variant: the main flagship run plus its option
        base = next(m for m in main if m.method == FLAGSHIP and m.seed == r.seed
                    and m.setting == r.setting)
        extra = {k: v for k, v in _ovr(r).items() if _ovr(base).get(k) != v}
        extra.pop("train.eval_every", None)
        v = next(v for v in s.all_variants("both") if v.name == r.study)
        assert extra == dict(o.split("=", 1) for o in v.overrides)
    assert s.variant_runs(LRS, "none") == s.variant_runs(LRS)  # "none" adds no runs
    # the personal part is chosen on validation at the tune seed: the flagship's tune run
    # (at its rate) plus exactly the choice's options, on each personal setting
    select = s.select_runs(LRS)
    assert len(select) == len(s.personal_choices) * len(s.personal_settings)
    for r in select:
        cfg = r.config
        assert r.seed == s.tune_seed and cfg.data.val_fraction > 0 and not cfg.train.eval_test
        assert float(_ovr(r)["train.lr"]) == LRS[FLAGSHIP]
        if r.value == "none":
            assert not any(k.startswith("algorithm.options.") for k in _ovr(r))
    keys = [run_key(r.overrides, r.final_evals) for r in main + sens + variants + select]
    assert len(set(keys)) == len(keys)


def test_run_key_ignores_where_a_run_goes_not_what_it_computes():
    base = ("train.rounds=3", "algorithm.name=fedavg_vpt")
    k = run_key(base)
    assert run_key((*base, "runtime.output_dir=/elsewhere", "tracking.enabled=false")) == k
    assert run_key((*base, "train.eval_every=3")) == run_key((*base, "train.eval_every=7"))
    assert run_key((*base, "train.lr=0.03")) != k
    assert run_key((*base, "train.eval_every=1")) != k
    assert run_key(base, {"S16": {"eval_samples": 16}}) != k


def tiny(part4, *extra):
    return (f"data.partition_dir={part4}", "data.max_train_per_client=32",
            "data.max_test_per_client=16", "train.rounds=2", "train.fraction=1.0",
            "algorithm.options.prompt_len=2", *extra)


def test_final_metrics_do_not_depend_on_the_eval_schedule(part4):
    """Why a curve run (eval every round) can stand for a final-only run of the same config."""
    args = ("algorithm.name=pfedbayespt", "algorithm.options.eval_samples=2")
    every = run_reference(load_config(None, list(tiny(part4, *args, "train.eval_every=1"))),
                          log=None)
    once = run_reference(load_config(None, list(tiny(part4, *args, "train.eval_every=2"))),
                         log=None)
    assert len(every) == 2 and len(once) == 1
    for k in ("acc_mean", "acc_min", "train_loss"):
        assert every[-1][k] == once[-1][k]


def test_final_evals_reevaluate_the_trained_state(part4):
    cfg = load_config(None, list(tiny(part4, "algorithm.name=pfedbayespt",
                                      "algorithm.options.eval_samples=2")))
    seen = []
    h = run_reference(cfg, log=None, final_evals={"same": {"eval_samples": 2},
                                                  "mean": {"eval_mode": "mean"}},
                      on_finish=lambda alg, g, personal, clients: seen.append((alg, g)))
    alg, g = seen[0]  # the trained global state, not the initial one
    init = alg.init_global()
    assert g.keys() == init.keys() and any(not (g[k] == init[k]).all() for k in g)
    last = h[-1]
    # the same options again reproduce the run's own evaluation (same noise stream)
    for k in ("acc_mean", "acc_std", "acc_min", "domain_acc/mnist"):
        assert last[f"same/{k}"] == pytest.approx(last[k], nan_ok=True)
    assert 0.0 <= last["mean/acc_mean"] <= 1.0


def test_run_store_is_atomic_and_survives_a_corrupt_file(tmp_path):
    store = RunStore(tmp_path)
    store.put({"key": "abc", "history": [{"round": 1}]})
    assert store.get("abc")["history"] == [{"round": 1}]
    assert not list(store.dir.glob("*.tmp"))
    store.path("bad").write_text("{not json")
    assert store.get("bad") is None
    assert store.path("bad").with_suffix(".corrupt").exists()


def test_execute_caches_runs_and_reports_failures_without_losing_others(part4, tmp_path,
                                                                        local_ray):
    good = RunSpec("main", "dm4", "fedavg_vpt", 0,
                   tiny(part4, "algorithm.name=fedavg_vpt", "train.eval_every=1"))
    # the same config asked for by a second stage: one run, each spec its own labels
    twin = RunSpec("select", "dm4", "fedavg_vpt", 0, good.overrides, "personal", "none")
    store, lines = RunStore(tmp_path), []
    recs = execute([good, twin], store, log=lines.append)
    assert "2 runs: 0 from the cache, 1 to run" in lines[0]
    assert recs[0]["history"] == recs[1]["history"] and len(recs[0]["history"]) == 2
    assert (recs[0]["stage"], recs[0]["study"]) == ("main", "")
    assert (recs[1]["stage"], recs[1]["study"], recs[1]["value"]) == ("select", "personal",
                                                                      "none")
    ref = run_reference(load_config(None, list(good.overrides)), log=None)
    assert recs[0]["history"][-1]["acc_mean"] == ref[-1]["acc_mean"]  # a Ray task = the loop
    lines.clear()
    again = execute([good], store, log=lines.append)
    assert "1 from the cache, 0 to run" in lines[0]
    assert again[0]["history"] == recs[0]["history"]

    # a valid config that fails as it trains (a domain id beyond the oracle's prompts)
    bad = RunSpec("main", "dm4", "oracle_domain_vpt", 0,
                  tiny(part4, "algorithm.name=oracle_domain_vpt",
                       "algorithm.options.max_domains=1"))
    other = RunSpec("main", "dm4", "local", 0, tiny(part4, "algorithm.name=local"))
    with pytest.raises(RayfedError,
                       match=r"(?s)1 run\(s\) failed.*oracle_domain_vpt.*max_domains=1"):
        execute([bad, other], store, log=None)
    assert store.get(run_key(other.overrides)) is not None  # the good run was kept


def _rec(setting, method, seed, acc, stage="main", study="", value="", extra=None):
    last = {"round": 2, "acc_mean": acc, "acc_std": 0.1, "acc_min": acc - 0.2,
            "global_acc": acc, "domain_acc/a": acc, "domain_acc/b": acc - 0.1, **(extra or {})}
    return {"key": f"{setting}{method}{seed}{study}{value}", "stage": stage, "setting": setting,
            "method": method, "seed": seed, "study": study, "value": value,
            "overrides": [f"seed={seed}"], "seconds": 1.0,
            "history": [{**last, "round": 1, "acc_mean": acc / 2}, last]}


def test_report_statistics_match_hand_computation(tmp_path):
    # the paper suite, with a sensitivity stage as a suite may have one
    s = replace(paper_suite(quick=False), studies=_studies(False), sensitivity_seeds=(0, 1))
    assert len(s.seeds) == 5
    flag_acc, pfedpg_acc = [0.80, 0.78, 0.83, 0.81, 0.79], [0.79, 0.80, 0.81, 0.80, 0.80]
    oracle_acc = [0.90, 0.91, 0.95, 0.92, 0.90]
    accs = {m: [0.70 + 0.01 * i + 0.002 * seed for seed in s.seeds]
            for i, m in enumerate(METHODS)}
    accs[FLAGSHIP] = flag_acc
    accs["pfedpg"] = pfedpg_acc  # the best baseline (ablations do not count)
    accs["pfedbayespt_det"] = [0.75 + 0.01 * seed for seed in s.seeds]  # a control, behind
    accs["gaussian_vi"] = [0.95] * 5  # run on 3 seeds only (a side row)
    accs["oracle_domain_vpt"] = oracle_acc  # a reference: never the best baseline
    variants = {f"{k}/{m}": 0.5 for k in s.sample_evals for m in ("acc_mean", "acc_min")}
    main = [_rec(st.name, m, seed, accs[m][s.seeds.index(seed)], extra=variants)
            for st in s.settings for m in s.methods_of(st) for seed in s.seeds_of(st, m)]
    rows = setting_rows(s, main, "domain_mix8")
    flag = next(r for r in rows if r["method"] == FLAGSHIP)
    assert flag["acc_ms"][0] == pytest.approx(np.mean(flag_acc))
    assert flag["acc_ms"][1] == pytest.approx(np.std(flag_acc, ddof=1))
    d = np.array(flag_acc) - np.array(pfedpg_acc)
    v = verdict(rows)
    # +0.2 with two seeds of five behind: level, not "beats"
    assert "is level with the best baseline** (pFedPG)" in v
    assert f"{d.mean() * 100:+.1f} ± {d.std(ddof=1) * 100:.1f} sd" in v and "3 of 5;" in v
    # the table's family: the best baseline, then each control and ablation, paired on the
    # seeds both ran (Gaussian-VI: 3), Holm-adjusted together; checked against scipy's
    # paired t-test and a Holm adjustment written out here
    family = ["pfedpg", "fedavg_mlp", "pfedbayespt_nocond", "pfedbayespt_det",
              "gaussian_vi", "pfedbayespt_beta0"]
    seeds = {m: s.seeds_of(s.setting("domain_mix8"), m) for m in family}
    ps = [ttest_rel(np.array(flag_acc)[list(seeds[m])],
                    np.array(accs[m])[list(seeds[m])]).pvalue for m in family]
    order = np.argsort(ps)
    adj, run = np.empty(len(ps)), 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (len(ps) - rank) * ps[i]))
        adj[i] = run
    tests = comparisons(rows)
    assert list(tests) == family
    for m, p, a in zip(family, ps, adj):
        assert tests[m].p == pytest.approx(p) and tests[m].p_adj == pytest.approx(a)
    lines = ablation_lines(rows)  # every comparison but the best baseline's
    assert len(lines) == len(family) - 1
    vi = next(x for x in lines if "Gaussian-VI" in x)
    assert "3 seeds (higher in 0 of 3;" in vi
    word = "is behind" if adj[family.index("gaussian_vi")] < 0.05 else "is level with"
    assert f"pFedBayesPT {word} Gaussian-VI" in vi
    beta0 = next(x for x in lines if "beta=0" in x)
    d0 = np.array(flag_acc[:3]) - np.array(accs["pfedbayespt_beta0"][:3])
    assert f"{d0.mean() * 100:+.1f} ± {d0.std(ddof=1) * 100:.1f} sd" in beta0
    assert f"Holm-adjusted = {adj[family.index('pfedbayespt_beta0')]:.3f}" in beta0
    fedavg = next(r for r in rows if r["method"] == "fedavg_vpt")
    gap = np.array(oracle_acc) - np.array(accs["fedavg_vpt"])
    assert f"{gap.mean() * 100:+.1f} ± {gap.std(ddof=1) * 100:.1f} points" in oracle_gap(rows)
    assert "room for" in oracle_gap(rows)
    fedavg["acc"] = [a - 0.005 for a in oracle_acc]
    assert "cannot show gains of instance-wise prompts" in oracle_gap(rows)
    k_rows = setting_rows(s, main, "k_classes")  # label skew: the personal head's gap
    assert "personal-head gap (a personal head − one shared head)" in oracle_gap(
        k_rows, s.setting("k_classes").headroom)
    # the best cell is bold, ablation or not; a method a setting does not run is n/a
    table = headline_table(s, rows_by_setting(s, main))
    assert "**95.0 ± 0.0** (3 seeds)" in table and "n/a" in table
    assert mean_std([0.5])[0] == 0.5 and math.isnan(mean_std([0.5])[1])  # no spread of one

    sens = [_rec(s.sensitivity_setting, FLAGSHIP, seed, 0.6, "sensitivity", st.name, label)
            for st in s.studies for label, _ in st.values[1:] for seed in s.sensitivity_seeds]
    studies = study_rows(s, main, sens)
    j = studies["J"]
    assert j[0]["default"] and j[0]["n"] == len(s.sensitivity_seeds)
    assert j[0]["acc_ms"][0] == pytest.approx(np.mean(flag_acc[: len(s.sensitivity_seeds)]))
    assert j[1]["acc_ms"][0] == pytest.approx(0.6)
    assert [r["value"] for r in studies["S"]] == ["mean_prompt", "S1", "S4", "S8"]

    tune = [_rec("domain_mix", m, 100, acc, "tune", value=str(lr))
            for m in LRS for lr, acc in ((0.01, 0.5), (0.03, 0.7), (0.1, 0.7))]
    assert set(tuned_lrs(tune).values()) == {0.03}  # a tie goes to the smaller rate
    # validation decides, whatever the test split says
    on_val = [_rec("domain_mix", "fedavg_vpt", 100, test, "tune", value=str(lr),
                   extra={"val_acc_mean": val})
              for lr, test, val in ((0.01, 0.9, 0.5), (0.03, 0.5, 0.7))]
    assert tuned_lrs(on_val) == {"fedavg_vpt": 0.03}
    info = {"command": "x", "suite_hash": "h", "wall_seconds": 60.0, "invocations": "1",
            "runs": 3, "run_seconds": 3.0, "machine": "m", "budget": "b", "notes": ""}
    # the personal part: validation picks the highest mean over its settings ("both" here)
    val = {"none": (0.5, 0.8), "local head": (0.9, 0.7), "client prompt": (0.6, 0.8),
           "both": (0.92, 0.7)}
    select = [_rec(st, FLAGSHIP, s.tune_seed, 0.0, "select", "personal", label,
                   extra={"val_acc_mean": val[label][i]})
              for label, _ in s.personal_choices for i, st in enumerate(s.personal_settings)]
    assert chosen_personal(s, select)[0] == "both"
    variants = [_rec(st, FLAGSHIP, seed, 0.9, "variant", v.name)
                for v in s.all_variants("both") for st in v.settings
                for seed in s.seeds_of(s.setting(st), v.name)]
    path = write_report(tmp_path, s, tune, main, sens, tuned_lrs(tune), info, variants,
                        select)
    text = path.read_text()
    assert "| **both** (chosen) | 92.0 | 70.0 | 81.0 |" in text
    assert "| k_classes | personal: both | 90.0 ±" in text
    for _, title, _ in COSTS:  # every setting table carries the cost columns
        assert text.count(f" {title} |") >= len(s.settings)
    for st in s.settings:
        assert f"curves_{st.name}.png" in text
        assert (tmp_path / "figures" / f"domains_{st.name}.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "sensitivity_S.png").exists()
    assert "is level with the best baseline" in text and "Headroom: oracle gap" in text


@pytest.mark.parametrize("d, word", [
    ([0.002, 0.001, 0.004], "is level with"),  # every seed agrees, p = 0.13: not enough
    ([0.05, 0.06, -0.001, 0.05, 0.055], "beats"),  # one disagrees; p = 0.013
    ([0.02, -0.01, 0.01], "is level with"),
    ([-0.02, -0.03, -0.01], "is level with"),  # p = 0.074 at 3 seeds
    ([-0.02, -0.03, -0.025, -0.021], "is behind"),
    ([0.01, 0.01, 0.01], "beats"),  # no spread at all: certain
    ([0.5], "is level with"),  # one seed: never a win
])
def test_verdict_rule(d, word):
    """A verdict needs a paired t-test p below 0.05 (scipy's ttest_1samp decides here)."""
    d = np.asarray(d)
    t = paired_test(d)
    assert t.word == paired_word(d) == word
    if len(d) > 1 and d.std() > 0:
        ref = ttest_1samp(d, 0.0)
        assert t.p == pytest.approx(ref.pvalue)
        assert (ref.pvalue < 0.05) == (word != "is level with")
        lo, hi = ref.confidence_interval(0.95)
        assert t.ci95 == pytest.approx((lo, hi))


def test_sign_flip_p_and_holm_against_brute_force():
    import itertools

    d = np.array([0.03, -0.01, 0.02, 0.04, 0.01])
    flips = [abs(np.dot(sg, d)) for sg in itertools.product([1, -1], repeat=5)]
    assert paired_test(d).p_signflip == pytest.approx(
        sum(f >= abs(d.sum()) - 1e-12 for f in flips) / 32)
    assert paired_test(np.full(5, 0.01)).p_signflip == pytest.approx(2 / 32)  # its floor
    # Holm by hand: sorted 0.01, 0.02, 0.04, 0.3 (m = 4) -> 0.04, 0.06, 0.08, 0.3
    assert holm([0.04, 0.3, 0.01, 0.02]) == pytest.approx([0.08, 0.3, 0.04, 0.06])
    assert holm([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    assert math.isnan(holm([math.nan, 0.01])[0]) and holm([math.nan, 0.01])[1] == 0.01


def test_experiment_cli_help_and_unknown_suite(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["experiment", "--help"])
    assert e.value.code == 0 and "--quick" in capsys.readouterr().out
    assert cli_main(["experiment", "--suite", "nope", "--no-tracking"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


def test_results_md_is_committed_and_names_its_command():
    from pathlib import Path

    md = Path(__file__).resolve().parents[1] / "docs" / "results.md"
    text = md.read_text()
    assert "rayfed-bpt experiment --suite paper" in text
    for st in paper_suite().settings:
        assert f"figures/curves_{st.name}.png" in text
        assert (md.parent / "figures" / f"curves_{st.name}.png").exists()


@pytest.mark.slow  # ~40 s: `pytest -m slow`
def test_sigterm_stops_a_suite_cleanly_and_keeps_its_finished_runs(tmp_path):
    """SIGTERM (sent once the first run has finished) stops the suite with exit 143 and a
    one-line message, no traceback; every run it finished is in the cache, and the
    invocation is in invocations.json (the report's wall time counts it)."""
    temp = short_tempdir("rt")  # this suite's own Ray
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayfed_bpt.cli", "experiment", "--quick", "--no-tracking",
         "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": temp})
    try:
        for line in proc.stdout:
            if line.startswith("[1/"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
        stop_ray(temp)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "run the same command again to resume" in err
    runs = list((tmp_path / "runs").glob("*.json"))
    [inv] = json.loads((tmp_path / "invocations.json").read_text())
    assert runs and inv["computed"] == len(runs)


def test_diagnostics_table_takes_sigma_along_the_curve_seed_and_last_round_means():
    """A run's history holds its evaluated rounds: only the curve seed has several. The
    table's sigma is the mean over seeds of the last round; its path is the curve seed's."""
    s = paper_suite(quick=False)

    def rec(seed, sigmas):
        return {"setting": "domain_mix8", "method": FLAGSHIP, "seed": seed, "history": [
            {"round": 4 * (i + 1), "acc_mean": 0.8, "train_w_psi0": 1.0,
             "train_sigma_mean": v} for i, v in enumerate(sigmas)]}

    table = diagnostics_table(s, [rec(0, [0.2, 0.3]), rec(1, [0.5])], [])
    assert "| 1.000 | 0.400 | 0.200 -> 0.300 (rounds 4-8) |" in table
    assert "Gaussian-VI" not in table  # a run the suite did not make has no row
