"""FedAvg-VPT (a.k.a. FedVPT): one global prompt and head, averaged by FedAvg."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..catalog import VPTOptions
from .base import Algorithm, ClientData


class VPTModule(nn.Module):
    """A learnable prompt (shared by every image) and a linear head."""

    def __init__(self, prompt_shape: tuple[int, ...], dim: int, num_classes: int):
        super().__init__()
        self.prompt = nn.Parameter(torch.randn(prompt_shape) * 0.02)
        self.head = nn.Linear(dim, num_classes)


class FedAvgVPT(Algorithm):
    name = "fedavg_vpt"
    Options = VPTOptions

    @property
    def prompt_shape(self) -> tuple[int, ...]:
        return self.backbone.prompt_shape(self.opts.prompt_len, self.opts.deep)

    def build_module(self) -> nn.Module:
        return VPTModule(self.prompt_shape, self.backbone.embed_dim, self.num_classes)

    def prompts(self, module: nn.Module, n: int) -> torch.Tensor:
        """The one prompt, for each of ``n`` images."""
        return module.prompt.unsqueeze(0).expand(n, *module.prompt.shape)

    def logits(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module.head(self.backbone(x, self.prompts(module, len(x))))

    def step_inputs(self, module, data: ClientData, idx, gen, round):
        x = data.x("train", idx, self.backbone)
        return x, self.prompts(module, len(x)), data.y("train", idx).to(x.device)

    def step_loss(self, module, feats, y):
        return F.cross_entropy(module.head(feats), y), {}

    @torch.no_grad()
    def predict(self, module, data: ClientData, split: str, gen) -> torch.Tensor:
        n = data.num(split)
        return (
            torch.cat(
                [
                    self.logits(
                        module, data.x(split, torch.arange(i, min(i + self.eval_chunk, n)),
                                       self.backbone)
                    ).softmax(-1)
                    for i in range(0, n, self.eval_chunk)
                ]
            )
            if n
            else torch.zeros(0, self.num_classes)
        )
