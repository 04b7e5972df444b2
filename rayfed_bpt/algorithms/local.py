"""Local: each client trains its own prompt and head; nothing is communicated."""

from .fedavg_vpt import FedAvgVPT


class Local(FedAvgVPT):
    name = "local"
    personal_prefixes = ("",)

    def aggregate(self, global_state, results, round):
        return global_state  # nothing was sent
