"""The headroom oracle: FedAvg-VPT with one prompt per domain, picked by each image's
known domain label.

Not a method (it reads the domain labels that no client has at test time in
practice): an upper reference for what instance-wise prompts can gain in a setting.
Its gap to FedAvg-VPT's one global prompt is the headroom; a setting where the gap is
under a point cannot show an instance-wise method winning.

Each domain's prompt is averaged over the clients that hold that domain, weighted by
their examples of it: a client without the domain leaves that prompt untouched, and
averaging its copy in (weights by total train count) would pull a rare domain's prompt
back toward its start and understate the headroom. So each client also sends its
per-domain train counts (``COUNTS``, a few numbers).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..catalog import DomainOracleOptions
from .base import ClientData, ClientResult, ClientTask, State
from .fedavg_vpt import FedAvgVPT


class DomainPromptModule(nn.Module):
    """One learnable prompt per domain id and a linear head."""

    def __init__(self, num_domains: int, prompt_shape: tuple[int, ...], dim: int,
                 num_classes: int):
        super().__init__()
        self.prompt = nn.Parameter(torch.randn(num_domains, *prompt_shape) * 0.02)
        self.head = nn.Linear(dim, num_classes)


COUNTS = "domain_counts"  # travels with a client's update; never in the global state


class DomainOracleVPT(FedAvgVPT):
    name = "oracle_domain_vpt"

    Options = DomainOracleOptions

    def build_module(self) -> nn.Module:
        return DomainPromptModule(self.opts.max_domains, self.prompt_shape,
                                  self.backbone.embed_dim, self.num_classes)

    def domain_prompts(self, module: nn.Module, data: ClientData, split: str, idx
                       ) -> torch.Tensor:
        d = torch.as_tensor(data.domains[split][torch.as_tensor(idx).numpy()], dtype=torch.long)
        if len(d) and int(d.max()) >= self.opts.max_domains:
            raise ValueError(f"domain id {int(d.max())} >= max_domains={self.opts.max_domains}")
        return module.prompt[d.to(module.prompt.device)]

    def local_update(self, global_state: State, tasks: list[ClientTask]) -> list[ClientResult]:
        results = super().local_update(global_state, tasks)
        for r, t in zip(results, tasks):
            d = torch.as_tensor(t.data.domains["train"], dtype=torch.long)
            r.update[COUNTS] = torch.bincount(d, minlength=self.opts.max_domains).double()
        return results

    def aggregate(self, global_state: State, results: list[ClientResult], round: int) -> State:
        """The head by FedAvg; each domain's prompt over the clients holding that domain,
        weighted by their examples of it (kept as it was when no client of the round
        holds it)."""
        if not results:
            return global_state
        plain = [replace(r, update={k: v for k, v in r.update.items() if k != COUNTS})
                 for r in results]
        new = super().aggregate(global_state, plain, round)
        counts = torch.stack([r.update[COUNTS] for r in results])  # (clients, domains)
        held = counts.sum(0)
        weights = counts / held.clamp(min=1)
        prompts = torch.stack([r.update["prompt"].double() for r in results])
        mixed = torch.einsum("nd,nd...->d...", weights, prompts)
        old = global_state["prompt"]
        mask = (held > 0).view(-1, *[1] * (old.dim() - 1))
        new["prompt"] = torch.where(mask, mixed, old.double()).to(old.dtype)
        return new

    def step_inputs(self, module, data: ClientData, idx, gen, round):
        x = data.x("train", idx, self.backbone)
        return x, self.domain_prompts(module, data, "train", idx), data.y("train", idx).to(
            x.device)

    @torch.no_grad()
    def predict(self, module, data: ClientData, split: str, gen) -> torch.Tensor:
        n = data.num(split)
        out = []
        for i in range(0, n, self.eval_chunk):
            idx = torch.arange(i, min(i + self.eval_chunk, n))
            x = data.x(split, idx, self.backbone)
            feats = self.backbone(x, self.domain_prompts(module, data, split, idx))
            out.append(module.head(feats).softmax(-1))
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)
