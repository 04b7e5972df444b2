"""Experiment configuration: the schemas, YAML files and dotted overrides.

The ground floor: every default is written here once, with the help text the
CLI, ``rayfed-bpt config`` and docs/config.md show. Unknown keys and bad values
are rejected before anything starts, with a message naming the key and what is
allowed. Algorithm options are checked against the chosen algorithm's own
``Options`` where the run is set up (``engine.setup.make_algorithm``); the
partitioner's name where the partition is resolved (``data.recipe``). No torch,
no numpy and no imports from the rest of the package here but the ground floor's
errors and plugins (a config's ``plugins`` are imported where it is made).

Plain dataclasses, not pydantic: with our ``from_dict`` they give one-line
messages that name the dotted key (pydantic's carry a model path and an error
URL), pickle across Ray as they are, and cost no import time in the entry process.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .plugins import import_plugins


def knob(default: Any = None, help: str = "", factory: Any = None) -> Any:
    """A config field with its help text (shown by --help, `rayfed-bpt config`, docs)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# Keys that were renamed: an old name in a file or override is refused with the new one.
RENAMED = {
    "data.alpha": "data.label_alpha",
    "data.beta": "data.domain_alpha",
    "data.partition_seed": "data.seed",
}


@dataclass
class PartitionConfig:
    """A partition's recipe: with the dataset it fixes who holds which example.

    The one recipe type: ``rayfed-bpt data partition`` takes its fields as options,
    ``data:`` in a run's config extends it (``DataConfig``), the partitioners in
    ``data/partition.py`` read it and the partition manifest records it.
    """

    partitioner: str = knob("domain_mix", "iid | dirichlet | k_classes | domain | domain_mix "
                            "(see README, Partitioners)")
    num_clients: int = knob(20, "how many clients the dataset is split among")
    seed: int | None = knob(None, "partition seed; unset: the run's seed (0 in `data partition`)")
    domain_alpha: float = knob(0.5, "domain_mix: Dirichlet concentration of each client's "
                               "domain mix (small: few domains per client)")
    label_alpha: float | None = knob(None, "Dirichlet concentration of the label skew: dirichlet "
                                     "needs it; domain_mix skews labels only when it is set")
    k: int = knob(2, "k_classes: classes per client")
    min_samples: int = knob(10, "least training examples per client")
    max_draws: int = knob(100, "random partitioners redraw at most this often to meet "
                          "min_samples")

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ConfigError(f"data.num_clients must be >= 1, got {self.num_clients}")
        for name in ("domain_alpha", "label_alpha"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"data.{name} must be > 0 (a Dirichlet concentration), got {v}")
        if self.partitioner == "dirichlet" and self.label_alpha is None:
            raise ConfigError("data.partitioner=dirichlet needs data.label_alpha (the label "
                              "skew, e.g. 0.5; smaller is more skewed)")
        if self.k < 1 or self.min_samples < 0 or self.max_draws < 1:
            raise ConfigError(f"data.k must be >= 1, data.min_samples >= 0 and data.max_draws "
                              f">= 1, got k={self.k}, min_samples={self.min_samples}, "
                              f"max_draws={self.max_draws}")

    def recipe(self, seed: int = 0) -> PartitionConfig:
        """The bare recipe (a ``DataConfig`` carries more), its seed filled in."""
        own = {f.name: getattr(self, f.name) for f in fields(PartitionConfig)}
        return PartitionConfig(**{**own, "seed": seed if self.seed is None else self.seed})


@dataclass
class DataConfig(PartitionConfig):
    dataset: str | None = knob(None, "a dataset .arrow file, or a built-in name: digits4 or "
                               "digits4+rotate+colour+noise+invert (extra domains); unset: "
                               "digits4")
    partition_dir: str | None = knob(None, "an existing partition folder; unset: made (once) "
                                     "from the recipe fields")
    max_train_per_client: int | None = knob(None, "subsample each client's train split "
                                            "(quick runs)")
    max_test_per_client: int | None = knob(None, "subsample each client's test split")
    val_fraction: float = knob(0.0, "share of each client's train split held out for "
                               "validation (stratified by label, seeded); 0: none")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_train_per_client", "max_test_per_client"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"data.{name} must be >= 1 or unset, got {v}")
        if not 0 <= self.val_fraction < 0.9:
            raise ConfigError(f"data.val_fraction must lie in [0, 0.9), got {self.val_fraction}")


