"""Images in and out of the dataset: open any file as RGB, fit it to the stored size,
encode it, decode it. PIL (libjpeg-turbo) only; each function is a plain, picklable
module-level function, so an import can run it in worker processes or Ray tasks.

Fitting follows timm's evaluation transform with ``crop_pct`` 1: the short side resized
to the target, then a centre crop (``resize="crop"``; timm's default 0.875 would cut
another eighth off each side); ``"squash"`` resizes both sides to the target
and changes the aspect ratio (the importer of schema version 1 did that). A JPEG
source is decoded at a reduced scale first where libjpeg can (``Image.draft``): a
4000-pixel photo is never decoded at full size to make a 224-pixel image.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

RESIZE = ("crop", "squash")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
#: JPEG quality of stored images: at 224 px about a third of a typical source photo's bytes
QUALITY = 90


class BadImage(ValueError):
    """A file that is no readable image (why: the message)."""


def open_image(src: bytes | str | Path, size: int | None = None, resize: str = "crop"
               ) -> Image.Image:
    """An image file (or its bytes) opened and loaded; a JPEG that will be fitted to
    ``size`` is decoded at the smallest scale libjpeg offers that still covers it.
    ``BadImage`` if it is no readable image."""
    try:
        im = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        if size is not None and im.format == "JPEG":
            im.draft(im.mode, fitted_size(*im.size, size, resize))
        im.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(str(e) or type(e).__name__) from None
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB: grayscale, CMYK, palette and 16-bit modes converted, transparency
    composited onto white (not dropped to whatever colour lies beneath it)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)  # 16/32-bit gray: scaled to 8 bits
        top = 65535.0 if im.mode.startswith("I;16") else max(1.0, float(arr.max()))
        im = Image.fromarray((arr * (255.0 / top)).round().clip(0, 255).astype(np.uint8))
    return im.convert("RGB") if im.mode != "RGB" else im


def fitted_size(width: int, height: int, size: int, resize: str) -> tuple[int, int]:
    """The smallest source size that still covers the target (for a reduced decode)."""
    if resize == "squash":
        return size, size
    s = size / min(width, height)
    return max(size, math.ceil(width * s - 1e-9)), max(size, math.ceil(height * s - 1e-9))


def fit(im: Image.Image, size: int, resize: str = "crop") -> Image.Image:
    """``im`` at ``size`` x ``size``: the centre region that fills the target after an
    aspect-preserving resize (``crop``) or the whole image (``squash``), resized in one
    antialiased bilinear pass (only that region is resampled)."""
    w, h = im.size
    if resize == "squash" or w == h:
        box = (0.0, 0.0, float(w), float(h))
    else:
        side = min(w, h)  # the centre square of the source is what the crop keeps
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    if im.size == (size, size):
        return im
    return im.resize((size, size), Image.BILINEAR, box=box)


def load_image(src: bytes | str | Path, size: int, resize: str = "crop") -> Image.Image:
    """A file (or its bytes) as a (size, size) RGB image; ``BadImage`` if unreadable."""
    return fit(to_rgb(open_image(src, size, resize)), size, resize)


def encode_jpeg(image: Image.Image | np.ndarray, quality: int = QUALITY) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def decode_jpeg(data: bytes | memoryview) -> np.ndarray:
    """Stored bytes back to (H, W, 3) uint8 (what every reader of a jpeg dataset calls)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def prepare_chunk(items: Sequence, size: int, resize: str, pixels: str,
                  quality: int = QUALITY) -> tuple[list, list[tuple[int, str]]]:
    """One chunk of an import: each item (a path, or a file's bytes) opened, fitted and
    stored as ``pixels``; returns (the stored images of the readable items, in order;
    (position, reason) of each unreadable one)."""
    out, bad = [], []
    for i, item in enumerate(items):
        try:
            if item is None:
                raise BadImage("the row holds no image")
            image = load_image(item, size, resize)
        except BadImage as e:
            bad.append((i, str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - a decoder's own error on a damaged file
            bad.append((i, f"{type(e).__name__}: {e}"))
            continue
        out.append(encode_jpeg(image, quality) if pixels == "jpeg"
                   else np.asarray(image, np.uint8))
    return out, bad
