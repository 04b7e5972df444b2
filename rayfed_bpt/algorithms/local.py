"""Local: each client trains its own prompt and head; nothing is communicated."""

from .fedavg_vpt import FedAvgVPT
from .registry import register_algorithm


@register_algorithm()
class Local(FedAvgVPT):
    name = "local"
    personal_prefixes = ("",)

    def aggregate(self, global_state, results, round):
        return global_state  # nothing was sent
