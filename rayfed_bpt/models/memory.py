"""What a backbone pass costs in memory, measured, not guessed.

A training step through the frozen ViT keeps, per image, the activations autograd
saves for the prompt's gradient: ``saved_bytes`` counts them (each storage once; the
weights excluded) on two probe batches, in the backbone's own precision, and the
difference is the cost of one image — the same number on a CPU and a GPU, since it is
bytes of tensors, not what an allocator reserved. A forward pass without gradients
holds far less at once: on a GPU that is measured too (``torch.cuda``'s peak); on a
CPU it is estimated as the saved bytes of a quarter of the blocks (marked so).
"""

from __future__ import annotations

import torch

from .prompted_vit import PromptedViT

PROBE = (1, 3)  # probe batch sizes: the slope between them is the cost of an image


def saved_bytes(pv: PromptedViT, batch: int, prompt_len: int) -> int:
    """Bytes autograd keeps for the backward of one step of ``batch`` images with a
    trainable prompt of ``prompt_len`` tokens (parameters not counted)."""
    side = pv.vit.patch_embed.img_size
    x = torch.zeros(batch, 3, *side, device=pv.device)
    prompt = torch.zeros(batch, max(1, prompt_len), pv.embed_dim, device=pv.device,
                         requires_grad=True)
    weights = {p.untyped_storage().data_ptr() for p in pv.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = max(kept.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = pv(x, prompt)
    del out
    return sum(kept.values())


def probe(pv: PromptedViT, prompt_len: int) -> dict:
    """Per image: the bytes a training step keeps (``train_bytes_per_image``) and a forward
    pass holds (``infer_bytes_per_image``; ``infer_measured``: False where estimated);
    ``fixed_bytes``: what a step keeps whatever its batch; ``weights_bytes``."""
    small, large = (saved_bytes(pv, b, prompt_len) for b in PROBE)
    per_image = max(1, (large - small) // (PROBE[1] - PROBE[0]))
    out = {"train_bytes_per_image": per_image,
           "fixed_bytes": max(0, small - PROBE[0] * per_image),
           "weights_bytes": sum(p.numel() * p.element_size() for p in pv.parameters()),
           "infer_bytes_per_image": max(1, per_image // 4), "infer_measured": False}
    if pv.device.type == "cuda":
        out.update(infer_bytes_per_image=_cuda_forward_bytes(pv, prompt_len),
                   infer_measured=True)
    return out


@torch.no_grad()
def _cuda_forward_bytes(pv: PromptedViT, prompt_len: int) -> int:
    """A no-grad forward's peak allocation per image (the slope of two batch sizes)."""
    side = pv.vit.patch_embed.img_size
    peaks = []
    for b in (8, 24):
        x = torch.zeros(b, 3, *side, device=pv.device)
        prompt = torch.zeros(b, max(1, prompt_len), pv.embed_dim, device=pv.device)
        torch.cuda.synchronize(pv.device)
        base = torch.cuda.memory_allocated(pv.device)
        torch.cuda.reset_peak_memory_stats(pv.device)
        pv(x, prompt)
        torch.cuda.synchronize(pv.device)
        peaks.append(torch.cuda.max_memory_allocated(pv.device) - base)
        del x, prompt
    return max(1, (peaks[1] - peaks[0]) // 16)
