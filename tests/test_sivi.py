"""The SIVI estimator against closed forms, brute force and a naive float64 path."""

import math

import pytest
import torch

from rayfed_bpt.models.generator import ImplicitPromptGenerator, SigmaHead
from rayfed_bpt.models.sivi import log_normal_diag, sivi_kl, sivi_log_marginal, sivi_loss


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_log_normal_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    x, mu = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    logvar = torch.randn(5, 7, generator=g)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)
    assert torch.allclose(log_normal_diag(x, mu, logvar), ref)


def gaussian_mixing_case(J, P=4, n=40000, m=0.7, s=0.8, sigma=0.5, seed=0):
    """psi ~ N(m, s^2 I) (implicit), p | psi ~ N(psi, sigma^2 I): h = N(m, (s^2+sigma^2) I)."""
    g = torch.Generator().manual_seed(seed)
    psi = m + s * torch.randn(J + 1, n, P, generator=g)
    logvar = torch.full((n, P), 2 * math.log(sigma))
    p = psi[0] + sigma * torch.randn(n, P, generator=g)
    return p, psi, logvar


def test_kl_estimate_is_a_bound_that_tightens_with_J():
    """E[KL_hat_J] >= KL(h || N(0, I)) (so the SIVI objective <= the exact ELBO),
    decreasing toward the exact KL as J grows."""
    m, s, sigma, P = 0.7, 0.8, 0.5, 4
    v = s**2 + sigma**2
    exact_kl = 0.5 * P * (v + m**2 - 1 - math.log(v))
    est = []
    for J in (0, 1, 4, 16, 64):
        p, psi, logvar = gaussian_mixing_case(J, P=P, m=m, s=s, sigma=sigma)
        est.append(sivi_kl(p, psi, logvar).mean().item())
    se = 0.02  # Monte Carlo error at n=40000 is well below this
    assert all(e >= exact_kl - se for e in est), (est, exact_kl)
    assert all(a > b for a, b in zip(est, est[1:])), est  # monotone in J
    assert est[0] - exact_kl > 0.5  # J = 0 is loose ...
    assert est[-1] - exact_kl < 0.1 * (est[0] - exact_kl)  # ... J = 64 close


def test_dropping_psi0_breaks_the_bound():
    """With psi_0 left out of the logsumexp the estimate falls *below* the exact KL:
    no longer a valid bound. Our estimator keeps psi_0 in."""
    m, s, sigma, P = 0.7, 0.8, 0.5, 4
    v = s**2 + sigma**2
    exact_kl = 0.5 * P * (v + m**2 - 1 - math.log(v))
    p, psi, logvar = gaussian_mixing_case(4, P=P, m=m, s=s, sigma=sigma)
    without = (
        (
            torch.logsumexp(log_normal_diag(p.unsqueeze(0), psi[1:], logvar), 0)
            - math.log(4)
            - log_normal_diag(p, 0.0, 0.0)
        )
        .mean()
        .item()
    )
    assert without < exact_kl - 0.05 < sivi_kl(p, psi, logvar).mean().item()


def test_psi0_is_inside_the_logsumexp():
    p = torch.zeros(1, 3)
    near, far = torch.zeros(1, 1, 3), torch.full((3, 1, 3), 50.0)
    logvar = torch.zeros(1, 3)
    got = sivi_log_marginal(p, torch.cat([near, far]), logvar)
    expected = log_normal_diag(p, near[0], logvar) - math.log(4)
    assert torch.allclose(got, expected)


def test_log_space_equals_naive_float64():
    g = torch.Generator().manual_seed(1)
    J, B, P = 6, 5, 3
    psi = torch.randn(J + 1, B, P, generator=g)
    logvar = torch.randn(B, P, generator=g) * 0.3
    p = psi[0] + torch.exp(0.5 * logvar) * torch.randn(B, P, generator=g)
    var = torch.exp(logvar)
    dens = torch.exp(-0.5 * (p - psi) ** 2 / var) / torch.sqrt(2 * math.pi * var)
    naive = torch.log(dens.prod(-1).mean(0))
    assert torch.allclose(sivi_log_marginal(p, psi, logvar), naive, atol=1e-10)


def test_no_underflow_in_high_dimension():
    J, B, P = 4, 3, 8 * 768  # L*D of a ViT-B prompt
    g = torch.Generator().manual_seed(2)
    psi = torch.randn(J + 1, B, P, generator=g)
    logvar = torch.full((B, P), -4.0)
    p = psi[0] + 0.1 * torch.randn(B, P, generator=g)
    out = sivi_log_marginal(p.float(), psi.float(), logvar.float())
    assert torch.isfinite(out).all()
    naive = torch.log(torch.exp(log_normal_diag(p, psi, logvar)).mean(0))
    assert torch.isinf(naive).any() or torch.isfinite(naive).all()  # naive path is fragile


def test_loss_is_nll_plus_beta_kl_per_dim():
    g = torch.Generator().manual_seed(3)
    B, P, C = 4, 6, 3
    logits, y = torch.randn(B, C, generator=g), torch.tensor([0, 1, 2, 0])
    psi = torch.randn(3, B, P, generator=g)
    logvar = torch.zeros(B, P)
    p = psi[0] + torch.randn(B, P, generator=g)
    nll = torch.nn.functional.cross_entropy(logits, y)
    kl = sivi_kl(p, psi, logvar).mean()
    loss, parts = sivi_loss(logits, y, p, psi, logvar, beta=0.5)
    assert torch.allclose(loss, nll + 0.5 * kl / P)
    loss_raw, _ = sivi_loss(logits, y, p, psi, logvar, beta=0.5, per_dim=False)
    assert torch.allclose(loss_raw, nll + 0.5 * kl)
    assert torch.allclose(sivi_loss(logits, y, p, psi, logvar, beta=0.0)[0], nll)


