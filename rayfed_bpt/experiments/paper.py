"""The paper suite as data: its settings, sizes (full, and ``quick`` for CI), stages and
what was cut to fit 120 minutes on 2 cores. ``suite`` defines what a suite is."""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import list_algorithms
from .suite import FLAGSHIP, METHODS, NAMES, Setting, Study, Suite, Variant


def _studies(quick: bool) -> tuple[Study, ...]:
    """One option at a time, few values: the larger protocol is bought with a small
    sensitivity stage (the d_eps = 0 and beta = 0 points are the main table's ablations)."""
    o = "algorithm.options."

    def study(name, title, key, default, values):
        vals = [default] + [v for v in values if v != default]
        return Study(name, title, tuple((str(v), (f"{o}{key}={v}",))
                                        for v in vals[: 2 if quick else None]))

    return (
        study("J", "Extra mixing draws J in the bound", "J", "4", ["0", "16"]),
    )


#: the few-bit semi-implicit layer (issue 22): 4 Bernoulli bits (16 atoms, log h exact over
#: all of them), on a 16-dim code decoded to the prompt, the KL per example (not per
#: dimension) with a 3-round warm-up, toward a prior with a learnable mean and scale
FEWBIT = ("algorithm.options.code_dim=16", "algorithm.options.d_eps=4",
          "algorithm.options.log_h=exact", "algorithm.options.kl_per_dim=false",
          "algorithm.options.beta_warmup_rounds=3", "algorithm.options.prior=learnable_scale")
DIGITS8 = "digits4+rotate+colour+noise+invert"


@dataclass(frozen=True)
class _Sizes:
    """What ``quick`` changes: the same shape, small enough for CI."""

    common: tuple[str, ...]
    n: int  # clients of the 8-client settings
    pop: int
    pop_round: int
    pop_rounds: int
    pop_train: int
    pop_test: int
    seeds: tuple[int, ...]
    few: tuple[int, ...]  # the side rows' seeds
    pop_seeds: tuple[int, ...]
    every: int  # curve seed evaluated every this many rounds
    pop_every: int


QUICK = _Sizes(("data.max_train_per_client=32", "data.max_test_per_client=16",
                "train.rounds=3", "train.local_epochs=1", "train.optimizer_state=keep"),
               8, 20, 5, 3, 32, 8, (0,), (0,), (0,), 1, 1)
FULL = _Sizes(("data.max_train_per_client=256", "data.max_test_per_client=200",
               "train.rounds=16", "train.local_epochs=1", "train.optimizer_state=keep"),
              8, 100, 10, 10, 128, 40, (0, 1, 2, 3, 4), (0, 1, 2), (0, 1), 4, 3)
CORE = (FLAGSHIP, "fedavg_vpt", "oracle_domain_vpt")
LABEL = (FLAGSHIP, "local", "fedavg_vpt", "fedper_vpt")
SHIFT = (*CORE, "pfedbayespt_nocond")
SIDE = ("local", "fedper_vpt", "gaussian_vi", "pfedbayespt_beta0", "pfedbayespt_nocond",
        "pfedbayespt_det", "fewbit b=0.01", "fewbit b=0.1")


def _settings(z: _Sizes) -> tuple[Setting, ...]:
    half = ("train.fraction=0.5",)
    n = z.n
    dm8 = (f"data.dataset={DIGITS8}", "data.partitioner=domain_mix", "data.domain_alpha=0.5",
           f"data.num_clients={n}", *half)
    return (
        Setting("domain_mix8", f"Feature heterogeneity with headroom: 8 domains (digits-4 + "
                f"rotate, colour, noise, invert), domain_mix Dirichlet 0.5, {n} clients",
                dm8, curve_every=z.every, side_methods=SIDE, side_seeds=z.few),
        Setting("k_classes", f"Label heterogeneity: 2 classes per client, {n} clients",
                ("data.partitioner=k_classes", "data.k=2", f"data.num_clients={n}", *half),
                curve_every=z.every, methods=LABEL, seeds=z.few,
                headroom=("fedper_vpt", "fedavg_vpt")),
        Setting("image_shift", "Per-image shift: digits-4 + a copy of mnist with its own "
                "rotation, hue, blur and contrast drawn per image (continuous), domain_mix "
                f"Dirichlet 0.5, {n} clients",
                ("data.dataset=digits4+shift", "data.partitioner=domain_mix",
                 "data.domain_alpha=0.5", f"data.num_clients={n}", *half),
                curve_every=z.every, methods=SHIFT, seeds=z.few),
        Setting("population", f"Population: {z.pop} clients, {z.pop_round} per round, 8 "
                "domains x label Dirichlet 0.5",
                (f"data.dataset={DIGITS8}", "data.partitioner=domain_mix",
                 "data.domain_alpha=0.5", "data.label_alpha=0.5", f"data.num_clients={z.pop}",
                 "train.fraction=null", f"train.clients_per_round={z.pop_round}",
                 f"train.rounds={z.pop_rounds}", f"data.max_train_per_client={z.pop_train}",
                 f"data.max_test_per_client={z.pop_test}"),
                curve_every=z.pop_every, methods=CORE, seeds=z.pop_seeds),
    )


