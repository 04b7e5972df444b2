"""The one Arrow schema every data source is imported into.

Columns
    id      int64   stable example id within the dataset (a skipped file leaves a gap)
    image   fixed_shape_tensor<uint8>[H, W, C]   pixels "raw": a memory-mapped file
            hands out zero-copy numpy views, nothing is decoded per step
            | binary   pixels "jpeg": the image encoded at its stored size, decoded
            where a batch is made (about a tenth of the bytes at 224 px)
    label   int16   index into ``class_names``
    domain  int16   index into ``domain_names``
    split   string  "train" or "test"
    group   int64   optional: a natural group (a writer, a user) for the ``natural``
            partitioner; present when ``groups`` > 0

The table is written in record batches of bounded bytes (``rows_per_batch``), so a
dataset has no size limit (one Arrow array holds at most 2 GiB). Schema-level
metadata (key ``rayfed_bpt``) is a JSON object with ``schema_version``, ``name``,
``class_names``, ``domain_names``, ``image_shape``, ``pixels``, ``groups`` and
``source`` (free-form provenance). Version 1 files (raw pixels, one batch) still read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from ..errors import DataError

SCHEMA_VERSION = 2
META_KEY = b"rayfed_bpt"
SPLITS = ("train", "test")
PIXELS = ("raw", "jpeg")
#: a record batch holds at most this many rows, and (raw pixels) at most BATCH_BYTES
BATCH_ROWS = 1024
BATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class DatasetInfo:
    """What a reader needs to know about a dataset besides its rows."""

    name: str
    class_names: list[str]
    domain_names: list[str]
    image_shape: tuple[int, int, int]
    source: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    pixels: str = "raw"  # how the image column stores pixels (PIXELS)
    groups: int = 0  # distinct values of the optional group column; 0: no such column

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    @property
    def image_bytes(self) -> int:
        """Bytes of one decoded image."""
        return int(np.prod(self.image_shape))

    def to_json(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "dataset") -> DatasetInfo:
        version = int(d.get("schema_version", -1))
        check_schema_version(version, where)
        pixels = d.get("pixels", "raw")
        if pixels not in PIXELS:
            raise DataError(f"{where} stores pixels as {pixels!r}; this rayfed_bpt reads "
                            f"{list(PIXELS)}. Upgrade rayfed_bpt or re-import the source.")
        return cls(
            name=d["name"],
            class_names=list(d["class_names"]),
            domain_names=list(d["domain_names"]),
            image_shape=tuple(int(x) for x in d["image_shape"]),
            source=dict(d.get("source", {})),
            schema_version=version,
            pixels=pixels,
            groups=int(d.get("groups", 0)),
        )


def check_schema_version(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise DataError(
            f"{where} was written with schema version {version}, but this rayfed_bpt reads "
            f"versions up to {SCHEMA_VERSION}. Upgrade rayfed_bpt, or re-create the file with "
            "this version (`rayfed-bpt data prepare` / `rayfed-bpt data partition`)."
        )
    if version < 1:
        raise DataError(
            f"{where} carries no valid rayfed_bpt schema version ({version}); it was not "
            "written by rayfed_bpt. Import it with `rayfed-bpt data prepare`."
        )


def image_type(info: DatasetInfo) -> pa.DataType:
    if info.pixels == "jpeg":
        return pa.binary()
    return pa.fixed_shape_tensor(pa.uint8(), list(info.image_shape))


def arrow_schema(info: DatasetInfo) -> pa.Schema:
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("image", image_type(info), nullable=False),
        pa.field("label", pa.int16(), nullable=False),
        pa.field("domain", pa.int16(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
    if info.groups:
        fields.append(pa.field("group", pa.int64(), nullable=False))
    return pa.schema(fields, metadata={META_KEY: json.dumps(info.to_json()).encode()})


def rows_per_batch(info: DatasetInfo) -> int:
    """Rows of one record batch: BATCH_ROWS, fewer where raw pixels would pass BATCH_BYTES."""
    if info.pixels == "jpeg":
        return BATCH_ROWS
    return max(1, min(BATCH_ROWS, BATCH_BYTES // max(1, info.image_bytes)))


def info_from_schema(schema: pa.Schema, where: str) -> DatasetInfo:
    meta = schema.metadata or {}
    if META_KEY not in meta:
        raise DataError(
            f"{where} has no rayfed_bpt metadata: it is not a rayfed_bpt dataset or shard. "
            "Import the source with `rayfed-bpt data prepare`."
        )
    try:
        d = json.loads(meta[META_KEY])
    except json.JSONDecodeError as e:
        raise DataError(f"{where} has unreadable rayfed_bpt metadata ({e}).") from e
    info = DatasetInfo.from_json(d, where)
    expected = arrow_schema(info)
    if not schema.remove_metadata().equals(expected.remove_metadata()):
        raise DataError(
            f"{where} does not have the rayfed_bpt schema.\n  found:    {schema.remove_metadata()}"
            f"\n  expected: {expected.remove_metadata()}\nRe-create it with rayfed-bpt."
        )
    return info


def image_array(info: DatasetInfo, images: np.ndarray | Sequence[bytes]) -> pa.Array:
    """The image column of ``images``: (N, H, W, C) uint8 for raw pixels, encoded bytes
    (one per image) for jpeg."""
    if info.pixels == "jpeg":
        return pa.array(list(images), pa.binary())
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.shape[1:] != tuple(info.image_shape):
        raise DataError(f"images have shape {images.shape[1:]}, dataset says {info.image_shape}")
    storage = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), info.image_bytes)
    return pa.ExtensionArray.from_storage(image_type(info), storage)


def make_batch(
    info: DatasetInfo,
    images: np.ndarray | Sequence[bytes],
    labels: np.ndarray,
    domains: np.ndarray,
    splits: np.ndarray,
    ids: np.ndarray,
    groups: np.ndarray | None = None,
) -> pa.RecordBatch:
    """One record batch in the rayfed_bpt schema, every column checked."""
    n = len(images)
    if not (len(labels) == len(domains) == len(splits) == len(ids) == n):
        raise DataError("images, labels, domains, splits and ids differ in length")
    labels = np.asarray(labels, dtype=np.int16)
    domains = np.asarray(domains, dtype=np.int16)
    if n and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DataError(f"labels outside [0, {info.num_classes}) in dataset {info.name}")
    if n and (domains.min() < 0 or domains.max() >= info.num_domains):
        raise DataError(f"domains outside [0, {info.num_domains}) in dataset {info.name}")
    splits = np.asarray(splits).astype(str)
    bad = set(np.unique(splits).tolist()) - set(SPLITS)
    if bad:
        raise DataError(f"unknown split names {sorted(bad)}; allowed: {list(SPLITS)}")
    columns = [pa.array(np.asarray(ids, dtype=np.int64)), image_array(info, images),
               pa.array(labels), pa.array(domains), pa.array(splits)]
    if info.groups:
        if groups is None or len(groups) != n:
            raise DataError(f"dataset {info.name} has a group column: every row needs a group")
        columns.append(pa.array(np.asarray(groups, dtype=np.int64)))
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema(info))


def make_table(
    info: DatasetInfo,
    images: np.ndarray | Sequence[bytes],
    labels: np.ndarray,
    domains: np.ndarray,
    splits: np.ndarray,
    ids: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> pa.Table:
    """A table in the rayfed_bpt schema from arrays (a source that fits in memory; a large
    one streams its batches through ``data.stream``)."""
    ids = np.arange(len(images), dtype=np.int64) if ids is None else ids
    return pa.Table.from_batches(
        [make_batch(info, images, labels, domains, splits, ids, groups)], arrow_schema(info))


def int_column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()
