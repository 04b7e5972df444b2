"""Running an experiment suite: the run cache, one Ray task per run, MLflow, the report.

Each run not in the cache goes to ``runtime.tasks`` (the single-process reference
loop in a Ray task with one CPU; this module imports no Ray itself). Finished runs
go to the suite's ``RunStore`` at once (``store``). A failed run does not stop the
others; the suite reports it and keeps what finished.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import Interrupted, RayfedError
from ..runtime.tasks import run_configs
from .store import RunStore, log_run, prepare_partitions
from .suite import ABLATIONS, FLAGSHIP, RunSpec, run_key


def _cost(spec: RunSpec) -> float:
    """A rough relative cost, so that the longest runs start first (better packing)."""
    clients = spec.config.data.num_clients
    bayes = spec.method.startswith(FLAGSHIP) or spec.method in ABLATIONS
    return clients * (2.0 if bayes else 1.0) * (0.1 if spec.method == "fedavg_linear" else 1.0)


def execute(specs: list[RunSpec], store: RunStore, tracker=None, parent_run_id: str | None = None,
            log=print) -> list[dict]:
    """Run what ``store`` does not hold yet; return one record per spec (same order)."""
    keyed = [(s, run_key(s.overrides, s.final_evals)) for s in specs]
    records: dict[str, dict] = {}
    todo: dict[str, RunSpec] = {}
    for s, k in keyed:
        rec = store.get(k)
        if rec is not None:
            records[k] = rec
        else:
            todo.setdefault(k, s)
    if todo:
        prepare_partitions(list(todo.values()))
    order = sorted(todo.items(), key=lambda kv: -_cost(kv[1]))
    if log:
        log(f"{len(keyed)} runs: {len(records)} from the cache, {len(todo)} to run")
    failures = []
    done, t0 = 0, time.perf_counter()
    for k, out, error in run_configs([(k, s.config, s.final_evals) for k, s in order]):
        s = todo[k]
        done += 1
        if error is not None:  # one failed run must not lose the others
            failures.append(f"{s.label()}: {error}")
            if log:
                log(f"[{done}/{len(todo)}] FAILED {s.label()}: {failures[-1]}")
            continue
        rec = {"key": k, **{f: getattr(s, f) for f in ("stage", "setting", "method", "seed",
                                                         "study", "value")},
               "overrides": list(s.overrides), "final_evals": s.final_evals, **out}
        if tracker is not None:
            rec["mlflow_run_id"] = log_run(tracker, rec, parent_run_id)
        store.put(rec)
        records[k] = rec
        if log:
            last = out["history"][-1]
            split = "val_" if "acc_mean" not in last else ""  # tuning: validation only
            log(f"[{done}/{len(todo)}] {s.label()}: mean client {split or 'test '}acc "
                f"{last[f'{split}acc_mean']:.3f} "
                f"({out['seconds']:.0f}s; {time.perf_counter() - t0:.0f}s elapsed)")
    if failures:
        raise RayfedError(
            f"{len(failures)} run(s) failed (finished runs are kept in {store.dir}; run the "
            "same command again to retry only the failed ones):\n  " + "\n  ".join(failures))
    return [records[k] for _, k in keyed]


def run_suite(name: str = "paper", quick: bool = False, out: str | Path | None = None,
              report_dir: str | Path | None = None, address: str | None = None,
              tracking: bool = True, tracking_uri: str | None = None,
              command: str = "", log=print, add_methods: list[str] = (),
              plugins: list[str] = ()) -> Path:
    """Tune, run and report a suite; return the path of its ``results.md``.
    ``add_methods`` join every setting's rows (a plugin's method: name its module in
    ``plugins``)."""
    from ..runtime.launch import init_ray
    from ..runtime.signals import sigterm_as_interrupt, stop_signal
    from ..tracking import Tracker, resolve_tracking_uri, ui_command
    from .paper import SUITES
    from .report import chosen_personal, tuned_lrs, write_report

    if name not in SUITES:
        raise RayfedError(f"unknown suite {name!r}; available: {sorted(SUITES)}")
    suite = SUITES[name](quick)
    if add_methods or plugins:
        suite = suite.with_methods(add_methods, plugins)
    out = Path(out or f"rayfed_runs/experiment-{suite.name}").resolve()
    report_dir = Path(report_dir).resolve() if report_dir else out / "report"
    store = RunStore(out)
    init_ray(address)
    parent, child, parent_id = None, None, None
    if tracking:
        uri = resolve_tracking_uri(tracking_uri, out)
        parent = Tracker(uri, f"rayfed_bpt-{suite.name}", artifact_root=out / "mlartifacts")
        child = Tracker(uri, f"rayfed_bpt-{suite.name}", artifact_root=out / "mlartifacts")
        parent_id = parent.start(f"suite {suite.name}", {"command": command, "quick": quick})
    t0 = time.perf_counter()
    try:
        with sigterm_as_interrupt():
            log(f"stage 1/2: learning-rate tuning on {suite.tune_setting}, "
                f"seed {suite.tune_seed}")
            tune = execute(suite.tune_runs(), store, child, parent_id, log)
            lrs = tuned_lrs(tune)
            log("tuned learning rates: " + ", ".join(f"{m} {v:g}" for m, v in lrs.items()))
            select = execute(suite.select_runs(lrs), store, child, parent_id, log)
            personal, _ = chosen_personal(suite, select)
            if personal:
                log(f"personal part chosen on validation: {personal}")
            main_specs, sens_specs = suite.main_runs(lrs), suite.sensitivity_runs(lrs)
            var_specs = suite.variant_runs(lrs, personal)
            log(f"stage 2/2: {len(main_specs)} main runs, {len(sens_specs)} sensitivity "
                f"runs, {len(var_specs)} option-variant runs")
            done = execute(main_specs + sens_specs + var_specs, store, child, parent_id, log)
    except BaseException as e:
        # an interrupted invocation still counts in the report's wall time
        store.log_invocation(time.perf_counter() - t0, store.written)
        if parent is not None:
            parent.finish("FAILED")
        if isinstance(e, KeyboardInterrupt):
            code, name = stop_signal()
            raise Interrupted(f"stopped by {name}: the {store.written} run(s) finished in "
                              f"this invocation are kept in {store.dir}; run the same command "
                              "again to resume", code) from None
        raise
    n_main, n_sens = len(main_specs), len(sens_specs)
    main, sens = done[:n_main], done[n_main : n_main + n_sens]
    variants = done[n_main + n_sens :]
    wall = time.perf_counter() - t0
    records = tune + select + main + sens + variants
    keys = sorted({r["key"] for r in records})
    history = store.log_invocation(wall, store.written)
    info = _report_info(suite, name, quick, command, records, keys, history)
    path = write_report(report_dir, suite, tune, main, sens, lrs, info, variants, select)
    if parent is not None:
        parent.log_metrics({"wall_seconds": wall, "runs": len(keys)}, step=0)
        parent.log_artifacts(report_dir)
        parent.finish()
        log(f"MLflow experiment rayfed_bpt-{suite.name} in {parent.uri}\n"
            f"  browse it: {ui_command(parent.uri)}")
    log(f"report: {path} ({wall / 60:.1f} min)")
    return path


def _report_info(suite, name: str, quick: bool, command: str, records: list[dict],
                 keys: list[str], history: list[dict]) -> dict:
    """What the report says of where its numbers come from: the command, the suite hash,
    the invocations that computed runs and their wall time, the machine."""
    import platform

    from .suite import config_hash

    working = [h for h in history if h["computed"] > 0] or history[-1:]
    return {
        "command": command or f"rayfed-bpt experiment --suite {name}" + (" --quick" * quick),
        "suite_hash": config_hash(keys),
        "wall_seconds": sum(h["wall_seconds"] for h in working),
        "invocations": ", ".join(f"{h['computed']} runs in {h['wall_seconds'] / 60:.1f} min"
                                 for h in working),
        "runs": len(keys),
        "run_seconds": sum(r["seconds"] for r in {r["key"]: r for r in records}.values()),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
        "budget": suite.budget,
        "notes": suite.notes,
    }
