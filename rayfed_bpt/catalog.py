"""Algorithms, client pools and config presets by name, without torch: each algorithm's
``Options``, preset and class; each pool's class; each shipped YAML preset's file.

A config is checked where it is made, in the entry process, before Ray starts; the
algorithm's name and options are part of it. Importing the algorithms themselves
costs torch and timm (3 s here), so the built-in algorithms are declared here — their
options as knobs, each name with the class that implements it (imported only when a
run is set up) — the way a configuration file sits beside a model's code. A
plugin's algorithm registers its class with ``register_algorithm`` in its own
module; its ``Options`` come with it (that module is imported where the config is
made, as its ``plugins`` say). Ground floor: no torch, no imports from the rest of
the package but knobs, plugins and errors. Client pools the same way: the built-ins
declared by name and module here (a pool's module imports torch or Ray), a plugin's
registered with ``register_pool`` in its own module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import plugins
from .errors import ConfigError
from .knobs import from_dict, knob

NUMBER = "[0, inf)"
SIZE = "[1, inf)"


@dataclass(frozen=True)
class Spec:
    """What a name stands for: its options' dataclass, the options its preset fixes (an
    ablation), and its class (a class, or "module:Class" imported when first needed)."""

    options: type
    preset: dict
    target: type | str


_REGISTRY: plugins.Registry[Spec] = plugins.Registry("algorithms")


def declare(name: str, target: str, **preset: Any) -> Callable[[type], type]:
    """Decorator of a built-in ``Options`` dataclass: ``name`` is the algorithm class
    ``target`` ("module:Class" under rayfed_bpt.algorithms) with these options and
    ``preset`` fixed. Stack it to declare several names."""

    def add(options: type) -> type:
        module, cls = target.split(":")
        where = SimpleNamespace(__module__=f"rayfed_bpt.algorithms.{module}", __qualname__=cls)
        _REGISTRY.add(name, Spec(options, preset, f"{where.__module__}:{cls}"), where)
        return options

    return add


def register_algorithm(name: str | None = None, **preset: Any) -> Callable[[type], type]:
    """Class decorator (plugins): register ``cls`` as ``name`` (default ``cls.name``) with
    its ``cls.Options``, and ``preset`` options fixed (an ablation). Stack it to register
    presets of one class."""

    def add(cls: type) -> type:
        _REGISTRY.add(name or cls.name, Spec(cls.Options, preset, cls), cls)
        return cls

    return add


def load_target(target: type | str) -> type:
    """A registered class, or the class a "module:Class" declaration names (imported now)."""
    if isinstance(target, str):
        module, cls = target.split(":")
        return getattr(importlib.import_module(module), cls)
    return target


def spec(name: str) -> Spec:
    found = _REGISTRY.get(name)
    if found is None:
        raise ConfigError(f"unknown algorithm.name {name!r}; allowed: {list_algorithms()}")
    return found


def list_algorithms() -> list[str]:
    """Every registered name: the built-ins, then those of plugins."""
    return _REGISTRY.names()


def options_of(name: str) -> type:
    return spec(name).options


def preset_of(name: str) -> dict:
    """The options a registered preset fixes ({} for a plain algorithm or an unknown name)."""
    found = _REGISTRY.get(name)
    return dict(found.preset) if found else {}


def algorithm_options(name: str, options: dict | None) -> dict:
    """The preset merged with ``options``, every option checked against the algorithm's
    ``Options`` (names, types, choices, bounds): the one complete check, made wherever a
    config is made and for every corner of a sweep's space."""
    s = spec(name)
    merged = {**s.preset, **(options or {})}
    try:
        from_dict(s.options, merged, "algorithm.options")
    except ConfigError as e:
        raise ConfigError(f"{e} (algorithm {name}; every option: `rayfed-bpt config "
                          "--reference`, docs/config.md)") from None
    return merged


# ----- client pools -----------------------------------------------------------------------
_POOLS: plugins.Registry[type | str] = plugins.Registry("pools")


def register_pool(name: str) -> Callable[[type], type]:
    """Class decorator: ``cls`` is the client pool ``runtime.pool=name``. It is made from
    an ``engine.pool.PoolContext`` and implements ``engine.pool.ClientPool``."""

    def add(cls: type) -> type:
        _POOLS.add(name, cls, cls)
        return cls

    return add


