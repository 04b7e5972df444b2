"""MLflow tracking: where runs go, and what a person finds in the MLflow UI.

The embedded default is a SQLite store at an absolute path under the output
folder (``sqlite:////abs/rayfed_runs/mlflow.db``) with artifacts beside it;
``tracking.tracking_uri`` or ``MLFLOW_TRACKING_URI`` points elsewhere (a
tracking server on a cluster). A relative SQLite URI would silently create a
separate store in whichever folder a process runs in, so URIs are resolved
to absolute paths here, once, before any worker starts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import RayfedError


def resolve_tracking_uri(uri: str | None, output_dir: str | Path) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(Path(output_dir).resolve() / 'mlflow.db')}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = str(v)[:6000]
    return out


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


class Tracker:
    """A thin wrapper over ``MlflowClient`` (no global MLflow state: safe in actors)."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | Path | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = None
                if artifact_root is not None and uri.startswith("sqlite:"):
                    location = Path(artifact_root).resolve().as_uri()
                try:
                    self.experiment_id = self.client.create_experiment(
                        experiment, artifact_location=location)
                except Exception:  # noqa: BLE001 - created concurrently by another process
                    exp = self.client.get_experiment_by_name(experiment)
                    if exp is None:
                        raise
                    self.experiment_id = exp.experiment_id
            else:
                self.experiment_id = exp.experiment_id
        except Exception as e:  # noqa: BLE001 - any store failure gets the same advice
            raise RayfedError(f"cannot reach the MLflow tracking store {uri}: {e}. Check "
                              "tracking.tracking_uri / MLFLOW_TRACKING_URI.") from e
        self.run_id: str | None = None

    def start(self, run_name: str, params: dict, run_id: str | None = None,
              parent_run_id: str | None = None) -> str:
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {"mlflow.source.name": "rayfed-bpt"}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id  # shown nested in the MLflow UI
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = list(flatten(params).items())
        from mlflow.entities import Param

        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, int | float) and math.isfinite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, folder: str | Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder))

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)
