"""FedAvg-Linear: only a linear head on the frozen backbone's prompt-free features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Algorithm, ClientData


class HeadModule(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(dim, num_classes)


class FedAvgLinear(Algorithm):
    name = "fedavg_linear"

    def build_module(self) -> nn.Module:
        return HeadModule(self.backbone.embed_dim, self.num_classes)

    def step_inputs(self, module, data: ClientData, idx, gen, round):
        feats = self.features(data, "train")[idx]  # cached: no backbone pass per step
        return None, None, (feats, data.y("train", idx).to(feats.device))

    def step_loss(self, module, feats, rest):
        cached, y = rest
        return F.cross_entropy(module.head(cached), y), {}

    @torch.no_grad()
    def predict(self, module, data: ClientData, split: str, gen) -> torch.Tensor:
        return module.head(self.features(data, split)).softmax(-1)
