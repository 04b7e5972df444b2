"""Importers: every source becomes one dataset in the rayfed_bpt schema.

Sources: the built-in digits-4 benchmark, image folders laid out as
``root/<domain>/<class>/*.jpg|png`` (DomainNet, Office-Caltech-10, Office-Home),
the CIFAR-10/100 *binary* files, and Parquet files or Hugging Face ``datasets``
Arrow folders with image/label(/domain/split/group) columns. The CIFAR *python*
version is pickled; unpickling a file someone handed you can run code, so it is
not read.

Each source is an importer registered by name (``@register_importer``): a function
of one ``ImportRequest``. A small source returns its table and ``DatasetInfo``
(``schema.make_table`` builds both from arrays); a source of many image files
returns an ``ImportPlan`` (labels, domains, splits and where each image is), which
``stream.write_import`` decodes on every core in bounded memory. A plugin adds a
source the same way (docs/extending.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import plugins
from ..errors import ConfigError, DataError
from .digits4 import build_digits4, stratified_split
from .folder import plan_image_folder, require_dir
from .pixels import QUALITY, RESIZE
from .schema import PIXELS, SPLITS, DatasetInfo, make_table
from .stream import ImportPlan


@dataclass(frozen=True)
class ImportRequest:
    """What ``rayfed-bpt data prepare`` asks of an importer."""

    path: Path | None  # the files to import (--source); None for a built-in source
    size: int = 32  # image side after resizing
    test_fraction: float = 0.2  # held-out test share (per domain) when the source has no split
    seed: int = 0  # of that split, and of anything else the importer draws
    extra_domains: tuple[str, ...] = ()  # digits4 only
    pixels: str = "jpeg"  # how a streamed import stores pixels: raw | jpeg
    resize: str = "crop"  # short side to size, centre crop | squash (aspect ratio lost)
    quality: int = QUALITY  # JPEG quality of stored pixels
    classes: tuple[str, ...] = ()  # keep only these classes (or a named set: domainnet10)
    group_column: str | None = None  # table sources: the column of natural groups

    def __post_init__(self) -> None:
        if self.pixels not in PIXELS:
            raise ConfigError(f"--pixels {self.pixels}; allowed: {', '.join(PIXELS)}")
        if self.resize not in RESIZE:
            raise ConfigError(f"--resize {self.resize}; allowed: {', '.join(RESIZE)}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality {self.quality}; allowed: 1..100")
        if self.size < 1:
            raise ConfigError(f"--size {self.size}; an image side is at least 1 pixel")


Imported = tuple[pa.Table, DatasetInfo] | ImportPlan
Importer = Callable[[ImportRequest], Imported]
_IMPORTERS: plugins.Registry[tuple[Importer, bool]] = plugins.Registry("importers")


def register_importer(name: str, needs_path: bool = True) -> Callable[[Importer], Importer]:
    """Make ``fn(request) -> (table, info) | ImportPlan`` the source ``name`` of ``data
    prepare``; ``needs_path``: it reads files named by ``--source``."""

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
    require_dir(root, f"{which} folder")
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


def _image_item(v) -> bytes | str | None:
    """A table cell as what ``pixels.load_image`` opens: bytes, or the HF Image feature's
    ``{"bytes", "path"}``."""
    if isinstance(v, dict):
        return v.get("bytes") or v.get("path")
    return v


def _exact_chunks(batches: Iterator[pa.Array], n: int) -> Iterator[list]:
    """Image cells in lists of exactly ``n`` (the last shorter), from batches of any size
    (a Parquet file's batches stop at its row groups)."""
    buf: list = []
    for column in batches:
        buf += [_image_item(v) for v in column.to_pylist()]
        while len(buf) >= n:
            yield buf[:n]
            buf = buf[n:]
    if buf:
        yield buf


def _open_table_source(path: Path, wanted: set[str]
                       ) -> tuple[pa.Table, list[str], Callable[[int], Iterator[list]],
                                  list[str] | None, list[Path]]:
    """(the ``wanted`` small columns the source has, every column's name, the image
    chunks, class names if the source names them, the files read): a Parquet file, or a
    HF ``save_to_disk`` folder (memory-mapped)."""
    if path.is_dir():
        files = sorted(path.glob("*.arrow"))
        if not files:
            raise DataError(f"{path} holds no *.arrow files: not a Hugging Face dataset folder")
        try:
            table = pa.concat_tables(
                [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files])
        except pa.ArrowInvalid as e:
            raise DataError(f"cannot read the Arrow files in {path}: {e}") from e
        names = None
        info_file = path / "dataset_info.json"
        if info_file.exists():
            try:
                feats = json.loads(info_file.read_text()).get("features", {})
                names = feats.get("label", {}).get("names")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise DataError(f"{info_file} is not the JSON a Hugging Face dataset folder "
                                f"holds ({e}); restore it or delete it (class names are then "
                                "the labels' values)") from None

        def chunks(n: int) -> Iterator[list]:
            column = table.column("image") if "image" in table.column_names else None
            return _exact_chunks((column.slice(i, n) for i in range(0, len(table), n)), n)

        return table, table.column_names, chunks, names, files
    if not path.exists():
        raise DataError(f"{path} does not exist; check --source.")
    try:
        columns = pq.ParquetFile(path).schema_arrow.names
        table = pq.read_table(path, columns=[c for c in columns if c in wanted])
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read Parquet file {path}: {e}") from e

    def chunks(n: int) -> Iterator[list]:
        batches = pq.ParquetFile(path).iter_batches(batch_size=n, columns=["image"])
        return _exact_chunks((b.column(0) for b in batches), n)

    return table, columns, chunks, None, [path]


def _names_and_codes(values: list) -> tuple[list[str], np.ndarray]:
    names = sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    return names, np.asarray([index[str(v)] for v in values], np.int64)


def plan_table_source(path: str | Path, req: ImportRequest) -> ImportPlan:
    """A Parquet file, or a Hugging Face ``save_to_disk`` folder of ``*.arrow`` files.

    Needs ``image`` (encoded bytes, or the HF Image struct) and ``label`` columns;
    ``domain`` (string or int), ``split`` ("train"/"test") and the group column named by
    ``req.group_column`` are optional. Only the small columns are read here; images are
    read chunk by chunk as the import decodes them.
    """
    path = Path(path)
    if req.classes:
        raise ConfigError("--classes keeps classes of an image folder; filter a Parquet/HF "
                          "source before importing it")
    wanted = {"label", "domain", "split", *([req.group_column] if req.group_column else [])}
    table, columns, chunks, class_names, files = _open_table_source(path, wanted)
    missing = {"image", "label", *([req.group_column] if req.group_column else [])} - set(columns)
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {sorted(missing)}; it has "
            f"{columns}. Rename the columns to image/label(/domain/split)."
        )
    labels = np.asarray(table.column("label").to_pylist())
    if labels.dtype.kind not in "iu":
        names, labels = _names_and_codes(labels.tolist())
        class_names = class_names or names
    class_names = class_names or [str(i) for i in range(int(labels.max()) + 1)]
    if "domain" in table.column_names:
        domain_names, domains = _names_and_codes(table.column("domain").to_pylist())
    else:
        domain_names, domains = [path.stem], np.zeros(len(labels), np.int64)
    groups = group_names = None
    if req.group_column:
        group_names, groups = _names_and_codes(table.column(req.group_column).to_pylist())
    if "split" in table.column_names:
        splits = np.asarray([str(v) for v in table.column("split").to_pylist()])
        unknown = sorted(set(splits.tolist()) - set(SPLITS))
        if unknown:
            raise DataError(f"{path}'s split column holds {unknown[:5]}; allowed: "
                            f"{list(SPLITS)} (rename them, e.g. validation -> test, or drop "
                            "the column to split by --test-fraction)")
    else:  # stratified per domain, or per group: then every group has test rows
        rng = np.random.default_rng(req.seed)
        splits = np.empty(len(labels), dtype="<U5")
        by = groups if groups is not None else domains
        for g in range(int(by.max()) + 1 if len(by) else 0):
            m = by == g
            splits[m] = stratified_split(labels[m], req.test_fraction, rng)
    if len(set(labels.tolist())) < 2:
        raise DataError(f"{path} holds one class: a classification data set needs two or more.")
    info = DatasetInfo(
        name=path.stem,
        class_names=list(class_names),
        domain_names=domain_names,
        image_shape=(req.size, req.size, 3),
        source={"importer": "table", "path": str(path.resolve()), "resize": req.resize,
                **({"group_column": req.group_column} if req.group_column else {})},
        pixels=req.pixels,
        groups=len(group_names) if group_names else 0,
    )
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return ImportPlan(info, labels, domains, splits, chunks, lambda i: f"{path.name} row {i}",
                      hashlib.sha256(repr(stamp).encode()).hexdigest(), groups,
                      resize=req.resize, quality=req.quality)


@register_importer("digits4", needs_path=False)
def _digits4(req: ImportRequest) -> Imported:
    return build_digits4(seed=req.seed, test_fraction=req.test_fraction,
                         extra_domains=req.extra_domains)


@register_importer("image_folder")
def _image_folder(req: ImportRequest) -> Imported:
    return plan_image_folder(req.path, size=req.size, test_fraction=req.test_fraction,
                             seed=req.seed, resize=req.resize, pixels=req.pixels,
                             quality=req.quality, classes=req.classes)


@register_importer("cifar10")
def _cifar10(req: ImportRequest) -> Imported:
    return import_cifar(req.path, "cifar10")


@register_importer("cifar100")
def _cifar100(req: ImportRequest) -> Imported:
    return import_cifar(req.path, "cifar100")


@register_importer("parquet")
@register_importer("hf")
def _table(req: ImportRequest) -> Imported:
    return plan_table_source(req.path, req)
