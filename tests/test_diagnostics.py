"""Diagnostics: whether pFedBayesPT's Bayesian part acts (w(psi_0), sigma, |psi|, the
spreads, NLL and KL), and calibration beside accuracy for every method. Each
estimator against an independent computation; a real run reads them back from MLflow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayfed_bpt.algorithms.evaluation import nll_and_ece
from rayfed_bpt.models.sivi import reparameterize, sivi_diagnostics


def test_nll_and_ece_match_a_loop_over_examples():
    rng = np.random.default_rng(0)
    for n, c in ((1, 3), (57, 10), (400, 4)):
        logits = rng.normal(size=(n, c)) * rng.uniform(0.1, 5)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        labels = rng.integers(0, c, n)
        nll, ece = nll_and_ece(probs, labels, bins=15)
        # independent: a plain loop, bins as half-open intervals (the last one closed)
        assert nll == pytest.approx(sum(-math.log(probs[i, labels[i]]) for i in range(n)) / n)
        total = 0.0
        for b in range(15):
            lo, hi = b / 15, (b + 1) / 15
            members = [i for i in range(n)
                       if lo <= probs[i].max() < hi or (b == 14 and probs[i].max() == 1.0)]
            if members:
                acc = sum(probs[i].argmax() == labels[i] for i in members) / len(members)
                conf = sum(probs[i].max() for i in members) / len(members)
                total += len(members) / n * abs(acc - conf)
        assert ece == pytest.approx(total, abs=1e-12)
    perfect = np.eye(5)[[0, 1, 2, 3, 4]]
    assert nll_and_ece(perfect, np.arange(5)) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_sivi_diagnostics_match_numpy():
    g = torch.Generator().manual_seed(1)
    J1, B, P = 5, 7, 12
    psi = torch.randn(J1, B, P, generator=g, dtype=torch.float64) * 0.3
    logvar = torch.randn(B, P, generator=g, dtype=torch.float64) * 0.2 - 1.0
    p = reparameterize(psi[0], logvar, torch.randn(B, P, generator=g, dtype=torch.float64))
    d = {k: float(v) for k, v in sivi_diagnostics(psi, logvar, p).items()}
    ps, lv, pp = psi.numpy(), logvar.numpy(), p.numpy()
    var = np.exp(lv)
    log_q = np.array([[-0.5 * np.sum(np.log(2 * np.pi * var[b]) + (pp[b] - ps[j, b]) ** 2
                                      / var[b]) for b in range(B)] for j in range(J1)])
    w0 = np.exp(log_q[0] - np.logaddexp.reduce(log_q, axis=0))
    assert d["w_psi0"] == pytest.approx(w0.mean(), rel=1e-10)
    assert d["sigma_mean"] == pytest.approx(np.sqrt(var).mean(), rel=1e-12)
    assert d["psi_abs_mean"] == pytest.approx(np.abs(ps[0]).mean(), rel=1e-12)
    assert d["mix_spread"] == pytest.approx(ps.std(axis=0, ddof=1).mean(), rel=1e-10)
    assert d["image_spread"] == pytest.approx(ps[0].std(axis=0, ddof=1).mean(), rel=1e-10)
    # identical draws: psi_0 carries exactly 1/(J+1) of the mass (full entropy credit);
    # far-apart draws: all of it (the bound is Gaussian VI's)
    same = sivi_diagnostics(psi[:1].expand(J1, B, P), logvar, p)
    assert float(same["w_psi0"]) == pytest.approx(1 / J1)
    far = sivi_diagnostics(psi * 100, logvar, reparameterize(psi[0] * 100, logvar, p * 0))
    assert float(far["w_psi0"]) == pytest.approx(1.0)


@pytest.mark.parametrize("algorithm", ["pfedbayespt", "fedavg_vpt"])
def test_every_run_logs_its_diagnostics_to_mlflow(tmp_path, digits4_path, algorithm):
    from mlflow.tracking import MlflowClient

    from rayfed_bpt.config import load_config
    from rayfed_bpt.data import PartitionConfig, load_dataset, write_partition
    from rayfed_bpt.engine.reference import local_engine
    from rayfed_bpt.tracking import MlflowListener

    part = write_partition(load_dataset(digits4_path), PartitionConfig(num_clients=3, seed=0),
                           tmp_path / "p3")
    cfg = load_config(None, [f"algorithm.name={algorithm}", f"data.partition_dir={part}",
                             "data.max_train_per_client=24", "data.max_test_per_client=12",
                             "train.rounds=2", "train.eval_every=1", "train.fraction=1.0"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = MlflowListener(uri, "diag", tmp_path / "art", tmp_path / "run", {}, None, print)
    run_id = mlf.start(None)
    engine = local_engine(cfg, [mlf])
    engine.run(engine.initial_state())
    mlf.finish()
    logged = MlflowClient(uri).get_run(run_id).data.metrics
    bayes = ["train_nll", "train_kl", "train_w_psi0", "train_sigma_mean", "train_psi_abs_mean",
             "train_mix_spread", "train_image_spread"]
    for key in ["train_loss", "acc_mean", "nll_mean", "ece_mean"] + (
            bayes if algorithm == "pfedbayespt" else []):
        history = MlflowClient(uri).get_metric_history(run_id, key)
        assert [h.step for h in history] == [1, 2], key
        assert math.isfinite(logged[key]), key
    if algorithm == "pfedbayespt":
        assert 0 < logged["train_w_psi0"] <= 1 and logged["train_sigma_mean"] > 0


def test_low_dimensional_code_bound_matches_an_independent_computation(digits4_path, tmp_path):
    """code_dim: the posterior lives on a d_z-dim code decoded linearly to the prompt; the
    loss is the SIVI bound in code space, recomputed here in numpy from the step's draws."""
    from rayfed_bpt.algorithms import create_algorithm
    from rayfed_bpt.algorithms.base import ClientData
    from rayfed_bpt.config import TrainConfig
    from rayfed_bpt.data import PartitionConfig, PartitionReader, load_dataset, write_partition
    from rayfed_bpt.models import PromptedViT, create_backbone

    part = write_partition(load_dataset(digits4_path), PartitionConfig(num_clients=3, seed=0),
                           tmp_path / "p3")
    data = ClientData.from_shard(PartitionReader(part).load(0), max_train=16, max_test=8)
    torch.manual_seed(0)
    alg = create_algorithm("pfedbayespt", PromptedViT(create_backbone()), 10, TrainConfig(),
                           {"code_dim": 8, "J": 3, "beta": 0.7, "kl_per_dim": True})
    module = alg.load(alg.init_global(), {})
    gen = torch.Generator().manual_seed(3)
    idx = torch.arange(12)
    with torch.no_grad():
        x, prompt, rest = alg.step_inputs(module, data, idx, gen, 0)
        y, z, psi, logvar, beta, client = rest
        assert client is None  # no client_prompt: no personal KL term
        assert z.shape == (12, 8) and psi.shape == (4, 12, 8)
        assert torch.equal(prompt.reshape(12, -1), module.decoder(z))  # linear decoding
        loss, parts = alg.step_loss(module, alg.backbone(x, prompt), rest)
        logits = module.head(alg.backbone(x, prompt)).double().numpy()
    zz, ps, var = z.double().numpy(), psi.double().numpy(), logvar.double().exp().numpy()
    lse = np.logaddexp.reduce(logits, axis=1)
    nll = lse - logits[np.arange(12), y.numpy()]

    def log_n(v, mean, variance):
        return -0.5 * np.sum(np.log(2 * np.pi * variance) + (v - mean) ** 2 / variance, -1)

    log_q = np.stack([log_n(zz, ps[j], var) for j in range(4)])
    log_h = np.logaddexp.reduce(log_q, axis=0) - np.log(4)
    kl = (log_h - log_n(zz, 0.0, np.ones_like(zz))) / 8  # per code dimension
    assert float(loss) == pytest.approx(np.mean(nll + 0.7 * kl), rel=1e-5)
    assert float(parts["kl"]) == pytest.approx(kl.mean(), rel=1e-5)
    # predictions decode sampled codes: a distribution over classes per image
    probs = alg.predict(module, data, "test", torch.Generator().manual_seed(0))
    assert probs.shape == (8, 10) and torch.allclose(probs.sum(-1), torch.ones(8))


