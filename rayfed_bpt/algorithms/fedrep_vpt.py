"""FedRep-VPT: personal head trained first (prompt fixed), then the global prompt (head fixed)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Phase
from .fedavg_vpt import FedAvgVPT
from .registry import register_algorithm


@register_algorithm()
class FedRepVPT(FedAvgVPT):
    name = "fedrep_vpt"
    personal_prefixes = ("head.",)

    @dataclass
    class Options(FedAvgVPT.Options):
        head_epochs: int = 1

    def phases(self, module):
        return [Phase(list(module.head.parameters()), self.opts.head_epochs, "head_"),
                Phase([module.prompt], self.train_cfg.local_epochs)]
