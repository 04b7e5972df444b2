"""An import's chunks as Ray tasks: decode on every core of every node of a cluster.

``rayfed-bpt data prepare --ray`` (and a prepare submitted with ``ray job submit``)
hands ``data.stream.write_import`` this executor instead of a local process pool.
The data layer sees only ``concurrent.futures``: each task's ``ObjectRef`` is a
``Future``. Workers open the source files by the paths the head lists, so the
source must sit on storage every node reads at the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future

import ray

from .launch import init_ray


class RayExecutor(Executor):
    """``submit(fn, *args)`` runs ``fn`` as a one-CPU Ray task on the cluster."""

    def __init__(self, address: str | None = None):
        self._started = init_ray(address, preload="rayfed_bpt.data.stream")
        self._remote: dict[Callable, object] = {}

    @property
    def workers(self) -> int:
        """CPUs the cluster has now: as many chunks run at once."""
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if fn not in self._remote:
            self._remote[fn] = ray.remote(num_cpus=1, max_retries=3)(fn)
        return self._remote[fn].remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._started:
            ray.shutdown()
