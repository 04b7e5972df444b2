"""The semi-implicit variational bound (SIVI, Yin & Zhou 2018) for prompts.

With ``psi_0..psi_J ~ q_phi(psi | x)`` and ``p = psi_0 + sigma * xi``:

    log h_hat(p | x) = logsumexp_j log N(p; psi_j, sigma^2) - log(J + 1)
    L = log p(y | x, p) - beta * (log h_hat(p | x) - log p(p))

``psi_0`` (the draw that produced ``p``) must be inside the logsumexp: that
is what makes ``L`` a lower bound (L_J <= ELBO, rising toward it with J).
Everything is in log space: with ~10^4 prompt dimensions densities underflow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def log_normal_diag(
    x: torch.Tensor, mean: torch.Tensor | float, logvar: torch.Tensor | float
) -> torch.Tensor:
    """log N(x; mean, diag(exp(logvar))), summed over the last dimension."""
    logvar = torch.as_tensor(logvar, dtype=x.dtype, device=x.device)
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar)).sum(-1)


def reparameterize(psi0: torch.Tensor, logvar: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """p = psi_0 + sigma * xi, with sigma = exp(logvar / 2)."""
    return psi0 + torch.exp(0.5 * logvar) * xi


def sivi_log_marginal(p: torch.Tensor, psi: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log h_hat(p | x) per example.

    p: (B, P); psi: (J+1, B, P) with psi[0] the draw that produced p;
    logvar: (B, P) or (P,), shared by all psi_j (what keeps the bound cheap).
    """
    log_q = log_normal_diag(p.unsqueeze(0), psi, logvar)  # (J+1, B)
    return torch.logsumexp(log_q, dim=0) - math.log(psi.shape[0])


def atoms_first(atoms: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """All K mixing atoms (K, B, Z) reordered per example so that the atom ``k[b]`` that
    produced example b's prompt comes first: ``sivi_log_marginal`` over them is then the
    exact log h(p | x) (a mean over every atom, in any order), and the diagnostics'
    "psi_0" is the producing atom, as in the sampled bound."""
    K, B = atoms.shape[:2]
    idx = torch.arange(K, device=atoms.device).unsqueeze(1).repeat(1, B)
    cols = torch.arange(B, device=atoms.device)
    idx[k, cols] = 0
    idx[0, cols] = k
    return atoms.gather(0, idx.unsqueeze(-1).expand_as(atoms))


def sivi_kl(
    p: torch.Tensor, psi: torch.Tensor, logvar: torch.Tensor,
    prior_mean: torch.Tensor | float = 0.0, prior_logvar: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Single-sample estimate of KL(h(.|x) || p) = log h_hat(p|x) - log N(p; mean, var)
    (the prior N(prior_mean, exp(prior_logvar)); standard by default)."""
    return sivi_log_marginal(p, psi, logvar) - log_normal_diag(p, prior_mean, prior_logvar)


@torch.no_grad()
def sivi_diagnostics(psi: torch.Tensor, logvar: torch.Tensor, p: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
    """What tells whether the Bayesian part acts, per batch (detached):

    - ``mix_credit``: log q(p|psi_0) - log h_hat(p|x) = log((J+1) w_psi0), the entropy
      credit the mixing earns, in nats.
    - ``w_psi0``: the weight of psi_0 inside log h_hat's log-mean-exp. Near 1, the
      other draws add no density at p and the bound is Gaussian VI's (no entropy
      credit for the mixing spread).
    - ``sigma_mean``: the explicit layer's std, against ``psi_abs_mean`` (|psi|, its
      scale: a fixed sigma beside a growing |psi| stops mattering).
    - ``mix_spread`` (std of psi across the J+1 mixing draws) vs ``image_spread``
      (std of psi_0 across the batch's images): how random vs how instance-wise.
    """
    log_q = log_normal_diag(p.unsqueeze(0), psi, logvar)  # (J+1, B)
    w = torch.softmax(log_q, dim=0)[0]
    out = {"w_psi0": w.mean(),
           # log q(p|psi_0) - log h_hat(p): the entropy the bound credits the mixing with
           # (<= log(J+1); with every atom enumerated, an estimate of I(p; eps) <= H(eps))
           "mix_credit": (math.log(psi.shape[0]) + torch.log(w)).mean(),
           "sigma_mean": torch.exp(0.5 * logvar).mean(),
           "psi_abs_mean": psi[0].abs().mean()}
    if psi.shape[0] > 1:
        out["mix_spread"] = psi.std(dim=0).mean()
    if psi.shape[1] > 1:
        out["image_spread"] = psi[0].std(dim=0).mean()
    return out


def sivi_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    p: torch.Tensor,
    psi: torch.Tensor,
    logvar: torch.Tensor,
    beta: float,
    prior_mean: torch.Tensor | float = 0.0,
    per_dim: bool = True,
    prior_logvar: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative SIVI bound, averaged over the batch. ``per_dim`` divides the KL
    estimate by the prompt dimension P, so ``beta`` does not scale with L·D."""
    nll = F.cross_entropy(logits, y, reduction="none")
    kl = sivi_kl(p, psi, logvar, prior_mean, prior_logvar)
    if per_dim:
        kl = kl / p.shape[-1]
    loss = (nll + beta * kl).mean()
    return loss, {"nll": nll.mean().detach(), "kl": kl.mean().detach()}
