"""The paper suite: which runs answer METHOD.md's questions, as data.

A suite is three stages. **Tune**: each method's learning rate, chosen on a
partition seed that no table uses. **Main**: every method x setting x seed on
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
from dataclasses import dataclass, field

from ..algorithms import list_algorithms
from ..config import ExperimentConfig, load_config

#: the order of rows in every table: the method first, then baselines, then ablations
METHODS = (
    "pfedbayespt",
    "local",
    "fedavg_linear",
    "fedavg_vpt",
    "fedper_vpt",
    "fedrep_vpt",
    "pfedpg",
    "gaussian_vi",
    "pfedbayespt_beta0",
)
#: ablations run at pFedBayesPT's tuned learning rate, not their own
ABLATIONS = {"gaussian_vi": "pfedbayespt", "pfedbayespt_beta0": "pfedbayespt"}
FLAGSHIP = "pfedbayespt"


@dataclass(frozen=True)
class Setting:
    name: str
    title: str
    overrides: tuple[str, ...]
    curve_every: int  # seed 0 is evaluated every this many rounds (the curves)


@dataclass(frozen=True)
class RunSpec:
    """One federated run: a stage, where it belongs in the report, and its overrides."""

    stage: str  # tune | main | sensitivity
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
    lrs: tuple[float, ...]
    sensitivity_setting: str
    sensitivity_seeds: tuple[int, ...]
    studies: tuple[Study, ...]
    sample_evals: dict[str, dict]  # the S study: name -> test-time options
    methods: tuple[str, ...] = METHODS
    variants: tuple[Variant, ...] = ()
    budget: str = ""  # how the sizes were chosen to fit the machine (goes into the report)
    notes: str = ""

    def setting(self, name: str) -> Setting:
        return next(s for s in self.settings if s.name == name)

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
                    self._overrides(setting, m, self.tune_seed, lr, curves=False), value=f"{lr:g}")
            for m in self.methods if m not in ABLATIONS for lr in self.lrs
        ]

    def main_runs(self, lr: dict[str, float]) -> list[RunSpec]:
        out = []
        for setting in self.settings:
            for m in self.methods:
                for seed in self.seeds:
                    evals = (self.sample_evals if m == FLAGSHIP
                             and setting.name == self.sensitivity_setting else {})
                    out.append(RunSpec(
                        "main", setting.name, m, seed,
                        self._overrides(setting, m, seed, lr[ABLATIONS.get(m, m)],
                                        curves=seed == self.seeds[0]),
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


    def variant_runs(self, lr: dict[str, float]) -> list[RunSpec]:
        return [
            RunSpec("variant", setting, FLAGSHIP, seed,
                    (*self._overrides(self.setting(setting), FLAGSHIP, seed, lr[FLAGSHIP],
                                      curves=False), *v.overrides), study=v.name)
            for v in self.variants for setting in v.settings for seed in self.seeds
        ]


def run_key(overrides: tuple[str, ...], final_evals: dict | None = None) -> str:
    """What identifies a run's result: its resolved config (and any extra evaluations)."""
    cfg = load_config(None, list(overrides)).to_dict()
    for part in ("runtime", "tracking"):  # where a run is executed or logged: not its result
        cfg.pop(part, None)
    if cfg["train"]["eval_every"] >= cfg["train"]["rounds"]:
        cfg["train"]["eval_every"] = cfg["train"]["rounds"]  # "final only" has one spelling
    return config_hash({"config": cfg, "final_evals": final_evals or {}})


def config_hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _studies(quick: bool) -> tuple[Study, ...]:
    o = "algorithm.options."

    def study(name, title, key, default, values):
        vals = [default] + [v for v in values if v != default]
        if quick:
            vals = vals[:2]
        return Study(name, title, tuple(
            (str(v), tuple(f"{o}{k}={x}" for k, x in (v if isinstance(v, dict) else
                                                        {key: v}).items()))
            for v in vals))

    noise = {
        "bernoulli d=16": {"d_eps": 16, "noise": "bernoulli"},
        "none (d=0, Gaussian VI)": {"d_eps": 0},
        "bernoulli d=4": {"d_eps": 4, "noise": "bernoulli"},
        "bernoulli d=64": {"d_eps": 64, "noise": "bernoulli"},
        "gaussian d=16": {"d_eps": 16, "noise": "gaussian"},
    }
    noise_study = Study(
        "mixing noise", "Mixing noise eps: type and dimension d_eps",
        tuple((label, tuple(f"{o}{k}={v}" for k, v in d.items()))
              for label, d in list(noise.items())[: 2 if quick else None]))
    return (
        study("beta", "KL weight beta", "beta", "0.001", ["0.0", "0.0001", "0.01", "0.1"]),
        study("L", "Prompt length L", "prompt_len", "8", ["2", "4", "16"]),
        noise_study,
        study("J", "Extra mixing draws J in the bound", "J", "4", ["0", "1", "16"]),
    )


