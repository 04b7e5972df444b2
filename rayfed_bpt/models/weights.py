"""Weights files researchers have, into a timm ViT's trunk.

A file is ``.safetensors``, or a torch ``.pth`` / ``.pt`` / ``.bin`` state dict read with
``weights_only=True`` (tensors and plain containers only: a file that holds Python
objects beyond those is refused, never unpickled). Training checkpoints wrap the
weights (``{"model": ...}``, ``{"state_dict": ...}``, ``{"model_ema": ...}``) and DDP
prefixes keys with ``module.``: both are unwrapped. Keys the trunk lacks (the
classifier ``head.*``, an optimizer's or a projection's) are dropped and named; a key
the trunk needs and the file lacks is an error that names every one; a patch
embedding or position embedding of another shape is refused unless resampling is
asked for (timm would resample it silently, and the features would change).
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ..errors import ConfigError

WRAPPERS = ("state_dict", "model", "model_ema", "module", "net")
#: keys whose shape timm would resample to the model's (patch size, grid size)
RESAMPLED = ("patch_embed.proj.weight", "pos_embed")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped; never unpickled."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ConfigError(f"backbone.checkpoint {path} is not a readable safetensors file "
                              f"({str(e).splitlines()[0][:160]})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch's restricted unpickler: many types
            raise ConfigError(
                f"backbone.checkpoint {path} could not be read as weights only "
                f"({str(e).splitlines()[0][:160]}). A file that holds Python objects beyond "
                "tensors is never unpickled here (that can run code): save its state_dict "
                "(torch.save(model.state_dict(), ...)) or convert it to .safetensors.") \
                from None
    for _ in range(3):  # {"model": {"state_dict": ...}}: unwrap a few levels
        inner = next((state[k] for k in WRAPPERS
                      if isinstance(state, dict) and isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        raise ConfigError(f"backbone.checkpoint {path} holds a {type(state).__name__}, not a "
                          "state dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from DDP
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    if not tensors:
        raise ConfigError(f"backbone.checkpoint {path} holds no tensors")
    return tensors


def _resampled(key: str, theirs: tuple, ours: tuple) -> bool:
    """timm would resample ``key`` from ``theirs`` to ``ours``: the same width, another
    grid (``pos_embed``: 1 x tokens x D) or patch (the patch embedding: D x C x p x p)."""
    if theirs == ours:
        return False
    return theirs[-1] == ours[-1] if key == "pos_embed" else theirs[:2] == ours[:2]


def load_trunk(model: VisionTransformer, state: dict[str, torch.Tensor], where: str,
               resample: bool = False) -> list[str]:
    """Load ``state`` into ``model`` (a timm ViT without a head), exactly; return the
    keys of the file that were dropped (the head and anything else the trunk lacks)."""
    own = model.state_dict()
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    for key in RESAMPLED:
        if key in state and key in own and not resample and \
                _resampled(key, tuple(state[key].shape), tuple(own[key].shape)):
            raise ConfigError(
                f"{where}'s {key} has shape {tuple(state[key].shape)}, {name} needs "
                f"{tuple(own[key].shape)}: the file is of another patch size or input size "
                "than backbone.name says. Name the architecture the file was saved from, or "
                "set backbone.resample=true to let timm resample it (the features change).")
    state = checkpoint_filter_fn(state, model)  # timm's own conversions (and resampling)
    dropped = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if missing:
        raise ConfigError(f"{where} lacks {len(missing)} weight(s) {name} needs: "
                          f"{', '.join(missing)}. Is it the architecture backbone.name says?")
    wrong = [f"{k} {tuple(state[k].shape)} (needs {tuple(v.shape)})"
             for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise ConfigError(f"{where} has weights of other shapes than {name}: "
                          f"{'; '.join(wrong)}. Is it the architecture backbone.name says?")
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return dropped
