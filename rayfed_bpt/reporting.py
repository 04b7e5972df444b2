"""What a person looks at after a run: per-client CSV, accuracy plots, resolved config."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml


def write_client_csv(path: Path, evals, domain_names: list[str], num_train: dict[int, int]):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["client_id", "num_train", "num_test", "accuracy",
                    *[f"acc_{d}" for d in domain_names], *[f"n_{d}" for d in domain_names]])
        for e in sorted(evals, key=lambda e: e.client_id):
            dom_acc = [f"{c / t:.4f}" if t else "" for c, t in zip(e.domain_correct,
                                                                    e.domain_total)]
            w.writerow([e.client_id, num_train.get(e.client_id, ""), e.total,
                        f"{e.accuracy:.4f}", *dom_acc, *e.domain_total])


def plot_history(path: Path, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [m["round"] for m in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("acc_mean", "mean client acc"), ("acc_min", "min client acc"),
                       ("global_acc", "global model, pooled test")):
        ys = [m.get(key, float("nan")) for m in history]
        ax.plot(rounds, ys, marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_domains(path: Path, metrics: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k.split("/", 1)[1] for k in metrics if k.startswith("domain_acc/")]
    vals = [metrics[f"domain_acc/{n}"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names)), 4))
    ax.bar(names, vals, color="tab:blue")
    for i, v in enumerate(vals):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy (pooled over clients)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_config(path: Path, cfg: dict) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