@dataclass
class BackboneConfig:
    source: str = knob("builtin", "builtin | timm | file")
    name: str | None = knob(None, "timm model name (source timm or file)")
    checkpoint: str | None = knob(None, "weights file, .safetensors (source file)")

    def __post_init__(self) -> None:
        if self.source not in ("builtin", "timm", "file"):
            raise ConfigError(f"backbone.source={self.source!r}; allowed: builtin, timm, file")


@dataclass
class TrainConfig:
    rounds: int = knob(10, "aggregation rounds")
    clients_per_round: int | None = knob(None, "clients sampled per round; unset: use fraction "
                                         "(unset too: every client)")
    fraction: float | None = knob(0.25, "share of clients sampled per round")
    local_epochs: int = knob(1, "passes over a client's train split per round")
    batch_size: int = knob(32, "examples per local step")
    lr: float = knob(1e-2, "learning rate of the local optimizer")
    weight_decay: float = knob(0.0, "weight decay of the local optimizer")
    eval_every: int = knob(5, "evaluate every this many rounds (and after the last)")
    eval_test: bool = knob(True, "evaluate the test split at each evaluation; sweeps turn it "
                           "off: they choose on validation and evaluate the chosen config's "
                           "test split once, at the end")
    optimizer_state: str = knob("reset", "reset: a fresh Adam each round (FedAvg's usual "
                                "client) | keep: each client's Adam moments carry over to its "
                                "next round, kept (and checkpointed) with its personal state")

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
        if self.optimizer_state not in ("reset", "keep"):
            raise ConfigError(f"train.optimizer_state must be reset or keep, got "
                              f"{self.optimizer_state!r}")

    def check_population(self, num_clients: int) -> None:
        """Sampling more clients a round than the partition holds is a mistake to report,
        not a count to cut silently (checked where the partition is known)."""
        if self.clients_per_round is not None and self.clients_per_round > num_clients:
            raise ConfigError(f"train.clients_per_round={self.clients_per_round} but the "
                              f"partition has {num_clients} clients: sample at most "
                              f"{num_clients} a round (or set train.fraction)")


FAULTS = ("driver_exit", "actor_exit", "pause")


@dataclass
class RuntimeConfig:
    """How the run maps onto Ray: actors, resources, timeouts, output."""

    address: str | None = knob(None, "Ray cluster address; unset: $RAY_ADDRESS, else a local Ray")
    num_actors: int | None = knob(None, "client actors; unset: as many as the resources allow")
    cpus_per_actor: float = knob(1.0, "CPUs reserved per client actor (and its torch threads)")
    gpus_per_actor: float | None = knob(None, "GPU share per client actor; unset: 0.25 on a "
                                        "cluster with GPUs, else 0")
    gpu_memory_fraction: float | None = knob(None, "CUDA memory cap per actor; unset: = "
                                             "gpus_per_actor")
    placement_strategy: str = knob("SPREAD", "PACK | SPREAD | STRICT_PACK | STRICT_SPREAD")
    round_timeout_s: float = knob(1800.0, "a round that takes longer fails the run")
    max_actor_restarts: int = knob(3, "times one work unit may be lost to a dying client actor")
    max_driver_restarts: int = knob(2, "a dead driver actor is recreated from the last "
                                    "checkpoint this often")
    group_size: int | str = knob("auto", "clients per batched pass: auto = 1 on CPU, 8 on a GPU")
    schedule: str = knob("dynamic", "dynamic: a work unit to whichever actor is free; "
                         "pinned: client k to actor k % N")
    client_cache: int = knob(1024, "opened client shards (and cached features) kept per actor")
    output_dir: str = knob("rayfed_runs", "where run folders (and the default MLflow store) go")
    run_name: str | None = knob(None, "run folder and MLflow run name; unset: timestamp + suffix")
    checkpoint_every: int = knob(1, "write a checkpoint every this many rounds")
    faults: list = knob(help="deterministic fault injection, for tests: driver_exit@K (the "
                        "driver dies after round K's checkpoint), actor_exit@K (a client "
                        "actor dies as it starts round K), pause@K (wait after round K)",
                        factory=list)

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
        name = self.run_name
        if name is not None and (name in ("", ".", "..") or any(c in "/\\" or ord(c) < 32
                                                               or ord(c) == 127 for c in name)):
            raise ConfigError(f"runtime.run_name={name!r} must be one folder name inside "
                              "runtime.output_dir: no '/' or '\\', no control characters, "
                              "not '.' or '..' (e.g. runtime.run_name=exp1)")
        for f in self.faults:
            kind, _, at = str(f).partition("@")
            if kind not in FAULTS or not at.isdigit():
                raise ConfigError(f"runtime.faults: {f!r}; write KIND@ROUND with KIND one of "
                                  f"{list(FAULTS)}")


