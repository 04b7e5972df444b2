"""FedAvg-MLP: a two-layer MLP head on the frozen backbone's prompt-free features.

A capacity control, not a prompt method: pFedBayesPT trains and sends ~434 k
parameters a round where FedAvg-VPT sends ~2 k, so a reader must see what the same
parameter budget buys with no prompt, no noise and no instance-wise anything. The
default width matches pFedBayesPT's default trainable parameters (within 10 %, a test
checks it). Trained and evaluated as FedAvg-Linear (cached features, no backbone pass
per step); only the head differs.
"""

from __future__ import annotations

from torch import nn

from ..catalog import MLPOptions
from .fedavg_linear import FedAvgLinear


class MLPHeadModule(nn.Module):
    def __init__(self, dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(),
                                  nn.Linear(hidden, num_classes))


class FedAvgMLP(FedAvgLinear):
    name = "fedavg_mlp"
    Options = MLPOptions

    def build_module(self) -> nn.Module:
        return MLPHeadModule(self.backbone.embed_dim, self.opts.hidden, self.num_classes)
