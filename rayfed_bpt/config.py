"""Experiment configuration: nested dataclasses, YAML files and dotted overrides.

Unknown keys and bad values are rejected here, before anything starts, with
a message naming the key and what is allowed. Algorithm options are checked
against the chosen algorithm's own ``Options`` dataclass where the run is set
up (``engine.setup.make_algorithm``). No torch here: this is the ground floor.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    dataset: str | None = None  # a dataset .arrow file; None: the built-in digits4
    partition_dir: str | None = None  # an existing partition; None: made from the fields below
    partitioner: str = "domain_mix"
    num_clients: int = 20
    alpha: float = 0.5
    beta: float = 0.5
    label_alpha: float | None = None
    k: int = 2
    min_samples: int = 10
    partition_seed: int | None = None  # None: the experiment seed
    max_train_per_client: int | None = None  # subsample for quick runs
    max_test_per_client: int | None = None

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ConfigError(f"data.num_clients must be >= 1, got {self.num_clients}")
        for name in ("alpha", "beta", "label_alpha"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"data.{name} must be > 0 (a Dirichlet concentration), got {v}")
        if self.k < 1 or self.min_samples < 0:
            raise ConfigError(f"data.k must be >= 1 and data.min_samples >= 0, got k={self.k}, "
                              f"min_samples={self.min_samples}")
        for name in ("max_train_per_client", "max_test_per_client"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"data.{name} must be >= 1 or unset, got {v}")


@dataclass
class BackboneConfig:
    source: str = "builtin"  # builtin | timm | file
    name: str | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.source not in ("builtin", "timm", "file"):
            raise ConfigError(f"backbone.source={self.source!r}; allowed: builtin, timm, file")


@dataclass
class TrainConfig:
    rounds: int = 10
    clients_per_round: int | None = None  # None: use fraction (None too: every client)
    fraction: float | None = 0.25  # share of clients sampled per round
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.0
    eval_every: int = 5

    def __post_init__(self) -> None:
        for name in ("rounds", "local_epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"train.fraction must lie in (0, 1], got {self.fraction}")
        if self.clients_per_round is not None and self.clients_per_round < 1:
            raise ConfigError(f"train.clients_per_round must be >= 1, got {self.clients_per_round}")


FAULTS = ("driver_exit", "actor_exit", "pause")


@dataclass
class RuntimeConfig:
    """How the run maps onto Ray: actors, resources, timeouts, output."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local Ray
    num_actors: int | None = None  # None: as many as the resources allow
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 0.25 on a cluster with GPUs, else 0
    gpu_memory_fraction: float | None = None  # None: = gpus_per_actor (a real cap)
    placement_strategy: str = "SPREAD"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    round_timeout_s: float = 1800.0
    max_actor_restarts: int = 3  # times one work unit may be lost to a dying client actor
    max_driver_restarts: int = 2  # a dead driver actor is recreated from the last checkpoint
    group_size: int | str = "auto"  # clients per batched pass: auto = 1 on CPU, 8 on a GPU
    schedule: str = "dynamic"  # dynamic: a work unit to whichever actor is free; pinned: k % N
    client_cache: int = 1024  # opened client shards (and cached features) kept per actor
    output_dir: str = "rayfed_runs"
    run_name: str | None = None
    checkpoint_every: int = 1
    # Deterministic fault injection, for tests: "driver_exit@K" (the driver actor dies
    # after round K's checkpoint), "actor_exit@K" (a client actor dies as it starts its
    # first work of round K), "pause@K" (the run waits after round K until told to go on).
    faults: list = field(default_factory=list)

    @property
    def threads(self) -> int:
        """Torch threads of whatever trains clients (any pool): one per whole CPU of a
        client actor. Part of a run's numerics, not only its speed: a float reduction
        split over 2 threads rounds differently than over 1, so the same config gives
        the same numbers in every pool only at the same count."""
        return max(1, int(self.cpus_per_actor))

    def __post_init__(self) -> None:
        strategies = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
        if self.placement_strategy not in strategies:
            raise ConfigError(f"runtime.placement_strategy={self.placement_strategy!r}; "
                              f"allowed: {list(strategies)}")
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError(f"runtime.num_actors must be >= 1, got {self.num_actors}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"runtime.cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor is not None and not 0 <= self.gpus_per_actor <= 8:
            raise ConfigError(f"runtime.gpus_per_actor must lie in [0, 8], got "
                              f"{self.gpus_per_actor}")
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            raise ConfigError(f"runtime.gpu_memory_fraction must lie in (0, 1], got "
                              f"{self.gpu_memory_fraction}")
        if self.round_timeout_s <= 0 or self.max_actor_restarts < 0 or self.checkpoint_every < 1:
            raise ConfigError("runtime.round_timeout_s must be > 0, max_actor_restarts >= 0, "
                              "checkpoint_every >= 1")
        if self.schedule not in ("dynamic", "pinned"):
            raise ConfigError(f"runtime.schedule={self.schedule!r}; allowed: dynamic, pinned")
        if self.max_driver_restarts < 0 or self.client_cache < 1:
            raise ConfigError("runtime.max_driver_restarts must be >= 0 and client_cache >= 1")
        if self.group_size != "auto" and not (isinstance(self.group_size, int)
                                              and self.group_size >= 1):
            raise ConfigError(f"runtime.group_size={self.group_size!r}; allowed: auto or an "
                              "integer >= 1")
        for f in self.faults:
            kind, _, at = str(f).partition("@")
            if kind not in FAULTS or not at.isdigit():
                raise ConfigError(f"runtime.faults: {f!r}; write KIND@ROUND with KIND one of "
                                  f"{list(FAULTS)}")


@dataclass
class TrackingConfig:
    enabled: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else SQLite under output_dir
    experiment: str = "rayfed_bpt"


@dataclass
class AlgorithmConfig:
    name: str = "pfedbayespt"
    options: dict = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} must be one of {[a.__name__ for a in args]}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping")
        return dict(value)
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list")
        return list(value)
    return value


def from_dict(cls: type, d: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``d``, rejecting unknown keys and wrong types."""
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {[where + u for u in unknown]}; allowed under "
            f"{prefix or 'the top level'}: {names}"
        )
    kwargs = {}
    for name in names:
        if name not in d:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, d[name], key)
        else:
            kwargs[name] = _coerce(d[name], tp, key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """``a.b=c`` sets d["a"]["b"] = yaml-parsed "c"."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.rounds=5)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value ({e})") from e
        node = d
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return d


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """A YAML mapping from ``path``, or a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level")
    return d


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """The config of ``path`` with dotted ``overrides``, every key and value checked.

    The algorithm's own options are checked where a run is set up (the algorithm's
    ``Options`` live beside its torch code, and this module stays torch-free so that
    the ``rayfed-bpt`` entry process answers in well under a second).
    """
    d = read_yaml(path) if path else {}
    d = apply_overrides(d, list(overrides))
    return from_dict(ExperimentConfig, d)
