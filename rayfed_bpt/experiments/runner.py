"""Running an experiment suite: the run cache, one Ray task per run, MLflow, the report.

Each run not in the cache goes to ``runtime.tasks`` (the single-process reference
loop in a Ray task with one CPU; this module imports no Ray itself). Finished runs
go to the suite's ``RunStore`` at once (``store``). A failed run does not stop the
others; the suite reports it and keeps what finished.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        rec = {"key": k, **_labels(s), "overrides": list(s.overrides),
               "final_evals": s.final_evals, **out}
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
    # each spec's own labels: one run can answer two specs (pFedBayesPT's tuning run at a
    # rate is its personal-part selection's "none" run), and each stage reads its own
    return [{**records[k], **_labels(s)} for s, k in keyed]


def _labels(spec: RunSpec) -> dict:
    """Where a run belongs in the report: its stage, setting, method, seed, study, value."""
    return {f: getattr(spec, f) for f in ("stage", "setting", "method", "seed", "study",
                                          "value")}


@dataclass
class Session:
    """One invocation of a suite: its run cache, report folder and MLflow parent run."""

    store: RunStore
    report_dir: Path
    parent: Any = None  # the invocation's MLflow run (a Tracker), with its id
    child: Any = None  # where each federated run goes, under the parent
    parent_id: str | None = None
    experiment: str = ""  # the MLflow experiment's name
    t0: float = field(default_factory=time.perf_counter)

    def finish(self, report: Path, runs: int, log) -> float:
        """The report is written: the wall time, the parent run's metrics and artifacts."""
        wall = time.perf_counter() - self.t0
        if self.parent is not None:
            from ..tracking import ui_command

            self.parent.log_metrics({"wall_seconds": wall, "runs": runs}, step=0)
            self.parent.log_artifacts(self.report_dir)
            self.parent.finish()
            log(f"MLflow experiment {self.experiment} in {self.parent.uri}\n"
                f"  browse it: {ui_command(self.parent.uri)}")
        log(f"report: {report} ({wall / 60:.1f} min)")
        return wall


@contextmanager
def suite_session(suite_name: str, quick: bool, out: str | Path | None,
                  report_dir: str | Path | None, address: str | None, tracking: bool,
                  tracking_uri: str | None, command: str) -> Iterator[Session]:
    """Ray, the run cache (``out``, default ``./rayfed_runs/experiment-<suite>``) and
    MLflow for one invocation; Ctrl-C / SIGTERM inside stop it cleanly, keeping every
    finished run (and the invocation's time, which the report counts)."""
    from ..runtime.launch import init_ray
    from ..runtime.signals import sigterm_as_interrupt, stop_signal
    from ..tracking import Tracker, resolve_tracking_uri

    out = Path(out or f"rayfed_runs/experiment-{suite_name}").resolve()
    init_ray(address)  # a cluster that cannot be joined: refused before anything is written
    ses = Session(RunStore(out), Path(report_dir).resolve() if report_dir else out / "report",
                  experiment=f"rayfed_bpt-{suite_name}")
    if tracking:
        uri = resolve_tracking_uri(tracking_uri, out)
        ses.parent, ses.child = (Tracker(uri, ses.experiment, artifact_root=out / "mlartifacts")
                                 for _ in range(2))
        ses.parent_id = ses.parent.start(f"suite {suite_name}",
                                         {"command": command, "quick": quick})
    ses.t0 = time.perf_counter()
    try:
        with sigterm_as_interrupt():
            yield ses
    except BaseException as e:
        # an interrupted invocation still counts in the report's wall time
        ses.store.log_invocation(time.perf_counter() - ses.t0, ses.store.written)
        if ses.parent is not None:
            ses.parent.finish("FAILED")
        if isinstance(e, KeyboardInterrupt):
            code, name = stop_signal()
            raise Interrupted(f"stopped by {name}: the {ses.store.written} run(s) finished in "
                              f"this invocation are kept in {ses.store.dir}; run the same "
                              "command again to resume", code) from None
        raise


def run_suite(name: str = "paper", quick: bool = False, out: str | Path | None = None,
              report_dir: str | Path | None = None, address: str | None = None,
              tracking: bool = True, tracking_uri: str | None = None,
              command: str = "", log=print, add_methods: list[str] = (),
              plugins: list[str] = ()) -> Path:
    """Tune, run and report a suite; return the path of its ``results.md``.
    ``add_methods`` join every setting's rows (a plugin's method: name its module in
    ``plugins``)."""
    from .paper import SUITES
    from .report import chosen_personal, tuned_lrs, write_report

    if name == "generalization":  # its own runs and report
        from .generalization import run_generalization

        if add_methods or plugins:
            raise RayfedError("--add-method / --import: the paper suite takes them; the "
                              "generalization suite runs its fixed rows")
        return run_generalization(quick, out, report_dir, address, tracking, tracking_uri,
                                  command, log)
    if name not in SUITES:
        raise RayfedError(f"unknown suite {name!r}; available: "
                          f"{sorted([*SUITES, 'generalization'])}")
    suite = SUITES[name](quick)
    if add_methods or plugins:
        suite = suite.with_methods(add_methods, plugins)
    with suite_session(suite.name, quick, out, report_dir, address, tracking, tracking_uri,
                       command) as ses:
        store, child, parent_id = ses.store, ses.child, ses.parent_id
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
    n_main, n_sens = len(main_specs), len(sens_specs)
    main, sens = done[:n_main], done[n_main : n_main + n_sens]
    variants = done[n_main + n_sens :]
    records = tune + select + main + sens + variants
    keys = sorted({r["key"] for r in records})
    history = store.log_invocation(time.perf_counter() - ses.t0, store.written)
    info = _report_info(suite, name, quick, command, records, keys, history)
    path = write_report(ses.report_dir, suite, tune, main, sens, lrs, info, variants, select)
    ses.finish(path, len(keys), log)
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
