"""Federated algorithms behind one interface (``Algorithm``), by name.

Pure PyTorch: no Ray. ``create_algorithm(name, ...)`` is the one factory. Names,
options and presets are declared torch-free in ``rayfed_bpt.catalog`` (plugins
register their classes with ``register_algorithm``); a built-in's module is imported
when its class is first needed.
"""

from __future__ import annotations

from .base import Algorithm
from .client import ClientData, ClientResult, ClientTask, seed_for
from .registry import algorithm_options, list_algorithms, lookup, register_algorithm


def create_algorithm(
    name: str,
    backbone,
    num_classes: int,
    train,
    options: dict | None = None,
    seed: int = 0,
    num_clients: int = 1,
) -> Algorithm:
    cls, _ = lookup(name)
    alg = cls(
        backbone,
        num_classes,
        train,
        algorithm_options(name, options),
        seed=seed,
        num_clients=num_clients,
    )
    alg.name = name
    return alg


__all__ = [
    "Algorithm",
    "ClientData",
    "ClientResult",
    "ClientTask",
    "algorithm_options",
    "create_algorithm",
    "list_algorithms",
    "register_algorithm",
    "seed_for",
]
