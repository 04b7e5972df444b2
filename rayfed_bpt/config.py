"""Experiment configuration: the schemas, YAML files and dotted overrides.

The ground floor: every default is written here once, as a ``knob`` with its help text
and what it allows (the CLI, ``rayfed-bpt config`` and docs/config.md show them). A
config is checked completely where it is made, before anything starts: unknown keys,
types and bounds by ``knobs.from_dict``, the rules across fields below, and the
algorithm's name and options against the torch-free ``catalog`` — so a bad value is
refused in well under a second, in the entry process. No torch, no numpy; the config's
``plugins`` are imported where it is made (they may register an algorithm).

Plain dataclasses, not pydantic: with ``knobs.from_dict`` they give one-line messages
that name the dotted key (pydantic's carry a model path and an error URL), pickle across
Ray as they are, and cost no import time in the entry process.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from . import knobs
from .catalog import algorithm_options, check_pool, preset_path
from .errors import ConfigError
from .knobs import Checked, apply_overrides, knob, read_yaml, set_key
from .plugins import import_plugins

__all__ = ["ExperimentConfig", "apply_overrides", "from_dict", "knob", "load_config",
           "read_yaml"]

# Keys that were renamed: an old name in a file or override is refused with the new one.
RENAMED = {
    "data.alpha": "data.label_alpha",
    "data.beta": "data.domain_alpha",
    "data.partition_seed": "data.seed",
}
POSITIVE = "(0, inf)"
AT_LEAST_1 = "[1, inf)"


@dataclass
class PartitionConfig(Checked):
    """A partition's recipe: with the dataset it fixes who holds which example.

    The one recipe type: ``rayfed-bpt data partition`` takes its fields as options,
    ``data:`` in a run's config extends it (``DataConfig``), the partitioners in
    ``data/partition.py`` read it and the partition manifest records it.
    """

    key = "data"

    partitioner: str = knob("domain_mix", "iid | dirichlet | k_classes | domain | domain_mix | "
                            "natural (see docs/data.md, Partitioners)")
    num_clients: int = knob(20, "how many clients the dataset is split among",
                            bounds=AT_LEAST_1)
    seed: int | None = knob(None, "partition seed; unset: the run's seed (0 in `data partition`)",
                            bounds="[0, inf)")
    domain_alpha: float = knob(0.5, "domain_mix: Dirichlet concentration of each client's "
                               "domain mix (small: few domains per client)", bounds=POSITIVE)
    label_alpha: float | None = knob(None, "Dirichlet concentration of the label skew: dirichlet "
                                     "needs it; domain_mix skews labels only when it is set",
                                     bounds=POSITIVE)
    k: int = knob(2, "k_classes: classes per client", bounds=AT_LEAST_1)
    min_samples: int = knob(10, "least training examples per client", bounds="[0, inf)")
    max_draws: int = knob(100, "random partitioners redraw at most this often to meet "
                          "min_samples", bounds=AT_LEAST_1)
    new_clients: float = knob(0, "clients held out of training (a seeded choice among "
                              "num_clients): a count (>= 1) or a share (< 1); evaluated at the "
                              "end zero-shot and after train.adapt_rounds local updates "
                              "(new_acc_mean, new_acc_adapted_mean)", bounds="[0, inf)")
    ood_domains: list[str] | None = knob(None, "domains held out of training: their examples "
                                         "leave every client, and each becomes one unseen-"
                                         "domain client evaluated like a new client "
                                         "(ood_acc_mean, ood_domain_acc/NAME)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.partitioner == "dirichlet" and self.label_alpha is None:
            raise ConfigError("data.partitioner=dirichlet needs data.label_alpha (the label "
                              "skew, e.g. 0.5; smaller is more skewed)")
        if self.new_clients >= 1 and self.new_clients != int(self.new_clients):
            raise ConfigError(f"data.new_clients={self.new_clients:g}: a count of clients (a "
                              "whole number >= 1) or a share of them (< 1)")
        if self.new_clients and self.held_out_count() >= self.num_clients:
            raise ConfigError(f"data.new_clients={self.new_clients:g} holds out "
                              f"{self.held_out_count()} of data.num_clients={self.num_clients}: "
                              "leave at least one client to train")
        if self.ood_domains is not None:
            if not self.ood_domains or not all(isinstance(d, str) and d
                                               for d in self.ood_domains):
                raise ConfigError(f"data.ood_domains={self.ood_domains!r} must be a list of "
                                  "domain names, e.g. [rotate] (unset: none held out)")
            if len(set(self.ood_domains)) != len(self.ood_domains):
                raise ConfigError(f"data.ood_domains={self.ood_domains!r} names a domain twice")

    def held_out_count(self) -> int:
        """How many of the ``num_clients`` clients ``new_clients`` holds out of training."""
        n = self.new_clients
        if n >= 1:
            return int(n)
        return max(1, int(n * self.num_clients + 0.5)) if n > 0 else 0

    def recipe(self, seed: int = 0) -> PartitionConfig:
        """The bare recipe (a ``DataConfig`` carries more), its seed filled in."""
        own = {f.name: getattr(self, f.name) for f in fields(PartitionConfig)}
        return PartitionConfig(**{**own, "seed": seed if self.seed is None else self.seed})


@dataclass
class DataConfig(PartitionConfig):
    dataset: str | None = knob(None, "a dataset .arrow file, or a built-in name: digits4 or "
                               "digits4+rotate+colour+noise+invert (extra domains); unset: "
                               "digits4", path=True)
    partition_dir: str | None = knob(None, "an existing partition folder; unset: made (once) "
                                     "from the recipe fields", path=True)
    max_train_per_client: int | None = knob(None, "subsample each client's train split "
                                            "(quick runs)", bounds=AT_LEAST_1)
    max_test_per_client: int | None = knob(None, "subsample each client's test split",
                                           bounds=AT_LEAST_1)
    val_fraction: float = knob(0.0, "share of each client's train split held out for "
                               "validation (stratified by label, seeded); 0: none",
                               bounds="[0, 0.9)")


@dataclass
class BackboneConfig(Checked):
    key = "backbone"

    source: str = knob("builtin", "where the frozen ViT comes from",
                       choices=("builtin", "timm", "file"))
    name: str | None = knob(None, "timm model name (source timm or file)")
    checkpoint: str | None = knob(None, "weights file (source file): .safetensors, or a "
                                  ".pth/.pt/.bin state dict, with or without its classifier "
                                  "head; read as tensors only, never unpickled", path=True)
    img_size: int | None = knob(None, "input side of a timm architecture (source timm or file;"
                                " unset: the architecture's own, e.g. 224)", bounds=AT_LEAST_1)
    mean: list | None = knob(None, "per-channel normalisation mean, 3 numbers; unset: from the "
                             "file's config.json beside it, else the architecture's pretrained "
                             "config")
    std: list | None = knob(None, "per-channel normalisation std, 3 numbers; unset: as mean")
    resample: bool = knob(False, "source file: let timm resample a patch or position "
                          "embedding of another size than backbone.name's (else refused)")

    def __post_init__(self) -> None:
        super().__post_init__()
        ignored = {"builtin": ("name", "checkpoint", "img_size", "resample"),
                   "timm": ("checkpoint", "resample"), "file": ()}[self.source]
        set_keys = [k for k in ignored if getattr(self, k) not in (None, False)]
        if set_keys:
            keys = ", ".join(f"backbone.{k}" for k in set_keys)
            raise ConfigError(f"{keys} would be ignored by backbone.source={self.source}: set "
                              "backbone.source=file (a weights file) or timm (a pretrained "
                              f"name), or drop {keys}")
        for k in ("mean", "std"):
            v = getattr(self, k)
            if v is not None and (len(v) != 3 or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) for x in v)
                    or (k == "std" and min(v) <= 0)):
                raise ConfigError(f"backbone.{k}={v!r} must be 3 numbers, one a channel"
                                  + (", each > 0" if k == "std" else ""))


@dataclass
class TrainConfig(Checked):
    key = "train"

    rounds: int = knob(10, "aggregation rounds", bounds=AT_LEAST_1)
    clients_per_round: int | None = knob(None, "clients sampled per round; unset: use fraction "
                                         "(unset too: every client)", bounds=AT_LEAST_1)
    fraction: float | None = knob(0.25, "share of clients sampled per round", bounds="(0, 1]")
    local_epochs: int = knob(1, "passes over a client's train split per round",
                             bounds=AT_LEAST_1)
    batch_size: int = knob(32, "examples per local step", bounds=AT_LEAST_1)
    lr: float = knob(1e-2, "learning rate of the local optimizer", bounds=POSITIVE)
    weight_decay: float = knob(0.0, "weight decay of the local optimizer", bounds="[0, inf)")
    eval_every: int = knob(5, "evaluate every this many rounds (and after the last)",
                           bounds=AT_LEAST_1)
    eval_test: bool = knob(True, "evaluate the test split at each evaluation; sweeps turn it "
                           "off: they choose on validation and evaluate the chosen config's "
                           "test split once, at the end")
    eval_fraction: float = knob(1.0, "share of clients an evaluation covers (a seeded sample "
                                "reported with eval_clients and acc_mean_ci95)",
                                bounds="(0, 1]")
    eval_resample: bool = knob(False, "false: the same sampled clients at every evaluation; "
                               "true: a fresh sample each time")
    eval_final_all: bool = knob(True, "the last round evaluates every client whatever "
                                "eval_fraction says")
    adapt_rounds: int = knob(1, "held-out clients (data.new_clients, data.ood_domains): local "
                             "updates each runs from the final global state, the method's own "
                             "as in a round, before its adapted evaluation; 0: zero-shot only",
                             bounds="[0, inf)")
    eval_new: str = knob("end", "when held-out clients are evaluated: at the end, or at each "
                         "evaluation", choices=("end", "each"))
    precision: str = knob("auto", "frozen-backbone passes in bf16 (autocast) or fp32 (TF32 on "
                          "a GPU); auto: bf16 on a GPU that has it, fp32 on a CPU, so a CPU "
                          "run's numbers are fp32's. The SIVI, KL and aggregation math stays "
                          "fp32", choices=("auto", "fp32", "bf16"))
    optimizer_state: str = knob("reset", "reset: a fresh Adam each round (FedAvg's usual "
                                "client) | keep: each client's Adam moments carry over to its "
                                "next round, kept (and checkpointed) with its personal state",
                                choices=("reset", "keep"))

    def check_population(self, num_clients: int) -> None:
        """Sampling more clients a round than the partition holds is a mistake to report,
        not a count to cut silently (checked where the partition is known)."""
        if self.clients_per_round is not None and self.clients_per_round > num_clients:
            raise ConfigError(f"train.clients_per_round={self.clients_per_round} but the "
                              f"partition has {num_clients} clients: sample at most "
                              f"{num_clients} a round (or set train.fraction)")


#: what ray.init accepts as an address: auto, local, HOST:PORT, ray://HOST:PORT
ADDRESS = re.compile(r"auto|local|(ray://)?[\w.\-\[\]:]+:\d{1,5}")
FAULTS = ("driver_exit", "actor_exit", "pause", "disk_full")


@dataclass
class RuntimeConfig(Checked):
    """How the run maps onto Ray: actors, resources, timeouts, output."""

    key = "runtime"

    address: str | None = knob(None, "Ray cluster address; unset: $RAY_ADDRESS, else a local Ray")
    pool: str = knob("ray_actors", "where clients train (a registered client pool): "
                     "ray_actors (client actors on the cluster) | in_process (in the driver "
                     "actor itself: no client actors)")
    num_actors: int | None = knob(None, "client actors; unset: as many as the resources allow",
                                  bounds=AT_LEAST_1)
    cpus_per_actor: float = knob(1.0, "CPUs reserved per client actor (and its torch threads)",
                                 bounds=POSITIVE)
    gpus_per_actor: float | None = knob(None, "GPU share per client actor; unset: 0.25 on a "
                                        "cluster with GPUs, else 0", bounds="[0, 8]")
    gpu_memory_fraction: float | None = knob(None, "CUDA memory cap per actor; unset: = "
                                             "gpus_per_actor", bounds="(0, 1]")
    placement_strategy: str = knob("SPREAD", "how client actors' bundles are placed",
                                   choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    round_timeout_s: float = knob(1800.0, "a round that takes longer fails the run",
                                  bounds=POSITIVE)
    max_actor_restarts: int = knob(3, "times one work unit may be lost to a dying client actor",
                                   bounds="[0, inf)")
    max_driver_restarts: int = knob(2, "a dead driver actor is recreated from the last "
                                    "checkpoint this often", bounds="[0, inf)")
    group_size: int | str = knob("auto", "clients per batched pass: auto = 1 on CPU; on a GPU "
                                 "as many (up to 8) as the actor's memory budget holds, from "
                                 "the bytes an image costs, measured at setup")
    memory_budget_mb: float | None = knob(None, "GPU memory (MiB) an actor sizes its batched "
                                          "group and evaluation chunk for; unset: its share "
                                          "of the GPU (gpu_memory_fraction, else "
                                          "gpus_per_actor)", bounds=POSITIVE)
    schedule: str = knob("dynamic", "dynamic: a work unit to whichever actor is free; "
                         "pinned: client k to actor k % N", choices=("dynamic", "pinned"))
    personal_memory: int | str = knob("auto", "clients whose personal state the driver keeps "
                                      "in memory; the rest spill to the run folder's "
                                      "personal/: auto = as many as personal_memory_mb holds")
    personal_memory_mb: float = knob(1024.0, "MiB of personal states the driver keeps in "
                                     "memory when personal_memory is auto (least recently "
                                     "used spill first)", bounds=POSITIVE)
    client_cache: int = knob(1024, "opened clients (their rows, labels and cached features) "
                             "kept per actor", bounds=AT_LEAST_1)
    client_cache_mb: float = knob(1024.0, "MiB the opened clients may hold per actor, at "
                                  "most (cached features dominate: 3 KiB an image at ViT-B "
                                  "width)", bounds=POSITIVE)
    output_dir: str = knob("rayfed_runs", "where run folders (and the default MLflow store) go",
                           path=True)
    run_name: str | None = knob(None, "run folder and MLflow run name; unset: timestamp + suffix")
    checkpoint_every: int = knob(1, "write a checkpoint every this many rounds",
                                 bounds=AT_LEAST_1)
    faults: list = knob(help="deterministic fault injection, for tests: driver_exit@K (the "
                        "driver dies after round K's checkpoint), actor_exit@K (a client "
                        "actor dies as it starts round K), pause@K (wait after round K), "
                        "disk_full@K (the device fills half-way through round K's "
                        "checkpoint)",
                        factory=list)

    @property
    def threads(self) -> int:
        """Torch threads of whatever trains clients (any pool): one per whole CPU of a
        client actor. Part of a run's numerics, not only its speed: a float reduction
        split over 2 threads rounds differently than over 1, so the same config gives
        the same numbers in every pool only at the same count."""
        return max(1, int(self.cpus_per_actor))

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("group_size", "personal_memory"):
            value = getattr(self, key)
            if value != "auto" and not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"runtime.{key}={value!r}; allowed: auto or an integer >= 1")
        name = self.run_name
        if name is not None and (name in ("", ".", "..") or any(c in "/\\" or ord(c) < 32
                                                               or ord(c) == 127 for c in name)):
            raise ConfigError(f"runtime.run_name={name!r} must be one folder name inside "
                              "runtime.output_dir: no '/' or '\\', no control characters, "
                              "not '.' or '..' (e.g. runtime.run_name=exp1)")
        if self.address is not None and not ADDRESS.fullmatch(self.address):
            raise ConfigError(f"runtime.address={self.address!r}: write HOST:PORT (a head's "
                              "GCS address, e.g. 10.0.0.1:6379), ray://HOST:PORT (Ray Client), "
                              "auto (the cluster `ray start` made on this machine), or leave it "
                              "unset (a local Ray)")
        for f in self.faults:
            kind, _, at = str(f).partition("@")
            if kind not in FAULTS or not at.isdigit():
                raise ConfigError(f"runtime.faults: {f!r}; write KIND@ROUND with KIND one of "
                                  f"{list(FAULTS)}")


@dataclass
class TrackingConfig(Checked):
    key = "tracking"

    enabled: bool = knob(True, "log to MLflow")
    tracking_uri: str | None = knob(None, "MLflow store; unset: $MLFLOW_TRACKING_URI, else "
                                    "SQLite under output_dir", path=True)
    experiment: str = knob("rayfed_bpt", "MLflow experiment name")


@dataclass
class AlgorithmConfig(Checked):
    key = "algorithm"

    name: str = knob("pfedbayespt", "the algorithm (`rayfed-bpt list algorithms`; "
                     "docs/algorithms.md)")
    options: dict = knob(help="the algorithm's own options (below, Algorithm options)",
                         factory=dict)


@dataclass
class ExperimentConfig:
    seed: int = knob(0, "seed of sampling, initialisation and (unset data.seed) the partition",
                     bounds="[0, inf)")
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
        knobs.check_knobs(self, "")  # the top level's own (seed)
        import_plugins(self.plugins)
        algorithm_options(self.algorithm.name, self.algorithm.options)
        check_pool(self.runtime.pool)
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
            set_key(d, key, value)
        return from_dict(ExperimentConfig, d)


def from_dict(cls: type, d: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``d``, every field checked (``knobs.from_dict``); an
    old key name is refused with its new one."""
    return knobs.from_dict(cls, d, prefix, RENAMED)


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                plugins: list[str] = ()) -> ExperimentConfig:
    """The config of ``path`` with dotted ``overrides``, every key and value checked, the
    algorithm's options included; ``plugins`` (``--import``) are added to the config's own."""
    d = read_yaml(preset_path(path)) if path else {}
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
