"""The driver actor's keeper in the entry process: start it, follow its progress,
recreate it from the last checkpoint if it dies, stop it cleanly on Ctrl-C / SIGTERM."""

from __future__ import annotations

from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayTaskError

from ..config import ExperimentConfig
from ..engine.checkpoint import checkpoint_round
from ..errors import Interrupted, RayfedError
from ..progress import Display
from ..tracking import fallback_of
from .driver_handle import DriverHandle


class Supervisor:
    def __init__(self, cfg: ExperimentConfig, partition_dir: str, run_dir: Path,
                 uri: str | None, display: Display | None, log):
        self.cfg, self.partition_dir, self.run_dir, self.uri = cfg, partition_dir, run_dir, uri
        self.display, self.log = display, log
        self.driver: DriverHandle | None = None
        self.done = None
        self.restarts = 0
        self.mlflow_run_id: str | None = None

    def start(self, resume: bool) -> None:
        self.driver = DriverHandle(self.cfg, self.partition_dir, str(self.run_dir), self.uri,
                                   resume=resume, mlflow_run_id=self.mlflow_run_id)
        try:
            self.driver.ready()  # the run's setup: checkpoint, pool
        except RayTaskError as e:
            self.driver.kill()
            raise unwrap(e) from None

    def wait(self) -> dict:
        version, since, watch = -1, 0, None
        self.done = self.driver.run()
        while True:
            if watch is None:
                watch = self.driver.progress(version, since)
            ready, _ = ray.wait([self.done, watch], num_returns=1, timeout=1.0)
            if not ready:  # wake up now and then: Ctrl-C / SIGTERM are handled between waits
                continue
            if self.done not in ready:
                try:
                    p = ray.get(watch)
                except RayActorError:
                    watch = None
                    continue  # the driver died: `done` says so next
                watch = None
                version, since = p["version"], since + len(p["new_rounds"])
                self.mlflow_run_id = p["mlflow_run_id"] or self.mlflow_run_id
                if self.display is not None:
                    self.display.update(p)
                continue
            try:
                return ray.get(self.done)
            except RayTaskError as e:
                raise unwrap(e) from None
            except RayActorError as e:
                self._driver_died(e)
                version, since, watch = -1, 0, None  # the new driver's progress from the start

    def _driver_died(self, e: Exception) -> None:
        at = checkpoint_round(self.run_dir)
        if self.restarts >= self.cfg.runtime.max_driver_restarts:
            raise RayfedError(f"the driver actor died ({first_line(e)}) and was already "
                              f"recreated {self.restarts} time(s). The checkpoint of round "
                              f"{at or 0} is intact: resume with `rayfed-bpt run --resume "
                              f"{self.run_dir}`.") from None
        self.restarts += 1
        if self.log:
            self.log(f"the driver actor died ({first_line(e)}); recreating it from the "
                     f"checkpoint of round {at or 0} (restart {self.restarts} of "
                     f"{self.cfg.runtime.max_driver_restarts})")
        if self.display is not None:
            self.display.restart()
        # an unreachable (not dead) driver must not go on beside its successor
        self.driver.kill()
        moved = fallback_of(self.run_dir)
        if moved is not None:  # its store failed: the successor goes on in the fallback
            self.uri, self.mlflow_run_id, note = moved
            if self.display is not None:  # it may have died before its note reached us
                self.display.note(note)
        self.start(resume=True)
        self.done = self.driver.run()

    def stop(self, code: int, name: str) -> Interrupted:
        """Ctrl-C / SIGTERM: the driver and its client actors go, the MLflow run is marked
        KILLED, the checkpoint stays; the error says how to resume."""
        if self.driver is not None:
            self.mlflow_run_id = self.driver.mlflow_run_id() or self.mlflow_run_id
            self.driver.kill()
        moved = fallback_of(self.run_dir) if self.run_dir.exists() else None
        uri, run_id = moved[:2] if moved else (self.uri, self.mlflow_run_id)
        if uri and run_id:
            from ..tracking import mark_killed

            mark_killed(uri, run_id)
        at = checkpoint_round(self.run_dir) if self.run_dir.exists() else None
        if at is None:
            return Interrupted(f"stopped by {name} before the first checkpoint; nothing to "
                               "resume", code)
        return Interrupted(f"stopped by {name} after round {at}; the checkpoint is intact. "
                           f"Resume with: rayfed-bpt run --resume {self.run_dir}", code)


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def unwrap(e: RayTaskError) -> Exception:
    """The error a driver's task raised, as the entry process reports it."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, RayfedError):
        return type(cause)(*cause.args) if isinstance(cause, Interrupted) else \
            RayfedError(str(cause))
    return RayfedError(f"the run failed: {cause!r}" if cause else str(e))
