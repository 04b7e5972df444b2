"""What a suite keeps outside Ray: finished runs on disk, partitions, MLflow child runs.

Each finished run is written to ``<out>/runs/<key>.json`` at once, keyed by its
resolved config, so an interrupted suite resumes where it stopped and identical
runs are shared between stages.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from .suite import RunSpec


def prepare_partitions(specs: list[RunSpec]) -> None:
    """Write every partition once, here, before parallel runs could race to write one."""
    from ..config import load_config
    from ..data.recipe import resolve_partition

    seen = set()
    for s in specs:
        cfg = load_config(None, list(s.overrides))
        ident = (json.dumps(asdict(cfg.data), sort_keys=True), cfg.seed)
        if ident not in seen:
            seen.add(ident)
            resolve_partition(cfg.data, cfg.seed)


class RunStore:
    """Finished runs on disk: ``<out>/runs/<key>.json``, written atomically."""

    def __init__(self, out: Path):
        self.dir = Path(out) / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._putting: set[str] = set()  # keys this process computed and puts here

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            p.rename(p.with_suffix(".corrupt"))  # kept for a look; the run is redone
            return None

    def log_invocation(self, wall_seconds: float, computed: int) -> list[dict]:
        """Append this invocation to ``<out>/invocations.json``; return them all."""
        path = self.dir.parent / "invocations.json"
        history = json.loads(path.read_text()) if path.exists() else []
        history.append({"at": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_seconds": wall_seconds,
                        "computed": computed})
        path.write_text(json.dumps(history, indent=1))
        return history

    @property
    def written(self) -> int:
        """Runs this process computed and put here: those whose file is in place (a stop
        in the middle of a ``put`` neither counts a run that is not there nor misses one
        that is)."""
        return sum(self.path(k).exists() for k in self._putting)

    def put(self, record: dict) -> None:
        self._putting.add(record["key"])
        tmp = self.path(record["key"]).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, self.path(record["key"]))


def log_run(tracker, rec: dict, parent_run_id: str | None) -> str:
    """One MLflow child run per suite run: its config, its tags and its metric history."""
    from ..config import load_config

    cfg = load_config(None, rec["overrides"]).to_dict()
    name = "/".join(x for x in (rec["stage"], rec["setting"], rec["method"], rec["study"],
                                rec["value"], f"s{rec['seed']}") if x != "")
    run_id = tracker.start(name, cfg, parent_run_id=parent_run_id)
    tracker.client.set_tag(run_id, "run_key", rec["key"])
    for tag in ("stage", "setting", "method", "seed", "study", "value"):
        tracker.client.set_tag(run_id, tag, str(rec[tag]))
    for m in rec["history"]:
        tracker.log_metrics({k: v for k, v in m.items() if k != "round"}, step=int(m["round"]))
    tracker.log_metrics({"run_seconds": rec["seconds"]}, step=int(rec["history"][-1]["round"]))
    tracker.finish()
    return run_id
