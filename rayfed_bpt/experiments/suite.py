"""The paper suite: which runs answer docs/method.md's questions, as data.

A suite is three stages. **Tune**: each method's learning rate, chosen on each
client's validation split (carved from its train examples; the test split is not
even evaluated) of a partition seed that no table uses. **Main**: every method x setting x seed on
the same partitions, backbone, rounds and local epochs, each method at its
tuned rate (the two ablations inherit pFedBayesPT's: they differ from it in one
option only). **Sensitivity**: one pFedBayesPT option at a time on the
intra-client setting; the test-time sample count ``S`` is studied on the main
runs' trained states (``final_evals``), since it needs no retraining; option
**variants** (e.g. a personal head) run on whole settings beside the default.

Everything here is plain data (dotted overrides); ``runner`` executes it and
``report`` turns results into tables and plots.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..catalog import list_algorithms
from ..config import ExperimentConfig, load_config
from ..errors import ConfigError
from ..plugins import import_plugins

#: the order of rows in every table: the method first, then baselines, then ablations
METHODS = (
    "pfedbayespt",
    "local",
    "fedavg_linear",
    "fedavg_mlp",
    "fedavg_vpt",
    "fedper_vpt",
    "pfedpg",
    "gaussian_vi",
    "pfedbayespt_beta0",
    "pfedbayespt_nocond",
    "pfedbayespt_det",
    "oracle_domain_vpt",
)
class _Names(dict):
    """Display names; a method without one (a plugin's) is shown by its registered name."""

    def __missing__(self, key: str) -> str:
        return key


#: what tables and plots call each method
NAMES = _Names({
    "pfedbayespt": "pFedBayesPT",
    "local": "Local",
    "fedavg_linear": "FedAvg-Linear",
    "fedavg_mlp": "FedAvg-MLP (parameter-matched)",
    "fedavg_vpt": "FedAvg-VPT",
    "fedper_vpt": "FedPer-VPT",
    "fedrep_vpt": "FedRep-VPT",
    "pfedpg": "pFedPG",
    "gaussian_vi": "Gaussian-VI (d_eps=0)",
    "pfedbayespt_beta0": "pFedBayesPT beta=0",
    "pfedbayespt_nocond": "pFedBayesPT without x (condition=none)",
    "pfedbayespt_det": "Deterministic instance-wise generator",
    "oracle_domain_vpt": "Domain oracle (reference)",
})
#: ablations run at pFedBayesPT's tuned learning rate, not their own (one option differs)
ABLATIONS = {"gaussian_vi": "pfedbayespt", "pfedbayespt_beta0": "pfedbayespt",
             "pfedbayespt_nocond": "pfedbayespt"}
#: the rows that say what pFedBayesPT's gain is made of, each compared with it in every
#: table: capacity (a parameter-matched MLP head, no prompt), conditioning on x (the same
#: model fed a constant), the Bayesian layer (the same generator, deterministic; tuned on
#: its own: its objective differs in three options)
CONTROLS = ("fedavg_mlp", "pfedbayespt_nocond", "pfedbayespt_det")
#: upper references, not methods: run at the rate of the method they extend, never a
#: "best baseline" (the domain oracle reads domain labels no client has at test time)
REFERENCES = {"oracle_domain_vpt": "fedavg_vpt"}
#: whose tuned learning rate a row uses, when not its own
LR_FROM = {**ABLATIONS, **REFERENCES}
FLAGSHIP = "pfedbayespt"


@dataclass(frozen=True)
class Setting:
    name: str
    title: str
    overrides: tuple[str, ...]
    curve_every: int  # seed 0 is evaluated every this many rounds (the curves)
    methods: tuple[str, ...] = ()  # a subset of the suite's methods (empty: all of them)
    seeds: tuple[int, ...] = ()  # a subset of the suite's seeds (empty: all of them)
    side_methods: tuple[str, ...] = ()  # rows run on side_seeds only (costly, clearly apart)
    side_seeds: tuple[int, ...] = ()
    #: the headroom pair (upper reference, what it extends): the domain oracle's gap where
    #: domains differ, the personal head's gap (FedPer-VPT - FedAvg-VPT) under label skew
    headroom: tuple[str, str] = ("oracle_domain_vpt", "fedavg_vpt")


@dataclass(frozen=True)
class RunSpec:
    """One federated run: a stage, where it belongs in the report, and its overrides."""

    stage: str  # tune | select | main | sensitivity | variant
    setting: str
    method: str
    seed: int
    overrides: tuple[str, ...]
    study: str = ""  # sensitivity: the option studied
    value: str = ""  # sensitivity: its value; tune: the learning rate
    final_evals: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def config(self) -> ExperimentConfig:
        """The run's checked config object (what crosses to the Ray task)."""
        return load_config(None, list(self.overrides))

    def label(self) -> str:
        extra = (f" {self.study}={self.value}" if self.study and self.value else
                 f" {self.study}" if self.study else f" lr={self.value}" if self.value else "")
        return f"{self.stage}/{self.setting}/{self.method}{extra} seed {self.seed}"


@dataclass(frozen=True)
class Study:
    name: str  # what the table calls it
    title: str
    values: tuple[tuple[str, tuple[str, ...]], ...]  # (label, overrides); first = default


@dataclass(frozen=True)
class Variant:
    """A pFedBayesPT option run on whole settings, next to the main table's default."""

    name: str
    title: str
    settings: tuple[str, ...]
    overrides: tuple[str, ...]


@dataclass
class Suite:
    name: str
    settings: tuple[Setting, ...]
    common: tuple[str, ...]  # overrides every run shares
    seeds: tuple[int, ...]
    tune_seed: int
    tune_setting: str
    lrs: tuple[float, ...]  # chosen on validation: tune_val_fraction of each client's train
    sensitivity_setting: str
    sensitivity_seeds: tuple[int, ...]
    studies: tuple[Study, ...]
    sample_evals: dict[str, dict]  # the S study: name -> test-time options
    methods: tuple[str, ...] = METHODS
    variants: tuple[Variant, ...] = ()
    #: pFedBayesPT's personal part, chosen on validation (tune seed, validation split)
    #: among these (label, overrides), the first being none; run on ``personal_settings``
    personal_choices: tuple[tuple[str, tuple[str, ...]], ...] = ()
    personal_settings: tuple[str, ...] = ()
    budget: str = ""  # how the sizes were chosen to fit the machine (goes into the report)
    tune_val_fraction: float = 0.2
    notes: str = ""

    def with_methods(self, methods: Sequence[str], plugins: Sequence[str] = ()) -> Suite:
        """This suite with ``methods`` added as rows of every setting (each tuned at its
        own learning rate, run on every seed the flagship runs), ``plugins`` imported by
        every run. What the suite already ran stays in its cache: a run's key leaves
        ``plugins`` out (``run_key``)."""
        import_plugins(plugins)
        known = list_algorithms()
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ConfigError(f"--add-method {unknown}: not a registered algorithm; allowed: "
                              f"{known} (a plugin's: --import MODULE)")
        new = tuple(m for m in methods if m not in self.methods)
        extra = (f"plugins=[{', '.join(plugins)}]",) if plugins else ()
        return replace(
            self, methods=self.methods + new, common=self.common + extra,
            settings=tuple(replace(s, methods=s.methods + new) if s.methods else s
                           for s in self.settings))

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise ConfigError(f"the {self.name} suite has no setting {name!r}; it has "
                          f"{', '.join(s.name for s in self.settings)}")

    def _overrides(self, setting: Setting, method: str, seed: int, lr: float,
                   curves: bool) -> tuple[str, ...]:
        rounds = load_config(None, [*self.common, *setting.overrides]).train.rounds
        every = setting.curve_every if curves else rounds
        return (*self.common, *setting.overrides, f"algorithm.name={method}", f"seed={seed}",
                f"train.lr={lr}", f"train.eval_every={every}")

    def tune_runs(self) -> list[RunSpec]:
        setting = self.setting(self.tune_setting)
        return [
            RunSpec("tune", setting.name, m, self.tune_seed,
                    (*self._overrides(setting, m, self.tune_seed, lr, curves=False),
                     f"data.val_fraction={self.tune_val_fraction}", "train.eval_test=false"),
                    value=f"{lr:g}")
            for m in self.methods if m not in LR_FROM for lr in self.lrs
        ]

    def select_runs(self, lr: dict[str, float]) -> list[RunSpec]:
        """pFedBayesPT with each personal part on each personal setting, at its tuned
        rate, on the tune seed's validation split (the test split is not evaluated)."""
        return [
            RunSpec("select", st, FLAGSHIP, self.tune_seed,
                    (*self._overrides(self.setting(st), FLAGSHIP, self.tune_seed, lr[FLAGSHIP],
                                      curves=False),
                     f"data.val_fraction={self.tune_val_fraction}", "train.eval_test=false",
                     *ovr), study="personal", value=label)
            for label, ovr in self.personal_choices for st in self.personal_settings
        ]

    def personal_variant(self, label: str) -> Variant | None:
        """The chosen personal part as a variant of the personal settings (none: None)."""
        ovr = dict(self.personal_choices).get(label, ())
        if not ovr:
            return None
        return Variant(f"personal: {label}", f"pFedBayesPT with the personal part chosen on "
                       f"validation ({label})", self.personal_settings, ovr)

    def methods_of(self, setting: Setting) -> tuple[str, ...]:
        return tuple(m for m in self.methods if not setting.methods or m in setting.methods)

    def seeds_of(self, setting: Setting, method: str = FLAGSHIP) -> tuple[int, ...]:
        if method in setting.side_methods:
            return setting.side_seeds
        return setting.seeds or self.seeds

    def main_runs(self, lr: dict[str, float]) -> list[RunSpec]:
        out = []
        for setting in self.settings:
            for m in self.methods_of(setting):
                seeds = self.seeds_of(setting, m)
                for seed in seeds:
                    evals = (self.sample_evals if m == FLAGSHIP
                             and setting.name == self.sensitivity_setting else {})
                    out.append(RunSpec(
                        "main", setting.name, m, seed,
                        self._overrides(setting, m, seed, lr[LR_FROM.get(m, m)],
                                        curves=seed == seeds[0]),
                        final_evals=evals))
        return out

    def sensitivity_runs(self, lr: dict[str, float]) -> list[RunSpec]:
        """The non-default points of every study (the default point is the main run)."""
        setting = self.setting(self.sensitivity_setting)
        return [
            RunSpec("sensitivity", setting.name, FLAGSHIP, seed,
                    (*self._overrides(setting, FLAGSHIP, seed, lr[FLAGSHIP], curves=False),
                     *ovr), study=study.name, value=label)
            for study in self.studies for label, ovr in study.values[1:]
            for seed in self.sensitivity_seeds
        ]


    def all_variants(self, personal: str = "") -> tuple[Variant, ...]:
        chosen = self.personal_variant(personal) if personal else None
        return (*self.variants, *([chosen] if chosen else []))

    def variant_runs(self, lr: dict[str, float], personal: str = "") -> list[RunSpec]:
        """Every option variant's runs, the chosen personal part's (``personal``) among
        them."""
        return [
            RunSpec("variant", setting, FLAGSHIP, seed,
                    (*self._overrides(self.setting(setting), FLAGSHIP, seed, lr[FLAGSHIP],
                                      curves=False), *v.overrides), study=v.name)
            for v in self.all_variants(personal) for setting in v.settings
            for seed in self.seeds_of(self.setting(setting), v.name)
        ]


def run_key(overrides: tuple[str, ...], final_evals: dict | None = None) -> str:
    """What identifies a run's result: its resolved config (and any extra evaluations)."""
    cfg = load_config(None, list(overrides)).to_dict()
    # where a run is executed or logged, and where its code is imported from: not its result
    for part in ("runtime", "tracking", "plugins"):
        cfg.pop(part, None)
    if cfg["train"]["eval_every"] >= cfg["train"]["rounds"]:
        cfg["train"]["eval_every"] = cfg["train"]["rounds"]  # "final only" has one spelling
    return config_hash({"config": cfg, "final_evals": final_evals or {}})


def config_hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
