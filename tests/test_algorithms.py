"""Algorithms through the one interface, and the single-process reference loop."""

import hashlib

import pytest
import torch

from rayfed_bpt.algorithms import ClientResult, ClientTask, create_algorithm, list_algorithms
from rayfed_bpt.config import ExperimentConfig, TrainConfig, from_dict
from rayfed_bpt.data import PartitionReader
from rayfed_bpt.engine import run_reference
from rayfed_bpt.engine.loop import is_timing
from rayfed_bpt.engine.reference import main as reference_main
from rayfed_bpt.engine.setup import load_clients, sample_clients
from rayfed_bpt.models import PromptedViT, create_backbone

ALL = [
    "pfedbayespt",
    "local",
    "fedavg_vpt",
    "fedper_vpt",
    "fedrep_vpt",
    "pfedpg",
    "fedavg_linear",
    "gaussian_vi",
    "pfedbayespt_beta0",
    "oracle_domain_vpt",
]
# presets of pFedBayesPT, FedAvg-VPT with a personal part, the oracle: learning in -m slow
SLOW = {"gaussian_vi", "pfedbayespt_beta0", "local", "fedper_vpt", "oracle_domain_vpt"}


def small_cfg(part4, name="pfedbayespt", rounds=3, **train):
    return from_dict(
        ExperimentConfig,
        {
            "seed": 0,
            "data": {
                "partition_dir": str(part4),
                "max_train_per_client": 96,
                "max_test_per_client": 60,
            },
            "train": {"rounds": rounds, "batch_size": 32, "fraction": 1.0, "eval_every": 1,
                  **train},
            "algorithm": {
                "name": name,
                "options": {"prompt_len": 4} if name != "fedavg_linear" else {},
            },
        },
    )


@pytest.fixture(scope="module")
def pv():
    return PromptedViT(create_backbone())


def test_registry_lists_every_method():
    from rayfed_bpt.plugins import origin

    built_in = [n for n in list_algorithms() if origin("algorithms", n) == "built-in"]
    assert sorted(built_in) == sorted(ALL)  # plugins a test imported may come after them


def _digest(module):
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode() + v.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "name, trained, fixed",
    [
        ("pfedbayespt", ["generator.", "sigma.", "head."], []),
        ("fedavg_vpt", ["prompt", "head."], []),
        ("fedrep_vpt", ["prompt", "head."], []),
        ("fedavg_linear", ["head."], []),
        ("pfedpg", ["prompt", "head."], ["generator.", "descriptors"]),
    ],
)
def test_only_intended_parameters_change(name, trained, fixed, part4, pv):
    cfg = small_cfg(part4, name)
    reader = PartitionReader(part4)
    data = load_clients(reader, [0], cfg)[0]
    alg = create_algorithm(name, pv, 10, cfg.train, cfg.algorithm.options, num_clients=4)
    before_backbone = _digest(pv.vit)
    g0, p0 = alg.init_global(), alg.init_personal(0)
    [res] = alg.local_update(g0, [ClientTask(0, data, p0, 0)])
    assert _digest(pv.vit) == before_backbone  # frozen backbone: byte-identical
    after = {**res.update, **res.personal}
    before = {**g0, **p0}
    for key in before:
        changed = key in after and not torch.equal(before[key], after[key])
        if any(key.startswith(t) for t in trained):
            assert changed, f"{key} should have been trained"
        if any(key.startswith(f) for f in fixed):
            assert not changed, f"{key} should not change on the client"
    assert not any(k.startswith("vit.") for k in after)  # the backbone never travels


def test_personal_parts_stay_home(part4, pv):
    cfg = small_cfg(part4, "fedper_vpt")
    alg = create_algorithm("fedper_vpt", pv, 10, cfg.train, {"prompt_len": 2})
    data = load_clients(PartitionReader(part4), [1], cfg)[1]
    [res] = alg.local_update(alg.init_global(), [ClientTask(1, data, alg.init_personal(1), 0)])
    assert set(res.update) == {"prompt"} and set(res.personal) == {"head.weight", "head.bias"}
    local = create_algorithm("local", pv, 10, cfg.train, {"prompt_len": 2})
    assert local.init_global() == {}


def test_aggregation_is_the_sample_weighted_mean(pv):
    alg = create_algorithm("fedavg_vpt", pv, 10, TrainConfig(), {"prompt_len": 2})
    g = alg.init_global()
    a = {k: torch.full_like(v, 1.0) for k, v in g.items()}
    b = {k: torch.full_like(v, 4.0) for k, v in g.items()}
    new = alg.aggregate(g, [ClientResult(0, 30, a, {}, {}), ClientResult(1, 10, b, {}, {})], 0)
    for k in g:  # by hand: (30 * 1 + 10 * 4) / 40 = 1.75
        assert torch.allclose(new[k], torch.full_like(g[k], 1.75))


def test_pfedpg_server_moves_generated_prompts_toward_client_prompts(pv):
    alg = create_algorithm(
        "pfedpg", pv, 10, TrainConfig(), {"prompt_len": 2, "server_steps": 50}, num_clients=3
    )
    g = alg.init_global()
    module = alg.load(g, alg.init_personal(0))
    target = torch.randn(2, pv.embed_dim) * 0.1
    res = ClientResult(
        2, 10, {"prompt": target, **{k: v for k, v in g.items() if k.startswith("head.")}}, {}, {}
    )
    new = alg.aggregate(g, [res], 0)
    before = (module.generate(2) - target).pow(2).mean().item()
    after = (alg.load(new, alg.init_personal(0)).generate(2) - target).pow(2).mean().item()
    assert after < 0.5 * before


def test_client_sampling_is_seeded():
    t = TrainConfig(clients_per_round=3)
    assert sample_clients(10, t, 0, 4) == sample_clients(10, t, 0, 4)
    assert len(sample_clients(10, t, 0, 4)) == 3
    rounds = {tuple(sample_clients(10, t, 0, r)) for r in range(10)}
    assert len(rounds) > 1
    assert sample_clients(10, TrainConfig(fraction=0.25), 0, 0).__len__() == 3
    assert sample_clients(4, TrainConfig(fraction=None), 0, 0) == [0, 1, 2, 3]


def test_same_config_and_seed_same_metrics(part4):
    cfg = small_cfg(part4, "pfedbayespt", rounds=2)
    a = run_reference(cfg, log=None)
    b = run_reference(cfg, log=None)
    strip = [{k: v for k, v in m.items() if not is_timing(k)} for m in a]
    assert strip == [{k: v for k, v in m.items() if not is_timing(k)} for m in b]
    cfg.seed, cfg.train.rounds = 1, 1
    c = run_reference(cfg, log=None)
    assert c[0]["train_loss"] != a[0]["train_loss"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in ALL])
def test_every_method_learns_well_above_chance(name, part4):
    history = run_reference(small_cfg(part4, name, rounds=3), log=None)
    last = history[-1]
    assert last["acc_mean"] > 0.4, history  # chance is 0.1
    assert {"acc_std", "acc_min", "global_acc", "domain_acc/mnistm"} <= set(last)


def test_reference_command_prints_rounds(part4, capsys):
    rc = reference_main(
        [
            "--set",
            f"data.partition_dir={part4}",
            "train.rounds=1",
            "algorithm.name=fedavg_linear",
            "data.max_train_per_client=50",
        ]
    )
    assert rc == 0
    assert "round 1/1  loss" in capsys.readouterr().out
    assert reference_main(["--set", "algorithm.name=nope"]) == 2

