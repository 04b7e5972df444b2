"""The entry process of a run: checks, Ray, the driver actor, progress, stops.

``run_experiment`` is what ``rayfed-bpt run`` calls, locally or under
``ray job submit``. It stays light (no torch, no model): it checks everything it
can before Ray starts (``preflight``: output folder, partition and shard hashes,
the backbone's weights file; the checkpoint of a ``--resume``, the tracking store)
— then starts (or joins) Ray,
creates the driver actor (which checks the algorithm's options) and only then
the run folder. While the driver runs the rounds it waits on the driver's
progress (blocking calls, no polling), recreates a driver that died from the
last checkpoint, and turns Ctrl-C or SIGTERM into a clean stop: actors gone,
MLflow run KILLED, checkpoint kept, the resume command printed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayTaskError

from ..config import ExperimentConfig
from ..engine.checkpoint import checkpoint_round
from ..errors import Interrupted, RayfedError
from ..tracking import (
    HTTP_ENV,
    check_tracking_uri,
    fallback_of,
    resolve_tracking_uri,
    ui_command,
)
from .driver import Driver  # light: torch loads in the driver actor's own process
from .preflight import check_backbone_file, check_partition, create_run_dir, new_run_dir


def init_ray(address: str | None) -> bool:
    """Join ``address`` / $RAY_ADDRESS, or start a local Ray (no dashboard: nobody asked
    for one). True when this call started Ray."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True,
                 _system_config={"preload_python_modules": ["rayfed_bpt.engine.host"]})
    return True


_SIGTERM = {"received": False}


def _raise_terminated(signum, frame):
    """SIGTERM (timeout, Slurm, Kubernetes) stops a run like Ctrl-C: a KeyboardInterrupt is
    the one exception Ray's blocking calls let a signal raise (they re-raise it bare, so
    which signal it was is remembered here)."""
    _SIGTERM["received"] = True
    raise KeyboardInterrupt()


@contextmanager
def sigterm_as_interrupt():
    """Within: SIGTERM raises KeyboardInterrupt like Ctrl-C; ``stop_signal()`` says which."""
    _SIGTERM["received"] = False
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_signal() -> tuple[int, str]:
    """(exit code, name) of the signal that stopped the work: 143 SIGTERM or 130 Ctrl-C."""
    return (143, "SIGTERM") if _SIGTERM["received"] else (130, "Ctrl-C")


def _describe(m: dict) -> str:
    parts = [f"loss {m['train_loss']:.3f}"] if "train_loss" in m else []
    for p in ("val_", ""):
        if p + "acc_mean" in m:
            parts.append(f"{p.replace('_', ' ')}acc mean {m[p + 'acc_mean']:.3f} min "
                         f"{m[p + 'acc_min']:.3f}")
    if "round_seconds" in m:
        parts.append(f"({m['round_seconds']:.1f}s)")
    return "  ".join(parts)


