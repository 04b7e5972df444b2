"""FedRep-VPT: personal head trained first (prompt fixed), then the global prompt (head fixed)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import frozen
from .fedavg_vpt import FedAvgVPT


class FedRepVPT(FedAvgVPT):
    name = "fedrep_vpt"
    personal_prefixes = ("head.",)

    @dataclass
    class Options(FedAvgVPT.Options):
        head_epochs: int = 1

    def train_client(self, module, data, gen, round):
        with frozen(module):  # phase 1: the head alone
            module.head.requires_grad_(True)
            head = self.run_epochs(
                module, data, module.head.parameters(), self.opts.head_epochs, gen, round
            )
        with frozen(module.head):  # phase 2: the representation (prompt)
            body = self.run_epochs(
                module, data, [module.prompt], self.train_cfg.local_epochs, gen, round
            )
        return {**{f"head_{k}": v for k, v in head.items()}, **body}
