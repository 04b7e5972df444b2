"""The Python API: what the ``rayfed-bpt`` command does, as functions.

    >>> from rayfed_bpt import api
    >>> cfg = api.config(overrides={"algorithm.name": "fedavg_vpt", "train.rounds": 3})
    >>> result = api.run(cfg)                # on Ray: actors, run folder, MLflow
    >>> result.final["acc_mean"], result.run_dir, result.mlflow_run_id

Importing this module starts neither Ray nor torch (each function imports what it
needs when called), so a script or a notebook can build and check configs cheaply.
Everything here is a thin layer over the library the CLI calls too: same checks,
same messages (``RayfedError``), same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, apply_overrides, from_dict, read_yaml, with_plugins
from .errors import ConfigError
from .knobs import set_key
from .plugins import KINDS, import_plugins, origin

__all__ = ["RunResult", "config", "experiment", "read_partition", "registered", "run", "tune"]


@dataclass
class RunResult:
    """What a run leaves: its evaluated rounds' metrics, where its files and MLflow run are."""

    history: list[dict[str, float]]
    run_dir: Path | None  # None for a run in this process (``local=True``): it writes nothing
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    summary: dict = field(default_factory=dict, repr=False)  # everything the runtime reported

    @property
    def final(self) -> dict[str, float]:
        """The last evaluated round's metrics (``acc_mean``, ``acc_min``, ``global_acc``...)."""
        return self.history[-1] if self.history else {}


def config(source: str | Path | Mapping | None = None,
           overrides: Mapping[str, Any] | Sequence[str] = (),
           plugins: Sequence[str] = (), **sections: Any) -> ExperimentConfig:
    """A checked config: from a YAML file or a (nested or dotted) mapping, or the defaults,
    with ``overrides`` — ``{"train.rounds": 5}`` or ``["train.rounds=5"]`` — and keyword
    sections — ``train={"rounds": 5}, seed=1`` — on top, ``plugins`` imported and added to
    its own. Bad keys and values are refused here."""
    if source is None:
        d: dict = {}
    elif isinstance(source, Mapping):
        d = {}
        for key, value in source.items():  # dotted keys allowed, as in overrides
            set_key(d, str(key), value)
    else:
        d = read_yaml(source)
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_key(d, str(key), value)
    else:
        apply_overrides(d, list(overrides))
    for key, value in sections.items():
        set_key(d, str(key), value)
    return from_dict(ExperimentConfig, with_plugins(d, list(plugins)))


def run(cfg: ExperimentConfig, *, resume: str | Path | None = None, local: bool = False,
        progress: bool | str = False, log=None) -> RunResult:
    """Run ``cfg``. On Ray (a local one, or ``runtime.address`` / $RAY_ADDRESS): client
    actors, a run folder with checkpoints under ``runtime.output_dir``, an MLflow run;
    ``resume`` continues the run folder given. ``local=True`` runs every client in this
    process instead (no Ray, no files, no MLflow): the reference the Ray runtime is
    tested against, with the same numbers. ``progress``/``log``: as the CLI shows them
    (False/None: quiet)."""
    if local:
        if resume is not None:
            raise ConfigError("resume needs a run on Ray (a run folder); drop local=True")
        from .engine.reference import run_reference

        return RunResult(run_reference(cfg, log=log), None)
    from .runtime.launch import run_experiment

    s = run_experiment(cfg, resume_dir=resume, show_progress=progress, log=log)
    return RunResult(s["history"], Path(s["run_dir"]), s.get("mlflow_run_id"),
                     s.get("tracking_uri"), s)


def tune(space: str | Path, overrides: Sequence[str] = (), *, plugins: Sequence[str] = (),
         address: str | None = None, output_dir: str | Path | None = None,
         resume: str | Path | None = None) -> dict:
    """Run (or ``resume``) the sweep of a search-space file (see tune_spaces/): trials
    chosen on validation, the best config written as YAML. Returns the sweep's summary
    (``best_config_path``, ``best_metric``, ``best_point``, ``sweep_dir``...)."""
    from .tune import load_space, run_sweep

    if resume is None:
        load_space(space, list(overrides), list(plugins))  # refused before Ray starts
    return run_sweep(space, list(overrides), address=address, resume_dir=resume,
                     output_dir=output_dir, plugins=list(plugins))


def experiment(suite: str = "paper", *, quick: bool = False, add_methods: Sequence[str] = (),
               plugins: Sequence[str] = (), out: str | Path | None = None,
               report_dir: str | Path | None = None, address: str | None = None,
               tracking: bool = True, log=print) -> Path:
    """Run an experiment suite (tuning, every method x setting x seed, the report) with
    ``add_methods`` as extra rows; returns the path of its ``results.md``. ``log``
    takes one line per finished run."""
    from .experiments.runner import run_suite

    return run_suite(suite, quick=quick, out=out, report_dir=report_dir, address=address,
                     tracking=tracking, add_methods=list(add_methods), plugins=list(plugins),
                     log=log)


def read_partition(path: str | Path):
    """A partition folder's reader (``PartitionReader``): ``num_clients``, ``info`` and
    ``load(k)`` — client ``k``'s memory-mapped shard (``images``/``labels``/``domains``
    of a split)."""
    from .data import PartitionReader

    return PartitionReader(path)


def registered(kind: str, plugins: Sequence[str] = ()) -> dict[str, str]:
    """Every registered algorithm, partitioner, importer or client pool (``kind``),
    name -> where it came from ("built-in", a module, or a package's entry point)."""
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r}; allowed: {list(KINDS)}")
    import_plugins(plugins)
    if kind == "algorithms":
        from .catalog import list_algorithms as names
    elif kind == "pools":
        from .catalog import pool_names as names
    elif kind == "partitioners":
        from .data import partitioner_names as names
    else:
        from .data import importer_names as names
    return {n: origin(kind, n) for n in names()}
