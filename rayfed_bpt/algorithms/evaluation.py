"""Evaluation: each client on its own test split with its own (personal) state.

``client_eval`` runs where a client's data lives; ``summarize`` combines the
small per-client records into the round's metrics: mean, std and min of
per-client accuracy, per-domain accuracy (pooled over clients) and, when the
algorithm has one global model, its accuracy on the pooled test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import Algorithm, ClientData, State


@dataclass
class ClientEval:
    client_id: int
    correct: int
    total: int
    domain_correct: list[int]
    domain_total: list[int]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def client_eval(
    alg: Algorithm,
    global_state: State,
    personal: State,
    data: ClientData,
    round: int,
    num_domains: int,
) -> ClientEval:
    probs = alg.predict_client(global_state, personal, data, "test", round)
    hit = (probs.argmax(-1) == data.labels["test"]).numpy()
    dom = data.domains["test"]
    return ClientEval(
        data.client_id,
        int(hit.sum()),
        int(len(hit)),
        np.bincount(dom, weights=hit, minlength=num_domains).astype(int).tolist(),
        np.bincount(dom, minlength=num_domains).tolist(),
    )


def summarize(
    evals: list[ClientEval], domain_names: list[str], has_global_model: bool
) -> dict[str, float]:
    acc = np.array([e.accuracy for e in evals if e.total])
    dc = np.sum([e.domain_correct for e in evals], axis=0)
    dt = np.sum([e.domain_total for e in evals], axis=0)
    out = {
        "acc_mean": float(acc.mean()),
        "acc_std": float(acc.std()),
        "acc_min": float(acc.min()),
        "global_acc": (sum(e.correct for e in evals) / sum(e.total for e in evals))
        if has_global_model
        else math.nan,
    }
    for name, c, t in zip(domain_names, dc, dt):
        out[f"domain_acc/{name}"] = float(c / t) if t else math.nan
    return out


def train_loss(results) -> float:
    """Sample-weighted mean of the clients' local training loss."""
    n = sum(r.num_samples for r in results)
    return sum(r.metrics.get("loss", 0.0) * r.num_samples for r in results) / max(1, n)