def _declare_pool(name: str, target: str) -> None:
    module, cls = target.split(":")
    _POOLS.add(name, target, SimpleNamespace(__module__=module, __qualname__=cls))


_declare_pool("ray_actors", "rayfed_bpt.runtime.actor_pool:RayActorPool")
_declare_pool("in_process", "rayfed_bpt.engine.host:InProcessPool")


def pool_names() -> list[str]:
    return _POOLS.names()


def check_pool(name: str) -> None:
    if _POOLS.get(name) is None:
        raise ConfigError(f"runtime.pool={name!r}; allowed: {pool_names()} (a plugin adds "
                          "one with @register_pool)")


def pool_class(name: str) -> type:
    """The class of pool ``name`` (its module imported now)."""
    check_pool(name)
    return load_target(_POOLS.get(name))


# ----- the built-in algorithms' options --------------------------------------------------
@declare("local", "local:Local")
@declare("fedper_vpt", "fedper_vpt:FedPerVPT")
@declare("fedavg_vpt", "fedavg_vpt:FedAvgVPT")
@dataclass
class VPTOptions:
    prompt_len: int = knob(8, "prompt tokens L (0: no prompt, the head alone)",
                           bounds="[0, 512]")
    deep: bool = knob(False, "a prompt per transformer block (deep VPT)")


@declare("oracle_domain_vpt", "domain_oracle:DomainOracleVPT")
@dataclass
class DomainOracleOptions(VPTOptions):
    max_domains: int = knob(16, "prompts kept, one per domain; domain ids must be below it",
                            bounds=SIZE)


@declare("fedrep_vpt", "fedrep_vpt:FedRepVPT")
@dataclass
class FedRepOptions(VPTOptions):
    head_epochs: int = knob(1, "epochs of the head (prompt fixed) before the prompt's",
                            bounds=NUMBER)


@declare("fedavg_linear", "fedavg_linear:FedAvgLinear")
@dataclass
class NoOptions:
    pass


@declare("fedavg_mlp", "fedavg_mlp:FedAvgMLP")
@dataclass
class MLPOptions:
    hidden: int = knob(3120, "hidden width of the MLP head (3120: pFedBayesPT's default "
                       "trainable parameters, 433,690 against 433,674, on the 128-wide "
                       "backbone with 10 classes)", bounds=SIZE)


@declare("pfedpg", "pfedpg:PFedPG")
@dataclass
class PFedPGOptions(VPTOptions):
    descriptor_dim: int = knob(32, "size of each client's learned descriptor", bounds=SIZE)
    hidden: int = knob(256, "hidden width of the server's prompt generator", bounds=SIZE)
    server_lr: float = knob(0.005, "learning rate of the server's generator steps",
                            bounds="[0, 100]")
    server_steps: int = knob(20, "server gradient steps per round", bounds="[0, 10000]")


# controls: what conditioning on x adds (the generator and sigma head see a constant), and
# what the Bayesian part adds (the same generator, deterministic: no noise, no KL, the mean)
@declare("pfedbayespt_det", "pfedbayespt:PFedBayesPT", sample=False, beta=0.0,
         eval_mode="mean")
