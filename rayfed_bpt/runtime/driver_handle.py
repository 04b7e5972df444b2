"""The one way to start and talk to a driver actor, for ``run`` and ``tune`` alike.

The driver actor itself needs no CPU of its own (it waits on its client actors);
on Tune it sits in bundle 0 of the trial's placement group. Its progress is one
channel (``progress``): a blocking call that returns as soon as anything changed —
status, notes, the MLflow run id and the rounds finished since the caller last looked
— so the entry process's display and a Tune trial's reports read the same thing.
"""

from __future__ import annotations

import ray

from ..config import ExperimentConfig
from ..tracking import mark_killed
from .driver import Driver


class DriverHandle:
    def __init__(self, cfg: ExperimentConfig, partition_dir: str, run_dir: str,
                 tracking_uri: str | None, *, resume: bool = False, placement_group=None,
                 parent_run_id: str | None = None, paced: bool = False,
                 mlflow_run_id: str | None = None):
        opts: dict = {"num_cpus": 0, "num_gpus": 0, "max_concurrency": 4}
        if placement_group is not None:  # a Tune trial: bundle 0, client actors after it
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group, placement_group_bundle_index=0)
        self.tracking_uri = tracking_uri
        self.actor = ray.remote(Driver).options(**opts).remote(
            cfg, partition_dir, run_dir, tracking_uri, resume=resume,
            placement_group=placement_group, bundle_offset=1 if placement_group else 0,
            parent_run_id=parent_run_id, paced=paced, mlflow_run_id=mlflow_run_id)

    def ready(self) -> dict:
        """Wait for the run's setup (its checkpoint read, the pool started); raises the
        setup's error as a ``RayTaskError``."""
        return ray.get(self.actor.ready.remote())

    def run(self) -> ray.ObjectRef:
        return self.actor.run.remote()

    def progress(self, version: int, since: int, timeout: float = 60.0) -> ray.ObjectRef:
        """The driver's progress once newer than ``version``, with the rounds after the
        first ``since`` (``Driver.progress``)."""
        return self.actor.progress.remote(version, since, timeout)

    def proceed(self) -> None:
        """Paced runs (Tune): let the next round start."""
        self.actor.proceed.remote()

    def mlflow_run_id(self, timeout: float = 5.0) -> str | None:
        """The run's MLflow id, if the driver still answers."""
        try:
            return ray.get(self.actor.mlflow_run_id.remote(), timeout=timeout)
        except Exception:  # noqa: BLE001 - it may be gone already
            return None

    def kill(self, mark: tuple[str | None, str | None] | None = None) -> None:
        """The driver goes, its client actors with it. ``mark``: (store, run id) of an
        MLflow run still RUNNING, marked KILLED (a finished one stays FINISHED)."""
        ray.kill(self.actor, no_restart=True)
        if mark and mark[0] and mark[1]:
            mark_killed(*mark)