def paper_suite(quick: bool = False) -> Suite:
    """The suite the issue asks for; ``quick`` is the same shape, small enough for CI.

    Sizes were picked to fit 90 minutes on 2 CPU cores (measured: a prompt step is
    ~120 ms at batch 32 on one core, pFedBayesPT's 8-sample evaluation costs 8
    forward passes): 64 training and 40 test examples per client, 10 rounds of
    half the clients (100-client setting: 15 rounds of 10, 20 test examples).
    """
    if quick:
        common = ("data.max_train_per_client=32", "data.max_test_per_client=16",
                  "train.rounds=3", "train.local_epochs=1")
        n, pop, pop_round, pop_rounds, pop_test = 8, 20, 5, 3, 8
    else:
        common = ("data.max_train_per_client=64", "data.max_test_per_client=40",
                  "train.rounds=10", "train.local_epochs=1")
        n, pop, pop_round, pop_rounds, pop_test = 20, 100, 10, 15, 20
    settings = (
        Setting("domain_mix", f"Feature heterogeneity, intra-client: domain_mix (Dirichlet 0.5 "
                f"over domains), {n} clients", ("data.partitioner=domain_mix",
                                                "data.domain_alpha=0.5",
                                                f"data.num_clients={n}", "train.fraction=0.5"),
                curve_every=1 if quick else 2),
        Setting("one_domain", f"Feature heterogeneity, one domain per client, {n} clients",
                ("data.partitioner=domain", f"data.num_clients={n}", "train.fraction=0.5"),
                curve_every=1 if quick else 2),
        Setting("label_dir0.1", f"Label heterogeneity: Dirichlet 0.1 over labels, {n} clients",
                ("data.partitioner=dirichlet", "data.label_alpha=0.1", f"data.num_clients={n}",
                 "train.fraction=0.5"), curve_every=1 if quick else 2),
        Setting("label_dir0.5", f"Label heterogeneity: Dirichlet 0.5 over labels, {n} clients",
                ("data.partitioner=dirichlet", "data.label_alpha=0.5", f"data.num_clients={n}",
                 "train.fraction=0.5"), curve_every=1 if quick else 2),
        Setting("population", f"Population: {pop} clients, {pop_round} per round, domain_mix "
                "x label Dirichlet 0.5",
                ("data.partitioner=domain_mix", "data.domain_alpha=0.5", "data.label_alpha=0.5",
                 f"data.num_clients={pop}", "train.fraction=null",
                 f"train.clients_per_round={pop_round}", f"train.rounds={pop_rounds}",
                 f"data.max_test_per_client={pop_test}"), curve_every=1 if quick else 5),
    )
    budget = (
        f"{n} clients ({pop} in `population`), at most "
        f"{common[0].split('=')[1]} training and {common[1].split('=')[1]} test examples per "
        f"client ({pop_test} in `population`), {common[2].split('=')[1]} rounds of half the "
        f"clients ({pop_rounds} rounds of {pop_round} in `population`), 1 local epoch, batch "
        "32, Adam. The frozen backbone's prompt-free features e(x) are computed once per "
        "client and cached. Curves: seed 0 is evaluated during training, the other seeds only "
        "at the end (pFedBayesPT's 8-sample evaluation costs as much as its training)."
    )
    missing = set(METHODS) - set(list_algorithms())
    assert not missing, f"suite names unregistered methods {missing}"
    return Suite(
        name="paper-quick" if quick else "paper",
        settings=settings,
        common=common,
        seeds=(0,) if quick else (0, 1, 2),
        tune_seed=100,
        tune_setting="domain_mix",
        lrs=(1e-2, 3e-2) if quick else (1e-2, 3e-2, 1e-1),
        sensitivity_setting="domain_mix",
        sensitivity_seeds=(0,) if quick else (0, 1),
        studies=_studies(quick),
        sample_evals=({"mean_prompt": {"eval_mode": "mean"}, "S1": {"eval_samples": 1}}
                      if quick else
                      {"mean_prompt": {"eval_mode": "mean"}, "S1": {"eval_samples": 1},
                       "S2": {"eval_samples": 2}, "S4": {"eval_samples": 4},
                       "S16": {"eval_samples": 16}}),
        variants=(Variant(
            "head=local", "pFedBayesPT with a personal head (option head=local, FedPer-style)",
            ("label_dir0.1",) if quick else ("label_dir0.1", "label_dir0.5"),
            ("algorithm.options.head=local",)),),
        budget=budget,
        notes="" if quick else ("A hand-written reading of these tables (what was tried, "
                                "likely causes): [results_discussion.md](results_discussion.md)."),
    )


SUITES = {"paper": paper_suite}