class _Display:
    """A progress bar on a terminal, one line per round otherwise (job logs, CI)."""

    def __init__(self, mode: bool | str, cfg: ExperimentConfig, log):
        if mode == "auto":
            mode = True if sys.stdout.isatty() else "lines"
        self.mode, self.rounds, self.log = mode, cfg.train.rounds, log
        self.shown: int | None = None
        self.notes = 0
        self.seen: set[str] = set()
        self.bar = None
        if mode is True:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.rounds, unit="round", desc=cfg.algorithm.name,
                            dynamic_ncols=True)

    def update(self, p: dict) -> None:
        for note in p["notes"][self.notes:]:
            self.note(note)
        self.notes = len(p["notes"])
        if self.shown is None:  # a resumed run starts at its checkpoint's round
            self.shown = p["round"]
            if self.bar is not None:
                self.bar.update(p["round"])
        if self.bar is not None:
            if p["round"] > self.shown:
                self.bar.update(p["round"] - self.shown)
            post = {"status": p["status"]}
            m = p.get("metrics") or {}
            if "val_acc_mean" in m:
                post["val_acc"] = f"{m['val_acc_mean']:.3f}"
            if "acc_mean" in m:
                post.update(acc=f"{m['acc_mean']:.3f}", min=f"{m['acc_min']:.3f}")
            if "train_loss" in m:
                post["loss"] = f"{m['train_loss']:.3f}"
            self.bar.set_postfix(post)
        elif self.mode == "lines" and p["round"] > self.shown:
            print(f"round {p['round']}/{self.rounds}  {_describe(p['metrics'])}", flush=True)
        self.shown = max(self.shown, p["round"])

    def note(self, text: str) -> None:
        """Show a note once (a recreated driver may repeat its predecessor's)."""
        if text not in self.seen:
            self.seen.add(text)
            (self.bar.write if self.bar else print)(f"note: {text}")

    def restart(self) -> None:
        self.shown = None
        self.notes = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_experiment(cfg: ExperimentConfig, resume_dir: str | Path | None = None,
                   show_progress: bool | str = "auto", log=print) -> dict:
    """Run ``cfg`` on Ray (a new run, or continue ``resume_dir``); return the summary.

    ``show_progress``: "auto" (a bar on a terminal, else lines), True (a bar), "lines"
    (a line per round), False.
    """
    started_at = time.time()
    if resume_dir is not None:
        run_dir = Path(resume_dir).resolve()
        checkpoint_round(run_dir)  # a corrupt checkpoint is refused now, not in an actor
    else:
        run_dir = new_run_dir(cfg)
    partition_dir = check_partition(cfg)
    check_backbone_file(cfg)
    uri = (resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.runtime.output_dir)
           if cfg.tracking.enabled else None)
    if uri:
        check_tracking_uri(uri)
    checked_at = time.time()
    t0 = time.perf_counter()
    started_ray = init_ray(cfg.runtime.address)
    ray_ready_at = time.time()
    display = _Display(show_progress, cfg, log) if show_progress else None
    sup = _Supervisor(cfg, str(partition_dir), run_dir, uri, display, log)
    with sigterm_as_interrupt():
        try:
            sup.start(resume=resume_dir is not None)
            if resume_dir is None:
                create_run_dir(run_dir, cfg)
            summary = sup.wait()
        except KeyboardInterrupt:
            raise sup.stop(*stop_signal()) from None
        except RayTaskError as e:
            raise _unwrap(e) from None
        finally:
            if display is not None:
                display.close()
            if started_ray:
                ray.shutdown()
    summary["wall_seconds"] = time.perf_counter() - t0
    # data, Ray, the driver and every client actor ready: what a user waits before round 1
    summary["startup_seconds"] = summary["actors_ready_at"] - started_at
    summary["driver_restarts"] = sup.restarts
    summary["timeline"].update(entry=started_at, checks_done=checked_at, ray_ready=ray_ready_at,
                               ray_stopped=time.time())
    if log:
        last = summary["history"][-1] if summary["history"] else {}
        for p, what in (("val_", "final validation"), ("", "final")):
            if p + "acc_mean" in last:
                log(f"{what}: mean client acc {last[p + 'acc_mean']:.4f} (std "
                    f"{last[p + 'acc_std']:.4f}, min {last[p + 'acc_min']:.4f}), global acc "
                    f"{last[p + 'global_acc']:.4f}")
        log(f"run folder: {run_dir}")
        if uri:  # the store that holds the run: the fallback one after an outage
            held = summary["tracking_uri"]
            log(f"MLflow run {summary['mlflow_run_id']} in {held}\n  browse it: "
                f"{ui_command(held)}")
    return summary


