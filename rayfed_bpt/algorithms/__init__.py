"""Federated algorithms behind one interface (``Algorithm``), by name.

Pure PyTorch: no Ray. ``create_algorithm(name, ...)`` is the one factory;
ablations are registered as named presets of an algorithm's options.
"""

from __future__ import annotations

from ..config import from_dict
from ..errors import ConfigError
from .base import Algorithm, ClientData, ClientResult, ClientTask, seed_for
from .fedavg_linear import FedAvgLinear
from .fedavg_vpt import FedAvgVPT
from .fedper_vpt import FedPerVPT
from .fedrep_vpt import FedRepVPT
from .local import Local
from .pfedbayespt import PFedBayesPT
from .pfedpg import PFedPG

_REGISTRY: dict[str, tuple[type[Algorithm], dict]] = {}


def register_algorithm(cls: type[Algorithm], name: str | None = None, **preset) -> None:
    _REGISTRY[name or cls.name] = (cls, preset)


for _cls in (PFedBayesPT, Local, FedAvgVPT, FedPerVPT, FedRepVPT, PFedPG, FedAvgLinear):
    register_algorithm(_cls)
register_algorithm(PFedBayesPT, "gaussian_vi", d_eps=0)  # ablation: no implicit mixing
register_algorithm(PFedBayesPT, "pfedbayespt_beta0", beta=0.0)  # ablation: no KL term


def list_algorithms() -> list[str]:
    return list(_REGISTRY)


def _lookup(name: str) -> tuple[type[Algorithm], dict]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown algorithm.name {name!r}; allowed: {list_algorithms()}")
    return _REGISTRY[name]


def algorithm_options(name: str, options: dict | None) -> dict:
    """The preset merged with ``options``, validated against the algorithm's Options."""
    cls, preset = _lookup(name)
    merged = {**preset, **(options or {})}
    from_dict(cls.Options, merged, f"algorithm.options ({name})")
    return merged


def create_algorithm(
    name: str,
    backbone,
    num_classes: int,
    train,
    options: dict | None = None,
    seed: int = 0,
    num_clients: int = 1,
) -> Algorithm:
    cls, _ = _lookup(name)
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