def test_domain_oracle_picks_each_images_domain_prompt(digits4_path, tmp_path):
    """The headroom oracle: image i gets prompt[domain_i], and learns only the prompts of
    the domains it sees (an unseen domain's prompt keeps its initial value)."""
    from rayfed_bpt.algorithms import ClientTask, create_algorithm
    from rayfed_bpt.algorithms.base import ClientData
    from rayfed_bpt.config import TrainConfig
    from rayfed_bpt.data import PartitionConfig, PartitionReader, load_dataset, write_partition
    from rayfed_bpt.models import PromptedViT, create_backbone

    part = write_partition(load_dataset(digits4_path),
                           PartitionConfig("domain", num_clients=4, seed=0), tmp_path / "dom")
    data = ClientData.from_shard(PartitionReader(part).load(0), max_train=16, max_test=8)
    [domain] = set(data.domains["train"].tolist())  # `domain`: one domain per client
    torch.manual_seed(0)
    alg = create_algorithm("oracle_domain_vpt", PromptedViT(create_backbone()), 10,
                           TrainConfig(lr=0.05), {"max_domains": 4})
    g0 = alg.init_global()
    module = alg.load(g0, {})
    x, prompts, _ = alg.step_inputs(module, data, torch.arange(5), None, 0)
    assert torch.equal(prompts, module.prompt[torch.full((5,), domain)])
    [res] = alg.local_update(g0, [ClientTask(0, data, {}, 0)])
    moved = [not torch.equal(res.update["prompt"][d], g0["prompt"][d]) for d in range(4)]
    assert moved == [d == domain for d in range(4)]
