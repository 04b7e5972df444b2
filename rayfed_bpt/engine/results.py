"""What a person looks at after a run, written by a listener so every pool writes it:
``results/`` in the run folder — clients.csv, the accuracy plots, the resolved config
and where each worker ran (workers.json)."""

from __future__ import annotations

import json
from collections.abc import Callable

from ..reporting import plot_domains, plot_history, write_client_csv
from ..run_folder import RunFolder
from .state import RoundListener, RunState


class ResultsWriter(RoundListener):
    """At the run's end: ``results/`` from the last test evaluation, the history and the
    pool's ``stats`` (its ``workers``: placement and clients trained)."""

    def __init__(self, folder: RunFolder, config: dict, workers: Callable[[], list[dict]]):
        self.folder, self.config, self.workers = folder, config, workers

    def on_finish(self, state: RunState, engine) -> None:
        out = self.folder.results
        out.mkdir(parents=True, exist_ok=True)
        name = engine.alg.name
        history = [m for m in state.history if "acc_mean" in m]  # test-evaluated rounds
        if engine.last_evals:
            write_client_csv(out / "clients.csv", engine.last_evals, engine.domain_names,
                             engine.pool.sizes)
        if history:
            plot_history(out / "accuracy_vs_round.png", history, f"{name}: test accuracy")
            plot_domains(out / "domain_accuracy.png", history[-1],
                         f"{name}: per-domain accuracy, round {history[-1]['round']}")
        self.folder.write_config(self.config, out / RunFolder.CONFIG)
        (out / "actors.json").write_text(json.dumps(self.workers(), indent=1))
