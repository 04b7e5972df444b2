"""FedAvg-MLP: a two-layer MLP head on the frozen backbone's prompt-free features.

A capacity control, not a prompt method: pFedBayesPT trains and sends ~434 k
parameters a round where FedAvg-VPT sends ~2 k, so a reader must see what the same
parameter budget buys with no prompt, no noise and no instance-wise anything. The
default width matches pFedBayesPT's default trainable parameters (within 10 %, a test
checks it); no backbone pass per step (the features are cached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..catalog import MLPOptions
from .base import Algorithm, ClientData


class MLPHeadModule(nn.Module):
    def __init__(self, dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(),
                                  nn.Linear(hidden, num_classes))


class FedAvgMLP(Algorithm):
    name = "fedavg_mlp"
    Options = MLPOptions

    def build_module(self) -> nn.Module:
        return MLPHeadModule(self.backbone.embed_dim, self.opts.hidden, self.num_classes)

    def step_inputs(self, module, data: ClientData, idx, gen, round):
        feats = self.features(data, "train")[idx]
        return None, None, (feats, data.y("train", idx).to(feats.device))

    def step_loss(self, module, feats, rest):
        cached, y = rest
        return F.cross_entropy(module.head(cached), y), {}

    @torch.no_grad()
    def predict(self, module, data: ClientData, split: str, gen) -> torch.Tensor:
        return module.head(self.features(data, split)).softmax(-1)