@declare("pfedbayespt_nocond", "pfedbayespt:PFedBayesPT", condition="none")
@declare("pfedbayespt_beta0", "pfedbayespt:PFedBayesPT", beta=0.0)  # ablation: no KL term
@declare("gaussian_vi", "pfedbayespt:PFedBayesPT", d_eps=0)  # ablation: no implicit mixing
@declare("pfedbayespt", "pfedbayespt:PFedBayesPT")
@dataclass
class BayesPTOptions:
    prompt_len: int = knob(8, "prompt tokens L", bounds="[1, 512]")
    deep: bool = knob(False, "a prompt per transformer block (deep VPT)")
    d_eps: int = knob(16, "mixing-noise dimension; 0: Gaussian VI", bounds="[0, 4096]")
    noise: str = knob("bernoulli", "mixing noise", choices=("bernoulli", "gaussian"))
    noise_scale: float = knob(1.0, "std of Gaussian mixing noise", bounds="[0, 1000]")
    hidden: int = knob(256, "hidden width of the prompt generator", bounds=SIZE)
    rank: int | None = knob(None, "low-rank generator output hidden -> r -> L*D; unset: full",
                            bounds=SIZE)
    code_dim: int | None = knob(None, "the posterior over a code of this size decoded "
                                "linearly to the L*D prompt (in few dimensions J draws give "
                                "real entropy credit); unset: over the prompt itself",
                                bounds="[1, 4096]")
    condition: str = knob("x", "x: the generator and sigma head see the image's features "
                          "e(x) | none: a constant (zeros) in their place, the same "
                          "parameters, noise and bound (a control)", choices=("x", "none"))
    sample: bool = knob(True, "draw the mixing and explicit-layer noise in training; false: "
                        "train the mean prompt deterministically (no sigma head; a control)")
    log_h: str = knob("sampled", "sampled: SIVI's bound over J+1 draws | exact: log h(p|x) "
                      "over all 2^d_eps Bernoulli atoms (d_eps <= 12)",
                      choices=("sampled", "exact"))
    sigma: str = knob("feature", "feature: a noise-free head of e(x) | global: one learned "
                      "scale", choices=("feature", "global"))
    init_logvar: float = knob(-4.0, "initial log-variance of the explicit layer")
    J: int = knob(4, "extra psi draws in the bound", bounds="[0, 1024]")
    beta: float = knob(1e-3, "KL weight", bounds="[0, 1000000]")
    kl_per_dim: bool = knob(True, "divide the KL estimate by L*D")
    beta_warmup_rounds: int = knob(0, "linear warm-up of beta over rounds", bounds=NUMBER)
    prior: str = knob("standard", "standard: N(0, I) | learnable: centred on a global prompt "
                      "| learnable_scale: a global mean and a global per-dimension scale",
                      choices=("standard", "learnable", "learnable_scale"))
    head: str = knob("shared", "shared: averaged | local: stays with the client (FedPer)",
                     choices=("shared", "local"))
    client_prompt: bool = knob(False, "a personal offset of the prompt (code) mean per client, "
                               "with the Gaussian KL of the client's posterior to the global "
                               "one (pFedBayes-style); stays with the client")
    client_kl: float = knob(1.0, "weight of that KL per client dataset (divided by the "
                            "client's train count per example)", bounds="[0, 1000000]")
    eval_samples: int = knob(8, "S: prompt samples averaged at prediction",
                             bounds="[1, 1024]")
    eval_mode: str = knob("mc", "mc: average S samples | mean: the noise-free mean prompt",
                          choices=("mc", "mean"))

    #: the most atoms ``log_h=exact`` enumerates (2^12 generator passes per step)
    EXACT_MAX_BITS = 12

    def __post_init__(self) -> None:
        if self.log_h == "exact" and (self.noise != "bernoulli"
                                      or not 1 <= self.d_eps <= self.EXACT_MAX_BITS):
            raise ConfigError(
                f"algorithm.options.log_h=exact enumerates the 2^d_eps Bernoulli atoms: it "
                f"needs noise=bernoulli and 1 <= d_eps <= {self.EXACT_MAX_BITS} (got "
                f"noise={self.noise}, d_eps={self.d_eps}); for more bits use log_h=sampled")
        if not self.sample and (self.beta != 0 or self.eval_mode != "mean"):
            raise ConfigError(
                "algorithm.options.sample=false trains a deterministic prompt (no explicit "
                "layer): it needs beta=0 and eval_mode=mean (got beta="
                f"{self.beta}, eval_mode={self.eval_mode}); the preset pfedbayespt_det sets both")


#: config presets shipped with the package, by name (`--config domainnet10`)
PRESETS = Path(__file__).resolve().parent / "presets"


def preset_path(path: str | Path) -> Path:
    """``--config``: a YAML file, or the name of a preset shipped with the package
    (``rayfed_bpt/presets/``: domainnet10, domainnet, office_caltech10)."""
    path = Path(path)
    if not path.exists() and not path.suffix and (PRESETS / f"{path}.yaml").exists():
        return PRESETS / f"{path}.yaml"
    return path


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))
