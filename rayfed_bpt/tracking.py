"""MLflow tracking: where runs go, and what a person finds in the MLflow UI.

The embedded default is a SQLite store at an absolute path under the output
folder (``sqlite:////abs/rayfed_runs/mlflow.db``) with artifacts beside it;
``tracking.tracking_uri`` or ``MLFLOW_TRACKING_URI`` points elsewhere (a
tracking server on a cluster). A relative SQLite URI would silently create a
separate store in whichever folder a process runs in, so URIs are resolved
to absolute paths here, once, before any worker starts.
"""

from __future__ import annotations

import base64
import fcntl
import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .engine.state import RoundListener, RunState
from .errors import ConfigError, RayfedError
from .run_folder import RunFolder, nearest_existing

# A tracking server that is down costs seconds, not MLflow's default minutes of retries.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def resolve_tracking_uri(uri: str | None, output_dir: str | Path) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(Path(output_dir).resolve() / 'mlflow.db')}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's client sends (a token, or a user and password)."""
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def check_tracking_uri(uri: str) -> None:
    """Fail in seconds, before anything starts, when ``uri`` cannot be used."""
    if uri.startswith(("http://", "https://")):
        request = urllib.request.Request(uri.rstrip("/") + "/health", headers=_auth_headers())
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise ConfigError(
                    f"the MLflow tracking server {uri} refused the request (HTTP {e.code}): "
                    "check credentials (MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME "
                    "and MLFLOW_TRACKING_PASSWORD).") from None
            # any other answer (an older server without /health): it is there
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(f"the MLflow tracking server {uri} cannot be reached ({reason}). "
                              "Start it, point tracking.tracking_uri / MLFLOW_TRACKING_URI "
                              "at one that runs, or set tracking.enabled=false.") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        existing = nearest_existing(folder)
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise ConfigError(f"the MLflow store {uri} cannot be written: {existing} is not a "
                              "writable folder. Set runtime.output_dir or "
                              "tracking.tracking_uri elsewhere.")


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


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Within: no other process opens the same SQLite store for the first time. MLflow
    creates a new store's schema on first use; two runs started at once into a new
    output folder would both create it, and one would die ("duplicate column")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Tracker:
    """A thin wrapper over ``MlflowClient`` (no global MLflow state: safe in actors)."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | Path | None = None):
        if uri.startswith(("http://", "https://")):
            for k, v in HTTP_ENV.items():
                os.environ.setdefault(k, v)
        with store_lock(uri):
            self._open(uri, experiment, artifact_root)
        self.run_id: str | None = None

    def _open(self, uri: str, experiment: str, artifact_root: str | Path | None) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        # a new SQLite store's "Creating initial MLflow database tables..." is not news to
        # a person watching a run (its warnings and errors still show)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

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

    def has_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

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


FALLBACK = RunFolder.FALLBACK  # where a run records that its MLflow run moved


def fallback_of(run_dir: str | Path) -> tuple[str, str, str] | None:
    """(store, run id, the note that told of it) a run moved to after its tracking store
    failed, if it did."""
    path = Path(run_dir) / FALLBACK
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    return d["tracking_uri"], d["mlflow_run_id"], d["note"]


def mark_killed(uri: str, run_id: str) -> None:
    """Mark MLflow run ``run_id`` KILLED if it is still RUNNING (a stopped run or Tune
    trial); best effort, without retries: the store may be why the run stopped."""
    os.environ.update({**HTTP_ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
    except Exception:  # noqa: BLE001 - nothing more to do about it
        pass


class MlflowListener(RoundListener):
    """Logs a run to MLflow after each round, and survives the store going away.

    If logging fails mid-run (a tracking server stopped), training goes on: the
    run, with every round so far, is re-created in a local SQLite store in the run
    folder, later rounds go there, and ``note`` tells the person where it is. The move
    is recorded in the run folder (``FALLBACK``), so that a driver recreated after a
    crash goes on in that store too (``fallback_of``).
    """

    timing = "log_seconds"  # in the run's history and results (MLflow gets it a round on)

    def __init__(self, uri: str, experiment: str, artifact_root: str | Path,
                 run_dir: str | Path, params: dict, parent_run_id: str | None,
                 note: Callable[[str], None]):
        self.experiment, self.run_dir, self.params = experiment, Path(run_dir), params
        self.parent_run_id, self.note = parent_run_id, note
        self.tracker = Tracker(uri, experiment, artifact_root)
        self.fallback_uri: str | None = None

    def start(self, run_id: str | None, history: list[dict] = ()) -> str:
        """Open (or reopen, on resume) this run's MLflow run; its id. A resumed run
        pointed at another store (``--resume DIR --set tracking.tracking_uri=...``) gets
        a new run there, with every round so far."""
        moved = run_id is not None and not self.tracker.has_run(run_id)
        run_id = self.tracker.start(self.run_dir.name, self.params, None if moved else run_id,
                                    parent_run_id=self.parent_run_id)
        for m in history if moved else ():
            self.tracker.log_metrics(m, step=int(m["round"]))
        return run_id

    def on_round(self, state: RunState, metrics: dict) -> None:
        try:
            self.tracker.log_metrics(metrics, step=int(metrics["round"]))
        except Exception as e:  # noqa: BLE001 - any store failure: keep training, keep metrics
            self._fall_back(state, e)

    def _fall_back(self, state: RunState, error: Exception) -> None:
        if self.fallback_uri is not None:
            raise RayfedError(f"the fallback MLflow store {self.fallback_uri} failed too: "
                              f"{error}") from error
        lost = self.tracker.uri
        folder = RunFolder(self.run_dir)
        self.fallback_uri = f"sqlite:///{folder.fallback_db.resolve()}"
        self.tracker = Tracker(self.fallback_uri, self.experiment, folder.fallback_artifacts)
        self.tracker.start(self.run_dir.name, self.params)
        for m in state.history:  # every round so far, so nothing is lost in either store
            self.tracker.log_metrics(m, step=int(m["round"]))
        state.mlflow_run_id = self.tracker.run_id  # later checkpoints name the moved run
        note = (f"the MLflow store {lost} failed at round {state.round} "
                f"({str(error).splitlines()[0][:200]}); training goes on, and this run's "
                f"metrics (every round) are in {self.fallback_uri}; browse them: "
                f"{ui_command(self.fallback_uri)}")
        tmp = self.run_dir / f".{FALLBACK}.tmp"
        tmp.write_text(json.dumps({"tracking_uri": self.fallback_uri,
                                   "mlflow_run_id": self.tracker.run_id, "note": note}))
        os.replace(tmp, self.run_dir / FALLBACK)
        self.note(note)

    @property
    def uri(self) -> str:
        """The store that holds the run now (the fallback one after a failure)."""
        return self.tracker.uri

    def on_finish(self, state: RunState, engine) -> None:
        """The run's results/ (written by the ResultsWriter before this) as artifacts."""
        results = RunFolder(self.run_dir).results
        if results.is_dir():
            self.log_artifacts(results)

    def log_artifacts(self, folder: str | Path) -> None:
        try:
            self.tracker.log_artifacts(folder)
        except Exception as e:  # noqa: BLE001 - the files stay in the run folder
            self.note(f"artifacts not logged to {self.tracker.uri} ({e}); they are in {folder}")

    def finish(self, status: str = "FINISHED") -> None:
        try:
            self.tracker.finish(status)
        except Exception:  # noqa: BLE001 - never hide the run's own outcome behind this
            pass
