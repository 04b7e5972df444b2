"""A person's view of a partition: a per-client table and a PNG of its mixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .reader import PartitionReader


def count_matrices(reader: PartitionReader, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(clients x labels, clients x domains) example counts, from the manifest."""
    entries = [reader.entry(k) for k in reader.client_ids]
    labels = np.array([e["label_counts"][split] for e in entries])
    domains = np.array([e["domain_counts"][split] for e in entries])
    return labels, domains


def summary_table(reader: PartitionReader, max_rows: int = 50) -> str:
    info = reader.info
    lab, dom = count_matrices(reader)
    header = (
        f"{'client':>6} {'train':>6} {'test':>5}  "
        + " ".join(f"{d[:8]:>8}" for d in info.domain_names)
        + "  classes(train>0)"
    )
    lines = [f"partition {reader.root}  ({reader.manifest['partition']})", header]
    role = {**{k: "  new client (held out)" for k in reader.new_clients},
            **{k: f"  unseen domain {d} (held out)" for d, k in reader.ood_clients.items()}}
    for row, k in enumerate(reader.client_ids[:max_rows]):
        e = reader.entry(k)
        lines.append(
            f"{k:>6} {e['num_train']:>6} {e['num_test']:>5}  "
            + " ".join(f"{c:>8}" for c in dom[row])
            + f"  {int((lab[row] > 0).sum())}{role.get(k, '')}"
        )
    if reader.num_clients > max_rows:
        lines.append(f"... {reader.num_clients - max_rows} more clients")
    sizes = lab.sum(1)
    lines.append(
        f"train examples per client: min {sizes.min()}, mean {sizes.mean():.1f}, "
        f"max {sizes.max()}; total {sizes.sum()}"
    )
    return "\n".join(lines)


def plot_partition(reader: PartitionReader, png: str | Path) -> Path:
    """Stacked bars per client: label mix (top) and domain mix (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    info = reader.info
    lab, dom = count_matrices(reader)
    k = np.arange(lab.shape[0])
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.3 * len(k) + 3), 7), sharex=True)
    for ax, mat, names, title in (
        (axes[0], lab, info.class_names, "label"),
        (axes[1], dom, info.domain_names, "domain"),
    ):
        bottom = np.zeros(len(k))
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for j, name in enumerate(names):
            ax.bar(k, mat[:, j], bottom=bottom, color=cmap(j % cmap.N), label=name, width=0.85)
            bottom += mat[:, j]
        ax.set_ylabel(f"train examples by {title}")
        if len(names) <= 20:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title=title)
    axes[1].set_xlabel("client")
    axes[1].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    p = reader.manifest["partition"]
    fig.suptitle(f"{reader.info.name}: {p['partitioner']}, {reader.num_clients} clients")
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
