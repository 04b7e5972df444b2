"""Importers: every source becomes one table in the rayfed_bpt schema.

Sources: the built-in digits-4 benchmark, image folders laid out as
``root/<domain>/<class>/*.png|jpg`` (DomainNet, Office-Caltech-10), the
CIFAR-10/100 *binary* files, and Parquet files or Hugging Face ``datasets``
Arrow folders with image/label(/domain/split) columns. The CIFAR *python*
version is pickled; unpickling a file someone handed you can run code, so it
is not read here.

Each source is an importer registered by name (``@register_importer``): a
function of one ``ImportRequest`` that returns the table and its
``DatasetInfo`` (``schema.make_table`` builds both from arrays). A plugin adds
a source the same way (docs/extending.md).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from .. import plugins
from ..errors import ConfigError, DataError
from .digits4 import build_digits4, stratified_split
from .schema import DatasetInfo, make_table

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class ImportRequest:
    """What ``rayfed-bpt data prepare`` asks of an importer."""

    path: Path | None  # the files to import (--source); None for a built-in source
    size: int = 32  # image side after resizing
    test_fraction: float = 0.2  # held-out test share (per domain) when the source has no split
    seed: int = 0  # of that split, and of anything else the importer draws
    extra_domains: tuple[str, ...] = ()  # digits4 only


Importer = Callable[[ImportRequest], tuple[pa.Table, DatasetInfo]]
_IMPORTERS: plugins.Registry[tuple[Importer, bool]] = plugins.Registry("importers")


def register_importer(name: str, needs_path: bool = True) -> Callable[[Importer], Importer]:
    """Make ``fn(request) -> (table, info)`` the source ``name`` of ``data prepare``;
    ``needs_path``: it reads files named by ``--source``."""

    def deco(fn: Importer) -> Importer:
        _IMPORTERS.add(name, (fn, needs_path), fn)
        return fn

    return deco


def importer_names() -> list[str]:
    return _IMPORTERS.names()


def importer(name: str) -> tuple[Importer, bool]:
    """The importer ``name`` and whether it needs ``--source``."""
    found = _IMPORTERS.get(name)
    if found is None:
        raise ConfigError(f"unknown source {name!r}; allowed: {importer_names()} (a plugin's "
                          "importer: --import MODULE)")
    return found


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; check --source.")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a folder; check --source.")


def _load_image(data: bytes | str | Path, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {where}: {e}. Remove or replace the file.") from e


def import_image_folder(
    root: str | Path, size: int = 32, test_fraction: float = 0.2, seed: int = 0
) -> tuple[pa.Table, DatasetInfo]:
    """``root/<domain>/<class>/<image>``: domains and classes are the sorted folder names."""
    root = Path(root)
    _require_dir(root, "image folder")
    domains = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not domains:
        raise DataError(
            f"image folder {root} has no domain folders; expected root/<domain>/<class>/*.jpg"
        )
    classes = sorted(
        {
            c.name
            for d in domains
            for c in (root / d).iterdir()
            if c.is_dir() and not c.name.startswith(".")
        }
    )
    if not classes:
        raise DataError(
            f"image folder {root} has no class folders under its domains {domains}; expected "
            "root/<domain>/<class>/*.jpg"
        )
    rng = np.random.default_rng(seed)
    images, labels, doms, splits = [], [], [], []
    for d, dom in enumerate(domains):
        dom_labels = []
        for c, cls in enumerate(classes):
            folder = root / dom / cls
            if not folder.is_dir():
                continue
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            for f in files:
                images.append(_load_image(f, size, str(f)))
                dom_labels.append(c)
        if not dom_labels:
            raise DataError(
                f"domain folder {root / dom} holds no images ({sorted(IMAGE_SUFFIXES)})"
            )
        dom_labels = np.asarray(dom_labels)
        labels.append(dom_labels)
        doms.append(np.full(len(dom_labels), d))
        splits.append(stratified_split(dom_labels, test_fraction, rng))
    info = DatasetInfo(
        name=root.name,
        class_names=classes,
        domain_names=domains,
        image_shape=(size, size, 3),
        source={
            "importer": "image_folder",
            "root": str(root.resolve()),
            "seed": seed,
            "test_fraction": test_fraction,
        },
    )
    return make_table(
        info, np.stack(images), np.concatenate(labels), np.concatenate(doms), np.concatenate(splits)
    ), info


def _read_cifar_bin(
    path: Path, label_bytes: int, label_index: int
) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataError(
            f"CIFAR file {path} is missing; --source must be the extracted "
            "*-bin folder of the binary version"
        )
    raw = np.fromfile(path, np.uint8)
    rec = label_bytes + 3072
    if raw.size == 0 or raw.size % rec:
        raise DataError(
            f"CIFAR file {path} has {raw.size} bytes, not a multiple of the "
            f"{rec}-byte record: truncated or not the binary version"
        )
    raw = raw.reshape(-1, rec)
    images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), raw[:, label_index].astype(np.int64)


def import_cifar(root: str | Path, which: str = "cifar10") -> tuple[pa.Table, DatasetInfo]:
    """The binary CIFAR files (cifar-10-batches-bin / cifar-100-binary): no pickle."""
    root = Path(root)
    _require_dir(root, f"{which} folder")
    if which == "cifar10":
        parts = [(root / f"data_batch_{i}.bin", "train") for i in range(1, 6)]
        parts.append((root / "test_batch.bin", "test"))
        label_bytes, label_index, names_file = 1, 0, root / "batches.meta.txt"
        n_classes = 10
    elif which == "cifar100":
        parts = [(root / "train.bin", "train"), (root / "test.bin", "test")]
        label_bytes, label_index, names_file = 2, 1, root / "fine_label_names.txt"
        n_classes = 100
    else:
        raise ConfigError(f"unknown CIFAR variant {which!r}; allowed: ['cifar10', 'cifar100']")
    images, labels, splits = [], [], []
    for path, split in parts:
        x, y = _read_cifar_bin(path, label_bytes, label_index)
        images.append(x)
        labels.append(y)
        splits.append(np.full(len(y), split))
    names = (
        [s.strip() for s in names_file.read_text().splitlines() if s.strip()]
        if names_file.exists()
        else [str(i) for i in range(n_classes)]
    )
    if len(names) != n_classes:
        raise DataError(f"{names_file} lists {len(names)} class names, expected {n_classes}")
    labels = np.concatenate(labels)
    info = DatasetInfo(
        name=which,
        class_names=names,
        domain_names=[which],
        image_shape=(32, 32, 3),
        source={"importer": which, "root": str(root.resolve())},
    )
    return make_table(
        info,
        np.concatenate(images),
        labels,
        np.zeros(len(labels), np.int64),
        np.concatenate(splits),
    ), info


def _column_images(col: pa.ChunkedArray, size: int, where: str) -> np.ndarray:
    out = []
    for i, v in enumerate(col.to_pylist()):
        if isinstance(v, dict):  # the Hugging Face Image feature: {"bytes", "path"}
            v = v.get("bytes") or v.get("path")
        if v is None:
            raise DataError(f"{where}: row {i} has no image")
        out.append(_load_image(v, size, f"{where} row {i}"))
    return np.stack(out)


def import_table_source(
    path: str | Path, size: int = 32, test_fraction: float = 0.2, seed: int = 0
) -> tuple[pa.Table, DatasetInfo]:
    """A Parquet file, or a Hugging Face ``save_to_disk`` folder of ``*.arrow`` files.

    Needs ``image`` (encoded bytes, or the HF Image struct) and ``label`` columns;
    ``domain`` (string or int) and ``split`` ("train"/"test") are optional.
    """
    path = Path(path)
    class_names = None
    if path.is_dir():
        files = sorted(path.glob("*.arrow"))
        if not files:
            raise DataError(f"{path} holds no *.arrow files: not a Hugging Face dataset folder")
        try:
            table = pa.concat_tables(
                [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files]
            )
        except pa.ArrowInvalid as e:
            raise DataError(f"cannot read the Arrow files in {path}: {e}") from e
        info_file = path / "dataset_info.json"
        if info_file.exists():
            feats = json.loads(info_file.read_text()).get("features", {})
            class_names = feats.get("label", {}).get("names")
    elif path.exists():
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot read Parquet file {path}: {e}") from e
    else:
        raise DataError(f"{path} does not exist; check --source.")
    missing = {"image", "label"} - set(table.column_names)
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {sorted(missing)}; it has "
            f"{table.column_names}. Rename the columns to image/label(/domain/split)."
        )
    images = _column_images(table.column("image"), size, str(path))
    labels = np.asarray(table.column("label").to_pylist())
    if labels.dtype.kind not in "iu":
        names = sorted(set(labels.tolist()))
        class_names = class_names or names
        labels = np.asarray([names.index(v) for v in labels])
    class_names = class_names or [str(i) for i in range(int(labels.max()) + 1)]
    if "domain" in table.column_names:
        raw = [str(v) for v in table.column("domain").to_pylist()]
        domain_names = sorted(set(raw))
        domains = np.asarray([domain_names.index(v) for v in raw])
    else:
        domain_names, domains = [path.stem], np.zeros(len(labels), np.int64)
    if "split" in table.column_names:
        splits = np.asarray([str(v) for v in table.column("split").to_pylist()])
    else:
        rng = np.random.default_rng(seed)
        splits = np.empty(len(labels), dtype="<U5")
        for d in range(len(domain_names)):
            m = domains == d
            splits[m] = stratified_split(labels[m], test_fraction, rng)
    info = DatasetInfo(
        name=path.stem,
        class_names=list(class_names),
        domain_names=domain_names,
        image_shape=(size, size, 3),
        source={"importer": "table", "path": str(path.resolve())},
    )
    return make_table(info, images, labels, domains, splits), info


@register_importer("digits4", needs_path=False)
def _digits4(req: ImportRequest) -> tuple[pa.Table, DatasetInfo]:
    return build_digits4(seed=req.seed, test_fraction=req.test_fraction,
                         extra_domains=req.extra_domains)


@register_importer("image_folder")
def _image_folder(req: ImportRequest) -> tuple[pa.Table, DatasetInfo]:
    return import_image_folder(req.path, size=req.size, test_fraction=req.test_fraction,
                               seed=req.seed)


@register_importer("cifar10")
def _cifar10(req: ImportRequest) -> tuple[pa.Table, DatasetInfo]:
    return import_cifar(req.path, "cifar10")


@register_importer("cifar100")
def _cifar100(req: ImportRequest) -> tuple[pa.Table, DatasetInfo]:
    return import_cifar(req.path, "cifar100")


@register_importer("parquet")
@register_importer("hf")
def _table(req: ImportRequest) -> tuple[pa.Table, DatasetInfo]:
    return import_table_source(req.path, size=req.size, test_fraction=req.test_fraction,
                               seed=req.seed)
