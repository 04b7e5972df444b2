"""FedProx on visual prompts: a rayfed_bpt plugin in one file.

FedProx (Li et al., MLSys 2020) is FedAvg whose clients add a proximal term
``(mu / 2) * ||w - w_global||^2`` to their local loss, so that many local steps on
skewed data drift less from the model they started from. Here ``w`` is what
FedAvg-VPT trains (one prompt and a linear head on the frozen ViT); ``mu = 0``
is FedAvg-VPT itself.

Only the per-client loss changes: the base class does the rest (seeded data
order, Adam, the batched group step, aggregation, evaluation, checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rayfed_bpt.algorithms import register_algorithm
from rayfed_bpt.algorithms.fedavg_vpt import FedAvgVPT
from rayfed_bpt.knobs import knob


def proximal_term(module: nn.Module, anchor: list[torch.Tensor]) -> torch.Tensor:
    """``||w - w_anchor||^2`` over every parameter of ``module``."""
    return sum(((p - a) ** 2).sum() for p, a in zip(module.parameters(), anchor))


@register_algorithm()
class FedProxVPT(FedAvgVPT):
    name = "fedprox_vpt"

    @dataclass
    class Options(FedAvgVPT.Options):
        mu: float = knob(0.1, "weight of the proximal term; 0: FedAvg-VPT", bounds="[0, 1e4]")

    def before_training(self, module: nn.Module, data) -> None:
        # a client's module starts as the global state: keep a copy, without gradient
        module.anchor = [p.detach().clone() for p in module.parameters()]

    def step_loss(self, module: nn.Module, feats: torch.Tensor, y: torch.Tensor):
        loss, parts = super().step_loss(module, feats, y)
        prox = proximal_term(module, module.anchor)
        return loss + 0.5 * self.opts.mu * prox, {**parts, "prox": prox.detach()}
