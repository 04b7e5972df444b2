"""FedRep-VPT: personal head trained first (prompt fixed), then the global prompt (head fixed)."""

from __future__ import annotations

from ..catalog import FedRepOptions
from .base import Phase
from .fedavg_vpt import FedAvgVPT


class FedRepVPT(FedAvgVPT):
    name = "fedrep_vpt"
    personal_prefixes = ("head.",)

    Options = FedRepOptions

    def phases(self, module):
        return [Phase(list(module.head.parameters()), self.opts.head_epochs, "head_"),
                Phase([module.prompt], self.train_cfg.local_epochs)]