class _Supervisor:
    """The driver actor's keeper: start, follow its progress, recreate it if it dies."""

    def __init__(self, cfg: ExperimentConfig, partition_dir: str, run_dir: Path,
                 uri: str | None, display: _Display | None, log):
        self.cfg, self.partition_dir, self.run_dir, self.uri = cfg, partition_dir, run_dir, uri
        self.display, self.log = display, log
        self.driver = None
        self.done = None
        self.restarts = 0
        self.mlflow_run_id: str | None = None

    def start(self, resume: bool) -> None:
        self.driver = ray.remote(Driver).options(num_cpus=0, num_gpus=0,
                                                 max_concurrency=4).remote(
            self.cfg, self.partition_dir, str(self.run_dir), self.uri, resume=resume,
            mlflow_run_id=self.mlflow_run_id)
        try:
            ray.get(self.driver.ready.remote())  # the run's setup: options, checkpoint
        except RayTaskError as e:
            ray.kill(self.driver, no_restart=True)
            raise _unwrap(e) from None

    def wait(self) -> dict:
        version, watch = -1, None
        self.done = self.driver.run.remote()
        while True:
            if watch is None:
                watch = self.driver.wait_progress.remote(version, 60.0)
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
                version = p["version"]
                self.mlflow_run_id = p["mlflow_run_id"] or self.mlflow_run_id
                if self.display is not None:
                    self.display.update(p)
                continue
            try:
                return ray.get(self.done)
            except RayTaskError as e:
                raise _unwrap(e) from None
            except RayActorError as e:
                self._driver_died(e)
                version, watch = -1, None  # the new driver's progress from the start

    def _driver_died(self, e: Exception) -> None:
        at = checkpoint_round(self.run_dir)
        if self.restarts >= self.cfg.runtime.max_driver_restarts:
            raise RayfedError(f"the driver actor died ({_first_line(e)}) and was already "
                              f"recreated {self.restarts} time(s). The checkpoint of round "
                              f"{at or 0} is intact: resume with `rayfed-bpt run --resume "
                              f"{self.run_dir}`.") from None
        self.restarts += 1
        if self.log:
            self.log(f"the driver actor died ({_first_line(e)}); recreating it from the "
                     f"checkpoint of round {at or 0} (restart {self.restarts} of "
                     f"{self.cfg.runtime.max_driver_restarts})")
        if self.display is not None:
            self.display.restart()
        # an unreachable (not dead) driver must not go on beside its successor
        ray.kill(self.driver, no_restart=True)
        moved = fallback_of(self.run_dir)
        if moved is not None:  # its store failed: the successor goes on in the fallback
            self.uri, self.mlflow_run_id, note = moved
            if self.display is not None:  # it may have died before its note reached us
                self.display.note(note)
        self.start(resume=True)
        self.done = self.driver.run.remote()

    def stop(self, code: int, name: str) -> Interrupted:
        """Ctrl-C / SIGTERM: the driver and its client actors go, the MLflow run is marked
        KILLED, the checkpoint stays; the error says how to resume."""
        if self.driver is not None:
            try:
                self.mlflow_run_id = ray.get(self.driver.mlflow_run_id.remote(), timeout=5) \
                    or self.mlflow_run_id
            except Exception:  # noqa: BLE001 - it may be gone already
                pass
            ray.kill(self.driver, no_restart=True)  # its client actors die with it
        moved = fallback_of(self.run_dir) if self.run_dir.exists() else None
        uri, run_id = moved[:2] if moved else (self.uri, self.mlflow_run_id)
        if uri and run_id:
            _mark_killed(uri, run_id)
        at = checkpoint_round(self.run_dir) if self.run_dir.exists() else None
        if at is None:
            return Interrupted(f"stopped by {name} before the first checkpoint; nothing to "
                               "resume", code)
        return Interrupted(f"stopped by {name} after round {at}; the checkpoint is intact. "
                           f"Resume with: rayfed-bpt run --resume {self.run_dir}", code)


def _mark_killed(uri: str, run_id: str) -> None:
    os.environ.update({**HTTP_ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).set_terminated(run_id, status="KILLED")
    except Exception:  # noqa: BLE001 - the store may be the reason we stop
        pass


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _unwrap(e: RayTaskError) -> Exception:
    cause = getattr(e, "cause", None)
    if isinstance(cause, RayfedError):
        return type(cause)(*cause.args) if isinstance(cause, Interrupted) else \
            RayfedError(str(cause))
    return RayfedError(f"the run failed: {cause!r}" if cause else str(e))
