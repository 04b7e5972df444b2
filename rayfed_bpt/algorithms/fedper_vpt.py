"""FedPer-VPT: a global prompt (FedAvg) with a personal head that never leaves the client."""

from .fedavg_vpt import FedAvgVPT
from .registry import register_algorithm


@register_algorithm()
class FedPerVPT(FedAvgVPT):
    name = "fedper_vpt"
    personal_prefixes = ("head.",)
