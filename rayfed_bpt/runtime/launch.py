"""The entry process of a run: checks, Ray, the driver actor, the final lines.

``run_experiment`` is what ``rayfed-bpt run`` calls, locally or under
``ray job submit``. It stays light (no torch, no model): the config was checked
completely where it was made; here, before Ray starts, ``preflight`` checks the
partition (each file's stamp), the backbone's weights file, the checkpoint of a
``--resume`` and the tracking store. Then it starts (or joins) Ray and hands the
run to the ``Supervisor`` (``supervisor.py``: the driver actor, its progress, a
driver recreated after a crash, Ctrl-C and SIGTERM), and only once the driver
is set up creates the run folder (``RunFolder``).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path

import ray
from ray.exceptions import RayTaskError

from ..config import ExperimentConfig
from ..engine.checkpoint import checkpoint_round
from ..errors import RayfedError
from ..progress import Display
from ..run_folder import RunFolder, one_writer
from ..tracking import check_tracking_uri, resolve_tracking_uri, ui_command
from .preflight import check_backbone_file, check_partition, input_note
from .signals import sigterm_as_interrupt, stop_signal
from .supervisor import Supervisor, first_line, unwrap


def init_ray(address: str | None, preload: str = "rayfed_bpt.engine.host") -> bool:
    """Join ``address`` / $RAY_ADDRESS, or start a local Ray (no dashboard: nobody asked
    for one) whose workers import ``preload`` as they start (a run's: torch and the
    models). True when this call started Ray."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ValueError, ConnectionError) as e:  # a malformed or unreachable address
            raise RayfedError(f"cannot join the Ray cluster at {address!r} (--address / "
                              f"runtime.address / $RAY_ADDRESS): {first_line(e)}. Check the "
                              "head's address (HOST:PORT, e.g. 10.0.0.1:6379) and that it is "
                              "up (`ray status`).") from None
    else:
        ray.init(include_dashboard=False, log_to_driver=True,
                 _system_config={"preload_python_modules": [preload]})
    return True


def run_experiment(cfg: ExperimentConfig, resume_dir: str | Path | None = None,
                   show_progress: bool | str = "auto", log=print) -> dict:
    """Run ``cfg`` on Ray (a new run, or continue ``resume_dir``); return the summary.

    ``show_progress``: "auto" (a bar on a terminal, else lines), True (a bar), "lines"
    (a line per round), False.
    """
    with ExitStack() as writer:
        return _run(cfg, resume_dir, show_progress, log, writer)


def _run(cfg: ExperimentConfig, resume_dir: str | Path | None, show_progress: bool | str,
         log, writer: ExitStack) -> dict:
    started_at = time.time()
    if resume_dir is not None:
        run_dir = Path(resume_dir).resolve()
        checkpoint_round(run_dir)  # a corrupt checkpoint is refused now, not in an actor
        # (then the lock: a refused folder is left exactly as it was, no lock file added)
        writer.enter_context(one_writer(run_dir, "run"))
    else:
        folder = RunFolder.choose(cfg.runtime.output_dir, cfg.runtime.run_name,
                                  f"{cfg.algorithm.name}-s{cfg.seed}")
        run_dir = folder.path
    reader = check_partition(cfg)
    partition_dir = reader.root
    check_backbone_file(cfg)
    if note := input_note(cfg, reader.info.image_shape):
        log(note)
    uri = (resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.runtime.output_dir)
           if cfg.tracking.enabled else None)
    if uri:
        check_tracking_uri(uri)
    checked_at = time.time()
    t0 = time.perf_counter()
    started_ray = init_ray(cfg.runtime.address)
    ray_ready_at = time.time()
    display = Display(show_progress, cfg.train.rounds, cfg.algorithm.name) \
        if show_progress else None
    sup = Supervisor(cfg, str(partition_dir), run_dir, uri, display, log)
    with sigterm_as_interrupt():
        try:
            sup.start(resume=resume_dir is not None)
            if resume_dir is None:
                folder.create(cfg.to_dict())
                writer.enter_context(one_writer(run_dir, "run"))
            summary = sup.wait()
        except KeyboardInterrupt:
            raise sup.stop(*stop_signal()) from None
        except RayTaskError as e:
            raise unwrap(e) from None
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
