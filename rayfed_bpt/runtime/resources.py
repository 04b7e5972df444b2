"""Sizing client actors from the cluster's resources, and their placement group.

Population is not concurrency: M virtual clients are hosted by N actors, N
set by the resources (or ``runtime.num_actors``). Every actor asks for
``num_cpus`` *and* ``num_gpus`` explicitly: an actor that asks for a GPU on a
cluster without one stays pending forever, and one given ``num_gpus`` alone
also holds a whole CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import RuntimeConfig
from ..errors import RayfedError

DEFAULT_GPU_FRACTION = 0.25


@dataclass(frozen=True)
class ActorPlan:
    num_actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    gpu_memory_fraction: float | None

    def bundle(self) -> dict[str, float]:
        b = {"CPU": self.num_cpus}
        if self.num_gpus > 0:
            b["GPU"] = self.num_gpus
        return b


def process_rss() -> int:
    """Resident memory of this process, in bytes (Linux)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def process_started_at() -> float:
    """When this process started, as a Unix time (Linux /proc)."""
    import os

    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def plan_actors(rt: RuntimeConfig, num_clients: int, resources: dict[str, float]) -> ActorPlan:
    """How many client actors, and what each asks for, given cluster ``resources``."""
    total_cpu = float(resources.get("CPU", 0))
    total_gpu = float(resources.get("GPU", 0))
    gpus = rt.gpus_per_actor
    if gpus is None:
        gpus = DEFAULT_GPU_FRACTION if total_gpu > 0 else 0.0
    if gpus > 0 and total_gpu == 0:
        raise RayfedError(
            f"runtime.gpus_per_actor={gpus} but the Ray cluster has no GPU; actors would wait "
            "forever. Set runtime.gpus_per_actor=0, or add GPU nodes."
        )
    cpus = rt.cpus_per_actor
    slots = math.floor(total_cpu / cpus + 1e-9)
    if gpus > 0:
        slots = min(slots, math.floor(total_gpu / gpus + 1e-9))
    n = rt.num_actors if rt.num_actors is not None else max(1, min(num_clients, slots))
    n = min(n, num_clients)
    if n > max(slots, 0):
        raise RayfedError(
            f"{n} client actors x ({cpus} CPU, {gpus} GPU) do not fit the cluster's "
            f"{total_cpu:g} CPU / {total_gpu:g} GPU. Lower runtime.num_actors or "
            "runtime.cpus_per_actor / gpus_per_actor."
        )
    mem = rt.gpu_memory_fraction if rt.gpu_memory_fraction is not None else (gpus or None)
    return ActorPlan(n, cpus, gpus, rt.threads, min(mem, 1.0) if mem else None)


def make_placement_group(plan: ActorPlan, strategy: str, timeout_s: float,
                         name: str = "") -> PlacementGroup:
    """Reserve the client actors' bundles. A ``name`` lets a recreated driver find and free
    the group its dead predecessor held (Ray frees it only when the job ends)."""
    if name:
        try:
            ray.util.remove_placement_group(ray.util.get_placement_group(name))
        except ValueError:
            pass  # none left over
    pg = placement_group([plan.bundle() for _ in range(plan.num_actors)], strategy=strategy,
                         name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise RayfedError(
            f"the placement group for {plan.num_actors} client actors ({plan.bundle()} each, "
            f"{strategy}) could not be reserved within {timeout_s:.0f}s; the cluster has "
            f"{ray.available_resources()}. Lower runtime.num_actors or the per-actor resources."
        )
    return pg


def actor_options(plan: ActorPlan, pg: PlacementGroup | None, bundle_index: int) -> dict:
    """A client actor's options. No Ray restarts: the pool replaces a dead actor itself
    and gives its lost work unit to whichever actor is free."""
    opts = dict(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=0,
                max_task_retries=0)
    if pg is not None:
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=bundle_index)
    return opts
