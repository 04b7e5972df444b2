"""pFedPG (Yang et al., ICCV 2023): a server-side prompt generator from client descriptors.

The server holds a generator ``G`` and one learned descriptor ``d_k`` per
client. Client ``k`` starts from its personalized prompt ``G(d_k)``, adapts it
(and the shared head) locally and sends both back; the server averages the
head and moves ``G(d_k)`` toward each client's adapted prompt by a few
gradient steps on ``sum_k w_k ||G(d_k) - p_k||^2``, updating ``G`` and ``d_k``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..catalog import PFedPGOptions
from .base import Phase
from .fedavg_vpt import FedAvgVPT


class PGModule(nn.Module):
    def __init__(
        self,
        num_clients: int,
        d_desc: int,
        hidden: int,
        prompt_shape: tuple[int, ...],
        dim: int,
        num_classes: int,
    ):
        super().__init__()
        self.prompt_shape = prompt_shape
        self.descriptors = nn.Parameter(torch.randn(num_clients, d_desc))
        out = nn.Linear(hidden, int(torch.tensor(prompt_shape).prod()))
        nn.init.normal_(out.weight, std=0.02 / hidden**0.5)
        nn.init.zeros_(out.bias)
        self.generator = nn.Sequential(nn.Linear(d_desc, hidden), nn.GELU(), out)
        self.prompt = nn.Parameter(torch.zeros(prompt_shape))  # the client's working copy
        self.head = nn.Linear(dim, num_classes)

    def generate(self, client_id: int) -> torch.Tensor:
        return self.generator(self.descriptors[client_id]).view(self.prompt_shape)


class PFedPG(FedAvgVPT):
    name = "pfedpg"
    personal_prefixes = ("prompt",)

    Options = PFedPGOptions

    def build_module(self) -> nn.Module:
        return PGModule(
            self.num_clients,
            self.opts.descriptor_dim,
            self.opts.hidden,
            self.prompt_shape,
            self.backbone.embed_dim,
            self.num_classes,
        )

    def before_training(self, module, data):
        with torch.no_grad():
            module.prompt.copy_(module.generate(data.client_id))

    def phases(self, module):
        return [Phase([module.prompt, *module.head.parameters()], self.train_cfg.local_epochs)]

    def local_update(self, global_state, tasks):
        results = super().local_update(global_state, tasks)
        for r in results:  # send the head and the adapted prompt only
            r.update = {
                **{k: v for k, v in r.update.items() if k.startswith("head.")},
                "prompt": r.personal["prompt"],
            }
        return results

    def aggregate(self, global_state, results, round):
        if not results:
            return global_state
        heads = [
            type(r)(
                r.client_id,
                r.num_samples,
                {k: v for k, v in r.update.items() if k.startswith("head.")},
                r.personal,
                r.metrics,
            )
            for r in results
        ]
        new = super().aggregate(global_state, heads, round)
        module = self.load(new, self.init_personal(0))
        params = [module.descriptors, *module.generator.parameters()]
        opt = torch.optim.Adam(params, lr=self.opts.server_lr)
        total = sum(r.num_samples for r in results)
        ids = torch.tensor([r.client_id for r in results], device=self.device)
        targets = torch.stack([r.update["prompt"].flatten() for r in results]).to(self.device)
        weights = torch.tensor([r.num_samples / total for r in results], device=self.device)
        for _ in range(self.opts.server_steps):
            generated = module.generator(module.descriptors[ids])
            loss = (weights * ((generated - targets) ** 2).mean(-1)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        shared, _ = self.split(module)
        return shared

    @property
    def has_global_model(self) -> bool:
        return False  # prompts are per client

    @torch.no_grad()
    def predict(self, module, data, split, gen):
        module.prompt.copy_(module.generate(data.client_id))
        return super().predict(module, data, split, gen)
