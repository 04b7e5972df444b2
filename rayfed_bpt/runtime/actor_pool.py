"""The pool ``ray_actors``: N client actors, work units handed to whichever actor is free.

A round's sampled clients become work units (a client, or on a GPU a group of
clients trained as one batched pass), largest first; each goes to the next
free actor, so with unequal client sizes no actor waits on a busier one
(clients are not pinned to actors). The global state is put in the object
store once per call; personal state travels with its unit. An actor that dies
takes only its unit with it: a new actor takes its place and the unit is
given out again, so the round's results do not change. Every wait is bounded
by ``runtime.round_timeout_s``. The pool plans its actors from the cluster's
resources (or a Tune trial's reserved bundles), reserves their placement group and
releases both when it closes.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from ..engine.pool import PoolContext
from ..engine.schedule import eval_chunks, resolve_group_size, train_chunks
from ..errors import RayfedError
from .client_actor import ClientActor
from .resources import actor_options, make_placement_group, plan_actors

ACTOR_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)
STARTUP_TIMEOUT_S = 600.0


class RayActorPool:
    def __init__(self, ctx: PoolContext):
        self.cfg = cfg = ctx.cfg
        self.partition_dir = ctx.partition_dir
        self.sizes = ctx.sizes
        self.run_dir = ctx.run_dir
        self.pg, self.own_pg = ctx.placement_group, ctx.placement_group is None
        self.bundle_offset = ctx.bundle_offset
        resources = ray.cluster_resources()
        if not self.own_pg:  # a trial's reserved bundles (Tune): plan within them
            bundles = self.pg.bundle_specs[self.bundle_offset:]
            resources = {r: sum(b.get(r, 0) for b in bundles) for r in ("CPU", "GPU")}
        self.plan = plan_actors(cfg.runtime, ctx.reader.num_clients, resources)
        if self.own_pg:
            name = "rayfed-bpt-" + hashlib.sha1(str(ctx.run_dir).encode()).hexdigest()[:16]
            self.pg = make_placement_group(self.plan, cfg.runtime.placement_strategy,
                                           STARTUP_TIMEOUT_S, name)
        # actors given a GPU share run on cuda: the group size follows, decided once here
        self.group_size = resolve_group_size(cfg.runtime.group_size, self.plan.num_gpus > 0)
        self.actors = [self._new_actor(i) for i in range(self.plan.num_actors)]
        self.replaced = 0

    def _new_actor(self, i: int):
        opts = actor_options(self.plan, self.pg, self.bundle_offset + i)
        return ray.remote(ClientActor).options(**opts).remote(
            self.cfg, self.partition_dir, i, self.plan.threads, self.group_size,
            self.plan.gpu_memory_fraction, self.run_dir)

    def start(self) -> None:
        """Block until every actor has loaded its backbone; on GPUs with group_size auto,
        the group is what the tightest actor's measured memory budget holds."""
        try:
            infos = ray.get([a.info.remote() for a in self.actors], timeout=STARTUP_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as e:
            raise RayfedError(f"client actors did not start within {STARTUP_TIMEOUT_S:.0f}s "
                              f"(each asks for {self.plan.bundle()}); the cluster has "
                              f"{ray.available_resources()}.") from e
        except RayTaskError as e:
            raise RayfedError(f"a client actor failed to start: {e.cause}") from e
        budgets = [i["budget"] for i in infos if i.get("budget")]
        if budgets and self.cfg.runtime.group_size == "auto":
            self.group_size = min(b["group_size"] for b in budgets)

    def stats(self) -> dict:
        return {"workers": ray.get([a.info.remote() for a in self.actors],
                                   timeout=STARTUP_TIMEOUT_S),
                "memory": ray.get([a.memory.remote() for a in self.actors],
                                  timeout=STARTUP_TIMEOUT_S),
                "replaced": self.replaced}

    # ----- the pool protocol ---------------------------------------------------------------
    def train(self, global_state: dict, personal: dict[int, dict], round: int) -> list:
        gref = ray.put(global_state)
        units = self._units(list(personal), lambda ids: train_chunks(ids, self.sizes,
                                                                      self.group_size))
        outs = self._run(units, lambda a, u: a.train.remote(
            gref, {k: personal[k] for k in u}, round), "training", round)
        return [x for out in outs for x in out]

    def evaluate(self, global_state: dict, personal: dict[int, dict], round: int,
                 options: dict | None = None, splits: Sequence[str] = ("test",)) -> list:
        gref = ray.put(global_state)
        units = self._units(list(personal), lambda ids: eval_chunks(ids, self.sizes,
                                                                     len(self.actors)))
        outs = self._run(units, lambda a, u: a.evaluate.remote(
            gref, {k: personal[k] for k in u}, round, options, tuple(splits)), "evaluation",
            round)
        return [x for out in outs for x in out]

    def close(self) -> None:
        """The actors go, and the placement group this pool reserved."""
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        if self.own_pg and self.pg is not None:
            ray.util.remove_placement_group(self.pg)
            self.pg = None

    def _units(self, ids: list[int], cut: Callable) -> list[list[int]]:
        """Work units; pinned: cut per owner, so that a unit's clients share their actor."""
        if self.cfg.runtime.schedule != "pinned":
            return cut(ids)
        n = len(self.actors)
        return [u for i in range(n) for u in cut([k for k in ids if k % n == i])]

    # ----- dynamic scheduling --------------------------------------------------------------
    def _run(self, units: list[list[int]], submit: Callable, what: str, round: int) -> list:
        """Run every unit; the next unit goes to whichever actor finishes first (or, with
        ``runtime.schedule=pinned``, to the actor that owns its first client: k % N).

        While at least one unit per actor is still queued, each actor gets a second
        unit in flight (Ray queues it on the actor), so an actor never sits idle for the
        driver's round trip between two units; the tail is handed out one at a time."""
        rt = self.cfg.runtime
        n = len(self.actors)
        pinned = rt.schedule == "pinned"
        queues = [deque() for _ in range(n if pinned else 1)]
        for u, unit in enumerate(units):
            queues[unit[0] % n if pinned else 0].append(u)
        load = [0] * n  # units in flight per actor
        gen = [0] * n  # bumped when actor i is replaced: its old units' errors are stale
        in_flight: dict = {}
        out: list = [None] * len(units)
        lost: Counter = Counter()
        deadline = time.monotonic() + rt.round_timeout_s
        while in_flight or any(queues):
            for depth in (1, 2):  # every free actor gets a unit before any gets a second
                for i in range(n):
                    q = queues[i if pinned else 0]
                    if q and load[i] < depth and (depth == 1 or len(q) >= (1 if pinned else n)):
                        u = q.popleft()
                        load[i] += 1
                        in_flight[submit(self.actors[i], units[u])] = (i, gen[i], u)
            ready, _ = ray.wait(list(in_flight), num_returns=1,
                                timeout=max(deadline - time.monotonic(), 0))
            if not ready:
                busy = sorted(in_flight.values())
                raise RayfedError(
                    f"round {round + 1}: {what} of clients {[units[u] for *_, u in busy]} on "
                    f"client actor(s) {sorted({i for i, *_ in busy})} did not finish within "
                    f"{rt.round_timeout_s:.0f}s (runtime.round_timeout_s). Raise the timeout, "
                    "or check the actors' logs (`ray logs` / the dashboard).")
            i, g, u = in_flight.pop(ready[0])
            try:
                out[u] = ray.get(ready[0])
            except ACTOR_ERRORS as e:
                lost[u] += 1
                if lost[u] > rt.max_actor_restarts:
                    raise RayfedError(
                        f"round {round + 1}: {what} of clients {units[u]} was lost "
                        f"{lost[u]} times to dying client actors; last error: {e}. The last "
                        f"checkpoint{' in ' + self.run_dir if self.run_dir else ''} is "
                        "intact: fix the cause and resume with `rayfed-bpt run --resume`."
                    ) from e
                if g == gen[i]:  # first news of this death: replace the actor once
                    ray.kill(self.actors[i], no_restart=True)
                    self.actors[i] = self._new_actor(i)  # work queues until it has started
                    self.replaced += 1
                    gen[i] += 1
                    load[i] = 0  # its other units fail too (stale gen) and are requeued
                queues[i if pinned else 0].appendleft(u)  # only lost units are redone
                continue
            except RayTaskError as e:
                raise RayfedError(f"round {round + 1}: {what} of clients {units[u]} failed on "
                                  f"client actor {i}: {e.cause!r}") from e
            if g == gen[i]:
                load[i] -= 1
        return out
