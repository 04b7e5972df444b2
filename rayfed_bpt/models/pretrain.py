"""Pre-train the built-in backbone on rendered glyphs (``rayfed-bpt backbone pretrain``).

Seeded and reproducible on one device type (GPU kernels differ in the last
bits from CPU ones). The shipped weights were made with this function; the
docs/algorithms.md gives the command line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ..data.glyphs import GLYPHS, render_glyphs
from .backbone import BUILTIN_NAME, BUILTIN_WEIGHTS, normalize


def pretrain_backbone(
    out: str | Path = BUILTIN_WEIGHTS,
    num_images: int = 100_000,
    epochs: int = 40,
    batch_size: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    import timm

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    x_np, y_np = render_glyphs(num_images, seed=seed)
    log(f"rendered {num_images} glyph images in {time.perf_counter() - t0:.1f}s")
    model = timm.create_model(BUILTIN_NAME, pretrained=False, num_classes=len(GLYPHS))
    model.to(device)
    x = normalize(torch.from_numpy(x_np), model)
    y = torch.from_numpy(y_np)
    n_val = num_images // 20
    x, y = x.to(device), y.to(device)
    x_val, y_val, x, y = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size].to(device)
            xb = x[idx]
            # random translation by up to 3 pixels
            pad = nn.functional.pad(xb, (3, 3, 3, 3), value=-1.0)
            ox, oy = torch.randint(0, 7, (2,), generator=gen).tolist()
            xb = pad[:, :, oy : oy + 32, ox : ox + 32]
            loss = loss_fn(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            acc = (model(x_val).argmax(1) == y_val).float().mean().item()
        log(
            f"epoch {epoch + 1}/{epochs}  loss {total / len(x):.3f}  val acc {acc:.3f}  "
            f"({time.perf_counter() - t0:.0f}s)"
        )
    model.reset_classifier(0)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        state,
        str(out),
        metadata={
            "seed": str(seed),
            "num_images": str(num_images),
            "epochs": str(epochs),
            "val_acc": f"{acc:.4f}",
        },
    )
    return {
        "val_acc": acc,
        "seconds": time.perf_counter() - t0,
        "path": str(out),
        "params": sum(v.numel() for v in state.values()),
    }


def linear_probe(backbone, dataset, max_train: int | None = None) -> dict[str, float]:
    """Test accuracy of a logistic-regression probe on frozen features, per domain."""
    from sklearn.linear_model import LogisticRegression

    from .prompted_vit import PromptedViT

    pv = PromptedViT(backbone)
    column, n = dataset.image_column, len(dataset)  # read 4,096 images at a time
    feats = np.concatenate([pv.features(normalize(column.take(np.arange(i, min(i + 4096, n))),
                                                  backbone)).numpy()
                            for i in range(0, n, 4096)])
    labels, domains, splits = dataset.labels, dataset.domains, dataset.splits
    out = {}
    for d, name in enumerate(dataset.info.domain_names):
        tr = np.flatnonzero((domains == d) & (splits == "train"))[:max_train]
        te = np.flatnonzero((domains == d) & (splits == "test"))
        clf = LogisticRegression(max_iter=2000, C=1.0).fit(feats[tr], labels[tr])
        out[name] = float((clf.predict(feats[te]) == labels[te]).mean())
    return out
