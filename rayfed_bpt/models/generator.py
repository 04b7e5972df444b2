"""The semi-implicit prompt posterior's two layers.

Implicit mixing layer: ``psi = g_phi([e(x); eps])`` with Bernoulli(0.5) or
Gaussian noise ``eps`` — an MLP fed with noise, so ``q_phi(psi | x)`` has no
density. Explicit layer: ``q(p | psi) = N(psi, diag sigma^2(x))`` where
``log sigma^2`` comes from a noise-free head of ``e(x)`` (or one global
vector): sharing sigma across psi draws keeps the bound cheap.
"""

from __future__ import annotations

import torch
from torch import nn


class ImplicitPromptGenerator(nn.Module):
    """``psi = g([e; eps])``: feature (B, D_feat) + noise (..., B, d_eps) -> (..., B, P)."""

    def __init__(
        self,
        feat_dim: int,
        prompt_dim: int,
        d_eps: int = 16,
        hidden: int = 256,
        rank: int | None = None,
        noise: str = "bernoulli",
        noise_scale: float = 1.0,
        init_scale: float = 0.02,
    ):
        super().__init__()
        if noise not in ("bernoulli", "gaussian"):
            raise ValueError(f"noise must be bernoulli or gaussian, got {noise!r}")
        self.d_eps, self.noise, self.noise_scale = d_eps, noise, noise_scale
        out: list[nn.Module] = (
            [nn.Linear(hidden, prompt_dim)]
            if not rank
            else [nn.Linear(hidden, rank, bias=False), nn.Linear(rank, prompt_dim)]
        )
        self.net = nn.Sequential(nn.Linear(feat_dim + d_eps, hidden), nn.GELU(), *out)
        nn.init.normal_(out[-1].weight, std=init_scale / max(1, hidden) ** 0.5)
        nn.init.zeros_(out[-1].bias)

    def sample_noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device=None
    ) -> torch.Tensor:
        shape = (*shape, self.d_eps)
        if self.noise == "bernoulli":  # drawn on the CPU: same numbers on any device
            eps = torch.randint(0, 2, shape, generator=generator).float()
        else:
            eps = torch.randn(shape, generator=generator) * self.noise_scale
        return eps.to(device if device is not None else self.net[0].weight.device)

    def mean_noise(self, shape: tuple[int, ...], device=None) -> torch.Tensor:
        """eps at its mean: 0.5 (Bernoulli) or 0 (Gaussian); used for the mean prompt."""
        return torch.full(
            (*shape, self.d_eps),
            0.5 if self.noise == "bernoulli" else 0.0,
            device=device if device is not None else self.net[0].weight.device,
        )

    def atoms(self, device=None) -> torch.Tensor:
        """Every Bernoulli noise value (2^d_eps, d_eps): row k holds k's bits, lowest first
        (so ``atom_index`` inverts it)."""
        k = torch.arange(2 ** self.d_eps)
        bits = (k.unsqueeze(1) >> torch.arange(self.d_eps)) & 1
        w = self.net[0].weight
        return bits.to(w.dtype).to(device if device is not None else w.device)

    @staticmethod
    def atom_index(eps: torch.Tensor) -> torch.Tensor:
        """The row of ``atoms()`` that a Bernoulli noise draw ``eps`` (..., d_eps) is."""
        weights = 2 ** torch.arange(eps.shape[-1], device=eps.device)
        return (eps.long() * weights).sum(-1)

    def forward(self, feat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        lead = torch.broadcast_shapes(feat.shape[:-1], eps.shape[:-1])
        feat, eps = feat.expand(*lead, feat.shape[-1]), eps.expand(*lead, eps.shape[-1])
        return self.net(torch.cat([feat, eps], dim=-1))


class SigmaHead(nn.Module):
    """log sigma^2 of the explicit layer: from e(x) (noise-free) or one global vector."""

    def __init__(
        self, feat_dim: int, prompt_dim: int, mode: str = "feature", init_logvar: float = -4.0
    ):
        super().__init__()
        if mode not in ("feature", "global"):
            raise ValueError(f"sigma mode must be feature or global, got {mode!r}")
        self.mode = mode
        if mode == "feature":
            self.linear = nn.Linear(feat_dim, prompt_dim)
            nn.init.zeros_(self.linear.weight)
            nn.init.constant_(self.linear.bias, init_logvar)
        else:
            self.logvar = nn.Parameter(torch.full((prompt_dim,), init_logvar))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        if self.mode == "feature":
            return self.linear(feat).clamp(-12.0, 4.0)
        return self.logvar.clamp(-12.0, 4.0).expand(feat.shape[0], -1)
