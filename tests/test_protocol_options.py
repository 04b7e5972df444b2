"""Protocol options every method shares: kept optimizer state, and fair ablation inits."""

import pytest
import torch

from rayfed_bpt.algorithms import ClientTask, create_algorithm
from rayfed_bpt.algorithms.base import OPTIM, load_optimizer, make_generator, save_optimizer
from rayfed_bpt.config import TrainConfig, load_config
from rayfed_bpt.data import PartitionReader
from rayfed_bpt.engine.setup import load_clients
from rayfed_bpt.errors import ConfigError
from rayfed_bpt.models import PromptedViT, create_backbone


def small_cfg(part, name, **train):
    return load_config(None, [f"data.partition_dir={part}", "data.max_train_per_client=96",
                              f"algorithm.name={name}",
                              *(f"train.{k}={v}" for k, v in train.items())])


@pytest.fixture(scope="module")
def pv():
    return PromptedViT(create_backbone())


def _manual_two_rounds(alg, data, cid: int) -> dict:
    """The same client trained for rounds 0 and 1 by hand: ONE Adam across both rounds
    (what optimizer_state=keep promises), each round's batches from its own generator."""
    module = alg.load(alg.init_global(), alg.init_personal(cid))
    module.train()
    opt = torch.optim.Adam(list(module.parameters()), lr=alg.train_cfg.lr)
    n, bs = data.num("train"), alg.train_cfg.batch_size
    for rnd in (0, 1):
        gen = make_generator(alg.seed, "train", rnd, cid)
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            loss, _ = alg.loss(module, data, perm[i:i + bs], gen, rnd)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach() for k, v in module.state_dict().items()}


def test_kept_optimizer_state_is_one_adam_across_rounds(part4, pv):
    """keep: round 1 continues round 0's Adam moments (checked against a hand-written
    loop); reset: round 1 starts a fresh Adam, so the weights differ."""
    cfg = small_cfg(part4, "fedavg_vpt", optimizer_state="keep")
    data = load_clients(PartitionReader(part4), [0], cfg)[0]
    out = {}
    for mode in ("keep", "reset"):
        cfg.train.optimizer_state = mode
        alg = create_algorithm("fedavg_vpt", pv, 10, cfg.train, {"prompt_len": 2})
        g, personal = alg.init_global(), alg.init_personal(0)
        for rnd in (0, 1):  # one client, its result becomes the global state
            [res] = alg.local_update(g, [ClientTask(0, data, personal, rnd)])
            g, personal = res.update, res.personal
        out[mode] = (g, personal)
    g, personal = out["keep"]
    assert {k for k in personal if k.startswith(OPTIM)}, "keep stores Adam state"
    assert all(int(v) == 2 * 3 for k, v in personal.items() if k.endswith(".step"))  # 96/32
    cfg.train.optimizer_state = "keep"
    manual = _manual_two_rounds(
        create_algorithm("fedavg_vpt", pv, 10, cfg.train, {"prompt_len": 2}), data, 0)
    for k, v in manual.items():
        torch.testing.assert_close(g[k], v, rtol=1e-5, atol=1e-6)
    g_reset, p_reset = out["reset"]
    assert not any(k.startswith(OPTIM) for k in p_reset)
    assert not torch.allclose(g_reset["prompt"], g["prompt"])


def test_optimizer_state_round_trips_as_plain_tensors():
    w = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([w], lr=0.1)
    w.sum().backward()
    opt.step()
    flat = save_optimizer(opt, "optim.0.")
    assert all(isinstance(v, torch.Tensor) for v in flat.values())
    fresh = torch.optim.Adam([w], lr=0.1)
    load_optimizer(fresh, flat, "optim.0.")
    for f in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(torch.as_tensor(fresh.state[w][f]), torch.as_tensor(opt.state[w][f]))
    empty = torch.optim.Adam([w], lr=0.1)
    load_optimizer(empty, flat, "optim.1.")  # nothing under that key: a fresh start
    assert not empty.state


def test_optimizer_state_is_checked():
    with pytest.raises(ConfigError, match="optimizer_state"):
        TrainConfig(optimizer_state="momentum")


def test_ablations_start_from_the_full_methods_initial_values(pv):
    """beta=0 is the same network: identical init. d_eps=0 drops the noise inputs of the
    generator's first layer: every other value, and that layer's feature columns, equal."""
    opts = {"prompt_len": 2}
    full = create_algorithm("pfedbayespt", pv, 10, TrainConfig(), opts).initial_state()
    beta0 = create_algorithm("pfedbayespt_beta0", pv, 10, TrainConfig(), opts).initial_state()
    assert full.keys() == beta0.keys()
    assert all(torch.equal(full[k], beta0[k]) for k in full)
    gvi = create_algorithm("gaussian_vi", pv, 10, TrainConfig(), opts).initial_state()
    assert full.keys() == gvi.keys()
    first = "generator.net.0.weight"
    d = pv.embed_dim
    assert gvi[first].shape == (full[first].shape[0], d)
    assert torch.equal(gvi[first], full[first][:, :d])
    assert all(torch.equal(full[k], gvi[k]) for k in full if k != first)
    # a different seed is a different init (the family seeding still uses the run seed)
    other = create_algorithm("pfedbayespt", pv, 10, TrainConfig(), opts, seed=1)
    assert not torch.equal(other.initial_state()[first], full[first])
