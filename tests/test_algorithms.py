"""Algorithms through the one interface, and the single-process reference loop."""

import hashlib
import math

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
    "fedavg_mlp",
    "pfedbayespt_nocond",
    "pfedbayespt_det",
]
# presets of pFedBayesPT, FedAvg-VPT with a personal part, the oracle: learning in -m slow
SLOW = {"gaussian_vi", "pfedbayespt_beta0", "local", "fedper_vpt", "oracle_domain_vpt",
        "pfedbayespt_nocond"}
HEADS = ("fedavg_linear", "fedavg_mlp")  # no prompt: no prompt_len option


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
                "options": {"prompt_len": 4} if name not in HEADS else {},
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
        ("fedavg_mlp", ["head."], []),
        ("pfedbayespt_det", ["generator.", "head."], []),
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



def test_controls_cost_what_they_should(pv):
    """fedavg_mlp is parameter-matched to pFedBayesPT's default (within 10 %); the
    deterministic control has no explicit layer; the no-conditioning control keeps every
    parameter; passes per test image count the feature pass and each prompt sample."""
    train = TrainConfig()

    def alg(name, **o):
        return create_algorithm(name, pv, 10, train, o)

    full = alg("pfedbayespt")
    assert alg("fedavg_mlp").model_params() == pytest.approx(full.model_params(), rel=0.10)
    assert alg("pfedbayespt_nocond").model_params() == full.model_params()
    det = alg("pfedbayespt_det")
    assert not any(k.startswith("sigma.") for k in det.initial_state())
    assert det.model_params() < full.model_params()
    assert full.backbone_passes() == 1 + full.opts.eval_samples == 9
    assert full.backbone_passes({"eval_mode": "mean"}) == det.backbone_passes() == 2
    assert alg("fedavg_vpt").backbone_passes() == alg("fedavg_mlp").backbone_passes() == 1


def test_no_conditioning_makes_the_prompt_law_the_same_for_every_image(part4, pv):
    cfg = small_cfg(part4, "pfedbayespt_nocond")
    data = load_clients(PartitionReader(part4), [0], cfg)[0]
    for name, same in (("pfedbayespt_nocond", True), ("pfedbayespt", False)):
        alg = create_algorithm(name, pv, 10, cfg.train, {"prompt_len": 4})
        module = alg.load(alg.init_global(), alg.init_personal(0))
        e = alg.conditioning(alg.features(data, "train")[:8])
        psi = module.generator(e, module.generator.mean_noise((1, 8)))[0]
        assert torch.allclose(psi, psi[:1].expand_as(psi)) == same


def test_exact_log_h_trains_and_reports_the_mixing_credit(part4):
    cfg = small_cfg(part4, "pfedbayespt", rounds=1)
    cfg.algorithm.options.update({"d_eps": 3, "log_h": "exact", "code_dim": 4,
                                  "kl_per_dim": False, "beta": 0.1,
                                  "prior": "learnable_scale"})
    [last] = run_reference(cfg, log=None)
    assert 0.125 <= last["train_w_psi0"] <= 1.0  # 1/2^3 when the atoms coincide
    assert 0.0 <= last["train_mix_credit"] <= 3 * math.log(2) + 1e-6
    assert last["model_params"] > 0 and last["backbone_passes_per_image"] == 9


def test_domain_oracle_averages_each_domain_over_the_clients_holding_it(pv):
    """Hand example: client A holds domain 0 only (30 examples), B domains 0 and 1 (10 +
    20): prompt 0 = (30 a0 + 10 b0) / 40, prompt 1 = B's alone, prompt 2 (held by no one)
    unchanged; the head is the sample-weighted FedAvg mean; no count reaches the state."""
    from rayfed_bpt.algorithms.domain_oracle import COUNTS

    alg = create_algorithm("oracle_domain_vpt", pv, 10, TrainConfig(),
                           {"prompt_len": 1, "max_domains": 3})
    g = alg.init_global()
    shape = g["prompt"].shape

    def client(cid, value, counts, n):
        upd = {k: torch.full_like(v, float(value)) for k, v in g.items()}
        upd[COUNTS] = torch.tensor(counts, dtype=torch.float64)
        return ClientResult(cid, n, upd, {}, {})

    new = alg.aggregate(g, [client(0, 1.0, [30, 0, 0], 30), client(1, 5.0, [10, 20, 0], 30)],
                        0)
    assert COUNTS not in new and set(new) == set(g)
    assert torch.allclose(new["prompt"][0], torch.full(shape[1:], (30 * 1 + 10 * 5) / 40))
    assert torch.allclose(new["prompt"][1], torch.full(shape[1:], 5.0))
    assert torch.equal(new["prompt"][2], g["prompt"][2])
    assert torch.allclose(new["head.weight"], torch.full_like(g["head.weight"], 3.0))


def test_client_prompt_stays_home_and_its_kl_is_the_gaussian_one(part4, pv):
    import numpy as np

    cfg = small_cfg(part4, "pfedbayespt")
    data = load_clients(PartitionReader(part4), [0], cfg)[0]
    alg = create_algorithm("pfedbayespt", pv, 10, cfg.train,
                           {"prompt_len": 2, "client_prompt": True, "head": "local",
                            "client_kl": 3.0})
    assert set(alg.init_personal(0)) == {"client_offset", "head.weight", "head.bias"}
    assert not alg.has_global_model
    [res] = alg.local_update(alg.init_global(), [ClientTask(0, data, alg.init_personal(0), 0)])
    assert "client_offset" in res.personal and "client_offset" not in res.update
    assert res.personal["client_offset"].abs().sum() > 0  # it trained
    module = alg.load(res.update, res.personal)
    logvar = torch.randn(5, module.client_offset.numel())
    got = alg.client_term(module, logvar, data).detach().numpy()
    d = res.personal["client_offset"].numpy().astype(float)
    want = [0.5 * np.sum(d ** 2 / np.exp(lv)) * 3.0 / data.num("train")
            for lv in logvar.numpy().astype(float)]
    assert np.allclose(got, want, rtol=1e-5)
