"""Frozen ViT backbones, created through timm.

Three sources, one option each:

- ``builtin``: ``rfbpt_vit_digits``, a small ViT (depth 6, width 128, patch 4,
  32x32 input, ~0.8 M parameters) registered with timm here; its weights ship
  inside the package (``assets/rfbpt_vit_digits.safetensors``), pre-trained by
  ``rayfed-bpt backbone pretrain`` on rendered glyphs disjoint from every
  federated split.
- ``timm``: any timm VisionTransformer by pretrained name (needs the model hub).
- ``file``: a timm architecture name plus a local weights file (safetensors or a
  .pth/.bin state dict, with or without the classifier head: ``weights.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ..errors import ConfigError
from .weights import load_trunk, read_weights

BUILTIN_NAME = "rfbpt_vit_digits"
BUILTIN_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / f"{BUILTIN_NAME}.safetensors"
BUILTIN_ARGS = dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0)
MEAN = STD = (0.5, 0.5, 0.5)

default_cfgs = generate_default_cfgs(
    {
        f"{BUILTIN_NAME}.glyphs": dict(
            file=str(BUILTIN_WEIGHTS),
            num_classes=0,
            input_size=(3, 32, 32),
            mean=MEAN,
            std=STD,
            license="apache-2.0",
        ),
    }
)


@register_model
def rfbpt_vit_digits(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The built-in backbone: a small ViT for 32x32 images."""
    return build_model_with_cfg(
        VisionTransformer,
        BUILTIN_NAME,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **{**BUILTIN_ARGS, "num_classes": 0, **kwargs},
    )


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Frozen means: eval mode forever, no parameter ever asks for a gradient."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.train = lambda mode=True: model  # stays in eval mode (no dropout, no drop-path)
    return model


def create_backbone(
    source: str = "builtin",
    name: str | None = None,
    checkpoint: str | None = None,
    img_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    resample: bool = False,
) -> VisionTransformer:
    """A frozen timm VisionTransformer without its classifier (``num_classes=0``); its
    ``pretrained_cfg`` carries the normalisation ``normalize`` applies, and
    ``dropped_keys`` what of a weights file it did not use."""
    size = {"img_size": img_size} if img_size else {}
    dropped: list[str] = []
    if source == "builtin":
        if not BUILTIN_WEIGHTS.exists():
            raise ConfigError(
                f"the built-in backbone weights {BUILTIN_WEIGHTS} are missing; reinstall the "
                "package or re-create them with `rayfed-bpt backbone pretrain`"
            )
        model = timm.create_model(BUILTIN_NAME, pretrained=True)
    elif source == "timm":
        if not name:
            raise ConfigError("backbone.source=timm needs backbone.name (a timm pretrained name)")
        model = timm.create_model(name, pretrained=True, num_classes=0, **size)
    elif source == "file":
        if not name or not checkpoint:
            raise ConfigError(
                "backbone.source=file needs backbone.name (timm architecture) "
                "and backbone.checkpoint (a .safetensors or .pth file)"
            )
        checkpoint = str(Path(checkpoint).expanduser())
        if not Path(checkpoint).exists():
            raise ConfigError(f"backbone checkpoint {checkpoint} does not exist")
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, **size)
        except RuntimeError as e:  # timm: "Unknown model"
            raise ConfigError(f"backbone.name={name!r}: {str(e).splitlines()[0][:160]} "
                              "(`timm.list_models('vit_*')` lists the architectures)") from None
        dropped = load_trunk(model, read_weights(checkpoint), f"backbone.checkpoint "
                             f"{checkpoint}", resample)
        model.pretrained_cfg = {**model.pretrained_cfg, **file_config(checkpoint)}
    else:
        raise ConfigError(f"unknown backbone.source {source!r}; allowed: builtin, timm, file")
    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            f"backbone {name or BUILTIN_NAME} is a {type(model).__name__}; prompt "
            "tuning here needs a timm VisionTransformer"
        )
    model.pretrained_cfg = {**model.pretrained_cfg,
                            **({"mean": tuple(mean)} if mean else {}),
                            **({"std": tuple(std)} if std else {})}
    model.dropped_keys = dropped
    return freeze(model)


def file_config(checkpoint: str | Path) -> dict:
    """Normalisation and input size from a ``config.json`` beside a weights file (what
    timm and the Hugging Face hub save with ``model.safetensors``), if there is one."""
    path = Path(checkpoint).with_name("config.json")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    cfg = cfg.get("pretrained_cfg", cfg) if isinstance(cfg, dict) else {}
    return {k: tuple(cfg[k]) for k in ("mean", "std", "input_size")
            if isinstance(cfg.get(k), list)}


def summary(model: VisionTransformer) -> dict:
    """What a run uses of its backbone: architecture, parameters, input side,
    normalisation, and the keys of its weights file it dropped (logged to MLflow)."""
    cfg = model.pretrained_cfg
    return {"architecture": cfg.get("architecture", type(model).__name__),
            "params": sum(p.numel() for p in model.parameters()),
            "img_size": int(model.patch_embed.img_size[0]),
            "mean": [float(x) for x in cfg.get("mean", MEAN)],
            "std": [float(x) for x in cfg.get("std", STD)],
            "dropped_keys": list(getattr(model, "dropped_keys", []))}


def describe(model: VisionTransformer) -> str:
    """The start line's account of the backbone."""
    s = summary(model)
    line = (f"backbone {s['architecture']}: {s['params'] / 1e6:.1f} M parameters, input "
            f"{s['img_size']}x{s['img_size']}, mean {s['mean']}, std {s['std']}")
    if s["dropped_keys"]:
        line += f"; dropped from its weights file: {', '.join(s['dropped_keys'])}"
    return line


def normalize(images_uint8, model: VisionTransformer) -> torch.Tensor:
    """(N, H, W, C) uint8 (tensor, on any device, or numpy, e.g. a read-only memory-mapped
    view) -> (N, C, H, W) float on the same device, resized to the backbone's input and
    normalized as the backbone was trained."""
    if not isinstance(images_uint8, torch.Tensor):
        images_uint8 = torch.tensor(images_uint8)  # copies: a mapped view is read-only
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    device = images_uint8.device
    mean = torch.tensor(cfg.get("mean", MEAN), device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", STD), device=device).view(1, -1, 1, 1)
    x = images_uint8.permute(0, 3, 1, 2).float().div_(255)
    size = model.patch_embed.img_size
    if tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x - mean) / std