def _budget(z: _Sizes) -> str:
    """The report's budget paragraph: the sizes, and what was cut to fit."""
    names = ", ".join(NAMES[m] for m in SIDE)
    common = z.common
    return (
        f"{z.n} clients, half of them per round ({z.pop} clients, {z.pop_round} per round and "
        f"{z.pop_rounds} rounds in `population`), at most {common[0].split('=')[1]} training "
        f"and {common[1].split('=')[1]} test examples per client ({z.pop_train} / "
        f"{z.pop_test} in `population`; a client with fewer uses all it has), "
        f"{common[2].split('=')[1]} "
        "rounds, 1 local epoch, batch 32, Adam with each client's state kept across its "
        "rounds (`train.optimizer_state=keep`, every method alike). The frozen backbone's "
        "prompt-free features e(x) are computed once per client and cached. Curves: the "
        f"first seed is evaluated every {z.every} rounds ({z.pop_every} in `population`), the "
        f"others only at the end. Cut to fit 120 minutes on 2 cores: {len(z.seeds)} seeds in "
        f"`domain_mix8` except {names} ({len(z.few)} seeds: 4-6 points behind or level at 3 "
        f"seeds in the previous suite, or variants); `k_classes` "
        f"({', '.join(NAMES[m] for m in LABEL)}) and `image_shift` "
        f"({', '.join(NAMES[m] for m in SHIFT)}) on {len(z.few)} seeds, `population` "
        f"({', '.join(NAMES[m] for m in CORE)}) on {len(z.pop_seeds)} (level at 3 seeds "
        "before); the domain oracle left out of `k_classes` (its headroom there is the "
        "personal head's gap, FedPer-VPT - FedAvg-VPT); the digits-4 `domain_mix` setting, "
        "the sensitivity study of J, the `code16` variant (behind by 2.6 at 5 seeds) and "
        "FedRep-VPT (5 points behind at 3 seeds; still registered) dropped; learning "
        "rates tuned over 2 values; the personal part chosen from 4 options on one "
        "validation run each per setting; the test-time sample study S has 4 points."
    )


def paper_suite(quick: bool = False) -> Suite:
    """The suite issue 11 asks for; ``quick`` is the same shape, small enough for CI.

    Protocol: every client trains on up to 256 examples and is tested on up to 200
    (all it has when fewer), each client's Adam state carried across its rounds, 16
    rounds with 4 of 8 clients a round (at 10 rounds every curve still rose: FedAvg-VPT
    +2.0 points from round 6 to 10 on ``domain_mix8``; the report checks the plateau).
    On 2 CPU cores the per-client step is the floor (a 16-round run here: FedAvg-VPT
    ~95 s, pFedBayesPT ~140 s, two at a time), so the protocol's 5 seeds go to the
    headline setting's rows that decide its verdicts (pFedBayesPT, the global baselines,
    pFedPG, the oracle, the code16 variant); the personal baselines and the two
    ablations, 4-6 points apart or level there at 3 seeds before, run 3 seeds, as do
    ``k_classes`` (verdict decided by every seed before) and ``population``.
    """
    z = QUICK if quick else FULL
    common, seeds = z.common, z.seeds
    settings = _settings(z)
    budget = _budget(z)
    missing = set(METHODS) - set(list_algorithms())
    assert not missing, f"suite names unregistered methods {missing}"
    return Suite(
        name="paper-quick" if quick else "paper",
        settings=settings,
        common=common,
        seeds=seeds,
        tune_seed=100,
        tune_setting="domain_mix8",
        lrs=(1e-2, 3e-2),
        sensitivity_setting="domain_mix8",
        sensitivity_seeds=(0,),
        studies=_studies(quick) if quick else (),  # the quick suite keeps the stage tested
        sample_evals=({"mean_prompt": {"eval_mode": "mean"}, "S1": {"eval_samples": 1}}
                      if quick else
                      {"mean_prompt": {"eval_mode": "mean"}, "S1": {"eval_samples": 1},
                       "S4": {"eval_samples": 4}}),
        variants=tuple(
            Variant(f"fewbit b={b}", f"the few-bit semi-implicit layer, beta {b}: 4 noise "
                    "bits, log h exact over their 16 atoms, a 16-dim code, the KL per "
                    "example with 3 warm-up rounds, a prior with learnable mean and scale",
                    ("domain_mix8",), (*FEWBIT, f"algorithm.options.beta={b}"))
            for b in (0.01, 0.1)),
        personal_choices=(
            ("none", ()),
            ("local head", ("algorithm.options.head=local",)),
            ("client prompt", ("algorithm.options.client_prompt=true",)),
            ("both", ("algorithm.options.head=local", "algorithm.options.client_prompt=true")),
        ),
        personal_settings=("k_classes", "domain_mix8"),
        budget=budget,
        notes="" if quick else ("A hand-written reading of these tables (what was tried, "
                                "likely causes): [results_discussion.md](results_discussion.md)."),
    )


SUITES = {"paper": paper_suite}
