"""FedPer-VPT: a global prompt (FedAvg) with a personal head that never leaves the client."""

from .fedavg_vpt import FedAvgVPT


class FedPerVPT(FedAvgVPT):
    name = "fedper_vpt"
    personal_prefixes = ("head.",)