@pytest.mark.parametrize("noise", ["bernoulli", "gaussian"])
def test_generator_noise_and_shapes(noise):
    gen = ImplicitPromptGenerator(10, 12, d_eps=16, hidden=8, noise=noise, noise_scale=2.0)
    g = torch.Generator().manual_seed(0)
    eps = gen.sample_noise((5, 3), g)
    assert eps.shape == (5, 3, 16)
    if noise == "bernoulli":
        assert set(eps.unique().tolist()) <= {0.0, 1.0}
        assert gen.mean_noise((1, 3)).eq(0.5).all()
    else:
        assert 1.5 < eps.std().item() < 2.5
    psi = gen(torch.randn(3, 10), eps)
    assert psi.shape == (5, 3, 12)
    assert not torch.allclose(psi[0], psi[1])  # the noise makes the mixing implicit
    low = ImplicitPromptGenerator(10, 12, d_eps=4, hidden=8, rank=2)
    assert low(torch.randn(3, 10), low.sample_noise((1, 3), g)).shape == (1, 3, 12)


def test_d_eps_zero_is_gaussian_vi():
    """No mixing noise: every psi_j is the same, log h_hat is the Gaussian log density."""
    gen = ImplicitPromptGenerator(10, 12, d_eps=0, hidden=8)
    e = torch.randn(3, 10)
    psi = gen(e, gen.sample_noise((5, 3), None))
    assert torch.allclose(psi[0], psi[4])
    sig = SigmaHead(10, 12)
    logvar = sig(e)
    p = psi[0] + torch.exp(0.5 * logvar) * torch.randn(3, 12)
    assert torch.allclose(sivi_log_marginal(p, psi, logvar), log_normal_diag(p, psi[0], logvar))


# ----- the few-bit layer: log h exact over every Bernoulli atom -------------------------------
def _independent_log_h(gen, e, p, logvar):
    """log h(p | x) = log (2^-d sum_k N(p; g(e, eps_k), sigma^2)), computed atom by atom in
    numpy/scipy from a separately enumerated noise grid (itertools, not ``atoms()``)."""
    import itertools

    import numpy as np
    from scipy.stats import multivariate_normal

    d = gen.d_eps
    grid = list(itertools.product((0.0, 1.0), repeat=d))
    out = []
    for b in range(len(p)):
        cov = np.diag(np.exp(logvar[b].detach().numpy()))
        logs = [multivariate_normal(gen(e[b : b + 1], torch.tensor([bits]))[0].detach().numpy(),
                                    cov).logpdf(p[b].detach().numpy()) for bits in grid]
        out.append(np.logaddexp.reduce(logs) - d * math.log(2))
    return torch.tensor(out)


def test_exact_log_h_over_every_atom_matches_an_independent_computation():
    from rayfed_bpt.models.sivi import atoms_first

    torch.manual_seed(0)
    gen = ImplicitPromptGenerator(5, 3, d_eps=3, hidden=8, init_scale=1.0)
    g = torch.Generator().manual_seed(1)
    e = torch.randn(6, 5, generator=g)
    eps = gen.sample_noise((6,), g)
    k = gen.atom_index(eps)
    assert torch.equal(gen.atoms()[k], eps)  # atom_index inverts atoms()
    psi = atoms_first(gen(e, gen.atoms().unsqueeze(1)), k)  # (8, 6, 3), drawn atom first
    assert torch.allclose(psi[0], gen(e, eps))
    # every atom is there once per example, whatever the order
    full = gen(e, gen.atoms().unsqueeze(1))
    assert torch.allclose(psi.sort(0).values, full.sort(0).values)
    logvar = torch.randn(6, 3, generator=g) - 1
    p = psi[0] + torch.exp(0.5 * logvar) * torch.randn(6, 3, generator=g)
    ours = sivi_log_marginal(p, psi, logvar)
    assert torch.allclose(ours, _independent_log_h(gen, e, p, logvar), atol=1e-9)


def test_entropy_credit_reaches_the_noise_entropy_only_with_every_atom():
    """With atoms far apart against sigma, log q(p|psi_0) - log h(p) -> H(eps) = d log 2 when
    h is exact; the sampled bound with J+1 draws is capped at log(J+1)."""
    from rayfed_bpt.models.sivi import atoms_first, sivi_diagnostics

    torch.manual_seed(0)
    d, n = 4, 2000
    gen = ImplicitPromptGenerator(2, 8, d_eps=d, hidden=32, init_scale=30.0)
    g = torch.Generator().manual_seed(0)
    e = torch.randn(n, 2, generator=g)
    logvar = torch.full((n, 8), -12.0)
    eps = gen.sample_noise((n,), g)
    psi = atoms_first(gen(e, gen.atoms().unsqueeze(1)), gen.atom_index(eps))
    p = psi[0] + torch.exp(0.5 * logvar) * torch.randn(n, 8, generator=g)
    exact = sivi_diagnostics(psi, logvar, p)
    assert exact["mix_credit"] == pytest.approx(d * math.log(2), rel=1e-3)
    assert exact["w_psi0"] == pytest.approx(1.0, abs=1e-3)  # atoms separate: p names its atom
    sampled = sivi_diagnostics(gen(e, gen.sample_noise((5, n), g)), logvar, p)
    assert sampled["mix_credit"] <= math.log(5) + 1e-9
