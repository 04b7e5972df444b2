"""FedAvg-VPT (a.k.a. FedVPT): one global prompt and head, averaged by FedAvg."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Algorithm, ClientData, check_options
from .registry import register_algorithm


class VPTModule(nn.Module):
    """A learnable prompt (shared by every image) and a linear head."""

    def __init__(self, prompt_shape: tuple[int, ...], dim: int, num_classes: int):
        super().__init__()
        self.prompt = nn.Parameter(torch.randn(prompt_shape) * 0.02)
        self.head = nn.Linear(dim, num_classes)


@register_algorithm()
class FedAvgVPT(Algorithm):
    name = "fedavg_vpt"

    @dataclass
    class Options:
        prompt_len: int = 8
        deep: bool = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_options(self.opts, prompt_len=(0, 512))

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
                        module, data.x(split, torch.arange(i, min(i + 256, n)), self.backbone)
                    ).softmax(-1)
                    for i in range(0, n, 256)
                ]
            )
            if n
            else torch.zeros(0, self.num_classes)
        )
