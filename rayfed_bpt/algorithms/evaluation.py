"""Evaluation: each client on its own test (or validation) split with its own
(personal) state.

``client_eval`` runs where a client's data lives; ``summarize`` combines the
small per-client records into the round's metrics: mean, std and min of
per-client accuracy, per-domain accuracy (pooled over clients) and, when the
algorithm has one global model, its accuracy on the pooled split. Validation
metrics carry the same names prefixed ``val_`` (``split_prefix``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import Algorithm, ClientData, State

ECE_BINS = 15


def nll_and_ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
                ) -> tuple[float, float]:
    """Mean NLL of the true label and the expected calibration error: over equal-width
    bins of the top-class confidence, sum_b (n_b / N) |accuracy_b - confidence_b|."""
    if len(labels) == 0:
        return math.nan, math.nan
    p_true = probs[np.arange(len(labels)), labels]
    nll = float(-np.log(np.clip(p_true, 1e-12, None)).mean())
    conf = probs.max(-1)
    hit = probs.argmax(-1) == labels
    b = np.minimum((conf * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, hit, bins) - np.bincount(b, conf, bins))  # per-bin sums
    return nll, float(gap.sum() / len(labels)) if n.sum() else math.nan


@dataclass
class ClientEval:
    client_id: int
    correct: int
    total: int
    domain_correct: list[int]
    domain_total: list[int]
    split: str = "test"
    nll: float = math.nan  # mean predictive negative log-likelihood of the true label
    ece: float = math.nan  # expected calibration error (ECE_BINS equal-width bins)

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
    split: str = "test",
) -> ClientEval:
    probs = alg.predict_client(global_state, personal, data, split, round)
    y = data.labels[split].numpy()
    p = probs.double().numpy()
    hit = p.argmax(-1) == y
    dom = data.domains[split]
    nll, ece = nll_and_ece(p, y)
    return ClientEval(
        data.client_id,
        int(hit.sum()),
        int(len(hit)),
        np.bincount(dom, weights=hit, minlength=num_domains).astype(int).tolist(),
        np.bincount(dom, minlength=num_domains).tolist(),
        split,
        nll,
        ece,
    )


def split_prefix(split: str) -> str:
    """Metric-name prefix of a split: test metrics keep today's names, others get theirs."""
    return "" if split == "test" else f"{split}_"


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
        # calibration beside accuracy, every method: per-client means, then their mean
        "nll_mean": float(np.mean([e.nll for e in evals if e.total])),
        "ece_mean": float(np.mean([e.ece for e in evals if e.total])),
        "global_acc": (sum(e.correct for e in evals) / sum(e.total for e in evals))
        if has_global_model
        else math.nan,
    }
    for name, c, t in zip(domain_names, dc, dt):
        out[f"domain_acc/{name}"] = float(c / t) if t else math.nan
    return out


def mean_ci95(values, population: int) -> float:
    """Half-width of the 95 % interval of a population's mean estimated from a simple
    random sample ``values`` of it (without replacement): Student's t on n - 1 degrees
    of freedom times the standard error with the finite-population correction, so it
    is 0 when the sample is the whole population."""
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return math.nan
    fpc = max(0.0, (population - n) / max(1, population - 1))
    return float(student_t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n) * math.sqrt(fpc))


def train_metrics(results) -> dict[str, float]:
    """Sample-weighted means over the round's clients of every local training metric
    (loss and each algorithm's diagnostics: pFedBayesPT's NLL, KL, w(psi_0), sigma,
    |psi|, spreads), each named ``train_<name>``."""
    keys = {"loss"} | {k for r in results for k in r.metrics}
    out = {}
    for k in sorted(keys):
        have = [r for r in results if k in r.metrics] if k != "loss" else results
        n = sum(r.num_samples for r in have)
        out[f"train_{k}"] = sum(r.metrics.get(k, 0.0) * r.num_samples for r in have) / max(1, n)
    return out
