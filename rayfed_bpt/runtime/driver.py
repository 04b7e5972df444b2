"""The driver actor: the round engine over a client pool, with MLflow and checkpoints.

It sets the run up when it is created, in the order that overlaps best: first
the pool (``runtime.pool``; Ray client actors then load torch and the backbone
in their own processes), then its own heavy imports, the algorithm and a
resumed run's checkpoint, then the MLflow store in a thread while the actors
finish starting. ``run`` lets the engine run the rounds. After each round, in
this order: checkpoint, MLflow, progress, injected faults (tests), and on Tune
the wait for the scheduler's go-ahead; after the last, results/ (every pool) and
their MLflow artifacts. Progress is one channel (``progress``), pushed to
whoever waits on it (a blocking call, not a poll); ``DriverHandle`` is how the
entry process and Tune start and read a driver.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..config import ExperimentConfig
from ..data import PartitionReader
from ..engine.pool import ClientPool, PoolContext, make_pool
from ..engine.state import RoundListener, RunState
from ..errors import RayfedError
from . import faults
from .resources import process_started_at


class Driver:
    def __init__(self, cfg: ExperimentConfig, partition_dir: str, run_dir: str,
                 tracking_uri: str | None,
                 resume: bool = False, placement_group=None, bundle_offset: int = 0,
                 parent_run_id: str | None = None, paced: bool = False,
                 mlflow_run_id: str | None = None):
        # wall-clock marks of the start-up, for docs/running.md's "before round 1" breakdown
        self.timeline = {"driver_process": process_started_at(), "driver_init": time.time()}
        self.cfg = cfg
        self.cfg_dict = cfg.to_dict()  # what config.yaml and checkpoints record
        self.partition_dir = partition_dir
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri
        self.pg, self.bundle_offset = placement_group, bundle_offset  # Tune: the trial's
        self.parent_run_id = parent_run_id
        self.paced = paced  # Tune: wait for proceed() after each round
        self._go = threading.Semaphore(0)
        self._cond = threading.Condition()
        self._progress = {"version": 0, "round": 0, "rounds": self.cfg.train.rounds,
                          "status": "starting", "notes": [],
                          "mlflow_run_id": mlflow_run_id}
        self.rounds_log: list[dict] = []
        self.tracker = None
        self.pool: ClientPool | None = None
        self.state = None
        self._tracking: Future | None = None
        self.backbone: dict = {}
        self._setup_error: BaseException | None = None
        try:
            self._setup(partition_dir, resume, mlflow_run_id)
        except Exception as e:  # noqa: BLE001 - an actor dying in __init__ loses the error's
            self._setup_error = e  # type; ready() raises it as a plain task error instead
            self._release()
        self.timeline["driver_ready"] = time.time()

    def _setup(self, partition_dir: str, resume: bool, mlflow_run_id: str | None) -> None:
        self.reader = PartitionReader(partition_dir, verify=False)
        # 1. the pool first (client actors start while this actor loads torch below)
        self.pool = make_pool(PoolContext(self.cfg, self.reader, str(self.run_dir), self.pg,
                                          self.bundle_offset))
        # 2. the run's setup: a bad option or checkpoint fails here, before any file
        import torch

        from ..engine.checkpoint import load_checkpoint
        from ..engine.setup import load_backbone, make_algorithm
        from ..models.backbone import describe, summary

        torch.set_num_threads(self.cfg.runtime.threads)  # server math, as in every pool
        self.alg = make_algorithm(self.cfg, load_backbone(self.cfg), self.reader)
        self.backbone = summary(self.alg.backbone.vit)  # MLflow's params get it too
        self.note(describe(self.alg.backbone.vit))
        found = load_checkpoint(self.run_dir) if resume else None
        self.state = found[0] if found else None
        if self.state is not None:
            self._progress["round"] = self.state.round
            # the keeper's id is the newer one (a run moved to the fallback store after
            # this checkpoint); a --resume in a new process has only the checkpoint's
            self._progress["mlflow_run_id"] = mlflow_run_id or self.state.mlflow_run_id
        # 3. the MLflow store (import, schema) in a thread, while the actors still start
        if self.tracking_uri:
            opener = ThreadPoolExecutor(1, thread_name_prefix="mlflow-open")
            self._tracking = opener.submit(self._open_tracking)
            opener.shutdown(wait=False)  # the thread ends with the call

    def ready(self) -> dict:
        """The run is set up (or the reason it could not be); where it starts."""
        if self._setup_error is not None:
            raise self._setup_error
        return {"start_round": self._progress["round"]}

    # ----- progress, read by the entry process and Tune (other threads of this actor) ------
    def _update(self, **kw) -> None:
        with self._cond:
            self._progress.update(kw)
            self._progress["version"] += 1
            self._cond.notify_all()

    def note(self, text: str) -> None:
        """A message for the person running this (printed by the entry process)."""
        with self._cond:
            notes = self._progress["notes"] + [text]
        self._update(notes=notes)

    def progress(self, version: int, since: int = 0, timeout: float = 60.0) -> dict:
        """The run's progress as soon as it is newer than ``version`` (or after
        ``timeout``): version, status, round, notes, the MLflow run id, and
        ``new_rounds``, the metrics of every round after the first ``since`` this
        driver ran (a display shows them, a Tune trial reports them)."""
        with self._cond:
            self._cond.wait_for(lambda: self._progress["version"] > version, timeout)
            snapshot = json.loads(json.dumps(self._progress))
            snapshot["new_rounds"] = [dict(m) for m in self.rounds_log[since:]]
            return snapshot

    def proceed(self) -> None:
        """Paced runs: let the next round start."""
        self._go.release()

    def mlflow_run_id(self) -> str | None:
        return self._progress["mlflow_run_id"]

    # ----- the run --------------------------------------------------------------------------
    def run(self) -> dict:
        self.ready()
        try:
            return self._run()
        except BaseException:
            if self.tracker is not None:
                self.tracker.finish("FAILED")
            self._update(status="failed")
            raise
        finally:
            self._release()

    def _release(self) -> None:
        """The pool goes, its client actors and their placement group with it (a failed
        setup, or the run's end)."""
        if self.pool is not None:
            self.pool.close()

    def _open_tracking(self):
        from ..tracking import MlflowListener

        return MlflowListener(self.tracking_uri, self.cfg.tracking.experiment,
                              Path(self.cfg.runtime.output_dir).resolve() / "mlartifacts",
                              self.run_dir, {**self.cfg_dict, "backbone_used": self.backbone},
                              self.parent_run_id, self.note)

    def _run(self) -> dict:
        from ..engine.checkpoint import CheckpointWriter
        from ..engine.loop import Engine, evaluated
        from ..engine.results import ResultsWriter
        from ..run_folder import RunFolder

        cfg = self.cfg
        self._update(status="starting actors")
        self.pool.start()
        actors_ready_at = self.timeline["actors_ready"] = time.time()
        stats: dict = {}

        def workers() -> list[dict]:  # where each worker ran: results/ and the summary
            stats.update(self.pool.stats())
            return stats["workers"]

        listeners: list[RoundListener] = [
            CheckpointWriter(self.run_dir, self.cfg_dict, cfg.runtime.checkpoint_every,
                             cfg.train.rounds, lambda r: faults.due(
                                 cfg.runtime.faults, self.run_dir, "disk_full", r)),
            ResultsWriter(RunFolder(self.run_dir), self.cfg_dict, workers)]  # at the end
        if self._tracking is not None:  # after results/: its on_finish logs them
            self.tracker = self._tracking.result()
            listeners.append(self.tracker)
        listeners += [_Progress(self), _Faults(cfg.runtime.faults, self.run_dir)]
        if self.paced:
            listeners.append(_Pace(self._go, cfg.train.rounds, cfg.runtime.round_timeout_s))
        engine = Engine(cfg, self.alg, self.pool, self.reader.training_ids,
                        self.reader.info.domain_names, listeners,
                        personal_dir=RunFolder(self.run_dir).file(RunFolder.PERSONAL),
                        new_clients=self.reader.new_clients,
                        ood_clients=self.reader.ood_clients)
        state = self.state or engine.initial_state()
        if self.tracker is not None:
            state.mlflow_run_id = self.tracker.start(
                self._progress["mlflow_run_id"] or state.mlflow_run_id, state.history)
            self._update(mlflow_run_id=state.mlflow_run_id)
        self.timeline["tracking_ready"] = time.time()
        self._update(status="training", round=state.round)
        state = engine.run(state)
        self.timeline["rounds_done"] = time.time()
        infos = stats["workers"] if stats else workers()
        if self.tracker is not None:
            self.tracker.finish("FINISHED")
        self._update(status="finished")
        return {"history": evaluated(state.history), "run_dir": str(self.run_dir),
                "mlflow_run_id": state.mlflow_run_id,
                "tracking_uri": self.tracker.uri if self.tracker else self.tracking_uri,
                "actors": infos, "actor_memory": stats["memory"],
                "actors_replaced": stats["replaced"],
                "actors_start_seconds": actors_ready_at - self.timeline["driver_init"],
                "actors_ready_at": actors_ready_at,
                "round_seconds": [m["round_seconds"] for m in state.history],
                "notes": self._progress["notes"], "timeline": self.timeline}


class _Progress(RoundListener):
    def __init__(self, driver: Driver):
        self.driver = driver

    def on_round(self, state: RunState, metrics: dict) -> None:
        self.driver.timeline.setdefault("first_round_done", time.time())
        with self.driver._cond:
            self.driver.rounds_log.append(dict(metrics))
        self.driver._update(round=state.round)


class _Faults(RoundListener):
    def __init__(self, specs: list[str], run_dir: Path):
        self.specs, self.run_dir = specs, run_dir

    def on_round(self, state: RunState, metrics: dict) -> None:
        if faults.due(self.specs, self.run_dir, "driver_exit", state.round):
            faults.exit_now()
        if faults.due(self.specs, self.run_dir, "pause", state.round):
            faults.pause(self.run_dir, state.round)


class _Pace(RoundListener):
    """Tune: after each round wait for the trial's go-ahead, so that a scheduler's decision
    to stop the trial lands before the next round starts, not after the run is over."""

    def __init__(self, go: threading.Semaphore, rounds: int, timeout_s: float):
        self.go, self.rounds, self.timeout_s = go, rounds, timeout_s

    def on_round(self, state: RunState, metrics: dict) -> None:
        if state.round < self.rounds and not self.go.acquire(timeout=self.timeout_s):
            raise RayfedError(f"round {state.round}: nobody asked for the next round within "
                              f"{self.timeout_s:.0f}s (paced run)")
