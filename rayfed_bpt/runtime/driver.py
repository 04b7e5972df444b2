"""The driver actor: owns the global state and runs the rounds.

Per round: sample clients, ``ray.put`` the global state once, let each client
actor train its sampled clients, collect the small updates, aggregate through
the algorithm interface, evaluate every client on its own test split, log to
MLflow and checkpoint. Every wait has a timeout. A client actor that dies is
restarted by Ray (or recreated here), given its clients' personal state from
the last round, and its work for the round is redone; a failure that cannot
be recovered stops the run with a message naming the actor and its clients.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import ray
import torch
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayTaskError,
)

from ..algorithms.base import ClientResult, State
from ..algorithms.evaluation import summarize, train_loss
from ..algorithms.experiment import load_backbone, make_algorithm, sample_clients
from ..config import ExperimentConfig, from_dict
from ..data import PartitionReader
from ..errors import RayfedError
from .checkpoint import load_checkpoint, save_checkpoint
from .client_actor import ClientActor
from .resources import actor_options, assign_clients, make_placement_group, plan_actors

ACTOR_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)
STARTUP_TIMEOUT_S = 600.0


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class Driver:
    def __init__(self, cfg: dict, partition_dir: str, run_dir: str, tracking_uri: str | None,
                 resume: bool = False, placement_group=None, bundle_offset: int = 0,
                 parent_run_id: str | None = None, paced: bool = False):
        self.cfg_dict = cfg
        self.cfg = from_dict(ExperimentConfig, cfg)
        self.partition_dir = partition_dir
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri
        self.resume = resume
        self.pg = placement_group
        self.own_pg = placement_group is None
        self.bundle_offset = bundle_offset
        self._lock = threading.Lock()
        self._progress = {"round": 0, "rounds": self.cfg.train.rounds, "status": "starting",
                          "metrics": {}}
        self.actors: list = []
        self.actor_clients: list[list[int]] = []
        self.actor_infos: list[dict] = []
        self.tracker = None
        self.parent_run_id = parent_run_id
        self.rounds_log: list[dict] = []  # every round's metrics, for Tune's reports
        # paced: wait for proceed() after each round, so a scheduler's decision to stop
        # the trial lands before the next round starts, not after the run is over
        self.paced = paced
        self._go = threading.Semaphore(0)
        self.run_id: str | None = None

    # ----- progress, for the entry point's bar (a second thread of this actor) ------------
    def progress(self) -> dict:
        with self._lock:
            return dict(self._progress)

    def _set_progress(self, **kw) -> None:
        with self._lock:
            self._progress.update(kw)

    def actor_info(self) -> list[dict]:
        return list(self.actor_infos)

    def proceed(self) -> None:
        """Paced runs: let the next round start."""
        self._go.release()

    def mlflow_run_id(self) -> str | None:
        return self.run_id

    def round_metrics(self, since: int = 0) -> list[dict]:
        """The metrics of every round after the first ``since`` (none are missed)."""
        with self._lock:
            return [dict(m) for m in self.rounds_log[since:]]

    # ----- actors -------------------------------------------------------------------------
    def _new_actor(self, i: int):
        opts = actor_options(self.plan, self.pg, self.bundle_offset + i,
                             self.cfg.runtime.max_actor_restarts)
        return ray.remote(ClientActor).options(**opts).remote(
            self.cfg_dict, self.partition_dir, self.actor_clients[i], i, self.plan.threads,
            self.plan.gpu_memory_fraction)

    def _start_actors(self, num_clients: int) -> None:
        resources = ray.cluster_resources()
        if self.pg is not None:  # a trial's reserved bundles (Tune): plan within them
            bundles = self.pg.bundle_specs[self.bundle_offset:]
            resources = {r: sum(b.get(r, 0) for b in bundles) for r in ("CPU", "GPU")}
        self.plan = plan_actors(self.cfg.runtime, num_clients, resources)
        if self.own_pg:
            self.pg = make_placement_group(self.plan, self.cfg.runtime.placement_strategy,
                                           STARTUP_TIMEOUT_S)
        self.actor_clients = assign_clients(num_clients, self.plan.num_actors)
        self.actors = [self._new_actor(i) for i in range(self.plan.num_actors)]
        try:
            self.actor_infos = ray.get([a.info.remote() for a in self.actors],
                                       timeout=STARTUP_TIMEOUT_S)
        except GetTimeoutError as e:
            raise RayfedError(f"client actors did not start within {STARTUP_TIMEOUT_S:.0f}s "
                              f"(each asks for {self.plan.bundle()}); the cluster has "
                              f"{ray.available_resources()}.") from e
        except RayTaskError as e:
            raise RayfedError(f"a client actor failed to start: {e.cause}") from e

    def _recover(self, i: int, why: Exception) -> None:
        """Bring actor ``i`` back (Ray's restart, or a fresh one) with its clients' state."""
        try:
            ray.get(self.actors[i].info.remote(), timeout=STARTUP_TIMEOUT_S)
        except (ActorDiedError, RayActorError, GetTimeoutError):
            ray.kill(self.actors[i], no_restart=True)
            self.actors[i] = self._new_actor(i)  # restarts exhausted: a new actor
            self.actor_infos[i] = ray.get(self.actors[i].info.remote(), timeout=STARTUP_TIMEOUT_S)
        else:
            self.actor_infos[i] = ray.get(self.actors[i].info.remote(), timeout=60)
        ray.get(self.actors[i].set_personal.remote(
            {k: self.personal[k] for k in self.actor_clients[i]}), timeout=STARTUP_TIMEOUT_S)

    def _gather(self, method: str, args: dict[int, tuple], what: str, round: int
                ) -> dict[int, object]:
        """Call ``method(*args[i])`` on each actor ``i``; redo an actor's call after it dies."""
        timeout = self.cfg.runtime.round_timeout_s

        def call(i: int):
            return getattr(self.actors[i], method).remote(*args[i])

        pending = {call(i): i for i in args}
        failures = {i: 0 for i in args}
        out: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(left, 0))
            if not ready:
                slow = sorted(pending.values())
                raise RayfedError(
                    f"round {round + 1}: {what} on client actor(s) {slow} (clients "
                    f"{[self.actor_clients[i] for i in slow]}) did not finish within "
                    f"{timeout:.0f}s (runtime.round_timeout_s). Raise the timeout, or check "
                    "the actors' logs (`ray logs` / the dashboard).")
            ref = ready[0]
            i = pending.pop(ref)
            try:
                out[i] = ray.get(ref, timeout=60)
            except ACTOR_ERRORS as e:
                failures[i] += 1
                if failures[i] > self.cfg.runtime.max_actor_restarts:
                    raise RayfedError(
                        f"round {round + 1}: client actor {i} (clients {self.actor_clients[i]}) "
                        f"died {failures[i]} times during {what}; last error: {e}. The last "
                        f"checkpoint in {self.run_dir} is intact: fix the cause and resume "
                        f"with `rayfed-bpt run --resume {self.run_dir}`.") from e
                self._recover(i, e)
                pending[call(i)] = i  # redo this actor's work for the round
            except RayTaskError as e:
                raise RayfedError(
                    f"round {round + 1}: {what} failed on client actor {i} (clients "
                    f"{self.actor_clients[i]}): {e.cause!r}. The last checkpoint in "
                    f"{self.run_dir} is intact.") from e
        return out

    def _stop_actors(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        if self.own_pg and self.pg is not None:
            ray.util.remove_placement_group(self.pg)
            self.pg = None

    # ----- the rounds -----------------------------------------------------------------------
    def run(self) -> dict:
        try:
            return self._run()
        except BaseException:
            if self.tracker is not None:
                self.tracker.finish("FAILED")
            self._set_progress(status="failed")
            raise
        finally:
            self._stop_actors()

    def _run(self) -> dict:
        cfg = self.cfg
        reader = PartitionReader(self.partition_dir)
        info = reader.info
        self.alg = make_algorithm(cfg, load_backbone(cfg), reader)
        global_state = self.alg.init_global()
        self.personal = {k: self.alg.init_personal(k) for k in reader.client_ids}
        history: list[dict] = []
        start = 0
        run_id = None
        ckpt = load_checkpoint(self.run_dir) if self.resume else None
        if ckpt is not None:
            global_state, self.personal = ckpt["global_state"], ckpt["personal"]
            history, start, run_id = ckpt["history"], ckpt["round"], ckpt.get("mlflow_run_id")
            torch.set_rng_state(ckpt["torch_rng"])
        self._set_progress(status="starting actors", round=start)
        t_actors = time.perf_counter()
        self._start_actors(reader.num_clients)
        actors_seconds = time.perf_counter() - t_actors
        actors_ready_at = time.time()
        if ckpt is not None:
            ray.get([a.set_personal.remote({k: self.personal[k] for k in ids})
                     for a, ids in zip(self.actors, self.actor_clients)],
                    timeout=STARTUP_TIMEOUT_S)
        if self.tracking_uri:
            from ..tracking import Tracker

            self.tracker = Tracker(self.tracking_uri, cfg.tracking.experiment,
                                   Path(cfg.runtime.output_dir).resolve() / "mlartifacts")
            run_id = self.tracker.start(self.run_dir.name, self.cfg_dict, run_id,
                                        parent_run_id=self.parent_run_id)
            self.run_id = run_id
        owner = {k: i for i, ids in enumerate(self.actor_clients) for k in ids}
        last_evals = []
        round_seconds = []
        for r in range(start, cfg.train.rounds):
            t0 = time.perf_counter()
            self._set_progress(status="training", round=r)
            sampled = sample_clients(reader.num_clients, cfg.train, cfg.seed, r)
            groups: dict[int, list[int]] = {}
            for k in sampled:
                groups.setdefault(owner[k], []).append(k)
            gref = ray.put(global_state)
            out = self._gather("train", {i: (gref, groups[i], r) for i in groups}, "training", r)
            results: list[ClientResult] = sorted((x for v in out.values() for x in v),
                                                 key=lambda x: x.client_id)
            for res in results:
                self.personal[res.client_id] = res.personal
            down = state_bytes(global_state) * len(groups)
            global_state = self.alg.aggregate(global_state, results, r)
            m = {"round": r + 1, "train_loss": train_loss(results)}
            if (r + 1) % cfg.train.eval_every == 0 or r + 1 == cfg.train.rounds:
                self._set_progress(status="evaluating")
                eref = ray.put(global_state)
                evals = self._gather("evaluate", {i: (eref, r) for i in range(len(self.actors))},
                                     "evaluation", r)
                last_evals = sorted((e for v in evals.values() for e in v),
                                    key=lambda e: e.client_id)
                m.update(summarize(last_evals, info.domain_names, self.alg.has_global_model))
            m["round_seconds"] = time.perf_counter() - t0
            round_seconds.append(m["round_seconds"])
            m["comm_bytes_down"] = float(down)
            m["comm_bytes_up"] = float(sum(state_bytes(x.update) for x in results))
            if "acc_mean" in m:
                history.append(m)
            if self.tracker:
                self.tracker.log_metrics(m, step=r + 1)
            if (r + 1) % cfg.runtime.checkpoint_every == 0 or r + 1 == cfg.train.rounds:
                save_checkpoint(self.run_dir, {
                    "round": r + 1, "global_state": global_state, "personal": self.personal,
                    "history": history, "torch_rng": torch.get_rng_state(),
                    "mlflow_run_id": run_id, "config": self.cfg_dict})
            self._set_progress(round=r + 1, metrics=m, status="running")
            with self._lock:
                self.rounds_log.append(dict(m))
            if self.paced and r + 1 < cfg.train.rounds and not self._go.acquire(
                    timeout=cfg.runtime.round_timeout_s):
                raise RayfedError(f"round {r + 1}: nobody asked for the next round within "
                                  f"{cfg.runtime.round_timeout_s:.0f}s (paced run)")
        memory = ray.get([a.memory.remote() for a in self.actors], timeout=600)
        if last_evals or history:
            self._write_artifacts(history, last_evals, reader)
        if self.tracker:
            self.tracker.finish("FINISHED")
        self._set_progress(status="finished")
        return {"history": history, "run_dir": str(self.run_dir), "mlflow_run_id": run_id,
                "tracking_uri": self.tracking_uri, "actors": self.actor_infos,
                "actor_memory": memory, "actors_start_seconds": actors_seconds,
                "actors_ready_at": actors_ready_at,
                "round_seconds": round_seconds}

    def _write_artifacts(self, history, evals, reader) -> None:
        from ..reporting import plot_domains, plot_history, write_client_csv, write_config

        out = self.run_dir / "results"
        out.mkdir(parents=True, exist_ok=True)
        name = self.cfg.algorithm.name
        if evals:
            num_train = {k: reader.entry(k)["num_train"] for k in reader.client_ids}
            write_client_csv(out / "clients.csv", evals, reader.info.domain_names, num_train)
        if history:
            plot_history(out / "accuracy_vs_round.png", history, f"{name}: test accuracy")
            plot_domains(out / "domain_accuracy.png", history[-1],
                         f"{name}: per-domain accuracy, round {history[-1]['round']}")
        write_config(out / "config.yaml", self.cfg_dict)
        # where each client actor ran (node, GPU share, clients): for a person and for tests
        (out / "actors.json").write_text(json.dumps(self.actor_infos, indent=1))
        if self.tracker:
            self.tracker.log_artifacts(out)