@dataclass
class TrackingConfig:
    enabled: bool = knob(True, "log to MLflow")
    tracking_uri: str | None = knob(None, "MLflow store; unset: $MLFLOW_TRACKING_URI, else "
                                    "SQLite under output_dir")
    experiment: str = knob("rayfed_bpt", "MLflow experiment name")


@dataclass
class AlgorithmConfig:
    name: str = knob("pfedbayespt", "the algorithm (README, Algorithms)")
    options: dict = knob(help="the algorithm's own options (README, Algorithms)", factory=dict)


@dataclass
class ExperimentConfig:
    seed: int = knob(0, "seed of sampling, initialisation and (unset data.seed) the partition")
    plugins: list = knob(help="modules imported first, in every process of the run (their "
                         "algorithms, partitioners and importers register themselves; "
                         "--import adds to it; docs/extending.md)", factory=list)
    data: DataConfig = knob(factory=DataConfig)
    backbone: BackboneConfig = knob(factory=BackboneConfig)
    train: TrainConfig = knob(factory=TrainConfig)
    algorithm: AlgorithmConfig = knob(factory=AlgorithmConfig)
    runtime: RuntimeConfig = knob(factory=RuntimeConfig)
    tracking: TrackingConfig = knob(factory=TrackingConfig)

    def __post_init__(self) -> None:
        # imported wherever a config is made, so what they register is known before a
        # name is looked up (processes that receive a config from Ray import them in
        # engine.setup)
        import_plugins(self.plugins)
        if not self.train.eval_test and self.data.val_fraction == 0:
            raise ConfigError("train.eval_test=false needs data.val_fraction > 0: with no "
                              "validation split there is nothing to evaluate")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_values(self, values: dict[str, Any]) -> ExperimentConfig:
        """A checked copy with dotted keys set to (already typed) values, e.g. a Tune
        trial's point: ``cfg.with_values({"train.lr": 0.01})``. No text round trip."""
        d = self.to_dict()
        for key, value in values.items():
            node = d
            *parents, last = key.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"{key}: {p} is not a config section")
                node = node[p]
            node[last] = value
        return from_dict(ExperimentConfig, d)


def schema_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """Every config key as (dotted key, default, type, help): the source of truth that
    `rayfed-bpt config`, docs/config.md and the derived CLI options agree with."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out += schema_keys(hints[f.name], key + ".")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        tp = getattr(hints[f.name], "__name__", None) or str(hints[f.name])
        out.append((key, default, str(tp).replace("NoneType", "None"), f.metadata.get("help", "")))
    return out


def reference_markdown() -> str:
    """The table of every config key (docs/config.md is this, checked by a test)."""
    lines = ["| key | default | type | what it is |", "|---|---|---|---|"]
    for key, default, tp, help_ in schema_keys():
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("\n...")
        cells = [f"`{key}`", f"`{shown}`", tp, help_]
        lines.append("| " + " | ".join(c.replace("|", "\\|") if i > 1 else c
                                       for i, c in enumerate(cells)) + " |")
    return "\n".join(lines) + "\n"


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
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):  # NaN or inf would fail (or run silently) in an actor
            raise ConfigError(f"{key}={value!r} must be a finite number")
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
        for u in unknown:
            if where + u in RENAMED:
                raise ConfigError(f"{where + u} was renamed {RENAMED[where + u]}: write "
                                  f"{RENAMED[where + u]}={d[u]!r} instead")
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


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                plugins: list[str] = ()) -> ExperimentConfig:
    """The config of ``path`` with dotted ``overrides``, every key and value checked;
    ``plugins`` (``--import``) are added to the config's own.

    The algorithm's own options are checked where a run is set up (the algorithm's
    ``Options`` live beside its torch code, and this module stays torch-free so that
    the ``rayfed-bpt`` entry process answers in well under a second).
    """
    d = read_yaml(path) if path else {}
    d = apply_overrides(d, list(overrides))
    return from_dict(ExperimentConfig, with_plugins(d, plugins))


def with_plugins(d: dict, plugins: list[str]) -> dict:
    """Config mapping ``d`` with ``plugins`` added to its own (each once, in order)."""
    if plugins:
        own = d.get("plugins") or []
        if not isinstance(own, list):
            raise ConfigError(f"plugins must be a list of module names, got {own!r}")
        d["plugins"] = own + [m for m in plugins if m not in own]
    return d
