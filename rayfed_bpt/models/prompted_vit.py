"""Prompt insertion into a frozen timm VisionTransformer (VPT, shallow or deep).

Shallow: ``[CLS, p_1..p_L, patches]`` enters block 0. Deep: block ``i`` sees
its own ``L`` prompt tokens in the same place (replacing block ``i-1``'s).
Prompts are per *example* (B, L, D) or (B, depth, L, D): pFedBayesPT draws
one prompt per image. The readout is what timm's ``forward_head`` would pool
(the CLS token, or the mean of the patch tokens), so a zero-length prompt
reproduces the plain ViT exactly.
"""

from __future__ import annotations

import torch
from timm.layers import global_pool_nlc
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class PromptedViT(nn.Module):
    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.vit = vit
        self.embed_dim = vit.embed_dim
        self.depth = len(vit.blocks)
        self.num_prefix = vit.num_prefix_tokens
        self.amp_dtype: torch.dtype | None = None  # None: fp32 (set_precision)

    def set_precision(self, precision: str) -> str:
        """Run backbone passes in ``precision`` (fp32, bf16, or auto: bf16 on a GPU that has
        it, else fp32) on the device the backbone is on now; return the one chosen. Only
        the backbone's passes change: what it returns is fp32 for the math after it. fp32
        on a GPU allows TF32 matmuls."""
        cuda = self.device.type == "cuda"
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        self.amp_dtype = torch.bfloat16 if precision == "bf16" else None
        if cuda and precision == "fp32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return precision

    def prompt_shape(self, length: int, deep: bool = False) -> tuple[int, ...]:
        """One image's prompt: (L, D) shallow, or (depth, L, D) deep."""
        return (self.depth, length, self.embed_dim) if deep else (length, self.embed_dim)

    @property
    def device(self) -> torch.device:
        return next(self.vit.parameters()).device

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch + position embedding: the prompt-free input of block 0."""
        vit = self.vit
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        return vit.norm_pre(x)

    def _insert(self, x: torch.Tensor, p: torch.Tensor, replace: int) -> torch.Tensor:
        n = self.num_prefix
        return torch.cat([x[:, :n], p.to(x.dtype), x[:, n + replace :]], dim=1)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled, normalized feature of images ``x`` under ``prompt`` (fp32; computed in
        ``amp_dtype`` where one is set)."""
        if self.amp_dtype is None:
            return self._forward(x, prompt)
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            return self._forward(x, prompt).float()

    def _forward(self, x: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
        h = self.tokens(x)
        L = 0 if prompt is None else prompt.shape[-2]
        if L == 0:
            for blk in self.vit.blocks:
                h = blk(h)
        elif prompt.dim() == 3:  # shallow
            h = self._insert(h, prompt, 0)
            for blk in self.vit.blocks:
                h = blk(h)
        elif prompt.dim() == 4:  # deep: prompt[:, i] for block i
            if prompt.shape[1] != self.depth:
                raise ValueError(f"deep prompt has {prompt.shape[1]} layers, ViT has {self.depth}")
            for i, blk in enumerate(self.vit.blocks):
                h = blk(self._insert(h, prompt[:, i], 0 if i == 0 else L))
        else:
            raise ValueError(f"prompt must be (B, L, D) or (B, depth, L, D), got {prompt.shape}")
        h = self.vit.norm(h)
        return self.pool(h, L)

    def pool(self, h: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """timm's own pooling, with the prompt tokens counted as prefix tokens (they are
        not patches: an average over patches must not include them)."""
        vit = self.vit
        if getattr(vit, "attn_pool", None) is not None:
            raise ValueError("attention-pool ViTs are not supported for prompt tuning")
        out = global_pool_nlc(h, pool_type=vit.global_pool,
                              num_prefix_tokens=self.num_prefix + num_prompts,
                              reduce_include_prefix=getattr(vit, "pool_include_prefix", False))
        return vit.fc_norm(out)

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The prompt-free feature e(x): no gradient, cacheable per example."""
        return torch.cat([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
