"""Pre-training data for the built-in backbone: rendered glyphs, disjoint from digits-4.

46 classes (digits, capitals, some lower case) rendered only from the
Computer Modern fonts shipped with matplotlib, which the ``fonts`` domain of
digits-4 never uses; no MNIST, optdigits or photo pixels are used. Styles
imitate the *kinds* of shift in digits-4 (grey on black, blurry low
resolution, random colours, textured backgrounds) so the backbone learns
features that prompts can steer, without seeing any federated example.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .digits4 import PRETRAIN_FONTS, SIZE, matplotlib_font_dir

GLYPHS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZabdefghnqrt"


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field with fine noise (no photo pixels)."""
    g = int(rng.integers(2, 9))
    low = rng.integers(0, 256, (g, g, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(low).resize((SIZE, SIZE), Image.BICUBIC), np.float32)
    return (field + rng.normal(0, 12, field.shape)).clip(0, 255)


def render_glyphs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` glyph images (N, 32, 32, 3) uint8 with labels in ``range(len(GLYPHS))``."""
    rng = np.random.default_rng(seed)
    paths = [os.path.join(matplotlib_font_dir(), f) for f in PRETRAIN_FONTS]
    fonts: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    labels = rng.integers(0, len(GLYPHS), n)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    big = 2 * SIZE
    for i, c in enumerate(labels):
        f, size = int(rng.integers(len(paths))), int(rng.integers(34, 58))
        font = fonts.setdefault((f, size), ImageFont.truetype(paths[f], size))
        canvas = Image.new("L", (big, big), 0)
        ImageDraw.Draw(canvas).text((big / 2, big / 2), GLYPHS[c], fill=255, font=font, anchor="mm")
        stroke = int(rng.integers(-1, 3))
        if stroke > 0:
            canvas = canvas.filter(ImageFilter.MaxFilter(2 * stroke + 1))
        a = np.deg2rad(rng.uniform(-25, 25))
        sh, sc = rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.25)
        dx, dy = rng.uniform(-6, 6, 2)
        m = np.array([[np.cos(a), -np.sin(a) + sh], [np.sin(a), np.cos(a)]]) * sc
        cx = big / 2
        off = np.array([cx, cx]) - m @ np.array([cx + dx, cx + dy])
        canvas = canvas.transform(
            canvas.size,
            Image.AFFINE,
            (m[0, 0], m[0, 1], off[0], m[1, 0], m[1, 1], off[1]),
            resample=Image.BILINEAR,
        )
        mask = canvas.resize((SIZE, SIZE), Image.BILINEAR)
        style = int(rng.integers(4))
        if style == 1:  # blurry, low resolution
            k = int(rng.integers(6, 12))
            mask = mask.resize((k, k), Image.BILINEAR).resize((SIZE, SIZE), Image.BILINEAR)
        mk = np.asarray(mask, np.float32)[..., None] / 255
        if style in (0, 1):  # grey on black
            img = mk * rng.uniform(150, 255) * np.ones(3)
        elif style == 2:  # flat colours
            bg, fg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            while np.abs(fg.astype(int) - bg).sum() < 200:
                fg = rng.integers(0, 256, 3)
            img = mk * fg + (1 - mk) * bg
        else:  # textured background, glyph by absolute difference or flat colour
            bg = _texture(rng)
            img = (
                np.abs(bg - 255 * mk)
                if rng.random() < 0.5
                else mk * rng.integers(0, 256, 3) + (1 - mk) * bg
            )
        out[i] = img.clip(0, 255).astype(np.uint8)
    return out, labels.astype(np.int64)
